//! The worker pool: threads that take jobs from one shared queue and run handlers.
//!
//! The queue is a mutex-guarded `VecDeque` rather than a channel so that a
//! loop can hand over every call of one read under one lock and wake at most
//! one sleeping worker for the lot. A worker that takes a job and sees more
//! waiting wakes one more sleeper, so a backlog spreads over the pool while a
//! trickle keeps to one thread. Idle workers sleep on a condition variable,
//! with one exception: when calls come one at a time (the loop's last batch
//! was a single call and the worker took at most one job since it was last
//! idle), one worker watches the queue for a few microseconds (spinning,
//! then yielding its core, crossbeam's `Backoff` budget) before it sleeps,
//! and nobody is woken for work while it watches. Waking a sleeping thread
//! costs a futex call and, on a virtual machine, often an idle virtual CPU
//! being woken, which at one call in flight is most of a round trip; under
//! load, watching workers would only take the cores from the loop thread
//! and the clients, so there they sleep at once.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{ConnectionId, Context, DisconnectHook, Service};
use crate::frame::Frame;
use crate::Status;

thread_local! {
    /// The deadline of the call this thread's handler is running, if it has one.
    static CURRENT_DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The deadline of the call the current thread is serving, when called from a
/// handler whose caller set one; `None` elsewhere.
///
/// Calls a handler makes through [`crate::client::Channel`] (or a balancer over
/// channels) never wait past it, so a deadline travels down a chain of services
/// and no server starts work its first caller has given up on.
pub fn current_deadline() -> Option<Instant> {
    CURRENT_DEADLINE.get()
}

/// Work for the pool.
pub(crate) enum Job {
    /// Run one request or client push.
    Call {
        /// The service the frame names.
        service: Arc<dyn Service>,
        /// The handler's view of the call.
        ctx: Context,
        /// The decoded request frame.
        frame: Frame,
        /// False for a one-way push: nothing goes back but the in-flight release.
        reply: bool,
    },
    /// A connection closed; tell the disconnect hook.
    Disconnected(ConnectionId),
}

/// The jobs waiting for a worker, and who waits for a job.
struct State {
    /// Jobs in arrival order.
    jobs: VecDeque<Job>,
    /// Workers blocked in `Condvar::wait`.
    sleeping: usize,
    /// Wake-ups signalled and not yet taken by a sleeper. A woken thread
    /// takes a while to run; until then it still counts as sleeping, and
    /// without this every job queued meanwhile would signal again.
    waking: usize,
    /// Whether a worker is watching the queue before it sleeps; it takes
    /// new work without being woken.
    watching: bool,
    /// Calls in the last batch a loop queued: one means calls come one at a time.
    last_batch: usize,
    /// Live [`Jobs`] handles; at zero, workers finish the queue and exit.
    senders: usize,
}

/// The queue shared by the loops (senders) and the workers.
struct Queue {
    state: Mutex<State>,
    /// Signalled when jobs arrive or the last sender goes.
    ready: Condvar,
    /// About `state.jobs.len()`, published after each change so that a
    /// watching worker can look without the lock.
    queued: AtomicUsize,
}

/// Rounds of spinning (1, 2, 4, ... 64 spin hints) and then of yielding the
/// core before an idle worker sleeps; the same budget as crossbeam's `Backoff`.
const SPIN_ROUNDS: u32 = 7;
const YIELD_ROUNDS: u32 = 4;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether to wake a sleeping worker: one sleeps that no wake-up is
    /// already on its way to. Counts the wake-up as sent.
    fn claim_sleeper(&mut self) -> bool {
        if self.sleeping > self.waking && !self.watching {
            self.waking += 1;
            true
        } else {
            false
        }
    }
}

/// A loop's handle for queueing jobs. Workers exit once every handle is
/// dropped and the queue is empty, as with a channel.
pub(crate) struct Jobs {
    queue: Arc<Queue>,
}

impl Clone for Jobs {
    fn clone(&self) -> Jobs {
        self.queue.lock().senders += 1;
        Jobs { queue: self.queue.clone() }
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        st.senders -= 1;
        if st.senders == 0 {
            drop(st);
            self.queue.ready.notify_all();
        }
    }
}

impl Jobs {
    /// Queues one job.
    pub(crate) fn send(&self, job: Job) {
        let mut st = self.queue.lock();
        st.jobs.push_back(job);
        let (queued, wake) = (st.jobs.len(), st.claim_sleeper());
        drop(st);
        self.queue.queued.store(queued, Ordering::Relaxed);
        if wake {
            self.queue.ready.notify_one();
        }
    }

    /// Queues every job in `batch` (leaving it empty) under one lock, and
    /// wakes one sleeping worker; it wakes others if the work outlasts it.
    pub(crate) fn send_all(&self, batch: &mut VecDeque<Job>) {
        if batch.is_empty() {
            return;
        }
        let mut st = self.queue.lock();
        st.last_batch = batch.len();
        if st.jobs.is_empty() {
            // The usual case when the workers keep up: trade buffers rather
            // than move every job.
            std::mem::swap(&mut st.jobs, batch);
        } else {
            st.jobs.append(batch);
        }
        let (queued, wake) = (st.jobs.len(), st.claim_sleeper());
        drop(st);
        self.queue.queued.store(queued, Ordering::Relaxed);
        if wake {
            self.queue.ready.notify_one();
        }
    }
}

/// A queue with no workers yet, and its first sender.
pub(crate) fn queue() -> Jobs {
    let state = State {
        jobs: VecDeque::with_capacity(1024),
        sleeping: 0,
        waking: 0,
        watching: false,
        last_batch: 0,
        senders: 1,
    };
    let queue = Queue { state: Mutex::new(state), ready: Condvar::new(), queued: AtomicUsize::new(0) };
    Jobs { queue: Arc::new(queue) }
}

/// Starts `n` workers on the queue behind `jobs`. They exit when every
/// sender is dropped and the queue is empty.
pub(crate) fn start(
    n: usize,
    jobs: &Jobs,
    on_disconnect: Option<DisconnectHook>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let queue = jobs.queue.clone();
            let hook = on_disconnect.clone();
            std::thread::Builder::new().name(format!("rpc-worker-{i}")).spawn(move || work(&queue, hook))
        })
        .collect()
}

/// The next job, sleeping until one comes; `None` once the queue is closed and empty.
fn next(queue: &Queue, taken: &mut u32) -> Option<Job> {
    let mut st = queue.lock();
    let mut watched = false;
    loop {
        if let Some(job) = st.jobs.pop_front() {
            *taken = taken.saturating_add(1);
            queue.queued.store(st.jobs.len(), Ordering::Relaxed);
            // More waiting and a worker asleep: let it help. It will wake the
            // next one in turn if the backlog is still there when it looks.
            let wake = !st.jobs.is_empty() && st.claim_sleeper();
            drop(st);
            if wake {
                queue.ready.notify_one();
            }
            return Some(job);
        }
        if st.senders == 0 {
            return None;
        }
        // Calls coming one at a time: watch for the next before sleeping.
        let trickle = std::mem::take(taken) <= 1 && st.last_batch == 1;
        if trickle && !watched && !st.watching {
            watched = true;
            st.watching = true;
            drop(st);
            watch(queue);
            st = queue.lock();
            st.watching = false;
            continue;
        }
        watched = false;
        st.sleeping += 1;
        st = queue.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        st.sleeping -= 1;
        // Woken by a signal or spuriously: either way one fewer is on its way.
        st.waking = st.waking.saturating_sub(1);
    }
}

/// Returns once a job may be waiting or the watching budget is spent.
fn watch(queue: &Queue) {
    for round in 0..SPIN_ROUNDS + YIELD_ROUNDS {
        if queue.queued.load(Ordering::Relaxed) > 0 {
            return;
        }
        if round < SPIN_ROUNDS {
            for _ in 0..1u32 << round {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
}

fn work(queue: &Queue, on_disconnect: Option<DisconnectHook>) {
    let mut taken = 0;
    while let Some(job) = next(queue, &mut taken) {
        match job {
            Job::Call { service, ctx, frame, reply } => {
                if !ctx.connection.is_open() {
                    // Nobody is left to answer; do not run work for a gone caller.
                    continue;
                }
                let call_id = ctx.call_id;
                let expired = ctx.deadline.is_some_and(|d| Instant::now() >= d);
                let result = if expired {
                    Err(Status::deadline_exceeded(format!(
                        "{}/{} waited past its deadline in the server's queue",
                        frame.service(),
                        frame.method()
                    )))
                } else {
                    run(service.as_ref(), &ctx, &frame)
                };
                ctx.connection.reply(call_id, reply.then_some(result));
            }
            Job::Disconnected(id) => {
                if let Some(hook) = &on_disconnect {
                    if catch_unwind(AssertUnwindSafe(|| hook(id))).is_err() {
                        tracing::error!(%id, "disconnect hook panicked");
                    }
                }
            }
        }
    }
}

/// Runs one handler, turning a panic into `Internal` so the server lives on.
pub(crate) fn run(service: &dyn Service, ctx: &Context, frame: &Frame) -> Result<bytes::Bytes, Status> {
    let method = frame.method();
    // Built only when a subscriber wants it: a disabled span still costs its
    // `log` fallback (about 150 instructions a call when tracing's "log"
    // feature is on), and that is per call.
    let span = if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug_span!("rpc", call_id = ctx.call_id, service = service.name(), method)
    } else {
        tracing::Span::none()
    };
    let _enter = span.enter();
    let outer = CURRENT_DEADLINE.replace(ctx.deadline);
    let outcome = catch_unwind(AssertUnwindSafe(|| service.call(ctx, method, frame.body.clone())));
    CURRENT_DEADLINE.set(outer);
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(service = service.name(), method, panic = %what, "handler panicked");
            Err(Status::internal(format!("handler {}/{method} panicked: {what}", service.name())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_drain_the_queue_and_exit_when_the_last_sender_goes() {
        let jobs = queue();
        let (tx, rx) = crossbeam_channel::unbounded();
        let hook: DisconnectHook = Arc::new(move |id| tx.send(id).unwrap());
        let workers = start(3, &jobs, Some(hook)).unwrap();
        let other = jobs.clone();
        for round in 0..2 {
            let mut batch: VecDeque<Job> =
                (0..50).map(|i| Job::Disconnected(ConnectionId(round * 50 + i))).collect();
            other.send_all(&mut batch);
            assert!(batch.is_empty());
        }
        jobs.send(Job::Disconnected(ConnectionId(100)));
        drop(jobs);
        drop(other);
        for w in workers {
            w.join().unwrap();
        }
        let mut seen: Vec<u64> = rx.try_iter().map(|id| id.0).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=100).collect::<Vec<_>>());
    }

    #[test]
    fn calls_one_at_a_time_are_each_picked_up_whether_a_worker_watches_or_sleeps() {
        let jobs = queue();
        let (tx, rx) = crossbeam_channel::unbounded();
        let hook: DisconnectHook = Arc::new(move |id| tx.send(id).unwrap());
        let workers = start(2, &jobs, Some(hook)).unwrap();
        // Gaps shorter and longer than the watch, batches of one and of two.
        for (i, gap_us) in [0u64, 1, 5, 50, 500, 5_000, 20_000].into_iter().enumerate() {
            let i = i as u64 * 2;
            let mut one: VecDeque<Job> = [Job::Disconnected(ConnectionId(i))].into();
            jobs.send_all(&mut one);
            assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().0, i);
            std::thread::sleep(std::time::Duration::from_micros(gap_us));
            let mut two: VecDeque<Job> =
                [Job::Disconnected(ConnectionId(i + 100)), Job::Disconnected(ConnectionId(i + 101))].into();
            jobs.send_all(&mut two);
            let mut got = [rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().0, 0];
            got[1] = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().0;
            got.sort_unstable();
            assert_eq!(got, [i + 100, i + 101]);
        }
        drop(jobs);
        for w in workers {
            w.join().unwrap();
        }
    }
}
