//! 1b. Python beside Rust: the Python reference (componentize-py, CPython
//! inside the component) and the Rust reference, on the same messages with
//! the same keyring:
//!
//! * size of the `.wasm`;
//! * cold load: compile with an empty cache, then `describe`;
//! * cached load: a new engine on that cache (what a restart costs);
//! * a hot swap's validation (load + golden vectors + canary, exactly what
//!   `maskpipe run` does before swapping), with an empty and a warm cache;
//! * instantiation (what recycling an instance after a trap costs);
//! * µs per message in batches of 10, the two interleaved run by run;
//! * the instance's linear memory after the run (its peak: wasm memory
//!   only grows), and the process's peak RSS once a cold compile of each
//!   has run (compiling is what costs the host memory).
//!
//! Every cache is a fresh directory under the system's temp dir, removed
//! afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use maskpipe::masking::Keyring;
use maskpipe::runtime::{self, Limits, Transform};

use crate::data::{generate, received};
use crate::report::{Report, Stats};

const MESSAGES: usize = 20_000;

struct Component {
    label: &'static str,
    key: &'static str,
    path: PathBuf,
}

pub async fn bench(
    runs: usize,
    seed: u64,
    rust: &Path,
    keyring: &Arc<Keyring>,
    report: &mut Report,
) -> Result<()> {
    let components = [
        Component {
            label: "Rust reference",
            key: "rust",
            path: rust.to_path_buf(),
        },
        Component {
            label: "Python reference",
            key: "python",
            path: rust.with_file_name("python_reference.wasm"),
        },
    ];
    let messages = received(&generate(MESSAGES, seed));
    // Cold compiles take seconds for CPython: three of them suffice.
    let load_runs = runs.clamp(1, 3);
    let mut rows = Vec::new();
    for component in &components {
        let size = std::fs::metadata(&component.path)?.len() as f64;
        report.summary.insert(
            format!("{}_wasm_bytes", component.key),
            serde_json::json!(size),
        );
        rows.push(format!(
            "| {} | size | | {:.1} | | MB |",
            component.label,
            size / 1e6
        ));
        let (mut cold, mut cached, mut swap_cold, mut swap_warm, mut instantiate) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..load_runs {
            let cache = scratch_cache()?;
            let started = Instant::now();
            let transform = load(&component.path, Some(&cache)).await?;
            cold.push(ms(started));
            let started = Instant::now();
            let transform = {
                drop(transform);
                load(&component.path, Some(&cache)).await?
            };
            cached.push(ms(started));
            let started = Instant::now();
            drop(Arc::new(transform).worker(Arc::clone(keyring)).await?);
            instantiate.push(ms(started));
            std::fs::remove_dir_all(&cache).ok();

            let cache = scratch_cache()?;
            let started = Instant::now();
            validated(&component.path, &cache).await?;
            swap_cold.push(ms(started));
            let started = Instant::now();
            validated(&component.path, &cache).await?;
            swap_warm.push(ms(started));
            std::fs::remove_dir_all(&cache).ok();
        }
        let peak_rss = maskpipe::usage::process_usage().map_or(0.0, |(_, mib)| mib);
        for (figure, values, unit) in [
            ("load_cold_ms", cold, "ms"),
            ("load_cached_ms", cached, "ms"),
            ("swap_cold_cache_ms", swap_cold, "ms"),
            ("swap_warm_cache_ms", swap_warm, "ms"),
            ("instantiate_ms", instantiate, "ms"),
        ] {
            let stats = Stats::of(values);
            report.figure(&format!("{}_{figure}", component.key), stats);
            rows.push(stats.row(&format!("{} | {}", component.label, figure), unit));
        }
        report.summary.insert(
            format!("{}_peak_rss_after_cold_compile_mib", component.key),
            serde_json::json!(peak_rss),
        );
        rows.push(format!(
            "| {} | process peak RSS once compiled cold | | {peak_rss:.0} | | MiB |",
            component.label
        ));
    }

    // µs/msg, the two interleaved run by run, one core, batches of 10.
    let engine = runtime::engine()?;
    let mut workers = Vec::new();
    for component in &components {
        let transform = Transform::load(&engine, &component.path, Limits::default()).await?;
        let mut worker = Arc::new(transform).worker(Arc::clone(keyring)).await?;
        worker.run(&messages[..1_000]).await?;
        workers.push(worker);
    }
    let mut per_message = vec![Vec::new(); components.len()];
    for _ in 0..runs {
        for (worker, times) in workers.iter_mut().zip(&mut per_message) {
            let started = Instant::now();
            for batch in messages.chunks(10) {
                std::hint::black_box(worker.run(batch).await?);
            }
            times.push(started.elapsed().as_secs_f64() * 1e6 / MESSAGES as f64);
        }
    }
    let ratios: Vec<f64> = per_message[1]
        .iter()
        .zip(&per_message[0])
        .map(|(python, rust)| python / rust)
        .collect();
    for ((component, times), worker) in components.iter().zip(per_message).zip(&workers) {
        let stats = Stats::of(times);
        report.figure(&format!("{}_us_per_msg", component.key), stats);
        rows.push(stats.row(&format!("{} | µs/msg", component.label), "µs"));
        let memory = worker.memory_bytes() as f64 / f64::from(1 << 20);
        report.summary.insert(
            format!("{}_instance_memory_mib", component.key),
            serde_json::json!(memory),
        );
        rows.push(format!(
            "| {} | instance memory after the run | | {memory:.1} | | MiB |",
            component.label
        ));
    }
    let ratio = Stats::of(ratios);
    report.figure("python_over_rust", ratio);
    rows.push(ratio.row("Python / Rust | µs/msg", "×"));
    report.markdown.push(format!(
        "### 1b. Python beside Rust ({MESSAGES} messages a run; loads and swaps {load_runs} times)\n\n\
         | component | figure | min | median | max | unit |\n|---|---|---|---|---|---|\n{}\n\n\
         Size, memory and RSS are single values (in the median column).\n",
        rows.join("\n")
    ));
    Ok(())
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

fn scratch_cache() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "maskpipe-bench-cache-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A load through a new engine (nothing kept in memory), on `cache`.
async fn load(path: &Path, cache: Option<&Path>) -> Result<Transform> {
    let engine = runtime::engine_with_cache(cache)?;
    Transform::load(&engine, path, Limits::default()).await
}

/// What a hot swap does before swapping: load, golden vectors, canary.
async fn validated(path: &Path, cache: &Path) -> Result<()> {
    let engine = runtime::engine_with_cache(Some(cache))?;
    maskpipe::swap::load_validated(&engine, path, Limits::default()).await?;
    Ok(())
}
