//! The system under test: a local cluster (`chatroom cluster up` with a temporary state
//! directory and a database of its own), the standalone process (with a temporary data
//! directory), or a running system given by address. What `chatbench` starts it also
//! stops, when [`System`] is dropped, including after an error or a panic.
//!
//! Also here: optional seeding of the users straight into the store before the services
//! start (one password hash for all, computed once; cheap unless asked, so that 10,000
//! logins do not take minutes of argon2), the proxies' process ids and resident memory, CPU time per process, and the
//! proxy each user's presence lease names.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use services::{presence, Presence as _, UserId};

/// Which system to run against.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Start a local cluster behind nginx.
    Cluster,
    /// Start the standalone process.
    Standalone,
    /// Use a running system at this address.
    Server(SocketAddr),
}

/// How to start the system.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which system.
    pub mode: Mode,
    /// The `chatroom` binary.
    pub chatroom: PathBuf,
    /// Proxies, user services and chat services of a cluster.
    pub proxies: usize,
    /// User service instances of a cluster.
    pub user_services: usize,
    /// Chat service instances of a cluster.
    pub chat_services: usize,
    /// `mysql://USER:PASSWORD@HOST:PORT`, without a database: the cluster gets a new
    /// database `chatroom_bench_*` on it, dropped at the end.
    pub mysql_server: String,
    /// A running cluster's state directory (with [`Mode::Server`]), to find its proxies
    /// and presence table.
    pub state_dir: Option<PathBuf>,
}

/// Users to create in the store before the services start.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Their names.
    pub names: Vec<String>,
    /// Their common password.
    pub password: String,
    /// Whether their password hash has the full cost `Register` gives (each login then
    /// costs what a real one does) rather than the cheapest.
    pub full_cost: bool,
}

/// A running system; dropping it stops what was started.
pub struct System {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// What to stop.
    kind: Kind,
}

enum Kind {
    Cluster { chatroom: PathBuf, state_dir: tempfile::TempDir, mysql_server: String, database: String },
    Standalone { child: Child, _data_dir: tempfile::TempDir },
    Server { state_dir: Option<PathBuf> },
}

impl System {
    /// Starts (or finds) the system, creating `seed`'s users in its store first.
    ///
    /// # Errors
    ///
    /// When the system cannot start; whatever was started is stopped again.
    pub fn start(options: &Options, seed: Option<&Seed>) -> anyhow::Result<System> {
        match &options.mode {
            Mode::Server(addr) => {
                if seed.is_some() {
                    bail!("users can only be seeded into a system chatbench starts");
                }
                Ok(System { addr: *addr, kind: Kind::Server { state_dir: options.state_dir.clone() } })
            }
            Mode::Standalone => start_standalone(options, seed),
            Mode::Cluster => start_cluster(options, seed),
        }
    }

    /// A short description for the report.
    pub fn describe(&self, options: &Options) -> String {
        match &self.kind {
            Kind::Cluster { .. } => format!(
                "cluster ({} proxies, {} user, {} chat services; nginx; MariaDB, Redis)",
                options.proxies, options.user_services, options.chat_services
            ),
            Kind::Standalone { .. } => "standalone (SQLite, in-process presence)".into(),
            Kind::Server { .. } => format!("server {}", self.addr),
        }
    }

    /// Whether this is a started cluster, a started standalone process or a given server.
    pub fn kind(&self) -> Mode {
        match &self.kind {
            Kind::Cluster { .. } => Mode::Cluster,
            Kind::Standalone { .. } => Mode::Standalone,
            Kind::Server { .. } => Mode::Server(self.addr),
        }
    }

    /// A started cluster's state directory and database; `None` for anything else.
    pub fn cluster(&self) -> Option<(&Path, &str)> {
        match &self.kind {
            Kind::Cluster { state_dir, database, .. } => Some((state_dir.path(), database)),
            _ => None,
        }
    }

    fn state_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Cluster { state_dir, .. } => Some(state_dir.path()),
            Kind::Server { state_dir } => state_dir.as_deref(),
            Kind::Standalone { .. } => None,
        }
    }

    /// Every process of the system by role (`proxy-1`, `chat-service-2`, `nginx`, the
    /// standalone process), with its pid.
    pub fn processes(&self) -> Vec<(String, u32)> {
        if let Kind::Standalone { child, .. } = &self.kind {
            return vec![("standalone".into(), child.id())];
        }
        let Some(dir) = self.state_dir() else { return Vec::new() };
        match chatroom::cluster::read_state(dir) {
            Ok(state) => state.processes.iter().map(|p| (p.name.clone(), p.pid)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The pids whose memory counts as the proxies' (the standalone process as a whole).
    pub fn proxy_pids(&self) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|(name, _)| name.starts_with("proxy") || name == "standalone")
            .map(|(_, pid)| pid)
            .collect()
    }

    /// The proxy instance holding each user's presence lease, when the system's presence
    /// table can be read (a cluster's Redis); `None` otherwise.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub fn proxies_of(&self, ids: &[u64], redis_url: &str) -> anyhow::Result<Option<Vec<Option<String>>>> {
        let Some(dir) = self.state_dir() else { return Ok(None) };
        let state = chatroom::cluster::read_state(dir)?;
        let config = presence::redis::Config {
            url: redis_url.to_owned(),
            key_prefix: state.redis_prefix,
            ..presence::redis::Config::default()
        };
        let table = presence::Redis::with_config(&config)?;
        let users: Vec<UserId> = ids.iter().map(|&id| UserId(id)).collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in users.chunks(1000) {
            out.extend(table.lookup(chunk)?);
        }
        Ok(Some(out))
    }
}

impl Drop for System {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Cluster { chatroom, state_dir, mysql_server, database } => {
                let down = Command::new(&*chatroom)
                    .args(["cluster", "down", "--state-dir"])
                    .arg(state_dir.path())
                    .stdout(Stdio::null())
                    .status();
                if !down.is_ok_and(|s| s.success()) {
                    eprintln!(
                        "chatbench: `chatroom cluster down` failed; see {}",
                        state_dir.path().display()
                    );
                }
                if let Err(e) = drop_database(mysql_server, database) {
                    eprintln!("chatbench: cannot drop database {database}: {e}");
                }
            }
            Kind::Standalone { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Kind::Server { .. } => {}
        }
    }
}

/// Every simulated user connects and logs in from 127.0.0.1: the per-address limits on
/// logins, registrations and connections (nginx's and the proxies') are turned off (the
/// per-account back-off stays; the users know their passwords). The per-user send limit
/// stays on, as shipped: the workloads send far below it per user.
const UNTHROTTLED: [(&str, &str); 3] = [
    ("CHATROOM_LOGIN_ADDRESS_BURST", "0"),
    ("CHATROOM_REGISTER_ADDRESS_BURST", "0"),
    ("CHATROOM_MAX_CONNECTIONS_PER_ADDRESS", "0"),
];

/// A free loopback port (free a moment ago).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The password hash seeded users get: argon2id at its smallest cost, since the run
/// measures the chat path, not password hashing. Verification uses the parameters the
/// hash carries, so their logins are cheap too.
fn cheap_hash(password: &str) -> anyhow::Result<String> {
    let cheap = services::auth::Config { memory_kib: 8, iterations: 1, parallelism: 1 };
    Ok(services::auth::hash_password_with(password, &cheap)?)
}

fn seed_store(store: Arc<dyn services::Store>, seed: &Seed, threads: usize) -> anyhow::Result<()> {
    let hash = if seed.full_cost {
        services::auth::hash_password(&seed.password)?
    } else {
        cheap_hash(&seed.password)?
    };
    let chunk = seed.names.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = seed
            .names
            .chunks(chunk)
            .map(|names| {
                let store = store.clone();
                let hash = &hash;
                scope.spawn(move || -> anyhow::Result<()> {
                    for name in names {
                        store.create_user(name, hash)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("seeding thread panicked"))
    })
}

fn start_standalone(options: &Options, seed: Option<&Seed>) -> anyhow::Result<System> {
    let data_dir = tempfile::Builder::new().prefix("chatbench-standalone-").tempdir()?;
    if let Some(seed) = seed {
        let store = services::store::Sqlite::open(data_dir.path().join(services::standalone::DB_FILE))?;
        seed_store(Arc::new(store), seed, 1)?;
    }
    let port = free_port()?;
    let log = std::fs::File::create(data_dir.path().join("standalone.log"))?;
    let mut child = Command::new(&options.chatroom)
        .args(["standalone", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir.path())
        .env("RUST_LOG", "warn")
        .envs(UNTHROTTLED)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", options.chatroom.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stdout = std::io::BufReader::new(stdout);
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    // Keep reading what else it prints: closing the pipe here would make its next
    // `println!` fail with EPIPE, and the process stops (seen as every user getting
    // "server is shutting down" right after connecting).
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let Some(addr) = first.split_whitespace().last().and_then(|w| w.parse().ok()) else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the standalone system did not start (printed {first:?}); see {}",
            data_dir.path().join("standalone.log").display()
        );
    };
    Ok(System { addr, kind: Kind::Standalone { child, _data_dir: data_dir } })
}

fn start_cluster(options: &Options, seed: Option<&Seed>) -> anyhow::Result<System> {
    let state_dir = tempfile::Builder::new().prefix("chatbench-cluster-").tempdir()?;
    let database = format!("chatroom_bench_{}_{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff);
    let url = format!("{}/{database}", options.mysql_server.trim_end_matches('/'));
    // Created (and migrated) here, so it can be seeded and is dropped even if `up` fails.
    let store = services::store::MySql::open(&url).context("cannot create the benchmark database")?;
    let port = free_port()?;
    let mut system = System {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        kind: Kind::Cluster {
            chatroom: options.chatroom.clone(),
            state_dir,
            mysql_server: options.mysql_server.clone(),
            database,
        },
    };
    if let Some(seed) = seed {
        seed_store(Arc::new(store), seed, 8)?;
    }
    let Kind::Cluster { state_dir, .. } = &mut system.kind else { unreachable!() };
    let output = Command::new(&options.chatroom)
        .args(["cluster", "up", "--port", &port.to_string(), "--state-dir"])
        .arg(state_dir.path())
        .args(["--proxies", &options.proxies.to_string()])
        .args(["--user-services", &options.user_services.to_string()])
        .args(["--chat-services", &options.chat_services.to_string()])
        .args(["--mysql", &url])
        .envs(UNTHROTTLED)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", options.chatroom.display()))?;
    if !output.status.success() {
        bail!(
            "`chatroom cluster up` failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(system)
}

fn drop_database(mysql_server: &str, database: &str) -> anyhow::Result<()> {
    use mysql::prelude::Queryable as _;
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(mysql_server)?)?;
    // The name is ours, made of [a-z0-9_] only.
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{database}`"))?;
    Ok(())
}

/// CPU seconds (user + system) `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// The processes whose CPU time the report shows: the system's own, the shared backends
/// found by name, and this generator.
pub fn cpu_targets(system: &System) -> Vec<(String, u32)> {
    let mut targets = with_nginx_workers(system.processes());
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if matches!(comm, "mariadbd" | "mysqld" | "redis-server") {
                targets.push((format!("{comm} ({pid})"), pid));
            }
        }
    }
    targets.push(("chatbench".into(), std::process::id()));
    targets
}

/// `processes` and the workers of any nginx among them (its master only waits; the
/// workers carry the connections).
pub fn with_nginx_workers(mut processes: Vec<(String, u32)>) -> Vec<(String, u32)> {
    let workers: Vec<(String, u32)> = processes
        .iter()
        .filter(|(name, _)| name.starts_with("nginx"))
        .flat_map(|(name, pid)| {
            children(*pid).into_iter().map(move |child| (format!("{name} worker {child}"), child))
        })
        .collect();
    processes.extend(workers);
    processes
}

/// The child processes of `pid`, from `/proc/PID/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// CPU seconds of each target now.
pub fn cpu_snapshot(targets: &[(String, u32)]) -> BTreeMap<String, f64> {
    targets.iter().filter_map(|(name, pid)| Some((name.clone(), cpu_seconds(*pid)?))).collect()
}
