//! A real `echo_server` process stopped with SIGSTOP behind a balancer: its
//! kernel still completes TCP handshakes, so only the missing answers give it
//! away. The balancer must take it out of rotation within two seconds, keep
//! every later call on the other server and within its deadline, and bring it
//! back only once it answers a ping again (after SIGCONT).
//!
//! Needs ZooKeeper at `CHATROOM_ZK` (default `127.0.0.1:2181`), where the two
//! servers register themselves; `scripts/test.sh` starts it, as does
//! `bash scripts/services.sh up`. Waits are on conditions with deadlines.
#![cfg(unix)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use examples::echo::{echo_rpc::SERVICE_NAME, EchoClient, EchoRequest, StatsRequest};
use rpc_core::balance::{self, Balanced};
use rpc_core::client::{self, Channel};
use rpc_core::registry::{self, Registry, ZooKeeper};
use rustix::process::{kill_process, Pid, Signal};

mod support;
use support::{wait_until, zk};

/// Longest any test waits for something that should happen soon.
const PATIENCE: Duration = Duration::from_secs(15);

/// The deadline of each balanced call.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest a stopped server may stay in rotation.
const EJECTED_WITHIN: Duration = Duration::from_secs(2);

/// Threads calling through the balancer.
const CALLERS: usize = 4;

/// A child process, killed and reaped when dropped however the test ends
/// (SIGKILL ends a stopped process too).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An `echo_server` child process.
struct Server {
    /// The child, killed when dropped.
    process: Process,
    /// A channel straight to it, for its counters.
    direct: EchoClient,
}

impl Server {
    /// Starts `echo_server` registering as `id` under `root`, and waits until
    /// it says it is registered.
    fn start(zk: &str, root: &str, id: &str) -> Server {
        let mut process = Process(
            Command::new(env!("CARGO_BIN_EXE_echo_server"))
                .args(["--zk", zk, "--root", root, "--id", id])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start echo_server"),
        );
        let (lines_tx, lines) = mpsc::channel();
        let stdout = process.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut seen: Vec<String> = Vec::new();
        while !seen.iter().any(|l| l.starts_with("registered")) {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => seen.push(line),
                Err(e) => panic!("echo_server {id} did not register ({e}); it printed {seen:?}"),
            }
        }
        let addr: SocketAddr =
            seen[0].strip_prefix("echo server listening on ").expect("address line").parse().unwrap();
        let config =
            client::Config { default_timeout: Some(Duration::from_secs(5)), ..client::Config::default() };
        Server { process, direct: EchoClient::new(Channel::lazy(addr, config)) }
    }

    /// `Say` calls it has answered, asked straight of it.
    fn say_calls(&self) -> u64 {
        self.direct.stats(&StatsRequest {}).expect("stats").say_calls
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(&self.process.0);
        kill_process(pid, signal).expect("signal echo_server");
    }
}

/// Calls `Say` through the balancer from a few threads until dropped; keeps
/// the answers and the failures, each failure with when its call started.
struct Load {
    /// Tells the threads to end.
    stop: Arc<AtomicBool>,
    /// The calling threads, joined when dropped.
    threads: Vec<JoinHandle<()>>,
    /// Calls answered.
    answered: Arc<AtomicUsize>,
    /// Failed calls, with when each started.
    failures: Arc<Mutex<Vec<(Instant, rpc_core::Error)>>>,
}

impl Load {
    fn start(balanced: &Balanced) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CALLERS)
            .map(|n| {
                let client = EchoClient::new(balanced.clone()).with_timeout(CALL_TIMEOUT);
                let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let text = format!("{n}-{i}");
                        let started = Instant::now();
                        match client.say(&EchoRequest { text: text.clone(), ..Default::default() }) {
                            Ok(reply) => {
                                assert_eq!(reply.text, text);
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failures.lock().unwrap().push((started, e)),
                        }
                        i += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Load { stop, threads, answered, failures }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    fn wait_for_more(&self, n: usize, what: &str) {
        let target = self.answered() + n;
        wait_until(PATIENCE, what, || self.answered() >= target);
    }

    /// The failures of calls that started after `t`.
    fn failures_since(&self, t: Instant) -> Vec<String> {
        let failures = self.failures.lock().unwrap();
        failures.iter().filter(|(started, _)| *started > t).map(|(_, e)| e.to_string()).collect()
    }

    /// Every failure so far.
    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().iter().map(|(_, e)| e.to_string()).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn in_rotation(balanced: &Balanced) -> BTreeSet<String> {
    balanced.in_rotation().into_iter().map(|i| i.id).collect()
}

#[test]
fn a_stopped_server_leaves_rotation_within_two_seconds_and_returns_after_sigcont() {
    let zk = zk();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let root = format!("/chatroom-it/examples-frozen-{}-{nanos}", std::process::id());
    let one = Server::start(&zk, &root, "one");
    let two = Server::start(&zk, &root, "two");
    let consumer = ZooKeeper::connect(
        &zk,
        registry::Config {
            root: root.clone(),
            session_timeout: Duration::from_secs(4),
            operation_timeout: Duration::from_secs(10),
            ..registry::Config::default()
        },
    )
    .expect("connect to ZooKeeper");
    let balanced = Balanced::discover(&consumer, SERVICE_NAME, balance::Config::default()).unwrap();
    let both = BTreeSet::from(["one".to_owned(), "two".to_owned()]);
    wait_until(PATIENCE, "both servers discovered", || in_rotation(&balanced) == both);

    let load = Load::start(&balanced);
    load.wait_for_more(200, "calls to both servers");
    assert!(one.say_calls() > 0 && two.say_calls() > 0, "round-robin reached both");

    two.signal(Signal::STOP);
    let stopped = Instant::now();
    wait_until(EJECTED_WITHIN * 3, "the stopped server leaving rotation", || {
        !in_rotation(&balanced).contains("two")
    });
    let out = Instant::now();
    let took = out - stopped;
    assert!(took <= EJECTED_WITHIN, "the stopped server left rotation only after {took:?}");
    eprintln!("the stopped server left rotation after {took:?}");

    // From now on every call goes to one: count what one served against
    // what the callers got over two seconds. The counts are read around the
    // Stats calls, which take time; calls in flight at either end may be
    // counted on one side only.
    let around = |read: &dyn Fn() -> u64| {
        let before = load.answered();
        let count = read();
        (before, count, load.answered())
    };
    let (a0, one_before, a0_after) = around(&|| one.say_calls());
    while out.elapsed() < Duration::from_secs(2) {
        assert!(!in_rotation(&balanced).contains("two"), "the stopped server came back while stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (a1, one_after, a1_after) = around(&|| one.say_calls());
    let served = (one_after - one_before) as usize;
    let (least, most) = (a1 - a0_after, a1_after - a0);
    assert!(least >= 100, "calls went on: {least} answered in two seconds");
    assert!(
        least <= served + CALLERS && served <= most + CALLERS,
        "one served {served} calls while the callers got {least} to {most} answers"
    );
    // Stopped for one call timeout more, any call sent to it in those two
    // seconds would have timed out by now.
    while out.elapsed() < Duration::from_secs(2) + CALL_TIMEOUT + Duration::from_millis(200) {
        assert!(!in_rotation(&balanced).contains("two"), "the stopped server came back while stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        load.failures_since(out),
        Vec::<String>::new(),
        "no call went to the stopped server after it left rotation, and every call was answered in time"
    );
    let registered: BTreeSet<String> =
        consumer.instances(SERVICE_NAME).unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(registered, both, "the stopped server is still registered: the balancer took it out");

    // Continued, it answers a ping within `probe_max` plus a ping, and takes
    // calls again.
    two.signal(Signal::CONT);
    let resumed = Instant::now();
    wait_until(PATIENCE, "the continued server back in rotation", || in_rotation(&balanced) == both);
    eprintln!("the continued server was back in rotation after {:?}", resumed.elapsed());
    let two_back = two.say_calls();
    wait_until(PATIENCE, "calls reaching the continued server", || two.say_calls() >= two_back + 50);
    assert_eq!(load.failures_since(out), Vec::<String>::new(), "nor after it came back");
    // Before it left rotation, a caller may have sent the stopped server a call, timed
    // out, and sent it another before the stall was seen (the stall floor, 500 ms, is the
    // call timeout here): two timeouts in a row eject it anyway.
    let failures = load.failures();
    let per_caller = balance::Config::default().eject_after_timeouts as usize;
    assert!(
        failures.len() <= CALLERS * per_caller,
        "at most {per_caller} calls per caller were held by the stopped server: {failures:?}"
    );
    drop(load);
}
