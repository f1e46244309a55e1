#!/usr/bin/env bash
# Builds the Python transform components with componentize-py, installing
# it (pinned) into .data/componentize-py on first use.
#
#   scripts/build-python.sh transforms   every transform-wasm/NAME/app.py -> NAME.wasm
#   scripts/build-python.sh fixtures     every host/tests/fixtures/NAME/app.py -> fixture_NAME.wasm
#   scripts/build-python.sh one DIR OUT  DIR/app.py -> OUT (the tests' examples)
#
# Components land in target/wasm32-wasip2/release/ beside the Rust ones
# ('-' in NAME becomes '_'), a transform's vectors.jsonl beside it as
# NAME.vectors.jsonl. A component already built from exactly its sources,
# the Python kit (transform-wasm/kit/python) and wit/ is left as it is:
# componentize-py takes seconds per component.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
version="0.25.1"
mkdir -p "$root/.data"
# The physical path: a venv's scripts name their interpreter by the path it
# was made at, so one made through a symlink must not name the link.
venv="$(cd -P "$root/.data" && pwd)/componentize-py"
out="target/wasm32-wasip2/release"

log() { printf '\033[1;34m[python]\033[0m %s\n' "$*" >&2; }

installed() {
    [ -x "$venv/bin/componentize-py" ] \
        && [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" = "componentize-py $version" ]
}

ensure_componentize_py() {
    installed && return
    # One installer at a time (tests build in parallel); the others wait,
    # then find it installed.
    exec 9>"$venv.lock"
    flock 9
    if installed; then
        exec 9>&-
        return
    fi
    log "installing componentize-py $version into .data/componentize-py"
    rm -rf "$venv"
    mkdir -p "$root/.data"
    python3 -m venv "$venv" || {
        rm -rf "$venv"
        echo "componentize-py needs python3 with venv (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/pip" install -q --disable-pip-version-check "componentize-py==$version"
    exec 9>&-
}

# What a component is built from, hashed: every file of its directory, the
# kit and wit/, and the componentize-py version. A change, an addition or a
# deletion rebuilds it.
sources_digest() {
    {
        echo "componentize-py $version"
        {
            find -L "$1" -type f -not -path '*/__pycache__/*' -print0
            find -L transform-wasm/kit/python -type f -name '*.py' -not -path '*/examples/*' -print0
            find -L wit -type f -name '*.wit' -print0
        } | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}

# build DIR OUTPUT: componentize DIR/app.py unless OUTPUT was built from
# exactly these sources (OUTPUT.sources holds their digest).
build() {
    local dir="$1" output="$2" digest
    digest="$(sources_digest "$dir")"
    if [ -f "$output" ] && [ "$(cat "$output.sources" 2>/dev/null)" = "$digest" ]; then
        return
    fi
    ensure_componentize_py
    log "componentize-py: $dir -> $output"
    # Bytecode would land beside the sources: keep the tree clean.
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" -d wit -w transformer componentize \
        -p transform-wasm/kit/python -p "$dir" app -o "$output.tmp" >/dev/null
    mv "$output.tmp" "$output"
    echo "$digest" >"$output.sources"
}

# The component names the Rust transforms build (crate name, '-' as '_').
rust_names() {
    local manifest
    for manifest in transform-wasm/Cargo.toml transform-wasm/*/Cargo.toml; do
        [ -e "$manifest" ] && grep -q cdylib "$manifest" || continue
        sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1 | tr - _
    done
}

mkdir -p "$out"
# Read once, whole: `grep -q` on a pipe would stop its writer early.
rust="$(rust_names)"
case "${1:-}" in
    transforms)
        for app in transform-wasm/*/app.py; do
            [ -e "$app" ] || continue
            dir="$(dirname "$app")"
            name="$(basename "$dir" | tr - _)"
            if grep -qxF -- "$name" <<<"$rust"; then
                echo "transform-wasm/$(basename "$dir") would build $name.wasm, which a Rust transform builds: rename it" >&2
                exit 1
            fi
            build "$dir" "$out/$name.wasm"
            cp "$dir/vectors.jsonl" "$out/$name.vectors.jsonl"
        done
        ;;
    one)
        [ $# -eq 3 ] || { echo "usage: scripts/build-python.sh one DIR OUTPUT" >&2; exit 2; }
        build "$2" "$3"
        ;;
    fixtures)
        for app in host/tests/fixtures/*/app.py; do
            [ -e "$app" ] || continue
            dir="$(dirname "$app")"
            build "$dir" "$out/fixture_$(basename "$dir" | tr - _).wasm"
        done
        ;;
    *)
        echo "usage: scripts/build-python.sh transforms|fixtures|one DIR OUTPUT" >&2
        exit 2
        ;;
esac
