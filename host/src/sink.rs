//! The PostgreSQL sink: one transaction per batch.
//!
//! In one transaction: claim each message id in the ledger
//! (`maskpipe_processed`), then write rows to `user_logins` and dead letters
//! to `maskpipe_dead_letters` for the ids that were new. A redelivered message
//! finds its id claimed and adds nothing, so at-least-once delivery from SQS
//! becomes exactly-once rows. Every statement takes whole columns as arrays
//! (`UNNEST`), so a batch costs three statements, not one per row.
//!
//! `user_logins` is created with the take-home's exact DDL when missing and is
//! never altered; the side tables are maskpipe's own.

use std::collections::HashSet;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::{Client, NoTls};

use crate::masking::Keyring;
use crate::record::Outcome;
use crate::source::Received;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS user_logins (
    user_id varchar(128),
    device_type varchar(32),
    masked_ip varchar(256),
    masked_device_id varchar(256),
    locale varchar(32),
    app_version integer,
    create_date date
);
CREATE TABLE IF NOT EXISTS maskpipe_processed (
    message_id text PRIMARY KEY,
    outcome text NOT NULL CHECK (outcome IN ('row', 'dead_letter')),
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
";

/// Several hosts may start at once against a new database: `CREATE TABLE IF
/// NOT EXISTS` is not race-free, so schema creation holds this advisory lock.
const SCHEMA_LOCK: i64 = 0x6d61_736b_7069_7065; // "maskpipe"

/// What one batch write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteReport {
    pub rows: usize,
    /// The reason code of each dead letter written.
    pub dead_letter_reasons: Vec<String>,
    /// Messages whose id the ledger already held: redeliveries.
    pub duplicates: usize,
}

/// One message and what the transform made of it.
pub struct Processed<'a> {
    pub message: &'a Received,
    pub outcome: &'a Outcome,
}

/// A connection to the target database.
pub struct PgSink {
    client: Client,
}

impl PgSink {
    /// Connects; the connection runs on its own task until the client drops.
    pub async fn connect(url: &str) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact_url(url)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!("PostgreSQL connection closed: {error}");
            }
        });
        Ok(Self { client })
    }

    /// Whether the connection has died (the pipeline then reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// A round trip to the server (readiness checks).
    pub async fn ping(&self) -> Result<()> {
        self.client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Creates the tables that are missing; never alters an existing one.
    pub async fn ensure_schema(&mut self) -> Result<()> {
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute(SCHEMA)
            .await
            .context("cannot create maskpipe's tables")?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes one batch in one transaction (see the module docs).
    pub async fn write_batch(
        &mut self,
        batch: &[Processed<'_>],
        component_digest: &str,
        keyring: &Keyring,
    ) -> Result<WriteReport> {
        let tx = self.client.transaction().await?;

        let ids: Vec<&str> = batch.iter().map(|p| p.message.id.as_str()).collect();
        let outcomes: Vec<&str> = batch
            .iter()
            .map(|p| match p.outcome {
                Outcome::Row(_) => "row",
                Outcome::Rejected(_) => "dead_letter",
            })
            .collect();
        let claimed: HashSet<String> = tx
            .query(
                "INSERT INTO maskpipe_processed (message_id, outcome, component_digest)
                 SELECT id, outcome, $3 FROM UNNEST($1::text[], $2::text[]) AS m(id, outcome)
                 ON CONFLICT (message_id) DO NOTHING
                 RETURNING message_id",
                &[&ids, &outcomes, &component_digest],
            )
            .await
            .context("cannot record processed message ids")?
            .into_iter()
            .map(|row| row.get(0))
            .collect();
        // A batch never holds one id twice, but a redelivery can race its
        // original inside one receive: count each id once.
        let mut fresh: Vec<&Processed<'_>> = Vec::with_capacity(batch.len());
        let mut seen = HashSet::with_capacity(batch.len());
        for processed in batch {
            if claimed.contains(&processed.message.id) && seen.insert(&processed.message.id) {
                fresh.push(processed);
            }
        }

        let mut rows = RowColumns::default();
        let mut dead = DeadLetterColumns::default();
        for processed in &fresh {
            match processed.outcome {
                Outcome::Row(row) => rows.push(row),
                Outcome::Rejected(rejection) => {
                    dead.message_id.push(&processed.message.id);
                    dead.reason.push(&rejection.code);
                    dead.detail.push(&rejection.detail);
                    dead.body_sealed
                        .push(keyring.seal(processed.message.body.as_bytes()));
                    dead.sent_at.push(DateTime::<Utc>::from_timestamp_millis(
                        processed.message.sent_timestamp_ms as i64,
                    ));
                }
            }
        }

        if !rows.user_id.is_empty() {
            tx.execute(
                "INSERT INTO user_logins
                     (user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date)
                 SELECT * FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[],
                                      $5::varchar[], $6::integer[], $7::date[])",
                &[
                    &rows.user_id,
                    &rows.device_type,
                    &rows.masked_ip,
                    &rows.masked_device_id,
                    &rows.locale,
                    &rows.app_version,
                    &rows.create_date,
                ],
            )
            .await
            .context("cannot insert into user_logins")?;
        }
        if !dead.message_id.is_empty() {
            tx.execute(
                "INSERT INTO maskpipe_dead_letters
                     (message_id, reason, detail, body_sealed, sent_at, component_digest)
                 SELECT m.*, $6 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                                            $5::timestamptz[]) AS m",
                &[
                    &dead.message_id,
                    &dead.reason,
                    &dead.detail,
                    &dead.body_sealed,
                    &dead.sent_at,
                    &component_digest,
                ],
            )
            .await
            .context("cannot insert into maskpipe_dead_letters")?;
        }
        tx.commit().await.context("cannot commit the batch")?;

        Ok(WriteReport {
            rows: rows.user_id.len(),
            dead_letter_reasons: dead.reason.iter().map(|r| (*r).to_owned()).collect(),
            duplicates: batch.len() - fresh.len(),
        })
    }
}

/// `user_logins` as columns, for `UNNEST`.
#[derive(Default)]
struct RowColumns<'a> {
    user_id: Vec<Option<&'a str>>,
    device_type: Vec<Option<&'a str>>,
    masked_ip: Vec<Option<&'a str>>,
    masked_device_id: Vec<Option<&'a str>>,
    locale: Vec<Option<&'a str>>,
    app_version: Vec<Option<i32>>,
    create_date: Vec<Option<NaiveDate>>,
}

impl<'a> RowColumns<'a> {
    fn push(&mut self, row: &'a crate::record::Row) {
        self.user_id.push(row.user_id.as_deref());
        self.device_type.push(row.device_type.as_deref());
        self.masked_ip.push(row.masked_ip.as_deref());
        self.masked_device_id.push(row.masked_device_id.as_deref());
        self.locale.push(row.locale.as_deref());
        self.app_version.push(row.app_version);
        self.create_date.push(row.create_date);
    }
}

#[derive(Default)]
struct DeadLetterColumns<'a> {
    message_id: Vec<&'a str>,
    reason: Vec<&'a str>,
    detail: Vec<&'a str>,
    body_sealed: Vec<String>,
    sent_at: Vec<Option<DateTime<Utc>>>,
}

/// A connection string fit for logs: the password replaced.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.rsplit_once('@')
    {
        return match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        };
    }
    // key=value form: drop password=...
    url.split_whitespace()
        .map(|part| {
            if part.starts_with("password=") {
                "password=***"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/maskpipe"),
            "postgres://app:***@db:5432/maskpipe"
        );
        assert_eq!(
            redact_url("host=db user=app password=s3cret dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/x"),
            "postgres://127.0.0.1/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
    }
}
