//! `Gateway`, the service clients call: login, resume and logout go to [`Sessions`]
//! (after the user service checked the password or the session token), everything else
//! to the user and chat services with the session's user id.

use rpc_core::server::Context;
use rpc_core::Status;

use super::sessions::{Login, LoginError};
use super::Proxy;
use crate::api::{self, gateway_rpc};
use crate::convert::{presence_status, rpc_status, send_status};
use crate::ids::UserId;

/// How the user service authenticated a session about to open.
enum Opened {
    /// With the password; the check's credential (`VerifyLoginResponse::credential`).
    Password(Vec<u8>),
    /// With this session token.
    Token(String),
}

impl Proxy {
    /// Whether each of `users` is online, in order, in one presence lookup.
    fn online<'a>(&self, users: impl Iterator<Item = &'a api::User>) -> Result<Vec<bool>, Status> {
        let ids: Vec<UserId> = users.map(|u| UserId(u.id)).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let online = self.inner.presence.lookup(&ids).map_err(presence_status)?;
        if online.len() != ids.len() {
            return Err(Status::internal(format!(
                "presence answered {} of {} users looked up",
                online.len(),
                ids.len()
            )));
        }
        Ok(online.into_iter().map(|at| at.is_some()).collect())
    }

    /// `users` with their online state.
    fn contacts(&self, users: Vec<api::User>) -> Result<Vec<api::Contact>, Status> {
        let online = self.online(users.iter())?;
        Ok(users
            .into_iter()
            .zip(online)
            .map(|(user, online)| api::Contact { user: Some(user), online })
            .collect())
    }

    fn contact(&self, user: Option<api::User>) -> Result<Option<api::Contact>, Status> {
        Ok(self.contacts(user.into_iter().collect())?.pop())
    }

    /// What a client sees right after logging in. Its three parts are asked for at once
    /// and the online state of everyone in them in one lookup: a proxy opening thousands
    /// of sessions after another proxy crashed waits one round trip for them, not five.
    fn login_view(
        &self,
        user: api::User,
        replaced_session: bool,
        session_token: Option<api::SessionToken>,
    ) -> Result<api::LoginResponse, Status> {
        let call = api::UserCall { user_id: user.id };
        let (friends, groups, conversations) = (Reply::new(), Reply::new(), Reply::new());
        self.inner.users.list_friends_with(&call, friends.sender());
        self.inner.users.list_groups_with_members_with(&call, groups.sender());
        self.inner.chat.conversations_with(&call, conversations.sender());
        let friends = friends.wait()?.users;
        let groups = groups.wait()?.groups;
        let conversations = conversations.wait()?.conversations;
        let everyone = friends.iter().chain(groups.iter().flat_map(|g| g.members.iter()));
        let mut online = self.online(everyone)?.into_iter();
        let mut contact = |user| api::Contact { user: Some(user), online: online.next().unwrap_or(false) };
        let friends = friends.into_iter().map(&mut contact).collect();
        let groups = groups
            .into_iter()
            .map(|g| api::GroupDetail {
                group: g.group,
                members: g.members.into_iter().map(&mut contact).collect(),
            })
            .collect();
        Ok(api::LoginResponse {
            user: Some(user),
            friends,
            groups,
            conversations,
            replaced_session,
            session_token,
        })
    }

    /// Opens a session for `user`, whom the user service just authenticated on the
    /// call's connection: with the password (a session token is issued and returned) or
    /// with a session token. Both claim the user's lease, replace a session open
    /// elsewhere and answer with the same view.
    fn start_session(
        &self,
        ctx: &Context,
        user: Option<api::User>,
        opened: Opened,
    ) -> Result<api::LoginResponse, Status> {
        let (credential, resumed_with) = match opened {
            Opened::Password(credential) => (Some(credential), None),
            Opened::Token(token) => (None, Some(token)),
        };
        let sessions = &self.inner.sessions;
        let connection = ctx.connection();
        let user =
            user.ok_or_else(|| Status::internal("the user service answered a login without a user"))?;
        let id = UserId(user.id);
        let started = match resumed_with {
            None => sessions.login(id, connection),
            Some(_) => sessions.resume(id, connection),
        };
        let login = started.map_err(|error| match error {
            LoginError::Closed => Status::unavailable("the connection closed during the login"),
            LoginError::Presence(error) => presence_status(error),
        })?;
        if let Some(other) = login.elsewhere.clone() {
            self.kick_elsewhere(id, other);
        }
        match self.session_view(user, &login, credential) {
            Ok(view) => {
                let resumed = resumed_with.is_some();
                tracing::info!(user = %id, connection = %connection.id(), replaced = login.replaced, resumed, "logged in");
                let token = view.session_token.as_ref().map(|t| t.token.clone()).or(resumed_with);
                if let Some(token) = token {
                    self.inner.tokens.set(connection.id(), token);
                    // A connection that closed meanwhile had its entry removed by the
                    // disconnect hook before this set it: nothing would remove it again.
                    if !connection.is_open() {
                        self.inner.tokens.remove(connection.id());
                    }
                }
                sessions.announce_online(&login);
                Ok(view)
            }
            Err(status) => {
                // Only this login's session: another login may have bound since.
                sessions.end_login(&login, connection.id());
                Err(status)
            }
        }
    }

    /// The answer to a login or resume that bound `login`, with a new session token for a
    /// login whose password check answered `credential`.
    fn session_view(
        &self,
        user: api::User,
        login: &Login,
        credential: Option<Vec<u8>>,
    ) -> Result<api::LoginResponse, Status> {
        let token = match credential {
            Some(credential) => {
                let call = api::IssueTokenCall { user_id: user.id, credential };
                Some(self.inner.users.issue_token(&call).map_err(rpc_status)?)
            }
            None => None,
        };
        self.login_view(user, login.replaced, token)
    }

    /// Asks proxy `other`, whose lease on `user` a login here took over, to kick its
    /// session; without waiting (see `kicks`).
    fn kick_elsewhere(&self, user: UserId, other: String) {
        self.inner.kicks.kick(user, other);
    }
}

impl gateway_rpc::Gateway for Proxy {
    fn register(
        &self,
        ctx: &Context,
        mut request: api::RegisterRequest,
    ) -> Result<api::RegisterResponse, Status> {
        self.open()?;
        // The user service limits registrations per client address; it learns it here.
        request.source = ctx.client_addr().ip().to_string();
        self.inner.users.register(&request).map_err(rpc_status)
    }

    fn login(&self, ctx: &Context, mut request: api::LoginRequest) -> Result<api::LoginResponse, Status> {
        self.open()?;
        // The user service throttles logins per client address; it learns it here.
        request.source = ctx.client_addr().ip().to_string();
        let verified = self.inner.users.verify_login(&request).map_err(rpc_status)?;
        // A session already on this connection ends once the new one is sure to start: a
        // refused login leaves it as it was.
        self.inner.sessions.end(ctx.connection().id());
        self.start_session(ctx, verified.user, Opened::Password(verified.credential))
    }

    fn resume(&self, ctx: &Context, request: api::ResumeRequest) -> Result<api::LoginResponse, Status> {
        self.open()?;
        let user = self.inner.users.resume_session(&request).map_err(rpc_status)?.user;
        // As for a login: a session already on this connection ends only now.
        self.inner.sessions.end(ctx.connection().id());
        self.start_session(ctx, user, Opened::Token(request.session_token))
    }

    fn logout(&self, ctx: &Context, _request: api::LogoutRequest) -> Result<api::LogoutResponse, Status> {
        self.session(ctx)?;
        let connection = ctx.connection().id();
        if let Some(session_token) = self.inner.tokens.get(connection) {
            // Revoked first: when that fails, the session stays and the client may retry.
            self.inner.users.revoke_token(&api::RevokeTokenCall { session_token }).map_err(rpc_status)?;
            self.inner.tokens.remove(connection);
        }
        self.inner.sessions.end(connection);
        Ok(api::LogoutResponse {})
    }

    fn change_password(
        &self,
        ctx: &Context,
        request: api::ChangePasswordRequest,
    ) -> Result<api::ChangePasswordResponse, Status> {
        let user_id = self.session(ctx)?.0;
        let source = ctx.client_addr().ip().to_string();
        let call = api::ChangePasswordCall { user_id, request: Some(request), source };
        let response = self.inner.users.change_password(&call).map_err(rpc_status)?;
        // One session per user: any other session of the user was replaced and kicked
        // when this one opened. What other clients keep is a token, and those are revoked
        // now; this session's new token is the one `Logout` revokes.
        if let Some(token) = &response.session_token {
            self.inner.tokens.set(ctx.connection().id(), token.token.clone());
        }
        tracing::info!(user = user_id, "password changed");
        Ok(response)
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
        let user_id = self.writer(ctx)?.0;
        let call = api::AddFriendCall { user_id, request: Some(request) };
        let friend = self.inner.users.add_friend(&call).map_err(rpc_status)?.friend;
        Ok(api::AddFriendResponse { friend: self.contact(friend)? })
    }

    fn remove_friend(
        &self,
        ctx: &Context,
        request: api::RemoveFriendRequest,
    ) -> Result<api::RemoveFriendResponse, Status> {
        let user_id = self.writer(ctx)?.0;
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
        let user_id = self.writer(ctx)?.0;
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
        let user_id = self.writer(ctx)?.0;
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
        let user_id = self.writer(ctx)?.0;
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

    fn invite(&self, ctx: &Context, request: api::InviteRequest) -> Result<api::InviteResponse, Status> {
        let user_id = self.writer(ctx)?.0;
        self.inner.users.invite(&api::InviteCall { user_id, request: Some(request) }).map_err(rpc_status)
    }

    fn remove_member(
        &self,
        ctx: &Context,
        request: api::RemoveMemberRequest,
    ) -> Result<api::RemoveMemberResponse, Status> {
        let user_id = self.writer(ctx)?.0;
        self.inner
            .users
            .remove_member(&api::RemoveMemberCall { user_id, request: Some(request) })
            .map_err(rpc_status)
    }

    fn send_message(
        &self,
        ctx: &Context,
        request: api::SendMessageRequest,
    ) -> Result<api::SendMessageResponse, Status> {
        let sender_id = self.writer(ctx)?.0;
        // "Not stored" only when it was not: see `send_status`.
        self.inner.chat.send(&api::SendCall { sender_id, request: Some(request) }).map_err(send_status)
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

/// The answer of a call started with a callback, waited for on this thread.
struct Reply<T> {
    sender: std::sync::mpsc::SyncSender<Result<T, rpc_core::Error>>,
    receiver: std::sync::mpsc::Receiver<Result<T, rpc_core::Error>>,
}

impl<T: Send + 'static> Reply<T> {
    fn new() -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        Reply { sender, receiver }
    }

    /// The callback to start the call with.
    fn sender(&self) -> impl FnOnce(Result<T, rpc_core::Error>) + Send + 'static {
        let sender = self.sender.clone();
        move |outcome| {
            // The waiting handler may have given up on an earlier part already.
            let _ = sender.send(outcome);
        }
    }

    /// The call's outcome, as a status for the client on failure. The call has a
    /// deadline (the proxy's `call_timeout`, or the handler's own if sooner), so its
    /// callback always comes.
    fn wait(self) -> Result<T, Status> {
        drop(self.sender);
        match self.receiver.recv() {
            Ok(outcome) => outcome.map_err(rpc_status),
            Err(_) => Err(Status::internal("a call's callback was dropped unanswered")),
        }
    }
}
