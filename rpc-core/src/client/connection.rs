//! One client connection: a queue callers write through, and the table of
//! pending calls (`super::pending`) that the connection's event loop
//! ([`super::event_loop`]) completes.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::event_loop::{self, Loop};
use super::pending::Pending;
use super::Config;
use crate::fast_hash::FastMap;
use crate::frame::{self, FrameError, Kind, DRAINED_REASON};
use crate::Error;

const OPEN: u8 = 0;
/// The server sent go-away: finish what is pending, start nothing new.
const DRAINING: u8 = 1;
const DEAD: u8 = 2;
/// Queued bytes past which writers get `Error::Backpressure` instead of queueing more.
const MAX_QUEUED: usize = 64 * 1024 * 1024;
/// `Conn::stalled_since` when the socket took everything written.
const NOT_STALLED: u64 = u64::MAX;

thread_local! {
    /// Set while an event loop dispatches the frames of one batch of reads:
    /// the connections written to meanwhile (by callbacks starting new calls,
    /// on any channel) are only queued, and flushed once the whole batch is
    /// handled, so those calls share one syscall per connection.
    static DEFERRED: RefCell<Option<Vec<Arc<Conn>>>> = const { RefCell::new(None) };
    /// True on client event-loop threads. A blocking call made there would
    /// wait for the very thread that has to read its answer.
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
    /// While an event loop dispatches one batch of reads: when the poll
    /// returned. Calls started by callbacks take it as their start time
    /// instead of reading the clock each.
    static BATCH_TIME: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Marks this thread as a client event loop.
pub(super) fn enter_loop_thread() {
    ON_LOOP.set(true);
}

/// Starts a batch of reads taken at `now`: writes are deferred into `list`
/// (empty, kept between batches for its allocation) until [`end_batch`].
pub(super) fn begin_batch(list: Vec<Arc<Conn>>, now: Instant) {
    DEFERRED.with(|d| *d.borrow_mut() = Some(list));
    BATCH_TIME.set(Some(now));
}

/// Ends the batch; returns the connections written meanwhile, to flush.
pub(super) fn end_batch() -> Vec<Arc<Conn>> {
    BATCH_TIME.set(None);
    DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default()
}

/// One connection to a server, shared by its channel's slot, the callers writing
/// through it and the event loop reading it.
pub(crate) struct Conn {
    /// The server.
    addr: SocketAddr,
    /// The socket, non-blocking. Only the thread that won `flushing` writes
    /// to it; the event loop reads it through a clone of its own.
    stream: TcpStream,
    /// Whole frames waiting to be written.
    queued: Mutex<BytesMut>,
    /// Set while one thread writes `queued` out; the others only append, so
    /// frames from many threads go out in one syscall and no lock is held
    /// across a write.
    flushing: AtomicBool,
    /// Set by every thread that wants a flush before it tries to win
    /// `flushing`: the winner clears it and, once done, flushes again if it
    /// was set meanwhile, so no wish to write (a caller's or the event loop's
    /// on a writable socket) is lost to a thread that was just finishing.
    flush_again: AtomicBool,
    /// When the socket last refused bytes without taking any since, in the
    /// loop's nanoseconds; `NOT_STALLED` when it took everything. The event
    /// loop ends a connection stalled for longer than `Config::write_timeout`.
    stalled_since: AtomicU64,
    /// `Config::write_timeout`.
    write_timeout: Duration,
    /// Calls awaiting responses, by call id.
    pending: Mutex<FastMap<u64, Pending>>,
    /// When the connection opened.
    epoch: Instant,
    /// The earliest deadline of a pending callback, in the loop's nanoseconds
    /// (`u64::MAX` for none): the loop must wake by then to time it out.
    earliest_deadline: AtomicU64,
    /// OPEN, DRAINING or DEAD.
    state: AtomicU8,
    /// Why the connection ended or is draining.
    reason: Mutex<Option<String>>,
    /// The event loop that reads this connection.
    event_loop: Arc<Loop>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the application's code (a call's callback, the push or disconnect handler) on
/// the event loop: a panic in it is logged, and the connection and its other calls
/// carry on.
pub(super) fn guarded(what: &str, code: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(code)).is_err() {
        tracing::error!("{what} panicked; the connection carries on");
    }
}

impl Conn {
    /// Connects, runs the handshake on this thread, and hands the socket to
    /// an event loop.
    pub(crate) fn open(addr: SocketAddr, timeout: Duration, config: &Config) -> io::Result<Arc<Conn>> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        if let Some(credential) = &config.credential {
            stream.set_write_timeout(Some(config.write_timeout))?;
            crate::auth::client_handshake(&mut stream, credential, timeout)?;
        }
        stream.set_nonblocking(true)?;
        let reader = mio::net::TcpStream::from_std(stream.try_clone()?);
        let conn = Arc::new(Conn {
            addr,
            stream,
            queued: Mutex::new(BytesMut::with_capacity(8 * 1024)),
            flushing: AtomicBool::new(false),
            flush_again: AtomicBool::new(false),
            stalled_since: AtomicU64::new(NOT_STALLED),
            write_timeout: config.write_timeout,
            pending: Mutex::new(FastMap::default()),
            epoch: Instant::now(),
            earliest_deadline: AtomicU64::new(u64::MAX),
            state: AtomicU8::new(OPEN),
            reason: Mutex::new(None),
            event_loop: event_loop::pick()?,
        });
        conn.event_loop.adopt(conn.clone(), reader, config.clone());
        Ok(conn)
    }

    /// Whether the connection was opened after `t`.
    pub(crate) fn opened_after(&self, t: Instant) -> bool {
        self.epoch > t
    }

    /// When the poll whose reads this event loop is dispatching returned;
    /// `None` on other threads and between batches.
    pub(crate) fn batch_time() -> Option<Instant> {
        BATCH_TIME.get()
    }

    /// Whether new calls may use this connection.
    pub(crate) fn is_usable(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    /// Whether the connection was killed.
    pub(super) fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) == DEAD
    }

    pub(crate) fn register(self: &Arc<Self>, id: u64, p: Pending) {
        let deadline = match &p {
            Pending::Callback { deadline: Some(d), .. } => Some(self.event_loop.nanos(*d)),
            _ => None,
        };
        lock(&self.pending).insert(id, p);
        if let Some(at) = deadline {
            self.earliest_deadline.fetch_min(at, Ordering::SeqCst);
            self.event_loop.deadline_at(at);
        }
        if self.state.load(Ordering::Acquire) == DEAD {
            // The loop may have failed everything before we registered.
            if let Some(p) = self.take(id) {
                p.complete(Err(self.lost()));
            }
        }
    }

    /// Removes a pending call; true if it was still there.
    pub(crate) fn unregister(&self, id: u64) -> bool {
        self.take(id).is_some()
    }

    pub(crate) fn take(&self, id: u64) -> Option<Pending> {
        lock(&self.pending).remove(&id)
    }

    /// The earliest deadline of a pending callback, in the loop's nanoseconds.
    pub(super) fn earliest_deadline(&self) -> u64 {
        self.earliest_deadline.load(Ordering::SeqCst)
    }

    /// Queues one or more whole frames and writes what the socket takes now;
    /// the event loop writes the rest when the socket has room.
    pub(crate) fn write(self: &Arc<Self>, bytes: &[u8]) -> Result<(), Error> {
        {
            let mut queued = lock(&self.queued);
            if queued.len() > MAX_QUEUED {
                return Err(Error::Backpressure(format!(
                    "{} bytes already wait to be written to {}",
                    queued.len(),
                    self.addr
                )));
            }
            queued.extend_from_slice(bytes);
        }
        let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(list) => {
                if !list.iter().any(|c| Arc::ptr_eq(c, self)) {
                    list.push(self.clone());
                }
                true
            }
            None => false,
        });
        if deferred {
            return Ok(());
        }
        self.flush()
    }

    /// Whether no call may start on this thread without risking a blocked event loop.
    pub(crate) fn on_loop_thread() -> bool {
        ON_LOOP.get()
    }

    /// Writes what is queued without blocking, unless another thread is
    /// already doing so (it then writes again for us). What the socket does
    /// not take stays queued for the event loop, which writes it when the
    /// socket reports room.
    pub(super) fn flush(&self) -> Result<(), Error> {
        loop {
            self.flush_again.store(true, Ordering::SeqCst);
            if self.flushing.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            self.flush_again.store(false, Ordering::SeqCst);
            // `split` leaves the allocation behind; once `batch` is dropped the
            // next append reclaims it, so steady-state writes allocate nothing.
            let mut batch = lock(&self.queued).split();
            let mut failed = None;
            let mut progressed = false;
            while !batch.is_empty() {
                match (&self.stream).write(&batch) {
                    Ok(0) => {
                        failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                        break;
                    }
                    Ok(n) => {
                        batch.advance(n);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if progressed {
                self.stalled_since.store(NOT_STALLED, Ordering::Relaxed);
            }
            if let Some(e) = failed {
                self.flushing.store(false, Ordering::SeqCst);
                self.kill(&format!("write failed: {e}"));
                return Err(self.lost());
            }
            let blocked = !batch.is_empty();
            let more = {
                let mut queued = lock(&self.queued);
                if blocked {
                    // Unwritten bytes go back in front of what was queued meanwhile.
                    batch.unsplit(queued.split());
                    *queued = batch;
                }
                !queued.is_empty()
            };
            if blocked && self.stalled_since.load(Ordering::Relaxed) == NOT_STALLED {
                self.stalled_since.store(self.event_loop.nanos(Instant::now()), Ordering::Relaxed);
            }
            self.flushing.store(false, Ordering::SeqCst);
            // Flushing again while the socket is full would only spin: the
            // loop hears when it has room. Bytes queued meanwhile by threads
            // that saw us flushing are written now.
            let again = self.flush_again.load(Ordering::SeqCst);
            if !(again || (more && !blocked)) {
                return Ok(());
            }
        }
    }

    /// Whether the socket has refused every byte for longer than
    /// `Config::write_timeout` (`now` in the loop's nanoseconds).
    pub(super) fn write_stalled(&self, now: u64) -> bool {
        let since = self.stalled_since.load(Ordering::Relaxed);
        since != NOT_STALLED && now.saturating_sub(since) > self.write_timeout.as_nanos() as u64
    }

    /// The error for calls still pending when the connection ended. When the
    /// server's last word was that it answered every call it read, those calls
    /// never ran and may be sent elsewhere: they fail as `NotRun`. Any other end
    /// (a server killed while draining, a keepalive expiry, a local close) leaves
    /// it unknown, and they fail as `ConnectionLost`.
    fn pending_error(&self) -> Error {
        let reason = lock(&self.reason).clone();
        if reason.as_deref() == Some(DRAINED_REASON) {
            Error::NotRun { addr: self.addr, reason: "it shut down before reading the call".to_owned() }
        } else {
            self.lost()
        }
    }

    fn lost(&self) -> Error {
        let reason = lock(&self.reason).clone().unwrap_or_else(|| "connection closed".to_owned());
        Error::ConnectionLost { addr: self.addr, reason }
    }

    /// Why the connection ended (or is draining), or `otherwise`.
    pub(super) fn reason_or(&self, otherwise: &str) -> String {
        lock(&self.reason).clone().unwrap_or_else(|| otherwise.to_owned())
    }

    /// Marks the connection dead and shuts the socket; its event loop then
    /// fails every pending call.
    pub(crate) fn kill(&self, reason: &str) {
        if self.state.swap(DEAD, Ordering::AcqRel) != DEAD {
            lock(&self.reason).get_or_insert_with(|| reason.to_owned());
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Ends the connection for `reason`, on its event loop: fails every
    /// pending call and tells the disconnect handler.
    pub(super) fn end(&self, reason: &str, config: &Config) {
        self.kill(reason);
        let error = self.lost();
        tracing::debug!(addr = %self.addr, %error, "client connection ended");
        let pending: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in pending {
            p.complete(Err(self.pending_error()));
        }
        if let Some(hook) = &config.on_disconnect {
            guarded("the disconnect handler", || hook(&error));
        }
    }

    /// Handles every whole frame in `buf`.
    pub(super) fn frames(
        self: &Arc<Self>,
        buf: &mut BytesMut,
        discard: &mut usize,
        config: &Config,
    ) -> Result<(), String> {
        loop {
            if *discard > 0 {
                let n = (*discard).min(buf.len());
                buf.advance(n);
                *discard -= n;
                if *discard > 0 {
                    return Ok(());
                }
            }
            let f = match frame::decode(buf, config.max_frame_size) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(FrameError::TooLarge { size, max }) => {
                    let Some((_, call_id)) = frame::peek_call(buf) else { return Ok(()) };
                    if let Some(p) = self.take(call_id) {
                        p.complete(Err(Error::FrameTooLarge { size, max }));
                    }
                    *discard = frame::LENGTH_LEN + size;
                    continue;
                }
                Err(FrameError::Invalid(why)) => {
                    return Err(format!("protocol violation by the server: {why}"))
                }
            };
            match f.kind {
                Kind::Response => {
                    if let Some(p) = self.take(f.call_id) {
                        p.complete(f.into_result().map_err(Error::Status));
                    }
                }
                Kind::Push => {
                    if let Some(handler) = &config.on_push {
                        guarded("the push handler", || handler(f.service(), f.method(), f.body.clone()));
                    }
                }
                Kind::Ping => {
                    let mut pong = BytesMut::new();
                    frame::put_control(&mut pong, Kind::Pong, f.call_id);
                    let _ = self.write(&pong);
                }
                // Keepalive pings carry id 0, which no call has; a Pong with
                // another id answers `Channel::ping`.
                Kind::Pong if f.call_id != 0 => {
                    if let Some(p) = self.take(f.call_id) {
                        p.complete(Ok(Bytes::new()));
                    }
                }
                Kind::Pong => {}
                Kind::GoAway => {
                    let reason = String::from_utf8_lossy(&f.body).into_owned();
                    let reason = if reason.is_empty() { "server sent go-away".to_owned() } else { reason };
                    tracing::debug!(addr = %self.addr, %reason, "server sent go-away");
                    *lock(&self.reason) = Some(reason);
                    let _ = self.state.compare_exchange(OPEN, DRAINING, Ordering::AcqRel, Ordering::Acquire);
                }
                Kind::Request => return Err("protocol violation by the server: it sent a request".to_owned()),
                Kind::Auth => {
                    return Err(
                        "protocol violation by the server: a handshake step after the handshake".to_owned()
                    )
                }
            }
        }
    }

    /// Fails every callback whose deadline has passed with `Error::Timeout`
    /// and recomputes the earliest remaining deadline.
    pub(super) fn expire_callbacks(&self, now: Instant) {
        let expired: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            // Reset first: a callback registered meanwhile lowers it again.
            self.earliest_deadline.store(u64::MAX, Ordering::SeqCst);
            let mut earliest = u64::MAX;
            let mut ids = Vec::new();
            for (id, p) in pending.iter() {
                if let Pending::Callback { deadline: Some(d), .. } = p {
                    if *d <= now {
                        ids.push(*id);
                    } else {
                        earliest = earliest.min(self.event_loop.nanos(*d));
                    }
                }
            }
            self.earliest_deadline.fetch_min(earliest, Ordering::SeqCst);
            ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
        };
        for p in expired {
            if let Pending::Callback { started, name, .. } = &p {
                let timeout = Error::Timeout {
                    service: name.service.to_string(),
                    method: name.method.to_string(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                };
                p.complete(Err(timeout));
            }
        }
    }
}
