//! Resuming sessions on the real processes: a proxy killed with SIGKILL, and its users
//! back on the other proxy with their session tokens, without a password hash anywhere.
//!
//! The proxies and the chat service are `chatroom` processes on MariaDB, Redis and
//! ZooKeeper (see `chat_cluster`); the user service runs in the test, behind a wrapper
//! that counts its `VerifyLogin` calls, so the test can tell a resume from a login.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rpc_core::server::{self, Context, Service};
use rpc_core::{Code, Status};
use services::api::{self, user_service_rpc, UserServiceServer};
use services::store::MySql;
use services::user_service::UserService;
use services::{auth, serve};

use crate::chat_client::{code, connect, direct, PASSWORD};
use crate::chat_cluster::Cluster;
use crate::support::{mysql_url, unreachable, with_database};

/// A service that counts the calls of one method before passing each on.
struct Counting<S> {
    /// The service.
    inner: S,
    /// The method counted.
    method: &'static str,
    /// How many calls of it arrived.
    calls: Arc<AtomicUsize>,
}

impl<S: Service> Service for Counting<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn call(&self, ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        if method == self.method {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.call(ctx, method, body)
    }

    fn runs_inline(&self, method: &str) -> bool {
        self.inner.runs_inline(method)
    }

    fn is_heavy(&self, method: &str) -> bool {
        self.inner.is_heavy(method)
    }
}

#[test]
fn users_of_a_killed_proxy_resume_on_the_other_without_a_password_check() {
    let mut cluster = Cluster::new();
    // The user service first: it creates and migrates the cluster's database.
    let url = with_database(&mysql_url(), &cluster.database);
    let store = MySql::open(&url).unwrap_or_else(|e| unreachable("MariaDB", &url, &e));
    let cheap = auth::Config { memory_kib: 256, iterations: 1, parallelism: 1 };
    let verify_logins = Arc::new(AtomicUsize::new(0));
    let users = Counting {
        inner: UserServiceServer(UserService::new(Arc::new(store)).with_hashing(cheap)),
        method: user_service_rpc::methods::VERIFY_LOGIN,
        calls: verify_logins.clone(),
    };
    let registry = cluster.registry();
    let loopback = "127.0.0.1:0".parse().unwrap();
    // Like every internal port, it serves only callers proving the cluster's secret.
    let internal =
        server::Config { authenticator: Some(cluster.secret().authenticator()), ..server::Config::default() };
    let _users = serve(users, &registry, loopback, internal).unwrap();
    cluster.spawn("chat-service", &["chat-service", "--listen", "127.0.0.1:0"]);
    let proxy = ["proxy", "--listen", "127.0.0.1:0"];
    let a = cluster.spawn("proxy-a", &proxy);
    let b = cluster.spawn("proxy-b", &proxy);

    let login = |addr, name: &str| {
        let client = connect(addr);
        client.register(name);
        let request =
            api::LoginRequest { name: name.into(), password: PASSWORD.into(), ..Default::default() };
        let login = client.gateway.login(&request).expect("logs in");
        (client, login.user.unwrap(), login.session_token.expect("a token"))
    };
    let (alice_client, alice, _) = login(a, "alice");
    let (_bob_client, bob, bob_token) = login(b, "bob");
    let (_carol_client, carol, carol_token) = login(b, "carol");
    assert_eq!(verify_logins.load(Ordering::SeqCst), 3, "one password check per login");

    cluster.kill("proxy-b");
    alice_client.send(direct(&alice, &bob), "a-1", "sent while you were away").unwrap();

    // Bob and Carol come back through proxy A with their tokens alone.
    let resume = |token: &api::SessionToken| {
        let client = connect(a);
        let resumed = client.gateway.resume(&api::ResumeRequest { session_token: token.token.clone() });
        (client, resumed.expect("the token resumes the session"))
    };
    let (bob_again, resumed) = resume(&bob_token);
    assert_eq!(resumed.user.map(|u| u.id), Some(bob.id));
    let missed = resumed.conversations.iter().map(|c| c.unread).sum::<u64>();
    assert_eq!(missed, 1, "the login view counts what Bob missed");
    let (_carol_again, resumed) = resume(&carol_token);
    assert_eq!(resumed.user.map(|u| u.id), Some(carol.id));
    assert_eq!(verify_logins.load(Ordering::SeqCst), 3, "no password was checked to resume");

    // Bob syncs what he missed and is online for Alice again, on proxy A.
    let synced = bob_again.gateway.sync(&api::SyncRequest::default()).unwrap();
    let bodies: Vec<&str> = synced.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["sent while you were away"]);
    let find = api::FindUserRequest { user_id: bob.id, ..Default::default() };
    assert!(alice_client.gateway.find_user(&find).unwrap().user.unwrap().online);
    alice_client.send(direct(&alice, &bob), "a-2", "welcome back").unwrap();
    assert_eq!(bob_again.wait_messages(1)[0].body, "welcome back");

    // Logging out revokes Bob's token: it no longer resumes, with or without proxy B.
    bob_again.gateway.logout(&api::LogoutRequest {}).unwrap();
    let request = api::ResumeRequest { session_token: bob_token.token.clone() };
    assert_eq!(code(connect(a).gateway.resume(&request)), Code::Unauthenticated);
    assert_eq!(verify_logins.load(Ordering::SeqCst), 3);
}
