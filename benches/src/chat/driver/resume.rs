//! Users whose connection was lost, brought back during a storm: reconnected when their
//! turn comes, `Resume` with their session token, then `Sync` from what they saw.

use std::time::Instant;

use prost::Message as _;
use rpc_core::{Code, Status};
use services::api;

use super::{Loop, Pending, SYNC_ROUNDS};
use crate::chat::tally;

impl Loop {
    /// Connects the lost users whose turn it is again and sends their `Resume`.
    pub(super) fn tick_resume(&mut self, now: Instant) {
        let Some(resumer) = &mut self.resumer else { return };
        let addr = resumer.plan.addr;
        for user in resumer.due(now) {
            if let Err(e) = self.start_connect(addr, user) {
                self.count_error(&format!("reconnect: {e}"));
                if let Some(resumer) = &mut self.resumer {
                    resumer.lost(user, Instant::now());
                }
                continue;
            }
            let token = self.resumer.as_ref().map(|r| r.token(user).to_owned()).unwrap_or_default();
            let body = api::ResumeRequest { session_token: token }.encode_to_vec();
            self.with_conn(user, |c, _| c.call("Resume", &body, Pending::Resume));
        }
    }

    /// Whether the login view of a resumed `user` shows a conversation with messages
    /// past what the user saw: only then is a `Sync` needed, as chat.proto says.
    pub(super) fn missed_any(&self, user: usize, view: &api::LoginResponse) -> bool {
        view.conversations.iter().any(|state| {
            let seen = tally::conversation_of(state.conversation.as_ref())
                .and_then(|c| self.seen[user].get(&c))
                .map_or(0, |seen| seen.watermark);
            state.last_seq > seen
        })
    }

    /// Sends a resumed user's `round`-th `Sync` from what it saw; false if it cannot.
    pub(super) fn resync(&mut self, user: usize, round: u32) -> bool {
        if self.conns[user].is_none() || round >= SYNC_ROUNDS {
            return false;
        }
        let cursors = self.seen[user]
            .iter()
            .map(|(&c, seen)| api::Cursor {
                conversation: Some(tally::wire_conversation(c)),
                seq: seen.watermark,
            })
            .collect();
        let body = api::SyncRequest { cursors, limit: 1000 }.encode_to_vec();
        self.with_conn(user, |c, _| c.call("Sync", &body, Pending::Resync(round)));
        self.conns[user].is_some()
    }

    /// A `Resume` or its `Sync` failed: the connection is dropped and tried again, unless
    /// the token was refused.
    pub(super) fn resume_failed(&mut self, user: usize, status: &Status) {
        self.count_error(&format!("resume {:?}: {}", status.code, status.message));
        if status.code == Code::Unauthenticated {
            return;
        }
        if let Some(mut conn) = self.conns[user].take() {
            let _ = self.poll.registry().deregister(conn.stream_mut());
        }
        if let Some(resumer) = &mut self.resumer {
            resumer.lost(user, Instant::now());
        }
    }
}
