//! `Config::max_connections_per_address`: one client address cannot take every
//! connection. The connection one too many gets a go-away naming the limit and is
//! closed; other addresses still connect (127.0.0.2 is a second source on loopback);
//! a closed connection gives its count back, however it closed; behind a trusted
//! balancer the client its PROXY header names is counted, never the balancer. The
//! counting's own cases are unit tests in `server/per_address.rs`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Kind};
use rpc_core::server::{Builder, Config, Handle};

use crate::support::{read_frame, read_until_closed, wait_until, WhoAmI};

const PATIENCE: Duration = Duration::from_secs(20);

fn serve(config: Config) -> Handle {
    Builder::new(config).service(WhoAmI).bind("127.0.0.1:0").unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A connection to `server` from `source` (any 127/8 address works on loopback).
fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip(source), 0).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Sends `preface`, then one call, and returns the first frame back.
fn call(stream: &mut TcpStream, preface: &[u8]) -> frame::Frame {
    let mut out = BytesMut::from(preface);
    frame::put_request(&mut out, 1, 0, "test.WhoAmI", "Me", b"");
    stream.write_all(&out).unwrap();
    read_frame(stream, &mut BytesMut::new()).expect("a frame before the server closed")
}

/// Asserts that `stream` was refused: a go-away naming `reason`, then the end.
fn assert_refused(stream: &mut TcpStream, reason: &str) {
    let frames = read_until_closed(stream, PATIENCE);
    let kinds: Vec<Kind> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::GoAway], "a refused connection gets one go-away, then the end");
    assert_eq!(String::from_utf8_lossy(&frames[0].body), reason);
}

#[test]
fn one_address_over_its_limit_is_refused_while_others_connect_and_closing_gives_room() {
    // Two loops: the count is the server's, not one loop's.
    let config = Config { max_connections_per_address: 3, event_loops: 2, ..Config::default() };
    let server = serve(config);
    let addr = server.local_addr();
    let mut first: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", addr)).collect();
    for stream in &mut first {
        assert_eq!(call(stream, b"").kind, Kind::Response);
    }
    assert_eq!(server.connections_from(ip("127.0.0.1")), 3);
    let mut over = connect_from("127.0.0.1", addr);
    assert_refused(&mut over, "too many connections from 127.0.0.1 (limit 3)");
    assert_eq!(server.refused_per_address(), 1);

    // Another address is not affected, up to its own limit.
    let mut second: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", addr)).collect();
    for stream in &mut second {
        let answer = call(stream, b"");
        assert_eq!(answer.kind, Kind::Response);
        assert!(String::from_utf8_lossy(&answer.body).starts_with("127.0.0.2:"));
    }
    assert_refused(&mut connect_from("127.0.0.2", addr), "too many connections from 127.0.0.2 (limit 3)");

    // A client of rpc-core's own reads the reason in its error.
    let channel = Channel::connect(addr, ClientConfig::default()).unwrap();
    let err = channel.call_raw("test.WhoAmI", "Me", b"", Some(PATIENCE)).unwrap_err();
    assert!(err.to_string().contains("too many connections from 127.0.0.1 (limit 3)"), "{err}");
    channel.close();

    // Closing two gives two back; the refused ones never counted.
    first.truncate(1);
    wait_until(PATIENCE, "the closed connections' counts given back", || {
        server.connections_from(ip("127.0.0.1")) == 1
    });
    for _ in 0..2 {
        let mut again = connect_from("127.0.0.1", addr);
        assert_eq!(call(&mut again, b"").kind, Kind::Response);
        first.push(again);
    }
    assert_refused(&mut connect_from("127.0.0.1", addr), "too many connections from 127.0.0.1 (limit 3)");
    drop((first, second));
    wait_until(PATIENCE, "every count given back", || {
        server.connections_from(ip("127.0.0.1")) == 0 && server.connections_from(ip("127.0.0.2")) == 0
    });
    server.shutdown();
}

#[test]
fn connections_closed_by_errors_and_evictions_give_their_counts_back() {
    let config =
        Config { max_connections_per_address: 4, idle_timeout: Duration::from_secs(1), ..Config::default() };
    let server = serve(config);
    let addr = server.local_addr();
    // A protocol violation (version 9), a reset, an idle one and one that ends its
    // stream: each closed by a different path.
    let mut violator = connect_from("127.0.0.1", addr);
    let mut reset = connect_from("127.0.0.1", addr);
    let mut idle = connect_from("127.0.0.1", addr);
    let mut ender = connect_from("127.0.0.1", addr);
    for stream in [&mut violator, &mut reset, &mut idle, &mut ender] {
        assert_eq!(call(stream, b"").kind, Kind::Response);
    }
    assert_eq!(server.connections_from(ip("127.0.0.1")), 4);
    assert_refused(&mut connect_from("127.0.0.1", addr), "too many connections from 127.0.0.1 (limit 4)");

    violator.write_all(&[0, 0, 0, 18, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let goaway = read_frame(&mut violator, &mut BytesMut::new()).expect("a go-away");
    assert_eq!(goaway.kind, Kind::GoAway);
    socket2::SockRef::from(&reset).set_linger(Some(Duration::ZERO)).unwrap();
    drop(reset);
    ender.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut idle, PATIENCE).iter().any(|f| f.kind == Kind::GoAway));
    wait_until(PATIENCE, "every count given back", || server.connections_from(ip("127.0.0.1")) == 0);
    let mut fresh: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", addr)).collect();
    for stream in &mut fresh {
        assert_eq!(call(stream, b"").kind, Kind::Response);
    }
    server.shutdown();
}

#[test]
fn behind_a_trusted_balancer_the_named_client_is_counted_not_the_balancer() {
    let config = Config {
        max_connections_per_address: 2,
        proxy_protocol_from: vec![ip("127.0.0.1")],
        ..Config::default()
    };
    let server = serve(config);
    let addr = server.local_addr();
    let header = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 51234 7878\r\n").into_bytes();
    // The balancer holds many more connections than the limit: waiting for their
    // header, speaking for itself (no header), or for its health checks (UNKNOWN).
    let waiting: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", addr)).collect();
    let mut own: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", addr)).collect();
    for stream in &mut own {
        assert_eq!(call(stream, b"").kind, Kind::Response);
    }
    let mut unknown = connect_from("127.0.0.1", addr);
    assert_eq!(call(&mut unknown, b"PROXY UNKNOWN\r\n").kind, Kind::Response);
    assert_eq!(server.connections_from(ip("127.0.0.1")), 0);

    let mut named: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.1", addr)).collect();
    for stream in &mut named {
        let answer = call(stream, &header("192.0.2.7"));
        assert_eq!(&answer.body[..], b"192.0.2.7:51234");
    }
    assert_eq!(server.connections_from(ip("192.0.2.7")), 2);
    let mut over = connect_from("127.0.0.1", addr);
    let mut out = BytesMut::from(&header("192.0.2.7")[..]);
    frame::put_request(&mut out, 1, 0, "test.WhoAmI", "Me", b"");
    over.write_all(&out).unwrap();
    assert_refused(&mut over, "too many connections from 192.0.2.7 (limit 2)");
    // Another client through the same balancer is served.
    let mut other = connect_from("127.0.0.1", addr);
    assert_eq!(&call(&mut other, &header("192.0.2.8")).body[..], b"192.0.2.8:51234");

    // A header still to come names the client it counts for: these were not counted
    // while they waited.
    let mut waiting = waiting;
    named.pop();
    wait_until(PATIENCE, "the closed connection's count given back", || {
        server.connections_from(ip("192.0.2.7")) == 1
    });
    assert_eq!(&call(&mut waiting[0], &header("192.0.2.7")).body[..], b"192.0.2.7:51234");
    let mut out = BytesMut::from(&header("192.0.2.7")[..]);
    frame::put_request(&mut out, 1, 0, "test.WhoAmI", "Me", b"");
    waiting[1].write_all(&out).unwrap();
    assert_refused(&mut waiting[1], "too many connections from 192.0.2.7 (limit 2)");
    server.shutdown();
}
