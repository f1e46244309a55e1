//! Sweeps, one run each: pollers 1..16, replicas 1..4, N = 10k / 20k / 50k.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::Args;
use crate::consumers::{host_once, noop_once};
use crate::data::generate;
use crate::report::Report;

pub(crate) async fn run(
    args: &Args,
    component: &Path,
    admin_url: &str,
    report: &mut Report,
) -> Result<()> {
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
