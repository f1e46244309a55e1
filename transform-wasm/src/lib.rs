//! maskpipe's reference transform for Fetch login messages.
//!
//! Validation and normalization are [`login_core`]'s; this transform's policy
//! is to have `ip` and `device_id` masked reversibly by the host
//! ([`login_core::MaskBoth`]). Built for `wasm32-wasip2`, `component`
//! exports it as the `maskpipe:transform/transformer` world.

pub use login_core as login;

#[cfg(target_family = "wasm")]
mod component;
