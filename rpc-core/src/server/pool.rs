//! A worker pool: threads that take calls from per-connection queues, served in turn.
//!
//! Each connection's calls wait in a queue of their own, and the connections
//! with calls waiting form a ring the workers serve in turn, one call each: a
//! connection with a thousand calls waiting gets the next free worker no more
//! often than one with a single call. A connection may also have only
//! `max_running` calls running at once, so a burst of slow calls always leaves
//! workers for the others. The server runs two pools on this code: the
//! workers, and one small pool per named lane (`server/lanes.rs`).
//!
//! The queues sit under one mutex rather than in channels so that a loop can
//! hand over every call of one read under one lock and wake at most one
//! sleeping worker for the lot. A worker that takes a call and sees more
//! waiting wakes one more sleeper, so a backlog spreads over the pool while a
//! trickle keeps to one thread. Idle workers sleep on a condition variable,
//! with one exception: when calls come one at a time (the loop's last batch
//! was a single call and the worker took at most one call since it was last
//! idle), one worker watches the queue for a few microseconds (spinning,
//! then yielding its core, crossbeam's `Backoff` budget) before it sleeps,
//! and nobody is woken for work while it watches. Waking a sleeping thread
//! costs a futex call and, on a virtual machine, often an idle virtual CPU
//! being woken, which at one call in flight is most of a round trip; under
//! load, watching workers would only take the cores from the loop thread
//! and the clients, so there they sleep at once.
//!
//! This file holds the queue: the connections' queues, the ring and the loops' handle
//! ([`Jobs`]); the threads that serve it are in `worker`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{ConnectionId, Context, Service};
use crate::fast_hash::FastMap;
use crate::frame::Frame;

mod worker;

pub use worker::current_deadline;
pub(crate) use worker::{run, start};

/// One request for a worker.
pub(crate) struct Call {
    /// The service the frame names.
    pub(crate) service: Arc<dyn Service>,
    /// The handler's view of the call.
    pub(crate) ctx: Context,
    /// The decoded request frame.
    pub(crate) frame: Frame,
    /// Bytes the call holds against its connection's budget, handed back with the reply.
    pub(crate) cost: usize,
}

/// What a worker takes off the queue.
enum Job {
    /// Run one request.
    Call(Call),
    /// A connection closed; tell the disconnect hook.
    Disconnected(ConnectionId),
}

/// One connection's calls waiting for a worker.
#[derive(Default)]
struct ConnQueue {
    /// Calls in arrival order.
    calls: VecDeque<Call>,
    /// Calls of this connection running on a worker now.
    running: usize,
    /// Whether the connection is in the ring of those to serve.
    in_ring: bool,
    /// Held back because the connection's answers wait unread past its budget: no
    /// call of it runs until the loop says it drained ([`Jobs::unblock`]).
    blocked: bool,
}

/// The calls waiting for a worker, and who waits for a call.
struct State {
    /// Each connection with calls waiting or running.
    conns: FastMap<ConnectionId, ConnQueue>,
    /// Connections with a call waiting and under their running cap, in the
    /// order the workers serve them.
    ring: VecDeque<ConnectionId>,
    /// Closed connections whose disconnect hook has yet to run; served first.
    notices: VecDeque<ConnectionId>,
    /// Calls waiting, over every connection.
    waiting: usize,
    /// Empty queues of connections that went idle, kept to serve new ones, so that a
    /// connection whose calls come and go does not allocate a queue per batch.
    spare: Vec<VecDeque<Call>>,
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
    /// Calls a connection may have running at once.
    max_running: usize,
    /// Whether work may be ready (calls in the ring, or notices), published
    /// after each change so that a watching worker can look without the lock;
    /// also the count of calls waiting, for admission limits.
    queued: AtomicUsize,
    /// Calls waiting over every connection, runnable or not, for admission limits.
    waiting: AtomicUsize,
}

/// Idle connection queues kept for reuse, and the largest capacity kept.
const SPARE_QUEUES: usize = 64;
const SPARE_CAPACITY: usize = 256;

impl Queue {
    // `#[inline]` here and on `State`'s methods that the workers call: they run
    // once a job from `worker`, which would otherwise call them across codegen units.
    #[inline]
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether a worker could take something now.
    fn has_work(&self) -> bool {
        !self.ring.is_empty() || !self.notices.is_empty()
    }

    /// Takes the next job: a notice, else the first call of the next connection in
    /// the ring, which goes to the back of the ring if it has more and may run more.
    #[inline]
    fn take(&mut self, max_running: usize) -> Option<Job> {
        if let Some(id) = self.notices.pop_front() {
            // Calls still waiting for a closed connection would only be skipped.
            if let Some(conn) = self.conns.get_mut(&id) {
                self.waiting -= conn.calls.len();
                conn.calls.clear();
                if conn.running == 0 {
                    self.retire(id);
                }
            }
            return Some(Job::Disconnected(id));
        }
        while let Some(id) = self.ring.pop_front() {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            conn.in_ring = false;
            if conn.calls.front().is_some_and(|call| call.ctx.connection.hold_back()) {
                // Answers made now would only wait in memory for a peer that reads
                // slower than we answer: its queue waits until the loop drains them.
                conn.blocked = true;
                continue;
            }
            let Some(call) = conn.calls.pop_front() else { continue };
            self.waiting -= 1;
            conn.running += 1;
            if !conn.calls.is_empty() && conn.running < max_running {
                conn.in_ring = true;
                self.ring.push_back(id);
            }
            return Some(Job::Call(call));
        }
        None
    }

    /// A call of connection `id` finished: it may run another.
    #[inline]
    fn finish(&mut self, id: ConnectionId, max_running: usize) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.running -= 1;
        if conn.calls.is_empty() {
            if conn.running == 0 {
                self.retire(id);
            }
        } else if !conn.in_ring && !conn.blocked && conn.running < max_running {
            conn.in_ring = true;
            self.ring.push_back(id);
        }
    }

    /// Forgets the idle queue of connection `id`, keeping its memory for a new one.
    #[inline]
    fn retire(&mut self, id: ConnectionId) {
        let Some(conn) = self.conns.remove(&id) else { return };
        // A queue grown by a burst is not kept: its memory goes back.
        if self.spare.len() < SPARE_QUEUES && conn.calls.capacity() <= SPARE_CAPACITY {
            self.spare.push(conn.calls);
        }
    }

    /// The figure published in `Queue::queued`: zero exactly when no work is ready.
    #[inline]
    fn published(&self) -> usize {
        if self.has_work() {
            self.waiting.max(1)
        } else {
            0
        }
    }

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
    /// Queues the notice that connection `id` closed.
    pub(crate) fn disconnected(&self, id: ConnectionId) {
        let mut st = self.queue.lock();
        st.notices.push_back(id);
        self.queued_and_wake(st);
    }

    /// Queues every call in `batch` (leaving it empty), all from connection
    /// `id`, under one lock, and wakes one sleeping worker; it wakes others if
    /// the work outlasts it.
    pub(crate) fn send_all(&self, id: ConnectionId, batch: &mut VecDeque<Call>) {
        if batch.is_empty() {
            return;
        }
        let max_running = self.queue.max_running;
        let mut st = self.queue.lock();
        st.last_batch = batch.len();
        st.waiting += batch.len();
        let state = &mut *st;
        let conn = state.conns.entry(id).or_insert_with(|| ConnQueue {
            calls: state.spare.pop().unwrap_or_default(),
            running: 0,
            in_ring: false,
            blocked: false,
        });
        if conn.calls.is_empty() {
            // The usual case when the workers keep up: trade buffers rather
            // than move every call.
            std::mem::swap(&mut conn.calls, batch);
        } else {
            conn.calls.append(batch);
        }
        let join = !conn.in_ring && !conn.blocked && conn.running < max_running;
        if join {
            conn.in_ring = true;
            state.ring.push_back(id);
        }
        self.queued_and_wake(st);
    }

    /// Lets the calls of connection `id` run again, once its answers have drained.
    pub(crate) fn unblock(&self, id: ConnectionId) {
        let max_running = self.queue.max_running;
        let mut st = self.queue.lock();
        let state = &mut *st;
        let Some(conn) = state.conns.get_mut(&id) else { return };
        if !conn.blocked {
            return;
        }
        conn.blocked = false;
        if !conn.calls.is_empty() && !conn.in_ring && conn.running < max_running {
            conn.in_ring = true;
            state.ring.push_back(id);
        }
        self.queued_and_wake(st);
    }

    /// Calls waiting over every connection (for a named lane's bound).
    pub(crate) fn waiting(&self) -> usize {
        self.queue.waiting.load(Ordering::Relaxed)
    }

    /// Calls of connection `id` waiting (for a named lane's bound per connection).
    pub(crate) fn waiting_for(&self, id: ConnectionId) -> usize {
        self.queue.lock().conns.get(&id).map_or(0, |conn| conn.calls.len())
    }

    fn queued_and_wake(&self, mut st: MutexGuard<'_, State>) {
        let (queued, wake) = (st.published(), st.has_work() && st.claim_sleeper());
        self.queue.waiting.store(st.waiting, Ordering::Relaxed);
        drop(st);
        self.queue.queued.store(queued, Ordering::Relaxed);
        if wake {
            self.queue.ready.notify_one();
        }
    }
}

/// A queue with no workers yet, and its first sender. A connection may have
/// `max_running` calls running at once (at least one).
pub(crate) fn queue(max_running: usize) -> Jobs {
    let state = State {
        conns: FastMap::default(),
        spare: Vec::new(),
        ring: VecDeque::new(),
        notices: VecDeque::new(),
        waiting: 0,
        sleeping: 0,
        waking: 0,
        watching: false,
        last_batch: 0,
        senders: 1,
    };
    let queue = Queue {
        state: Mutex::new(state),
        ready: Condvar::new(),
        max_running: max_running.max(1),
        queued: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
    };
    Jobs { queue: Arc::new(queue) }
}
