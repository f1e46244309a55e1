//! Helpers for tests that talk to the real local stack (`just up`): a fresh
//! database and a fresh queue per test, so tests run in parallel and never
//! touch the demo's `maskpipe` database or `login-queue`.

#![allow(dead_code)] // each test binary uses its own subset

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maskpipe::masking::{Keyring, MasterKey};
use maskpipe::source::SqsSource;

/// A test-only key (public, like the vectors' key).
pub const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const KEY_ID: &str = "it1";

pub fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(KEY_ID, &MasterKey::parse(KEY_HEX).unwrap(), &[]).unwrap())
}

/// The sample queue's 100 bodies, in send order.
pub fn sample_bodies() -> Vec<String> {
    let path = repo_root().join("data/queue_bodies.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The reference component, as `just build-transform` builds it.
pub fn component_path() -> PathBuf {
    let path = std::env::var_os("MASKPIPE_TEST_COMPONENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip2/release/transform_wasm.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `just test`, which builds it",
        path.display()
    );
    path
}

/// A fixture component from `host/tests/fixtures/`, as `just build-fixtures`
/// builds it (`name` as cargo names the file: `fixture_leaky`).
pub fn fixture_path(name: &str) -> PathBuf {
    let path = repo_root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `just build-fixtures` (`just test` does)",
        path.display()
    );
    path
}

/// A fresh empty directory under the system's temp dir.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require_stack() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with `just test` (it starts the local stack and loads demo.env)"
    );
}

/// A unique lower-case name for a test's database or queue.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub fn admin_url() -> String {
    let port = std::env::var("MASKPIPE_PG_PORT").unwrap_or_else(|_| "25432".into());
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    require_stack();
    let name = unique_name("mp_test");
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("the local PostgreSQL is not reachable: run `just up`");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let admin = admin_url();
    let base = admin
        .strip_suffix("/postgres")
        .expect("admin URL ends in /postgres");
    format!("{base}/{name}")
}

pub async fn query_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Creates an empty queue.
pub async fn fresh_queue() -> SqsSource {
    require_stack();
    let (queue, existed) = SqsSource::create(&unique_name("mp-test").replace('_', "-"))
        .await
        .expect("the local SQS is not reachable: run `just up`");
    assert!(!existed);
    queue
}

/// The maskpipe binary with a clean environment: the caller's MASKPIPE_*
/// variables (demo.env's) are removed so a test can never reach the demo data.
pub fn maskpipe() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_maskpipe"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MASKPIPE_") {
            command.env_remove(name);
        }
    }
    command
        .env("MASKPIPE_MASTER_KEY", KEY_HEX)
        .env("MASKPIPE_KEY_ID", KEY_ID)
        // Every test starts from an empty database.
        .env("MASKPIPE_CREATE_TABLES", "true");
    command.kill_on_drop(true);
    command
}

/// `maskpipe run --drain` with `component` on a queue and database.
pub fn drain_command(
    queue_url: &str,
    database_url: &str,
    component: &std::path::Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut command = maskpipe();
    command
        .args([
            "run",
            "--drain",
            "--wait-seconds",
            "1",
            "--progress-seconds",
            "0",
        ])
        .args(["--queue", queue_url, "--database-url", database_url])
        .arg("--transform")
        .arg(component)
        .args(extra);
    command
}

/// `maskpipe run --drain` on a queue and database, with a time limit.
pub async fn drain(queue: &SqsSource, database_url: &str, extra: &[&str]) -> Output {
    let command = drain_command(queue.queue_url(), database_url, &component_path(), extra);
    run_with_limit(command, Duration::from_secs(120)).await
}

pub async fn run_with_limit(mut command: tokio::process::Command, limit: Duration) -> Output {
    tokio::time::timeout(limit, command.output())
        .await
        .expect("maskpipe did not finish in time")
        .expect("maskpipe could not be started")
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Polls `done` every 100 ms until it holds; panics after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the ledger of `database` holds at least `at_least` messages.
pub async fn wait_until_processed(database: &str, at_least: i64, limit: Duration) {
    wait_for(
        &format!("{at_least} messages processed"),
        limit,
        async || try_count(database, "SELECT count(*) FROM maskpipe_processed").await >= at_least,
    )
    .await;
}

/// A count that tolerates a database that is down (0 then).
pub async fn try_count(url: &str, sql: &str) -> i64 {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
                .query_one(sql, &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        }
        Err(_) => 0,
    }
}

/// `maskpipe run` (not draining) as a child process.
pub fn spawn_host(queue_url: &str, database_url: &str, extra: &[&str]) -> tokio::process::Child {
    spawn_host_at(None, queue_url, database_url, extra)
}

/// [`spawn_host`] against an SQS endpoint of its own (a private server).
pub fn spawn_host_at(
    endpoint: Option<&str>,
    queue_url: &str,
    database_url: &str,
    extra: &[&str],
) -> tokio::process::Child {
    let mut command = maskpipe();
    command
        .args(["run", "--wait-seconds", "1", "--progress-seconds", "0"])
        .args(["--queue", queue_url, "--database-url", database_url])
        .arg("--transform")
        .arg(component_path())
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(endpoint) = endpoint {
        command.env("AWS_ENDPOINT_URL", endpoint);
    }
    command.spawn().expect("maskpipe could not be started")
}

/// `count` valid logins with unique user ids, and `malformed` bad messages.
pub fn unique_logins(tag: &str, count: usize, malformed: usize) -> Vec<String> {
    let mut bodies: Vec<String> = (0..count).map(|n| login_numbered(tag, n)).collect();
    for n in 0..malformed {
        // Spread the malformed ones through the stream.
        let at = (n * 97 + 13) % (bodies.len() + 1);
        bodies.insert(at, format!("{{\"foo\": \"{tag}-bad-{n}\"}}"));
    }
    bodies
}

/// The sample's first login with user id `{tag}-{n:06}`.
pub fn login_numbered(tag: &str, n: usize) -> String {
    // Read once: tests make thousands.
    static FIRST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FIRST
        .get_or_init(|| sample_bodies().swap_remove(0))
        .replace(
            "424cdd21-063a-43a7-b91b-7ca1a833afae",
            &format!("{tag}-{n:06}"),
        )
}

/// Every message's component digest in the ledger, in the order they were
/// committed.
pub async fn ledger_digests(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        "SELECT component_digest FROM maskpipe_processed ORDER BY processed_at, message_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Continuous load for the hot swap tests: ten messages every 20 ms, the
/// `n`th made by `body(n)`, until stopped.
pub struct ContinuousLoad {
    sent: Arc<std::sync::atomic::AtomicUsize>,
    producing: Arc<std::sync::atomic::AtomicBool>,
    producer: tokio::task::JoinHandle<()>,
}

impl ContinuousLoad {
    pub fn start(queue: &SqsSource, body: impl Fn(usize) -> String + Send + 'static) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let sent = Arc::new(AtomicUsize::new(0));
        let producing = Arc::new(AtomicBool::new(true));
        let producer = {
            let (queue, sent, producing) =
                (queue.clone(), Arc::clone(&sent), Arc::clone(&producing));
            tokio::spawn(async move {
                while producing.load(Ordering::Relaxed) {
                    let start = sent.load(Ordering::Relaxed);
                    let bodies: Vec<String> = (start..start + 10).map(&body).collect();
                    queue.send(&bodies).await.unwrap();
                    sent.fetch_add(10, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self {
            sent,
            producing,
            producer,
        }
    }

    /// Stops sending; how many messages were sent in all.
    pub async fn stop(self) -> i64 {
        use std::sync::atomic::Ordering;
        self.producing.store(false, Ordering::Relaxed);
        self.producer.await.unwrap();
        self.sent.load(Ordering::Relaxed) as i64
    }
}

/// Asserts that exactly the valid logins became rows, once each, and every
/// malformed message a dead letter, once.
pub async fn assert_exactly_once(database_url: &str, valid: i64, malformed: i64) {
    let db = query_client(database_url).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM user_logins").await,
        valid,
        "rows"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT user_id) FROM user_logins").await,
        valid,
        "distinct rows"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_dead_letters").await,
        malformed,
        "dead letters"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT message_id) FROM maskpipe_dead_letters"
        )
        .await,
        malformed
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM maskpipe_processed").await,
        valid + malformed,
        "ledger"
    );
}

/// A private PostgreSQL or LocalStack, stopped and removed on drop.
pub struct PrivateStack {
    dir: PathBuf,
    pg_port: u16,
    sqs_port: u16,
}

impl PrivateStack {
    pub fn new(slot: u16) -> Self {
        let dir = std::env::temp_dir().join(unique_name("maskpipe-fault"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Below the ephemeral range, away from the shared stack's ports.
        let base = 26_000 + (std::process::id() % 800) as u16 * 8 + slot * 2;
        Self {
            dir,
            pg_port: base,
            sqs_port: base + 1,
        }
    }

    pub fn stack(&self, action: &str) {
        let status = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg(action)
            .env("MASKPIPE_STACK_DIR", &self.dir)
            .env("MASKPIPE_PG_PORT", self.pg_port.to_string())
            .env("MASKPIPE_SQS_PORT", self.sqs_port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "stack.sh {action} failed");
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/maskpipe", self.pg_port)
    }

    /// Its own directory, removed with it.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn sqs_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.sqs_port)
    }

    pub fn localstack_pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("localstack/pid"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("down")
            .env("MASKPIPE_STACK_DIR", &self.dir)
            .env("MASKPIPE_PG_PORT", self.pg_port.to_string())
            .env("MASKPIPE_SQS_PORT", self.sqs_port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drains whatever is left (after in-flight messages become visible again).
pub async fn drain_until_empty(queue: &SqsSource, database: &str, endpoint: Option<&str>) {
    drain_until_empty_with(queue, database, endpoint, &component_path()).await;
}

/// [`drain_until_empty`] with another component.
pub async fn drain_until_empty_with(
    queue: &SqsSource,
    database: &str,
    endpoint: Option<&str>,
    component: &std::path::Path,
) {
    let started = Instant::now();
    loop {
        let mut command = drain_command(queue.queue_url(), database, component, &[]);
        if let Some(endpoint) = endpoint {
            command.env("AWS_ENDPOINT_URL", endpoint);
        }
        let output = run_with_limit(command, Duration::from_secs(120)).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let depth = queue.depth().await.unwrap();
        if depth.visible + depth.in_flight == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "queue never emptied: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reference transform's declaration (`user_logins`), one `Arc` for the
/// whole test binary, as a running host holds one per component.
pub fn login_schema() -> Arc<maskpipe::schema::Schema> {
    static SCHEMA: std::sync::OnceLock<Arc<maskpipe::schema::Schema>> = std::sync::OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(maskpipe::schema::Schema::new(vec![maskpipe::schema::user_logins()]).unwrap())
    }))
}

/// maskpipe's tables and `user_logins`, as a host's startup makes them.
pub async fn prepare_sink(sink: &mut maskpipe::sink::PgSink) {
    sink.ensure_schema().await.unwrap();
    sink.prepare_tables(&login_schema(), true).await.unwrap();
}

/// A running `maskpipe` whose stderr is collected line by line.
pub struct LoggedHost {
    pub child: tokio::process::Child,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoggedHost {
    /// Spawns `command` (stdout discarded, stderr collected).
    pub fn spawn(mut command: tokio::process::Command) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("maskpipe could not be started");
        let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
        let writer = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                writer.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The first line holding `needle`, if any yet.
    pub fn logged(&self, needle: &str) -> Option<String> {
        self.lines_with(needle).into_iter().next()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit, which must be a success within 30 s.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "host exited with {status}");
    }
}

/// Sends `name` (`-TERM`, `-STOP`, …) to a child process.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Sets a queue's visibility timeout (through a private server's endpoint,
/// if given).
pub async fn set_visibility_timeout(queue: &SqsSource, endpoint: Option<&str>, seconds: u32) {
    let client = match endpoint {
        Some(endpoint) => SqsSource::client_at(endpoint).await,
        None => SqsSource::client().await,
    };
    client
        .set_queue_attributes()
        .queue_url(queue.queue_url())
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            seconds.to_string(),
        )
        .send()
        .await
        .unwrap();
}

/// A login whose fields the test controls.
pub fn login(user_id: &str, device_type: &str, locale: &str) -> String {
    format!(
        r#"{{"user_id": "{user_id}", "app_version": "2.3.0", "device_type": "{device_type}", "ip": "10.1.2.3", "locale": "{locale}", "device_id": "593-47-5928"}}"#
    )
}

/// `rounds` times: start `maskpipe run` with `extra`, wait for its first
/// commit, kill it with SIGKILL a random moment (up to `within_ms`, seeded)
/// later. Returns how many kills came before all `total` messages were in
/// the ledger.
pub async fn kill_9_rounds(
    queue: &SqsSource,
    database: &str,
    extra: &[&str],
    rounds: usize,
    within_ms: u64,
    total: i64,
    seed: u64,
) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut killed_mid_stream = 0;
    for round in 0..rounds {
        let before = try_count(database, "SELECT count(*) FROM maskpipe_processed").await;
        let mut host = spawn_host(queue.queue_url(), database, extra);
        wait_for("the host to commit", Duration::from_secs(60), async || {
            try_count(database, "SELECT count(*) FROM maskpipe_processed").await > before
        })
        .await;
        let moment = Duration::from_millis(rng.random_range(0..within_ms));
        tokio::time::sleep(moment).await;
        host.start_kill().unwrap(); // SIGKILL
        host.wait().await.unwrap();
        let written = try_count(database, "SELECT count(*) FROM maskpipe_processed").await;
        println!("round {round}: killed {moment:?} after a commit, {written} of {total} processed");
        killed_mid_stream += usize::from(written < total);
    }
    killed_mid_stream
}
