//! Balancing over instances discovered in a real ZooKeeper, with real
//! servers: spreading, providers leaving (gracefully or not), consistent
//! hashing, and a ZooKeeper restart under running consumers and providers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rpc_core::balance::{Balanced, Config};
use rpc_core::registry::Registry;
use rpc_core::Error;

use crate::support::{
    ids, registry, shared_zk, unique_root, wait_until, Cleanup, Load, PrivateZk, Provider, Raw, SESSION,
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
    let balanced = Balanced::discover(&consumer, SERVICE, Config::default()).unwrap();
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
