//! The WIT glue: the analytics policy.

use crate::Analytics;

wit_bindgen::generate!({
    path: "../../wit",
    world: "transformer",
});

login_core::export_transformer!(AnalyticsTransform, Analytics);
