//! `chatroom`: every process of the ChatRoom chat system in one binary.
//!
//! `chatroom standalone` runs the whole system in one process with nothing to install;
//! `proxy`, `user-service` and `chat-service` run the cluster's processes against
//! ZooKeeper, MySQL/MariaDB and Redis. Every address comes from a flag or an environment
//! variable with a loopback default. Logs go to stderr; `RUST_LOG` filters them.
//!
//! The cluster's processes require the cluster secret (`--cluster-secret-file` or
//! `CHATROOM_CLUSTER_SECRET_FILE`; see `services::secret`): their internal ports serve
//! only peers that prove it, and they prove it to each other. `chatroom cluster up` makes
//! one in its state directory and `chatroom standalone` in its data directory.
//!
//! The serving processes stop gracefully on SIGTERM or SIGINT: they leave the registry at
//! once, a proxy ends its sessions (friends see its users go offline now, not after the
//! lease), the servers tell their clients to go away and finish the calls in flight, and
//! the process exits 0. A second signal during that, or a signal before the process
//! serves, exits at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use rpc_core::registry::{self, ZooKeeper};
use rpc_core::server;
use services::api::{ChatServiceServer, UserServiceServer};
use services::chat_service::ChatService;
use services::proxies::Proxies;
use services::secret::ClusterSecret;
use services::standalone::{self, Standalone};
use services::user_service::UserService;
use services::{auth, presence, proxy, serve, session_token, store, throttle, Presence, Store};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The ChatRoom chat system.
#[derive(Debug, Parser)]
#[command(name = "chatroom", version, about)]
struct Cli {
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a proxy, a user service and a chat service in one process, with an embedded
    /// SQLite store, in-process registry and in-process presence.
    Standalone {
        /// Where clients connect.
        #[arg(long, env = "CHATROOM_LISTEN", default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Where the database file lives.
        #[arg(long, env = "CHATROOM_DATA_DIR", default_value = "chatroom-data")]
        data_dir: PathBuf,
        /// How long a user stays online without their proxy renewing the lease.
        #[arg(long, env = "CHATROOM_LEASE_TTL_SECS", default_value_t = 30)]
        lease_ttl_secs: u64,
        /// The secret its internal ports require (by default the data directory's
        /// `cluster.secret`, made there if missing).
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        throttle: ThrottleArgs,
        #[command(flatten)]
        tokens: TokenArgs,
        #[command(flatten)]
        serving: ServeArgs,
    },
    /// Runs a proxy: clients connect to it; it registers its delivery service in
    /// ZooKeeper and keeps presence leases in Redis.
    Proxy {
        /// Where clients connect.
        #[arg(long, env = "CHATROOM_LISTEN", default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Where the chat service delivers messages (internal; port 0 picks one).
        #[arg(long, env = "CHATROOM_DELIVERY_LISTEN", default_value = "127.0.0.1:0")]
        delivery_listen: SocketAddr,
        /// The proxy's unique name in ZooKeeper and Redis (generated when not given).
        #[arg(long, env = "CHATROOM_INSTANCE_ID")]
        instance_id: Option<String>,
        /// How long a user stays online without this proxy renewing the lease.
        #[arg(long, env = "CHATROOM_LEASE_TTL_SECS", default_value_t = 30)]
        lease_ttl_secs: u64,
        /// Load balancers (comma-separated IP addresses) whose connections to the client
        /// port may start with a PROXY protocol v1 header naming the client, as nginx's
        /// `proxy_protocol on;` sends; the limits per address then count the client's
        /// address instead of the balancer's. `cluster up` sets it for its nginx.
        /// Every process that can connect from such an address is trusted to name any
        /// client: with 127.0.0.1 that is every local process of the machine.
        #[arg(long, env = "CHATROOM_PROXY_PROTOCOL_FROM", value_delimiter = ',')]
        proxy_protocol_from: Vec<std::net::IpAddr>,
        #[command(flatten)]
        zk: ZkArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        serving: ServeArgs,
    },
    /// Runs a user service instance (accounts, friends, groups) over MySQL.
    UserService {
        /// Where proxies call it (port 0 picks one; it is registered in ZooKeeper).
        #[arg(long, env = "CHATROOM_LISTEN", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[command(flatten)]
        zk: ZkArgs,
        #[command(flatten)]
        mysql: MySqlArgs,
        #[command(flatten)]
        hashing: HashingArgs,
        /// Redis, where every user service counts login attempts (under the prefix,
        /// then `throttle:`).
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        throttle: ThrottleArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        tokens: TokenArgs,
        #[command(flatten)]
        serving: ServeArgs,
    },
    /// Runs a chat service instance (messages, history, sync) over MySQL and Redis.
    ChatService {
        /// Where proxies call it (port 0 picks one; it is registered in ZooKeeper).
        #[arg(long, env = "CHATROOM_LISTEN", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[command(flatten)]
        zk: ZkArgs,
        #[command(flatten)]
        mysql: MySqlArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        serving: ServeArgs,
    },
    /// Starts, stops or shows a local cluster (N proxies, user services and chat
    /// services on ZooKeeper, MySQL and Redis, with nginx in front on one port).
    Cluster {
        /// up, down or status.
        #[command(subcommand)]
        action: services::cluster::Action,
    },
    /// A command-line chat client: interactive on a terminal, one command per line
    /// otherwise (see `help`).
    Client {
        /// The proxy (or standalone system) to connect to.
        #[arg(long, env = "CHATROOM_SERVER", default_value = "127.0.0.1:7878")]
        server: SocketAddr,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs a short scripted conversation between three bots (one-to-one, a group,
    /// offline delivery), printing it; starts a standalone system unless given `--server`.
    Demo {
        /// A running proxy or standalone system to use instead of starting one.
        #[arg(long, env = "CHATROOM_SERVER")]
        server: Option<SocketAddr>,
    },
}

/// How a process serves.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Worker threads per server. Handlers mostly wait on MySQL, Redis and other services
    /// rather than the CPU, so there are more of them than cores.
    #[arg(long, env = "CHATROOM_WORKERS", default_value_t = services::SERVER_WORKERS)]
    workers: usize,
}

impl ServeArgs {
    fn config(&self) -> server::Config {
        server::Config { workers: self.workers.max(1), ..server::Config::default() }
    }
}

/// The cluster secret (see `services::secret`): from a file, or in hex from a flag or
/// the environment.
#[derive(Args)]
struct SecretArgs {
    /// A file holding the cluster secret in hex, readable only by its owner (`chatroom
    /// cluster up` makes `cluster.secret` in its state directory).
    #[arg(long, env = "CHATROOM_CLUSTER_SECRET_FILE", conflicts_with = "cluster_secret")]
    cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself, in hex. Prefer the file or the environment variable:
    /// other users of the machine can read a process's flags.
    #[arg(long, env = "CHATROOM_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
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
    fn load(&self) -> anyhow::Result<Option<ClusterSecret>> {
        Ok(match (&self.cluster_secret_file, &self.cluster_secret) {
            (Some(path), _) => Some(ClusterSecret::read(path)?),
            (None, Some(hex)) => Some(ClusterSecret::from_hex(hex, "--cluster-secret")?),
            (None, None) => None,
        })
    }

    /// The secret, which a cluster process cannot do without.
    fn require(&self) -> anyhow::Result<ClusterSecret> {
        self.load()?.ok_or_else(|| {
            anyhow::anyhow!(
                "no cluster secret: pass --cluster-secret-file FILE or set CHATROOM_CLUSTER_SECRET_FILE \
                 (`chatroom cluster up` makes STATE_DIR/cluster.secret; any 32 random bytes in hex, \
                 in a file of mode 0600, will do)"
            )
        })
    }

    /// `serving` for an internal port: it serves only peers that prove `secret`.
    fn internal(serving: &ServeArgs, secret: &ClusterSecret) -> server::Config {
        server::Config { authenticator: Some(secret.authenticator()), ..serving.config() }
    }
}

/// Where ZooKeeper is.
#[derive(Debug, Args)]
struct ZkArgs {
    /// ZooKeeper connect string.
    #[arg(long = "zk", env = "CHATROOM_ZK", default_value = "127.0.0.1:2181")]
    zk_connect: String,
    /// The znode every service registers under.
    #[arg(long = "zk-root", env = "CHATROOM_ZK_ROOT", default_value = "/chatroom")]
    zk_root: String,
}

/// Where MySQL is.
#[derive(Debug, Args)]
struct MySqlArgs {
    /// MySQL/MariaDB URL; the database is created and migrated at start.
    #[arg(
        long = "mysql",
        env = "CHATROOM_MYSQL_URL",
        default_value = "mysql://chatroom:chatroom@127.0.0.1:3306/chatroom"
    )]
    mysql_url: String,
}

/// The cost of new password hashes (argon2id). Existing hashes keep the cost they were
/// made with. The defaults are OWASP's; tests lower them, because a debug build takes
/// most of a second per full-cost hash.
#[derive(Debug, Args)]
struct HashingArgs {
    /// Memory per hash, in KiB.
    #[arg(long, env = "CHATROOM_HASH_MEMORY_KIB", default_value_t = auth::Config::default().memory_kib)]
    hash_memory_kib: u32,
    /// Passes over that memory.
    #[arg(long, env = "CHATROOM_HASH_ITERATIONS", default_value_t = auth::Config::default().iterations)]
    hash_iterations: u32,
}

impl HashingArgs {
    /// The cost, checked now rather than at the first registration.
    fn config(&self) -> anyhow::Result<auth::Config> {
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
struct TokenArgs {
    /// How long a session token resumes sessions after the login that issued it.
    #[arg(long, env = "CHATROOM_SESSION_TOKEN_TTL_SECS", default_value_t = session_token::Config::default().ttl.as_secs())]
    session_token_ttl_secs: u64,
    /// How many session tokens each user keeps (the newest); older ones stop working.
    #[arg(long, env = "CHATROOM_SESSION_TOKENS_PER_USER", default_value_t = session_token::Config::default().keep_per_user)]
    session_tokens_per_user: usize,
}

impl TokenArgs {
    fn config(&self) -> session_token::Config {
        session_token::Config {
            ttl: Duration::from_secs(self.session_token_ttl_secs.max(1)),
            keep_per_user: self.session_tokens_per_user.max(1),
        }
    }
}

/// Limits on login and registration attempts (see `services::throttle`); the defaults
/// stop a guessing attack. A benchmark that logs thousands of users in from one address
/// sets the per-address bursts to 0 (off).
#[derive(Debug, Args)]
struct ThrottleArgs {
    /// Failed logins of one account (since its last success) that cost no wait.
    #[arg(long, env = "CHATROOM_LOGIN_FREE_FAILURES", default_value_t = throttle::Config::default().account.free_failures)]
    login_free_failures: u32,
    /// The wait after the first failure past the free ones, in ms; it doubles with
    /// each further failure. 0 turns the per-account back-off off.
    #[arg(long, env = "CHATROOM_LOGIN_BACKOFF_MS", default_value_t = 1000)]
    login_backoff_ms: u64,
    /// The longest wait between one account's logins, in seconds.
    #[arg(long, env = "CHATROOM_LOGIN_BACKOFF_CAP_SECS", default_value_t = 300)]
    login_backoff_cap_secs: u64,
    /// Logins one address may try at once; 0 turns the per-address limit off.
    #[arg(long, env = "CHATROOM_LOGIN_ADDRESS_BURST", default_value_t = throttle::Config::default().address_login.burst)]
    login_address_burst: u32,
    /// Then one more login per this many ms (a successful login gives its own back).
    #[arg(long, env = "CHATROOM_LOGIN_ADDRESS_EVERY_MS", default_value_t = 10_000)]
    login_address_every_ms: u64,
    /// Registrations one address may make at once; 0 turns the limit off.
    #[arg(long, env = "CHATROOM_REGISTER_ADDRESS_BURST", default_value_t = throttle::Config::default().address_register.burst)]
    register_address_burst: u32,
    /// Then one more registration per this many seconds.
    #[arg(long, env = "CHATROOM_REGISTER_ADDRESS_EVERY_SECS", default_value_t = 300)]
    register_address_every_secs: u64,
}

impl ThrottleArgs {
    fn config(&self) -> throttle::Config {
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
struct RedisArgs {
    /// Redis URL for the presence table (and, in a user service, the login throttle).
    #[arg(long = "redis", env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,
    /// Put before every key, so that several systems can share one Redis.
    #[arg(long = "redis-prefix", env = "CHATROOM_REDIS_PREFIX", default_value = "chatroom:presence:")]
    redis_prefix: String,
}

impl ZkArgs {
    fn connect(&self) -> anyhow::Result<ZooKeeper> {
        let config = registry::Config { root: self.zk_root.clone(), ..registry::Config::default() };
        ZooKeeper::connect(&self.zk_connect, config)
            .with_context(|| format!("cannot reach ZooKeeper at {}", self.zk_connect))
    }
}

fn mysql(args: &MySqlArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(store::MySql::open(&args.mysql_url).context("cannot open the MySQL store")?))
}

fn redis(args: &RedisArgs) -> anyhow::Result<Arc<dyn Presence>> {
    let config = presence::redis::Config {
        url: args.redis_url.clone(),
        key_prefix: args.redis_prefix.clone(),
        ..presence::redis::Config::default()
    };
    Ok(Arc::new(presence::Redis::with_config(&config).context("cannot open the Redis presence table")?))
}

/// SIGTERM and SIGINT, caught from before a server starts. Until the process serves, a
/// signal ends it at once (a startup stuck on an unreachable backend must not outlive
/// Ctrl-C); once it serves, the first signal starts the graceful stop and a second one
/// ends the process at once, in case the graceful stop hangs.
struct Stop {
    /// Set when the process serves: from then on the first signal is handed to `first`.
    serving: Arc<AtomicBool>,
    /// The first signal after serving started.
    first: mpsc::Receiver<i32>,
}

impl Stop {
    fn catch() -> anyhow::Result<Stop> {
        let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot catch SIGTERM and SIGINT")?;
        let serving = Arc::new(AtomicBool::new(false));
        let (tx, first) = mpsc::channel();
        let serves = serving.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut stopping = false;
                for signal in signals.forever() {
                    if serves.load(Ordering::SeqCst) && !stopping {
                        stopping = true;
                        let _ = tx.send(signal);
                        continue;
                    }
                    let when = if stopping { "during the graceful stop" } else { "before serving" };
                    eprintln!("{} {when}; exiting now", signal_name(signal));
                    std::process::exit(128 + signal);
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Stop { serving, first })
    }

    /// Marks the process as serving: from now on the first signal stops it gracefully.
    /// Called before the process says where it serves, so that whoever reads that line
    /// and signals the process gets the graceful stop.
    fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Marks the process as serving, then blocks until SIGTERM or SIGINT arrives.
    fn wait(self) {
        self.serving.store(true, Ordering::SeqCst);
        let signal = self.first.recv().unwrap_or(SIGTERM);
        tracing::info!(signal = signal_name(signal), "stopping gracefully");
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The client and the demo print a conversation; their logs stay quiet unless asked for.
    let default_level = match cli.command {
        Command::Client { .. } | Command::Demo { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Standalone { listen, data_dir, lease_ttl_secs, throttle, tokens, secret, serving } => {
            let stop = Stop::catch()?;
            let config = standalone::Config {
                data_dir,
                listen,
                lease_ttl: Duration::from_secs(lease_ttl_secs.max(1)),
                throttle: throttle.config(),
                tokens: tokens.config(),
                server: serving.config(),
                cluster_secret: secret.load()?,
                ..standalone::Config::default()
            };
            let system = Standalone::start(config).context("cannot start the standalone system")?;
            stop.serving();
            println!("ChatRoom standalone is running; clients connect to {}", system.client_addr());
            if let Some(db) = system.db_path() {
                println!("data: {}", db.display());
            }
            stop.wait();
            system.shutdown();
            tracing::info!("standalone system stopped");
        }
        Command::Proxy {
            listen,
            delivery_listen,
            instance_id,
            lease_ttl_secs,
            proxy_protocol_from,
            zk,
            redis: redis_args,
            secret,
            serving,
        } => {
            let stop = Stop::catch()?;
            let secret = secret.require()?;
            let registry = zk.connect()?;
            let mut config = proxy::Config {
                lease_ttl: Duration::from_secs(lease_ttl_secs.max(1)),
                cluster_secret: Some(secret),
                ..proxy::Config::default()
            };
            if let Some(id) = instance_id {
                config.instance_id = id;
            }
            let the_proxy = proxy::Proxy::new(config, &registry, redis(&redis_args)?)?;
            let server_config = server::Config { proxy_protocol_from, ..serving.config() };
            let running = proxy::serve(the_proxy, &registry, listen, delivery_listen, server_config)?;
            stop.serving();
            println!(
                "ChatRoom proxy {} is running; clients connect to {}",
                running.proxy().instance_id(),
                running.client_addr()
            );
            stop.wait();
            running.shutdown();
            // Closes the ZooKeeper session (its entries went with the deregistration).
            drop(registry);
        }
        Command::UserService {
            listen,
            zk,
            mysql: mysql_args,
            hashing,
            redis: redis_args,
            throttle,
            secret,
            tokens,
            serving,
        } => {
            let stop = Stop::catch()?;
            let secret = secret.require()?;
            let registry = zk.connect()?;
            let counters = throttle::Redis::with_config(&throttle::redis::Config {
                url: redis_args.redis_url.clone(),
                key_prefix: format!("{}throttle:", redis_args.redis_prefix),
                ..throttle::redis::Config::default()
            })
            .context("cannot open the login throttle's Redis")?;
            let limits = throttle::Limits::new(throttle.config(), Arc::new(counters));
            let users = UserService::new(mysql(&mysql_args)?)
                .with_hashing(hashing.config()?)
                .with_throttle(limits)
                .with_tokens(tokens.config());
            let service = UserServiceServer(users);
            let served = serve(service, &registry, listen, SecretArgs::internal(&serving, &secret))?;
            stop.serving();
            println!("ChatRoom user service is running on {}", served.addr());
            stop.wait();
            served.shutdown();
            drop(registry);
        }
        Command::ChatService { listen, zk, mysql: mysql_args, redis: redis_args, secret, serving } => {
            let stop = Stop::catch()?;
            let secret = secret.require()?;
            let registry = zk.connect()?;
            let proxies = Proxies::discover(&registry)?.with_credential(Some(secret.credential()));
            let service = ChatService::new(mysql(&mysql_args)?, redis(&redis_args)?, proxies);
            let served = serve(
                ChatServiceServer(service),
                &registry,
                listen,
                SecretArgs::internal(&serving, &secret),
            )?;
            stop.serving();
            println!("ChatRoom chat service is running on {}", served.addr());
            stop.wait();
            served.shutdown();
            drop(registry);
        }
        Command::Cluster { action } => services::cluster::run(action)?,
        Command::Client { server, json } => {
            use std::io::IsTerminal as _;
            let interactive = std::io::stdin().is_terminal();
            services::client::run(&services::client::Options { server, json, interactive })?;
        }
        Command::Demo { server } => services::demo::run(server)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks the definitions (unique argument ids, valid defaults) only when a
    /// command is built; this builds every subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
