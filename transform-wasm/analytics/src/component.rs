//! The WIT glue: the analytics policy over the host's `pseudonymize`.

use crate::Analytics;

wit_bindgen::generate!({
    path: "../../wit",
    world: "transformer",
});

use maskpipe::transform::masking::pseudonymize;

login_core::export_transformer!(
    AnalyticsTransform,
    Analytics(|field: &str, value: &str| pseudonymize(field, value))
);
