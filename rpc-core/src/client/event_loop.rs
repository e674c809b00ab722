//! The client's event loops: a few threads, shared by every channel in the
//! process, that read every client connection, complete its calls (running
//! callbacks, push and disconnect handlers), time out callbacks, send
//! keepalive pings, and write what callers queued but the socket did not take
//! at once.
//!
//! One loop is started, with the first connection; [`set_event_loops`] asks
//! for more before then. Connections are spread over the loops in turn.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::connection::{self, lock, Conn};
use super::Config;
use crate::fast_hash::FastMap;
use crate::frame::{self, Kind};

const WAKER: Token = Token(0);
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// The longest a loop sleeps without looking at its connections' keepalives
/// and stalled writes.
const SLOW_TICK: Duration = Duration::from_secs(1);

/// The loops of this process, started with the first connection.
static LOOPS: Mutex<Vec<Arc<Loop>>> = Mutex::new(Vec::new());
/// How many loops to start.
static WANTED: AtomicUsize = AtomicUsize::new(1);
/// The loop that gets the next connection (modulo their number).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Sets how many event-loop threads drive the client connections of this
/// process (at least one; one unless set). Takes effect only before the first
/// client connection opens, when the loops start: returns false, changing
/// nothing, once they run.
pub fn set_event_loops(n: usize) -> bool {
    let loops = lock(&LOOPS);
    if !loops.is_empty() {
        return false;
    }
    WANTED.store(n.max(1), Ordering::Relaxed);
    true
}

/// The loop for a new connection, starting the loops if none runs yet.
pub(super) fn pick() -> io::Result<Arc<Loop>> {
    let mut loops = lock(&LOOPS);
    if loops.is_empty() {
        for i in 0..WANTED.load(Ordering::Relaxed) {
            loops.push(Loop::start(i)?);
        }
    }
    Ok(loops[NEXT.fetch_add(1, Ordering::Relaxed) % loops.len()].clone())
}

/// The part of a loop other threads hold.
pub(super) struct Loop {
    /// Connections handed over and not yet registered.
    adopted: Mutex<Vec<Entry>>,
    /// Interrupts the loop's poll.
    waker: Waker,
    /// Deadlines are nanoseconds since this.
    epoch: Instant,
    /// The earliest callback deadline over the loop's connections (`u64::MAX`
    /// for none).
    earliest: AtomicU64,
    /// When the loop's current poll ends by itself.
    wakes_at: AtomicU64,
}

/// A connection as its loop holds it.
struct Entry {
    conn: Arc<Conn>,
    /// The loop's clone of the socket, for reads and readiness.
    stream: TcpStream,
    config: Config,
    /// Bytes read and not yet a whole frame.
    buf: BytesMut,
    /// Bytes of a too-large frame still to skip.
    discard: usize,
    last_rx: Instant,
    last_ping: Instant,
}

impl Loop {
    fn start(index: usize) -> io::Result<Arc<Loop>> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Loop {
            adopted: Mutex::new(Vec::new()),
            waker,
            epoch: Instant::now(),
            earliest: AtomicU64::new(u64::MAX),
            wakes_at: AtomicU64::new(0),
        });
        let run = shared.clone();
        std::thread::Builder::new().name(format!("rpc-client-loop-{index}")).spawn(move || run.run(poll))?;
        Ok(shared)
    }

    /// `t` as nanoseconds since the loop started.
    pub(super) fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos().min(u128::from(u64::MAX - 1)) as u64
    }

    /// Hands an open connection, and a clone of its socket to read, to the loop.
    pub(super) fn adopt(&self, conn: Arc<Conn>, stream: TcpStream, config: Config) {
        let now = Instant::now();
        let entry = Entry {
            conn,
            stream,
            config,
            buf: BytesMut::with_capacity(READ_CHUNK),
            discard: 0,
            last_rx: now,
            last_ping: now,
        };
        lock(&self.adopted).push(entry);
        self.wake();
    }

    /// A callback now has a deadline at `at`: wakes the loop if it would
    /// otherwise sleep past it.
    pub(super) fn deadline_at(&self, at: u64) {
        self.earliest.fetch_min(at, Ordering::SeqCst);
        if at < self.wakes_at.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake a client event loop");
        }
    }

    /// How long to poll: until the next look at the connections, or the
    /// earliest callback deadline if sooner.
    fn poll_timeout(&self, next_tick: Instant) -> Duration {
        let now = self.nanos(Instant::now());
        let tick = self.nanos(next_tick);
        loop {
            let earliest = self.earliest.load(Ordering::SeqCst);
            let until = tick.min(earliest).max(now);
            self.wakes_at.store(until, Ordering::SeqCst);
            // A deadline registered meanwhile saw the old `wakes_at`: look again.
            if self.earliest.load(Ordering::SeqCst) == earliest {
                return Duration::from_nanos(until - now);
            }
        }
    }

    fn run(self: Arc<Loop>, mut poll: Poll) {
        connection::enter_loop_thread();
        let mut events = Events::with_capacity(1024);
        let mut entries: FastMap<usize, Entry> = FastMap::default();
        let mut next_token = 1usize;
        let mut scratch = vec![0u8; READ_CHUNK];
        // The connections written during a batch, kept between batches.
        let mut written: Vec<Arc<Conn>> = Vec::new();
        let mut ended: Vec<(usize, String)> = Vec::new();
        let mut tick = SLOW_TICK;
        let mut next_tick = Instant::now() + tick;
        loop {
            if let Err(e) = poll.poll(&mut events, Some(self.poll_timeout(next_tick))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "client event loop cannot poll");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let adopted = std::mem::take(&mut *lock(&self.adopted));
            for mut entry in adopted {
                let token = next_token;
                next_token += 1;
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = poll.registry().register(&mut entry.stream, Token(token), interest) {
                    entry.conn.end(&format!("cannot poll the socket: {e}"), &entry.config);
                    continue;
                }
                if !entry.config.keepalive.is_zero() {
                    // Half the interval: connections adopted at other times
                    // are due between two looks.
                    tick = tick.min(entry.config.keepalive / 2);
                    next_tick = next_tick.min(Instant::now() + tick);
                }
                entries.insert(token, entry);
            }
            let now = Instant::now();
            connection::begin_batch(std::mem::take(&mut written), now);
            for event in events.iter() {
                let token = event.token().0;
                let Some(entry) = entries.get_mut(&token) else { continue };
                if event.is_writable() {
                    let _ = entry.conn.flush();
                }
                // The end of the stream raises no new event once seen: read to it.
                let to_end = event.is_read_closed() || event.is_error();
                if event.is_readable() || to_end {
                    if let Err(reason) = entry.read(&mut scratch, now, to_end) {
                        ended.push((token, reason));
                    }
                }
            }
            written = connection::end_batch();
            for conn in written.drain(..) {
                let _ = conn.flush();
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + tick;
                let at = self.nanos(now);
                for (token, entry) in &mut entries {
                    if let Some(reason) = entry.check(now, at) {
                        ended.push((*token, reason));
                    }
                }
            }
            for (token, reason) in ended.drain(..) {
                if let Some(mut entry) = entries.remove(&token) {
                    let _ = poll.registry().deregister(&mut entry.stream);
                    entry.conn.end(&reason, &entry.config);
                }
            }
            if self.nanos(now) >= self.earliest.load(Ordering::SeqCst) {
                self.expire(&entries, now);
            }
        }
    }

    /// Times out every callback whose deadline passed, and recomputes the
    /// earliest deadline left.
    fn expire(&self, entries: &FastMap<usize, Entry>, now: Instant) {
        // Reset first: a deadline registered meanwhile lowers it again.
        self.earliest.store(u64::MAX, Ordering::SeqCst);
        let at = self.nanos(now);
        for entry in entries.values() {
            if entry.conn.earliest_deadline() <= at {
                entry.conn.expire_callbacks(now);
            }
            self.earliest.fetch_min(entry.conn.earliest_deadline(), Ordering::SeqCst);
        }
    }
}

impl Entry {
    /// Reads and dispatches until the socket has nothing more; `Err` with
    /// the reason when the connection ended. Unless `to_end`, a read that
    /// does not fill the buffer took everything there was: bytes arriving
    /// later raise a new event, so the read that would only say so is saved.
    fn read(&mut self, scratch: &mut [u8], now: Instant, to_end: bool) -> Result<(), String> {
        loop {
            match (&self.stream).read(scratch) {
                Ok(0) => return Err(self.conn.reason_or("closed by the server")),
                Ok(n) => {
                    self.last_rx = now;
                    self.buf.extend_from_slice(&scratch[..n]);
                    self.conn.frames(&mut self.buf, &mut self.discard, &self.config)?;
                    if n < scratch.len() && !to_end {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// The periodic look at a connection (`at` is `now` in the loop's
    /// nanoseconds): closed, silent for three keepalive intervals, or not
    /// taking writes for `write_timeout` ends it; a keepalive interval
    /// without a ping sends one.
    fn check(&mut self, now: Instant, at: u64) -> Option<String> {
        if self.conn.is_dead() {
            return Some(self.conn.reason_or("closed"));
        }
        if self.conn.write_stalled(at) {
            return Some("write timed out: the server is not reading".to_owned());
        }
        let keepalive = self.config.keepalive;
        if keepalive.is_zero() {
            return None;
        }
        if now.duration_since(self.last_rx) > keepalive * 3 {
            return Some(format!("no answer from the server for {} s", (keepalive * 3).as_secs()));
        }
        if now.duration_since(self.last_ping) >= keepalive {
            self.last_ping = now;
            let mut ping = BytesMut::new();
            frame::put_control(&mut ping, Kind::Ping, 0);
            if self.conn.write(&ping).is_err() {
                return Some("cannot send keepalive ping".to_owned());
            }
        }
        None
    }
}
