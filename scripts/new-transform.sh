#!/usr/bin/env bash
# Scaffolds transform-wasm/NAME: a transform crate that builds and passes its
# own golden vectors out of the box. Its policy starts as the reference's
# (reversible masking of ip and device_id); edit src/lib.rs and vectors.jsonl.
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
crate-type = ["cdylib", "rlib"]

[dependencies]
login-core = { path = "../core" }
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc", "std"] }

[dev-dependencies]
maskpipe = { path = "../../host" }
TOML

cat >"$dir/src/lib.rs" <<RUST
//! The $name transform. Validation and normalization are login-core's; the
//! policy below decides how \`masked_ip\` and \`masked_device_id\` are
//! protected. It starts as the reference policy: the host masks both
//! reversibly. The alternatives are \`Protected::Pseudonymized\` (keyed,
//! irreversible) and \`Protected::Clear\` (a value you made harmless).

use std::net::IpAddr;

use login_core::{Protect, Protected, canonical_ip};

/// How this transform protects the PII fields.
pub struct Policy;

impl Protect for Policy {
    fn ip(&self, ip: IpAddr, written: &str) -> Protected {
        Protected::Masked(canonical_ip(ip, written))
    }
    fn device_id(&self, device_id: &str) -> Protected {
        Protected::Masked(device_id.to_owned())
    }
}

#[cfg(target_family = "wasm")]
mod component;
RUST

cat >"$dir/src/component.rs" <<RUST
//! The WIT glue.

use crate::Policy;

wit_bindgen::generate!({
    path: "../../wit",
    world: "transformer",
});

// A transform's allocations live one call at most: a bump arena serves
// them faster than the default allocator (login_core::arena).
#[global_allocator]
static ALLOCATOR: login_core::arena::BatchArena = login_core::arena::BatchArena::new();

login_core::export_transformer!($type, Policy);
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

cp "$root/transform-wasm/vectors.jsonl" "$dir/vectors.jsonl"
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
echo "  transform-wasm/$name/Cargo.toml, src/lib.rs (the policy), src/component.rs, tests/vectors.rs"
echo "  transform-wasm/$name/vectors.jsonl (a copy of the reference's golden vectors)"
echo "changed Cargo.toml (the workspace's):"
echo "  members += \"transform-wasm/$name\""
echo "  [profile.release.package.$crate] (the shipped transforms' release settings)"
echo "Next:"
echo "  just build-transform                     # builds target/wasm32-wasip2/release/$file.wasm"
echo "  cargo test --release -p $crate          # runs its vectors in wasmtime"
