//! The proxy (gateway): the rpc-core server clients connect to.
//!
//! It is the only place where a connection becomes a user: every `Gateway` call but
//! `Register` and `Login` looks the caller up by its connection and fails with
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
//! renews the leases of all sessions every third of the TTL; logout or a closed
//! connection releases the lease. The same thread sweeps the presence table every
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

pub mod announcements;
pub mod sessions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use rpc_core::balance::{self, Balanced};
use rpc_core::registry::{Instance, Registration, Registry};
use rpc_core::server::{self, Builder, Connection, ConnectionId, Context, Handle};
use rpc_core::{Code, Status};

use crate::api::{self, chat_service_rpc, delivery_rpc, gateway_rpc, user_service_rpc};
use crate::api::{ChatServiceClient, UserServiceClient};
use crate::convert::{presence_status, rpc_status};
use crate::ids::UserId;
use crate::proxies::Proxies;
use crate::served::Traced;
use crate::Presence;

use self::announcements::{Announcement, Announcer, Settle};
use self::sessions::{LoginError, REPLACED};

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance_id: format!("proxy-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            lease_ttl: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            sweep_every: Duration::from_secs(1),
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
    /// The other proxies, to kick a session one of them holds.
    proxies: Proxies,
    /// Set when shutdown starts: every call is refused with Unavailable from then on, so
    /// no session starts while the proxy ends them.
    closing: AtomicBool,
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
        let balanced = |service| Balanced::discover(registry, service, balance::Config::default());
        let users = UserServiceClient::new(balanced(user_service_rpc::SERVICE_NAME)?)
            .with_timeout(config.call_timeout);
        let chat = ChatServiceClient::new(balanced(chat_service_rpc::SERVICE_NAME)?)
            .with_timeout(config.call_timeout);
        let proxies = Proxies::discover(registry)?;
        let leases = sessions::Config { owner: config.instance_id.clone(), lease_ttl: config.lease_ttl };
        let sessions = Sessions::new(leases, presence.clone(), Box::new(ToChatService(chat.clone())));
        let inner =
            Inner { config, sessions, users, chat, presence, proxies, closing: AtomicBool::new(false) };
        Ok(Proxy { inner: Arc::new(inner) })
    }

    /// The proxy's instance id.
    pub fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }

    /// The sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// Ends the session on a connection that closed, as a logout would.
    pub fn disconnected(&self, connection: ConnectionId) {
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

    /// Renews the leases of every session once, and ends the sessions whose lease this
    /// proxy no longer holds.
    pub fn renew_leases(&self) {
        self.inner.sessions.renew();
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

impl Proxy {
    /// `users` with their online state.
    fn contacts(&self, users: Vec<api::User>) -> Result<Vec<api::Contact>, Status> {
        let ids: Vec<UserId> = users.iter().map(|u| UserId(u.id)).collect();
        let online = if ids.is_empty() {
            Vec::new()
        } else {
            self.inner.presence.lookup(&ids).map_err(presence_status)?
        };
        Ok(users
            .into_iter()
            .zip(online)
            .map(|(user, at)| api::Contact { user: Some(user), online: at.is_some() })
            .collect())
    }

    fn contact(&self, user: Option<api::User>) -> Result<Option<api::Contact>, Status> {
        Ok(self.contacts(user.into_iter().collect())?.pop())
    }

    /// What a client sees right after logging in.
    fn login_view(&self, user: api::User, replaced_session: bool) -> Result<api::LoginResponse, Status> {
        let call = api::UserCall { user_id: user.id };
        let friends = self.inner.users.list_friends(&call).map_err(rpc_status)?.users;
        let friends = self.contacts(friends)?;
        let mut groups = Vec::new();
        for g in self.inner.users.list_groups_with_members(&call).map_err(rpc_status)?.groups {
            groups.push(api::GroupDetail { group: g.group, members: self.contacts(g.members)? });
        }
        let conversations = self.inner.chat.conversations(&call).map_err(rpc_status)?.conversations;
        Ok(api::LoginResponse { user: Some(user), friends, groups, conversations, replaced_session })
    }

    /// Asks proxy `other`, whose lease on `user` a login here took over, to kick its
    /// session; without waiting.
    fn kick_elsewhere(&self, user: UserId, other: String) {
        let Some(client) = self.inner.proxies.client(&other) else {
            tracing::debug!(%user, proxy = %other, "previous proxy is gone");
            return;
        };
        let request = api::KickRequest {
            user_id: user.0,
            new_proxy_id: self.inner.config.instance_id.clone(),
            reason: REPLACED.to_owned(),
        };
        client.kick_with(&request, move |outcome| {
            if let Err(error) = outcome {
                tracing::warn!(%user, proxy = %other, %error, "cannot kick the previous session");
            }
        });
    }
}

impl gateway_rpc::Gateway for Proxy {
    fn register(
        &self,
        _ctx: &Context,
        request: api::RegisterRequest,
    ) -> Result<api::RegisterResponse, Status> {
        self.open()?;
        self.inner.users.register(&request).map_err(rpc_status)
    }

    fn login(&self, ctx: &Context, request: api::LoginRequest) -> Result<api::LoginResponse, Status> {
        self.open()?;
        let sessions = &self.inner.sessions;
        let connection = ctx.connection();
        // A login on a connection that already has a session ends that session first.
        sessions.end(connection.id());
        let user = self.inner.users.verify_login(&request).map_err(rpc_status)?.user;
        let user =
            user.ok_or_else(|| Status::internal("the user service answered a login without a user"))?;
        let id = UserId(user.id);
        let login = sessions.login(id, connection).map_err(|error| match error {
            LoginError::Closed => Status::unavailable("the connection closed during the login"),
            LoginError::Presence(error) => presence_status(error),
        })?;
        if let Some(other) = login.elsewhere.clone() {
            self.kick_elsewhere(id, other);
        }
        match self.login_view(user, login.replaced) {
            Ok(view) => {
                tracing::info!(user = %id, connection = %connection.id(), replaced = login.replaced, "logged in");
                sessions.announce_online(&login);
                Ok(view)
            }
            Err(status) => {
                sessions.end(connection.id());
                Err(status)
            }
        }
    }

    fn logout(&self, ctx: &Context, _request: api::LogoutRequest) -> Result<api::LogoutResponse, Status> {
        self.session(ctx)?;
        self.inner.sessions.end(ctx.connection().id());
        Ok(api::LogoutResponse {})
    }

    fn find_user(
        &self,
        ctx: &Context,
        request: api::FindUserRequest,
    ) -> Result<api::FindUserResponse, Status> {
        self.session(ctx)?;
        let found = self.inner.users.find_user(&request).map_err(rpc_status)?.user;
        Ok(api::FindUserResponse { user: self.contact(found)? })
    }

    fn add_friend(
        &self,
        ctx: &Context,
        request: api::AddFriendRequest,
    ) -> Result<api::AddFriendResponse, Status> {
        let user_id = self.session(ctx)?.0;
        let call = api::AddFriendCall { user_id, request: Some(request) };
        let friend = self.inner.users.add_friend(&call).map_err(rpc_status)?.friend;
        Ok(api::AddFriendResponse { friend: self.contact(friend)? })
    }

    fn remove_friend(
        &self,
        ctx: &Context,
        request: api::RemoveFriendRequest,
    ) -> Result<api::RemoveFriendResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner
            .users
            .remove_friend(&api::RemoveFriendCall { user_id, request: Some(request) })
            .map_err(rpc_status)
    }

    fn list_friends(
        &self,
        ctx: &Context,
        _request: api::ListFriendsRequest,
    ) -> Result<api::ListFriendsResponse, Status> {
        let user_id = self.session(ctx)?.0;
        let friends = self.inner.users.list_friends(&api::UserCall { user_id }).map_err(rpc_status)?.users;
        Ok(api::ListFriendsResponse { friends: self.contacts(friends)? })
    }

    fn create_group(
        &self,
        ctx: &Context,
        request: api::CreateGroupRequest,
    ) -> Result<api::CreateGroupResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner
            .users
            .create_group(&api::CreateGroupCall { user_id, request: Some(request) })
            .map_err(rpc_status)
    }

    fn join_group(
        &self,
        ctx: &Context,
        request: api::JoinGroupRequest,
    ) -> Result<api::JoinGroupResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner
            .users
            .join_group(&api::JoinGroupCall { user_id, request: Some(request) })
            .map_err(rpc_status)
    }

    fn leave_group(
        &self,
        ctx: &Context,
        request: api::LeaveGroupRequest,
    ) -> Result<api::LeaveGroupResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner
            .users
            .leave_group(&api::LeaveGroupCall { user_id, request: Some(request) })
            .map_err(rpc_status)
    }

    fn list_groups(
        &self,
        ctx: &Context,
        _request: api::ListGroupsRequest,
    ) -> Result<api::ListGroupsResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner.users.list_groups(&api::UserCall { user_id }).map_err(rpc_status)
    }

    fn group_members(
        &self,
        ctx: &Context,
        request: api::GroupMembersRequest,
    ) -> Result<api::GroupMembersResponse, Status> {
        let user_id = self.session(ctx)?.0;
        let call = api::GroupMembersCall { user_id, request: Some(request) };
        let members = self.inner.users.group_members(&call).map_err(rpc_status)?.users;
        Ok(api::GroupMembersResponse { members: self.contacts(members)? })
    }

    fn send_message(
        &self,
        ctx: &Context,
        request: api::SendMessageRequest,
    ) -> Result<api::SendMessageResponse, Status> {
        let sender_id = self.session(ctx)?.0;
        self.inner.chat.send(&api::SendCall { sender_id, request: Some(request) }).map_err(rpc_status)
    }

    fn history(&self, ctx: &Context, request: api::HistoryRequest) -> Result<api::HistoryResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner.chat.history(&api::HistoryCall { user_id, request: Some(request) }).map_err(rpc_status)
    }

    fn sync(&self, ctx: &Context, request: api::SyncRequest) -> Result<api::SyncResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner.chat.sync(&api::SyncCall { user_id, request: Some(request) }).map_err(rpc_status)
    }

    fn ack(&self, ctx: &Context, request: api::AckRequest) -> Result<api::AckResponse, Status> {
        let user_id = self.session(ctx)?.0;
        self.inner.chat.ack(&api::AckCall { user_id, request: Some(request) }).map_err(rpc_status)
    }
}

impl Proxy {
    /// Pushes `event` to each of `users` that has a session here, encoding it once; returns
    /// those who have none or whose push failed.
    fn push_to_all(&self, users: Vec<u64>, event: api::push::Event) -> Vec<u64> {
        let body = api::Push { event: Some(event) }.encode_to_vec();
        users
            .into_iter()
            .filter(|&user| match self.inner.sessions.connection_of(UserId(user)) {
                Some(connection) => !push_encoded(&connection, &body),
                None => true,
            })
            .collect()
    }
}

impl delivery_rpc::Delivery for Proxy {
    fn deliver_batch(
        &self,
        _ctx: &Context,
        request: api::DeliverBatchRequest,
    ) -> Result<api::DeliverBatchResponse, Status> {
        let message = request.message.ok_or_else(|| Status::invalid_argument("no message to deliver"))?;
        let not_connected = self.push_to_all(request.user_ids, api::push::Event::Message(message));
        Ok(api::DeliverBatchResponse { not_connected })
    }

    fn notify_presence(
        &self,
        _ctx: &Context,
        request: api::PresenceBatchRequest,
    ) -> Result<api::PresenceBatchResponse, Status> {
        let change =
            request.change.ok_or_else(|| Status::invalid_argument("no presence change to deliver"))?;
        let not_connected = self.push_to_all(request.user_ids, api::push::Event::Presence(change));
        Ok(api::PresenceBatchResponse { not_connected })
    }

    fn kick(&self, _ctx: &Context, request: api::KickRequest) -> Result<api::KickResponse, Status> {
        let user = UserId(request.user_id);
        let kicked = self
            .inner
            .sessions
            .kick_stale(user, &request.new_proxy_id, &request.reason)
            .map_err(presence_status)?;
        Ok(api::KickResponse { kicked })
    }
}

/// Tells a connection why its session ends, then closes it.
pub(crate) fn kick(connection: &Connection, reason: &str) {
    let event = api::push::Event::Kicked(api::Kicked { reason: reason.to_owned() });
    push_encoded(connection, &api::Push { event: Some(event) }.encode_to_vec());
    connection.close();
}

/// Pushes an encoded `Push` to a connection; false when it could not be queued.
fn push_encoded(connection: &Connection, body: &[u8]) -> bool {
    match connection.push(PUSH_SERVICE, PUSH_METHOD, body) {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(connection = %connection.id(), %error, "push failed");
            false
        }
    }
}

impl Proxy {
    /// Starts the thread that renews leases every third of the lease TTL and sweeps
    /// lapsed leases every [`Config::sweep_every`], until the returned [`Renewal`] is
    /// dropped.
    ///
    /// # Errors
    ///
    /// When the thread cannot be spawned.
    pub fn start_renewal(&self) -> std::io::Result<Renewal> {
        let (stop, stopped) = mpsc::channel::<()>();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let renew_every = self.inner.config.lease_ttl / 3;
        let sweep_every = self.inner.config.sweep_every.max(Duration::from_millis(1));
        let thread = std::thread::Builder::new().name("lease-renewal".into()).spawn(move || {
            let mut next_renewal = Instant::now() + renew_every;
            let mut next_sweep = Instant::now() + sweep_every;
            loop {
                let wait = next_renewal.min(next_sweep).saturating_duration_since(Instant::now());
                match stopped.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let proxy = Proxy { inner };
                // Renewal first: a sweep that took long must not let this proxy's own
                // leases lapse.
                if Instant::now() >= next_renewal {
                    proxy.renew_leases();
                    next_renewal = Instant::now() + renew_every;
                }
                if Instant::now() >= next_sweep {
                    proxy.retry_announcements();
                    proxy.sweep_lapsed_leases();
                    next_sweep = Instant::now() + sweep_every;
                }
            }
        })?;
        Ok(Renewal { stop: Some(stop), thread: Some(thread) })
    }
}

/// Renews the proxy's leases and sweeps lapsed ones on a thread; dropping it stops and
/// joins the thread.
#[derive(Debug)]
pub struct Renewal {
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running proxy: the client listener, the internal delivery listener registered in
/// the registry, and the lease renewal (and sweeping) thread. Dropping it deregisters, then stops.
pub struct Running {
    /// Dropped first, so the chat service stops pushing here before the servers stop.
    registration: Registration,
    /// Renews leases and sweeps lapsed ones.
    renewal: Renewal,
    /// Where clients connect.
    client: Handle,
    /// Where the chat service delivers.
    delivery: Handle,
    /// The proxy itself.
    proxy: Proxy,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("proxy", &self.proxy)
            .field("client", &self.client.local_addr())
            .field("delivery", &self.delivery.local_addr())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address clients connect to.
    pub fn client_addr(&self) -> std::net::SocketAddr {
        self.client.local_addr()
    }

    /// The address of the internal delivery service.
    pub fn delivery_addr(&self) -> std::net::SocketAddr {
        self.delivery.local_addr()
    }

    /// The proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Blocks until the client server stops.
    pub fn wait(self) {
        let Running { registration, renewal, client, delivery, proxy } = self;
        client.wait();
        drop((registration, renewal, delivery, proxy));
    }

    /// Stops the proxy gracefully, in an order that leaves nobody looking online:
    ///
    /// 1. leaves the registry, so the chat services stop delivering here;
    /// 2. refuses every new call with Unavailable and stops renewing leases;
    /// 3. ends every session: releases its lease and tells the user's friends at once
    ///    (see [`Proxy::end_all_sessions`]);
    /// 4. shuts the client server down (clients are told to go away; calls in flight
    ///    finish), ends any session a login in flight opened meanwhile, then shuts the
    ///    delivery server down.
    pub fn shutdown(self) {
        let Running { registration, renewal, client, delivery, proxy } = self;
        let id = proxy.instance_id().to_owned();
        if let Err(error) = registration.deregister() {
            tracing::warn!(%id, %error, "cannot leave the registry; the entry goes with the session");
        }
        proxy.close();
        drop(renewal);
        let ended = proxy.end_all_sessions();
        client.shutdown();
        let late = proxy.end_all_sessions();
        delivery.shutdown();
        tracing::info!(%id, sessions = ended + late, "proxy stopped");
    }
}

/// Starts a proxy: clients on `client_listen`, delivery on `delivery_listen` registered
/// in `registry` under the proxy's instance id.
///
/// # Errors
///
/// When a listener cannot be bound, the registry fails, or a thread cannot start.
pub fn serve(
    proxy: Proxy,
    registry: &dyn Registry,
    client_listen: std::net::SocketAddr,
    delivery_listen: std::net::SocketAddr,
    server_config: server::Config,
) -> Result<Running, rpc_core::Error> {
    let delivery = Builder::new(server_config.clone())
        .service(Traced::new(api::DeliveryServer(proxy.clone()), |_| None))
        .bind(delivery_listen)?;
    let registration = registry
        .register(delivery_rpc::SERVICE_NAME, &Instance::new(proxy.instance_id(), delivery.local_addr()))?;
    let hook = proxy.clone();
    let sessions = proxy.clone();
    let gateway = Traced::new(api::GatewayServer(proxy.clone()), move |ctx| {
        sessions.sessions().user_of(ctx.connection().id()).map(|user| user.0)
    });
    let client = Builder::new(server_config)
        .service(gateway)
        .on_disconnect(move |connection| hook.disconnected(connection))
        .bind(client_listen)?;
    let renewal = proxy.start_renewal()?;
    tracing::info!(id = %proxy.instance_id(), clients = %client.local_addr(), delivery = %delivery.local_addr(), "proxy started");
    Ok(Running { registration, renewal, client, delivery, proxy })
}
