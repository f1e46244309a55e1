//! The WIT glue: the reference policy, reversible masking of both fields.

use login_core::MaskBoth;

wit_bindgen::generate!({
    path: "../wit",
    world: "transformer",
});

use maskpipe::transform::masking::mask;

login_core::export_transformer!(
    LoginTransform,
    MaskBoth(|field: &str, value: &str| mask(field, value))
);
