//! One event-loop thread: owns a `mio::Poll`, its sockets and their buffers.
//!
//! This file holds the loop itself: its turn (poll, commands from other threads,
//! writes, the once-a-second checks), accepting and adopting sockets, and shutdown.
//! One connection's state and the reads and writes that move it are in `conn`; the
//! handling of each decoded frame in `dispatch`; the timed limits in `limits`.

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

use super::lanes::{self, Services};
use super::per_address::PerAddress;
use super::pool::{self, Call, Jobs};
use super::proxy_header;
use super::{Config, ConnShared, Connection, ConnectionId, Context, Service};
use crate::auth;
use crate::fast_hash::FastMap;
use crate::frame::{self, FrameError, Kind};
use crate::{Outcome, Status};

mod conn;
mod dispatch;
mod limits;
#[cfg(test)]
mod tests;

use conn::Conn;
use dispatch::Dispatch;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids double as poll tokens, so they start after the two fixed tokens.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(2);
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 64 * 1024;
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
    /// Each named lane's queue, by the index in the services' lane tables.
    lanes: Vec<lanes::Queue>,
    /// Calls decoded from the current read, queued for the pool together.
    batch: VecDeque<Call>,
    /// Bytes held over the whole server.
    memory: Arc<Memory>,
    /// Connections open per client address, over the whole server.
    per_address: Arc<PerAddress>,
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
        (jobs, lanes): (Jobs, Vec<lanes::Queue>),
        (memory, per_address): (Arc<Memory>, Arc<PerAddress>),
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
            lanes,
            batch: VecDeque::new(),
            memory,
            per_address,
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
        // A trusted balancer's connection counts against the client its header names,
        // once it is read (`Dispatch::frames`); until then, against nobody.
        let proxy_header = self.config.proxy_protocol_from.contains(&peer.ip());
        let admitted = if proxy_header { Ok(None) } else { self.per_address.admit(peer.ip()) };
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
                proxy_header,
                counted: admitted.as_ref().ok().copied().flatten(),
                // A refused peer gets no handshake.
                gate: match (&admitted, &self.config.authenticator) {
                    (Ok(_), Some(a)) => Some(Box::new(a.gate(peer, self.now))),
                    _ => None,
                },
            },
        );
        if let Err(why) = admitted {
            self.refuse(token, &why);
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

    fn close(&mut self, token: Token, reason: &str) {
        let Some(mut conn) = self.conns.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        conn.handle.shared().open.store(false, Ordering::Release);
        self.memory.held.fetch_sub(conn.accounted, Ordering::Relaxed);
        self.memory.conns.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = conn.counted {
            self.per_address.release(key);
        }
        tracing::debug!(id = %conn.handle.id(), peer = %conn.handle.peer_addr(), reason, "connection closed");
        self.jobs.disconnected(conn.handle.id());
        // No hook runs there: the notice only drops the lane's calls still waiting.
        for lane in &self.lanes {
            lane.jobs.disconnected(conn.handle.id());
        }
    }
}
