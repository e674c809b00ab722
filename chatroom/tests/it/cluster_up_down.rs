//! `chatroom cluster up|status|down` with the real binary, ZooKeeper, MariaDB, Redis and
//! nginx: a client chats through nginx, `status` shows everything alive and registered,
//! and `down` leaves no process and no listening port behind.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chatroom::cluster::{self, State};
use rpc_core::registry::ZooKeeper;
use services::secret::ClusterSecret;

use crate::chat_client::{direct, user_at};
use crate::internal_ports::{assert_only_members_are_served, internal_ports};
use crate::registry_access::assert_only_members_reach_the_registry;
use crate::support::{
    drop_database, free_port, mysql_url, redis_url, unique_name, wait_until, with_database, zk,
};

/// Runs `chatroom cluster <args> --state-dir DIR`.
fn chatroom(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .arg("cluster")
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the chatroom binary runs")
}

/// Kills (SIGKILL) every process recorded in the state file that is still the recorded
/// one, and drops the test database, if the test ends before `down` did it.
struct Guard {
    dir: tempfile::TempDir,
    database: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(state) = cluster::read_state(self.dir.path()) {
            for p in state.processes.iter().filter(|p| cluster::alive(p)) {
                let _ = Command::new("kill").arg("-KILL").arg(p.pid.to_string()).status();
            }
        }
        drop_database(&self.database);
    }
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err()
}

#[test]
fn cluster_up_serves_through_nginx_and_down_leaves_nothing_behind() {
    let guard = Guard { dir: tempfile::tempdir().unwrap(), database: unique_name("chatroom_test") };
    let dir = guard.dir.path();
    let port = free_port().to_string();
    let mysql = with_database(&mysql_url(), &guard.database);
    let (zk, redis) = (zk(), redis_url());
    let up_args = [
        "up",
        "--proxies",
        "2",
        "--user-services",
        "1",
        "--chat-services",
        "1",
        "--port",
        &port,
        "--zk",
        &zk,
        "--mysql",
        &mysql,
        "--redis",
        &redis,
        "--lease-ttl-secs",
        "5",
    ];
    let up = chatroom(dir, &up_args);
    assert!(
        up.status.success(),
        "`chatroom cluster up` failed (are ZooKeeper, MariaDB and Redis up? \
         `bash scripts/services.sh up` starts them):\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let state: State = cluster::read_state(dir).expect("up writes the state file");
    let roles: Vec<&str> = state.processes.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(roles, ["user-service", "chat-service", "proxy", "proxy", "nginx"]);
    assert_eq!(state.client_addr.port().to_string(), port);

    // Two users through nginx exchange messages.
    let (alice_client, alice) = user_at(state.client_addr, "alice");
    let (bob_client, bob) = user_at(state.client_addr, "bob");
    alice_client.send(direct(&alice, &bob), "a-1", "through nginx").unwrap();
    assert_eq!(bob_client.wait_messages(1)[0].body, "through nginx");
    bob_client.send(direct(&alice, &bob), "b-1", "and back").unwrap();
    assert_eq!(alice_client.wait_messages(1)[0].seq, 2);
    drop((alice_client, bob_client));

    // The internal ports serve only the cluster's own processes.
    let secret_file = cluster::secret_path(dir);
    let mode = std::fs::metadata(&secret_file).expect("up makes the secret").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may read the secret");
    let secret = ClusterSecret::read(&secret_file).unwrap();
    let zookeeper =
        ZooKeeper::connect(&state.zk, secret.registry_config(&state.zk_root)).expect("ZooKeeper answers");
    let ports = internal_ports(&zookeeper);
    assert_eq!(ports.len(), 4, "a user service, a chat service and two proxies' delivery ports");
    assert_only_members_are_served(&ports, &secret);
    drop(zookeeper);
    assert_only_members_reach_the_registry(&state.zk, &state.zk_root, &secret);

    let status = chatroom(dir, &["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let text = String::from_utf8_lossy(&status.stdout);
    for p in &state.processes {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{} ", p.name)))
            .unwrap_or_else(|| panic!("status names {}:\n{text}", p.name));
        assert!(line.contains(" alive "), "{} is alive: {line}", p.name);
        if p.role != "nginx" {
            assert!(line.contains("registered "), "{} is registered: {line}", p.name);
            assert!(!line.contains("not registered"), "{} is registered: {line}", p.name);
        }
    }

    let down = chatroom(dir, &["down"]);
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(down.status.success(), "{stderr}");
    // Every process stops on SIGTERM alone: none needed the SIGKILL fallback.
    assert!(!stderr.contains("SIGKILL"), "{stderr}");
    for p in &state.processes {
        wait_until(Duration::from_secs(10), &format!("{} (pid {}) is gone", p.name, p.pid), || {
            !cluster::alive(p)
        });
        let addr = p.addr.expect("every process has an address");
        assert!(refuses(addr), "{} still listens on {addr}", p.name);
    }
    assert!(cluster::read_state(dir).is_err(), "down removes the state file");
}

#[test]
fn cluster_up_without_a_backend_names_the_setup_script_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("redis://127.0.0.1:{}/", free_port());
    let port = free_port().to_string();
    let up = chatroom(
        dir.path(),
        &["up", "--port", &port, "--zk", &zk(), "--mysql", &mysql_url(), "--redis", &closed],
    );
    assert!(!up.status.success(), "up fails when Redis is not there");
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(stderr.contains("Redis") && stderr.contains("bash scripts/services.sh up"), "{stderr}");
    assert!(cluster::read_state(dir.path()).is_err(), "no state is written");
}

#[test]
fn an_interrupted_up_stops_what_it_started_and_holds_the_state_dir_meanwhile() {
    let guard = Guard { dir: tempfile::tempdir().unwrap(), database: unique_name("chatroom_test") };
    let dir = guard.dir.path();
    let port = free_port().to_string();
    let mysql = with_database(&mysql_url(), &guard.database);
    let (zk, redis) = (zk(), redis_url());
    let mut up = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["cluster", "up", "--proxies", "2", "--user-services", "2", "--chat-services", "2"])
        .args(["--port", &port, "--zk", &zk, "--mysql", &mysql, "--redis", &redis, "--state-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the chatroom binary runs");
    // Once it has started something, interrupt it.
    wait_until(Duration::from_secs(30), "up starts its first process", || {
        cluster::read_state(dir).is_ok_and(|s| !s.processes.is_empty())
    });
    let zk_root = cluster::read_state(dir).unwrap().zk_root;
    let busy = chatroom(dir, &["down"]);
    assert!(!busy.status.success(), "down waits its turn while up works on the directory");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("another `chatroom cluster` command"));

    let pid = rustix::process::Pid::from_raw(up.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = up.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "an interrupted up fails: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");

    // Nothing it started is left: the state file is gone with them.
    assert!(cluster::read_state(dir).is_err(), "the state file is removed: {stderr}");
    // Its services name the cluster's ZooKeeper root on their command lines, nginx the
    // state directory.
    let left = command_lines_containing(&[&zk_root, &dir.display().to_string()]);
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert!(refuses(SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap()))));
}

/// The command lines of the running processes that contain any of `needles`.
fn command_lines_containing(needles: &[&str]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|line| needles.iter().any(|n| line.contains(n)))
        .collect()
}
