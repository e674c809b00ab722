//! No peer can hurt another: fair workers, the heavy lane, frames a client may not
//! send, eviction of peers that break a limit, and honest outcomes.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Kind};
use rpc_core::server::{Builder, Config, Context, Handle, Service};
use rpc_core::{Code, Error, Outcome, Status};

use crate::support::{read_until_closed, wait_until, Gate};

const PATIENCE: Duration = Duration::from_secs(20);

/// `Echo` answers its body; `Sleep` sleeps `body[0]` ms; `Hash` (heavy) sleeps
/// `body[0]` ms; `Big` answers `body` (a u32) bytes; `Block` waits at the gate;
/// `Down` calls `Block` on the server at `downstream` with no timeout of its own.
/// Every call that starts is counted.
struct Probe {
    started: AtomicUsize,
    gate: Gate,
    downstream: Mutex<Option<Channel>>,
}

impl Probe {
    fn new() -> Arc<Probe> {
        Arc::new(Probe { started: AtomicUsize::new(0), gate: Gate::closed(), downstream: Mutex::new(None) })
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

struct ProbeService(Arc<Probe>);

impl Service for ProbeService {
    fn name(&self) -> &str {
        "test.Probe"
    }

    fn lanes(&self) -> &[(&'static str, &'static str)] {
        &[("Hash", rpc_core::server::HEAVY)]
    }

    fn call(&self, _ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        let probe = &self.0;
        probe.started.fetch_add(1, Ordering::SeqCst);
        match method {
            "Echo" => Ok(body),
            "Sleep" | "Hash" => {
                std::thread::sleep(Duration::from_millis(u64::from(body[0])));
                Ok(body)
            }
            "Big" => {
                let n = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                Ok(Bytes::from(vec![7u8; n]))
            }
            "Block" => {
                probe.gate.wait();
                Ok(body)
            }
            "Down" => {
                let channel = probe.downstream.lock().unwrap().clone().expect("downstream set");
                channel.call_raw("test.Probe", "Block", b"", None).map_err(Error::into_status)
            }
            _ => Err(Status::unimplemented(method.to_owned())),
        }
    }
}

fn serve(config: Config) -> (Handle, Arc<Probe>) {
    let probe = Probe::new();
    let server = Builder::new(config).service(ProbeService(probe.clone())).bind("127.0.0.1:0").unwrap();
    (server, probe)
}

fn request(id: u64, timeout_ms: u32, method: &str, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    frame::put_request(&mut buf, id, timeout_ms, "test.Probe", method, body);
    buf
}

fn goaway(frames: &[frame::Frame]) -> Option<String> {
    frames.iter().find(|f| f.kind == Kind::GoAway).map(|f| String::from_utf8_lossy(&f.body).into_owned())
}

/// The `p`-th percentile of `samples`.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn echo_latencies(channel: &Channel, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(&channel.call_raw("test.Probe", "Echo", b"hi", None).unwrap()[..], b"hi");
            t.elapsed()
        })
        .collect()
}

#[test]
fn a_connection_bursting_slow_calls_leaves_workers_for_the_others() {
    let (server, probe) = serve(Config { workers: 4, ..Config::default() });
    let victim = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let unloaded = percentile(&mut echo_latencies(&victim, 50), 0.99);

    // 1,000 calls of 20 ms written in one burst: on a shared queue they would hold all
    // four workers for about five seconds.
    let mut attacker = TcpStream::connect(server.local_addr()).unwrap();
    let mut burst = BytesMut::new();
    for id in 1..=1000 {
        burst.extend_from_slice(&request(id, 0, "Sleep", &[20]));
    }
    attacker.write_all(&burst).unwrap();
    wait_until(PATIENCE, "the burst to start", || probe.started() >= 53);
    let mut loaded = echo_latencies(&victim, 50);
    let loaded_p99 = percentile(&mut loaded, 0.99);
    let started = probe.started();
    assert!(started < 50 + 1000 - 100, "the burst was mostly done before the victim's calls ran ({started})");
    // At most three of the four workers run the burst, so the fourth answers the victim.
    let bound = (unloaded * 20).max(Duration::from_millis(60));
    assert!(
        loaded_p99 < bound,
        "victim p99 {loaded_p99:?} during the burst, {unloaded:?} before (bound {bound:?})"
    );
}

#[test]
fn heavy_calls_wait_in_their_own_bounded_lane() {
    let config = Config { workers: 2, heavy_workers: 1, max_heavy_queued: 10, ..Config::default() };
    let (server, probe) = serve(config);
    let victim = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let mut attacker = TcpStream::connect(server.local_addr()).unwrap();
    let mut burst = BytesMut::new();
    for id in 1..=100 {
        burst.extend_from_slice(&request(id, 0, "Hash", &[50]));
    }
    attacker.write_all(&burst).unwrap();
    wait_until(PATIENCE, "a heavy call to start", || probe.started() >= 1);
    // The workers are free: the heavy calls wait on their own thread.
    let mut loaded = echo_latencies(&victim, 20);
    let p99 = percentile(&mut loaded, 0.99);
    assert!(p99 < Duration::from_millis(45), "victim p99 {p99:?} while heavy calls wait");

    // Past the lane's bound, heavy calls are refused at once, marked not run.
    attacker.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_closed(&mut attacker, PATIENCE);
    let answers: Vec<_> = frames.iter().filter(|f| f.kind == Kind::Response).collect();
    assert_eq!(answers.len(), 100, "every call is answered");
    let refused: Vec<_> = answers.iter().filter(|f| f.code == Code::ResourceExhausted).collect();
    assert!(refused.len() >= 80, "only {} of 100 refused with a lane of 1 + 10", refused.len());
    assert!(refused.iter().all(|f| f.flags & frame::FLAG_NOT_RUN != 0), "refusals say not run");
    let ran = answers.iter().filter(|f| f.code == Code::Ok).count();
    assert_eq!(ran + refused.len(), 100);
    assert_eq!(probe.started() - 20, ran, "a refused heavy call never started");
}

#[test]
fn one_connection_may_have_only_its_share_of_the_heavy_lane_waiting() {
    let config = Config {
        workers: 2,
        heavy_workers: 1,
        max_heavy_queued: 10,
        max_heavy_queued_per_connection: Some(2),
        ..Config::default()
    };
    let (server, probe) = serve(config);
    let mut greedy = TcpStream::connect(server.local_addr()).unwrap();
    greedy.write_all(&request(1, 0, "Hash", &[200])).unwrap();
    wait_until(PATIENCE, "the first heavy call to run", || probe.started() >= 1);
    // Four more while the first runs: two may wait, the others are refused at once.
    let mut more = BytesMut::new();
    for id in 2..=5 {
        more.extend_from_slice(&request(id, 0, "Hash", &[1]));
    }
    greedy.write_all(&more).unwrap();
    // Another connection still gets in line although the lane is far from full.
    let mut other = TcpStream::connect(server.local_addr()).unwrap();
    other.write_all(&request(1, 0, "Hash", &[1])).unwrap();

    greedy.shutdown(std::net::Shutdown::Write).unwrap();
    let answers: Vec<_> =
        read_until_closed(&mut greedy, PATIENCE).into_iter().filter(|f| f.kind == Kind::Response).collect();
    assert_eq!(answers.len(), 5, "every call is answered");
    let refused: Vec<_> = answers.iter().filter(|f| f.code == Code::ResourceExhausted).collect();
    assert_eq!(refused.len(), 2, "past its share of 2 waiting: {answers:?}");
    assert!(refused.iter().all(|f| f.flags & frame::FLAG_NOT_RUN != 0), "refusals say not run");
    let why = String::from_utf8_lossy(&refused[0].body).into_owned();
    assert!(why.contains("2 calls of this connection already wait in the heavy lane"), "{why}");
    other.shutdown(std::net::Shutdown::Write).unwrap();
    let theirs = read_until_closed(&mut other, PATIENCE);
    assert!(theirs.iter().any(|f| f.kind == Kind::Response && f.code == Code::Ok), "{theirs:?}");
    assert_eq!(probe.started(), 4, "the refused calls never started");
}

#[test]
fn a_client_that_reads_gets_every_large_answer_however_many_are_pipelined() {
    let (server, _) = serve(Config::default());
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    // 200 answers of 256 KiB in flight at once (50 MiB) and one of 9 MiB, past the hard
    // limit: a peer that reads is held back, never evicted.
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..200 {
        let tx = tx.clone();
        let body = (256 * 1024u32).to_be_bytes();
        channel.call_raw_with("test.Probe", "Big", &body, None, Box::new(move |r| tx.send(r).unwrap()));
    }
    for _ in 0..200 {
        let answer = rx.recv_timeout(PATIENCE).unwrap().unwrap();
        assert_eq!(answer.len(), 256 * 1024);
    }
    let big = channel.call_raw("test.Probe", "Big", &(9 * 1024 * 1024u32).to_be_bytes(), None).unwrap();
    assert_eq!(big.len(), 9 * 1024 * 1024);
}

#[test]
fn a_client_push_is_a_protocol_violation_and_never_runs() {
    let (server, probe) = serve(Config::default());
    let mut client = TcpStream::connect(server.local_addr()).unwrap();
    let mut buf = BytesMut::new();
    frame::put_push(&mut buf, "test.Probe", "Echo", b"hi");
    client.write_all(&buf).unwrap();
    let frames = read_until_closed(&mut client, PATIENCE);
    let reason = goaway(&frames).expect("a go-away");
    assert_eq!(reason, "protocol violation: clients may not send push frames");
    assert_eq!(probe.started(), 0, "the pushed call ran");
}

#[test]
fn a_call_that_times_out_on_the_caller_and_runs_later_is_outcome_unknown() {
    let (server, probe) = serve(Config { workers: 2, ..Config::default() });
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let err = channel.call_raw("test.Probe", "Block", b"", Some(Duration::from_millis(200))).unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(err.outcome(), Outcome::Unknown, "{err}");
    assert!(!err.is_retryable_elsewhere(), "{err}");
    // It did run, and finishes once let go.
    assert_eq!(probe.started(), 1);
    probe.gate.open();
    assert_eq!(&channel.call_raw("test.Probe", "Echo", b"x", None).unwrap()[..], b"x");
}

#[test]
fn a_call_dropped_from_the_queue_past_its_deadline_is_not_run() {
    let (server, probe) = serve(Config { workers: 1, ..Config::default() });
    let mut client = TcpStream::connect(server.local_addr()).unwrap();
    let mut buf = request(1, 0, "Block", b"");
    buf.extend_from_slice(&request(2, 100, "Echo", b"late"));
    client.write_all(&buf).unwrap();
    wait_until(PATIENCE, "the blocking call to start", || probe.started() == 1);
    std::thread::sleep(Duration::from_millis(300));
    probe.gate.open();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_closed(&mut client, PATIENCE);
    let late = frames.iter().find(|f| f.kind == Kind::Response && f.call_id == 2).expect("an answer");
    assert_eq!(late.code, Code::DeadlineExceeded);
    assert_eq!(late.flags & frame::FLAG_NOT_RUN, frame::FLAG_NOT_RUN, "marked not run");
    let status = late.clone().into_result().unwrap_err();
    assert_eq!(status.outcome(), Outcome::NotRun);
    assert_eq!(probe.started(), 1, "the expired call ran");
}

#[test]
fn a_handlers_deadline_caps_the_calls_it_makes() {
    let (back, back_probe) = serve(Config::default());
    let (front, front_probe) = serve(Config::default());
    // The front's own channel would wait 30 s by default.
    let downstream = Channel::connect(back.local_addr(), ClientConfig::default()).unwrap();
    *front_probe.downstream.lock().unwrap() = Some(downstream);
    let mut client = TcpStream::connect(front.local_addr()).unwrap();
    let t = Instant::now();
    client.write_all(&request(1, 300, "Down", b"")).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let frames = read_until_closed(&mut client, PATIENCE);
    let answer = frames.iter().find(|f| f.kind == Kind::Response).expect("an answer");
    assert!(t.elapsed() < Duration::from_secs(10), "the deadline did not travel: {:?}", t.elapsed());
    assert_eq!(answer.code, Code::DeadlineExceeded);
    // The back got the call and may yet run it: the front cannot say, and says so.
    assert_eq!(answer.flags, frame::FLAG_OUTCOME_UNKNOWN);
    assert_eq!(back_probe.started(), 1);
    back_probe.gate.open();
}

#[test]
fn a_peer_that_trickles_a_frame_is_evicted() {
    let (server, _) = serve(Config { frame_timeout: Duration::from_secs(1), ..Config::default() });
    let victim = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let mut dripper = TcpStream::connect(server.local_addr()).unwrap();
    let frame = request(1, 0, "Echo", &[1u8; 200]);
    let writer = {
        let mut dripper = dripper.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in frame.iter().take(60) {
                if dripper.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let frames = read_until_closed(&mut dripper, PATIENCE);
    assert_eq!(goaway(&frames).as_deref(), Some("a frame took more than 1 s to arrive"));
    writer.join().unwrap();
    assert_eq!(&victim.call_raw("test.Probe", "Echo", b"ok", None).unwrap()[..], b"ok");
}

#[test]
fn a_peer_over_its_budget_that_reads_nothing_is_evicted_after_the_stall_timeout() {
    let config = Config {
        connection_budget: 256 * 1024,
        connection_hard_limit: 256 * 1024 * 1024,
        stalled_reader_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let (server, probe) = serve(config);
    let mut greedy = TcpStream::connect(server.local_addr()).unwrap();
    // 100 answers of 256 KiB: more than the kernel's buffers take, so most wait in
    // the server, over the budget and under the hard limit.
    let mut buf = BytesMut::new();
    for id in 1..=100 {
        buf.extend_from_slice(&request(id, 0, "Big", &(256 * 1024u32).to_be_bytes()));
    }
    greedy.write_all(&buf).unwrap();
    // The server answers until the answers waiting pass the budget, then holds the
    // rest back.
    wait_until(PATIENCE, "the answers to be made", || probe.started() >= 3);
    // Evicted at the first once-a-second check after a second without progress; the
    // rest is slack for a loaded machine, where the loop may take its answers late.
    std::thread::sleep(Duration::from_secs(5));
    let frames = read_until_closed(&mut greedy, PATIENCE);
    let reason = goaway(&frames).expect("a go-away");
    assert!(reason.starts_with("the peer read nothing for 1 s"), "{reason}");
    assert!(frames.iter().filter(|f| f.kind == Kind::Response).count() < 100, "nothing was dropped");
}

#[test]
fn connections_over_their_share_of_an_exhausted_server_budget_are_evicted() {
    let config = Config {
        workers: 4,
        connection_budget: 1024 * 1024,
        connection_hard_limit: 256 * 1024 * 1024,
        server_budget: 1024 * 1024,
        ..Config::default()
    };
    let (server, probe) = serve(config);
    let victim = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let mut greedy: Vec<TcpStream> =
        (0..3).map(|_| TcpStream::connect(server.local_addr()).unwrap()).collect();
    for g in &mut greedy {
        let mut buf = BytesMut::new();
        for id in 1..=40 {
            buf.extend_from_slice(&request(id, 0, "Big", &(512 * 1024u32).to_be_bytes()));
        }
        g.write_all(&buf).unwrap();
    }
    wait_until(PATIENCE, "the answers to be made", || probe.started() >= 12);
    // The victim holds nearly nothing and is served throughout.
    for _ in 0..10 {
        assert_eq!(&victim.call_raw("test.Probe", "Echo", b"ok", None).unwrap()[..], b"ok");
    }
    // The server checks its budget once a second; reading earlier would let a greedy
    // peer drain and stay. The rest is slack for a loaded machine.
    std::thread::sleep(Duration::from_secs(4));
    let reasons: Vec<Option<String>> =
        greedy.iter_mut().map(|g| goaway(&read_until_closed(g, PATIENCE))).collect();
    let evicted = reasons
        .iter()
        .flatten()
        .filter(|r| r.starts_with("server memory budget of 1048576 bytes exhausted"))
        .count();
    assert_eq!(evicted, 3, "every greedy connection is evicted: {reasons:?}");
    assert_eq!(&victim.call_raw("test.Probe", "Echo", b"ok", None).unwrap()[..], b"ok");
}
