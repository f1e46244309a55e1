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
//! 2. Sink: rows/s into PostgreSQL as the pipeline writes them (several
//!    receives a transaction), beside the old batches of 10;
//!    `sink-durable`: the same against the durable cluster. 2b
//!    (`--only sink-full-ledger`, not in the default suite: filling takes
//!    minutes): against a ledger pre-filled with 10 million rows.
//! 3. End to end: `maskpipe run --drain` vs a no-op consumer (receive +
//!    delete only, same client, same concurrency) on the same queue server;
//!    `end-to-end-durable`: the host into the durable cluster.
//!    3b (`rtt`): the host at its defaults vs a receive-only consumer with
//!    every SQS request delayed by `--rtt-ms` (a proxy in this process).
//! 4. CPU per message and 5. peak RSS of the host process during (3).
//!
//! Sweeps: pollers 1..16, replicas 1..4, and N = 10k / 20k / 50k.
//!
//! Every queue and database a run creates is dropped after it, so the
//! servers do not slow down as the suite goes on, and (3) alternates which
//! consumer goes first. During (3), (3b) and the sweeps the queue server has
//! a CPU of its own (see `pinning`; `--no-pin` turns that off). The
//! summary's `stage_seconds` says how long each stage took.
//!
//! The clusters (`scripts/stack.sh up` starts both): the throwaway one
//! (fsync, synchronous_commit and full_page_writes off) at
//! `MASKPIPE_BENCH_ADMIN_URL`, default
//! `postgres://postgres@127.0.0.1:25432/postgres`; the durable one (all
//! three on, as in production) at `MASKPIPE_BENCH_DURABLE_ADMIN_URL`,
//! default the same on port `MASKPIPE_PG_DURABLE_PORT` (25433). Both URLs
//! must end in `/postgres`: each run creates a database beside it and drops
//! it afterwards. The queue server is `AWS_ENDPOINT_URL` (demo.env's).

mod consumers;
mod data;
mod end_to_end;
mod floor;
mod pinning;
mod python;
mod report;
mod rtt;
mod sink;
mod stack;
mod sweeps;
mod transform;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use maskpipe::masking::{Keyring, MasterKey};

use crate::data::generate;
use crate::report::{Report, Stages};

#[derive(Parser, Debug)]
#[command(about = "maskpipe's benchmark suite (run through `just bench`)")]
pub(crate) struct Args {
    /// Repetitions of each measured figure.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Messages for the end-to-end comparison.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) messages: usize,
    /// Pollers (and no-op consumer tasks) for the end-to-end comparison;
    /// default: the host's own default.
    #[arg(long, default_value_t = 4)]
    pub(crate) pollers: usize,
    /// Skip the sweeps (pollers, replicas, N).
    #[arg(long)]
    pub(crate) no_sweeps: bool,
    /// Run only this stage (for profiling one stage: `perf record -g -- maskpipe-bench --only transform`).
    #[arg(long, value_enum)]
    pub(crate) only: Option<Stage>,
    /// Only print a generated data set of this many messages (JSON Lines).
    #[arg(long, value_name = "N")]
    pub(crate) generate: Option<usize>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    #[arg(long, default_value = "target/bench")]
    pub(crate) out: PathBuf,
    /// Do not give LocalStack a CPU of its own during the end-to-end stages.
    #[arg(long)]
    pub(crate) no_pin: bool,
    /// Ledger rows pre-filled for the sink-full-ledger stage.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) ledger_rows: i64,
    /// Milliseconds the rtt stage's proxy adds to every SQS request.
    #[arg(long, default_value_t = 10)]
    pub(crate) rtt_ms: u64,
    /// Messages for the rtt stage.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rtt_messages: usize,
    /// Receive-only tasks of the rtt stage; default: the host's default
    /// pollers (read from `maskpipe run --help`).
    #[arg(long)]
    pub(crate) rtt_consumers: Option<usize>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Transform,
    /// The Python reference beside the Rust one.
    Python,
    /// The sink, as the pipeline writes and as it wrote (batches of 10).
    Sink,
    /// The same against the durable cluster.
    SinkDurable,
    /// The sink against a pre-filled ledger (only with `--only`).
    SinkFullLedger,
    /// maskpipe vs the no-op consumer.
    EndToEnd,
    /// maskpipe into the durable cluster.
    EndToEndDurable,
    /// maskpipe vs a receive-only consumer, SQS behind a delay proxy.
    Rtt,
    /// The SQS client's floor: the SDK as maskpipe configures it vs a
    /// minimal HTTP/1.1 client on the same two requests.
    SqsClient,
    /// The same, with each SDK setting priced on its own (minutes; only
    /// with `--only`).
    SqsClientSettings,
}

pub(crate) const BENCH_KEY: &str =
    "62656e63686d61726b206b6579202d207075626c6963202d206e6f7420726561";

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

async fn run(args: Args) -> Result<()> {
    let keyring = Arc::new(Keyring::new("bench", &MasterKey::parse(BENCH_KEY)?, &[])?);
    let component = PathBuf::from(
        std::env::var("MASKPIPE_TRANSFORM")
            .unwrap_or_else(|_| "target/wasm32-wasip2/release/transform_wasm.wasm".into()),
    );
    let admin_url = std::env::var("MASKPIPE_BENCH_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25432/postgres".into());
    let durable_url = std::env::var("MASKPIPE_BENCH_DURABLE_ADMIN_URL").unwrap_or_else(|_| {
        let port = std::env::var("MASKPIPE_PG_DURABLE_PORT").unwrap_or_else(|_| "25433".into());
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    });
    let mut report = Report {
        summary: Default::default(),
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
    let mut stages = Stages::default();
    if wanted(Stage::Transform) {
        let started = Instant::now();
        transform::bench(&args, &component, &keyring, &mut report).await?;
        stages.took("transform", started);
    }
    if wanted(Stage::Python) {
        let started = Instant::now();
        python::bench(args.runs, args.seed, &component, &keyring, &mut report).await?;
        stages.took("python", started);
    }
    let mut sinks = Vec::new();
    if wanted(Stage::Sink) {
        sinks.push(sink::Target {
            key: "sink_rows_per_s",
            label: "as the pipeline writes, throwaway cluster",
            admin_url: &admin_url,
            shape: sink::pipeline_shape(),
        });
        sinks.push(sink::Target {
            key: "sink_batch10_rows_per_s",
            label: "batches of 10 (before coalescing), throwaway cluster",
            admin_url: &admin_url,
            shape: sink::BATCH10,
        });
    }
    if wanted(Stage::SinkDurable) {
        sinks.push(sink::Target {
            key: "sink_durable_rows_per_s",
            label: "as the pipeline writes, durable cluster",
            admin_url: &durable_url,
            shape: sink::pipeline_shape(),
        });
        sinks.push(sink::Target {
            key: "sink_durable_batch10_rows_per_s",
            label: "batches of 10 (before coalescing), durable cluster",
            admin_url: &durable_url,
            shape: sink::BATCH10,
        });
    }
    if !sinks.is_empty() {
        let started = Instant::now();
        sink::bench(&args, &sinks, &keyring, &mut report).await?;
        stages.took("sink", started);
    }
    if args.only == Some(Stage::SinkFullLedger) {
        let started = Instant::now();
        sink::bench_full_ledger(&args, &admin_url, &keyring, &mut report).await?;
        stages.took("sink_full_ledger", started);
    }
    let consumers = end_to_end::Consumers {
        fast: wanted(Stage::EndToEnd),
        durable: wanted(Stage::EndToEndDurable).then_some(durable_url.as_str()),
    };
    let end_to_end = consumers.fast || consumers.durable.is_some();
    let rtt = wanted(Stage::Rtt);
    let sweeping = !args.no_sweeps && args.only.is_none();
    let floor = wanted(Stage::SqsClient) || args.only == Some(Stage::SqsClientSettings);
    if end_to_end || rtt || sweeping || floor {
        let _pinned = end_to_end::pin(&args, &mut report);
        if end_to_end {
            let started = Instant::now();
            end_to_end::bench(&args, &component, &admin_url, consumers, &mut report).await?;
            stages.took("end_to_end", started);
        }
        if rtt {
            let started = Instant::now();
            rtt::bench(&args, &component, &admin_url, &mut report).await?;
            stages.took("rtt", started);
        }
        if floor {
            let started = Instant::now();
            let clients: &[floor::Client] = if args.only == Some(Stage::SqsClientSettings) {
                &floor::Client::ALL
            } else {
                &[floor::Client::Maskpipe, floor::Client::Minimal]
            };
            floor::bench(clients, args.pollers, args.runs, &mut report).await?;
            stages.took("sqs_client", started);
        }
        if sweeping {
            let started = Instant::now();
            sweeps::run(&args, &component, &admin_url, &mut report).await?;
            stages.took("sweeps", started);
        }
    }
    stages.report(&mut report);

    std::fs::create_dir_all(&args.out)?;
    let summary = serde_json::to_string_pretty(&report.summary)?;
    std::fs::write(args.out.join("summary.json"), &summary)?;
    let markdown = report.markdown.join("\n");
    std::fs::write(args.out.join("report.md"), &markdown)?;
    println!("{markdown}\n\n{summary}");
    Ok(())
}
