//! `chatroom cluster up|down|status`: a local cluster on loopback, in one command.
//!
//! `up` checks that ZooKeeper, MySQL/MariaDB and Redis answer, starts N proxies, N user
//! services and N chat services as detached children of the current `chatroom` binary
//! (each in its own process group, output in log files under the state directory), all
//! under a ZooKeeper root and Redis prefix of their own, waits until each serves, then
//! generates `nginx.conf` (stream module, one upstream of the running proxies; each
//! connection to a proxy starts with a PROXY protocol header naming the client, so that
//! limits per address see the client's address, not nginx's) and starts nginx in front
//! of them on one client port. Every process is recorded in
//! `STATE/cluster.json` (role, pid, start time, address) as soon as it starts.
//!
//! `down` stops exactly the recorded processes, in stages: nginx first (no new clients),
//! then the proxies (which end their sessions and announce their users offline through
//! the chat services, so these must still run), then the services. Each stage gets
//! SIGTERM, which the processes handle gracefully, then SIGKILL after a deadline. `down`
//! then waits until their ports are free and removes the state file. A pid is signalled only
//! while its start time is still the recorded one, so a recycled pid is never touched.
//! `status` prints each process, its address, whether it is alive and whether it is
//! registered in ZooKeeper.

use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rpc_core::registry::{self, Registry as _, ZooKeeper};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::api::{chat_service_rpc, delivery_rpc, user_service_rpc};
use crate::store::mysql::redact;

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
        Action::Up(args) => up(&args),
        Action::Down(args) => down(&args.state_dir),
        Action::Status(args) => status(&args.state_dir),
    }
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

/// The start time of `pid` if it is alive (and not a zombie).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is starttime.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True if the recorded process is still the one `up` started and still running.
pub fn alive(process: &Process) -> bool {
    start_time(process.pid) == Some(process.start_time)
}

/// True if something accepts connections on `addr`.
fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Sends `sig` to `process` if it is still the process `up` started. SIGKILL goes to its
/// whole process group (each child leads its own), so nginx's workers go with their master.
fn signal(process: &Process, sig: Signal) {
    if !alive(process) {
        return;
    }
    let Some(pid) = i32::try_from(process.pid).ok().and_then(Pid::from_raw) else { return };
    let sent = if sig == Signal::KILL {
        rustix::process::kill_process_group(pid, sig)
    } else {
        rustix::process::kill_process(pid, sig)
    };
    if let Err(e) = sent {
        eprintln!("cannot signal {} (pid {}): {e}", process.name, process.pid);
    }
}

/// Set when `up` is asked to stop (SIGINT, SIGTERM) while it starts the cluster: it then
/// stops what it started instead of leaving it running.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.get().is_some_and(|flag| flag.load(Ordering::SeqCst)) {
        bail!("interrupted");
    }
    Ok(())
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

fn check_backends(args: &UpArgs, zk_root: &str) -> anyhow::Result<()> {
    let config = registry::Config {
        root: zk_root.to_owned(),
        operation_timeout: Duration::from_secs(5),
        ..registry::Config::default()
    };
    ZooKeeper::connect(&args.zk, config)
        .map_err(|e| anyhow::anyhow!("ZooKeeper at {} does not answer ({e}); {HINT}", args.zk))?;
    let server_url = without_database(&args.mysql);
    mysql::Conn::new(server_url.as_str())
        .map_err(|e| anyhow::anyhow!("MySQL at {} does not answer ({e}); {HINT}", redact(&args.mysql)))?;
    let redis_ok = redis::Client::open(args.redis.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(3)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    redis_ok.map_err(|e| anyhow::anyhow!("Redis at {} does not answer ({e}); {HINT}", args.redis))?;
    Ok(())
}

/// `url` with its database path removed (to check the server without needing the database).
fn without_database(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

fn nginx_binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/local/sbin"]) {
        let candidate = Path::new(dir).join("nginx");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("nginx")
}

/// The nginx configuration for `proxies`, listening on `listen`, with its files in `dir`.
pub fn nginx_conf(dir: &Path, listen: SocketAddr, proxies: &[SocketAddr]) -> String {
    let mut conf = String::from("# Generated by `chatroom cluster up`; rewritten on every start.\n");
    if Path::new(STREAM_MODULE).is_file() {
        conf.push_str(&format!("load_module {STREAM_MODULE};\n"));
    }
    // Every client holds two connections in a worker (client side and proxy side); the
    // default of 512 would cap a cluster at 256 clients. Where the hard limit on open
    // files cannot be raised (a container may forbid it even to root), two workers
    // sharing the port (`reuseport`) hold twice as many clients as one.
    conf.push_str(&format!(
        "daemon off;\nworker_processes 2;\nworker_rlimit_nofile 65536;\npid {pid};\nerror_log {err} info;\n\
         events {{\n    worker_connections 32768;\n}}\n",
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx-error.log").display(),
    ));
    conf.push_str("stream {\n    upstream proxies {\n");
    for proxy in proxies {
        conf.push_str(&format!("        server {proxy};\n"));
    }
    conf.push_str(&format!(
        "    }}\n    server {{\n        listen {listen} reuseport;\n        proxy_pass proxies;\n        proxy_protocol on;\n    }}\n}}\n"
    ));
    conf
}

/// A child being started: its record and handle (to see it exit early).
struct Starting {
    process: Process,
    child: Child,
    out: PathBuf,
}

fn spawn(command: &mut Command, role: &str, name: &str, logs: &Path) -> anyhow::Result<Starting> {
    let log = logs.join(format!("{name}.log"));
    let out = logs.join(format!("{name}.out"));
    let child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&log)?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id();
    let start_time = start_time(pid).unwrap_or(0);
    let process = Process {
        role: role.to_owned(),
        name: name.to_owned(),
        pid,
        start_time,
        addr: None,
        instance_id: None,
        log,
    };
    Ok(Starting { process, child, out })
}

/// Waits until `starting` printed its address (it serves and is registered by then).
fn wait_addr(starting: &mut Starting) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        interrupted()?;
        let text = fs::read_to_string(&starting.out).unwrap_or_default();
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            let word = line.split_whitespace().last().unwrap_or_default();
            return word.parse().with_context(|| format!("{} printed {line:?}", starting.process.name));
        }
        if let Some(status) = starting.child.try_wait()? {
            bail!(
                "{} exited during startup ({status}); its log {}:\n{}",
                starting.process.name,
                starting.process.log.display(),
                tail(&starting.process.log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not start within {START_TIMEOUT:?}; see {}",
                starting.process.name,
                starting.process.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn up(args: &UpArgs) -> anyhow::Result<()> {
    let dir = &args.state.state_dir;
    let _lock = lock_state_dir(dir)?;
    let flag = INTERRUPTED.get_or_init(Arc::default);
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The handler only sets the flag, which the waits below check.
        signal_hook::flag::register(sig, flag.clone()).context("cannot handle SIGINT and SIGTERM")?;
    }
    if let Ok(state) = read_state(dir) {
        if state.processes.iter().any(alive) {
            bail!("a cluster is already running from {}; `chatroom cluster down` stops it", dir.display());
        }
    }
    if args.proxies == 0 || args.user_services == 0 || args.chat_services == 0 {
        bail!("a cluster needs at least one proxy, one user service and one chat service");
    }
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], args.port));
    if answers(listen) {
        bail!("127.0.0.1:{} is already in use; choose another --port", args.port);
    }
    let id = format!("{:08x}", rand::random::<u32>());
    let zk_root = format!("/chatroom-cluster-{id}");
    check_backends(args, &zk_root)?;
    interrupted()?;

    fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = fs::canonicalize(dir)?;
    let logs = dir.join("logs");
    let mut state = State {
        zk: args.zk.clone(),
        zk_root: zk_root.clone(),
        redis_prefix: format!("chatroom:cluster-{id}:presence:"),
        client_addr: listen,
        processes: Vec::new(),
    };
    match start_all(args, &dir, &logs, &mut state) {
        Ok(()) => {
            println!("ChatRoom cluster is up; clients connect to {listen} (nginx)");
            print_status(&state);
            println!("state: {}", state_path(&dir).display());
            Ok(())
        }
        Err(e) => {
            eprintln!("cluster up failed; stopping what it started");
            let _ = stop(&dir, &state);
            Err(e)
        }
    }
}

fn start_all(args: &UpArgs, dir: &Path, logs: &Path, state: &mut State) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the chatroom binary")?;
    let zk_root = state.zk_root.clone();
    let redis_prefix = state.redis_prefix.clone();
    let common = |cmd: &mut Command| {
        cmd.args(["--zk", &args.zk, "--zk-root", &zk_root]).env("RUST_LOG", "info");
    };
    let launch = |state: &mut State, mut s: Starting| -> anyhow::Result<()> {
        state.processes.push(s.process.clone());
        write_state(dir, state)?;
        let addr = wait_addr(&mut s)?;
        if let Some(p) = state.processes.iter_mut().find(|p| p.name == s.process.name) {
            p.addr = Some(addr);
        }
        write_state(dir, state)
    };
    let services = [("user-service", args.user_services), ("chat-service", args.chat_services)];
    for (role, n) in services {
        for i in 1..=n {
            let mut cmd = Command::new(&exe);
            cmd.args([role, "--listen", "127.0.0.1:0", "--mysql", &args.mysql]);
            // The chat services keep presence there, the user services count logins.
            cmd.args(["--redis", &args.redis, "--redis-prefix", &redis_prefix]);
            common(&mut cmd);
            let s = spawn(&mut cmd, role, &format!("{role}-{i}"), logs)?;
            launch(state, s)?;
        }
    }
    for i in 1..=args.proxies {
        let name = format!("proxy-{i}");
        let instance_id = format!("{name}-{}", &zk_root["/chatroom-cluster-".len()..]);
        let mut cmd = Command::new(&exe);
        cmd.args(["proxy", "--listen", "127.0.0.1:0", "--delivery-listen", "127.0.0.1:0"])
            .args(["--instance-id", &instance_id, "--lease-ttl-secs", &args.lease_ttl_secs.to_string()])
            .args(["--redis", &args.redis, "--redis-prefix", &redis_prefix])
            // nginx names each client in a PROXY header (see `nginx_conf`).
            .args(["--proxy-protocol-from", "127.0.0.1"]);
        common(&mut cmd);
        let mut s = spawn(&mut cmd, "proxy", &name, logs)?;
        s.process.instance_id = Some(instance_id);
        launch(state, s)?;
    }
    let proxies: Vec<SocketAddr> =
        state.processes.iter().filter(|p| p.role == "proxy").filter_map(|p| p.addr).collect();
    let conf = dir.join("nginx.conf");
    fs::write(&conf, nginx_conf(dir, state.client_addr, &proxies))?;
    let nginx = nginx_binary();
    let check = Command::new(&nginx)
        .args(["-t", "-q", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"])
        .output()
        .with_context(|| format!("cannot run {} (is nginx installed? {HINT})", nginx.display()))?;
    if !check.status.success() {
        bail!("nginx rejects {}:\n{}", conf.display(), String::from_utf8_lossy(&check.stderr));
    }
    let mut cmd = Command::new(&nginx);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf).arg("-e").arg(dir.join("nginx-error.log"));
    let mut s = spawn(&mut cmd, "nginx", "nginx", logs)?;
    s.process.addr = Some(state.client_addr);
    state.processes.push(s.process.clone());
    write_state(dir, state)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while !answers(state.client_addr) {
        interrupted()?;
        if let Some(status) = s.child.try_wait()? {
            bail!("nginx exited during startup ({status}):\n{}", tail(&dir.join("nginx-error.log")));
        }
        if Instant::now() > deadline {
            bail!("nginx does not answer on {} after {START_TIMEOUT:?}", state.client_addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Which stage of `down` stops a process of `role`: nginx first, so no client reaches a
/// stopping proxy; then the proxies, whose graceful stop still needs the chat services;
/// then everything else.
fn stop_stage(role: &str) -> usize {
    match role {
        "nginx" => 0,
        "proxy" => 1,
        _ => 2,
    }
}

/// Stops every recorded process still alive, stage by stage (see [`stop_stage`]): SIGTERM,
/// then SIGKILL after a deadline; then waits until their addresses refuse connections.
fn stop(dir: &Path, state: &State) -> anyhow::Result<()> {
    let order: Vec<&Process> = state.processes.iter().rev().collect();
    for stage in 0..=2 {
        let group: Vec<&Process> = order.iter().copied().filter(|p| stop_stage(&p.role) == stage).collect();
        for p in &group {
            signal(p, Signal::TERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while group.iter().any(|p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in group.iter().filter(|p| alive(p)) {
            eprintln!("{} (pid {}) did not exit after SIGTERM; sending SIGKILL", p.name, p.pid);
            signal(p, Signal::KILL);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let left: Vec<String> = order
            .iter()
            .filter(|p| alive(p) || p.addr.is_some_and(answers))
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("still running or still listening after {STOP_TIMEOUT:?}: {}", left.join(", "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_file(state_path(dir));
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let _lock = lock_state_dir(dir)?;
    let state = read_state(dir)?;
    stop(dir, &state)?;
    println!("ChatRoom cluster in {} is down ({} processes stopped)", dir.display(), state.processes.len());
    Ok(())
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let state = read_state(dir)?;
    println!("clients connect to {} (nginx); ZooKeeper root {}", state.client_addr, state.zk_root);
    print_status(&state);
    Ok(())
}

/// One line per process: role, name, pid, address, alive, ZooKeeper registration.
fn print_status(state: &State) {
    let config = registry::Config {
        root: state.zk_root.clone(),
        operation_timeout: Duration::from_secs(5),
        ..registry::Config::default()
    };
    let zk = ZooKeeper::connect(&state.zk, config);
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
                None => "zookeeper unreachable".to_owned(),
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
