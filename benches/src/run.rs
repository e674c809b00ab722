//! The plan, the server processes and the interleaved schedule.
//!
//! Every system's server runs in a child process (`EXE serve SYSTEM
//! 127.0.0.1:0`, which prints `listening ADDR`), started once and killed by
//! PID at the end; this process is the client. Measurements are interleaved:
//! for each round, for each cell, every system in turn (A B C A B C ...), so
//! a burst of noise from the shared machine lands on all systems alike
//! instead of on one, and the rounds give a median with a spread.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::load::{self, Cell, Mode, Sample, Timing};
use crate::System;

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Systems, in interleaving order.
    pub systems: Vec<System>,
    /// Payload sizes in bytes.
    pub payloads: Vec<usize>,
    /// Calls in flight.
    pub in_flight: Vec<usize>,
    /// Connections per client.
    pub connections: Vec<usize>,
    /// Also measure a single blocking caller on one connection, per payload.
    pub blocking_rtt: bool,
    /// Warm-up and window of every measurement.
    pub timing: Timing,
    /// Times every (cell, system) is measured.
    pub rounds: usize,
}

impl Plan {
    /// The full grid of the issue: 64 B and 4 KiB; 1, 16 and 128 in flight;
    /// 1 and 4 connections; the blocking round trip; 1 s of warm-up and 3 s
    /// of measurement; 3 rounds. About 17 minutes with six systems.
    pub fn full() -> Plan {
        Plan {
            systems: System::ALL.to_vec(),
            payloads: vec![64, 4096],
            in_flight: vec![1, 16, 128],
            connections: vec![1, 4],
            blocking_rtt: true,
            timing: Timing { warmup: Duration::from_secs(1), measure: Duration::from_secs(3) },
            rounds: 3,
        }
    }

    /// A smoke run for CI: 64 B, 1 and 16 in flight, one connection, the
    /// blocking round trip, 0.1 s + 0.3 s, one round. About 10 seconds.
    pub fn quick() -> Plan {
        Plan {
            payloads: vec![64],
            in_flight: vec![1, 16],
            connections: vec![1],
            timing: Timing { warmup: Duration::from_millis(100), measure: Duration::from_millis(300) },
            rounds: 1,
            ..Plan::full()
        }
    }

    /// The cells in the order they are run: the pipelined grid, then the
    /// blocking round trips.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &payload in &self.payloads {
            for &connections in &self.connections {
                for &in_flight in &self.in_flight {
                    cells.push(Cell { payload, in_flight, connections, mode: Mode::Pipelined });
                }
            }
        }
        if self.blocking_rtt {
            for &payload in &self.payloads {
                cells.push(Cell { payload, in_flight: 1, connections: 1, mode: Mode::Blocking });
            }
        }
        cells
    }

    /// Roughly how long the run takes.
    pub fn estimate(&self) -> Duration {
        let per = self.timing.warmup + self.timing.measure;
        per * (self.cells().len() * self.systems.len() * self.rounds) as u32
    }
}

/// One measurement of one system on one cell in one round.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Which round (from 1).
    pub round: usize,
    /// The system measured.
    pub system: System,
    /// The workload.
    pub cell: Cell,
    /// What was found.
    pub sample: Sample,
}

/// A server running in a child process; killed by PID when dropped.
pub struct ServerProcess {
    /// Which server.
    system: System,
    /// Where it listens.
    addr: SocketAddr,
    /// The child; its stdin is a pipe, so it also exits if we die.
    child: Child,
}

impl ServerProcess {
    /// Starts `exe serve SYSTEM 127.0.0.1:0 --until-stdin-closes` and waits for its address.
    ///
    /// # Errors
    ///
    /// When the process cannot start or does not report an address.
    pub fn spawn(exe: &Path, system: System) -> anyhow::Result<ServerProcess> {
        let (child, addr) =
            spawn_listening(exe, &["serve", system.name(), "127.0.0.1:0", "--until-stdin-closes"])?;
        Ok(ServerProcess { system, addr, child })
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `exe ARGS...` with stdin and stdout piped and waits for the line
/// `listening ADDR` on its stdout. The child is killed if it says anything else.
///
/// # Errors
///
/// When the process cannot start or does not report an address.
pub fn spawn_listening(exe: &Path, args: &[&str]) -> anyhow::Result<(Child, SocketAddr)> {
    let what = format!("{} {}", exe.display(), args.join(" "));
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    match read.ok().and_then(|_| line.trim().strip_prefix("listening ")?.parse().ok()) {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what} did not report its address (said {line:?})")
        }
    }
}

/// Ends this process when its stdin closes, so that a server started by a
/// parent that dies without killing it does not outlive it.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// Prints the line `listening ADDR` that [`spawn_listening`] waits for.
pub fn say_listening(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {addr}");
    let _ = out.flush();
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the servers under test come from.
#[derive(Debug, Clone, Copy)]
pub enum Servers<'a> {
    /// Start `EXE serve SYSTEM ...` for each of the plan's systems and kill
    /// them at the end.
    Spawn(&'a Path),
    /// Use servers that are already running (say, under a profiler); the
    /// plan's systems are ignored.
    Attach(&'a [(System, SocketAddr)]),
}

/// Runs `plan` against `servers`, calling `progress` after each measurement.
///
/// A measurement that cannot run (its client cannot connect, say) is kept
/// as a failed sample, and the run goes on.
///
/// # Errors
///
/// When a server process cannot start.
pub fn run(
    plan: &Plan,
    servers: Servers<'_>,
    mut progress: impl FnMut(&Measurement),
) -> anyhow::Result<Vec<Measurement>> {
    let (targets, children) = match servers {
        Servers::Spawn(exe) => {
            let children = plan
                .systems
                .iter()
                .map(|&system| ServerProcess::spawn(exe, system))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (children.iter().map(|c| (c.system, c.addr)).collect(), children)
        }
        Servers::Attach(targets) => (targets.to_vec(), Vec::new()),
    };
    let mut measurements = Vec::new();
    for round in 1..=plan.rounds {
        for cell in plan.cells() {
            for &(system, addr) in &targets {
                let sample =
                    load::drive(system, addr, &cell, &plan.timing).unwrap_or_else(|e| Sample::failed(&e));
                let m = Measurement { round, system, cell, sample };
                progress(&m);
                measurements.push(m);
                // Let the last connections close before the next system starts.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    drop(children);
    Ok(measurements)
}

/// The `serve` side: runs `system` on `addr` and prints `listening ADDR`
/// once it accepts. With `until_stdin_closes`, the process exits when its
/// stdin closes, so a server outlives no parent that dies without killing it.
///
/// # Errors
///
/// When the server cannot start.
pub fn serve_child(system: System, addr: SocketAddr, until_stdin_closes: bool) -> anyhow::Result<()> {
    if until_stdin_closes {
        exit_when_stdin_closes();
    }
    crate::servers::serve(system, addr, say_listening)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_the_grid_then_the_round_trips() {
        let plan = Plan::full();
        let cells = plan.cells();
        assert_eq!(cells.len(), 2 * 3 * 2 + 2);
        assert!(cells[..12].iter().all(|c| c.mode == Mode::Pipelined));
        assert!(cells[12..].iter().all(|c| c.mode == Mode::Blocking && c.in_flight == 1));
        assert!(plan.estimate() > Duration::from_secs(600));
        assert!(Plan::quick().estimate() < Duration::from_secs(20));
    }
}

/// Runs `plan` with progress lines on stderr and returns the measurements
/// and the Markdown report; `command` is shown in the report as the way to
/// reproduce it.
///
/// # Errors
///
/// As [`run`].
pub fn run_and_report(
    plan: &Plan,
    servers: Servers<'_>,
    command: &str,
) -> anyhow::Result<(Vec<Measurement>, String)> {
    let load_before = load_average();
    eprintln!(
        "rpcbench: {} systems x {} cells x {} rounds, about {} s",
        plan.systems.len(),
        plan.cells().len(),
        plan.rounds,
        plan.estimate().as_secs()
    );
    let measurements = run(plan, servers, |m| {
        let x = &m.sample;
        eprintln!(
            "round {} {:>5} B x{:<3} in flight x{} conns {:<9} {:<16} {:>9.0} calls/s  p50 {:>8.1} µs  p99 {:>8.1} µs{}",
            m.round,
            m.cell.payload,
            m.cell.in_flight,
            m.cell.connections,
            format!("{:?}", m.cell.mode),
            m.system.name(),
            x.calls_per_sec(),
            x.latency_us(0.5),
            x.latency_us(0.99),
            x.first_error.as_deref().map(|e| format!("  {} errors: {e}", x.errors)).unwrap_or_default()
        );
    })?;
    let meta =
        crate::report::Meta { load_before, load_after: load_average(), ..crate::report::Meta::now(command) };
    let report = crate::report::markdown(&meta, plan, &crate::report::summarize(&measurements));
    Ok((measurements, report))
}

/// The first three fields of `/proc/loadavg`, or "unknown".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Today's UTC date as YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod date_tests {
    use super::civil_from_days;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
