//! `rpcbench`: rpc-core's echo throughput and latency, side by side with
//! tonic, tarpc and two frameworkless mio servers.
//!
//! `rpcbench run` starts each system's server as a child process of this
//! same binary (`rpcbench serve SYSTEM ADDR`), drives them all from this
//! process with the interleaved schedule of `benches::run`, prints a
//! Markdown report on stdout and progress on stderr, and kills the servers
//! by PID at the end.
//!
//! ```text
//! rpcbench run                      # the full grid, about 17 minutes
//! rpcbench run --quick              # a 10-second smoke run
//! rpcbench run --systems rpc-core,bare-pool --payloads 64 --in-flight 128 --connections 1
//! rpcbench serve rpc-core 127.0.0.1:7100 &   # e.g. under valgrind or perf
//! rpcbench run --attach rpc-core=127.0.0.1:7100 --payloads 64 --in-flight 128 --connections 1
//! rpcbench abuse                    # the victim's latency under five attacks, about 2 minutes
//! rpcbench abuse --scenarios baseline,burst --burn-heavy --duration 5
//! ```
//!
//! `rpcbench abuse` starts a fresh `rpcbench abuse-server` child per
//! scenario (see `benches::abuse`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use benches::abuse::{self, Scenario};
use benches::run::{self, Plan, Servers};
use benches::System;
use clap::{Args, Parser, Subcommand};

/// Echo RPC benchmark of rpc-core against tonic, tarpc and mio references.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the benchmark and prints a Markdown report.
    Run(RunArgs),
    /// Serves one system's echo until killed (`run` starts these itself).
    Serve {
        /// Which server.
        system: System,
        /// Where to listen; port 0 picks a free one. Prints `listening ADDR`.
        addr: SocketAddr,
        /// Exit when stdin closes.
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// Measures a well-behaved client's latency, and the server's memory,
    /// while another client abuses the server; prints a Markdown table.
    Abuse(AbuseArgs),
    /// Serves `bench.Abuse` on 127.0.0.1 until stdin closes, printing
    /// `listening ADDR` (`abuse` starts these itself).
    #[command(hide = true)]
    AbuseServer(ServerArgs),
}

/// Options of `abuse`; the defaults are `benches::abuse::Plan::default()`.
#[derive(Args)]
struct AbuseArgs {
    /// Scenarios to run, in order [default: all].
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<Scenario>>,
    /// The victim's Echo calls per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of victim calls before counting, with the attack on.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds of victim calls counted per scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Deadline of each victim call, in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    #[command(flatten)]
    server: ServerArgs,
    /// Connections of the no-read attacker.
    #[arg(long, default_value_t = 3)]
    no_read_conns: usize,
    /// Big calls the no-read attacker writes, over all its connections.
    #[arg(long, default_value_t = 1500)]
    no_read_calls: usize,
    /// Size of each Big reply, in KiB.
    #[arg(long, default_value_t = 256)]
    big_kib: u32,
    /// Burn calls per burst.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Idle connections.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Dripping connections.
    #[arg(long, default_value_t = 1000)]
    drip: usize,
    /// Milliseconds between two bytes of a dripping connection.
    #[arg(long, default_value_t = 100)]
    drip_interval_ms: u64,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write one CSV line per scenario to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// How the `bench.Abuse` server is set up.
#[derive(Args)]
struct ServerArgs {
    /// The service declares Burn heavy (`Service::lanes`).
    #[arg(long)]
    burn_heavy: bool,
    /// Handler threads [default: that of `server::Config::default()`].
    #[arg(long)]
    workers: Option<usize>,
    /// Threads of the heavy lane [default: that of `server::Config::default()`].
    #[arg(long)]
    heavy_workers: Option<usize>,
}

impl ServerArgs {
    fn options(&self) -> abuse::server::Options {
        abuse::server::Options {
            burn_heavy: self.burn_heavy,
            workers: self.workers,
            heavy_workers: self.heavy_workers,
        }
    }
}

impl AbuseArgs {
    fn plan(&self) -> anyhow::Result<abuse::Plan> {
        let seconds = |s: f64, what: &str| {
            Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("--{what} {s}: {e}"))
        };
        let plan = abuse::Plan {
            scenarios: self.scenarios.clone().unwrap_or_else(|| Scenario::ALL.to_vec()),
            rate: self.rate,
            warmup: seconds(self.warmup, "warmup")?,
            measure: seconds(self.duration, "duration")?,
            timeout: seconds(self.timeout, "timeout")?,
            server: self.server.options(),
            attack: abuse::attack::Sizes {
                no_read_conns: self.no_read_conns,
                no_read_calls: self.no_read_calls,
                big_kib: self.big_kib,
                burst: self.burst,
                idle: self.idle,
                drip: self.drip,
                drip_interval: Duration::from_millis(self.drip_interval_ms),
                ..abuse::attack::Sizes::default()
            },
        };
        anyhow::ensure!(plan.rate > 0, "--rate must be positive");
        anyhow::ensure!(!plan.measure.is_zero(), "--duration must be positive");
        anyhow::ensure!(
            plan.attack.big_kib <= abuse::server::MAX_BIG_KIB,
            "--big-kib is at most {}",
            abuse::server::MAX_BIG_KIB
        );
        Ok(plan)
    }
}

/// Options of `run`. Unset ones come from the full plan, or the quick one
/// with `--quick`.
#[derive(Args)]
struct RunArgs {
    /// A short smoke run: 64 B, 1 and 16 in flight, 1 connection, 0.1 s + 0.3 s, 1 round.
    #[arg(long)]
    quick: bool,
    /// Systems to measure, in interleaving order [default: all].
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<System>>,
    /// Payload sizes in bytes [default: 64,4096].
    #[arg(long, value_delimiter = ',')]
    payloads: Option<Vec<usize>>,
    /// Calls in flight [default: 1,16,128].
    #[arg(long, value_delimiter = ',')]
    in_flight: Option<Vec<usize>>,
    /// Connections per client [default: 1,4].
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Seconds of warm-up per measurement [default: 1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds counted per measurement [default: 3].
    #[arg(long)]
    duration: Option<f64>,
    /// Rounds of the interleaved schedule [default: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Skip the single blocking caller's round trip.
    #[arg(long)]
    no_rtt: bool,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every measurement as CSV to this file.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Drive an already running server, as SYSTEM=ADDR (repeatable), instead
    /// of starting them; for profiling a server under perf or valgrind.
    #[arg(long, value_parser = parse_attach)]
    attach: Vec<(System, SocketAddr)>,
}

fn parse_attach(s: &str) -> Result<(System, SocketAddr), String> {
    let (system, addr) = s.split_once('=').ok_or("expected SYSTEM=ADDR")?;
    let system = System::from_name(system).ok_or_else(|| format!("unknown system '{system}'"))?;
    Ok((system, addr.parse().map_err(|e| format!("bad address '{addr}': {e}"))?))
}

impl RunArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        let mut plan = if self.quick { Plan::quick() } else { Plan::full() };
        if let Some(v) = &self.systems {
            plan.systems = v.clone();
        }
        if let Some(v) = &self.payloads {
            plan.payloads = v.clone();
        }
        if let Some(v) = &self.in_flight {
            plan.in_flight = v.clone();
        }
        if let Some(v) = &self.connections {
            plan.connections = v.clone();
        }
        if let Some(s) = self.warmup {
            plan.timing.warmup = Duration::try_from_secs_f64(s)?;
        }
        if let Some(s) = self.duration {
            plan.timing.measure = Duration::try_from_secs_f64(s)?;
        }
        if let Some(r) = self.rounds {
            plan.rounds = r;
        }
        plan.blocking_rtt &= !self.no_rtt;
        anyhow::ensure!(plan.rounds > 0, "--rounds must be at least 1");
        anyhow::ensure!(!plan.timing.measure.is_zero(), "--duration must be positive");
        anyhow::ensure!(
            plan.in_flight.iter().chain(&plan.connections).all(|&n| n > 0),
            "--in-flight and --connections must be positive"
        );
        Ok(plan)
    }
}

/// The command line as typed, for the report.
fn command_line() -> String {
    std::iter::once("rpcbench".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::AbuseServer(args) => {
            run::exit_when_stdin_closes();
            abuse::server::serve(&args.options(), ([127, 0, 0, 1], 0).into(), run::say_listening)
        }
        Command::Abuse(args) => {
            let plan = args.plan()?;
            let mut meta = abuse::report::Meta::now(&command_line());
            eprintln!(
                "rpcbench abuse: {} scenarios, about {} s",
                plan.scenarios.len(),
                plan.estimate().as_secs()
            );
            let rows = abuse::run(&plan, &std::env::current_exe()?, |row| {
                let v = &row.victim;
                eprintln!(
                    "{:<8}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.1} ms  {}/{} ok  errors {}  late start ≤ {:.1} ms  peak RSS {} MiB  attacker: {}",
                    row.scenario.name(),
                    v.latency_ms(0.5),
                    v.latency_ms(0.99),
                    v.max_ms(),
                    v.completed,
                    v.expected,
                    v.errors_summary(),
                    v.max_start_lag.as_secs_f64() * 1000.0,
                    row.rss_peak_kib / 1024,
                    row.attacker
                );
            })?;
            meta.load_after = run::load_average();
            let report = abuse::report::markdown(&meta, &plan, &rows);
            println!("{report}");
            if let Some(path) = &args.out {
                std::fs::write(path, &report)?;
            }
            if let Some(path) = &args.csv {
                std::fs::write(path, abuse::report::csv(&rows))?;
            }
            Ok(())
        }
        Command::Serve { system, addr, until_stdin_closes } => {
            run::serve_child(system, addr, until_stdin_closes)
        }
        Command::Run(args) => {
            let mut plan = args.plan()?;
            if !args.attach.is_empty() {
                plan.systems = args.attach.iter().map(|(system, _)| *system).collect();
            }
            let exe = std::env::current_exe()?;
            let command = command_line();
            let servers =
                if args.attach.is_empty() { Servers::Spawn(&exe) } else { Servers::Attach(&args.attach) };
            let (measurements, report) = run::run_and_report(&plan, servers, &command)?;
            println!("{report}");
            if let Some(path) = &args.out {
                std::fs::write(path, &report)?;
            }
            if let Some(path) = &args.samples {
                std::fs::write(path, benches::report::csv(&measurements))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abuse_defaults_are_the_plan_defaults() {
        let Command::Abuse(args) = Cli::try_parse_from(["rpcbench", "abuse"]).unwrap().command else {
            panic!("not parsed as abuse");
        };
        assert_eq!(format!("{:?}", args.plan().unwrap()), format!("{:?}", abuse::Plan::default()));
    }
}
