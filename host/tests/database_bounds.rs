//! Every wait on PostgreSQL is bounded: a half-open connection (the server
//! or the network stops answering without closing anything) hangs neither a
//! poller nor a shutdown.
//!
//! The half-open connection is made by a TCP proxy in front of the real
//! PostgreSQL that, on command, stops forwarding bytes in either direction
//! without closing: the host's kernel still sees a live peer (the proxy's
//! kernel acknowledges every byte), so only maskpipe's own timeouts can
//! notice.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy that can turn into a black hole.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    accepting: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    black_hole: AtomicBool,
    /// Bumped each time the black hole opens: a connection from an earlier
    /// epoch stays dead for good, as a half-open connection does.
    epoch: AtomicU64,
    /// Write halves towards the host of dead connections: dropping one would
    /// send a FIN, and a black hole sends nothing.
    graveyard: Mutex<Vec<OwnedWriteHalf>>,
}

impl ProxyState {
    fn forwards(&self, born: u64) -> bool {
        !self.black_hole.load(Ordering::SeqCst) && self.epoch.load(Ordering::SeqCst) == born
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let shared = Arc::clone(&state);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let born = state.epoch.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(
                        client_read,
                        server_write,
                        Arc::clone(&state),
                        born,
                        false,
                    ));
                    tokio::spawn(pump(server_read, client_write, state, born, true));
                });
            }
        });
        Self {
            port,
            state,
            accepting,
        }
    }

    fn black_hole(&self, on: bool) {
        if on {
            self.state.epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.state.black_hole.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies bytes one way while the proxy forwards; swallows them otherwise.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: Arc<ProxyState>,
    born: u64,
    towards_host: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if state.forwards(born) && to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    if towards_host && !state.forwards(born) {
        // Never tell the host: keep its side open and silent.
        state.graveyard.lock().unwrap().push(to);
    }
}

fn signal_term(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// The database URL with its port replaced by the proxy's.
fn through(database: &str, proxy: &Proxy) -> String {
    let port = std::env::var("MASKPIPE_PG_PORT").unwrap_or_else(|_| "25432".into());
    let proxied = database.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    assert_ne!(proxied, database, "the database URL names port {port}");
    proxied
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_open_database_connection_hangs_neither_pollers_nor_sigterm() {
    const TIMEOUT_SECONDS: u64 = 2;
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    queue
        .send(&unique_logins("halfopen", 3_000, 30))
        .await
        .unwrap();
    let port: u16 = std::env::var("MASKPIPE_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(25432);
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let proxied = through(&database, &proxy);

    let log_path = std::env::temp_dir().join(unique_name("maskpipe-halfopen.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut host = maskpipe()
        .args(["run", "--wait-seconds", "1", "--progress-seconds", "0"])
        .args(["--pollers", "4", "--visibility-timeout-seconds", "5"])
        .args(["--database-timeout-seconds", &TIMEOUT_SECONDS.to_string()])
        .args(["--queue", queue.queue_url(), "--database-url", &proxied])
        .arg("--transform")
        .arg(component_path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until_processed(&database, 300, Duration::from_secs(60)).await;

    // Half-open mid-run: statements in flight get no answer, new connections
    // get no handshake. Pollers must time out, not hang.
    proxy.black_hole(true);
    tokio::time::sleep(Duration::from_secs(TIMEOUT_SECONDS + 2)).await;
    let asked = Instant::now();
    signal_term(&host);
    let status = tokio::time::timeout(Duration::from_secs(90), host.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the host hung after SIGTERM:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        })
        .unwrap();
    let took = asked.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    println!("exited {status} {took:?} after SIGTERM");
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "exit status {status}:\n{log}"
    );
    assert!(
        took < Duration::from_secs(TIMEOUT_SECONDS + 15),
        "took {took:?} to stop:\n{log}"
    );
    assert!(
        log.contains("did not answer"),
        "no write or connect timed out:\n{log}"
    );

    // Healthy again: whatever was cut off is redelivered and, the ledger
    // deciding, written exactly once.
    proxy.black_hole(false);
    drain_until_empty(&queue, &proxied, None).await;
    assert_exactly_once(&database, 3_000, 30).await;
}
