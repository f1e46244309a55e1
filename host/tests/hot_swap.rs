//! Hot swap under continuous load, against the real stack: v1 → v2 by
//! rename mid-stream loses and duplicates nothing and never splits a batch;
//! a component that fails its vectors is refused and v2 keeps running.
//! Kubernetes' ConfigMap updates (the kubelet's `..data` symlink swap) swap
//! without SIGHUP, back and forth; a component that stores raw PII is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sha2::Digest;
use tokio::io::AsyncBufReadExt;

fn release_dir() -> PathBuf {
    component_path().parent().unwrap().to_path_buf()
}

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The documented deployment: write beside, then rename over. Vectors first,
/// because the component's arrival is what triggers the reload.
fn deploy(component: &Path, vectors: &Path, live: &Path) {
    let live_vectors = maskpipe::swap::vectors_path(live);
    let staged = live.with_extension("vectors.jsonl.tmp");
    std::fs::copy(vectors, &staged).unwrap();
    std::fs::rename(&staged, &live_vectors).unwrap();
    let staged = live.with_extension("wasm.tmp");
    std::fs::copy(component, &staged).unwrap();
    std::fs::rename(&staged, live).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn swapping_mid_stream_loses_nothing_and_refuses_a_broken_component() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let deploy_dir = std::env::temp_dir().join(unique_name("maskpipe-swap"));
    std::fs::create_dir_all(&deploy_dir).unwrap();
    let live = deploy_dir.join("transform.wasm");

    let v1 = release_dir().join("transform_wasm.wasm");
    let v1_vectors = repo_root().join("transform-wasm/vectors.jsonl");
    let v2 = release_dir().join("transform_analytics.wasm");
    let v2_vectors = repo_root().join("transform-wasm/analytics/vectors.jsonl");
    let (v1_digest, v2_digest) = (sha256(&v1), sha256(&v2));
    deploy(&v1, &v1_vectors, &live);

    // One poller, so the ledger's commit order is the processing order.
    let mut host = maskpipe()
        .args([
            "run",
            "--pollers",
            "1",
            "--wait-seconds",
            "1",
            "--progress-seconds",
            "0",
        ])
        .arg("--queue")
        .arg(queue.queue_url())
        .arg("--database-url")
        .arg(&database)
        .arg("--transform")
        .arg(&live)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut lines = tokio::io::BufReader::new(host.stderr.take().unwrap()).lines();
    let log_writer = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log_writer.lock().unwrap().push(line);
        }
    });
    let logged = |needle: &'static str| {
        let log = Arc::clone(&log);
        move || log.lock().unwrap().iter().any(|l| l.contains(needle))
    };

    // Continuous load: unique logins, ten every 20 ms, until told to stop.
    let load = ContinuousLoad::start(&queue, |n| login_numbered("swap", n));

    let db = query_client(&database).await;
    let ledger_count = |digest: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM maskpipe_processed WHERE component_digest = $1 OR $1 = ''",
                &[&digest],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
        }
    };
    let v2_static: &'static str = Box::leak(v2_digest.clone().into_boxed_str());

    wait_for("rows from v1", Duration::from_secs(60), async || {
        ledger_count("").await >= 100
    })
    .await;
    deploy(&v2, &v2_vectors, &live);
    wait_for("rows from v2", Duration::from_secs(60), async || {
        ledger_count(v2_static).await >= 100
    })
    .await;

    // v1's bytes beside v2's vectors: a component that fails its vectors.
    std::fs::copy(&v1, live.with_extension("wasm.tmp")).unwrap();
    std::fs::rename(live.with_extension("wasm.tmp"), &live).unwrap();
    let refused = logged("refused the new transform");
    wait_for(
        "the broken component to be refused",
        Duration::from_secs(60),
        async || refused(),
    )
    .await;
    let after_refusal = ledger_count(v2_static).await;
    wait_for("v2 to keep running", Duration::from_secs(60), async || {
        ledger_count(v2_static).await >= after_refusal + 100
    })
    .await;

    let total = load.stop().await;
    wait_for("the queue to drain", Duration::from_secs(120), async || {
        ledger_count("").await >= total
    })
    .await;

    // SIGTERM: in-flight work finishes, exit 0.
    let pid = host.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), host.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "host exited with {status}");

    // Nothing lost, nothing twice: v1 wrote user_logins, v2 (analytics)
    // its own table, so the swap changed where the data goes.
    let all_rows = "(SELECT user_id FROM user_logins UNION ALL SELECT user_id FROM user_logins_analytics) AS r";
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {all_rows}")).await,
        total
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(DISTINCT user_id) FROM {all_rows}")
        )
        .await,
        total
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        total
    );

    // Every message before the swap ran on v1, every one after on v2.
    let digests = ledger_digests(&db).await;
    let first_v2 = digests
        .iter()
        .position(|d| *d == v2_digest)
        .expect("v2 ran");
    assert!(first_v2 > 0, "v1 ran first");
    assert!(digests[..first_v2].iter().all(|d| *d == v1_digest));
    assert!(
        digests[first_v2..].iter().all(|d| *d == v2_digest),
        "a message ran on v1 after the swap"
    );

    // The rows show each version's policy.
    let v1_rows = count(
        &db,
        "SELECT count(*) FROM user_logins WHERE masked_ip LIKE 'mp2.%'",
    )
    .await;
    let v2_rows = count(&db, "SELECT count(*) FROM user_logins_analytics WHERE masked_ip LIKE '%/24' AND masked_device_id LIKE 'ps1.%'").await;
    assert_eq!(
        (v1_rows, v2_rows),
        (first_v2 as i64, total - first_v2 as i64)
    );

    let log = log.lock().unwrap();
    let swap_line = log
        .iter()
        .find(|l| l.contains("swapped transform"))
        .expect("swap logged");
    assert!(
        swap_line.contains(&v1_digest[..12]) && swap_line.contains(&v2_digest[..12]),
        "{swap_line}"
    );
    println!("{swap_line}");
    std::fs::remove_dir_all(&deploy_dir).ok();
}

/// `maskpipe run` with one poller on `transform`; only file events (the
/// periodic check is off) can make it notice a change.
fn start_host(queue: &str, database: &str, transform: &Path) -> LoggedHost {
    let mut command = maskpipe();
    command
        .args([
            "run",
            "--pollers",
            "1",
            "--wait-seconds",
            "1",
            "--progress-seconds",
            "0",
        ])
        .args(["--queue", queue, "--database-url", database])
        .arg("--transform")
        .arg(transform)
        // An environment variable, not a flag: a host that does not know it
        // still starts (and shows whether events alone swap).
        .env("MASKPIPE_WATCH_POLL_SECONDS", "0");
    LoggedHost::spawn(command)
}

/// How many messages of `database`'s ledger ran on `digest`.
async fn ran_on(database: &str, digest: &str) -> i64 {
    let db = query_client(database).await;
    db.query_one(
        "SELECT count(*) FROM maskpipe_processed WHERE component_digest = $1",
        &[&digest],
    )
    .await
    .map(|r| r.get::<_, i64>(0))
    .unwrap_or(0)
}

/// A ConfigMap volume as the kubelet keeps it: `..<timestamp>/` holds the
/// files, `..data -> ..<timestamp>`, and each `name -> ..data/name`.
struct ConfigMapVolume {
    mount: PathBuf,
    current: Option<String>,
    updates: u32,
}

impl ConfigMapVolume {
    fn new() -> Self {
        Self {
            mount: temp_dir("maskpipe-configmap"),
            current: None,
            updates: 0,
        }
    }

    /// The kubelet's atomic update, step by step (AtomicWriter): write a new
    /// timestamped directory, point `..data_tmp` at it, rename `..data_tmp`
    /// over `..data`, create the per-file symlinks that are missing, remove
    /// the old directory. The per-file symlinks never change.
    fn update(&mut self, files: &[(&str, &Path)]) {
        use std::os::unix::fs::symlink;
        self.updates += 1;
        let stamp = format!(
            "..2026_11_26_10_00_{:02}.{}",
            self.updates,
            rand::random::<u32>()
        );
        let version = self.mount.join(&stamp);
        std::fs::create_dir(&version).unwrap();
        for (name, source) in files {
            std::fs::copy(source, version.join(name)).unwrap();
        }
        symlink(&stamp, self.mount.join("..data_tmp")).unwrap();
        std::fs::rename(self.mount.join("..data_tmp"), self.mount.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.mount.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(self.mount.join(old)).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.mount);
    }
}

/// Sends `count` unique logins tagged `tag`.
async fn send_logins(queue: &maskpipe::source::SqsSource, tag: &str, count: usize) {
    queue.send(&unique_logins(tag, count, 0)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubelet_configmap_update_swaps_without_sighup_and_back() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let v1 = release_dir().join("transform_wasm.wasm");
    let v1_vectors = repo_root().join("transform-wasm/vectors.jsonl");
    let v2 = release_dir().join("transform_analytics.wasm");
    let v2_vectors = repo_root().join("transform-wasm/analytics/vectors.jsonl");
    let (v1_digest, v2_digest) = (sha256(&v1), sha256(&v2));
    let first = [
        ("transform.wasm", v1.as_path()),
        ("transform.vectors.jsonl", v1_vectors.as_path()),
    ];
    let second = [
        ("transform.wasm", v2.as_path()),
        ("transform.vectors.jsonl", v2_vectors.as_path()),
    ];

    let mut volume = ConfigMapVolume::new();
    volume.update(&first);
    let host = start_host(queue.queue_url(), &database, &volume.path("transform.wasm"));
    send_logins(&queue, "cm-v1", 10).await;
    wait_for("rows from v1", Duration::from_secs(60), async || {
        ran_on(&database, &v1_digest).await >= 10
    })
    .await;

    // (a) The kubelet's update, no SIGHUP: swapped within seconds (events
    // only: the periodic check is off).
    let swap_to_v2 = format!(
        "swapped transform sha256:{} -> sha256:{}",
        &v1_digest[..12],
        &v2_digest[..12]
    );
    let started = std::time::Instant::now();
    volume.update(&second);
    wait_for("the swap to v2", Duration::from_secs(5), async || {
        !host.lines_with(&swap_to_v2).is_empty()
    })
    .await;
    println!("v1 -> v2 after {} ms", started.elapsed().as_millis());
    send_logins(&queue, "cm-v2", 10).await;
    wait_for("rows from v2", Duration::from_secs(60), async || {
        ran_on(&database, &v2_digest).await >= 10
    })
    .await;

    // (b) A second update, back to v1: the watch followed the new directory.
    let swap_to_v1 = format!(
        "swapped transform sha256:{} -> sha256:{}",
        &v2_digest[..12],
        &v1_digest[..12]
    );
    let started = std::time::Instant::now();
    volume.update(&first);
    wait_for("the swap back to v1", Duration::from_secs(5), async || {
        !host.lines_with(&swap_to_v1).is_empty()
    })
    .await;
    println!("v2 -> v1 after {} ms", started.elapsed().as_millis());
    send_logins(&queue, "cm-v1-again", 10).await;
    wait_for("rows from v1 again", Duration::from_secs(60), async || {
        ran_on(&database, &v1_digest).await >= 20
    })
    .await;

    // An update that leaves the component's bytes as they are (say, only
    // another key of the ConfigMap changed) stays silent.
    volume.update(&first);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        host.lines_with("swapped transform").len(),
        2,
        "{}",
        host.log_text()
    );
    assert!(host.lines_with("refused").is_empty(), "{}", host.log_text());
    assert_eq!(ran_on(&database, &v2_digest).await, 10);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_storing_the_raw_ip_is_refused_at_hot_swap_and_the_running_one_continues() {
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let deploy_dir = temp_dir("maskpipe-swap-leaky");
    let live = deploy_dir.join("transform.wasm");
    let v1 = release_dir().join("transform_wasm.wasm");
    let v1_digest = sha256(&v1);
    deploy(
        &v1,
        &repo_root().join("transform-wasm/vectors.jsonl"),
        &live,
    );

    let host = start_host(queue.queue_url(), &database, &live);
    send_logins(&queue, "leak-before", 10).await;
    wait_for("rows from v1", Duration::from_secs(60), async || {
        ran_on(&database, &v1_digest).await >= 10
    })
    .await;

    // The leaky component with an empty vectors file: the vectors cannot
    // vouch for it, and the canary refuses it.
    let empty = deploy_dir.join("empty.vectors.jsonl");
    std::fs::write(&empty, "").unwrap();
    let leaky = fixture_path("fixture_leaky");
    let leaky_digest = sha256(&leaky);
    deploy(&leaky, &empty, &live);
    wait_for(
        "the leaky component to be refused",
        Duration::from_secs(10),
        async || !host.lines_with("refused the new transform").is_empty(),
    )
    .await;
    let refusal = host.lines_with("refused the new transform").join("\n");
    assert!(
        refusal.contains("stores the message's raw `ip` unprotected in `user_logins.masked_ip`"),
        "{refusal}"
    );
    assert!(refusal.contains(&v1_digest[..12]), "{refusal}");

    send_logins(&queue, "leak-after", 10).await;
    wait_for("v1 to keep running", Duration::from_secs(60), async || {
        ran_on(&database, &v1_digest).await >= 20
    })
    .await;
    assert_eq!(ran_on(&database, &leaky_digest).await, 0);
    assert!(
        host.lines_with("swapped transform").is_empty(),
        "{}",
        host.log_text()
    );
    host.stop().await;
    std::fs::remove_dir_all(&deploy_dir).ok();
}
