//! The two consumers the end-to-end stages compare: `maskpipe run --drain`
//! (a child process, its figures read from its summary) and the no-op
//! consumer (receive + delete only, in this process, same client).

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use maskpipe::source::SqsSource;

use crate::BENCH_KEY;
use crate::stack::{drop_database, fresh_database, fresh_queue, preload};

/// The no-op consumer on a fresh queue holding `bodies`; the queue is
/// deleted afterwards.
pub(crate) async fn noop_once(bodies: &[String], consumers: usize) -> Result<(f64, f64)> {
    let queue = fresh_queue("noop").await?;
    preload(&queue, bodies).await?;
    let drained = noop_drain(&queue, consumers).await;
    queue.delete_queue().await?;
    drained
}

/// `maskpipe run --drain` on a fresh queue holding `bodies` into a fresh
/// database; both are dropped afterwards.
pub(crate) async fn host_once(
    component: &Path,
    admin_url: &str,
    bodies: &[String],
    pollers: usize,
    replicas: usize,
) -> Result<HostRun> {
    let host = Host {
        pollers: Some(pollers),
        replicas,
        endpoint: None,
    };
    host_once_with(component, admin_url, bodies, &host).await
}

/// How the host runs: its pollers (`None`: the host's own default, with
/// `MASKPIPE_POLLERS` unset), replicas, and the SQS endpoint it is given
/// (`None`: the bench's own, `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    pub(crate) pollers: Option<usize>,
    pub(crate) replicas: usize,
    pub(crate) endpoint: Option<String>,
}

/// [`host_once`] with any [`Host`] settings.
pub(crate) async fn host_once_with(
    component: &Path,
    admin_url: &str,
    bodies: &[String],
    host: &Host,
) -> Result<HostRun> {
    let queue = fresh_queue("e2e").await?;
    preload(&queue, bodies).await?;
    let database = fresh_database(admin_url, "e2e").await?;
    let run = host_drain(component, &queue, &database, host, bodies.len()).await;
    queue.delete_queue().await?;
    drop_database(admin_url, &database).await?;
    run
}

/// What one `maskpipe run --drain` reported.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HostRun {
    pub(crate) msgs_per_s: f64,
    pub(crate) cpu_us_per_msg: f64,
    pub(crate) peak_rss_mib: f64,
}

async fn host_drain(
    component: &Path,
    queue: &SqsSource,
    database: &str,
    host: &Host,
    expected: usize,
) -> Result<HostRun> {
    let replicas = host.replicas;
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..replicas {
        let mut command = tokio::process::Command::new(host_binary());
        command
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
            .args(["--queue", queue.queue_url(), "--database-url", database])
            // Metrics on, as in production, on a port of each replica's own.
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--transform")
            .arg(component)
            .env("MASKPIPE_MASTER_KEY", BENCH_KEY);
        match host.pollers {
            Some(pollers) => {
                command.args(["--pollers", &pollers.to_string()]);
            }
            None => {
                command.env_remove("MASKPIPE_POLLERS");
            }
        }
        if let Some(endpoint) = &host.endpoint {
            command.env("AWS_ENDPOINT_URL", endpoint);
        }
        children.push(command.output());
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
pub(crate) fn cpu_seconds() -> f64 {
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
pub(crate) async fn noop_drain(queue: &SqsSource, consumers: usize) -> Result<(f64, f64)> {
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

/// The `maskpipe` binary the end-to-end stages run: `target/release/maskpipe`,
/// or `MASKPIPE_BENCH_HOST` (to measure an earlier build in the same run,
/// for a before/after).
pub(crate) fn host_binary() -> std::path::PathBuf {
    std::env::var_os("MASKPIPE_BENCH_HOST")
        .map_or_else(|| "target/release/maskpipe".into(), Into::into)
}
