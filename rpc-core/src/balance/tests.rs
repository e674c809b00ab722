//! Unit tests of the balancer over the in-process registry: picking without
//! a network, and retries and probes against loopback servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::call::Unpicked;
use super::*;
use crate::registry::{Memory, Registration};
use crate::server::{self, Context, Service};
use crate::{Code, Status};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn balanced(registry: &Memory, strategy: Strategy) -> Balanced {
    let config = Config { strategy, ..Config::default() };
    Balanced::discover(registry, "s", config).unwrap()
}

fn register(registry: &Memory, id: &str, addr: SocketAddr) -> Registration {
    registry.register("s", &Instance::new(id, addr)).unwrap()
}

/// The ids picked by `n` calls that all succeed at once.
fn picks(b: &Balanced, key: Option<u64>, n: usize) -> Vec<String> {
    let table = b.shared.table();
    (0..n).map(|_| table.endpoints[b.shared.pick(&table, key, &[]).unwrap()].instance.id.clone()).collect()
}

fn owner(b: &Balanced, key: u64) -> String {
    picks(b, Some(ring::stable_hash(key)), 1).remove(0)
}

fn endpoint(b: &Balanced, id: &str) -> Arc<Endpoint> {
    b.shared.table().endpoints.iter().find(|e| e.instance.id == id).unwrap().clone()
}

#[test]
fn an_empty_set_fails_with_no_instances_naming_the_service() {
    let registry = Memory::new();
    let b = balanced(&registry, Strategy::RoundRobin);
    let err = b.call_raw("s", "M", b"", None).unwrap_err();
    assert!(matches!(&err, Error::NoInstances { service } if service == "s"), "{err}");
    assert!(err.is_retryable_elsewhere());
}

#[test]
fn round_robin_takes_turns_and_skips_instances_out_of_rotation() {
    let registry = Memory::new();
    let _r = ["a", "b", "c"].map(|id| register(&registry, id, addr(1000 + id.as_bytes()[0] as u16)));
    let b = balanced(&registry, Strategy::RoundRobin);
    let turns = picks(&b, None, 6);
    assert_eq!(turns[..3], turns[3..]);
    let mut first = turns[..3].to_vec();
    first.sort();
    assert_eq!(first, ["a", "b", "c"]);

    endpoint(&b, "b").set_down(true);
    assert!(picks(&b, None, 10).iter().all(|id| id != "b"));
    assert_eq!(b.in_rotation().len(), 2);

    // With every instance out of rotation, nothing is picked: only a probe
    // brings one back, and calls fail at once rather than wait on a dead one.
    for id in ["a", "c"] {
        endpoint(&b, id).set_down(true);
    }
    let table = b.shared.table();
    assert_eq!(b.shared.pick(&table, None, &[]), Err(Unpicked { known: 3, down: 3, full: 0 }));
    assert!(b.in_rotation().is_empty());
    let err = b.call_raw("s", "M", b"", None).unwrap_err();
    assert!(matches!(&err, Error::NoInstances { service } if service == "s"), "{err}");
}

#[test]
fn instances_at_their_cap_are_skipped_and_all_full_fails_at_once_unsent() {
    let registry = Memory::new();
    let _r = ["a", "b"].map(|id| register(&registry, id, addr(1000 + id.as_bytes()[0] as u16)));
    let config = Config { max_in_flight_per_instance: 2, ..Config::default() };
    let b = Balanced::discover(&registry, "s", config).unwrap();
    endpoint(&b, "a").in_flight.store(2, Ordering::SeqCst);
    assert_eq!(picks(&b, None, 4), ["b"; 4]);
    // Keyed calls move on around the ring too.
    assert!((0..20u64).all(|k| owner(&b, k) == "b"));
    endpoint(&b, "b").in_flight.store(2, Ordering::SeqCst);
    let table = b.shared.table();
    assert_eq!(b.shared.pick(&table, None, &[]), Err(Unpicked { known: 2, down: 0, full: 2 }));
    let err = b.call_raw("s", "M", b"", None).unwrap_err();
    assert!(matches!(&err, Error::Backpressure(why) if why.contains("not sent")), "{err}");
    assert_eq!(err.outcome(), crate::Outcome::NotRun, "{err}");
    // One slot frees: calls go there.
    endpoint(&b, "a").in_flight.store(1, Ordering::SeqCst);
    assert_eq!(picks(&b, None, 2), ["a"; 2]);
    for id in ["a", "b"] {
        endpoint(&b, id).in_flight.store(0, Ordering::SeqCst);
    }
}

#[test]
fn least_in_flight_picks_the_idlest_instance() {
    let registry = Memory::new();
    let _r = ["a", "b", "c"].map(|id| register(&registry, id, addr(1000 + id.as_bytes()[0] as u16)));
    let b = balanced(&registry, Strategy::LeastInFlight);
    endpoint(&b, "a").in_flight.store(3, Ordering::Relaxed);
    endpoint(&b, "b").in_flight.store(1, Ordering::Relaxed);
    endpoint(&b, "c").in_flight.store(2, Ordering::Relaxed);
    assert_eq!(picks(&b, None, 5), ["b"; 5]);
    endpoint(&b, "b").set_down(true);
    assert_eq!(picks(&b, None, 5), ["c"; 5]);
    // Ties go in turn.
    endpoint(&b, "a").in_flight.store(2, Ordering::Relaxed);
    let tied = picks(&b, None, 6);
    assert!(tied.iter().all(|id| id == "a" || id == "c"), "{tied:?}");
    assert!(tied.contains(&"a".to_owned()) && tied.contains(&"c".to_owned()), "{tied:?}");
}

#[test]
fn consistent_hash_keeps_keys_in_place_and_moves_only_a_leavers_keys() {
    let registry = Memory::new();
    let mut regs: HashMap<&str, Registration> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|id| (id, register(&registry, id, addr(1000 + id.as_bytes()[0] as u16))))
        .collect();
    let b = balanced(&registry, Strategy::RoundRobin);
    let keys = 0..1000u64;
    let before: Vec<String> = keys.clone().map(|k| owner(&b, k)).collect();
    assert_eq!(before, keys.clone().map(|k| owner(&b, k)).collect::<Vec<_>>(), "same key, same instance");
    for id in ["a", "b", "c", "d"] {
        assert!(before.iter().filter(|o| *o == id).count() > 100, "{id} owns a fair share");
    }

    // Out of rotation: its keys go to the next instance around the ring,
    // and come back with it.
    endpoint(&b, "c").set_down(true);
    let during: Vec<String> = keys.clone().map(|k| owner(&b, k)).collect();
    for (was, now) in before.iter().zip(&during) {
        assert!(if was == "c" { now != "c" } else { was == now });
    }
    endpoint(&b, "c").set_down(false);
    assert_eq!(before, keys.clone().map(|k| owner(&b, k)).collect::<Vec<_>>());

    // Leaving the set moves the same keys, and only those.
    drop(regs.remove("c"));
    let after: Vec<String> = keys.clone().map(|k| owner(&b, k)).collect();
    assert_eq!(during, after);
    let moved = before.iter().zip(&after).filter(|(was, now)| was != now).count();
    assert_eq!(moved, before.iter().filter(|o| *o == "c").count());
}

#[test]
fn an_emptied_set_keeps_its_last_instances_until_others_come() {
    let registry = Memory::new();
    let a = register(&registry, "a", addr(1001));
    let b = balanced(&registry, Strategy::RoundRobin);
    assert_eq!(picks(&b, None, 1), ["a"]);
    drop(a);
    assert_eq!(b.in_rotation(), [Instance::new("a", addr(1001))]);
    let _c = register(&registry, "c", addr(1003));
    assert_eq!(picks(&b, None, 2), ["c", "c"]);
}

#[test]
fn endpoints_and_channels_survive_set_changes() {
    let registry = Memory::new();
    let _a = register(&registry, "a", addr(1001));
    let b_reg = register(&registry, "b", addr(1002));
    let b = balanced(&registry, Strategy::RoundRobin);
    let a_before = endpoint(&b, "a");
    let _c = register(&registry, "c", addr(1003));
    drop(b_reg);
    let table = b.shared.table();
    assert_eq!(table.endpoints.iter().map(|e| e.instance.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    assert!(Arc::ptr_eq(&a_before, &endpoint(&b, "a")));
}

/// Answers `Who` with its name, fails `Fail` with `InvalidArgument`, and
/// fails everything with `Unavailable` when told to; counts calls.
struct Named {
    name: &'static str,
    calls: Arc<AtomicUsize>,
    unavailable: bool,
}

impl Service for Named {
    fn name(&self) -> &str {
        "test.Named"
    }
    fn call(&self, _ctx: &Context, method: &str, _body: Bytes) -> Result<Bytes, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.unavailable {
            return Err(Status::unavailable("draining"));
        }
        match method {
            "Who" => Ok(Bytes::from_static(self.name.as_bytes())),
            "Fail" => Err(Status::invalid_argument("no")),
            _ => Err(Status::unimplemented(method.to_owned())),
        }
    }
}

fn serve_at(name: &'static str, unavailable: bool, at: SocketAddr) -> (server::Handle, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = server::Builder::new(server::Config { workers: 2, ..server::Config::default() })
        .service(Named { name, calls: calls.clone(), unavailable })
        .bind(at)
        .unwrap();
    (server, calls)
}

fn serve(name: &'static str, unavailable: bool) -> (server::Handle, Arc<AtomicUsize>) {
    serve_at(name, unavailable, addr(0))
}

fn who(b: &Balanced) -> Result<String, Error> {
    b.call_raw("test.Named", "Who", b"", Some(Duration::from_secs(5)))
        .map(|reply| String::from_utf8(reply.to_vec()).unwrap())
}

#[test]
fn calls_that_never_reached_a_server_are_retried_elsewhere() {
    let (live, calls) = serve("live", false);
    let registry = Memory::new();
    let _dead = register(&registry, "dead", dead_addr());
    let _live = register(&registry, "live", live.local_addr());
    let b = balanced(&registry, Strategy::RoundRobin);
    for _ in 0..20 {
        assert_eq!(who(&b).unwrap(), "live");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    assert_eq!(b.in_rotation().iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["live"]);
}

#[test]
fn an_unavailable_answer_is_not_retried_since_the_handler_may_have_run() {
    let (live, live_calls) = serve("live", false);
    let (busy, busy_calls) = serve("busy", true);
    let registry = Memory::new();
    let _live = register(&registry, "live", live.local_addr());
    let _busy = register(&registry, "busy", busy.local_addr());
    let b = balanced(&registry, Strategy::RoundRobin);
    let results: Vec<Result<String, Error>> = (0..10).map(|_| who(&b)).collect();
    let failed = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.code() == Code::Unavailable)).count();
    assert_eq!(failed, busy_calls.load(Ordering::SeqCst), "each Unavailable reached its caller once");
    assert!(failed > 0, "round-robin sent some calls to the busy instance");
    assert_eq!(live_calls.load(Ordering::SeqCst) + failed, 10, "no call ran twice");
}

#[test]
fn calls_that_may_have_run_are_not_retried() {
    let (one, one_calls) = serve("one", false);
    let (two, two_calls) = serve("two", false);
    let registry = Memory::new();
    let _one = register(&registry, "one", one.local_addr());
    let _two = register(&registry, "two", two.local_addr());
    let b = balanced(&registry, Strategy::RoundRobin);
    let err = b.call_raw("test.Named", "Fail", b"", None).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(one_calls.load(Ordering::SeqCst) + two_calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.in_rotation().len(), 2, "an answer from the server keeps it in rotation");
}

#[test]
fn async_calls_are_retried_elsewhere_too() {
    let (live, _calls) = serve("live", false);
    let registry = Memory::new();
    let _dead = register(&registry, "dead", dead_addr());
    let _live = register(&registry, "live", live.local_addr());
    let b = balanced(&registry, Strategy::RoundRobin);
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..4 {
        let tx = tx.clone();
        b.call_with("test.Named", "Who", &(), None, Box::new(move |r| tx.send(r).unwrap()));
    }
    for _ in 0..4 {
        let reply = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(&reply[..], b"live");
    }
}

#[test]
fn keyed_calls_stick_to_one_instance() {
    let servers: Vec<_> = ["a", "b", "c"].into_iter().map(|n| (n, serve(n, false))).collect();
    let registry = Memory::new();
    let _regs: Vec<Registration> =
        servers.iter().map(|(n, (s, _))| register(&registry, n, s.local_addr())).collect();
    let b = balanced(&registry, Strategy::RoundRobin);
    for user in 0..20u64 {
        let keyed = b.with_key(user);
        let first = keyed.call_raw("test.Named", "Who", b"", None).unwrap();
        for _ in 0..3 {
            assert_eq!(keyed.call_raw("test.Named", "Who", b"", None).unwrap(), first);
        }
        assert_eq!(&first[..], owner(&b, user).as_bytes());
    }
}

#[test]
fn an_instance_that_failed_is_probed_back_into_rotation() {
    let (first, _) = serve("back", false);
    let at = first.local_addr();
    let registry = Memory::new();
    let _reg = register(&registry, "back", at);
    let config = Config { probe_initial: Duration::from_millis(20), ..Config::default() };
    let b = Balanced::discover(&registry, "s", config).unwrap();
    assert_eq!(who(&b).unwrap(), "back");
    first.shutdown();
    // Its only instance is gone: a call fails to connect or loses its
    // connection, and the instance leaves rotation; from then on calls fail
    // at once with NoInstances, which may be retried elsewhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.in_rotation().is_empty() {
        assert!(Instant::now() < deadline, "the instance did not leave rotation");
        let _ = who(&b);
    }
    let started = Instant::now();
    let err = who(&b).unwrap_err();
    assert!(matches!(err, Error::NoInstances { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "failed at once, not at the deadline");
    assert!(err.is_retryable_elsewhere());

    let (_again, _) = serve_at("back", false, at);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.in_rotation().is_empty() {
        assert!(Instant::now() < deadline, "the prober did not bring the instance back");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(who(&b).unwrap(), "back");
}
