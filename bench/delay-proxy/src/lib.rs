//! A delay line in front of the queue server: a userspace TCP proxy on
//! 127.0.0.1 that adds a fixed latency to every request, as a real SQS
//! endpoint a few milliseconds away would.
//!
//! Client → server, every chunk read is stamped with its arrival time and
//! handed to a writer task of its own connection, which writes it to the
//! server at arrival + delay, in order. So back-to-back chunks and
//! concurrent connections each get exactly +delay (a chunk never waits for
//! the one before it to be delayed too), and bandwidth is unaffected: it is
//! a latency line, not a throttle. Server → client passes straight through,
//! so every request/response round trip is `delay` longer. Both sockets set
//! TCP_NODELAY (Nagle's algorithm and delayed ACKs would add their own
//! 40 ms waits to the small writes).
//!
//! The bytes and connections it carried are counted, so a stage can check
//! that its traffic really went through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What went through the proxy so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client → server bytes (the requests).
    pub up: AtomicU64,
    /// Server → client bytes (the responses).
    pub down: AtomicU64,
    pub connections: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Carried {
    pub up: u64,
    pub down: u64,
    pub connections: u64,
}

impl std::ops::Sub for Carried {
    type Output = Carried;
    fn sub(self, earlier: Carried) -> Carried {
        Carried {
            up: self.up - earlier.up,
            down: self.down - earlier.down,
            connections: self.connections - earlier.connections,
        }
    }
}

/// The running proxy; dropping it stops it and every connection it holds.
pub struct DelayProxy {
    address: SocketAddr,
    counters: Arc<Counters>,
    accepting: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`,
    /// delaying every client → server chunk by `delay`.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accepting = tokio::spawn(accept(listener, upstream, delay, Arc::clone(&counters)));
        Ok(Self {
            address,
            counters,
            accepting,
        })
    }

    /// The endpoint URL to give an SQS client (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn carried(&self) -> Carried {
        Carried {
            up: self.counters.up.load(Ordering::Relaxed),
            down: self.counters.down.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // The accept task owns every connection's tasks: aborting it drops
        // (and so aborts) them all.
        self.accepting.abort();
    }
}

/// The queue server's address, from an endpoint URL such as
/// `http://127.0.0.1:4566` (plain HTTP only: the proxy forwards bytes, and
/// the local stack's endpoint is HTTP).
pub async fn upstream_of(endpoint: &str) -> Result<SocketAddr> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        bail!("the delay proxy needs an http:// endpoint, not {endpoint:?}");
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    tokio::net::lookup_host(&authority)
        .await?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(forward(client, upstream, delay, Arc::clone(&counters)));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: the delayed direction through a writer task, the other
/// straight through. Errors end the connection, as a reset would.
async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();

    // The line: chunks stamped on arrival, written at arrival + delay.
    let (line, mut line_out) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let up_counters = Arc::clone(&counters);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    up_counters.up.fetch_add(n as u64, Ordering::Relaxed);
                    if line.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `line` tells the writer the client is done.
    };
    let writer = async move {
        while let Some((arrived, chunk)) = line_out.recv().await {
            tokio::time::sleep_until(arrived + delay).await;
            if server_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let back = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    counters.down.fetch_add(n as u64, Ordering::Relaxed);
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = client_write.shutdown().await;
    };
    // The writer runs as a task of its own, so that a chunk's delay starts
    // when it arrives, whatever the reader and the other direction do.
    let writer = tokio::spawn(writer);
    tokio::join!(reader, back);
    // The server closed (or both sides did): nothing left to deliver.
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: every round trip takes the delay
    /// (not more for back-to-back chunks), and the counters see the bytes.
    #[tokio::test]
    async fn every_chunk_is_delayed_by_exactly_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_address = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let delay = Duration::from_millis(50);
        let proxy = DelayProxy::start(echo_address, delay).await.unwrap();
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        client.set_nodelay(true).unwrap();
        // Ten chunks back to back: the last echo is back ~delay after the
        // last was sent, not ten delays.
        let started = std::time::Instant::now();
        for _ in 0..10 {
            client.write_all(b"ping").await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sending = started.elapsed();
        let mut got = vec![0u8; 40];
        client.read_exact(&mut got).await.unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= delay, "{elapsed:?}");
        // Queued behind each other, the chunks would take ten delays (500
        // ms past the sending); the margin is for a loaded machine.
        assert!(
            elapsed < sending + delay * 4,
            "{elapsed:?} ({sending:?} sending)"
        );
        assert_eq!(got, b"ping".repeat(10));
        let carried = proxy.carried();
        assert_eq!((carried.up, carried.down, carried.connections), (40, 40, 1));
        assert!(proxy.endpoint().starts_with("http://127.0.0.1:"));
    }

    #[tokio::test]
    async fn the_upstream_comes_from_the_endpoint_url() {
        assert_eq!(
            upstream_of("http://127.0.0.1:4566").await.unwrap(),
            "127.0.0.1:4566".parse().unwrap()
        );
        assert_eq!(
            upstream_of("http://127.0.0.1:4566/").await.unwrap().port(),
            4566
        );
        assert!(
            upstream_of("https://sqs.us-east-1.amazonaws.com")
                .await
                .is_err()
        );
    }
}
