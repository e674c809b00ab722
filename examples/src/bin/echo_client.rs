//! Calls an echo server: once waiting for the reply, then a few calls in
//! flight at once with callbacks.
//!
//! ```text
//! cargo run -p examples --bin echo_client -- --addr 127.0.0.1:7000 --text hello
//! ```

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use examples::echo::{EchoClient, EchoRequest, StatsRequest};
use rpc_core::client::{Channel, Config};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), rpc_core::Error> {
    let addr = flag("--addr").unwrap_or_else(|| "127.0.0.1:7000".to_owned());
    let text = flag("--text").unwrap_or_else(|| "hello".to_owned());

    // Discovery goes here. Once rpc-core's registry lands, the client takes a
    // load-balanced transport over the instances registered under
    // `echo_rpc::SERVICE_NAME` instead of a channel to `--addr`;
    // `EchoClient` works over any `Transport`, so nothing below changes.
    let channel = Channel::connect(addr.as_str(), Config::default())?;
    let client = EchoClient::new(channel).with_timeout(Duration::from_secs(5));

    let reply = client.say(&EchoRequest { text: text.clone(), payload: b"\x00\x01".to_vec() })?;
    println!("{} ({} payload bytes)", reply.text, reply.payload.len());

    // Three calls in flight from this one thread; each callback runs when its
    // reply arrives, in whatever order the server finishes them.
    let (done, replies) = mpsc::channel();
    for i in 1..=3 {
        let done = done.clone();
        let request = EchoRequest { text: format!("{text} #{i}"), ..Default::default() };
        client.say_with(&request, move |reply| done.send(reply).unwrap_or(()));
    }
    drop(done);
    for reply in replies {
        println!("{}", reply?.text);
    }

    let stats = client.stats(&StatsRequest {})?;
    println!("the server has answered {} Say calls", stats.say_calls);
    Ok(())
}

/// The value after `name` on the command line, as in `--addr 127.0.0.1:7000`.
fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    args.by_ref().find(|a| a == name)?;
    args.next()
}
