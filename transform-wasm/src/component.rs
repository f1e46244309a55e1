//! The WIT glue: the reference policy, reversible masking of both fields.

wit_bindgen::generate!({
    path: "../wit",
    world: "transformer",
});

// A transform's allocations live one call at most: a bump arena serves
// them faster than the default allocator (login_core::arena).
#[global_allocator]
static ALLOCATOR: login_core::arena::BatchArena = login_core::arena::BatchArena::new();

login_core::export_transformer!(LoginTransform, login_core::MaskBoth);
