//! Stage 2, sink: rows/s into PostgreSQL as the pipeline writes them:
//! messages of several receives in one transaction (up to
//! `maskpipe::pipeline::DEFAULT_COMMIT_MESSAGES`) over the pipeline's
//! default writer connections (`DEFAULT_WRITERS`), with ledger and dead
//! letters. Beside it, the shape the pipeline wrote before it coalesced
//! receives (one transaction per batch of 10, 4 connections), so the gain
//! shows; and `sink-durable`: both shapes against the durable cluster
//! (fsync, synchronous_commit and full_page_writes on: every commit waits
//! for its WAL flush, as in production), where coalescing matters most.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use maskpipe::masking::Keyring;
use maskpipe::pipeline::{DEFAULT_COMMIT_MESSAGES, DEFAULT_WRITERS};
use maskpipe::record::Outcome;
use maskpipe::sink::{Database, PgSink, Processed};
use maskpipe::source::Received;

use crate::Args;
use crate::data::{generate, received};
use crate::report::{Report, Stats};
use crate::stack::{drop_database, fresh_database, login_schema, prepare_database};
use crate::transform::native_outcome;

pub(crate) const SINK_ROWS: usize = 40_000;

/// How a run writes: messages per transaction, over connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) per_transaction: usize,
    pub(crate) connections: usize,
}

/// As the pipeline writes: its defaults, or what `MASKPIPE_COMMIT_MESSAGES`
/// and `MASKPIPE_WRITERS` say (the host's own settings), so a sink run can
/// try the settings a deployment would use.
pub(crate) fn pipeline_shape() -> Shape {
    let setting = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .filter(|&value| value > 0)
            .unwrap_or(default)
    };
    Shape {
        per_transaction: setting("MASKPIPE_COMMIT_MESSAGES", DEFAULT_COMMIT_MESSAGES),
        connections: setting("MASKPIPE_WRITERS", DEFAULT_WRITERS),
    }
}

/// As the pipeline wrote before it coalesced receives: one transaction per
/// receive of 10, one connection per poller (4).
pub(crate) const BATCH10: Shape = Shape {
    per_transaction: 10,
    connections: 4,
};

/// One figure of the stage: a shape against a cluster.
pub(crate) struct Target<'a> {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) admin_url: &'a str,
    pub(crate) shape: Shape,
}

/// The targets' runs interleaved (run 1 of each, then run 2 of each…), each
/// into a fresh database on its cluster.
pub(crate) async fn bench(
    args: &Args,
    targets: &[Target<'_>],
    keyring: &Arc<Keyring>,
    report: &mut Report,
) -> Result<()> {
    let (messages, outcomes) = sink_input(args, keyring);
    let mut rates = vec![Vec::new(); targets.len()];
    for run in 0..args.runs {
        for (target, rates) in targets.iter().zip(&mut rates) {
            let database = fresh_database(target.admin_url, "sink").await?;
            let url = Database::new(&database, None)?;
            prepare_database(&url).await?;
            let rate = sink_once(&url, run, target.shape, &messages, &outcomes, keyring).await;
            drop_database(target.admin_url, &database).await?;
            let rate = rate?;
            eprintln!("sink, run {}: {} {rate:.0} rows/s", run + 1, target.key);
            rates.push(rate);
        }
    }
    let mut rows = Vec::new();
    for (target, rates) in targets.iter().zip(rates) {
        let rate = Stats::of(rates);
        report.figure(target.key, rate);
        let Shape {
            per_transaction,
            connections,
        } = target.shape;
        rows.push(rate.row(
            &format!(
                "{}: {per_transaction} messages a transaction, {connections} connections",
                target.label
            ),
            "rows/s",
        ));
    }
    report.summary.insert(
        "sink_commit_messages".into(),
        serde_json::json!(pipeline_shape().per_transaction),
    );
    report.summary.insert(
        "sink_writers".into(),
        serde_json::json!(pipeline_shape().connections),
    );
    report.markdown.push(format!(
        "### 2. Sink (PostgreSQL 15 on 127.0.0.1, ledger + dead letters, {SINK_ROWS} rows a run; throwaway = fsync, synchronous_commit, full_page_writes off; durable = on)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    ));
    Ok(())
}

/// The sink's write path when the ledger is large: one database whose
/// ledger is pre-filled (one `INSERT … SELECT generate_series`, ages spread
/// over the default 15-day retention) before the same runs as stage 2 (the pipeline's shape).
pub(crate) async fn bench_full_ledger(
    args: &Args,
    admin_url: &str,
    keyring: &Arc<Keyring>,
    report: &mut Report,
) -> Result<()> {
    let (messages, outcomes) = sink_input(args, keyring);
    let database = fresh_database(admin_url, "ledger").await?;
    let url = Database::new(&database, None)?.with_timeout(std::time::Duration::from_secs(3600));
    prepare_database(&url).await?;
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let filling = Instant::now();
    client
        .execute(
            "INSERT INTO maskpipe_processed (message_id, outcome, component_digest, processed_at)
             SELECT md5(n::text), 'row', 'prefill', now() - make_interval(secs => n % 1296000)
             FROM generate_series(1, $1::int8) n",
            &[&args.ledger_rows],
        )
        .await?;
    client
        .batch_execute("VACUUM ANALYZE maskpipe_processed")
        .await?;
    let fill_seconds = filling.elapsed().as_secs_f64();
    eprintln!(
        "pre-filled the ledger with {} rows in {fill_seconds:.0} s",
        args.ledger_rows
    );
    let mut rates = Vec::new();
    for run in 0..args.runs {
        rates.push(sink_once(&url, run, pipeline_shape(), &messages, &outcomes, keyring).await?);
    }
    drop_database(admin_url, &database).await?;
    let rate = Stats::of(rates);
    report.figure("sink_full_ledger_rows_per_s", rate);
    report.markdown.push(format!(
        "### 2b. Sink with a full ledger (as 2, {} messages a transaction over {} connections, against a ledger pre-filled with {} rows in {fill_seconds:.0} s)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n",
        pipeline_shape().per_transaction,
        pipeline_shape().connections,
        args.ledger_rows,
        rate.row("rows written", "rows/s")
    ));
    Ok(())
}

pub(crate) type SinkInput = (Arc<Vec<Received>>, Arc<Vec<Outcome>>);

pub(crate) fn sink_input(args: &Args, keyring: &Arc<Keyring>) -> SinkInput {
    let bodies = generate(SINK_ROWS, args.seed);
    let outcomes: Vec<Outcome> = bodies
        .iter()
        .map(|body| native_outcome(body, 1_670_839_200_000, keyring))
        .collect();
    (Arc::new(received(&bodies)), Arc::new(outcomes))
}

/// One run: every message written in transactions of
/// `shape.per_transaction` over `shape.connections` connections (each takes
/// every n-th transaction); returns rows/s. Message ids are prefixed by
/// `run`, so runs never collide.
pub(crate) async fn sink_once(
    url: &Database,
    run: usize,
    shape: Shape,
    messages: &Arc<Vec<Received>>,
    outcomes: &Arc<Vec<Outcome>>,
    keyring: &Arc<Keyring>,
) -> Result<f64> {
    let messages = Arc::new(
        messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m.id = format!("{run}-{}", m.id);
                m
            })
            .collect::<Vec<_>>(),
    );
    let schema = login_schema();
    let Shape {
        per_transaction,
        connections,
    } = shape;
    let transactions = messages.len().div_ceil(per_transaction);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..connections {
        let (url, messages, outcomes, keyring, schema) = (
            url.clone(),
            Arc::clone(&messages),
            Arc::clone(outcomes),
            Arc::clone(keyring),
            Arc::clone(&schema),
        );
        writers.spawn(async move {
            let mut sink = PgSink::connect(&url).await?;
            for transaction in (writer..transactions).step_by(connections) {
                let start = transaction * per_transaction;
                let range = start..(start + per_transaction).min(messages.len());
                let batch: Vec<Processed<'_>> = messages[range.clone()]
                    .iter()
                    .zip(&outcomes[range])
                    .map(|(message, outcome)| Processed { message, outcome })
                    .collect();
                sink.write_batch(&batch, &schema, "bench", &keyring).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(messages.len() as f64 / started.elapsed().as_secs_f64())
}
