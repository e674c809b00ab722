//! A process's client connections share a few event-loop threads: a thousand
//! connections do not start a thousand threads.
//!
//! A test binary of its own: it counts the process's threads in
//! `/proc/self/task`, which other tests running beside it would disturb.

use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::server::{Builder, Config};

#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use support::Echo;

const CONNECTIONS: usize = 1_000;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Makes room for both ends of every connection (the client holds two descriptors
/// per socket): raises the soft open-files limit up to the hard one, and names the fix
/// when even that is too low.
fn check_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let needed = (CONNECTIONS * 4 + 256) as u64;
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < needed) {
        limit.current = Some(limit.maximum.map_or(needed, |hard| hard.min(needed)));
        setrlimit(Resource::Nofile, limit).expect("raises the soft open-files limit");
    }
    if let Some(soft) = limit.current {
        assert!(
            soft >= needed,
            "the open-files limit ({soft}) is below {needed}: run `ulimit -n {needed}` first"
        );
    }
}

#[test]
fn a_thousand_connections_share_a_handful_of_threads_and_all_of_them_serve_calls() {
    check_open_files_limit();
    let config = Config { workers: 2, ..Config::default() };
    let server = Builder::new(config).service(Echo).bind("127.0.0.1:0").unwrap();
    let before = threads();

    let channels: Vec<Channel> = (0..CONNECTIONS)
        .map(|i| {
            Channel::connect(server.local_addr(), ClientConfig::default())
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    for (i, channel) in channels.iter().enumerate() {
        let body = i.to_be_bytes();
        let reply =
            channel.call_raw("test.Echo", "Say", &body, None).unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(&reply[..], &body[..], "the answer on connection {i}");
    }
    let after = threads();
    assert!(
        after - before < 20,
        "{CONNECTIONS} client connections took {} threads ({before} before, {after} after)",
        after - before
    );
    assert!(channels.iter().all(Channel::is_connected));
}
