//! Helpers shared by rpc-core's tests: ZooKeeper (shared and private), isolated
//! registry roots, tiny servers (one whose handler can be held at a gate), a
//! forwarder that can be paused like a stopped process, reading frames off a raw
//! socket, and waiting with deadlines. The test binaries of their own
//! (`client_threads.rs`, `memory.rs`) include this file too.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rpc_core::balance::Balanced;
use rpc_core::frame::{self, Frame};
use rpc_core::registry::Instance;
#[cfg(feature = "zookeeper")]
use rpc_core::registry::{self, Registration, Registry};
use rpc_core::server::{self, Context, Service};
use rpc_core::{Error, Status};

/// Answers every method with the request body, as `test.Echo`.
pub use rpc_core::server::tests_support::Echo;

/// Session timeout used by the tests: short, so expiry tests stay fast.
pub const SESSION: Duration = Duration::from_secs(2);

/// Logs go to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The shared ZooKeeper's connect string; fails the test if nothing answers.
pub fn shared_zk() -> String {
    init_logging();
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

/// A registry root no other test uses: `/chatroom-it/<name>-<pid>-<time>`.
pub fn unique_root(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("/chatroom-it/{name}-{}-{nanos}", std::process::id())
}

#[cfg(feature = "zookeeper")]
/// Registry settings for tests: a root of their own and a short session.
pub fn zk_config(root: &str) -> registry::Config {
    registry::Config {
        root: root.to_owned(),
        session_timeout: SESSION,
        operation_timeout: Duration::from_secs(10),
        ..registry::Config::default()
    }
}

#[cfg(feature = "zookeeper")]
/// A registry client on `zk` under `root`.
pub fn registry(zk: &str, root: &str) -> registry::ZooKeeper {
    registry_with_session(zk, root, SESSION)
}

#[cfg(feature = "zookeeper")]
/// A registry client with its own session timeout.
pub fn registry_with_session(zk: &str, root: &str, session: Duration) -> registry::ZooKeeper {
    let config = registry::Config { session_timeout: session, ..zk_config(root) };
    registry::ZooKeeper::connect(zk, config).expect("connect to ZooKeeper")
}

#[cfg(feature = "zookeeper")]
/// A plain ZooKeeper client, for looking at znodes directly.
pub struct Raw(pub zookeeper::ZooKeeper);

#[cfg(feature = "zookeeper")]
impl Raw {
    pub fn connect(zk: &str) -> Raw {
        let raw = zookeeper::ZooKeeper::connect(zk, Duration::from_secs(10), |_: zookeeper::WatchedEvent| {})
            .expect("raw ZooKeeper client");
        wait_until(Duration::from_secs(10), "a raw ZooKeeper session", || raw.exists("/", false).is_ok());
        Raw(raw)
    }

    /// A plain client that proves the `digest` identity `user:password`.
    pub fn connect_as(zk: &str, digest: &str) -> Raw {
        let raw = Raw::connect(zk);
        raw.0.add_auth("digest", digest.as_bytes().to_vec()).expect("addauth digest");
        raw
    }

    /// Children of `path` with their ephemeral owners, sorted by name; empty if
    /// `path` does not exist.
    pub fn children(&self, path: &str) -> Vec<(String, i64)> {
        let mut children: Vec<(String, i64)> = match self.0.get_children(path, false) {
            Ok(names) => names
                .into_iter()
                .filter_map(|name| {
                    let stat = self.0.exists(&format!("{path}/{name}"), false).ok()??;
                    Some((name, stat.ephemeral_owner))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        children.sort();
        children
    }

    /// Deletes `root` and everything under it.
    pub fn remove_tree(&self, root: &str) {
        use zookeeper::ZooKeeperExt;
        let _ = self.0.delete_recursive(root);
    }
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads from `stream` until a whole frame is in `buf`; `None` at the end of the
/// stream or on an error (a read timeout included).
pub fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = frame::decode(buf, usize::MAX).unwrap() {
            return Some(f);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads frames from `stream` until it closes (or `patience` runs out); returns them.
pub fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Vec<Frame> {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
        while let Some(f) = frame::decode(&mut buf, usize::MAX).unwrap() {
            frames.push(f);
        }
    }
    frames
}

/// The ids of a set of instances.
pub fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id.clone()).collect()
}

/// Answers every call with the client's address, as text.
pub struct WhoAmI;

impl Service for WhoAmI {
    fn name(&self) -> &str {
        "test.WhoAmI"
    }
    fn call(&self, ctx: &Context, _m: &str, _b: Bytes) -> Result<Bytes, Status> {
        Ok(Bytes::from(ctx.client_addr().to_string()))
    }
}

/// Answers every call with its name and counts the calls.
pub struct Named {
    /// What `Who` answers.
    pub name: String,
    /// Calls served.
    pub calls: Arc<AtomicUsize>,
}

impl Service for Named {
    fn name(&self) -> &str {
        "test.Named"
    }
    fn call(&self, _ctx: &Context, _method: &str, _body: Bytes) -> Result<Bytes, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::from(self.name.clone().into_bytes()))
    }
}

/// Holds calls while closed; open at first ([`Gate::closed`] starts closed). A
/// closed gate lets no call wait longer than 30 s, so a failed test cannot hang a
/// server's shutdown.
#[derive(Default)]
pub struct Gate {
    /// Whether calls wait, and how many have arrived so far.
    state: Mutex<GateState>,
    /// Told when it opens, and when a call arrives.
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    arrived: usize,
}

impl Gate {
    pub fn closed() -> Gate {
        Gate { state: Mutex::new(GateState { closed: true, arrived: 0 }), changed: Condvar::new() }
    }

    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
    }

    pub fn open(&self) {
        self.state.lock().unwrap().closed = false;
        self.changed.notify_all();
    }

    /// Calls that have reached the gate so far, passed or waiting.
    pub fn arrived(&self) -> usize {
        self.state.lock().unwrap().arrived
    }

    /// Returns once the gate is open (or after 30 s).
    pub fn wait(&self) {
        let mut state = self.state.lock().unwrap();
        state.arrived += 1;
        self.changed.notify_all();
        let _ = self.changed.wait_timeout_while(state, Duration::from_secs(30), |s| s.closed).unwrap();
    }
}

/// Like [`Named`], but every call first passes `gate`: closed, it models a
/// server whose workers are all stuck while its event loop still reads,
/// answering pings.
pub struct Gated {
    /// What `Who` answers.
    pub name: String,
    /// Calls that reached the handler (counted before the gate).
    pub calls: Arc<AtomicUsize>,
    /// Where every call waits while it is closed.
    pub gate: Arc<Gate>,
}

impl Service for Gated {
    fn name(&self) -> &str {
        "test.Named"
    }
    fn call(&self, _ctx: &Context, _method: &str, _body: Bytes) -> Result<Bytes, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.gate.wait();
        Ok(Bytes::from(self.name.clone().into_bytes()))
    }
}

/// An in-process server for balancer tests: a [`Gated`] service on 127.0.0.1:0.
pub struct Local {
    /// The server.
    pub server: server::Handle,
    /// Calls that reached its handler.
    pub calls: Arc<AtomicUsize>,
    /// Holds its calls while closed; opened when dropped.
    pub gate: Arc<Gate>,
}

impl Local {
    pub fn start(name: &str) -> Local {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate::default());
        let service = Gated { name: name.to_owned(), calls: calls.clone(), gate: gate.clone() };
        let server = server::Builder::new(server::Config { workers: 2, ..server::Config::default() })
            .service(service)
            .bind("127.0.0.1:0")
            .unwrap();
        Local { server, calls, gate }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.gate.open();
    }
}

/// A TCP forwarder to `target` that can be paused as a whole, as a process
/// stopped with SIGSTOP is: connections still open (its kernel completes the
/// handshake; here the forwarder accepts), but no byte moves either way, on
/// old connections or new ones, until it resumes. Resumes when dropped, so no
/// client is left waiting on it however the test ends.
pub struct Pausable {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether bytes are held, read by every relay thread.
    paused: Arc<AtomicBool>,
}

impl Pausable {
    pub fn start(target: SocketAddr) -> Pausable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let flag = paused.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let pairs = [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)];
                for (from, to) in pairs {
                    let paused = flag.clone();
                    std::thread::spawn(move || relay(from, to, &paused));
                }
            }
        });
        Pausable { addr, paused }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for Pausable {
    fn drop(&mut self) {
        self.resume();
    }
}

/// Copies `from` to `to`, holding the bytes while `paused`; then shuts `to`.
pub fn relay(mut from: TcpStream, mut to: TcpStream, paused: &AtomicBool) {
    let hold = || {
        while paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        hold();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    hold();
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[cfg(feature = "zookeeper")]
/// A server on 127.0.0.1:0 and its registration: a provider, as a separate
/// process would be, with its own ZooKeeper session.
pub struct Provider {
    /// The server; `None` once stopped.
    pub server: Option<server::Handle>,
    /// Calls served.
    pub calls: Arc<AtomicUsize>,
    /// The registration; `None` once deregistered.
    pub registration: Option<Registration>,
    /// The provider's own registry (its own session), held for its drop.
    _registry: registry::ZooKeeper,
}

#[cfg(feature = "zookeeper")]
impl Provider {
    pub fn start(zk: &str, root: &str, service: &str, name: &str) -> Provider {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = server::Builder::new(server::Config { workers: 2, ..server::Config::default() })
            .service(Named { name: name.to_owned(), calls: calls.clone() })
            .bind("127.0.0.1:0")
            .unwrap();
        let registry = self::registry(zk, root);
        let instance = Instance::new(name, server.local_addr()).with_metadata("role", "test");
        let registration = registry.register(service, &instance).unwrap();
        Provider { server: Some(server), calls, registration: Some(registration), _registry: registry }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Calls `Who` through a balancer from a few threads until stopped, each call
/// with the same timeout.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Answers by server name, in order.
    pub answers: Arc<Mutex<Vec<String>>>,
    /// Every failed call, with when it started.
    failures: Arc<Mutex<Vec<(Instant, Error)>>>,
}

impl Load {
    pub fn start(balanced: &Balanced, threads: usize) -> Load {
        Load::with_timeout(balanced, threads, Duration::from_secs(5))
    }

    pub fn with_timeout(balanced: &Balanced, threads: usize, timeout: Duration) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (b, stop, answers, failures) =
                    (balanced.clone(), stop.clone(), answers.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match b.call_raw("test.Named", "Who", b"", Some(timeout)) {
                            Ok(reply) => {
                                answers.lock().unwrap().push(String::from_utf8_lossy(&reply).into_owned())
                            }
                            Err(e) => failures.lock().unwrap().push((started, e)),
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Load { stop, threads, answers, failures }
    }

    /// The failures of calls that started after `t`.
    pub fn failures_since(&self, t: Instant) -> Vec<String> {
        let failures = self.failures.lock().unwrap();
        failures.iter().filter(|(started, _)| *started > t).map(|(_, e)| e.to_string()).collect()
    }

    /// Answers so far.
    pub fn answered(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits until `n` more calls have been answered.
    pub fn wait_for_more(&self, n: usize, what: &str) {
        let target = self.answered() + n;
        wait_until(Duration::from_secs(20), what, || self.answered() >= target);
    }

    /// Stops the threads; returns (answers, failures).
    pub fn stop(self) -> (Vec<String>, Vec<Error>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (answers, failures.into_iter().map(|(_, e)| e).collect())
    }
}

/// A ZooKeeper of this test's own on 127.0.0.1, started and stopped with
/// `scripts/services.sh zk-private`, so restarts do not disturb anyone else.
pub struct PrivateZk {
    /// Its port.
    pub port: u16,
    /// Its config, data, log and pidfile.
    dir: PathBuf,
}

impl PrivateZk {
    pub fn start() -> PrivateZk {
        init_logging();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("chatroom-zk-{}-{nanos}", std::process::id()));
        let zk = PrivateZk { port, dir };
        zk.up();
        zk
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again, keeping its data) and waits until it serves.
    pub fn up(&self) {
        self.script(&["start", &self.port.to_string(), self.dir.to_str().unwrap()]);
    }

    /// Stops it.
    pub fn down(&self) {
        self.script(&["stop", self.dir.to_str().unwrap()]);
    }

    fn script(&self, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
        assert!(
            std::path::Path::new(script).exists(),
            "{script} is missing: private ZooKeeper tests need `scripts/services.sh zk-private`"
        );
        let out = Command::new("bash").arg(script).arg("zk-private").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "`bash scripts/services.sh zk-private {}` failed (is ZooKeeper installed? \
             `bash scripts/services.sh up` installs it):\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateZk {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
        let _ = Command::new("bash").arg(script).args(["zk-private", "stop"]).arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(feature = "zookeeper")]
/// Removes a test's registry root from the shared ZooKeeper when dropped.
pub struct Cleanup {
    pub zk: String,
    pub root: String,
}

#[cfg(feature = "zookeeper")]
impl Drop for Cleanup {
    fn drop(&mut self) {
        Raw::connect(&self.zk).remove_tree(&self.root);
    }
}

#[cfg(feature = "zookeeper")]
/// Removes a test's registry root that only `digest` (`user:password`) may
/// touch from the shared ZooKeeper when dropped.
pub struct CleanupAs {
    pub zk: String,
    pub root: String,
    pub digest: String,
}

#[cfg(feature = "zookeeper")]
impl Drop for CleanupAs {
    fn drop(&mut self) {
        Raw::connect_as(&self.zk, &self.digest).remove_tree(&self.root);
    }
}
