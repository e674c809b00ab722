//! End to end with the real processes: the `chatroom` binary run as a user service, a
//! chat service and two proxies, against the MariaDB, Redis and ZooKeeper the other
//! suites use (`CHATROOM_MYSQL_URL`, `CHATROOM_REDIS_URL`, `CHATROOM_ZK`), each run under
//! a database, key prefix and znode root of its own: chat across proxies, a proxy killed
//! with SIGKILL (whose users' friends hear they went offline once their leases lapse),
//! and every process (and `chatroom standalone`) stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rpc_core::registry::{Registry as _, ZooKeeper};
use services::api::{self, chat_service_rpc, delivery_rpc, user_service_rpc};
use services::secret::{self, ClusterSecret};

use crate::chat_client::{connect, direct, user_at, PATIENCE};
use crate::registry_access::assert_only_members_reach_the_registry;
use crate::support::{
    drop_database, mysql_url, redis_url, unique_name, wait_for_exit, wait_until, with_database, zk,
};

/// How long a process may take to stop after SIGTERM in these tests.
const STOP_PATIENCE: Duration = Duration::from_secs(15);
/// The presence lease of the proxies in the SIGKILL test, in seconds.
const SHORT_LEASE_SECS: u64 = 3;
/// How often a proxy sweeps lapsed leases (`proxy::Config::sweep_every`'s default).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The processes of one test; killed, and the database dropped, when it ends.
pub struct Cluster {
    /// Every process started, by name.
    children: Vec<(String, Child)>,
    /// The database, for dropping it.
    pub database: String,
    /// The ZooKeeper root every process registers under.
    zk_root: String,
    /// Flags every process shares.
    common: Vec<String>,
    /// Holds the cluster secret's file, which every process is given.
    secret_dir: tempfile::TempDir,
    /// The Redis every process keeps presence in.
    redis: String,
}

impl Cluster {
    /// Processes on the shared backends.
    pub fn new() -> Cluster {
        Cluster::with_redis(&redis_url())
    }

    /// Processes on the shared ZooKeeper and MariaDB, and the Redis at `redis`.
    pub fn with_redis(redis: &str) -> Cluster {
        let database = unique_name("chatroom_test");
        let zk_root = format!("/{}", unique_name("chatroom_test"));
        let common = vec!["--zk".into(), zk(), "--zk-root".into(), zk_root.clone()];
        let secret_dir = tempfile::tempdir().unwrap();
        ClusterSecret::load_or_create(&secret_dir.path().join(secret::FILE)).unwrap();
        Cluster { children: Vec::new(), database, zk_root, common, secret_dir, redis: redis.to_owned() }
    }

    /// The secret every process proves, for a server or client the test runs itself.
    pub fn secret(&self) -> ClusterSecret {
        ClusterSecret::load_or_create(&self.secret_dir.path().join(secret::FILE)).unwrap()
    }

    /// The key prefix of the processes' presence table.
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.database)
    }

    /// The process id of the process started as `name`.
    pub fn pid(&mut self, name: &str) -> u32 {
        self.child(name).id()
    }

    /// Starts `chatroom <args>` and returns the address it printed last on its first line.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> SocketAddr {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatroom"))
            .args(args)
            .args(&self.common)
            .env("CHATROOM_MYSQL_URL", with_database(&mysql_url(), &self.database))
            .env("CHATROOM_REDIS_URL", &self.redis)
            .env("CHATROOM_REDIS_PREFIX", self.redis_prefix())
            .env("CHATROOM_CLUSTER_SECRET_FILE", self.secret_dir.path().join(secret::FILE))
            .env("RUST_LOG", "warn")
            // Full-cost argon2 takes most of a second per hash in a debug build.
            .env("CHATROOM_HASH_MEMORY_KIB", "256")
            .env("CHATROOM_HASH_ITERATIONS", "1")
            // Every user comes from 127.0.0.1.
            .envs(crate::chat_nginx::UNTHROTTLED.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the chatroom binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reads the first line");
        // Keep reading so that later output never blocks or breaks the process.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        self.children.push((name.to_owned(), child));
        let addr = line.split_whitespace().last().unwrap_or_else(|| {
            panic!(
                "{name} exited without printing its address (its error is above); are ZooKeeper, \
                 MariaDB and Redis up? `bash scripts/services.sh up` starts them"
            )
        });
        addr.parse().unwrap_or_else(|e| panic!("{name} printed {line:?}: {e}"))
    }

    fn child(&mut self, name: &str) -> &mut Child {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).expect("a process of that name");
        child
    }

    /// Kills a process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, name: &str) {
        let child = self.child(name);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM to a process, as `chatroom cluster down` or a service manager would.
    fn terminate(&mut self, name: &str) {
        sigterm(self.child(name));
    }

    /// Waits (at most [`STOP_PATIENCE`]) until a process exits and returns how.
    fn exit_status(&mut self, name: &str) -> ExitStatus {
        exit_status(name, self.child(name))
    }

    /// A registry client on the processes' ZooKeeper root.
    pub fn registry(&self) -> ZooKeeper {
        ZooKeeper::connect(&zk(), self.secret().registry_config(&self.zk_root))
            .expect("ZooKeeper answers (`bash scripts/services.sh up` starts it)")
    }
}

fn sigterm(child: &Child) {
    let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {}", child.id());
}

fn exit_status(name: &str, child: &mut Child) -> ExitStatus {
    wait_for_exit(child, STOP_PATIENCE, &format!("{name}, sent SIGTERM,"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop_database(&self.database);
    }
}

#[test]
fn processes_chat_across_proxies_and_survive_a_killed_proxy() {
    let mut cluster = Cluster::new();
    cluster.spawn("user-service", &["user-service", "--listen", "127.0.0.1:0"]);
    cluster.spawn("chat-service", &["chat-service", "--listen", "127.0.0.1:0"]);
    let ttl = SHORT_LEASE_SECS.to_string();
    let proxy_flags = ["--listen", "127.0.0.1:0", "--lease-ttl-secs", &ttl];
    let a = cluster.spawn("proxy-a", &[&["proxy"][..], &proxy_flags].concat());
    let b = cluster.spawn("proxy-b", &[&["proxy"][..], &proxy_flags].concat());
    assert_only_members_reach_the_registry(&zk(), &cluster.zk_root, &cluster.secret());

    let (alice_client, alice) = user_at(a, "alice");
    let (bob_client, bob) = user_at(b, "bob");
    let (_carol_client, carol) = user_at(b, "carol");
    for friend in [&bob, &carol] {
        let add = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(friend.id)) };
        assert!(alice_client.gateway.add_friend(&add).unwrap().friend.unwrap().online);
    }
    alice_client.send(direct(&alice, &bob), "a-1", "over the wire").unwrap();
    assert_eq!(bob_client.wait_messages(1)[0].body, "over the wire");
    bob_client.send(direct(&alice, &bob), "b-1", "and back").unwrap();
    assert_eq!(alice_client.wait_messages(1)[0].seq, 2);

    // Bob's and Carol's proxy dies and cannot say goodbye; what Alice sends meanwhile is
    // stored.
    let killed = Instant::now();
    cluster.kill("proxy-b");
    let sent = alice_client.send(direct(&alice, &bob), "a-2", "are you there?").unwrap();
    assert_eq!(sent.message.unwrap().seq, 3);

    // Their leases lapse within the TTL; proxy A's sweep finds them within a sweep period
    // and Alice is told, once per friend.
    for friend in [&bob, &carol] {
        alice_client.wait_push(
            &format!("Alice hears that {} went offline", friend.name),
            |e| matches!(e, api::push::Event::Presence(p) if p.user_id == friend.id && !p.online),
        );
    }
    let heard = killed.elapsed();
    let bound = Duration::from_secs(SHORT_LEASE_SECS) + SWEEP_EVERY + Duration::from_secs(2);
    eprintln!("offline pushes heard {heard:?} after the SIGKILL (bound {bound:?})");
    assert!(heard <= bound, "offline pushes after {heard:?}; the lease and a sweep take {bound:?} at most");
    let friends = alice_client.gateway.list_friends(&api::ListFriendsRequest {}).unwrap().friends;
    assert!(friends.iter().all(|f| !f.online), "Alice sees both offline: {friends:?}");
    let offline_pushes = |user: u64| {
        alice_client
            .pushes
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, api::push::Event::Presence(p) if p.user_id == user && !p.online))
            .count()
    };
    assert_eq!((offline_pushes(bob.id), offline_pushes(carol.id)), (1, 1), "told once each");

    // Bob logs in again through the other proxy and gets what he missed.
    let again = connect(a);
    again.login("bob");
    let cursor = api::Cursor { conversation: Some(direct(&alice, &bob)), seq: 2 };
    let synced = again.gateway.sync(&api::SyncRequest { cursors: vec![cursor], limit: 0 }).unwrap();
    let bodies: Vec<&str> = synced.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["are you there?"]);
}

#[test]
fn sigterm_stops_each_process_gracefully_and_a_proxys_users_go_offline_at_once() {
    let mut cluster = Cluster::new();
    cluster.spawn("user-service", &["user-service", "--listen", "127.0.0.1:0"]);
    cluster.spawn("chat-service", &["chat-service", "--listen", "127.0.0.1:0"]);
    // A lease far longer than the test waits: only a graceful stop can show Alice offline.
    let proxy = |id: &'static str| {
        ["proxy", "--listen", "127.0.0.1:0", "--instance-id", id, "--lease-ttl-secs", "60"]
    };
    let a = cluster.spawn("proxy-a", &proxy("sigterm-proxy-a"));
    let b = cluster.spawn("proxy-b", &proxy("sigterm-proxy-b"));
    let registry = cluster.registry();
    let ids = |service: &str| -> Vec<String> {
        registry.instances(service).expect("ZooKeeper answers").into_iter().map(|i| i.id).collect()
    };
    let mut proxies = ids(delivery_rpc::SERVICE_NAME);
    proxies.sort();
    assert_eq!(proxies, ["sigterm-proxy-a", "sigterm-proxy-b"]);

    let (alice_client, alice) = user_at(a, "alice");
    let (bob_client, bob) = user_at(b, "bob");
    let add = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(alice.id)) };
    assert!(bob_client.gateway.add_friend(&add).unwrap().friend.unwrap().online);

    let signalled = Instant::now();
    cluster.terminate("proxy-a");
    bob_client.wait_push(
        "Bob hears that Alice went offline",
        |e| matches!(e, api::push::Event::Presence(p) if p.user_id == alice.id && !p.online),
    );
    let heard = signalled.elapsed();
    assert!(heard < Duration::from_secs(20), "offline after {heard:?}, well before the 60 s lease");
    let friends = bob_client.gateway.list_friends(&api::ListFriendsRequest {}).unwrap().friends;
    assert_eq!((friends[0].user.as_ref().unwrap().id, friends[0].online), (alice.id, false));
    assert!(cluster.exit_status("proxy-a").success(), "the proxy exits 0 after SIGTERM");
    assert_eq!(ids(delivery_rpc::SERVICE_NAME), ["sigterm-proxy-b"], "proxy A left ZooKeeper");
    assert!(TcpStream::connect(a).is_err(), "proxy A no longer listens");
    assert!(alice_client.gateway.list_friends(&api::ListFriendsRequest {}).is_err());
    // The cluster still works for Bob.
    let found = bob_client
        .gateway
        .find_user(&api::FindUserRequest { name: "alice".into(), ..Default::default() })
        .unwrap();
    assert!(!found.user.unwrap().online, "Bob finds Alice offline");
    drop(bob);

    // The services leave ZooKeeper and exit 0 too; the other proxy last.
    for (name, service) in
        [("chat-service", chat_service_rpc::SERVICE_NAME), ("user-service", user_service_rpc::SERVICE_NAME)]
    {
        assert_eq!(ids(service).len(), 1, "{name} is registered");
        cluster.terminate(name);
        assert!(cluster.exit_status(name).success(), "{name} exits 0 after SIGTERM");
        assert!(ids(service).is_empty(), "{name} left ZooKeeper");
    }
    cluster.terminate("proxy-b");
    assert!(cluster.exit_status("proxy-b").success(), "proxy B exits 0 after SIGTERM");
    assert!(ids(delivery_rpc::SERVICE_NAME).is_empty());
}

/// A child killed (SIGKILL) if the test ends before it exited.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn sigterm_stops_the_standalone_system_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the chatroom binary starts");
    let mut child = KillOnDrop(child);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reads the first line");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr: SocketAddr = line
        .split_whitespace()
        .last()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("standalone printed {line:?}"));
    let client = connect(addr);
    // A call before login answers; the connection is live.
    assert!(client.gateway.list_friends(&api::ListFriendsRequest {}).is_err());

    sigterm(&child.0);
    let status = exit_status("standalone", &mut child.0);
    assert!(status.success(), "standalone exits 0 after SIGTERM: {status}");
    wait_until(PATIENCE, "the client port is closed", || TcpStream::connect(addr).is_err());
    assert!(dir.path().join("chatroom.db").is_file(), "the data stays");
}
