//! The built component passes this crate's golden vectors, in wasmtime,
//! through the same harness as `maskpipe transform test`.

use std::path::Path;

#[test]
fn the_built_component_passes_its_vectors() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let component = crate_dir.join("../../target/wasm32-wasip2/release/transform_devices.wasm");
    maskpipe::vectors::assert_all_pass(&component, &crate_dir.join("vectors.jsonl"));
}
