//! Client-side load balancing over the instances of a discovered service.
//!
//! [`Balanced`] is a [`Transport`]: generated stubs call through it as through
//! a [`Channel`]. It keeps one channel per instance address, reused when the
//! set changes, and picks an instance per call: in turn
//! ([`Strategy::RoundRobin`], the default), the one with the fewest calls
//! running ([`Strategy::LeastInFlight`]), or by consistent hash of a key the
//! caller gives ([`Balanced::with_key`]), so one user's calls keep going to one
//! instance while the set holds still.
//!
//! An instance leaves rotation when its registration goes or when a call to it
//! fails to connect or loses its connection. One exception: when the set
//! empties, the last instances stay. An empty set is far more often a
//! registry hiccup (sessions expiring across a ZooKeeper restart before the
//! providers re-register) than every instance leaving at once; if they are
//! really gone, their connection failures take them out of rotation, and
//! calls fail with the connection error. A prober thread (started the
//! first time an instance fails) then tries to connect to it, waiting
//! `probe_initial`, doubling up to `probe_max` between attempts, and puts it
//! back once it accepts. A call that fails in a way that proves it never
//! reached a server ([`Error::is_retryable_elsewhere`]) is tried again on
//! another instance, each instance at most once, within the call's deadline;
//! a call that may have run is never sent twice.
//!
//! Parts: `balance/ring.rs` holds the consistent-hash ring and its stable hash.
//!
//! ```no_run
//! use rpc_core::balance::{Balanced, Config};
//! use rpc_core::registry::{self, Discovery};
//! # fn main() -> Result<(), rpc_core::Error> {
//! let zk = registry::ZooKeeper::connect("127.0.0.1:2181", registry::Config::default())?;
//! let echo = Balanced::new(Discovery::new(&zk, "test.Echo")?, Config::default());
//! let reply = echo.call_raw("test.Echo", "Say", b"hi", None)?;
//! // Every call for user 42 goes to the same instance.
//! let reply = echo.with_key(42u64).call_raw("test.Echo", "Say", b"hi", None)?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prost::Message;

use crate::client::{self, Callback, Channel, Transport};
use crate::registry::{Discovery, Instance, Registry};
use crate::Error;

mod ring;

use ring::Ring;

/// How a call without a key picks an instance. Calls with a key use the
/// consistent-hash ring instead: see [`Balanced::with_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest calls from this balancer still running;
    /// ties go in turn.
    LeastInFlight,
}

/// Settings of a [`Balanced`]. Start from `Config::default()`.
#[derive(Debug, Clone)]
pub struct Config {
    /// How calls without a key pick an instance.
    pub strategy: Strategy,
    /// Settings of the channel opened to each instance. Its `default_timeout`
    /// is also the deadline of calls that give none, retries included.
    pub channel: client::Config,
    /// Points per instance on the consistent-hash ring; more spread keys more
    /// evenly.
    pub virtual_nodes: usize,
    /// Wait before the first probe of an instance that left rotation.
    pub probe_initial: Duration,
    /// Longest wait between probes; the wait doubles per failed probe.
    pub probe_max: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            strategy: Strategy::RoundRobin,
            channel: client::Config::default(),
            virtual_nodes: 160,
            probe_initial: Duration::from_millis(100),
            probe_max: Duration::from_secs(5),
        }
    }
}

/// A [`Transport`] that spreads calls over the instances of a discovered
/// service; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Balanced {
    /// Shared by every clone and by the prober thread (weakly).
    shared: Arc<Shared>,
}

/// A [`Transport`] that sends every call to the instance a key hashes to (the
/// next one around the ring while that one is out of rotation).
#[derive(Clone)]
pub struct Keyed {
    /// The balancer.
    balanced: Balanced,
    /// The key's stable hash.
    hash: u64,
}

struct Shared {
    /// The instance set.
    discovery: Discovery,
    /// Settings.
    config: Config,
    /// Endpoints for one version of the set; replaced when it changes.
    table: RwLock<Arc<Table>>,
    /// Round-robin position.
    next: AtomicUsize,
    /// Endpoints that left the set, closed once their calls finish.
    retired: Mutex<Vec<Arc<Endpoint>>>,
    /// Wakes the prober thread, once started.
    prober: OnceLock<Sender<()>>,
}

/// The endpoints of one version of the instance set.
struct Table {
    /// The discovery version this table was built from.
    version: u64,
    /// One per instance, in the set's order (by id).
    endpoints: Vec<Arc<Endpoint>>,
    /// The consistent-hash ring over `endpoints`.
    ring: Ring,
}

/// One instance and the channel to it.
struct Endpoint {
    /// The instance as registered.
    instance: Instance,
    /// The channel; the prober swaps in a freshly connected one when the
    /// instance comes back, so no stale backoff delays the first calls.
    channel: Mutex<Channel>,
    /// Calls from this balancer running on it.
    in_flight: AtomicUsize,
    /// Gone from the instance set: no call starts on it any more, and its channel is
    /// closed once `in_flight` is 0.
    retired: AtomicBool,
    /// Out of rotation since a connection failure.
    down: AtomicBool,
    /// When to probe it next, and how many probes failed.
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Probes failed in a row.
    failures: u32,
    /// No probe before this.
    next_probe: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Balanced {
    /// Balances over the instances `discovery` finds.
    pub fn new(discovery: Discovery, config: Config) -> Balanced {
        let empty = Table { version: u64::MAX, endpoints: Vec::new(), ring: Ring::default() };
        let shared = Shared {
            discovery,
            config,
            table: RwLock::new(Arc::new(empty)),
            next: AtomicUsize::new(0),
            retired: Mutex::new(Vec::new()),
            prober: OnceLock::new(),
        };
        Balanced { shared: Arc::new(shared) }
    }

    /// Discovers `service` in `registry` and balances over it.
    ///
    /// # Errors
    ///
    /// As [`Discovery::new`].
    pub fn discover(registry: &dyn Registry, service: &str, config: Config) -> Result<Balanced, Error> {
        Ok(Balanced::new(Discovery::new(registry, service)?, config))
    }

    /// The service balanced over, as named in the registry.
    pub fn service(&self) -> &str {
        self.shared.discovery.service()
    }

    /// A transport whose calls all go where `key` hashes to on the
    /// consistent-hash ring. When an instance joins or leaves, only the keys
    /// on its part of the ring move. The hash is stable across processes, so
    /// every consumer sends a key to the same instance.
    pub fn with_key(&self, key: impl Hash) -> Keyed {
        Keyed { balanced: self.clone(), hash: ring::stable_hash(key) }
    }

    /// The instances calls may go to now: those discovered, minus those out
    /// of rotation.
    pub fn in_rotation(&self) -> Vec<Instance> {
        let table = self.shared.table();
        table.endpoints.iter().filter(|e| !e.is_down()).map(|e| e.instance.clone()).collect()
    }

    /// Calls with an already-encoded body, as [`Channel::call_raw`].
    ///
    /// # Errors
    ///
    /// As [`Transport::call`], and [`Error::NoInstances`] when the service has
    /// no instance.
    pub fn call_raw(
        &self,
        service: &str,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        self.shared.call(None, timeout, |ch, left| ch.call_raw(service, method, body, left))
    }
}

impl Keyed {
    /// Calls with an already-encoded body, as [`Balanced::call_raw`].
    ///
    /// # Errors
    ///
    /// As [`Balanced::call_raw`].
    pub fn call_raw(
        &self,
        service: &str,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        let shared = &self.balanced.shared;
        shared.call(Some(self.hash), timeout, |ch, left| ch.call_raw(service, method, body, left))
    }
}

impl Transport for Balanced {
    fn call<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        self.shared.call(None, timeout, |ch, left| ch.call(service, method, request, left))
    }

    fn call_with<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
        callback: Callback,
    ) {
        let body = Bytes::from(request.encode_to_vec());
        AsyncCall::start(&self.shared, None, service, method, body, timeout, callback);
    }
}

impl Transport for Keyed {
    fn call<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        let shared = &self.balanced.shared;
        shared.call(Some(self.hash), timeout, |ch, left| ch.call(service, method, request, left))
    }

    fn call_with<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
        callback: Callback,
    ) {
        let body = Bytes::from(request.encode_to_vec());
        AsyncCall::start(&self.balanced.shared, Some(self.hash), service, method, body, timeout, callback);
    }
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.service())
            .field("strategy", &self.shared.config.strategy)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed").field("service", &self.balanced.service()).field("hash", &self.hash).finish()
    }
}

impl Endpoint {
    fn new(instance: Instance, channel: Channel) -> Endpoint {
        Endpoint {
            instance,
            channel: Mutex::new(channel),
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            down: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn channel(&self) -> Channel {
        lock(&self.channel).clone()
    }

    /// Counts a call as running; false (counting nothing) if the endpoint was retired.
    /// With [`Endpoint::retire`] this is a handshake in sequentially consistent order:
    /// either the call sees the endpoint retired and goes elsewhere, or the retirer sees
    /// the call and leaves the channel open until it ends.
    fn enter(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.retired.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts a call as running until the guard drops; `None` if the endpoint was retired.
    fn start(&self) -> Option<InFlight<'_>> {
        self.enter().then_some(InFlight(self))
    }

    /// Takes the endpoint out of use; returns whether no call runs on it, so that its
    /// channel may be closed now.
    fn retire(&self) -> bool {
        self.retired.store(true, Ordering::SeqCst);
        self.is_idle()
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// A call got through: back in rotation if it was out.
    fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            *lock(&self.health) = Health::default();
            tracing::info!(addr = %self.instance.addr, id = %self.instance.id, "instance back in rotation");
        }
    }
}

/// Decrements an endpoint's in-flight count when dropped.
struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Whether an error says the instance cannot be reached.
fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Connect { .. } | Error::ConnectionLost { .. })
}

impl Shared {
    /// The current table, rebuilt first if the set changed.
    fn table(self: &Arc<Shared>) -> Arc<Table> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        if table.version == self.discovery.version() {
            return table;
        }
        self.refresh()
    }

    /// Rebuilds the table from the discovered set, keeping the endpoint (and
    /// so the channel) of every address still in it.
    fn refresh(self: &Arc<Shared>) -> Arc<Table> {
        let mut current = self.table.write().unwrap_or_else(|p| p.into_inner());
        let (version, set) = self.discovery.snapshot();
        if current.version == version {
            return current.clone();
        }
        let set: Vec<Instance> = if set.is_empty() && !current.endpoints.is_empty() {
            tracing::warn!(
                service = %self.discovery.service(),
                "the registry lists no instance; calls keep going to the last ones it listed"
            );
            current.endpoints.iter().map(|e| e.instance.clone()).collect()
        } else {
            set.to_vec()
        };
        let mut retired = lock(&self.retired);
        let mut old: HashMap<SocketAddr, Arc<Endpoint>> = retired
            .drain(..)
            .chain(current.endpoints.iter().cloned())
            .map(|e| (e.instance.addr, e))
            .collect();
        let endpoints: Vec<Arc<Endpoint>> = set
            .iter()
            .map(|instance| match old.remove(&instance.addr) {
                Some(e) if e.instance == *instance => {
                    // Back in the set before its retirement completed: still open, since
                    // a channel is closed only after leaving `retired` (locked here).
                    e.retired.store(false, Ordering::SeqCst);
                    e
                }
                Some(e) => Arc::new(Endpoint::new(instance.clone(), e.channel())),
                None => Arc::new(Endpoint::new(
                    instance.clone(),
                    Channel::lazy(instance.addr, self.config.channel.clone()),
                )),
            })
            .collect();
        let mut to_close = Vec::new();
        for (_, endpoint) in old {
            if endpoint.retire() {
                to_close.push(endpoint.channel());
            } else {
                retired.push(endpoint);
            }
        }
        let has_retired = !retired.is_empty();
        drop(retired);
        let ring = Ring::new(endpoints.iter().map(|e| e.instance.id.as_str()), self.config.virtual_nodes);
        tracing::debug!(service = %self.discovery.service(), instances = endpoints.len(), "instance set changed");
        *current = Arc::new(Table { version, endpoints, ring });
        let table = current.clone();
        drop(current);
        // Closing takes each channel's slot lock, which a connect in progress
        // holds: never while the table is locked.
        for channel in to_close {
            channel.close();
        }
        if has_retired {
            self.wake_prober();
        }
        table
    }

    /// Picks an endpoint not in `tried`: one in rotation if any, else one out
    /// of rotation (it may be back before its probe says so).
    fn pick(&self, table: &Table, key: Option<u64>, tried: &[usize]) -> Option<usize> {
        let n = table.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = if key.is_some() { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        for in_rotation_only in [true, false] {
            let eligible =
                |i: usize| !tried.contains(&i) && (!in_rotation_only || !table.endpoints[i].is_down());
            let found = match (key, self.config.strategy) {
                (Some(hash), _) => table.ring.walk(hash).find(|&i| eligible(i)),
                (None, Strategy::RoundRobin) => (0..n).map(|k| (start + k) % n).find(|&i| eligible(i)),
                (None, Strategy::LeastInFlight) => (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| eligible(i))
                    .min_by_key(|&i| table.endpoints[i].in_flight.load(Ordering::Relaxed)),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Runs `attempt` on picked endpoints until one answers, the error says
    /// the call may have run, or every endpoint was tried.
    fn call(
        self: &Arc<Shared>,
        key: Option<u64>,
        timeout: Option<Duration>,
        mut attempt: impl FnMut(&Channel, Option<Duration>) -> Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        let mut table = self.table();
        let deadline = timeout.or(self.config.channel.default_timeout).map(|t| Instant::now() + t);
        let mut tried = Vec::new();
        let mut last_error = None;
        while let Some(i) = self.pick(&table, key, &tried) {
            let left = match deadline {
                Some(d) if Instant::now() >= d && last_error.is_some() => break,
                Some(d) => Some(d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))),
                None => None,
            };
            let endpoint = table.endpoints[i].clone();
            let Some(running) = endpoint.start() else {
                // The instance set changed since `table` was read: pick from the new one.
                table = self.table();
                tried.clear();
                continue;
            };
            tried.push(i);
            let result = attempt(&endpoint.channel(), left);
            drop(running);
            match result {
                Ok(reply) => {
                    endpoint.succeeded();
                    return Ok(reply);
                }
                Err(e) => {
                    if unreachable(&e) {
                        self.leave_rotation(&endpoint, &e);
                    }
                    if !e.is_retryable_elsewhere() {
                        return Err(e);
                    }
                    tracing::debug!(addr = %endpoint.instance.addr, error = %e, "trying another instance");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| self.no_instances()))
    }

    fn no_instances(&self) -> Error {
        Error::NoInstances { service: self.discovery.service().to_owned() }
    }

    /// Takes an endpoint out of rotation and has the prober watch it.
    fn leave_rotation(self: &Arc<Shared>, endpoint: &Endpoint, error: &Error) {
        if endpoint.down.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&endpoint.health) =
            Health { failures: 0, next_probe: Some(Instant::now() + self.config.probe_initial) };
        tracing::info!(
            service = %self.discovery.service(),
            addr = %endpoint.instance.addr,
            id = %endpoint.instance.id,
            %error,
            "instance leaves rotation"
        );
        self.wake_prober();
    }

    /// Wakes the prober thread, starting it the first time.
    fn wake_prober(self: &Arc<Shared>) {
        let wake = self.prober.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let shared = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name(format!("balance-{}", self.discovery.service()))
                .spawn(move || probe_loop(shared, rx));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start the prober; failed instances return only through calls");
            }
            tx
        });
        let _ = wake.send(());
    }

    /// Probes what is due and closes idle retired channels; returns when to
    /// come back, `None` if nothing is pending.
    fn probe_due(self: &Arc<Shared>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        let mut idle = Vec::new();
        {
            let mut retired = lock(&self.retired);
            retired.retain(|e| {
                let busy = !e.is_idle();
                if !busy {
                    idle.push(e.channel());
                }
                busy
            });
            if !retired.is_empty() {
                soonest(Instant::now() + Duration::from_millis(100));
            }
        }
        // Closing waits for a connect in progress: never while `retired` is locked, which
        // a refresh takes with the table locked.
        for channel in idle {
            channel.close();
        }
        let table = self.table();
        for endpoint in table.endpoints.iter().filter(|e| e.is_down()) {
            let due = lock(&endpoint.health).next_probe;
            match due {
                Some(t) if t > Instant::now() => soonest(t),
                _ => {
                    if let Some(t) = self.probe(endpoint) {
                        soonest(t);
                    }
                }
            }
        }
        next
    }

    /// Tries to connect to a down endpoint; returns when to try again if it
    /// is still down.
    fn probe(&self, endpoint: &Endpoint) -> Option<Instant> {
        let addr = endpoint.instance.addr;
        match Channel::connect(addr, self.config.channel.clone()) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *lock(&endpoint.channel), fresh);
                if endpoint.in_flight.load(Ordering::Acquire) == 0 {
                    old.close();
                }
                endpoint.succeeded();
                None
            }
            Err(error) => {
                let mut health = lock(&endpoint.health);
                health.failures = health.failures.saturating_add(1);
                let wait = self
                    .config
                    .probe_initial
                    .saturating_mul(1 << health.failures.min(16))
                    .min(self.config.probe_max);
                let at = Instant::now() + wait;
                health.next_probe = Some(at);
                tracing::debug!(%addr, %error, retry_in_ms = wait.as_millis() as u64, "probe failed");
                Some(at)
            }
        }
    }
}

/// The prober thread: sleeps until something is due or it is woken, and
/// exits when the balancer is dropped.
fn probe_loop(shared: Weak<Shared>, wake: Receiver<()>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.probe_due(),
            None => return,
        };
        let woke = match next {
            Some(at) => wake.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if let Err(RecvTimeoutError::Disconnected) = woke {
            return;
        }
    }
}

/// A call started with a callback, retried from the callback of the failed
/// attempt.
struct AsyncCall {
    /// The balancer.
    shared: Arc<Shared>,
    /// The table the call started with.
    table: Arc<Table>,
    /// The key's hash, for keyed calls.
    key: Option<u64>,
    /// The service called.
    service: Arc<str>,
    /// The method called.
    method: Arc<str>,
    /// The encoded request, kept for retries.
    body: Bytes,
    /// When the caller stops waiting.
    deadline: Option<Instant>,
    /// Endpoints tried, by index in `table`.
    tried: Vec<usize>,
    /// The last retryable failure.
    last_error: Option<Error>,
    /// Gets the outcome.
    callback: Callback,
}

impl AsyncCall {
    fn start(
        shared: &Arc<Shared>,
        key: Option<u64>,
        service: &str,
        method: &str,
        body: Bytes,
        timeout: Option<Duration>,
        callback: Callback,
    ) {
        let deadline = timeout.or(shared.config.channel.default_timeout).map(|t| Instant::now() + t);
        AsyncCall {
            table: shared.table(),
            shared: shared.clone(),
            key,
            service: service.into(),
            method: method.into(),
            body,
            deadline,
            tried: Vec::new(),
            last_error: None,
            callback,
        }
        .next();
    }

    /// Sends the call to the next endpoint, or reports the outcome.
    fn next(mut self) {
        let Some(i) = self.shared.pick(&self.table, self.key, &self.tried) else {
            let error = self.last_error.take().unwrap_or_else(|| self.shared.no_instances());
            return (self.callback)(Err(error));
        };
        let left = match self.deadline {
            Some(d) if Instant::now() >= d && self.last_error.is_some() => {
                let error = self.last_error.take().expect("checked");
                return (self.callback)(Err(error));
            }
            Some(d) => Some(d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))),
            None => None,
        };
        let endpoint = self.table.endpoints[i].clone();
        if !endpoint.enter() {
            // The instance set changed since `table` was read: pick from the new one.
            self.table = self.shared.table();
            self.tried.clear();
            return self.next();
        }
        self.tried.push(i);
        let channel = endpoint.channel();
        let (service, method, body) = (self.service.clone(), self.method.clone(), self.body.clone());
        channel.call_raw_with(
            &service,
            &method,
            &body,
            left,
            Box::new(move |result| {
                endpoint.leave();
                match result {
                    Ok(reply) => {
                        endpoint.succeeded();
                        (self.callback)(Ok(reply))
                    }
                    Err(e) => {
                        if unreachable(&e) {
                            self.shared.leave_rotation(&endpoint, &e);
                        }
                        if e.is_retryable_elsewhere() {
                            self.last_error = Some(e);
                            self.next()
                        } else {
                            (self.callback)(Err(e))
                        }
                    }
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests;
