//! The commands: `run`, `reveal`, `keygen` (plain, or a KMS data key),
//! `transform test|inspect`, `queue load` and `dead-letters list|replay`
//! (see [`crate::dead_letters`]).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::author;
use crate::config::{CacheArgs, KeyArgs, RunArgs};
use crate::dead_letters::{self, DeadLettersCommand};
use crate::kms::{DataKey, Kms};
use crate::ledger;
use crate::masking::{
    Bound, MasterKey, RevealError, is_valid_key_id, required_context, token_key_id,
};
use crate::ops;
use crate::pipeline::{Pipeline, Summary};
use crate::runtime::{self, short};
use crate::source::SqsSource;
use crate::swap::{self, Reloader, SwapStats};
use crate::usage;

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
    /// Print a new random master key (64 hex digits); with --kms-key-id, a
    /// new KMS data key instead, as the settings that use it (an env file).
    Keygen(KeygenArgs),
    /// Test and inspect transform components (the author's kit).
    #[command(subcommand)]
    Transform(TransformCommand),
    /// Queue utilities for local stacks and tests.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Inspect maskpipe's dead letters and send them back to the queue.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Re-mask history under the current key after a rotation: masked
    /// columns and sealed dead letters, in small transactions, while hosts
    /// write; resumable; prints progress and a summary.
    Rekey(crate::rekey::RekeyArgs),
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
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Print a component's digest, size, imports, exports and WIT world, and
    /// whether maskpipe would load it.
    Inspect {
        /// The component (.wasm).
        component: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
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

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Make the key with KMS (GenerateDataKey, AES_256) under this KMS key
    /// (key id, alias/NAME or ARN) and print only its ciphertext, as three
    /// lines: MASKPIPE_MASTER_KEY_CIPHERTEXT, MASKPIPE_KMS_KEY_ID (the
    /// key's ARN) and MASKPIPE_KEY_ID. The plaintext is never printed.
    #[arg(long, value_name = "ID|ALIAS|ARN")]
    pub kms_key_id: Option<String>,
    /// The MASKPIPE_KEY_ID line's id (1-16 of A-Z, a-z, 0-9, '_', '-');
    /// default: a new one, `k` and 8 random hex digits.
    #[arg(long, value_name = "ID", requires = "kms_key_id")]
    pub key_id: Option<String>,
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
    // Its warnings (IMDS unreachable, one per provider tried) would come
    // before, and repeat, the one error line that names the real problem.
    "aws_config=error",
    "aws_smithy_runtime=warn",
    "aws_smithy_http_client=info",
    "aws_smithy_runtime_api=info",
    "aws_sdk_sqs=info",
    "aws_sdk_kms=info",
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

/// clap's own outcome when parsing did not give a command: `--help` and
/// `--version` print as clap prints them and exit 0; anything else is bad
/// configuration, reported like every other one: one `maskpipe: error:`
/// line and exit code 1 (not clap's several lines and exit code 2).
pub fn report_usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("maskpipe: error: {}", usage_error_line(error));
            ExitCode::FAILURE
        }
    }
}

/// clap's message on one line: its first paragraph (the error and, for
/// missing arguments, their names), then where to read more. clap's "Usage:"
/// and tip paragraphs follow a blank line and are left out.
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut paragraph = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(rest) = paragraph.strip_prefix("error: ") {
        paragraph = rest.to_owned();
    }
    if paragraph.is_empty() {
        "invalid command line (see --help)".to_owned()
    } else {
        format!("{paragraph} (see --help)")
    }
}

/// An error's text on one line: some causes (the AWS SDK's credential
/// chain) list their parts on lines of their own.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

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
        Command::Reveal(args) => reveal(args).await,
        Command::Keygen(args) => keygen(args).await,
        Command::Transform(TransformCommand::Test {
            component,
            vectors,
            cache,
        }) => author::test(&component, vectors.as_deref(), cache.dir().as_deref()).await,
        Command::Transform(TransformCommand::Inspect { component, cache }) => {
            print!(
                "{}",
                author::inspect(&component, cache.dir().as_deref()).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(QueueCommand::Load {
            queue,
            file,
            if_created,
        }) => load_queue(&queue, &file, if_created).await,
        Command::DeadLetters(command) => dead_letters::dispatch(command).await,
        Command::Rekey(args) => crate::rekey::run(args).await,
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // Validate everything local before touching the network.
    let metrics_handle = ops::install_recorder()?;
    let keys = args.keys.checked()?;
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
    // The network from here: KMS first (only if a key is a ciphertext).
    let keyring = keys.keyring().await?;
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
    .with_poll(Some(Duration::from_secs(args.watch_poll_seconds)))
    .with_table_check(swap::TableCheck {
        database: settings.database.clone(),
        create: settings.create_tables,
    });
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
    if summary.skipped > 0 {
        let _ = writeln!(out, "  made no rows        {}", summary.skipped);
    }
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
    if let Some((cpu_seconds, peak_rss_mib)) = usage::process_usage() {
        // Per message: only the CPU used while batches were in flight, so
        // that startup, hot swaps and idle hours of long polls do not
        // inflate it (a long-running host's total over its messages would).
        let per_message = usage::micros_per_message(summary.busy_cpu_seconds, summary.received)
            .map(|micros| format!(" ({micros:.1} µs per message)"))
            .unwrap_or_default();
        // Total first: maskpipe-bench reads the first number of this line.
        let _ = writeln!(
            out,
            "  cpu time            {cpu_seconds:.3} s in all (startup and idle polls included); \
             {:.3} s while batches were in flight{per_message}",
            summary.busy_cpu_seconds
        );
        let _ = writeln!(out, "  peak memory (RSS)   {peak_rss_mib:.1} MiB");
    }
}

async fn reveal(args: RevealArgs) -> Result<ExitCode> {
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
    if !args.keys.has_master_key() {
        let mut ids: Vec<&str> = values.iter().filter_map(|v| token_key_id(v)).collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            anyhow::bail!(
                "no masking key: the values were masked with key id {ids}; set \
                 MASKPIPE_MASTER_KEY (or MASKPIPE_MASTER_KEY_CIPHERTEXT) to that key with \
                 MASKPIPE_KEY_ID={first} (or add {first}=KEY to MASKPIPE_RETIRED_KEYS); a new \
                 key opens nothing",
                ids = ids.join(", "),
                first = ids[0],
            );
        }
    }
    let keyring = args.keys.keyring_to_open().await?;
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

/// `maskpipe keygen`: a random key in hex, or with `--kms-key-id` a KMS
/// data key as the env lines that use it.
async fn keygen(args: KeygenArgs) -> Result<ExitCode> {
    let Some(kms_key) = args.kms_key_id else {
        println!("{}", MasterKey::generate_hex());
        return Ok(ExitCode::SUCCESS);
    };
    // Checked before KMS is asked: a data key made for a bad id is wasted.
    if kms_key.trim().is_empty() {
        anyhow::bail!("--kms-key-id is empty: give a KMS key id, alias/NAME or ARN");
    }
    let key_id = match args.key_id {
        Some(id) if is_valid_key_id(&id) => id,
        Some(_) => {
            anyhow::bail!("--key-id is invalid: use 1-16 characters of A-Z, a-z, 0-9, '_' or '-'")
        }
        None => format!("k{:08x}", rand::random::<u32>()),
    };
    let data_key = Kms::connect()
        .await
        .generate_data_key(kms_key.trim())
        .await?;
    print!("{}", kms_env_lines(&data_key, &key_id));
    Ok(ExitCode::SUCCESS)
}

/// The settings that use a KMS data key, as lines of an env file.
fn kms_env_lines(data_key: &DataKey, key_id: &str) -> String {
    format!(
        "MASKPIPE_MASTER_KEY_CIPHERTEXT={}\nMASKPIPE_KMS_KEY_ID={}\nMASKPIPE_KEY_ID={key_id}\n",
        data_key.ciphertext_base64, data_key.kms_key_arn
    )
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
    fn usage_errors_are_one_line_without_clap_prefix() {
        for args in [
            vec!["maskpipe", "run", "--pollers", "lots"],
            vec!["maskpipe", "run", "--no-such-flag"],
            vec!["maskpipe", "keygen", "extra"],
            vec!["maskpipe"],
        ] {
            let error = Cli::try_parse_from(&args).unwrap_err();
            let line = usage_error_line(&error);
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.starts_with("error"), "{line}");
            assert!(line.ends_with(')'), "{line}");
        }
        let error = Cli::try_parse_from(["maskpipe", "run", "--pollers", "lots"]).unwrap_err();
        assert!(usage_error_line(&error).contains("'lots'"));
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        assert_eq!(
            one_line("no credentials. Attempted:\n  Environment: not set\n  Profile: none\n"),
            "no credentials. Attempted: Environment: not set; Profile: none"
        );
        assert_eq!(one_line("one line"), "one line");
    }

    #[test]
    fn keys_and_passwords_never_show_in_debug_output() {
        let key = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
        let retired = format!("old={}", "0f".repeat(32));
        let ciphertext = "Y2lwaGVydGV4dGNpcGhlcnRleHQ=";
        let retired_ciphertexts = format!("older={ciphertext}");
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
            vec![
                "maskpipe",
                "reveal",
                "--field",
                "ip",
                "--master-key-ciphertext",
                ciphertext,
                "--retired-key-ciphertexts",
                &retired_ciphertexts,
                "mp2.k1.AAAA",
            ],
        ] {
            let cli = Cli::try_parse_from(&args).unwrap();
            let debug = format!("{cli:?} {cli:#?}");
            for secret in ["5ec2e7", "0f0f0f", "hunter2", "swordfish", "Y2lwaGVy"] {
                assert!(!debug.contains(secret), "{secret} in {debug}");
            }
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }
}
