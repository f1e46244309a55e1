//! The transform runtime: loads a component, sandboxes it, and runs batches.
//!
//! All host glue for the `maskpipe:transform/transformer` world lives in the
//! one `bindgen!` below. A [`Transform`] is a checked, compiled component
//! with the tables and reason codes it declared ([`declaration`]); a [`Worker`] is one reusable instance
//! of it (one per poller), called once per batch under a deadline and the
//! limits of [`sandbox`]. When a batch call fails the worker recycles its
//! instance and retries message by message, so only the poison message is
//! dead-lettered.
//!
//! Every call into a component is async: wasm yields to the executor at
//! every epoch tick (10 ms), and every WASI import that could wait is a
//! future, so neither a loop nor a sleep ever holds a host thread, and one
//! `tokio::time::timeout` bounds both. A call that times out or traps is
//! abandoned whole: no outcome leaves a call that did not complete.
//!
//! The boundary is built for few crossings: a batch goes in packed (one
//! string of bodies and two lists, reusing one host buffer), its rows come
//! out packed (one text, which their fields are spans of), and the PII
//! values a row asks to be protected are masked by [`outcome`], with the
//! worker's keyring, as the row comes out.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};

use crate::masking::Keyring;
use crate::record::{Outcome, Rejection, reason};
use crate::schema::Schema;
use crate::source::Received;

mod declaration;
mod outcome;
pub mod sandbox;

pub use outcome::ReasonCodes;
use sandbox::{HostState, LimitHit};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transformer",
        // The packed batch crosses into the guest straight from the host's
        // reused buffers, without an owned copy per call.
        ownership: Borrowing { duplicate_if_necessary: true },
        exports: { default: async },
    });
}

use bindings::maskpipe::transform::types as wit;
use bindings::{Transformer, TransformerPre};

/// How often the engine's epoch advances: how long wasm runs between
/// yields to the executor, and the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The least time instantiating a component may take: it is not per
/// message, and a large component (CPython) needs more than a batch.
const MIN_INSTANTIATE_BUDGET: Duration = Duration::from_secs(5);

/// Per-call resource limits of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one call (a batch, or one message on retry).
    pub deadline: Duration,
    /// Cap on all of an instance's linear memories together.
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

impl Limits {
    fn instantiate_budget(&self) -> Duration {
        self.deadline.max(MIN_INSTANTIATE_BUDGET)
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

/// A compiled component that passed the import check, exports the world
/// and declared valid tables and reason codes.
pub struct Transform {
    engine: Engine,
    pre: TransformerPre<HostState>,
    digest: String,
    size: usize,
    limits: Limits,
    schema: Arc<Schema>,
    reason_codes: ReasonCodes,
}

impl Transform {
    pub async fn load(engine: &Engine, path: &Path, limits: Limits) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read transform component {}", path.display()))?;
        Self::from_bytes(engine, bytes, limits)
            .await
            .with_context(|| format!("cannot load transform component {}", path.display()))
    }

    /// Compiles (on a blocking thread: a large component takes seconds),
    /// checks, and asks the component for its tables and reason codes.
    pub async fn from_bytes(engine: &Engine, bytes: Vec<u8>, limits: Limits) -> Result<Self> {
        let digest = digest(&bytes);
        let size = bytes.len();
        let compiling = engine.clone();
        let pre = tokio::task::spawn_blocking(move || prepare(&compiling, &bytes))
            .await
            .context("the compiling thread failed")??;
        let (mut store, instance) = instantiate(engine, &pre, limits).await?;
        let declared = bounded(limits.deadline, instance.call_describe(&mut store))
            .await
            .map_err(|failure| anyhow!("its describe call failed: {}", failure.detail))?;
        let (schema, reason_codes) = declaration::check(declared)?;
        Ok(Self {
            engine: engine.clone(),
            pre,
            digest,
            size,
            limits,
            schema: Arc::new(schema),
            reason_codes,
        })
    }

    /// SHA-256 of the component file, hex: recorded with every message.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The reason codes the component declared.
    pub fn reason_codes(&self) -> &[String] {
        self.reason_codes.as_slice()
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        self.pre.instance_pre().component()
    }

    /// The tables the component declared.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// A fresh instance, ready for batches, masking with `keyring`.
    pub async fn worker(self: &Arc<Self>, keyring: Arc<Keyring>) -> Result<Worker> {
        let (store, instance) = self.instantiate().await?;
        Ok(Worker {
            transform: Arc::clone(self),
            keyring,
            store,
            instance,
            packed: PackedBatch::default(),
            recycles: 0,
        })
    }

    async fn instantiate(&self) -> Result<(Store<HostState>, Transformer)> {
        instantiate(&self.engine, &self.pre, self.limits).await
    }
}

async fn instantiate(
    engine: &Engine,
    pre: &TransformerPre<HostState>,
    limits: Limits,
) -> Result<(Store<HostState>, Transformer)> {
    let mut store = Store::new(engine, HostState::new(limits.memory_bytes));
    store.limiter(|state| &mut state.limiter);
    // Yield at every tick: a busy component shares the executor thread
    // instead of holding it, and its caller's timeout gets to run.
    // Through tokio's `yield_now`, which wakes the component only after
    // the runtime has polled its sockets and timers: a plain yield puts
    // it straight back on the thread, and I/O (`/healthz`, SQS,
    // PostgreSQL) then waits up to 61 ticks, about 600 ms.
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    let instance = tokio::time::timeout(
        limits.instantiate_budget(),
        pre.instantiate_async(&mut store),
    )
    .await
    .map_err(|_| anyhow!("instantiating the transform component timed out"))?
    .map_err(anyhow::Error::from)
    .context("cannot instantiate the transform component")?;
    Ok((store, instance))
}

/// Compiles and links a component: everything about it that is fixed.
fn prepare(engine: &Engine, bytes: &[u8]) -> Result<TransformerPre<HostState>> {
    let component = Component::from_binary(engine, bytes).map_err(|error| {
        // Each cause on its own, without `{:#}`: wasmparser's errors print
        // their byte arrays with `{:#?}` under it, one byte per line.
        let causes: Vec<String> = anyhow::Error::from(error)
            .chain()
            .map(|cause| {
                cause
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        anyhow!("not a valid WebAssembly component: {}", causes.join(": "))
    })?;
    sandbox::check_imports(engine, &component)?;
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Transformer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)
        .context("the component's imports do not match what maskpipe grants")?;
    TransformerPre::new(pre)
        .map_err(anyhow::Error::from)
        .context("the component does not export the maskpipe:transform/transformer world")
}

/// One instance of a [`Transform`], reused across batches.
pub struct Worker {
    transform: Arc<Transform>,
    /// Protects the PII values of the rows the component returns.
    keyring: Arc<Keyring>,
    store: Store<HostState>,
    instance: Transformer,
    packed: PackedBatch,
    /// Fresh instances this worker has had to start (after a trap or an
    /// abandoned call).
    recycles: u64,
}

impl Worker {
    pub fn digest(&self) -> &str {
        self.transform.digest()
    }

    /// The linear memory this worker's instance holds, in bytes (its peak:
    /// wasm memory only grows; a recycled instance starts over).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.memory_used()
    }

    /// How many times a failed call made this worker start a fresh
    /// instance (each also sends its batch through message by message).
    pub fn recycles(&self) -> u64 {
        self.recycles
    }

    /// The component this worker runs.
    pub fn transform(&self) -> &Arc<Transform> {
        &self.transform
    }

    /// Transforms a batch: one outcome per message, in order.
    ///
    /// Never fails because of a message: a trap, a timeout or a broken
    /// contract costs the offending message a dead letter. It fails only
    /// when the component can no longer be instantiated, which no message
    /// can cause.
    pub async fn run(&mut self, messages: &[Received]) -> Result<Vec<Outcome>> {
        let failure = match self.call(messages).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(failure) => failure,
        };
        self.recycle().await?;
        if let [_] = messages {
            return Ok(vec![Outcome::Rejected(failure)]);
        }
        tracing::warn!(
            digest = %short(self.digest()),
            batch = messages.len(),
            "transform failed on a batch ({}); retrying message by message",
            failure.detail
        );
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            match self.call(std::slice::from_ref(message)).await {
                // `call` checked that there is one outcome per message.
                Ok(mut one) => outcomes.push(one.remove(0)),
                Err(failure) => {
                    self.recycle().await?;
                    outcomes.push(Outcome::Rejected(failure));
                }
            }
        }
        Ok(outcomes)
    }

    /// One call into the component. A failure is described as the rejection
    /// the message(s) would get.
    async fn call(&mut self, messages: &[Received]) -> Result<Vec<Outcome>, Rejection> {
        self.packed.pack(messages)?;
        let deadline = self.transform.limits.deadline;
        let outcomes = bounded(
            deadline,
            self.instance
                .call_transform_batch(&mut self.store, self.packed.as_wit()),
        )
        .await
        .map_err(|mut failure| {
            if let Some(hit) = self.store.data().limiter.hit {
                failure.detail = describe_limit(hit, self.transform.limits);
            }
            failure
        })?;
        let declared = outcome::Declared {
            schema: &self.transform.schema,
            codes: &self.transform.reason_codes,
            // As much as the component may hold itself.
            output_bytes: self.transform.limits.memory_bytes,
        };
        outcome::from_wit(outcomes, messages.len(), &declared, &self.keyring)
    }

    /// A trap or an abandoned call can leave an instance inconsistent: start afresh.
    async fn recycle(&mut self) -> Result<()> {
        let (store, instance) = self.transform.instantiate().await?;
        self.store = store;
        self.instance = instance;
        self.recycles += 1;
        Ok(())
    }
}

/// Runs a call into a component under `deadline`: its failure as the
/// `transform_trap` rejection it costs (the limiter's finding, if any, is
/// added by the caller, who holds the store).
async fn bounded<T>(
    deadline: Duration,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, Rejection> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Rejection::new(
            reason::TRANSFORM_TRAP,
            describe_failure(&error),
        )),
        Err(_elapsed) => Err(Rejection::new(
            reason::TRANSFORM_TRAP,
            format!(
                "the transform exceeded its deadline ({} ms)",
                deadline.as_millis()
            ),
        )),
    }
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

fn describe_limit(hit: LimitHit, limits: Limits) -> String {
    match hit {
        LimitHit::Memory => format!(
            "the transform hit its memory cap ({} MiB)",
            limits.memory_bytes >> 20
        ),
        LimitHit::TableElements => format!(
            "the transform hit its table cap ({} elements)",
            sandbox::MAX_TABLE_ELEMENTS
        ),
    }
}

/// Runs a future to completion on a private runtime: for callers that are
/// not async themselves (tests, benchmarks). Never call it from async code.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can run out")
        .block_on(future)
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
        let wit = include_str!("../../../wit/transform.wit");
        assert!(
            wit.contains(&format!(
                "package maskpipe:transform@{};",
                sandbox::CONTRACT_VERSION
            )),
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
}
