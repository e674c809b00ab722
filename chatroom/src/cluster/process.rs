//! One process of the cluster: started detached in its own process group, watched until
//! it says where it serves, signalled only while it is still the recorded one, stopped
//! in stages by `down`.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustix::process::{Pid, Signal};

use super::up::interrupted;
use super::{state_path, Process, State, START_TIMEOUT, STOP_TIMEOUT};

/// The start time of `pid` if it is alive (and not a zombie).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is starttime.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True if the recorded process is still the one `up` started and still running.
pub fn alive(process: &Process) -> bool {
    start_time(process.pid) == Some(process.start_time)
}

/// True if something accepts connections on `addr`.
pub(super) fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Sends `sig` to `process` if it is still the process `up` started. SIGKILL goes to its
/// whole process group (each child leads its own), so nginx's workers go with their master.
fn signal(process: &Process, sig: Signal) {
    if !alive(process) {
        return;
    }
    let Some(pid) = i32::try_from(process.pid).ok().and_then(Pid::from_raw) else { return };
    let sent = if sig == Signal::KILL {
        rustix::process::kill_process_group(pid, sig)
    } else {
        rustix::process::kill_process(pid, sig)
    };
    if let Err(e) = sent {
        eprintln!("cannot signal {} (pid {}): {e}", process.name, process.pid);
    }
}

/// A child being started: its record and handle (to see it exit early).
pub(super) struct Starting {
    /// Its record, as the state file will hold it.
    pub(super) process: Process,
    /// Its handle, to see it exit during startup.
    pub(super) child: Child,
    /// Where its stdout goes: it prints its address there once it serves.
    out: PathBuf,
}

pub(super) fn spawn(command: &mut Command, role: &str, name: &str, logs: &Path) -> anyhow::Result<Starting> {
    let log = logs.join(format!("{name}.log"));
    let out = logs.join(format!("{name}.out"));
    let child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&log)?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id();
    let start_time = start_time(pid).unwrap_or(0);
    let process = Process {
        role: role.to_owned(),
        name: name.to_owned(),
        pid,
        start_time,
        addr: None,
        instance_id: None,
        log,
    };
    Ok(Starting { process, child, out })
}

/// Waits until `starting` printed its address (it serves and is registered by then).
pub(super) fn wait_addr(starting: &mut Starting) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        interrupted()?;
        let text = fs::read_to_string(&starting.out).unwrap_or_default();
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            let word = line.split_whitespace().last().unwrap_or_default();
            return word.parse().with_context(|| format!("{} printed {line:?}", starting.process.name));
        }
        if let Some(status) = starting.child.try_wait()? {
            bail!(
                "{} exited during startup ({status}); its log {}:\n{}",
                starting.process.name,
                starting.process.log.display(),
                tail(&starting.process.log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not start within {START_TIMEOUT:?}; see {}",
                starting.process.name,
                starting.process.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Which stage of `down` stops a process of `role`: nginx first, so no client reaches a
/// stopping proxy; then the proxies, whose graceful stop still needs the chat services;
/// then everything else.
fn stop_stage(role: &str) -> usize {
    match role {
        "nginx" => 0,
        "proxy" => 1,
        _ => 2,
    }
}

/// Stops every recorded process still alive, stage by stage (see [`stop_stage`]): SIGTERM,
/// then SIGKILL after a deadline; then waits until their addresses refuse connections.
pub(super) fn stop(dir: &Path, state: &State) -> anyhow::Result<()> {
    let order: Vec<&Process> = state.processes.iter().rev().collect();
    for stage in 0..=2 {
        let group: Vec<&Process> = order.iter().copied().filter(|p| stop_stage(&p.role) == stage).collect();
        for p in &group {
            signal(p, Signal::TERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while group.iter().any(|p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in group.iter().filter(|p| alive(p)) {
            eprintln!("{} (pid {}) did not exit after SIGTERM; sending SIGKILL", p.name, p.pid);
            signal(p, Signal::KILL);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let left: Vec<String> = order
            .iter()
            .filter(|p| alive(p) || p.addr.is_some_and(answers))
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("still running or still listening after {STOP_TIMEOUT:?}: {}", left.join(", "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_file(state_path(dir));
    Ok(())
}
