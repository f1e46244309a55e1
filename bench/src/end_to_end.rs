//! Stage 3, end to end: `maskpipe run --drain` vs a no-op consumer
//! (receive + delete only, same client, same concurrency) on the same queue
//! server, alternating which goes first; stages 4 and 5, CPU per message
//! and peak RSS of the host process meanwhile. `end-to-end-durable`: the
//! host again, into a database on the durable cluster.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use crate::Args;
use crate::consumers::{host_once, noop_once};
use crate::data::generate;
use crate::pinning;
use crate::report::{Report, Stats};

/// Gives LocalStack a CPU of its own unless told not to (or it cannot be
/// done); says which in the report either way.
pub(crate) fn pin(args: &Args, report: &mut Report) -> Option<pinning::ServerCore> {
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

/// Which consumers the stage runs: the host and the no-op consumer on the
/// throwaway cluster (`fast`), and the host on the durable one (`durable`:
/// its admin URL).
pub(crate) struct Consumers<'a> {
    pub(crate) fast: bool,
    pub(crate) durable: Option<&'a str>,
}

pub(crate) async fn bench(
    args: &Args,
    component: &Path,
    admin_url: &str,
    consumers: Consumers<'_>,
    report: &mut Report,
) -> Result<()> {
    let bodies = generate(args.messages, args.seed);
    let (mut host, mut noop, mut ratio, mut cpu, mut rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut noop_cpu = vec![];
    // Host CPU per message less the no-op consumer's, run by run.
    let mut cpu_over_noop = vec![];
    let (mut durable, mut durable_cpu, mut durable_ratio) = (vec![], vec![], vec![]);
    for run in 0..args.runs {
        // Alternate who goes first, so a server that drifts during the run
        // weighs on both consumers alike.
        let mut noop_rate = None;
        if consumers.fast {
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
            let (rate, noop_cpu_per_msg) = noop_run;
            eprintln!(
                "end to end, run {}: maskpipe {:.0} msgs/s, no-op {:.0} msgs/s, ratio {:.3}, host CPU {:.1} µs/msg",
                run + 1,
                host_run.msgs_per_s,
                rate,
                host_run.msgs_per_s / rate,
                host_run.cpu_us_per_msg
            );
            noop_rate = Some(rate);
            noop_cpu.push(noop_cpu_per_msg);
            cpu_over_noop.push(host_run.cpu_us_per_msg - noop_cpu_per_msg);
            host.push(host_run.msgs_per_s);
            noop.push(rate);
            ratio.push(host_run.msgs_per_s / rate);
            cpu.push(host_run.cpu_us_per_msg);
            rss.push(host_run.peak_rss_mib);
        }
        if let Some(durable_url) = consumers.durable {
            let host_run = host_once(component, durable_url, &bodies, args.pollers, 1).await?;
            eprintln!(
                "end to end, run {}: maskpipe into the durable cluster {:.0} msgs/s, host CPU {:.1} µs/msg",
                run + 1,
                host_run.msgs_per_s,
                host_run.cpu_us_per_msg
            );
            durable.push(host_run.msgs_per_s);
            durable_cpu.push(host_run.cpu_us_per_msg);
            if let Some(rate) = noop_rate {
                durable_ratio.push(host_run.msgs_per_s / rate);
            }
        }
    }
    let mut rows = Vec::new();
    if consumers.fast {
        let (host, noop, ratio, cpu, rss) = (
            Stats::of(host),
            Stats::of(noop),
            Stats::of(ratio),
            Stats::of(cpu),
            Stats::of(rss),
        );
        let noop_cpu = Stats::of(noop_cpu);
        let cpu_over_noop = Stats::of(cpu_over_noop);
        report.figure("noop_cpu_us_per_msg", noop_cpu);
        report.figure("host_cpu_over_noop_us_per_msg", cpu_over_noop);
        report.figure("e2e_msgs_per_s", host);
        report.figure("noop_msgs_per_s", noop);
        report.figure("e2e_over_noop", ratio);
        report.figure("host_cpu_us_per_msg", cpu);
        report.figure("peak_rss_mib", rss);
        rows.extend([
            host.row("maskpipe drain", "msgs/s"),
            noop.row("no-op consumer", "msgs/s"),
            ratio.row("maskpipe / no-op", "×"),
            cpu.row("host CPU (user + sys)", "µs/msg"),
            noop_cpu.row("no-op consumer CPU (its floor)", "µs/msg"),
            cpu_over_noop.row("host CPU less the no-op consumer's (same run)", "µs/msg"),
            rss.row("host peak RSS", "MiB"),
        ]);
    }
    if consumers.durable.is_some() {
        let (durable, durable_cpu) = (Stats::of(durable), Stats::of(durable_cpu));
        report.figure("e2e_durable_msgs_per_s", durable);
        report.figure("e2e_durable_cpu_us_per_msg", durable_cpu);
        rows.push(durable.row("maskpipe drain into the durable cluster", "msgs/s"));
        if !durable_ratio.is_empty() {
            let durable_ratio = Stats::of(durable_ratio);
            report.figure("e2e_durable_over_noop", durable_ratio);
            rows.push(durable_ratio.row("maskpipe (durable) / no-op", "×"));
        }
        rows.push(durable_cpu.row("host CPU, durable cluster (user + sys)", "µs/msg"));
    }
    report
        .summary
        .insert("e2e_messages".into(), json!(args.messages));
    report
        .summary
        .insert("e2e_pollers".into(), json!(args.pollers));
    report.markdown.push(format!(
        "### 3–5. End to end ({} messages preloaded in LocalStack, {} pollers; no-op = receive + delete, same client and concurrency; durable = into a database on the cluster with fsync, synchronous_commit and full_page_writes on)\n\n| figure | min | median | max | unit |\n|---|---|---|---|---|\n{}\n",
        args.messages,
        args.pollers,
        rows.join("\n"),
    ));
    Ok(())
}
