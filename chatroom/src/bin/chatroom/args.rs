//! The flags the serving processes share: where ZooKeeper, MySQL and Redis are, the
//! cluster secret, hashing cost, session tokens, login limits, worker threads and the
//! client port's connections per address.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rpc_core::registry::ZooKeeper;
use rpc_core::server;
use services::secret::ClusterSecret;
use services::{auth, presence, session_token, store, throttle, Presence, Store};

/// How a process serves.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Worker threads per server, 1 to 1024. Handlers mostly wait on MySQL, Redis and other
    /// services rather than the CPU, so there are more of them than cores. A proxy's client
    /// listener runs four times as many (`services::proxy::GATEWAY_WORKER_FACTOR`).
    #[arg(
        long,
        env = "CHATROOM_WORKERS",
        default_value_t = services::SERVER_WORKERS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024)
    )]
    pub workers: usize,
}

impl ServeArgs {
    pub fn config(&self) -> server::Config {
        server::Config { workers: self.workers.max(1), ..server::Config::default() }
    }
}

/// The client port's limit on connections per client address.
#[derive(Debug, Args)]
pub struct ClientPortArgs {
    /// Connections one client address may hold open on the client port (an IPv6
    /// client: its /64; behind nginx, the address its PROXY header names). One more is
    /// told "too many connections from ADDRESS (limit N)" and closed. 0 turns the limit
    /// off, as a benchmark connecting thousands of users from 127.0.0.1 does. The default
    /// is `services::proxy::MAX_CONNECTIONS_PER_ADDRESS`, which says why.
    #[arg(
        long,
        env = "CHATROOM_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = services::proxy::MAX_CONNECTIONS_PER_ADDRESS
    )]
    pub max_connections_per_address: usize,
}

impl ClientPortArgs {
    /// `base` with this limit on the client port (`services::proxy::serve` keeps it off
    /// the delivery port).
    pub fn config(&self, base: server::Config) -> server::Config {
        server::Config { max_connections_per_address: self.max_connections_per_address, ..base }
    }
}

/// The cluster secret (see `services::secret`): from a file, or in hex from a flag or
/// the environment.
#[derive(Args)]
pub struct SecretArgs {
    /// A file holding the cluster secret in hex, readable only by its owner (`chatroom
    /// cluster up` makes `cluster.secret` in its state directory).
    #[arg(long, env = "CHATROOM_CLUSTER_SECRET_FILE", conflicts_with = "cluster_secret")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself, in hex. Prefer the file or the environment variable:
    /// other users of the machine can read a process's flags.
    #[arg(long, env = "CHATROOM_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

impl std::fmt::Debug for SecretArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretArgs")
            .field("cluster_secret_file", &self.cluster_secret_file)
            .finish_non_exhaustive()
    }
}

impl SecretArgs {
    /// The secret given, if any.
    pub fn load(&self) -> anyhow::Result<Option<ClusterSecret>> {
        Ok(match (&self.cluster_secret_file, &self.cluster_secret) {
            (Some(path), _) => Some(ClusterSecret::read(path)?),
            (None, Some(hex)) => Some(ClusterSecret::from_hex(hex, "--cluster-secret")?),
            (None, None) => None,
        })
    }

    /// The secret, which a cluster process cannot do without.
    pub fn require(&self) -> anyhow::Result<ClusterSecret> {
        self.load()?.ok_or_else(|| {
            anyhow::anyhow!(
                "no cluster secret: pass --cluster-secret-file FILE or set CHATROOM_CLUSTER_SECRET_FILE \
                 (`chatroom cluster up` makes STATE_DIR/cluster.secret; any 32 random bytes in hex, \
                 in a file of mode 0600, will do)"
            )
        })
    }

    /// `serving` for an internal port: it serves only peers that prove `secret`.
    pub fn internal(serving: &ServeArgs, secret: &ClusterSecret) -> server::Config {
        server::Config { authenticator: Some(secret.authenticator()), ..serving.config() }
    }
}

/// Where ZooKeeper is.
#[derive(Debug, Args)]
pub struct ZkArgs {
    /// ZooKeeper connect string.
    #[arg(long = "zk", env = "CHATROOM_ZK", default_value = "127.0.0.1:2181")]
    pub zk_connect: String,
    /// The znode every service registers under. Only processes with the cluster secret
    /// may read or change it: a root made with one secret refuses processes with another.
    #[arg(long = "zk-root", env = "CHATROOM_ZK_ROOT", default_value = "/chatroom")]
    pub zk_root: String,
}

/// Where MySQL is.
#[derive(Debug, Args)]
pub struct MySqlArgs {
    /// MySQL/MariaDB URL; the database is created and migrated at start.
    #[arg(
        long = "mysql",
        env = "CHATROOM_MYSQL_URL",
        default_value = "mysql://chatroom:chatroom@127.0.0.1:3306/chatroom"
    )]
    pub mysql_url: String,
}

/// The cost of new password hashes (argon2id). Existing hashes keep the cost they were
/// made with. The defaults are OWASP's; tests lower them, because a debug build takes
/// most of a second per full-cost hash.
#[derive(Debug, Args)]
pub struct HashingArgs {
    /// Memory per hash, in KiB.
    #[arg(long, env = "CHATROOM_HASH_MEMORY_KIB", default_value_t = auth::Config::default().memory_kib)]
    pub hash_memory_kib: u32,
    /// Passes over that memory.
    #[arg(long, env = "CHATROOM_HASH_ITERATIONS", default_value_t = auth::Config::default().iterations)]
    pub hash_iterations: u32,
}

impl HashingArgs {
    /// The cost, checked now rather than at the first registration.
    pub fn config(&self) -> anyhow::Result<auth::Config> {
        let config = auth::Config {
            memory_kib: self.hash_memory_kib,
            iterations: self.hash_iterations,
            ..auth::Config::default()
        };
        argon2::Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid password hash cost: {e}"))?;
        Ok(config)
    }
}

/// Session tokens: how long they last, how many each user keeps.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// How long a session token resumes sessions after the login that issued it.
    #[arg(long, env = "CHATROOM_SESSION_TOKEN_TTL_SECS", default_value_t = session_token::Config::default().ttl.as_secs())]
    pub session_token_ttl_secs: u64,
    /// How many session tokens each user keeps (the newest); older ones stop working.
    #[arg(long, env = "CHATROOM_SESSION_TOKENS_PER_USER", default_value_t = session_token::Config::default().keep_per_user)]
    pub session_tokens_per_user: usize,
}

impl TokenArgs {
    pub fn config(&self) -> session_token::Config {
        session_token::Config {
            ttl: Duration::from_secs(self.session_token_ttl_secs.max(1)),
            keep_per_user: self.session_tokens_per_user.max(1),
        }
    }
}

/// How fast one user may send messages and change friends and groups (counted by the
/// proxy holding the user's session).
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Messages and changes one user may make at once; 0 turns the limit off.
    #[arg(long, env = "CHATROOM_WRITE_BURST", default_value_t = throttle::Config::default().writes.burst)]
    pub write_burst: u32,
    /// Then one more per this many ms (1 ms to an hour).
    #[arg(long, env = "CHATROOM_WRITE_EVERY_MS", default_value_t = 100)]
    pub write_every_ms: u64,
}

impl WriteArgs {
    pub fn bucket(&self) -> throttle::Bucket {
        let every = Duration::from_millis(self.write_every_ms.clamp(1, 3_600_000));
        throttle::Bucket { burst: self.write_burst, every }
    }
}

/// Limits on login and registration attempts (see `services::throttle`); the defaults
/// stop a guessing attack. A benchmark that logs thousands of users in from one address
/// sets the per-address bursts to 0 (off).
#[derive(Debug, Args)]
pub struct ThrottleArgs {
    /// Failed logins of one account (since its last success) that cost no wait.
    #[arg(long, env = "CHATROOM_LOGIN_FREE_FAILURES", default_value_t = throttle::Config::default().account.free_failures)]
    pub login_free_failures: u32,
    /// The wait after the first failure past the free ones, in ms; it doubles with
    /// each further failure. 0 turns the per-account back-off off.
    #[arg(long, env = "CHATROOM_LOGIN_BACKOFF_MS", default_value_t = 1000)]
    pub login_backoff_ms: u64,
    /// The longest wait between one account's logins, in seconds.
    #[arg(long, env = "CHATROOM_LOGIN_BACKOFF_CAP_SECS", default_value_t = 300)]
    pub login_backoff_cap_secs: u64,
    /// Logins one address may try at once; 0 turns the per-address limit off.
    #[arg(long, env = "CHATROOM_LOGIN_ADDRESS_BURST", default_value_t = throttle::Config::default().address_login.burst)]
    pub login_address_burst: u32,
    /// Then one more login per this many ms (a successful login gives its own back).
    #[arg(long, env = "CHATROOM_LOGIN_ADDRESS_EVERY_MS", default_value_t = 10_000)]
    pub login_address_every_ms: u64,
    /// Registrations one address may make at once; 0 turns the limit off.
    #[arg(long, env = "CHATROOM_REGISTER_ADDRESS_BURST", default_value_t = throttle::Config::default().address_register.burst)]
    pub register_address_burst: u32,
    /// Then one more registration per this many seconds.
    #[arg(long, env = "CHATROOM_REGISTER_ADDRESS_EVERY_SECS", default_value_t = 300)]
    pub register_address_every_secs: u64,
}

impl ThrottleArgs {
    pub fn config(&self) -> throttle::Config {
        throttle::Config {
            account: throttle::Backoff {
                free_failures: self.login_free_failures,
                base: Duration::from_millis(self.login_backoff_ms),
                cap: Duration::from_secs(self.login_backoff_cap_secs),
            },
            address_login: throttle::Bucket {
                burst: self.login_address_burst,
                every: Duration::from_millis(self.login_address_every_ms),
            },
            address_register: throttle::Bucket {
                burst: self.register_address_burst,
                every: Duration::from_secs(self.register_address_every_secs),
            },
            ..throttle::Config::default()
        }
    }
}

/// Where Redis is.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis URL for the presence table (and, in a user service, the login throttle).
    #[arg(long = "redis", env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Put before every key, so that several systems can share one Redis.
    #[arg(long = "redis-prefix", env = "CHATROOM_REDIS_PREFIX", default_value = "chatroom:presence:")]
    pub redis_prefix: String,
}

impl ZkArgs {
    /// The registry under `--zk-root`, proving the cluster's ZooKeeper identity and
    /// closing what it creates to everyone else (`ClusterSecret::registry_config`).
    pub fn connect(&self, secret: &ClusterSecret) -> anyhow::Result<ZooKeeper> {
        ZooKeeper::connect(&self.zk_connect, secret.registry_config(&self.zk_root))
            .with_context(|| format!("cannot reach ZooKeeper at {}", self.zk_connect))
    }
}

pub fn mysql(args: &MySqlArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(store::MySql::open(&args.mysql_url).context("cannot open the MySQL store")?))
}

pub fn redis(args: &RedisArgs) -> anyhow::Result<Arc<dyn Presence>> {
    let config = presence::redis::Config {
        url: args.redis_url.clone(),
        key_prefix: args.redis_prefix.clone(),
        ..presence::redis::Config::default()
    };
    Ok(Arc::new(presence::Redis::with_config(&config).context("cannot open the Redis presence table")?))
}
