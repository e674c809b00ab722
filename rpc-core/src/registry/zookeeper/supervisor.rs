//! The supervisor thread: it owns the ZooKeeper client, every registration and
//! every watch, and works through the [`Event`]s callers, the client and fired
//! watches send it, one at a time. `session.rs` keeps its client alive and
//! `nodes.rs` its znodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use zookeeper::{ZkError, ZkState};

use super::nodes::encode;
use super::nodes::{Reg, Watched};
use super::session::{parse_hosts, Client, CONNECT_WAIT, REBUILD_GRACE};
use super::{Config, Event};
use crate::Error;

/// Pause before redoing work that failed for want of a connection.
pub(super) const RETRY: Duration = Duration::from_millis(200);

/// The thread that owns the ZooKeeper client and everything made through it.
pub(super) struct Supervisor {
    /// Settings.
    pub(super) config: Config,
    /// As given to `connect`.
    pub(super) connect_string: String,
    /// The servers, asked whether they serve before a client is built: the
    /// crate's client spins while it cannot connect, and can wedge on a
    /// server that is still starting.
    pub(super) hosts: Vec<SocketAddr>,
    /// For watchers and state listeners to send events back.
    pub(super) events: Sender<Event>,
    /// The current client, if any.
    pub(super) client: Option<Client>,
    /// Generation of the newest client; events of older ones are ignored.
    pub(super) generation: u64,
    /// Keys for registrations and watch callbacks.
    pub(super) next_key: u64,
    /// Live registrations by key.
    pub(super) registrations: HashMap<u64, Reg>,
    /// Watched services by name.
    pub(super) services: HashMap<String, Watched>,
    /// Znodes to delete once ZooKeeper answers again (deregistered while away).
    pub(super) orphans: Vec<String>,
    /// Requests that failed for want of a connection, retried until their deadlines.
    pub(super) pending: Vec<Event>,
    /// Some work failed for want of a connection and must be redone.
    pub(super) dirty: bool,
    /// When to redo it.
    pub(super) retry_at: Option<Instant>,
    /// When ZooKeeper last answered.
    pub(super) healthy_at: Instant,
    /// When the liveness probe last ran.
    pub(super) probed_at: Instant,
    /// When to try building a client again after ZooKeeper was unreachable.
    pub(super) rebuild_at: Option<Instant>,
    /// Failed attempts in a row, for the backoff.
    pub(super) rebuild_failures: u32,
}

/// Builds the supervisor for `connect_string`, establishes the first session on
/// the caller's thread (so that a wrong address fails `connect`), then starts the
/// supervisor's thread. Returns the sender of its events and the thread.
pub(super) fn start(connect_string: &str, config: Config) -> Result<(Sender<Event>, JoinHandle<()>), Error> {
    let hosts = parse_hosts(connect_string)?;
    let (tx, rx) = crossbeam_channel::unbounded();
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
    Ok((tx, thread))
}

/// The client, if it is connected: see `Client::connected`.
pub(super) fn client(client: &Option<Client>) -> ZkResult<&Client> {
    client.as_ref().filter(|c| c.connected).ok_or(ZkError::ConnectionLoss)
}

pub(super) type ZkResult<T> = Result<T, ZkError>;

impl Supervisor {
    /// Establishes the first session on the caller's thread, so that a wrong
    /// address or a ZooKeeper that is down fails `connect`.
    pub(super) fn first_session(&mut self, events: &Receiver<Event>) -> Result<(), Error> {
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
            let mut unproved = None;
            while let Ok(event) = events.recv_deadline(wait) {
                match event {
                    Event::State(g, ZkState::Connected) if g == self.generation => {
                        match self.authenticate() {
                            Ok(()) => self.set_connected(true),
                            Err(e) => {
                                unproved = Some(format!("{e:?} while proving the registry's identities"))
                            }
                        }
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
                Err(ZkError::NoAuth) => {
                    self.drop_client();
                    return Err(Error::Registry(format!(
                        "ZooKeeper at {} refused the registry under {} (NoAuth): its nodes were made \
                         with other credentials than this registry's identities",
                        self.connect_string, self.config.root
                    )));
                }
                Err(e) => last = unproved.unwrap_or_else(|| format!("{e:?}")),
            }
            self.drop_client();
        }
        Err(Error::Registry(format!(
            "cannot reach ZooKeeper at {} within {} ms: {last}",
            self.connect_string,
            self.config.operation_timeout.as_millis()
        )))
    }

    pub(super) fn run(mut self, events: Receiver<Event>) {
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
    pub(super) fn next_wakeup(&self) -> Instant {
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

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::State(generation, state) if generation == self.generation => match state {
                ZkState::Connected | ZkState::ConnectedReadOnly => {
                    tracing::debug!(generation, "zookeeper connected");
                    if let Err(e) = self.authenticate() {
                        // Lost again already, or refused: the crate reconnects
                        // (and says so), or the client is rebuilt when stale.
                        tracing::warn!(generation, error = ?e, "cannot prove the registry's identities to zookeeper");
                        return;
                    }
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
                        if self.retryable(e) && Instant::now() < deadline {
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
                Err(e) if self.retryable(e) && Instant::now() < deadline => {
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
                Err((e, on_change)) if self.retryable(e) && Instant::now() < deadline => {
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

    /// Whether a request that failed with `e` may wait and be tried again: a
    /// connection error, or `NoAuth` or `InvalidACL` when the registry has
    /// identities (a request sent on a new connection before they were proved
    /// again on it is refused so; one refused for good fails at its deadline).
    fn retryable(&self, e: ZkError) -> bool {
        let unproved = matches!(e, ZkError::NoAuth | ZkError::InvalidACL);
        retryable(e) || (unproved && !self.config.identities.is_empty())
    }

    pub(super) fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// Notes an operation that failed; connection trouble is retried later.
    pub(super) fn failed(&mut self, what: &str, name: &str, e: ZkError) {
        if matches!(e, ZkError::NoAuth | ZkError::InvalidACL) {
            tracing::warn!(what, name, root = %self.config.root, "zookeeper refused the registry's identities; will retry");
        } else {
            tracing::debug!(what, name, error = ?e, "zookeeper operation failed; will retry");
        }
        self.dirty = true;
        self.retry_at = Some(Instant::now() + RETRY);
    }

    /// Keeps a request that failed for want of a connection for later.
    pub(super) fn postpone(&mut self, request: Event) {
        self.pending.push(request);
        self.dirty = true;
        self.retry_at.get_or_insert(Instant::now() + RETRY);
    }

    /// Handles postponed requests again: they succeed, fail for good, or
    /// wait some more.
    pub(super) fn retry_pending(&mut self) {
        for request in std::mem::take(&mut self.pending) {
            self.handle(request);
        }
    }
}

/// Whether an error is for want of a connection, so the request may wait for one.
pub(super) fn retryable(e: ZkError) -> bool {
    matches!(
        e,
        ZkError::ConnectionLoss | ZkError::SessionExpired | ZkError::SessionMoved | ZkError::OperationTimeout
    )
}

/// When a postponed request's caller stops waiting.
pub(super) fn request_deadline(request: &Event) -> Option<Instant> {
    match request {
        Event::Register { deadline, .. } | Event::List { deadline, .. } | Event::Watch { deadline, .. } => {
            Some(*deadline)
        }
        _ => None,
    }
}

pub(super) fn zk_error(what: &str, e: ZkError) -> Error {
    Error::Registry(format!("cannot {what}: ZooKeeper said {e:?}"))
}
