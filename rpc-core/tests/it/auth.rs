//! Authentication in the handshake: a listener with a shared secret serves only
//! peers that prove it, and a channel trusts only servers that prove it too.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rpc_core::auth::{Authenticator, Credential, MAX_UNAUTHENTICATED_FRAME};
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Frame, Kind};
use rpc_core::server::{Builder, Config, Handle};
use rpc_core::{Code, Error, Outcome};

use crate::support::{init_logging, read_frame, wait_until, Named};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const PATIENCE: Duration = Duration::from_secs(10);
/// Methods a stranger tries; the service answers any of them when allowed.
const METHODS: [&str; 3] = ["Who", "Send", "Delete"];

/// A server whose listener requires `SECRET`, with a handler that counts its calls.
fn server(authenticator: &Authenticator) -> (Handle, Arc<AtomicUsize>) {
    init_logging();
    let calls = Arc::new(AtomicUsize::new(0));
    let config = Config { authenticator: Some(authenticator.clone()), ..Config::default() };
    let server = Builder::new(config)
        .service(Named { name: "guarded".to_owned(), calls: calls.clone() })
        .bind("127.0.0.1:0")
        .unwrap();
    (server, calls)
}

fn with_secret(secret: &[u8]) -> ClientConfig {
    ClientConfig { credential: Some(Credential::shared_secret(secret)), ..ClientConfig::default() }
}

/// Calls every method of `METHODS` on `channel`, each of which must be refused
/// as unauthenticated and not run.
fn assert_every_method_refused(channel: &Channel) {
    for method in METHODS {
        let err = channel.call_raw("test.Named", method, b"", None).unwrap_err();
        let Error::Status(status) = &err else { panic!("{method}: {err}") };
        assert_eq!(status.code, Code::Unauthenticated, "{method}: {err}");
        assert_eq!(status.outcome(), Outcome::NotRun, "{method}: {err}");
    }
}

#[test]
fn the_right_secret_is_served() {
    let authenticator = Authenticator::shared_secret(SECRET);
    let (server, calls) = server(&authenticator);
    let config = ClientConfig { connections: 2, ..with_secret(SECRET) };
    let channel = Channel::connect(server.local_addr(), config).unwrap();
    for method in METHODS {
        assert_eq!(&channel.call_raw("test.Named", method, b"", None).unwrap()[..], b"guarded");
        // The other connection, opened on demand, authenticates too.
        assert_eq!(&channel.call_raw("test.Named", method, b"", None).unwrap()[..], b"guarded");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2 * METHODS.len());
    assert_eq!(authenticator.passed(), 2);
    assert_eq!(authenticator.refused_connections(), 0);
}

#[test]
fn a_peer_without_the_handshake_is_refused_every_method_and_no_handler_runs() {
    let authenticator = Authenticator::shared_secret(SECRET);
    let (server, calls) = server(&authenticator);
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_every_method_refused(&channel);
    // An unknown service is refused the same way: a stranger learns nothing.
    let err = channel.call_raw("no.Such", "Thing", b"", None).unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(authenticator.refused_calls(), METHODS.len() as u64 + 1);
    assert_eq!(authenticator.refused_connections(), 1, "one connection, counted once");
    assert_eq!(authenticator.passed(), 0);
}

#[test]
fn a_client_with_a_wrong_secret_cannot_connect() {
    let authenticator = Authenticator::shared_secret(SECRET);
    let (server, calls) = server(&authenticator);
    let err = Channel::connect(server.local_addr(), with_secret(b"not the cluster secret")).unwrap_err();
    let Error::Connect { source, .. } = &err else { panic!("{err}") };
    // The server's tag does not match the client's secret, so the client stops first.
    assert_eq!(source.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_wrong_proof_is_refused_and_every_later_call_too() {
    let authenticator = Authenticator::shared_secret(SECRET);
    let (server, calls) = server(&authenticator);
    let mut peer = Raw::connect(server.local_addr());
    peer.send_auth("hello", &[7; 32]);
    let challenge = peer.read();
    assert_eq!((challenge.kind, challenge.method()), (Kind::Auth, "challenge"));
    // A stranger cannot make the client's tag; it sends anything.
    peer.send_auth("proof", &[0; 32]);
    let verdict = peer.read();
    assert_eq!((verdict.kind, verdict.method()), (Kind::Auth, "refused"));
    for (call_id, method) in METHODS.iter().enumerate() {
        let mut buf = BytesMut::new();
        frame::put_request(&mut buf, call_id as u64, 0, "test.Named", method, b"");
        peer.stream.write_all(&buf).unwrap();
        let answer = peer.read().into_result().unwrap_err();
        assert_eq!((answer.code, answer.outcome()), (Code::Unauthenticated, Outcome::NotRun), "{method}");
    }
    // A second try on the same connection is a protocol violation.
    peer.send_auth("hello", &[8; 32]);
    let goaway = peer.read();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(authenticator.refused_connections(), 1);
    assert_eq!(authenticator.refused_calls(), METHODS.len() as u64);
}

#[test]
fn a_server_with_another_secret_is_refused_by_the_client() {
    let authenticator = Authenticator::shared_secret(b"an impostor's secret");
    let (server, calls) = server(&authenticator);
    let err = Channel::connect(server.local_addr(), with_secret(SECRET)).unwrap_err();
    assert!(err.to_string().contains("did not prove"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(authenticator.passed(), 0);
}

/// A fake server on a raw socket: it reads the client's first frame, then runs
/// `act` on the socket, and reports every byte the client sent after that.
fn impostor(
    act: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut len = [0u8; 4];
        socket.read_exact(&mut len).unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        socket.read_exact(&mut hello).unwrap();
        act(&mut socket);
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut after = Vec::new();
        let _ = socket.read_to_end(&mut after);
        let _ = tx.send(after);
    });
    (addr, rx)
}

#[test]
fn a_server_that_says_ok_without_proving_itself_gets_no_call() {
    let (addr, sent_after) = impostor(|socket| {
        let mut ok = BytesMut::new();
        frame::put_auth(&mut ok, "hmac-sha256", "ok", b"");
        socket.write_all(&ok).unwrap();
    });
    let err = Channel::connect(addr, with_secret(SECRET)).unwrap_err();
    assert!(err.to_string().contains("without proving"), "{err}");
    let after = sent_after.recv_timeout(PATIENCE).unwrap();
    assert!(after.is_empty(), "the client sent {} bytes to an impostor", after.len());
}

#[test]
fn a_server_that_trickles_its_challenge_cannot_stretch_the_handshake() {
    let (addr, _) = impostor(|socket| {
        // A whole challenge frame's length, then one byte every 100 ms: each read
        // gets a byte well within any read timeout.
        let mut challenge = BytesMut::new();
        frame::put_auth(&mut challenge, "hmac-sha256", "challenge", &[7u8; 48]);
        for byte in challenge.iter() {
            if socket.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // The frame takes ~9 s to trickle in: waiting for all of it would end in a wrong
    // tag, not in the time-out that 500 ms gives.
    let config = ClientConfig { connect_timeout: Duration::from_millis(500), ..with_secret(SECRET) };
    let err = Channel::connect(addr, config).unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[test]
fn a_peer_that_does_not_authenticate_in_time_is_closed() {
    let authenticator = Authenticator::shared_secret(SECRET).with_timeout(Duration::from_secs(1));
    let (server, _calls) = server(&authenticator);
    let mut peer = Raw::connect(server.local_addr());
    let goaway = peer.read();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert!(String::from_utf8_lossy(&goaway.body).contains("authentication"), "{goaway:?}");
    assert_eq!(peer.stream.read(&mut [0; 16]).unwrap(), 0, "closed after the go-away");
    wait_until(PATIENCE, "the timeout counted", || authenticator.refused_connections() == 1);
}

#[test]
fn a_stranger_cannot_make_the_server_buffer_a_large_frame() {
    let authenticator = Authenticator::shared_secret(SECRET);
    let (server, calls) = server(&authenticator);
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let big = vec![0u8; MAX_UNAUTHENTICATED_FRAME + 1];
    let err = channel.call_raw("test.Named", "Who", &big, None).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_listener_without_an_authenticator_refuses_a_handshake_as_before() {
    init_logging();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = Builder::new(Config::default())
        .service(Named { name: "open".to_owned(), calls: calls.clone() })
        .bind("127.0.0.1:0")
        .unwrap();
    let err = Channel::connect(server.local_addr(), with_secret(SECRET)).unwrap_err();
    assert!(err.to_string().contains("unknown frame kind"), "{err}");
    let open = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(&open.call_raw("test.Named", "Who", b"", None).unwrap()[..], b"open");
}

/// A hand-driven connection, for what a well-behaved client never sends.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw { stream, buf: BytesMut::new() }
    }

    fn send_auth(&mut self, step: &str, body: &[u8]) {
        let mut buf = BytesMut::new();
        frame::put_auth(&mut buf, "hmac-sha256", step, body);
        self.stream.write_all(&buf).unwrap();
    }

    fn read(&mut self) -> Frame {
        read_frame(&mut self.stream, &mut self.buf).expect("a frame before the server closed the connection")
    }
}
