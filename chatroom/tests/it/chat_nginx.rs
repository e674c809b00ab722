//! The real cluster end to end through nginx: `chatroom cluster up` with two proxies, two
//! user services and two chat services on ZooKeeper, MariaDB and Redis, clients on the
//! nginx port (round robin, so users land on different proxies).
//!
//! * `scenarios`: every `chat_scenarios` scenario, on ONE cluster shared by the module's
//!   scenario tests (each scenario's user names are its own, see `System::name`), and on
//!   the same cluster, users on different proxies (checked in the presence table)
//!   chatting one to one and in a group.
//! * The fault tests each start a cluster of their own: a chat service killed with SIGKILL
//!   while messages flow, and a proxy killed with SIGKILL (its users resume on the other
//!   with their session tokens).
//!
//! Every cluster is stopped by a watchdog (`sh`, waiting on a pipe this process holds):
//! when the [`Cluster`] is dropped, or when the test process ends in any way, the pipe
//! closes and the watchdog runs `chatroom cluster down` and drops the cluster's database.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chatroom::cluster::{self, Process, State};
use rpc_core::Code;
use services::api::{self, GatewayClient};
use services::{presence, Presence, UserId};

use crate::chat_client::{direct, gateway_at, group, public_group, user_at, System, PASSWORD};
use crate::support::{
    drop_database, free_port, mysql_url, redis_url, unique_name, wait_until, with_database, zk,
};

/// The tests connect and log many users in from 127.0.0.1: the per-address limits are
/// off (the throttle and the connection limit have tests of their own, `throttle_e2e`
/// and `connection_limit`), and so is the per-user write limit, for the scenarios that
/// send in bursts. Every test that starts the binary sets these.
pub const UNTHROTTLED: &[(&str, &str)] = &[
    ("CHATROOM_LOGIN_ADDRESS_BURST", "0"),
    ("CHATROOM_REGISTER_ADDRESS_BURST", "0"),
    ("CHATROOM_MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ("CHATROOM_WRITE_BURST", "0"),
];

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Proxies behind nginx.
    pub proxies: usize,
    /// User service instances.
    pub user_services: usize,
    /// Chat service instances.
    pub chat_services: usize,
    /// The proxies' presence lease.
    pub lease_ttl_secs: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { proxies: 2, user_services: 2, chat_services: 2, lease_ttl_secs: 5 }
    }
}

/// A cluster `chatroom cluster up` started, under a state directory, a database, a
/// ZooKeeper root and a Redis prefix of its own. Dropping it stops it.
pub struct Cluster {
    /// The state directory (state file, nginx.conf, logs).
    dir: tempfile::TempDir,
    /// The cluster's database, dropped with it.
    database: String,
    /// What `up` recorded.
    state: State,
    /// Stops the cluster when its stdin closes; `None` once it has.
    watchdog: Option<Child>,
}

impl Cluster {
    /// Starts a cluster; fails the test, naming the command that starts the backends, if
    /// it cannot.
    pub fn up(shape: Shape) -> Cluster {
        Cluster::up_with(shape, UNTHROTTLED)
    }

    /// Starts a cluster whose processes also get the environment `env`.
    pub fn up_with(shape: Shape, env: &[(&str, &str)]) -> Cluster {
        Cluster::try_up(shape, env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_up(shape: Shape, env: &[(&str, &str)]) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let database = unique_name("chatroom_test");
        let watchdog = watchdog(dir.path(), &database)?;
        let mut cluster = Cluster { dir, database, state: placeholder_state(), watchdog: Some(watchdog) };
        let mysql = with_database(&mysql_url(), &cluster.database);
        let (zk, redis) = (zk(), redis_url());
        let counts = [shape.proxies, shape.user_services, shape.chat_services].map(|n| n.to_string());
        let ttl = shape.lease_ttl_secs.to_string();
        // A free port can be taken between our probe and nginx's bind: try a few.
        let mut failure = String::new();
        for _ in 0..3 {
            let port = free_port().to_string();
            let args = [
                "up",
                "--proxies",
                &counts[0],
                "--user-services",
                &counts[1],
                "--chat-services",
                &counts[2],
                "--port",
                &port,
                "--zk",
                &zk,
                "--mysql",
                &mysql,
                "--redis",
                &redis,
                "--lease-ttl-secs",
                &ttl,
            ];
            let up = cluster_command(cluster.dir.path(), &args)
                // Full-cost argon2 takes most of a second per hash in a debug build.
                .env("CHATROOM_HASH_MEMORY_KIB", "256")
                .env("CHATROOM_HASH_ITERATIONS", "1")
                .envs(env.iter().copied())
                .output()
                .map_err(|e| format!("cannot run the chatroom binary: {e}"))?;
            if up.status.success() {
                cluster.state = cluster::read_state(cluster.dir.path()).map_err(|e| e.to_string())?;
                return Ok(cluster);
            }
            failure = format!(
                "`chatroom cluster up` failed (are ZooKeeper, MariaDB and Redis up? \
                 `bash scripts/services.sh up` starts them):\n{}{}",
                String::from_utf8_lossy(&up.stdout),
                String::from_utf8_lossy(&up.stderr)
            );
            if !failure.contains("in use") && !failure.contains("nginx") {
                break;
            }
        }
        Err(failure)
    }

    /// What `up` recorded: every process with its address.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state directory (state file, `nginx.conf`, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where clients connect (nginx).
    pub fn client_addr(&self) -> SocketAddr {
        self.state.client_addr
    }

    /// The secret `up` gave every process, which their internal ports require.
    pub fn cluster_secret(&self) -> services::secret::ClusterSecret {
        services::secret::ClusterSecret::read(&cluster::secret_path(self.dir.path()))
            .expect("up made the secret")
    }

    /// The process `up` named `name` (`proxy-1`, `chat-service-2`, ...).
    pub fn process(&self, name: &str) -> &Process {
        self.state.processes.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Kills a process at once (SIGKILL), as a crash would, and waits until it is gone.
    pub fn kill(&self, name: &str) {
        let process = self.process(name);
        let killed = Command::new("kill").arg("-KILL").arg(process.pid.to_string()).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -KILL {} ({name})", process.pid);
        wait_until(Duration::from_secs(5), &format!("{name} is gone"), || !cluster::alive(process));
    }

    /// The presence table the cluster's proxies keep their leases in.
    pub fn presence(&self) -> presence::Redis {
        let config = presence::redis::Config {
            url: redis_url(),
            key_prefix: self.state.redis_prefix.clone(),
            ..presence::redis::Config::default()
        };
        presence::Redis::with_config(&config).expect("opens the cluster's presence table")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        // Anything `down` could not stop (it SIGKILLs after a deadline, so nothing should be).
        if let Ok(state) = cluster::read_state(self.dir.path()) {
            for p in state.processes.iter().filter(|p| cluster::alive(p)) {
                let _ = Command::new("kill").arg("-KILL").arg(p.pid.to_string()).status();
            }
        }
        drop_database(&self.database);
    }
}

/// A state with nothing in it, until `up` wrote the real one.
fn placeholder_state() -> State {
    State {
        zk: String::new(),
        zk_root: String::new(),
        redis_prefix: String::new(),
        client_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        processes: Vec::new(),
    }
}

/// `chatroom cluster <args> --state-dir DIR`.
fn cluster_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatroom"));
    command.arg("cluster").args(args).arg("--state-dir").arg(dir).env("RUST_LOG", "warn");
    command
}

/// Starts `sh` waiting for its stdin to close; then it runs `chatroom cluster down` on
/// `dir`, drops `database` (with the `mysql` client, if there is one) and removes `dir`.
/// Its stdin is a pipe only this process holds (std opens pipes close-on-exec), so it
/// closes when the [`Cluster`] drops it or when this process ends, however it ends.
fn watchdog(dir: &Path, database: &str) -> Result<Child, String> {
    const SCRIPT: &str = r#"read _ignored
"$0" cluster down --state-dir "$1" >/dev/null 2>&1
if command -v mysql >/dev/null 2>&1 && [ -n "$4" ]; then
  MYSQL_PWD="$6" mysql -h "$3" -P "$4" -u "$5" -e "DROP DATABASE IF EXISTS \`$2\`" >/dev/null 2>&1
fi
rm -rf "$1""#;
    let opts = mysql::Opts::from_url(&mysql_url()).ok();
    let host = opts.as_ref().map_or_else(String::new, |o| o.get_ip_or_hostname().to_string());
    let port = opts.as_ref().map_or_else(String::new, |o| o.get_tcp_port().to_string());
    let user = opts.as_ref().and_then(|o| o.get_user().map(str::to_owned)).unwrap_or_default();
    let pass = opts.as_ref().and_then(|o| o.get_pass().map(str::to_owned)).unwrap_or_default();
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg(env!("CARGO_BIN_EXE_chatroom"))
        .arg(dir)
        .args([database, &host, &port, &user, &pass])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the cluster's watchdog (sh): {e}"))
}

/// The cluster the scenario tests share: started by the first of them, stopped by its
/// watchdog when the test process ends.
static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

fn shared() -> &'static Cluster {
    let shared = SHARED.get_or_init(|| Cluster::try_up(Shape::default(), UNTHROTTLED));
    shared.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// The scenarios of `chat_scenarios` and `chat_groups`, each on the one cluster this module shares.
mod scenarios {
    use crate::chat_client::System;

    fn start() -> System {
        System::new(super::shared().client_addr(), Box::new(()))
    }

    chat_suite!(start);
}

#[test]
fn users_on_different_proxies_chat_one_to_one_and_in_a_group() {
    let cluster = shared();
    let system = System::new(cluster.client_addr(), Box::new(()));
    let presence = cluster.presence();
    let proxy_of =
        |user: &api::User| presence.lookup(&[UserId(user.id)]).expect("presence answers")[0].clone();

    // Alice comes through nginx; bob goes straight to the other proxy, so the two are on
    // different proxies whatever order nginx's workers pick proxies in while the other
    // scenarios connect too. Three more members come through nginx for the group.
    let (alice_client, alice) = system.user("alice");
    let alice_proxy = proxy_of(&alice).expect("alice is online");
    let other_proxy = cluster
        .state
        .processes
        .iter()
        .find(|p| p.role == "proxy" && p.instance_id.as_deref() != Some(alice_proxy.as_str()))
        .expect("the cluster has a second proxy");
    let (bob_client, bob) = user_at(other_proxy.addr.expect("a proxy serves"), &system.name("bob"));
    assert_ne!(proxy_of(&bob).expect("bob is online"), alice_proxy, "bob is on the other proxy");
    let others: Vec<_> = (0..3).map(|i| system.user(&format!("member{i}"))).collect();

    alice_client.send(direct(&alice, &bob), "a-1", "from one proxy").unwrap();
    assert_eq!(bob_client.wait_messages(1)[0].body, "from one proxy");
    let reply = bob_client.send(direct(&alice, &bob), "b-1", "to the other").unwrap();
    assert_eq!(reply.message.unwrap().seq, 2);
    assert_eq!(alice_client.wait_messages(1)[0].body, "to the other");

    let id = alice_client.gateway.create_group(&public_group("both")).unwrap();
    let id = id.group.unwrap().id;
    bob_client.gateway.join_group(&api::JoinGroupRequest { group_id: id }).unwrap();
    for (client, _) in &others {
        client.gateway.join_group(&api::JoinGroupRequest { group_id: id }).unwrap();
    }
    let sent = bob_client.send(group(id), "b-2", "to everyone").unwrap().message.unwrap();
    assert_eq!(alice_client.wait_messages(2)[1].seq, sent.seq);
    for (client, user) in &others {
        let got = client.wait_messages(1);
        assert_eq!((got[0].seq, got[0].body.as_str()), (sent.seq, "to everyone"), "{}", user.name);
    }
    assert!(bob_client.pushed_messages().iter().all(|m| m.sender_id != bob.id), "no echo to the sender");
}

/// `api::Conversation` as a map key: (0, low, high) for a pair, (1, group, 0) for a group.
fn key(conversation: &api::Conversation) -> (u8, u64, u64) {
    match conversation.kind.as_ref().expect("a conversation has a kind") {
        api::conversation::Kind::Direct(pair) => (0, pair.low_user_id, pair.high_user_id),
        api::conversation::Kind::GroupId(id) => (1, *id, 0),
    }
}

/// Whether a failed call may be retried as it is: the service or the connection was away.
fn retryable(error: &rpc_core::Error) -> bool {
    matches!(error.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// Calls `call` until it succeeds, retrying what [`retryable`] allows until `deadline`.
/// Returns the answer and how many attempts failed.
fn retry<T>(
    what: &str,
    deadline: Instant,
    mut call: impl FnMut() -> Result<T, rpc_core::Error>,
) -> (T, usize) {
    let mut failed = 0;
    loop {
        match call() {
            Ok(answer) => return (answer, failed),
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                failed += 1;
                // A short pause, so a retry does not spin while the cluster notices the loss.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{what} failed after {failed} retries: {e}"),
        }
    }
}

/// A client that keeps, per conversation, every message it accepted: pushes in sequence
/// order, a `Sync` when a pushed sequence skips one, and pushes already seen dropped (and
/// counted), as `chatroom client` does.
struct Receiver {
    /// The stub; pushes go to `events`.
    gateway: GatewayClient,
    /// Every push, in arrival order.
    events: mpsc::Receiver<api::push::Event>,
    /// Accepted messages per conversation, in sequence order.
    accepted: BTreeMap<(u8, u64, u64), Vec<api::Message>>,
    /// The conversations, to build cursors.
    conversations: HashMap<(u8, u64, u64), api::Conversation>,
    /// Pushes of a sequence already accepted.
    raw_duplicates: usize,
    /// Syncs made because a push skipped a sequence.
    gap_syncs: usize,
}

impl Receiver {
    fn login(addr: SocketAddr, name: &str) -> (Receiver, api::User) {
        let (tx, events) = mpsc::channel();
        let tx = Mutex::new(tx);
        let gateway = gateway_at(addr, move |event| {
            let _ = tx.lock().unwrap().send(event);
        });
        let request =
            api::RegisterRequest { name: name.into(), password: PASSWORD.into(), ..Default::default() };
        gateway.register(&request).expect("registers");
        let request =
            api::LoginRequest { name: name.into(), password: PASSWORD.into(), ..Default::default() };
        let user = gateway.login(&request).expect("logs in").user.unwrap();
        let receiver = Receiver {
            gateway,
            events,
            accepted: BTreeMap::new(),
            conversations: HashMap::new(),
            raw_duplicates: 0,
            gap_syncs: 0,
        };
        (receiver, user)
    }

    fn last_seq(&self, key: &(u8, u64, u64)) -> u64 {
        self.accepted.get(key).and_then(|m| m.last()).map_or(0, |m| m.seq)
    }

    /// Handles pushes until `stop` is set and none came for a moment.
    fn run(&mut self, stop: &AtomicBool, deadline: Instant) {
        loop {
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(api::push::Event::Message(message)) => self.offer(message, deadline),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Takes one pushed message: the next sequence is accepted, a jump syncs the gap first,
    /// one already seen is dropped.
    fn offer(&mut self, message: api::Message, deadline: Instant) {
        let conversation = message.conversation.expect("a message names its conversation");
        let key = key(&conversation);
        self.conversations.insert(key, conversation);
        let last = self.last_seq(&key);
        if message.seq <= last {
            self.raw_duplicates += 1;
            return;
        }
        if message.seq > last + 1 {
            self.gap_syncs += 1;
            self.sync(deadline);
        }
        if message.seq == self.last_seq(&key) + 1 {
            self.accepted.entry(key).or_default().push(message);
        }
    }

    /// Pulls everything after the last accepted sequence of every known conversation (and
    /// every conversation the server knows of), until nothing more comes.
    fn sync(&mut self, deadline: Instant) {
        loop {
            let cursors = self
                .conversations
                .iter()
                .map(|(key, conversation)| api::Cursor {
                    conversation: Some(*conversation),
                    seq: self.last_seq(key),
                })
                .collect();
            let request = api::SyncRequest { cursors, limit: 0 };
            let (synced, _) = retry("sync", deadline, || self.gateway.sync(&request));
            for message in synced.messages {
                let conversation = message.conversation.expect("a message names its conversation");
                let key = key(&conversation);
                self.conversations.insert(key, conversation);
                let last = self.last_seq(&key);
                assert!(message.seq <= last + 1, "sync skipped from {last} to {}", message.seq);
                if message.seq == last + 1 {
                    self.accepted.entry(key).or_default().push(message);
                }
            }
            if !synced.has_more {
                return;
            }
        }
    }
}

/// One acknowledged send.
#[derive(Debug, Clone)]
struct Acked {
    /// Where it went.
    conversation: (u8, u64, u64),
    /// The sequence the acknowledgement carried.
    seq: u64,
    /// The text, unique per send.
    body: String,
}

#[test]
fn a_chat_service_killed_while_messages_flow_loses_nothing_and_stores_nothing_twice() {
    const SENDERS: usize = 4;
    const MESSAGES: usize = 30;
    let cluster = Cluster::up(Shape::default());
    let system = System::new(cluster.client_addr(), Box::new(()));
    let deadline = Instant::now() + Duration::from_secs(40);

    // Two receivers; each sender writes to one of them and to a group of everyone.
    let receivers: Vec<(Receiver, api::User)> =
        (0..2).map(|i| Receiver::login(system.addr(), &system.name(&format!("r{i}")))).collect();
    let senders: Vec<_> = (0..SENDERS).map(|i| system.user(&format!("s{i}"))).collect();
    let group_id = senders[0].0.gateway.create_group(&public_group("flow"));
    let group_id = group_id.unwrap().group.unwrap().id;
    for (client, _) in &senders[1..] {
        client.gateway.join_group(&api::JoinGroupRequest { group_id }).unwrap();
    }
    for (receiver, _) in &receivers {
        receiver.gateway.join_group(&api::JoinGroupRequest { group_id }).unwrap();
    }
    let targets: Vec<api::Conversation> =
        senders.iter().enumerate().map(|(i, (_, user))| direct(user, &receivers[i % 2].1)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        let receiving: Vec<_> = receivers
            .into_iter()
            .map(|(mut receiver, _)| {
                let stop = stop.clone();
                scope.spawn(move || {
                    receiver.run(&stop, deadline);
                    receiver
                })
            })
            .collect();
        let sending: Vec<_> = senders
            .iter()
            .zip(&targets)
            .enumerate()
            .map(|(i, ((client, _), target))| {
                let acked_count = acked_count.clone();
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    let mut retries = 0;
                    for n in 0..MESSAGES {
                        let to = if n % 2 == 0 { *target } else { group(group_id) };
                        let (id, body) = (format!("s{i}-{n}"), format!("from s{i}: {n}"));
                        let (sent, failed) =
                            retry(&format!("send {id}"), deadline, || client.send(to, &id, &body));
                        retries += failed;
                        let message = sent.message.expect("an acknowledgement carries the message");
                        assert_eq!(message.body, body, "{id} is acknowledged with its own text");
                        acked.push(Acked { conversation: key(&to), seq: message.seq, body });
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    (acked, retries)
                })
            })
            .collect();

        // Kill a chat service once a third of the messages are through.
        wait_until(Duration::from_secs(20), "a third of the messages are acknowledged", || {
            acked_count.load(Ordering::SeqCst) >= SENDERS * MESSAGES / 3
        });
        cluster.kill("chat-service-1");
        let mut acked = Vec::new();
        let mut retries = 0;
        for sender in sending {
            let (mine, failed) = sender.join().expect("a sender thread");
            acked.extend(mine);
            retries += failed;
        }
        stop.store(true, Ordering::SeqCst);
        let mut receivers: Vec<Receiver> =
            receiving.into_iter().map(|r| r.join().expect("a receiver thread")).collect();

        // At the end each receiver syncs once more, as a client does at reconnect.
        for receiver in &mut receivers {
            for target in &targets {
                receiver.conversations.insert(key(target), *target);
            }
            receiver.sync(deadline);
        }

        // Every distinct send was stored once: one sequence each, no sequence twice.
        let mut by_conversation: BTreeMap<(u8, u64, u64), Vec<&Acked>> = BTreeMap::new();
        for a in &acked {
            by_conversation.entry(a.conversation).or_default().push(a);
        }
        assert_eq!(acked.len(), SENDERS * MESSAGES);
        for (conversation, sends) in &by_conversation {
            let mut seqs: Vec<u64> = sends.iter().map(|a| a.seq).collect();
            seqs.sort_unstable();
            let expected: Vec<u64> = (1..=sends.len() as u64).collect();
            assert_eq!(seqs, expected, "{conversation:?}: one sequence per send, no gaps, none twice");
        }

        // Each receiver's view has every acknowledged message of its conversations exactly
        // once, under its acknowledged sequence, with no gaps.
        let mut raw_duplicates = 0;
        let mut gap_syncs = 0;
        for (r, receiver) in receivers.iter().enumerate() {
            raw_duplicates += receiver.raw_duplicates;
            gap_syncs += receiver.gap_syncs;
            let mine = |c: &(u8, u64, u64)| {
                c.0 == 1 || targets.iter().enumerate().any(|(i, t)| i % 2 == r && key(t) == *c)
            };
            for (conversation, sends) in by_conversation.iter().filter(|(c, _)| mine(c)) {
                let view = receiver.accepted.get(conversation).map_or(&[][..], |v| &v[..]);
                let seqs: Vec<u64> = view.iter().map(|m| m.seq).collect();
                let expected: Vec<u64> = (1..=sends.len() as u64).collect();
                assert_eq!(seqs, expected, "receiver {r}, {conversation:?}: every sequence once, in order");
                for a in sends {
                    assert_eq!(
                        view[a.seq as usize - 1].body,
                        a.body,
                        "receiver {r} has seq {} as acknowledged",
                        a.seq
                    );
                }
            }
        }
        eprintln!(
            "{} messages acknowledged after {retries} retried sends; receivers dropped {raw_duplicates} \
             pushes already seen and synced {gap_syncs} gaps",
            acked.len()
        );
    });
}

#[test]
fn a_proxy_killed_with_sigkill_loses_nothing_and_leaves_nobody_online() {
    let cluster = Cluster::up(Shape { lease_ttl_secs: 3, ..Shape::default() });
    let system = System::new(cluster.client_addr(), Box::new(()));
    let presence = cluster.presence();
    let proxy_of = |user: &api::User| -> String {
        let at = presence.lookup(&[UserId(user.id)]).expect("presence answers");
        at.into_iter().next().flatten().unwrap_or_else(|| panic!("{} is online", user.name))
    };
    let instance =
        |name: &str| cluster.process(name).instance_id.clone().expect("a proxy has an instance id");

    // The watcher stays; the other proxy is the victim. Users log in through nginx until
    // the victim holds at least two of them and the watcher's proxy one.
    let (watcher, watcher_user) = system.user("watcher");
    let (victim_proxy, victim_name) = if proxy_of(&watcher_user) == instance("proxy-1") {
        (instance("proxy-2"), "proxy-2")
    } else {
        (instance("proxy-1"), "proxy-1")
    };
    let mut victims = Vec::new();
    let mut survivors = Vec::new();
    for i in 0..12 {
        if victims.len() >= 3 && !survivors.is_empty() {
            break;
        }
        let client = system.connect();
        let user = system.register(&client, &format!("u{i}"));
        let token = client.login(&user.name).session_token.expect("a login gives a session token");
        let add = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(user.id)) };
        watcher.gateway.add_friend(&add).unwrap();
        // One message before the crash, so each has a cursor to sync from.
        watcher.send(direct(&watcher_user, &user), &format!("before-{i}"), "before").unwrap();
        assert_eq!(client.wait_messages(1)[0].seq, 1);
        if proxy_of(&user) == victim_proxy {
            victims.push((client, user, token));
        } else {
            survivors.push((client, user));
        }
    }
    assert!(victims.len() >= 2, "nginx put at least two users on {victim_name}");

    cluster.kill(victim_name);
    for (client, user, _) in &victims {
        wait_until(Duration::from_secs(10), &format!("{}'s session is gone", user.name), || {
            client.gateway.list_friends(&api::ListFriendsRequest {}).is_err()
        });
    }
    // Sent while they are away: stored, pushed nowhere.
    for (i, (_, user, _)) in victims.iter().enumerate() {
        for n in 1..=3 {
            let sent =
                watcher.send(direct(&watcher_user, user), &format!("away-{i}-{n}"), &format!("away {n}"));
            assert_eq!(sent.unwrap().message.unwrap().seq, 1 + n);
        }
    }

    // All but the last come back through nginx (to the surviving proxy) on the same
    // client, resume their sessions with their tokens and pull what they missed.
    let (gone, returners) = victims.split_last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (client, user, token) in returners {
        let request = api::ResumeRequest { session_token: token.token.clone() };
        retry(&format!("{} resumes", user.name), deadline, || client.gateway.resume(&request));
        assert_ne!(proxy_of(user), victim_proxy, "{} is on a live proxy", user.name);
        let cursor = api::Cursor { conversation: Some(direct(&watcher_user, user)), seq: 1 };
        let synced = client.gateway.sync(&api::SyncRequest { cursors: vec![cursor], limit: 0 }).unwrap();
        let got: Vec<(u64, &str)> = synced.messages.iter().map(|m| (m.seq, m.body.as_str())).collect();
        assert_eq!(got, [(2, "away 1"), (3, "away 2"), (4, "away 3")], "{} gets what they missed", user.name);
    }

    // Within the lease: whoever did not come back is offline, everyone else online.
    let online = |name: &str| -> bool {
        let found = watcher
            .gateway
            .find_user(&api::FindUserRequest { name: name.into(), ..Default::default() })
            .unwrap();
        found.user.unwrap().online
    };
    let took = wait_until(Duration::from_secs(3 * 3), "the user who did not come back is offline", || {
        !online(&gone.1.name)
    });
    eprintln!("{} went offline {took:?} after the checks started", gone.1.name);
    let friends = watcher.gateway.list_friends(&api::ListFriendsRequest {}).unwrap().friends;
    for friend in &friends {
        let user = friend.user.as_ref().unwrap();
        assert_eq!(
            friend.online,
            user.id != gone.1.id,
            "{} online state in the watcher's friend list",
            user.name
        );
    }
    assert_eq!(friends.len(), victims.len() + survivors.len());

    // The one who stayed away finds everything when they come back, later, with the
    // password.
    let (client, user, _) = gone;
    let request =
        api::LoginRequest { name: user.name.clone(), password: PASSWORD.into(), ..Default::default() };
    retry("the last user logs in again", deadline, || client.gateway.login(&request));
    let cursor = api::Cursor { conversation: Some(direct(&watcher_user, user)), seq: 1 };
    let synced = client.gateway.sync(&api::SyncRequest { cursors: vec![cursor], limit: 0 }).unwrap();
    assert_eq!(synced.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4]);
}
