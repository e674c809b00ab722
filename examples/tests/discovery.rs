//! The echo service found through the real ZooKeeper: providers register,
//! a consumer discovers them and balances over them with the generated stub,
//! and the `echo_server` and `echo_client` binaries do the same end to end.
//!
//! Needs ZooKeeper at `CHATROOM_ZK` (default `127.0.0.1:2181`); start it with
//! `bash scripts/services.sh up`. Each test uses a registry root of its own,
//! so runs never see each other's instances. Waits are on conditions with
//! deadlines, not on sleeps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use examples::echo::{echo_rpc::SERVICE_NAME, Echo, EchoClient, EchoReply, EchoRequest, EchoServer};
use examples::echo::{StatsReply, StatsRequest};
use rpc_core::balance::{self, Balanced};
use rpc_core::registry::{self, Instance, Registry, ZooKeeper};
use rpc_core::server::{Builder, Config, Context, Handle};
use rpc_core::Status;

mod support;
use support::{wait_until, zk};

/// Longest any test waits for something that should happen soon.
const PATIENCE: Duration = Duration::from_secs(15);

/// A registry root no other run uses.
fn unique_root(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("/chatroom-it/examples-{name}-{}-{nanos}", std::process::id())
}

/// A ZooKeeper registry under `root` with a short session.
fn registry(zk: &str, root: &str) -> ZooKeeper {
    let config = registry::Config {
        root: root.to_owned(),
        session_timeout: Duration::from_secs(4),
        operation_timeout: Duration::from_secs(10),
        ..registry::Config::default()
    };
    ZooKeeper::connect(zk, config).expect("connect to ZooKeeper")
}

/// Echoes with its server's name in front, so the test sees who answered.
struct Marked(&'static str);

impl Echo for Marked {
    fn say(&self, _ctx: &Context, request: EchoRequest) -> Result<EchoReply, Status> {
        Ok(EchoReply { payload: request.payload, text: format!("{}:{}", self.0, request.text) })
    }

    fn stats(&self, _ctx: &Context, _request: StatsRequest) -> Result<StatsReply, Status> {
        Ok(StatsReply::default())
    }
}

/// One echo server registered in ZooKeeper with a session of its own, as a
/// separate process would be.
struct Provider {
    server: Handle,
    registration: registry::Registration,
    _registry: ZooKeeper,
}

impl Provider {
    fn start(zk: &str, root: &str, name: &'static str) -> Provider {
        let server =
            Builder::new(Config::default()).service(EchoServer(Marked(name))).bind("127.0.0.1:0").unwrap();
        let registry = registry(zk, root);
        let registration =
            registry.register(SERVICE_NAME, &Instance::new(name, server.local_addr())).unwrap();
        Provider { server, registration, _registry: registry }
    }
}

/// Calls `say` `n` times; counts the replies by the server that sent them.
/// Every call must succeed.
fn spread(client: &EchoClient<Balanced>, n: usize) -> BTreeMap<String, usize> {
    let mut by_server = BTreeMap::new();
    for i in 0..n {
        let text = format!("call {i}");
        let reply = client.say(&EchoRequest { text: text.clone(), ..Default::default() }).expect("call");
        let (server, echoed) = reply.text.split_once(':').expect("marked reply");
        assert_eq!(echoed, text);
        *by_server.entry(server.to_owned()).or_insert(0) += 1;
    }
    by_server
}

#[test]
fn calls_spread_over_discovered_servers_and_follow_a_deregistration() {
    let zk = zk();
    let root = unique_root("spread");
    let one = Provider::start(&zk, &root, "one");
    let two = Provider::start(&zk, &root, "two");

    let consumer = registry(&zk, &root);
    let balanced = Balanced::discover(&consumer, SERVICE_NAME, balance::Config::default()).unwrap();
    wait_until(PATIENCE, "both servers discovered", || balanced.in_rotation().len() == 2);
    let client = EchoClient::new(balanced.clone()).with_timeout(Duration::from_secs(5));

    let by_server = spread(&client, 20);
    assert_eq!(by_server.get("one"), Some(&10), "round-robin spreads evenly: {by_server:?}");
    assert_eq!(by_server.get("two"), Some(&10), "round-robin spreads evenly: {by_server:?}");

    // Leave gracefully: deregister, let the consumer see it, then stop.
    two.registration.deregister().unwrap();
    wait_until(PATIENCE, "the consumer to drop the deregistered server", || {
        balanced.in_rotation().iter().map(|i| i.id.as_str()).eq(["one"])
    });
    two.server.shutdown();

    let by_server = spread(&client, 20);
    assert_eq!(by_server, BTreeMap::from([("one".to_owned(), 20)]));
    drop(one);
}

/// Kills the child by its PID when dropped, so a failing test leaves no
/// server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn echo_client_binary_finds_echo_server_binary() {
    let zk = zk();
    let root = unique_root("binaries");
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_echo_server"))
            .args(["--zk", &zk, "--root", &root, "--id", "bin-1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo_server"),
    );

    // The server prints its address, then a line once it is registered.
    let (lines_tx, lines) = mpsc::channel();
    let stdout = server.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("registered")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("echo_server did not register ({e}); it printed {seen:?}"),
        }
    }
    let addr = seen[0].strip_prefix("echo server listening on ").expect("address line").to_owned();
    assert_eq!(seen[1], format!("registered echo.Echo instance bin-1 in ZooKeeper at {zk}"));

    let mut client = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_echo_client"))
            .args(["--zk", &zk, "--root", &root, "--count", "4", "--text", "ping"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start echo_client"),
    );
    let mut status = None;
    wait_until(PATIENCE, "echo_client to finish", || {
        status = client.0.try_wait().unwrap();
        status.is_some()
    });
    let mut out = String::new();
    let mut err = String::new();
    client.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    client.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.unwrap().success(), "echo_client failed: {out}{err}");
    let expected = format!(
        "found echo.Echo instance bin-1 at {addr}\n\
         reply: ping #1\nreply: ping #2\nreply: ping #3\nreply: ping #4\n\
         4 of 4 calls answered\n"
    );
    assert_eq!(out, expected);
}
