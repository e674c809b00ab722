//! The client when things go wrong around a call: a server that stops while it holds
//! calls, application code misbehaving on the client's event-loop thread, and pings to
//! a server that cannot answer them.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Kind};
use rpc_core::server::{Builder, Config};
use rpc_core::{Code, Error};

use crate::support::{read_frame, Echo};

const PATIENCE: Duration = Duration::from_secs(10);

/// A server that reads one request, then says `goaways` and closes the connection
/// without answering it; returns the error the caller got.
fn call_a_server_that_stops_saying(goaways: &'static [&'static str]) -> Error {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = BytesMut::new();
        while let Some(f) = read_frame(&mut stream, &mut buf) {
            if f.kind == Kind::Request {
                break;
            }
        }
        let mut out = BytesMut::new();
        for reason in goaways {
            frame::put_goaway(&mut out, reason);
        }
        stream.write_all(&out).unwrap();
    });
    let ch = Channel::connect(addr, ClientConfig::default()).unwrap();
    let err = ch.call_raw("test.Echo", "Echo", b"x", Some(PATIENCE)).unwrap_err();
    server.join().unwrap();
    err
}

#[test]
fn a_call_is_not_run_only_when_the_server_says_it_answered_everything_it_read() {
    // Killed while draining: the server read the call and may have run it.
    let err = call_a_server_that_stops_saying(&[frame::SHUTDOWN_REASON]);
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
    assert!(!err.is_retryable_elsewhere(), "{err}");

    // A graceful end: its last word says every call it read was answered.
    let err = call_a_server_that_stops_saying(&[frame::SHUTDOWN_REASON, frame::DRAINED_REASON]);
    assert!(matches!(err, Error::NotRun { .. }), "{err}");
    assert!(err.is_retryable_elsewhere(), "{err}");
}

#[test]
fn a_graceful_shutdown_ends_each_connection_with_the_drained_go_away() {
    let server = Builder::new(Config::default()).service(Echo).bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(server.local_addr()).unwrap();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut out = BytesMut::new();
    frame::put_request(&mut out, 1, 0, "test.Echo", "Echo", b"before");
    peer.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    let answer = read_frame(&mut peer, &mut buf).expect("an answer");
    assert_eq!((answer.kind, &answer.body[..]), (Kind::Response, &b"before"[..]));

    server.shutdown();
    let mut goaways = Vec::new();
    while let Some(f) = read_frame(&mut peer, &mut buf) {
        assert_eq!(f.kind, Kind::GoAway, "{f:?}");
        goaways.push(String::from_utf8_lossy(&f.body).into_owned());
    }
    assert_eq!(goaways, [frame::SHUTDOWN_REASON, frame::DRAINED_REASON]);
}

#[test]
fn a_panicking_callback_leaves_the_connection_serving() {
    let server = Builder::new(Config::default()).service(Echo).bind("127.0.0.1:0").unwrap();
    let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    ch.call_raw_with("test.Echo", "Echo", b"boom", None, Box::new(|_| panic!("a callback fails")));
    let later = tx.clone();
    ch.call_raw_with(
        "test.Echo",
        "Echo",
        b"after",
        Some(PATIENCE),
        Box::new(move |r| later.send(r).unwrap()),
    );
    assert_eq!(&rx.recv_timeout(PATIENCE).unwrap().unwrap()[..], b"after");

    // Callbacks still time out, which the event loop does.
    ch.call_raw_with(
        "test.Echo",
        "Echo",
        b"x",
        Some(Duration::from_millis(1)),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    let _answer_or_timeout = rx.recv_timeout(PATIENCE).expect("the callback is called");
    assert!(ch.is_connected());
    assert_eq!(&ch.call_raw("test.Echo", "Echo", b"blocking", None).unwrap()[..], b"blocking");
}

#[test]
fn a_blocking_call_from_a_callback_fails_at_once_instead_of_waiting_on_itself() {
    let server = Builder::new(Config::default()).service(Echo).bind("127.0.0.1:0").unwrap();
    let config = ClientConfig { default_timeout: None, ..ClientConfig::default() };
    let ch = Channel::connect(server.local_addr(), config).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let inner = ch.clone();
    ch.call_raw_with(
        "test.Echo",
        "Echo",
        b"outer",
        None,
        Box::new(move |_| tx.send(inner.call_raw("test.Echo", "Echo", b"inner", None)).unwrap()),
    );
    let err = rx.recv_timeout(PATIENCE).expect("the nested call returns").unwrap_err();
    assert!(matches!(err, Error::BlockingOnReader), "{err}");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[test]
fn a_ping_completes_on_its_pong_and_times_out_where_only_the_kernel_accepts() {
    let server = Builder::new(Config::default()).service(Echo).bind("127.0.0.1:0").unwrap();
    let ch = Channel::lazy(server.local_addr(), ClientConfig::default());
    let rtt = ch.ping(PATIENCE).expect("a Pong");
    assert!(rtt < PATIENCE);
    assert!(ch.is_connected(), "the ping connected");
    assert_eq!(&ch.call_raw("test.Echo", "Echo", b"after", None).unwrap()[..], b"after");
    for _ in 0..3 {
        ch.ping(PATIENCE).expect("a Pong for each ping");
    }

    // A listener nobody accepts on: the kernel completes the handshake, as it
    // does for a stopped process, but no Pong ever comes.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let ch = Channel::lazy(silent.local_addr().unwrap(), ClientConfig::default());
    let started = std::time::Instant::now();
    let err = ch.ping(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(&err, Error::Timeout { method, .. } if method == "Ping"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
}
