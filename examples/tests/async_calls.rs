//! The generated `<rpc>_async` methods from async code: a tokio runtime with
//! 10,000 calls in flight at once on one connection, and the same futures on
//! another executor (`futures::executor`), so nothing ties them to tokio.

use std::collections::HashSet;
use std::time::Duration;

use examples::echo::{EchoClient, EchoRequest, EchoServer, StatsRequest};
use examples::EchoHandler;
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::server::{Builder, Config, Handle};
use rpc_core::Error;

/// Longest any call may take on a loaded machine; generous on purpose.
const PATIENCE: Duration = Duration::from_secs(60);

/// An echo server that lets one connection have 10,000 calls in flight (the
/// default bound is 1,024, past which calls are refused, not run).
fn serve() -> Handle {
    let config = Config { max_in_flight_per_connection: 16_384, ..Config::default() };
    Builder::new(config).service(EchoServer(EchoHandler::default())).bind("127.0.0.1:0").unwrap()
}

fn client(server: &Handle) -> EchoClient {
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    EchoClient::new(channel).with_timeout(PATIENCE)
}

#[test]
fn ten_thousand_concurrent_calls_from_a_tokio_runtime_each_get_their_own_answer() {
    const CALLS: usize = 10_000;
    let server = serve();
    let client = client(&server);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let texts = runtime.block_on(async {
        // Every call is sent before any is awaited: all 10,000 are in flight together.
        let futures: Vec<_> = (0..CALLS)
            .map(|i| client.say_async(&EchoRequest { text: format!("call {i}"), payload: vec![i as u8; 16] }))
            .collect();
        let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut texts = Vec::with_capacity(CALLS);
        for (i, task) in tasks.into_iter().enumerate() {
            let reply = task.await.expect("the task ran").expect("the call succeeded");
            assert_eq!(reply.text, format!("call {i}"), "each future gets its own call's answer");
            assert_eq!(reply.payload, vec![i as u8; 16]);
            texts.push(reply.text);
        }
        texts
    });
    assert_eq!(texts.iter().collect::<HashSet<_>>().len(), CALLS);

    // The server ran each call once.
    let stats = client.stats(&StatsRequest {}).unwrap();
    assert_eq!(stats.say_calls, CALLS as u64);
    drop(runtime);
    server.shutdown();
}

#[test]
fn async_calls_run_on_another_executor_and_report_failures() {
    let server = serve();
    let client = client(&server);
    let reply = futures::executor::block_on(
        client.say_async(&EchoRequest { text: "plain".into(), ..Default::default() }),
    )
    .unwrap();
    assert_eq!(reply.text, "plain");

    // A failure arrives through the future as it would through a blocking call.
    let addr = server.local_addr();
    server.shutdown();
    let lost = futures::executor::block_on(client.say_async(&EchoRequest::default())).unwrap_err();
    assert!(
        matches!(lost, Error::Connect { .. } | Error::ConnectionLost { .. } | Error::NotRun { .. }),
        "a call to the stopped server {addr} fails with a connection error, got {lost:?}"
    );
}
