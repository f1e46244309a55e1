#!/usr/bin/env bash
# The local stack without Docker: a throwaway PostgreSQL 15 cluster and
# LocalStack's SQS and KMS (one process, with a demo KMS key,
# alias/maskpipe-demo), both on 127.0.0.1, both living under .data/
# (git-ignored).
# Beside them, for the benchmarks alone (`just bench`), a second, durable
# PostgreSQL cluster (fsync, synchronous_commit and full_page_writes on, as
# in production; the first has them off for speed) in .data/pg-durable.
#
#   scripts/stack.sh up      install what is missing, start them all (idempotent)
#   scripts/stack.sh down    stop them all
#   scripts/stack.sh status  say what runs
#
# Every step checks before it acts, so `up` on a running stack is a no-op and
# `up` on a fresh machine installs everything it needs from package registries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# MASKPIPE_STACK_DIR and the ports let fault tests run private instances they
# can stop; the LocalStack install is shared.
data="${MASKPIPE_STACK_DIR:-$root/.data}"
pg_dir="$data/pg"
pg_port="${MASKPIPE_PG_PORT:-25432}"
pg_durable_dir="$data/pg-durable"
pg_durable_port="${MASKPIPE_PG_DURABLE_PORT:-25433}"
# The durable cluster belongs to the shared stack: a private instance (a
# fault test's, with its own MASKPIPE_STACK_DIR) starts one only when given
# a port of its own, so it never reaches for the shared stack's.
if [ -z "${MASKPIPE_STACK_DIR:-}" ] || [ -n "${MASKPIPE_PG_DURABLE_PORT:-}" ]; then
    want_durable=1
else
    want_durable=0
fi
ls_port="${MASKPIPE_SQS_PORT:-4566}"
venv="$root/.data/localstack-venv"

log() { printf '\033[1;34m[stack]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[stack] error:\033[0m %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- PostgreSQL

pg_bin() {
    # Debian keeps the server binaries off PATH; some images add wrappers.
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
    done
    return 1
}

ensure_postgres_installed() {
    pg_bin >/dev/null && return
    log "installing postgresql-15 from Debian"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
    pg_bin >/dev/null || die "postgresql-15 installed but pg_ctl not found"
}

# initdb refuses to run as root: run the cluster as the `postgres` user when we are root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# pg_cluster_up DIR PORT LABEL INITDB_FLAGS SETTINGS: initialise (once) and
# start (unless running) one cluster.
pg_cluster_up() {
    local dir="$1" port="$2" label="$3" initdb_flags="$4" settings="$5"
    local bin; bin="$(pg_bin)"
    mkdir -p "$data"
    if [ ! -f "$dir/PG_VERSION" ]; then
        log "initialising $label cluster in ${dir#"$root"/}"
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir" && chmod 755 "$data"
        # shellcheck disable=SC2086 # the flags are words
        as_pg "$bin/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 $initdb_flags >/dev/null
    fi
    if as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        log "$label already running on 127.0.0.1:$port"
    else
        log "starting $label on 127.0.0.1:$port"
        as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200 $settings" \
            start >/dev/null || { tail -20 "$dir/server.log" >&2; die "$label did not start"; }
    fi
}

pg_cluster_down() {
    local dir="$1" label="$2" bin
    bin="$(pg_bin)" || return 0
    if [ -f "$dir/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        log "stopping $label"
        as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    fi
}

pg_cluster_running() {
    local bin
    bin="$(pg_bin 2>/dev/null)" || return 1
    [ -f "$1/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$1" status >/dev/null 2>&1
}

postgres_up() {
    ensure_postgres_installed
    # Throwaway: nothing is flushed to disk (a crash of the machine loses it).
    pg_cluster_up "$pg_dir" "$pg_port" PostgreSQL --no-sync \
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    # `maskpipe` is the demo database; tests create their own.
    if ! psql_local -tAc "select 1 from pg_database where datname = 'maskpipe'" | grep -q 1; then
        psql_local -qc "create database maskpipe" >/dev/null
    fi
}

# The benchmarks' durable cluster: every commit waits for its WAL flush, as
# a production database's does. No database of its own: the bench creates
# (and drops) one per run.
durable_up() {
    ensure_postgres_installed
    pg_cluster_up "$pg_durable_dir" "$pg_durable_port" "durable PostgreSQL" "" \
        "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
}

postgres_down() {
    pg_cluster_down "$pg_dir" PostgreSQL
}

durable_down() {
    pg_cluster_down "$pg_durable_dir" "durable PostgreSQL"
}

psql_local() {
    psql -X -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"
}

# ------------------------------------------------------- LocalStack SQS + KMS

# localstack-core 2026.x needs Python >= 3.13.
find_python313() {
    local c
    for c in python3.14 python3.13 "$HOME"/.pyenv/versions/3.14*/bin/python3 "$HOME"/.pyenv/versions/3.13*/bin/python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
            command -v "$c"
            return
        fi
    done
    return 1
}

ensure_localstack_installed() {
    mkdir -p "$root/.data"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import localstack.runtime.main' 2>/dev/null; then
        return
    fi
    rm -rf "$venv"
    local py
    if py="$(find_python313)"; then
        log "installing LocalStack (SQS and KMS are used) into .data/localstack-venv with $py"
        "$py" -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/scripts/localstack-requirements.txt"
    else
        # No Python >= 3.13 here: let uv (from PyPI) fetch a managed one.
        log "no Python >= 3.13 found; installing uv to provide one"
        python3 -m venv "$root/.data/uv"
        "$root/.data/uv/bin/pip" install -q --disable-pip-version-check uv
        "$root/.data/uv/bin/uv" venv -q --python 3.13 "$venv" || die "LocalStack needs Python >= 3.13 and uv could not provide one"
        "$root/.data/uv/bin/uv" pip install -q --python "$venv/bin/python" -r "$root/scripts/localstack-requirements.txt"
    fi
}

# Both services must answer: KMS holds the demo's envelope-encrypted key.
localstack_healthy() {
    local health
    health="$(curl -fsS "http://127.0.0.1:$ls_port/_localstack/health" 2>/dev/null)" || return 1
    grep -q '"sqs": *"\(available\|running\)"' <<<"$health" &&
        grep -q '"kms": *"\(available\|running\)"' <<<"$health"
}

# Something answers LocalStack's health endpoint (whatever its services).
localstack_answers() {
    curl -fsS "http://127.0.0.1:$ls_port/_localstack/health" >/dev/null 2>&1
}

localstack_up() {
    if localstack_healthy; then
        log "LocalStack SQS + KMS already running on 127.0.0.1:$ls_port"
        ensure_demo_kms_key
        return
    fi
    if localstack_answers; then
        # One started before KMS was part of the stack (SERVICES=sqs): ours
        # is restarted (it keeps nothing on disk anyway); anyone else's is
        # left alone.
        [ -f "$data/localstack/pid" ] && kill -0 "$(cat "$data/localstack/pid")" 2>/dev/null ||
            die "a LocalStack on 127.0.0.1:$ls_port runs without KMS and was not started here: stop it, then run this again"
        log "LocalStack on 127.0.0.1:$ls_port runs without KMS: restarting it with SQS and KMS"
        localstack_down
    fi
    ensure_localstack_installed
    log "starting LocalStack SQS + KMS on 127.0.0.1:$ls_port"
    mkdir -p "$data/localstack"
    (
        cd "$data/localstack"
        GATEWAY_SERVER=twisted GATEWAY_LISTEN="127.0.0.1:$ls_port" LOCALSTACK_HOST="127.0.0.1:$ls_port" \
        SQS_ENDPOINT_STRATEGY=off SERVICES=sqs,kms EAGER_SERVICE_LOADING=1 DNS_ADDRESS=0 \
        LOCALSTACK_VOLUME_DIR="$data/localstack/volume" SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 \
            nohup setsid "$venv/bin/python" "$root/scripts/localstack-loopback.py" >"$data/localstack/server.log" 2>&1 &
        echo $! >"$data/localstack/pid"
    )
    local i
    for i in $(seq 1 120); do
        if localstack_healthy; then
            ensure_demo_kms_key
            return
        fi
        if ! kill -0 "$(cat "$data/localstack/pid")" 2>/dev/null; then
            tail -30 "$data/localstack/server.log" >&2
            die "LocalStack exited during startup"
        fi
        sleep 0.5
    done
    tail -30 "$data/localstack/server.log" >&2
    die "LocalStack did not become healthy within 60 s"
}

# kms ACTION JSON: one call to LocalStack's KMS JSON API. Like the justfile's
# SQS calls it is unsigned: LocalStack takes an unsigned request as the
# default test account's (000000000000, what the AWS SDK's "test"
# credentials map to) in us-east-1, demo.env's region.
kms() {
    curl -fsS -X POST "http://127.0.0.1:$ls_port/" \
        -H 'Content-Type: application/x-amz-json-1.1' \
        -H "X-Amz-Target: TrentService.$1" -d "$2"
}

# The demo's KMS key, alias/maskpipe-demo (`just maskpipe keygen --kms-key-id
# alias/maskpipe-demo`). LocalStack keeps keys in memory only, so this runs
# on every `up`; an existing alias is left as it is.
ensure_demo_kms_key() {
    local alias=alias/maskpipe-demo key_id
    # DescribeKey by alias: no paging through the account's aliases.
    kms DescribeKey "{\"KeyId\": \"$alias\"}" >/dev/null 2>&1 && return
    key_id="$(kms CreateKey '{"Description": "maskpipe demo key (LocalStack)", "KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT"}' |
        sed -n 's/.*"KeyId": *"\([^"]*\)".*/\1/p')"
    [ -n "$key_id" ] || die "LocalStack's KMS did not create the demo key"
    if ! kms CreateAlias "{\"AliasName\": \"$alias\", \"TargetKeyId\": \"$key_id\"}" >/dev/null 2>&1; then
        # Another `up` made it first: fine, as long as it is there now.
        kms DescribeKey "{\"KeyId\": \"$alias\"}" >/dev/null 2>&1 || die "cannot create $alias in LocalStack's KMS"
    fi
    log "created the demo KMS key $alias"
}

localstack_down() {
    local pidfile="$data/localstack/pid"
    [ -f "$pidfile" ] || return 0
    local pid; pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping LocalStack"
        # setsid made it a process group leader: stop its workers too.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# --------------------------------------------------------------------- main

case "${1:-}" in
    up) postgres_up; if [ "$want_durable" = 1 ]; then durable_up; fi; localstack_up ;;
    # Stops a durable cluster whatever started it.
    down) localstack_down; durable_down; postgres_down ;;
    postgres-up) postgres_up ;;
    postgres-down) postgres_down ;;
    durable-up)
        [ "$want_durable" = 1 ] || die "a private stack (MASKPIPE_STACK_DIR) needs MASKPIPE_PG_DURABLE_PORT for a durable cluster"
        durable_up
        ;;
    durable-down) durable_down ;;
    sqs-up) localstack_up ;;
    sqs-down) localstack_down ;;
    status)
        if pg_cluster_running "$pg_dir"; then
            echo "postgres: running on 127.0.0.1:$pg_port"
        else
            echo "postgres: stopped"
        fi
        if pg_cluster_running "$pg_durable_dir"; then
            echo "postgres (durable, for the bench): running on 127.0.0.1:$pg_durable_port"
        elif [ "$want_durable" = 1 ]; then
            echo "postgres (durable, for the bench): stopped"
        fi
        if localstack_healthy; then echo "sqs, kms: running on 127.0.0.1:$ls_port"; else echo "sqs, kms: stopped"; fi
        ;;
    *) echo "usage: $0 up|down|status|postgres-up|postgres-down|durable-up|durable-down|sqs-up|sqs-down" >&2; exit 2 ;;
esac
