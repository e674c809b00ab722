//! `SendMessage` answers "not stored" only when nothing was stored: the only chat service
//! of a cluster (the processes of `chat_cluster`) is stopped with SIGSTOP while messages
//! are sent. The sends it had taken time out at the proxy and are answered
//! DeadlineExceeded with the outcome unknown (the chat service stores them when it
//! resumes); once the balancer took the stopped service out, sends are answered
//! Unavailable at once and stored nowhere. After SIGCONT, each unknown send retried with
//! its client message id is stored exactly once, and no "not stored" send is in the store.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rpc_core::{Code, Outcome};
use services::api;

use crate::chat_client::{direct, gateway_at, user_at, PASSWORD};
use crate::chat_cluster::Cluster;

/// Longer than the proxy's 10 s deadline on its calls to the chat service, so the test
/// sees the proxy's answer rather than its own time-out.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends made while the chat service is stopped and still in rotation.
const IN_FLIGHT: usize = 4;
/// Sends made after that.
const LATER: usize = 4;

/// Sends SIGCONT to a process when dropped, so a failed test leaves nothing stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let sent = Command::new("kill").arg(which).arg(pid.to_string()).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill {which} {pid}");
}

/// What a failed or successful send said about storing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Stored,
    NotStored,
    Unknown,
}

fn said(result: &Result<api::SendMessageResponse, rpc_core::Error>) -> Said {
    match result {
        Ok(_) => Said::Stored,
        Err(e) => {
            let unknown = e.outcome() == Outcome::Unknown;
            // The two signals chat.proto names agree: DeadlineExceeded is "unknown", and
            // every other failure is "not stored" with an outcome that says so.
            assert_eq!(unknown, e.code() == Code::DeadlineExceeded, "code and outcome disagree: {e}");
            if unknown {
                assert!(e.to_string().contains("same client_msg_id"), "says how to retry: {e}");
                Said::Unknown
            } else {
                Said::NotStored
            }
        }
    }
}

#[test]
fn sends_to_a_stopped_chat_service_are_answered_not_stored_only_when_they_were_not() {
    let mut cluster = Cluster::new();
    cluster.spawn("user-service", &["user-service", "--listen", "127.0.0.1:0"]);
    cluster.spawn("chat-service", &["chat-service", "--listen", "127.0.0.1:0"]);
    let proxy = cluster.spawn("proxy", &["proxy", "--listen", "127.0.0.1:0"]);
    let (_bob_client, bob) = user_at(proxy, "bob");
    let (alice_client, alice) = user_at(proxy, "alice");
    // Alice's session on a connection that waits longer than the proxy does.
    drop(alice_client);
    let gateway = gateway_at(proxy, |_| {}).with_timeout(SEND_TIMEOUT);
    let login =
        api::LoginRequest { name: alice.name.clone(), password: PASSWORD.into(), ..Default::default() };
    gateway.login(&login).expect("alice logs in");
    let to = direct(&alice, &bob);
    let send = |id: &str| {
        let request = api::SendMessageRequest {
            conversation: Some(to),
            client_msg_id: id.into(),
            body: format!("text {id}"),
        };
        gateway.send_message(&request)
    };
    send("before").expect("the chat service answers");

    let pid = cluster.pid("chat-service");
    let stopped = Stopped::stop(pid);
    let mut outcomes: Vec<(String, Said)> = std::thread::scope(|scope| {
        let sends: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                let id = format!("in-flight-{i}");
                scope.spawn(move || {
                    let result = send(&id);
                    (id, said(&result))
                })
            })
            .collect();
        sends.into_iter().map(|s| s.join().expect("a sender")).collect()
    });
    for i in 0..LATER {
        let id = format!("later-{i}");
        let result = send(&id);
        outcomes.push((id, said(&result)));
    }
    eprintln!("while the chat service was stopped: {outcomes:?}");
    drop(stopped);

    let count = |what: Said| outcomes.iter().filter(|(_, s)| *s == what).count();
    assert_eq!(count(Said::Stored), 0, "nothing was stored while the only chat service was stopped");
    assert!(count(Said::Unknown) >= 1, "the sends it had taken are unknown");
    assert!(count(Said::NotStored) >= 1, "once out of rotation, sends are refused as not stored");

    // Each unknown send is sent again with its id until it is answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut duplicates = 0;
    for (id, _) in outcomes.iter().filter(|(_, s)| *s == Said::Unknown) {
        loop {
            match send(id) {
                Ok(response) => {
                    duplicates += usize::from(response.duplicate);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    assert_ne!(said(&Err(e)), Said::Stored);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{id} was never answered after the chat service resumed: {e}"),
            }
        }
    }
    eprintln!("{duplicates} of the unknown sends had been stored before their retry");
    assert!(duplicates >= 1, "the stopped chat service stored what it had taken once it resumed");

    // The store has each unknown send once, and no send answered "not stored".
    let history = api::HistoryRequest { conversation: Some(to), anchor: None, limit: 200 };
    let stored = gateway.history(&history).expect("history").messages;
    let mut times: HashMap<&str, usize> = HashMap::new();
    for message in &stored {
        *times.entry(message.client_msg_id.as_str()).or_default() += 1;
    }
    assert_eq!(times.get("before"), Some(&1));
    for (id, said) in &outcomes {
        let expected = match said {
            Said::Unknown => Some(&1),
            _ => None,
        };
        assert_eq!(times.get(id.as_str()), expected, "{id}, answered {said:?}, is stored that many times");
    }
    assert_eq!(stored.len(), 1 + count(Said::Unknown));
}
