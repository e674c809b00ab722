//! The worker threads: each takes the next call from the ring (watching the
//! queue for a moment before it sleeps when calls come one at a time), runs its
//! handler, and hands the answer back to the connection's loop.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Call, Job, Jobs, Queue};
use crate::frame::Frame;
use crate::server::{ConnectionId, Context, DisconnectHook, Service};
use crate::{Outcome, Status};

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

/// Rounds of spinning (1, 2, 4, ... 64 spin hints) and then of yielding the
/// core before an idle worker sleeps; the same budget as crossbeam's `Backoff`.
const SPIN_ROUNDS: u32 = 7;
const YIELD_ROUNDS: u32 = 4;

/// Starts `n` workers named `{name}-{i}` on the queue behind `jobs`. They exit
/// when every sender is dropped and the queue is empty.
pub(crate) fn start(
    name: &str,
    n: usize,
    jobs: &Jobs,
    on_disconnect: Option<DisconnectHook>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let queue = jobs.queue.clone();
            let hook = on_disconnect.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&queue, hook))
        })
        .collect()
}

/// The next job, sleeping until one comes; `None` once the queue is closed and
/// empty. `finished` is the connection whose call this worker just ran.
fn next(queue: &Queue, taken: &mut u32, finished: Option<ConnectionId>) -> Option<Job> {
    let mut st = queue.lock();
    if let Some(id) = finished {
        st.finish(id, queue.max_running);
    }
    let mut watched = false;
    loop {
        if let Some(job) = st.take(queue.max_running) {
            *taken = taken.saturating_add(1);
            queue.queued.store(st.published(), Ordering::Relaxed);
            queue.waiting.store(st.waiting, Ordering::Relaxed);
            // More waiting and a worker asleep: let it help. It will wake the
            // next one in turn if the backlog is still there when it looks.
            let wake = st.has_work() && st.claim_sleeper();
            drop(st);
            if wake {
                queue.ready.notify_one();
            }
            return Some(job);
        }
        // A connection at its running cap still has a worker on it, which takes
        // the connection's next call itself when it finishes.
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
    let mut finished = None;
    while let Some(job) = next(queue, &mut taken, finished.take()) {
        match job {
            Job::Call(call) => {
                let Call { service, ctx, frame, cost } = call;
                finished = Some(ctx.connection.id());
                if !ctx.connection.is_open() {
                    // Nobody is left to answer; do not run work for a gone caller.
                    continue;
                }
                let expired = ctx.deadline.is_some_and(|d| Instant::now() >= d);
                let result = if expired {
                    Err(Status::deadline_exceeded(format!(
                        "{}/{} waited past its deadline in the server's queue",
                        frame.service(),
                        frame.method()
                    ))
                    .with_outcome(Outcome::NotRun))
                } else {
                    run(service.as_ref(), &ctx, &frame)
                };
                ctx.connection.reply(ctx.call_id, result, cost);
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
        // Only the server can prove a call did not run: a handler that passes on a
        // refusal from further down may have done something before it.
        Ok(Err(status)) if status.outcome() == Outcome::NotRun => Err(status.with_outcome(Outcome::Unknown)),
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
    use std::sync::Arc;

    use super::super::queue;
    use super::*;

    #[test]
    fn workers_drain_the_notices_and_exit_when_the_last_sender_goes() {
        let jobs = queue(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let hook: DisconnectHook = Arc::new(move |id| tx.send(id).unwrap());
        let workers = start("test-worker", 3, &jobs, Some(hook)).unwrap();
        let other = jobs.clone();
        for i in 0..100 {
            other.disconnected(ConnectionId(i));
        }
        jobs.disconnected(ConnectionId(100));
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
    fn notices_one_at_a_time_are_each_picked_up_whether_a_worker_watches_or_sleeps() {
        let jobs = queue(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let hook: DisconnectHook = Arc::new(move |id| tx.send(id).unwrap());
        let workers = start("test-worker", 2, &jobs, Some(hook)).unwrap();
        // Gaps shorter and longer than the watch.
        for (i, gap_us) in [0u64, 1, 5, 50, 500, 5_000, 20_000].into_iter().enumerate() {
            jobs.disconnected(ConnectionId(i as u64));
            assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().0, i as u64);
            std::thread::sleep(std::time::Duration::from_micros(gap_us));
        }
        drop(jobs);
        for w in workers {
            w.join().unwrap();
        }
    }
}
