//! One event-loop thread: owns a `mio::Poll`, its sockets and their buffers.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::pool::{self, Call, Jobs};
use super::proxy_header;
use super::{Config, ConnShared, Connection, ConnectionId, Context, Service};
use crate::auth;
use crate::fast_hash::FastMap;
use crate::frame::{self, FrameError, Kind};
use crate::{Outcome, Status};

mod dispatch;
mod limits;

use dispatch::Dispatch;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids double as poll tokens, so they start after the two fixed tokens.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(2);
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// One connection may have at most this fraction of `Config::max_heavy_queued` waiting,
/// so that one peer cannot fill the heavy lane for everyone.
const HEAVY_SHARE: usize = 8;
/// How long at least an evicted peer has to read its go-away before it is dropped.
const EVICTED_GRACE: Duration = Duration::from_secs(10);
/// How long a connection over its hard limit may go without its output draining at all.
const HARD_LIMIT_GRACE: Duration = Duration::from_secs(1);
/// A connection's empty buffers bigger than this are given back, so that an idle
/// connection does not keep the memory of its largest frame.
const KEEP_CAPACITY: usize = 256 * 1024;

/// The bytes held for every connection of a server, shared by its loops, for
/// `Config::server_budget`.
#[derive(Default)]
pub(crate) struct Memory {
    /// Bytes held over every connection, as last accounted by their loops.
    held: AtomicUsize,
    /// Connections open.
    conns: AtomicUsize,
}

impl Memory {
    /// When the server is over `budget`, the share each connection may hold;
    /// `None` while it is under.
    fn fair_share(&self, budget: usize) -> Option<usize> {
        if self.held.load(Ordering::Relaxed) <= budget {
            return None;
        }
        Some(budget / self.conns.load(Ordering::Relaxed).max(1))
    }
}

/// Services by name (as bytes, so a lookup needs no UTF-8 check).
pub(crate) type Services = FastMap<Box<[u8]>, Arc<dyn Service>>;

/// Messages to a loop from other threads.
pub(crate) enum Command {
    /// A worker finished a call that held `cost` bytes of the connection's budget.
    Reply { id: ConnectionId, call_id: u64, result: Result<Bytes, Status>, cost: usize },
    /// An encoded push frame to append to a connection's output.
    Push { id: ConnectionId, frame: Bytes },
    /// Close a connection once its output is written.
    Close { id: ConnectionId },
    /// A socket accepted by loop 0 for this loop to own.
    Adopt { stream: TcpStream, peer: SocketAddr },
    /// Begin the graceful shutdown.
    Shutdown,
}

/// The part of a loop other threads hold: its command channel and waker.
pub(crate) struct LoopShared {
    /// Commands for the loop.
    tx: Sender<Command>,
    /// Wakes the loop's `poll`.
    waker: Waker,
    /// True while a wake is pending, so a burst of replies costs one wake syscall.
    woken: AtomicBool,
    /// Copied from the config for `Connection::push`.
    pub(crate) connection_budget: usize,
}

impl LoopShared {
    /// Queues `cmd` and wakes the loop unless a wake is already pending.
    pub(crate) fn send(&self, cmd: Command) {
        if self.tx.send(cmd).is_err() {
            return;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.woken.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                tracing::error!(error = %e, "cannot wake event loop");
            }
        }
    }
}

/// One client connection, as the loop sees it.
struct Conn {
    /// The socket.
    stream: TcpStream,
    /// The handle given to handlers and pushers.
    handle: Connection,
    /// Bytes read but not yet decoded: at most one partial frame and a read's worth.
    inbuf: BytesMut,
    /// Bytes encoded but not yet written; it starts on a frame boundary, or
    /// `head_left` bytes before one.
    out: BytesMut,
    /// Bytes of the frame at the front of `out` still to write, once its first
    /// bytes are written (0: `out` starts with a whole frame).
    head_left: usize,
    /// Calls handed to workers and not yet answered.
    in_flight: usize,
    /// Bytes of the requests handed to workers and not yet answered.
    requests: usize,
    /// What this connection last added to `Memory::held`.
    accounted: usize,
    /// When bytes last moved either way, for the idle timeout. Write progress
    /// counts, so a slow reader that is draining is not idle.
    last_active: Instant,
    /// When output last drained: a write made progress, or output arrived to an
    /// empty buffer. For `Config::stalled_reader_timeout`.
    last_drain: Instant,
    /// Since when a frame has been partly read, for `Config::frame_timeout`.
    partial_since: Option<Instant>,
    /// Reading stopped before `WouldBlock` (over budget): read again once
    /// unpaused, since edge-triggered polling will not say so.
    more_to_read: bool,
    /// Bytes of an oversized frame still to skip.
    discard: usize,
    /// Reading stopped because the connection holds more than its budget.
    paused: bool,
    /// Read nothing more; close once the calls in flight are answered and `out` is written.
    closing: bool,
    /// Closed for breaking a limit: its replies are dropped, its input is read and
    /// discarded, and it closes once its go-away is written, or at this time.
    evicted: Option<Instant>,
    /// Whether WRITABLE interest is registered.
    want_write: bool,
    /// Whether the connection is already in the loop's dirty list.
    dirty: bool,
    /// The peer is a trusted load balancer, and neither a PROXY header nor a frame has
    /// been read yet.
    proxy_header: bool,
    /// Until the peer has authenticated (when the listener requires it): its handshake.
    gate: Option<Box<auth::Gate>>,
}

impl Conn {
    /// Bytes held for the connection, for the server's budget.
    fn held(&self) -> usize {
        self.inbuf.len() + self.requests + self.out.len()
    }

    /// Bytes of work the peer has made us hold (calls running, answers
    /// unwritten), for the connection's budget. A frame being read is not
    /// counted there, so a request larger than the budget can still arrive
    /// (`max_frame_size` bounds it).
    fn backlog(&self) -> usize {
        self.requests + self.out.len()
    }

    /// Drops the first `n` bytes of `out`, which were written, keeping track
    /// of where the next frame starts.
    fn advance_out(&mut self, n: usize) {
        // Walk the length prefixes over the written bytes, then advance once.
        let (mut pos, mut head_left) = (0, self.head_left);
        while pos < n {
            if head_left == 0 {
                let len = &self.out[pos..pos + frame::LENGTH_LEN];
                head_left = frame::LENGTH_LEN + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            }
            let step = (n - pos).min(head_left);
            pos += step;
            head_left -= step;
        }
        self.out.advance(n);
        self.head_left = head_left;
    }
}

/// A loop thread's state.
pub(crate) struct EventLoop {
    /// Which loop this is (0 owns the listener).
    index: usize,
    /// The poller.
    poll: Poll,
    /// Handle for other threads.
    shared: Arc<LoopShared>,
    /// Commands from other threads.
    rx: Receiver<Command>,
    /// The listener, on loop 0 only.
    listener: Option<TcpListener>,
    /// Every loop, for handing out accepted sockets.
    peers: Vec<Arc<LoopShared>>,
    /// Round-robin position over `peers`.
    next_peer: usize,
    /// Connections owned by this loop, by token.
    conns: FastMap<Token, Conn>,
    /// Services by name.
    services: Arc<Services>,
    /// The worker pool's queue.
    jobs: Jobs,
    /// The heavy lane's queue.
    heavy: Jobs,
    /// Calls decoded from the current read, queued for the pool together.
    batch: VecDeque<Call>,
    /// The same for the heavy lane.
    heavy_batch: VecDeque<Call>,
    /// Bytes held over the whole server.
    memory: Arc<Memory>,
    /// When the last poll returned: the time of everything done before the
    /// next one (activity stamps, request deadlines), read once per turn.
    now: Instant,
    /// Server settings.
    config: Config,
    /// Read buffer reused for every socket.
    scratch: Box<[u8]>,
    /// Connections with output to write this turn.
    dirty: Vec<Token>,
    /// Set once shutdown starts: when to give up on in-flight calls.
    draining_until: Option<Instant>,
}

impl EventLoop {
    pub(crate) fn new(
        index: usize,
        config: &Config,
        services: Arc<Services>,
        (jobs, heavy): (Jobs, Jobs),
        memory: Arc<Memory>,
    ) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(LoopShared {
            tx,
            waker,
            woken: AtomicBool::new(false),
            connection_budget: config.connection_budget,
        });
        Ok(EventLoop {
            index,
            poll,
            shared,
            rx,
            listener: None,
            peers: Vec::new(),
            next_peer: 0,
            conns: FastMap::default(),
            services,
            jobs,
            heavy,
            batch: VecDeque::new(),
            heavy_batch: VecDeque::new(),
            memory,
            now: Instant::now(),
            config: config.clone(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            draining_until: None,
        })
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn shared(&self) -> Arc<LoopShared> {
        self.shared.clone()
    }

    /// Makes this loop the acceptor, handing sockets out over `peers` in turn.
    pub(crate) fn set_listener(
        &mut self,
        mut listener: TcpListener,
        peers: Vec<Arc<LoopShared>>,
    ) -> io::Result<()> {
        self.poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        self.listener = Some(listener);
        self.peers = peers;
        Ok(())
    }

    /// Runs until shutdown completes.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = self.now + Duration::from_secs(1);
        loop {
            let now = self.now;
            let mut timeout = next_tick.saturating_duration_since(now);
            if let Some(until) = self.draining_until {
                timeout = timeout.min(until.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "poll failed; event loop stops");
                break;
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(token);
                        }
                        if event.is_writable() {
                            self.mark_dirty(token);
                        }
                    }
                }
            }
            self.drain_commands();
            self.flush_dirty();
            let now = self.now;
            if now >= next_tick {
                self.close_idle(now);
                self.enforce_limits(now);
                // An accept that failed (out of file descriptors) left connections in
                // the backlog that raise no new event: try again once a second.
                self.accept();
                next_tick = now + Duration::from_secs(1);
            }
            if let Some(until) = self.draining_until {
                let idle = self
                    .conns
                    .values()
                    .all(|c| (c.in_flight == 0 || c.evicted.is_some()) && c.out.is_empty());
                if idle || now >= until {
                    break;
                }
            }
        }
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            if let Some(conn) = self.conns.get_mut(&token) {
                if conn.evicted.is_some() {
                    // Its go-away is already queued.
                } else if conn.in_flight > 0 {
                    // These calls may have run: the peer must not send them elsewhere.
                    frame::put_goaway(&mut conn.out, "server stopped with calls still running");
                } else if self.draining_until.is_some() {
                    // Only this last word lets the peer send unanswered calls elsewhere; a
                    // server killed while draining closes without it.
                    frame::put_goaway(&mut conn.out, frame::DRAINED_REASON);
                }
                self.flush(token);
            }
            self.close(token, "server stopped");
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let target = self.next_peer % self.peers.len().max(1);
                    self.next_peer = self.next_peer.wrapping_add(1);
                    if target == self.index || self.peers.is_empty() {
                        self.adopt(stream, peer);
                    } else {
                        self.peers[target].send(Command::Adopt { stream, peer });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: log and try again on the next event.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn adopt(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if self.draining_until.is_some() {
            return;
        }
        let id = ConnectionId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed));
        let token = Token(id.0 as usize);
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE) {
            tracing::warn!(error = %e, %peer, "cannot register connection");
            return;
        }
        self.memory.conns.fetch_add(1, Ordering::Relaxed);
        let handle = Connection::new(ConnShared {
            id,
            peer,
            client: std::sync::OnceLock::new(),
            owner: self.shared.clone(),
            open: AtomicBool::new(true),
            unwritten: AtomicUsize::new(0),
            in_transit: AtomicUsize::new(0),
            held_back: AtomicBool::new(false),
        });
        tracing::debug!(%id, %peer, "connection accepted");
        self.conns.insert(
            token,
            Conn {
                stream,
                handle,
                inbuf: BytesMut::new(),
                out: BytesMut::new(),
                head_left: 0,
                in_flight: 0,
                requests: 0,
                accounted: 0,
                last_active: self.now,
                last_drain: self.now,
                partial_since: None,
                more_to_read: false,
                discard: 0,
                paused: false,
                closing: false,
                evicted: None,
                want_write: false,
                dirty: false,
                proxy_header: self.config.proxy_protocol_from.contains(&peer.ip()),
                gate: self.config.authenticator.as_ref().map(|a| Box::new(a.gate(peer, self.now))),
            },
        );
    }

    /// Reads everything the socket has (edge-triggered) and handles each frame.
    fn read(&mut self, token: Token) {
        if self.conns.get(&token).is_some_and(|c| c.evicted.is_some()) {
            return self.discard_input(token);
        }
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.paused || conn.closing {
            return;
        }
        let id = conn.handle.id();
        // The peer shut down its sending side (it may still read), or reset the connection.
        let (mut half_closed, mut reset) = (false, false);
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    half_closed = true;
                    break;
                }
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    conn.last_active = self.now;
                    let mut ctx = Dispatch {
                        services: &self.services,
                        config: &self.config,
                        draining: self.draining_until.is_some(),
                        now: self.now,
                        batch: &mut self.batch,
                        heavy_batch: &mut self.heavy_batch,
                        heavy: &self.heavy,
                        decoded: false,
                    };
                    ctx.frames(conn);
                    if ctx.decoded {
                        // A frame came whole: the clock of the next one starts now.
                        conn.partial_since = None;
                    }
                    self.jobs.send_all(id, &mut self.batch);
                    self.heavy.send_all(id, &mut self.heavy_batch);
                    if conn.closing {
                        break;
                    }
                    if conn.backlog() > self.config.connection_budget {
                        // Stop here: flush pauses the connection if it stays over
                        // its budget, and reads on once it is back under.
                        conn.more_to_read = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    reset = true;
                    break;
                }
            }
        }
        if conn.inbuf.is_empty() && conn.discard == 0 {
            conn.partial_since = None;
            if conn.inbuf.capacity() > KEEP_CAPACITY {
                conn.inbuf = BytesMut::new();
            }
        } else if conn.partial_since.is_none() {
            conn.partial_since = Some(self.now);
        }
        if half_closed {
            // The peer shut down only its sending side and may still read: its calls in
            // flight are answered, and the connection closes once the last answer is
            // written (in `flush`, or by the idle sweep if the peer stops reading).
            conn.closing = true;
        }
        let flush = !conn.out.is_empty() || conn.closing || conn.more_to_read;
        self.account(token);
        if flush {
            self.mark_dirty(token);
        }
        if reset {
            self.close(token, "connection reset");
        }
    }

    /// Reads and drops what an evicted peer still sends, so that its unread bytes do
    /// not turn our close into a reset that could destroy the go-away on its way.
    fn discard_input(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let mut ended = false;
        for _ in 0..16 {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        if ended && conn.out.is_empty() {
            self.close(token, "evicted");
        }
    }

    /// Brings `Memory::held` up to date with what `token` holds now.
    fn account(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let held = conn.held();
        if held > conn.accounted {
            self.memory.held.fetch_add(held - conn.accounted, Ordering::Relaxed);
        } else if held < conn.accounted {
            self.memory.held.fetch_sub(conn.accounted - held, Ordering::Relaxed);
        }
        conn.accounted = held;
    }

    fn drain_commands(&mut self) {
        self.shared.woken.store(false, Ordering::SeqCst);
        // Pairs with the fence in `LoopShared::send`: either this drain sees the
        // command, or the sender sees `woken` false and wakes the poll.
        std::sync::atomic::fence(Ordering::SeqCst);
        // Only what is queued now: a thread pushing without pause must not keep the loop
        // from writing (and so from refusing its pushes) or from serving the others. What
        // arrives meanwhile has woken the poll again.
        for _ in 0..self.rx.len() {
            let Ok(cmd) = self.rx.try_recv() else { break };
            match cmd {
                Command::Reply { id, call_id, result, cost } => {
                    let token = Token(id.0 as usize);
                    let Some(conn) = self.conns.get_mut(&token) else { continue };
                    conn.handle.shared().in_transit.fetch_sub(super::answer_len(&result), Ordering::Relaxed);
                    conn.in_flight = conn.in_flight.saturating_sub(1);
                    conn.requests = conn.requests.saturating_sub(cost);
                    if conn.evicted.is_none() {
                        if conn.out.is_empty() {
                            conn.last_drain = self.now;
                        }
                        frame::put_response(&mut conn.out, call_id, &result);
                    }
                    self.mark_dirty(token);
                }
                Command::Push { id, frame } => {
                    let token = Token(id.0 as usize);
                    let Some(conn) = self.conns.get_mut(&token) else { continue };
                    if conn.evicted.is_none() {
                        if conn.out.is_empty() {
                            conn.last_drain = self.now;
                        }
                        conn.out.extend_from_slice(&frame);
                    }
                    self.mark_dirty(token);
                }
                Command::Close { id } => {
                    let token = Token(id.0 as usize);
                    if let Some(conn) = self.conns.get_mut(&token) {
                        conn.closing = true;
                        self.mark_dirty(token);
                    }
                }
                Command::Adopt { stream, peer } => self.adopt(stream, peer),
                Command::Shutdown => self.begin_shutdown(),
            }
        }
    }

    /// Closes a connection that broke a limit, with a go-away naming it. What is
    /// queued past the frame being written is dropped and its later answers are
    /// too, so it holds almost nothing from now on; calls of it still waiting for
    /// a worker are skipped. It closes once the go-away is written, or after
    /// `Config::stalled_reader_timeout` if the peer never reads it.
    fn evict(&mut self, token: Token, reason: &str) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.evicted.is_some() {
            return;
        }
        tracing::warn!(id = %conn.handle.id(), peer = %conn.handle.peer_addr(), reason, "connection evicted");
        conn.out.truncate(conn.head_left);
        if conn.out.capacity() > KEEP_CAPACITY {
            conn.out = BytesMut::from(&conn.out[..]);
        }
        frame::put_goaway(&mut conn.out, reason);
        conn.inbuf = BytesMut::new();
        conn.discard = 0;
        conn.partial_since = None;
        conn.closing = true;
        conn.evicted = Some(self.now + self.config.stalled_reader_timeout.max(EVICTED_GRACE));
        conn.handle.shared().open.store(false, Ordering::Release);
        if conn.paused {
            // Read again, to discard: the peer's unread bytes would turn the close into a reset.
            conn.paused = false;
            let _ = self.poll.registry().reregister(
                &mut conn.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            );
            conn.want_write = true;
        }
        self.account(token);
        self.mark_dirty(token);
    }

    fn begin_shutdown(&mut self) {
        if self.draining_until.is_some() {
            return;
        }
        self.draining_until = Some(Instant::now() + self.config.shutdown_grace);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            if let Some(conn) = self.conns.get_mut(&token) {
                frame::put_goaway(&mut conn.out, frame::SHUTDOWN_REASON);
            }
            self.mark_dirty(token);
        }
    }

    fn mark_dirty(&mut self, token: Token) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(token);
            }
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(token) = self.dirty.pop() {
            if let Some(conn) = self.conns.get_mut(&token) {
                conn.dirty = false;
            }
            self.flush(token);
        }
    }

    /// Writes as much output as the socket takes, then adjusts interest and backpressure.
    fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let mut failed = false;
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    conn.advance_out(n);
                    conn.last_active = self.now;
                    conn.last_drain = self.now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close(token, "write failed");
            return;
        }
        let pending = conn.out.len();
        if conn.out.capacity() > KEEP_CAPACITY && pending < conn.out.capacity() / 4 {
            // A burst's buffer, mostly written: give the memory back.
            conn.out = BytesMut::from(&conn.out[..]);
        }
        let shared = conn.handle.shared();
        shared.unwritten.store(pending, Ordering::SeqCst);
        if shared.held_back.load(Ordering::SeqCst)
            && pending + shared.in_transit.load(Ordering::SeqCst) <= self.config.connection_budget / 2
        {
            // Its answers drained: its calls may run again.
            shared.held_back.store(false, Ordering::SeqCst);
            let id = conn.handle.id();
            self.jobs.unblock(id);
            self.heavy.unblock(id);
        }
        if conn.evicted.is_some() {
            if pending == 0 {
                // The go-away is out: end our side cleanly (the peer reads it, then EOF).
                self.close(token, "evicted");
            } else if !conn.want_write {
                conn.want_write = true;
                let interest = Interest::READABLE | Interest::WRITABLE;
                if self.poll.registry().reregister(&mut conn.stream, token, interest).is_err() {
                    self.close(token, "cannot reregister");
                }
            }
            return;
        }
        if pending == 0 && conn.closing && conn.in_flight == 0 {
            self.close(token, "closed by server");
            return;
        }
        let want_write = pending > 0;
        let budget = self.config.connection_budget;
        let was_paused = conn.paused;
        let backlog = conn.backlog();
        let over_share =
            self.memory.fair_share(self.config.server_budget).is_some_and(|share| conn.held() > share);
        conn.paused = backlog > budget || over_share || (was_paused && backlog > budget / 2);
        let interest = match (conn.paused, want_write) {
            (true, _) => Interest::WRITABLE,
            (false, true) => Interest::READABLE | Interest::WRITABLE,
            (false, false) => Interest::READABLE,
        };
        if want_write != conn.want_write || was_paused != conn.paused {
            conn.want_write = want_write;
            if self.poll.registry().reregister(&mut conn.stream, token, interest).is_err() {
                self.close(token, "cannot reregister");
                return;
            }
        }
        if was_paused && !conn.paused && conn.partial_since.is_some() {
            // The frame waited on us, not on the peer.
            conn.partial_since = Some(self.now);
        }
        let read_on = (was_paused || conn.more_to_read) && !conn.paused;
        if read_on {
            conn.more_to_read = false;
        }
        self.account(token);
        if read_on {
            // Edge-triggered: bytes that arrived while paused raise no new event.
            self.read(token);
        }
    }

    fn close(&mut self, token: Token, reason: &str) {
        let Some(mut conn) = self.conns.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        conn.handle.shared().open.store(false, Ordering::Release);
        self.memory.held.fetch_sub(conn.accounted, Ordering::Relaxed);
        self.memory.conns.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(id = %conn.handle.id(), peer = %conn.handle.peer_addr(), reason, "connection closed");
        self.jobs.disconnected(conn.handle.id());
        // No hook runs there: the notice only drops the heavy calls still waiting.
        self.heavy.disconnected(conn.handle.id());
    }
}
