//! A server connection as other threads see it: its id, the [`Connection`] handle
//! handlers and pushers hold, and the state that handle shares with the loop that
//! owns the socket (atomics only: the socket and its buffers stay with the loop).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::event_loop::{Command, LoopShared};
use crate::frame;
use crate::{Error, Status};

/// Identifies a connection for the life of the server; ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// What a connection's loop and every [`Connection`] handle share. One
/// allocation, so handing a handle to a call costs one reference count.
pub(crate) struct ConnShared {
    /// Unique id of the connection.
    pub(crate) id: ConnectionId,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The address a trusted load balancer's PROXY header named, once read.
    pub(crate) client: std::sync::OnceLock<SocketAddr>,
    /// The loop that owns the socket.
    pub(crate) owner: Arc<LoopShared>,
    /// False once the loop has closed the socket.
    pub(crate) open: AtomicBool,
    /// Bytes waiting in the connection's write buffer, as of the loop's last write.
    pub(crate) unwritten: AtomicUsize,
    /// Bytes of answers made by workers and not yet taken by the loop: a worker
    /// that finds them, with `unwritten`, past the hard limit runs no more calls
    /// of the connection, which the loop is about to evict.
    pub(crate) in_transit: AtomicUsize,
    /// Set by a worker that held this connection's calls back (its answers wait past
    /// the budget); the loop clears it and lets them run once they drained.
    pub(crate) held_back: AtomicBool,
}

/// A handle to one client connection, usable from any thread.
///
/// The chat proxy keeps one per logged-in user and pushes messages through it.
#[derive(Clone)]
pub struct Connection {
    /// Id, peer, owning loop and state.
    inner: Arc<ConnShared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.inner.id).field("peer", &self.inner.peer).finish()
    }
}

impl Connection {
    pub(crate) fn new(shared: ConnShared) -> Connection {
        Connection { inner: Arc::new(shared) }
    }

    pub(crate) fn shared(&self) -> &ConnShared {
        &self.inner
    }

    /// The connection's unique id.
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }

    /// The address the connection comes from (a load balancer's, when one is in front).
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The client's address: the one a trusted load balancer named in its PROXY header
    /// (`Config::proxy_protocol_from`), else [`Connection::peer_addr`].
    pub fn client_addr(&self) -> SocketAddr {
        self.inner.client.get().copied().unwrap_or(self.inner.peer)
    }

    /// Whether the connection is still open (false once closed, or evicted for
    /// breaking a limit).
    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Hands a finished call, which held `cost` bytes of the connection's budget,
    /// back to the loop.
    pub(crate) fn reply(&self, call_id: u64, result: Result<Bytes, Status>, cost: usize) {
        self.inner.in_transit.fetch_add(answer_len(&result), Ordering::Relaxed);
        self.inner.owner.send(Command::Reply { id: self.inner.id, call_id, result, cost });
    }

    /// Whether the answers waiting for this connection, written or on their way to the
    /// loop, are past its budget, so that its next call should wait. Sets the flag the
    /// loop clears (and lets the calls run again) once they drained; checked
    /// again after the flag is set, so that a drain in between is not missed.
    pub(crate) fn hold_back(&self) -> bool {
        let inner = &self.inner;
        let over = || {
            let waiting = inner.unwritten.load(Ordering::SeqCst) + inner.in_transit.load(Ordering::SeqCst);
            waiting > inner.owner.connection_budget
        };
        if !over() {
            return false;
        }
        inner.held_back.store(true, Ordering::SeqCst);
        if over() {
            return true;
        }
        // Drained meanwhile: whoever clears the flag now finds nothing to unblock.
        inner.held_back.store(false, Ordering::SeqCst);
        false
    }

    /// Sends a one-way frame naming `service.method` to the client.
    ///
    /// Returns once the frame is queued for the loop; it is written in order
    /// with the connection's other frames.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the connection has closed; [`Error::Backpressure`]
    /// if more than `connection_budget` bytes already wait for the client;
    /// [`Error::InvalidName`] for a name over 255 bytes.
    pub fn push(&self, service: &str, method: &str, body: &[u8]) -> Result<(), Error> {
        frame::check_name(service)?;
        frame::check_name(method)?;
        let inner = &self.inner;
        if !self.is_open() {
            return Err(Error::Closed(format!("{} ({}) is closed", inner.id, inner.peer)));
        }
        let mut buf = BytesMut::new();
        frame::put_push(&mut buf, service, method, body);
        // Counted now, not when the loop writes it: pushes queued faster than the loop
        // drains them are refused too. The loop stores the true figure after each write.
        let queued = inner.unwritten.fetch_add(buf.len(), Ordering::Relaxed);
        if queued > inner.owner.connection_budget {
            inner.unwritten.fetch_sub(buf.len(), Ordering::Relaxed);
            return Err(Error::Backpressure(format!("{} has {queued} bytes unread by the client", inner.id)));
        }
        inner.owner.send(Command::Push { id: inner.id, frame: buf.freeze() });
        Ok(())
    }

    /// Closes the connection after what is already queued to it is written.
    pub fn close(&self) {
        self.inner.owner.send(Command::Close { id: self.inner.id });
    }
}

/// The bytes an answer holds on its way to the loop.
pub(crate) fn answer_len(result: &Result<Bytes, Status>) -> usize {
    match result {
        Ok(body) => body.len(),
        Err(status) => status.message.len(),
    }
}
