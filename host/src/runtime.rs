//! The transform runtime: loads a component, sandboxes it, and runs batches.
//!
//! All host glue for the `maskpipe:transform/transformer` world lives in the
//! one `bindgen!` below. A [`Transform`] is a checked, compiled component; a
//! [`Worker`] is one reusable instance of it (one per poller), called once
//! per batch under an epoch deadline and a memory cap. When a batch call
//! fails the worker recycles its instance and retries message by message, so
//! only the poison message is dead-lettered.
//!
//! The sandbox: the component imports nothing of maskpipe's and gets an
//! empty WASI context (no environment, arguments, preopened directories or
//! network; stdio goes nowhere; both clocks are frozen at zero). A component
//! that imports anything else is refused at load.
//!
//! The boundary is built for few crossings: a batch goes in packed (one
//! string of bodies and two lists, reusing one host buffer), its rows come
//! out packed (one text, which their fields are spans of), and the PII
//! values a row asks to be protected are masked here, with the worker's
//! keyring, as the row comes out, not by calls from inside the component.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::masking::Keyring;
use crate::record::{Outcome, Rejection, Row, reason};
use crate::source::Received;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transformer",
        // The packed batch crosses into the guest straight from the host's
        // reused buffers, without an owned copy per call.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::maskpipe::transform::types as wit;
use bindings::{Transformer, TransformerPre};

/// How often the engine's epoch advances: the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The budget of [`Worker::run_briefly`]: the tick in progress at the call
/// may end at once, so two ticks guarantee at least one whole tick.
const BRIEF_TICKS: u64 = 2;

/// Interfaces a component may import. WASI is linked with an empty context,
/// so these are inert: they exist because Rust's std for `wasm32-wasip2`
/// imports them whether or not the transform uses them.
const GRANTED_IMPORTS: &[&str] = &[
    "maskpipe:transform/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
];

/// Per-call resource limits of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one call (a batch, or one message on retry).
    pub deadline: Duration,
    /// Cap on the instance's linear memory.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(1),
            memory_bytes: 64 << 20,
        }
    }
}

/// Creates the process's wasm engine and the thread that advances its epoch.
pub fn engine() -> Result<Engine> {
    engine_with_cache(None)
}

/// [`engine`], keeping compiled components in `cache_dir`, so a restart or a
/// swap back to a known component skips compilation. An unusable directory
/// (read-only root filesystem, say) only costs the cache.
pub fn engine_with_cache(cache_dir: Option<&Path>) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    if let Some(directory) = cache_dir {
        let cache = std::fs::create_dir_all(directory)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let mut cache_config = wasmtime::CacheConfig::new();
                cache_config.with_directory(directory);
                wasmtime::Cache::new(cache_config).map_err(anyhow::Error::from)
            });
        match cache {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(error) => tracing::warn!(
                "not caching compiled components in {}: {error:#}",
                directory.display()
            ),
        }
    }
    let engine = Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot create the wasm engine")?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            // The thread ends with the last handle on the engine.
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("cannot start the wasm epoch thread")?;
    Ok(engine)
}

/// A compiled component that passed the import check and exports the world.
pub struct Transform {
    engine: Engine,
    pre: TransformerPre<HostState>,
    digest: String,
    size: usize,
    limits: Limits,
}

impl Transform {
    pub fn load(engine: &Engine, path: &Path, limits: Limits) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read transform component {}", path.display()))?;
        Self::from_bytes(engine, &bytes, limits)
            .with_context(|| format!("cannot load transform component {}", path.display()))
    }

    pub fn from_bytes(engine: &Engine, bytes: &[u8], limits: Limits) -> Result<Self> {
        let digest = digest(bytes);
        let component = Component::from_binary(engine, bytes)
            .map_err(anyhow::Error::from)
            .context("not a valid WebAssembly component")?;
        check_imports(engine, &component)?;

        let mut linker = Linker::<HostState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Transformer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component's imports do not match what maskpipe grants")?;
        let pre = TransformerPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the maskpipe:transform/transformer world")?;
        Ok(Self {
            engine: engine.clone(),
            pre,
            digest,
            size: bytes.len(),
            limits,
        })
    }

    /// SHA-256 of the component file, hex: recorded with every message.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A fresh instance, ready for batches, masking with `keyring`.
    pub fn worker(self: &Arc<Self>, keyring: Arc<Keyring>) -> Result<Worker> {
        let (store, instance) = self.instantiate()?;
        Ok(Worker {
            transform: Arc::clone(self),
            keyring,
            store,
            instance,
            packed: PackedBatch::default(),
        })
    }

    fn instantiate(&self) -> Result<(Store<HostState>, Transformer)> {
        let state = HostState {
            wasi: WasiCtx::builder()
                .wall_clock(FrozenClock)
                .monotonic_clock(FrozenClock)
                .build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .context("cannot instantiate the transform component")?;
        Ok((store, instance))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// One instance of a [`Transform`], reused across batches.
pub struct Worker {
    transform: Arc<Transform>,
    /// Protects the PII values of the rows the component returns.
    keyring: Arc<Keyring>,
    store: Store<HostState>,
    instance: Transformer,
    packed: PackedBatch,
}

impl Worker {
    pub fn digest(&self) -> &str {
        self.transform.digest()
    }

    /// The component this worker runs.
    pub fn transform(&self) -> &Arc<Transform> {
        &self.transform
    }

    /// Transforms a batch: one outcome per message, in order.
    ///
    /// Never fails because of a message: a trap costs the offending message a
    /// dead letter. It fails only when the component can no longer be
    /// instantiated, which no message can cause.
    pub fn run(&mut self, messages: &[Received]) -> Result<Vec<Outcome>> {
        match self.call(messages) {
            Ok(outcomes) => Ok(outcomes),
            Err(failure) => {
                tracing::warn!(
                    digest = %short(self.digest()),
                    batch = messages.len(),
                    "transform failed on a batch ({}); retrying message by message",
                    failure.detail
                );
                self.recycle()?;
                messages
                    .iter()
                    .map(|message| match self.call(std::slice::from_ref(message)) {
                        // `call` checked that there is one outcome per message.
                        Ok(mut outcomes) => Ok(outcomes.remove(0)),
                        Err(failure) => {
                            self.recycle()?;
                            Ok(Outcome::Rejected(failure))
                        }
                    })
                    .collect()
            }
        }
    }

    /// Transforms a batch only if it completes, without a trap, within
    /// [`BRIEF_TICKS`] epoch ticks (10–20 ms): `None` otherwise, with the
    /// instance recycled, and the batch is then for [`Worker::run`] on a
    /// thread that may block. Nothing of the abandoned attempt is kept (no
    /// outcome leaves a call that did not complete), so the batch is
    /// processed once.
    ///
    /// Typical batches take tens of microseconds; this lets an async thread
    /// run them directly instead of paying two thread hand-offs per batch,
    /// while a slow or hostile transform still never holds it for long.
    pub fn run_briefly(&mut self, messages: &[Received]) -> Result<Option<Vec<Outcome>>> {
        // Never more than the full deadline, should that be shorter.
        let ticks = BRIEF_TICKS.min(self.transform.deadline_ticks());
        match self.call_within(messages, ticks) {
            Ok(outcomes) => Ok(Some(outcomes)),
            Err(_) => {
                self.recycle()?;
                Ok(None)
            }
        }
    }

    /// One call into the component. A failure is described as the rejection
    /// the message(s) would get.
    fn call(&mut self, messages: &[Received]) -> Result<Vec<Outcome>, Rejection> {
        self.call_within(messages, self.transform.deadline_ticks())
    }

    fn call_within(
        &mut self,
        messages: &[Received],
        ticks: u64,
    ) -> Result<Vec<Outcome>, Rejection> {
        self.packed.pack(messages)?;
        self.store.set_epoch_deadline(ticks);
        let outcomes = self
            .instance
            .call_transform_batch(&mut self.store, self.packed.as_wit())
            .map_err(|error| Rejection::new(reason::TRANSFORM_TRAP, describe_failure(&error)))?;
        if outcomes.each.len() != messages.len() {
            return Err(Rejection::new(
                reason::CONTRACT_VIOLATION,
                format!(
                    "the transform returned {} outcomes for {} messages",
                    outcomes.each.len(),
                    messages.len()
                ),
            ));
        }
        let text = outcomes.text.as_str();
        Ok(outcomes
            .each
            .into_iter()
            .map(|outcome| from_wit(outcome, text, &self.keyring))
            .collect())
    }

    /// A trap can leave an instance's memory inconsistent: start afresh.
    fn recycle(&mut self) -> Result<()> {
        let (store, instance) = self.transform.instantiate()?;
        self.store = store;
        self.instance = instance;
        Ok(())
    }
}

/// A batch as the WIT `batch` carries it: bodies back to back, their ends
/// and timestamps. One per worker, so its buffers are reused.
#[derive(Default)]
struct PackedBatch {
    bodies: String,
    body_ends: Vec<u32>,
    sent_timestamps_ms: Vec<u64>,
}

impl PackedBatch {
    fn pack(&mut self, messages: &[Received]) -> Result<(), Rejection> {
        self.bodies.clear();
        self.body_ends.clear();
        self.sent_timestamps_ms.clear();
        for message in messages {
            self.bodies.push_str(&message.body);
            let end = u32::try_from(self.bodies.len()).map_err(|_| {
                Rejection::new(
                    reason::TRANSFORM_TRAP,
                    "the batch's bodies exceed the 4 GiB a component can address",
                )
            })?;
            self.body_ends.push(end);
            self.sent_timestamps_ms.push(message.sent_timestamp_ms);
        }
        Ok(())
    }

    fn as_wit(&self) -> wit::Batch<'_> {
        wit::Batch {
            bodies: &self.bodies,
            body_ends: &self.body_ends,
            sent_timestamps_ms: &self.sent_timestamps_ms,
        }
    }
}

/// What the store holds for the component: its WASI context and its limits.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for HostState {}

/// A clock that always reads zero: transforms must not depend on time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The version of `wit/transform.wit` this host speaks.
const CONTRACT_VERSION: &str = "0.3.0";

fn check_imports(engine: &Engine, component: &Component) -> Result<()> {
    let component_type = component.component_type();
    for (name, _) in component_type.imports(engine) {
        let (interface, version) = name.split_once('@').unwrap_or((name, ""));
        if interface.starts_with("maskpipe:transform/") && version != CONTRACT_VERSION {
            bail!(
                "the component was built against maskpipe:transform@{version}; this maskpipe \
                 speaks @{CONTRACT_VERSION}: rebuild it against this release's wit/"
            );
        }
        if !GRANTED_IMPORTS.contains(&interface) {
            bail!(
                "the component imports `{name}`, which maskpipe does not grant \
                 (a transform gets only inert WASI stdio, clocks and random)"
            );
        }
    }
    Ok(())
}

/// A component's outcome as the host's: its strings cut from the batch's
/// `text`, its PII protected as the row asks (keyed by column: `ip`,
/// `device_id`) and its values checked against the table.
fn from_wit(outcome: wit::Outcome, text: &str, keyring: &Keyring) -> Outcome {
    match outcome {
        wit::Outcome::Rejected(rejection) => {
            Outcome::Rejected(Rejection::new(&rejection.code, rejection.detail).sanitized())
        }
        wit::Outcome::Row(row) => match row_from_wit(row, text, keyring) {
            Ok(row) => match row.check_columns() {
                Ok(()) => Outcome::Row(row),
                Err(rejection) => Outcome::Rejected(rejection),
            },
            Err(violation) => {
                Outcome::Rejected(Rejection::new(reason::CONTRACT_VIOLATION, violation))
            }
        },
    }
}

/// The row, or which part of it breaks the contract.
fn row_from_wit(row: wit::LoginRow, text: &str, keyring: &Keyring) -> Result<Row, &'static str> {
    let create_date = match row.create_date {
        None => None,
        Some(date) => Some(
            NaiveDate::from_ymd_opt(date.year, date.month.into(), date.day.into())
                .ok_or("the transform returned an impossible create_date")?,
        ),
    };
    let string = |span: Option<wit::Span>| {
        span.map(|span| cut(text, span).map(str::to_owned))
            .transpose()
    };
    Ok(Row {
        user_id: string(row.user_id)?,
        device_type: string(row.device_type)?,
        masked_ip: protect(keyring, "ip", row.masked_ip, text)?,
        masked_device_id: protect(keyring, "device_id", row.masked_device_id, text)?,
        locale: string(row.locale)?,
        app_version: row.app_version,
        create_date,
    })
}

/// The text a span names.
fn cut(text: &str, span: wit::Span) -> Result<&str, &'static str> {
    // `get` is None for a span past the end, backwards or inside a character.
    text.get(span.start as usize..span.end as usize)
        .ok_or("the transform returned a span outside its text")
}

fn protect(
    keyring: &Keyring,
    field: &str,
    value: Option<wit::Protected>,
    text: &str,
) -> Result<Option<String>, &'static str> {
    let Some(value) = value else { return Ok(None) };
    Ok(Some(match value {
        wit::Protected::Masked(span) => keyring.mask(field, cut(text, span)?),
        wit::Protected::Pseudonymized(span) => keyring.pseudonymize(field, cut(text, span)?),
        wit::Protected::Clear(span) => cut(text, span)?.to_owned(),
    }))
}

/// A PII-free description of a failed call: trap codes only, never the
/// guest's own message (a panic message could quote the input).
fn describe_failure(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "the transform exceeded its deadline".to_owned(),
        Some(Trap::OutOfFuel) => "the transform ran out of fuel".to_owned(),
        Some(trap) => format!("the transform trapped: {trap}"),
        None => "the transform call failed (invalid values crossed the boundary)".to_owned(),
    }
}

/// SHA-256 of a component's bytes, hex: its identity everywhere.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first 12 hex digits of a digest, for log lines.
pub fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_version_is_the_wit_package_version() {
        let wit = include_str!("../../wit/transform.wit");
        assert!(
            wit.contains(&format!("package maskpipe:transform@{CONTRACT_VERSION};")),
            "CONTRACT_VERSION must follow wit/transform.wit"
        );
    }

    #[test]
    fn a_batch_packs_its_bodies_back_to_back() {
        let messages = [
            Received::local("a", "first✓", 1),
            Received::local("b", "", 2),
            Received::local("c", "third", 3),
        ];
        let mut packed = PackedBatch::default();
        packed.pack(&messages).unwrap();
        // Packing again reuses the buffers and forgets the previous batch.
        packed.pack(&messages).unwrap();
        let batch = packed.as_wit();
        assert_eq!(batch.bodies, "first✓third");
        assert_eq!(batch.body_ends, [8, 8, 13]);
        assert_eq!(batch.sent_timestamps_ms, [1, 2, 3]);
    }

    fn keyring() -> Keyring {
        let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        Keyring::new("k1", &crate::masking::MasterKey::parse(key).unwrap(), &[]).unwrap()
    }

    fn span(start: u32, end: u32) -> wit::Span {
        wit::Span { start, end }
    }

    fn row(user_id: wit::Span, ip: wit::Protected) -> wit::Outcome {
        wit::Outcome::Row(wit::LoginRow {
            user_id: Some(user_id),
            device_type: None,
            masked_ip: Some(ip),
            masked_device_id: None,
            locale: None,
            app_version: Some(230),
            create_date: None,
        })
    }

    fn expect_row(outcome: Outcome) -> Row {
        match outcome {
            Outcome::Row(row) => row,
            Outcome::Rejected(rejection) => panic!("expected a row, got {rejection:?}"),
        }
    }

    #[test]
    fn a_row_takes_its_strings_from_the_text_and_masks_what_it_asks() {
        let keyring = keyring();
        let text = "u-1✓10.0.0.1";
        let got = expect_row(from_wit(
            row(span(0, 6), wit::Protected::Masked(span(6, 14))),
            text,
            &keyring,
        ));
        assert_eq!(got.user_id.as_deref(), Some("u-1✓"));
        let masked = got.masked_ip.unwrap();
        assert_eq!(masked, keyring.mask("ip", "10.0.0.1"));
        assert_eq!(keyring.reveal(&masked, Some("ip")).unwrap(), b"10.0.0.1");
        // Spans may share text.
        let shared = expect_row(from_wit(
            row(span(0, 3), wit::Protected::Clear(span(0, 3))),
            text,
            &keyring,
        ));
        assert_eq!(shared.masked_ip.as_deref(), Some("u-1"));
    }

    #[test]
    fn a_span_outside_the_text_is_a_contract_violation_for_that_message() {
        let keyring = keyring();
        let text = "u-1✓10.0.0.1";
        for (user_id, ip) in [
            (span(0, 99), span(6, 14)),     // past the end
            (span(4, 5), span(6, 14)),      // inside the ✓
            (span(3, 1), span(6, 14)),      // backwards
            (span(0, 3), span(6, 1 << 31)), // the protected value's
        ] {
            let Outcome::Rejected(rejection) =
                from_wit(row(user_id, wit::Protected::Masked(ip)), text, &keyring)
            else {
                panic!("{user_id:?} {ip:?} should be refused");
            };
            assert_eq!(rejection.code, reason::CONTRACT_VIOLATION);
            assert!(rejection.detail.contains("span"), "{rejection:?}");
        }
    }
}
