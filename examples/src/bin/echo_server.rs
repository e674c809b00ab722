//! Serves the echo service until the process is stopped.
//!
//! ```text
//! cargo run -p examples --bin echo_server -- --addr 127.0.0.1:7000
//! ```

use std::process::ExitCode;

use examples::echo::EchoServer;
use examples::EchoHandler;
use rpc_core::server::{Builder, Config};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), rpc_core::Error> {
    let addr = flag("--addr").unwrap_or_else(|| "127.0.0.1:7000".to_owned());
    let server =
        Builder::new(Config::default()).service(EchoServer(EchoHandler::default())).bind(addr.as_str())?;
    println!("echo server listening on {}", server.local_addr());

    // Discovery goes here. Once rpc-core's registry lands, this instance
    // registers under `echo_rpc::SERVICE_NAME` with `server.local_addr()`, and
    // clients find it through ZooKeeper instead of `--addr`. The registration
    // is an ephemeral znode, so it must live as long as the server does.

    server.wait();
    Ok(())
}

/// The value after `name` on the command line, as in `--addr 127.0.0.1:7000`.
fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    args.by_ref().find(|a| a == name)?;
    args.next()
}
