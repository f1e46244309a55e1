//! The PostgreSQL sink: one transaction per batch.
//!
//! Atomically: claim each message id in the ledger (`maskpipe_processed`),
//! then write rows to the component's declared tables and dead letters to
//! `maskpipe_dead_letters` for the ids that were new. A redelivered message
//! finds its id claimed and adds nothing, so at-least-once delivery from SQS
//! becomes exactly-once rows. The whole batch is one prepared statement over
//! column arrays ([`batch`]): one round trip per batch, whatever its size.
//!
//! The declared tables are checked against the catalog, and created when
//! missing and allowed, by [`Database::prepare_tables`] before a component
//! runs; they are never altered. The side tables are maskpipe's own.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::masking::Keyring;
use crate::record::Outcome;
use crate::schema::{Schema, catalog};
use crate::source::Received;

mod batch;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS maskpipe_processed (
    message_id text PRIMARY KEY,
    outcome text NOT NULL CONSTRAINT maskpipe_processed_outcome_check
        CHECK (outcome IN ('row', 'dead_letter', 'skipped')),
    component_digest text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS maskpipe_dead_letters (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    body_sealed text NOT NULL,
    sent_at timestamptz,
    component_digest text NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS maskpipe_dead_letters_reason ON maskpipe_dead_letters (reason);
-- What the transform said about a message can quote it: kept only sealed.
-- Checked first: ALTER TABLE takes an exclusive lock even when it has
-- nothing to do, and would queue every writer behind any reader.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name = 'maskpipe_dead_letters'
          AND column_name = 'detail_sealed'
    ) THEN
        ALTER TABLE maskpipe_dead_letters ADD COLUMN detail_sealed text;
    END IF;
END $$;
-- A message with no rows (contract 1.0) is `skipped`: widen a ledger made
-- before. NOT VALID: every existing row passes, no need to scan them all.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'maskpipe_processed'::regclass
          AND conname = 'maskpipe_processed_outcome_check'
          AND pg_get_constraintdef(oid) LIKE '%skipped%'
    ) THEN
        ALTER TABLE maskpipe_processed
            DROP CONSTRAINT IF EXISTS maskpipe_processed_outcome_check,
            ADD CONSTRAINT maskpipe_processed_outcome_check
                CHECK (outcome IN ('row', 'dead_letter', 'skipped')) NOT VALID;
    END IF;
END $$;
-- The pruner deletes the oldest ledger rows; without this it would scan the
-- whole ledger every time.
CREATE INDEX IF NOT EXISTS maskpipe_processed_processed_at ON maskpipe_processed (processed_at);
";

// Several hosts may start at once against a new database: `CREATE TABLE IF
// NOT EXISTS` is not race-free, so schema creation holds this advisory lock
// (the one that creating a transform's declared tables holds).
use crate::schema::catalog::SCHEMA_LOCK;
/// How long schema creation may take: on an existing ledger of hundreds of
/// millions of rows, building its `processed_at` index takes minutes.
const SCHEMA_DEADLINE: Duration = Duration::from_secs(60 * 60);
/// Held by the one host pruning the ledger, so replicas do not all prune.
const PRUNE_LOCK: i64 = SCHEMA_LOCK + 1;

/// One prune step: at most `$2` ledger rows older than `$1`, by physical
/// address (a TID scan: no second index lookup), in its own short transaction.
const PRUNE_BATCH: &str = "
DELETE FROM maskpipe_processed
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM maskpipe_processed WHERE processed_at < $1 LIMIT $2
))";

/// What one ledger prune did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Ledger rows deleted.
    pub rows: u64,
    /// DELETE statements run (each its own transaction).
    pub batches: u32,
    /// Another host held the prune lock, so this one did nothing.
    pub skipped: bool,
}

/// What one batch write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteReport {
    pub rows: usize,
    /// The reason code of each dead letter written.
    pub dead_letter_reasons: Vec<String>,
    /// Messages whose id the ledger already held: redeliveries.
    pub duplicates: usize,
    /// Messages that made no rows (recorded in the ledger as `skipped`).
    pub skipped: usize,
}

/// One message and what the transform made of it.
pub struct Processed<'a> {
    pub message: &'a Received,
    pub outcome: &'a Outcome,
}

/// The target database: where it is, how its connections are secured (see
/// [`crate::tls`]) and how long any one wait on it may take.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    /// The connection string as logs and errors show it.
    redacted: String,
    tls: MakeRustlsConnect,
    timeout: Duration,
}

/// The default bound of one statement (and of the connect handshake).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connect timeout when the URL sets none (and the bound is longer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that answers no keepalive probe for idle + interval x retries
/// (about 25 s) is dead; the kernel then fails the socket.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// tokio-postgres's own default idle time, which means "the URL set none".
const LIBRARY_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

impl Database {
    /// `ca_file`: the CA the server's certificate must chain to, if any. A
    /// CA means TLS is required: `sslmode=prefer` (the default) becomes
    /// `require`, so a server that declines TLS is refused rather than
    /// talked to in plaintext, and `sslmode=disable` is an error.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self> {
        let redacted = redact_url(url);
        let mut config = tokio_postgres::Config::from_str(url).map_err(|error| {
            anyhow::anyhow!(
                "the database URL {redacted} is not a valid PostgreSQL connection string: {}",
                unquote(&error.to_string())
            )
        })?;
        if ca_file.is_some() {
            match config.get_ssl_mode() {
                SslMode::Disable => bail!(
                    "the database URL says sslmode=disable but a database CA is set \
                     (MASKPIPE_DATABASE_CA): a CA requires TLS, drop one of them"
                ),
                SslMode::Require => {}
                // Prefer, and any mode added later, is tightened.
                _ => {
                    config.ssl_mode(SslMode::Require);
                }
            }
        }
        Ok(Self {
            config,
            redacted,
            tls: crate::tls::connector(ca_file)?,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bounds every statement to `timeout` (server side, `statement_timeout`)
    /// and every wait on the server to a little more (client side), so a
    /// half-open connection fails instead of hanging.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long the client waits for an answer: the server's own
    /// `statement_timeout` should fire first and leave the connection usable;
    /// this catches a server (or network) that no longer answers at all.
    fn deadline(&self) -> Duration {
        self.timeout + self.timeout.min(Duration::from_secs(5))
    }

    /// The connection string with its password hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        self.redacted.clone()
    }

    /// Whether connections must use TLS.
    pub fn requires_tls(&self) -> bool {
        self.config.get_ssl_mode() == SslMode::Require
    }

    /// The URL's settings plus maskpipe's bounds where the URL sets none.
    fn config(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT.min(self.timeout));
        }
        if config.get_keepalives() && config.get_keepalives_idle() == LIBRARY_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
        // Unacknowledged writes fail the socket after this long (Linux only;
        // keepalives cover an idle connection, this a busy one).
        if cfg!(target_os = "linux") && config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(self.deadline());
        }
        config
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// A connection to the target database.
pub struct PgSink {
    client: Client,
    /// Prepared on first use, once per connection and declaration.
    write_batch: Option<(Arc<Schema>, Statement)>,
    /// The client-side bound of one round trip (see [`Database::with_timeout`]).
    deadline: Duration,
    /// Set when a wait timed out: the connection cannot be trusted again.
    broken: AtomicBool,
}

impl PgSink {
    /// Connects; the connection runs on its own task until the client drops.
    /// Bounded: a server that accepts but never answers is an error after
    /// [`Database::with_timeout`]'s bound plus a margin, not a hang.
    pub async fn connect(database: &Database) -> Result<Self> {
        let config = database.config();
        let connecting = async {
            let (client, connection) = config.connect(database.tls.clone()).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!("PostgreSQL connection closed: {error}");
                }
            });
            // Server side: a statement past the bound is cancelled and the
            // connection stays usable.
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    database.timeout.as_millis()
                ))
                .await?;
            Ok::<_, tokio_postgres::Error>(client)
        };
        let client = match tokio::time::timeout(database.deadline(), connecting).await {
            Err(_) => bail!(
                "cannot connect to PostgreSQL at {}: it did not answer in {:?}",
                database.redacted,
                database.deadline()
            ),
            Ok(Ok(client)) => client,
            // The driver's message is scrubbed of the password: its text is
            // not ours to vouch for, and the error reaches logs.
            Ok(Err(error)) => bail!(
                "cannot connect to PostgreSQL at {}: {}",
                database.redacted,
                scrub(&error_chain(&error), database.config.get_password())
            ),
        };
        Ok(Self {
            client,
            write_batch: None,
            deadline: database.deadline(),
            broken: AtomicBool::new(false),
        })
    }

    /// Runs `work` (a call on this connection) within the client-side
    /// deadline; see [`PgSink::settle`].
    pub(crate) async fn bounded<T, E: Into<anyhow::Error>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T> {
        let outcome = tokio::time::timeout(self.deadline, work).await;
        self.settle(self.deadline, outcome)
    }

    /// The result of a wait bounded by the deadline. On timeout the
    /// connection is marked broken (a half-open connection never recovers),
    /// so the caller's `is_closed` makes it connect afresh.
    fn settle<T, E: Into<anyhow::Error>>(
        &self,
        deadline: Duration,
        outcome: Result<Result<T, E>, tokio::time::error::Elapsed>,
    ) -> Result<T> {
        match outcome {
            Ok(result) => result.map_err(Into::into),
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(anyhow!(
                    "PostgreSQL did not answer in {deadline:?}; dropping the connection"
                ))
            }
        }
    }

    /// The connection, for maskpipe's own tools (wrap its calls in
    /// [`PgSink::bounded`]).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The connection, for maskpipe's own tools' transactions (bound each
    /// one by [`Database::timeout`]).
    pub(crate) fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Whether the connection has died (the pipeline then reconnects).
    pub fn is_closed(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.client.is_closed()
    }

    /// A round trip to the server (readiness checks).
    pub async fn ping(&self) -> Result<()> {
        self.client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Creates the tables that are missing; never alters an existing one.
    /// Bounded by [`SCHEMA_DEADLINE`], not the statement bound: the first
    /// start after an upgrade may build an index over a large ledger.
    pub async fn ensure_schema(&mut self) -> Result<()> {
        let deadline = self.deadline.max(SCHEMA_DEADLINE);
        let outcome = tokio::time::timeout(deadline, self.ensure_schema_unbounded()).await;
        self.settle(deadline, outcome)
    }

    async fn ensure_schema_unbounded(&mut self) -> Result<()> {
        let tx = self.client.transaction().await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute(SCHEMA)
            .await
            .context("cannot create maskpipe's tables")?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks the component's declared tables against the catalog, creating
    /// missing ones when `create` allows (see [`catalog::prepare`]), under
    /// the schema deadline: another host may hold the lock while it builds
    /// an index.
    pub async fn prepare_tables(&mut self, schema: &Schema, create: bool) -> Result<()> {
        let deadline = self.deadline.max(SCHEMA_DEADLINE);
        let outcome =
            tokio::time::timeout(deadline, catalog::prepare(&mut self.client, schema, create))
                .await;
        self.settle(deadline, outcome)
    }

    /// Writes one batch atomically (see the module docs), within the
    /// deadline: after a timeout the outcome is unknown, and the ledger makes
    /// the caller's retry (on a new connection) exact either way. `schema`
    /// is the declaration of the component that made the outcomes.
    pub async fn write_batch(
        &mut self,
        batch: &[Processed<'_>],
        schema: &Arc<Schema>,
        component_digest: &str,
        keyring: &Keyring,
    ) -> Result<WriteReport> {
        let outcome = tokio::time::timeout(
            self.deadline,
            self.write_batch_unbounded(batch, schema, component_digest, keyring),
        )
        .await;
        self.settle(self.deadline, outcome)
    }

    async fn write_batch_unbounded(
        &mut self,
        batch: &[Processed<'_>],
        schema: &Arc<Schema>,
        component_digest: &str,
        keyring: &Keyring,
    ) -> Result<WriteReport> {
        let statement = match &self.write_batch {
            Some((prepared_for, statement)) if Arc::ptr_eq(prepared_for, schema) => {
                statement.clone()
            }
            _ => {
                let statement = self
                    .client
                    .prepare(&batch::sql(schema))
                    .await
                    .context("cannot prepare the batch statement")?;
                self.write_batch = Some((Arc::clone(schema), statement.clone()));
                statement
            }
        };
        let params = batch::BatchParams::new(batch, schema, component_digest, keyring)?;
        let result = self
            .client
            .query_one(&statement, &params.as_params())
            .await
            .context("cannot write the batch")?;
        let claimed: i64 = result.get(0);
        let rows: i64 = result.get(1);
        let dead_letter_reasons: Vec<String> = result.get(2);
        let skipped: i64 = result.get(3);
        Ok(WriteReport {
            rows: rows as usize,
            dead_letter_reasons,
            duplicates: batch.len() - claimed as usize,
            skipped: skipped as usize,
        })
    }
}

impl PgSink {
    /// Deletes ledger rows older than `retention`, `batch_size` at a time,
    /// unless another host is pruning. Nothing younger than `retention`
    /// (by the server's clock) is touched.
    pub async fn prune_ledger(
        &mut self,
        retention: Duration,
        batch_size: i64,
    ) -> Result<PruneReport> {
        let locked: bool = self
            .bounded(
                self.client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK]),
            )
            .await?
            .get(0);
        if !locked {
            return Ok(PruneReport {
                skipped: true,
                ..PruneReport::default()
            });
        }
        let pruned = self.prune_locked(retention, batch_size.max(1)).await;
        // A failed unlock on a live connection would keep every host from
        // pruning; on a dead one the server releases the lock itself.
        let unlocked = self
            .bounded(
                self.client
                    .execute("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK]),
            )
            .await;
        if unlocked.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        pruned
    }

    async fn prune_locked(&self, retention: Duration, batch_size: i64) -> Result<PruneReport> {
        // One cutoff for the whole prune, from the server's clock (the one
        // that wrote processed_at).
        let cutoff: DateTime<Utc> = self
            .bounded(self.client.query_one(
                "SELECT now() - make_interval(secs => $1)",
                &[&retention.as_secs_f64()],
            ))
            .await?
            .get(0);
        let mut report = PruneReport::default();
        loop {
            let deleted = self
                .bounded(self.client.execute(PRUNE_BATCH, &[&cutoff, &batch_size]))
                .await
                .context("cannot prune the ledger")?;
            report.rows += deleted;
            report.batches += 1;
            if deleted < batch_size as u64 {
                return Ok(report);
            }
        }
    }
}

/// Connection parameters whose values are secrets.
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

fn is_secret_parameter(key: &str) -> bool {
    SECRET_PARAMETERS
        .iter()
        .any(|secret| key.trim().eq_ignore_ascii_case(secret))
}

/// A connection string fit for logs: every password replaced by `***`. It
/// reads the string as tokio-postgres (and libpq) does, so what the driver
/// would take as a password is what is hidden: the userinfo password, any
/// `password`/`sslpassword` query parameter (percent-encoded keys too) and,
/// in the key=value form, their values, quoted or not. Whatever it cannot
/// read is hidden to the end.
pub fn redact_url(url: &str) -> String {
    if url.contains("://") {
        redact_uri(url)
    } else {
        redact_key_values(url)
    }
}

/// `scheme://[user[:password]@]host/db?key=value&…`
fn redact_uri(url: &str) -> String {
    let Some((scheme, mut rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let mut out = format!("{scheme}://");
    // Like tokio-postgres: the credentials run to the first '@', the
    // password from their first ':'.
    if let Some((credentials, after)) = rest.split_once('@') {
        match credentials.split_once(':') {
            Some((user, _password)) => out.push_str(&format!("{user}:***@")),
            None => out.push_str(&format!("{credentials}@")),
        }
        rest = after;
    }
    let Some((location, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(location);
    out.push('?');
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((key, _)) if is_secret_parameter(&percent_decode(key)) => format!("{key}=***"),
            _ => parameter.to_owned(),
        })
        .collect();
    out.push_str(&parameters.join("&"));
    out
}

/// `key=value key = 'quoted value' …`, read as tokio-postgres reads it.
fn redact_key_values(text: &str) -> String {
    type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;
    fn skip_whitespace(chars: &mut Chars<'_>) {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }
    let position = |chars: &mut Chars<'_>| chars.peek().map_or(text.len(), |&(i, _)| i);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut copied_to = 0;
    // Hides everything from `from` on: text the driver cannot read may be a
    // stray piece of a password (`password=two words`).
    let hide_rest = |out: &mut String, copied_to: usize, from: usize| {
        out.push_str(&text[copied_to..from]);
        out.push_str("***");
    };
    loop {
        skip_whitespace(&mut chars);
        let key_start = position(&mut chars);
        if key_start == text.len() {
            break;
        }
        while chars
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &text[key_start..position(&mut chars)];
        skip_whitespace(&mut chars);
        if key.is_empty() || chars.next_if(|&(_, c)| c == '=').is_none() {
            hide_rest(&mut out, copied_to, key_start);
            return out;
        }
        skip_whitespace(&mut chars);
        let value_start = position(&mut chars);
        let complete = if chars.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        chars.next();
                    }
                    Some((_, '\'')) => break true,
                    Some(_) => {}
                    None => break false,
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    chars.next();
                }
            }
            true
        };
        if !complete {
            hide_rest(&mut out, copied_to, value_start);
            return out;
        }
        if is_secret_parameter(key) {
            out.push_str(&text[copied_to..value_start]);
            out.push_str("***");
            copied_to = position(&mut chars);
        }
    }
    out.push_str(&text[copied_to..]);
    out
}

/// Percent-decodes what it can (the driver decodes URL keys before use).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `text` with every occurrence of `password` replaced by `***`.
fn scrub(text: &str, password: Option<&[u8]>) -> String {
    match password.map(String::from_utf8_lossy) {
        Some(password) if !password.is_empty() => text.replace(password.as_ref(), "***"),
        _ => text.to_owned(),
    }
}

/// Parameter names tokio-postgres may quote in a parse error: they are kept.
const KNOWN_PARAMETERS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "=",
    "'",
];

/// A tokio-postgres parse error with what it quotes from the input (an
/// unknown key, an unexpected character: possibly a piece of a password)
/// replaced by `…`, unless it is a parameter name.
fn unquote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut parts = text.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut quoted = true;
    for part in parts {
        if quoted {
            out.push('`');
            out.push_str(if KNOWN_PARAMETERS.contains(&part) {
                part
            } else {
                "…"
            });
            out.push('`');
        } else {
            out.push_str(part);
        }
        quoted = !quoted;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        for (url, redacted) in [
            (
                "postgres://app:s3cret@db:5432/maskpipe",
                "postgres://app:***@db:5432/maskpipe",
            ),
            (
                "host=db user=app password=s3cret dbname=x",
                "host=db user=app password=*** dbname=x",
            ),
            ("postgres://127.0.0.1/x", "postgres://127.0.0.1/x"),
            ("postgres://app@db/x", "postgres://app@db/x"),
            // Query parameters, as tokio-postgres honours them.
            (
                "postgres://db/x?user=u&password=s3cret&sslmode=require",
                "postgres://db/x?user=u&password=***&sslmode=require",
            ),
            (
                "postgresql://db/x?pass%77ord=s3cret&sslpassword=s3cret",
                "postgresql://db/x?pass%77ord=***&sslpassword=***",
            ),
            (
                "postgres://app:s3cret@db/x?password=s3cret",
                "postgres://app:***@db/x?password=***",
            ),
            // The driver's credentials end at the first '@'.
            ("postgres://app:s3c@ret@db/x", "postgres://app:***@ret@db/x"),
            // key=value: spaces around '=', quotes, escapes.
            (
                "host=db password = 's3 cret' user=app",
                "host=db password = *** user=app",
            ),
            (
                r"password='it\'s s3cret' sslpassword=s3\ cret dbname=x",
                "password=*** sslpassword=*** dbname=x",
            ),
            // Unreadable: hidden from where reading stops.
            (
                "host=db password=two s3cret words",
                "host=db password=*** ***",
            ),
            ("host=db password='s3cret", "host=db password=***"),
            ("host=db =s3cret", "host=db ***"),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn parse_errors_and_driver_errors_hide_what_they_quote() {
        let error = Database::new("host=db password=two s3cret", None)
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("s3cret") && !error.contains("`s`"),
            "{error}"
        );
        assert!(
            error.contains("not a valid PostgreSQL connection string"),
            "{error}"
        );
        let error = Database::new("postgres://db/x?sslpassword=s3cret", None)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert_eq!(
            unquote("invalid value for option `sslmode`"),
            "invalid value for option `sslmode`"
        );
        assert_eq!(
            unquote("unexpected character at byte 9: expected `=` but got `s`"),
            "unexpected character at byte 9: expected `=` but got `…`"
        );
        assert_eq!(
            scrub("bad password s3cret", Some(b"s3cret")),
            "bad password ***"
        );
        assert_eq!(scrub("text", Some(b"")), "text");
    }

    #[test]
    fn a_ca_requires_tls() {
        let ca = std::env::temp_dir().join(format!("maskpipe-sink-ca-{}.pem", std::process::id()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let database = |url: &str, ca_file| Database::new(url, ca_file);
        assert!(!database("postgres://db/x", None).unwrap().requires_tls());
        assert!(
            database("postgres://db/x", Some(&ca))
                .unwrap()
                .requires_tls()
        );
        assert!(
            database("postgres://db/x?sslmode=prefer", Some(&ca))
                .unwrap()
                .requires_tls()
        );
        assert!(
            database("host=db sslmode=require", Some(&ca))
                .unwrap()
                .requires_tls()
        );
        let error = database("postgres://db/x?sslmode=disable", Some(&ca)).unwrap_err();
        std::fs::remove_file(&ca).unwrap();
        let message = format!("{error:#}");
        assert!(
            message.contains("sslmode=disable") && message.contains("CA"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1);
    }
}
