//! Stage 1, transform: the shipped component in wasmtime vs the same
//! login-core code compiled natively, both masking with the real keyring,
//! one core.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use login_core::{MaskBoth, Protected};
use maskpipe::masking::Keyring;
use maskpipe::record::{Outcome, TableRow, Value};
use maskpipe::runtime::{self, Limits, Transform};
use maskpipe::source::Received;

use crate::Args;
use crate::data::{generate, received};
use crate::report::{Report, Stats};

pub(crate) async fn bench(
    args: &Args,
    component: &Path,
    keyring: &Arc<Keyring>,
    report: &mut Report,
) -> Result<()> {
    const MESSAGES: usize = 50_000;
    let messages = received(&generate(MESSAGES, args.seed));
    let engine = runtime::engine()?;
    let transform = Arc::new(Transform::load(&engine, component, Limits::default()).await?);
    let mut worker = transform.worker(Arc::clone(keyring)).await?;
    // Warm up both paths (page faults, caches, lazy init).
    worker.run(&messages[..1_000]).await?;
    native(&messages[..1_000], keyring);

    let (mut wasm, mut native_us, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let started = Instant::now();
        for batch in messages.chunks(10) {
            std::hint::black_box(worker.run(batch).await?);
        }
        let wasm_us = started.elapsed().as_secs_f64() * 1e6 / MESSAGES as f64;
        let started = Instant::now();
        std::hint::black_box(native(&messages, keyring));
        let native_per = started.elapsed().as_secs_f64() * 1e6 / MESSAGES as f64;
        wasm.push(wasm_us);
        native_us.push(native_per);
        ratios.push(wasm_us / native_per);
    }
    let (wasm, native_s, ratio) = (Stats::of(wasm), Stats::of(native_us), Stats::of(ratios));
    let wasm_rate = Stats {
        min: 1e6 / wasm.max,
        median: 1e6 / wasm.median,
        max: 1e6 / wasm.min,
    };
    report.figure("transform_wasm_us_per_msg", wasm);
    report.figure("transform_native_us_per_msg", native_s);
    report.figure("transform_wasm_over_native", ratio);
    report.figure("transform_wasm_msgs_per_s", wasm_rate);
    report.markdown.push(format!(
        "### 1. Transform stage (one core, batches of 10, {MESSAGES} messages a run)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n",
        wasm.row("wasm component", "µs/msg"),
        native_s.row("same code, native", "µs/msg"),
        ratio.row("wasm / native", "×"),
        wasm_rate.row("wasm throughput", "msgs/s"),
    ));
    Ok(())
}

/// The reference transform compiled natively: batches of 10 into the same
/// outcomes the runtime makes of the component's, masked with the same
/// keyring and checked against the table.
pub(crate) fn native(messages: &[Received], keyring: &Keyring) -> usize {
    messages
        .chunks(10)
        .map(|batch| {
            let outcomes: Vec<Outcome> = batch
                .iter()
                .map(|m| native_outcome(&m.body, m.sent_timestamp_ms, keyring))
                .collect();
            std::hint::black_box(outcomes).len()
        })
        .sum()
}

pub(crate) fn native_outcome(body: &str, sent_timestamp_ms: u64, keyring: &Keyring) -> Outcome {
    let protect = |field: &str, value: Protected| match value {
        Protected::Masked(value) => keyring.mask(field, &value),
        Protected::Pseudonymized(value) => keyring.pseudonymize(field, &value),
        Protected::Clear(value) => value,
    };
    match login_core::transform(body, sent_timestamp_ms, &MaskBoth) {
        Ok(row) => {
            let values = vec![
                Some(Value::Text(row.user_id)),
                Some(Value::Text(row.device_type)),
                Some(Value::Text(protect("ip", row.masked_ip))),
                Some(Value::Text(protect("device_id", row.masked_device_id))),
                row.locale.map(Value::Text),
                Some(Value::Integer(row.app_version)),
                chrono::NaiveDate::from_ymd_opt(
                    row.create_date.year,
                    row.create_date.month.into(),
                    row.create_date.day.into(),
                )
                .map(Value::Date),
            ];
            // The same limits the runtime checks, from the declaration.
            let fits = USER_LOGINS
                .columns
                .iter()
                .zip(&values)
                .all(|(column, value)| match (column.kind, value) {
                    (maskpipe::schema::ColumnType::Text { max_chars }, Some(Value::Text(text))) => {
                        let limit = max_chars as usize;
                        !text.contains('\0')
                            && (text.len() <= limit || text.chars().count() <= limit)
                    }
                    _ => true,
                });
            if fits {
                Outcome::Rows(vec![TableRow { table: 0, values }])
            } else {
                Outcome::Rejected(maskpipe::record::Rejection::new(
                    maskpipe::record::reason::COLUMN_OVERFLOW,
                    "a value does not fit its column",
                ))
            }
        }
        Err(rejection) => Outcome::Rejected(maskpipe::record::Rejection::new(
            rejection.code,
            rejection.detail,
        )),
    }
}

pub(crate) static USER_LOGINS: std::sync::LazyLock<maskpipe::schema::Table> =
    std::sync::LazyLock::new(maskpipe::schema::user_logins);
