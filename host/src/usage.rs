//! The process's own resource use, for the end-of-run summary: CPU time in
//! all, CPU time while batches were in flight, and peak memory.
//!
//! A host that runs for days spends most of its life waiting in long polls,
//! and its startup (compiling and validating the component) and hot swaps
//! cost CPU no message caused. Dividing the process's whole CPU time by the
//! messages received would charge all of that to them, so the per-message
//! figure counts only the CPU used while at least one batch was being
//! processed ([`BusyCpu`]).

use std::sync::{Arc, Mutex};

/// This process's CPU time (user + system, seconds).
pub fn cpu_seconds() -> Option<f64> {
    rusage().map(|usage| seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// This process's CPU time (user + system, seconds) and peak RSS (MiB).
pub fn process_usage() -> Option<(f64, f64)> {
    let usage = rusage()?;
    // Linux's ru_maxrss (KiB) survives exec: a process spawned by a large
    // parent reports the parent's peak. VmHWM belongs to this image alone.
    let peak_kib = vm_hwm_kib().unwrap_or(usage.ru_maxrss as f64);
    Some((
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_kib / 1024.0,
    ))
}

fn rusage() -> Option<libc::rusage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    Some(unsafe { usage.assume_init() })
}

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Peak resident set size of this process image, from `/proc` (Linux).
pub fn vm_hwm_kib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Process CPU time summed over the intervals in which at least one batch
/// was in flight (from its receive returning to its delete). Concurrent
/// batches overlap in one interval, so nothing is counted twice; idle long
/// polls, startup and quiet hours fall outside every interval.
#[derive(Debug, Default)]
pub struct BusyCpu {
    state: Mutex<BusyState>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct BusyState {
    in_flight: usize,
    /// CPU time read when `in_flight` went from 0 to 1.
    since: f64,
    total: f64,
}

impl BusyState {
    fn enter(&mut self, cpu_now: f64) {
        if self.in_flight == 0 {
            self.since = cpu_now;
        }
        self.in_flight += 1;
    }

    fn leave(&mut self, cpu_now: f64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.total += (cpu_now - self.since).max(0.0);
        }
    }

    fn seconds(&self, cpu_now: f64) -> f64 {
        if self.in_flight > 0 {
            self.total + (cpu_now - self.since).max(0.0)
        } else {
            self.total
        }
    }
}

impl BusyCpu {
    /// A batch starts; the returned guard ends it when dropped (also when
    /// the stage holding it panics, so a failed batch cannot keep the meter
    /// running). It owns its meter: a batch moves from stage to stage.
    pub fn batch(self: &Arc<Self>) -> BusyBatch {
        if let Some(now) = cpu_seconds() {
            self.lock().enter(now);
        }
        BusyBatch {
            meter: Arc::clone(self),
        }
    }

    /// CPU seconds used while batches were in flight, so far.
    pub fn seconds(&self) -> f64 {
        let state = *self.lock();
        cpu_seconds().map_or(state.total, |now| state.seconds(now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusyState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One batch in flight; see [`BusyCpu::batch`].
pub struct BusyBatch {
    meter: Arc<BusyCpu>,
}

impl Drop for BusyBatch {
    fn drop(&mut self) {
        if let Some(now) = cpu_seconds() {
            self.meter.lock().leave(now);
        }
    }
}

/// Microseconds of CPU per message, when there were messages.
pub fn micros_per_message(cpu_seconds: f64, messages: u64) -> Option<f64> {
    (messages > 0).then(|| cpu_seconds * 1e6 / messages as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_overlapping_batches_once_and_idle_time_never() {
        let mut state = BusyState::default();
        // Startup and idle polls up to CPU second 10: not counted.
        state.enter(10.0); // batch A
        state.enter(10.5); // batch B overlaps A
        state.leave(11.0); // A ends, B still running
        assert_eq!(state.seconds(11.5), 1.5, "an open interval counts so far");
        state.leave(12.0); // B ends: 10.0..12.0 counted once
        assert_eq!(state.total, 2.0);
        // An idle hour of long polls (CPU 12 → 100) is left out.
        state.enter(100.0);
        state.leave(100.25);
        assert_eq!(state.seconds(500.0), 2.25);
        assert_eq!(micros_per_message(state.total, 9), Some(250_000.0));
    }

    #[test]
    fn per_message_needs_messages() {
        assert_eq!(micros_per_message(1.0, 0), None);
        assert_eq!(micros_per_message(0.5, 1_000), Some(500.0));
    }

    #[test]
    fn a_guard_ends_its_batch_even_when_dropped_by_a_panic() {
        let meter = Arc::new(BusyCpu::default());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _batch = meter.batch();
            panic!("a poller failing mid-batch");
        }));
        assert!(result.is_err());
        assert_eq!(meter.lock().in_flight, 0);
        // Closed: burning CPU now adds nothing.
        let before = meter.seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert_eq!(meter.seconds(), before);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn busy_cpu_measures_the_work_done_inside_a_batch() {
        // Burns CPU until the process has used `seconds` more of it: by CPU,
        // not wall time, so a loaded machine cannot make it short.
        fn burn(seconds: f64) {
            let start = cpu_seconds().unwrap();
            let mut x = 0u64;
            while cpu_seconds().unwrap() - start < seconds {
                for i in 0..100_000u64 {
                    x = x.wrapping_add(std::hint::black_box(i));
                }
            }
            std::hint::black_box(x);
        }
        let meter = Arc::new(BusyCpu::default());
        burn(0.3); // outside any batch: not counted
        {
            let _batch = meter.batch();
            burn(0.2);
        }
        burn(0.3);
        let busy = meter.seconds();
        // The batch's 0.2 s, not the 0.8 s the process used (other test
        // threads may add a little while the batch is open).
        assert!((0.19..0.5).contains(&busy), "{busy} s");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rss_is_read_from_proc() {
        let ballast = vec![1u8; 8 << 20];
        std::hint::black_box(&ballast);
        let kib = vm_hwm_kib().expect("VmHWM in /proc/self/status");
        assert!(kib >= 8.0 * 1024.0, "{kib} KiB");
        // The summary reports the same (monotonic) figure, read a moment later.
        let (_, peak_mib) = process_usage().expect("getrusage");
        assert!(peak_mib * 1024.0 >= kib, "{peak_mib} MiB < {kib} KiB");
    }
}
