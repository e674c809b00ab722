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
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { system, addr, until_stdin_closes } => {
            run::serve_child(system, addr, until_stdin_closes)
        }
        Command::Run(args) => {
            let mut plan = args.plan()?;
            if !args.attach.is_empty() {
                plan.systems = args.attach.iter().map(|(system, _)| *system).collect();
            }
            let exe = std::env::current_exe()?;
            let command = std::iter::once("rpcbench".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ");
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
