#!/usr/bin/env bash
# Builds the Python transform components with componentize-py, installing
# it (pinned) into .data/componentize-py on first use.
#
#   scripts/build-python.sh transforms   every transform-wasm/NAME/app.py -> NAME.wasm
#   scripts/build-python.sh fixtures     every host/tests/fixtures/NAME/app.py -> fixture_NAME.wasm
#
# Components land in target/wasm32-wasip2/release/ beside the Rust ones
# ('-' in NAME becomes '_'), a transform's vectors.jsonl beside it as
# NAME.vectors.jsonl. A component newer than its sources, the Python kit
# (transform-wasm/kit/python) and wit/ is left as it is: componentize-py
# takes seconds per component.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
version="0.25.1"
venv="$root/.data/componentize-py"
out="target/wasm32-wasip2/release"

log() { printf '\033[1;34m[python]\033[0m %s\n' "$*" >&2; }

ensure_componentize_py() {
    if [ -x "$venv/bin/componentize-py" ] \
        && [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" = "componentize-py $version" ]; then
        return
    fi
    log "installing componentize-py $version into .data/componentize-py"
    rm -rf "$venv"
    mkdir -p "$root/.data"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "componentize-py==$version"
}

# build DIR OUTPUT: componentize DIR/app.py unless OUTPUT is up to date.
build() {
    local dir="$1" output="$2"
    if [ -f "$output" ] && [ "$output" -nt "$venv/bin/componentize-py" ] \
        && [ -z "$(find -L "$dir" transform-wasm/kit/python wit -newer "$output" -name '*.py' -o -newer "$output" -name '*.wit' | head -1)" ]; then
        return
    fi
    ensure_componentize_py
    log "componentize-py: $dir -> $output"
    # Bytecode would land beside the sources: keep the tree clean.
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" -d wit -w transformer componentize \
        -p transform-wasm/kit/python -p "$dir" app -o "$output.tmp" >/dev/null
    mv "$output.tmp" "$output"
}

mkdir -p "$out"
case "${1:-}" in
    transforms)
        for app in transform-wasm/*/app.py; do
            [ -e "$app" ] || continue
            dir="$(dirname "$app")"
            name="$(basename "$dir" | tr - _)"
            build "$dir" "$out/$name.wasm"
            cp "$dir/vectors.jsonl" "$out/$name.vectors.jsonl"
        done
        ;;
    fixtures)
        for app in host/tests/fixtures/*/app.py; do
            [ -e "$app" ] || continue
            dir="$(dirname "$app")"
            build "$dir" "$out/fixture_$(basename "$dir" | tr - _).wasm"
        done
        ;;
    *)
        echo "usage: scripts/build-python.sh transforms|fixtures" >&2
        exit 2
        ;;
esac
