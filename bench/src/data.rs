//! The generated data set: login messages like the sample's, about 1 %
//! malformed, deterministic for a seed (`just generate N`), and the same
//! bodies as received messages for the stages that call no queue.

use maskpipe::source::Received;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Realistic login messages like the sample's, about 1 % malformed;
/// deterministic for a seed.
pub(crate) fn generate(count: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let locales = ["RU", "ID", "CN", "FR", "PH", "BR", "US", "KE", "PT", "SE"];
    (0..count)
        .map(|n| {
            if rng.random_ratio(1, 100) {
                return json!({"foo": "oops_wrong_msg_type", "bar": n.to_string()}).to_string();
            }
            let version = if rng.random_bool(0.45) {
                format!("{}.{}.{}", rng.random_range(0..10), rng.random_range(0..10), rng.random_range(0..10))
            } else {
                format!("{}.{}", rng.random_range(0..10), rng.random_range(0..100))
            };
            let locale = if rng.random_ratio(29, 99) {
                serde_json::Value::Null
            } else {
                json!(locales[rng.random_range(0..locales.len())])
            };
            // Python's json.dumps spacing, as the take-home sends it.
            format!(
                r#"{{"user_id": "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", "app_version": "{version}", "device_type": "{}", "ip": "{}.{}.{}.{}", "locale": {locale}, "device_id": "{:03}-{:02}-{:04}"}}"#,
                rng.random::<u32>(),
                rng.random::<u16>(),
                rng.random_range(0..0x1000),
                rng.random::<u16>(),
                rng.random_range(0..1u64 << 48),
                if rng.random_bool(0.5) { "ios" } else { "android" },
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random_range(0..1000),
                rng.random_range(0..100),
                rng.random_range(0..10_000),
            )
        })
        .collect()
}

pub(crate) fn received(bodies: &[String]) -> Vec<Received> {
    bodies
        .iter()
        .enumerate()
        .map(|(index, body)| {
            Received::local(format!("bench-{index}"), body.as_str(), 1_670_839_200_000)
        })
        .collect()
}
