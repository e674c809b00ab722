//! The ZooKeeper registry against a real ZooKeeper: the znode layout,
//! ephemeral cleanup, watches, session expiry, restarts and a connection that
//! freezes without closing.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpc_core::registry::{self, Discovery, Instance, Registry};
use rpc_core::Error;

use crate::support::{
    ids, registry, registry_with_session, relay, shared_zk, unique_root, wait_until, Cleanup, PrivateZk, Raw,
    SESSION,
};

pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// How long a change may take to reach a watcher.
pub(crate) const PROPAGATION: Duration = Duration::from_secs(5);

#[test]
fn register_list_and_deregister_with_the_documented_layout() {
    let zk = shared_zk();
    let root = unique_root("layout");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let registry = registry(&zk, &root);
    let a = Instance::new("a", addr(7001)).with_metadata("zone", "z1");
    let b = Instance::new("b", addr(7002));
    let reg_b = registry.register("chat.Echo", &b).unwrap();
    let reg_a = registry.register("chat.Echo", &a).unwrap();
    assert_eq!(registry.instances("chat.Echo").unwrap(), vec![a.clone(), b.clone()]);
    assert!(registry.instances("chat.Other").unwrap().is_empty());

    // One ephemeral sequential znode per instance, named `{id}-{sequence}`,
    // with the instance as JSON.
    let raw = Raw::connect(&zk);
    let dir = format!("{root}/services/chat.Echo/instances");
    let children = raw.children(&dir);
    assert_eq!(children.len(), 2, "{children:?}");
    for (name, owner) in &children {
        let (id, sequence) = name.rsplit_once('-').unwrap();
        assert!(id == "a" || id == "b", "{name}");
        assert!(sequence.len() == 10 && sequence.bytes().all(|c| c.is_ascii_digit()), "{name}");
        assert_ne!(*owner, 0, "{name} is ephemeral");
    }
    let (data, _) = raw.0.get_data(&format!("{dir}/{}", children[0].0), false).unwrap();
    assert_eq!(
        String::from_utf8(data).unwrap(),
        r#"{"id":"a","addr":"127.0.0.1:7001","metadata":{"zone":"z1"}}"#
    );

    reg_a.deregister().unwrap();
    assert_eq!(registry.instances("chat.Echo").unwrap(), vec![b]);
    drop(reg_b);
    assert!(registry.instances("chat.Echo").unwrap().is_empty());
    assert!(raw.children(&dir).is_empty());
}

#[test]
fn a_providers_znodes_go_when_its_session_closes() {
    let zk = shared_zk();
    let root = unique_root("ephemeral");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let consumer = registry(&zk, &root);
    let discovery = Discovery::new(&consumer, "svc").unwrap();
    let provider = registry(&zk, &root);
    let registration = provider.register("svc", &Instance::new("p", addr(7001))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["p"]), "consumer sees the provider");

    // Dropping the registry closes the session, as a provider's exit does;
    // ZooKeeper deletes the znode, and the consumer's watch says so.
    drop(provider);
    let raw = Raw::connect(&zk);
    assert!(raw.children(&format!("{root}/services/svc/instances")).is_empty());
    assert!(discovery.wait_until(PROPAGATION, |set| set.is_empty()), "{:?}", discovery.instances());
    // The registration outlived its registry: dropping it now is harmless.
    registration.deregister().unwrap();
}

#[test]
fn watches_follow_changes_without_restart() {
    let zk = shared_zk();
    let root = unique_root("watch");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let consumer = registry(&zk, &root);
    let provider = registry(&zk, &root);

    let seen = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let log = seen.clone();
    let watch =
        consumer.watch("svc", Box::new(move |set: &[Instance]| log.lock().unwrap().push(ids(set)))).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Vec::<String>::new()], "called once before watch returns");
    let discovery = Discovery::new(&consumer, "svc").unwrap();

    let a = provider.register("svc", &Instance::new("a", addr(7001))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["a"]));
    let b = provider.register("svc", &Instance::new("b", addr(7002))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["a", "b"]));
    drop(a);
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["b"]));

    // A restarted provider registers the same id at a new address before its
    // old znode goes: consumers see the new one at once, and only it.
    let b2 = provider.register("svc", &Instance::new("b", addr(7003))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| set.len() == 1 && set[0].addr == addr(7003)));
    drop(b);
    assert!(
        !discovery.wait_until(Duration::from_millis(300), |set| set.len() != 1 || set[0].addr != addr(7003))
    );

    drop(watch);
    drop(b2);
    assert!(discovery.wait_until(PROPAGATION, |set| set.is_empty()));
    // Every change once, in order; nothing after the watch was dropped.
    let seen = seen.lock().unwrap();
    assert_eq!(*seen, [vec![], vec!["a"], vec!["a", "b"], vec!["b"], vec!["b"]]);
}

#[test]
fn bad_input_and_an_unreachable_zookeeper_fail_clearly() {
    let zk = shared_zk();
    let root = unique_root("errors");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let registry = registry(&zk, &root);
    for (service, id) in [("", "a"), ("a/b", "a"), ("svc", ".."), ("svc", "x/y")] {
        let err = registry.register(service, &Instance::new(id, addr(1))).unwrap_err();
        assert!(matches!(err, Error::Registry(_)), "{err}");
    }
    let config = registry::Config { root: "relative".to_owned(), ..registry::Config::default() };
    assert!(registry::ZooKeeper::connect(&zk, config).is_err());

    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config =
        registry::Config { operation_timeout: Duration::from_millis(500), ..registry::Config::default() };
    let started = Instant::now();
    let err = registry::ZooKeeper::connect(&nobody.to_string(), config).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&nobody.to_string()), "{err}");
}

/// The instance znodes of `service` under `root`: (name, session owner).
pub(crate) fn znodes(raw: &Raw, root: &str, service: &str) -> Vec<(String, i64)> {
    raw.children(&format!("{root}/services/{service}/instances"))
}

#[test]
fn a_short_zookeeper_restart_keeps_the_session_and_rearms_watches() {
    let zk = PrivateZk::start();
    let connect = zk.connect_string();
    let root = "/chatroom";
    // A session long enough to outlast the restart by far.
    let session = Duration::from_secs(10);
    let provider = registry_with_session(&connect, root, session);
    let _a = provider.register("svc", &Instance::new("a", addr(7001))).unwrap();
    let consumer = registry_with_session(&connect, root, session);
    let discovery = Discovery::new(&consumer, "svc").unwrap();
    assert_eq!(ids(&discovery.instances()), ["a"]);
    let before = znodes(&Raw::connect(&connect), root, "svc");

    // Down for less than a session: the clients reconnect to the same session
    // (ZooKeeper keeps sessions across a restart), but the server has
    // forgotten every watch.
    zk.down();
    zk.up();
    let raw = Raw::connect(&connect);
    // The watch works again: a new instance reaches the consumer.
    let _b = provider.register("svc", &Instance::new("b", addr(7002))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["a", "b"]), "{:?}", discovery.instances());
    let after = znodes(&raw, root, "svc");
    assert_eq!(after[0], before[0], "the same znode, owned by the same session");
}

#[test]
fn after_session_expiry_registrations_and_watches_come_back() {
    let zk = PrivateZk::start();
    let connect = zk.connect_string();
    let root = "/chatroom";
    let provider = registry(&connect, root);
    let _a = provider.register("svc", &Instance::new("a", addr(7001))).unwrap();
    let consumer = registry(&connect, root);
    let discovery = Discovery::new(&consumer, "svc").unwrap();
    assert_eq!(ids(&discovery.instances()), ["a"]);
    let before = znodes(&Raw::connect(&connect), root, "svc");
    assert_eq!(before.len(), 1);

    // Down for longer than a session: both clients give their sessions up.
    // Meanwhile the consumer keeps the last set it saw.
    zk.down();
    let outage = Instant::now();
    while outage.elapsed() < SESSION * 2 + Duration::from_secs(1) {
        assert_eq!(ids(&discovery.instances()), ["a"], "the last known set stays");
        std::thread::sleep(Duration::from_millis(50));
    }
    zk.up();

    // The provider's instance is registered again in a new session; the old
    // session's znode is deleted rather than left to expire.
    let raw = Raw::connect(&connect);
    wait_until(Duration::from_secs(15), "re-registration in a new session", || {
        let now = znodes(&raw, root, "svc");
        now.len() == 1 && now[0].1 != before[0].1
    });
    // The consumer's watch is armed in its new session.
    let _b = provider.register("svc", &Instance::new("b", addr(7002))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["a", "b"]), "{:?}", discovery.instances());
    drop(_b);
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["a"]), "{:?}", discovery.instances());
    assert_eq!(consumer.instances("svc").unwrap().len(), 1);
}

/// A TCP forwarder to ZooKeeper whose connections can be frozen: they stop moving
/// bytes either way without closing, as behind a firewall that drops packets; or
/// cut: closed, as when a server goes. Connections made after a freeze or a cut pass.
pub(crate) struct Freezer {
    pub(crate) addr: SocketAddr,
    /// One flag per connection made so far.
    flags: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// The client side of each connection not cut yet.
    clients: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Freezer {
    pub(crate) fn start(target: SocketAddr) -> Freezer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let flags: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let clients: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (list, open) = (flags.clone(), clients.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                let frozen = Arc::new(AtomicBool::new(false));
                list.lock().unwrap().push(frozen.clone());
                open.lock().unwrap().push(client.try_clone().unwrap());
                let pairs = [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)];
                for (from, to) in pairs {
                    // Frozen: the bytes are held, and the sockets stay open.
                    let frozen = frozen.clone();
                    std::thread::spawn(move || relay(from, to, &frozen));
                }
            }
        });
        Freezer { addr, flags, clients }
    }

    /// Connections made so far.
    pub(crate) fn connections(&self) -> usize {
        self.flags.lock().unwrap().len()
    }

    /// Closes every connection made so far; the relays then close the server sides.
    pub(crate) fn cut(&self) {
        for client in self.clients.lock().unwrap().drain(..) {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Freezes every connection made so far.
    pub(crate) fn freeze(&self) {
        for flag in self.flags.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Lets every frozen connection go on (to its close, usually) when dropped, so that
    /// no client is left waiting on one when the test ends, however it ends.
    pub(crate) fn thaw_on_drop(&self) -> Thaw {
        Thaw(self.flags.clone())
    }
}

pub(crate) struct Thaw(Arc<Mutex<Vec<Arc<AtomicBool>>>>);

impl Drop for Thaw {
    fn drop(&mut self) {
        for flag in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            flag.store(false, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_provider_whose_connection_freezes_registers_again_in_a_new_session() {
    let zk = shared_zk();
    let root = unique_root("freeze");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let target = zk.to_socket_addrs().unwrap().next().unwrap();
    let freezer = Freezer::start(target);
    let config = registry::Config {
        root: root.clone(),
        session_timeout: Duration::from_secs(4),
        operation_timeout: Duration::from_secs(2),
        ..registry::Config::default()
    };
    let provider = registry::ZooKeeper::connect(&freezer.addr.to_string(), config).unwrap();
    let _a = provider.register("svc", &Instance::new("a", addr(7201))).unwrap();
    let _thaw = freezer.thaw_on_drop();
    let raw = Raw::connect(&zk);
    let before = znodes(&raw, &root, "svc");
    assert_eq!(before.len(), 1);

    // The connection stops answering without closing. ZooKeeper expires the session;
    // the provider, whose probe gets no answer, replaces its client and registers again.
    freezer.freeze();
    wait_until(Duration::from_secs(30), "re-registration in a new session", || {
        let now = znodes(&raw, &root, "svc");
        now.len() == 1 && now[0].1 != before[0].1
    });
}
