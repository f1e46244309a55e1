//! maskpipe: a streaming PII-masking pipeline.
//!
//! Data flows one way, and each module owns one step or one concern:
//!
//! ```text
//!  source (SQS) ─► pipeline ─► runtime (wasm component) ─► sink (PostgreSQL) ─► source.delete
//!                     │              │ rows say how to protect their PII
//!                  config         masking (keys, AES-GCM)        record (row + column contract)
//! ```
//!
//! * [`source`]: receive, delete and queue depth: the SDK's SQS client.
//! * [`kms`]: the master key as a KMS data key (decrypt at startup,
//!   `keygen --kms-key-id`): the SDK's KMS client.
//! * [`runtime`]: loads and sandboxes the transform component; runs batches
//!   and protects the PII values the returned rows ask it to.
//! * [`masking`]: deterministic, reversible masking and dead-letter sealing.
//! * [`record`]: rows and rejections, and the `user_logins` column limits.
//! * [`schema`]: tables as a transform declares them, checked against the
//!   live database's catalog (contract 1.0 builds on it).
//! * [`sink`]: one transaction per batch: ledger, rows, dead letters;
//!   [`tls`]: how its connections are secured; [`dberror`]: which failed
//!   writes to retry and which to split down to the refused rows.
//! * [`ledger`]: how long the ledger remembers a message id (pruning).
//! * [`dead_letters`]: listing dead letters and replaying them to the queue.
//! * [`rekey`]: re-masking history under the current key after a rotation.
//! * [`pipeline`]: the supervised pollers that drive a batch through all of the above.
//! * [`swap`]: which component runs: validation, file watching, hot swap.
//! * [`ops`]: Prometheus metrics, `/healthz` and `/readyz`.
//! * [`config`] and [`cli`]: settings from the environment and flags; commands.
//! * [`usage`]: the process's CPU time and peak memory, for the run's summary.
//! * [`vectors`] and [`author`]: golden vectors and the transform author's kit.

pub mod author;
pub mod cli;
pub mod config;
pub mod dberror;
pub mod dead_letters;
pub mod kms;
pub mod ledger;
pub mod masking;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod rekey;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod source;
pub mod swap;
pub mod tls;
pub mod usage;
pub mod vectors;
