//! The internal ports (the user service, the chat service, a proxy's `Delivery`) serve
//! only members of the cluster: a caller without the cluster secret, or with a wrong one,
//! is refused every method and never reaches a handler, while the system itself, whose
//! processes prove the secret to each other, works. Run here on the standalone system;
//! `cluster_up_down` runs the same checks on a cluster of real processes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Frame, Kind};
use rpc_core::registry::Registry;
use rpc_core::{Code, Error, Outcome};
use services::api::{chat_service_rpc, delivery_rpc, user_service_rpc};
use services::secret::{self, ClusterSecret};
use services::standalone::Standalone;
use sha2::Sha256;

use crate::chat_client::{config, direct, user_at};

/// How long a refused peer waits for an answer before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// One internal port: where it is, its service and every method it has.
pub struct Port {
    /// For messages.
    pub name: String,
    pub addr: SocketAddr,
    pub service: &'static str,
    pub methods: &'static [&'static str],
}

/// The user service, the chat service and every proxy's delivery port registered in `registry`.
pub fn internal_ports(registry: &dyn Registry) -> Vec<Port> {
    let services = [
        (user_service_rpc::SERVICE_NAME, user_service_rpc::methods::ALL),
        (chat_service_rpc::SERVICE_NAME, chat_service_rpc::methods::ALL),
        (delivery_rpc::SERVICE_NAME, delivery_rpc::methods::ALL),
    ];
    let mut ports = Vec::new();
    for (service, methods) in services {
        let instances = registry.instances(service).expect("the registry answers");
        assert!(!instances.is_empty(), "{service} is registered");
        for instance in instances {
            ports.push(Port {
                name: format!("{service} {}", instance.id),
                addr: instance.addr,
                service,
                methods,
            });
        }
    }
    ports
}

/// Asserts that every port in `ports` refuses every method to a caller without a
/// secret and to one with a wrong secret, and lets one with `secret` through.
pub fn assert_only_members_are_served(ports: &[Port], secret: &ClusterSecret) {
    let wrong = ClusterSecret::generate();
    for port in ports {
        let name = &port.name;
        // A stranger that does not know there is a handshake.
        let stranger = Channel::connect(port.addr, ClientConfig::default()).unwrap();
        for method in port.methods {
            let err = stranger.call_raw(port.service, method, b"", Some(PATIENCE)).unwrap_err();
            let Error::Status(status) = &err else { panic!("{name} {method}: {err}") };
            assert_eq!(
                (status.code, status.outcome()),
                (Code::Unauthenticated, Outcome::NotRun),
                "{name} {method}"
            );
        }
        // One that tries a secret of its own: the server cannot prove it, so rpc-core's
        // client gives up, ...
        let config = ClientConfig { credential: Some(wrong.credential()), ..ClientConfig::default() };
        let err = Channel::connect(port.addr, config).unwrap_err();
        let Error::Connect { source, .. } = &err else { panic!("{name}: {err}") };
        assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{name}: {err}");
        // ... and one that presses on is refused, then refused every method.
        let mut raw = Raw::connect(port.addr);
        assert_eq!(raw.prove(&wrong.to_hex()), "refused", "{name}");
        for (call_id, method) in port.methods.iter().enumerate() {
            let answer = raw.call(call_id as u64, port.service, method);
            assert_eq!(
                (answer.code, answer.outcome()),
                (Code::Unauthenticated, Outcome::NotRun),
                "{name} {method}"
            );
        }
        // A member gets through: an unknown method is answered by the service itself.
        let config = ClientConfig { credential: Some(secret.credential()), ..ClientConfig::default() };
        let member = Channel::connect(port.addr, config).unwrap();
        let err = member.call_raw(port.service, "NoSuchMethod", b"", Some(PATIENCE)).unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{name}: {err}");
        // Proved by hand, as a client written from docs/PROTOCOL.md would.
        let mut raw = Raw::connect(port.addr);
        assert_eq!(raw.prove(&secret.to_hex()), "ok", "{name}");
        let answer = raw.call(1, port.service, "NoSuchMethod");
        assert_eq!(answer.code, Code::Unimplemented, "{name}");
    }
}

#[test]
fn standalone_internal_ports_serve_only_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let system = Standalone::start(config.clone()).expect("standalone starts");
    let path = config.data_dir.join(secret::FILE);
    let mode = std::fs::metadata(&path).expect("the secret is in the data directory").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may read the secret");
    let secret = ClusterSecret::read(&path).unwrap();
    assert_eq!(secret.to_hex(), system.cluster_secret().to_hex());

    assert_only_members_are_served(&internal_ports(system.registry()), &secret);
    // The system itself works: a message goes from proxy to chat service to proxy.
    let (alice_client, alice) = user_at(system.client_addr(), "alice");
    let (bob_client, bob) = user_at(system.client_addr(), "bob");
    alice_client.send(direct(&alice, &bob), "a-1", "members only").unwrap();
    assert_eq!(bob_client.wait_messages(1)[0].body, "members only");

    // A restart keeps the secret.
    system.shutdown();
    let again = Standalone::start(config).expect("standalone starts again");
    assert_eq!(again.cluster_secret().to_hex(), secret.to_hex());
}

/// A connection driven by hand, frame by frame.
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

    /// Runs the shared-secret handshake with `secret_hex`, as docs/PROTOCOL.md describes
    /// it, without checking the server's tag; returns the server's verdict step.
    fn prove(&mut self, secret_hex: &str) -> String {
        let key: Vec<u8> = (0..secret_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).unwrap())
            .collect();
        let client_nonce: [u8; 32] = rand::random();
        self.send_auth("hello", &client_nonce);
        let challenge = self.read();
        assert_eq!((challenge.kind, challenge.method()), (Kind::Auth, "challenge"));
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"rpc-core hmac-sha256 client");
        mac.update(&client_nonce);
        mac.update(&challenge.body[..32]);
        self.send_auth("proof", &mac.finalize().into_bytes());
        let verdict = self.read();
        assert_eq!(verdict.kind, Kind::Auth);
        verdict.method().to_owned()
    }

    fn send_auth(&mut self, step: &str, body: &[u8]) {
        let mut buf = BytesMut::new();
        frame::put_auth(&mut buf, "hmac-sha256", step, body);
        self.stream.write_all(&buf).unwrap();
    }

    /// Calls `service/method` with an empty body; the failed answer's status.
    fn call(&mut self, call_id: u64, service: &str, method: &str) -> rpc_core::Status {
        let mut buf = BytesMut::new();
        frame::put_request(&mut buf, call_id, 0, service, method, b"");
        self.stream.write_all(&buf).unwrap();
        let answer = self.read();
        assert_eq!((answer.kind, answer.call_id), (Kind::Response, call_id));
        answer.into_result().expect_err("the call fails")
    }

    fn read(&mut self) -> Frame {
        loop {
            if let Some(f) = frame::decode(&mut self.buf, frame::DEFAULT_MAX_FRAME).unwrap() {
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
