//! How the chat tests reach a running chat system: [`System`] (where clients connect and
//! a prefix for user names), a [`Client`] over a raw generated `Gateway` stub whose
//! pushes are collected through `on_push`, and small builders of requests.
//!
//! Shared by the integration tests of `services` and of `chatroom` (which include this
//! file by path), so that both drive systems the same way.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use rpc_core::client::{self, Channel};
use rpc_core::Code;
use services::api::{self, GatewayClient};
use services::auth;
use services::proxy::{PUSH_METHOD, PUSH_SERVICE};
use services::standalone;

use crate::support::wait_until;

pub const PASSWORD: &str = "correct horse battery";
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running chat system, as the scenarios see it: where clients connect, and a prefix
/// that makes this scenario's user names its own.
pub struct System {
    /// Where clients connect: a proxy, the standalone system's proxy, or nginx.
    addr: SocketAddr,
    /// Put before every user name (a letter, eight hex digits and `.`).
    prefix: String,
    /// Keeps the system running and cleans up after it (a temporary directory, a
    /// database) when the scenario ends; `()` for a shared system that outlives it.
    _guard: Box<dyn std::any::Any>,
}

pub fn config(dir: &std::path::Path) -> standalone::Config {
    standalone::Config {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        lease_ttl: Duration::from_secs(5),
        // Full-cost argon2 is slow in debug builds and proves nothing more here.
        hashing: auth::Config { memory_kib: 256, iterations: 1, parallelism: 1 },
        // The scenarios connect and log many users in from 127.0.0.1; the throttle and
        // the connection limit have tests of their own.
        throttle: services::throttle::Config::unlimited(),
        server: rpc_core::server::Config {
            max_connections_per_address: 0,
            ..standalone::Config::default().server
        },
        ..standalone::Config::default()
    }
}

/// A client connection with the pushes it received.
pub struct Client {
    /// The raw stub.
    pub gateway: GatewayClient,
    /// Every push received, in order.
    pub pushes: Arc<Mutex<Vec<api::push::Event>>>,
}

/// A client connected to the proxy at `addr`, collecting its pushes.
pub fn connect(addr: SocketAddr) -> Client {
    let pushes: Arc<Mutex<Vec<api::push::Event>>> = Arc::default();
    let sink = pushes.clone();
    let gateway = gateway_at(addr, move |event| sink.lock().unwrap().push(event));
    Client { gateway, pushes }
}

/// A raw stub connected to `addr` that hands every push to `on_event`, which runs on the
/// client's event-loop thread and so must not block.
pub fn gateway_at(
    addr: SocketAddr,
    on_event: impl Fn(api::push::Event) + Send + Sync + 'static,
) -> GatewayClient {
    let on_push = move |service: &str, method: &str, body: bytes::Bytes| {
        assert_eq!((service, method), (PUSH_SERVICE, PUSH_METHOD));
        let push = api::Push::decode(body).expect("a push decodes");
        on_event(push.event.expect("a push carries an event"));
    };
    let config = client::Config { on_push: Some(Arc::new(on_push)), ..client::Config::default() };
    let channel = Channel::connect(addr, config).expect("connects to the proxy");
    GatewayClient::new(channel).with_timeout(PATIENCE)
}

impl System {
    /// A system whose clients connect to `addr`; `guard` is dropped when the scenario
    /// ends (first, if it is a tuple, its first element).
    pub fn new(addr: SocketAddr, guard: Box<dyn std::any::Any>) -> System {
        let prefix = format!("u{:08x}.", rand::random::<u32>());
        System { addr, prefix, _guard: guard }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This scenario's name for the user called `base`.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    pub fn connect(&self) -> Client {
        connect(self.addr)
    }

    /// A registered and logged-in user called `base` (see [`System::name`]).
    pub fn user(&self, base: &str) -> (Client, api::User) {
        user_at(self.addr, &self.name(base))
    }

    /// Registers the user called `base` (see [`System::name`]) without logging in.
    pub fn register(&self, client: &Client, base: &str) -> api::User {
        client.register(&self.name(base))
    }
}

/// A user registered and logged in through the proxy at `addr`.
pub fn user_at(addr: std::net::SocketAddr, name: &str) -> (Client, api::User) {
    let client = connect(addr);
    client.register(name);
    let user = client.login(name).user.unwrap();
    (client, user)
}

impl Client {
    pub fn register(&self, name: &str) -> api::User {
        let request =
            api::RegisterRequest { name: name.into(), password: PASSWORD.into(), ..Default::default() };
        self.gateway.register(&request).expect("registers").user.unwrap()
    }

    pub fn login(&self, name: &str) -> api::LoginResponse {
        let request =
            api::LoginRequest { name: name.into(), password: PASSWORD.into(), ..Default::default() };
        self.gateway.login(&request).expect("logs in")
    }

    pub fn send(
        &self,
        to: api::Conversation,
        id: &str,
        body: &str,
    ) -> Result<api::SendMessageResponse, rpc_core::Error> {
        let request =
            api::SendMessageRequest { conversation: Some(to), client_msg_id: id.into(), body: body.into() };
        self.gateway.send_message(&request)
    }

    pub fn pushed_messages(&self) -> Vec<api::Message> {
        let pushes = self.pushes.lock().unwrap();
        pushes
            .iter()
            .filter_map(|e| match e {
                api::push::Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn wait_messages(&self, n: usize) -> Vec<api::Message> {
        wait_until(PATIENCE, &format!("{n} messages are pushed"), || self.pushed_messages().len() >= n);
        self.pushed_messages()
    }

    pub fn wait_push(&self, what: &str, mut matches: impl FnMut(&api::push::Event) -> bool) {
        wait_until(PATIENCE, what, || self.pushes.lock().unwrap().iter().any(&mut matches));
    }
}

pub fn direct(a: &api::User, b: &api::User) -> api::Conversation {
    let pair = api::DirectPair { low_user_id: a.id.min(b.id), high_user_id: a.id.max(b.id) };
    api::Conversation { kind: Some(api::conversation::Kind::Direct(pair)) }
}

/// A request for a public group: anyone joins it, with no invitation.
pub fn public_group(name: &str) -> api::CreateGroupRequest {
    api::CreateGroupRequest { name: name.into(), public: true, ..Default::default() }
}

pub fn group(id: u64) -> api::Conversation {
    api::Conversation { kind: Some(api::conversation::Kind::GroupId(id)) }
}

pub fn code<T: std::fmt::Debug>(result: Result<T, rpc_core::Error>) -> Code {
    result.expect_err("the call fails").code()
}

/// Logs `name` in on `client` with `password`, returning the session token.
pub fn login_with(client: &Client, name: &str, password: &str) -> api::SessionToken {
    let request = api::LoginRequest { name: name.into(), password: password.into(), ..Default::default() };
    let login = client.gateway.login(&request).expect("logs in");
    login.session_token.expect("a login gives a session token")
}

pub fn resume(client: &Client, token: &api::SessionToken) -> Result<api::LoginResponse, rpc_core::Error> {
    client.gateway.resume(&api::ResumeRequest { session_token: token.token.clone() })
}
