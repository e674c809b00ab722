//! End to end with two proxies and two instances of each service in one process (the
//! in-process registry and presence, one SQLite store): users on different proxies chat
//! one-to-one and in a group, with one delivery call per proxy, and a login on one proxy
//! kicks the session the user had on the other. A presence change made while no chat
//! service runs reaches the user's friends once one does, and the chat service drops an
//! announcement the presence table contradicts. A connection reset while its login runs
//! leaves no session and no lease behind. A resume is answered while every login thread
//! of the proxy waits for a password check.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use rpc_core::server::Service;

use rpc_core::registry;
use rpc_core::server;
use services::api::{
    self, chat_service_rpc, gateway_rpc, ChatServiceClient, ChatServiceServer, UserServiceServer,
};
use services::chat_service::ChatService;
use services::proxies::Proxies;
use services::user_service::UserService;
use services::{auth, presence, proxy, serve, store, Presence, Served, Store, UserId};

use crate::chat_client::{connect, direct, group, public_group, user_at, PASSWORD};
use crate::support::wait_until;

/// The whole cluster, in-process. Fields drop in order: proxies first.
struct Cluster {
    proxies: Vec<proxy::Running>,
    _services: Vec<Served>,
    _registry: registry::Memory,
    _dir: tempfile::TempDir,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// What the services of one in-process cluster share: a SQLite store, in-process
/// presence and registry.
struct Backends {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    presence: Arc<dyn Presence>,
    registry: registry::Memory,
}

impl Backends {
    fn new() -> Backends {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(store::Sqlite::open(dir.path().join("chat.db")).unwrap());
        Backends {
            dir,
            store,
            presence: Arc::new(presence::Memory::new()),
            registry: registry::Memory::new(),
        }
    }

    /// A user service with cheap password hashing, not yet served.
    fn user_service(&self) -> UserServiceServer<UserService> {
        let cheap = auth::Config { memory_kib: 256, iterations: 1, parallelism: 1 };
        UserServiceServer(UserService::new(self.store.clone()).with_hashing(cheap))
    }

    /// Serves `service` on loopback, registered in the registry.
    fn serve(&self, service: impl Service) -> Served {
        serve(service, &self.registry, loopback(), server::Config::default()).unwrap()
    }

    /// Serves a chat service.
    fn chat_service(&self) -> Served {
        let proxies = Proxies::discover(&self.registry).unwrap();
        self.serve(ChatServiceServer(ChatService::new(self.store.clone(), self.presence.clone(), proxies)))
    }
}

fn start() -> Cluster {
    let backends = Backends::new();
    let mut services = Vec::new();
    for _ in 0..2 {
        services.push(backends.serve(backends.user_service()));
        services.push(backends.chat_service());
    }
    let proxies = ["proxy-a", "proxy-b"]
        .into_iter()
        .map(|id| {
            let config = proxy::Config {
                instance_id: id.into(),
                lease_ttl: Duration::from_secs(5),
                ..proxy::Config::default()
            };
            let p = proxy::Proxy::new(config, &backends.registry, backends.presence.clone()).unwrap();
            proxy::serve(p, &backends.registry, loopback(), loopback(), server::Config::default()).unwrap()
        })
        .collect();
    Cluster { proxies, _services: services, _registry: backends.registry, _dir: backends.dir }
}

impl Cluster {
    fn addr(&self, proxy: usize) -> SocketAddr {
        self.proxies[proxy].client_addr()
    }
}

#[test]
fn users_on_different_proxies_chat_one_to_one_and_in_a_group() {
    let cluster = start();
    let (alice_client, alice) = user_at(cluster.addr(0), "alice");
    let (bob_client, bob) = user_at(cluster.addr(1), "bob");
    let (carol_client, _carol) = user_at(cluster.addr(1), "carol");

    alice_client.send(direct(&alice, &bob), "a-1", "hello from A").unwrap();
    assert_eq!(bob_client.wait_messages(1)[0].body, "hello from A");
    bob_client.send(direct(&alice, &bob), "b-1", "hello from B").unwrap();
    let got = alice_client.wait_messages(1);
    assert_eq!((got[0].seq, got[0].body.as_str()), (2, "hello from B"));

    let id = alice_client.gateway.create_group(&public_group("ab")).unwrap();
    let id = id.group.unwrap().id;
    for member in [&bob_client, &carol_client] {
        member.gateway.join_group(&api::JoinGroupRequest { group_id: id }).unwrap();
    }
    alice_client.send(group(id), "a-2", "to everyone").unwrap();
    assert_eq!(bob_client.wait_messages(2)[1].body, "to everyone");
    assert_eq!(carol_client.wait_messages(1)[0].body, "to everyone");
}

#[test]
fn a_login_on_one_proxy_kicks_the_session_on_the_other() {
    let cluster = start();
    let (first, bob) = user_at(cluster.addr(0), "bob");
    let second = connect(cluster.addr(1));
    assert!(second.login("bob").replaced_session);
    first.wait_push("the session on proxy A is kicked", |e| matches!(e, api::push::Event::Kicked(_)));
    assert!(cluster.proxies[0].proxy().sessions().is_empty());

    let (alice_client, alice) = user_at(cluster.addr(0), "alice");
    alice_client.send(direct(&alice, &bob), "a-1", "where are you?").unwrap();
    assert_eq!(second.wait_messages(1)[0].body, "where are you?");
}

#[test]
fn a_presence_change_made_while_no_chat_service_runs_reaches_friends_once_one_does() {
    let backends = Backends::new();
    let (presence, registry) = (&backends.presence, &backends.registry);
    let _users = backends.serve(backends.user_service());
    let chat = backends.chat_service();
    let config = proxy::Config {
        instance_id: "proxy-a".into(),
        sweep_every: Duration::from_millis(200),
        ..proxy::Config::default()
    };
    let p = proxy::Proxy::new(config, registry, presence.clone()).unwrap();
    let running = proxy::serve(p, registry, loopback(), loopback(), server::Config::default()).unwrap();
    let (alice_client, _) = user_at(running.client_addr(), "alice");
    let (bob_client, bob) = user_at(running.client_addr(), "bob");
    let add = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(bob.id)) };
    alice_client.gateway.add_friend(&add).unwrap();

    // The only chat service stops; bob leaves meanwhile, so nobody can tell alice yet.
    chat.shutdown();
    drop(bob_client);
    let proxy = running.proxy();
    wait_until(Duration::from_secs(10), "bob's offline announcement failed and waits", || {
        proxy.sessions().connection_of(UserId(bob.id)).is_none() && proxy.unannounced() == 1
    });
    // (Bob's "online" from his login may reach alice: she befriends him right after it.)
    let offline = |e: &api::push::Event| matches!(e, api::push::Event::Presence(p) if !p.online);
    assert!(
        !alice_client.pushes.lock().unwrap().iter().any(offline),
        "no offline push without a chat service"
    );

    // A chat service comes back: the proxy sends the announcement again.
    let _chat = backends.chat_service();
    alice_client.wait_push(
        "bob is offline",
        |e| matches!(e, api::push::Event::Presence(p) if p.user_id == bob.id && !p.online),
    );
    wait_until(Duration::from_secs(10), "nothing waits to be announced", || proxy.unannounced() == 0);
}

#[test]
fn the_chat_service_drops_a_presence_announcement_the_presence_table_contradicts() {
    let cluster = start();
    let chat = rpc_core::balance::Balanced::discover(
        &cluster._registry,
        chat_service_rpc::SERVICE_NAME,
        rpc_core::balance::Config::default(),
    )
    .map(ChatServiceClient::new)
    .unwrap();
    let (alice_client, _) = user_at(cluster.addr(0), "alice");
    let (_bob_client, bob) = user_at(cluster.addr(1), "bob");
    let carol = connect(cluster.addr(1)).register("carol");
    for friend in [bob.id, carol.id] {
        let add = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(friend)) };
        alice_client.gateway.add_friend(&add).unwrap();
    }
    let announce = |user: &api::User, online| {
        let call = api::AnnouncePresenceCall { user_id: user.id, online };
        chat.announce_presence(&call).unwrap().notified
    };

    // Bob holds a lease: an "offline" for him is stale (overtaken by his login).
    assert_eq!(announce(&bob, false), 0);
    // Carol holds none: an "online" for her is stale (overtaken by a logout).
    assert_eq!(announce(&carol, true), 0);
    // Announcements that agree with the table reach alice, the friend online.
    assert_eq!(announce(&bob, true), 1);
    assert_eq!(announce(&carol, false), 1);
    alice_client.wait_push(
        "carol's offline",
        |e| matches!(e, api::push::Event::Presence(p) if p.user_id == carol.id && !p.online),
    );
    let pushes = alice_client.pushes.lock().unwrap();
    let stale = |e: &&api::push::Event| {
        matches!(e, api::push::Event::Presence(p)
            if (p.user_id == bob.id && !p.online) || (p.user_id == carol.id && p.online))
    };
    assert_eq!(pushes.iter().filter(stale).count(), 0, "no stale presence reached alice: {pushes:?}");
}

/// (open, calls that reached it, calls that ended) and its signal.
type Gate = Arc<(Mutex<(bool, usize, usize)>, Condvar)>;

/// A service whose calls of one method wait at a gate until the test opens it, and are
/// counted when they end.
struct Held<S> {
    inner: S,
    method: &'static str,
    gate: Gate,
}

impl<S: Service> Held<S> {
    fn new(inner: S, method: &'static str) -> (Self, Gate) {
        let gate = Arc::new((Mutex::new((false, 0, 0)), Condvar::new()));
        (Held { inner, method, gate: gate.clone() }, gate)
    }
}

impl<S: Service> Service for Held<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn call(&self, ctx: &server::Context, method: &str, body: Bytes) -> Result<Bytes, rpc_core::Status> {
        if method != self.method {
            return self.inner.call(ctx, method, body);
        }
        let (state, changed) = &*self.gate;
        {
            let mut st = state.lock().unwrap();
            st.1 += 1;
            while !st.0 {
                st = changed.wait(st).unwrap();
            }
        }
        let result = self.inner.call(ctx, method, body);
        state.lock().unwrap().2 += 1;
        result
    }
}

#[test]
fn a_connection_reset_while_its_login_runs_leaves_nobody_online() {
    let backends = Backends::new();
    let (presence, registry) = (&backends.presence, &backends.registry);
    let (users, checking) = Held::new(backends.user_service(), "VerifyLogin");
    let _users = backends.serve(users);
    let _chat = backends.chat_service();
    // The proxy's client listener as `proxy::serve` builds it, with its disconnects
    // reported and its logins counted when they end.
    let config = proxy::Config { instance_id: "proxy-a".into(), ..proxy::Config::default() };
    let proxy = proxy::Proxy::new(config, registry, presence.clone()).unwrap();
    let (gateway, logins) = Held::new(api::GatewayServer(proxy.clone()), "Login");
    logins.0.lock().unwrap().0 = true;
    let (disconnected, disconnects) = std::sync::mpsc::channel();
    let hook = proxy.clone();
    let client = server::Builder::new(server::Config::default())
        .service(gateway)
        .on_disconnect(move |connection| {
            hook.disconnected(connection);
            let _ = disconnected.send(connection);
        })
        .bind(loopback())
        .unwrap();
    let alice = connect(client.local_addr()).register("alice");

    // A raw client asks to log in and, while the password is checked, resets the
    // connection (SO_LINGER 0). The proxy ends the connection at once (a reset, unlike a
    // half-close, does not wait for its calls), before the login has bound a session.
    let mut raw = TcpStream::connect(client.local_addr()).unwrap();
    let login = api::LoginRequest { name: "alice".into(), password: PASSWORD.into(), ..Default::default() };
    let mut frame = BytesMut::new();
    rpc_core::frame::put_request(
        &mut frame,
        1,
        0,
        gateway_rpc::SERVICE_NAME,
        "Login",
        &login.encode_to_vec(),
    );
    raw.write_all(&frame).unwrap();
    wait_until(Duration::from_secs(10), "the password is being checked", || {
        checking.0.lock().unwrap().1 == 1
    });
    socket2::SockRef::from(&raw).set_linger(Some(Duration::ZERO)).unwrap();
    drop(raw);
    disconnects.recv_timeout(Duration::from_secs(10)).expect("the proxy sees the reset");
    assert!(proxy.sessions().is_empty());

    // Now the login goes on, on a connection that is gone.
    checking.0.lock().unwrap().0 = true;
    checking.1.notify_all();
    wait_until(Duration::from_secs(10), "the login ended", || logins.0.lock().unwrap().2 == 1);
    assert!(proxy.sessions().is_empty(), "no session on a closed connection");
    assert_eq!(presence.lookup(&[UserId(alice.id)]).unwrap(), [None], "no lease for alice");
}

/// Register and Login wait on the proxy's logins lane, Resume on a lane of its own: with
/// every login thread held at a password check and more logins waiting behind them, a
/// user coming back with a session token is answered at once.
#[test]
fn a_resume_is_answered_while_every_login_thread_waits_for_a_password_check() {
    let backends = Backends::new();
    let (users, checking) = Held::new(backends.user_service(), "VerifyLogin");
    checking.0.lock().unwrap().0 = true;
    // Workers to spare, so that the held checks leave the user service room for the resume.
    let many = server::Config { workers: 16, ..server::Config::default() };
    let _users = serve(users, &backends.registry, loopback(), many).unwrap();
    let _chat = backends.chat_service();
    let config = proxy::Config { instance_id: "proxy-a".into(), ..proxy::Config::default() };
    let p = proxy::Proxy::new(config, &backends.registry, backends.presence.clone()).unwrap();
    let proxy =
        proxy::serve(p, &backends.registry, loopback(), loopback(), server::Config::default()).unwrap();
    let addr = proxy.client_addr();
    let alice = connect(addr);
    alice.register("alice");
    let token = alice.login("alice").session_token.expect("a token");
    let flooders: Vec<String> = (0..proxy::LOGIN_THREADS + 2).map(|i| format!("flood-{i}")).collect();
    for name in &flooders {
        connect(addr).register(name);
    }

    // Password checks now wait at the gate: each login holds a thread of the lane.
    checking.0.lock().unwrap().0 = false;
    let logins: Vec<_> =
        flooders.into_iter().map(|name| std::thread::spawn(move || connect(addr).login(&name))).collect();
    wait_until(Duration::from_secs(20), "every login thread to hold a password check", || {
        checking.0.lock().unwrap().1 >= proxy::LOGIN_THREADS
    });
    let resumed = connect(addr).gateway.resume(&api::ResumeRequest { session_token: token.token });
    assert_eq!(resumed.expect("resumes while the logins wait").user.unwrap().name, "alice");

    // The logins waiting behind the held ones all get in once the checks go on.
    {
        let (state, changed) = &*checking;
        state.lock().unwrap().0 = true;
        changed.notify_all();
    }
    for login in logins {
        assert!(login.join().unwrap().session_token.is_some());
    }
}
