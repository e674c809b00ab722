//! End to end with the real processes: the `chatroom` binary run as a user service, a
//! chat service and two proxies, against the MariaDB, Redis and ZooKeeper the other
//! suites use (`CHATROOM_MYSQL_URL`, `CHATROOM_REDIS_URL`, `CHATROOM_ZK`), each run under
//! a database, key prefix and znode root of its own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use mysql::prelude::Queryable;
use services::api;

use crate::chat_standalone::{connect, direct, user_at};
use crate::support::{mysql_url, redis_url, unique_name, with_database};

/// Where ZooKeeper is for the test.
fn zk() -> String {
    std::env::var("CHATROOM_ZK").unwrap_or_else(|_| "127.0.0.1:2181".to_owned())
}

/// The processes of one test; killed, and the database dropped, when it ends.
struct Cluster {
    /// Every process started, by name.
    children: Vec<(String, Child)>,
    /// The database, for dropping it.
    database: String,
    /// Flags every process shares.
    common: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        let database = unique_name("chatroom_test");
        let common =
            vec!["--zk".into(), zk(), "--zk-root".into(), format!("/{}", unique_name("chatroom_test"))];
        Cluster { children: Vec::new(), database, common }
    }

    /// Starts `chatroom <args>` and returns the address it printed last on its first line.
    fn spawn(&mut self, name: &str, args: &[&str]) -> SocketAddr {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatroom"))
            .args(args)
            .args(&self.common)
            .env("CHATROOM_MYSQL_URL", with_database(&mysql_url(), &self.database))
            .env("CHATROOM_REDIS_URL", redis_url())
            .env("CHATROOM_REDIS_PREFIX", format!("{}:", self.database))
            .env("RUST_LOG", "warn")
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

    /// Kills a process at once (SIGKILL), as a crash would.
    fn kill(&mut self, name: &str) {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).expect("a process of that name");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let url = with_database(&mysql_url(), "");
        let dropped = mysql::Conn::new(url.as_str())
            .and_then(|mut conn| conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.database)));
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.database);
        }
    }
}

#[test]
fn processes_chat_across_proxies_and_survive_a_killed_proxy() {
    let mut cluster = Cluster::new();
    cluster.spawn("user-service", &["user-service", "--listen", "127.0.0.1:0"]);
    cluster.spawn("chat-service", &["chat-service", "--listen", "127.0.0.1:0"]);
    let proxy_flags = ["--listen", "127.0.0.1:0", "--lease-ttl-secs", "3"];
    let a = cluster.spawn("proxy-a", &[&["proxy"][..], &proxy_flags].concat());
    let b = cluster.spawn("proxy-b", &[&["proxy"][..], &proxy_flags].concat());

    let (alice_client, alice) = user_at(a, "alice");
    let (bob_client, bob) = user_at(b, "bob");
    alice_client.send(direct(&alice, &bob), "a-1", "over the wire").unwrap();
    assert_eq!(bob_client.wait_messages(1)[0].body, "over the wire");
    bob_client.send(direct(&alice, &bob), "b-1", "and back").unwrap();
    assert_eq!(alice_client.wait_messages(1)[0].seq, 2);

    // Bob's proxy dies; what Alice sends meanwhile is stored, and Bob gets it when he
    // logs in again through the other proxy.
    cluster.kill("proxy-b");
    let sent = alice_client.send(direct(&alice, &bob), "a-2", "are you there?").unwrap();
    assert_eq!(sent.message.unwrap().seq, 3);
    let again = connect(a);
    again.login("bob");
    let cursor = api::Cursor { conversation: Some(direct(&alice, &bob)), seq: 2 };
    let synced = again.gateway.sync(&api::SyncRequest { cursors: vec![cursor], limit: 0 }).unwrap();
    let bodies: Vec<&str> = synced.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["are you there?"]);
}
