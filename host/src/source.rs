//! The SQS source: the only module that speaks the AWS SDK's SQS client
//! (KMS has [`crate::kms`]).
//!
//! Everything else sees [`Received`] messages and calls `receive`, `delete`
//! and `depth`. Credentials, region and endpoint come from the standard AWS
//! chain (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, profiles, instance roles,
//! `AWS_ENDPOINT_URL` for LocalStack).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::StalledStreamProtectionConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

/// SQS caps a batch at ten messages, for receive, send and delete alike.
pub const MAX_BATCH: usize = 10;
/// SQS caps a SendMessageBatch's bodies together as it caps one body.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// SQS's longest long poll.
pub const MAX_WAIT_SECONDS: i32 = 20;

/// One message as the pipeline sees it. Its `Debug` leaves out the body
/// and the receipt handle: a body is PII until the transform says otherwise.
#[derive(Clone)]
pub struct Received {
    /// Stable across redeliveries: the ledger's key.
    pub id: String,
    /// Changes on every receive: what deletes and visibility changes need.
    pub receipt_handle: String,
    pub body: String,
    pub sent_timestamp_ms: u64,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("id", &self.id)
            .field("body_bytes", &self.body.len())
            .field("sent_timestamp_ms", &self.sent_timestamp_ms)
            .finish_non_exhaustive()
    }
}

impl Received {
    /// A message that did not come from SQS (golden vectors, canaries,
    /// benches): it has no receipt handle.
    pub fn local(id: impl Into<String>, body: impl Into<String>, sent_timestamp_ms: u64) -> Self {
        Self {
            id: id.into(),
            receipt_handle: String::new(),
            body: body.into(),
            sent_timestamp_ms,
        }
    }
}

/// How many messages wait and how many are in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

#[derive(Clone)]
pub struct SqsSource {
    client: Client,
    queue_url: String,
}

impl SqsSource {
    /// Builds a client from the standard AWS configuration chain.
    pub async fn client() -> Client {
        Self::client_with(aws_config::defaults(aws_config::BehaviorVersion::latest())).await
    }

    /// A client for an explicit endpoint (a private test server), otherwise
    /// configured by the standard chain.
    pub async fn client_at(endpoint: &str) -> Client {
        Self::client_with(
            aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(endpoint),
        )
        .await
    }

    /// The SDK's defaults otherwise. Issue #18 priced each per message:
    /// SigV4 signing stays (SQS requires it), standard retries cost nothing
    /// measurable, the lazy credentials cache saves 1.4%, the timeouts'
    /// timers cost 0.2%. SQS has no checksum settings and the Rust SDK does
    /// not check MD5OfBody, so there is nothing to turn off there.
    async fn client_with(loader: aws_config::ConfigLoader) -> Client {
        let shared = loader.load().await;
        let config = aws_sdk_sqs::config::Builder::from(&shared)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    // Must outlast a 20 s long poll.
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            // Stalled-stream protection watches the throughput of every
            // request and response body: 1.6% of the client's instructions
            // per message (issue #18). Ours are JSON of at most a few hundred
            // KiB, read whole inside the attempt, so a body that stalls is
            // still cut off by the 30 s attempt timeout above and retried,
            // only later than the protection's 5 s grace. A long poll's wait
            // comes before any response body: it was never covered.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    /// Connects to `queue`, a queue URL or a queue name, and checks that the
    /// queue answers, so a wrong endpoint fails at startup, not later.
    pub async fn connect(queue: &str) -> Result<Self> {
        let client = Self::client().await;
        let queue_url = if queue.starts_with("http://") || queue.starts_with("https://") {
            queue.to_owned()
        } else {
            client
                .get_queue_url()
                .queue_name(queue)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .with_context(|| format!("cannot find SQS queue {queue:?}"))?
                .queue_url
                .with_context(|| format!("SQS returned no URL for queue {queue:?}"))?
        };
        let source = Self { client, queue_url };
        source
            .depth()
            .await
            .with_context(|| format!("cannot reach SQS queue {}", source.queue_url))?;
        Ok(source)
    }

    /// Creates `name` if missing (CreateQueue is idempotent); says whether it
    /// already existed.
    pub async fn create(name: &str) -> Result<(Self, bool)> {
        Self::create_with(Self::client().await, name).await
    }

    /// [`SqsSource::create`] with a given client.
    pub async fn create_with(client: Client, name: &str) -> Result<(Self, bool)> {
        let existed = client.get_queue_url().queue_name(name).send().await.is_ok();
        let queue_url = client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("cannot create SQS queue {name:?}"))?
            .queue_url
            .context("SQS returned no queue URL")?;
        Ok((Self { client, queue_url }, existed))
    }

    /// Deletes the queue and whatever it still holds (benches clean up with
    /// this, so the server's state does not grow run after run).
    pub async fn delete_queue(&self) -> Result<()> {
        self.client
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("cannot delete SQS queue {}", self.queue_url))?;
        Ok(())
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// One (long) poll for up to `max` messages, invisible to other
    /// consumers for `visibility_seconds` (default: the queue's timeout).
    pub async fn receive(
        &self,
        max: usize,
        wait_seconds: i32,
        visibility_seconds: Option<i32>,
    ) -> Result<Vec<Received>> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait_seconds.clamp(0, MAX_WAIT_SECONDS))
            .set_visibility_timeout(visibility_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .context("SQS ReceiveMessage failed")?;
        let received_at_ms = now_ms();
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                // Without an id we could neither dedupe nor delete it: SQS
                // never sends such a message, so refusing it loses nothing.
                let id = message.message_id?;
                let receipt_handle = message.receipt_handle?;
                let sent_timestamp_ms = message
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(received_at_ms);
                Some(Received {
                    id,
                    receipt_handle,
                    body: message.body.unwrap_or_default(),
                    sent_timestamp_ms,
                })
            })
            .collect())
    }

    /// Deletes messages by receipt handle; returns how many SQS refused.
    /// A refused delete loses nothing: the message comes back and the ledger
    /// recognises it.
    pub async fn delete<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a Received>,
    ) -> Result<usize> {
        let entries = messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(&message.receipt_handle)
                    .build()
                    .context("building a DeleteMessageBatch entry")
            })
            .collect::<Result<Vec<_>>>()?;
        let mut failed = 0;
        for chunk in entries.chunks(MAX_BATCH) {
            let output = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .context("SQS DeleteMessageBatch failed")?;
            for failure in output.failed {
                failed += 1;
                tracing::warn!(
                    code = failure.code,
                    sender_fault = failure.sender_fault,
                    "SQS refused to delete a message; it will be redelivered and skipped by the ledger"
                );
            }
        }
        Ok(failed)
    }

    /// Keeps messages invisible for `seconds` more, so a slow batch is not
    /// redelivered to another consumer while it is still being processed.
    /// Returns how many SQS refused.
    pub async fn extend_visibility(
        &self,
        receipt_handles: &[String],
        seconds: i32,
    ) -> Result<usize> {
        let mut failed = 0;
        for chunk in receipt_handles.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(index, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(seconds)
                        .build()
                        .context("building a ChangeMessageVisibilityBatch entry")
                })
                .collect::<Result<Vec<_>>>()?;
            let output = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .context("SQS ChangeMessageVisibilityBatch failed")?;
            failed += output.failed.len();
        }
        Ok(failed)
    }

    /// The queue's visibility timeout, in seconds.
    pub async fn visibility_timeout(&self) -> Result<i32> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .context("SQS GetQueueAttributes failed")?;
        output
            .attributes
            .unwrap_or_default()
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .context("SQS did not report the queue's VisibilityTimeout")
    }

    /// How long after it was sent SQS may still deliver a message: the
    /// queue's retention period plus its visibility timeout (a message
    /// received just before it expires comes back once more after that).
    pub async fn redelivery_window(&self) -> Result<Duration> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::MessageRetentionPeriod)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .context("SQS GetQueueAttributes failed")?;
        let attributes = output.attributes.unwrap_or_default();
        let seconds = |name: QueueAttributeName| -> Result<u64> {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("SQS did not report the queue's {}", name.as_str()))
        };
        Ok(Duration::from_secs(
            seconds(QueueAttributeName::MessageRetentionPeriod)?
                + seconds(QueueAttributeName::VisibilityTimeout)?,
        ))
    }

    /// Approximate visible and in-flight message counts.
    pub async fn depth(&self) -> Result<QueueDepth> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .context("SQS GetQueueAttributes failed")?;
        let attributes = output.attributes.unwrap_or_default();
        let count = |name| {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }

    /// Sends bodies in batches of ten, returning how many were sent; fails
    /// at the first batch SQS refuses any of.
    pub async fn send<S: AsRef<str>>(&self, bodies: &[S]) -> Result<usize> {
        let mut sent = 0;
        for chunk in send_runs(bodies) {
            let results = self.send_each(chunk).await?;
            let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            if let Some(first) = refused.first() {
                bail!(
                    "SQS refused {} of {} messages ({first})",
                    refused.len(),
                    chunk.len()
                );
            }
            sent += results.len();
        }
        Ok(sent)
    }
}

impl SqsSource {
    /// Sends at most ten bodies in one SendMessageBatch and says, per body,
    /// what SQS did: `Ok(new message id)` or `Err(why it refused)`. An
    /// error of the whole call means nothing is known to have been sent.
    pub async fn send_each<S: AsRef<str>>(
        &self,
        bodies: &[S],
    ) -> Result<Vec<std::result::Result<String, String>>> {
        if bodies.len() > MAX_BATCH {
            bail!(
                "SendMessageBatch takes at most {MAX_BATCH} messages, not {}",
                bodies.len()
            );
        }
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(index, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(body.as_ref())
                    .build()
                    .context("building a SendMessageBatch entry")
            })
            .collect::<Result<Vec<_>>>()?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .context("SQS SendMessageBatch failed")?;
        // An entry SQS mentions in neither list was not sent, as far as we
        // can know: it counts as refused.
        let mut results: Vec<std::result::Result<String, String>> =
            vec![Err("SQS did not report this entry".to_owned()); bodies.len()];
        for success in output.successful {
            if let Some(slot) = success
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| results.get_mut(i))
            {
                *slot = Ok(success.message_id);
            }
        }
        for failure in output.failed {
            if let Some(slot) = failure
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| results.get_mut(i))
            {
                *slot = Err(match failure.message {
                    Some(message) => format!("{}: {message}", failure.code),
                    None => failure.code,
                });
            }
        }
        Ok(results)
    }
}

/// Splits bodies into runs that one SendMessageBatch takes: at most ten, at
/// most [`MAX_BATCH_BYTES`] together. A body too large alone goes alone, for
/// SQS to refuse it by itself.
pub fn send_runs<S: AsRef<str>>(bodies: &[S]) -> Vec<&[S]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, body) in bodies.iter().enumerate() {
        let len = body.as_ref().len();
        if index > start && (index - start == MAX_BATCH || bytes + len > MAX_BATCH_BYTES) {
            runs.push(&bodies[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += len;
    }
    if start < bodies.len() {
        runs.push(&bodies[start..]);
    }
    runs
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_runs_respect_the_count_and_the_payload_cap() {
        let small = vec!["x"; 25];
        let runs = send_runs(&small);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        // Three 100 KiB bodies: two fit one batch, the third starts the next.
        let big = "b".repeat(100 * 1024);
        let bodies = vec![big.as_str(); 3];
        let runs = send_runs(&bodies);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [2, 1]);
        // A body over the cap alone goes alone, between its neighbours.
        let huge = "h".repeat(MAX_BATCH_BYTES + 1);
        let bodies = ["a", huge.as_str(), "c"];
        let runs = send_runs(&bodies);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(send_runs::<&str>(&[]).is_empty());
    }
}
