//! The supervisor's znodes: each registration's ephemeral znode, kept in place
//! across sessions, and each watched service's children, read into its set.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use zookeeper::{CreateMode, WatchedEvent, ZkError, ZooKeeper};

use super::supervisor::{client, Supervisor, ZkResult, RETRY};
use super::{Access, Event, Instance, OnChange};
use crate::registry::dedup_newest;

/// One registration.
pub(super) struct Reg {
    /// The service.
    pub(super) service: String,
    /// The instance, for messages.
    pub(super) id: String,
    /// The znode's data.
    pub(super) data: Vec<u8>,
    /// The znode as created: (client generation, path).
    pub(super) node: Option<(u64, String)>,
    /// The token of the watch last set on the znode. The crate fires every
    /// watcher of a path on one event, so only the newest may act, or
    /// watchers would multiply.
    pub(super) token: u64,
}

/// One watched service.
pub(super) struct Watched {
    /// Callbacks by key.
    pub(super) subscribers: BTreeMap<u64, OnChange>,
    /// Each child znode's parsed data by name (`None` if unreadable); names
    /// never repeat, so entries stay valid and only new children are read.
    pub(super) nodes: HashMap<String, Option<Instance>>,
    /// The set last delivered.
    pub(super) set: Vec<Instance>,
    /// Whether the set was ever read.
    pub(super) known: bool,
    /// The client generation whose session holds the child watch; `None`
    /// when it must be armed again.
    pub(super) armed: Option<u64>,
    /// The token of the newest child watch (see `Reg::token`).
    pub(super) token: u64,
}

impl Watched {
    pub(super) fn new() -> Watched {
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

impl Supervisor {
    pub(super) fn unwatch(&mut self, service: &str, key: u64) {
        if let Some(w) = self.services.get_mut(service) {
            w.subscribers.remove(&key);
            if w.subscribers.is_empty() {
                self.services.remove(service);
            }
        }
    }

    /// Makes ZooKeeper match what this registry holds (orphans deleted,
    /// registrations present, watches armed), then retries postponed requests.
    pub(super) fn resync(&mut self) {
        self.dirty = false;
        self.retry_at = None;
        if let Err(e) = self.try_resync() {
            self.failed("resync", "", e);
        }
        self.retry_pending();
    }

    pub(super) fn try_resync(&mut self) -> ZkResult<()> {
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

    pub(super) fn root_ready(&self) -> ZkResult<()> {
        let zk = &client(&self.client)?.zk;
        ensure_path(zk, &format!("{}/services", self.config.root), &self.config.root, self.config.access)
    }

    pub(super) fn instances_dir(&self, service: &str) -> String {
        format!("{}/services/{service}/instances", self.config.root)
    }

    /// Makes sure registration `key` has a znode in the current session,
    /// with a watch on it that tells us if it goes.
    pub(super) fn ensure_registered(&mut self, key: u64) -> ZkResult<()> {
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
        ensure_path(zk, &dir, &self.config.root, self.config.access)?;
        let path = zk.create(
            &format!("{dir}/{}-", reg.id),
            reg.data.clone(),
            self.config.access.acl(),
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

    pub(super) fn deregister(&mut self, key: u64) {
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
    pub(super) fn watch(
        &mut self,
        service: &str,
        mut on_change: OnChange,
    ) -> Result<u64, (ZkError, OnChange)> {
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
    pub(super) fn relist(&mut self, service: &str) -> ZkResult<()> {
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
                ensure_path(zk, &dir, &self.config.root, self.config.access)?;
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

    pub(super) fn list(&self, service: &str) -> ZkResult<Vec<Instance>> {
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

/// Creates `path` and its missing parents, as `mkdir -p` does. Nodes at or
/// under `root` get `access`'s ACL; those above it the open one (see
/// [`Access`]). An existing node at or under `root` whose ACL lets in more than
/// `access` allows (made by an earlier registry that was open) is closed.
fn ensure_path(zk: &ZooKeeper, path: &str, root: &str, access: Access) -> ZkResult<()> {
    let ends = path.match_indices('/').skip(1).map(|(at, _)| at).chain(std::iter::once(path.len()));
    for end in ends {
        let node = &path[..end];
        let ours = node.len() >= root.len();
        let acl = if ours { access.acl() } else { Access::Open.acl() };
        match zk.create(node, Vec::new(), acl, CreateMode::Persistent) {
            Ok(_) => {}
            Err(ZkError::NodeExists) if ours && access != Access::Open => close(zk, node, access)?,
            Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives the existing `node` `access`'s ACL if its own lets in more.
fn close(zk: &ZooKeeper, node: &str, access: Access) -> ZkResult<()> {
    let (acl, stat) = zk.get_acl(node)?;
    if access.too_open(&acl) {
        match zk.set_acl(node, access.acl(), Some(stat.aversion)) {
            Ok(_) => tracing::info!(node, "closed a znode whose ACL let anyone in"),
            // Changed since it was read (another registry closed it): the next
            // pass looks again.
            Err(ZkError::BadVersion) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

pub(super) fn encode(instance: &Instance) -> Vec<u8> {
    let data = NodeData { id: instance.id.clone(), addr: instance.addr, metadata: instance.metadata.clone() };
    serde_json::to_vec(&data).expect("a map of strings always serializes")
}

fn decode(data: &[u8]) -> Option<Instance> {
    let data: NodeData = serde_json::from_slice(data).ok()?;
    Some(Instance { id: data.id, addr: data.addr, metadata: data.metadata })
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
}
