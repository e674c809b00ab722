//! The proxy (gateway): the rpc-core server clients connect to.
//!
//! It is the only place where a connection becomes a user: every `Gateway` call but
//! `Register`, `Login` and `Resume` looks the caller up by its connection and fails with
//! Unauthenticated when there is no session, and every call it forwards to the user and
//! chat services (through load-balanced stubs over the instances found in the registry)
//! carries the session's user id, never one the client sent.
//!
//! It also serves `Delivery` to the chat service, on a second, internal listener
//! registered under the proxy's instance id, and pushes what it is given to its clients
//! as [`api::Push`] frames named [`PUSH_SERVICE`]/[`PUSH_METHOD`].
//!
//! Presence: [`Sessions`] owns the session table (connection <-> user), the presence
//! leases the sessions stand on and the presence announcements for the chat service, and
//! says in its module head how it orders them without holding a lock across a presence
//! round trip. A login claims the user's lease for this proxy; a thread ([`Renewal`])
//! renews the leases of all sessions every third of the TTL (and within a sweep period
//! after a renewal failed or the connection to the presence table broke), taking back
//! the leases nobody holds any more (a presence backend that restarted empty); logout
//! or a closed connection releases the lease. The same thread sweeps the presence table every
//! [`Config::sweep_every`] for leases that lapsed, whichever proxy held them (one that
//! crashed never says goodbye), and tells those users' friends they went offline; the
//! table hands each lapsed lease to exactly one sweeping proxy. A presence announcement
//! the chat service could not take (no instance, a lost connection, a timeout) is sent
//! again on the same timer. One session per user: a second login replaces the first,
//! which receives `Kicked` and is closed, on this proxy or, through `Delivery.Kick`, on
//! the proxy that held it.
//!
//! Shutdown ([`Running::shutdown`]) is graceful: the proxy leaves the registry first, then
//! refuses new work, ends every session (releasing its lease and telling the user's
//! friends at once, rather than after the lease), and stops its servers, which tell their
//! clients to go away and finish the calls in flight.
//!
//! The parts: [`sessions`] (the state), [`announcements`] (the record of announcements
//! in flight), `gateway` and `delivery` (the two services, forwarding to [`Sessions`] and
//! to the service stubs), `tokens` (each session's token, for `Logout` to revoke),
//! `kicks` (the thread that kicks sessions replaced on other proxies, so that no worker
//! waits on a crashed one), `renewal` (the thread) and `running` (serving and shutdown).

pub mod announcements;
mod delivery;
mod gateway;
mod kicks;
mod renewal;
mod running;
pub mod sessions;
mod tokens;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::balance::{self, Balanced};
use rpc_core::client;
use rpc_core::registry::Registry;
use rpc_core::server::{ConnectionId, Context};
use rpc_core::{Code, Status};

use crate::api::{self, chat_service_rpc, gateway_rpc, user_service_rpc};
use crate::api::{ChatServiceClient, UserServiceClient};
use crate::ids::UserId;
use crate::proxies::Proxies;
use crate::secret::ClusterSecret;
use crate::throttle::{self, Throttle as _};
use crate::Presence;

use self::announcements::{Announcement, Announcer, Settle};

pub use self::renewal::Renewal;
pub use self::running::{
    gateway_config, serve, Running, GATEWAY_MAX_REQUEST, GATEWAY_WORKER_FACTOR, LOGINS_LANE, LOGIN_THREADS,
    MAX_LOGINS_WAITING, MAX_RESUMES_WAITING, OPENINGS_WAITING_PER_CONNECTION, RESUMES_LANE, RESUME_THREADS,
};
pub use self::sessions::Sessions;

/// The service name of the push frames a proxy sends its clients.
pub const PUSH_SERVICE: &str = gateway_rpc::SERVICE_NAME;
/// The method name of the push frames a proxy sends its clients; the body is an
/// [`api::Push`].
pub const PUSH_METHOD: &str = "Push";

/// How many lapsed leases one sweep call takes, and how many failed announcements one
/// retry sends; a sweep calls again while they come back full.
const SWEEP_BATCH: usize = 500;
/// What a call on a proxy that is shutting down is told.
const SHUTTING_DOWN: &str = "the proxy is shutting down; connect again";

/// Connections one client address may hold open on a proxy's client port (the
/// `chatroom` binary's `--max-connections-per-address`, and nginx's in a cluster;
/// rpc-core's `server::Config::max_connections_per_address`). A chat client holds one
/// connection, so this leaves room for an office, a campus or a café of 256 people
/// behind one NAT address, and still keeps one host from taking the thousands of
/// connections (file descriptors, nginx's `worker_connections`) that everyone else
/// needs: filling a proxy's 65,536 descriptors now takes 256 addresses. Carrier-grade
/// NAT can put more people behind one address; an operator who serves them raises it.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// Settings of a proxy.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proxy's name in the registry and in the presence table; unique per process.
    pub instance_id: String,
    /// How long a user's presence lease lasts without renewal: how long the users of a
    /// crashed proxy still look online.
    pub lease_ttl: Duration,
    /// Deadline of each call to the user and chat services.
    pub call_timeout: Duration,
    /// At shutdown, how long to wait for the chat service to take the offline
    /// announcements of the sessions being ended.
    pub shutdown_timeout: Duration,
    /// How often to sweep the presence table for lapsed leases and announce their users
    /// offline: friends of a crashed proxy's users hear of it within `lease_ttl` plus
    /// this.
    pub sweep_every: Duration,
    /// The cluster secret: proved on every channel to the user service, the chat service
    /// and the other proxies, and required of every caller of this proxy's `Delivery`
    /// listener. `None` (the default) proves and requires nothing, for services that
    /// require nothing either.
    pub cluster_secret: Option<ClusterSecret>,
    /// Messages and other changes one user may make (`SendMessage`, and the calls that
    /// change friends and groups): `burst` at once, then one more each `every`; past it
    /// the call is refused with ResourceExhausted, changing nothing. A burst of 0 turns
    /// the limit off. A user has one session, on one proxy, so the proxy counts alone, in
    /// memory: a user who moves to another proxy (a new session there) starts with a
    /// full bucket there. By default `throttle::Config`'s.
    pub writes: throttle::Bucket,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance_id: format!("proxy-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            lease_ttl: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            sweep_every: Duration::from_secs(1),
            cluster_secret: None,
            writes: throttle::Config::default().writes,
        }
    }
}

/// The proxy's state, shared by its servers' worker threads; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    /// Shared by the clones, weakly by the renewal thread.
    inner: Arc<Inner>,
}

struct Inner {
    /// Settings.
    config: Config,
    /// Sessions, their leases and the presence announcements.
    sessions: Sessions,
    /// The user service instances.
    users: UserServiceClient<Balanced>,
    /// The chat service instances.
    chat: ChatServiceClient<Balanced>,
    /// The lease table, read for the contacts' online state.
    presence: Arc<dyn Presence>,
    /// Kicks of sessions on other proxies that logins here replaced.
    kicks: kicks::Kicks,
    /// The session token of each connection's session, for `Logout` to revoke.
    tokens: tokens::Tokens,
    /// Set when shutdown starts: every call is refused with Unavailable from then on, so
    /// no session starts while the proxy ends them.
    closing: AtomicBool,
    /// What each user changed lately, for `Config::writes`.
    writes: throttle::Memory,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .field("sessions", &self.inner.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy calling the user and chat services found in `registry`.
    ///
    /// # Errors
    ///
    /// When the registry cannot be watched.
    pub fn new(
        config: Config,
        registry: &dyn Registry,
        presence: Arc<dyn Presence>,
    ) -> Result<Self, rpc_core::Error> {
        let credential = config.cluster_secret.as_ref().map(ClusterSecret::credential);
        let balance_config = balance::Config {
            channel: client::Config { credential: credential.clone(), ..client::Config::default() },
            ..balance::Config::default()
        };
        let balanced = |service| Balanced::discover(registry, service, balance_config.clone());
        let users = UserServiceClient::new(balanced(user_service_rpc::SERVICE_NAME)?)
            .with_timeout(config.call_timeout);
        let chat = ChatServiceClient::new(balanced(chat_service_rpc::SERVICE_NAME)?)
            .with_timeout(config.call_timeout);
        let proxies = Arc::new(Proxies::discover(registry)?.with_credential(credential));
        let kicks = kicks::Kicks::start(proxies, config.instance_id.clone()).map_err(rpc_core::Error::Io)?;
        let leases = sessions::Config { owner: config.instance_id.clone(), lease_ttl: config.lease_ttl };
        let sessions = Sessions::new(leases, presence.clone(), Box::new(ToChatService(chat.clone())));
        let inner = Inner {
            config,
            sessions,
            users,
            chat,
            presence,
            kicks,
            tokens: tokens::Tokens::default(),
            closing: AtomicBool::new(false),
            writes: throttle::Memory::new(),
        };
        Ok(Proxy { inner: Arc::new(inner) })
    }

    /// The proxy's instance id.
    pub fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }

    /// The cluster secret its `Delivery` listener requires, if any.
    pub fn cluster_secret(&self) -> Option<&ClusterSecret> {
        self.inner.config.cluster_secret.as_ref()
    }

    /// The sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// Ends the session on a connection that closed, as a logout would, but leaves its
    /// session token working: the client resumes with it.
    pub fn disconnected(&self, connection: ConnectionId) {
        self.inner.tokens.remove(connection);
        self.inner.sessions.end(connection);
    }

    /// Starts shutting down: from now on every client call is refused with Unavailable.
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
    }

    /// Whether [`Proxy::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// Ends every session, as a logout would but leaving the connections open: releases
    /// each lease this proxy still holds and tells the user's friends they went offline,
    /// then waits until the chat service has taken every announcement (at most
    /// `Config::shutdown_timeout`). Returns how many sessions it ended.
    pub fn end_all_sessions(&self) -> usize {
        let inner = &self.inner;
        let ended = inner.sessions.end_all(inner.config.shutdown_timeout);
        let failed = inner.sessions.unannounced();
        if failed > 0 {
            // Their friends learn the truth when they next log in.
            tracing::warn!(failed, "presence announcements the chat service did not take at shutdown");
        }
        ended
    }

    /// Renews the leases of every session once, takes back those nobody holds, and ends
    /// the sessions whose lease another proxy holds ([`Sessions::renew`]). Returns
    /// whether the renewal reached the presence table.
    pub fn renew_leases(&self) -> bool {
        match self.inner.sessions.renew() {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "lease renewal failed; trying again soon");
                false
            }
        }
    }

    /// How many times the connection to the presence table broke ([`Presence::breaks`]).
    pub fn presence_breaks(&self) -> u64 {
        self.inner.presence.breaks()
    }

    /// Takes the leases that lapsed in the presence table and announces their users
    /// offline ([`Sessions::sweep`]), 500 at a time, for at most `Config::sweep_every`
    /// (and at most a sixth of the lease TTL, so that renewal on the same thread stays on
    /// time). Returns how many users it announced.
    pub fn sweep_lapsed_leases(&self) -> usize {
        let config = &self.inner.config;
        let until = Instant::now() + config.sweep_every.min(config.lease_ttl / 6);
        self.inner.sessions.sweep(SWEEP_BATCH, until)
    }

    /// How many presence announcements failed and wait to be sent again.
    pub fn unannounced(&self) -> usize {
        self.inner.sessions.unannounced()
    }

    /// Sends again up to 500 presence announcements that failed for a reason that may
    /// pass, only the newest per user. Returns how many it sent.
    pub fn retry_announcements(&self) -> usize {
        self.inner.sessions.retry(SWEEP_BATCH)
    }

    /// The session's user; Unauthenticated without one, Unavailable while shutting down.
    fn session(&self, ctx: &Context) -> Result<UserId, Status> {
        self.open()?;
        self.inner
            .sessions
            .user_of(ctx.connection().id())
            .ok_or_else(|| Status::unauthenticated("log in first"))
    }

    /// The user of the call's session, as [`Proxy::session`], for a call that changes
    /// something: counted against `Config::writes`, and ResourceExhausted, naming the
    /// wait, when the user has made too many changes lately.
    fn writer(&self, ctx: &Context) -> Result<UserId, Status> {
        let user = self.session(ctx)?;
        let bucket = self.inner.config.writes;
        if bucket.burst == 0 {
            return Ok(user);
        }
        // Once the bucket is full again the user is as new: nothing to remember.
        let full_after = bucket.every.saturating_mul(bucket.burst);
        match self.inner.writes.take(&user.0.to_string(), &bucket, full_after) {
            Ok(None) => Ok(user),
            Ok(Some(wait)) => {
                Err(throttle::Refusal::Wait { what: "too many messages and changes from this user", wait }
                    .into())
            }
            Err(error) => Err(throttle::Refusal::Unavailable(error.to_string()).into()),
        }
    }

    /// Unavailable once the proxy is shutting down.
    fn open(&self) -> Result<(), Status> {
        if self.is_closing() {
            return Err(Status::unavailable(SHUTTING_DOWN));
        }
        Ok(())
    }
}

/// Sends presence announcements to the chat service, which tells the user's friends.
struct ToChatService(ChatServiceClient<Balanced>);

impl Announcer for ToChatService {
    fn announce(&self, announcement: Announcement, settle: Settle) {
        let Announcement { user, online, .. } = announcement;
        let call = api::AnnouncePresenceCall { user_id: user.0, online };
        self.0.announce_presence_with(&call, move |outcome| {
            let retry = outcome.err().is_some_and(|error| {
                let passing = matches!(
                    error.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                );
                tracing::debug!(%user, online, %error, retry = passing, "presence announcement failed");
                passing
            });
            settle.done(retry);
        });
    }
}
