//! The event loops that drive the simulated users.
//!
//! Each loop is one thread owning a `mio::Poll` and the connections of its users (token
//! `i` is its `i`-th user). The main thread sends it one [`Command`] at a time through a
//! channel plus a `Waker` and gets one [`Reply`] back when the phase is done; between
//! commands the loop keeps reading, so pushes are never left in a socket.
//!
//! The loop's parts:
//! - `command`: what the main thread sends a loop ([`Command`], with its plans) and what
//!   it gets back ([`Reply`], the final [`Report`]).
//! - this file: [`Handle`], the main thread's end; the loop's state, its poll, and its
//!   connections (opened, lost).
//! - `phases`: each command started as a phase, and what each tick issues for it (setup
//!   calls, timed sends, draining, the final `Sync`).
//! - `answers`: what comes back: responses matched to their calls (a failed send tried
//!   again), pushes, and the record of what each user saw.
//! - `soak`: the soak's steady sends, reads, logouts and logins.
//! - `resume`: users of a lost connection brought back with `Resume` and `Sync`.

mod answers;
mod command;
mod phases;
mod resume;
mod soak;

pub use command::{Command, Job, Reply, Report, SendPlan, SoakPlan};

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use rpc_core::Status;
use services::ConversationId;

use super::conn::Conn;
use super::storm::Resumer;
use super::tally::{Ack, Counters, Seen};
use soak::{Soak, SoakCall};

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

/// One event loop: its users' connections, what they saw, and the phase in progress.
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
                        first_reconnect: self.resumer.as_ref().and_then(|r| r.first_reconnect),
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

    fn connect(&mut self, addr: SocketAddr) -> Result<(), String> {
        for i in 0..self.users {
            self.connect_one(addr, i)?;
        }
        Ok(())
    }

    /// Connects user `i` to `addr`.
    fn connect_one(&mut self, addr: SocketAddr, i: usize) -> Result<(), String> {
        let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        self.adopt(i, mio::net::TcpStream::from_std(stream))
    }

    /// Starts connecting user `i` to `addr` without waiting for the handshake. In a
    /// reconnect storm a listener's backlog may overflow; a connect that waited for its
    /// dropped SYN to be sent again (a second later) would stall every other user of this
    /// loop meanwhile, which no real client, on a machine of its own, does to others. A
    /// refused or failed connect shows up as the connection's first read or write error.
    fn start_connect(&mut self, addr: SocketAddr, i: usize) -> Result<(), String> {
        let stream = mio::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        self.adopt(i, stream)
    }

    /// Makes `stream` user `i`'s connection, polled by this loop.
    fn adopt(&mut self, i: usize, stream: mio::net::TcpStream) -> Result<(), String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut conn = Conn::new(stream);
        self.poll
            .registry()
            .register(conn.stream_mut(), Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        self.conns[i] = Some(conn);
        Ok(())
    }
}
