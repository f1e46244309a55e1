//! `just bench`: maskpipe's benchmark suite, against the local stack.
//!
//! Every figure is measured several times, interleaved with its baseline in
//! the same run (the machines are noisy), and reported as min / median /
//! max. Results go to `target/bench/summary.json` (medians, machine-readable)
//! and `target/bench/report.md` (the tables BENCHMARKS.md quotes).
//!
//! 1. Transform: the shipped component in wasmtime vs the same login-core
//!    code compiled natively, both masking with the real keyring, one core.
//!    1b (`python`): the Python reference beside the Rust one: size, cold
//!    and cached load, a hot swap's validation with a cold and a warm
//!    cache, µs/msg and instance memory.
//! 2. Sink: rows/s into PostgreSQL, batches of 10, as the pipeline writes them;
//!    2b (`--only sink-full-ledger`, not in the default suite: filling takes
//!    minutes): the same against a ledger pre-filled with 10 million rows.
//! 3. End to end: `maskpipe run --drain` vs a no-op consumer (receive +
//!    delete only, same client, same concurrency) on the same queue server.
//! 4. CPU per message and 5. peak RSS of the host process during (3).
//!
//! Sweeps: pollers 1..16, replicas 1..4, and N = 10k / 20k / 50k.
//!
//! Every queue and database a run creates is dropped after it, so the
//! servers do not slow down as the suite goes on, and (3) alternates which
//! consumer goes first. During (3) and the sweeps the queue server has a CPU
//! of its own (see `pinning`; `--no-pin` turns that off).

mod pinning;
mod python;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use login_core::{MaskBoth, Protected};
use maskpipe::masking::{Keyring, MasterKey};
use maskpipe::record::{Outcome, TableRow, Value};
use maskpipe::runtime::{self, Limits, Transform};
use maskpipe::schema::Schema;
use maskpipe::sink::{Database, PgSink, Processed};
use maskpipe::source::{Received, SqsSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "maskpipe's benchmark suite (run through `just bench`)")]
struct Args {
    /// Repetitions of each measured figure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Messages for the end-to-end comparison.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Pollers (and no-op consumer tasks) for the end-to-end comparison;
    /// default: the host's own default.
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// Skip the sweeps (pollers, replicas, N).
    #[arg(long)]
    no_sweeps: bool,
    /// Run only this stage (for profiling one stage: `perf record -g -- maskpipe-bench --only transform`).
    #[arg(long, value_enum)]
    only: Option<Stage>,
    /// Only print a generated data set of this many messages (JSON Lines).
    #[arg(long, value_name = "N")]
    generate: Option<usize>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Do not give LocalStack a CPU of its own during the end-to-end stages.
    #[arg(long)]
    no_pin: bool,
    /// Ledger rows pre-filled for the sink-full-ledger stage.
    #[arg(long, default_value_t = 10_000_000)]
    ledger_rows: i64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Transform,
    /// The Python reference beside the Rust one.
    Python,
    Sink,
    /// The sink against a pre-filled ledger (only with `--only`).
    SinkFullLedger,
    EndToEnd,
}

const BENCH_KEY: &str = "62656e63686d61726b206b6579202d207075626c6963202d206e6f7420726561";

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(count) = args.generate {
        for body in generate(count, args.seed) {
            println!("{body}");
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// Realistic login messages like the sample's, about 1 % malformed;
/// deterministic for a seed.
fn generate(count: usize, seed: u64) -> Vec<String> {
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

/// min / median / max of repeated measurements.
#[derive(Debug, Clone, Copy)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            min: values[0],
            median: values[values.len() / 2],
            max: values[values.len() - 1],
        }
    }

    fn row(&self, name: &str, unit: &str) -> String {
        format!(
            "| {name} | {} | {} | {} | {unit} |",
            fmt(self.min),
            fmt(self.median),
            fmt(self.max)
        )
    }
}

fn fmt(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn received(bodies: &[String]) -> Vec<Received> {
    bodies
        .iter()
        .enumerate()
        .map(|(index, body)| {
            Received::local(format!("bench-{index}"), body.as_str(), 1_670_839_200_000)
        })
        .collect()
}

struct Report {
    summary: BTreeMap<String, serde_json::Value>,
    markdown: Vec<String>,
}

impl Report {
    fn figure(&mut self, key: &str, stats: Stats) {
        self.summary.insert(key.to_owned(), json!(stats.median));
        self.summary
            .insert(format!("{key}_min_max"), json!([stats.min, stats.max]));
    }
}

async fn run(args: Args) -> Result<()> {
    let keyring = Arc::new(Keyring::new("bench", &MasterKey::parse(BENCH_KEY)?, &[])?);
    let component = PathBuf::from(
        std::env::var("MASKPIPE_TRANSFORM")
            .unwrap_or_else(|_| "target/wasm32-wasip2/release/transform_wasm.wasm".into()),
    );
    let admin_url = std::env::var("MASKPIPE_BENCH_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25432/postgres".into());
    let mut report = Report {
        summary: BTreeMap::new(),
        markdown: Vec::new(),
    };
    report.markdown.push(format!(
        "Machine: {} cores, {}. Runs per figure: {}. Data: generated, seed {}, ~1 % malformed.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_else(|| "unknown CPU".into()),
        args.runs,
        args.seed
    ));

    let wanted = |stage: Stage| args.only.is_none_or(|only| only == stage);
    if wanted(Stage::Transform) {
        bench_transform(&args, &component, &keyring, &mut report).await?;
    }
    if wanted(Stage::Python) {
        python::bench(args.runs, args.seed, &component, &keyring, &mut report).await?;
    }
    if wanted(Stage::Sink) {
        bench_sink(&args, &admin_url, &keyring, &mut report).await?;
    }
    if args.only == Some(Stage::SinkFullLedger) {
        bench_sink_full_ledger(&args, &admin_url, &keyring, &mut report).await?;
    }
    let end_to_end = wanted(Stage::EndToEnd);
    let sweeping = !args.no_sweeps && args.only.is_none();
    if end_to_end || sweeping {
        let _pinned = pin(&args, &mut report);
        if end_to_end {
            bench_end_to_end(&args, &component, &admin_url, &mut report).await?;
        }
        if sweeping {
            sweeps(&args, &component, &admin_url, &mut report).await?;
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let summary = serde_json::to_string_pretty(&report.summary)?;
    std::fs::write(args.out.join("summary.json"), &summary)?;
    let markdown = report.markdown.join("\n");
    std::fs::write(args.out.join("report.md"), &markdown)?;
    println!("{markdown}\n\n{summary}");
    Ok(())
}

async fn bench_transform(
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
fn native(messages: &[Received], keyring: &Keyring) -> usize {
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

fn native_outcome(body: &str, sent_timestamp_ms: u64, keyring: &Keyring) -> Outcome {
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

static USER_LOGINS: std::sync::LazyLock<maskpipe::schema::Table> =
    std::sync::LazyLock::new(maskpipe::schema::user_logins);

/// The reference transform's declaration, for the stages that run no
/// component.
fn login_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![maskpipe::schema::user_logins()]).expect("user_logins is valid"))
}

/// maskpipe's own tables and `user_logins`, as a host's startup makes them.
async fn prepare_database(url: &Database) -> Result<()> {
    let mut sink = PgSink::connect(url).await?;
    sink.ensure_schema().await?;
    sink.prepare_tables(&login_schema(), true).await
}

async fn fresh_database(admin_url: &str, tag: &str) -> Result<String> {
    let name = format!(
        "mp_bench_{tag}_{}_{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    );
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin_url
        .strip_suffix("/postgres")
        .context("admin URL must end in /postgres")?;
    Ok(format!("{base}/{name}"))
}

/// Drops a database `fresh_database` made (and whoever is still on it).
async fn drop_database(admin_url: &str, url: &str) -> Result<()> {
    let name = url
        .rsplit('/')
        .next()
        .context("database URL without a name")?;
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

const SINK_ROWS: usize = 40_000;
const SINK_CONNECTIONS: usize = 4;

async fn bench_sink(
    args: &Args,
    admin_url: &str,
    keyring: &Arc<Keyring>,
    report: &mut Report,
) -> Result<()> {
    let (messages, outcomes) = sink_input(args, keyring);
    let mut rates = Vec::new();
    for run in 0..args.runs {
        let database = fresh_database(admin_url, "sink").await?;
        let url = Database::new(&database, None)?;
        prepare_database(&url).await?;
        rates.push(sink_once(&url, run, &messages, &outcomes, keyring).await?);
        drop_database(admin_url, &database).await?;
    }
    let rate = Stats::of(rates);
    report.figure("sink_rows_per_s", rate);
    report.markdown.push(format!(
        "### 2. Sink (PostgreSQL 15 on 127.0.0.1, {SINK_CONNECTIONS} connections, batches of 10 with ledger + dead letters, {SINK_ROWS} rows a run)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n",
        rate.row("rows written", "rows/s")
    ));
    Ok(())
}

/// The sink's write path when the ledger is large: one database whose
/// ledger is pre-filled (one `INSERT … SELECT generate_series`, ages spread
/// over the default 15-day retention) before the same runs as stage 2.
async fn bench_sink_full_ledger(
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
        rates.push(sink_once(&url, run, &messages, &outcomes, keyring).await?);
    }
    drop_database(admin_url, &database).await?;
    let rate = Stats::of(rates);
    report.figure("sink_full_ledger_rows_per_s", rate);
    report.markdown.push(format!(
        "### 2b. Sink with a full ledger (as 2, against a ledger pre-filled with {} rows in {fill_seconds:.0} s)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n",
        args.ledger_rows,
        rate.row("rows written", "rows/s")
    ));
    Ok(())
}

type SinkInput = (Arc<Vec<Received>>, Arc<Vec<Outcome>>);

fn sink_input(args: &Args, keyring: &Arc<Keyring>) -> SinkInput {
    let bodies = generate(SINK_ROWS, args.seed);
    let outcomes: Vec<Outcome> = bodies
        .iter()
        .map(|body| native_outcome(body, 1_670_839_200_000, keyring))
        .collect();
    (Arc::new(received(&bodies)), Arc::new(outcomes))
}

/// One run: every message written in batches of 10 over the connections;
/// returns rows/s. Message ids are prefixed by `run`, so runs never collide.
async fn sink_once(
    url: &Database,
    run: usize,
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
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..SINK_CONNECTIONS {
        let (url, messages, outcomes, keyring, schema) = (
            url.clone(),
            Arc::clone(&messages),
            Arc::clone(outcomes),
            Arc::clone(keyring),
            Arc::clone(&schema),
        );
        writers.spawn(async move {
            let mut sink = PgSink::connect(&url).await?;
            let chunks: Vec<usize> = (0..SINK_ROWS / 10)
                .filter(|c| c % SINK_CONNECTIONS == writer)
                .collect();
            for chunk in chunks {
                let range = chunk * 10..chunk * 10 + 10;
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
    Ok(SINK_ROWS as f64 / started.elapsed().as_secs_f64())
}

/// Gives LocalStack a CPU of its own unless told not to (or it cannot be
/// done); says which in the report either way.
fn pin(args: &Args, report: &mut Report) -> Option<pinning::ServerCore> {
    let stack_dir =
        PathBuf::from(std::env::var("MASKPIPE_STACK_DIR").unwrap_or_else(|_| ".data".into()));
    let pinned = if args.no_pin {
        Err("--no-pin".to_owned())
    } else {
        pinning::ServerCore::pin(&stack_dir).map_err(|error| format!("{error:#}"))
    };
    let split = match &pinned {
        Ok(pinned) => pinned.describe(),
        Err(why) => format!("none ({why}): the consumers share every CPU with LocalStack"),
    };
    eprintln!("CPU split for the end-to-end stages: {split}");
    report
        .markdown
        .push(format!("CPU split for the end-to-end stages: {split}.\n"));
    report
        .summary
        .insert("e2e_server_has_own_cpu".into(), json!(pinned.is_ok()));
    pinned.ok()
}

async fn preload(queue: &SqsSource, bodies: &[String]) -> Result<()> {
    let mut senders = tokio::task::JoinSet::new();
    for part in bodies.chunks(bodies.len().div_ceil(8).max(1)) {
        let (queue, part) = (queue.clone(), part.to_vec());
        senders.spawn(async move { queue.send(&part).await });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    Ok(())
}

async fn fresh_queue(tag: &str) -> Result<SqsSource> {
    let name = format!(
        "mp-bench-{tag}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    );
    Ok(SqsSource::create(&name).await?.0)
}

/// The no-op consumer on a fresh queue holding `bodies`; the queue is
/// deleted afterwards.
async fn noop_once(bodies: &[String], consumers: usize) -> Result<(f64, f64)> {
    let queue = fresh_queue("noop").await?;
    preload(&queue, bodies).await?;
    let drained = noop_drain(&queue, consumers).await;
    queue.delete_queue().await?;
    drained
}

/// `maskpipe run --drain` on a fresh queue holding `bodies` into a fresh
/// database; both are dropped afterwards.
async fn host_once(
    component: &Path,
    admin_url: &str,
    bodies: &[String],
    pollers: usize,
    replicas: usize,
) -> Result<HostRun> {
    let queue = fresh_queue("e2e").await?;
    preload(&queue, bodies).await?;
    let database = fresh_database(admin_url, "e2e").await?;
    let run = host_drain(
        component,
        &queue,
        &database,
        pollers,
        replicas,
        bodies.len(),
    )
    .await;
    queue.delete_queue().await?;
    drop_database(admin_url, &database).await?;
    run
}

/// What one `maskpipe run --drain` reported.
#[derive(Debug, Default, Clone, Copy)]
struct HostRun {
    msgs_per_s: f64,
    cpu_us_per_msg: f64,
    peak_rss_mib: f64,
}

async fn host_drain(
    component: &Path,
    queue: &SqsSource,
    database: &str,
    pollers: usize,
    replicas: usize,
    expected: usize,
) -> Result<HostRun> {
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..replicas {
        children.push(
            tokio::process::Command::new("target/release/maskpipe")
                .args([
                    "run",
                    "--drain",
                    "--create-tables",
                    "--wait-seconds",
                    "1",
                    "--progress-seconds",
                    "0",
                    "--log",
                    "warn",
                ])
                .args(["--pollers", &pollers.to_string()])
                .args(["--queue", queue.queue_url(), "--database-url", database])
                // Metrics on, as in production, on a port of each replica's own.
                .args(["--metrics-addr", "127.0.0.1:0"])
                .arg("--transform")
                .arg(component)
                .env("MASKPIPE_MASTER_KEY", BENCH_KEY)
                .output(),
        );
    }
    let mut outputs = Vec::new();
    for child in children {
        outputs.push(child.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut run = HostRun::default();
    let mut received = 0.0;
    let mut cpu = 0.0;
    for output in &outputs {
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "maskpipe failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let field = |label: &str| -> f64 {
            stdout
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .and_then(|l| {
                    l.trim_start()[label.len()..]
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        received += field("messages received");
        cpu += field("cpu time");
        run.peak_rss_mib = run.peak_rss_mib.max(field("peak memory (RSS)"));
        if replicas == 1 {
            run.msgs_per_s = field("throughput");
        }
    }
    if (received as usize) < expected {
        bail!("the host received {received} of {expected} messages");
    }
    if replicas > 1 {
        // Replicas overlap: measure the whole wall time, less the final 1 s
        // empty poll each one ends with.
        run.msgs_per_s = received / (elapsed - 1.0).max(0.001);
    }
    run.cpu_us_per_msg = cpu * 1e6 / received;
    Ok(run)
}

/// This process's CPU time so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Receive + delete only: the ceiling the queue server allows, measured over
/// the same window as the host's (first receive to last delete). Returns
/// msgs/s and the CPU µs it spent per message (nothing else runs in this
/// process meanwhile): the floor of any consumer using this client.
async fn noop_drain(queue: &SqsSource, consumers: usize) -> Result<(f64, f64)> {
    let cpu_before = cpu_seconds();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..consumers {
        let queue = queue.clone();
        tasks.spawn(async move {
            let mut count = 0usize;
            let mut window: Option<(Instant, Instant)> = None;
            loop {
                let messages = queue.receive(10, 1, None).await?;
                if messages.is_empty() {
                    return anyhow::Ok((count, window));
                }
                let first = Instant::now();
                queue.delete(&messages).await?;
                count += messages.len();
                window = Some((window.map_or(first, |w| w.0), Instant::now()));
            }
        });
    }
    let (mut count, mut first, mut last) = (0, None::<Instant>, None::<Instant>);
    while let Some(done) = tasks.join_next().await {
        let (n, window) = done??;
        count += n;
        if let Some((a, b)) = window {
            first = Some(first.map_or(a, |f| f.min(a)));
            last = Some(last.map_or(b, |l| l.max(b)));
        }
    }
    let seconds = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => bail!("the no-op consumer received nothing"),
    };
    let cpu_us_per_msg = (cpu_seconds() - cpu_before) * 1e6 / count as f64;
    Ok((count as f64 / seconds, cpu_us_per_msg))
}

async fn bench_end_to_end(
    args: &Args,
    component: &Path,
    admin_url: &str,
    report: &mut Report,
) -> Result<()> {
    let bodies = generate(args.messages, args.seed);
    let (mut host, mut noop, mut ratio, mut cpu, mut rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut noop_cpu = vec![];
    for run in 0..args.runs {
        // Alternate who goes first, so a server that drifts during the run
        // weighs on both consumers alike.
        let (noop_run, host_run) = if run % 2 == 0 {
            let noop_run = noop_once(&bodies, args.pollers).await?;
            (
                noop_run,
                host_once(component, admin_url, &bodies, args.pollers, 1).await?,
            )
        } else {
            let host_run = host_once(component, admin_url, &bodies, args.pollers, 1).await?;
            (noop_once(&bodies, args.pollers).await?, host_run)
        };
        let (noop_rate, noop_cpu_per_msg) = noop_run;
        eprintln!(
            "end to end, run {}: maskpipe {:.0} msgs/s, no-op {:.0} msgs/s, ratio {:.3}, host CPU {:.1} µs/msg",
            run + 1,
            host_run.msgs_per_s,
            noop_rate,
            host_run.msgs_per_s / noop_rate,
            host_run.cpu_us_per_msg
        );
        noop_cpu.push(noop_cpu_per_msg);
        host.push(host_run.msgs_per_s);
        noop.push(noop_rate);
        ratio.push(host_run.msgs_per_s / noop_rate);
        cpu.push(host_run.cpu_us_per_msg);
        rss.push(host_run.peak_rss_mib);
    }
    let (host, noop, ratio, cpu, rss) = (
        Stats::of(host),
        Stats::of(noop),
        Stats::of(ratio),
        Stats::of(cpu),
        Stats::of(rss),
    );
    let noop_cpu = Stats::of(noop_cpu);
    report.figure("noop_cpu_us_per_msg", noop_cpu);
    report.figure("e2e_msgs_per_s", host);
    report.figure("noop_msgs_per_s", noop);
    report.figure("e2e_over_noop", ratio);
    report.figure("host_cpu_us_per_msg", cpu);
    report.figure("peak_rss_mib", rss);
    report
        .summary
        .insert("e2e_messages".into(), json!(args.messages));
    report
        .summary
        .insert("e2e_pollers".into(), json!(args.pollers));
    report.markdown.push(format!(
        "### 3–5. End to end ({} messages preloaded in LocalStack, {} pollers; no-op = receive + delete, same client and concurrency)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n{}\n{}\n",
        args.messages,
        args.pollers,
        host.row("maskpipe drain", "msgs/s"),
        noop.row("no-op consumer", "msgs/s"),
        ratio.row("maskpipe / no-op", "×"),
        cpu.row("host CPU (user + sys)", "µs/msg"),
        noop_cpu.row("no-op consumer CPU (its floor)", "µs/msg"),
        rss.row("host peak RSS", "MiB"),
    ));
    Ok(())
}

async fn sweeps(args: &Args, component: &Path, admin_url: &str, report: &mut Report) -> Result<()> {
    const SWEEP_MESSAGES: usize = 10_000;
    let bodies = generate(SWEEP_MESSAGES, args.seed);

    let mut rows = Vec::new();
    for pollers in [1, 2, 4, 8, 16] {
        let (noop_rate, _) = noop_once(&bodies, pollers).await?;
        let run = host_once(component, admin_url, &bodies, pollers, 1).await?;
        report.summary.insert(
            format!("pollers_{pollers}_msgs_per_s"),
            json!(run.msgs_per_s),
        );
        rows.push(format!(
            "| {pollers} | {:.0} | {:.0} | {:.2} | {:.1} |",
            run.msgs_per_s,
            noop_rate,
            run.msgs_per_s / noop_rate,
            run.cpu_us_per_msg
        ));
    }
    report.markdown.push(format!(
        "### Pollers (one process, {SWEEP_MESSAGES} messages, one run each)\n\n| pollers | maskpipe msgs/s | no-op msgs/s | ratio | host CPU µs/msg |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    ));

    let mut rows = Vec::new();
    for replicas in 1..=4 {
        let run = host_once(component, admin_url, &bodies, 4, replicas).await?;
        report.summary.insert(
            format!("replicas_{replicas}_msgs_per_s"),
            json!(run.msgs_per_s),
        );
        rows.push(format!(
            "| {replicas} | {:.0} | {:.1} |",
            run.msgs_per_s, run.cpu_us_per_msg
        ));
    }
    report.markdown.push(format!(
        "### Replicas (processes × 4 pollers on one queue, {SWEEP_MESSAGES} messages, one run each)\n\n| processes | msgs/s | host CPU µs/msg |\n|---|---|---|\n{}\n",
        rows.join("\n")
    ));

    let mut rows = Vec::new();
    for n in [10_000, 20_000, 50_000] {
        let bodies = generate(n, args.seed);
        let run = host_once(component, admin_url, &bodies, args.pollers, 1).await?;
        report
            .summary
            .insert(format!("n_{n}_msgs_per_s"), json!(run.msgs_per_s));
        report
            .summary
            .insert(format!("n_{n}_cpu_us_per_msg"), json!(run.cpu_us_per_msg));
        report
            .summary
            .insert(format!("n_{n}_peak_rss_mib"), json!(run.peak_rss_mib));
        rows.push(format!(
            "| {n} | {:.0} | {:.1} | {:.1} |",
            run.msgs_per_s, run.cpu_us_per_msg, run.peak_rss_mib
        ));
    }
    report.markdown.push(format!(
        "### Cost against N ({} pollers, one run each)\n\n| messages | msgs/s | host CPU µs/msg | peak RSS MiB |\n|---|---|---|---|\n{}\n",
        args.pollers,
        rows.join("\n")
    ));
    Ok(())
}
