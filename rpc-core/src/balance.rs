//! Client-side load balancing over the instances of a discovered service.
//!
//! [`Balanced`] is a [`Transport`]: generated stubs call through it as through
//! a [`Channel`]. It keeps one channel per instance address, reused when the
//! set changes, and picks an instance per call among those *in rotation*: in
//! turn ([`Strategy::RoundRobin`], the default), the one with the fewest calls
//! running ([`Strategy::LeastInFlight`]), or by consistent hash of a key the
//! caller gives ([`Balanced::with_key`]), so one user's calls keep going to one
//! instance while the set holds still.
//!
//! An instance leaves rotation when its registration goes, and when the calls
//! sent to it show that it does not serve them (outlier ejection, as in Envoy
//! or Finagle): a call fails to connect or loses its connection;
//! [`Config::eject_after_timeouts`] calls in a row time out; or it *stalls*:
//! calls from this balancer run on it and none has completed for longer than
//! [`Config::stall_floor`] or eight times the median latency of its peers,
//! whichever is longer. A stopped process (SIGSTOP, a frozen VM) is the case
//! in point: its kernel still completes TCP handshakes, so only the missing
//! answers give it away. Stalls are checked with a few atomic loads whenever
//! a call picks an instance, when a call times out, and by the prober. They
//! are judged against the peers: an instance never leaves rotation for latency
//! while no other instance in rotation answers, so a slowdown of the whole
//! service stays a slowdown instead of becoming an outage. Timeouts in a row
//! eject regardless: no answer at all is not a matter of comparison. An
//! instance already running [`Config::max_in_flight_per_instance`] calls from
//! this balancer is skipped until one ends.
//!
//! A prober thread, started with the first call, watches running calls for
//! stalls and pings each instance out of rotation over a fresh connection with
//! the protocol's Ping frame; only a Pong within [`Config::probe_timeout`] puts it back. A
//! TCP connect would not do: the stopped process above accepts it. The wait
//! before a probe starts at `probe_initial` and doubles per failed probe up to
//! `probe_max`; the first wait also doubles with each ejection in a row, so an
//! instance that answers pings but not calls (every worker stuck) does not
//! flap in and out at full speed.
//!
//! With no instance in rotation a call fails at once with
//! [`Error::NoInstances`], and with every instance in rotation at its cap with
//! [`Error::Backpressure`]; neither call was sent anywhere. Waiting out the
//! deadline on an instance known to be down helps no one. One exception
//! keeps instances known: when the registry's set empties, the last instances
//! stay. An empty set is far more often a registry hiccup (sessions expiring
//! across a ZooKeeper restart before the providers re-register) than every
//! instance leaving at once; if they are really gone, their failures take them
//! out of rotation. A call that fails in a way that proves it never reached a
//! server ([`Error::is_retryable_elsewhere`]) is tried again on another
//! instance, each instance at most once, within the call's deadline; a call
//! that may have run is never sent twice.
//!
//! Parts: `balance/endpoint.rs` holds an instance's channel and health,
//! `balance/outlier.rs` the reasons to eject and the stall decision,
//! `balance/call.rs` picks instances and runs the blocking and callback calls,
//! `balance/probe.rs` is the prober thread, and `balance/ring.rs` the
//! consistent-hash ring and its stable hash.
//!
//! ```no_run
//! use rpc_core::balance::{Balanced, Config};
//! use rpc_core::registry::{Discovery, Memory};
//! # fn main() -> Result<(), rpc_core::Error> {
//! // Any registry: ZooKeeper across machines, `Memory` within one process.
//! let registry = Memory::new();
//! let echo = Balanced::new(Discovery::new(&registry, "test.Echo")?, Config::default());
//! let reply = echo.call_raw("test.Echo", "Say", b"hi", None)?;
//! // Every call for user 42 goes to the same instance.
//! let reply = echo.with_key(42u64).call_raw("test.Echo", "Say", b"hi", None)?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use prost::Message;

use crate::client::{self, Callback, Channel, Transport};
use crate::registry::{Discovery, Instance, Registry};
use crate::Error;

mod call;
mod endpoint;
mod outlier;
mod probe;
mod ring;

use call::AsyncCall;
use endpoint::Endpoint;
use ring::Ring;

/// How a call without a key picks an instance. Calls with a key use the
/// consistent-hash ring instead: see [`Balanced::with_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest calls from this balancer still running;
    /// ties go in turn.
    LeastInFlight,
}

/// Settings of a [`Balanced`]. Start from `Config::default()`.
///
/// Later versions may add fields, each with a default, so build one as
/// `Config { strategy: Strategy::LeastInFlight, ..Config::default() }`: a
/// struct literal naming every field stops compiling when one is added.
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
    /// Wait before the first probe of an instance that left rotation (doubled
    /// for each time it left rotation again without a call succeeding on it
    /// in between).
    pub probe_initial: Duration,
    /// Longest wait between probes; the wait doubles per failed probe.
    pub probe_max: Duration,
    /// Longest a probe waits for the connection and the Pong of an instance
    /// out of rotation; one that does not answer in time stays out.
    pub probe_timeout: Duration,
    /// Calls to one instance that time out in a row before it leaves
    /// rotation, even if it is the last one; an answer in between starts the
    /// count again. 0 turns this off.
    pub eject_after_timeouts: u32,
    /// The shortest an instance with calls running may go without completing
    /// one before it counts as stalled and leaves rotation; the threshold is
    /// eight times its peers' median latency when that is longer.
    /// `Duration::MAX` turns stall ejection off, for services whose calls may
    /// rightly run long (long polls, streams of work).
    pub stall_floor: Duration,
    /// Most calls from this balancer that may run on one instance at once. An
    /// instance at its cap is skipped; when every instance in rotation is,
    /// calls fail at once with [`Error::Backpressure`] without being sent.
    pub max_in_flight_per_instance: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            strategy: Strategy::RoundRobin,
            channel: client::Config::default(),
            virtual_nodes: 160,
            probe_initial: Duration::from_millis(100),
            probe_max: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(1),
            eject_after_timeouts: 2,
            stall_floor: Duration::from_millis(500),
            max_in_flight_per_instance: 512,
        }
    }
}

/// A [`Transport`] that spreads calls over the instances of a discovered
/// service; cheap to clone and share between threads. One made by
/// [`Balanced::with_key`] sends every call where its key hashes instead.
#[derive(Clone)]
pub struct Balanced {
    /// Shared by every clone and by the prober thread (weakly).
    shared: Arc<Shared>,
    /// The stable hash of the key every call is routed by, if any (see `with_key`).
    key: Option<u64>,
}

/// A [`Balanced`] made by [`Balanced::with_key`]: every call goes to the
/// instance the key hashes to (the next one around the ring while that one is
/// out of rotation).
pub type Keyed = Balanced;

/// What every clone of a balancer, its calls and its prober share.
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
    /// Set while the prober sleeps with nothing to wait for: the next call
    /// to start wakes it (starting it the first time), so that a stall is
    /// noticed even if every caller is stuck in it and no pick comes.
    prober_asleep: AtomicBool,
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
            prober_asleep: AtomicBool::new(true),
        };
        Balanced { shared: Arc::new(shared), key: None }
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
        Balanced { shared: self.shared.clone(), key: Some(ring::stable_hash(key)) }
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
    /// As [`Transport::call`]; and, without sending the call anywhere,
    /// [`Error::NoInstances`] when no instance of the service is in rotation
    /// and [`Error::Backpressure`] when every one in rotation already runs
    /// [`Config::max_in_flight_per_instance`] calls from this balancer.
    pub fn call_raw(
        &self,
        service: &str,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        self.shared.call(self.key, timeout, |ch, left| ch.call_raw(service, method, body, left))
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
        self.shared.call(self.key, timeout, |ch, left| ch.call(service, method, request, left))
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
        AsyncCall::start(&self.shared, self.key, service, method, body, timeout, callback);
    }
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.service())
            .field("strategy", &self.shared.config.strategy)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
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
    /// so the channel and health) of every address still in it.
    fn refresh(self: &Arc<Shared>) -> Arc<Table> {
        let mut current = self.table.write().unwrap_or_else(|p| p.into_inner());
        let (version, set) = self.discovery.snapshot();
        if current.version == version {
            return current.clone();
        }
        let set: Vec<Instance> = if set.is_empty() && !current.endpoints.is_empty() {
            tracing::warn!(
                service = %self.discovery.service(),
                "the registry lists no instance; calls keep going to the last ones it listed while they are in rotation"
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
                    e.unretire();
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
}

#[cfg(test)]
mod tests;
