//! PROXY protocol v1 headers from trusted load balancers (`Config::proxy_protocol_from`):
//! the client they name is the call's `Context::client_addr`, and a missing or malformed
//! header ends the connection with a go-away naming the fault. The parser's own cases are
//! unit tests in `server/proxy_header.rs`.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rpc_core::frame;
use rpc_core::server::{Builder, Config};

use crate::support::{read_frame, WhoAmI};

/// Sends `preface` and one call on a raw socket, and returns the first frame back.
fn raw_call(addr: SocketAddr, preface: &[u8]) -> frame::Frame {
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::from(preface);
    frame::put_request(&mut out, 1, 0, "test.WhoAmI", "Me", b"");
    socket.write_all(&out).unwrap();
    read_frame(&mut socket, &mut BytesMut::new()).expect("an answer before the server closed")
}

#[test]
fn a_trusted_peer_names_the_client_in_a_proxy_header() {
    let config = Config { proxy_protocol_from: vec!["127.0.0.1".parse().unwrap()], ..Config::default() };
    let server = Builder::new(config).service(WhoAmI).bind("127.0.0.1:0").unwrap();
    let named = raw_call(server.local_addr(), b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 7878\r\n");
    assert_eq!(named.kind, frame::Kind::Response);
    assert_eq!(&named.body[..], b"192.0.2.7:51234");
    // UNKNOWN (a balancer's health check) leaves the peer as the client.
    let unknown = raw_call(server.local_addr(), b"PROXY UNKNOWN\r\n");
    assert!(std::str::from_utf8(&unknown.body).unwrap().starts_with("127.0.0.1:"));
    // Without a header, the trusted peer speaks for itself (a local tool beside the
    // balancer).
    let direct = raw_call(server.local_addr(), b"");
    assert_eq!(direct.kind, frame::Kind::Response);
    assert!(std::str::from_utf8(&direct.body).unwrap().starts_with("127.0.0.1:"));
    // A malformed header ends the connection with the reason.
    for bad in [
        &b"PROXY TCP4 192.0.2.7 127.0.0.1 51234\r\n"[..],
        b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n",
        b"Pxyz",
    ] {
        let refused = raw_call(server.local_addr(), bad);
        assert_eq!(refused.kind, frame::Kind::GoAway, "{bad:?}");
        let reason = String::from_utf8_lossy(&refused.body).into_owned();
        assert!(reason.contains("malformed PROXY protocol v1 header"), "{bad:?}: {reason}");
    }
    server.shutdown();
}

#[test]
fn an_untrusted_peer_is_its_own_client_and_its_header_is_not_believed() {
    let config = Config { proxy_protocol_from: vec!["192.0.2.1".parse().unwrap()], ..Config::default() };
    let server = Builder::new(config).service(WhoAmI).bind("127.0.0.1:0").unwrap();
    let plain = raw_call(server.local_addr(), b"");
    assert!(std::str::from_utf8(&plain.body).unwrap().starts_with("127.0.0.1:"));
    let spoofed = raw_call(server.local_addr(), b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 7878\r\n");
    assert_eq!(spoofed.kind, frame::Kind::GoAway, "a header from an untrusted peer is not a frame");
    server.shutdown();
}
