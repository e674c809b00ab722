//! What the client prints: one [`Event`] per line, as text for people or, with `--json`,
//! as a JSON object whose `event` field names it (`{"event":"sent","seq":3,...}`).
//! Fields marked `serde(skip)` only serve the text form (names the client looked up).

use std::io::Write as _;
use std::sync::Mutex;

use serde::Serialize;
use services::{api, ConversationId};

/// Something the client prints.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A command failed.
    Error {
        /// The command (`login`, `group invite`, `input` for an unreadable line).
        command: String,
        /// `Usage`, or the status code of the failed call.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// A friend came online or went offline.
    Presence {
        /// Who.
        user_id: u64,
        /// Their name, if known.
        name: String,
        /// Online now.
        online: bool,
    },
    /// Another login of this user replaced this session.
    Kicked {
        /// The server's reason.
        reason: String,
    },
    /// A message from someone else.
    Message {
        /// Where it was sent.
        conversation: Conversation,
        /// Its sequence in the conversation.
        seq: u64,
        /// Its sender.
        sender_id: u64,
        /// Its sender's name, if known.
        sender: String,
        /// The sender's id for the send.
        client_msg_id: String,
        /// The text.
        body: String,
        /// When the server stored it.
        sent_at_ms: i64,
        /// The conversation for people (`@bob`, `group 3`).
        #[serde(skip)]
        label: String,
    },
    /// The connection to the server was lost (the client resumes the session).
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A login opened a session.
    LoggedIn(Session),
    /// The session was resumed with its token after a lost connection.
    ReloggedIn(Session),
    /// A message was stored.
    Sent {
        /// Where.
        conversation: Conversation,
        /// Its sequence.
        seq: u64,
        /// The id it was sent with.
        client_msg_id: String,
        /// It had been stored before (a retried send).
        duplicate: bool,
        /// The conversation for people.
        #[serde(skip)]
        label: String,
    },
    /// `wait` is over.
    Waited {
        /// Messages received while waiting.
        received: u64,
        /// Messages waited for.
        wanted: u64,
        /// Fewer arrived in time.
        timed_out: bool,
    },
    /// The commands (clap's help).
    Help {
        /// The help text.
        text: String,
    },
    /// An account was created.
    Registered {
        /// Its user.
        user: User,
    },
    /// The session was closed.
    LoggedOut,
    /// The password was changed.
    PasswordChanged,
    /// A user looked up.
    User {
        /// Who, and whether online.
        user: Contact,
    },
    /// A friendship began.
    FriendAdded {
        /// The new friend.
        friend: Contact,
    },
    /// A friendship ended.
    FriendRemoved {
        /// The former friend.
        user_id: u64,
        /// Their name, if known.
        #[serde(skip)]
        name: String,
    },
    /// The friends list.
    Friends {
        /// Every friend.
        friends: Vec<Contact>,
    },
    /// A group was created.
    GroupCreated {
        /// The group.
        group: Group,
    },
    /// A user was invited into a group.
    Invited {
        /// The group.
        group_id: u64,
        /// The guest.
        user_id: u64,
        /// When the invitation lapses.
        expires_at_ms: i64,
        /// The guest's name, if known.
        #[serde(skip)]
        name: String,
    },
    /// A member was removed from a group.
    MemberRemoved {
        /// The group.
        group_id: u64,
        /// The former member.
        user_id: u64,
        /// Their name, if known.
        #[serde(skip)]
        name: String,
    },
    /// This user joined a group.
    GroupJoined {
        /// The group.
        group: Group,
    },
    /// This user left a group.
    GroupLeft {
        /// The group.
        group_id: u64,
    },
    /// This user's groups.
    Groups {
        /// Every group.
        groups: Vec<Group>,
    },
    /// A group's members.
    Members {
        /// The group.
        group_id: u64,
        /// Every member.
        members: Vec<Contact>,
    },
    /// A page of a conversation's history.
    History {
        /// The conversation.
        conversation: Conversation,
        /// The page, oldest first.
        messages: Vec<HistoryMessage>,
        /// More lie beyond the page.
        has_more: bool,
        /// The conversation for people.
        #[serde(skip)]
        label: String,
    },
    /// A Sync fetched what was missed.
    Synced {
        /// Messages printed by it.
        messages: u64,
    },
    /// A conversation was marked read.
    Acked {
        /// The conversation.
        conversation: Conversation,
        /// Read up to here now.
        read_seq: u64,
        /// The conversation for people.
        #[serde(skip)]
        label: String,
    },
}

/// A conversation: `{"direct":[LOW,HIGH]}` or `{"group":ID}`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conversation {
    /// One-to-one, the smaller user id first.
    Direct([u64; 2]),
    /// A group's.
    Group(u64),
}

impl From<ConversationId> for Conversation {
    fn from(id: ConversationId) -> Self {
        match id {
            ConversationId::Direct { low, high } => Conversation::Direct([low.0, high.0]),
            ConversationId::Group(g) => Conversation::Group(g.0),
        }
    }
}

/// What a login or resume opened.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// Who is logged in.
    pub user: User,
    /// Their friends.
    pub friends: Vec<Contact>,
    /// Their groups, with members.
    pub groups: Vec<LoginGroup>,
    /// Unread messages over every conversation.
    pub unread: u64,
    /// The login replaced another session of the user.
    pub replaced_session: bool,
}

/// A user.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Their id.
    pub id: u64,
    /// Their name.
    pub name: String,
}

impl From<&api::User> for User {
    fn from(user: &api::User) -> Self {
        User { id: user.id, name: user.name.clone() }
    }
}

/// A user and whether they are online.
#[derive(Debug, Clone, Serialize)]
pub struct Contact {
    /// Their id.
    pub id: u64,
    /// Their name.
    pub name: String,
    /// Online now.
    pub online: bool,
}

impl From<&api::Contact> for Contact {
    fn from(contact: &api::Contact) -> Self {
        let user = contact.user.clone().unwrap_or_default();
        Contact { id: user.id, name: user.name, online: contact.online }
    }
}

/// A group.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner_id: u64,
    /// Anyone may join (else by invitation).
    pub public: bool,
    /// `shared` (members read all history) or `joined` (from their join on).
    pub history: &'static str,
    /// The owner's name, if known.
    #[serde(skip)]
    pub owner: String,
}

impl Group {
    /// `group` as printed; `owner` names its owner.
    pub fn new(group: &api::Group, owner: String) -> Group {
        let shared = group.history == api::HistoryVisibility::HistoryShared as i32;
        Group {
            id: group.id,
            name: group.name.clone(),
            owner_id: group.owner_id,
            public: group.public,
            history: if shared { "shared" } else { "joined" },
            owner,
        }
    }

    /// "public" or "private", and which history members read, for people.
    fn kind(&self) -> String {
        let access = if self.public { "public" } else { "private" };
        let history =
            if self.history == "shared" { "all history shared" } else { "members read from their join on" };
        format!("{access}, {history}")
    }
}

/// A group in a login's answer, with its members.
#[derive(Debug, Clone, Serialize)]
pub struct LoginGroup {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its members.
    pub members: Vec<Contact>,
}

/// A message in a page of history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryMessage {
    /// Its sequence.
    pub seq: u64,
    /// Its sender.
    pub sender_id: u64,
    /// Its sender's name, if known.
    pub sender: String,
    /// The text.
    pub body: String,
    /// When the server stored it.
    pub sent_at_ms: i64,
}

fn online(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

fn contacts(what: &str, list: &[Contact]) -> String {
    let mut text = format!("{} {what}", list.len());
    for c in list {
        text.push_str(&format!("\n  {} (id {}) {}", c.name, c.id, online(c.online)));
    }
    text
}

impl std::fmt::Display for Event {
    /// The text form, for people.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Error { command, code, message } => write!(f, "error: {command}: {code}: {message}"),
            Event::Presence { name, online: on, .. } => write!(f, "* {name} is {}", online(*on)),
            Event::Kicked { reason } => write!(f, "* kicked: {reason}"),
            Event::Message { seq, sender, body, label, .. } => write!(f, "[{label} #{seq}] {sender}: {body}"),
            Event::Disconnected { reason } => write!(f, "* connection lost: {reason}"),
            Event::LoggedIn(s) | Event::ReloggedIn(s) => write!(
                f,
                "logged in as {} (id {}); {} friends, {} groups, {} unread{}",
                s.user.name,
                s.user.id,
                s.friends.len(),
                s.groups.len(),
                s.unread,
                if s.replaced_session { "; replaced another session" } else { "" }
            ),
            Event::Sent { seq, label, .. } => write!(f, "sent to {label} as #{seq}"),
            Event::Waited { received, wanted, .. } => write!(f, "* waited: {received} of {wanted} messages"),
            Event::Help { text } => f.write_str(text.trim_end()),
            Event::Registered { user } => write!(f, "registered {} (id {})", user.name, user.id),
            Event::LoggedOut => f.write_str("logged out"),
            Event::PasswordChanged => f.write_str("password changed; other devices must log in again"),
            Event::User { user } => write!(f, "{} (id {}) is {}", user.name, user.id, online(user.online)),
            Event::FriendAdded { friend: c } => {
                write!(f, "{} (id {}) is now your friend ({})", c.name, c.id, online(c.online))
            }
            Event::FriendRemoved { name, .. } => write!(f, "{name} is no longer your friend"),
            Event::Friends { friends } => f.write_str(&contacts("friends", friends)),
            Event::GroupCreated { group } => {
                write!(f, "created group {} (id {}, {})", group.name, group.id, group.kind())
            }
            Event::Invited { group_id, name, .. } => write!(f, "invited {name} into group {group_id}"),
            Event::MemberRemoved { group_id, name, .. } => write!(f, "removed {name} from group {group_id}"),
            Event::GroupJoined { group } => write!(f, "joined group {} (id {})", group.name, group.id),
            Event::GroupLeft { group_id } => write!(f, "left group {group_id}"),
            Event::Groups { groups } => {
                write!(f, "{} groups", groups.len())?;
                for g in groups {
                    write!(f, "\n  {} (id {}, owner {})", g.name, g.id, g.owner)?;
                }
                Ok(())
            }
            Event::Members { members, .. } => f.write_str(&contacts("members", members)),
            Event::History { messages, has_more, label, .. } => {
                write!(f, "history of {label}: {} messages", messages.len())?;
                for m in messages {
                    write!(f, "\n  #{} {}: {}", m.seq, m.sender, m.body)?;
                }
                if *has_more {
                    f.write_str("\n  (more)")?;
                }
                Ok(())
            }
            Event::Synced { messages } => write!(f, "synced {messages} messages"),
            Event::Acked { read_seq, label, .. } => write!(f, "{label} read up to #{read_seq}"),
        }
    }
}

impl From<&super::Error> for Event {
    fn from(error: &super::Error) -> Self {
        Event::Error {
            command: error.command().to_owned(),
            code: error.code().to_owned(),
            message: error.message(),
        }
    }
}

impl From<super::Error> for Event {
    fn from(error: super::Error) -> Self {
        Event::from(&error)
    }
}

/// Prints events to stdout, one per line, whole lines even from two threads.
#[derive(Debug)]
pub struct Printer {
    /// JSON lines instead of text.
    json: bool,
    /// Held while a line is written: the push thread prints too.
    lock: Mutex<()>,
}

impl Printer {
    /// Prints as JSON lines if `json`, else as text.
    pub fn new(json: bool) -> Printer {
        Printer { json, lock: Mutex::new(()) }
    }

    /// Prints `event`.
    pub fn print(&self, event: &Event) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut stdout = std::io::stdout().lock();
        if self.json {
            let line = serde_json::to_string(event).unwrap_or_else(|e| {
                format!(
                    "{{\"event\":\"error\",\"command\":\"print\",\"code\":\"Internal\",\"message\":\"{e}\"}}"
                )
            });
            let _ = writeln!(stdout, "{line}");
        } else {
            let _ = writeln!(stdout, "{event}");
        }
        let _ = stdout.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_the_field_names_readers_use() {
        let sent = Event::Sent {
            conversation: Conversation::Direct([3, 7]),
            seq: 2,
            client_msg_id: "ab-1".into(),
            duplicate: false,
            label: "@bob".into(),
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            serde_json::json!({"event": "sent", "conversation": {"direct": [3, 7]}, "seq": 2,
                               "client_msg_id": "ab-1", "duplicate": false})
        );
        assert_eq!(sent.to_string(), "sent to @bob as #2");
        assert_eq!(
            serde_json::to_value(Event::LoggedOut).unwrap(),
            serde_json::json!({"event": "logged_out"})
        );
        let acked =
            Event::Acked { conversation: Conversation::Group(5), read_seq: 9, label: "group 5".into() };
        assert_eq!(
            serde_json::to_value(&acked).unwrap(),
            serde_json::json!({"event": "acked", "conversation": {"group": 5}, "read_seq": 9})
        );
        let session = Session {
            user: User { id: 1, name: "ann".into() },
            friends: vec![Contact { id: 2, name: "ben".into(), online: true }],
            groups: Vec::new(),
            unread: 4,
            replaced_session: false,
        };
        let relogged = serde_json::to_value(Event::ReloggedIn(session)).unwrap();
        assert_eq!(relogged["event"], "relogged_in");
        assert_eq!(relogged["user"], serde_json::json!({"id": 1, "name": "ann"}));
        assert_eq!(relogged["friends"][0], serde_json::json!({"id": 2, "name": "ben", "online": true}));
        assert_eq!(relogged["unread"], 4);
    }
}
