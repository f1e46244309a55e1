# maskpipe tasks. Every recipe installs and starts what it needs, idempotently.
#   just run [--drain]   the full local stack, processing the sample queue
#   just test            every test, against a real PostgreSQL, SQS and wasmtime

# demo.env holds the local stack's settings (and a public demo key).
set dotenv-load
set dotenv-filename := "demo.env"
set positional-arguments

wasm_target := "wasm32-wasip2"
component := "target/wasm32-wasip2/release/transform_wasm.wasm"

default:
    @just --list

# Add the wasm targets (RUSTUP_AUTO_INSTALL=0 means nobody else will).
toolchain:
    #!/usr/bin/env bash
    set -euo pipefail
    installed="$(rustup target list --installed)"
    for target in {{wasm_target}}; do
        grep -qx "$target" <<<"$installed" || rustup target add "$target"
    done

# Start PostgreSQL and LocalStack SQS on 127.0.0.1 (installs them if missing).
up:
    scripts/stack.sh up

# Stop what `just up` / `just run` started.
down:
    scripts/stack.sh down

# Build every transform component and put its golden vectors beside it (NAME.vectors.jsonl), where hot swap looks for them.
build-transform: toolchain
    #!/usr/bin/env bash
    set -euo pipefail
    packages=()
    for manifest in transform-wasm/Cargo.toml transform-wasm/*/Cargo.toml; do
        grep -q cdylib "$manifest" || continue
        packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
    done
    cargo build --release --target {{wasm_target}} "${packages[@]}"
    for manifest in transform-wasm/Cargo.toml transform-wasm/*/Cargo.toml; do
        grep -q cdylib "$manifest" || continue
        file="$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1 | tr - _)"
        cp "$(dirname "$manifest")/vectors.jsonl" "target/{{wasm_target}}/release/$file.vectors.jsonl"
    done

# Build the hostile test components (sandbox and validation tests).
build-fixtures: toolchain
    cargo build --release --target {{wasm_target}} -p fixture-hostile -p fixture-fs-reader -p fixture-leaky

# Scaffold a new transform crate under transform-wasm/NAME that builds and passes its own vectors.
new-transform name:
    scripts/new-transform.sh "{{name}}"

# Run a component's golden vectors in wasm isolation (default: NAME.vectors.jsonl beside it).
test-transform component *vectors:
    cargo build --release -p maskpipe
    ./target/release/maskpipe transform test "$@"

# Build the component and the host.
build: build-transform
    cargo build --release -p maskpipe

# Run the full stack: seed login-queue with the sample once, then consume it (Ctrl-C to stop; --drain to exit when empty).
run *args: up build
    ./target/release/maskpipe queue load --queue "$MASKPIPE_QUEUE" --if-created data/queue_bodies.jsonl
    ./target/release/maskpipe run "$@"

# Send the 100 sample messages to login-queue again.
load:
    ./target/release/maskpipe queue load --queue "$MASKPIPE_QUEUE" data/queue_bodies.jsonl

# psql on the local stack's database; extra arguments pass through (e.g. just psql -c 'select 1').
psql *args:
    psql -X -h 127.0.0.1 -p "${MASKPIPE_PG_PORT:-25432}" -U postgres -d maskpipe "$@"

# Every test: unit, component (built .wasm in wasmtime) and integration (real PostgreSQL + SQS).
test *args: up build-transform build-fixtures validate-deploy
    cargo test --release --workspace "$@"

# The benchmark suite: transform (wasm vs native), sink, end to end vs a no-op consumer, sweeps. Writes target/bench/summary.json and report.md.
bench *args: up build
    ./target/release/maskpipe-bench "$@"

# Print a deterministic generated data set (~1 % malformed): just generate 20000 [--seed 7] > data.jsonl
generate count *args: build
    ./target/release/maskpipe-bench --generate "{{count}}" "${@:2}"

# Validate deploy/ (Kubernetes, KEDA, ECS) and docker-compose.yml with schema checkers from PyPI.
validate-deploy:
    scripts/validate-deploy.sh

# Formatting and lints: the workspace natively, then every component crate as wasm.
lint: toolchain
    #!/usr/bin/env bash
    set -euo pipefail
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    # The transforms (found as build-transform finds them), their shared
    # login-core (whose arena is wasm-only) and the sandbox fixtures.
    packages=(-p login-core -p fixture-hostile -p fixture-fs-reader -p fixture-leaky)
    for manifest in transform-wasm/Cargo.toml transform-wasm/*/Cargo.toml; do
        grep -q cdylib "$manifest" || continue
        packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
    done
    cargo clippy --release --target {{wasm_target}} "${packages[@]}" -- -D warnings
