//! The phases a loop runs on command: setup calls in a window, timed sending, draining
//! pushes, and the final `Sync` of every user. A command starts its phase; each tick
//! issues what the phase has due and answers the main thread when it is over.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rpc_core::{Code, Status};
use services::api;

use super::{
    Activity, Command, Loop, Outgoing, Pending, Reply, ACK_GRACE, PING_AFTER, SETUP_TIMEOUT, SYNC_ROUNDS,
};
use crate::chat::storm::Resumer;
use crate::chat::tally;

impl Loop {
    pub(super) fn start(&mut self, command: Command) {
        match command {
            Command::Connect(addr) => {
                let outcome = self.connect(addr);
                let _ = self.replies.send(Reply::Connected(outcome));
            }
            Command::Calls { jobs, window } => {
                let results = (0..jobs.len()).map(|_| None).collect();
                self.phase += 1;
                let deadline = Instant::now() + SETUP_TIMEOUT;
                let window = window.max(1);
                self.activity =
                    Activity::Calls { jobs, next: 0, in_flight: 0, window, results, done: 0, deadline };
            }
            Command::Send(plan) => {
                self.ids.clone_from(&plan.ids);
                self.sends.clone_from(&plan.sends);
                self.body_bytes = plan.body_bytes;
                self.window_end = Some(plan.end);
                let order: Vec<usize> = (0..self.users).filter(|&u| !plan.sends[u].is_empty()).collect();
                let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
                let next_at = plan.start;
                self.activity = Activity::Send { plan, order, cursor: 0, next_at, interval };
            }
            Command::Drain { quiet, until } => {
                self.last_push = Instant::now();
                self.activity = Activity::Drain { quiet, until };
            }
            Command::Soak(plan) => self.start_soak(plan),
            Command::Sync => {
                let mut outstanding = 0;
                for user in 0..self.users {
                    if !self.sends[user].is_empty() && self.sync(user, 0) {
                        outstanding += 1;
                    }
                }
                self.activity = Activity::Sync { outstanding };
            }
            Command::Resume(plan) => {
                self.resumer = Some(Resumer::new(plan));
                self.counters.timeline = Some(Vec::new());
                let _ = self.replies.send(Reply::Resuming);
            }
            Command::Finish => unreachable!("handled by run"),
        }
    }

    /// Issues whatever the current phase has due, and answers the main thread when the
    /// phase is over.
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_ping_sweep) > PING_AFTER / 2 {
            self.last_ping_sweep = now;
            for i in 0..self.users {
                let idle =
                    self.conns[i].as_ref().is_some_and(|c| now.duration_since(c.last_write) > PING_AFTER);
                if idle {
                    self.with_conn(i, |c, _| c.ping());
                }
            }
        }
        self.tick_resume(now);
        if matches!(self.activity, Activity::Soak(_)) {
            self.tick_soak(now);
            return;
        }
        let mut finished = None;
        let mut due: Vec<usize> = Vec::new();
        let mut to_send: Vec<usize> = Vec::new();
        match &mut self.activity {
            Activity::Idle => {}
            Activity::Calls { jobs, next, in_flight, window, results, done, deadline } => {
                while *in_flight < *window && *next < jobs.len() {
                    due.push(*next);
                    *next += 1;
                    *in_flight += 1;
                }
                if now >= *deadline {
                    for result in results.iter_mut().filter(|r| r.is_none()) {
                        *result = Some(Err(Status::new(Code::DeadlineExceeded, "no answer in time")));
                    }
                    *done = jobs.len();
                    due.clear();
                }
                if *done == jobs.len() && due.is_empty() {
                    let results = std::mem::take(results).into_iter().map(|r| r.expect("every job answered"));
                    finished = Some(Reply::Calls(results.collect()));
                }
            }
            Activity::Send { plan, order, cursor, next_at, interval } => {
                if now >= plan.end || order.is_empty() {
                    if self.send_in_flight == 0 || now >= plan.end + ACK_GRACE {
                        finished = Some(Reply::Sent(self.send_in_flight));
                    }
                } else if now >= plan.start {
                    let mut budget = plan.in_flight.saturating_sub(self.send_in_flight);
                    if let Some(interval) = *interval {
                        // Falling far behind (the window is full) drops the backlog
                        // rather than bursting it later.
                        if now.duration_since(*next_at) > Duration::from_millis(100) {
                            *next_at = now - Duration::from_millis(100);
                        }
                        while budget > 0 && *next_at <= now {
                            to_send.push(order[*cursor % order.len()]);
                            *cursor += 1;
                            *next_at += interval;
                            budget -= 1;
                        }
                    } else {
                        for _ in 0..budget {
                            to_send.push(order[*cursor % order.len()]);
                            *cursor += 1;
                        }
                    }
                }
            }
            Activity::Drain { quiet, until } => {
                let quiet_now = now.duration_since(self.last_push) >= *quiet && self.send_in_flight == 0;
                if quiet_now || now >= *until {
                    finished = Some(Reply::Drained);
                }
            }
            Activity::Sync { outstanding } => {
                if *outstanding == 0 {
                    finished = Some(Reply::Synced);
                }
            }
            Activity::Soak(_) => unreachable!("handled by tick_soak"),
        }
        for n in due {
            self.issue_job(n);
        }
        for user in to_send {
            self.send_new(user);
        }
        if let Some(reply) = finished {
            self.activity = Activity::Idle;
            let _ = self.replies.send(reply);
        }
    }

    fn issue_job(&mut self, n: usize) {
        let Activity::Calls { jobs, .. } = &self.activity else { return };
        let job = jobs[n].clone();
        if self.conns[job.user].is_none() {
            self.fail(Pending::Job(self.phase, n), &Status::unavailable("not connected"), job.user, false);
            return;
        }
        let pending = Pending::Job(self.phase, n);
        self.with_conn(job.user, |c, _| c.call(job.method, &job.body, pending));
    }

    pub(super) fn send_new(&mut self, user: usize) {
        let convs = &self.sends[user];
        let conversation = convs[self.turn[user] % convs.len()];
        self.turn[user] += 1;
        self.next_n[user] += 1;
        let out = Outgoing {
            conversation,
            n: self.next_n[user],
            body: tally::body(tally::now_micros(), self.body_bytes),
            started: Instant::now(),
            attempt: 1,
        };
        self.counters.sent += 1;
        self.send_in_flight += 1;
        self.issue_send(user, out);
    }

    pub(super) fn issue_send(&mut self, user: usize, out: Outgoing) {
        let request = api::SendMessageRequest {
            conversation: Some(tally::wire_conversation(out.conversation)),
            client_msg_id: out.n.to_string(),
            body: out.body.clone(),
        };
        if self.conns[user].is_none() {
            self.fail(Pending::Send(out), &Status::unavailable("not connected"), user, false);
            return;
        }
        let body = request.encode_to_vec();
        self.with_conn(user, |c, _| c.call("SendMessage", &body, Pending::Send(out)));
    }

    /// Sends user `user`'s `round`-th `Sync` from what it saw; false if it cannot.
    pub(super) fn sync(&mut self, user: usize, round: u32) -> bool {
        if self.conns[user].is_none() || round >= SYNC_ROUNDS {
            return false;
        }
        let cursors = self.sends[user]
            .iter()
            .map(|&c| api::Cursor {
                conversation: Some(tally::wire_conversation(c)),
                seq: self.seen[user].get(&c).map_or(0, |s| s.watermark),
            })
            .collect();
        let body = api::SyncRequest { cursors, limit: 1000 }.encode_to_vec();
        self.with_conn(user, |c, _| c.call("Sync", &body, Pending::Sync(round)));
        self.conns[user].is_some()
    }

    pub(super) fn job_done(&mut self, phase: u64, n: usize, result: Result<Bytes, Status>) {
        if phase != self.phase {
            return;
        }
        if let Activity::Calls { results, in_flight, done, .. } = &mut self.activity {
            if results[n].is_none() {
                results[n] = Some(result);
                *in_flight -= 1;
                *done += 1;
            }
        }
    }

    pub(super) fn sync_done(&mut self) {
        if let Activity::Sync { outstanding } = &mut self.activity {
            *outstanding = outstanding.saturating_sub(1);
        }
    }
}
