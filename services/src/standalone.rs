//! The whole chat system in one process: a proxy, a user service and a chat service,
//! each on its own loopback rpc-core server, talking through real RPC, with the
//! in-process registry ([`rpc_core::registry::Memory`]), in-process presence
//! ([`crate::presence::Memory`]) and a SQLite store in a data directory (so users,
//! friends, groups and messages survive restarts). The user and chat services and the
//! proxy's `Delivery` listener serve only callers that prove the cluster secret
//! ([`crate::secret`]), kept in the data directory; only the client port is open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::registry;
use rpc_core::server;

use crate::api::{ChatServiceServer, UserServiceServer};
use crate::chat_service::ChatService;
use crate::proxies::Proxies;
use crate::secret::{self, ClusterSecret};
use crate::served::{serve, Served};
use crate::user_service::UserService;
use crate::{auth, presence, proxy, session_token, store, throttle, Presence, Store};

/// The file the store keeps in the data directory.
pub const DB_FILE: &str = "chatroom.db";

/// Settings of a standalone system.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the SQLite database lives; created if missing.
    pub data_dir: PathBuf,
    /// Where clients connect (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Presence lease TTL.
    pub lease_ttl: Duration,
    /// Cost of new password hashes.
    pub hashing: auth::Config,
    /// Login and registration limits, counted in memory.
    pub throttle: throttle::Config,
    /// Lifetime and number per user of session tokens.
    pub tokens: session_token::Config,
    /// Settings of each of the three servers. Its `max_connections_per_address`
    /// ([`proxy::MAX_CONNECTIONS_PER_ADDRESS`] by default) limits the client port only.
    pub server: server::Config,
    /// The secret the three prove to each other. `None`: the one in the data directory's
    /// [`secret::FILE`], made there if missing (a new random one when started over
    /// another store with [`Standalone::with_store`]).
    pub cluster_secret: Option<ClusterSecret>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("chatroom-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            lease_ttl: Duration::from_secs(30),
            hashing: auth::Config::default(),
            throttle: throttle::Config::default(),
            tokens: session_token::Config::default(),
            server: server::Config {
                workers: crate::SERVER_WORKERS,
                max_connections_per_address: proxy::MAX_CONNECTIONS_PER_ADDRESS,
                ..server::Config::default()
            },
            cluster_secret: None,
        }
    }
}

/// Starting the standalone system failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or migrated.
    #[error("cannot open the store: {0}")]
    Store(#[from] store::Error),
    /// A server could not start.
    #[error("cannot start a server: {0}")]
    Rpc(#[from] rpc_core::Error),
    /// The cluster secret could not be read or made.
    #[error(transparent)]
    Secret(#[from] secret::Error),
}

/// A running standalone system. Dropping it stops the proxy, then the services.
pub struct Standalone {
    /// The proxy; stopped first.
    proxy: proxy::Running,
    /// The chat service.
    chat: Served,
    /// The user service.
    users: Served,
    /// The in-process registry all three use.
    registry: registry::Memory,
    /// The database file, when the store is the SQLite one.
    db: Option<PathBuf>,
    /// The secret the services require of their callers.
    secret: ClusterSecret,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("client_addr", &self.client_addr())
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Standalone {
    /// Starts the three servers.
    ///
    /// # Errors
    ///
    /// When the data directory or store cannot be opened or a server cannot bind.
    pub fn start(mut config: Config) -> Result<Self, Error> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
        if config.cluster_secret.is_none() {
            config.cluster_secret = Some(ClusterSecret::load_or_create(&config.data_dir.join(secret::FILE))?);
        }
        let db = config.data_dir.join(DB_FILE);
        let store: Arc<dyn Store> = Arc::new(store::Sqlite::open(&db)?);
        let mut system = Standalone::with_store(config, store)?;
        system.db = Some(db);
        Ok(system)
    }

    /// Starts the three servers over `store` instead of the SQLite file in the data
    /// directory (which is then not used); the end-to-end tests run this way against
    /// MySQL too.
    ///
    /// # Errors
    ///
    /// When a server cannot bind.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Self, Error> {
        let presence: Arc<dyn Presence> = Arc::new(presence::Memory::new());
        let registry = registry::Memory::new();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let secret = config.cluster_secret.clone().unwrap_or_else(ClusterSecret::generate);
        let internal = || server::Config {
            authenticator: Some(secret.authenticator()),
            max_connections_per_address: 0,
            ..config.server.clone()
        };

        let user_service = UserService::new(store.clone())
            .with_hashing(config.hashing.clone())
            .with_throttle(throttle::Limits::in_memory(config.throttle.clone()))
            .with_tokens(config.tokens.clone());
        let users = serve(UserServiceServer(user_service), &registry, loopback, internal())?;
        let proxies = Proxies::discover(&registry)?.with_credential(Some(secret.credential()));
        let chat_service = ChatService::new(store, presence.clone(), proxies);
        let chat = serve(ChatServiceServer(chat_service), &registry, loopback, internal())?;
        let proxy_config = proxy::Config {
            lease_ttl: config.lease_ttl,
            cluster_secret: Some(secret.clone()),
            writes: config.throttle.writes,
            ..proxy::Config::default()
        };
        let the_proxy = proxy::Proxy::new(proxy_config, &registry, presence)?;
        let proxy = proxy::serve(the_proxy, &registry, config.listen, loopback, config.server)?;
        tracing::info!(clients = %proxy.client_addr(), "standalone system started");
        Ok(Standalone { proxy, chat, users, registry, db: None, secret })
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> SocketAddr {
        self.proxy.client_addr()
    }

    /// The proxy.
    pub fn proxy(&self) -> &proxy::Proxy {
        self.proxy.proxy()
    }

    /// The secret its services require of their callers.
    pub fn cluster_secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// The in-process registry.
    pub fn registry(&self) -> &registry::Memory {
        &self.registry
    }

    /// The SQLite database file, unless the system was started over another store.
    pub fn db_path(&self) -> Option<&std::path::Path> {
        self.db.as_deref()
    }

    /// Stops gracefully: the proxy first ([`proxy::Running::shutdown`]: sessions ended,
    /// clients told to go away, calls in flight finished), then the chat service and the
    /// user service.
    pub fn shutdown(self) {
        let Standalone { proxy, chat, users, registry, .. } = self;
        proxy.shutdown();
        chat.shutdown();
        users.shutdown();
        drop(registry);
    }

    /// Blocks until the proxy's client server stops, then stops the rest.
    pub fn wait(self) {
        let Standalone { proxy, chat, users, registry, .. } = self;
        proxy.wait();
        drop((chat, users, registry));
    }
}
