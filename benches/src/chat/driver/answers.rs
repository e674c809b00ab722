//! What comes back on the users' connections: responses matched to the calls waiting
//! for them (a send that failed in a way a retry can fix is tried again), pushes, and
//! the record of what each user saw.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use rpc_core::frame::{Frame, Kind};
use rpc_core::{Code, Outcome, Status};
use services::api;

use super::{Activity, Loop, Pending, SEND_ATTEMPTS};
use crate::chat::conn::GATEWAY;
use crate::chat::tally::{self, Ack};

impl Loop {
    pub(super) fn read(&mut self, i: usize) {
        let mut frames = Vec::new();
        self.with_conn(i, |c, scratch| c.read_frames(scratch, &mut frames));
        for frame in frames {
            self.handle(i, frame);
        }
    }

    fn handle(&mut self, user: usize, frame: Frame) {
        match frame.kind {
            Kind::Response => {
                let Some(pending) = self.conns[user].as_mut().and_then(|c| c.pending.remove(&frame.call_id))
                else {
                    return;
                };
                match frame.into_result() {
                    Ok(body) => self.succeed(pending, body, user),
                    Err(status) => self.fail(pending, &status, user, true),
                }
            }
            Kind::Push if frame.service() == GATEWAY => {
                if let Ok(push) = api::Push::decode(frame.body) {
                    match push.event {
                        Some(api::push::Event::Message(m)) => self.received(user, &m, false),
                        Some(api::push::Event::Presence(_)) => self.counters.presence += 1,
                        _ => {}
                    }
                }
            }
            Kind::GoAway => {
                eprintln!("chatbench: user {user} got go-away: {}", String::from_utf8_lossy(&frame.body));
            }
            _ => {}
        }
    }

    /// Records a message `user` received by push or (`synced`) by `Sync`.
    pub(super) fn received(&mut self, user: usize, m: &api::Message, synced: bool) {
        let Some(conversation) = tally::conversation_of(m.conversation.as_ref()) else { return };
        if self.soaking() {
            let latest = self.latest[user].entry(conversation).or_default();
            let first = m.seq > *latest;
            *latest = (*latest).max(m.seq);
            if synced {
                self.counters.from_sync += u64::from(first);
                return;
            }
            self.counters.delivered += 1;
            if let Some(sent) = tally::sent_micros(&m.body) {
                self.counters.latency.saturating_record(tally::now_micros().saturating_sub(sent).max(1));
            }
            return;
        }
        let key = (m.sender_id, m.client_msg_id.parse().unwrap_or(u64::MAX));
        let now = Instant::now();
        let first =
            self.seen[user].entry(conversation).or_default().insert(m.seq, key, &mut self.counters.dup);
        if synced {
            if first && m.sender_id != self.ids[user] {
                self.counters.from_sync += 1;
            }
            return;
        }
        self.last_push = now;
        if !first {
            self.counters.repushes += 1;
            return;
        }
        self.counters.delivered += 1;
        if self.window_end.is_some_and(|end| now <= end) {
            self.counters.delivered_in_window += 1;
        }
        if let Some(sent) = tally::sent_micros(&m.body) {
            self.counters.record_push(sent);
        }
    }

    fn succeed(&mut self, pending: Pending, body: Bytes, user: usize) {
        match pending {
            Pending::Job(phase, n) => self.job_done(phase, n, Ok(body)),
            Pending::Send(out) => {
                self.send_in_flight -= 1;
                let Ok(response) = api::SendMessageResponse::decode(body) else {
                    self.count_error("undecodable SendMessageResponse");
                    self.counters.failed += 1;
                    return;
                };
                let Some(message) = response.message else { return };
                let now = Instant::now();
                self.counters.acked += 1;
                if self.window_end.is_some_and(|end| now <= end) {
                    self.counters.acked_in_window += 1;
                }
                if response.duplicate {
                    self.counters.acked_duplicate += 1;
                }
                let micros = now.duration_since(out.started).as_micros() as u64;
                self.counters.ack_latency.saturating_record(micros.max(1));
                if self.soaking() {
                    if let Activity::Soak(soak) = &self.activity {
                        soak.plan.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    let conversation =
                        tally::conversation_of(message.conversation.as_ref()).unwrap_or(out.conversation);
                    let latest = self.latest[user].entry(conversation).or_default();
                    *latest = (*latest).max(message.seq);
                    return;
                }
                let key = (message.sender_id, out.n);
                let conversation =
                    tally::conversation_of(message.conversation.as_ref()).unwrap_or(out.conversation);
                self.acks.push(Ack { conversation, seq: message.seq, key });
                // The sender's own message counts as seen by it, so its watermark moves.
                self.seen[user].entry(conversation).or_default().insert(
                    message.seq,
                    key,
                    &mut self.counters.dup,
                );
            }
            Pending::Soak(call) => self.soak_done(user, call, Ok(body)),
            Pending::Resume => {
                let Ok(view) = api::LoginResponse::decode(body) else {
                    self.resume_failed(user, &Status::internal("undecodable LoginResponse"));
                    return;
                };
                if !self.missed_any(user, &view) {
                    // The view is read after the session opened: what it does not show
                    // as newer is pushed from now on, so nothing was missed.
                    self.counters.resumed_without_sync += 1;
                    if let Some(resumer) = &mut self.resumer {
                        resumer.back(user, Instant::now());
                    }
                    return;
                }
                if !self.resync(user, 0) {
                    self.resume_failed(user, &Status::unavailable("the Sync after Resume could not be sent"));
                }
            }
            Pending::Resync(round) => {
                let Ok(response) = api::SyncResponse::decode(body) else {
                    self.count_error("undecodable SyncResponse");
                    return;
                };
                for m in &response.messages {
                    self.received(user, m, true);
                }
                if !(response.has_more && self.resync(user, round + 1)) {
                    if let Some(resumer) = &mut self.resumer {
                        resumer.back(user, Instant::now());
                    }
                }
            }
            Pending::Sync(round) => {
                let Ok(response) = api::SyncResponse::decode(body) else {
                    self.sync_done();
                    return;
                };
                for m in &response.messages {
                    self.received(user, m, true);
                }
                if !(response.has_more && self.sync(user, round + 1)) {
                    self.sync_done();
                }
            }
        }
    }

    pub(super) fn fail(&mut self, pending: Pending, status: &Status, user: usize, retry: bool) {
        match pending {
            Pending::Job(phase, n) => self.job_done(phase, n, Err(status.clone())),
            Pending::Send(mut out) => {
                // An unknown outcome (DeadlineExceeded from the proxy) may have been stored:
                // only a retry with the same client message id tells.
                let retryable = status.outcome() == Outcome::Unknown
                    || matches!(
                        status.code,
                        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal
                    );
                if retry && retryable && out.attempt < SEND_ATTEMPTS {
                    self.counters.retries += 1;
                    out.attempt += 1;
                    self.issue_send(user, out);
                    return;
                }
                self.send_in_flight -= 1;
                self.counters.failed += 1;
                self.count_error(&format!("{:?}: {}", status.code, status.message));
            }
            Pending::Sync(_) => {
                self.count_error(&format!("Sync {:?}: {}", status.code, status.message));
                self.sync_done();
            }
            Pending::Soak(call) => self.soak_done(user, call, Err(status.clone())),
            Pending::Resume | Pending::Resync(_) => {
                // A lost connection has already scheduled the next attempt.
                if retry {
                    self.resume_failed(user, status);
                }
            }
        }
    }

    pub(super) fn count_error(&mut self, what: &str) {
        let what: String = what.chars().take(120).collect();
        *self.counters.errors.entry(what).or_default() += 1;
    }
}
