//! `rpcbench abuse`: how a well-behaved client fares while another client
//! abuses the same rpc-core server.
//!
//! - [`server`]: the server under attack, `bench.Abuse` with a cheap `Echo`, a
//!   CPU-bound `Burn` and a `Big` reply, run in a process of its own
//!   (`rpcbench abuse-server`) on `server::Config::default()`.
//! - [`victim`]: the well-behaved client, unary `Echo` calls at a fixed rate
//!   over one `client::Channel`, timed with hdrhistogram.
//! - [`attack`]: one misbehaving client per scenario, on raw sockets, each
//!   bounded in connections, calls and time.
//! - [`report`]: the Markdown table, the CSV and the verdict of each row.
//!
//! Each scenario gets a fresh server process, so memory one attack left
//! behind is not charged to the next. This process holds the attacker and
//! the victim; everything stays on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::os;
use crate::run::spawn_listening;

pub mod attack;
pub mod report;
pub mod server;
pub mod victim;

pub use report::Row;

/// One way of abusing the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// No attacker: the victim's latency with the server to itself.
    Baseline,
    /// Raw sockets pipeline `Big` calls and never read the replies.
    NoRead,
    /// One connection writes a burst of `Burn` calls, and another each time
    /// the last is answered.
    Burst,
    /// Thousands of connections opened before the victim starts, then left idle.
    Idle,
    /// Many connections each trickle a request frame a byte at a time.
    Drip,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 5] =
        [Scenario::Baseline, Scenario::NoRead, Scenario::Burst, Scenario::Idle, Scenario::Drip];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::NoRead => "no-read",
            Scenario::Burst => "burst",
            Scenario::Idle => "idle",
            Scenario::Drip => "drip",
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything `rpcbench abuse` can be told.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenarios, in the order they run.
    pub scenarios: Vec<Scenario>,
    /// The victim's calls per second.
    pub rate: u32,
    /// Victim calls made before counting starts, with the attack already on.
    pub warmup: Duration,
    /// The victim's measurement window.
    pub measure: Duration,
    /// Deadline of each victim call; a call not answered by then is an error.
    pub timeout: Duration,
    /// How the victim server is configured.
    pub server: server::Options,
    /// How hard each attacker pushes.
    pub attack: attack::Sizes,
}

impl Default for Plan {
    /// Every scenario; 200 calls/s for 1 s of warm-up and 10 s counted; the
    /// attack sizes of [`attack::Sizes::default`].
    fn default() -> Plan {
        Plan {
            scenarios: Scenario::ALL.to_vec(),
            rate: 200,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            server: server::Options::default(),
            attack: attack::Sizes::default(),
        }
    }
}

impl Plan {
    /// Roughly how long the run takes, not counting opening connections.
    pub fn estimate(&self) -> Duration {
        (self.warmup + self.measure + Duration::from_secs(1)) * self.scenarios.len() as u32
    }
}

/// Runs every scenario of `plan`, each against a fresh `exe abuse-server`,
/// calling `progress` after each row.
///
/// A scenario that cannot run (the server does not start, say) ends the run:
/// the rows after it would not be comparable.
///
/// # Errors
///
/// When a server process cannot start, or an attacker or the victim cannot
/// connect to it.
pub fn run(plan: &Plan, exe: &Path, mut progress: impl FnMut(&Row)) -> anyhow::Result<Vec<Row>> {
    // The idle attacker alone holds 10,000 sockets.
    os::raise_nofile();
    let mut rows = Vec::with_capacity(plan.scenarios.len());
    for &scenario in &plan.scenarios {
        let row = run_one(plan, exe, scenario)?;
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// One scenario: start the server, put the attack in place, measure the
/// victim, read the server's memory, stop the attack, kill the server.
fn run_one(plan: &Plan, exe: &Path, scenario: Scenario) -> anyhow::Result<Row> {
    let server = ServerProcess::spawn(exe, &plan.server)?;
    let before = os::memory(server.pid())?;
    // Long enough for the victim's last call to time out; the attack is
    // stopped well before this unless this thread panics.
    let until = Instant::now() + plan.warmup + plan.measure + plan.timeout + Duration::from_secs(30);
    let attack = attack::start(scenario, &plan.attack, server.addr, until)?;
    let victim = victim::run(server.addr, &victim::Load::of(plan));
    let after = os::memory(server.pid())?;
    let attacker = attack.stop();
    drop(server);
    Ok(Row {
        scenario,
        victim: victim?,
        rss_before_kib: before.rss_kib,
        rss_peak_kib: after.peak_kib,
        rss_end_kib: after.rss_kib,
        attacker,
    })
}

/// `exe abuse-server` in a child process; killed by PID when dropped.
struct ServerProcess {
    /// Where it listens.
    addr: std::net::SocketAddr,
    /// The child; its stdin is a pipe, so it also exits if we die.
    child: std::process::Child,
}

impl ServerProcess {
    fn spawn(exe: &Path, options: &server::Options) -> anyhow::Result<ServerProcess> {
        let args = options.to_args();
        let args: Vec<&str> =
            std::iter::once("abuse-server").chain(args.iter().map(String::as_str)).collect();
        let (child, addr) = spawn_listening(exe, &args)?;
        Ok(ServerProcess { addr, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
