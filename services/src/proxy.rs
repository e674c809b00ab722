//! The proxy (gateway): the rpc-core server clients connect to.
//!
//! It owns the session table ([`session::Sessions`]: connection <-> user) and is the
//! only place where a connection becomes a user: every `Gateway` call but `Register` and
//! `Login` looks the caller up by its connection and fails with Unauthenticated when
//! there is no session, and every call it forwards to the user and chat services (through
//! load-balanced stubs over the instances found in the registry) carries the session's
//! user id, never one the client sent.
//!
//! It also serves `Delivery` to the chat service, on a second, internal listener
//! registered under the proxy's instance id, and pushes what it is given to its clients
//! as [`api::Push`] frames named [`PUSH_SERVICE`]/[`PUSH_METHOD`].
//!
//! Presence: a login claims the user's lease for this proxy, a thread
//! ([`Renewal`]) renews the leases of all sessions every third of the TTL, and logout or
//! a closed connection releases the lease. The same thread sweeps the presence table
//! every [`Config::sweep_every`] for leases that lapsed, whichever proxy held them (one
//! that crashed never says goodbye), and tells those users' friends they went offline;
//! the table hands each lapsed lease to exactly one sweeping proxy. A presence
//! announcement the chat service could not take (no instance, a lost connection, a
//! timeout) is sent again on the same timer. One session per user: a second login
//! replaces the first, which receives `Kicked` and is closed, on this proxy or, through
//! `Delivery.Kick`, on the proxy that held it.
//!
//! Shutdown ([`Running::shutdown`]) is graceful: the proxy leaves the registry first, then
//! refuses new work, ends every session (releasing its lease and telling the user's
//! friends at once, rather than after the lease), and stops its servers, which tell their
//! clients to go away and finish the calls in flight.

pub mod announcements;
pub mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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

use self::announcements::{Announcement, Announcements};
use self::session::Sessions;

/// The service name of the push frames a proxy sends its clients.
pub const PUSH_SERVICE: &str = gateway_rpc::SERVICE_NAME;
/// The method name of the push frames a proxy sends its clients; the body is an
/// [`api::Push`].
pub const PUSH_METHOD: &str = "Push";

/// What a kicked session is told when its user logged in elsewhere.
const REPLACED: &str = "logged in from another connection";
/// How many lapsed leases one sweep call takes; a sweep calls again while they come
/// back full.
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
    /// Connection <-> user.
    sessions: Sessions,
    /// Held while a session and its lease change together (login, logout, renewal), so
    /// that a closing connection cannot release the lease a new login on this proxy
    /// has just claimed, and renewal never sees a session whose lease is not claimed yet.
    leases: Mutex<()>,
    /// The user service instances.
    users: UserServiceClient<Balanced>,
    /// The chat service instances.
    chat: ChatServiceClient<Balanced>,
    /// The lease table.
    presence: Arc<dyn Presence>,
    /// The other proxies, to kick a session one of them holds.
    proxies: Proxies,
    /// Set when shutdown starts: every call is refused with Unavailable from then on, so
    /// no session starts while the proxy ends them.
    closing: AtomicBool,
    /// Presence announcements the chat service has not taken yet. Shared with the calls'
    /// completion callbacks, which must not hold the proxy itself.
    announcements: Announcements,
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
        let inner = Inner {
            config,
            sessions: Sessions::default(),
            leases: Mutex::new(()),
            users,
            chat,
            presence,
            proxies,
            closing: AtomicBool::new(false),
            announcements: Announcements::default(),
        };
        Ok(Proxy { inner: Arc::new(inner) })
    }

    /// The proxy's instance id.
    pub fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }

    /// The session table.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// Ends the session on a connection that closed, as a logout would.
    pub fn disconnected(&self, connection: ConnectionId) {
        self.end_session(connection);
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
        let (done, finished) = mpsc::channel();
        let mut announced = 0;
        let ended = {
            let _leases = self.lease_lock();
            let ended = inner.sessions.unbind_all();
            for (user, _connection) in &ended {
                match inner.presence.release(*user, &inner.config.instance_id) {
                    Ok(true) => {
                        let done = done.clone();
                        self.announce_then(*user, false, move || {
                            let _ = done.send(());
                        });
                        announced += 1;
                    }
                    // The lease went to a newer login elsewhere: the user is still online.
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%user, %error, "cannot release the lease; it will lapse"),
                }
            }
            ended.len()
        };
        let deadline = Instant::now() + inner.config.shutdown_timeout;
        for taken in 0..announced {
            let left = deadline.saturating_duration_since(Instant::now());
            if finished.recv_timeout(left).is_err() {
                tracing::warn!(left = announced - taken, "offline announcements unconfirmed at shutdown");
                break;
            }
        }
        if ended > 0 {
            tracing::info!(sessions = ended, announced, "sessions ended");
        }
        let failed = inner.announcements.failed();
        if failed > 0 {
            // Their friends learn the truth when they next log in.
            tracing::warn!(failed, "presence announcements the chat service did not take at shutdown");
        }
        ended
    }

    /// Renews the leases of every session once, and ends the sessions whose lease this
    /// proxy no longer holds.
    pub fn renew_leases(&self) {
        let inner = &self.inner;
        let _leases = self.lease_lock();
        let users = inner.sessions.users();
        if users.is_empty() {
            return;
        }
        match inner.presence.renew_all(&users, &inner.config.instance_id, inner.config.lease_ttl) {
            Ok(lost) => {
                for user in lost {
                    if let Some(connection) = inner.sessions.unbind_user(user) {
                        tracing::info!(%user, "presence lease lost; closing the session");
                        kick(&connection, "the session's presence lease was lost");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "lease renewal failed"),
        }
    }

    /// Takes the leases that lapsed in the presence table, whichever proxy held them,
    /// and tells each user's friends they went offline, as a logout would. The table
    /// hands a lapsed lease to one sweeper only, so with every proxy sweeping each user
    /// is announced once. Returns how many users it announced.
    ///
    /// It takes 500 leases at a time and waits for the chat service to take
    /// a batch's announcements before taking more, so that the thousands of users of a
    /// crashed proxy do not flood one connection to the chat service. It stops after
    /// `Config::sweep_every` (at most a sixth of the lease TTL, so that renewal on the
    /// same thread stays on time); what is left lapsed waits for the next sweep, here
    /// or on another proxy.
    pub fn sweep_lapsed_leases(&self) -> usize {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.sweep_every.min(config.lease_ttl / 6);
        let mut announced = 0;
        loop {
            let lapsed = match self.inner.presence.sweep_lapsed(SWEEP_BATCH) {
                Ok(lapsed) => lapsed,
                Err(error) => {
                    tracing::warn!(%error, "cannot sweep lapsed leases");
                    return announced;
                }
            };
            let full = lapsed.len() == SWEEP_BATCH;
            let batch = lapsed.len();
            let (done, finished) = mpsc::channel();
            for lease in lapsed {
                tracing::info!(user = %lease.user, proxy = %lease.owner, "presence lease lapsed; announcing offline");
                let done = done.clone();
                self.announce_then(lease.user, false, move || {
                    let _ = done.send(());
                });
            }
            announced += batch;
            for taken in 0..batch {
                let left = deadline.saturating_duration_since(Instant::now());
                if finished.recv_timeout(left).is_err() {
                    tracing::debug!(
                        left = batch - taken,
                        "offline announcements still in flight; sweeping more later"
                    );
                    return announced;
                }
            }
            if !full || Instant::now() >= deadline {
                return announced;
            }
        }
    }

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

    fn lease_lock(&self) -> MutexGuard<'_, ()> {
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Logs out whoever is logged in on `connection`: releases the lease and tells their
    /// friends.
    fn end_session(&self, connection: ConnectionId) {
        let _leases = self.lease_lock();
        self.end_session_locked(connection);
    }

    /// [`Proxy::end_session`], with the lease lock already held.
    fn end_session_locked(&self, connection: ConnectionId) {
        let inner = &self.inner;
        let Some(user) = inner.sessions.unbind_connection(connection) else { return };
        match inner.presence.release(user, &inner.config.instance_id) {
            Ok(true) => self.announce(user, false),
            // The lease went to a newer login elsewhere: the user is still online.
            Ok(false) => {}
            Err(error) => tracing::warn!(%user, %error, "cannot release the lease; it will lapse"),
        }
        tracing::info!(%user, %connection, "session ended");
    }

    /// Tells `user`'s friends about a presence change, without waiting.
    fn announce(&self, user: UserId, online: bool) {
        self.announce_then(user, online, || {});
    }

    /// Tells `user`'s friends about a presence change, without waiting; `then` runs when
    /// the chat service answered or the call failed. A failure that may pass is sent
    /// again by [`Proxy::retry_announcements`].
    fn announce_then(&self, user: UserId, online: bool, then: impl FnOnce() + Send + 'static) {
        let announcement = self.inner.announcements.make(user, online);
        self.send_announcement(announcement, then);
    }

    fn send_announcement(&self, announcement: Announcement, then: impl FnOnce() + Send + 'static) {
        let Announcement { user, online, .. } = announcement;
        let call = api::AnnouncePresenceCall { user_id: user.0, online };
        let announcements = self.inner.announcements.clone();
        self.inner.chat.announce_presence_with(&call, move |outcome| {
            let retry = outcome.err().is_some_and(|error| {
                let passing = matches!(
                    error.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                );
                tracing::debug!(%user, online, %error, retry = passing, "presence announcement failed");
                passing
            });
            announcements.settle(announcement, retry);
            then();
        });
    }

    /// How many presence announcements failed and wait to be sent again.
    pub fn unannounced(&self) -> usize {
        self.inner.announcements.failed()
    }

    /// Sends again up to 500 presence announcements that failed for a reason that may
    /// pass, only the newest per user. The chat service drops one that no longer agrees
    /// with the presence table when it arrives. Returns how many it sent.
    pub fn retry_announcements(&self) -> usize {
        let due = self.inner.announcements.due(SWEEP_BATCH, Instant::now());
        let sent = due.len();
        for announcement in due {
            self.send_announcement(announcement, || {});
        }
        sent
    }

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

/// Pushes one event to a connection; false when it could not be queued.
fn push(connection: &Connection, event: api::push::Event) -> bool {
    push_encoded(connection, &api::Push { event: Some(event) }.encode_to_vec())
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

/// Tells a connection why its session ends, then closes it.
fn kick(connection: &Connection, reason: &str) {
    push(connection, api::push::Event::Kicked(api::Kicked { reason: reason.to_owned() }));
    connection.close();
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
        let inner = &self.inner;
        let connection = ctx.connection().clone();
        // A login on a connection that already has a session ends that session first.
        self.end_session(connection.id());
        let user = inner.users.verify_login(&request).map_err(rpc_status)?.user;
        let user =
            user.ok_or_else(|| Status::internal("the user service answered a login without a user"))?;
        let id = UserId(user.id);
        let leases = self.lease_lock();
        // Another login on this connection may have finished meanwhile: end its session
        // properly (lease, friends) rather than let `bind` drop it.
        self.end_session_locked(connection.id());
        let previous = inner
            .presence
            .claim(id, &inner.config.instance_id, inner.config.lease_ttl)
            .map_err(presence_status)?;
        let mut replaced = false;
        if let Some(old) = inner.sessions.bind(id, connection.clone()) {
            kick(&old, REPLACED);
            replaced = true;
        }
        if !connection.is_open() {
            // The connection broke (a reset) while the password was checked: its
            // disconnect found no session to end, and no other will come. End this one
            // here, under the lock `end_session` takes, so one of the two always does.
            inner.sessions.unbind_connection(connection.id());
            let released = inner.presence.release(id, &inner.config.instance_id);
            drop(leases);
            let was_online = replaced || previous.is_some_and(|p| p != inner.config.instance_id);
            if was_online && matches!(released, Ok(true)) {
                self.announce(id, false);
            }
            return Err(Status::unavailable("the connection closed during the login"));
        }
        drop(leases);
        if let Some(other) = previous.filter(|p| *p != inner.config.instance_id) {
            replaced = true;
            match inner.proxies.client(&other) {
                Some(client) => {
                    let request = api::KickRequest {
                        user_id: id.0,
                        new_proxy_id: inner.config.instance_id.clone(),
                        reason: REPLACED.to_owned(),
                    };
                    client.kick_with(&request, move |outcome| {
                        if let Err(error) = outcome {
                            tracing::warn!(user = %id, proxy = %other, %error, "cannot kick the previous session");
                        }
                    });
                }
                None => tracing::debug!(user = %id, proxy = %other, "previous proxy is gone"),
            }
        }
        match self.login_view(user, replaced) {
            Ok(view) => {
                tracing::info!(user = %id, connection = %connection.id(), replaced, "logged in");
                if !replaced {
                    self.announce(id, true);
                }
                Ok(view)
            }
            Err(status) => {
                self.end_session(connection.id());
                Err(status)
            }
        }
    }

    fn logout(&self, ctx: &Context, _request: api::LogoutRequest) -> Result<api::LogoutResponse, Status> {
        self.session(ctx)?;
        self.end_session(ctx.connection().id());
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
        if request.new_proxy_id == self.inner.config.instance_id {
            return Ok(api::KickResponse { kicked: false });
        }
        let user = UserId(request.user_id);
        let connection = {
            let _leases = self.lease_lock();
            // A kick that arrives after the user logged in here again (and this proxy
            // took the lease back) is about an older session: the newest one stays.
            let holder = self.inner.presence.lookup(&[user]).map_err(presence_status)?.pop().flatten();
            if holder.as_deref() == Some(self.inner.config.instance_id.as_str()) {
                return Ok(api::KickResponse { kicked: false });
            }
            // The lease is the new proxy's now: end the session without releasing it.
            self.inner.sessions.unbind_user(user)
        };
        let Some(connection) = connection else {
            return Ok(api::KickResponse { kicked: false });
        };
        tracing::info!(user = request.user_id, by = %request.new_proxy_id, "session replaced elsewhere");
        kick(&connection, &request.reason);
        Ok(api::KickResponse { kicked: true })
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
