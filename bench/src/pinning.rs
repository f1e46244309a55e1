//! Gives the queue server a CPU of its own for the end-to-end stages.
//!
//! LocalStack is one Python process that can use one core. On a small
//! machine the scheduler otherwise runs the consumer (and PostgreSQL) on
//! the server's core whenever a response wakes them, and the server waits
//! for its own CPU: the comparison then measures scheduler luck, not the
//! consumer. So, as load tests put the load generator and the server on
//! separate cores: LocalStack on CPU 0, everything else (this process, the
//! hosts it starts, PostgreSQL: both clusters) on the other CPUs. Both the no-op consumer
//! and maskpipe run under the same split. Dropping the guard gives
//! LocalStack and PostgreSQL every CPU back.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The processes pinned, to be given every CPU back on drop.
pub struct ServerCore {
    localstack: i32,
    /// The throwaway cluster's, and the durable one's when it runs.
    postmasters: Vec<i32>,
    all: Vec<usize>,
}

impl ServerCore {
    /// Pins the local stack found under `stack_dir` (its pid files) and
    /// every thread of this process; the hosts it starts inherit that.
    pub fn pin(stack_dir: &Path) -> Result<Self> {
        let all = allowed_cpus()?;
        if all.len() < 2 {
            bail!("one CPU only: nothing to split");
        }
        let localstack = read_pid(&stack_dir.join("localstack/pid"))?;
        let mut postmasters = vec![read_pid(&stack_dir.join("pg/postmaster.pid"))?];
        // The durable cluster when it runs (a stale pid file is ignored).
        if let Ok(durable) = read_pid(&stack_dir.join("pg-durable/postmaster.pid"))
            && Path::new(&format!("/proc/{durable}")).exists()
        {
            postmasters.push(durable);
        }
        let pinned = Self {
            localstack,
            postmasters,
            all,
        };
        let (server, rest) = pinned.all.split_at(1);
        set_process(localstack, server)?;
        for &postmaster in &pinned.postmasters {
            set_process_tree(postmaster, rest)?;
        }
        set_process(std::process::id() as i32, rest)?;
        Ok(pinned)
    }

    pub fn describe(&self) -> String {
        format!(
            "LocalStack alone on CPU {}; this bench, the hosts it starts and PostgreSQL on CPU {:?}",
            self.all[0],
            &self.all[1..]
        )
    }
}

impl Drop for ServerCore {
    fn drop(&mut self) {
        // Best effort: a server that exited meanwhile has nothing to restore.
        let _ = set_process(self.localstack, &self.all);
        for &postmaster in &self.postmasters {
            let _ = set_process_tree(postmaster, &self.all);
        }
        let _ = set_process(std::process::id() as i32, &self.all);
    }
}

/// The CPUs this process may run on (it may itself be started pinned).
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(std::io::Error::last_os_error()).context("cannot read this process's CPUs");
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

fn read_pid(file: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("no local stack pid file at {}", file.display()))?;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .with_context(|| format!("{} holds no pid", file.display()))
}

/// Every thread of `pid`: affinity is per thread, and a process's existing
/// threads do not follow its main thread's.
fn set_process(pid: i32, cpus: &[usize]) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is not running"))?;
    for task in tasks {
        if let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            set(tid, cpus).with_context(|| format!("cannot pin thread {tid} of {pid}"))?;
        }
    }
    Ok(())
}

/// `pid` and its children (PostgreSQL's backends and workers); backends
/// started later inherit the postmaster's CPUs.
fn set_process_tree(pid: i32, cpus: &[usize]) -> Result<()> {
    set_process(pid, cpus)?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if parent_of(child) == Some(pid) {
            // A backend may exit between listing and pinning.
            let _ = set_process(child, cpus);
        }
    }
    Ok(())
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces; fields follow it.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn set(tid: i32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` comes from `allowed_cpus`: below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let status =
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_parent_and_its_cpus() {
        let parent = std::os::unix::process::parent_id() as i32;
        assert_eq!(parent_of(std::process::id() as i32), Some(parent));
        assert_eq!(parent_of(i32::MAX), None);
        assert!(!allowed_cpus().unwrap().is_empty());
    }
}
