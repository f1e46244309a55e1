//! The sandbox a component runs in: what it may import, what the store
//! gives it, and the limits every store enforces.
//!
//! WASI is linked asynchronously: every import that could wait (a sleep, a
//! poll, a blocking stream write) is a future on the host side, so a
//! component that blocks never blocks a host thread; it is bounded by the
//! call's deadline like a component that loops. The WASI context is empty
//! (no environment, arguments, preopened directories or network; stdio goes
//! nowhere; both clocks are frozen at zero).
//!
//! A filesystem and sockets are linked too, because CPython (and so every
//! Python transform) imports them, but they reach nothing: the filesystem
//! has no preopened directory, so there is no path to open, and every
//! socket is refused before the host makes one (TCP and UDP are off, every
//! address fails the address check, and name lookup is off), so a
//! transform that tries either gets an error it can handle, never a file
//! or a packet.
//!
//! [`SandboxLimiter`] caps, per store, the *total* of all linear memories
//! (a component may hold several), the total of all table elements, and the
//! number of instances, memories and tables, and remembers which cap was
//! hit, so a failed call can say why.

use std::time::Duration;

use anyhow::{Result, bail};
use wasmtime::Engine;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Component, ResourceTable};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::maskpipe::transform::types as wit;

/// The version of `wit/transform.wit` this host speaks.
pub(super) const CONTRACT_VERSION: &str = "1.0.0";

/// Interfaces a component may import. WASI is linked with an empty context,
/// so these are inert: they exist because Rust's std for `wasm32-wasip2`
/// and CPython import them whether or not the transform uses them (see the
/// module doc for why the filesystem and sockets reach nothing).
/// `maskpipe:transform/types` holds only type definitions: no functions.
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
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

/// Counts no real component comes near (a Rust component has a handful of
/// core instances, one memory and a few tables; CPython's a few dozen
/// instances), far below wasmtime's defaults of 10,000.
pub(super) const MAX_INSTANCES: usize = 100;
pub(super) const MAX_MEMORIES: usize = 8;
pub(super) const MAX_TABLES: usize = 100;
/// All tables' elements together: 1 Mi elements is 8–16 MiB of host memory.
pub(super) const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// WASI handles (streams, pollables, networks) a component may hold at once:
/// a Rust or Python transform holds a handful.
const MAX_RESOURCES: usize = 10_000;

/// Which cap stopped a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Memory,
    TableElements,
}

/// Caps the store's resources in total, not per memory or table.
#[derive(Debug)]
pub struct SandboxLimiter {
    memory_cap: usize,
    memory_used: usize,
    table_elements_used: usize,
    /// The cap the last failed growth hit, if any.
    pub hit: Option<LimitHit>,
}

impl SandboxLimiter {
    /// All of the store's linear memories together, in bytes: its peak,
    /// since wasm memory only grows.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }

    pub fn new(memory_cap: usize) -> Self {
        Self {
            memory_cap,
            memory_used: 0,
            table_elements_used: 0,
            hit: None,
        }
    }
}

impl ResourceLimiter for SandboxLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `current` is this memory's size, already counted (0 for a new one).
        let total = (self.memory_used - current.min(self.memory_used)).saturating_add(desired);
        if total > self.memory_cap {
            self.hit = Some(LimitHit::Memory);
            // An error, not `Ok(false)`: the guest traps here instead of
            // seeing a failed `memory.grow` and trapping somewhere less clear.
            wasmtime::bail!("the transform hit its memory cap");
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.table_elements_used - current.min(self.table_elements_used))
            .saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            self.hit = Some(LimitHit::TableElements);
            wasmtime::bail!("the transform hit its table cap");
        }
        self.table_elements_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// What the store holds for the component: its WASI context and its limits.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: SandboxLimiter,
}

impl HostState {
    pub fn new(memory_cap: usize) -> Self {
        Self {
            // Said in full, not left to wasmtime-wasi's defaults: no
            // preopened directory (none is added), no network.
            wasi: WasiCtx::builder()
                .wall_clock(FrozenClock)
                .monotonic_clock(FrozenClock)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .socket_addr_check(|_, _| Box::pin(async { false }))
                .build(),
            table: {
                // Each handle the component holds (a stream, a pollable, a
                // network) is host memory the limiter does not see: bound
                // them (wasmtime's default is a million).
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            limiter: SandboxLimiter::new(memory_cap),
        }
    }
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

/// Refuses a component built against another contract version or importing
/// anything beyond [`GRANTED_IMPORTS`].
pub(super) fn check_imports(engine: &Engine, component: &Component) -> Result<()> {
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
                 (a transform gets only inert WASI stdio, clocks and random, and a \
                 filesystem and sockets that reach nothing)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_capped_across_all_memories() {
        let mut limiter = SandboxLimiter::new(100);
        // Two memories of 40 each fit; a third of 40 does not.
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).is_err());
        assert_eq!(limiter.hit, Some(LimitHit::Memory));
        // Growing one of them by 20 fits exactly; by 1 more does not.
        let mut limiter = SandboxLimiter::new(100);
        limiter.memory_growing(0, 40, None).unwrap();
        limiter.memory_growing(0, 40, None).unwrap();
        assert!(limiter.memory_growing(40, 60, None).unwrap());
        assert!(limiter.memory_growing(60, 61, None).is_err());
    }

    #[test]
    fn table_elements_and_counts_are_capped() {
        let mut limiter = SandboxLimiter::new(0);
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(limiter.table_growing(0, 1, None).is_err());
        assert_eq!(limiter.hit, Some(LimitHit::TableElements));
        assert!(limiter.instances() <= 100 && limiter.memories() <= 8 && limiter.tables() <= 100);
    }
}
