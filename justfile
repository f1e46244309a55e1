# maskpipe tasks. Every recipe installs and starts what it needs, idempotently.
#   just run [--drain]   the full local stack, processing the sample queue
#   just test            every test, against a real PostgreSQL, SQS and wasmtime
#   just reset           start the demo over (empty its tables, delete its queue)

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

# Start PostgreSQL and LocalStack (SQS, and KMS with the demo key alias/maskpipe-demo) on 127.0.0.1 (installs them if missing).
up:
    @scripts/stack.sh up

# Stop what `just up` / `just run` started.
down:
    @scripts/stack.sh down

# Build every transform component (every cdylib under transform-wasm/, and with componentize-py every transform-wasm/NAME/app.py) and put its golden vectors beside it (NAME.vectors.jsonl), where hot swap looks for them.
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
    scripts/build-python.sh transforms

# Build the test fixture components (sandbox, validation and schema tests): every host/tests/fixtures/*, e.g. target/wasm32-wasip2/release/fixture_hostile.wasm (a Python fixture NAME/app.py becomes fixture_NAME.wasm).
build-fixtures: toolchain
    #!/usr/bin/env bash
    set -euo pipefail
    packages=()
    for manifest in host/tests/fixtures/*/Cargo.toml; do
        packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
    done
    cargo build --release --target {{wasm_target}} "${packages[@]}"
    scripts/build-python.sh fixtures

# Scaffold a new transform under transform-wasm/NAME that builds and passes its own vectors: a Rust crate, or with --lang python an app.py.
new-transform name *args:
    @scripts/new-transform.sh "$@"

# Run a component's golden vectors in wasm isolation (default: NAME.vectors.jsonl beside it).
test-transform component *vectors:
    @cargo build --release --quiet -p maskpipe
    ./target/release/maskpipe transform test "$@"

# Build the component and the host.
build: build-transform host

# Build the host (and the benchmark binary, bench/, a small crate on top of it).
host:
    @cargo build --release --quiet -p maskpipe -p maskpipe-bench

# Run the full stack: seed login-queue with the sample once, then consume it (Ctrl-C to stop; --drain to exit when empty).
run *args: up build
    #!/usr/bin/env bash
    set -euo pipefail
    ./target/release/maskpipe queue load --queue "$MASKPIPE_QUEUE" --if-created data/queue_bodies.jsonl
    # Job control: on a terminal the host runs in a process group of its
    # own that holds the terminal, so Ctrl-C reaches the host alone. just
    # would otherwise see the SIGINT too and end "interrupted by SIGINT"
    # (exit 130) even after the host shut down cleanly and exited 0.
    set -m
    ./target/release/maskpipe run "$@"

# Send the 100 sample messages to login-queue (creating it if missing); the next `just run` processes them.
load: up host
    @./target/release/maskpipe queue load --queue "$MASKPIPE_QUEUE" data/queue_bodies.jsonl

# Start the demo over: empty its tables and delete login-queue, which the next `just run` re-creates and seeds.
reset: up
    #!/usr/bin/env bash
    set -euo pipefail
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${MASKPIPE_PG_PORT:-25432}" -U postgres -d maskpipe <<'SQL'
    -- Only the tables that exist: before the first run there are none.
    do $$
    declare t text;
    begin
        foreach t in array array['user_logins', 'user_logins_analytics', 'login_devices', 'maskpipe_processed', 'maskpipe_dead_letters'] loop
            if to_regclass(t) is not null then
                execute format('truncate %I', t);
            end if;
        end loop;
    end $$;
    SQL
    # LocalStack answers unsigned SQS requests (this is for the demo's
    # local queue only); a queue that does not exist is already reset.
    sqs() {
        curl -sS -X POST "$AWS_ENDPOINT_URL/" -H 'Content-Type: application/x-amz-json-1.0' \
            -H "X-Amz-Target: AmazonSQS.$1" -d "$2"
    }
    url="$(sqs GetQueueUrl "{\"QueueName\": \"$MASKPIPE_QUEUE\"}" | sed -n 's/.*"QueueUrl": *"\([^"]*\)".*/\1/p')"
    if [ -n "$url" ]; then
        sqs DeleteQueue "{\"QueueUrl\": \"$url\"}" >/dev/null
        echo "deleted queue $MASKPIPE_QUEUE"
    fi
    echo "emptied the demo tables (user_logins, user_logins_analytics, login_devices, maskpipe_processed, maskpipe_dead_letters: those that exist) in database maskpipe"

# psql on the local stack's database; extra arguments pass through (e.g. just psql -c 'select 1').
[no-exit-message]
psql *args:
    @psql -X -h 127.0.0.1 -p "${MASKPIPE_PG_PORT:-25432}" -U postgres -d maskpipe "$@"

# Reveal the masked ip and device_id of the demo database's first ROWS rows (by user_id), with demo.env's key.
[no-exit-message]
reveal rows="3": host
    #!/usr/bin/env bash
    set -euo pipefail
    [[ "{{rows}}" =~ ^[0-9]+$ ]] || { echo "usage: just reveal [ROWS]" >&2; exit 2; }
    # The query first: its failure (or an empty table) must fail the recipe.
    logins="$(just psql -tAc "select user_id, masked_ip, masked_device_id from user_logins order by user_id, masked_ip limit {{rows}}")"
    [ -n "$logins" ] || { echo "user_logins is empty: run \`just run --drain\` first" >&2; exit 1; }
    while IFS='|' read -r user ip device; do
        plain_ip="$(./target/release/maskpipe reveal --field ip "$ip")"
        plain_device="$(./target/release/maskpipe reveal --field device_id "$device")"
        echo "$user  ip $plain_ip  device_id $plain_device"
        echo "    masked_ip $ip"
        echo "    masked_device_id $device"
    done <<<"$logins"

# Reveal the sealed body of every dead letter in the demo database, with demo.env's key.
[no-exit-message]
reveal-dead-letters: host
    #!/usr/bin/env bash
    set -euo pipefail
    # The query first: its failure (or an empty table) must fail the recipe.
    letters="$(just psql -tAc "select message_id, reason, body_sealed from maskpipe_dead_letters order by message_id")"
    [ -n "$letters" ] || { echo "maskpipe_dead_letters is empty: run \`just run --drain\` first" >&2; exit 1; }
    while IFS='|' read -r id reason body; do
        plain="$(./target/release/maskpipe reveal --message-id "$id" "$body")"
        echo "$id ($reason): $plain"
    done <<<"$letters"

# The maskpipe command with demo.env's settings (its key, queue, database and LocalStack endpoint), e.g. just maskpipe dead-letters list.
[no-exit-message]
maskpipe *args: host
    @./target/release/maskpipe "$@"

# Every test: unit, component (built .wasm in wasmtime) and integration (real PostgreSQL + SQS); with no arguments, then every README command.
test *args: up build-transform build-fixtures validate-deploy
    cargo test --release --workspace "$@"
    @if [ "$#" -eq 0 ]; then scripts/readme-commands.sh; else echo "README commands not checked (arguments given): just readme-commands"; fi

# Break RELIABILITY.md promises on purpose and check that their tests fail (mutants.toml; 40 s to 3 min per mutant): just mutants [SUBSTRING...]
mutants *args: up build-transform build-fixtures
    scripts/mutants.py "$@"

# Every shell command in README.md, each in a fresh shell without demo.env, against the local stack (the script lists what it skips).
readme-commands: up build
    scripts/readme-commands.sh

# The benchmark suite (bench/): transform (wasm vs native), sink (throwaway and durable PostgreSQL), end to end vs a no-op consumer, end to end 10 ms from SQS vs a receive-only consumer, sweeps. Writes target/bench/summary.json and report.md.
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
    # The transforms (found as build-transform finds them), the guest
    # toolkit (whose arena is wasm-only), login-core and the fixtures.
    packages=(-p maskpipe-guest -p login-core)
    for manifest in transform-wasm/Cargo.toml transform-wasm/*/Cargo.toml host/tests/fixtures/*/Cargo.toml; do
        grep -q cdylib "$manifest" || continue
        packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
    done
    cargo clippy --release --target {{wasm_target}} "${packages[@]}" -- -D warnings
