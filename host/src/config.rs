//! Settings: every one an environment variable (12-factor, see `demo.env`)
//! that a command-line flag overrides. `maskpipe <command> --help` lists them.
//!
//! AWS settings are not here: region, credentials and `AWS_ENDPOINT_URL` come
//! from the standard AWS chain, as every AWS tool reads them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use zeroize::Zeroizing;

use crate::kms::{Ciphertext, Kms};
use crate::masking::{
    KeyError, KeySlot, Keyring, MasterKey, is_valid_key_id, parse_retired_keys, retired_entries,
};
use crate::pipeline::{
    DEFAULT_COMMIT_MESSAGES, DEFAULT_COMMIT_WINDOW, DEFAULT_MAX_IN_FLIGHT_MIB, DEFAULT_WRITERS,
    Settings,
};
use crate::runtime::Limits;
use crate::sink::Database;
use crate::source::{MAX_BATCH, MAX_WAIT_SECONDS};

/// A setting that must never be printed (a key, a connection string with its
/// password): `Debug` shows `<redacted>`, and the text is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(Zeroizing::new(text.into()))
    }

    /// The secret text, for the code that uses it (never for logs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// clap's parser for [`Secret`] arguments (infallible, so no error can echo one).
impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

/// The masking keys: the current key, as plaintext or as a KMS ciphertext,
/// and the retired keys, in either form too.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Master key: 32 bytes as 64 hex digits or base64. Every working key
    /// derives from it. Prefer the environment: flags show in `ps`.
    #[arg(
        long,
        env = "MASKPIPE_MASTER_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub master_key: Option<Secret>,

    /// Master key as a KMS data key: base64 of its CiphertextBlob (`maskpipe
    /// keygen --kms-key-id`), decrypted with KMS once at startup. Instead of
    /// MASKPIPE_MASTER_KEY, not beside it.
    #[arg(
        long,
        env = "MASKPIPE_MASTER_KEY_CIPHERTEXT",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub master_key_ciphertext: Option<Secret>,

    /// Id of the master key, written into every masked value so keys can rotate.
    #[arg(long, env = "MASKPIPE_KEY_ID", default_value = "k1", value_name = "ID")]
    pub key_id: String,

    /// Earlier keys, still needed to reveal older values: `ID=KEY,ID=KEY`.
    #[arg(
        long,
        env = "MASKPIPE_RETIRED_KEYS",
        hide_env_values = true,
        value_name = "ID=KEY,..."
    )]
    pub retired_keys: Option<Secret>,

    /// Earlier keys as KMS ciphertexts (base64), beside or instead of
    /// MASKPIPE_RETIRED_KEYS: `ID=CIPHERTEXT,ID=CIPHERTEXT`.
    #[arg(
        long,
        env = "MASKPIPE_RETIRED_KEY_CIPHERTEXTS",
        hide_env_values = true,
        value_name = "ID=BASE64,..."
    )]
    pub retired_key_ciphertexts: Option<Secret>,

    /// The KMS key (id, alias/NAME or ARN) every ciphertext above must have
    /// been encrypted under: passed to each Decrypt, so KMS refuses a
    /// ciphertext of any other key. Unset: whichever key made it.
    #[arg(long, env = "MASKPIPE_KMS_KEY_ID", value_name = "ID|ALIAS|ARN")]
    pub kms_key_id: Option<String>,
}

/// A configured key, before KMS is asked for the ones it holds.
#[derive(Debug)]
enum KeySource {
    Plain(MasterKey),
    Kms(Ciphertext),
}

/// The keys as configured, checked without the network: plaintext keys
/// parsed, ciphertexts decoded, every id valid and unique. [`keyring`]
/// then asks KMS for the ciphertexts' plaintexts, if any.
///
/// [`keyring`]: CheckedKeys::keyring
#[derive(Debug)]
pub struct CheckedKeys {
    current_id: String,
    current: KeySource,
    /// Plaintext retired keys (MASKPIPE_RETIRED_KEYS), in order.
    retired: Vec<(String, MasterKey)>,
    /// Ciphertext retired keys (MASKPIPE_RETIRED_KEY_CIPHERTEXTS), in order.
    retired_ciphertexts: Vec<(String, Ciphertext)>,
    kms_key_id: Option<String>,
}

impl KeyArgs {
    /// The keys to mask with (`run`): a new key will do.
    pub async fn keyring(&self) -> Result<Arc<Keyring>> {
        self.checked()?.keyring().await
    }

    /// The keys to open existing values with (`reveal`, `dead-letters
    /// replay`): only the key that masked them will do, so no keygen advice.
    pub async fn keyring_to_open(&self) -> Result<Arc<Keyring>> {
        self.checked_to_open()?.keyring().await
    }

    /// [`KeyArgs::keyring`]'s checks, without the network: a command
    /// validates its local settings before it calls KMS.
    pub fn checked(&self) -> Result<CheckedKeys> {
        self.checked_or(
            "no masking key: set MASKPIPE_MASTER_KEY (generate one with `maskpipe keygen`) \
             or MASKPIPE_MASTER_KEY_CIPHERTEXT (`maskpipe keygen --kms-key-id KMS_KEY`)",
        )
    }

    /// [`KeyArgs::keyring_to_open`]'s checks, without the network.
    pub fn checked_to_open(&self) -> Result<CheckedKeys> {
        self.checked_or(
            "no masking key: set MASKPIPE_MASTER_KEY (or MASKPIPE_MASTER_KEY_CIPHERTEXT) and \
             MASKPIPE_KEY_ID to the key that masked the values (a new key opens nothing)",
        )
    }

    /// Whether a current key is configured, in either form.
    pub fn has_master_key(&self) -> bool {
        self.master_key.is_some() || self.master_key_ciphertext.is_some()
    }

    fn checked_or(&self, missing: &'static str) -> Result<CheckedKeys> {
        let current = match (&self.master_key, &self.master_key_ciphertext) {
            // An empty variable counts as set (clap passes it on as ""), as
            // an empty MASKPIPE_MASTER_KEY alone is "the key is empty".
            (Some(_), Some(_)) => bail!(
                "MASKPIPE_MASTER_KEY and MASKPIPE_MASTER_KEY_CIPHERTEXT are both set: set one \
                 (the plaintext key, or its KMS ciphertext)"
            ),
            (None, None) => bail!(missing),
            (Some(key), None) => KeySource::Plain(
                MasterKey::parse(key.expose()).context("MASKPIPE_MASTER_KEY is unusable")?,
            ),
            (None, Some(ciphertext)) => KeySource::Kms(
                Ciphertext::parse(ciphertext.expose())
                    .context("MASKPIPE_MASTER_KEY_CIPHERTEXT is unusable")?,
            ),
        };
        let retired = match &self.retired_keys {
            Some(text) => {
                parse_retired_keys(text.expose()).context("MASKPIPE_RETIRED_KEYS is unusable")?
            }
            None => Vec::new(),
        };
        let retired_ciphertexts = match &self.retired_key_ciphertexts {
            Some(text) => parse_retired_ciphertexts(text.expose())
                .context("MASKPIPE_RETIRED_KEY_CIPHERTEXTS is unusable")?,
            None => Vec::new(),
        };
        let kms_key_id = match self.kms_key_id.as_deref().map(str::trim) {
            Some("") => bail!("MASKPIPE_KMS_KEY_ID is empty"),
            other => other.map(str::to_owned),
        };
        let keys = CheckedKeys {
            current_id: self.key_id.clone(),
            current,
            retired,
            retired_ciphertexts,
            kms_key_id,
        };
        keys.check_ids().context("the keyring is unusable")?;
        if keys.kms_key_id.is_some() && !keys.uses_kms() {
            tracing::warn!(
                "MASKPIPE_KMS_KEY_ID is set but no key is a KMS ciphertext: it is not used"
            );
        }
        Ok(keys)
    }
}

impl CheckedKeys {
    /// Whether [`CheckedKeys::keyring`] will call KMS.
    pub fn uses_kms(&self) -> bool {
        matches!(self.current, KeySource::Kms(_)) || !self.retired_ciphertexts.is_empty()
    }

    /// The keyring: KMS decrypts each ciphertext (one call each, the current
    /// key first); plaintext keys need no network and no AWS settings.
    pub async fn keyring(self) -> Result<Arc<Keyring>> {
        // Built on first use: plaintext keys alone never load AWS settings.
        let kms = tokio::sync::OnceCell::new();
        let pin = self.kms_key_id.as_deref();
        let current = match self.current {
            KeySource::Plain(key) => key,
            KeySource::Kms(ciphertext) => kms
                .get_or_init(Kms::connect)
                .await
                .decrypt_master_key(KeySlot::Current, &ciphertext, pin)
                .await
                .context("cannot decrypt MASKPIPE_MASTER_KEY_CIPHERTEXT")?,
        };
        let mut retired = self.retired;
        for (n, (id, ciphertext)) in self.retired_ciphertexts.into_iter().enumerate() {
            let key = kms
                .get_or_init(Kms::connect)
                .await
                .decrypt_master_key(KeySlot::Retired(n + 1), &ciphertext, pin)
                .await
                .context("cannot decrypt MASKPIPE_RETIRED_KEY_CIPHERTEXTS")?;
            retired.push((id, key));
        }
        Ok(Arc::new(
            Keyring::new(&self.current_id, &current, &retired)
                .context("the keyring is unusable")?,
        ))
    }

    /// Every id valid and none twice, across the current key and both
    /// retired lists, each key named by its setting and position.
    fn check_ids(&self) -> Result<()> {
        if !is_valid_key_id(&self.current_id) {
            bail!(KeyError::KeyId(KeySlot::Current));
        }
        let mut named = vec![(self.current_id.as_str(), KeySlot::Current.to_string())];
        for (n, (id, _)) in self.retired.iter().enumerate() {
            named.push((
                id,
                format!("retired key {} of MASKPIPE_RETIRED_KEYS", n + 1),
            ));
        }
        for (n, (id, _)) in self.retired_ciphertexts.iter().enumerate() {
            let name = format!("retired key {} of MASKPIPE_RETIRED_KEY_CIPHERTEXTS", n + 1);
            named.push((id, name));
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, name) in &named {
            if let Some(first) = seen.insert(id, name) {
                bail!("{name} has the same id as {first}");
            }
        }
        Ok(())
    }
}

/// Parses `ID=CIPHERTEXT,ID=CIPHERTEXT` (the retired key ciphertexts), as
/// [`crate::masking::retired_entries`] splits them.
fn parse_retired_ciphertexts(text: &str) -> Result<Vec<(String, Ciphertext)>> {
    retired_entries(text)
        .map(|entry| {
            let (n, id, ciphertext) = entry.map_err(|error| match error {
                KeyError::RetiredFormat(n) => {
                    anyhow!("retired key {n} is not of the form ID=CIPHERTEXT")
                }
                other => anyhow!(other),
            })?;
            let ciphertext =
                Ciphertext::parse(ciphertext).with_context(|| format!("retired key {n}"))?;
            Ok((id.to_owned(), ciphertext))
        })
        .collect()
}

/// Settings of `maskpipe run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// SQS queue to consume: a queue URL, or a queue name to look up.
    #[arg(long, env = "MASKPIPE_QUEUE", value_name = "URL|NAME")]
    pub queue: String,

    /// PostgreSQL connection string (URL or key=value form).
    #[arg(
        long,
        env = "MASKPIPE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Secret,

    /// PEM file of the CA that PostgreSQL's certificate must chain to (and
    /// name the URL's host); set, TLS is required (`sslmode=disable` is
    /// refused). Unset: TLS, when the URL's `sslmode` uses it (`prefer`, the
    /// default, or `require`), encrypts without authenticating the server,
    /// as libpq does.
    #[arg(long, env = "MASKPIPE_DATABASE_CA", value_name = "PEM")]
    pub database_ca: Option<PathBuf>,

    /// Seconds one statement may run (PostgreSQL's `statement_timeout`);
    /// any wait on the database, connecting included, is abandoned a little
    /// after it and the connection replaced, so a half-open connection
    /// cannot hang a poller or a shutdown.
    #[arg(long, env = "MASKPIPE_DATABASE_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub database_timeout_seconds: u32,

    /// Hours the ledger remembers a message id. Must outlast the queue's
    /// retention period plus its visibility timeout (SQS redelivers no later);
    /// older ledger rows are pruned in the background.
    #[arg(long, env = "MASKPIPE_LEDGER_RETENTION_HOURS", default_value_t = 360,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ledger_retention_hours: u32,

    /// Seconds between ledger prunes (tests shorten it).
    #[arg(long, env = "MASKPIPE_LEDGER_PRUNE_SECONDS", default_value_t = 300, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ledger_prune_seconds: u64,

    /// The transform component (.wasm).
    #[arg(long, env = "MASKPIPE_TRANSFORM", value_name = "PATH")]
    pub transform: PathBuf,

    /// Receives kept in flight at once: each poller hands its batch on and
    /// polls again at once. Raise it when SQS is far away (each receive
    /// waits a round trip).
    #[arg(long, env = "MASKPIPE_POLLERS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub pollers: u16,

    /// Wasm instances running batches at once; default: one per CPU (at
    /// most 8).
    #[arg(long, env = "MASKPIPE_TRANSFORMERS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub transformers: Option<u16>,

    /// Database connections committing at once, each one transaction at a
    /// time.
    #[arg(long, env = "MASKPIPE_WRITERS", default_value_t = DEFAULT_WRITERS as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: u16,

    /// Most messages one transaction holds: a commit takes the batches
    /// waiting for it, and waits for more up to the commit window, until it
    /// holds this many.
    #[arg(long, env = "MASKPIPE_COMMIT_MESSAGES", default_value_t = DEFAULT_COMMIT_MESSAGES as u32,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub commit_messages: u32,

    /// Milliseconds a commit waits for more batches before it writes (like
    /// Lambda's batching window): the most latency coalescing adds. 0 writes
    /// what is waiting at once.
    #[arg(long, env = "MASKPIPE_COMMIT_WINDOW_MS", default_value_t = DEFAULT_COMMIT_WINDOW.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub commit_window_ms: u64,

    /// Memory the messages in flight may hold, in MiB; a poller waits for
    /// room before it hands a batch on (and polls again).
    #[arg(long, env = "MASKPIPE_MAX_IN_FLIGHT_MIB", default_value_t = DEFAULT_MAX_IN_FLIGHT_MIB,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_in_flight_mib: u32,

    /// Messages per receive (SQS allows at most 10).
    #[arg(long, env = "MASKPIPE_BATCH_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(1..=MAX_BATCH as i64))]
    pub batch_size: u8,

    /// Long-poll wait of each receive, in seconds (0-20).
    #[arg(long, env = "MASKPIPE_WAIT_SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u8).range(0..=MAX_WAIT_SECONDS as i64))]
    pub wait_seconds: u8,

    /// Wall-clock budget of one transform call, in milliseconds; a call past
    /// it is stopped and its message dead-lettered as `transform_trap`.
    #[arg(long, env = "MASKPIPE_TRANSFORM_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub transform_timeout_ms: u64,

    /// Memory cap of each transform instance, in MiB.
    #[arg(long, env = "MASKPIPE_TRANSFORM_MEMORY_MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub transform_memory_mib: u32,

    /// Visibility timeout, in seconds, of received messages (extended every
    /// half timeout while their batch runs); default: the queue's own.
    #[arg(long, env = "MASKPIPE_VISIBILITY_TIMEOUT_SECONDS",
          value_parser = clap::value_parser!(u32).range(1..=43_200))]
    pub visibility_timeout_seconds: Option<u32>,

    /// Exit when the queue is empty and print a summary, instead of polling
    /// forever. The variable takes true/false, on/off, yes/no or 1/0.
    #[arg(long, env = "MASKPIPE_DRAIN", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new(),
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub drain: bool,

    /// Create the tables the transform declares when they are missing (at
    /// startup and before a swap), from its declaration. Existing tables are
    /// never altered: one that does not fit stops startup, or refuses the
    /// swap, with the DDL that would make it fit.
    #[arg(long, env = "MASKPIPE_CREATE_TABLES", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new(),
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub create_tables: bool,

    /// Address for `/metrics`, `/healthz` and `/readyz` (e.g. 0.0.0.0:9464);
    /// unset: no HTTP endpoint.
    #[arg(long, env = "MASKPIPE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Seconds between checks of the transform file that need no file
    /// events (NFS, some overlays); events and SIGHUP reload at once. 0 turns
    /// the periodic check off.
    #[arg(long, env = "MASKPIPE_WATCH_POLL_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub watch_poll_seconds: u64,

    /// Seconds between progress log lines; 0 turns them off.
    #[arg(long, env = "MASKPIPE_PROGRESS_SECONDS", default_value_t = 5)]
    pub progress_seconds: u64,

    /// Testing only: the first N batches received make their receiver panic
    /// (the supervisor's tests).
    #[arg(
        long,
        env = "MASKPIPE_INJECT_POLLER_FAILURES",
        default_value_t = 0,
        hide = true
    )]
    pub inject_poller_failures: u64,

    #[command(flatten)]
    pub keys: KeyArgs,
}

/// One wasm instance per CPU: transforms are CPU work.
fn default_transformers() -> usize {
    std::thread::available_parallelism().map_or(2, |cpus| cpus.get().min(8))
}

/// Where compiled components are kept: shared by `run` and the author's
/// tools, so a component tested once loads from the cache when deployed.
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Directory for compiled components, so restarts skip compilation;
    /// `off` disables the cache. Default: $XDG_CACHE_HOME/maskpipe or
    /// ~/.cache/maskpipe.
    #[arg(long, env = "MASKPIPE_CACHE_DIR", value_name = "DIR|off")]
    pub cache_dir: Option<String>,
}

impl CacheArgs {
    /// Where compiled components are cached, if anywhere.
    pub fn dir(&self) -> Option<PathBuf> {
        match self.cache_dir.as_deref() {
            Some("off") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .map(|base| base.join("maskpipe")),
        }
    }
}

impl RunArgs {
    /// Where compiled components are cached, if anywhere.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache.dir()
    }

    pub fn limits(&self) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.transform_timeout_ms),
            memory_bytes: (self.transform_memory_mib as usize) << 20,
        }
    }

    /// How long the ledger keeps a message id.
    pub fn ledger_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.ledger_retention_hours) * 3600)
    }

    pub fn settings(&self) -> Result<Settings> {
        if self.database_url.expose().trim().is_empty() {
            bail!("MASKPIPE_DATABASE_URL is empty");
        }
        Ok(Settings {
            pollers: self.pollers.into(),
            transformers: self
                .transformers
                .map_or_else(default_transformers, usize::from),
            writers: self.writers.into(),
            commit_messages: self.commit_messages as usize,
            commit_window: Duration::from_millis(self.commit_window_ms),
            max_in_flight_mib: self.max_in_flight_mib,
            batch_size: self.batch_size.into(),
            wait_seconds: self.wait_seconds.into(),
            database: Database::new(self.database_url.expose(), self.database_ca.as_deref())?
                .with_timeout(Duration::from_secs(self.database_timeout_seconds.into())),
            drain: self.drain,
            progress_every: (self.progress_seconds > 0)
                .then(|| Duration::from_secs(self.progress_seconds)),
            visibility_timeout: self
                .visibility_timeout_seconds
                .map(|s| Duration::from_secs(s.into())),
            inject_poller_failures: self.inject_poller_failures,
            create_tables: self.create_tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Probe::try_parse_from(
            [
                "maskpipe",
                "--queue",
                "q",
                "--database-url",
                "postgres://x",
                "--transform",
                "t.wasm",
            ]
            .iter()
            .chain(args),
        )
        .map(|probe| probe.run)
    }

    #[test]
    fn drain_takes_the_usual_boolean_spellings() {
        assert!(parse(&["--drain"]).unwrap().drain);
        for yes in ["on", "1", "yes", "true"] {
            assert!(parse(&["--drain", yes]).unwrap().drain, "{yes}");
        }
        for no in ["off", "0", "no", "false"] {
            assert!(!parse(&[&format!("--drain={no}")]).unwrap().drain, "{no}");
        }
        assert!(parse(&["--drain", "maybe"]).is_err());
        // A flag after it is not taken for its value.
        assert!(parse(&["--drain", "--pollers", "2"]).unwrap().drain);
    }

    #[test]
    fn defaults_are_sane() {
        let run = parse(&[]).unwrap();
        assert_eq!(run.pollers, 4);
        assert_eq!(run.batch_size, 10);
        assert_eq!(run.wait_seconds, 20);
        assert_eq!(run.limits().memory_bytes, 64 << 20);
        assert!(!run.drain);
        assert_eq!(run.ledger_retention(), Duration::from_secs(15 * 24 * 3600));
        assert_eq!(
            run.settings().unwrap().database.timeout(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(parse(&["--batch-size", "11"]).is_err());
        assert!(parse(&["--batch-size", "0"]).is_err());
        assert!(parse(&["--wait-seconds", "21"]).is_err());
        assert!(parse(&["--pollers", "0"]).is_err());
        assert!(parse(&["--ledger-retention-hours", "0"]).is_err());
        assert!(parse(&["--database-timeout-seconds", "0"]).is_err());
    }

    fn keys(master: Option<&str>) -> KeyArgs {
        KeyArgs {
            master_key: master.map(Secret::new),
            master_key_ciphertext: None,
            key_id: "k1".into(),
            retired_keys: None,
            retired_key_ciphertexts: None,
            kms_key_id: None,
        }
    }

    /// Base64 of bytes KMS never made: these tests stop before KMS.
    const CIPHERTEXT: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiM=";

    #[tokio::test]
    async fn missing_or_bad_keys_are_clear_errors() {
        let missing = keys(None).keyring().await.unwrap_err();
        assert!(format!("{missing:#}").contains("MASKPIPE_MASTER_KEY"));
        // Opening old values: a new key would open nothing, so no keygen advice.
        let to_open = format!("{:#}", keys(None).keyring_to_open().await.unwrap_err());
        assert!(to_open.contains("the key that masked"), "{to_open}");
        assert!(!to_open.contains("keygen"), "{to_open}");
        let short = keys(Some("deadbeef")).keyring().await.unwrap_err();
        assert!(format!("{short:#}").contains("32 bytes"), "{short:#}");
        assert!(!format!("{short:#}").contains("deadbeef"));
        // A plaintext key needs no KMS (and no AWS settings).
        let plain = keys(Some(&"ab".repeat(32)));
        assert!(!plain.checked().unwrap().uses_kms());
        assert!(plain.keyring().await.is_ok());
    }

    /// Everything about the keys that can be checked without KMS is, by
    /// `checked` (synchronous: it cannot call KMS), and never echoes a key.
    #[test]
    fn ciphertext_settings_are_checked_before_kms() {
        let with = |edit: &dyn Fn(&mut KeyArgs)| {
            let mut args = keys(None);
            args.master_key_ciphertext = Some(Secret::new(CIPHERTEXT));
            edit(&mut args);
            args.checked().map(|keys| keys.uses_kms())
        };
        assert!(with(&|_| {}).unwrap());
        let error = |edit: &dyn Fn(&mut KeyArgs)| format!("{:#}", with(edit).unwrap_err());
        type Edit<'a> = &'a dyn Fn(&mut KeyArgs);
        let cases: [(Edit, &str); 7] = [
            (
                &|args| args.master_key = Some(Secret::new("ab".repeat(32))),
                "MASKPIPE_MASTER_KEY and MASKPIPE_MASTER_KEY_CIPHERTEXT are both set",
            ),
            (
                // Empty counts as set: clap passes an empty variable on.
                &|args| args.master_key = Some(Secret::new("")),
                "are both set",
            ),
            (
                &|args| args.master_key_ciphertext = Some(Secret::new("AQID!!")),
                "MASKPIPE_MASTER_KEY_CIPHERTEXT is unusable: the ciphertext is not base64",
            ),
            (
                &|args| args.kms_key_id = Some(String::new()),
                "MASKPIPE_KMS_KEY_ID is empty",
            ),
            (
                &|args| args.key_id = "k.1".into(),
                "the keyring is unusable: the id of the current key is invalid",
            ),
            (
                &|args| {
                    args.retired_keys = Some(Secret::new(format!("old={}", "cd".repeat(32))));
                    args.retired_key_ciphertexts =
                        Some(Secret::new(format!("k0={CIPHERTEXT},old={CIPHERTEXT}")));
                },
                "the keyring is unusable: retired key 2 of MASKPIPE_RETIRED_KEY_CIPHERTEXTS \
                 has the same id as retired key 1 of MASKPIPE_RETIRED_KEYS",
            ),
            (
                &|args| {
                    args.retired_key_ciphertexts = Some(Secret::new(format!("k1={CIPHERTEXT}")))
                },
                "retired key 1 of MASKPIPE_RETIRED_KEY_CIPHERTEXTS has the same id as the current key",
            ),
        ];
        for (edit, expected) in cases {
            let message = error(edit);
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
            assert!(!message.contains(&CIPHERTEXT[..12]), "{message}");
            assert!(
                !message.contains("abab") && !message.contains("cdcd"),
                "{message}"
            );
        }
        // Only retired keys as ciphertexts: KMS is still needed.
        let mut retired_only = keys(Some(&"ab".repeat(32)));
        retired_only.retired_key_ciphertexts = Some(Secret::new(format!("old={CIPHERTEXT}")));
        assert!(retired_only.checked().unwrap().uses_kms());
        assert!(retired_only.has_master_key());
        assert!(!keys(None).has_master_key());
    }

    #[test]
    fn retired_ciphertexts_split_at_their_first_equals_sign() {
        let parsed =
            parse_retired_ciphertexts(&format!(" a={CIPHERTEXT} ,, b-2 ={CIPHERTEXT}")).unwrap();
        let ids: Vec<&str> = parsed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b-2"]);
        assert_eq!(parsed[0].1, Ciphertext::parse(CIPHERTEXT).unwrap());
        let unpadded = CIPHERTEXT.trim_end_matches('=');
        for (text, expected) in [
            // Pasted without `ID=`: split at the padding, or not at all.
            (
                CIPHERTEXT.to_owned(),
                "retired key 1 is not of the form ID=CIPHERTEXT",
            ),
            (
                unpadded.to_owned(),
                "retired key 1 is not of the form ID=CIPHERTEXT",
            ),
            (
                format!("a={CIPHERTEXT},=x"),
                "retired key 2 is not of the form ID=CIPHERTEXT",
            ),
            (
                format!("a={CIPHERTEXT},b="),
                "retired key 2 is not of the form ID=CIPHERTEXT",
            ),
            (
                format!("{}={CIPHERTEXT}", &unpadded[..20]),
                "the id of retired key 1 is invalid",
            ),
            (
                "a=AQID!!".to_owned(),
                "retired key 1: the ciphertext is not base64",
            ),
        ] {
            let message = format!("{:#}", parse_retired_ciphertexts(&text).unwrap_err());
            assert!(message.contains(expected), "{text}: {message}");
            assert!(!message.contains(&unpadded[..8]), "{message}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let key = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
        let run = parse(&[
            "--master-key",
            key,
            "--retired-keys",
            &format!("old={}", "0f".repeat(32)),
        ])
        .unwrap();
        assert_eq!(run.keys.master_key.as_ref().unwrap().expose(), key);
        let debug = format!("{run:?} {:#?}", run.keys);
        // (parse() gives the database URL; cli's test covers its password.)
        assert!(debug.contains("database_url: <redacted>"), "{debug}");
        for secret in ["5ec2e7", "0f0f0f"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("master_key: Some(<redacted>)"), "{debug}");

        let run = parse(&[
            "--master-key-ciphertext",
            CIPHERTEXT,
            "--retired-key-ciphertexts",
            &format!("old={CIPHERTEXT}"),
        ])
        .unwrap();
        let mut args = keys(None);
        args.master_key_ciphertext = run.keys.master_key_ciphertext.clone();
        args.retired_key_ciphertexts = run.keys.retired_key_ciphertexts.clone();
        let debug = format!("{run:?} {:#?} {:?}", run.keys, args.checked().unwrap());
        assert!(!debug.contains(&CIPHERTEXT[..12]), "{debug}");
        assert!(
            debug.contains("master_key_ciphertext: Some(<redacted>)"),
            "{debug}"
        );
    }
}
