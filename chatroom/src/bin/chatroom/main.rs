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
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chatroom::{client, cluster, demo};
use clap::{Parser, Subcommand};
use rpc_core::server;
use services::api::{ChatServiceServer, UserServiceServer};
use services::chat_service::ChatService;
use services::proxies::Proxies;
use services::standalone::{self, Standalone};
use services::user_service::UserService;
use services::{proxy, serve, throttle};

use args::{
    mysql, redis, ClientPortArgs, HashingArgs, MySqlArgs, RedisArgs, SecretArgs, ServeArgs, ThrottleArgs,
    TokenArgs, WriteArgs, ZkArgs,
};
use stop::Stop;

mod args;
mod stop;

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
        writes: WriteArgs,
        #[command(flatten)]
        tokens: TokenArgs,
        #[command(flatten)]
        client_port: ClientPortArgs,
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
        client_port: ClientPortArgs,
        #[command(flatten)]
        writes: WriteArgs,
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
        action: cluster::Action,
    },
    /// A command-line chat client: interactive on a terminal, one command per line
    /// otherwise (`help` lists the commands).
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
        Command::Standalone {
            listen,
            data_dir,
            lease_ttl_secs,
            throttle,
            writes,
            tokens,
            secret,
            client_port,
            serving,
        } => {
            let stop = Stop::catch()?;
            let config = standalone::Config {
                data_dir,
                listen,
                lease_ttl: Duration::from_secs(lease_ttl_secs.max(1)),
                throttle: throttle::Config { writes: writes.bucket(), ..throttle.config() },
                tokens: tokens.config(),
                server: client_port.config(serving.config()),
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
            client_port,
            writes,
            serving,
        } => {
            let stop = Stop::catch()?;
            let secret = secret.require()?;
            let registry = zk.connect(&secret)?;
            let mut config = proxy::Config {
                lease_ttl: Duration::from_secs(lease_ttl_secs.max(1)),
                cluster_secret: Some(secret),
                writes: writes.bucket(),
                ..proxy::Config::default()
            };
            if let Some(id) = instance_id {
                config.instance_id = id;
            }
            let the_proxy = proxy::Proxy::new(config, &registry, redis(&redis_args)?)?;
            let server_config =
                server::Config { proxy_protocol_from, ..client_port.config(serving.config()) };
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
            let registry = zk.connect(&secret)?;
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
            let registry = zk.connect(&secret)?;
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
        Command::Cluster { action } => cluster::run(action)?,
        Command::Client { server, json } => {
            use std::io::IsTerminal as _;
            let interactive = std::io::stdin().is_terminal();
            client::run(&client::Options { server, json, interactive })?;
        }
        Command::Demo { server } => demo::run(server)?,
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
