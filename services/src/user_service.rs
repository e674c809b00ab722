//! The user service: accounts, friends and groups, over a [`Store`].
//!
//! Stateless: every call is one store operation or a few, so any number of instances can
//! serve the same database. Proxies call it on behalf of their sessions; the user id in
//! each `*Call` is the session's, never a client's claim. Online state is not its
//! business: the proxy adds it from the presence table before answering a client.

use std::net::IpAddr;
use std::sync::Arc;

use rpc_core::server::Context;
use rpc_core::Status;

use crate::api::{self, user_service_rpc};
use crate::convert::{caller, group, group_settings, store_status, user};
use crate::ids::{GroupId, UserId};
use crate::store::NewToken;
use crate::{auth, limits, session_token, throttle, Store};

/// Implements [`user_service_rpc::UserService`]; serve it with
/// [`api::UserServiceServer`].
pub struct UserService {
    /// Where accounts, friendships and groups live.
    store: Arc<dyn Store>,
    /// The argon2id cost of new password hashes.
    hashing: auth::Config,
    /// Login and registration limits, asked before any password is hashed.
    throttle: throttle::Limits,
    /// How long session tokens last and how many each user keeps.
    tokens: session_token::Config,
}

impl UserService {
    /// A user service over `store`, hashing new passwords at the default cost, with the
    /// default limits counted in this process's memory.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let throttle = throttle::Limits::in_memory(throttle::Config::default());
        UserService {
            store,
            hashing: auth::Config::default(),
            throttle,
            tokens: session_token::Config::default(),
        }
    }

    /// Limits logins and registrations with `limits` instead (a cluster counts in Redis,
    /// so that every instance sees every attempt).
    pub fn with_throttle(mut self, limits: throttle::Limits) -> Self {
        self.throttle = limits;
        self
    }

    /// Issues session tokens with `config`'s lifetime and number per user instead.
    pub fn with_tokens(mut self, config: session_token::Config) -> Self {
        self.tokens = config;
        self
    }

    /// A new session token for `user`, stored hashed.
    /// A new session token for `user`, issued only while their password hash is still
    /// the one whose [`password_check`](crate::store::password_check) is `password_check`.
    fn issue_token_for(&self, user: UserId, password_check: [u8; 32]) -> Result<api::SessionToken, Status> {
        let (token, hash) = session_token::generate();
        let ttl_ms = i64::try_from(self.tokens.ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = crate::store::now_ms().saturating_add(ttl_ms);
        let new = NewToken { user, hash, expires_at_ms, keep: self.tokens.keep_per_user, password_check };
        self.store.add_session_token(&new).map_err(|e| match e {
            crate::store::Error::PermissionDenied(why) => Status::unauthenticated(why),
            other => store_status(other),
        })?;
        Ok(api::SessionToken { token, expires_at_ms })
    }

    /// Hashes new passwords at `config`'s cost instead (tests lower it).
    pub fn with_hashing(mut self, config: auth::Config) -> Self {
        self.hashing = config;
        self
    }
}

impl std::fmt::Debug for UserService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserService")
            .field("hashing", &self.hashing)
            .field("throttle", &self.throttle)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// The one answer to a failed login, whether the name or the password was wrong, so that
/// it does not reveal which names exist.
fn wrong_credentials() -> Status {
    Status::unauthenticated("wrong name or password")
}

/// The one answer to a session token that opens no session, whatever the reason.
fn unknown_token() -> Status {
    Status::unauthenticated("the session token is unknown, expired or revoked; log in with the password")
}

fn limit_status(error: limits::Error) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The address an attempt is counted against: the client's, as the proxy passed it in
/// `source`, or the caller's own when it passed none.
fn source(ctx: &Context, source: &str) -> Result<IpAddr, Status> {
    if source.is_empty() {
        return Ok(ctx.client_addr().ip());
    }
    source.parse().map_err(|_| Status::invalid_argument(format!("source {source:?} is not an IP address")))
}

impl user_service_rpc::UserService for UserService {
    fn register(
        &self,
        ctx: &Context,
        request: api::RegisterRequest,
    ) -> Result<api::RegisterResponse, Status> {
        limits::check_name(&request.name).map_err(limit_status)?;
        limits::check_password(&request.password).map_err(limit_status)?;
        self.throttle.begin_register(source(ctx, &request.source)?)?;
        let hash = auth::hash_password_with(&request.password, &self.hashing).map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            Status::internal("password hashing failed")
        })?;
        let created = self.store.create_user(&request.name, &hash).map_err(store_status)?;
        tracing::info!(user = %created.id, name = %created.name, "registered");
        Ok(api::RegisterResponse { user: Some(user(created)) })
    }

    fn verify_login(
        &self,
        ctx: &Context,
        request: api::LoginRequest,
    ) -> Result<api::VerifyLoginResponse, Status> {
        // A name no account can have (Register checks it) or a password longer than any
        // is wrong at once: it reaches neither the throttle, which would keep the name
        // as a key, nor the store nor the hash.
        if limits::check_name(&request.name).is_err()
            || request.password.chars().count() > limits::PASSWORD_MAX
        {
            return Err(wrong_credentials());
        }
        let from = source(ctx, &request.source)?;
        // Before the store and the hash: a refused attempt costs next to nothing.
        self.throttle.begin_login(&request.name, from)?;
        let credentials = match self.store.credentials(&request.name) {
            Ok(credentials) => credentials,
            Err(crate::store::Error::NotFound(_)) => {
                auth::verify_against_dummy(&request.password, &self.hashing);
                return Err(wrong_credentials());
            }
            Err(e) => return Err(store_status(e)),
        };
        match auth::verify_password(&request.password, &credentials.password_hash) {
            Ok(true) => {
                self.throttle.login_succeeded(&request.name, from);
                let credential = crate::store::password_check(&credentials.password_hash).to_vec();
                Ok(api::VerifyLoginResponse { user: Some(user(credentials.user)), credential })
            }
            Ok(false) => Err(wrong_credentials()),
            Err(e) => {
                tracing::error!(user = %credentials.user.id, error = %e, "stored password hash is malformed");
                Err(Status::internal("the stored password hash is malformed"))
            }
        }
    }

    fn issue_token(&self, _ctx: &Context, request: api::IssueTokenCall) -> Result<api::SessionToken, Status> {
        let check = <[u8; 32]>::try_from(&request.credential[..])
            .map_err(|_| Status::invalid_argument("credential must be the 32 bytes VerifyLogin answered"))?;
        self.issue_token_for(caller(request.user_id)?, check)
    }

    fn resume_session(
        &self,
        _ctx: &Context,
        request: api::ResumeRequest,
    ) -> Result<api::VerifyLoginResponse, Status> {
        let hash = session_token::hash(&request.session_token).ok_or_else(unknown_token)?;
        match self.store.session_token_user(&hash) {
            Ok(found) => Ok(api::VerifyLoginResponse { user: Some(user(found)), credential: Vec::new() }),
            Err(crate::store::Error::NotFound(_)) => Err(unknown_token()),
            Err(e) => Err(store_status(e)),
        }
    }

    fn revoke_token(
        &self,
        _ctx: &Context,
        request: api::RevokeTokenCall,
    ) -> Result<api::RevokeTokenResponse, Status> {
        let revoked = match session_token::hash(&request.session_token) {
            Some(hash) => self.store.revoke_session_token(&hash).map_err(store_status)?,
            None => false,
        };
        Ok(api::RevokeTokenResponse { revoked })
    }

    fn change_password(
        &self,
        ctx: &Context,
        request: api::ChangePasswordCall,
    ) -> Result<api::ChangePasswordResponse, Status> {
        let me = caller(request.user_id)?;
        let call_source = request.source;
        let request = request.request.ok_or_else(|| Status::invalid_argument("no passwords given"))?;
        limits::check_password(&request.new_password).map_err(limit_status)?;
        // The old password is checked exactly as a login checks it, limits and all.
        let name = self.store.user(me).map_err(store_status)?.name;
        let login = api::LoginRequest { name, password: request.old_password, source: call_source };
        let checked = self.verify_login(ctx, login)?.user.map(|u| u.id);
        if checked != Some(me.0) {
            return Err(Status::internal("the password check answered for another user"));
        }
        let hash = auth::hash_password_with(&request.new_password, &self.hashing).map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            Status::internal("password hashing failed")
        })?;
        self.store.set_password_hash(me, &hash).map_err(store_status)?;
        tracing::info!(user = %me, "password changed; session tokens revoked");
        let check = crate::store::password_check(&hash);
        Ok(api::ChangePasswordResponse { session_token: Some(self.issue_token_for(me, check)?) })
    }

    fn profile(&self, _ctx: &Context, request: api::UserCall) -> Result<api::ProfileResponse, Status> {
        let found = self.store.user(caller(request.user_id)?).map_err(store_status)?;
        Ok(api::ProfileResponse { user: Some(user(found)) })
    }

    fn find_user(
        &self,
        _ctx: &Context,
        request: api::FindUserRequest,
    ) -> Result<api::ProfileResponse, Status> {
        let found = match request.user_id {
            0 => self.store.user_by_name(&request.name),
            id => self.store.user(UserId(id)),
        }
        .map_err(store_status)?;
        Ok(api::ProfileResponse { user: Some(user(found)) })
    }

    fn add_friend(
        &self,
        _ctx: &Context,
        request: api::AddFriendCall,
    ) -> Result<api::AddFriendCallResponse, Status> {
        let me = caller(request.user_id)?;
        let friend = match request.request.and_then(|r| r.friend) {
            Some(api::add_friend_request::Friend::UserId(id)) => caller(id)?,
            Some(api::add_friend_request::Friend::Name(name)) => {
                self.store.user_by_name(&name).map_err(store_status)?.id
            }
            None => return Err(Status::invalid_argument("name the friend by user_id or name")),
        };
        let added = self.store.add_friend(me, friend).map_err(store_status)?;
        Ok(api::AddFriendCallResponse { friend: Some(user(added)) })
    }

    fn remove_friend(
        &self,
        _ctx: &Context,
        request: api::RemoveFriendCall,
    ) -> Result<api::RemoveFriendResponse, Status> {
        let me = caller(request.user_id)?;
        let friend = caller(request.request.map_or(0, |r| r.user_id))?;
        self.store.remove_friend(me, friend).map_err(store_status)?;
        Ok(api::RemoveFriendResponse {})
    }

    fn list_friends(&self, _ctx: &Context, request: api::UserCall) -> Result<api::UsersResponse, Status> {
        let friends = self.store.friends(caller(request.user_id)?).map_err(store_status)?;
        Ok(api::UsersResponse { users: friends.into_iter().map(user).collect() })
    }

    fn create_group(
        &self,
        _ctx: &Context,
        request: api::CreateGroupCall,
    ) -> Result<api::CreateGroupResponse, Status> {
        let me = caller(request.user_id)?;
        let request = request.request.unwrap_or_default();
        let settings = group_settings(&request)?;
        let created = self.store.create_group(me, &request.name, settings).map_err(store_status)?;
        Ok(api::CreateGroupResponse { group: Some(group(created)) })
    }

    fn join_group(
        &self,
        _ctx: &Context,
        request: api::JoinGroupCall,
    ) -> Result<api::JoinGroupResponse, Status> {
        let me = caller(request.user_id)?;
        let id = GroupId(request.request.map_or(0, |r| r.group_id));
        let joined = self.store.join_group(me, id).map_err(store_status)?;
        Ok(api::JoinGroupResponse { group: Some(group(joined)) })
    }

    fn leave_group(
        &self,
        _ctx: &Context,
        request: api::LeaveGroupCall,
    ) -> Result<api::LeaveGroupResponse, Status> {
        let me = caller(request.user_id)?;
        let id = GroupId(request.request.map_or(0, |r| r.group_id));
        self.store.leave_group(me, id).map_err(store_status)?;
        Ok(api::LeaveGroupResponse {})
    }

    fn list_groups(&self, _ctx: &Context, request: api::UserCall) -> Result<api::ListGroupsResponse, Status> {
        let groups = self.store.groups_of(caller(request.user_id)?).map_err(store_status)?;
        Ok(api::ListGroupsResponse { groups: groups.into_iter().map(group).collect() })
    }

    fn list_groups_with_members(
        &self,
        _ctx: &Context,
        request: api::UserCall,
    ) -> Result<api::GroupsWithMembersResponse, Status> {
        let groups = self.store.groups_of(caller(request.user_id)?).map_err(store_status)?;
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let members = self.store.group_members(g.id).map_err(store_status)?;
            out.push(api::GroupWithMembers {
                group: Some(group(g)),
                members: members.into_iter().map(user).collect(),
            });
        }
        Ok(api::GroupsWithMembersResponse { groups: out })
    }

    fn group_members(
        &self,
        _ctx: &Context,
        request: api::GroupMembersCall,
    ) -> Result<api::UsersResponse, Status> {
        let me = caller(request.user_id)?;
        let id = GroupId(request.request.map_or(0, |r| r.group_id));
        let members = self.store.group_members(id).map_err(store_status)?;
        if !members.iter().any(|m| m.id == me) {
            let found = self.store.group(id).map_err(store_status)?;
            return Err(store_status(crate::store::member_or_hidden(me, &found)));
        }
        Ok(api::UsersResponse { users: members.into_iter().map(user).collect() })
    }

    fn invite(&self, _ctx: &Context, request: api::InviteCall) -> Result<api::InviteResponse, Status> {
        let me = caller(request.user_id)?;
        let request = request.request.unwrap_or_default();
        let invitee = caller(request.user_id)?;
        let invitation = self.store.invite(me, GroupId(request.group_id), invitee).map_err(store_status)?;
        tracing::info!(group = %invitation.group, user = %invitee, inviter = %me, "invited");
        Ok(api::InviteResponse { expires_at_ms: invitation.expires_at_ms })
    }

    fn remove_member(
        &self,
        _ctx: &Context,
        request: api::RemoveMemberCall,
    ) -> Result<api::RemoveMemberResponse, Status> {
        let me = caller(request.user_id)?;
        let request = request.request.unwrap_or_default();
        let member = caller(request.user_id)?;
        self.store.remove_member(me, GroupId(request.group_id), member).map_err(store_status)?;
        tracing::info!(group = request.group_id, user = %member, owner = %me, "member removed");
        Ok(api::RemoveMemberResponse {})
    }
}
