//! Balancing over real servers: over instances discovered in a real
//! ZooKeeper, spreading, providers leaving (gracefully or not), consistent
//! hashing and a ZooKeeper restart under running consumers and providers;
//! over instances in the in-process registry, instances that stall (workers
//! stuck, or the whole process stopped, modelled by a paused forwarder) leave
//! rotation and come back only when they answer a ping, calls fail at once
//! when no instance is left, the per-instance cap, and a handler's deadline
//! kept by the balanced calls it starts, retries on a client loop included.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rpc_core::balance::{Balanced, Config};
use rpc_core::client::Transport;
use rpc_core::registry::{Instance, Memory, Registration, Registry};
use rpc_core::Error;

use crate::support::{
    ids, registry, shared_zk, unique_root, wait_until, Cleanup, Load, Local, Pausable, PrivateZk, Provider,
    Raw, SESSION,
};

const SERVICE: &str = "test.Named";

fn who(b: &Balanced) -> String {
    let reply = b.call_raw(SERVICE, "Who", b"", Some(Duration::from_secs(5))).unwrap();
    String::from_utf8(reply.to_vec()).unwrap()
}

/// Waits until the balancer's rotation holds exactly `expected` (sorted ids);
/// returns how long that took.
fn wait_for_rotation(b: &Balanced, expected: &[&str]) -> Duration {
    let started = Instant::now();
    wait_until(Duration::from_secs(15), &format!("rotation {expected:?}"), || {
        ids(&b.in_rotation()) == expected
    });
    started.elapsed()
}

#[test]
fn calls_spread_over_two_providers_and_stop_going_to_one_that_deregisters() {
    let zk = shared_zk();
    let root = unique_root("spread");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let p1 = Provider::start(&zk, &root, SERVICE, "p1");
    let mut p2 = Provider::start(&zk, &root, SERVICE, "p2");
    let consumer = registry(&zk, &root);
    let balanced = Balanced::discover(&consumer, SERVICE, Config::default()).unwrap();
    wait_for_rotation(&balanced, &["p1", "p2"]);

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        *counts.entry(who(&balanced)).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([("p1".to_owned(), 100), ("p2".to_owned(), 100)]), "round robin");
    assert_eq!((p1.calls(), p2.calls()), (100, 100), "counted by the servers");

    // p2 leaves gracefully under load: deregister, let consumers see it, stop.
    let load = Load::start(&balanced, 4);
    load.wait_for_more(100, "calls before p2 leaves");
    p2.registration.take().unwrap().deregister().unwrap();
    let took = wait_for_rotation(&balanced, &["p1"]);
    assert!(took < SESSION, "p2 left rotation after {took:?}");
    // Calls that picked p2 just before it left finish before the server stops.
    load.wait_for_more(50, "calls after p2 left rotation");
    p2.server.take().unwrap().shutdown();
    let p2_calls = p2.calls();
    load.wait_for_more(200, "calls after p2 stopped");
    let (answers, failures) = load.stop();
    assert!(failures.is_empty(), "no call failed: {failures:?}");
    assert_eq!(p2.calls(), p2_calls);
    assert!(answers.iter().filter(|a| *a == "p2").count() > 0, "p2 served its share before leaving");
    assert!(answers.iter().rev().take(200).all(|a| a == "p1"), "only p1 after p2 stopped");
}

#[test]
fn a_provider_whose_socket_closed_leaves_rotation_though_its_znode_stays() {
    let zk = shared_zk();
    let root = unique_root("socket");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let p1 = Provider::start(&zk, &root, SERVICE, "p1");
    let mut p2 = Provider::start(&zk, &root, SERVICE, "p2");
    let consumer = registry(&zk, &root);
    let balanced = Balanced::discover(&consumer, SERVICE, Config::default()).unwrap();
    wait_for_rotation(&balanced, &["p1", "p2"]);

    let load = Load::start(&balanced, 4);
    load.wait_for_more(100, "calls to both");
    assert!(p1.calls() > 0 && p2.calls() > 0);

    // The server stops but its registration (and session) stay: only the
    // failed connections tell the consumer.
    p2.server.take().unwrap().shutdown();
    let took = wait_for_rotation(&balanced, &["p1"]);
    assert!(took < SESSION, "p2 left rotation after {took:?}");
    assert_eq!(ids(&consumer.instances(SERVICE).unwrap()), ["p1", "p2"], "p2's znode is still there");
    let p2_calls = p2.calls();
    load.wait_for_more(300, "calls after p2 stopped");
    assert_eq!(ids(&balanced.in_rotation()), ["p1"], "p2 stays out while its probes fail");
    let (answers, failures) = load.stop();
    assert_eq!(p2.calls(), p2_calls);
    assert!(answers.iter().rev().take(300).all(|a| a == "p1"));

    // Nothing that could have been retried reached a caller. A call written
    // to p2 in the instant its server closed the connection may be lost with
    // it; whether it ran is unknown, so it is not retried.
    for e in &failures {
        assert!(!e.is_retryable_elsewhere(), "a retryable failure reached the caller: {e}");
        assert!(matches!(e, Error::ConnectionLost { .. }), "{e}");
    }
    assert!(failures.len() <= 4, "at most one per calling thread: {failures:?}");
    if !failures.is_empty() {
        eprintln!("calls in flight when p2's server closed: {failures:?}");
    }
}

#[test]
fn consistent_hash_keeps_keys_and_moves_only_a_leavers_keys() {
    let zk = shared_zk();
    let root = unique_root("hash");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let mut providers: HashMap<&str, Provider> =
        ["a", "b", "c"].into_iter().map(|n| (n, Provider::start(&zk, &root, SERVICE, n))).collect();
    let consumer = registry(&zk, &root);
    // Only the registry moves keys here: a call slowed by a loaded machine must not
    // look like a stalled instance.
    let config = Config { stall_floor: Duration::MAX, ..Config::default() };
    let balanced = Balanced::discover(&consumer, SERVICE, config).unwrap();
    wait_for_rotation(&balanced, &["a", "b", "c"]);

    let owner = |key: u64| {
        let reply = balanced.with_key(key).call_raw(SERVICE, "Who", b"", None).unwrap();
        String::from_utf8(reply.to_vec()).unwrap()
    };
    let before: Vec<String> = (0..300).map(owner).collect();
    assert_eq!(before, (0..300).map(owner).collect::<Vec<_>>(), "a key keeps its instance");
    for id in ["a", "b", "c"] {
        assert!(before.iter().any(|o| o == id), "{id} owns some keys");
    }

    let mut b = providers.remove("b").unwrap();
    b.registration.take().unwrap().deregister().unwrap();
    wait_for_rotation(&balanced, &["a", "c"]);
    let after: Vec<String> = (0..300).map(owner).collect();
    for (key, (was, now)) in before.iter().zip(&after).enumerate() {
        if was == "b" {
            assert_ne!(now, "b", "key {key}");
        } else {
            assert_eq!(was, now, "key {key} moved though its instance stayed");
        }
    }
}

#[test]
fn zookeeper_restarted_under_a_running_consumer_and_provider() {
    let zk = PrivateZk::start();
    let connect = zk.connect_string();
    let root = "/chatroom";
    let mut p1 = Provider::start(&connect, root, SERVICE, "p1");
    let p2 = Provider::start(&connect, root, SERVICE, "p2");
    let consumer = registry(&connect, root);
    let balanced = Balanced::discover(&consumer, SERVICE, Config::default()).unwrap();
    wait_for_rotation(&balanced, &["p1", "p2"]);
    let raw = Raw::connect(&connect);
    let dir = format!("{root}/services/{SERVICE}/instances");
    let sessions_before: Vec<i64> = raw.children(&dir).iter().map(|(_, owner)| *owner).collect();
    drop(raw);

    let load = Load::start(&balanced, 2);
    load.wait_for_more(50, "calls before the outage");

    // ZooKeeper goes away for longer than a session: the consumer keeps
    // calling the last known set.
    zk.down();
    let outage = Instant::now();
    let (p1_at, p2_at) = (p1.calls(), p2.calls());
    while outage.elapsed() < SESSION * 2 + Duration::from_secs(1) {
        load.wait_for_more(20, "calls during the outage");
    }
    assert!(p1.calls() > p1_at && p2.calls() > p2_at, "both providers served during the outage");
    assert_eq!(ids(&balanced.in_rotation()), ["p1", "p2"]);
    zk.up();

    // Both providers are registered again, in new sessions.
    let raw = Raw::connect(&connect);
    wait_until(Duration::from_secs(15), "both registrations back in new sessions", || {
        let now = raw.children(&dir);
        now.len() == 2 && now.iter().all(|(_, owner)| !sessions_before.contains(owner))
    });
    // The consumer's watch works again: a new provider gets calls, a
    // deregistered one leaves rotation.
    let p3 = Provider::start(&connect, root, SERVICE, "p3");
    wait_until(Duration::from_secs(15), "calls reaching p3", || p3.calls() > 0);
    p1.registration.take().unwrap().deregister().unwrap();
    wait_for_rotation(&balanced, &["p2", "p3"]);
    load.wait_for_more(50, "calls after the restart");
    let (_, failures) = load.stop();
    assert!(failures.is_empty(), "no call failed: {failures:?}");
}

/// How long a stalled instance may take to leave rotation: the stall floor
/// (250 ms) and a prober tick, with slack for a loaded two-core machine.
const EJECTION: Duration = Duration::from_millis(1500);

fn register(registry: &Memory, id: &str, addr: std::net::SocketAddr) -> Registration {
    registry.register(SERVICE, &Instance::new(id, addr)).unwrap()
}

fn call(b: &Balanced, timeout: Duration) -> Result<String, Error> {
    b.call_raw(SERVICE, "Who", b"", Some(timeout)).map(|r| String::from_utf8(r.to_vec()).unwrap())
}

fn in_rotation(b: &Balanced, id: &str) -> bool {
    b.in_rotation().iter().any(|i| i.id == id)
}

#[test]
fn an_instance_whose_workers_are_stuck_leaves_rotation_and_returns_once_they_answer() {
    crate::support::init_logging();
    let (a, b) = (Local::start("a"), Local::start("b"));
    let registry = Memory::new();
    let _regs = [register(&registry, "a", a.addr()), register(&registry, "b", b.addr())];
    // A long first probe keeps the instance out long enough to be seen out:
    // its event loop answers pings even while every worker is stuck.
    let config = Config { probe_initial: Duration::from_secs(2), ..Config::default() };
    let balanced = Balanced::discover(&registry, SERVICE, config).unwrap();
    let load = Load::start(&balanced, 4);
    load.wait_for_more(100, "calls to both");
    assert!(a.calls() > 0 && b.calls() > 0);

    // Within moments every calling thread is held at a; only the prober,
    // which watches running calls, can tell.
    a.gate.close();
    let frozen = Instant::now();
    wait_until(EJECTION * 2, "a leaving rotation", || !in_rotation(&balanced, "a"));
    let took = frozen.elapsed();
    assert!(took < EJECTION, "a left rotation {took:?} after its workers stuck");
    for _ in 0..20 {
        assert_eq!(call(&balanced, Duration::from_secs(1)).unwrap(), "b", "b takes the calls while a is out");
    }

    // Unstuck: the calls held there are answered, and a, which answers
    // pings, comes back and takes calls again.
    a.gate.open();
    wait_until(Duration::from_secs(10), "a back in rotation", || in_rotation(&balanced, "a"));
    let a_back = a.calls();
    wait_until(Duration::from_secs(10), "calls reaching a again", || a.calls() >= a_back + 20);
    let (_, failures) = load.stop();
    assert!(failures.is_empty(), "the calls held at a were answered in time: {failures:?}");
}

#[test]
fn a_stopped_instance_stays_out_until_it_answers_a_ping_though_it_accepts_connections() {
    crate::support::init_logging();
    let (a, b) = (Local::start("a"), Local::start("b"));
    let front = Pausable::start(a.addr());
    let registry = Memory::new();
    let _regs = [register(&registry, "a", front.addr), register(&registry, "b", b.addr())];
    let balanced = Balanced::discover(&registry, SERVICE, Config::default()).unwrap();
    let load = Load::with_timeout(&balanced, 4, Duration::from_millis(500));
    load.wait_for_more(100, "calls to both");
    assert!(a.calls() > 0 && b.calls() > 0);

    front.pause();
    let stopped = Instant::now();
    wait_until(EJECTION * 2, "a leaving rotation", || !in_rotation(&balanced, "a"));
    let out = Instant::now();
    let took = out - stopped;
    assert!(took < EJECTION, "a left rotation {took:?} after it stopped");

    // Stopped, it still accepts connections, so a connect probe would bring
    // it back at once; the prober's pings get no Pong, and it stays out
    // through several probes (100, 200 and 400 ms apart, a second each).
    assert!(std::net::TcpStream::connect(front.addr).is_ok(), "the stopped instance accepts");
    while out.elapsed() < Duration::from_secs(3) {
        assert!(!in_rotation(&balanced, "a"), "a came back though it cannot answer");
        std::thread::sleep(Duration::from_millis(10));
    }
    load.wait_for_more(100, "calls while a is out");
    assert_eq!(
        load.failures_since(out),
        Vec::<String>::new(),
        "every call after a left was answered in time"
    );

    // Resumed, it answers the next ping (at most `probe_max` plus a ping
    // away) and takes calls again.
    front.resume();
    let resumed = Instant::now();
    wait_until(Duration::from_secs(10), "a back in rotation", || in_rotation(&balanced, "a"));
    eprintln!("a back in rotation {:?} after it resumed", resumed.elapsed());
    let a_back = a.calls();
    wait_until(Duration::from_secs(10), "calls reaching a again", || a.calls() >= a_back + 20);
    assert_eq!(load.failures_since(out), Vec::<String>::new(), "nor after a came back");
    let (_, failures) = load.stop();
    assert!(failures.len() <= 4, "at most one call per thread was held at a: {failures:?}");
    for e in &failures {
        assert!(matches!(e, Error::Timeout { .. }), "calls held at a time out: {e}");
    }
}

#[test]
fn with_every_instance_out_of_rotation_calls_fail_at_once_with_no_instances() {
    crate::support::init_logging();
    let a = Local::start("a");
    let front = Pausable::start(a.addr());
    let registry = Memory::new();
    let _reg = register(&registry, "a", front.addr);
    let balanced = Balanced::discover(&registry, SERVICE, Config::default()).unwrap();
    assert_eq!(call(&balanced, Duration::from_secs(5)).unwrap(), "a");

    // The last instance is never taken out for a stall alone (there is no
    // peer to compare with), but two timeouts in a row take it out.
    front.pause();
    for n in 1..=2 {
        let err = call(&balanced, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "call {n}: {err}");
    }
    assert!(balanced.in_rotation().is_empty(), "two timeouts in a row eject even the last instance");

    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = call(&balanced, timeout).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(&err, Error::NoInstances { service } if service == SERVICE), "{err}");
    assert!(took < timeout / 4, "NoInstances after {took:?}, not at once");

    // The callback path fails at once too.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let started = Instant::now();
    balanced.call_with(SERVICE, "Who", &(), Some(timeout), Box::new(move |r| tx.send(r).unwrap()));
    let err = rx.recv_timeout(timeout * 2).expect("the callback is called").unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::NoInstances { .. }), "{err}");
    assert!(took < timeout / 4, "NoInstances after {took:?}, not at once");

    front.resume();
    wait_until(Duration::from_secs(10), "a back in rotation", || in_rotation(&balanced, "a"));
    assert_eq!(call(&balanced, Duration::from_secs(5)).unwrap(), "a");
}

#[test]
fn calls_past_the_per_instance_cap_fail_at_once_unsent() {
    crate::support::init_logging();
    let a = Local::start("a");
    let registry = Memory::new();
    let _reg = register(&registry, "a", a.addr());
    let config = Config { max_in_flight_per_instance: 2, ..Config::default() };
    let balanced = Balanced::discover(&registry, SERVICE, config).unwrap();
    assert_eq!(call(&balanced, Duration::from_secs(5)).unwrap(), "a");

    a.gate.close();
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..2 {
        let tx = tx.clone();
        balanced.call_with(
            SERVICE,
            "Who",
            &(),
            Some(Duration::from_secs(20)),
            Box::new(move |r| tx.send(r).unwrap()),
        );
    }
    wait_until(Duration::from_secs(10), "both calls held at a", || a.calls() == 3);

    let started = Instant::now();
    let err = call(&balanced, Duration::from_secs(20)).unwrap_err();
    assert!(matches!(&err, Error::Backpressure(why) if why.contains("not sent")), "{err}");
    let late = tx.clone();
    balanced.call_with(SERVICE, "Who", &(), None, Box::new(move |r| late.send(r).unwrap()));
    let err = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap_err();
    assert!(matches!(err, Error::Backpressure(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once: {:?}", started.elapsed());
    assert_eq!(a.calls(), 3, "the refused calls were not sent");
    assert_eq!(ids(&balanced.in_rotation()), ["a"], "a full instance stays in rotation");

    a.gate.open();
    for _ in 0..2 {
        assert_eq!(&rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()[..], b"a");
    }
    assert_eq!(call(&balanced, Duration::from_secs(5)).unwrap(), "a");
}

/// Starts a balanced call to `test.Named` from inside its handler, without a timeout of
/// its own, and passes the outcome on; answers at once.
struct Front {
    balanced: Balanced,
    outcomes: crossbeam_channel::Sender<Result<bytes::Bytes, Error>>,
}

impl rpc_core::server::Service for Front {
    fn name(&self) -> &str {
        "test.Front"
    }
    fn call(
        &self,
        _ctx: &rpc_core::server::Context,
        _method: &str,
        _body: bytes::Bytes,
    ) -> Result<bytes::Bytes, rpc_core::Status> {
        let outcomes = self.outcomes.clone();
        self.balanced.call_with(SERVICE, "Who", &(), None, Box::new(move |r| outcomes.send(r).unwrap()));
        Ok(bytes::Bytes::new())
    }
}

#[test]
fn a_balanced_call_started_by_a_handler_keeps_the_handlers_deadline_when_it_retries() {
    crate::support::init_logging();
    let a = Local::start("a");
    // Serves something else: rpc-core refuses `test.Named` there, "not run", so the call
    // is retried at a from the client event loop the refusal arrives on, where no
    // handler's deadline is known.
    let (elsewhere, _) = crossbeam_channel::unbounded();
    let other = Balanced::discover(&Memory::new(), "test.Nothing", Config::default()).unwrap();
    let refusing = rpc_core::server::Builder::new(rpc_core::server::Config::default())
        .service(Front { balanced: other, outcomes: elsewhere })
        .bind("127.0.0.1:0")
        .unwrap();
    let registry = Memory::new();
    // Listed first, so that the first call picks it first.
    let _regs =
        [register(&registry, "0-refusing", refusing.local_addr()), register(&registry, "a", a.addr())];
    // Left to its own timeout, a call would wait at a's closed gate for a minute.
    let channel = rpc_core::client::Config {
        default_timeout: Some(Duration::from_secs(60)),
        ..rpc_core::client::Config::default()
    };
    let balanced = Balanced::discover(&registry, SERVICE, Config { channel, ..Config::default() }).unwrap();
    let (outcomes, answered) = crossbeam_channel::unbounded();
    let front = rpc_core::server::Builder::new(rpc_core::server::Config::default())
        .service(Front { balanced, outcomes })
        .bind("127.0.0.1:0")
        .unwrap();
    a.gate.close();

    let client =
        rpc_core::client::Channel::connect(front.local_addr(), rpc_core::client::Config::default()).unwrap();
    client.call_raw("test.Front", "Start", b"", Some(Duration::from_millis(500))).expect("answers at once");
    // The retry at a ends with the 500 ms of the call that started it, long before a's
    // gate opens (it stays closed for up to 30 s).
    let outcome = answered.recv_timeout(Duration::from_secs(20)).expect("the balanced call ended on its own");
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    assert_eq!(a.gate.arrived(), 1, "the call reached a");
    a.gate.open();
}
