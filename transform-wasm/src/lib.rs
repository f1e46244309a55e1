//! maskpipe's reference transform for Fetch login messages.
//!
//! * `login` holds the policy as plain Rust: which messages are valid, how
//!   fields normalize, which fields are masked. Native tests and benches call it
//!   directly.
//! * `component` exports it through the `maskpipe:transform/transformer` WIT
//!   world when built for `wasm32-wasip2`; masking is the host's import.

pub mod login;

#[cfg(target_family = "wasm")]
mod component;
