//! The commands: `run`, `reveal`, `keygen`, `transform test|inspect`,
//! `queue load` and `dead-letters list|replay` (see [`crate::dead_letters`]).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::author;
use crate::config::{KeyArgs, RunArgs};
use crate::dead_letters::{self, DeadLettersCommand};
use crate::ledger;
use crate::masking::{Bound, MasterKey, RevealError, required_context, token_key_id};
use crate::ops;
use crate::pipeline::{Pipeline, Summary};
use crate::runtime::{self, short};
use crate::source::SqsSource;
use crate::swap::{self, Reloader, SwapStats};

#[derive(Parser, Debug)]
#[command(name = "maskpipe", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "MASKPIPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax, e.g. `info` or `maskpipe=debug`).
    #[arg(long, global = true, env = "MASKPIPE_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume the queue: transform every message and write rows to PostgreSQL.
    Run(RunArgs),
    /// Print the plaintext of masked values or sealed dead-letter bodies
    /// (arguments, or one per line on stdin).
    Reveal(RevealArgs),
    /// Print a new random master key (64 hex digits).
    Keygen,
    /// Test and inspect transform components (the author's kit).
    #[command(subcommand)]
    Transform(TransformCommand),
    /// Queue utilities for local stacks and tests.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Inspect maskpipe's dead letters and send them back to the queue.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

#[derive(Subcommand, Debug)]
pub enum TransformCommand {
    /// Run golden vectors through a component in wasm isolation, under the
    /// public test key; print a diff per failure; exit 1 on any failure.
    Test {
        /// The component (.wasm).
        component: PathBuf,
        /// Vectors file (JSON Lines); default: NAME.vectors.jsonl beside NAME.wasm.
        vectors: Option<PathBuf>,
    },
    /// Print a component's digest, size, imports, exports and WIT world, and
    /// whether maskpipe would load it.
    Inspect {
        /// The component (.wasm).
        component: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RevealArgs {
    /// Masked values (`mp2.…`, `mp1.…`) or sealed bodies (`mp2s.…`, `mp1s.…`).
    pub values: Vec<String>,
    /// The column a masked value was written to (`ip`, `device_id`):
    /// `mp2` values are bound to it and reveal only with it.
    #[arg(long, value_name = "FIELD")]
    pub field: Option<String>,
    /// The `message_id` of the dead letter a sealed body belongs to: `mp2s`
    /// bodies are bound to it and reveal only with it.
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a queue if missing and send each line of a file as one message.
    Load {
        /// Queue name.
        #[arg(long, env = "MASKPIPE_QUEUE", value_name = "NAME")]
        queue: String,
        /// File of message bodies, one per line (JSON Lines).
        file: PathBuf,
        /// Send only if this call created the queue (seed a demo once).
        #[arg(long)]
        if_created: bool,
    },
}

/// Libraries that could log raw requests or rows (message bodies, PII) at
/// debug or trace: capped whatever the configured filter says.
const CAPPED_TARGETS: &[&str] = &[
    "aws_config=warn",
    "aws_smithy_runtime=warn",
    "aws_smithy_http_client=info",
    "aws_smithy_runtime_api=info",
    "aws_sdk_sqs=info",
    "hyper=info",
    "hyper_util=info",
    "h2=info",
    "rustls=info",
    // Server notices ("relation already exists, skipping") are noise.
    "tokio_postgres=warn",
    "postgres_protocol=info",
    "wasmtime=info",
    "cranelift_codegen=info",
    "notify=info",
];

pub fn init_logging(cli: &Cli) {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for directive in CAPPED_TARGETS {
        filter = filter.add_directive(directive.parse().expect("static directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Reveal(args) => reveal(args),
        Command::Keygen => {
            println!("{}", MasterKey::generate_hex());
            Ok(ExitCode::SUCCESS)
        }
        Command::Transform(TransformCommand::Test { component, vectors }) => {
            author::test(&component, vectors.as_deref()).await
        }
        Command::Transform(TransformCommand::Inspect { component }) => {
            print!("{}", author::inspect(&component).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(QueueCommand::Load {
            queue,
            file,
            if_created,
        }) => load_queue(&queue, &file, if_created).await,
        Command::DeadLetters(command) => dead_letters::dispatch(command).await,
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // Validate everything local before touching the network.
    let metrics_handle = ops::install_recorder()?;
    let keyring = args.keys.keyring()?;
    let settings = args.settings()?;
    let engine = runtime::engine_with_cache(args.cache_dir().as_deref())?;
    let (transform, validation) =
        swap::load_validated(&engine, &args.transform, args.limits()).await?;
    tracing::info!(
        "loaded transform sha256:{} ({} bytes) from {}, validated with {validation}",
        short(transform.digest()),
        transform.size(),
        args.transform.display()
    );
    let source = SqsSource::connect(&args.queue).await?;
    let retention = args.ledger_retention();
    match source.redelivery_window().await {
        Ok(window) => {
            if let Some(warning) = ledger::retention_warning(retention, window) {
                tracing::warn!("{warning}");
            }
        }
        Err(error) => {
            tracing::warn!("cannot check the ledger retention against the queue's: {error:#}")
        }
    }
    tracing::info!(
        queue = source.queue_url(),
        database = %settings.database.redacted(),
        pollers = settings.pollers,
        key_id = keyring.current_key_id(),
        "starting{}",
        if settings.drain { " (drain: exit when the queue is empty)" } else { "" }
    );

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(stop_on_signal(stop));
    ops::set_running_transform(&transform, None);
    let (publish, published) = watch::channel(transform);
    if let Some(addr) = args.metrics_addr {
        let bound = ops::serve(
            addr,
            ops::OpsState {
                metrics: metrics_handle,
                source: source.clone(),
                database: settings.database.clone(),
                transform: published.clone(),
            },
        )
        .await?;
        tracing::info!("serving /metrics, /healthz and /readyz on http://{bound}");
    }
    tokio::spawn(ops::sample_queue_depth(source.clone()));
    let pruning = tokio::spawn(ledger::prune_periodically(
        settings.database.clone(),
        retention,
        std::time::Duration::from_secs(args.ledger_prune_seconds),
    ));
    let swaps = Arc::new(SwapStats::default());
    let reloader = Reloader::new(
        engine,
        args.transform.clone(),
        args.limits(),
        publish,
        Arc::clone(&swaps),
    )
    .with_poll(Some(Duration::from_secs(args.watch_poll_seconds)));
    let reloading = tokio::spawn(reloader.run(shutdown.clone()));
    let drain = settings.drain;
    let pipeline = Pipeline::new(source.clone(), published, keyring, settings);
    let summary = pipeline.run(shutdown.clone()).await?;
    reloading.abort();
    pruning.abort();

    let depth = source.depth().await.ok();
    let ending = if *shutdown.borrow() {
        "stopped by a signal"
    } else if drain {
        "queue drained"
    } else {
        "stopped"
    };
    print_summary(
        &summary,
        started,
        ending,
        depth.map(|d| d.visible + d.in_flight),
    );
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: stop polling, finish in-flight batches. Second: exit now.
async fn stop_on_signal(stop: watch::Sender<bool>) {
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight batches (signal again to stop at once)");
    let _ = stop.send(true);
    wait_for_signal().await;
    tracing::warn!("stopping at once; unfinished batches will be redelivered by SQS");
    std::process::exit(130);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_summary(summary: &Summary, started: Instant, ending: &str, left: Option<u64>) {
    let elapsed = started.elapsed().as_secs_f64();
    let reasons = summary
        .dead_letters_by_reason
        .iter()
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "maskpipe: {ending} after {elapsed:.1} s");
    let _ = writeln!(out, "  messages received   {}", summary.received);
    let _ = writeln!(out, "  rows written        {}", summary.rows);
    let _ = writeln!(
        out,
        "  dead letters        {}{}",
        summary.dead_letters,
        if reasons.is_empty() {
            String::new()
        } else {
            format!("  ({reasons})")
        }
    );
    let _ = writeln!(out, "  duplicates skipped  {}", summary.duplicates);
    if summary.delete_failures > 0 {
        let _ = writeln!(
            out,
            "  deletes failed      {} (will be redelivered and skipped)",
            summary.delete_failures
        );
    }
    if let Some(left) = left {
        let _ = writeln!(out, "  left in queue       {left}");
    }
    if summary.active_seconds > 0.0 {
        let _ = writeln!(
            out,
            "  throughput          {:.0} msgs/s ({} messages in {:.2} s, first receive to last delete)",
            summary.received as f64 / summary.active_seconds,
            summary.received,
            summary.active_seconds
        );
    }
    if let Some((cpu_seconds, peak_rss_mib)) = process_usage() {
        let per_message = if summary.received > 0 {
            format!(
                " ({:.1} µs per message)",
                cpu_seconds * 1e6 / summary.received as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(out, "  cpu time            {cpu_seconds:.3} s{per_message}");
        let _ = writeln!(out, "  peak memory (RSS)   {peak_rss_mib:.1} MiB");
    }
}

/// This process's CPU time (user + system, seconds) and peak RSS (MiB).
fn process_usage() -> Option<(f64, f64)> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // Linux's ru_maxrss (KiB) survives exec: a process spawned by a large
    // parent reports the parent's peak. VmHWM belongs to this image alone.
    let peak_kib = vm_hwm_kib().unwrap_or(usage.ru_maxrss as f64);
    Some((
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_kib / 1024.0,
    ))
}

/// Peak resident set size of this process image, from `/proc` (Linux).
fn vm_hwm_kib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

fn reveal(args: RevealArgs) -> Result<ExitCode> {
    let values: Vec<String> = if args.values.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("cannot read values from stdin")?
    } else {
        args.values
    };
    let values: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    if args.keys.master_key.is_none() {
        let mut ids: Vec<&str> = values.iter().filter_map(|v| token_key_id(v)).collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            anyhow::bail!(
                "no masking key: set MASKPIPE_MASTER_KEY (and MASKPIPE_KEY_ID) or \
                 MASKPIPE_RETIRED_KEYS to the key with id {}",
                ids.join(", ")
            );
        }
    }
    let keyring = args.keys.keyring()?;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for value in values {
        let context = match required_context(value) {
            Some(Bound::Field) => args.field.as_deref(),
            Some(Bound::MessageId) => args.message_id.as_deref(),
            None => None,
        };
        match keyring.reveal(value, context) {
            Ok(plain) => writeln!(out, "{}", String::from_utf8_lossy(&plain))?,
            Err(error) => {
                failed = true;
                eprintln!(
                    "maskpipe: cannot reveal {}: {}",
                    truncate(value, 24),
                    reveal_hint(&error)
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A reveal error as the operator can act on it: which option or key is missing.
fn reveal_hint(error: &RevealError) -> String {
    match error {
        RevealError::MissingContext(Bound::Field) => "a masked value reveals only with the \
            column it was written to: pass --field (e.g. --field ip or --field device_id)"
            .to_owned(),
        RevealError::MissingContext(Bound::MessageId) => "a sealed body reveals only with its \
            dead letter's message id: pass --message-id (the row's message_id)"
            .to_owned(),
        RevealError::UnknownKey(id) => format!(
            "{error}: set MASKPIPE_MASTER_KEY with MASKPIPE_KEY_ID={id}, \
             or add {id}=KEY to MASKPIPE_RETIRED_KEYS"
        ),
        _ => error.to_string(),
    }
}

async fn load_queue(queue: &str, file: &std::path::Path, if_created: bool) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let bodies: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let (source, existed) = SqsSource::create(queue).await?;
    if existed && if_created {
        println!(
            "queue {queue} already exists: not loading {}",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let sent = source.send(&bodies).await?;
    println!("sent {sent} messages to {}", source.queue_url());
    Ok(ExitCode::SUCCESS)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_passwords_never_show_in_debug_output() {
        let key = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
        let retired = format!("old={}", "0f".repeat(32));
        for args in [
            vec![
                "maskpipe",
                "run",
                "--queue",
                "q",
                "--transform",
                "t.wasm",
                "--database-url",
                "postgres://app:hunter2@db/x?user=u&password=swordfish",
                "--master-key",
                key,
                "--retired-keys",
                &retired,
            ],
            vec![
                "maskpipe",
                "reveal",
                "--field",
                "ip",
                "--master-key",
                key,
                "--retired-keys",
                &retired,
                "mp2.k1.AAAA",
            ],
        ] {
            let cli = Cli::try_parse_from(&args).unwrap();
            let debug = format!("{cli:?} {cli:#?}");
            for secret in ["5ec2e7", "0f0f0f", "hunter2", "swordfish"] {
                assert!(!debug.contains(secret), "{secret} in {debug}");
            }
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rss_is_read_from_proc() {
        let ballast = vec![1u8; 8 << 20];
        std::hint::black_box(&ballast);
        let kib = vm_hwm_kib().expect("VmHWM in /proc/self/status");
        assert!(kib >= 8.0 * 1024.0, "{kib} KiB");
        // The summary reports the same (monotonic) figure, read a moment later.
        let (_, peak_mib) = process_usage().expect("getrusage");
        assert!(peak_mib * 1024.0 >= kib, "{peak_mib} MiB < {kib} KiB");
    }
}
