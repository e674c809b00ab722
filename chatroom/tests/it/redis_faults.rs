//! The presence table's Redis failing under a running cluster (a user service, a chat
//! service and two proxies, the processes of `chat_cluster`), on a Redis server of the
//! test's own (its own port and directory; the shared one is never touched): restarted
//! with its data, and killed with SIGKILL and started again empty. In both, nobody is
//! logged out, nobody's friends hear they went offline, and every message sent after the
//! restart is pushed to its recipient on the other proxy. And the presence table alone:
//! a request whose pooled connection a restart broke is answered on a fresh one, and a
//! claim or release whose answer was lost with its connection answers as it did when it
//! is sent again.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use services::api;
use services::presence::{self, Presence};
use services::UserId;

use crate::chat_client::{direct, user_at, Client, PATIENCE};
use crate::chat_cluster::Cluster;
use crate::support::{free_port, wait_for_exit, wait_until};

/// The proxies' presence lease, in seconds: renewed every 20 s on their own, so leases
/// back within [`LEASES_BACK`] show that a broken connection brought renewal forward.
const LEASE_TTL_SECS: &str = "60";
/// How soon after a loss of data the proxies hold their users' leases again.
const LEASES_BACK: Duration = Duration::from_secs(10);

/// A `redis-server` of the test's own, on a free port, with its data in a temporary
/// directory; killed when dropped.
pub struct PrivateRedis {
    /// The running server, if any.
    child: Option<Child>,
    /// Its port.
    port: u16,
    /// Its directory (`dump.rdb` lives there).
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = free_port();
        let mut redis = PrivateRedis { child: None, port, dir: tempfile::tempdir().unwrap() };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server on the port and directory, and waits until it answers.
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); `bash scripts/services.sh up` installs it")
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        wait_until(PATIENCE, "the private Redis answers", || {
            client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_ok()
        });
    }

    /// Stops the server the way an operator restarts it (`SHUTDOWN SAVE`: its data is
    /// written to `dump.rdb`), and starts it again on that data.
    pub fn restart_keeping_data(&mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        // The server closes the connection as it exits, so the answer is an error.
        let _ = redis::cmd("SHUTDOWN").arg("SAVE").query::<()>(&mut conn);
        self.reap();
        assert!(self.dir.path().join("dump.rdb").is_file(), "SHUTDOWN SAVE wrote the data");
        self.spawn();
    }

    /// Kills the server (SIGKILL) and starts it again with nothing: its data is lost.
    pub fn kill_and_start_empty(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.kill().unwrap();
        }
        self.reap();
        remove_data(self.dir.path());
        self.spawn();
    }

    fn reap(&mut self) {
        let mut child = self.child.take().expect("the private Redis runs");
        wait_for_exit(&mut child, PATIENCE, "the private Redis");
    }
}

fn remove_data(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("dump.rdb"));
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_request_on_a_connection_the_restart_broke_is_sent_again_on_a_fresh_one() {
    let mut redis = PrivateRedis::start();
    let config = presence::redis::Config { url: redis.url(), ..presence::redis::Config::default() };
    let table = presence::Redis::with_config(&config).expect("the private Redis answers");
    let long = Duration::from_secs(60);
    assert_eq!(table.claim(UserId(1), "proxy-a", long).unwrap(), None);
    assert_eq!(table.breaks(), 0);

    // Every pooled connection is dead after the restart; each call still answers at once.
    redis.restart_keeping_data();
    assert_eq!(table.claim(UserId(1), "proxy-b", long).unwrap(), Some("proxy-a".into()), "answered truly");
    assert_eq!(table.breaks(), 1, "the broken connection was counted");
    assert_eq!(table.lookup(&[UserId(1)]).unwrap(), [Some("proxy-b".into())]);

    // After a loss of the data: nothing to release, and a lease to take back.
    redis.kill_and_start_empty();
    assert!(!table.release(UserId(1), "proxy-b").unwrap(), "the lease went with the data");
    assert_eq!(table.breaks(), 2);
    assert_eq!(table.reclaim(UserId(1), "proxy-b", long).unwrap(), None);
    assert_eq!(table.lookup(&[UserId(1)]).unwrap(), [Some("proxy-b".into())]);

    // A sweep is not sent twice: it fails, and the next one works.
    redis.restart_keeping_data();
    assert!(matches!(table.sweep_lapsed(10), Err(presence::Error::Unavailable(_))));
    assert_eq!(table.sweep_lapsed(10).unwrap(), []);
    assert_eq!(table.breaks(), 3);
}

/// Forwards connections to a Redis server; [`CutReply::cut_next`] makes it drop the next
/// answer Redis sends and close that connection instead: the command ran, and its caller
/// sees only a broken connection.
struct CutReply {
    /// Where callers connect.
    addr: SocketAddr,
    /// Set to drop the next answer.
    cut: Arc<AtomicBool>,
}

impl CutReply {
    fn start(target: SocketAddr) -> CutReply {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cutting = cut.clone();
        std::thread::spawn(move || {
            for caller in listener.incoming() {
                let Ok(mut caller) = caller else { return };
                let Ok(mut server) = TcpStream::connect(target) else { return };
                let (mut to_server, mut from_caller) =
                    (server.try_clone().unwrap(), caller.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut from_caller, &mut to_server));
                let cut = cutting.clone();
                std::thread::spawn(move || {
                    let mut buf = [0; 64 * 1024];
                    while let Ok(n @ 1..) = server.read(&mut buf) {
                        if cut.swap(false, Ordering::SeqCst) {
                            let _ = caller.shutdown(Shutdown::Both);
                            let _ = server.shutdown(Shutdown::Both);
                            return;
                        }
                        if caller.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CutReply { addr, cut }
    }

    fn cut_next(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_claim_or_release_whose_answer_was_lost_answers_the_same_when_sent_again() {
    let redis = PrivateRedis::start();
    let cutter = CutReply::start(SocketAddr::from(([127, 0, 0, 1], redis.port)));
    let url = format!("redis://{}/", cutter.addr);
    let table =
        presence::Redis::with_config(&presence::redis::Config { url, ..presence::redis::Config::default() })
            .expect("Redis answers through the forwarder");
    let long = Duration::from_secs(60);
    assert_eq!(table.claim(UserId(1), "proxy-a", long).unwrap(), None);

    // The claim runs, its answer is lost with the connection, and the call is sent again:
    // it still names the proxy it took the lease from, not itself.
    cutter.cut_next();
    assert_eq!(table.claim(UserId(1), "proxy-b", long).unwrap(), Some("proxy-a".into()));
    assert_eq!(table.breaks(), 1, "the answer was lost");
    // The release runs and its answer is lost: sent again, it still says it released.
    cutter.cut_next();
    assert!(table.release(UserId(1), "proxy-b").unwrap(), "released, as the first run said");
    assert_eq!(table.breaks(), 2);
    assert_eq!(table.lookup(&[UserId(1)]).unwrap(), [None]);
}

/// What happens to the private Redis.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Restarted with its data.
    Restart,
    /// Killed and started empty.
    DataLoss,
}

#[test]
fn a_redis_restart_logs_nobody_out_and_every_later_push_arrives() {
    survives(Fault::Restart);
}

#[test]
fn redis_losing_its_data_logs_nobody_out_and_every_later_push_arrives() {
    survives(Fault::DataLoss);
}

fn survives(fault: Fault) {
    let mut redis = PrivateRedis::start();
    let mut cluster = Cluster::with_redis(&redis.url());
    cluster.spawn("user-service", &["user-service", "--listen", "127.0.0.1:0"]);
    cluster.spawn("chat-service", &["chat-service", "--listen", "127.0.0.1:0"]);
    let proxy = ["proxy", "--listen", "127.0.0.1:0", "--lease-ttl-secs", LEASE_TTL_SECS];
    let a = cluster.spawn("proxy-a", &proxy);
    let b = cluster.spawn("proxy-b", &proxy);
    let table = presence::Redis::with_config(&presence::redis::Config {
        url: redis.url(),
        key_prefix: cluster.redis_prefix(),
        ..presence::redis::Config::default()
    })
    .expect("the private Redis answers");

    // Two pairs of friends, each split over the two proxies.
    let users: Vec<(Client, api::User)> =
        [(a, "alice"), (b, "bob"), (a, "carol"), (b, "dave")].map(|(at, name)| user_at(at, name)).into();
    let peer = |i: usize| i ^ 1;
    for i in [0, 2] {
        let add = api::AddFriendRequest {
            friend: Some(api::add_friend_request::Friend::UserId(users[peer(i)].1.id)),
        };
        users[i].0.gateway.add_friend(&add).expect("befriends");
    }
    let ids: Vec<UserId> = users.iter().map(|(_, u)| UserId(u.id)).collect();
    let all_online = || table.lookup(&ids).is_ok_and(|at| at.iter().all(Option::is_some));
    assert!(all_online(), "everyone holds a lease");

    // Each round, everyone sends to their peer, and every message is pushed. The first
    // round fills every process's pool of Redis connections.
    let mut pushed = vec![0; users.len()];
    let mut round = |label: &str| {
        for (i, (client, user)) in users.iter().enumerate() {
            let to = direct(user, &users[peer(i)].1);
            let id = format!("{label}-{i}");
            client.send(to, &id, &format!("{label} from {}", user.name)).unwrap_or_else(|e| {
                panic!("{}'s send {id} after {fault:?} failed (logged out?): {e}", user.name)
            });
        }
        for (i, (client, user)) in users.iter().enumerate() {
            pushed[i] += 1;
            let n = pushed[i];
            wait_until(PATIENCE, &format!("{} gets push {n} ({label}, {fault:?})", user.name), || {
                client.pushed_messages().len() >= n
            });
        }
    };
    round("before");

    let faulted = Instant::now();
    match fault {
        Fault::Restart => redis.restart_keeping_data(),
        Fault::DataLoss => redis.kill_and_start_empty(),
    }
    // After a restart the leases are there; after a loss, the proxies take them back.
    let took = wait_until(LEASES_BACK, "every user holds a lease again", all_online);
    eprintln!(
        "{fault:?}: every lease held {took:?} after Redis came back ({:?} after the fault)",
        faulted.elapsed()
    );
    for n in 0..3 {
        round(&format!("after-{n}"));
    }

    // Nobody was kicked or told that a friend went offline.
    for (client, user) in &users {
        let pushes = client.pushes.lock().unwrap();
        let kicked = pushes.iter().find(|e| matches!(e, api::push::Event::Kicked(_)));
        assert!(kicked.is_none(), "{} was logged out: {kicked:?}", user.name);
        let offline = pushes.iter().find(|e| matches!(e, api::push::Event::Presence(p) if !p.online));
        assert!(offline.is_none(), "{} heard a friend went offline: {offline:?}", user.name);
    }
    assert!(all_online(), "everyone still holds a lease");
}
