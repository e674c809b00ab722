//! The attackers, one per scenario. Each speaks rpc-core's framing on raw
//! sockets (`rpc_core::frame`), because a real client would read its replies
//! and stay polite; each is bounded in connections and calls, and stops by
//! itself at a deadline even if nobody stops it.
//!
//! [`start`] puts the attack in place (connections open, first calls
//! written) and returns; a thread keeps it going until [`Running::stop`],
//! which says how the attacker's connections ended: still open, closed by
//! the server with a go-away (and its reason), closed without one, or reset.
//!
//! The attackers are in this file; `fate` says how a connection ended (reading
//! what the server sent on it), and `herd` holds the thousands of connections
//! of the idle and drip attackers on one poll.

mod fate;
mod herd;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Buf, BytesMut};
use mio::Events;
use rpc_core::frame;

use super::server::{big_request, BIG, BURN, ECHO, SERVICE};
use super::Scenario;
use fate::{is_timeout, probe, take_frames, tally, Fate};
use herd::Herd;

/// Longest wait for one connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a waiting attacker checks whether it should stop.
const TICK: Duration = Duration::from_millis(50);
/// The burst attacker writes its next burst no sooner than this after the
/// last, so a server that refuses every call at once is not flooded.
const BURST_GAP: Duration = Duration::from_millis(100);
/// How long the no-read attacker reads, when it stops, to find out whether
/// the server closed its connections.
const PROBE_TIME: Duration = Duration::from_secs(2);
/// How many reply bytes it reads per connection before deciding it is open.
const PROBE_BYTES: usize = 64 * 1024 * 1024;

/// How hard each attacker pushes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Connections of the no-read attacker.
    pub no_read_conns: usize,
    /// `Big` calls the no-read attacker writes, over all its connections.
    pub no_read_calls: usize,
    /// Size of each `Big` reply, in KiB.
    pub big_kib: u32,
    /// `Burn` calls per burst.
    pub burst: usize,
    /// Idle connections.
    pub idle: usize,
    /// Dripping connections.
    pub drip: usize,
    /// Time between two bytes of a dripping connection.
    pub drip_interval: Duration,
    /// Body of the request a dripping connection trickles, in bytes: the frame
    /// is never finished within a run of default length.
    pub drip_body: usize,
}

impl Default for Sizes {
    /// 1,500 calls of 256 KiB over 3 unread connections; bursts of 1,000;
    /// 10,000 idle connections; 1,000 connections dripping one byte per 100 ms.
    fn default() -> Sizes {
        Sizes {
            no_read_conns: 3,
            no_read_calls: 1500,
            big_kib: 256,
            burst: 1000,
            idle: 10_000,
            drip: 1000,
            drip_interval: Duration::from_millis(100),
            drip_body: 1024,
        }
    }
}

/// An attack in progress.
pub struct Running {
    /// Tells the attacker's thread to stop.
    stop: Arc<AtomicBool>,
    /// The attacker's thread, which returns how it ended; `None` for no attack.
    thread: Option<JoinHandle<String>>,
}

impl Running {
    /// Stops the attack and says how its connections ended.
    pub fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread {
            None => "none".to_owned(),
            Some(t) => t.join().unwrap_or_else(|_| "the attacker panicked".to_owned()),
        }
    }
}

/// Puts `scenario`'s attack on `addr` in place and keeps it going on a thread
/// until stopped or until `until`.
///
/// # Errors
///
/// When no connection can be opened, or the first calls cannot be written.
pub fn start(scenario: Scenario, sizes: &Sizes, addr: SocketAddr, until: Instant) -> anyhow::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Flag { stop: stop.clone(), until };
    let thread = match scenario {
        Scenario::Baseline => None,
        Scenario::NoRead => Some(no_read(sizes, addr, flag)?),
        Scenario::Burst => Some(burst(sizes, addr, flag)?),
        Scenario::Idle => Some(idle(sizes, addr, flag)?),
        Scenario::Drip => Some(drip(sizes, addr, flag)?),
    };
    Ok(Running { stop, thread })
}

/// When an attacker's thread should stop.
#[derive(Clone)]
struct Flag {
    /// Set by [`Running::stop`].
    stop: Arc<AtomicBool>,
    /// The attacker stops by itself here.
    until: Instant,
}

impl Flag {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.until
    }

    /// Sleeps in ticks until told to stop.
    fn wait(&self) {
        while !self.done() {
            std::thread::sleep(TICK);
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() -> String + Send + 'static) -> anyhow::Result<JoinHandle<String>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(body).context("cannot start an attacker thread")
}

/// Opens a blocking connection with `TCP_NODELAY`.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `n` request frames of `method` with `body`, call ids from `first_id`.
fn requests(first_id: u64, n: usize, method: &str, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    for id in first_id..first_id + n as u64 {
        frame::put_request(&mut buf, id, 0, SERVICE, method, body);
    }
    buf
}

/// `no-read`: pipelines `Big` calls over a few connections and never reads a
/// reply, so every reply the server makes waits in the server.
fn no_read(sizes: &Sizes, addr: SocketAddr, flag: Flag) -> anyhow::Result<JoinHandle<String>> {
    let conns = sizes.no_read_conns.max(1);
    let (mut streams, mut written) = (Vec::with_capacity(conns), 0);
    for c in 0..conns {
        let mut stream = connect(addr).context("no-read attacker cannot connect")?;
        // Spread the calls evenly; the first connections take the remainder.
        let calls = sizes.no_read_calls / conns + usize::from(c < sizes.no_read_calls % conns);
        let frames = requests(1, calls, BIG, &big_request(sizes.big_kib));
        // A few tens of KiB fit in the socket's buffer whatever the server does,
        // but a server that stops reading may leave some unwritten.
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let sent = write_some(&mut stream, &frames);
        written += calls * sent / frames.len().max(1);
        streams.push(stream);
    }
    let kib = sizes.big_kib;
    spawn("no-read", move || {
        flag.wait();
        let deadline = Instant::now() + PROBE_TIME;
        let fates = streams.iter_mut().map(|s| {
            let patience = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(200));
            probe(s, patience, PROBE_BYTES)
        });
        let fates: Vec<Fate> = fates.collect();
        format!("{written} calls of {kib} KiB written on {conns} conns, never read; {}", tally(fates))
    })
}

/// Writes as much of `bytes` as `stream` takes before an error or its write
/// timeout, and returns how much that was.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

/// `burst`: one connection writes `burst` `Burn` calls at once, and again
/// once they are all answered, until stopped.
fn burst(sizes: &Sizes, addr: SocketAddr, flag: Flag) -> anyhow::Result<JoinHandle<String>> {
    let mut stream = connect(addr).context("burst attacker cannot connect")?;
    // Short waits both ways, so that a server that neither answers nor reads
    // cannot keep the attacker from stopping.
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(TICK))?;
    let n = sizes.burst.max(1);
    spawn("burst", move || {
        let (mut bursts, mut answers) = (0usize, BTreeMap::new());
        let (mut outbox, mut inbox, mut scratch) = (BytesMut::new(), BytesMut::new(), vec![0u8; 64 * 1024]);
        let mut last_burst = None::<Instant>;
        let fate = loop {
            if flag.done() {
                break Fate::Open;
            }
            let answered: usize = answers.values().sum();
            let gap_over = last_burst.is_none_or(|t| t.elapsed() >= BURST_GAP);
            if answered == bursts * n && outbox.is_empty() && gap_over {
                outbox = requests((bursts * n) as u64 + 1, n, BURN, &[]);
                (bursts, last_burst) = (bursts + 1, Some(Instant::now()));
            }
            if !outbox.is_empty() {
                match stream.write(&outbox) {
                    Ok(k) => outbox.advance(k),
                    Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Fate::of_error(&e),
                }
            }
            match stream.read(&mut scratch) {
                Ok(0) => break Fate::Closed,
                Ok(k) => {
                    inbox.extend_from_slice(&scratch[..k]);
                    if let Some(fate) = take_frames(&mut inbox, &mut answers) {
                        break fate;
                    }
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Fate::of_error(&e),
            }
        };
        let answers: Vec<String> = answers.iter().map(|(code, k)| format!("{code} {k}")).collect();
        let answers = if answers.is_empty() { "none".to_owned() } else { answers.join(", ") };
        format!("{bursts} burst(s) of {n} Burn, answered: {answers}; {fate}")
    })
}

/// `idle`: opens `idle` connections before the victim starts, and leaves
/// them be.
fn idle(sizes: &Sizes, addr: SocketAddr, flag: Flag) -> anyhow::Result<JoinHandle<String>> {
    let mut herd = Herd::open(addr, sizes.idle).context("idle attacker")?;
    spawn("idle", move || {
        let mut events = Events::with_capacity(1024);
        while !flag.done() {
            herd.watch(&mut events, TICK);
        }
        let opened = herd.opened();
        format!("{opened}; {}", herd.into_fates())
    })
}

/// `drip`: opens `drip` connections, each of which writes a request frame
/// one byte per `drip_interval`, and starts another when one is finished.
fn drip(sizes: &Sizes, addr: SocketAddr, flag: Flag) -> anyhow::Result<JoinHandle<String>> {
    let mut herd = Herd::open(addr, sizes.drip).context("drip attacker")?;
    let frame = requests(1, 1, ECHO, &vec![0xa5; sizes.drip_body]);
    let interval = sizes.drip_interval.max(Duration::from_millis(1));
    spawn("drip", move || {
        let mut events = Events::with_capacity(1024);
        let (mut next, mut sent) = (Instant::now(), 0usize);
        while !flag.done() {
            herd.watch(&mut events, next.saturating_duration_since(Instant::now()).min(TICK));
            if Instant::now() < next {
                continue;
            }
            let byte = [frame[sent % frame.len()]];
            for t in 0..herd.conns.len() {
                let Some((stream, _)) = herd.conns[t].as_mut() else { continue };
                if let Err(e) = stream.write(&byte) {
                    // What the server said before it closed, if anything.
                    let fate = herd.read(t).unwrap_or_else(|| Fate::of_error(&e));
                    herd.end(t, fate);
                }
            }
            sent += 1;
            next += interval;
        }
        let opened = herd.opened();
        format!("{opened}, {sent} B dripped each (frames of {} B); {}", frame.len(), herd.into_fates())
    })
}
