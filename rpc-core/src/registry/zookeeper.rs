//! The ZooKeeper registry: one ephemeral znode per instance, and a supervisor
//! thread that owns the session and brings everything back when it is lost.
//!
//! Layout (`docs/PROTOCOL.md`, "Registry"): instance `id` of `service` is the
//! ephemeral sequential znode `{root}/services/{service}/instances/{id}-{seq}`
//! whose data is `{"id":…,"addr":"host:port","metadata":{…}}`.
//!
//! The `zookeeper` crate's client holds one session. It reconnects while the
//! session lasts but never re-sends watches, and once it gives up it stays
//! closed. So one supervisor thread owns the client, every registration and
//! every watch, and works through a closed set of [`Event`]s: callers' requests,
//! client state changes and fired watches. Each time the client (re)connects
//! the supervisor re-arms every watch and checks every registration's znode;
//! when the client closes, or has not reached ZooKeeper for longer than a
//! session, it builds a new one and re-creates the registrations in the new
//! session (deleting the old session's znodes rather than waiting for them to
//! expire). While ZooKeeper is away, watch callbacks are simply not called.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use zookeeper::{Acl, CreateMode, WatchedEvent, ZkError, ZkState, ZooKeeperExt};

use super::{check_name, dedup_newest, Instance, OnChange, Registration, Registry, Watch};
use crate::Error;

/// Settings of a [`ZooKeeper`] registry. Start from `Config::default()`.
///
/// Later versions may add fields, each with a default, so build one as
/// `Config { root: "/myapp".into(), ..Config::default() }`: a struct literal
/// naming every field stops compiling when one is added.
#[derive(Debug, Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub struct Config {
    /// Path under which every service lives, `/rpc-core` by default.
    /// Deployments, and tests, that share one ZooKeeper each take their own
    /// to stay apart. Absolute, without a trailing `/`.
    pub root: String,
    /// Session timeout asked of ZooKeeper (the server clamps it to its own
    /// limits). An instance whose process dies without deregistering leaves
    /// consumers' sets this long after; losing ZooKeeper for longer than this
    /// costs the session, which the registry then re-creates.
    pub session_timeout: Duration,
    /// How long `connect` and each registry call wait for ZooKeeper.
    pub operation_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            root: "/rpc-core".to_owned(),
            session_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
        }
    }
}

/// A registry kept in ZooKeeper (with the `zookeeper` feature, on by default).
///
/// Dropping it closes the session: every instance it registered disappears
/// from ZooKeeper at once.
///
/// ```no_run
/// use rpc_core::registry::{self, Instance, Registry};
/// # fn main() -> Result<(), rpc_core::Error> {
/// let zk = registry::ZooKeeper::connect("127.0.0.1:2181", registry::Config::default())?;
/// let me = Instance::new("echo-1", "127.0.0.1:7000".parse().unwrap());
/// let _registration = zk.register("echo.Echo", &me)?;
/// println!("{:?}", zk.instances("echo.Echo")?);
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub struct ZooKeeper {
    /// Requests to the supervisor.
    events: Sender<Event>,
    /// The supervisor thread, joined on drop.
    supervisor: Option<JoinHandle<()>>,
    /// How long callers wait for the supervisor.
    operation_timeout: Duration,
    /// The servers, for messages.
    connect_string: String,
}

impl ZooKeeper {
    /// Connects to the ZooKeeper servers in `connect_string`
    /// (`"host:port,host:port"`, optionally followed by a chroot path that
    /// must exist) and starts the supervisor thread.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] if the connect string or root is invalid, or no
    /// session could be established within `config.operation_timeout`.
    pub fn connect(connect_string: &str, config: Config) -> Result<ZooKeeper, Error> {
        let root_ok = config.root.starts_with('/')
            && config.root.len() > 1
            && !config.root.ends_with('/')
            && config.root.split('/').skip(1).all(|part| check_name("root", part).is_ok());
        if !root_ok {
            return Err(Error::Registry(format!(
                "invalid root '{}': it must be an absolute path like /rpc-core",
                config.root
            )));
        }
        let hosts = parse_hosts(connect_string)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let operation_timeout = config.operation_timeout;
        let mut supervisor = Supervisor {
            config,
            connect_string: connect_string.to_owned(),
            hosts,
            events: tx.clone(),
            client: None,
            generation: 0,
            next_key: 0,
            registrations: HashMap::new(),
            services: HashMap::new(),
            orphans: Vec::new(),
            pending: Vec::new(),
            dirty: false,
            retry_at: None,
            healthy_at: Instant::now(),
            probed_at: Instant::now(),
            rebuild_at: None,
            rebuild_failures: 0,
        };
        supervisor.first_session(&rx)?;
        let thread = std::thread::Builder::new()
            .name("zk-registry".to_owned())
            .spawn(move || supervisor.run(rx))
            .map_err(|e| Error::Registry(format!("cannot start the registry thread: {e}")))?;
        Ok(ZooKeeper {
            events: tx,
            supervisor: Some(thread),
            operation_timeout,
            connect_string: connect_string.to_owned(),
        })
    }

    /// Sends `event` built around a reply channel and waits for the answer.
    fn ask<T>(
        &self,
        what: &str,
        event: impl FnOnce(Sender<Result<T, Error>>, Instant) -> Event,
    ) -> Result<T, Error> {
        ask(&self.events, self.operation_timeout, what, event)
    }
}

/// Sends the event `event` builds from a reply channel and a deadline, and
/// waits for the reply until then.
fn ask<T>(
    events: &Sender<Event>,
    timeout: Duration,
    what: &str,
    event: impl FnOnce(Sender<Result<T, Error>>, Instant) -> Event,
) -> Result<T, Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let event = event(tx, Instant::now() + timeout);
    events.send(event).map_err(|_| Error::Registry(format!("{what}: the registry is closed")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(Error::Registry(format!(
            "{what}: ZooKeeper did not answer within {} ms",
            timeout.as_millis()
        ))),
        Err(RecvTimeoutError::Disconnected) => {
            Err(Error::Registry(format!("{what}: the registry is closed")))
        }
    }
}

impl Registry for ZooKeeper {
    fn register(&self, service: &str, instance: &Instance) -> Result<Registration, Error> {
        check_name("service", service)?;
        check_name("instance id", &instance.id)?;
        let what = format!("cannot register {}/{}", service, instance.id);
        let key = self.ask(&what, |reply, deadline| Event::Register {
            service: service.to_owned(),
            instance: instance.clone(),
            reply,
            deadline,
        })?;
        let events = self.events.clone();
        let timeout = self.operation_timeout;
        let what = format!("cannot deregister {}/{}", service, instance.id);
        Ok(Registration::new(service, instance.id.clone(), move || {
            match ask(&events, timeout, &what, |reply, _| Event::Deregister { key, reply }) {
                // A closed registry has closed its session, which took the znode.
                Err(Error::Registry(msg)) if msg.ends_with("the registry is closed") => Ok(()),
                other => other,
            }
        }))
    }

    fn instances(&self, service: &str) -> Result<Vec<Instance>, Error> {
        check_name("service", service)?;
        let what = format!("cannot list {service}");
        self.ask(&what, |reply, deadline| Event::List { service: service.to_owned(), reply, deadline })
    }

    fn watch(&self, service: &str, on_change: OnChange) -> Result<Watch, Error> {
        check_name("service", service)?;
        let what = format!("cannot watch {service}");
        let key = self.ask(&what, |reply, deadline| Event::Watch {
            service: service.to_owned(),
            on_change,
            reply,
            deadline,
        })?;
        let events = self.events.clone();
        let service = service.to_owned();
        Ok(Watch::new(move || {
            let _ = events.send(Event::Unwatch { service, key });
        }))
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Close);
        if let Some(thread) = self.supervisor.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeper").field("connect_string", &self.connect_string).finish()
    }
}

/// Everything the supervisor reacts to.
enum Event {
    /// The client of this generation changed state.
    State(u64, ZkState),
    /// The child watch on a service's instances fired: (service, watch token).
    Children(String, u64),
    /// The watch on a registration's own znode fired: (registration key, watch token).
    Node(u64, u64),
    /// Create a registration. Requests that fail for want of a connection
    /// are retried until their deadline.
    Register { service: String, instance: Instance, reply: Sender<Result<u64, Error>>, deadline: Instant },
    /// Remove a registration.
    Deregister { key: u64, reply: Sender<Result<(), Error>> },
    /// List a service once.
    List { service: String, reply: Sender<Result<Vec<Instance>, Error>>, deadline: Instant },
    /// Start calling `on_change` with a service's set.
    Watch { service: String, on_change: OnChange, reply: Sender<Result<u64, Error>>, deadline: Instant },
    /// Stop a watch callback.
    Unwatch { service: String, key: u64 },
    /// The registry was dropped: close the session and stop.
    Close,
}

/// How long after a client was last healthy a new one is built, beyond the
/// session timeout: the crate tries each server for up to 2 s.
const REBUILD_GRACE: Duration = Duration::from_secs(3);
/// How long a new client may take to connect before a fresh one is tried.
/// A ZooKeeper 3.8 server that is still starting can leave a connection open
/// and unanswered; the crate sets no timeout on a client's first connection.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// Pause before redoing work that failed for want of a connection.
const RETRY: Duration = Duration::from_millis(200);
/// Longest pause between attempts to reach an unreachable ZooKeeper: short,
/// so registrations are back before the sessions lost in a restart expire.
const REBUILD_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The thread that owns the ZooKeeper client and everything made through it.
struct Supervisor {
    /// Settings.
    config: Config,
    /// As given to `connect`.
    connect_string: String,
    /// The servers, asked whether they serve before a client is built: the
    /// crate's client spins while it cannot connect, and can wedge on a
    /// server that is still starting.
    hosts: Vec<SocketAddr>,
    /// For watchers and state listeners to send events back.
    events: Sender<Event>,
    /// The current client, if any.
    client: Option<Client>,
    /// Generation of the newest client; events of older ones are ignored.
    generation: u64,
    /// Keys for registrations and watch callbacks.
    next_key: u64,
    /// Live registrations by key.
    registrations: HashMap<u64, Reg>,
    /// Watched services by name.
    services: HashMap<String, Watched>,
    /// Znodes to delete once ZooKeeper answers again (deregistered while away).
    orphans: Vec<String>,
    /// Requests that failed for want of a connection, retried until their deadlines.
    pending: Vec<Event>,
    /// Some work failed for want of a connection and must be redone.
    dirty: bool,
    /// When to redo it.
    retry_at: Option<Instant>,
    /// When ZooKeeper last answered.
    healthy_at: Instant,
    /// When the liveness probe last ran.
    probed_at: Instant,
    /// When to try building a client again after ZooKeeper was unreachable.
    rebuild_at: Option<Instant>,
    /// Failed attempts in a row, for the backoff.
    rebuild_failures: u32,
}

/// One `zookeeper::ZooKeeper` and its generation.
struct Client {
    /// The crate's client: one session. Shared with the liveness probe's thread.
    zk: Arc<zookeeper::ZooKeeper>,
    /// Tells its events apart from older clients'.
    generation: u64,
    /// Whether it said it is connected. The crate queues requests while it
    /// is not and, on a first connection the server never answers, waits for
    /// them forever; so nothing is asked of a client that is not connected.
    connected: bool,
    /// Whether it ever connected.
    ever_connected: bool,
    /// When it was created, to give up on one that never connects.
    created: Instant,
}

/// One registration.
struct Reg {
    /// The service.
    service: String,
    /// The instance, for messages.
    id: String,
    /// The znode's data.
    data: Vec<u8>,
    /// The znode as created: (client generation, path).
    node: Option<(u64, String)>,
    /// The token of the watch last set on the znode. The crate fires every
    /// watcher of a path on one event, so only the newest may act, or
    /// watchers would multiply.
    token: u64,
}

/// One watched service.
struct Watched {
    /// Callbacks by key.
    subscribers: BTreeMap<u64, OnChange>,
    /// Each child znode's parsed data by name (`None` if unreadable); names
    /// never repeat, so entries stay valid and only new children are read.
    nodes: HashMap<String, Option<Instance>>,
    /// The set last delivered.
    set: Vec<Instance>,
    /// Whether the set was ever read.
    known: bool,
    /// The client generation whose session holds the child watch; `None`
    /// when it must be armed again.
    armed: Option<u64>,
    /// The token of the newest child watch (see `Reg::token`).
    token: u64,
}

impl Watched {
    fn new() -> Watched {
        Watched {
            subscribers: BTreeMap::new(),
            nodes: HashMap::new(),
            set: Vec::new(),
            known: false,
            armed: None,
            token: 0,
        }
    }
}

/// The client, if it is connected: see `Client::connected`.
/// Asks `zk` whether `root` exists, on a thread of its own; `None` if no answer came
/// within `timeout` (the thread is left to finish by itself).
fn probe(zk: &Arc<zookeeper::ZooKeeper>, root: &str, timeout: Duration) -> Option<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (zk, root) = (zk.clone(), root.to_owned());
    let spawned = std::thread::Builder::new().name("zk-probe".to_owned()).spawn(move || {
        let _ = tx.send(zk.exists(&root, false).is_ok());
    });
    if spawned.is_err() {
        return Some(false);
    }
    rx.recv_timeout(timeout).ok()
}

fn client(client: &Option<Client>) -> ZkResult<&Client> {
    client.as_ref().filter(|c| c.connected).ok_or(ZkError::ConnectionLoss)
}

type ZkResult<T> = Result<T, ZkError>;

impl Supervisor {
    /// Establishes the first session on the caller's thread, so that a wrong
    /// address or a ZooKeeper that is down fails `connect`.
    fn first_session(&mut self, events: &Receiver<Event>) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.operation_timeout;
        let mut last = String::from("no server accepted a connection");
        while Instant::now() < deadline {
            if !self.reachable() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            self.new_client()?;
            // Only state events can arrive before the supervisor runs.
            let wait = deadline.min(Instant::now() + CONNECT_WAIT);
            while let Ok(event) = events.recv_deadline(wait) {
                match event {
                    Event::State(g, ZkState::Connected) if g == self.generation => {
                        self.set_connected(true);
                        break;
                    }
                    Event::State(g, ZkState::Closed | ZkState::AuthFailed) if g == self.generation => break,
                    _ => {}
                }
            }
            match self.root_ready() {
                Ok(()) => {
                    self.healthy_at = Instant::now();
                    self.probed_at = Instant::now();
                    return Ok(());
                }
                Err(e) => last = format!("{e:?}"),
            }
            self.drop_client();
        }
        Err(Error::Registry(format!(
            "cannot reach ZooKeeper at {} within {} ms: {last}",
            self.connect_string,
            self.config.operation_timeout.as_millis()
        )))
    }

    fn run(mut self, events: Receiver<Event>) {
        loop {
            let timeout = self.next_wakeup().saturating_duration_since(Instant::now());
            match events.recv_timeout(timeout) {
                Ok(Event::Close) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.maintain();
        }
        // Closing the session before `ZooKeeper::drop` returns removes the
        // znodes by then; but a server that does not answer must not hang it.
        if let Some(client) = self.client.take() {
            let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
            let closing = std::thread::Builder::new().name("zk-close".to_owned()).spawn(move || {
                drop(client);
                let _ = done_tx.send(());
            });
            if closing.is_ok() {
                let _ = done_rx.recv_timeout(self.config.operation_timeout);
            }
        }
    }

    /// The next time `maintain` has something to do.
    fn next_wakeup(&self) -> Instant {
        if self.client.is_none() || self.rebuild_at.is_some() {
            let rebuild = self.rebuild_at.unwrap_or_else(Instant::now);
            return self.pending.iter().filter_map(request_deadline).fold(rebuild, Instant::min);
        }
        let mut at = self.probed_at + self.config.session_timeout / 3;
        at = at.min(self.healthy_at + self.config.session_timeout + REBUILD_GRACE);
        if let Some(client) = self.client.as_ref().filter(|c| !c.ever_connected) {
            at = at.min(client.created + CONNECT_WAIT);
        }
        if let Some(t) = self.retry_at.filter(|_| self.dirty) {
            at = at.min(t);
        }
        at
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::State(generation, state) if generation == self.generation => match state {
                ZkState::Connected | ZkState::ConnectedReadOnly => {
                    tracing::debug!(generation, "zookeeper connected");
                    self.set_connected(true);
                    self.healthy_at = Instant::now();
                    // A new connection has none of the old one's watches.
                    self.services.values_mut().for_each(|w| w.armed = None);
                    self.dirty = true;
                    self.resync();
                }
                ZkState::Closed | ZkState::AuthFailed => {
                    tracing::info!(generation, ?state, "zookeeper session closed; starting a new one");
                    self.set_connected(false);
                    self.rebuild_at = Some(Instant::now());
                }
                _ => {
                    tracing::debug!(generation, ?state, "zookeeper disconnected");
                    self.set_connected(false);
                }
            },
            Event::State(..) => {}
            Event::Children(service, token) => {
                let Some(watched) = self.services.get_mut(&service) else { return };
                if watched.token == token {
                    watched.armed = None;
                    if let Err(e) = self.relist(&service) {
                        self.failed("relist", &service, e);
                    }
                }
            }
            Event::Node(key, token) => {
                let Some(reg) = self.registrations.get(&key) else { return };
                if reg.token == token {
                    let id = reg.id.clone();
                    if let Err(e) = self.ensure_registered(key) {
                        self.failed("re-register", &id, e);
                    }
                }
            }
            Event::Register { service, instance, reply, deadline } => {
                let key = self.key();
                let (id, data) = (instance.id.clone(), encode(&instance));
                self.registrations
                    .insert(key, Reg { service: service.clone(), id, data, node: None, token: 0 });
                match self.ensure_registered(key) {
                    Ok(()) => {
                        if reply.send(Ok(key)).is_err() {
                            // The caller gave up waiting; it holds no registration.
                            self.deregister(key);
                        }
                    }
                    Err(e) => {
                        // Deletes a znode if one was made, now or once ZooKeeper is back.
                        self.deregister(key);
                        if retryable(e) && Instant::now() < deadline {
                            self.postpone(Event::Register { service, instance, reply, deadline });
                        } else {
                            let _ = reply.send(Err(zk_error("create the instance znode", e)));
                        }
                    }
                }
            }
            Event::Deregister { key, reply } => {
                self.deregister(key);
                let _ = reply.send(Ok(()));
            }
            Event::List { service, reply, deadline } => match self.list(&service) {
                Err(e) if retryable(e) && Instant::now() < deadline => {
                    self.postpone(Event::List { service, reply, deadline });
                }
                result => {
                    let _ = reply.send(result.map_err(|e| zk_error("list", e)));
                }
            },
            Event::Watch { service, on_change, reply, deadline } => match self.watch(&service, on_change) {
                Ok(key) => {
                    if reply.send(Ok(key)).is_err() {
                        // The caller gave up waiting: nobody holds a `Watch` to cancel it.
                        self.unwatch(&service, key);
                    }
                }
                Err((e, on_change)) if retryable(e) && Instant::now() < deadline => {
                    self.postpone(Event::Watch { service, on_change, reply, deadline });
                }
                Err((e, _)) => {
                    let _ = reply.send(Err(zk_error("list", e)));
                }
            },
            Event::Unwatch { service, key } => self.unwatch(&service, key),
            Event::Close => {}
        }
    }

    fn unwatch(&mut self, service: &str, key: u64) {
        if let Some(w) = self.services.get_mut(service) {
            w.subscribers.remove(&key);
            if w.subscribers.is_empty() {
                self.services.remove(service);
            }
        }
    }

    fn set_connected(&mut self, connected: bool) {
        if let Some(client) = &mut self.client {
            client.connected = connected;
            client.ever_connected |= connected;
        }
    }

    /// Periodic work: rebuild a lost client, redo failed work, probe liveness.
    fn maintain(&mut self) {
        let now = Instant::now();
        let stale = now.duration_since(self.healthy_at) > self.config.session_timeout + REBUILD_GRACE
            || self
                .client
                .as_ref()
                .is_some_and(|c| !c.ever_connected && now.duration_since(c.created) > CONNECT_WAIT);
        if self.client.is_none() || stale || self.rebuild_at.is_some_and(|t| t <= now) {
            if self.rebuild_at.is_none_or(|t| t <= now) {
                self.rebuild();
            } else if self.pending.iter().any(|r| request_deadline(r).is_some_and(|d| d <= now)) {
                // No client to retry with: answer the requests whose time is up.
                self.retry_pending();
            }
            return;
        }
        if self.dirty && self.retry_at.is_none_or(|t| t <= now) {
            self.resync();
        } else if now.duration_since(self.probed_at) >= self.config.session_timeout / 3 {
            // The crate pings by itself; this notices a client whose I/O
            // thread died without saying so, or whose connection stopped
            // answering without closing (the crate then waits forever: the
            // probe runs on a thread of its own, and is given up on in time).
            self.probed_at = now;
            if let Ok(client) = client(&self.client) {
                match probe(&client.zk, &self.config.root, self.config.operation_timeout) {
                    Some(true) => self.healthy_at = Instant::now(),
                    Some(false) => {}
                    None => {
                        tracing::warn!(
                            timeout_ms = self.config.operation_timeout.as_millis() as u64,
                            "zookeeper did not answer a probe in time; replacing the client"
                        );
                        self.rebuild_at = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Replaces the client by a new one, once a server is serving.
    fn rebuild(&mut self) {
        self.drop_client();
        if !self.reachable() {
            self.rebuild_failures = self.rebuild_failures.saturating_add(1);
            let backoff = Duration::from_millis(50)
                .saturating_mul(1 << self.rebuild_failures.min(8))
                .min(REBUILD_BACKOFF_MAX);
            self.rebuild_at = Some(Instant::now() + backoff);
            return;
        }
        if let Err(error) = self.new_client() {
            tracing::warn!(%error, "cannot create a zookeeper client");
            self.rebuild_at = Some(Instant::now() + REBUILD_BACKOFF_MAX);
            return;
        }
        tracing::info!(
            generation = self.generation,
            "new zookeeper client; re-registering and re-watching once connected"
        );
        self.rebuild_failures = 0;
        self.rebuild_at = None;
        // Give the new client a whole session to connect; the work is redone
        // when it says it is connected.
        self.healthy_at = Instant::now();
        self.services.values_mut().for_each(|w| w.armed = None);
        self.dirty = true;
    }

    /// Whether any server is serving.
    fn reachable(&self) -> bool {
        self.hosts.iter().any(|addr| serving(*addr))
    }

    /// Creates a client of the next generation and listens to its state.
    fn new_client(&mut self) -> Result<(), Error> {
        self.generation += 1;
        let generation = self.generation;
        let connect_string = self.connect_string.clone();
        let timeout = self.config.session_timeout;
        // The crate panics instead of failing when its first socket cannot
        // be created; keep that from taking the registry down.
        let zk = std::panic::catch_unwind(move || {
            zookeeper::ZooKeeper::connect(&connect_string, timeout, |_: WatchedEvent| {})
        })
        .map_err(|_| Error::Registry("the zookeeper client panicked while connecting".to_owned()))?
        .map_err(|e| zk_error("connect", e))?;
        let events = self.events.clone();
        zk.add_listener(move |state| {
            let _ = events.send(Event::State(generation, state));
        });
        self.client = Some(Client {
            zk: Arc::new(zk),
            generation,
            connected: false,
            ever_connected: false,
            created: Instant::now(),
        });
        Ok(())
    }

    /// Drops the client on a helper thread: closing a session can wait for a
    /// server that is not there.
    fn drop_client(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new().name("zk-close".to_owned()).spawn(move || drop(client));
        }
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// Notes an operation that failed; connection trouble is retried later.
    fn failed(&mut self, what: &str, name: &str, e: ZkError) {
        tracing::debug!(what, name, error = ?e, "zookeeper operation failed; will retry");
        self.dirty = true;
        self.retry_at = Some(Instant::now() + RETRY);
    }

    /// Keeps a request that failed for want of a connection for later.
    fn postpone(&mut self, request: Event) {
        self.pending.push(request);
        self.dirty = true;
        self.retry_at.get_or_insert(Instant::now() + RETRY);
    }

    /// Handles postponed requests again: they succeed, fail for good, or
    /// wait some more.
    fn retry_pending(&mut self) {
        for request in std::mem::take(&mut self.pending) {
            self.handle(request);
        }
    }

    /// Makes ZooKeeper match what this registry holds (orphans deleted,
    /// registrations present, watches armed), then retries postponed requests.
    fn resync(&mut self) {
        self.dirty = false;
        self.retry_at = None;
        if let Err(e) = self.try_resync() {
            self.failed("resync", "", e);
        }
        self.retry_pending();
    }

    fn try_resync(&mut self) -> ZkResult<()> {
        self.root_ready()?;
        self.healthy_at = Instant::now();
        while let Some(path) = self.orphans.last() {
            match client(&self.client)?.zk.delete(path, None) {
                Ok(()) | Err(ZkError::NoNode) => {
                    self.orphans.pop();
                }
                Err(e) => return Err(e),
            }
        }
        let keys: Vec<u64> = self.registrations.keys().copied().collect();
        for key in keys {
            self.ensure_registered(key)?;
        }
        let stale: Vec<String> = self
            .services
            .iter()
            .filter(|(_, w)| w.armed != Some(self.generation))
            .map(|(service, _)| service.clone())
            .collect();
        for service in stale {
            self.relist(&service)?;
        }
        Ok(())
    }

    fn root_ready(&self) -> ZkResult<()> {
        client(&self.client)?.zk.ensure_path(&format!("{}/services", self.config.root))
    }

    fn instances_dir(&self, service: &str) -> String {
        format!("{}/services/{service}/instances", self.config.root)
    }

    /// Makes sure registration `key` has a znode in the current session,
    /// with a watch on it that tells us if it goes.
    fn ensure_registered(&mut self, key: u64) -> ZkResult<()> {
        let token = self.key();
        let client = client(&self.client)?;
        let (generation, zk) = (client.generation, &client.zk);
        // Znodes other registrations hold, which are not twins of this one.
        let claimed: Vec<String> = self
            .registrations
            .iter()
            .filter(|(k, _)| **k != key)
            .filter_map(|(_, r)| r.node.as_ref().map(|(_, path)| path.clone()))
            .collect();
        let Some(reg) = self.registrations.get_mut(&key) else { return Ok(()) };
        let events = self.events.clone();
        let watcher = move |_: WatchedEvent| {
            let _ = events.send(Event::Node(key, token));
        };
        let stale = match &reg.node {
            Some((g, path)) if *g == generation => {
                // Made by this client: present unless the session changed
                // under it. If it is only about to go, the watch tells us.
                if zk.exists_w(path, watcher.clone())?.is_some() {
                    reg.token = token;
                    return Ok(());
                }
                None
            }
            // Made in an earlier session, which is gone or going. Deleted
            // once the new znode exists, so consumers never miss the instance.
            Some((_, path)) => Some(path.clone()),
            None => None,
        };
        let dir = format!("{}/services/{}/instances", self.config.root, reg.service);
        zk.ensure_path(&dir)?;
        let path = zk.create(
            &format!("{dir}/{}-", reg.id),
            reg.data.clone(),
            Acl::open_unsafe().clone(),
            CreateMode::EphemeralSequential,
        )?;
        reg.node = Some((generation, path.clone()));
        let owner = zk.exists_w(&path, watcher)?.map(|stat| stat.ephemeral_owner);
        reg.token = token;
        // A create whose answer was lost to a dropped connection may have made
        // a twin in this session: delete any znode of this id that this
        // session owns and no registration holds, other than the new one.
        let prefix = format!("{}-", reg.id);
        for child in zk.get_children(&dir, false)? {
            let sequence = child
                .strip_prefix(&prefix)
                .filter(|s| s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()));
            let twin = format!("{dir}/{child}");
            if sequence.is_some() && twin != path && !claimed.contains(&twin) {
                if let Some(stat) = zk.exists(&twin, false)? {
                    if Some(stat.ephemeral_owner) == owner {
                        let _ = zk.delete(&twin, None);
                    }
                }
            }
        }
        tracing::debug!(%path, "registered");
        if let Some(stale) = stale {
            match zk.delete(&stale, None) {
                Ok(()) | Err(ZkError::NoNode) => {}
                Err(_) => self.orphans.push(stale),
            }
        }
        if owner.is_none() {
            // Gone already: the session changed during the create.
            return Err(ZkError::ConnectionLoss);
        }
        Ok(())
    }

    fn deregister(&mut self, key: u64) {
        let Some(reg) = self.registrations.remove(&key) else { return };
        let Some((_, path)) = reg.node else { return };
        let deleted = match client(&self.client) {
            Ok(client) => matches!(client.zk.delete(&path, None), Ok(()) | Err(ZkError::NoNode)),
            Err(_) => false,
        };
        if !deleted {
            // Delete it when ZooKeeper is back; the session may outlive the wait.
            self.orphans.push(path);
            self.dirty = true;
            self.retry_at.get_or_insert(Instant::now() + RETRY);
        }
    }

    /// Adds a watch callback and calls it with the current set; gives the
    /// callback back if the set cannot be read and was never known.
    fn watch(&mut self, service: &str, mut on_change: OnChange) -> Result<u64, (ZkError, OnChange)> {
        let watched = self.services.entry(service.to_owned()).or_insert_with(Watched::new);
        if watched.armed != Some(self.generation) {
            if let Err(e) = self.relist(service) {
                let watched = &self.services[service];
                if !watched.known {
                    if watched.subscribers.is_empty() {
                        self.services.remove(service);
                    }
                    return Err((e, on_change));
                }
                // Serve the last known set; the watch is armed when ZooKeeper is back.
                self.failed("watch", service, e);
            }
        }
        let key = self.key();
        let watched = self.services.get_mut(service).expect("inserted above");
        on_change(&watched.set);
        watched.subscribers.insert(key, on_change);
        Ok(key)
    }

    /// Reads a service's instances, arming the child watch, and tells the
    /// subscribers if the set changed.
    fn relist(&mut self, service: &str) -> ZkResult<()> {
        let token = self.key();
        let dir = self.instances_dir(service);
        let client = client(&self.client)?;
        let (generation, zk) = (client.generation, &client.zk);
        let events = self.events.clone();
        let name = service.to_owned();
        let watcher = move |_: WatchedEvent| {
            let _ = events.send(Event::Children(name.clone(), token));
        };
        let children = match zk.get_children_w(&dir, watcher.clone()) {
            Err(ZkError::NoNode) => {
                zk.ensure_path(&dir)?;
                zk.get_children_w(&dir, watcher)?
            }
            other => other?,
        };
        let Some(watched) = self.services.get_mut(service) else { return Ok(()) };
        watched.token = token;
        watched.nodes.retain(|child, _| children.contains(child));
        for child in children {
            let path = format!("{dir}/{child}");
            if let Entry::Vacant(slot) = watched.nodes.entry(child) {
                match zk.get_data(&path, false) {
                    Ok((data, _)) => {
                        let parsed = decode(&data);
                        if parsed.is_none() {
                            tracing::warn!(%path, "ignoring a znode whose data is not an instance");
                        }
                        slot.insert(parsed);
                    }
                    // Gone already; the child watch fires for it.
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        watched.armed = Some(generation);
        let set = newest(&watched.nodes);
        if !watched.known || set != watched.set {
            watched.known = true;
            watched.set = set;
            for on_change in watched.subscribers.values_mut() {
                on_change(&watched.set);
            }
        }
        self.healthy_at = Instant::now();
        Ok(())
    }

    fn list(&self, service: &str) -> ZkResult<Vec<Instance>> {
        let zk = &client(&self.client)?.zk;
        let dir = self.instances_dir(service);
        let children = match zk.get_children(&dir, false) {
            Err(ZkError::NoNode) => return Ok(Vec::new()),
            other => other?,
        };
        let cached = self.services.get(service).map(|w| &w.nodes);
        let mut nodes = HashMap::new();
        for child in children {
            let parsed = match cached.and_then(|c| c.get(&child)) {
                Some(parsed) => parsed.clone(),
                None => match zk.get_data(&format!("{dir}/{child}"), false) {
                    Ok((data, _)) => decode(&data),
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(e),
                },
            };
            nodes.insert(child, parsed);
        }
        Ok(newest(&nodes))
    }
}

/// The set from child znodes: the newest znode (highest sequence) per id.
fn newest(nodes: &HashMap<String, Option<Instance>>) -> Vec<Instance> {
    dedup_newest(nodes.iter().filter_map(|(child, instance)| {
        let sequence =
            child.len().checked_sub(10).and_then(|at| child.get(at..)?.parse::<u64>().ok()).unwrap_or(0);
        instance.clone().map(|instance| (sequence, instance))
    }))
}

/// An instance znode's data.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeData {
    /// The instance id.
    id: String,
    /// `host:port`.
    addr: SocketAddr,
    /// Labels; absent means none.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn encode(instance: &Instance) -> Vec<u8> {
    let data = NodeData { id: instance.id.clone(), addr: instance.addr, metadata: instance.metadata.clone() };
    serde_json::to_vec(&data).expect("a map of strings always serializes")
}

fn decode(data: &[u8]) -> Option<Instance> {
    let data: NodeData = serde_json::from_slice(data).ok()?;
    Some(Instance { id: data.id, addr: data.addr, metadata: data.metadata })
}

/// Whether an error is for want of a connection, so the request may wait for one.
fn retryable(e: ZkError) -> bool {
    matches!(
        e,
        ZkError::ConnectionLoss | ZkError::SessionExpired | ZkError::SessionMoved | ZkError::OperationTimeout
    )
}

/// When a postponed request's caller stops waiting.
fn request_deadline(request: &Event) -> Option<Instant> {
    match request {
        Event::Register { deadline, .. } | Event::List { deadline, .. } | Event::Watch { deadline, .. } => {
            Some(*deadline)
        }
        _ => None,
    }
}

fn zk_error(what: &str, e: ZkError) -> Error {
    Error::Registry(format!("cannot {what}: ZooKeeper said {e:?}"))
}

/// Whether the ZooKeeper server at `addr` serves clients. Asks `srvr`: a
/// server that is still starting says it is not serving (and may wedge a
/// client that connects then). If `srvr` is not allowed, or the server does
/// not answer it, accepting the connection has to do.
fn serving(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(500);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"srvr").is_err() {
        return true;
    }
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    !String::from_utf8_lossy(&answer).contains("not currently serving")
}

/// The servers of a connect string, resolved, for reachability probes.
fn parse_hosts(connect_string: &str) -> Result<Vec<SocketAddr>, Error> {
    let servers = connect_string.split('/').next().unwrap_or_default();
    let hosts: Vec<SocketAddr> = servers
        .split(',')
        .filter_map(|host| host.trim().to_socket_addrs().ok().and_then(|mut addrs| addrs.next()))
        .collect();
    if hosts.is_empty() {
        return Err(Error::Registry(format!(
            "no server address in ZooKeeper connect string '{connect_string}' (expected host:port[,host:port][/chroot])"
        )));
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn znode_data_round_trips_and_tolerates_missing_metadata() {
        let instance = Instance::new("a", "127.0.0.1:7000".parse().unwrap()).with_metadata("zone", "z1");
        let data = encode(&instance);
        assert_eq!(
            std::str::from_utf8(&data).unwrap(),
            r#"{"id":"a","addr":"127.0.0.1:7000","metadata":{"zone":"z1"}}"#
        );
        assert_eq!(decode(&data), Some(instance));
        let bare = decode(br#"{"id":"b","addr":"[::1]:80","extra":1}"#).unwrap();
        assert!(bare.metadata.is_empty());
        assert_eq!(decode(b"garbage"), None);
    }

    #[test]
    fn newest_znode_per_id_wins() {
        let a1 = Instance::new("a", "127.0.0.1:1".parse().unwrap());
        let a2 = Instance::new("a", "127.0.0.1:2".parse().unwrap());
        let nodes = HashMap::from([
            ("a-0000000009".to_owned(), Some(a1)),
            ("a-0000000010".to_owned(), Some(a2.clone())),
            ("junk-0000000011".to_owned(), None),
        ]);
        assert_eq!(newest(&nodes), vec![a2]);
    }

    #[test]
    fn connect_strings_are_parsed() {
        assert_eq!(parse_hosts("127.0.0.1:2181,127.0.0.1:2182/app").unwrap().len(), 2);
        assert!(parse_hosts("/only-a-chroot").is_err());
    }
}
