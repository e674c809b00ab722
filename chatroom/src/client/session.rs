//! The client's connection and what it remembers across calls and reconnects: the push
//! thread, logins and resumes with the session token, Syncs that fill gaps, and sends
//! retried under the same client message id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message as _;
use rand::Rng as _;
use rpc_core::client::{self, Channel};
use rpc_core::Code;
use services::api::{self, GatewayClient};
use services::proxy::{PUSH_METHOD, PUSH_SERVICE};
use services::{ConversationId, UserId};

use super::cursor::Seen;
use super::event::{Contact, Event, LoginGroup, Printer, Session, User};
use super::{ConnectError, Error, Options};

/// How long a send that could not get through is retried (with the same client message id).
const SEND_RETRY_FOR: Duration = Duration::from_secs(20);
/// How long the push thread tries to resume a session after the connection is lost.
const RESUME_FOR: Duration = Duration::from_secs(60);

/// What the client remembers across calls and reconnects.
#[derive(Default)]
pub(super) struct State {
    /// The session token of the current session, to resume it after a reconnect without
    /// the password (which the client does not keep).
    pub(super) session_token: Option<String>,
    /// Who is logged in.
    pub(super) me: Option<api::User>,
    /// What has been seen of each conversation, by the user `seen_by`.
    pub(super) seen: BTreeMap<ConversationId, Seen>,
    /// Whose conversations `seen` holds (the name in lower case, as names are unique
    /// ignoring case): kept across a logout, dropped when a login as someone else starts
    /// (not when it is answered: pushes for the new session may already be shown).
    seen_by: Option<String>,
    /// Names of users seen so far, for printing.
    names: HashMap<u64, String>,
    /// Incoming messages printed so far (for `wait` and `sync`).
    pub(super) received: u64,
}

/// The client: a connection, its state and its printer.
pub struct Client {
    /// The gateway stub over the one connection.
    pub(super) gateway: GatewayClient,
    /// What it remembers; the push thread and the command loop share it.
    state: Mutex<State>,
    /// Notified when an incoming message is printed (for `wait`).
    arrived: Condvar,
    /// Prints events.
    out: Printer,
    /// This process's prefix of client message ids, to recognise its own sends.
    msg_prefix: String,
    /// The last client message id's number.
    msg_counter: AtomicU64,
}

/// What the connection hands the push thread.
enum Incoming {
    Push(api::Push),
    Disconnected(String),
}

/// Whether a failed `SendMessage` should be sent again with the same client message id:
/// its outcome is unknown (DeadlineExceeded, or a time-out or lost connection here: it
/// may have been stored, and only a retry tells), the system was unavailable, or the user
/// sent faster than the proxy allows.
fn send_may_succeed_later(error: &rpc_core::Error) -> bool {
    error.outcome() == rpc_core::Outcome::Unknown
        || matches!(error.code(), Code::Unavailable | Code::DeadlineExceeded)
        // Sending faster than the proxy allows: nothing was stored; wait and retry (an
        // earlier attempt of this id may have stored it, which the retry finds out).
        || (error.code() == Code::ResourceExhausted && error.to_string().contains("try again in"))
}

/// The conversation a message names, if it names one.
pub(super) fn conversation_of(message: &api::Message) -> Option<ConversationId> {
    message.conversation.and_then(|c| ConversationId::try_from(c).ok())
}

impl Client {
    /// Connects to the proxy and starts the thread that handles pushes: it prints them
    /// and, after a lost connection, resumes the session.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub fn connect(options: &Options) -> Result<Arc<Client>, ConnectError> {
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
            .map_err(|source| ConnectError { server: options.server, source })?;
        let prefix: u64 = rand::thread_rng().gen();
        let client = Arc::new(Client {
            gateway: GatewayClient::new(channel).with_timeout(Duration::from_secs(15)),
            state: Mutex::default(),
            arrived: Condvar::new(),
            out: Printer::new(options.json),
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

    /// Prints `event`.
    pub fn print(&self, event: &Event) {
        self.out.print(event);
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of user `id`, or `#id` when it is not known.
    pub(super) fn name_of(&self, id: u64) -> String {
        self.state().names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    /// Remembers `user`'s name.
    pub(super) fn remember(&self, user: &api::User) {
        self.state().names.insert(user.id, user.name.clone());
    }

    fn on_push(&self, push: api::Push) {
        match push.event {
            Some(api::push::Event::Message(message)) => self.incoming_message(message),
            Some(api::push::Event::Presence(change)) => self.print(&Event::Presence {
                user_id: change.user_id,
                name: self.name_of(change.user_id),
                online: change.online,
            }),
            Some(api::push::Event::Kicked(kicked)) => {
                // Another session replaced this one: resuming would kick it in turn.
                self.state().session_token = None;
                self.print(&Event::Kicked { reason: kicked.reason });
            }
            None => {}
        }
    }

    /// A pushed message: printed if new, after Syncing any gap before it. A gap that the
    /// Sync could not fill (it failed) stays open: the next Sync fetches it.
    fn incoming_message(&self, message: api::Message) {
        let Some(id) = conversation_of(&message) else { return };
        let tracked =
            self.state().seen.get(&id).map(|seen| seen.has(message.seq) || !seen.gap_before(message.seq));
        match tracked {
            // Seen already (`show` drops it), or the next one.
            Some(true) => {}
            Some(false) => {
                if let Err(e) = self.sync() {
                    self.print(&e.into());
                }
            }
            None => {
                // A conversation new since login (a first message, a group joined): the
                // server knows where its unread part starts.
                if let Err(e) = self.sync() {
                    self.print(&e.into());
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
        let Some(id) = conversation_of(&message) else { return };
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
        self.print(&Event::Message {
            conversation: id.into(),
            seq: message.seq,
            sender_id: message.sender_id,
            sender: self.name_of(message.sender_id),
            client_msg_id: message.client_msg_id,
            body: message.body,
            sent_at_ms: message.sent_at_ms,
            label: self.label(id),
        });
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

    /// A conversation for people: `@peer` or `group ID`.
    pub(super) fn label(&self, id: ConversationId) -> String {
        match id {
            ConversationId::Direct { low, high } => {
                let me = self.state().me.as_ref().map(|u| u.id);
                let peer = if Some(low.0) == me { high.0 } else { low.0 };
                format!("@{}", self.name_of(peer))
            }
            ConversationId::Group(g) => format!("group {}", g.0),
        }
    }

    /// The connection was lost: when logged in, resume the session with its token after a
    /// random moment between half a second and a second and a half (everyone on a crashed
    /// proxy lost theirs at once; chat.proto asks clients to spread out), backing off
    /// while the system is unavailable, for up to a minute.
    fn on_disconnect(&self, reason: &str) {
        let logged_in = self.state().session_token.is_some();
        self.print(&Event::Disconnected { reason: reason.to_owned() });
        if !logged_in {
            return;
        }
        let deadline = Instant::now() + RESUME_FOR;
        let mut pause = Duration::from_millis(rand::Rng::gen_range(
            &mut rand::thread_rng(),
            services::limits::RECONNECT_PAUSE_MS,
        ));
        let mut last = None;
        while Instant::now() < deadline {
            std::thread::sleep(pause);
            match self.resume() {
                Ok(()) => return,
                // ResourceExhausted: the proxy's lane for resumes is full (a crashed
                // proxy's clients all came back at once); chat.proto asks to retry.
                Err(e)
                    if matches!(
                        e.rpc_code(),
                        Some(Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted)
                    ) =>
                {
                    pause = (pause * 2).min(Duration::from_secs(2));
                    last = Some(e);
                }
                Err(e) => {
                    self.print(&e.into());
                    return;
                }
            }
        }
        // Given up: the last refusal says why; the user logs in again.
        if let Some(e) = last {
            self.print(&e.into());
        }
    }

    /// Logs in as `name`, prints the session, then Syncs.
    pub(super) fn login(&self, name: &str, password: &str) -> Result<(), Error> {
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
        let response = self.gateway.login(&request).map_err(Error::rpc("login"))?;
        self.state().session_token = response.session_token.as_ref().map(|t| t.token.clone());
        self.opened(response, false)
    }

    /// Opens the session again with the session token of the last login, after a lost
    /// connection. When the token is refused (it expired, or the password changed
    /// elsewhere) the client forgets it: the user logs in again.
    fn resume(&self) -> Result<(), Error> {
        let Some(session_token) = self.state().session_token.clone() else {
            return Err(Error::NotLoggedIn { command: "resume" });
        };
        let response = match self.gateway.resume(&api::ResumeRequest { session_token }) {
            Ok(response) => response,
            Err(e) => {
                if e.code() == Code::Unauthenticated {
                    self.state().session_token = None;
                }
                return Err(Error::rpc("resume")(e));
            }
        };
        self.opened(response, true)
    }

    /// Takes in the answer to a login or resume: who is logged in, friends, groups and
    /// where each conversation starts; prints it, then Syncs if a conversation has
    /// messages past what the client saw.
    fn opened(&self, response: api::LoginResponse, again: bool) -> Result<(), Error> {
        let user = response.user.clone().unwrap_or_default();
        {
            let mut state = self.state();
            state.me = Some(user.clone());
            // A conversation not followed yet starts after what the user acknowledged.
            for conversation in &response.conversations {
                if let Some(id) = conversation.conversation.and_then(|c| ConversationId::try_from(c).ok()) {
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
        let session = Session {
            user: User::from(&user),
            friends: response.friends.iter().map(Contact::from).collect(),
            groups: response
                .groups
                .iter()
                .map(|g| {
                    let group = g.group.clone().unwrap_or_default();
                    LoginGroup {
                        id: group.id,
                        name: group.name,
                        members: g.members.iter().map(Contact::from).collect(),
                    }
                })
                .collect(),
            unread: response.conversations.iter().map(|c| c.unread).sum(),
            replaced_session: response.replaced_session,
        };
        self.print(&if again { Event::ReloggedIn(session) } else { Event::LoggedIn(session) });
        if self.missed_any(&response.conversations) {
            self.sync()
        } else {
            Ok(())
        }
    }

    /// Whether one of `conversations` (as a login answered them, read after the session
    /// opened) has messages past what the client saw. Anything newer is pushed, so when
    /// none has, a `Sync` would fetch nothing.
    fn missed_any(&self, conversations: &[api::ConversationState]) -> bool {
        let state = self.state();
        conversations.iter().any(|c| {
            let upto = c
                .conversation
                .and_then(|c| ConversationId::try_from(c).ok())
                .and_then(|id| state.seen.get(&id))
                .map_or(0, Seen::upto);
            c.last_seq > upto
        })
    }

    /// Fetches every missed message, page by page, and prints them. For a conversation
    /// it does not follow yet, the server starts after the user's acknowledged sequence,
    /// which becomes where the client starts.
    pub(super) fn sync(&self) -> Result<(), Error> {
        loop {
            let (cursors, followed): (Vec<api::Cursor>, HashSet<ConversationId>) = self
                .state()
                .seen
                .iter()
                .map(|(id, seen)| (api::Cursor { conversation: Some((*id).into()), seq: seen.upto() }, *id))
                .unzip();
            let response =
                self.gateway.sync(&api::SyncRequest { cursors, limit: 0 }).map_err(Error::rpc("sync"))?;
            let fetched = response.messages.len();
            for message in response.messages {
                if let Some(id) = conversation_of(&message) {
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

    /// The logged-in user, for `command`.
    pub(super) fn me(&self, command: &'static str) -> Result<UserId, Error> {
        self.state().me.as_ref().map(|u| UserId(u.id)).ok_or(Error::NotLoggedIn { command })
    }

    /// Whether this process sent `message` (its client message id has our prefix).
    fn sent_here(&self, message: &api::Message) -> bool {
        message.client_msg_id.strip_prefix(self.msg_prefix.as_str()).is_some_and(|rest| rest.starts_with('-'))
    }

    fn next_msg_id(&self) -> String {
        let n = self.msg_counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.msg_prefix)
    }

    /// Sends `body` to `id`, retrying under the same client message id while the outcome
    /// is unknown or the system unavailable.
    pub(super) fn send(&self, id: ConversationId, body: &str) -> Result<Event, Error> {
        let request = api::SendMessageRequest {
            conversation: Some(id.into()),
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
                    // A refusal for sending too fast came on a working session.
                    if e.code() != Code::ResourceExhausted && self.state().session_token.is_some() {
                        let _ = self.resume();
                    }
                }
                Err(e) => return Err(Error::rpc("send")(e)),
            }
        };
        let message = response.message.unwrap_or_default();
        // Seen, not printed as a message: its `sent` line says it. In a conversation not
        // followed yet (a group just joined), the server moved the read cursor to it.
        self.state().seen.entry(id).or_insert_with(|| Seen::before(message.seq)).see(message.seq);
        Ok(Event::Sent {
            conversation: id.into(),
            seq: message.seq,
            client_msg_id: message.client_msg_id,
            duplicate: response.duplicate,
            label: self.label(id),
        })
    }

    /// Waits until `n` more messages from others have been printed, or `timeout`.
    pub(super) fn wait(&self, n: u64, timeout: Duration) -> Event {
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
        let received = state.received - start;
        Event::Waited { received, wanted: n, timed_out: received < n }
    }
}
