//! The worker pool: threads that take jobs from one shared queue and run handlers.
//!
//! The queue is a mutex-guarded `VecDeque` rather than a channel so that a
//! loop can hand over every call of one read under one lock and wake at most
//! one sleeping worker for the lot. A worker that takes a job and sees more
//! waiting wakes one more sleeper, so a backlog spreads over the pool while a
//! trickle keeps to one thread. Idle workers sleep on a condition variable at
//! once: on a machine with few cores, spinning or yielding in wait for the
//! next call takes the core from the loop thread that would deliver it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{ConnectionId, Context, DisconnectHook, Service};
use crate::frame::Frame;
use crate::Status;

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
    /// Live [`Jobs`] handles; at zero, workers finish the queue and exit.
    senders: usize,
}

/// The queue shared by the loops (senders) and the workers.
struct Queue {
    state: Mutex<State>,
    /// Signalled when jobs arrive or the last sender goes.
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether to wake a sleeping worker: one sleeps that no wake-up is
    /// already on its way to. Counts the wake-up as sent.
    fn claim_sleeper(&mut self) -> bool {
        if self.sleeping > self.waking {
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
        let wake = st.claim_sleeper();
        drop(st);
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
        if st.jobs.is_empty() {
            // The usual case when the workers keep up: trade buffers rather
            // than move every job.
            std::mem::swap(&mut st.jobs, batch);
        } else {
            st.jobs.append(batch);
        }
        let wake = st.claim_sleeper();
        drop(st);
        if wake {
            self.queue.ready.notify_one();
        }
    }
}

/// A queue with no workers yet, and its first sender.
pub(crate) fn queue() -> Jobs {
    let state = State { jobs: VecDeque::with_capacity(1024), sleeping: 0, waking: 0, senders: 1 };
    Jobs { queue: Arc::new(Queue { state: Mutex::new(state), ready: Condvar::new() }) }
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
fn next(queue: &Queue) -> Option<Job> {
    let mut st = queue.lock();
    loop {
        if let Some(job) = st.jobs.pop_front() {
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
        st.sleeping += 1;
        st = queue.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        st.sleeping -= 1;
        // Woken by a signal or spuriously: either way one fewer is on its way.
        st.waking = st.waking.saturating_sub(1);
    }
}

fn work(queue: &Queue, on_disconnect: Option<DisconnectHook>) {
    while let Some(job) = next(queue) {
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
    let span = tracing::debug_span!("rpc", call_id = ctx.call_id, service = service.name(), method);
    let _enter = span.enter();
    match catch_unwind(AssertUnwindSafe(|| service.call(ctx, method, frame.body.clone()))) {
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
}
