//! Serves the echo service and registers it in ZooKeeper until the process
//! is stopped.
//!
//! ```text
//! cargo run -p examples --bin echo_server -- [--addr 127.0.0.1:0] [--zk 127.0.0.1:2181] [--root /rpc-core] [--id NAME]
//! ```

use std::process::ExitCode;

use examples::echo::{echo_rpc::SERVICE_NAME, EchoServer};
use examples::EchoHandler;
use rpc_core::registry::{self, Instance, Registry, ZooKeeper};
use rpc_core::server::{Builder, Config};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr so stdout carries only the lines below.
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), rpc_core::Error> {
    let addr = flag("--addr").unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let server =
        Builder::new(Config::default()).service(EchoServer(EchoHandler::default())).bind(addr.as_str())?;
    let addr = server.local_addr();
    println!("echo server listening on {addr}");

    let zk =
        flag("--zk").or_else(|| std::env::var("CHATROOM_ZK").ok()).unwrap_or_else(|| "127.0.0.1:2181".into());
    let mut config = registry::Config::default();
    config.root = flag("--root").unwrap_or(config.root);
    let registry = ZooKeeper::connect(&zk, config)?;
    let id = flag("--id").unwrap_or_else(|| addr.to_string());
    // The registration is an ephemeral znode: it must live as long as the
    // server, and goes with the ZooKeeper session when the process dies.
    let _registration = registry.register(SERVICE_NAME, &Instance::new(id.as_str(), addr))?;
    println!("registered {SERVICE_NAME} instance {id} in ZooKeeper at {zk}");

    server.wait();
    Ok(())
}

/// The value after `name` on the command line, as in `--addr 127.0.0.1:7000`.
fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    args.by_ref().find(|a| a == name)?;
    args.next()
}
