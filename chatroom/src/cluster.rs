//! `chatroom cluster up|down|status`: a local cluster on loopback, in one command.
//!
//! `up` checks that ZooKeeper, MySQL/MariaDB and Redis answer, starts N proxies, N user
//! services and N chat services as detached children of the current `chatroom` binary
//! (each in its own process group, output in log files under the state directory), all
//! under a ZooKeeper root and Redis prefix of their own, waits until each serves, then
//! generates `nginx.conf` (stream module, one upstream of the running proxies; each
//! connection to a proxy starts with a PROXY protocol header naming the client, so that
//! limits per address see the client's address, not nginx's; nginx itself limits the
//! connections of each client address) and starts nginx in front
//! of them on one client port. Every process is recorded in
//! `STATE/cluster.json` (role, pid, start time, address) as soon as it starts. Every
//! process gets the cluster secret from `STATE/cluster.secret` (made by the first `up`,
//! mode 0600, reused by later ones; see `services::secret`), so that their internal
//! ports serve only each other, and so that their ZooKeeper root admits only them.
//!
//! `down` stops exactly the recorded processes, in stages: nginx first (no new clients),
//! then the proxies (which end their sessions and announce their users offline through
//! the chat services, so these must still run), then the services. Each stage gets
//! SIGTERM, which the processes handle gracefully, then SIGKILL after a deadline. `down`
//! then waits until their ports are free and removes the state file. A pid is signalled only
//! while its start time is still the recorded one, so a recycled pid is never touched.
//! `status` prints each process, its address, whether it is alive and whether it is
//! registered in ZooKeeper.
//!
//! This file holds the commands' arguments, the state file and `down`/`status`;
//! `cluster/up.rs` checks the backends, starts the processes and writes `nginx.conf`;
//! `cluster/process.rs` starts, watches, signals and stops one process.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rpc_core::registry::{self, Registry as _, ZooKeeper};
use serde::{Deserialize, Serialize};
use services::api::{chat_service_rpc, delivery_rpc, user_service_rpc};
use services::secret::ClusterSecret;

mod process;
mod up;

pub use process::alive;
pub use up::nginx_conf;

/// Where nginx's stream module lives on Debian and Ubuntu.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// How long a process may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The state file's name inside the state directory.
const STATE_FILE: &str = "cluster.json";
/// What to run when a backend is missing.
const HINT: &str = "start them with `bash scripts/services.sh up`";

/// What `chatroom cluster` does.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Starts the cluster: proxies, user services and chat services, with nginx in front.
    Up(UpArgs),
    /// Stops exactly the processes `up` started and removes the state.
    Down(StateArgs),
    /// Shows each process, its address, whether it is alive and its ZooKeeper registration.
    Status(StateArgs),
}

/// Where the cluster's state lives.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The directory holding the state file, nginx.conf and the logs.
    #[arg(long, env = "CHATROOM_CLUSTER_DIR", default_value = "data/cluster")]
    pub state_dir: PathBuf,
}

/// How `up` builds the cluster.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the state lives.
    #[command(flatten)]
    pub state: StateArgs,
    /// How many proxies.
    #[arg(long, default_value_t = 2)]
    pub proxies: usize,
    /// How many user service instances.
    #[arg(long, default_value_t = 2)]
    pub user_services: usize,
    /// How many chat service instances.
    #[arg(long, default_value_t = 2)]
    pub chat_services: usize,
    /// The port nginx listens on (127.0.0.1) for clients.
    #[arg(long, env = "CHATROOM_CLUSTER_PORT", default_value_t = 7979)]
    pub port: u16,
    /// ZooKeeper connect string.
    #[arg(long = "zk", env = "CHATROOM_ZK", default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// MySQL/MariaDB URL; the services create and migrate the database.
    #[arg(
        long = "mysql",
        env = "CHATROOM_MYSQL_URL",
        default_value = "mysql://chatroom:chatroom@127.0.0.1:3306/chatroom"
    )]
    pub mysql: String,
    /// Redis URL for the presence table.
    #[arg(long = "redis", env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis: String,
    /// How long a user stays online without their proxy renewing the lease.
    #[arg(long, env = "CHATROOM_LEASE_TTL_SECS", default_value_t = 30)]
    pub lease_ttl_secs: u64,
    /// Connections one client address may hold open: nginx closes one more at once
    /// (`limit_conn`), and each proxy, counting the address nginx names, would refuse it
    /// with a go-away naming the limit. 0 turns the limit off, as a benchmark connecting
    /// thousands of users from 127.0.0.1 does. The default is
    /// `services::proxy::MAX_CONNECTIONS_PER_ADDRESS`, which says why.
    #[arg(
        long,
        env = "CHATROOM_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = services::proxy::MAX_CONNECTIONS_PER_ADDRESS
    )]
    pub max_connections_per_address: usize,
}

/// One process `up` started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// `proxy`, `user-service`, `chat-service` or `nginx`.
    pub role: String,
    /// Unique within the cluster, e.g. `proxy-1`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/PID/stat`), so a recycled pid is never mistaken for it.
    pub start_time: u64,
    /// Where it serves (a proxy's client address; nginx's client address); `None` until known.
    pub addr: Option<SocketAddr>,
    /// A proxy's instance id in ZooKeeper and Redis.
    pub instance_id: Option<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// The state file: everything `down` and `status` need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// ZooKeeper connect string.
    pub zk: String,
    /// The ZooKeeper root every process registers under.
    pub zk_root: String,
    /// The Redis presence prefix.
    pub redis_prefix: String,
    /// Where clients connect (nginx).
    pub client_addr: SocketAddr,
    /// Every process started, in start order.
    pub processes: Vec<Process>,
}

/// Runs one `chatroom cluster` action.
///
/// # Errors
///
/// Whatever stops the action: a backend that does not answer, a process that does not
/// start, a state directory that cannot be written.
pub fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Up(args) => up::up(&args),
        Action::Down(args) => down(&args.state_dir),
        Action::Status(args) => status(&args.state_dir),
    }
}

/// The cluster secret's file in the state directory `dir`.
pub fn secret_path(dir: &Path) -> PathBuf {
    dir.join(services::secret::FILE)
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads the state file in `dir`.
///
/// # Errors
///
/// If there is none or it cannot be parsed.
pub fn read_state(dir: &Path) -> anyhow::Result<State> {
    let path = state_path(dir);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("no cluster state at {} (is the cluster up?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

fn write_state(dir: &Path, state: &State) -> anyhow::Result<()> {
    let path = state_path(dir);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    fs::write(&tmp, serde_json::to_string_pretty(state)?)?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Holds the state directory's lock file, so that two `up` or `down` never run on one
/// directory at once; released when dropped.
fn lock_state_dir(dir: &Path) -> anyhow::Result<fs::File> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!(
            "another `chatroom cluster` command is working on {}; try again when it is done",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let _lock = lock_state_dir(dir)?;
    let state = read_state(dir)?;
    process::stop(dir, &state)?;
    println!("ChatRoom cluster in {} is down ({} processes stopped)", dir.display(), state.processes.len());
    Ok(())
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let state = read_state(dir)?;
    println!("clients connect to {} (nginx); ZooKeeper root {}", state.client_addr, state.zk_root);
    print_status(dir, &state);
    Ok(())
}

/// One line per process: role, name, pid, address, alive, ZooKeeper registration. The
/// registry is read with the cluster secret in `dir`: nobody else may read it.
fn print_status(dir: &Path, state: &State) {
    let zk = ClusterSecret::read(&secret_path(dir)).map_err(anyhow::Error::from).and_then(|secret| {
        let config = registry::Config {
            operation_timeout: Duration::from_secs(5),
            ..secret.registry_config(&state.zk_root)
        };
        Ok(ZooKeeper::connect(&state.zk, config)?)
    });
    if let Err(e) = &zk {
        println!("cannot read the registry: {e:#}");
    }
    let instances = |service: &str| -> Option<Vec<registry::Instance>> {
        zk.as_ref().ok().and_then(|zk| zk.instances(service).ok())
    };
    let users = instances(user_service_rpc::SERVICE_NAME);
    let chats = instances(chat_service_rpc::SERVICE_NAME);
    let deliveries = instances(delivery_rpc::SERVICE_NAME);
    let mut out = std::io::stdout().lock();
    for p in &state.processes {
        let registered = |list: &Option<Vec<registry::Instance>>,
                          found: &dyn Fn(&registry::Instance) -> bool| {
            match list {
                None => "registry unreadable".to_owned(),
                Some(list) => match list.iter().find(|i| found(i)) {
                    Some(i) => format!("registered {} at {}", i.id, i.addr),
                    None => "not registered".to_owned(),
                },
            }
        };
        let registration = match p.role.as_str() {
            "user-service" => registered(&users, &|i| Some(i.addr) == p.addr),
            "chat-service" => registered(&chats, &|i| Some(i.addr) == p.addr),
            "proxy" => registered(&deliveries, &|i| Some(&i.id) == p.instance_id.as_ref()),
            _ => "-".to_owned(),
        };
        let addr = p.addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let life = if alive(p) { "alive" } else { "dead" };
        let _ = writeln!(out, "{:<14} pid {:<8} {:<22} {:<6} {}", p.name, p.pid, addr, life, registration);
    }
}
