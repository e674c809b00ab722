//! Login and registration throttling end to end, on the standalone system (counters in
//! memory) and on a real cluster behind nginx (counters in Redis, client addresses
//! passed to the proxies in PROXY headers).
//!
//! Each client call comes from an address of its own in 127.0.0.0/8 (all of it is
//! loopback on Linux), so the per-address limits are tested with many "clients" on one
//! machine; behind nginx, a limit reached from one address leaving another untouched
//! shows that the proxies see each client's own address, not nginx's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use rpc_core::client::{self, Channel};
use rpc_core::frame;
use rpc_core::{Code, Status};
use services::api::{self, gateway_rpc, UserServiceClient};
use services::secret::ClusterSecret;
use services::standalone::Standalone;
use services::{auth, throttle};

use crate::chat_client::PASSWORD;
use crate::chat_nginx::{Cluster, Shape};
use crate::support::wait_until;

/// The limits both deployments run with: small, so that the test is quick.
const FREE_FAILURES: u32 = 3;
const ADDRESS_LOGINS: u32 = 6;
const ADDRESS_REGISTRATIONS: u32 = 3;

fn limits() -> throttle::Config {
    throttle::Config {
        account: throttle::Backoff {
            free_failures: FREE_FAILURES,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(2),
        },
        address_login: throttle::Bucket { burst: ADDRESS_LOGINS, every: Duration::from_secs(600) },
        address_register: throttle::Bucket { burst: ADDRESS_REGISTRATIONS, every: Duration::from_secs(600) },
        ..throttle::Config::default()
    }
}

/// The same limits as `chatroom` flags, through the environment.
const LIMITS_ENV: &[(&str, &str)] = &[
    ("CHATROOM_LOGIN_FREE_FAILURES", "3"),
    ("CHATROOM_LOGIN_BACKOFF_MS", "1000"),
    ("CHATROOM_LOGIN_BACKOFF_CAP_SECS", "2"),
    ("CHATROOM_LOGIN_ADDRESS_BURST", "6"),
    ("CHATROOM_LOGIN_ADDRESS_EVERY_MS", "600000"),
    ("CHATROOM_REGISTER_ADDRESS_BURST", "3"),
    ("CHATROOM_REGISTER_ADDRESS_EVERY_SECS", "600"),
];

/// A loopback address no other call of this test process used.
fn fresh_address() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 127.<pid>.x.y, so that two test processes at once do not share addresses.
    let (hi, lo) = ((n / 250) as u8, (n % 250 + 1) as u8);
    IpAddr::V4(Ipv4Addr::new(127, (std::process::id() % 200 + 20) as u8, hi, lo))
}

/// One `chatroom.Gateway` call on a new connection from `from`.
fn call_from(from: IpAddr, server: SocketAddr, method: &str, body: &impl Message) -> Result<Bytes, Status> {
    use std::io::{Read, Write};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap_or_else(|e| panic!("cannot bind {from}: {e}"));
    socket.connect_timeout(&server.into(), Duration::from_secs(10)).expect("connects");
    let mut socket: std::net::TcpStream = socket.into();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = BytesMut::new();
    frame::put_request(&mut out, 1, 30_000, gateway_rpc::SERVICE_NAME, method, &body.encode_to_vec());
    socket.write_all(&out).unwrap();
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(answer) = frame::decode(&mut input, 1 << 20).unwrap() {
            assert_eq!(answer.kind, frame::Kind::Response, "{:?}", answer.body);
            return answer.into_result();
        }
        let n = socket.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection without answering");
        input.extend_from_slice(&chunk[..n]);
    }
}

fn login_from(
    from: IpAddr,
    server: SocketAddr,
    name: &str,
    password: &str,
) -> Result<api::LoginResponse, Status> {
    let request = api::LoginRequest { name: name.into(), password: password.into(), ..Default::default() };
    call_from(from, server, gateway_rpc::methods::LOGIN, &request)
        .map(|body| api::LoginResponse::decode(body).expect("a login response"))
}

fn register_from(from: IpAddr, server: SocketAddr, name: &str) -> Result<Bytes, Status> {
    let request = api::RegisterRequest { name: name.into(), password: PASSWORD.into(), ..Default::default() };
    call_from(from, server, gateway_rpc::methods::REGISTER, &request)
}

fn assert_code<T: std::fmt::Debug>(outcome: Result<T, Status>, code: Code, what: &str) -> Status {
    let status = outcome.expect_err(what);
    assert_eq!(status.code, code, "{what}: {status:?}");
    status
}

/// A name unique to this call.
fn name(base: &str) -> String {
    format!("{base}{:08x}", rand::random::<u32>())
}

/// Every case, on a system whose clients connect to `client` and whose user service
/// listens on `user_service` for callers with `secret`, both running with [`limits`].
fn cases(client: SocketAddr, user_service: SocketAddr, secret: &ClusterSecret) {
    a_wrong_password_storm_waits_and_the_right_password_is_accepted_after_it(client);
    logins_are_limited_per_client_address(client);
    registrations_are_limited_per_client_address(client);
    verify_login_on_the_user_service_port_is_throttled_too(client, user_service, secret);
    a_name_no_account_can_have_never_reaches_the_throttle(client);
}

/// Names over the limit (which Register enforces) are wrong at once: were they counted,
/// the throttle would keep each whole as a key, and the address's bucket would refuse
/// after `ADDRESS_LOGINS` attempts.
fn a_name_no_account_can_have_never_reaches_the_throttle(server: SocketAddr) {
    let from = fresh_address();
    let huge = "n".repeat(64 * 1024);
    for attempt in 0..ADDRESS_LOGINS + 3 {
        let outcome = login_from(from, server, &huge, PASSWORD);
        assert_code(outcome, Code::Unauthenticated, &format!("attempt {attempt} with a 64 KiB name"));
    }
}

fn a_wrong_password_storm_waits_and_the_right_password_is_accepted_after_it(server: SocketAddr) {
    let alice = name("alice");
    register_from(fresh_address(), server, &alice).expect("registers");
    let attacker = fresh_address();
    // The free failures and the one that starts the wait are checked, and wrong.
    for n in 0..=FREE_FAILURES {
        assert_code(
            login_from(attacker, server, &alice, "guess"),
            Code::Unauthenticated,
            &format!("guess {n}"),
        );
    }
    let refused =
        assert_code(login_from(attacker, server, &alice, "guess"), Code::ResourceExhausted, "storm");
    assert!(
        refused.message.contains("too many failed logins for this account; try again in "),
        "{refused:?}"
    );
    // During the back-off even the right password, from anywhere, is not checked.
    let early =
        assert_code(login_from(fresh_address(), server, &alice, PASSWORD), Code::ResourceExhausted, "early");
    assert!(early.message.contains("try again in 1 s"), "{early:?}");
    // Once it has passed, the right password is accepted, and clears the failures.
    wait_until(Duration::from_secs(15), "the right password is accepted after the back-off", || {
        match login_from(fresh_address(), server, &alice, PASSWORD) {
            Ok(login) => login.user.is_some(),
            Err(status) if status.code == Code::ResourceExhausted => false,
            Err(status) => panic!("the right password after the back-off: {status:?}"),
        }
    });
    assert_code(
        login_from(attacker, server, &alice, "guess"),
        Code::Unauthenticated,
        "cleared by the success",
    );
}

fn logins_are_limited_per_client_address(server: SocketAddr) {
    let sprayer = fresh_address();
    for n in 0..ADDRESS_LOGINS {
        let outcome = login_from(sprayer, server, &name("nobody"), "guess");
        assert_code(outcome, Code::Unauthenticated, &format!("attempt {n} from one address"));
    }
    let refused =
        assert_code(login_from(sprayer, server, &name("nobody"), "guess"), Code::ResourceExhausted, "spray");
    assert!(refused.message.contains("too many logins from this address; try again in "), "{refused:?}");
    // Another client is not held up by it.
    assert_code(
        login_from(fresh_address(), server, &name("nobody"), "guess"),
        Code::Unauthenticated,
        "other",
    );
}

fn registrations_are_limited_per_client_address(server: SocketAddr) {
    let farm = fresh_address();
    for n in 0..ADDRESS_REGISTRATIONS {
        register_from(farm, server, &name("farm")).unwrap_or_else(|e| panic!("registration {n}: {e:?}"));
    }
    let refused = assert_code(register_from(farm, server, &name("farm")), Code::ResourceExhausted, "farm");
    assert!(
        refused.message.contains("too many registrations from this address; try again in "),
        "{refused:?}"
    );
    register_from(fresh_address(), server, &name("farm")).expect("another address registers");
}

fn verify_login_on_the_user_service_port_is_throttled_too(
    server: SocketAddr,
    user_service: SocketAddr,
    secret: &ClusterSecret,
) {
    let bob = name("bob");
    register_from(fresh_address(), server, &bob).expect("registers");
    // A member of the cluster (a stranger is refused before any throttle: `internal_ports`).
    let config = client::Config { credential: Some(secret.credential()), ..client::Config::default() };
    let channel = Channel::connect(user_service, config).expect("reaches the user service");
    let users = UserServiceClient::new(channel).with_timeout(Duration::from_secs(30));
    let request = api::LoginRequest { name: bob.clone(), password: "guess".into(), ..Default::default() };
    for n in 0..=FREE_FAILURES {
        let error = users.verify_login(&request).expect_err("a wrong password");
        assert_eq!(error.code(), Code::Unauthenticated, "direct guess {n}: {error}");
    }
    let error = users.verify_login(&request).expect_err("throttled");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
    assert!(error.to_string().contains("try again in"), "{error}");
}

#[test]
fn the_standalone_system_throttles_logins_and_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let config = services::standalone::Config {
        throttle: limits(),
        hashing: auth::Config { memory_kib: 256, iterations: 1, parallelism: 1 },
        ..crate::chat_client::config(dir.path())
    };
    let system = Standalone::start(config).expect("standalone starts");
    let users = system.registry();
    let user_service = rpc_core::registry::Registry::instances(users, api::user_service_rpc::SERVICE_NAME)
        .expect("the in-process registry answers")[0]
        .addr;
    cases(system.client_addr(), user_service, system.cluster_secret());
}

#[test]
fn a_cluster_behind_nginx_throttles_each_client_address_with_counters_in_redis() {
    let shape = Shape { proxies: 2, user_services: 2, chat_services: 1, ..Shape::default() };
    let cluster = Cluster::up_with(shape, LIMITS_ENV);
    let user_service = cluster
        .state()
        .processes
        .iter()
        .find(|p| p.role == "user-service")
        .and_then(|p| p.addr)
        .expect("a user service with its address");
    cases(cluster.client_addr(), user_service, &cluster.cluster_secret());
}
