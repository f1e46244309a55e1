//! KMS: the only module that speaks the AWS SDK's KMS client.
//!
//! Envelope encryption of the master key: the master key is a KMS *data
//! key*. `maskpipe keygen --kms-key-id` asks KMS for one (GenerateDataKey,
//! AES-256) and keeps only its ciphertext; at startup the host asks KMS to
//! decrypt that ciphertext (Decrypt) and holds the plaintext in memory only,
//! wiped on drop. Whoever holds the ciphertext still needs KMS's permission
//! to open it, which the key policy and IAM grant and CloudTrail records.
//!
//! Configuration is the standard AWS chain, as for SQS (`AWS_REGION`,
//! credentials, `AWS_ENDPOINT_URL` for LocalStack). Every failure is one
//! line that names the key by position ([`KeySlot`]), never its ciphertext
//! or any byte of it.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aws_sdk_kms::Client;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use crate::masking::{KeyError, KeySlot, MasterKey};

/// A KMS that does not accept a connection within this is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request: KMS answers in milliseconds, so a hung one is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// One call, retries included: how long startup can wait for KMS at most.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A data key's ciphertext: KMS's CiphertextBlob, decoded from the base64
/// it is configured as. Only KMS can open it, but it is still never shown:
/// `Debug` gives its length alone.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(Vec<u8>);

/// Why a configured ciphertext is unusable. No variant holds any of it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CiphertextError {
    #[error("the ciphertext is empty")]
    Empty,
    #[error("the ciphertext is not base64 (of a KMS CiphertextBlob)")]
    Encoding,
}

impl Ciphertext {
    /// Base64 (standard or URL-safe, padded or not), as `keygen` and the
    /// AWS CLI print a CiphertextBlob. Errors never echo the input.
    pub fn parse(text: &str) -> Result<Self, CiphertextError> {
        let text = text.trim().trim_end_matches('=');
        if text.is_empty() {
            return Err(CiphertextError::Empty);
        }
        STANDARD_NO_PAD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .map(Self)
            .map_err(|_| CiphertextError::Encoding)
    }
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ciphertext(<{} bytes>)", self.0.len())
    }
}

/// What `GenerateDataKey` returns that may be kept: the ciphertext (as
/// base64) and the ARN of the KMS key that can decrypt it. The plaintext
/// is not here: it was wiped as soon as the answer arrived.
#[derive(Debug, Clone)]
pub struct DataKey {
    pub ciphertext_base64: String,
    pub kms_key_arn: String,
}

/// The KMS client, configured by the standard AWS chain.
#[derive(Clone)]
pub struct Kms {
    client: Client,
    /// Where requests go, for error lines: `at <endpoint>` or `in <region>`.
    location: String,
}

impl Kms {
    /// A client from the standard AWS configuration chain, with bounded
    /// waits: an unreachable KMS fails a call within [`OPERATION_TIMEOUT`].
    pub async fn connect() -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let endpoint = std::env::var("AWS_ENDPOINT_URL_KMS")
            .ok()
            .filter(|url| !url.is_empty())
            .or_else(|| shared.endpoint_url().map(str::to_owned));
        let location = match (endpoint, shared.region()) {
            (Some(url), _) => format!("at {url}"),
            (None, Some(region)) => format!("in {region}"),
            (None, None) => "(no AWS region is set)".to_owned(),
        };
        let config = aws_sdk_kms::config::Builder::from(&shared)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            location,
        }
    }

    /// Decrypts `ciphertext`, the data key configured as `slot`, into a
    /// master key. `pin` (MASKPIPE_KMS_KEY_ID) goes to KMS as Decrypt's
    /// `KeyId`, as AWS recommends: KMS then refuses a ciphertext of any
    /// other key (`IncorrectKeyException`) instead of opening it with
    /// whichever key made it.
    pub async fn decrypt_master_key(
        &self,
        slot: KeySlot,
        ciphertext: &Ciphertext,
        pin: Option<&str>,
    ) -> Result<MasterKey> {
        let call = Call::Decrypt { slot, pin };
        let mut output = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(ciphertext.0.clone()))
            .set_key_id(pin.map(str::to_owned))
            .send()
            .await
            .map_err(|error| self.failure(&call, error))?;
        // Out of the response at once and into memory wiped on drop (a
        // Blob is not); `into_inner` moves the bytes, it does not copy them.
        let plaintext = Zeroizing::new(
            output
                .plaintext
                .take()
                .map(Blob::into_inner)
                .unwrap_or_default(),
        );
        let key = MasterKey::from_bytes(plaintext).map_err(|error| match error {
            KeyError::Length(len) => anyhow!(
                "KMS decrypted {slot} to {len} bytes, not a 32-byte key: make it with \
                 `maskpipe keygen --kms-key-id` (GenerateDataKey, AES_256)"
            ),
            other => anyhow!("KMS decrypted {slot} to an unusable key: {other}"),
        })?;
        tracing::info!(
            "decrypted {slot} with KMS key {}",
            output.key_id().unwrap_or("(not named by KMS)")
        );
        Ok(key)
    }

    /// A new 256-bit data key under `kms_key` (a key id, `alias/NAME` or an
    /// ARN): its ciphertext and the ARN of the key that made it. KMS's
    /// plaintext copy is wiped unread.
    pub async fn generate_data_key(&self, kms_key: &str) -> Result<DataKey> {
        let call = Call::GenerateDataKey { key: kms_key };
        let mut output = self
            .client
            .generate_data_key()
            .key_id(kms_key)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .map_err(|error| self.failure(&call, error))?;
        drop(Zeroizing::new(
            output.plaintext.take().map(Blob::into_inner),
        ));
        let ciphertext = output
            .ciphertext_blob
            .take()
            .with_context(|| format!("{call}: KMS returned no CiphertextBlob"))?;
        let kms_key_arn = output
            .key_id
            .take()
            .with_context(|| format!("{call}: KMS did not name its key"))?;
        Ok(DataKey {
            ciphertext_base64: STANDARD.encode(ciphertext.as_ref()),
            kms_key_arn,
        })
    }

    /// One line for a failed call. KMS's refusals are told apart by their
    /// error code; anything else is either "cannot reach KMS" (a timeout or
    /// a connection that failed) or the error's chain of causes, each
    /// printed with `Display` only: the SDK's `Debug` (and so
    /// `DisplayErrorContext`) would include the raw response, and an answer
    /// that failed to parse may be one that carried a plaintext key.
    fn failure<E>(&self, call: &Call<'_>, error: SdkError<E>) -> anyhow::Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let location = &self.location;
        anyhow!(match &error {
            SdkError::ServiceError(service) => refusal(call, location, service.err()),
            SdkError::TimeoutError(_) => {
                format!("{call}: cannot reach KMS {location}: {}", causes(&error))
            }
            SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
                format!("{call}: cannot reach KMS {location}: {}", causes(&error))
            }
            SdkError::ResponseError(_) => {
                format!("{call}: the answer of KMS {location} could not be read")
            }
            // Not sent: no credentials, no region, a bad endpoint URL.
            _ => format!("{call}: not sent to KMS {location}: {}", causes(&error)),
        })
    }
}

/// The call that failed, as error lines name it.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    Decrypt { slot: KeySlot, pin: Option<&'a str> },
    GenerateDataKey { key: &'a str },
}

impl fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decrypt { slot, .. } => write!(f, "KMS Decrypt of {slot}"),
            Self::GenerateDataKey { key } => write!(f, "KMS GenerateDataKey under {key}"),
        }
    }
}

impl Call<'_> {
    /// The KMS key the call used, as an error line names it.
    fn kms_key(&self) -> String {
        match self {
            Self::Decrypt { pin: Some(pin), .. } => {
                format!("the KMS key {pin} (MASKPIPE_KMS_KEY_ID)")
            }
            Self::Decrypt { pin: None, .. } => "the KMS key it was encrypted under".to_owned(),
            Self::GenerateDataKey { key } => format!("the KMS key {key}"),
        }
    }
}

/// KMS refused the call: what that means for the operator, by error code.
fn refusal(call: &Call<'_>, location: &str, error: &impl ProvideErrorMetadata) -> String {
    refusal_message(call, location, error.code(), error.message())
}

fn refusal_message(
    call: &Call<'_>,
    location: &str,
    code: Option<&str>,
    message: Option<&str>,
) -> String {
    let key = call.kms_key();
    match (call, code.unwrap_or_default()) {
        (Call::Decrypt { slot, .. }, "AccessDeniedException") => format!(
            "KMS denied Decrypt of {slot} (AccessDeniedException): check the key policy of \
             {key} and the IAM policy of maskpipe's role (it needs kms:Decrypt)"
        ),
        (Call::GenerateDataKey { .. }, "AccessDeniedException") => format!(
            "KMS denied GenerateDataKey under {key} (AccessDeniedException): check its key \
             policy and your IAM policy (it needs kms:GenerateDataKey)"
        ),
        (Call::Decrypt { slot, pin }, "IncorrectKeyException") => format!(
            "{slot} was not encrypted under MASKPIPE_KMS_KEY_ID ({}) (IncorrectKeyException): \
             pin the KMS key it was made under, or make it again under this one",
            pin.unwrap_or("unset")
        ),
        (Call::Decrypt { slot, .. }, "InvalidCiphertextException") => format!(
            "KMS {location} cannot decrypt {slot} (InvalidCiphertextException): it is not a KMS \
             ciphertext, or it is truncated or altered, or it was made in another AWS account \
             or region"
        ),
        (_, "DisabledException") => {
            format!("{call}: {key} is disabled (DisabledException): enable it, or use another key")
        }
        (_, "KMSInvalidStateException") => format!(
            "{call}: {key} cannot be used in its state (KMSInvalidStateException): it is \
             pending deletion (cancel the deletion to use it) or waiting for key material"
        ),
        (_, "NotFoundException") => format!(
            "{call}: KMS {location} has no such key: {key} (NotFoundException): check the \
             key id or alias, the AWS account and the region"
        ),
        (_, "InvalidKeyUsageException") => {
            format!("{call}: {key} is not a symmetric encryption key (InvalidKeyUsageException)")
        }
        (_, code) => format!(
            "{call} failed ({}): {}",
            if code.is_empty() {
                "no error code"
            } else {
                code
            },
            message.unwrap_or("KMS gave no message")
        ),
    }
}

/// An error and its sources, by `Display` alone.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use aws_sdk_kms::error::ErrorMetadata;
    use aws_sdk_kms::operation::decrypt::DecryptError;
    use aws_sdk_kms::operation::generate_data_key::GenerateDataKeyError;

    use super::*;

    const LOCATION: &str = "in us-east-1";

    fn decrypt(slot: KeySlot, pin: Option<&str>) -> Call<'_> {
        Call::Decrypt { slot, pin }
    }

    fn service_error(code: &str) -> ErrorMetadata {
        ErrorMetadata::builder()
            .code(code)
            .message("User: arn:aws:sts::123456789012:assumed-role/x is not authorized")
            .build()
    }

    /// AccessDeniedException is not one of Decrypt's modelled errors: it
    /// arrives as the SDK's generic error, told apart by its code alone.
    #[test]
    fn access_denied_names_the_key_and_where_to_look() {
        let error = DecryptError::generic(service_error("AccessDeniedException"));
        assert_eq!(error.code(), Some("AccessDeniedException"));
        let line = refusal(&decrypt(KeySlot::Retired(2), None), LOCATION, &error);
        assert!(
            line.starts_with("KMS denied Decrypt of retired key 2"),
            "{line}"
        );
        assert!(
            line.contains("key policy") && line.contains("kms:Decrypt"),
            "{line}"
        );
        assert!(line.contains("IAM"), "{line}");
        assert!(!line.contains('\n'), "{line}");

        let error = GenerateDataKeyError::generic(service_error("AccessDeniedException"));
        let line = refusal(
            &Call::GenerateDataKey { key: "alias/prod" },
            LOCATION,
            &error,
        );
        assert!(
            line.starts_with("KMS denied GenerateDataKey under the KMS key alias/prod"),
            "{line}"
        );
        assert!(line.contains("kms:GenerateDataKey"), "{line}");
    }

    #[test]
    fn each_refusal_says_what_it_means() {
        let pin = "arn:aws:kms:us-east-1:1:key/a";
        let cases = [
            (
                decrypt(KeySlot::Current, Some(pin)),
                "IncorrectKeyException",
                "the current key was not encrypted under MASKPIPE_KMS_KEY_ID (arn:aws:kms:us-east-1:1:key/a)",
            ),
            (
                decrypt(KeySlot::Current, None),
                "InvalidCiphertextException",
                "cannot decrypt the current key (InvalidCiphertextException): it is not a KMS ciphertext",
            ),
            (
                decrypt(KeySlot::Retired(1), Some(pin)),
                "DisabledException",
                "KMS Decrypt of retired key 1: the KMS key arn:aws:kms:us-east-1:1:key/a (MASKPIPE_KMS_KEY_ID) is disabled (DisabledException)",
            ),
            (
                decrypt(KeySlot::Current, None),
                "KMSInvalidStateException",
                "KMS Decrypt of the current key: the KMS key it was encrypted under cannot be used in its state (KMSInvalidStateException): it is pending deletion",
            ),
            (
                decrypt(KeySlot::Current, Some("alias/gone")),
                "NotFoundException",
                "KMS in us-east-1 has no such key: the KMS key alias/gone",
            ),
            (
                Call::GenerateDataKey { key: "alias/gone" },
                "NotFoundException",
                "KMS GenerateDataKey under alias/gone: KMS in us-east-1 has no such key",
            ),
            (
                decrypt(KeySlot::Current, None),
                "ThrottlingException",
                "KMS Decrypt of the current key failed (ThrottlingException): Rate exceeded",
            ),
        ];
        for (call, code, expected) in cases {
            let line = refusal_message(&call, LOCATION, Some(code), Some("Rate exceeded"));
            assert!(line.contains(expected), "{code}: {line}");
        }
        assert!(
            refusal_message(&decrypt(KeySlot::Current, None), LOCATION, None, None)
                .contains("failed (no error code): KMS gave no message")
        );
    }

    #[test]
    fn ciphertexts_parse_from_base64_and_never_show() {
        let bytes: Vec<u8> = (0..=255).collect();
        for text in [
            STANDARD.encode(&bytes),
            STANDARD_NO_PAD.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
            format!("  {}\n", STANDARD.encode(&bytes)),
        ] {
            assert_eq!(Ciphertext::parse(&text).unwrap().0, bytes, "{text}");
        }
        assert_eq!(Ciphertext::parse(" ").unwrap_err(), CiphertextError::Empty);
        assert_eq!(Ciphertext::parse("==").unwrap_err(), CiphertextError::Empty);
        assert_eq!(
            Ciphertext::parse("not base64!").unwrap_err(),
            CiphertextError::Encoding
        );
        assert_eq!(
            format!("{:?}", Ciphertext::parse("AQID").unwrap()),
            "Ciphertext(<3 bytes>)"
        );
    }

    #[test]
    fn causes_are_joined_by_display_alone() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(causes(&error), "dispatch failure: connection refused");
    }
}
