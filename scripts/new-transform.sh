#!/usr/bin/env bash
# Scaffolds transform-wasm/NAME: a transform crate that builds and passes its
# own golden vectors out of the box. It is a transform for a feed other than
# Fetch's logins, built on the guest toolkit (transform-wasm/kit,
# maskpipe-guest) alone: JSON events become rows of its own table,
#   events(event_id uuid NOT NULL, user_id varchar(128),
#          masked_email varchar(256), PII field `email`, masked),
# so it shows every step: declare a table, validate a body, write a row with
# a protected PII value, reject with declared codes. Edit src/lib.rs and
# vectors.jsonl to make it yours.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${1:-}"
[[ "$name" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "usage: just new-transform NAME (lower case, digits, '-')" >&2; exit 2; }
dir="$root/transform-wasm/$name"
[ -e "$dir" ] && { echo "transform-wasm/$name already exists" >&2; exit 1; }
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

# Golden vectors: rows in the "rows" form (table -> its rows), rejections by code.
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
