//! What the examples' integration tests share: the ZooKeeper to use and waiting for a
//! condition with a deadline. Each test file includes it with `mod support;`.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The ZooKeeper connect string; fails the test, naming the fix, if nothing
/// answers there.
pub fn zk() -> String {
    let zk = std::env::var("CHATROOM_ZK").unwrap_or_else(|_| "127.0.0.1:2181".to_owned());
    let reachable = zk
        .split('/')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|host| host.to_socket_addrs().ok()?.next())
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "ZooKeeper is not reachable at {zk} (set CHATROOM_ZK to change it); \
         start it with `bash scripts/services.sh up`"
    );
    zk
}

/// Polls `done` until it holds, failing the test if `timeout` passes first.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
