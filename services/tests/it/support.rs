//! What the suites share: where the servers are, fresh databases and key prefixes, free
//! ports, and waiting for a condition (or a process's exit) with a deadline.
//!
//! The one test-support module of the crate: a test binary of its own includes it with
//! `#[path = "it/support.rs"] mod support;`.

use std::net::TcpListener;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

/// Used when `CHATROOM_MYSQL_URL` is not set.
pub const DEFAULT_MYSQL_URL: &str = "mysql://chatroom:chatroom@127.0.0.1:3306/chatroom_test";
/// Used when `CHATROOM_REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Used when `CHATROOM_ZK` is not set.
pub const DEFAULT_ZK: &str = "127.0.0.1:2181";

/// The MySQL URL to test against.
pub fn mysql_url() -> String {
    std::env::var("CHATROOM_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.to_owned())
}

/// The Redis URL to test against.
pub fn redis_url() -> String {
    std::env::var("CHATROOM_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// The ZooKeeper ensemble to test against.
pub fn zk() -> String {
    std::env::var("CHATROOM_ZK").unwrap_or_else(|_| DEFAULT_ZK.to_owned())
}

/// Fails the test because a server it needs is not there.
pub fn unreachable(what: &str, url: &str, error: &dyn std::fmt::Display) -> ! {
    let url = services::store::mysql::redact(url);
    panic!(
        "{what} at {url} is unreachable or refused the connection: {error}\n\
         Start the test services with `bash scripts/services.sh up` \
         (or point CHATROOM_MYSQL_URL / CHATROOM_REDIS_URL at running ones)."
    )
}

/// A name no other test run uses: `{base}_{random hex}`.
pub fn unique_name(base: &str) -> String {
    format!("{base}_{:016x}", rand::random::<u64>())
}

/// `url` with its database (the path) replaced by `database`; the query string is kept.
pub fn with_database(url: &str, database: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = base[after_scheme..].find('/').map_or(base.len(), |i| after_scheme + i);
    format!("{}/{database}{query}", &base[..host_end])
}

/// Drops the test database `database` from the MySQL server at [`mysql_url`]; a failure
/// is only reported, so that it does not hide the test's own outcome.
pub fn drop_database(database: &str) {
    let url = with_database(&mysql_url(), "");
    let dropped = mysql::Conn::new(url.as_str())
        .and_then(|mut conn| conn.query_drop(format!("DROP DATABASE IF EXISTS `{database}`")));
    if let Err(e) = dropped {
        eprintln!("could not drop test database {database}: {e}");
    }
}

/// The keys under `prefix` in the Redis at `url`.
pub fn redis_keys(url: &str, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut conn)
}

/// Deletes every key under the test's `prefix` from the Redis at `url`; a failure is
/// only reported, so that it does not hide the test's own outcome.
pub fn delete_redis_keys(url: &str, prefix: &str) {
    let deleted = redis_keys(url, prefix).and_then(|keys| {
        if !keys.is_empty() {
            let mut conn = redis::Client::open(url)?.get_connection()?;
            redis::cmd("DEL").arg(&keys).query::<()>(&mut conn)?;
        }
        Ok(())
    });
    if let Err(e) = deleted {
        eprintln!("could not delete test keys {prefix}*: {e}");
    }
}

/// A port on 127.0.0.1 that was free when asked (another process may take it before the
/// caller binds it; the tests that need one start their own servers right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `done` every few milliseconds until it is true, failing the test if `limit`
/// passes first. Returns how long it took.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit, failing the test if `limit` passes first, and returns its
/// exit status. `what` names the process in the failure.
pub fn wait_for_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let mut status = None;
    wait_until(limit, &format!("{what} exits"), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.expect("the child exited")
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("mysql://u:p@127.0.0.1:3306/chatroom_test", "x_1"),
        "mysql://u:p@127.0.0.1:3306/x_1"
    );
    assert_eq!(
        with_database("mysql://u:p@h:1/db?prefer_socket=false", "y"),
        "mysql://u:p@h:1/y?prefer_socket=false"
    );
    assert_eq!(with_database("mysql://h:1", "z"), "mysql://h:1/z");
}
