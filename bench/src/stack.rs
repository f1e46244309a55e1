//! Fresh databases and queues on the local stack, one per run, dropped
//! after it so the servers do not slow down as the suite goes on.

use std::sync::Arc;

use anyhow::{Context, Result};
use maskpipe::schema::Schema;
use maskpipe::sink::{Database, PgSink};
use maskpipe::source::SqsSource;

/// The reference transform's declaration, for the stages that run no
/// component.
pub(crate) fn login_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![maskpipe::schema::user_logins()]).expect("user_logins is valid"))
}

/// maskpipe's own tables and `user_logins`, as a host's startup makes them.
pub(crate) async fn prepare_database(url: &Database) -> Result<()> {
    let mut sink = PgSink::connect(url).await?;
    sink.ensure_schema().await?;
    sink.prepare_tables(&login_schema(), true).await
}

pub(crate) async fn fresh_database(admin_url: &str, tag: &str) -> Result<String> {
    let name = format!(
        "mp_bench_{tag}_{}_{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    );
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin_url
        .strip_suffix("/postgres")
        .context("admin URL must end in /postgres")?;
    Ok(format!("{base}/{name}"))
}

/// Drops a database `fresh_database` made (and whoever is still on it).
pub(crate) async fn drop_database(admin_url: &str, url: &str) -> Result<()> {
    let name = url
        .rsplit('/')
        .next()
        .context("database URL without a name")?;
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

pub(crate) async fn preload(queue: &SqsSource, bodies: &[String]) -> Result<()> {
    let mut senders = tokio::task::JoinSet::new();
    for part in bodies.chunks(bodies.len().div_ceil(8).max(1)) {
        let (queue, part) = (queue.clone(), part.to_vec());
        senders.spawn(async move { queue.send(&part).await });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    Ok(())
}

pub(crate) async fn fresh_queue(tag: &str) -> Result<SqsSource> {
    let name = format!(
        "mp-bench-{tag}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xffffff
    );
    Ok(SqsSource::create(&name).await?.0)
}
