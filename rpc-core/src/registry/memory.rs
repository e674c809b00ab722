//! The in-process registry: what the standalone mode and unit tests use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{check_name, dedup_newest, Instance, OnChange, Registration, Registry, Watch};
use crate::Error;

/// A registry that lives in this process; clones share it.
///
/// Watch callbacks run on the thread that changed the set, after the
/// registry's lock is released.
#[derive(Clone, Default)]
pub struct Memory {
    /// Shared by every clone; registrations and watches hold it weakly.
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Every service, by name.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Services with registrations or watchers.
    services: HashMap<String, Service>,
    /// Keys for registrations and watchers; increasing, so a later
    /// registration of an id wins over an earlier one.
    next_key: u64,
}

#[derive(Default)]
struct Service {
    /// Registered instances by registration key.
    registered: BTreeMap<u64, Instance>,
    /// Bumped on every change, so a watcher never applies an older set
    /// after a newer one when two threads change the service at once.
    version: u64,
    /// Watch callbacks by key.
    watchers: HashMap<u64, Arc<Watcher>>,
}

impl Service {
    fn set(&self) -> Vec<Instance> {
        dedup_newest(self.registered.iter().map(|(key, instance)| (*key, instance.clone())))
    }
}

/// One watch callback and the version it last saw.
struct Watcher {
    /// `None` once cancelled.
    state: Mutex<Option<WatcherState>>,
}

struct WatcherState {
    /// The last version delivered.
    delivered: Option<u64>,
    /// The callback.
    on_change: OnChange,
}

impl Watcher {
    /// Calls the callback with `set` unless it already saw this version or a
    /// newer one.
    fn deliver(&self, version: u64, set: &[Instance]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = state.as_mut() {
            if state.delivered.is_none_or(|seen| version > seen) {
                state.delivered = Some(version);
                (state.on_change)(set);
            }
        }
    }
}

impl Memory {
    /// An empty registry.
    pub fn new() -> Memory {
        Memory::default()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to `service`, then tells its watchers, outside the lock.
    fn change(&self, service: &str, change: impl FnOnce(&mut Service)) {
        let (version, set, watchers) = {
            let mut state = self.lock();
            let svc = state.services.entry(service.to_owned()).or_default();
            change(svc);
            svc.version += 1;
            let snapshot = (svc.version, svc.set(), svc.watchers.values().cloned().collect::<Vec<_>>());
            if svc.registered.is_empty() && svc.watchers.is_empty() {
                state.services.remove(service);
            }
            snapshot
        };
        for watcher in watchers {
            watcher.deliver(version, &set);
        }
    }
}

impl Registry for Memory {
    fn register(&self, service: &str, instance: &Instance) -> Result<Registration, Error> {
        check_name("service", service)?;
        check_name("instance id", &instance.id)?;
        let key = {
            let mut state = self.inner.lock();
            state.next_key += 1;
            state.next_key
        };
        self.inner.change(service, |svc| {
            svc.registered.insert(key, instance.clone());
        });
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let name = service.to_owned();
        Ok(Registration::new(service, instance.id.clone(), move || {
            if let Some(inner) = inner.upgrade() {
                inner.change(&name, |svc| {
                    svc.registered.remove(&key);
                });
            }
            Ok(())
        }))
    }

    fn instances(&self, service: &str) -> Result<Vec<Instance>, Error> {
        check_name("service", service)?;
        Ok(self.inner.lock().services.get(service).map(Service::set).unwrap_or_default())
    }

    fn watch(&self, service: &str, on_change: OnChange) -> Result<Watch, Error> {
        check_name("service", service)?;
        let watcher =
            Arc::new(Watcher { state: Mutex::new(Some(WatcherState { delivered: None, on_change })) });
        let (key, version, set) = {
            let mut state = self.inner.lock();
            state.next_key += 1;
            let key = state.next_key;
            let svc = state.services.entry(service.to_owned()).or_default();
            svc.watchers.insert(key, watcher.clone());
            (key, svc.version, svc.set())
        };
        // A concurrent change may have delivered a newer set already; then
        // this one is skipped, and either way the callback has run.
        watcher.deliver(version, &set);
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let name = service.to_owned();
        Ok(Watch::new(move || {
            *watcher.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Some(inner) = inner.upgrade() {
                let mut state = inner.lock();
                if let Some(svc) = state.services.get_mut(&name) {
                    svc.watchers.remove(&key);
                    if svc.registered.is_empty() && svc.watchers.is_empty() {
                        state.services.remove(&name);
                    }
                }
            }
        }))
    }
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory").field("services", &self.inner.lock().services.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn instance(id: &str, port: u16) -> Instance {
        Instance::new(id, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn register_list_deregister() {
        let registry = Memory::new();
        let a = registry.register("s", &instance("a", 1)).unwrap();
        let _b = registry.register("s", &instance("b", 2)).unwrap();
        assert_eq!(registry.instances("s").unwrap(), vec![instance("a", 1), instance("b", 2)]);
        assert!(registry.instances("other").unwrap().is_empty());
        assert_eq!((a.service(), a.instance_id()), ("s", "a"));
        a.deregister().unwrap();
        assert_eq!(registry.instances("s").unwrap(), vec![instance("b", 2)]);
        assert!(registry.register("s", &instance("a/b", 3)).is_err());
        assert!(registry.register("", &instance("a", 3)).is_err());
    }

    #[test]
    fn the_newest_registration_of_an_id_wins_and_the_older_one_shows_again_when_it_goes() {
        let registry = Memory::new();
        let old = registry.register("s", &instance("a", 1)).unwrap();
        let new = registry.register("s", &instance("a", 2)).unwrap();
        assert_eq!(registry.instances("s").unwrap(), vec![instance("a", 2)]);
        drop(new);
        assert_eq!(registry.instances("s").unwrap(), vec![instance("a", 1)]);
        drop(old);
        assert!(registry.instances("s").unwrap().is_empty());
        assert!(registry.inner.lock().services.is_empty(), "empty services are forgotten");
    }

    #[test]
    fn watch_gets_the_set_first_then_every_change_until_dropped() {
        let registry = Memory::new();
        let _a = registry.register("s", &instance("a", 1)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let log = seen.clone();
        let watch = registry
            .watch(
                "s",
                Box::new(move |set: &[Instance]| {
                    log.lock().unwrap().push(set.iter().map(|i| i.id.clone()).collect());
                }),
            )
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![vec!["a".to_owned()]]);
        let b = registry.register("s", &instance("b", 2)).unwrap();
        drop(b);
        drop(watch);
        let _c = registry.register("s", &instance("c", 3)).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, vec![vec!["a"], vec!["a", "b"], vec!["a"]]);
    }

    #[test]
    fn registrations_outliving_the_registry_are_harmless() {
        // While a clone of the registry lives, deregistering still removes the instance.
        let registry = Memory::new();
        let kept = registry.clone();
        let a = registry.register("s", &instance("a", 1)).unwrap();
        drop(registry);
        a.deregister().unwrap();
        assert!(kept.instances("s").unwrap().is_empty());
        // Once every handle is gone, the registration holds nothing alive and
        // deregistering (or dropping) it is a no-op rather than a panic.
        let b = kept.register("s", &instance("b", 2)).unwrap();
        let weak = Arc::downgrade(&kept.inner);
        drop(kept);
        assert!(weak.upgrade().is_none(), "a registration keeps its registry alive");
        b.deregister().unwrap();
    }
}
