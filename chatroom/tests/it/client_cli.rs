//! `chatroom client --json` end to end: the real binary's `standalone` on a free port
//! with a temporary data directory, and client processes fed scripts on stdin.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chatroom");
const PATIENCE: Duration = Duration::from_secs(60);

/// Kills the child process by its id when dropped.
pub(crate) struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a process prints, read on a thread of their own.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one satisfies `done`, failing after `PATIENCE` or at end of output.
fn read_until(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = done(&line);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(e) => panic!("no line where {what} ({e}); saw {seen:#?}"),
        }
    }
}

fn client(addr: &str, script: impl AsRef<[u8]>) -> (Killed, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["client", "--json", "--server", addr])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the client starts");
    child.stdin.take().unwrap().write_all(script.as_ref()).unwrap();
    let rx = lines(child.stdout.take().unwrap());
    (Killed(child), rx)
}

fn events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// Waits for a client to exit (it exits after its last command) and returns all its lines.
fn finish(mut client: Killed, rx: mpsc::Receiver<String>, mut seen: Vec<String>) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = client.0.try_wait().unwrap() {
            assert!(status.success(), "the client exits cleanly: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "the client did not exit; saw {seen:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    seen.extend(rx.iter());
    events(&seen)
}

/// `chatroom standalone` on a free port with its data in `dir`; returns it and the
/// address clients connect to.
fn standalone(dir: &std::path::Path) -> (Killed, String) {
    standalone_at(dir, "127.0.0.1:0")
}

/// `chatroom standalone` listening on `listen`, with its data in `dir`.
fn standalone_at(dir: &std::path::Path, listen: &str) -> (Killed, String) {
    standalone_with(dir, &["--listen", listen])
}

/// `chatroom standalone` with its data in `dir` and the flags `args`; returns it and the
/// address clients connect to.
pub(crate) fn standalone_with(dir: &std::path::Path, args: &[&str]) -> (Killed, String) {
    let mut server = Command::new(BIN)
        .arg("standalone")
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        // Every user comes from 127.0.0.1.
        .envs(crate::chat_nginx::UNTHROTTLED.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("standalone starts");
    let server_lines = lines(server.stdout.take().unwrap());
    let server = Killed(server);
    let mut seen = Vec::new();
    read_until(&server_lines, &mut seen, "standalone says where clients connect", |l| {
        l.contains("connect to ")
    });
    let addr = seen.last().unwrap().rsplit(' ').next().unwrap().trim().to_owned();
    (server, addr)
}

#[test]
fn two_json_clients_chat_and_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = standalone(dir.path());

    let (bob, bob_rx) = client(
        &addr,
        "friend list\nregister bob correct-horse-battery\nlogin bob wrong-password-here\n\
         login bob correct-horse-battery\nwait 1 30000\nquit\n",
    );
    let mut bob_seen = Vec::new();
    read_until(&bob_rx, &mut bob_seen, "bob is logged in", |l| l.contains("\"logged_in\""));

    let (alice, alice_rx) = client(
        &addr,
        "register alice correct-horse-battery\nlogin alice correct-horse-battery\nsend user bob hello bob\n",
    );
    let alice_events = finish(alice, alice_rx, Vec::new());
    let sent =
        alice_events.iter().find(|e| e["event"] == "sent").unwrap_or_else(|| panic!("{alice_events:#?}"));
    assert_eq!(sent["seq"], 1);

    let bob_events = finish(bob, bob_rx, bob_seen);
    assert_eq!(bob_events[0]["event"], "error", "{bob_events:#?}");
    assert_eq!(bob_events[0]["command"], "friend list");
    assert_eq!(bob_events[0]["code"], "Unauthenticated", "calls before login are refused");
    assert_eq!(bob_events[1]["event"], "registered");
    assert_eq!(bob_events[2]["event"], "error");
    assert_eq!(bob_events[2]["command"], "login");
    assert_eq!(bob_events[2]["code"], "Unauthenticated", "a wrong password is refused");
    assert_eq!(bob_events[3]["event"], "logged_in");
    let message =
        bob_events.iter().find(|e| e["event"] == "message").unwrap_or_else(|| panic!("{bob_events:#?}"));
    assert_eq!(message["seq"], 1);
    assert_eq!(message["body"], "hello bob");
    let alice_id = &alice_events.iter().find(|e| e["event"] == "registered").unwrap()["user"]["id"];
    assert_eq!(&message["sender_id"], alice_id);
    assert_eq!(message["sender"], "alice", "the client names a sender who is not a friend");
    let waited = bob_events.iter().find(|e| e["event"] == "waited").unwrap();
    assert_eq!(waited["received"], 1);
}

#[test]
fn the_demo_runs_its_script_on_a_system_of_its_own() {
    let output = Command::new(BIN).arg("demo").env("RUST_LOG", "warn").output().expect("the demo runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the demo succeeds: {text}");
    assert!(text.contains("(missed) #1"), "the offline bot catches up: {text}");
    assert!(text.contains("done: one-to-one, group and offline delivery all worked"), "{text}");
}

#[test]
fn clients_sending_to_one_group_at_once_see_every_message_once_and_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = standalone(dir.path());
    let setup = "register alice correct-horse-battery\nregister bob correct-horse-battery\n\
                 login alice correct-horse-battery\ngroup create room public\n";
    let (setup, setup_rx) = client(&addr, setup);
    let created = finish(setup, setup_rx, Vec::new());
    let group =
        created.iter().find(|e| e["event"] == "group_created").unwrap_or_else(|| panic!("{created:#?}"));
    let group = group["group"]["id"].as_u64().unwrap();
    let (join, join_rx) = client(&addr, format!("login bob correct-horse-battery\ngroup join {group}\n"));
    finish(join, join_rx, Vec::new());

    // Both send at once, so each one's acknowledgements overtake pushes of the other's
    // messages; then each syncs once more and leaves.
    const EACH: usize = 150;
    let script = |who: &str| {
        let mut script = format!("login {who} correct-horse-battery\n");
        for n in 0..EACH {
            script.push_str(&format!("send group {group} {who}-{n}\n"));
        }
        script.push_str("sync\n");
        script
    };
    let (alice, alice_rx) = client(&addr, script("alice"));
    let (bob, bob_rx) = client(&addr, script("bob"));
    for (who, events) in
        [("alice", finish(alice, alice_rx, Vec::new())), ("bob", finish(bob, bob_rx, Vec::new()))]
    {
        let mut seqs: Vec<u64> = Vec::new();
        for e in &events {
            match e["event"].as_str() {
                Some("sent") => seqs.push(e["seq"].as_u64().unwrap()),
                Some("message") => {
                    assert_ne!(e["sender"], who, "{who}'s own message printed as incoming: {e}");
                    seqs.push(e["seq"].as_u64().unwrap());
                }
                Some("error") => panic!("{who}: {e}"),
                _ => {}
            }
        }
        seqs.sort_unstable();
        if let Some(twice) = seqs.windows(2).find(|w| w[0] == w[1]) {
            let lines: Vec<&Value> = events.iter().filter(|e| e["seq"] == twice[0]).collect();
            panic!("{who} saw #{} twice: {lines:#?}", twice[0]);
        }
        // Everything up to the last sequence it saw, with no hole: a skipped message
        // would be one.
        let last = *seqs.last().unwrap();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{who} missed messages");
        assert!(last as usize >= EACH, "{who} saw at least its own sends");
    }
}

#[test]
fn a_client_logging_in_as_someone_else_shows_that_users_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = standalone(dir.path());
    let script = "register alice correct-horse-battery\nregister bob correct-horse-battery\n\
                  login alice correct-horse-battery\nsend user bob for bob\n\
                  logout\nlogin alice correct-horse-battery\nlogin bob correct-horse-battery\n";
    let (c, rx) = client(&addr, script);
    let events = finish(c, rx, Vec::new());
    let messages: Vec<&Value> = events.iter().filter(|e| e["event"] == "message").collect();
    // Alice's own send is not shown again when she logs back in; bob gets it.
    assert_eq!(messages.len(), 1, "{events:#?}");
    assert_eq!(
        (&messages[0]["sender"], &messages[0]["body"]),
        (&Value::from("alice"), &Value::from("for bob"))
    );
    let bob_login = events.iter().rposition(|e| e["event"] == "logged_in").unwrap();
    let shown = events.iter().position(|e| e["event"] == "message").unwrap();
    assert!(shown > bob_login, "shown after bob logged in: {events:#?}");
}

#[test]
fn a_line_that_is_not_utf8_is_answered_and_the_script_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = standalone(dir.path());
    let (c, rx) = client(&addr, b"find \xff\xfe\nregister carol correct-horse-battery\n".as_slice());
    let events = finish(c, rx, Vec::new());
    assert_eq!(events[0]["event"], "error", "{events:#?}");
    assert_eq!(events[0]["code"], "InvalidArgument");
    assert_eq!(events[1]["event"], "registered", "the next line still runs: {events:#?}");
}

#[test]
fn a_client_resumes_its_session_after_the_server_is_killed_and_changes_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = standalone(dir.path());
    let (bob, bob_rx) = client(
        &addr,
        "register bob correct-horse-battery\nlogin bob correct-horse-battery\nfind bob\nwait 1 60000\n\
         passwd correct-horse-battery staple-battery-horse\n",
    );
    let mut bob_seen = Vec::new();
    // `find` answers once the login (and its Sync) is done.
    read_until(&bob_rx, &mut bob_seen, "bob is logged in", |l| l.contains("\"event\":\"user\""));

    // The server dies; the same system comes back on the same port and data.
    drop(server);
    read_until(&bob_rx, &mut bob_seen, "bob's client sees the connection go", |l| {
        l.contains("\"disconnected\"")
    });
    let (_server, again) = standalone_at(dir.path(), &addr);
    assert_eq!(again, addr);
    // The client does not know the password any more: only the token can bring it back.
    read_until(&bob_rx, &mut bob_seen, "bob's session is resumed", |l| l.contains("\"relogged_in\""));

    let (alice, alice_rx) = client(
        &addr,
        "register alice correct-horse-battery\nlogin alice correct-horse-battery\nsend user bob are you back?\n",
    );
    finish(alice, alice_rx, Vec::new());
    let bob_events = finish(bob, bob_rx, bob_seen);
    let position = |event: &str| bob_events.iter().position(|e| e["event"] == event);
    assert!(position("error").is_none(), "{bob_events:#?}");
    let message = &bob_events[position("message").unwrap_or_else(|| panic!("{bob_events:#?}"))];
    assert_eq!(message["body"], "are you back?");
    assert!(position("password_changed").is_some(), "{bob_events:#?}");

    let (check, check_rx) =
        client(&addr, "login bob correct-horse-battery\nlogin bob staple-battery-horse\npasswd x\n");
    let events = finish(check, check_rx, Vec::new());
    assert_eq!(
        (&events[0]["command"], &events[0]["code"]),
        (&Value::from("login"), &Value::from("Unauthenticated"))
    );
    assert_eq!(events[1]["event"], "logged_in", "the new password works: {events:#?}");
    let usage = events.iter().find(|e| e["command"] == "passwd").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(usage["code"], "Usage");
}

#[test]
fn help_and_bad_lines_are_answered_in_clap_words_and_free_text_is_kept_as_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = standalone(dir.path());
    let script = "help\ngroup invite x bob\nregister ann correct-horse-battery\nregister ben correct-horse-battery\n\
                  login ann correct-horse-battery\nsend user ben -- two  spaces\ngroup create lunch  club public\n";
    let (c, rx) = client(&addr, script);
    let events = finish(c, rx, Vec::new());
    assert_eq!(events[0]["event"], "help", "{events:#?}");
    let help = events[0]["text"].as_str().unwrap();
    assert!(help.contains("register") && help.contains("history"), "{help}");
    assert_eq!(
        (&events[1]["command"], &events[1]["code"]),
        (&Value::from("group invite"), &Value::from("Usage"))
    );
    assert!(events[1]["message"].as_str().unwrap().contains("invalid value 'x'"), "{events:#?}");
    let sent = events.iter().find(|e| e["event"] == "sent").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(sent["conversation"]["direct"].as_array().map(Vec::len), Some(2));
    let (ben, ben_rx) = client(&addr, "login ben correct-horse-battery\n");
    let ben_events = finish(ben, ben_rx, Vec::new());
    let message =
        ben_events.iter().find(|e| e["event"] == "message").unwrap_or_else(|| panic!("{ben_events:#?}"));
    assert_eq!(message["body"], "-- two  spaces");
    let created =
        events.iter().find(|e| e["event"] == "group_created").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(
        (&created["group"]["name"], &created["group"]["public"]),
        (&Value::from("lunch  club"), &Value::from(true))
    );
}
