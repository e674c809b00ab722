//! What the benchmarks ask of the OS: room for many sockets, and how much
//! memory a process holds.

use anyhow::Context as _;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises this process's soft limit on open files to its hard limit and
/// returns the new soft limit (`None` for unlimited). Ten thousand idle
/// connections, or simulated chat users, do not fit in the usual soft limit
/// of 1,024.
///
/// A failure is not fatal: the scenario that needs the room will then fail
/// to open its connections and say so.
pub fn raise_nofile() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("cannot raise RLIMIT_NOFILE to {:?}: {e}", limit.maximum);
        }
    }
    getrlimit(Resource::Nofile).current
}

/// A process's resident memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// The most ever resident (`VmHWM`, the high-water mark), in KiB.
    pub peak_kib: u64,
}

/// Reads process `pid`'s resident memory.
///
/// # Errors
///
/// When the process is gone or its status lacks the two fields.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status(&status).with_context(|| format!("{path} has no VmRSS or VmHWM"))
}

/// The `VmRSS` and `VmHWM` lines of a `/proc/PID/status`.
fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
        line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
    };
    Some(Memory { rss_kib: field("VmRSS")?, peak_kib: field("VmHWM")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t    1234 kB\n";
        assert_eq!(parse_status(status), Some(Memory { rss_kib: 1234, peak_kib: 4321 }));
        assert_eq!(parse_status("VmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn this_process_has_memory_and_room_for_files() {
        let m = memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib);
        assert!(raise_nofile().is_none_or(|n| n >= 1024));
    }
}
