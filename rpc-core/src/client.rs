//! The client: a [`Channel`] multiplexes calls from many threads over its connections.
//!
//! A caller encodes its request into a thread-local buffer and queues it on
//! the connection; the first caller to find nobody writing writes everything
//! queued, so concurrent callers share syscalls and no lock is held across a
//! write; what the socket does not take at once is written by the event loop
//! when it has room. No thread is started per connection: a few mio event
//! loops, shared by every channel in the process (one unless
//! [`set_event_loops`] asks for more before the first connection opens),
//! read every connection, hand each response to the thread waiting for it
//! (or run its callback), time out callbacks and send keepalive pings, so any
//! number of calls can be in flight on one socket and come back in any order.
//! Calls started from callbacks are written together after the loop has
//! handled a whole batch of reads. Callbacks, push handlers and disconnect
//! handlers run on an event-loop thread, which serves every connection of the
//! process: they must not block, and must never make a blocking call (nobody
//! would read its answer; it fails with [`Error::BlockingOnReader`]). A broken
//! connection fails its pending calls with [`Error::ConnectionLost`]; the next
//! call reconnects, with exponential backoff between failed attempts.
//!
//! ```no_run
//! use rpc_core::client::{Channel, Config};
//! # fn main() -> Result<(), rpc_core::Error> {
//! let channel = Channel::connect("127.0.0.1:7000", Config::default())?;
//! let reply = channel.call_raw("test.Echo", "Say", b"hi", None)?;
//! assert_eq!(&reply[..], b"hi");
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::frame;
use crate::Error;

mod config;
mod connection;
mod event_loop;
mod pending;
mod reply;
mod slots;
mod transport;

use connection::{lock, Conn};
use pending::{CallName, Pending, Waiter};
use slots::Slot;

pub use config::Config;
pub use event_loop::set_event_loops;
pub use reply::ReplyFuture;
pub use transport::Transport;

/// Runs when a push frame arrives: `(service, method, body)`. Called on the
/// client's event-loop thread, which serves every connection of the process,
/// so it must hand work off rather than block.
pub type PushHandler = Arc<dyn Fn(&str, &str, Bytes) + Send + Sync>;
/// Runs when a connection is lost, with the reason. Called on the event-loop
/// thread: it must not block.
pub type DisconnectHandler = Arc<dyn Fn(&Error) + Send + Sync>;
/// Completion of a call started with a callback; runs on the event-loop
/// thread (which it must not block), or on the caller's if the call could not
/// be sent.
pub type Callback = Box<dyn FnOnce(Result<Bytes, Error>) + Send>;

/// A client of one server address, cheap to clone and share between threads.
#[derive(Clone)]
pub struct Channel {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

struct Inner {
    /// The server.
    addr: SocketAddr,
    /// Settings.
    config: Config,
    /// One per configured connection.
    slots: Vec<Slot>,
    /// Round-robin position over `slots`.
    next_slot: AtomicUsize,
    /// Call ids, unique per channel.
    next_call: AtomicU64,
}

impl Drop for Inner {
    /// The event loops hold their connections, not the channel: close them
    /// when the last clone of the channel goes, or they would live on.
    fn drop(&mut self) {
        for slot in &self.slots {
            let conn = slot.state.lock().unwrap_or_else(|p| p.into_inner()).conn.take();
            if let Some(conn) = conn {
                conn.kill("channel dropped");
            }
        }
    }
}

thread_local! {
    /// Each thread encodes its requests here, so sending allocates nothing.
    static ENCODE_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(4096));
    /// Reused by blocking calls on this thread.
    static WAITER: Arc<Waiter> = Arc::new(Waiter::default());
    /// The names of this thread's last callback call, shared by the calls
    /// that repeat them instead of formatting a string per call.
    static LAST_NAME: RefCell<Option<Arc<CallName>>> = const { RefCell::new(None) };
}

/// `service` and `method` as a shared [`CallName`], reusing this thread's
/// last one when the names repeat (as they do in a loop of calls).
fn call_name(service: &str, method: &str) -> Arc<CallName> {
    LAST_NAME.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some(n) if *n.service == *service && *n.method == *method => n.clone(),
            _ => {
                let n = Arc::new(CallName { service: service.into(), method: method.into() });
                *last = Some(n.clone());
                n
            }
        }
    })
}

impl Channel {
    /// Resolves `addr` and opens the first connection, so a wrong address
    /// fails here.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address does not resolve, [`Error::Connect`] if
    /// the server does not accept.
    pub fn connect(addr: impl ToSocketAddrs, config: Config) -> Result<Channel, Error> {
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "address resolves to nothing"))
        })?;
        let channel = Channel::lazy(addr, config);
        let deadline = Instant::now() + channel.inner.config.connect_timeout;
        channel.conn(0, Some(deadline))?;
        Ok(channel)
    }

    /// A channel that connects on its first call.
    pub fn lazy(addr: SocketAddr, config: Config) -> Channel {
        let n = config.connections.max(1);
        Channel {
            inner: Arc::new(Inner {
                addr,
                slots: (0..n).map(|_| Slot::default()).collect(),
                config,
                next_slot: AtomicUsize::new(0),
                next_call: AtomicU64::new(1),
            }),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether at least one connection is open.
    pub fn is_connected(&self) -> bool {
        self.inner.slots.iter().any(|s| {
            s.state.lock().unwrap_or_else(|p| p.into_inner()).conn.as_ref().is_some_and(|c| c.is_usable())
        })
    }

    /// Calls with an already-encoded body and waits for the encoded reply.
    ///
    /// # Errors
    ///
    /// As [`Transport::call`].
    pub fn call_raw(
        &self,
        service: &str,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        self.call_blocking(service, method, timeout, body.len(), |b| b.extend_from_slice(body))
    }

    /// Starts a call with an already-encoded body; `callback` gets the outcome.
    pub fn call_raw_with(
        &self,
        service: &str,
        method: &str,
        body: &[u8],
        timeout: Option<Duration>,
        callback: Callback,
    ) {
        self.call_async(service, method, timeout, body.len(), |b| b.extend_from_slice(body), callback)
    }

    /// Sends a Ping frame with a call id of its own and waits for the Pong
    /// with that id; returns the round trip, connecting first if needed. The
    /// server's event loop answers it, not a worker: a Pong proves the process
    /// runs and reads its sockets, where a TCP connect proves only that its
    /// kernel accepts (a stopped process's listener still completes handshakes).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] (naming the server's address as the service and
    /// `Ping` as the method) when no Pong came within `timeout`;
    /// [`Error::Connect`] or [`Error::ConnectionLost`] as for a call;
    /// [`Error::BlockingOnReader`] on a client event-loop thread.
    pub fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        if Conn::on_loop_thread() {
            return Err(Error::BlockingOnReader);
        }
        let start = Instant::now();
        let deadline = self.deadline(start, Some(timeout));
        let conn = self.pick(deadline)?;
        let id = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        let put = |buf: &mut BytesMut| frame::put_control(buf, frame::Kind::Ping, id);
        self.round_trip(&conn, id, deadline, put, || Error::Timeout {
            service: self.inner.addr.to_string(),
            method: "Ping".to_owned(),
            elapsed_ms: start.elapsed().as_millis() as u64,
        })?;
        Ok(start.elapsed())
    }

    /// Closes every connection; pending calls fail with [`Error::ConnectionLost`].
    /// The next call reconnects.
    pub fn close(&self) {
        for slot in &self.inner.slots {
            let conn = slot.state.lock().unwrap_or_else(|p| p.into_inner()).conn.take();
            if let Some(conn) = conn {
                conn.kill("closed by the client");
            }
        }
    }

    /// Checks names and that the request fits in a frame.
    fn check(&self, service: &str, method: &str, body_len: usize) -> Result<(), Error> {
        frame::check_name(service)?;
        frame::check_name(method)?;
        let size = frame::HEADER_LEN + service.len() + method.len() + body_len;
        let max = self.inner.config.max_frame_size.min(u32::MAX as usize);
        if size > max {
            return Err(Error::FrameTooLarge { size, max });
        }
        Ok(())
    }

    /// The deadline of a call starting at `now`; see [`call_deadline`].
    fn deadline(&self, now: Instant, timeout: Option<Duration>) -> Option<Instant> {
        call_deadline(now, timeout.or(self.inner.config.default_timeout))
    }
    fn call_blocking(
        &self,
        service: &str,
        method: &str,
        timeout: Option<Duration>,
        body_len: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Bytes, Error> {
        self.check(service, method, body_len)?;
        if Conn::on_loop_thread() {
            return Err(Error::BlockingOnReader);
        }
        let start = Instant::now();
        let deadline = self.deadline(start, timeout);
        let conn = self.pick(deadline)?;
        let id = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        // Connecting may have taken time: the timeout sent is what is left.
        let sent_at = if conn.opened_after(start) { Instant::now() } else { start };
        let put = |buf: &mut BytesMut| {
            request_header(id, sent_at, deadline, service, method).put(buf, body_len);
            encode(buf);
        };
        self.round_trip(&conn, id, deadline, put, || Error::Timeout {
            service: service.to_owned(),
            method: method.to_owned(),
            elapsed_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Registers call `id` on `conn`, writes the frame `put` encodes and waits
    /// until `deadline` for the answer with that id; `timed_out` makes the
    /// error when the deadline passes first.
    fn round_trip(
        &self,
        conn: &Arc<Conn>,
        id: u64,
        deadline: Option<Instant>,
        put: impl FnOnce(&mut BytesMut),
        timed_out: impl FnOnce() -> Error,
    ) -> Result<Bytes, Error> {
        WAITER.with(|waiter| {
            waiter.reset();
            conn.register(id, Pending::Waiter(waiter.clone()));
            let sent = with_encode_buf(|buf| {
                put(buf);
                conn.write(buf)
            });
            if let Err(e) = sent {
                if !conn.unregister(id) {
                    // The event loop failed the call first; take its completion
                    // so it cannot land in this thread's next call.
                    let _ = waiter.wait(None);
                }
                return Err(e);
            }
            match waiter.wait(deadline) {
                Some(result) => result,
                None => {
                    // Timed out; unless the loop took the entry meanwhile, in
                    // which case its result is moments away.
                    if conn.unregister(id) {
                        Err(timed_out())
                    } else {
                        waiter.wait(None).expect("result arrives without a deadline")
                    }
                }
            }
        })
    }

    fn call_async(
        &self,
        service: &str,
        method: &str,
        timeout: Option<Duration>,
        body_len: usize,
        encode: impl FnOnce(&mut BytesMut),
        callback: Callback,
    ) {
        if let Err(e) = self.check(service, method, body_len) {
            return callback(Err(e));
        }
        // A callback on the event loop starts its call at the time of the
        // reads being handled: one clock read serves the whole batch.
        let now = Conn::batch_time().unwrap_or_else(Instant::now);
        let deadline = self.deadline(now, timeout);
        let conn = if Conn::on_loop_thread() {
            // A callback starting a call must not connect or sleep in backoff on
            // the event loop; without an open connection the call moves to a
            // thread of its own.
            match self.try_open_conn() {
                Some(c) => c,
                None => {
                    let mut body = BytesMut::with_capacity(body_len);
                    encode(&mut body);
                    let this = self.clone();
                    let (service, method) = (service.to_owned(), method.to_owned());
                    // Kept here too, so that it is still called if the thread cannot start.
                    let callback = Arc::new(Mutex::new(Some(callback)));
                    let in_thread = callback.clone();
                    let spawned = std::thread::Builder::new().name("rpc-call".to_owned()).spawn(move || {
                        if let Some(callback) = lock(&in_thread).take() {
                            this.call_raw_with(&service, &method, &body, timeout, callback);
                        }
                    });
                    if let Err(e) = spawned {
                        tracing::error!(error = %e, "cannot start a thread for a call");
                        if let Some(callback) = lock(&callback).take() {
                            callback(Err(Error::Io(e)));
                        }
                    }
                    return;
                }
            }
        } else {
            match self.pick(deadline) {
                Ok(c) => c,
                Err(e) => return callback(Err(e)),
            }
        };
        let id = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        let sent_at = if conn.opened_after(now) { Instant::now() } else { now };
        conn.register(
            id,
            Pending::Callback { callback, deadline, started: now, name: call_name(service, method) },
        );
        let sent = with_encode_buf(|buf| {
            request_header(id, sent_at, deadline, service, method).put(buf, body_len);
            encode(buf);
            conn.write(buf)
        });
        if let Err(e) = sent {
            if let Some(Pending::Callback { callback, .. }) = conn.take(id) {
                callback(Err(e));
            }
        }
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("addr", &self.inner.addr).finish()
    }
}

/// The header of a request sent at `now`, with the milliseconds left until
/// `deadline` (at least 1; 0 means none).
fn request_header<'a>(
    id: u64,
    now: Instant,
    deadline: Option<Instant>,
    service: &'a str,
    method: &'a str,
) -> frame::Header<'a> {
    let timeout_ms = deadline.map_or(0, |d| {
        let ms = d.saturating_duration_since(now).as_millis();
        ms.clamp(1, u128::from(u32::MAX)) as u32
    });
    frame::Header {
        kind: frame::Kind::Request,
        code: crate::Code::Ok,
        flags: 0,
        call_id: id,
        timeout_ms,
        service,
        method,
    }
}

/// Runs `f` with this thread's cleared encode buffer.
fn with_encode_buf<R>(f: impl FnOnce(&mut BytesMut) -> R) -> R {
    ENCODE_BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        let r = f(&mut b);
        if b.capacity() > 1 << 20 {
            // Do not keep a huge buffer around because of one large request.
            *b = BytesMut::with_capacity(4096);
        }
        r
    })
}

/// The deadline of a call starting at `now` with `timeout`: its own, but never later
/// than that of the call this thread is serving, if it runs a handler (the deadline
/// travels on down a chain of services).
pub(crate) fn call_deadline(now: Instant, timeout: Option<Duration>) -> Option<Instant> {
    let own = timeout.map(|t| now + t);
    match (own, crate::server::current_deadline()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
