//! The README's transform example is this crate's `examples/signups.rs`,
//! which the tests build: so the README's code compiles.

#[test]
fn the_readme_example_is_the_built_example() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/signups.rs"))
            .unwrap();
    let start = readme
        .find("```rust\n")
        .expect("the README has a rust block")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    let shown = &readme[start..end];
    assert!(
        example.contains(shown),
        "README's example differs from examples/signups.rs:\n{shown}"
    );
}
