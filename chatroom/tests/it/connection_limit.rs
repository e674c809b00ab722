//! The limit on connections per client address, end to end: `chatroom standalone
//! --max-connections-per-address`, and a cluster behind nginx (`chatroom cluster up
//! --max-connections-per-address`, which sets nginx's `limit_conn` and the proxies'
//! flag). One address over the limit is refused while a second address (127.0.0.2: all
//! of 127.0.0.0/8 is loopback) connects, registers and logs in as usual.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;
use rpc_core::frame::{self, Frame, Kind};
use rpc_core::Code;
use services::api::{self, gateway_rpc};

use crate::chat_client::PASSWORD;
use crate::chat_nginx::{Cluster, Shape};
use crate::client_cli::standalone_with;

/// The limit both systems run with: small, so that the test is quick.
const LIMIT: usize = 4;
const PATIENCE: Duration = Duration::from_secs(30);

/// A connection to `server` from `source`.
fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap_or_else(|e| panic!("cannot bind {source}: {e}"));
    socket.connect_timeout(&server.into(), PATIENCE).expect("connects");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream
}

/// Sends `preface`, then one `chatroom.Gateway` call; returns every frame the server
/// sends until its first response, or until it closes the connection.
fn call(stream: &mut TcpStream, preface: &[u8], method: &str, body: &impl Message) -> Vec<Frame> {
    let mut out = BytesMut::from(preface);
    frame::put_request(&mut out, 1, 30_000, gateway_rpc::SERVICE_NAME, method, &body.encode_to_vec());
    // A connection refused at once may already be closed: the write's outcome is the
    // test's only when the read below says nothing.
    let _ = stream.write_all(&out);
    let (mut input, mut frames, mut chunk) = (BytesMut::new(), Vec::new(), [0u8; 4096]);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // Reset: closed at once.
            Err(_) => break,
        }
        while let Some(f) = frame::decode(&mut input, 1 << 20).unwrap() {
            let done = f.kind == Kind::Response;
            frames.push(f);
            if done {
                return frames;
            }
        }
    }
    frames
}

/// Whether the connection is served: a call made before login is answered
/// Unauthenticated by the gateway (not by a balancer, which has no such answer).
fn served(stream: &mut TcpStream, preface: &[u8]) -> bool {
    let frames = call(stream, preface, gateway_rpc::methods::LIST_FRIENDS, &api::ListFriendsRequest {});
    match frames.last() {
        Some(f) if f.kind == Kind::Response => {
            let status = f.clone().into_result().expect_err("no session yet");
            assert_eq!(status.code, Code::Unauthenticated, "{status:?}");
            true
        }
        _ => false,
    }
}

/// Registers and logs in a new user on a new connection from `source`.
fn register_and_log_in_from(source: &str, server: SocketAddr) {
    let name = format!("c{:08x}", rand::random::<u32>());
    let register =
        api::RegisterRequest { name: name.clone(), password: PASSWORD.into(), ..Default::default() };
    let mut stream = connect_from(source, server);
    let frames = call(&mut stream, b"", gateway_rpc::methods::REGISTER, &register);
    let answer = frames.last().expect("an answer to Register").clone();
    answer.into_result().unwrap_or_else(|s| panic!("register from {source}: {s:?}"));
    let login = api::LoginRequest { name, password: PASSWORD.into(), ..Default::default() };
    let frames = call(&mut stream, b"", gateway_rpc::methods::LOGIN, &login);
    let answer = frames.last().expect("an answer to Login").clone();
    answer.into_result().unwrap_or_else(|s| panic!("login from {source}: {s:?}"));
}

/// Opens [`LIMIT`] served connections from 127.0.0.1.
fn fill(server: SocketAddr) -> Vec<TcpStream> {
    (0..LIMIT)
        .map(|n| {
            let mut stream = connect_from("127.0.0.1", server);
            assert!(served(&mut stream, b""), "connection {n} of {LIMIT} is served");
            stream
        })
        .collect()
}

#[test]
fn standalone_refuses_one_address_over_its_limit_with_a_go_away_and_serves_another() {
    let dir = tempfile::tempdir().unwrap();
    let limit = LIMIT.to_string();
    let (_server, addr) =
        standalone_with(dir.path(), &["--listen", "127.0.0.1:0", "--max-connections-per-address", &limit]);
    let addr: SocketAddr = addr.parse().expect("standalone prints its address");
    let mut first = fill(addr);

    let mut over = connect_from("127.0.0.1", addr);
    let frames = call(&mut over, b"", gateway_rpc::methods::LIST_FRIENDS, &api::ListFriendsRequest {});
    let kinds: Vec<Kind> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::GoAway], "one frame, the go-away, then the end");
    let reason = String::from_utf8_lossy(&frames[0].body).into_owned();
    assert_eq!(reason, format!("too many connections from 127.0.0.1 (limit {LIMIT})"));

    register_and_log_in_from("127.0.0.2", addr);

    // A closed connection gives its place back.
    first.pop();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = connect_from("127.0.0.1", addr);
        if served(&mut again, b"") {
            break;
        }
        assert!(Instant::now() < deadline, "a new connection is served after one closed");
    }
}

#[test]
fn nginx_and_the_proxies_refuse_one_address_over_its_limit_and_serve_another() {
    let shape = Shape { proxies: 2, user_services: 1, chat_services: 1, ..Shape::default() };
    let limit = LIMIT.to_string();
    let env = [
        ("CHATROOM_MAX_CONNECTIONS_PER_ADDRESS", limit.as_str()),
        ("CHATROOM_LOGIN_ADDRESS_BURST", "0"),
        ("CHATROOM_REGISTER_ADDRESS_BURST", "0"),
    ];
    let cluster = Cluster::up_with(shape, &env);
    let conf = std::fs::read_to_string(cluster.dir().join("nginx.conf")).unwrap();
    assert!(conf.contains(&format!("limit_conn per_address {LIMIT};")), "{conf}");
    let nginx = cluster.client_addr();
    let first = fill(nginx);

    // nginx closes the one too many before it reaches a proxy: no frame at all (its
    // stream module cannot write one).
    let mut over = connect_from("127.0.0.1", nginx);
    let frames = call(&mut over, b"", gateway_rpc::methods::LIST_FRIENDS, &api::ListFriendsRequest {});
    assert!(frames.is_empty(), "nginx closed it without an answer: {frames:?}");

    register_and_log_in_from("127.0.0.2", nginx);

    // Each proxy counts the client nginx names, with the same limit, and says why.
    let proxy = cluster.process("proxy-1").addr.expect("the proxy's address");
    let header = b"PROXY TCP4 192.0.2.9 127.0.0.1 51234 7979\r\n";
    let named: Vec<TcpStream> = (0..LIMIT)
        .map(|_| {
            let mut stream = connect_from("127.0.0.1", proxy);
            assert!(served(&mut stream, header));
            stream
        })
        .collect();
    let mut over = connect_from("127.0.0.1", proxy);
    let frames = call(&mut over, header, gateway_rpc::methods::LIST_FRIENDS, &api::ListFriendsRequest {});
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].kind, Kind::GoAway);
    assert_eq!(
        String::from_utf8_lossy(&frames[0].body),
        format!("too many connections from 192.0.2.9 (limit {LIMIT})")
    );
    drop((first, named));
}
