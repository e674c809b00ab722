//! The proxies as seen by a service that pushes to them: each proxy registers its
//! `Delivery` service under its instance id, and the presence table names that id for
//! every online user.
//!
//! [`Proxies`] keeps the discovered set and one lazily connected [`Channel`] per proxy,
//! and groups recipients by the proxy presence says holds them, so that a group message
//! costs one call per proxy rather than one per member.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use rpc_core::auth::Credential;
use rpc_core::client::{self, Channel};
use rpc_core::registry::{Discovery, Registry};

use crate::api::{delivery_rpc, DeliveryClient};
use crate::ids::UserId;
use crate::Presence;

/// How long a push to a proxy may take before it is given up (the client pulls what it
/// missed with `Sync`).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The proxies' `Delivery` services, found through the registry.
pub struct Proxies {
    /// The registered proxies, kept current by a watch.
    discovery: Discovery,
    /// A client per proxy instance id, with the address it was made for.
    clients: Mutex<HashMap<String, (SocketAddr, DeliveryClient)>>,
    /// What the channels prove to the proxies' `Delivery` listeners (the cluster secret).
    credential: Option<Credential>,
}

impl Proxies {
    /// Watches the proxies registered in `registry`.
    ///
    /// # Errors
    ///
    /// As [`Discovery::new`].
    pub fn discover(registry: &dyn Registry) -> Result<Self, rpc_core::Error> {
        Ok(Proxies {
            discovery: Discovery::new(registry, delivery_rpc::SERVICE_NAME)?,
            clients: Mutex::default(),
            credential: None,
        })
    }

    /// The same, proving `credential` on every channel to a proxy (the cluster secret's;
    /// `None` proves nothing, for proxies that ask for nothing).
    pub fn with_credential(mut self, credential: Option<Credential>) -> Self {
        self.credential = credential;
        self
    }

    /// A client of the proxy registered as `instance_id`, or `None` when no such proxy
    /// is registered (it died; its users' leases will lapse).
    pub fn client(&self, instance_id: &str) -> Option<DeliveryClient> {
        let instances = self.discovery.instances();
        let addr = instances.iter().find(|i| i.id == instance_id)?.addr;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, client)) = clients.get(instance_id) {
            if *known == addr {
                return Some(client.clone());
            }
        }
        // Forget proxies that left, so the table does not grow with every restart.
        clients.retain(|id, _| instances.iter().any(|i| &i.id == id));
        let config = client::Config {
            default_timeout: Some(DELIVERY_TIMEOUT),
            credential: self.credential.clone(),
            ..client::Config::default()
        };
        let client = DeliveryClient::new(Channel::lazy(addr, config)).with_timeout(DELIVERY_TIMEOUT);
        clients.insert(instance_id.to_owned(), (addr, client.clone()));
        Some(client)
    }
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies").field("service", &self.discovery.service()).finish_non_exhaustive()
    }
}

/// The online ones among `users`, grouped by the proxy instance holding each.
///
/// # Errors
///
/// When the presence table fails.
pub fn by_proxy(
    presence: &dyn Presence,
    users: &[UserId],
) -> Result<BTreeMap<String, Vec<u64>>, crate::presence::Error> {
    let mut grouped: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    if users.is_empty() {
        return Ok(grouped);
    }
    for (user, proxy) in users.iter().zip(presence.lookup(users)?) {
        if let Some(proxy) = proxy {
            grouped.entry(proxy).or_default().push(user.0);
        }
    }
    Ok(grouped)
}
