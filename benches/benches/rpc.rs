//! `cargo bench`'s share of the RPC comparison: a short interleaved run of
//! every system through the same code as `rpcbench run`, with the servers
//! in `rpcbench serve` child processes.
//!
//! Without `--bench` (that is, under `cargo test --benches`) it only says so
//! and exits, so tests stay fast. For the full grid run `rpcbench run`.

use std::time::Duration;

use benches::run::{self, Plan};

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("rpc bench: skipped outside `cargo bench` (run `rpcbench run --quick` for a smoke run)");
        return Ok(());
    }
    let plan = Plan {
        payloads: vec![64, 4096],
        in_flight: vec![1, 128],
        connections: vec![1],
        timing: benches::load::Timing { warmup: Duration::from_millis(300), measure: Duration::from_secs(1) },
        rounds: 1,
        ..Plan::full()
    };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_rpcbench"));
    let command = "cargo bench -p benches --bench rpc";
    let (_, report) = run::run_and_report(&plan, run::Servers::Spawn(exe), command)?;
    println!("{report}");
    Ok(())
}
