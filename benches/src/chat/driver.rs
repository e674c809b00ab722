//! The event loops that drive the simulated users.
//!
//! Each loop is one thread owning a `mio::Poll` and the connections of its users (token
//! `i` is its `i`-th user). The main thread sends it one [`Command`] at a time through a
//! channel plus a `Waker` and gets one [`Reply`] back when the phase is done; between
//! commands the loop keeps reading, so pushes are never left in a socket.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use prost::Message as _;
use rpc_core::frame::{Frame, Kind};
use rpc_core::{Code, Outcome, Status};
use services::api;
use services::ConversationId;

use super::conn::{Conn, GATEWAY};
use super::storm::{ResumePlan, Resumer};
use super::tally::{self, Ack, Counters, Seen};

/// The waker's token; user tokens are their index.
const WAKER: Token = Token(usize::MAX);
/// A connection that sent nothing for this long gets a ping (servers close connections
/// idle for 90 s).
const PING_AFTER: Duration = Duration::from_secs(20);
/// Attempts per send before it counts as failed; retries reuse the client message id.
const SEND_ATTEMPTS: u32 = 3;
/// How long after the timed window the loop waits for outstanding acknowledgements.
const ACK_GRACE: Duration = Duration::from_secs(30);
/// Most `Sync` pages one user fetches at the end.
const SYNC_ROUNDS: u32 = 1000;
/// How long a setup phase may take before its unanswered calls count as failed (a
/// connection the kernel accepted but nginx never did is never answered).
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// One call of a setup phase.
#[derive(Debug, Clone)]
pub struct Job {
    /// The loop-local index of the user making it.
    pub user: usize,
    /// The `Gateway` method.
    pub method: &'static str,
    /// The encoded request.
    pub body: Vec<u8>,
}

/// The timed sending phase, for one loop.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// Each local user's id.
    pub ids: Vec<u64>,
    /// The conversations each local user sends to, in turn.
    pub sends: Vec<Vec<ConversationId>>,
    /// Messages per second from this loop; 0 sends as fast as `in_flight` allows.
    pub rate: f64,
    /// When sending starts.
    pub start: Instant,
    /// When sending stops; acknowledgements and pushes after it are not counted in the
    /// rates.
    pub end: Instant,
    /// Most sends waiting for their acknowledgement at once.
    pub in_flight: usize,
    /// Length of each message body.
    pub body_bytes: usize,
}

/// The soak, for one loop: steady sends plus reads (`History`, `Sync`, `Ack`) and users
/// logging out and back in, until `end`.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// Each local user's id.
    pub ids: Vec<u64>,
    /// Each local user's name, to log in again.
    pub names: Vec<String>,
    /// Every user's password.
    pub password: String,
    /// The conversations each local user sends to, in turn.
    pub sends: Vec<Vec<ConversationId>>,
    /// Messages per second from this loop.
    pub rate: f64,
    /// `History`, `Sync` and `Ack` calls per second from this loop, in turn.
    pub reads: f64,
    /// Logouts per second from this loop; each user logs in again after `offline`.
    pub churn: f64,
    /// How long a logged-out user stays away.
    pub offline: Duration,
    /// When the soak stops.
    pub end: Instant,
    /// Most sends waiting for their acknowledgement at once.
    pub in_flight: usize,
    /// Length of each message body.
    pub body_bytes: usize,
    /// Acknowledged sends, counted as they come for the main thread's samples.
    pub acked: Arc<AtomicU64>,
}

/// What the main thread asks a loop to do.
#[derive(Debug)]
pub enum Command {
    /// Connect every user to this address.
    Connect(SocketAddr),
    /// Make these calls, at most `window` at once; answered with their outcomes in order.
    Calls {
        /// The calls.
        jobs: Vec<Job>,
        /// Most in flight at once.
        window: usize,
    },
    /// Run the timed phase.
    Send(SendPlan),
    /// Wait until no push arrived for `quiet` and no send is outstanding, at most until
    /// `until`.
    Drain {
        /// How long without a push counts as drained.
        quiet: Duration,
        /// The latest moment to stop waiting.
        until: Instant,
    },
    /// Every user calls `Sync` from what it saw, until nothing is missing.
    Sync,
    /// Run a soak; answered when it is over.
    Soak(SoakPlan),
    /// From now on, bring back users whose connection is lost with `Resume` (whatever
    /// else the loop is doing); answered at once.
    Resume(ResumePlan),
    /// Stop and hand back what was seen.
    Finish,
}

/// A loop's answer to a [`Command`].
#[derive(Debug)]
pub enum Reply {
    /// Every user connected, or the first failure.
    Connected(Result<(), String>),
    /// The outcomes of [`Command::Calls`], in order.
    Calls(Vec<Result<Bytes, Status>>),
    /// The timed phase is over; this many sends were still unanswered.
    Sent(usize),
    /// Pushes stopped arriving.
    Drained,
    /// Every user synced.
    Synced,
    /// The soak is over; this many calls were still unanswered.
    Soaked(usize),
    /// Lost users will be brought back.
    Resuming,
    /// The loop stopped.
    Finished(Box<Report>),
}

/// Everything a loop saw.
#[derive(Debug)]
pub struct Report {
    /// Counters and histograms.
    pub counters: Counters,
    /// Every acknowledged send.
    pub acks: Vec<Ack>,
    /// What each local user saw, by conversation.
    pub seen: Vec<HashMap<ConversationId, Seen>>,
    /// Users brought back with `Resume`: when each was lost and when it was back.
    pub resumed: Vec<(Instant, Instant)>,
}

/// The main thread's end of a loop.
pub struct Handle {
    /// Commands in.
    commands: Sender<Command>,
    /// Replies out.
    replies: Receiver<Reply>,
    /// Wakes the loop's poll after a command is sent.
    waker: Arc<Waker>,
    /// Joined after [`Command::Finish`].
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Starts a loop for `users` users.
    ///
    /// # Errors
    ///
    /// When the poll or the thread cannot be created.
    pub fn spawn(index: usize, users: usize) -> io::Result<Handle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let (reply_tx, replies) = crossbeam_channel::unbounded();
        let thread =
            std::thread::Builder::new().name(format!("chatbench-loop-{index}")).spawn(move || {
                let mut event_loop = Loop::new(poll, users, command_rx, reply_tx);
                event_loop.run();
            })?;
        Ok(Handle { commands, replies, waker, thread: Some(thread) })
    }

    /// Sends a command.
    pub fn send(&self, command: Command) {
        // A loop that died has already dropped its receiver; `reply` reports that.
        let _ = self.commands.send(command);
        let _ = self.waker.wake();
    }

    /// Waits for the loop's reply.
    ///
    /// # Panics
    ///
    /// When the loop thread died.
    pub fn reply(&self) -> Reply {
        self.replies.recv().expect("an event loop thread died")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if !thread.is_finished() {
                self.send(Command::Finish);
                let _ = self.replies.recv();
            }
            let _ = thread.join();
        }
    }
}

/// What a call in flight was for.
enum Pending {
    /// Setup job number `n` of setup phase `phase`.
    Job(u64, usize),
    /// A message send.
    Send(Outgoing),
    /// A final `Sync` page.
    Sync(u32),
    /// A call of a soak other than a send.
    Soak(SoakCall),
    /// A `Resume` after a lost connection.
    Resume,
    /// A `Sync` page (`round`) after a `Resume`.
    Resync(u32),
}

/// The calls a soak makes besides sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SoakCall {
    History,
    Sync,
    Ack,
    Logout,
    Login,
}

impl SoakCall {
    fn method(self) -> &'static str {
        match self {
            SoakCall::History => "History",
            SoakCall::Sync => "Sync",
            SoakCall::Ack => "Ack",
            SoakCall::Logout => "Logout",
            SoakCall::Login => "Login",
        }
    }
}

/// A soak in progress.
struct Soak {
    plan: SoakPlan,
    /// Users with something to send to.
    order: Vec<usize>,
    /// The next turn in `order` to send, to read and to log out.
    send_turn: usize,
    read_turn: usize,
    churn_turn: usize,
    /// When the next send, read and logout are due.
    next_send: Instant,
    next_read: Instant,
    next_churn: Instant,
    /// Logged-out users and when each logs in again, earliest first.
    away: VecDeque<(Instant, usize)>,
    /// Soak calls (not sends) waiting for their answer.
    in_flight: usize,
}

/// A send in flight.
struct Outgoing {
    conversation: ConversationId,
    /// The counter in its client message id.
    n: u64,
    body: String,
    started: Instant,
    attempt: u32,
}

/// The phase a loop is in.
enum Activity {
    Idle,
    Calls {
        jobs: Vec<Job>,
        next: usize,
        in_flight: usize,
        window: usize,
        results: Vec<Option<Result<Bytes, Status>>>,
        done: usize,
        deadline: Instant,
    },
    Send {
        plan: SendPlan,
        order: Vec<usize>,
        cursor: usize,
        next_at: Instant,
        interval: Option<Duration>,
    },
    Drain {
        quiet: Duration,
        until: Instant,
    },
    Sync {
        outstanding: usize,
    },
    Soak(Box<Soak>),
}

struct Loop {
    poll: Poll,
    conns: Vec<Option<Conn<Pending>>>,
    users: usize,
    seen: Vec<HashMap<ConversationId, Seen>>,
    counters: Counters,
    acks: Vec<Ack>,
    commands: Receiver<Command>,
    replies: Sender<Reply>,
    scratch: Vec<u8>,
    activity: Activity,
    /// Counts setup phases, so a late answer from an earlier one is not taken for a
    /// call of the current one.
    phase: u64,
    /// Sends waiting for their final outcome (retries included).
    send_in_flight: usize,
    /// Each user's next client message counter.
    next_n: Vec<u64>,
    /// Each user's next conversation turn.
    turn: Vec<usize>,
    /// Each user's ids and conversations, from the send plan.
    ids: Vec<u64>,
    sends: Vec<Vec<ConversationId>>,
    body_bytes: usize,
    /// Acknowledgements and pushes after this are outside the timed window.
    window_end: Option<Instant>,
    last_push: Instant,
    last_ping_sweep: Instant,
    /// During a soak: whether each user is logged in, and the newest sequence it knows
    /// per conversation (a soak keeps no per-message record, so it can run for hours).
    online: Vec<bool>,
    latest: Vec<HashMap<ConversationId, u64>>,
    /// During a storm: who to bring back after a lost connection.
    resumer: Option<Resumer>,
}

impl Loop {
    fn new(poll: Poll, users: usize, commands: Receiver<Command>, replies: Sender<Reply>) -> Self {
        Loop {
            poll,
            conns: (0..users).map(|_| None).collect(),
            users,
            seen: (0..users).map(|_| HashMap::new()).collect(),
            counters: Counters::default(),
            acks: Vec::new(),
            commands,
            replies,
            scratch: vec![0; 256 * 1024],
            activity: Activity::Idle,
            phase: 0,
            send_in_flight: 0,
            next_n: vec![0; users],
            turn: vec![0; users],
            ids: vec![0; users],
            sends: vec![Vec::new(); users],
            body_bytes: 64,
            window_end: None,
            last_push: Instant::now(),
            last_ping_sweep: Instant::now(),
            online: Vec::new(),
            latest: Vec::new(),
            resumer: None,
        }
    }

    /// Whether a soak runs, or ran: then sends and pushes are counted, not recorded.
    fn soaking(&self) -> bool {
        !self.online.is_empty()
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    panic!("poll failed: {e}");
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(i) => {
                        if event.is_writable() {
                            self.with_conn(i, |c, _| c.flush());
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(i);
                        }
                    }
                }
            }
            while let Ok(command) = self.commands.try_recv() {
                if let Command::Finish = command {
                    let report = Report {
                        counters: std::mem::take(&mut self.counters),
                        acks: std::mem::take(&mut self.acks),
                        seen: std::mem::take(&mut self.seen),
                        resumed: self.resumer.take().map(|r| r.back).unwrap_or_default(),
                    };
                    let _ = self.replies.send(Reply::Finished(Box::new(report)));
                    return;
                }
                self.start(command);
            }
            self.tick();
        }
    }

    fn timeout(&self) -> Duration {
        let now = Instant::now();
        match &self.activity {
            // With the window full, answers wake the loop; waiting for `next_at` (long
            // past) would spin.
            Activity::Send { plan, .. } if self.send_in_flight >= plan.in_flight => Duration::from_millis(5),
            Activity::Send { next_at, interval: Some(_), .. } => next_at.saturating_duration_since(now),
            Activity::Send { .. } => Duration::from_millis(5),
            _ => Duration::from_millis(20),
        }
    }

    /// Runs `f` on connection `i` if it is open; a failure closes it.
    fn with_conn(&mut self, i: usize, f: impl FnOnce(&mut Conn<Pending>, &mut Vec<u8>) -> io::Result<()>) {
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if let Err(e) = f(conn, &mut self.scratch) {
            self.lost(i, &e);
        }
    }

    /// Closes connection `i` and fails its calls.
    fn lost(&mut self, i: usize, error: &io::Error) {
        let Some(mut conn) = self.conns[i].take() else { return };
        let _ = self.poll.registry().deregister(conn.stream_mut());
        self.counters.disconnects += 1;
        if self.resumer.is_none() {
            // In a storm thousands are lost at once, and counted.
            eprintln!("chatbench: user connection {i} lost: {error}");
        }
        for (_, pending) in conn.pending.drain() {
            self.fail(pending, &Status::unavailable("connection lost"), i, false);
        }
        if let Some(resumer) = &mut self.resumer {
            resumer.lost(i, Instant::now());
        }
    }

    /// Connects the lost users whose turn it is again and sends their `Resume`.
    fn tick_resume(&mut self, now: Instant) {
        let Some(resumer) = &mut self.resumer else { return };
        let addr = resumer.plan.addr;
        for user in resumer.due(now) {
            if let Err(e) = self.connect_one(addr, user) {
                self.count_error(&format!("reconnect: {e}"));
                if let Some(resumer) = &mut self.resumer {
                    resumer.lost(user, Instant::now());
                }
                continue;
            }
            let token = self.resumer.as_ref().map(|r| r.token(user).to_owned()).unwrap_or_default();
            let body = api::ResumeRequest { session_token: token }.encode_to_vec();
            self.with_conn(user, |c, _| c.call("Resume", &body, Pending::Resume));
        }
    }

    /// Sends a resumed user's `round`-th `Sync` from what it saw; false if it cannot.
    fn resync(&mut self, user: usize, round: u32) -> bool {
        if self.conns[user].is_none() || round >= SYNC_ROUNDS {
            return false;
        }
        let cursors = self.seen[user]
            .iter()
            .map(|(&c, seen)| api::Cursor {
                conversation: Some(tally::wire_conversation(c)),
                seq: seen.watermark,
            })
            .collect();
        let body = api::SyncRequest { cursors, limit: 1000 }.encode_to_vec();
        self.with_conn(user, |c, _| c.call("Sync", &body, Pending::Resync(round)));
        self.conns[user].is_some()
    }

    /// A `Resume` or its `Sync` failed: the connection is dropped and tried again, unless
    /// the token was refused.
    fn resume_failed(&mut self, user: usize, status: &Status) {
        self.count_error(&format!("resume {:?}: {}", status.code, status.message));
        if status.code == Code::Unauthenticated {
            return;
        }
        if let Some(mut conn) = self.conns[user].take() {
            let _ = self.poll.registry().deregister(conn.stream_mut());
        }
        if let Some(resumer) = &mut self.resumer {
            resumer.lost(user, Instant::now());
        }
    }

    fn start(&mut self, command: Command) {
        match command {
            Command::Connect(addr) => {
                let outcome = self.connect(addr);
                let _ = self.replies.send(Reply::Connected(outcome));
            }
            Command::Calls { jobs, window } => {
                let results = (0..jobs.len()).map(|_| None).collect();
                self.phase += 1;
                let deadline = Instant::now() + SETUP_TIMEOUT;
                let window = window.max(1);
                self.activity =
                    Activity::Calls { jobs, next: 0, in_flight: 0, window, results, done: 0, deadline };
            }
            Command::Send(plan) => {
                self.ids.clone_from(&plan.ids);
                self.sends.clone_from(&plan.sends);
                self.body_bytes = plan.body_bytes;
                self.window_end = Some(plan.end);
                let order: Vec<usize> = (0..self.users).filter(|&u| !plan.sends[u].is_empty()).collect();
                let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
                let next_at = plan.start;
                self.activity = Activity::Send { plan, order, cursor: 0, next_at, interval };
            }
            Command::Drain { quiet, until } => {
                self.last_push = Instant::now();
                self.activity = Activity::Drain { quiet, until };
            }
            Command::Soak(plan) => {
                self.ids.clone_from(&plan.ids);
                self.sends.clone_from(&plan.sends);
                self.body_bytes = plan.body_bytes;
                self.window_end = Some(plan.end);
                self.online = vec![true; self.users];
                self.latest = vec![HashMap::new(); self.users];
                let order: Vec<usize> = (0..self.users).filter(|&u| !plan.sends[u].is_empty()).collect();
                let now = Instant::now();
                self.activity = Activity::Soak(Box::new(Soak {
                    plan,
                    order,
                    send_turn: 0,
                    read_turn: 0,
                    churn_turn: 0,
                    next_send: now,
                    next_read: now,
                    next_churn: now,
                    away: VecDeque::new(),
                    in_flight: 0,
                }));
            }
            Command::Sync => {
                let mut outstanding = 0;
                for user in 0..self.users {
                    if !self.sends[user].is_empty() && self.sync(user, 0) {
                        outstanding += 1;
                    }
                }
                self.activity = Activity::Sync { outstanding };
            }
            Command::Resume(plan) => {
                self.resumer = Some(Resumer::new(plan));
                let _ = self.replies.send(Reply::Resuming);
            }
            Command::Finish => unreachable!("handled by run"),
        }
    }

    fn connect(&mut self, addr: SocketAddr) -> Result<(), String> {
        for i in 0..self.users {
            self.connect_one(addr, i)?;
        }
        Ok(())
    }

    /// Connects user `i` to `addr`.
    fn connect_one(&mut self, addr: SocketAddr, i: usize) -> Result<(), String> {
        let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut conn = Conn::new(mio::net::TcpStream::from_std(stream));
        self.poll
            .registry()
            .register(conn.stream_mut(), Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        self.conns[i] = Some(conn);
        Ok(())
    }

    /// Issues whatever the current phase has due, and answers the main thread when the
    /// phase is over.
    fn tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_ping_sweep) > PING_AFTER / 2 {
            self.last_ping_sweep = now;
            for i in 0..self.users {
                let idle =
                    self.conns[i].as_ref().is_some_and(|c| now.duration_since(c.last_write) > PING_AFTER);
                if idle {
                    self.with_conn(i, |c, _| c.ping());
                }
            }
        }
        self.tick_resume(now);
        if matches!(self.activity, Activity::Soak(_)) {
            self.tick_soak(now);
            return;
        }
        let mut finished = None;
        let mut due: Vec<usize> = Vec::new();
        let mut to_send: Vec<usize> = Vec::new();
        match &mut self.activity {
            Activity::Idle => {}
            Activity::Calls { jobs, next, in_flight, window, results, done, deadline } => {
                while *in_flight < *window && *next < jobs.len() {
                    due.push(*next);
                    *next += 1;
                    *in_flight += 1;
                }
                if now >= *deadline {
                    for result in results.iter_mut().filter(|r| r.is_none()) {
                        *result = Some(Err(Status::new(Code::DeadlineExceeded, "no answer in time")));
                    }
                    *done = jobs.len();
                    due.clear();
                }
                if *done == jobs.len() && due.is_empty() {
                    let results = std::mem::take(results).into_iter().map(|r| r.expect("every job answered"));
                    finished = Some(Reply::Calls(results.collect()));
                }
            }
            Activity::Send { plan, order, cursor, next_at, interval } => {
                if now >= plan.end || order.is_empty() {
                    if self.send_in_flight == 0 || now >= plan.end + ACK_GRACE {
                        finished = Some(Reply::Sent(self.send_in_flight));
                    }
                } else if now >= plan.start {
                    let mut budget = plan.in_flight.saturating_sub(self.send_in_flight);
                    if let Some(interval) = *interval {
                        // Falling far behind (the window is full) drops the backlog
                        // rather than bursting it later.
                        if now.duration_since(*next_at) > Duration::from_millis(100) {
                            *next_at = now - Duration::from_millis(100);
                        }
                        while budget > 0 && *next_at <= now {
                            to_send.push(order[*cursor % order.len()]);
                            *cursor += 1;
                            *next_at += interval;
                            budget -= 1;
                        }
                    } else {
                        for _ in 0..budget {
                            to_send.push(order[*cursor % order.len()]);
                            *cursor += 1;
                        }
                    }
                }
            }
            Activity::Drain { quiet, until } => {
                let quiet_now = now.duration_since(self.last_push) >= *quiet && self.send_in_flight == 0;
                if quiet_now || now >= *until {
                    finished = Some(Reply::Drained);
                }
            }
            Activity::Sync { outstanding } => {
                if *outstanding == 0 {
                    finished = Some(Reply::Synced);
                }
            }
            Activity::Soak(_) => unreachable!("handled by tick_soak"),
        }
        for n in due {
            self.issue_job(n);
        }
        for user in to_send {
            self.send_new(user);
        }
        if let Some(reply) = finished {
            self.activity = Activity::Idle;
            let _ = self.replies.send(reply);
        }
    }

    /// Issues what a soak has due: sends at its rate (from logged-in users only), reads,
    /// logouts of users with nothing in flight, and the logins of those whose time away
    /// is over. Answers the main thread once the soak ended and its calls came back.
    fn tick_soak(&mut self, now: Instant) {
        let Activity::Soak(mut soak) = std::mem::replace(&mut self.activity, Activity::Idle) else { return };
        if now >= soak.plan.end {
            let unanswered = self.send_in_flight + soak.in_flight;
            if unanswered == 0 || now >= soak.plan.end + ACK_GRACE {
                let _ = self.replies.send(Reply::Soaked(unanswered));
            } else {
                self.activity = Activity::Soak(soak);
            }
            return;
        }
        let n = soak.order.len();
        if n > 0 {
            // Falling far behind drops the backlog rather than bursting it later.
            let floor = now - Duration::from_millis(100);
            soak.next_send = soak.next_send.max(floor);
            soak.next_read = soak.next_read.max(floor);
            soak.next_churn = soak.next_churn.max(floor);
            let send_every = Duration::from_secs_f64(1.0 / soak.plan.rate.max(1e-3));
            while soak.next_send <= now && self.send_in_flight < soak.plan.in_flight {
                soak.next_send += send_every;
                if let Some(user) = next_online(&soak.order, &mut soak.send_turn, |u| self.online[u]) {
                    self.send_new(user);
                }
            }
            let read_every = Duration::from_secs_f64(1.0 / soak.plan.reads.max(1e-3));
            while soak.plan.reads > 0.0 && soak.next_read <= now {
                soak.next_read += read_every;
                let turn = soak.read_turn;
                if let Some(user) = next_online(&soak.order, &mut soak.read_turn, |u| self.online[u]) {
                    soak.in_flight += usize::from(self.soak_read(user, turn));
                }
            }
            let churn_every = Duration::from_secs_f64(1.0 / soak.plan.churn.max(1e-3));
            while soak.plan.churn > 0.0 && soak.next_churn <= now {
                soak.next_churn += churn_every;
                // Only a user with no call in flight logs out, so no send of theirs is
                // refused for want of a session.
                let idle =
                    |u: usize| self.online[u] && self.conns[u].as_ref().is_some_and(|c| c.pending.is_empty());
                if let Some(user) = next_online(&soak.order, &mut soak.churn_turn, idle) {
                    self.online[user] = false;
                    soak.away.push_back((now + soak.plan.offline, user));
                    let body = api::LogoutRequest {}.encode_to_vec();
                    soak.in_flight += usize::from(self.soak_call(user, SoakCall::Logout, &body));
                }
            }
        }
        while soak.away.front().is_some_and(|&(at, _)| at <= now) {
            let (_, user) = soak.away.pop_front().expect("checked");
            let body = api::LoginRequest {
                name: soak.plan.names[user].clone(),
                password: soak.plan.password.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            soak.in_flight += usize::from(self.soak_call(user, SoakCall::Login, &body));
        }
        self.activity = Activity::Soak(soak);
    }

    /// A soak's read number `turn` by `user`: `History`, `Sync` and `Ack` in turn, on
    /// the user's conversations in turn. False if it could not be sent.
    fn soak_read(&mut self, user: usize, turn: usize) -> bool {
        let convs = &self.sends[user];
        let conversation = convs[(turn / 3) % convs.len()];
        let known = self.latest[user].get(&conversation).copied().unwrap_or(0);
        match turn % 3 {
            0 => {
                let body = api::HistoryRequest {
                    conversation: Some(tally::wire_conversation(conversation)),
                    anchor: None,
                    limit: 20,
                }
                .encode_to_vec();
                self.soak_call(user, SoakCall::History, &body)
            }
            1 => self.soak_sync(user),
            _ => {
                let body = api::AckRequest {
                    conversation: Some(tally::wire_conversation(conversation)),
                    seq: known,
                }
                .encode_to_vec();
                self.soak_call(user, SoakCall::Ack, &body)
            }
        }
    }

    /// `Sync` from the newest sequence `user` knows of each of its conversations, as a
    /// client does after logging in. False if it could not be sent.
    fn soak_sync(&mut self, user: usize) -> bool {
        let cursors = self.sends[user]
            .iter()
            .map(|&c| api::Cursor {
                conversation: Some(tally::wire_conversation(c)),
                seq: self.latest[user].get(&c).copied().unwrap_or(0),
            })
            .collect();
        let body = api::SyncRequest { cursors, limit: 100 }.encode_to_vec();
        self.soak_call(user, SoakCall::Sync, &body)
    }

    /// Sends a soak call; false if `user` is not connected.
    fn soak_call(&mut self, user: usize, call: SoakCall, body: &[u8]) -> bool {
        if self.conns[user].is_none() {
            return false;
        }
        self.with_conn(user, |c, _| c.call(call.method(), body, Pending::Soak(call)));
        // A write that failed closed the connection and failed the call already.
        self.conns[user].is_some()
    }

    /// A soak call came back.
    fn soak_done(&mut self, user: usize, call: SoakCall, outcome: Result<Bytes, Status>) {
        if let Activity::Soak(soak) = &mut self.activity {
            soak.in_flight = soak.in_flight.saturating_sub(1);
        }
        let body = match outcome {
            Ok(body) => body,
            Err(status) => {
                self.counters.calls_failed += 1;
                self.count_error(&format!("{} {:?}: {}", call.method(), status.code, status.message));
                if call == SoakCall::Login {
                    // Try again after another spell away.
                    if let Activity::Soak(soak) = &mut self.activity {
                        soak.away.push_back((Instant::now() + soak.plan.offline, user));
                    }
                }
                return;
            }
        };
        match call {
            SoakCall::History => self.counters.histories += 1,
            SoakCall::Ack => self.counters.read_acks += 1,
            SoakCall::Logout => self.counters.logouts += 1,
            SoakCall::Login => {
                self.counters.logins += 1;
                self.online[user] = true;
                if self.soak_sync(user) {
                    if let Activity::Soak(soak) = &mut self.activity {
                        soak.in_flight += 1;
                    }
                }
            }
            SoakCall::Sync => {
                self.counters.syncs += 1;
                if let Ok(response) = api::SyncResponse::decode(body) {
                    for m in &response.messages {
                        self.received(user, m, true);
                    }
                }
            }
        }
    }

    fn issue_job(&mut self, n: usize) {
        let Activity::Calls { jobs, .. } = &self.activity else { return };
        let job = jobs[n].clone();
        if self.conns[job.user].is_none() {
            self.fail(Pending::Job(self.phase, n), &Status::unavailable("not connected"), job.user, false);
            return;
        }
        let pending = Pending::Job(self.phase, n);
        self.with_conn(job.user, |c, _| c.call(job.method, &job.body, pending));
    }

    fn send_new(&mut self, user: usize) {
        let convs = &self.sends[user];
        let conversation = convs[self.turn[user] % convs.len()];
        self.turn[user] += 1;
        self.next_n[user] += 1;
        let out = Outgoing {
            conversation,
            n: self.next_n[user],
            body: tally::body(tally::now_micros(), self.body_bytes),
            started: Instant::now(),
            attempt: 1,
        };
        self.counters.sent += 1;
        self.send_in_flight += 1;
        self.issue_send(user, out);
    }

    fn issue_send(&mut self, user: usize, out: Outgoing) {
        let request = api::SendMessageRequest {
            conversation: Some(tally::wire_conversation(out.conversation)),
            client_msg_id: out.n.to_string(),
            body: out.body.clone(),
        };
        if self.conns[user].is_none() {
            self.fail(Pending::Send(out), &Status::unavailable("not connected"), user, false);
            return;
        }
        let body = request.encode_to_vec();
        self.with_conn(user, |c, _| c.call("SendMessage", &body, Pending::Send(out)));
    }

    /// Sends user `user`'s `round`-th `Sync` from what it saw; false if it cannot.
    fn sync(&mut self, user: usize, round: u32) -> bool {
        if self.conns[user].is_none() || round >= SYNC_ROUNDS {
            return false;
        }
        let cursors = self.sends[user]
            .iter()
            .map(|&c| api::Cursor {
                conversation: Some(tally::wire_conversation(c)),
                seq: self.seen[user].get(&c).map_or(0, |s| s.watermark),
            })
            .collect();
        let body = api::SyncRequest { cursors, limit: 1000 }.encode_to_vec();
        self.with_conn(user, |c, _| c.call("Sync", &body, Pending::Sync(round)));
        self.conns[user].is_some()
    }

    fn read(&mut self, i: usize) {
        let mut frames = Vec::new();
        self.with_conn(i, |c, scratch| c.read_frames(scratch, &mut frames));
        for frame in frames {
            self.handle(i, frame);
        }
    }

    fn handle(&mut self, user: usize, frame: Frame) {
        match frame.kind {
            Kind::Response => {
                let Some(pending) = self.conns[user].as_mut().and_then(|c| c.pending.remove(&frame.call_id))
                else {
                    return;
                };
                match frame.into_result() {
                    Ok(body) => self.succeed(pending, body, user),
                    Err(status) => self.fail(pending, &status, user, true),
                }
            }
            Kind::Push if frame.service() == GATEWAY => {
                if let Ok(push) = api::Push::decode(frame.body) {
                    match push.event {
                        Some(api::push::Event::Message(m)) => self.received(user, &m, false),
                        Some(api::push::Event::Presence(_)) => self.counters.presence += 1,
                        _ => {}
                    }
                }
            }
            Kind::GoAway => {
                eprintln!("chatbench: user {user} got go-away: {}", String::from_utf8_lossy(&frame.body));
            }
            _ => {}
        }
    }

    /// Records a message `user` received by push or (`synced`) by `Sync`.
    fn received(&mut self, user: usize, m: &api::Message, synced: bool) {
        let Some(conversation) = tally::conversation_of(m.conversation.as_ref()) else { return };
        if self.soaking() {
            let latest = self.latest[user].entry(conversation).or_default();
            let first = m.seq > *latest;
            *latest = (*latest).max(m.seq);
            if synced {
                self.counters.from_sync += u64::from(first);
                return;
            }
            self.counters.delivered += 1;
            if let Some(sent) = tally::sent_micros(&m.body) {
                self.counters.latency.saturating_record(tally::now_micros().saturating_sub(sent).max(1));
            }
            return;
        }
        let key = (m.sender_id, m.client_msg_id.parse().unwrap_or(u64::MAX));
        let now = Instant::now();
        let first =
            self.seen[user].entry(conversation).or_default().insert(m.seq, key, &mut self.counters.dup);
        if synced {
            if first && m.sender_id != self.ids[user] {
                self.counters.from_sync += 1;
            }
            return;
        }
        self.last_push = now;
        if !first {
            self.counters.repushes += 1;
            return;
        }
        self.counters.delivered += 1;
        if self.window_end.is_some_and(|end| now <= end) {
            self.counters.delivered_in_window += 1;
        }
        if let Some(sent) = tally::sent_micros(&m.body) {
            self.counters.latency.saturating_record(tally::now_micros().saturating_sub(sent).max(1));
        }
    }

    fn succeed(&mut self, pending: Pending, body: Bytes, user: usize) {
        match pending {
            Pending::Job(phase, n) => self.job_done(phase, n, Ok(body)),
            Pending::Send(out) => {
                self.send_in_flight -= 1;
                let Ok(response) = api::SendMessageResponse::decode(body) else {
                    self.count_error("undecodable SendMessageResponse");
                    self.counters.failed += 1;
                    return;
                };
                let Some(message) = response.message else { return };
                let now = Instant::now();
                self.counters.acked += 1;
                if self.window_end.is_some_and(|end| now <= end) {
                    self.counters.acked_in_window += 1;
                }
                if response.duplicate {
                    self.counters.acked_duplicate += 1;
                }
                let micros = now.duration_since(out.started).as_micros() as u64;
                self.counters.ack_latency.saturating_record(micros.max(1));
                if self.soaking() {
                    if let Activity::Soak(soak) = &self.activity {
                        soak.plan.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    let conversation =
                        tally::conversation_of(message.conversation.as_ref()).unwrap_or(out.conversation);
                    let latest = self.latest[user].entry(conversation).or_default();
                    *latest = (*latest).max(message.seq);
                    return;
                }
                let key = (message.sender_id, out.n);
                let conversation =
                    tally::conversation_of(message.conversation.as_ref()).unwrap_or(out.conversation);
                self.acks.push(Ack { conversation, seq: message.seq, key });
                // The sender's own message counts as seen by it, so its watermark moves.
                self.seen[user].entry(conversation).or_default().insert(
                    message.seq,
                    key,
                    &mut self.counters.dup,
                );
            }
            Pending::Soak(call) => self.soak_done(user, call, Ok(body)),
            Pending::Resume => {
                if !self.resync(user, 0) {
                    self.resume_failed(user, &Status::unavailable("the Sync after Resume could not be sent"));
                }
            }
            Pending::Resync(round) => {
                let Ok(response) = api::SyncResponse::decode(body) else {
                    self.count_error("undecodable SyncResponse");
                    return;
                };
                for m in &response.messages {
                    self.received(user, m, true);
                }
                if !(response.has_more && self.resync(user, round + 1)) {
                    if let Some(resumer) = &mut self.resumer {
                        resumer.back(user, Instant::now());
                    }
                }
            }
            Pending::Sync(round) => {
                let Ok(response) = api::SyncResponse::decode(body) else {
                    self.sync_done();
                    return;
                };
                for m in &response.messages {
                    self.received(user, m, true);
                }
                if !(response.has_more && self.sync(user, round + 1)) {
                    self.sync_done();
                }
            }
        }
    }

    fn fail(&mut self, pending: Pending, status: &Status, user: usize, retry: bool) {
        match pending {
            Pending::Job(phase, n) => self.job_done(phase, n, Err(status.clone())),
            Pending::Send(mut out) => {
                // An unknown outcome (DeadlineExceeded from the proxy) may have been stored:
                // only a retry with the same client message id tells.
                let retryable = status.outcome() == Outcome::Unknown
                    || matches!(
                        status.code,
                        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal
                    );
                if retry && retryable && out.attempt < SEND_ATTEMPTS {
                    self.counters.retries += 1;
                    out.attempt += 1;
                    self.issue_send(user, out);
                    return;
                }
                self.send_in_flight -= 1;
                self.counters.failed += 1;
                self.count_error(&format!("{:?}: {}", status.code, status.message));
            }
            Pending::Sync(_) => {
                self.count_error(&format!("Sync {:?}: {}", status.code, status.message));
                self.sync_done();
            }
            Pending::Soak(call) => self.soak_done(user, call, Err(status.clone())),
            Pending::Resume | Pending::Resync(_) => {
                // A lost connection has already scheduled the next attempt.
                if retry {
                    self.resume_failed(user, status);
                }
            }
        }
    }

    fn count_error(&mut self, what: &str) {
        let what: String = what.chars().take(120).collect();
        *self.counters.errors.entry(what).or_default() += 1;
    }

    fn job_done(&mut self, phase: u64, n: usize, result: Result<Bytes, Status>) {
        if phase != self.phase {
            return;
        }
        if let Activity::Calls { results, in_flight, done, .. } = &mut self.activity {
            if results[n].is_none() {
                results[n] = Some(result);
                *in_flight -= 1;
                *done += 1;
            }
        }
    }

    fn sync_done(&mut self) {
        if let Activity::Sync { outstanding } = &mut self.activity {
            *outstanding = outstanding.saturating_sub(1);
        }
    }
}

/// The next user in `order` from `turn` on that `ok` accepts, moving `turn` past it;
/// `None` after one round without one.
fn next_online(order: &[usize], turn: &mut usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..order.len() {
        let user = order[*turn % order.len()];
        *turn += 1;
        if ok(user) {
            return Some(user);
        }
    }
    None
}
