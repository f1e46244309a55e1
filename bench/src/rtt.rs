//! `rtt`: end to end when SQS is a round trip away. LocalStack answers in
//! well under a millisecond on 127.0.0.1, where real SQS takes several:
//! here every request goes through a [`DelayProxy`] (crate `delay-proxy`,
//! in this process), which adds
//! `--rtt-ms` (default 10 ms) to each.
//!
//! Under it, `maskpipe run --drain` at its default settings (its default
//! pollers: `MASKPIPE_POLLERS` unset, no `--pollers`) drains `--rtt-messages`
//! preloaded messages into the throwaway cluster, against a receive-only
//! consumer at the same concurrency (as many tasks as the host's default
//! pollers, read from `maskpipe run --help`, or `--rtt-consumers`): tasks
//! that only call ReceiveMessage (10 at most, a 300 s visibility timeout,
//! so nothing comes back) until the preloaded messages are all received.
//! That is the most any consumer polling at this concurrency could receive
//! at this latency; the host also deletes, so its ratio to it says how much
//! of the round trips its pipelining hides.
//!
//! The host is given the proxy as `AWS_ENDPOINT_URL` and the queue URL as
//! `--queue`. The URL still names LocalStack's own port, but the SDK sends
//! every request to its endpoint (SQS's JSON protocol carries the queue URL
//! as a parameter, not as the address): the proxy's byte counters, checked
//! after every run, show that each one really went through the proxy.
//! Preloading and deleting the queue go to LocalStack directly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use delay_proxy::{Carried, DelayProxy, upstream_of};
use maskpipe::source::SqsSource;
use serde_json::json;

use crate::Args;
use crate::consumers::{Host, host_once_with, noop_drain};
use crate::data::generate;
use crate::report::{Report, Stats};
use crate::stack::{fresh_queue, preload};

/// Visibility timeout of the receive-only consumer's receives: longer than
/// any run, so no message is received twice.
const RECEIVE_ONLY_VISIBILITY_SECONDS: i32 = 300;

pub(crate) async fn bench(
    args: &Args,
    component: &Path,
    admin_url: &str,
    report: &mut Report,
) -> Result<()> {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let upstream = upstream_of(&endpoint).await?;
    let delay = Duration::from_millis(args.rtt_ms);
    let proxy = DelayProxy::start(upstream, delay).await?;
    let (concurrency, chosen) = match args.rtt_consumers {
        Some(consumers) => (consumers, "--rtt-consumers"),
        None => (host_default_pollers().await?, "the host's default pollers"),
    };
    let ms = args.rtt_ms;
    eprintln!(
        "rtt: a {ms} ms delay proxy at {} in front of {upstream}; {} messages, {concurrency} receive-only tasks ({chosen})",
        proxy.endpoint(),
        args.rtt_messages
    );
    let bodies = generate(args.rtt_messages, args.seed);
    let host = Host {
        pollers: None,
        replicas: 1,
        endpoint: Some(proxy.endpoint()),
    };
    let (mut hosts, mut receive_only, mut ratios) = (vec![], vec![], vec![]);
    // Receive + delete at the same concurrency through the same proxy: the
    // floor of a consumer that deletes what it takes, as maskpipe must.
    let (mut noops, mut noop_ratios) = (vec![], vec![]);
    let (mut host_carried, mut receive_carried) = (Carried::default(), Carried::default());
    for run in 0..args.runs {
        // Alternate who goes first, as in stage 3.
        let mut host_run = None;
        let mut receive_run = None;
        for turn in 0..2 {
            if (turn + run) % 2 == 0 {
                let before = proxy.carried();
                let drained = host_once_with(component, admin_url, &bodies, &host).await?;
                let carried = proxy.carried() - before;
                went_through("maskpipe", carried, bodies.len())?;
                host_carried = carried;
                host_run = Some(drained);
            } else {
                let (rate, carried) = receive_only_once(&proxy, &bodies, concurrency).await?;
                went_through("the receive-only consumer", carried, bodies.len())?;
                receive_carried = carried;
                receive_run = Some(rate);
            }
        }
        let (host_run, receive_rate) = (
            host_run.context("the host did not run")?,
            receive_run.context("the receive-only consumer did not run")?,
        );
        let noop_rate = noop_once_through(&proxy, &bodies, concurrency).await?;
        noops.push(noop_rate);
        noop_ratios.push(host_run.msgs_per_s / noop_rate);
        eprintln!(
            "rtt {ms} ms, run {}: maskpipe {:.0} msgs/s, receive-only {:.0} msgs/s, ratio {:.3}; receive + delete {noop_rate:.0} msgs/s",
            run + 1,
            host_run.msgs_per_s,
            receive_rate,
            host_run.msgs_per_s / receive_rate
        );
        hosts.push(host_run.msgs_per_s);
        receive_only.push(receive_rate);
        ratios.push(host_run.msgs_per_s / receive_rate);
    }
    let (hosts, receive_only, ratios) =
        (Stats::of(hosts), Stats::of(receive_only), Stats::of(ratios));
    let (noops, noop_ratios) = (Stats::of(noops), Stats::of(noop_ratios));
    report.figure(&format!("noop_rtt{ms}_msgs_per_s"), noops);
    report.figure(&format!("e2e_rtt{ms}_over_noop"), noop_ratios);
    report.figure(&format!("e2e_rtt{ms}_msgs_per_s"), hosts);
    report.figure(&format!("receive_only_rtt{ms}_msgs_per_s"), receive_only);
    report.figure(&format!("e2e_rtt{ms}_over_receive_only"), ratios);
    report.summary.insert("rtt_ms".into(), json!(ms));
    report
        .summary
        .insert("rtt_messages".into(), json!(args.rtt_messages));
    report
        .summary
        .insert("rtt_consumers".into(), json!(concurrency));
    report.markdown.push(format!(
        "### 3b. End to end {ms} ms from SQS ({} messages preloaded in LocalStack behind a delay proxy adding {ms} ms to every request; maskpipe at its default settings vs a receive-only consumer of {concurrency} tasks, {chosen})\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n{}\n\nThrough the proxy in the last run: maskpipe {}, the receive-only consumer {}.\n",
        args.rtt_messages,
        hosts.row("maskpipe drain", "msgs/s"),
        receive_only.row("receive-only consumer", "msgs/s"),
        ratios.row("maskpipe / receive-only", "×"),
        noops.row("receive + delete (no-op consumer, same tasks)", "msgs/s"),
        noop_ratios.row("maskpipe / receive + delete", "×"),
        describe(host_carried),
        describe(receive_carried),
    ));
    Ok(())
}

/// The host's default pollers, from its own `--help` (so the figure follows
/// the binary measured, whatever its default becomes).
async fn host_default_pollers() -> Result<usize> {
    let output = tokio::process::Command::new(crate::consumers::host_binary())
        .args(["run", "--help"])
        .env_remove("MASKPIPE_POLLERS")
        .output()
        .await
        .context("cannot run target/release/maskpipe run --help")?;
    let help = String::from_utf8_lossy(&output.stdout);
    default_of(&help, "--pollers").with_context(
        || "cannot read the default of --pollers from `maskpipe run --help`: pass --rtt-consumers",
    )
}

/// The `[default: N]` clap prints in `flag`'s entry of a help text.
fn default_of(help: &str, flag: &str) -> Option<usize> {
    let start = help.find(&format!("{flag} <"))?;
    let entry = &help[start..];
    // The entry ends where the next flag's begins.
    let end = entry[1..]
        .find("\n      -")
        .map_or(entry.len(), |end| end + 1);
    let entry = &entry[..end];
    let value = &entry[entry.find("[default: ")? + "[default: ".len()..];
    value[..value.find(']')?].trim().parse().ok()
}

/// Fails unless a run's traffic went through the proxy: at least one
/// request and response per ten messages.
fn went_through(who: &str, carried: Carried, messages: usize) -> Result<()> {
    let receives = messages.div_ceil(10) as u64;
    if carried.connections == 0 || carried.up < receives * 100 || carried.down < receives * 100 {
        bail!(
            "{who}'s SQS traffic did not go through the delay proxy ({})",
            describe(carried)
        );
    }
    Ok(())
}

fn describe(carried: Carried) -> String {
    format!(
        "{:.1} MiB of requests and {:.1} MiB of responses over {} connections",
        carried.up as f64 / (1 << 20) as f64,
        carried.down as f64 / (1 << 20) as f64,
        carried.connections
    )
}

/// The receive-only consumer on a fresh queue holding `bodies`, through the
/// proxy; the queue is deleted afterwards. Returns msgs/s and what the
/// proxy carried meanwhile.
async fn receive_only_once(
    proxy: &DelayProxy,
    bodies: &[String],
    consumers: usize,
) -> Result<(f64, Carried)> {
    let queue = fresh_queue("receive").await?;
    preload(&queue, bodies).await?;
    let before = proxy.carried();
    let received = receive_only(&queue, proxy, consumers, bodies.len()).await;
    let carried = proxy.carried() - before;
    queue.delete_queue().await?;
    Ok((received?, carried))
}

/// The same queue through a client whose endpoint is the proxy (CreateQueue
/// of an existing name returns its URL).
async fn through(proxy: &DelayProxy, direct: &SqsSource) -> Result<SqsSource> {
    let name = direct
        .queue_url()
        .rsplit('/')
        .next()
        .context("a queue URL without a name")?;
    Ok(
        SqsSource::create_with(SqsSource::client_at(&proxy.endpoint()).await, name)
            .await?
            .0,
    )
}

/// The no-op consumer (receive + delete, stage 3's) through the proxy, on
/// a fresh queue holding `bodies`; msgs/s.
async fn noop_once_through(proxy: &DelayProxy, bodies: &[String], consumers: usize) -> Result<f64> {
    let direct = fresh_queue("noop-rtt").await?;
    preload(&direct, bodies).await?;
    let queue = through(proxy, &direct).await?;
    let drained = noop_drain(&queue, consumers).await;
    direct.delete_queue().await?;
    Ok(drained?.0)
}

/// `consumers` tasks receiving (and nothing else) through the proxy until
/// `expected` messages came; msgs/s over the same window as the host's,
/// first receive to last.
async fn receive_only(
    direct: &SqsSource,
    proxy: &DelayProxy,
    consumers: usize,
    expected: usize,
) -> Result<f64> {
    let queue = through(proxy, direct).await?;
    let count = Arc::new(AtomicUsize::new(0));
    let (calls, call_micros) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..consumers {
        let (queue, count) = (queue.clone(), Arc::clone(&count));
        let (calls, call_micros) = (Arc::clone(&calls), Arc::clone(&call_micros));
        tasks.spawn(async move {
            let mut window: Option<(Instant, Instant)> = None;
            while count.load(Ordering::Relaxed) < expected {
                let asked = Instant::now();
                let messages = queue
                    .receive(10, 1, Some(RECEIVE_ONLY_VISIBILITY_SECONDS))
                    .await?;
                if messages.is_empty() {
                    continue;
                }
                let now = Instant::now();
                calls.fetch_add(1, Ordering::Relaxed);
                call_micros.fetch_add((now - asked).as_micros() as usize, Ordering::Relaxed);
                count.fetch_add(messages.len(), Ordering::Relaxed);
                window = Some((window.map_or(now, |w| w.0), now));
            }
            anyhow::Ok(window)
        });
    }
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let collect = async {
        while let Some(done) = tasks.join_next().await {
            if let Some((a, b)) = done?? {
                first = Some(first.map_or(a, |f| f.min(a)));
                last = Some(last.map_or(b, |l| l.max(b)));
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(600), collect)
        .await
        .context("the receive-only consumer took over 10 minutes")??;
    let received = count.load(Ordering::Relaxed);
    if received < expected {
        bail!("the receive-only consumer received {received} of {expected} messages");
    }
    let calls = calls.load(Ordering::Relaxed).max(1);
    eprintln!(
        "receive-only: {received} messages in {calls} receives ({:.1} a receive), {:.1} ms a receive",
        received as f64 / calls as f64,
        call_micros.load(Ordering::Relaxed) as f64 / calls as f64 / 1e3
    );
    match (first, last) {
        (Some(a), Some(b)) if b > a => Ok(received as f64 / (b - a).as_secs_f64()),
        _ => bail!("the receive-only consumer received nothing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_read_from_the_flags_own_entry() {
        let help = "      --pollers <POLLERS>
          Receives kept in flight at once [env: MASKPIPE_POLLERS=]
          [default: 4]
      --writers <WRITERS>
          Database connections [default: 2]
";
        assert_eq!(default_of(help, "--pollers"), Some(4));
        assert_eq!(default_of(help, "--writers"), Some(2));
        let without = "      --pollers <POLLERS>\n          Receives\n      --writers <WRITERS>\n          [default: 2]\n";
        assert_eq!(default_of(without, "--pollers"), None);
        assert_eq!(default_of(help, "--transformers"), None);
    }
}
