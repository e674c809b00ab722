//! Finds the echo servers registered in ZooKeeper and spreads calls over
//! them through a load-balanced transport.
//!
//! ```text
//! cargo run -p examples --bin echo_client -- [--zk 127.0.0.1:2181] [--root /rpc-core] [--count 10] [--text hello]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use examples::echo::{echo_rpc::SERVICE_NAME, EchoClient, EchoRequest};
use rpc_core::balance::{self, Balanced};
use rpc_core::registry::{self, ZooKeeper};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let zk =
        flag("--zk").or_else(|| std::env::var("CHATROOM_ZK").ok()).unwrap_or_else(|| "127.0.0.1:2181".into());
    let count: usize = flag("--count").map_or(Ok(10), |n| n.parse())?;
    let text = flag("--text").unwrap_or_else(|| "hello".to_owned());
    let mut config = registry::Config::default();
    config.root = flag("--root").unwrap_or(config.root);

    let registry = ZooKeeper::connect(&zk, config)?;
    let balanced = Balanced::discover(&registry, SERVICE_NAME, balance::Config::default())?;
    let instances = balanced.in_rotation();
    if instances.is_empty() {
        return Err(format!("no instance of {SERVICE_NAME} is registered in ZooKeeper at {zk}").into());
    }
    for instance in &instances {
        println!("found {SERVICE_NAME} instance {} at {}", instance.id, instance.addr);
    }

    // `EchoClient` works over any `Transport`: here each call goes to the
    // next instance in turn.
    let client = EchoClient::new(balanced).with_timeout(Duration::from_secs(5));
    let mut answered = 0;
    for i in 1..=count {
        match client.say(&EchoRequest { text: format!("{text} #{i}"), ..Default::default() }) {
            Ok(reply) => {
                answered += 1;
                println!("reply: {}", reply.text);
            }
            Err(e) => println!("call {i} failed: {e}"),
        }
    }
    println!("{answered} of {count} calls answered");
    if answered < count {
        return Err("some calls failed".into());
    }
    Ok(())
}

/// The value after `name` on the command line, as in `--count 10`.
fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    args.by_ref().find(|a| a == name)?;
    args.next()
}
