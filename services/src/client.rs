//! `chatroom client`: a command-line chat client over the generated `Gateway` stub.
//!
//! Commands are read one per line (see [`HELP`]). Replies, incoming messages, presence
//! changes and kicks are printed one event per line, as text or (with `json`) as JSON
//! lines. The client keeps, per conversation, the sequence up to which it has seen
//! everything, and the sequences above it seen already (its own sends, pushes that
//! overtook an earlier message): every message is printed once, and nothing is skipped.
//! At login it Syncs what it missed; when a pushed message leaves a gap no earlier push
//! or send explains, it Syncs the gap; when the connection is lost it resumes the session
//! with the session token its login was given (never sending the password again) and
//! Syncs. A send carries a client message id (a per-process random prefix and a
//! counter), reused when the send is retried (on an unknown outcome or while the system
//! is unavailable, for up to 20 s), so a retry is never stored twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rand::Rng as _;
use rpc_core::client::{self, Channel};
use serde_json::{json, Value};

use crate::api::{self, GatewayClient};
use crate::convert;
use crate::proxy::{PUSH_METHOD, PUSH_SERVICE};
use crate::{ConversationId, GroupId, UserId};

/// The commands, as `help` prints them.
pub const HELP: &str = "\
commands:
  register NAME PASSWORD        create an account
  login NAME PASSWORD           open a session (syncs what you missed)
  logout                        close the session
  passwd OLD NEW                change your password (other devices must log in again)
  find NAME                     look a user up
  friend add NAME|ID            befriend a user
  friend remove NAME|ID         end a friendship
  friend list                   friends with online state
  group create NAME [public] [shared]
                                create a group (you own it): private unless
                                public; members read from their join on
                                unless shared (then all history)
  group join ID                 join a group (a private one needs an invitation)
  group invite ID NAME|ID       let a user join your group (for 7 days)
  group remove ID NAME|ID       remove a member (owner only)
  group leave ID                leave a group
  group list                    your groups
  group members ID              a group's members
  send user NAME|ID TEXT        send to a user
  send group ID TEXT            send to a group
  history user|group X [before|after SEQ] [LIMIT]
                                a page of a conversation's history
  sync                          fetch every missed message
  ack user|group X SEQ          mark a conversation read up to SEQ
  wait N [TIMEOUT_MS]           wait for N incoming messages (default 10000 ms)
  help                          this text
  quit                          leave";

/// How long a send that could not get through is retried (with the same client message id).
const SEND_RETRY_FOR: Duration = Duration::from_secs(20);

/// How the client prints and behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy to connect to.
    pub server: SocketAddr,
    /// JSON lines instead of text.
    pub json: bool,
    /// Show a prompt (stdin is a terminal).
    pub interactive: bool,
}

/// Prints events, one per line.
struct Out {
    json: bool,
    lock: Mutex<()>,
}

impl Out {
    fn emit(&self, value: Value, text: String) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut stdout = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(stdout, "{value}");
        } else {
            let _ = writeln!(stdout, "{text}");
        }
        let _ = stdout.flush();
    }

    fn error(&self, command: &str, code: &str, message: &str) {
        self.emit(
            json!({"event": "error", "command": command, "code": code, "message": message}),
            format!("error: {command}: {code}: {message}"),
        );
    }
}

/// What the client remembers across calls and reconnects.
#[derive(Default)]
struct State {
    /// The session token of the current session, to resume it after a reconnect without
    /// the password (which the client does not keep).
    session_token: Option<String>,
    me: Option<api::User>,
    /// What has been seen of each conversation, by the user `seen_by`.
    seen: BTreeMap<ConversationId, Seen>,
    /// Whose conversations `seen` holds (the name in lower case, as names are unique
    /// ignoring case): kept across a logout, dropped when a login as someone else starts
    /// (not when it is answered: pushes for the new session may already be shown).
    seen_by: Option<String>,
    /// Names of users seen so far, for printing.
    names: HashMap<u64, String>,
    /// Incoming messages printed so far (for `wait`).
    received: u64,
}

/// What the client has seen of one conversation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    /// Every sequence up to this one has been seen (printed, or sent by this client).
    upto: u64,
    /// Sequences above `upto` seen already: this client's sends, and pushes that
    /// overtook an earlier message.
    above: BTreeSet<u64>,
}

impl Seen {
    /// Starts after `upto`.
    fn after(upto: u64) -> Seen {
        Seen { upto, above: BTreeSet::new() }
    }

    /// Starts just before `seq`: where the server says the unseen part begins.
    fn before(seq: u64) -> Seen {
        Seen::after(seq.saturating_sub(1))
    }

    /// Records `seq` as seen; false if it was already.
    fn see(&mut self, seq: u64) -> bool {
        if seq <= self.upto || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
        true
    }

    /// Whether `seq` was seen.
    fn has(&self, seq: u64) -> bool {
        seq <= self.upto || self.above.contains(&seq)
    }

    /// Whether some sequence before `seq` has not been seen.
    fn gap_before(&self, seq: u64) -> bool {
        if seq <= self.upto + 1 {
            return false;
        }
        let seen_between = self.above.range(self.upto + 1..seq).count() as u64;
        seq > self.upto + 1 + seen_between
    }
}

/// The client: a connection, its state and its printer.
pub struct Client {
    gateway: GatewayClient,
    state: Mutex<State>,
    arrived: Condvar,
    out: Out,
    msg_prefix: String,
    msg_counter: AtomicU64,
}

enum Incoming {
    Push(api::Push),
    Disconnected(String),
}

fn failure(command: &str, e: &rpc_core::Error) -> (String, String, String) {
    let message = match e {
        rpc_core::Error::Status(s) => s.message.clone(),
        other => other.to_string(),
    };
    (command.to_owned(), e.code().as_str().to_owned(), message)
}

/// Whether a failed `SendMessage` should be sent again with the same client message id:
/// its outcome is unknown (DeadlineExceeded, or a time-out or lost connection here: it
/// may have been stored, and only a retry tells), or the system was unavailable.
fn send_may_succeed_later(error: &rpc_core::Error) -> bool {
    error.outcome() == rpc_core::Outcome::Unknown
        || matches!(error.code(), rpc_core::Code::Unavailable | rpc_core::Code::DeadlineExceeded)
}

/// A failed command: (command, code, message).
type Failed = (String, String, String);

fn usage(command: &str, what: &str) -> Failed {
    (command.to_owned(), "Usage".to_owned(), what.to_owned())
}

impl Client {
    /// Connects to the proxy and starts the thread that handles pushes.
    pub fn connect(options: &Options) -> anyhow::Result<Arc<Client>> {
        let (tx, rx) = mpsc::channel::<Incoming>();
        let push_tx = tx.clone();
        let on_push = move |service: &str, method: &str, body: bytes::Bytes| {
            if (service, method) == (PUSH_SERVICE, PUSH_METHOD) {
                if let Ok(push) = api::Push::decode(body) {
                    let _ = push_tx.send(Incoming::Push(push));
                }
            }
        };
        let on_disconnect = move |e: &rpc_core::Error| {
            let _ = tx.send(Incoming::Disconnected(e.to_string()));
        };
        let config = client::Config {
            on_push: Some(Arc::new(on_push)),
            on_disconnect: Some(Arc::new(on_disconnect)),
            ..client::Config::default()
        };
        let channel = Channel::connect(options.server, config)
            .map_err(|e| anyhow::anyhow!("{e} (is a proxy or `chatroom standalone` running there?)"))?;
        let prefix: u64 = rand::thread_rng().gen();
        let client = Arc::new(Client {
            gateway: GatewayClient::new(channel).with_timeout(Duration::from_secs(15)),
            state: Mutex::default(),
            arrived: Condvar::new(),
            out: Out { json: options.json, lock: Mutex::new(()) },
            msg_prefix: format!("{prefix:016x}"),
            msg_counter: AtomicU64::new(0),
        });
        let worker = client.clone();
        std::thread::spawn(move || {
            for incoming in rx {
                match incoming {
                    Incoming::Push(push) => worker.on_push(push),
                    Incoming::Disconnected(reason) => worker.on_disconnect(&reason),
                }
            }
        });
        Ok(client)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name_of(&self, id: u64) -> String {
        self.state().names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    fn remember(&self, user: &api::User) {
        self.state().names.insert(user.id, user.name.clone());
    }

    fn on_push(&self, push: api::Push) {
        match push.event {
            Some(api::push::Event::Message(message)) => self.incoming_message(message),
            Some(api::push::Event::Presence(change)) => {
                let name = self.name_of(change.user_id);
                let state = if change.online { "online" } else { "offline" };
                self.out.emit(
                    json!({"event": "presence", "user_id": change.user_id, "name": name, "online": change.online}),
                    format!("* {name} is {state}"),
                );
            }
            Some(api::push::Event::Kicked(kicked)) => {
                // Another session replaced this one: resuming would kick it in turn.
                self.state().session_token = None;
                self.out.emit(
                    json!({"event": "kicked", "reason": kicked.reason}),
                    format!("* kicked: {}", kicked.reason),
                );
            }
            None => {}
        }
    }

    /// A pushed message: printed if new, after Syncing any gap before it. A gap that the
    /// Sync could not fill (it failed) stays open: the next Sync fetches it.
    fn incoming_message(&self, message: api::Message) {
        let Ok(id) = convert::conversation_id(message.conversation) else { return };
        let tracked =
            self.state().seen.get(&id).map(|seen| seen.has(message.seq) || !seen.gap_before(message.seq));
        match tracked {
            // Seen already (`show` drops it), or the next one.
            Some(true) => {}
            Some(false) => {
                if let Err((c, code, m)) = self.sync() {
                    self.out.error(&c, &code, &m);
                }
            }
            None => {
                // A conversation new since login (a first message, a group joined): the
                // server knows where its unread part starts.
                if let Err((c, code, m)) = self.sync() {
                    self.out.error(&c, &code, &m);
                }
                self.state().seen.entry(id).or_insert_with(|| Seen::before(message.seq));
            }
        }
        self.show(message);
    }

    /// Prints a message unless already seen, and records it as seen. A message this
    /// process sent (a Sync may return it before its send is answered) is not printed:
    /// its `sent` line says it.
    fn show(&self, message: api::Message) {
        let Ok(id) = convert::conversation_id(message.conversation) else { return };
        {
            let mut state = self.state();
            let mine = state.me.as_ref().map(|u| u.id) == Some(message.sender_id);
            if !state.seen.entry(id).or_default().see(message.seq) || (mine && self.sent_here(&message)) {
                return;
            }
            // Only messages from others count as incoming (a Sync may return our own).
            if !mine {
                state.received += 1;
            }
        }
        self.learn_names(id, message.sender_id);
        let from = self.name_of(message.sender_id);
        let (conv_json, conv_text) = self.describe(id);
        self.out.emit(
            json!({"event": "message", "conversation": conv_json, "seq": message.seq, "sender_id": message.sender_id,
                   "sender": from, "client_msg_id": message.client_msg_id, "body": message.body,
                   "sent_at_ms": message.sent_at_ms}),
            format!("[{conv_text} #{}] {from}: {}", message.seq, message.body),
        );
        // Only now: a `wait` that this message completes must find it printed.
        self.arrived.notify_all();
    }

    /// Learns the name of a sender not seen before (someone who wrote to us first, or
    /// joined one of our groups after login): by id, or from the group's members.
    fn learn_names(&self, conversation: ConversationId, sender: u64) {
        if self.state().names.contains_key(&sender) {
            return;
        }
        let users: Vec<api::User> = match conversation {
            ConversationId::Direct { .. } => self
                .gateway
                .find_user(&api::FindUserRequest { user_id: sender, ..Default::default() })
                .map(|r| r.user.and_then(|c| c.user).into_iter().collect())
                .unwrap_or_default(),
            ConversationId::Group(g) => self
                .gateway
                .group_members(&api::GroupMembersRequest { group_id: g.0 })
                .map(|r| r.members.into_iter().filter_map(|c| c.user).collect())
                .unwrap_or_default(),
        };
        for user in &users {
            self.remember(user);
        }
    }

    fn describe(&self, id: ConversationId) -> (Value, String) {
        match id {
            ConversationId::Direct { low, high } => {
                let me = self.state().me.as_ref().map(|u| u.id);
                let peer = if Some(low.0) == me { high.0 } else { low.0 };
                (json!({"direct": [low.0, high.0]}), format!("@{}", self.name_of(peer)))
            }
            ConversationId::Group(g) => (json!({"group": g.0}), format!("group {}", g.0)),
        }
    }

    fn on_disconnect(&self, reason: &str) {
        let logged_in = self.state().session_token.is_some();
        self.out
            .emit(json!({"event": "disconnected", "reason": reason}), format!("* connection lost: {reason}"));
        if !logged_in {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(100);
        while Instant::now() < deadline {
            std::thread::sleep(pause);
            match self.resume() {
                Ok(()) => return,
                Err((_, code, _)) if code == "Unavailable" || code == "DeadlineExceeded" => {
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err((c, code, m)) => {
                    self.out.error(&c, &code, &m);
                    return;
                }
            }
        }
    }

    fn login(&self, name: &str, password: &str) -> Result<(), Failed> {
        {
            let mut state = self.state();
            let whose = name.to_ascii_lowercase();
            if state.seen_by.as_ref() != Some(&whose) {
                state.seen.clear();
                state.seen_by = Some(whose);
            }
        }
        let request =
            api::LoginRequest { name: name.into(), password: password.into(), ..Default::default() };
        let response = self.gateway.login(&request).map_err(|e| failure("login", &e))?;
        self.state().session_token = response.session_token.as_ref().map(|t| t.token.clone());
        self.opened(response, false)
    }

    /// Opens the session again with the session token of the last login, after a lost
    /// connection. When the token is refused (it expired, or the password changed
    /// elsewhere) the client forgets it: the user logs in again.
    fn resume(&self) -> Result<(), Failed> {
        let Some(session_token) = self.state().session_token.clone() else {
            return Err(("resume".into(), "Unauthenticated".into(), "not logged in".into()));
        };
        let response = match self.gateway.resume(&api::ResumeRequest { session_token }) {
            Ok(response) => response,
            Err(e) => {
                if e.code() == rpc_core::Code::Unauthenticated {
                    self.state().session_token = None;
                }
                return Err(failure("resume", &e));
            }
        };
        self.opened(response, true)
    }

    /// Takes in the answer to a login or resume: who is logged in, friends, groups and
    /// where each conversation starts; prints it, then Syncs.
    fn opened(&self, response: api::LoginResponse, again: bool) -> Result<(), Failed> {
        let user = response.user.clone().unwrap_or_default();
        {
            let mut state = self.state();
            state.me = Some(user.clone());
            // A conversation not followed yet starts after what the user acknowledged.
            for conversation in &response.conversations {
                if let Ok(id) = convert::conversation_id(conversation.conversation) {
                    state.seen.entry(id).or_insert_with(|| Seen::after(conversation.read_seq));
                }
            }
            state.names.insert(user.id, user.name.clone());
            for friend in response.friends.iter().filter_map(|c| c.user.as_ref()) {
                state.names.insert(friend.id, friend.name.clone());
            }
            for group in &response.groups {
                for member in group.members.iter().filter_map(|c| c.user.as_ref()) {
                    state.names.insert(member.id, member.name.clone());
                }
            }
        }
        let friends: Vec<Value> = response.friends.iter().map(contact_json).collect();
        let groups: Vec<Value> = response
            .groups
            .iter()
            .map(|g| {
                let group = g.group.clone().unwrap_or_default();
                json!({"id": group.id, "name": group.name, "members": g.members.iter().map(contact_json).collect::<Vec<_>>()})
            })
            .collect();
        let unread: u64 = response.conversations.iter().map(|c| c.unread).sum();
        let event = if again { "relogged_in" } else { "logged_in" };
        self.out.emit(
            json!({"event": event, "user": user_json(&user), "friends": friends, "groups": groups,
                   "unread": unread, "replaced_session": response.replaced_session}),
            format!(
                "logged in as {} (id {}); {} friends, {} groups, {unread} unread{}",
                user.name,
                user.id,
                response.friends.len(),
                response.groups.len(),
                if response.replaced_session { "; replaced another session" } else { "" }
            ),
        );
        self.sync()
    }

    /// Fetches every missed message, page by page, and prints them. For a conversation
    /// it does not follow yet, the server starts after the user's acknowledged sequence,
    /// which becomes where the client starts.
    fn sync(&self) -> Result<(), Failed> {
        loop {
            let (cursors, followed): (Vec<api::Cursor>, HashSet<ConversationId>) = self
                .state()
                .seen
                .iter()
                .map(|(id, seen)| {
                    (api::Cursor { conversation: Some(convert::conversation(*id)), seq: seen.upto }, *id)
                })
                .unzip();
            let response = self
                .gateway
                .sync(&api::SyncRequest { cursors, limit: 0 })
                .map_err(|e| failure("sync", &e))?;
            let fetched = response.messages.len();
            for message in response.messages {
                if let Ok(id) = convert::conversation_id(message.conversation) {
                    if !followed.contains(&id) {
                        self.state().seen.entry(id).or_insert_with(|| Seen::before(message.seq));
                    }
                }
                self.show(message);
            }
            if !response.has_more || fetched == 0 {
                return Ok(());
            }
        }
    }

    /// The user id for a name or a number.
    fn user_id(&self, command: &str, who: &str) -> Result<u64, Failed> {
        if let Ok(id) = who.parse::<u64>() {
            return Ok(id);
        }
        let response = self
            .gateway
            .find_user(&api::FindUserRequest { name: who.into(), ..Default::default() })
            .map_err(|e| failure(command, &e))?;
        let user = response.user.and_then(|c| c.user).unwrap_or_default();
        self.remember(&user);
        Ok(user.id)
    }

    fn conversation(&self, command: &str, kind: &str, target: &str) -> Result<ConversationId, Failed> {
        match kind {
            "user" => {
                let me = self.state().me.as_ref().map(|u| u.id).ok_or_else(|| {
                    (command.to_owned(), "Unauthenticated".to_owned(), "log in first".to_owned())
                })?;
                let peer = self.user_id(command, target)?;
                Ok(ConversationId::direct(UserId(me), UserId(peer)))
            }
            "group" => {
                let g = target.parse::<u64>().map_err(|_| usage(command, "a group id is a number"))?;
                Ok(ConversationId::Group(GroupId(g)))
            }
            _ => Err(usage(command, "expected `user NAME|ID` or `group ID`")),
        }
    }

    /// Whether this process sent `message` (its client message id has our prefix).
    fn sent_here(&self, message: &api::Message) -> bool {
        message.client_msg_id.strip_prefix(self.msg_prefix.as_str()).is_some_and(|rest| rest.starts_with('-'))
    }

    fn next_msg_id(&self) -> String {
        let n = self.msg_counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.msg_prefix)
    }

    fn send(&self, id: ConversationId, body: &str) -> Result<(), Failed> {
        let request = api::SendMessageRequest {
            conversation: Some(convert::conversation(id)),
            client_msg_id: self.next_msg_id(),
            body: body.into(),
        };
        // Lost on the way, the system restarting, or the outcome unknown (it may have been
        // stored): the same client message id makes a retry safe, so keep trying for a
        // while rather than fail a message the user would type again under a new id.
        let give_up = Instant::now() + SEND_RETRY_FOR;
        let mut pause = Duration::from_millis(200);
        let response = loop {
            match self.gateway.send_message(&request) {
                Ok(response) => break response,
                Err(e) if Instant::now() < give_up && send_may_succeed_later(&e) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                    if self.state().session_token.is_some() {
                        let _ = self.resume();
                    }
                }
                Err(e) => return Err(failure("send", &e)),
            }
        };
        let message = response.message.unwrap_or_default();
        let (conv_json, conv_text) = self.describe(id);
        // Seen, not printed as a message: its `sent` line says it. In a conversation not
        // followed yet (a group just joined), the server moved the read cursor to it.
        self.state().seen.entry(id).or_insert_with(|| Seen::before(message.seq)).see(message.seq);
        self.out.emit(
            json!({"event": "sent", "conversation": conv_json, "seq": message.seq,
                   "client_msg_id": message.client_msg_id, "duplicate": response.duplicate}),
            format!("sent to {conv_text} as #{}", message.seq),
        );
        Ok(())
    }

    fn wait(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        let start = state.received;
        while state.received - start < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.arrived.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        let got = state.received - start;
        drop(state);
        self.out.emit(
            json!({"event": "waited", "received": got, "wanted": n, "timed_out": got < n}),
            format!("* waited: {got} of {n} messages"),
        );
    }

    /// Runs one command line. `Ok(false)` means quit.
    pub fn run_line(&self, line: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || words[0].starts_with('#') {
            return true;
        }
        if matches!(words[0], "quit" | "exit") {
            return false;
        }
        if let Err((command, code, message)) = self.command(line, &words) {
            self.out.error(&command, &code, &message);
        }
        true
    }

    fn command(&self, line: &str, words: &[&str]) -> Result<(), Failed> {
        let rest_after = |n: usize| -> String {
            // The text after the first n words, as typed.
            let mut rest = line.trim_start();
            for _ in 0..n {
                rest = rest.trim_start();
                rest = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
            }
            rest.trim().to_owned()
        };
        let ok = |value: Value, text: String| self.out.emit(value, text);
        match words {
            ["help"] => ok(json!({"event": "help", "text": HELP}), HELP.to_owned()),
            ["register", name, password] => {
                let request = api::RegisterRequest {
                    name: (*name).into(),
                    password: (*password).into(),
                    ..Default::default()
                };
                let user = self
                    .gateway
                    .register(&request)
                    .map_err(|e| failure("register", &e))?
                    .user
                    .unwrap_or_default();
                self.remember(&user);
                ok(
                    json!({"event": "registered", "user": user_json(&user)}),
                    format!("registered {} (id {})", user.name, user.id),
                );
            }
            ["register", ..] => return Err(usage("register", "register NAME PASSWORD")),
            ["login", name, password] => self.login(name, password)?,
            ["login", ..] => return Err(usage("login", "login NAME PASSWORD")),
            ["logout"] => {
                self.gateway.logout(&api::LogoutRequest {}).map_err(|e| failure("logout", &e))?;
                let mut state = self.state();
                state.session_token = None;
                state.me = None;
                drop(state);
                ok(json!({"event": "logged_out"}), "logged out".to_owned());
            }
            ["passwd", old, new] => {
                let request =
                    api::ChangePasswordRequest { old_password: (*old).into(), new_password: (*new).into() };
                let response = self.gateway.change_password(&request).map_err(|e| failure("passwd", &e))?;
                self.state().session_token = response.session_token.map(|t| t.token);
                ok(
                    json!({"event": "password_changed"}),
                    "password changed; other devices must log in again".to_owned(),
                );
            }
            ["passwd", ..] => return Err(usage("passwd", "passwd OLD NEW")),
            ["find", name] => {
                let response = self
                    .gateway
                    .find_user(&api::FindUserRequest { name: (*name).into(), ..Default::default() })
                    .map_err(|e| failure("find", &e))?;
                let contact = response.user.unwrap_or_default();
                let user = contact.user.clone().unwrap_or_default();
                self.remember(&user);
                ok(
                    json!({"event": "user", "user": contact_json(&contact)}),
                    format!("{} (id {}) is {}", user.name, user.id, online(contact.online)),
                );
            }
            ["friend", "add", who] => {
                let friend = match who.parse::<u64>() {
                    Ok(id) => api::add_friend_request::Friend::UserId(id),
                    Err(_) => api::add_friend_request::Friend::Name((*who).into()),
                };
                let response = self
                    .gateway
                    .add_friend(&api::AddFriendRequest { friend: Some(friend) })
                    .map_err(|e| failure("friend add", &e))?;
                let contact = response.friend.unwrap_or_default();
                let user = contact.user.clone().unwrap_or_default();
                self.remember(&user);
                ok(
                    json!({"event": "friend_added", "friend": contact_json(&contact)}),
                    format!("{} (id {}) is now your friend ({})", user.name, user.id, online(contact.online)),
                );
            }
            ["friend", "remove", who] => {
                let id = self.user_id("friend remove", who)?;
                self.gateway
                    .remove_friend(&api::RemoveFriendRequest { user_id: id })
                    .map_err(|e| failure("friend remove", &e))?;
                ok(
                    json!({"event": "friend_removed", "user_id": id}),
                    format!("{} is no longer your friend", self.name_of(id)),
                );
            }
            ["friend", "list"] => {
                let response = self
                    .gateway
                    .list_friends(&api::ListFriendsRequest {})
                    .map_err(|e| failure("friend list", &e))?;
                let mut text = format!("{} friends", response.friends.len());
                for contact in &response.friends {
                    let user = contact.user.clone().unwrap_or_default();
                    self.remember(&user);
                    text.push_str(&format!("\n  {} (id {}) {}", user.name, user.id, online(contact.online)));
                }
                let friends: Vec<Value> = response.friends.iter().map(contact_json).collect();
                ok(json!({"event": "friends", "friends": friends}), text);
            }
            ["friend", ..] => return Err(usage("friend", "friend add|remove NAME|ID, friend list")),
            ["group", "create", ..] if words.len() > 2 => {
                let request = create_group_request(&rest_after(2));
                let group = self
                    .gateway
                    .create_group(&request)
                    .map_err(|e| failure("group create", &e))?
                    .group
                    .unwrap_or_default();
                ok(
                    json!({"event": "group_created", "group": group_json(&group)}),
                    format!("created group {} (id {}, {})", group.name, group.id, group_kind(&group)),
                );
            }
            ["group", "invite", id, who] => {
                let group_id = id.parse().map_err(|_| usage("group invite", "group invite ID NAME|ID"))?;
                let user_id = self.user_id("group invite", who)?;
                let response = self
                    .gateway
                    .invite(&api::InviteRequest { group_id, user_id })
                    .map_err(|e| failure("group invite", &e))?;
                ok(
                    json!({"event": "invited", "group_id": group_id, "user_id": user_id,
                           "expires_at_ms": response.expires_at_ms}),
                    format!("invited {} into group {group_id}", self.name_of(user_id)),
                );
            }
            ["group", "remove", id, who] => {
                let group_id = id.parse().map_err(|_| usage("group remove", "group remove ID NAME|ID"))?;
                let user_id = self.user_id("group remove", who)?;
                self.gateway
                    .remove_member(&api::RemoveMemberRequest { group_id, user_id })
                    .map_err(|e| failure("group remove", &e))?;
                ok(
                    json!({"event": "member_removed", "group_id": group_id, "user_id": user_id}),
                    format!("removed {} from group {group_id}", self.name_of(user_id)),
                );
            }
            ["group", "join", id] => {
                let group_id = id.parse().map_err(|_| usage("group join", "group join ID"))?;
                let group = self
                    .gateway
                    .join_group(&api::JoinGroupRequest { group_id })
                    .map_err(|e| failure("group join", &e))?
                    .group
                    .unwrap_or_default();
                ok(
                    json!({"event": "group_joined", "group": group_json(&group)}),
                    format!("joined group {} (id {})", group.name, group.id),
                );
            }
            ["group", "leave", id] => {
                let group_id = id.parse().map_err(|_| usage("group leave", "group leave ID"))?;
                self.gateway
                    .leave_group(&api::LeaveGroupRequest { group_id })
                    .map_err(|e| failure("group leave", &e))?;
                ok(json!({"event": "group_left", "group_id": group_id}), format!("left group {group_id}"));
            }
            ["group", "list"] => {
                let response = self
                    .gateway
                    .list_groups(&api::ListGroupsRequest {})
                    .map_err(|e| failure("group list", &e))?;
                let mut text = format!("{} groups", response.groups.len());
                for g in &response.groups {
                    text.push_str(&format!(
                        "\n  {} (id {}, owner {})",
                        g.name,
                        g.id,
                        self.name_of(g.owner_id)
                    ));
                }
                let groups: Vec<Value> = response.groups.iter().map(group_json).collect();
                ok(json!({"event": "groups", "groups": groups}), text);
            }
            ["group", "members", id] => {
                let group_id = id.parse().map_err(|_| usage("group members", "group members ID"))?;
                let response = self
                    .gateway
                    .group_members(&api::GroupMembersRequest { group_id })
                    .map_err(|e| failure("group members", &e))?;
                let mut text = format!("{} members", response.members.len());
                for contact in &response.members {
                    let user = contact.user.clone().unwrap_or_default();
                    self.remember(&user);
                    text.push_str(&format!("\n  {} (id {}) {}", user.name, user.id, online(contact.online)));
                }
                let members: Vec<Value> = response.members.iter().map(contact_json).collect();
                ok(json!({"event": "members", "group_id": group_id, "members": members}), text);
            }
            ["group", ..] => {
                return Err(usage(
                    "group",
                    "group create NAME [public] [shared], group join|leave|members ID, \
                     group invite|remove ID NAME|ID, group list",
                ))
            }
            ["send", kind, target, _, ..] => {
                let id = self.conversation("send", kind, target)?;
                self.send(id, &rest_after(3))?;
            }
            ["send", ..] => return Err(usage("send", "send user NAME|ID TEXT, send group ID TEXT")),
            ["history", kind, target, more @ ..] => {
                let id = self.conversation("history", kind, target)?;
                let bad = || usage("history", "history user|group X [before|after SEQ] [LIMIT]");
                let (anchor, limit) = match more {
                    [] => (None, 0),
                    [limit] => (None, limit.parse().map_err(|_| bad())?),
                    [dir, seq, rest @ ..] if rest.len() <= 1 => {
                        let seq: u64 = seq.parse().map_err(|_| bad())?;
                        let anchor = match *dir {
                            "before" => api::history_request::Anchor::BeforeSeq(seq),
                            "after" => api::history_request::Anchor::AfterSeq(seq),
                            _ => return Err(bad()),
                        };
                        let limit = rest.first().map_or(Ok(0), |l| l.parse()).map_err(|_| bad())?;
                        (Some(anchor), limit)
                    }
                    _ => return Err(bad()),
                };
                let request =
                    api::HistoryRequest { conversation: Some(convert::conversation(id)), anchor, limit };
                let response = self.gateway.history(&request).map_err(|e| failure("history", &e))?;
                let (conv_json, conv_text) = self.describe(id);
                let mut text = format!("history of {conv_text}: {} messages", response.messages.len());
                let mut messages = Vec::new();
                for m in &response.messages {
                    let from = self.name_of(m.sender_id);
                    text.push_str(&format!("\n  #{} {from}: {}", m.seq, m.body));
                    messages
                        .push(json!({"seq": m.seq, "sender_id": m.sender_id, "sender": from, "body": m.body,
                                         "sent_at_ms": m.sent_at_ms}));
                }
                if response.has_more {
                    text.push_str("\n  (more)");
                }
                ok(
                    json!({"event": "history", "conversation": conv_json, "messages": messages, "has_more": response.has_more}),
                    text,
                );
            }
            ["history", ..] => {
                return Err(usage("history", "history user|group X [before|after SEQ] [LIMIT]"))
            }
            ["sync"] => {
                let before = self.state().received;
                self.sync()?;
                let got = self.state().received - before;
                ok(json!({"event": "synced", "messages": got}), format!("synced {got} messages"));
            }
            ["ack", kind, target, seq] => {
                let id = self.conversation("ack", kind, target)?;
                let seq = seq.parse().map_err(|_| usage("ack", "ack user|group X SEQ"))?;
                let request = api::AckRequest { conversation: Some(convert::conversation(id)), seq };
                let response = self.gateway.ack(&request).map_err(|e| failure("ack", &e))?;
                let (conv_json, conv_text) = self.describe(id);
                ok(
                    json!({"event": "acked", "conversation": conv_json, "read_seq": response.read_seq}),
                    format!("{conv_text} read up to #{}", response.read_seq),
                );
            }
            ["ack", ..] => return Err(usage("ack", "ack user|group X SEQ")),
            ["wait", n, rest @ ..] if rest.len() <= 1 => {
                let n = n.parse().map_err(|_| usage("wait", "wait N [TIMEOUT_MS]"))?;
                let ms = rest
                    .first()
                    .map_or(Ok(10_000), |t| t.parse())
                    .map_err(|_| usage("wait", "wait N [TIMEOUT_MS]"))?;
                self.wait(n, Duration::from_millis(ms));
            }
            [other, ..] => return Err(usage(other, &format!("unknown command {other:?}; try help"))),
            [] => {}
        }
        Ok(())
    }
}

fn online(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

fn user_json(user: &api::User) -> Value {
    json!({"id": user.id, "name": user.name})
}

fn contact_json(contact: &api::Contact) -> Value {
    let user = contact.user.clone().unwrap_or_default();
    json!({"id": user.id, "name": user.name, "online": contact.online})
}

fn group_json(group: &api::Group) -> Value {
    let history =
        if group.history == api::HistoryVisibility::HistoryShared as i32 { "shared" } else { "joined" };
    json!({"id": group.id, "name": group.name, "owner_id": group.owner_id, "public": group.public,
           "history": history})
}

/// "public" or "private", and which history members read, for people.
fn group_kind(group: &api::Group) -> String {
    let access = if group.public { "public" } else { "private" };
    let history = if group.history == api::HistoryVisibility::HistoryShared as i32 {
        "all history shared"
    } else {
        "members read from their join on"
    };
    format!("{access}, {history}")
}

/// `group create`'s arguments: the name, then any of the words `public` and `shared` at
/// its end (a name of one word is taken as the name even if it is one of those).
fn create_group_request(args: &str) -> api::CreateGroupRequest {
    let mut request = api::CreateGroupRequest::default();
    let mut name = args.trim_end();
    while let Some((head, last)) = name.rsplit_once(char::is_whitespace) {
        match last {
            "public" => request.public = true,
            "shared" => request.history = api::HistoryVisibility::HistoryShared as i32,
            _ => break,
        }
        name = head.trim_end();
    }
    request.name = name.to_owned();
    request
}

/// Runs the client: commands from stdin until `quit` or the end of input.
///
/// # Errors
///
/// When the server cannot be reached.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let client = Client::connect(options)?;
    if options.interactive {
        println!("connected to {}; type help for the commands", options.server);
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().split(b'\n');
    loop {
        if options.interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        let Some(Ok(line)) = lines.next() else { break };
        match String::from_utf8(line) {
            Ok(line) => {
                if !client.run_line(line.trim_end_matches('\r')) {
                    break;
                }
            }
            Err(_) => client.out.error("input", "InvalidArgument", "the line is not UTF-8; it was skipped"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{create_group_request, Seen};
    use crate::api::HistoryVisibility;

    #[test]
    fn group_create_reads_public_and_shared_off_the_end_of_the_name() {
        let plain = create_group_request("lunch club");
        assert_eq!((plain.name.as_str(), plain.public, plain.history), ("lunch club", false, 0));
        let open = create_group_request("lunch club public shared");
        assert_eq!(open.name, "lunch club");
        assert!(open.public);
        assert_eq!(open.history, HistoryVisibility::HistoryShared as i32);
        let named = create_group_request("public");
        assert_eq!((named.name.as_str(), named.public), ("public", false), "a one-word name stays the name");
    }

    #[test]
    fn seen_sequences_absorb_into_the_contiguous_prefix() {
        let mut seen = Seen::after(3);
        assert!(!seen.see(2) && !seen.see(3), "at or below the start");
        assert!(!seen.gap_before(4));
        // Our own send (6) overtakes the pushes of 4 and 5.
        assert!(seen.see(6));
        assert!(seen.gap_before(7), "4 and 5 are missing");
        assert!(seen.see(5));
        assert!(seen.gap_before(7), "4 is still missing");
        assert!(seen.see(4));
        assert_eq!(seen, Seen::after(6), "4, 5 and 6 absorbed");
        assert!(!seen.gap_before(7));
        assert!(!seen.see(5) && !seen.see(6), "each once");
        assert!(seen.has(6) && !seen.has(7));
    }
}
