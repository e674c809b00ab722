//! The server's protections against slow, idle and greedy peers, and the
//! client's reconnection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Kind};
use rpc_core::server::{Builder, Config, Connection, Context, Service};
use rpc_core::{Code, Error, Status};

use crate::support::{wait_until, Gate};

const PATIENCE: Duration = Duration::from_secs(10);

/// `Block` waits at the gate; `Grab` hands out the caller's connection; anything else
/// echoes, `Inline` on the event loop (and `InlinePanics` panics in `runs_inline`).
struct Gated {
    gate: Arc<Gate>,
    conns: crossbeam_channel::Sender<Connection>,
}

impl Service for Gated {
    fn name(&self) -> &str {
        "test.Gated"
    }

    fn runs_inline(&self, method: &str) -> bool {
        assert_ne!(method, "InlinePanics", "a broken runs_inline");
        method == "Inline"
    }

    fn call(&self, ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        match method {
            "Block" => self.gate.wait(),
            "Grab" => {
                let _ = self.conns.send(ctx.connection().clone());
            }
            _ => {}
        }
        Ok(body)
    }
}

fn serve(config: Config) -> (rpc_core::server::Handle, Arc<Gate>, crossbeam_channel::Receiver<Connection>) {
    let gate = Arc::new(Gate::closed());
    let (tx, rx) = crossbeam_channel::unbounded();
    let server =
        Builder::new(config).service(Gated { gate: gate.clone(), conns: tx }).bind("127.0.0.1:0").unwrap();
    (server, gate, rx)
}

#[test]
fn calls_over_the_in_flight_limit_are_resource_exhausted_at_once() {
    let (server, gate, _) =
        serve(Config { workers: 4, max_in_flight_per_connection: 2, ..Config::default() });
    let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..2 {
        let tx = tx.clone();
        ch.call_raw_with("test.Gated", "Block", b"b", None, Box::new(move |r| tx.send(r).unwrap()));
    }
    wait_until(PATIENCE, "two calls running", || gate.arrived() == 2);
    let err = ch.call_raw("test.Gated", "Echo", b"x", None).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    gate.open();
    for _ in 0..2 {
        assert_eq!(&rx.recv_timeout(PATIENCE).unwrap().unwrap()[..], b"b");
    }
    assert_eq!(&ch.call_raw("test.Gated", "Echo", b"x", None).unwrap()[..], b"x");
}

#[test]
fn a_peer_that_never_reads_is_paused_and_refused_pushes_while_others_are_served() {
    let max = 64 * 1024;
    let (server, _, conns) = serve(Config { connection_budget: max, ..Config::default() });
    let addr = server.local_addr();

    // A raw client grabs its connection handle, then floods requests and never reads.
    let mut greedy = TcpStream::connect(addr).unwrap();
    let mut buf = BytesMut::new();
    frame::put_request(&mut buf, 1, 0, "test.Gated", "Grab", b"");
    greedy.write_all(&buf).unwrap();
    let handle = conns.recv_timeout(PATIENCE).unwrap();
    greedy.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let body = vec![7u8; 16 * 1024];
    let mut batch = BytesMut::new();
    for id in 2..66 {
        frame::put_request(&mut batch, id, 0, "test.Gated", "Echo", &body);
    }
    // Keep writing until the socket buffers are full: the server stopped reading.
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "the server kept reading from a peer that never reads");
        if greedy.write_all(&batch).is_err() {
            break;
        }
    }
    // Replies pile up past the cap, so pushes to it are refused with a clear error.
    wait_until(PATIENCE, "a push refused for backpressure", || {
        matches!(handle.push("test.Note", "Hello", &body), Err(Error::Backpressure(_)))
    });
    assert!(handle.is_open());

    // Everyone else is served meanwhile.
    let ch = Channel::connect(addr, ClientConfig::default()).unwrap();
    for i in 0..20u8 {
        assert_eq!(&ch.call_raw("test.Gated", "Echo", &[i], None).unwrap()[..], &[i]);
    }

    // Once the peer reads, its replies flow again.
    greedy.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = vec![0u8; 256 * 1024];
    let mut read = 0;
    while read < 4 * max {
        let n = greedy.read(&mut sink).unwrap();
        assert!(n > 0, "the server closed the paused connection");
        read += n;
    }
}

#[test]
fn an_idle_connection_is_told_why_and_closed_but_pings_keep_one_alive() {
    let (server, _, _) = serve(Config { idle_timeout: Duration::from_millis(300), ..Config::default() });
    let addr = server.local_addr();

    let pinging = Channel::connect(
        addr,
        ClientConfig { keepalive: Duration::from_millis(100), ..ClientConfig::default() },
    )
    .unwrap();

    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = BytesMut::new();
    let goaway = loop {
        if let Some(f) = frame::decode(&mut buf, frame::DEFAULT_MAX_FRAME).unwrap() {
            break f;
        }
        let mut chunk = [0u8; 1024];
        let n = silent.read(&mut chunk).unwrap();
        assert!(n > 0, "closed without a go-away");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(goaway.kind, Kind::GoAway);
    assert!(String::from_utf8_lossy(&goaway.body).contains("idle"), "{:?}", goaway.body);
    let mut rest = [0u8; 16];
    assert_eq!(silent.read(&mut rest).unwrap_or(0), 0, "closed after the go-away");

    // The pinging channel outlived the idle timeout on its first connection.
    assert!(pinging.is_connected());
    assert_eq!(&pinging.call_raw("test.Gated", "Echo", b"still here", None).unwrap()[..], b"still here");
}

#[test]
fn a_channel_reconnects_after_the_server_comes_back() {
    let (server, _, _) = serve(Config::default());
    let addr = server.local_addr();
    let config = ClientConfig {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let ch = Channel::connect(addr, config).unwrap();
    assert_eq!(&ch.call_raw("test.Gated", "Echo", b"1", None).unwrap()[..], b"1");
    server.shutdown();

    wait_until(PATIENCE, "the channel notices the server left", || !ch.is_connected());
    let err = ch.call_raw("test.Gated", "Echo", b"2", Some(Duration::from_millis(100))).unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    let gate = Arc::new(Gate::closed());
    let (tx, _rx) = crossbeam_channel::unbounded();
    let _again = Builder::new(Config::default()).service(Gated { gate, conns: tx }).bind(addr).unwrap();
    // Within its deadline the call waits out the backoff and connects again.
    let reply = ch.call_raw("test.Gated", "Echo", b"3", Some(PATIENCE)).unwrap();
    assert_eq!(&reply[..], b"3");
}

/// Writes `calls`, shuts down the sending side, and reads until the server closes:
/// every whole frame it answered, and whatever partial frame was left.
fn half_close_and_read(
    server: &rpc_core::server::Handle,
    calls: &[u8],
    before_reading: impl FnOnce(),
) -> (Vec<(u64, Bytes)>, usize) {
    let mut peer = TcpStream::connect(server.local_addr()).unwrap();
    peer.write_all(calls).unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    before_reading();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut received = Vec::new();
    peer.read_to_end(&mut received).expect("the server closes the connection after its answers");
    let mut buf = BytesMut::from(&received[..]);
    let mut answers = Vec::new();
    while let Some(f) = frame::decode(&mut buf, frame::DEFAULT_MAX_FRAME).unwrap() {
        assert_eq!(f.kind, Kind::Response, "{f:?}");
        answers.push((f.call_id, f.body));
    }
    answers.sort();
    (answers, buf.len())
}

#[test]
fn a_peer_that_shuts_down_its_sending_side_still_gets_every_answer() {
    let (server, gate, _) = serve(Config { workers: 2, ..Config::default() });
    let mut calls = BytesMut::new();
    frame::put_request(&mut calls, 1, 0, "test.Gated", "Block", b"slow");
    frame::put_request(&mut calls, 2, 0, "test.Gated", "Echo", b"quick");
    // The server reads the end of the stream while the first call still runs.
    let (answers, partial) = half_close_and_read(&server, &calls, || {
        wait_until(PATIENCE, "the slow call running", || gate.arrived() == 1);
        gate.open();
    });
    assert_eq!(answers, [(1, Bytes::from_static(b"slow")), (2, Bytes::from_static(b"quick"))]);
    assert_eq!(partial, 0, "a partial frame before the close");

    // Answers made on the loop and still unwritten when the end of the stream is read
    // (none in flight any more) are written too.
    let body = Bytes::from(vec![9u8; 256 * 1024]);
    let mut calls = BytesMut::new();
    for id in 1..=20 {
        frame::put_request(&mut calls, id, 0, "test.Gated", "Inline", &body);
    }
    let (answers, partial) = half_close_and_read(&server, &calls, || {});
    let expected: Vec<(u64, Bytes)> = (1..=20).map(|id| (id, body.clone())).collect();
    assert!(answers == expected, "{} of 20 answers", answers.len());
    assert_eq!(partial, 0, "a partial frame before the close");
}

#[test]
fn pushes_faster_than_the_loop_writes_are_refused_and_others_are_still_served() {
    let (server, _, conns) = serve(Config { connection_budget: 1024 * 1024, ..Config::default() });
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    let mut buf = BytesMut::new();
    frame::put_request(&mut buf, 1, 0, "test.Gated", "Grab", b"");
    silent.write_all(&buf).unwrap();
    let handle = conns.recv_timeout(PATIENCE).unwrap();

    // Pushing without pause to a client that reads nothing: the socket buffers fill, then
    // the cap is reached and pushes are refused, long before 2,000 of 64 KiB (128 MiB).
    let body = vec![3u8; 64 * 1024];
    let refused =
        (0..2000).position(|_| matches!(handle.push("test.Note", "Big", &body), Err(Error::Backpressure(_))));
    assert!(refused.is_some(), "2,000 pushes of 64 KiB accepted for a client that reads nothing");
    let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(&ch.call_raw("test.Gated", "Echo", b"still served", None).unwrap()[..], b"still served");
}

#[test]
fn a_panicking_runs_inline_sends_the_call_to_a_worker_and_the_loop_lives_on() {
    let (server, _, _) = serve(Config::default());
    let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(&ch.call_raw("test.Gated", "InlinePanics", b"x", None).unwrap()[..], b"x");
    let again = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(&again.call_raw("test.Gated", "Echo", b"y", None).unwrap()[..], b"y");
}

#[test]
fn shutdown_does_not_wait_for_a_handler_that_outlives_the_grace() {
    let (server, gate, _) = serve(Config { shutdown_grace: Duration::from_millis(100), ..Config::default() });
    let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    ch.call_raw_with("test.Gated", "Block", b"b", None, Box::new(move |r| tx.send(r).unwrap()));
    wait_until(PATIENCE, "the call running", || gate.arrived() == 1);
    let (done, stopped) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        server.shutdown();
        done.send(()).unwrap();
    });
    stopped.recv_timeout(PATIENCE).expect("shutdown returns while the handler still runs");
    let err = rx.recv_timeout(PATIENCE).unwrap().unwrap_err();
    assert!(!err.is_retryable_elsewhere(), "the call may have run: {err}");
    gate.open();
}
