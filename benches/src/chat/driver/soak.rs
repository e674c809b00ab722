//! The soak phase: steady sends at a rate, reads (`History`, `Sync`, `Ack`) in turn, and
//! users logging out and back in, for as long as the soak lasts. A soak keeps counts, not
//! a record per message, so it can run for hours.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rpc_core::Status;
use services::api;

use super::{Activity, Loop, Pending, Reply, SoakPlan, ACK_GRACE};
use crate::chat::tally;

/// The calls a soak makes besides sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SoakCall {
    History,
    Sync,
    Ack,
    Logout,
    Login,
}

impl SoakCall {
    fn method(self) -> &'static str {
        match self {
            SoakCall::History => "History",
            SoakCall::Sync => "Sync",
            SoakCall::Ack => "Ack",
            SoakCall::Logout => "Logout",
            SoakCall::Login => "Login",
        }
    }
}

/// A soak in progress.
pub(super) struct Soak {
    pub(super) plan: SoakPlan,
    /// Users with something to send to.
    order: Vec<usize>,
    /// The next turn in `order` to send, to read and to log out.
    send_turn: usize,
    read_turn: usize,
    churn_turn: usize,
    /// When the next send, read and logout are due.
    next_send: Instant,
    next_read: Instant,
    next_churn: Instant,
    /// Logged-out users and when each logs in again, earliest first.
    away: VecDeque<(Instant, usize)>,
    /// Soak calls (not sends) waiting for their answer.
    in_flight: usize,
}

impl Loop {
    /// Starts a soak: every user online, sending from now on.
    pub(super) fn start_soak(&mut self, plan: SoakPlan) {
        self.ids.clone_from(&plan.ids);
        self.sends.clone_from(&plan.sends);
        self.body_bytes = plan.body_bytes;
        self.window_end = Some(plan.end);
        self.online = vec![true; self.users];
        self.latest = vec![HashMap::new(); self.users];
        let order: Vec<usize> = (0..self.users).filter(|&u| !plan.sends[u].is_empty()).collect();
        let now = Instant::now();
        self.activity = Activity::Soak(Box::new(Soak {
            plan,
            order,
            send_turn: 0,
            read_turn: 0,
            churn_turn: 0,
            next_send: now,
            next_read: now,
            next_churn: now,
            away: VecDeque::new(),
            in_flight: 0,
        }));
    }

    /// Issues what a soak has due: sends at its rate (from logged-in users only), reads,
    /// logouts of users with nothing in flight, and the logins of those whose time away
    /// is over. Answers the main thread once the soak ended and its calls came back.
    pub(super) fn tick_soak(&mut self, now: Instant) {
        let Activity::Soak(mut soak) = std::mem::replace(&mut self.activity, Activity::Idle) else { return };
        if now >= soak.plan.end {
            let unanswered = self.send_in_flight + soak.in_flight;
            if unanswered == 0 || now >= soak.plan.end + ACK_GRACE {
                let _ = self.replies.send(Reply::Soaked(unanswered));
            } else {
                self.activity = Activity::Soak(soak);
            }
            return;
        }
        let n = soak.order.len();
        if n > 0 {
            // Falling far behind drops the backlog rather than bursting it later.
            let floor = now - Duration::from_millis(100);
            soak.next_send = soak.next_send.max(floor);
            soak.next_read = soak.next_read.max(floor);
            soak.next_churn = soak.next_churn.max(floor);
            let send_every = Duration::from_secs_f64(1.0 / soak.plan.rate.max(1e-3));
            while soak.next_send <= now && self.send_in_flight < soak.plan.in_flight {
                soak.next_send += send_every;
                if let Some(user) = next_online(&soak.order, &mut soak.send_turn, |u| self.online[u]) {
                    self.send_new(user);
                }
            }
            let read_every = Duration::from_secs_f64(1.0 / soak.plan.reads.max(1e-3));
            while soak.plan.reads > 0.0 && soak.next_read <= now {
                soak.next_read += read_every;
                let turn = soak.read_turn;
                if let Some(user) = next_online(&soak.order, &mut soak.read_turn, |u| self.online[u]) {
                    soak.in_flight += usize::from(self.soak_read(user, turn));
                }
            }
            let churn_every = Duration::from_secs_f64(1.0 / soak.plan.churn.max(1e-3));
            while soak.plan.churn > 0.0 && soak.next_churn <= now {
                soak.next_churn += churn_every;
                // Only a user with no call in flight logs out, so no send of theirs is
                // refused for want of a session.
                let idle =
                    |u: usize| self.online[u] && self.conns[u].as_ref().is_some_and(|c| c.pending.is_empty());
                if let Some(user) = next_online(&soak.order, &mut soak.churn_turn, idle) {
                    self.online[user] = false;
                    soak.away.push_back((now + soak.plan.offline, user));
                    let body = api::LogoutRequest {}.encode_to_vec();
                    soak.in_flight += usize::from(self.soak_call(user, SoakCall::Logout, &body));
                }
            }
        }
        while soak.away.front().is_some_and(|&(at, _)| at <= now) {
            let (_, user) = soak.away.pop_front().expect("checked");
            let body = api::LoginRequest {
                name: soak.plan.names[user].clone(),
                password: soak.plan.password.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            soak.in_flight += usize::from(self.soak_call(user, SoakCall::Login, &body));
        }
        self.activity = Activity::Soak(soak);
    }

    /// A soak's read number `turn` by `user`: `History`, `Sync` and `Ack` in turn, on
    /// the user's conversations in turn. False if it could not be sent.
    fn soak_read(&mut self, user: usize, turn: usize) -> bool {
        let convs = &self.sends[user];
        let conversation = convs[(turn / 3) % convs.len()];
        let known = self.latest[user].get(&conversation).copied().unwrap_or(0);
        match turn % 3 {
            0 => {
                let body = api::HistoryRequest {
                    conversation: Some(tally::wire_conversation(conversation)),
                    anchor: None,
                    limit: 20,
                }
                .encode_to_vec();
                self.soak_call(user, SoakCall::History, &body)
            }
            1 => self.soak_sync(user),
            _ => {
                let body = api::AckRequest {
                    conversation: Some(tally::wire_conversation(conversation)),
                    seq: known,
                }
                .encode_to_vec();
                self.soak_call(user, SoakCall::Ack, &body)
            }
        }
    }

    /// `Sync` from the newest sequence `user` knows of each of its conversations, as a
    /// client does after logging in. False if it could not be sent.
    fn soak_sync(&mut self, user: usize) -> bool {
        let cursors = self.sends[user]
            .iter()
            .map(|&c| api::Cursor {
                conversation: Some(tally::wire_conversation(c)),
                seq: self.latest[user].get(&c).copied().unwrap_or(0),
            })
            .collect();
        let body = api::SyncRequest { cursors, limit: 100 }.encode_to_vec();
        self.soak_call(user, SoakCall::Sync, &body)
    }

    /// Sends a soak call; false if `user` is not connected.
    fn soak_call(&mut self, user: usize, call: SoakCall, body: &[u8]) -> bool {
        if self.conns[user].is_none() {
            return false;
        }
        self.with_conn(user, |c, _| c.call(call.method(), body, Pending::Soak(call)));
        // A write that failed closed the connection and failed the call already.
        self.conns[user].is_some()
    }

    /// A soak call came back.
    pub(super) fn soak_done(&mut self, user: usize, call: SoakCall, outcome: Result<Bytes, Status>) {
        if let Activity::Soak(soak) = &mut self.activity {
            soak.in_flight = soak.in_flight.saturating_sub(1);
        }
        let body = match outcome {
            Ok(body) => body,
            Err(status) => {
                self.counters.calls_failed += 1;
                self.count_error(&format!("{} {:?}: {}", call.method(), status.code, status.message));
                if call == SoakCall::Login {
                    // Try again after another spell away.
                    if let Activity::Soak(soak) = &mut self.activity {
                        soak.away.push_back((Instant::now() + soak.plan.offline, user));
                    }
                }
                return;
            }
        };
        match call {
            SoakCall::History => self.counters.histories += 1,
            SoakCall::Ack => self.counters.read_acks += 1,
            SoakCall::Logout => self.counters.logouts += 1,
            SoakCall::Login => {
                self.counters.logins += 1;
                self.online[user] = true;
                if self.soak_sync(user) {
                    if let Activity::Soak(soak) = &mut self.activity {
                        soak.in_flight += 1;
                    }
                }
            }
            SoakCall::Sync => {
                self.counters.syncs += 1;
                if let Ok(response) = api::SyncResponse::decode(body) {
                    for m in &response.messages {
                        self.received(user, m, true);
                    }
                }
            }
        }
    }
}

/// The next user in `order` from `turn` on that `ok` accepts, moving `turn` past it;
/// `None` after one round without one.
fn next_online(order: &[usize], turn: &mut usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..order.len() {
        let user = order[*turn % order.len()];
        *turn += 1;
        if ok(user) {
            return Some(user);
        }
    }
    None
}
