//! Runs one parsed command against the gateway and says what to print.

use std::time::Duration;

use services::api;
use services::{ConversationId, GroupId, UserId};

use super::command::{
    self, create_group_request, history_page, rest_after, Command, Friend, Group, Kind, Parsed,
};
use super::event::{self, Contact, Event, HistoryMessage};
use super::session::Client;
use super::Error;

impl Client {
    /// Runs one input line: parses it, runs the command, prints what it did or why it
    /// failed. False when the line asks to quit.
    pub fn run_line(&self, line: &str) -> bool {
        let result = match command::parse(line) {
            Ok(Parsed::Nothing) => Ok(None),
            Ok(Parsed::Help(text)) => Ok(Some(Event::Help { text })),
            Ok(Parsed::Command(Command::Quit)) => return false,
            Ok(Parsed::Command(command)) => self.execute(line, command),
            Err(e) => Err(e),
        };
        match result {
            Ok(Some(event)) => self.print(&event),
            Ok(None) => {}
            Err(e) => self.print(&e.into()),
        }
        true
    }

    /// Runs `command` (parsed from `line`, whose free text it reads as typed). `None`
    /// when the command printed what it did itself (a login prints the session before
    /// the messages its Sync fetches).
    fn execute(&self, line: &str, command: Command) -> Result<Option<Event>, Error> {
        let event = match command {
            Command::Register { name, password } => {
                let request = api::RegisterRequest { name, password, ..Default::default() };
                let user =
                    self.gateway.register(&request).map_err(Error::rpc("register"))?.user.unwrap_or_default();
                self.remember(&user);
                Event::Registered { user: (&user).into() }
            }
            Command::Login { name, password } => {
                self.login(&name, &password)?;
                return Ok(None);
            }
            Command::Logout => {
                self.gateway.logout(&api::LogoutRequest {}).map_err(Error::rpc("logout"))?;
                let mut state = self.state();
                state.session_token = None;
                state.me = None;
                Event::LoggedOut
            }
            Command::Passwd { old, new } => {
                let request = api::ChangePasswordRequest { old_password: old, new_password: new };
                let response = self.gateway.change_password(&request).map_err(Error::rpc("passwd"))?;
                self.state().session_token = response.session_token.map(|t| t.token);
                Event::PasswordChanged
            }
            Command::Find { name } => {
                let request = api::FindUserRequest { name, ..Default::default() };
                let contact =
                    self.gateway.find_user(&request).map_err(Error::rpc("find"))?.user.unwrap_or_default();
                self.remember(&contact.user.clone().unwrap_or_default());
                Event::User { user: Contact::from(&contact) }
            }
            Command::Friend(friend) => self.friend(friend)?,
            Command::Group(group) => self.group(line, group)?,
            Command::Send { kind, target, .. } => {
                let id = self.conversation("send", kind, &target)?;
                self.send(id, rest_after(line, 3))?
            }
            Command::History { kind, target, page } => {
                let id = self.conversation("history", kind, &target)?;
                let (anchor, limit) = history_page(&page)?;
                let request = api::HistoryRequest { conversation: Some(id.into()), anchor, limit };
                let response = self.gateway.history(&request).map_err(Error::rpc("history"))?;
                let messages = response
                    .messages
                    .iter()
                    .map(|m| HistoryMessage {
                        seq: m.seq,
                        sender_id: m.sender_id,
                        sender: self.name_of(m.sender_id),
                        body: m.body.clone(),
                        sent_at_ms: m.sent_at_ms,
                    })
                    .collect();
                Event::History {
                    conversation: id.into(),
                    messages,
                    has_more: response.has_more,
                    label: self.label(id),
                }
            }
            Command::Sync => {
                let before = self.state().received;
                self.sync()?;
                Event::Synced { messages: self.state().received - before }
            }
            Command::Ack { kind, target, seq } => {
                let id = self.conversation("ack", kind, &target)?;
                let request = api::AckRequest { conversation: Some(id.into()), seq };
                let response = self.gateway.ack(&request).map_err(Error::rpc("ack"))?;
                Event::Acked { conversation: id.into(), read_seq: response.read_seq, label: self.label(id) }
            }
            Command::Wait { n, timeout_ms } => self.wait(n, Duration::from_millis(timeout_ms)),
            Command::Quit => return Ok(None),
        };
        Ok(Some(event))
    }

    fn friend(&self, command: Friend) -> Result<Event, Error> {
        Ok(match command {
            Friend::Add { who } => {
                let friend = match who.parse::<u64>() {
                    Ok(id) => api::add_friend_request::Friend::UserId(id),
                    Err(_) => api::add_friend_request::Friend::Name(who),
                };
                let request = api::AddFriendRequest { friend: Some(friend) };
                let response = self.gateway.add_friend(&request).map_err(Error::rpc("friend add"))?;
                let contact = response.friend.unwrap_or_default();
                self.remember(&contact.user.clone().unwrap_or_default());
                Event::FriendAdded { friend: Contact::from(&contact) }
            }
            Friend::Remove { who } => {
                let user_id = self.user_id("friend remove", &who)?;
                let request = api::RemoveFriendRequest { user_id };
                self.gateway.remove_friend(&request).map_err(Error::rpc("friend remove"))?;
                Event::FriendRemoved { user_id, name: self.name_of(user_id) }
            }
            Friend::List => {
                let response = self
                    .gateway
                    .list_friends(&api::ListFriendsRequest {})
                    .map_err(Error::rpc("friend list"))?;
                self.contacts(&response.friends);
                Event::Friends { friends: response.friends.iter().map(Contact::from).collect() }
            }
        })
    }

    fn group(&self, line: &str, command: Group) -> Result<Event, Error> {
        Ok(match command {
            Group::Create { .. } => {
                let request = create_group_request(rest_after(line, 2));
                let response = self.gateway.create_group(&request).map_err(Error::rpc("group create"))?;
                Event::GroupCreated { group: self.describe_group(&response.group.unwrap_or_default()) }
            }
            Group::Invite { id: group_id, who } => {
                let user_id = self.user_id("group invite", &who)?;
                let request = api::InviteRequest { group_id, user_id };
                let response = self.gateway.invite(&request).map_err(Error::rpc("group invite"))?;
                let name = self.name_of(user_id);
                Event::Invited { group_id, user_id, expires_at_ms: response.expires_at_ms, name }
            }
            Group::Remove { id: group_id, who } => {
                let user_id = self.user_id("group remove", &who)?;
                let request = api::RemoveMemberRequest { group_id, user_id };
                self.gateway.remove_member(&request).map_err(Error::rpc("group remove"))?;
                Event::MemberRemoved { group_id, user_id, name: self.name_of(user_id) }
            }
            Group::Join { id: group_id } => {
                let request = api::JoinGroupRequest { group_id };
                let response = self.gateway.join_group(&request).map_err(Error::rpc("group join"))?;
                Event::GroupJoined { group: self.describe_group(&response.group.unwrap_or_default()) }
            }
            Group::Leave { id: group_id } => {
                let request = api::LeaveGroupRequest { group_id };
                self.gateway.leave_group(&request).map_err(Error::rpc("group leave"))?;
                Event::GroupLeft { group_id }
            }
            Group::List => {
                let response =
                    self.gateway.list_groups(&api::ListGroupsRequest {}).map_err(Error::rpc("group list"))?;
                Event::Groups { groups: response.groups.iter().map(|g| self.describe_group(g)).collect() }
            }
            Group::Members { id: group_id } => {
                let request = api::GroupMembersRequest { group_id };
                let response = self.gateway.group_members(&request).map_err(Error::rpc("group members"))?;
                self.contacts(&response.members);
                Event::Members { group_id, members: response.members.iter().map(Contact::from).collect() }
            }
        })
    }

    /// Remembers the names in a list of contacts.
    fn contacts(&self, list: &[api::Contact]) {
        for user in list.iter().filter_map(|c| c.user.as_ref()) {
            self.remember(user);
        }
    }

    fn describe_group(&self, group: &api::Group) -> event::Group {
        event::Group::new(group, self.name_of(group.owner_id))
    }

    /// The user id for a name or a number.
    fn user_id(&self, command: &'static str, who: &str) -> Result<u64, Error> {
        if let Ok(id) = who.parse::<u64>() {
            return Ok(id);
        }
        let request = api::FindUserRequest { name: who.into(), ..Default::default() };
        let response = self.gateway.find_user(&request).map_err(Error::rpc(command))?;
        let user = response.user.and_then(|c| c.user).unwrap_or_default();
        self.remember(&user);
        Ok(user.id)
    }

    /// The conversation `kind target` names: with a user (by name or id) or a group (by id).
    fn conversation(&self, command: &'static str, kind: Kind, target: &str) -> Result<ConversationId, Error> {
        match kind {
            Kind::User => {
                let me = self.me(command)?;
                let peer = self.user_id(command, target)?;
                Ok(ConversationId::direct(me, UserId(peer)))
            }
            Kind::Group => {
                let g =
                    target.parse::<u64>().map_err(|_| command::usage(command, "a group id is a number"))?;
                Ok(ConversationId::Group(GroupId(g)))
            }
        }
    }
}
