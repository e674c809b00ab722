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

use super::pool::{self, Job, Jobs};
use super::{Config, ConnShared, Connection, ConnectionId, Context, Service};
use crate::fast_hash::FastMap;
use crate::frame::{self, FrameError, Kind};
use crate::Status;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids double as poll tokens, so they start after the two fixed tokens.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(2);
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Services by name (as bytes, so a lookup needs no UTF-8 check).
pub(crate) type Services = FastMap<Box<[u8]>, Arc<dyn Service>>;

/// Messages to a loop from other threads.
pub(crate) enum Command {
    /// A worker finished a call; `None` for a one-way push that sends nothing back.
    Reply { id: ConnectionId, call_id: u64, result: Option<Result<Bytes, Status>> },
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
    /// Bytes read but not yet decoded.
    inbuf: BytesMut,
    /// Bytes encoded but not yet written.
    out: BytesMut,
    /// Calls handed to workers and not yet answered.
    in_flight: usize,
    /// When bytes last moved either way, for the idle timeout. Write progress
    /// counts, so a slow reader that is draining is not idle.
    last_active: Instant,
    /// Reading stopped before `WouldBlock` (output over the cap): read again
    /// once unpaused, since edge-triggered polling will not say so.
    more_to_read: bool,
    /// Bytes of an oversized frame still to skip.
    discard: usize,
    /// Reading stopped because `out` is over the cap.
    paused: bool,
    /// Read nothing more; close once the calls in flight are answered and `out` is written.
    closing: bool,
    /// Whether WRITABLE interest is registered.
    want_write: bool,
    /// Whether the connection is already in the loop's dirty list.
    dirty: bool,
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
    /// Calls decoded from the current read, queued for the pool together.
    batch: VecDeque<Job>,
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
        jobs: Jobs,
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
            batch: VecDeque::new(),
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
                // An accept that failed (out of file descriptors) left connections in
                // the backlog that raise no new event: try again once a second.
                self.accept();
                next_tick = now + Duration::from_secs(1);
            }
            if let Some(until) = self.draining_until {
                let idle = self.conns.values().all(|c| c.in_flight == 0 && c.out.is_empty());
                if idle || now >= until {
                    break;
                }
            }
        }
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            if let Some(conn) = self.conns.get_mut(&token) {
                if conn.in_flight > 0 {
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
        let handle = Connection::new(ConnShared {
            id,
            peer,
            owner: self.shared.clone(),
            open: AtomicBool::new(true),
            unwritten: AtomicUsize::new(0),
        });
        tracing::debug!(%id, %peer, "connection accepted");
        self.conns.insert(
            token,
            Conn {
                stream,
                handle,
                inbuf: BytesMut::new(),
                out: BytesMut::new(),
                in_flight: 0,
                last_active: self.now,
                more_to_read: false,
                discard: 0,
                paused: false,
                closing: false,
                want_write: false,
                dirty: false,
            },
        );
    }

    /// Reads everything the socket has (edge-triggered) and handles each frame.
    fn read(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.paused || conn.closing {
            return;
        }
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
                    };
                    ctx.frames(conn);
                    self.jobs.send_all(&mut self.batch);
                    if conn.closing {
                        break;
                    }
                    if conn.out.len() > self.config.connection_budget {
                        // Stop here: flush pauses the connection if the output
                        // does not drain, and reads on once it has.
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
        if half_closed {
            // The peer shut down only its sending side and may still read: its calls in
            // flight are answered, and the connection closes once the last answer is
            // written (in `flush`, or by the idle sweep if the peer stops reading).
            conn.closing = true;
        }
        if !conn.out.is_empty() || conn.closing {
            self.mark_dirty(token);
        }
        if reset {
            self.close(token, "connection reset");
        }
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
                Command::Reply { id, call_id, result } => {
                    let token = Token(id.0 as usize);
                    let Some(conn) = self.conns.get_mut(&token) else { continue };
                    conn.in_flight = conn.in_flight.saturating_sub(1);
                    if let Some(result) = result {
                        frame::put_response(&mut conn.out, call_id, &result);
                    }
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(token);
                    }
                }
                Command::Push { id, frame } => {
                    let token = Token(id.0 as usize);
                    let Some(conn) = self.conns.get_mut(&token) else { continue };
                    conn.out.extend_from_slice(&frame);
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(token);
                    }
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
                    conn.out.advance(n);
                    conn.last_active = self.now;
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
        conn.handle.shared().unwritten.store(pending, Ordering::Relaxed);
        if pending == 0 && conn.closing && conn.in_flight == 0 {
            self.close(token, "closed by server");
            return;
        }
        let want_write = pending > 0;
        let max = self.config.connection_budget;
        let was_paused = conn.paused;
        conn.paused = pending > max || (was_paused && pending > max / 2);
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
        if (was_paused || conn.more_to_read) && !conn.paused {
            // Edge-triggered: bytes that arrived while paused raise no new event.
            conn.more_to_read = false;
            self.read(token);
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let limit = self.config.idle_timeout;
        if limit.is_zero() {
            return;
        }
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.in_flight == 0 && now.duration_since(c.last_active) > limit)
            .map(|(t, _)| *t)
            .collect();
        for token in idle {
            if self.conns.get(&token).is_some_and(|c| c.closing) {
                // Told to go away a whole idle period ago and still not reading
                // its last bytes: drop it rather than hold its output forever.
                self.close(token, "closing peer stopped reading");
                continue;
            }
            if let Some(conn) = self.conns.get_mut(&token) {
                let reason = format!("idle for more than {} s", limit.as_secs());
                frame::put_goaway(&mut conn.out, &reason);
                conn.closing = true;
            }
            self.flush(token);
        }
    }

    fn close(&mut self, token: Token, reason: &str) {
        let Some(mut conn) = self.conns.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        conn.handle.shared().open.store(false, Ordering::Release);
        tracing::debug!(id = %conn.handle.id(), peer = %conn.handle.peer_addr(), reason, "connection closed");
        self.jobs.send(Job::Disconnected(conn.handle.id()));
    }
}

/// `service.runs_inline(method)`, with a panic in it (application code) taken as "no":
/// the call goes to a worker, which answers a panicking handler with Internal.
fn runs_inline(service: &dyn Service, method: &str) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.runs_inline(method))).unwrap_or_else(
        |_| {
            tracing::error!(
                service = service.name(),
                method,
                "runs_inline panicked; the call goes to a worker"
            );
            false
        },
    )
}

/// What frame handling needs from the loop, borrowed apart from the connection map.
struct Dispatch<'a> {
    services: &'a Services,
    config: &'a Config,
    draining: bool,
    /// The loop's clock for this turn, the base of request deadlines.
    now: Instant,
    /// Calls for the pool; the loop queues them once the read is handled.
    batch: &'a mut VecDeque<Job>,
}

impl Dispatch<'_> {
    /// Decodes and handles every whole frame in `conn.inbuf`.
    fn frames(&mut self, conn: &mut Conn) {
        loop {
            if conn.closing {
                // After a go-away nothing more from this peer is acted on.
                return;
            }
            if conn.discard > 0 {
                let n = conn.discard.min(conn.inbuf.len());
                conn.inbuf.advance(n);
                conn.discard -= n;
                if conn.discard > 0 {
                    return;
                }
            }
            match frame::decode(&mut conn.inbuf, self.config.max_frame_size) {
                Ok(Some(f)) => self.frame(conn, f),
                Ok(None) => return,
                Err(FrameError::TooLarge { size, max }) => {
                    let Some((kind, call_id)) = frame::peek_call(&conn.inbuf) else { return };
                    if kind == Some(Kind::Request) {
                        let status = Status::resource_exhausted(format!(
                            "request of {size} bytes exceeds the server's maximum frame size of {max}"
                        ));
                        frame::put_response(&mut conn.out, call_id, &Err(status));
                    }
                    conn.discard = frame::LENGTH_LEN + size;
                }
                Err(FrameError::Invalid(why)) => {
                    tracing::debug!(peer = %conn.handle.peer_addr(), why, "protocol violation");
                    frame::put_goaway(&mut conn.out, &format!("protocol violation: {why}"));
                    conn.closing = true;
                    return;
                }
            }
        }
    }

    fn frame(&mut self, conn: &mut Conn, f: frame::Frame) {
        match f.kind {
            Kind::Request | Kind::Push => self.call(conn, f),
            Kind::Ping => frame::put_control(&mut conn.out, Kind::Pong, f.call_id),
            Kind::Pong => {}
            Kind::Response | Kind::GoAway => {
                frame::put_goaway(
                    &mut conn.out,
                    "protocol violation: clients may not send responses or go-away",
                );
                conn.closing = true;
            }
        }
    }

    fn call(&mut self, conn: &mut Conn, f: frame::Frame) {
        let reply = f.kind == Kind::Request;
        let refuse = |conn: &mut Conn, status: Status| {
            if reply {
                frame::put_response(&mut conn.out, f.call_id, &Err(status));
            } else {
                tracing::debug!(peer = %conn.handle.peer_addr(), %status, "one-way push dropped");
            }
        };
        if self.draining {
            return refuse(conn, Status::unavailable("server is shutting down"));
        }
        let Some(service) = self.services.get(f.service_bytes()) else {
            let status = Status::unimplemented(format!("unknown service '{}'", f.service()));
            return refuse(conn, status);
        };
        if conn.in_flight >= self.config.max_in_flight_per_connection {
            let status = Status::resource_exhausted(format!(
                "more than {} calls in flight on one connection",
                self.config.max_in_flight_per_connection
            ));
            return refuse(conn, status);
        }
        let deadline = (f.timeout_ms > 0).then(|| self.now + Duration::from_millis(f.timeout_ms.into()));
        let ctx = Context { connection: conn.handle.clone(), call_id: f.call_id, deadline };
        if runs_inline(service.as_ref(), f.method()) {
            let result = pool::run(service.as_ref(), &ctx, &f);
            if reply {
                frame::put_response(&mut conn.out, f.call_id, &result);
            }
            return;
        }
        conn.in_flight += 1;
        self.batch.push_back(Job::Call { service: service.clone(), ctx, frame: f, reply });
    }
}
