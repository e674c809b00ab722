//! Service discovery: where instances of a service announce themselves, and
//! how consumers keep track of them.
//!
//! A provider calls [`Registry::register`] for each instance it runs and keeps
//! the [`Registration`]; dropping it, or [`Registration::deregister`], takes
//! the instance out. A consumer builds a [`Discovery`], which lists the service,
//! watches it and always holds the last known set of instances;
//! [`crate::balance::Balanced`] spreads calls over that set.
//!
//! Two registries implement [`Registry`]:
//! - `ZooKeeper` (`registry/zookeeper.rs`, with the `zookeeper` feature, on
//!   by default): one ephemeral znode per instance (layout in
//!   `docs/PROTOCOL.md`), and a supervisor thread that re-creates the session,
//!   the registrations and the watches when the session is lost. It can prove
//!   identities to ZooKeeper and close its znodes to everyone else
//!   (`Access`, `Identity`).
//! - [`Memory`] (`registry/memory.rs`): in-process, for the standalone mode
//!   and for tests.
//!
//! Both keep the same rules. A set is sorted by instance id. An id registered
//! twice shows once, as its newest registration (a restarted provider replaces
//! its predecessor at once, even while the old one's znode lingers). A watch
//! callback gets the whole set: once before [`Registry::watch`] returns, then
//! after every change, one call at a time. While the registry cannot reach its
//! backend, callbacks are simply not called, so consumers keep the last set.
//!
//! ```
//! use rpc_core::registry::{Discovery, Instance, Memory, Registry};
//! # fn main() -> Result<(), rpc_core::Error> {
//! let registry = Memory::new();
//! let addr = "127.0.0.1:7000".parse().unwrap();
//! let registration = registry.register("echo.Echo", &Instance::new("echo-1", addr))?;
//! let discovery = Discovery::new(&registry, "echo.Echo")?;
//! assert_eq!(discovery.instances()[0].addr, addr);
//! registration.deregister()?;
//! assert!(discovery.instances().is_empty());
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Error;

mod memory;
#[cfg(feature = "zookeeper")]
mod zookeeper;

pub use self::memory::Memory;
#[cfg(feature = "zookeeper")]
pub use self::zookeeper::{Access, Config, Identity, ZooKeeper};

/// One running server of a service, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    /// Names the instance within its service, e.g. `"user-1"` or its address.
    /// Registering the same id again hides the earlier registration.
    pub id: String,
    /// Where clients dial it.
    pub addr: SocketAddr,
    /// Free-form labels (zone, version, ...) handed to consumers unchanged.
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance with no metadata.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Instance {
        Instance { id: id.into(), addr, metadata: BTreeMap::new() }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Instance {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Called with the whole set of instances of a watched service.
///
/// It runs on the registry's thread (or, for [`Memory`], on the thread that
/// changed the set): it must return quickly and must not call back into the
/// registry.
pub type OnChange = Box<dyn FnMut(&[Instance]) + Send>;

/// Where instances of services announce themselves and are found.
///
/// Object safe: hold one as `Arc<dyn Registry>`.
pub trait Registry: Send + Sync {
    /// Announces `instance` as serving `service` until the returned
    /// [`Registration`] is dropped or deregistered.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] if a name is invalid (empty, `.`, `..`, over 255
    /// bytes, or containing `/` or control characters) or the backend cannot
    /// be reached.
    fn register(&self, service: &str, instance: &Instance) -> Result<Registration, Error>;

    /// The instances of `service` right now, sorted by id; empty if it has none.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] if the backend cannot be reached.
    fn instances(&self, service: &str) -> Result<Vec<Instance>, Error>;

    /// Calls `on_change` with the set of instances of `service`: once before
    /// returning, then after every change, until the returned [`Watch`] is
    /// dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] if the backend cannot be reached.
    fn watch(&self, service: &str, on_change: OnChange) -> Result<Watch, Error>;
}

/// Keeps an instance registered; dropping it deregisters the instance.
#[must_use = "dropping a Registration deregisters the instance at once"]
pub struct Registration {
    /// The service the instance serves.
    service: String,
    /// The instance's id.
    instance_id: String,
    /// Takes the instance out of the registry; `None` once it has run.
    remove: Option<Box<dyn FnOnce() -> Result<(), Error> + Send + Sync>>,
}

impl Registration {
    /// A registration that runs `remove` when deregistered or dropped; for
    /// [`Registry`] implementations.
    pub fn new(
        service: impl Into<String>,
        instance_id: impl Into<String>,
        remove: impl FnOnce() -> Result<(), Error> + Send + Sync + 'static,
    ) -> Registration {
        Registration {
            service: service.into(),
            instance_id: instance_id.into(),
            remove: Some(Box::new(remove)),
        }
    }

    /// The service the instance is registered under.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The registered instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Takes the instance out of the registry now.
    ///
    /// A provider leaving gracefully deregisters first, gives consumers a
    /// moment to see the change, then shuts its server down.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] if the registry did not confirm in time; the
    /// instance then still goes when the registry's session ends.
    pub fn deregister(mut self) -> Result<(), Error> {
        self.remove.take().map_or(Ok(()), |remove| remove())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(remove) = self.remove.take() {
            if let Err(error) = remove() {
                tracing::warn!(service = %self.service, id = %self.instance_id, %error, "deregistration failed");
            }
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("service", &self.service)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// Keeps a watch callback registered; dropping it stops the calls (one
/// already under way may finish).
#[must_use = "dropping a Watch stops it at once"]
pub struct Watch {
    /// Unregisters the callback; `None` once it has run.
    cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Watch {
    /// A watch that runs `cancel` when dropped; for [`Registry`] implementations.
    pub fn new(cancel: impl FnOnce() + Send + Sync + 'static) -> Watch {
        Watch { cancel: Some(Box::new(cancel)) }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// The last known set of instances of one service, kept current by a watch.
///
/// While the registry is unreachable the set stays as it was last seen.
pub struct Discovery {
    /// The set, shared with the watch callback.
    shared: Arc<Shared>,
    /// Keeps the callback registered; dropped with the discovery.
    _watch: Watch,
}

/// What the watch callback updates and readers read.
struct Shared {
    /// The service watched.
    service: String,
    /// The current set.
    set: Mutex<Arc<[Instance]>>,
    /// Signalled on every change, for [`Discovery::wait_until`].
    changed: Condvar,
    /// Bumped on every change; lets [`crate::balance`] notice one with a load.
    version: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Arc<[Instance]>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Discovery {
    /// Lists `service` in `registry` and keeps watching it.
    ///
    /// # Errors
    ///
    /// As [`Registry::watch`].
    pub fn new(registry: &dyn Registry, service: &str) -> Result<Discovery, Error> {
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            set: Mutex::new(Arc::from(Vec::new())),
            changed: Condvar::new(),
            version: AtomicU64::new(0),
        });
        let target = shared.clone();
        let watch = registry.watch(
            service,
            Box::new(move |set: &[Instance]| {
                let mut current = target.lock();
                if **current != *set {
                    *current = Arc::from(set);
                    target.version.fetch_add(1, Ordering::Release);
                    target.changed.notify_all();
                }
            }),
        )?;
        Ok(Discovery { shared, _watch: watch })
    }

    /// The service watched.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The instances as last seen, sorted by id.
    pub fn instances(&self) -> Arc<[Instance]> {
        self.shared.lock().clone()
    }

    /// Waits until `ready` accepts the set, for at most `timeout`; returns
    /// whether it did.
    pub fn wait_until(&self, timeout: Duration, mut ready: impl FnMut(&[Instance]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut set = self.shared.lock();
        loop {
            if ready(&set) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = self.shared.changed.wait_timeout(set, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Changes seen so far; cheap enough to check on every call.
    pub(crate) fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// The set together with the version it belongs to.
    pub(crate) fn snapshot(&self) -> (u64, Arc<[Instance]>) {
        let set = self.shared.lock();
        (self.shared.version.load(Ordering::Acquire), set.clone())
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("service", &self.shared.service)
            .field("instances", &self.instances().len())
            .finish()
    }
}

/// Checks a service name or instance id: both become znode names.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.chars().any(|c| c == '/' || c.is_control());
    if bad {
        return Err(Error::Registry(format!(
            "invalid {what} '{name}': use 1 to 255 bytes, no '/' or control characters, not '.' or '..'"
        )));
    }
    Ok(())
}

/// Keeps one instance per id (the newest, by `order`) and sorts by id.
fn dedup_newest<K: Ord>(entries: impl IntoIterator<Item = (K, Instance)>) -> Vec<Instance> {
    let mut newest: BTreeMap<String, (K, Instance)> = BTreeMap::new();
    for (order, instance) in entries {
        match newest.get(&instance.id) {
            Some((seen, _)) if *seen >= order => {}
            _ => {
                newest.insert(instance.id.clone(), (order, instance));
            }
        }
    }
    newest.into_values().map(|(_, instance)| instance).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(check_name("service", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("service", &"x".repeat(256)).is_err());
        assert!(check_name("service", "chatroom.User").is_ok());
        assert!(check_name("instance id", "127.0.0.1:7000").is_ok());
    }

    #[test]
    fn dedup_keeps_the_newest_of_each_id_sorted() {
        let set = dedup_newest([
            (3, Instance::new("b", addr(2))),
            (1, Instance::new("a", addr(1))),
            (2, Instance::new("b", addr(3))),
        ]);
        assert_eq!(set, vec![Instance::new("a", addr(1)), Instance::new("b", addr(2))]);
    }

    #[test]
    fn discovery_follows_the_registry_and_wakes_waiters() {
        let registry = Memory::new();
        let discovery = Discovery::new(&registry, "s").unwrap();
        assert!(discovery.instances().is_empty());
        let v0 = discovery.version();
        let reg = registry.register("s", &Instance::new("a", addr(1)).with_metadata("zone", "z1")).unwrap();
        assert!(discovery.wait_until(Duration::from_secs(1), |set| set.len() == 1));
        assert_eq!(discovery.instances()[0].metadata["zone"], "z1");
        assert!(discovery.version() > v0);
        drop(reg);
        assert!(discovery.instances().is_empty());
        assert!(!discovery.wait_until(Duration::from_millis(10), |set| !set.is_empty()));
    }
}
