//! The WIT glue: the reference policy, reversible masking of both fields.

wit_bindgen::generate!({
    path: "../wit",
    world: "transformer",
});

login_core::export_transformer!(LoginTransform, login_core::MaskBoth);
