//! Closed-loop load generators, one per kind of client.
//!
//! A measurement opens fresh connections, then runs `in_flight` *lanes*.
//! A lane has one call outstanding at a time and starts the next as soon as
//! the previous one completes, so exactly `in_flight` calls are in flight
//! for the whole run. How a lane waits depends on the client:
//!
//! - rpc-core's client drives rpc-core and both mio references (they speak
//!   the same framing), so those three are compared with the same client.
//!   [`Mode::Pipelined`] lanes are chains of callbacks
//!   (`Transport::call_with`): each completion, on the connection's reader
//!   thread, records its latency and starts the lane's next call. No thread
//!   per call is needed, which matters with 128 calls on two cores.
//! - tonic and tarpc lanes are tokio tasks on a two-worker runtime, each
//!   awaiting its calls in a loop.
//! - [`Mode::Blocking`] lanes are OS threads that block on each call
//!   (`Transport::call`; `Runtime::block_on` for tonic and tarpc): the
//!   single blocking caller's round trip.
//!
//! Calls go round-robin over the connections (rpc-core's `Config::connections`;
//! lane `i` uses connection `i % n` for tonic and tarpc). A lane records a call
//! when it *completes* inside the measurement window, which begins after
//! the warm-up; calls per second are those completions over the window's
//! length. A failed call or a wrong reply stops its lane and is counted.
//!
//! The meter itself is kept cheap, since it runs on the client's threads
//! and shares two cores with the server: one clock read per call (a lane's
//! completion time is its next call's start), and latencies go to a
//! histogram per recording *thread* rather than per lane, so 128 lanes do
//! not drag 128 histograms through the cache.

use std::cell::Cell as ThreadCell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use crossbeam_channel::Sender;
use hdrhistogram::Histogram;
use prost::Message;
use rpc_core::client::{Channel, Config as ClientConfig, Transport};

use crate::proto::echo_client::EchoClient;
use crate::proto::EchoMessage;
use crate::servers::tarpc::EchoRpcClient;
use crate::servers::{METHOD, SERVICE, WORKERS};
use crate::System;

/// Longest a lane may take to finish its last call after the window closes.
const GRACE: Duration = Duration::from_secs(10);
/// Largest latency the histograms hold, in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Latency histograms per measurement; recording threads pick one each.
const SHARDS: usize = 16;

/// How lanes wait for their calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Callbacks or async tasks: many calls share each thread.
    Pipelined,
    /// One OS thread per lane, blocked on each call.
    Blocking,
}

/// One point of the workload grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    /// Bytes in the message's `payload` field.
    pub payload: usize,
    /// Calls outstanding at every moment (lanes).
    pub in_flight: usize,
    /// TCP connections the calls are spread over.
    pub connections: usize,
    /// How lanes wait.
    pub mode: Mode,
}

/// How long each measurement warms up and then counts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Calls made before counting starts (connections warm, caches filled).
    pub warmup: Duration,
    /// The measurement window.
    pub measure: Duration,
}

/// What one measurement of one system on one cell found.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Calls completed inside the window.
    pub calls: u64,
    /// Calls that failed or came back wrong (each stops its lane).
    pub errors: u64,
    /// The first failure, to show what went wrong.
    pub first_error: Option<String>,
    /// The window's length.
    pub measured: Duration,
    /// Round-trip latency of the counted calls, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Sample {
    /// A measurement that could not run at all.
    pub fn failed(error: &anyhow::Error) -> Sample {
        Sample {
            calls: 0,
            errors: 1,
            first_error: Some(format!("{error:#}")),
            measured: Duration::ZERO,
            latency: new_histogram(),
        }
    }

    /// Completed calls per second of the window.
    pub fn calls_per_sec(&self) -> f64 {
        if self.measured.is_zero() {
            return 0.0;
        }
        self.calls as f64 / self.measured.as_secs_f64()
    }

    /// The latency at quantile `q` (0.5 for the median), in microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn from_lanes(lanes: Vec<Lane>, meter: &Meter, measured: Duration) -> Sample {
        let mut sample =
            Sample { calls: 0, errors: 0, first_error: None, measured, latency: new_histogram() };
        for lane in lanes {
            sample.calls += lane.calls;
            sample.errors += lane.errors;
            if sample.first_error.is_none() {
                sample.first_error = lane.first_error;
            }
        }
        for shard in &meter.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Every histogram has the same bounds, so adding cannot fail.
            let _ = sample.latency.add(&*shard);
        }
        sample
    }
}

/// Runs one measurement of `system`, serving on `addr`, on `cell`.
///
/// # Errors
///
/// When the client cannot connect or lanes do not finish in time; failed
/// calls are counted in the sample instead.
pub fn drive(system: System, addr: SocketAddr, cell: &Cell, timing: &Timing) -> anyhow::Result<Sample> {
    let request = EchoMessage { payload: Bytes::from(vec![0xa5u8; cell.payload]) };
    match system {
        System::RpcCore | System::RpcCoreInline | System::BarePool | System::Raw => {
            framed(addr, cell, timing, request)
        }
        System::RpcCoreAsync => tokio_lanes(cell, timing, request, |connections| async move {
            let config = ClientConfig { connections, ..ClientConfig::default() };
            let channel =
                Channel::connect(addr, config).with_context(|| format!("cannot connect to {addr}"))?;
            Ok(vec![FutureEcho(channel)])
        }),
        System::Tonic => tokio_lanes(cell, timing, request, |connections| async move {
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("tonic cannot connect to {addr}"))?;
                clients.push(EchoClient::new(channel));
            }
            Ok(clients)
        }),
        System::Tarpc => tokio_lanes(cell, timing, request, |connections| async move {
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("tarpc cannot connect to {addr}"))?;
                stream.set_nodelay(true)?;
                let transport = crate::servers::tarpc::transport(stream);
                clients.push(EchoRpcClient::new(tarpc::client::Config::default(), transport).spawn());
            }
            Ok(clients)
        }),
    }
}

/// When counting starts and stops.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// End of the warm-up.
    from: Instant,
    /// End of the measurement; lanes stop at their first completion after it.
    until: Instant,
}

/// What every lane of one measurement shares: the window and the latencies.
struct Meter {
    /// When counting starts and stops.
    window: Window,
    /// Latency histograms; each recording thread keeps to one.
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// Hands each recording thread its shard number.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number, once it has recorded.
    static SHARD: ThreadCell<Option<usize>> = const { ThreadCell::new(None) };
}

impl Meter {
    /// A meter whose warm-up starts now.
    fn starting_now(timing: &Timing) -> Meter {
        let from = Instant::now() + timing.warmup;
        Meter {
            window: Window { from, until: from + timing.measure },
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Adds one latency to this thread's histogram.
    fn record(&self, ns: u64) {
        let shard = SHARD.with(|s| match s.get() {
            Some(n) => n,
            None => {
                let n = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                s.set(Some(n));
                n
            }
        });
        let mut histogram = self.shards[shard % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        // Clamped to the histogram's range by the caller.
        let _ = histogram.record(ns);
    }
}

/// One closed loop's counts; moved from call to call, so it needs no lock.
struct Lane {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Lane {
    fn new() -> Lane {
        Lane { calls: 0, errors: 0, first_error: None }
    }

    /// Records a call that started at `started`. While the lane should go
    /// on, returns the completion time, which is when its next call starts.
    fn record(&mut self, started: Instant, outcome: Result<(), String>, meter: &Meter) -> Option<Instant> {
        let done = Instant::now();
        if let Err(e) = outcome {
            self.errors += 1;
            self.first_error.get_or_insert(e);
            return None;
        }
        let window = &meter.window;
        if done >= window.from && done < window.until {
            self.calls += 1;
            let ns = done.duration_since(started).as_nanos().min(u128::from(MAX_LATENCY_NS)) as u64;
            meter.record(ns.max(1));
        }
        (done < window.until).then_some(done)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Checks that a reply is the echo of a `payload`-byte message.
fn check_reply(reply: &EchoMessage, payload: usize) -> Result<(), String> {
    if reply.payload.len() == payload {
        Ok(())
    } else {
        Err(format!("reply carries {} payload bytes, expected {payload}", reply.payload.len()))
    }
}

/// Checks an rpc-core reply body.
fn check_body(reply: Result<Bytes, rpc_core::Error>, payload: usize) -> Result<(), String> {
    let body = reply.map_err(|e| e.to_string())?;
    let msg = EchoMessage::decode(body).map_err(|e| format!("reply does not decode: {e}"))?;
    check_reply(&msg, payload)
}

/// Waits for `n` lanes to come back on `rx`.
fn collect_lanes(
    rx: &crossbeam_channel::Receiver<Lane>,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<Lane>> {
    let mut lanes = Vec::with_capacity(n);
    while lanes.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(lane) => lanes.push(lane),
            Err(_) => {
                anyhow::bail!("{} of {n} lanes did not finish their last call in time", n - lanes.len())
            }
        }
    }
    Ok(lanes)
}

/// rpc-core's client, against any server that speaks its framing.
fn framed(addr: SocketAddr, cell: &Cell, timing: &Timing, request: EchoMessage) -> anyhow::Result<Sample> {
    let config = ClientConfig { connections: cell.connections, ..ClientConfig::default() };
    let channel = Channel::connect(addr, config).with_context(|| format!("cannot connect to {addr}"))?;
    let meter = Arc::new(Meter::starting_now(timing));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    match cell.mode {
        Mode::Pipelined => {
            let shared = Arc::new(FramedLanes {
                channel: channel.clone(),
                request,
                payload: cell.payload,
                meter: meter.clone(),
                done: done_tx,
            });
            for _ in 0..cell.in_flight {
                issue(shared.clone(), Lane::new(), Instant::now());
            }
        }
        Mode::Blocking => {
            for _ in 0..cell.in_flight {
                let (channel, request, done) = (channel.clone(), request.clone(), done_tx.clone());
                let (payload, meter) = (cell.payload, meter.clone());
                std::thread::spawn(move || {
                    let mut lane = Lane::new();
                    let mut started = Instant::now();
                    loop {
                        let reply = channel.call(SERVICE, METHOD, &request, None);
                        match lane.record(started, check_body(reply, payload), &meter) {
                            Some(done) => started = done,
                            None => break,
                        }
                    }
                    let _ = done.send(lane);
                });
            }
            drop(done_tx);
        }
    }
    let lanes = collect_lanes(&done_rx, cell.in_flight, meter.window.until + GRACE);
    channel.close();
    Ok(Sample::from_lanes(lanes?, &meter, timing.measure))
}

/// What every callback of a pipelined rpc-core run shares.
struct FramedLanes {
    channel: Channel,
    request: EchoMessage,
    payload: usize,
    meter: Arc<Meter>,
    /// Lanes come back here when they stop.
    done: Sender<Lane>,
}

/// Starts `lane`'s next call, timed from `started`; its completion records
/// it and starts the next.
fn issue(shared: Arc<FramedLanes>, mut lane: Lane, started: Instant) {
    let on_reply = shared.clone();
    shared.channel.call_with(
        SERVICE,
        METHOD,
        &shared.request,
        None,
        Box::new(move |reply| {
            match lane.record(started, check_body(reply, on_reply.payload), &on_reply.meter) {
                Some(done) => issue(on_reply, lane, done),
                None => {
                    let _ = on_reply.done.send(lane);
                }
            }
        }),
    );
}

/// An async echo client: tonic's or tarpc's.
trait AsyncEcho: Clone + Send + Sync + 'static {
    /// One echo call.
    fn say(&mut self, request: EchoMessage) -> impl Future<Output = Result<EchoMessage, String>> + Send + '_;
}

impl AsyncEcho for EchoClient<tonic::transport::Channel> {
    async fn say(&mut self, request: EchoMessage) -> Result<EchoMessage, String> {
        EchoClient::say(self, request).await.map(|r| r.into_inner()).map_err(|s| s.to_string())
    }
}

impl AsyncEcho for EchoRpcClient {
    async fn say(&mut self, request: EchoMessage) -> Result<EchoMessage, String> {
        EchoRpcClient::say(self, tarpc::context::current(), request).await.map_err(|e| e.to_string())
    }
}

/// rpc-core's client called through its futures.
#[derive(Clone)]
struct FutureEcho(Channel);

impl AsyncEcho for FutureEcho {
    async fn say(&mut self, request: EchoMessage) -> Result<EchoMessage, String> {
        let body = self.0.call_future(SERVICE, METHOD, &request, None).await.map_err(|e| e.to_string())?;
        EchoMessage::decode(body).map_err(|e| e.to_string())
    }
}

/// Drives an async client from a two-worker tokio runtime in this process.
fn tokio_lanes<C, F, Fut>(
    cell: &Cell,
    timing: &Timing,
    request: EchoMessage,
    connect: F,
) -> anyhow::Result<Sample>
where
    C: AsyncEcho,
    F: FnOnce(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<C>>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(WORKERS).enable_all().build()?;
    let clients = runtime.block_on(connect(cell.connections.max(1)))?;
    let meter = Arc::new(Meter::starting_now(timing));
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let payload = cell.payload;
    for i in 0..cell.in_flight {
        let (mut client, request, done) =
            (clients[i % clients.len()].clone(), request.clone(), done_tx.clone());
        let meter = meter.clone();
        let lane = async move {
            let mut lane = Lane::new();
            let mut started = Instant::now();
            loop {
                let outcome = client.say(request.clone()).await.and_then(|r| check_reply(&r, payload));
                match lane.record(started, outcome, &meter) {
                    Some(done) => started = done,
                    None => break,
                }
            }
            let _ = done.send(lane);
        };
        match cell.mode {
            Mode::Pipelined => {
                runtime.spawn(lane);
            }
            Mode::Blocking => {
                let handle = runtime.handle().clone();
                std::thread::spawn(move || handle.block_on(lane));
            }
        }
    }
    drop(done_tx);
    let lanes = collect_lanes(&done_rx, cell.in_flight, meter.window.until + GRACE);
    drop(clients);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(Sample::from_lanes(lanes?, &meter, timing.measure))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short() -> Timing {
        Timing { warmup: Duration::from_millis(50), measure: Duration::from_millis(150) }
    }

    #[test]
    fn every_client_completes_calls_against_its_server() {
        for system in System::ALL {
            let addr = crate::servers::spawn_in_process(system);
            for (in_flight, connections, mode) in [(4, 2, Mode::Pipelined), (1, 1, Mode::Blocking)] {
                let cell = Cell { payload: 64, in_flight, connections, mode };
                let sample = drive(system, addr, &cell, &short()).unwrap();
                assert_eq!(sample.errors, 0, "{system} {cell:?}: {:?}", sample.first_error);
                assert!(sample.calls > 0, "{system} {cell:?} completed no call");
                assert!(sample.latency_us(0.5) > 0.0);
            }
        }
    }
}
