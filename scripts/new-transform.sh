#!/usr/bin/env bash
# Scaffolds transform-wasm/NAME: a transform that builds and passes its own
# golden vectors out of the box, in Rust (a crate on the guest toolkit,
# transform-wasm/kit, maskpipe-guest) or with --lang python (an app.py on the
# Python toolkit, transform-wasm/kit/python, built by componentize-py). It is
# a transform for a feed other than Fetch's logins: JSON events become rows
# of its own table,
#   events(event_id uuid NOT NULL, user_id varchar(128),
#          masked_email varchar(256), PII field `email`, masked),
# so it shows every step: declare a table, validate a body, write a row with
# a protected PII value, reject with declared codes. Edit the code and
# vectors.jsonl to make it yours.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: just new-transform NAME [--lang rust|python] (NAME: lower case, digits, '-')" >&2; exit 2; }
name="" lang="rust"
while [ $# -gt 0 ]; do
    case "$1" in
        --lang) [ $# -ge 2 ] || usage; lang="$2"; shift 2 ;;
        --lang=*) lang="${1#--lang=}"; shift ;;
        -*) usage ;;
        *) [ -z "$name" ] || usage; name="$1"; shift ;;
    esac
done
[[ "$name" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || usage
[[ "$lang" =~ ^(rust|python)$ ]] || usage
dir="$root/transform-wasm/$name"
[ -e "$dir" ] && { echo "transform-wasm/$name already exists" >&2; exit 1; }

# Golden vectors, the same for both languages: rows in the "rows" form
# (table -> its rows), rejections by code.
write_vectors() {
    cat >"$dir/vectors.jsonl" <<'JSONL'
{"name": "an event becomes a row, its email masked", "body": "{\"event_id\": \"0d4f0a4e-8a3c-4b5e-9f00-1234567890ab\", \"user_id\": \"u-1\", \"email\": \"ada@example.com\"}", "expect": {"rows": {"events": [{"event_id": "0d4f0a4e-8a3c-4b5e-9f00-1234567890ab", "user_id": "u-1", "masked_email": {"mask": ["email", "ada@example.com"]}}]}}}
{"name": "a missing user_id is NULL", "body": "{\"event_id\": \"0d4f0a4e-8a3c-4b5e-9f00-1234567890ab\", \"email\": \"ada@example.com\"}", "expect": {"rows": {"events": [{"event_id": "0d4f0a4e-8a3c-4b5e-9f00-1234567890ab", "masked_email": {"mask": ["email", "ada@example.com"]}}]}}}
{"name": "extra fields are ignored", "body": "{\"event_id\": \"0d4f0a4e-8a3c-4b5e-9f00-1234567890ab\", \"user_id\": \"u-1\", \"email\": \"ada@example.com\", \"page\": \"/home\"}", "expect": {"rows": {"events": [{"event_id": "0d4f0a4e-8a3c-4b5e-9f00-1234567890ab", "user_id": "u-1", "masked_email": {"mask": ["email", "ada@example.com"]}}]}}}
{"name": "invalid JSON", "body": "{\"event_id\": ", "expect": {"rejected": "invalid_json"}}
{"name": "empty body", "body": "", "expect": {"rejected": "invalid_json"}}
{"name": "missing email", "body": "{\"event_id\": \"0d4f0a4e-8a3c-4b5e-9f00-1234567890ab\", \"user_id\": \"u-1\"}", "expect": {"rejected": "missing_field"}}
{"name": "null event_id", "body": "{\"event_id\": null, \"user_id\": \"u-1\", \"email\": \"ada@example.com\"}", "expect": {"rejected": "missing_field"}}
{"name": "event_id that is not a UUID", "body": "{\"event_id\": \"42\", \"user_id\": \"u-1\", \"email\": \"ada@example.com\"}", "expect": {"rejected": "invalid_uuid"}}
{"name": "numeric user_id", "body": "{\"event_id\": \"0d4f0a4e-8a3c-4b5e-9f00-1234567890ab\", \"user_id\": 7, \"email\": \"ada@example.com\"}", "expect": {"rejected": "wrong_type"}}
{"name": "a JSON array is not an event", "body": "[1, 2]", "expect": {"rejected": "not_an_object"}}
{"name": "email too long to mask into varchar(256)", "body": "{\"event_id\": \"0d4f0a4e-8a3c-4b5e-9f00-1234567890ab\", \"user_id\": \"u-1\", \"email\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com\"}", "expect": {"rejected": "value_too_long"}}
JSONL
}

scaffold_python() {
    local file="${name//-/_}"
    mkdir -p "$dir"
    cat >"$dir/app.py" <<PY
"""The $name transform, in Python: JSON events such as

    {"event_id": "0d4f0a4e-8a3c-4b5e-9f00-1234567890ab", "user_id": "u-1", "email": "ada@example.com"}

become rows of \`events\`; the email is PII, so the row says how the host is
to protect it (\`masked(..)\`: keyed and reversible; the host holds the key,
the component never sees it). Other fields are ignored.

To make it yours: declare your tables in TABLES (a row's table is its index
there), validate and write rows in \`transform\` (one \`rows.add(..)\` per
row, one value per declared column, in order), and reject with one of
REASON_CODES. Everything else (unpacking the batch, packing the rows, taking
back a failed message's rows) is the toolkit's: see maskpipe_guest
(transform-wasm/kit/python). The component reaches no file and no network:
parse what the message holds, nothing else.
"""

import json

from maskpipe_guest import (
    JSON_NESTING_LIMIT,
    MASKED,
    Reject,
    Transformer,
    masked,
    nests_deeper_than,
    table,
    text,
    uuid,
)

# The table rows go to: the only one, index 0.
EVENTS = 0
USER_ID_MAX_CHARS = 128
# Masking grows a value (at most 229 characters for 128 bytes): what still
# fits varchar(256).
EMAIL_MAX_BYTES = 128
_HEX = frozenset("0123456789abcdefABCDEF")


class WitWorld(Transformer):
    TABLES = [
        table(
            "events",
            uuid("event_id", nullable=False),
            text("user_id", USER_ID_MAX_CHARS),
            text("masked_email", 256, pii="email", allows=MASKED),
        )
    ]
    REASON_CODES = [
        "invalid_json",
        "not_an_object",
        "wrong_type",
        "missing_field",
        "invalid_uuid",
        "value_too_long",
    ]

    def transform(self, body, sent_timestamp_ms, rows):
        event = parse(body)
        event_id = required(event, "event_id")
        email = required(event, "email")
        user_id = optional(event, "user_id")
        if not is_uuid(event_id):
            raise Reject(
                "invalid_uuid",
                "field \`event_id\` is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
            )
        if user_id is not None and len(user_id) > USER_ID_MAX_CHARS:
            raise too_long("user_id", "characters", USER_ID_MAX_CHARS)
        if len(email.encode()) > EMAIL_MAX_BYTES:
            raise too_long("email", "bytes", EMAIL_MAX_BYTES)
        # One row of \`events\`: its three columns, in declared order.
        rows.add(EVENTS, event_id, user_id, masked(email))


def parse(body):
    # CPython's parser would run out of the component's stack on deeper input.
    if nests_deeper_than(body):
        raise Reject("invalid_json", f"body nests deeper than {JSON_NESTING_LIMIT} levels")
    try:
        event = json.loads(body)
    except json.JSONDecodeError as error:
        # Its position, never the input text.
        raise Reject(
            "invalid_json",
            f"body is not valid JSON (line {error.lineno} column {error.colno})",
        ) from None
    except (ValueError, RecursionError):
        raise Reject("invalid_json", "body is not JSON this transform can read") from None
    if not isinstance(event, dict):
        raise Reject("not_an_object", "body is JSON, but not an object")
    return event


def required(event, field):
    value = optional(event, field)
    if value is None:
        raise Reject("missing_field", f"required field \`{field}\` is missing or null")
    return value


def optional(event, field):
    value = event.get(field)
    if value is not None and not isinstance(value, str):
        raise Reject("wrong_type", f"field \`{field}\` is not a string")
    return value


def is_uuid(value):
    """xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hexadecimal: what a uuid column takes."""
    return len(value) == 36 and all(
        char == "-" if at in (8, 13, 18, 23) else char in _HEX for at, char in enumerate(value)
    )


def too_long(field, unit, limit):
    return Reject("value_too_long", f"field \`{field}\` is longer than {limit} {unit}")
PY
    write_vectors
    echo "created transform-wasm/$name (Python):"
    echo "  transform-wasm/$name/app.py (the table and the transform)"
    echo "  transform-wasm/$name/vectors.jsonl (its golden vectors: rows of \`events\` and rejections)"
    echo "Next:"
    echo "  just build-transform      # builds target/wasm32-wasip2/release/$file.wasm with componentize-py"
    echo "  just test-transform target/wasm32-wasip2/release/$file.wasm   # runs its vectors in wasmtime"
}

if [ "$lang" = python ]; then
    # A Python transform's component is NAME.wasm ('-' as '_'): it must not
    # be one a Rust transform builds.
    for manifest in "$root"/transform-wasm/Cargo.toml "$root"/transform-wasm/*/Cargo.toml; do
        [ -e "$manifest" ] && grep -q cdylib "$manifest" || continue
        crate="$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)"
        if [ "${crate//-/_}" = "${name//-/_}" ]; then
            echo "$name.wasm would be the Rust transform $crate's component: choose another name" >&2
            exit 1
        fi
    done
    scaffold_python
    exit 0
fi

# ------------------------------------------------------------------- Rust
crate="transform-$name"
file="${crate//-/_}"
type="$(sed -E 's/(^|-)([a-z])/\U\2/g' <<<"$name")Transform"

mkdir -p "$dir/src" "$dir/tests"
cat >"$dir/Cargo.toml" <<TOML
[package]
name = "$crate"
description = "maskpipe transform: $name"
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish = false

[lib]
# cdylib: the component built for wasm32-wasip2; rlib: native tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
maskpipe-guest = { path = "../kit" }
serde.workspace = true
serde_json.workspace = true

[dev-dependencies]
maskpipe = { path = "../../host" }
TOML

cat >"$dir/src/lib.rs" <<RUST
//! The $name transform: JSON events such as
//!
//! \`\`\`json
//! {"event_id": "0d4f0a4e-8a3c-4b5e-9f00-1234567890ab", "user_id": "u-1", "email": "ada@example.com"}
//! \`\`\`
//!
//! become rows of \`events\`; the email is PII, so the row says how the host
//! is to protect it (\`masked\`: keyed and reversible; the host holds the key,
//! the component never sees it). Other fields are ignored.
//!
//! To make it yours: declare your tables in \`describe\` (a row's table is
//! its index there), validate and write rows in \`transform\` (one
//! \`rows.row(..)\` per row, one value per declared column, in order), and
//! reject with one of \`REASON_CODES\`. Everything else (unpacking the batch,
//! counting rows, taking back a failed message's rows, the allocator) is the
//! toolkit's: see \`maskpipe_guest\`.

use maskpipe_guest::{Column, Declaration, Protections, Rejection, Rows, Table, Transform};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The table rows go to: the only one, index 0.
pub const EVENTS: u8 = 0;

/// Every code this transform rejects with (the toolkit adds its own
/// \`malformed_batch\`).
pub const REASON_CODES: &[&str] = &[
    "invalid_json",
    "not_an_object",
    "wrong_type",
    "missing_field",
    "invalid_uuid",
    "value_too_long",
];

/// \`varchar(128)\`, in characters.
const USER_ID_MAX_CHARS: usize = 128;
/// Masking grows a value (at most 229 characters for 128 bytes): what still
/// fits \`varchar(256)\`.
const EMAIL_MAX_BYTES: usize = 128;

/// An event as sent. Strings are owned for brevity (the toolkit's arena
/// makes that cheap); login-core's parser shows how to borrow them instead.
#[derive(Deserialize)]
struct Event {
    event_id: Option<String>,
    user_id: Option<String>,
    email: Option<String>,
}

pub struct $type;

impl Transform for $type {
    const VALUES_PER_MESSAGE: usize = 3;

    fn describe() -> Declaration {
        Declaration::new(
            vec![Table::new(
                "events",
                vec![
                    Column::uuid("event_id").not_null(),
                    Column::text("user_id", 128),
                    Column::text("masked_email", 256).pii("email", Protections::MASKED),
                ],
            )],
            REASON_CODES,
        )
    }

    fn transform(body: &str, _sent_timestamp_ms: u64, rows: &mut Rows) -> Result<(), Rejection> {
        let event = parse(body)?;
        let event_id = event.event_id.ok_or_else(|| missing("event_id"))?;
        let email = event.email.ok_or_else(|| missing("email"))?;
        if !is_uuid(&event_id) {
            return Err(Rejection::new(
                "invalid_uuid",
                "field \`event_id\` is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
            ));
        }
        if event
            .user_id
            .as_ref()
            .is_some_and(|user_id| user_id.chars().count() > USER_ID_MAX_CHARS)
        {
            return Err(too_long("user_id", "characters", USER_ID_MAX_CHARS));
        }
        if email.len() > EMAIL_MAX_BYTES {
            return Err(too_long("email", "bytes", EMAIL_MAX_BYTES));
        }
        // One row of \`events\`: its three columns, in declared order.
        rows.row(EVENTS)
            .uuid(&event_id)
            .opt_text(event.user_id.as_deref())
            .masked(&email);
        Ok(())
    }
}

maskpipe_guest::export_transform!($type);

fn parse(body: &str) -> Result<Event, Rejection> {
    // serde_json's errors carry a position, never the input text.
    let invalid_json = |e: serde_json::Error| {
        Rejection::new(
            "invalid_json",
            format!(
                "body is not valid JSON (line {} column {})",
                e.line(),
                e.column()
            ),
        )
    };
    // serde would read a struct from a JSON array too: an event is an object.
    if !body.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(body) {
            Ok(_) => Rejection::new("not_an_object", "body is JSON, but not an object"),
            Err(e) => invalid_json(e),
        });
    }
    serde_json::from_str(body).map_err(|e| {
        if e.is_data() {
            Rejection::new(
                "wrong_type",
                format!(
                    "a field is not a string (line {} column {})",
                    e.line(),
                    e.column()
                ),
            )
        } else {
            invalid_json(e)
        }
    })
}

/// \`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx\`, hexadecimal: what a \`uuid\`
/// column takes.
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(at, byte)| match at {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

fn missing(field: &str) -> Rejection {
    Rejection::new(
        "missing_field",
        format!("required field \`{field}\` is missing or null"),
    )
}

fn too_long(field: &str, unit: &str, max: usize) -> Rejection {
    Rejection::new(
        "value_too_long",
        format!("field \`{field}\` is longer than {max} {unit}"),
    )
}
RUST

cat >"$dir/tests/vectors.rs" <<RUST
//! The built component passes this crate's golden vectors, in wasmtime.

use std::path::Path;

#[test]
fn the_built_component_passes_its_vectors() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let component = crate_dir.join("../../target/wasm32-wasip2/release/$file.wasm");
    maskpipe::vectors::assert_all_pass(&component, &crate_dir.join("vectors.jsonl"));
}
RUST

write_vectors
# The workspace's Cargo.toml lists its members and holds every release
# profile: the new crate joins both, with the shipped transforms' size and
# speed settings (without them it keeps the host's debug line tables: ~3 MB).
# Each edit only once: a crate scaffolded again after its directory was
# deleted must not list itself twice (invalid TOML).
grep -q "^    \"transform-wasm/$name\",\$" "$root/Cargo.toml" ||
    sed -i "s|^    # new transforms are inserted above this line|    \"transform-wasm/$name\",\n&|" "$root/Cargo.toml"
grep -q "^\[profile.release.package.$crate\]\$" "$root/Cargo.toml" || cat >>"$root/Cargo.toml" <<TOML

[profile.release.package.$crate]
opt-level = 3
codegen-units = 1
debug = false
strip = "debuginfo"
TOML

echo "created transform-wasm/$name ($crate):"
echo "  transform-wasm/$name/Cargo.toml, src/lib.rs (the table and the transform), tests/vectors.rs"
echo "  transform-wasm/$name/vectors.jsonl (its golden vectors: rows of \`events\` and rejections)"
echo "changed Cargo.toml (the workspace's):"
echo "  members += \"transform-wasm/$name\""
echo "  [profile.release.package.$crate] (the shipped transforms' release settings)"
echo "Next:"
echo "  just build-transform                     # builds target/wasm32-wasip2/release/$file.wasm"
echo "  cargo test --release -p $crate          # runs its vectors in wasmtime"
