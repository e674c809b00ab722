//! One client connection: a write lock for callers and a reader thread that
//! completes their calls.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::{Callback, Config};
use crate::fast_hash::FastMap;
use crate::frame::{self, FrameError, Kind, DRAINED_REASON};
use crate::Error;

const OPEN: u8 = 0;
/// The server sent go-away: finish what is pending, start nothing new.
const DRAINING: u8 = 1;
const DEAD: u8 = 2;
/// Queued bytes past which writers get `Error::Backpressure` instead of queueing more.
const MAX_QUEUED: usize = 64 * 1024 * 1024;

thread_local! {
    /// Set while a reader thread dispatches one read's frames: the connections
    /// written to meanwhile (by callbacks starting new calls, on any channel)
    /// are only queued, and flushed once the whole read is handled, so those
    /// calls share one syscall per connection.
    static DEFERRED: RefCell<Option<Vec<Arc<Conn>>>> = const { RefCell::new(None) };
    /// True on connection reader threads. A reader never writes to a socket
    /// itself: a blocked write would stop it reading, and a server waiting
    /// for us to read before it reads again would then wait forever.
    static ON_READER: Cell<bool> = const { Cell::new(false) };
    /// While a reader thread dispatches one read's frames: when that read
    /// returned. Calls started by callbacks take it as their start time
    /// instead of reading the clock each.
    static BATCH_TIME: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The service and method of a call, kept to name it in a timeout error.
pub(crate) struct CallName {
    pub(crate) service: Box<str>,
    pub(crate) method: Box<str>,
}

/// A blocking caller's parking place for its result.
#[derive(Default)]
pub(crate) struct Waiter {
    result: Mutex<Option<Result<Bytes, Error>>>,
    ready: Condvar,
}

impl Waiter {
    pub(crate) fn reset(&self) {
        *lock(&self.result) = None;
    }

    fn complete(&self, result: Result<Bytes, Error>) {
        *lock(&self.result) = Some(result);
        self.ready.notify_one();
    }

    /// Waits for the result until `deadline`; `None` if it passed first.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Result<Bytes, Error>> {
        let mut slot = lock(&self.result);
        loop {
            if let Some(r) = slot.take() {
                return Some(r);
            }
            match deadline {
                None => slot = self.ready.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    slot = self.ready.wait_timeout(slot, left).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }
}

/// A call waiting for its response.
pub(crate) enum Pending {
    /// A blocked thread.
    Waiter(Arc<Waiter>),
    /// A callback, with what the reader needs to time it out.
    Callback { callback: Callback, deadline: Option<Instant>, started: Instant, name: Arc<CallName> },
}

impl Pending {
    fn complete(self, result: Result<Bytes, Error>) {
        match self {
            Pending::Waiter(w) => w.complete(result),
            Pending::Callback { callback, .. } => guarded("a call's callback", || callback(result)),
        }
    }
}

pub(crate) struct Conn {
    /// The server.
    addr: SocketAddr,
    /// The socket. Only the thread that won `flushing` writes to it.
    stream: TcpStream,
    /// Whole frames waiting to be written.
    queued: Mutex<BytesMut>,
    /// Set while one thread writes `queued` out; the others only append, so
    /// frames from many threads go out in one syscall and no lock is held
    /// across a write.
    flushing: AtomicBool,
    /// Set when the writer thread should flush `queued` for the reader.
    writer_due: Mutex<bool>,
    /// Wakes the writer thread.
    writer_wake: Condvar,
    /// Calls awaiting responses, by call id.
    pending: Mutex<FastMap<u64, Pending>>,
    /// When the connection opened; deadlines below are nanoseconds since then.
    epoch: Instant,
    /// The earliest deadline of a pending callback (`u64::MAX` for none): the
    /// reader must wake by then to time it out.
    earliest_deadline: AtomicU64,
    /// When the reader's current blocking read times out by itself.
    reader_wakes_at: AtomicU64,
    /// OPEN, DRAINING or DEAD.
    state: AtomicU8,
    /// Why the connection ended or is draining.
    reason: Mutex<Option<String>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the application's code (a call's callback, the push or disconnect handler) on
/// the reader thread: a panic in it is logged, and the connection and its other calls
/// carry on.
fn guarded(what: &str, code: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(code)).is_err() {
        tracing::error!("{what} panicked; the connection carries on");
    }
}

impl Conn {
    /// Connects and starts the reader thread.
    pub(crate) fn open(addr: SocketAddr, timeout: Duration, config: &Config) -> io::Result<Arc<Conn>> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(config.write_timeout))?;
        if let Some(credential) = &config.credential {
            crate::auth::client_handshake(&mut stream, credential, timeout)?;
        }
        let reader = stream.try_clone()?;
        let conn = Arc::new(Conn {
            addr,
            stream,
            queued: Mutex::new(BytesMut::with_capacity(8 * 1024)),
            flushing: AtomicBool::new(false),
            writer_due: Mutex::new(false),
            writer_wake: Condvar::new(),
            pending: Mutex::new(FastMap::default()),
            epoch: Instant::now(),
            earliest_deadline: AtomicU64::new(u64::MAX),
            reader_wakes_at: AtomicU64::new(0),
            state: AtomicU8::new(OPEN),
            reason: Mutex::new(None),
        });
        let c = conn.clone();
        let config = config.clone();
        std::thread::Builder::new()
            .name(format!("rpc-client-{addr}"))
            .spawn(move || c.read_loop(reader, &config))?;
        let c = conn.clone();
        std::thread::Builder::new().name(format!("rpc-writer-{addr}")).spawn(move || c.write_loop())?;
        Ok(conn)
    }

    /// Whether the connection was opened after `t`.
    pub(crate) fn opened_after(&self, t: Instant) -> bool {
        self.epoch > t
    }

    /// When the read whose frames this reader thread is dispatching returned;
    /// `None` on other threads and between reads.
    pub(crate) fn batch_time() -> Option<Instant> {
        BATCH_TIME.get()
    }

    /// Whether new calls may use this connection.
    pub(crate) fn is_usable(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    pub(crate) fn register(self: &Arc<Self>, id: u64, p: Pending) {
        let deadline = match &p {
            Pending::Callback { deadline: Some(d), .. } => Some(self.nanos(*d)),
            _ => None,
        };
        lock(&self.pending).insert(id, p);
        if let Some(at) = deadline {
            self.earliest_deadline.fetch_min(at, Ordering::SeqCst);
            if at < self.reader_wakes_at.load(Ordering::SeqCst) {
                // The reader sleeps in a read past this deadline: a ping makes
                // the server answer, which wakes it to recompute its timeout.
                let mut ping = BytesMut::new();
                frame::put_control(&mut ping, Kind::Ping, 0);
                let _ = self.write(&ping);
            }
        }
        if self.state.load(Ordering::Acquire) == DEAD {
            // The reader may have failed everything before we registered.
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

    /// `t` as nanoseconds since the connection opened.
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos().min(u128::from(u64::MAX - 1)) as u64
    }

    /// Queues one or more whole frames and sees that they are written.
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
        if ON_READER.get() {
            self.flush_later();
            return Ok(());
        }
        self.flush()
    }

    /// Writes what is queued without blocking, from a reader thread; what the
    /// socket does not take at once is left to the writer thread. In the
    /// common case this saves waking the writer thread for every read.
    #[cfg(unix)]
    fn flush_from_reader(&self) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            // Another thread is writing; it picks up what was queued.
            return;
        }
        let mut batch = lock(&self.queued).split();
        let mut failed = None;
        while !batch.is_empty() {
            match socket2::SockRef::from(&self.stream)
                .send_with_flags(&batch, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            {
                Ok(0) => {
                    failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => batch.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.flushing.store(false, Ordering::Release);
            self.kill(&format!("write failed: {e}"));
            return;
        }
        let more = {
            let mut queued = lock(&self.queued);
            if !batch.is_empty() {
                // Unwritten bytes go back in front of what was queued meanwhile.
                batch.unsplit(queued.split());
                *queued = batch;
            }
            !queued.is_empty()
        };
        self.flushing.store(false, Ordering::Release);
        if more {
            // The socket is full, or others queued while we wrote: the writer
            // thread may block on it, the reader must not.
            self.flush_later();
        }
    }

    /// Without a non-blocking send, the writer thread writes for the reader.
    #[cfg(not(unix))]
    fn flush_from_reader(&self) {
        self.flush_later();
    }

    /// Asks the writer thread to flush.
    fn flush_later(&self) {
        *lock(&self.writer_due) = true;
        self.writer_wake.notify_one();
    }

    /// The writer thread: flushes what reader threads queued.
    fn write_loop(self: Arc<Conn>) {
        loop {
            {
                let mut due = lock(&self.writer_due);
                while !*due && self.state.load(Ordering::Acquire) != DEAD {
                    due = self.writer_wake.wait(due).unwrap_or_else(|p| p.into_inner());
                }
                if self.state.load(Ordering::Acquire) == DEAD {
                    return;
                }
                *due = false;
            }
            if self.flush().is_err() {
                return;
            }
        }
    }

    /// Whether no call may start on this thread without risking a blocked reader.
    pub(crate) fn on_reader_thread() -> bool {
        ON_READER.get()
    }

    /// Writes everything queued, unless another thread is already doing so
    /// (it will pick up what was queued before it finishes).
    fn flush(&self) -> Result<(), Error> {
        loop {
            if self.flushing.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            // `split` leaves the allocation behind; once `batch` is dropped the
            // next append reclaims it, so steady-state writes allocate nothing.
            let batch = lock(&self.queued).split();
            let result = if batch.is_empty() { Ok(()) } else { (&self.stream).write_all(&batch) };
            drop(batch);
            self.flushing.store(false, Ordering::Release);
            if let Err(e) = result {
                let reason = if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                    "write timed out: the server is not reading".to_owned()
                } else {
                    format!("write failed: {e}")
                };
                self.kill(&reason);
                return Err(self.lost());
            }
            // Bytes queued while we wrote, by threads that saw us flushing.
            if lock(&self.queued).is_empty() {
                return Ok(());
            }
        }
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

    /// Marks the connection dead and shuts the socket; the reader then fails
    /// every pending call.
    pub(crate) fn kill(&self, reason: &str) {
        if self.state.swap(DEAD, Ordering::AcqRel) != DEAD {
            lock(&self.reason).get_or_insert_with(|| reason.to_owned());
            let _ = self.stream.shutdown(Shutdown::Both);
            let _due = lock(&self.writer_due);
            self.writer_wake.notify_all();
        }
    }

    fn read_loop(self: Arc<Conn>, mut stream: TcpStream, config: &Config) {
        ON_READER.set(true);
        let reason = self.read_frames(&mut stream, config);
        self.kill(&reason);
        let _ = stream.shutdown(Shutdown::Both);
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

    /// Reads and dispatches frames until the connection ends; returns why.
    fn read_frames(self: &Arc<Self>, stream: &mut TcpStream, config: &Config) -> String {
        let keepalive = config.keepalive;
        let slow_tick =
            if keepalive.is_zero() { Duration::from_secs(1) } else { keepalive.min(Duration::from_secs(1)) };
        let mut tick = slow_tick;
        if stream.set_read_timeout(Some(tick)).is_err() {
            return "cannot set read timeout".to_owned();
        }
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut scratch = vec![0u8; 64 * 1024];
        // The list of connections written during a dispatch, kept between reads.
        let mut written: Vec<Arc<Conn>> = Vec::new();
        let mut discard = 0usize;
        let mut last_rx = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            if self.state.load(Ordering::Acquire) == DEAD {
                return lock(&self.reason).clone().unwrap_or_else(|| "closed".to_owned());
            }
            // Sleep in the read no longer than the earliest callback deadline.
            let now = self.nanos(Instant::now());
            let mut want = slow_tick;
            loop {
                let earliest = self.earliest_deadline.load(Ordering::SeqCst);
                let until = Duration::from_nanos(earliest.saturating_sub(now)).max(Duration::from_millis(1));
                want = want.min(until);
                self.reader_wakes_at.store(now.saturating_add(want.as_nanos() as u64), Ordering::SeqCst);
                if self.earliest_deadline.load(Ordering::SeqCst) == earliest {
                    break;
                }
            }
            if want != tick {
                tick = want;
                let _ = stream.set_read_timeout(Some(tick));
            }
            match stream.read(&mut scratch) {
                Ok(0) => {
                    let goaway = lock(&self.reason).clone();
                    return goaway.unwrap_or_else(|| "closed by the server".to_owned());
                }
                Ok(n) => {
                    last_rx = Instant::now();
                    buf.extend_from_slice(&scratch[..n]);
                    DEFERRED.with(|d| *d.borrow_mut() = Some(std::mem::take(&mut written)));
                    BATCH_TIME.set(Some(last_rx));
                    let handled = self.frames(&mut buf, &mut discard, config);
                    BATCH_TIME.set(None);
                    written = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
                    for conn in written.drain(..) {
                        conn.flush_from_reader();
                    }
                    if let Err(reason) = handled {
                        return reason;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return format!("read failed: {e}"),
            }
            let now = Instant::now();
            if !keepalive.is_zero() {
                if now.duration_since(last_rx) > keepalive * 3 {
                    return format!("no answer from the server for {} s", (keepalive * 3).as_secs());
                }
                if now.duration_since(last_ping) >= keepalive {
                    last_ping = now;
                    let mut ping = BytesMut::new();
                    frame::put_control(&mut ping, Kind::Ping, 0);
                    if self.write(&ping).is_err() {
                        return "cannot send keepalive ping".to_owned();
                    }
                }
            }
            if self.nanos(now) >= self.earliest_deadline.load(Ordering::SeqCst) {
                self.expire_callbacks(now);
            }
        }
    }

    /// Handles every whole frame in `buf`.
    fn frames(
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
    fn expire_callbacks(&self, now: Instant) {
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
                        earliest = earliest.min(self.nanos(*d));
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
