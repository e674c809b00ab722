//! What the simulated users saw, and the final account: every acknowledged message must
//! have reached every other participant of its conversation, by push or by `Sync`, and
//! no message may show up twice under different sequence numbers.
//!
//! A message is known by its sender and its client message id, which the generator
//! makes from a per-sender counter; its body starts with the send time in microseconds
//! since [`base`], so a receiver in this process knows its end-to-end latency.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use services::{ConversationId, GroupId, UserId};

/// The instant message timestamps count from; the same for every thread.
pub fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Microseconds since [`base`].
pub fn now_micros() -> u64 {
    base().elapsed().as_micros() as u64
}

/// A message body of `len` bytes (at least 16) carrying `micros` in its first 16.
pub fn body(micros: u64, len: usize) -> String {
    let mut body = format!("{micros:016x}");
    while body.len() < len {
        body.push('.');
    }
    body
}

/// The send time a body made by [`body`] carries.
pub fn sent_micros(body: &str) -> Option<u64> {
    u64::from_str_radix(body.get(..16)?, 16).ok()
}

/// A message's identity: (sender, the counter in its client message id).
pub type Key = (u64, u64);

/// A new latency histogram in microseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The conversation a wire message names.
pub fn conversation_of(c: Option<&services::api::Conversation>) -> Option<ConversationId> {
    use services::api::conversation::Kind;
    match c?.kind.as_ref()? {
        Kind::Direct(p) => Some(ConversationId::direct(UserId(p.low_user_id), UserId(p.high_user_id))),
        Kind::GroupId(g) => Some(ConversationId::Group(GroupId(*g))),
    }
}

/// The wire form of a conversation.
pub fn wire_conversation(c: ConversationId) -> services::api::Conversation {
    use services::api::conversation::Kind;
    let kind = match c {
        ConversationId::Direct { low, high } => {
            Kind::Direct(services::api::DirectPair { low_user_id: low.0, high_user_id: high.0 })
        }
        ConversationId::Group(g) => Kind::GroupId(g.0),
    };
    services::api::Conversation { kind: Some(kind) }
}

/// What one user has seen of one conversation.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each sequence number seen, with the message it carried.
    pub seqs: HashMap<u64, Key>,
    /// Every sequence up to this one has been seen.
    pub watermark: u64,
}

impl Seen {
    /// Records `seq`; returns false when it was seen before. A second sighting of a
    /// sequence under another message is a duplicate (or worse), counted in `dup`.
    pub fn insert(&mut self, seq: u64, key: Key, dup: &mut u64) -> bool {
        match self.seqs.get(&seq) {
            Some(&known) => {
                if known != key {
                    *dup += 1;
                }
                false
            }
            None => {
                self.seqs.insert(seq, key);
                while self.seqs.contains_key(&(self.watermark + 1)) {
                    self.watermark += 1;
                }
                true
            }
        }
    }
}

/// One acknowledged send.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Where it went.
    pub conversation: ConversationId,
    /// The sequence number the server gave it.
    pub seq: u64,
    /// Its identity.
    pub key: Key,
}

/// Counters and histograms one event loop keeps; merged at the end.
#[derive(Debug)]
pub struct Counters {
    /// Send to push, microseconds, for first sightings by push.
    pub latency: Histogram<u64>,
    /// Send to acknowledgement, microseconds.
    pub ack_latency: Histogram<u64>,
    /// Sends issued (first attempts).
    pub sent: u64,
    /// Sends acknowledged, within the timed window.
    pub acked_in_window: u64,
    /// Sends acknowledged in all.
    pub acked: u64,
    /// Acknowledgements that said `duplicate = true` (answers to retries).
    pub acked_duplicate: u64,
    /// First sightings by push, within the timed window.
    pub delivered_in_window: u64,
    /// First sightings by push in all.
    pub delivered: u64,
    /// Pushes of a sequence number the receiver had already seen (retries are re-pushed
    /// on purpose; not an error).
    pub repushes: u64,
    /// Messages a receiver saw only through the final `Sync`.
    pub from_sync: u64,
    /// Sequences seen again under a different message, and messages acknowledged twice
    /// under different sequence numbers: must stay 0.
    pub dup: u64,
    /// Send attempts that failed and were retried with the same client message id.
    pub retries: u64,
    /// Sends that failed for good.
    pub failed: u64,
    /// Failure statuses by code name.
    pub errors: HashMap<String, u64>,
    /// Connections lost during the run.
    pub disconnects: u64,
    /// Logins answered during a soak (each after a logout).
    pub logins: u64,
    /// Logouts answered during a soak.
    pub logouts: u64,
    /// `History` pages answered during a soak.
    pub histories: u64,
    /// `Sync` calls answered during a soak.
    pub syncs: u64,
    /// `Ack` calls (read cursors) answered during a soak.
    pub read_acks: u64,
    /// Soak calls (not sends) that failed; their statuses are in `errors`.
    pub calls_failed: u64,
    /// Presence changes pushed to users.
    pub presence: u64,
    /// Users back with `Resume` whose login view showed nothing missed, so no `Sync`.
    pub resumed_without_sync: u64,
    /// When asked for (a storm), each first sighting by push as (sent, send to push), in
    /// microseconds: to see how latency moved over the run. At most [`TIMELINE_CAP`].
    pub timeline: Option<Vec<(u64, u64)>>,
}

/// Most first sightings a loop keeps in [`Counters::timeline`] (16 bytes each).
pub const TIMELINE_CAP: usize = 1 << 20;

impl Default for Counters {
    fn default() -> Self {
        Counters {
            latency: histogram(),
            ack_latency: histogram(),
            sent: 0,
            acked_in_window: 0,
            acked: 0,
            acked_duplicate: 0,
            delivered_in_window: 0,
            delivered: 0,
            repushes: 0,
            from_sync: 0,
            dup: 0,
            retries: 0,
            failed: 0,
            errors: HashMap::new(),
            disconnects: 0,
            logins: 0,
            logouts: 0,
            histories: 0,
            syncs: 0,
            read_acks: 0,
            calls_failed: 0,
            presence: 0,
            resumed_without_sync: 0,
            timeline: None,
        }
    }
}

impl Counters {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        self.latency.add(&other.latency).expect("same histogram bounds");
        self.ack_latency.add(&other.ack_latency).expect("same histogram bounds");
        self.sent += other.sent;
        self.acked_in_window += other.acked_in_window;
        self.acked += other.acked;
        self.acked_duplicate += other.acked_duplicate;
        self.delivered_in_window += other.delivered_in_window;
        self.delivered += other.delivered;
        self.repushes += other.repushes;
        self.from_sync += other.from_sync;
        self.dup += other.dup;
        self.retries += other.retries;
        self.failed += other.failed;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.disconnects += other.disconnects;
        self.logins += other.logins;
        self.logouts += other.logouts;
        self.histories += other.histories;
        self.syncs += other.syncs;
        self.read_acks += other.read_acks;
        self.calls_failed += other.calls_failed;
        self.presence += other.presence;
        self.resumed_without_sync += other.resumed_without_sync;
        if let Some(theirs) = &other.timeline {
            self.timeline.get_or_insert_with(Vec::new).extend_from_slice(theirs);
        }
    }

    /// Records a first sighting by push of a message sent at `sent`, now.
    pub fn record_push(&mut self, sent: u64) {
        let latency = now_micros().saturating_sub(sent).max(1);
        self.latency.saturating_record(latency);
        if let Some(timeline) = &mut self.timeline {
            if timeline.len() < TIMELINE_CAP {
                timeline.push((sent, latency));
            }
        }
    }
}

/// The final account.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    /// (message, recipient) pairs acknowledged to the sender and never seen by the
    /// recipient, even after `Sync`.
    pub lost: u64,
    /// Messages acknowledged twice under different sequence numbers, or two messages
    /// acknowledged under one sequence number.
    pub dup: u64,
    /// Distinct acknowledged messages.
    pub messages: u64,
}

/// Checks every acknowledgement against what each recipient saw. `members` names the
/// participants of each conversation; `seen(user, conversation)` is what that user saw.
pub fn verdict<'a>(
    acks: impl Iterator<Item = &'a Ack>,
    members: &HashMap<ConversationId, Vec<u64>>,
    seen: impl Fn(u64, ConversationId) -> Option<&'a Seen>,
) -> Verdict {
    let mut verdict = Verdict::default();
    // conversation -> seq -> key, and key -> seq, to find double acknowledgements.
    let mut by_seq: HashMap<(ConversationId, u64), Key> = HashMap::new();
    let mut by_key: HashMap<Key, (ConversationId, u64)> = HashMap::new();
    for ack in acks {
        match by_key.get(&ack.key) {
            Some(&(c, s)) if (c, s) == (ack.conversation, ack.seq) => continue, // a retry's answer
            Some(_) => {
                verdict.dup += 1;
                continue;
            }
            None => {}
        }
        by_key.insert(ack.key, (ack.conversation, ack.seq));
        if by_seq.insert((ack.conversation, ack.seq), ack.key).is_some() {
            verdict.dup += 1;
        }
        verdict.messages += 1;
        for &member in members.get(&ack.conversation).map(Vec::as_slice).unwrap_or_default() {
            if member == ack.key.0 {
                continue;
            }
            let got = seen(member, ack.conversation).is_some_and(|s| s.seqs.contains_key(&ack.seq));
            if !got {
                verdict.lost += 1;
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_its_time() {
        let b = body(123_456, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(sent_micros(&b), Some(123_456));
    }

    #[test]
    fn watermark_follows_contiguous_sequences() {
        let mut seen = Seen::default();
        let mut dup = 0;
        assert!(seen.insert(2, (1, 2), &mut dup));
        assert_eq!(seen.watermark, 0);
        assert!(seen.insert(1, (1, 1), &mut dup));
        assert_eq!(seen.watermark, 2);
        assert!(!seen.insert(2, (1, 2), &mut dup));
        assert_eq!(dup, 0);
        assert!(!seen.insert(2, (9, 9), &mut dup));
        assert_eq!(dup, 1);
    }

    #[test]
    fn verdict_counts_missing_recipients_and_double_acks() {
        let c = ConversationId::direct(UserId(1), UserId(2));
        let members = HashMap::from([(c, vec![1, 2])]);
        let mut two = Seen::default();
        let mut dup = 0;
        two.insert(1, (1, 1), &mut dup);
        let acks = [
            Ack { conversation: c, seq: 1, key: (1, 1) },
            Ack { conversation: c, seq: 1, key: (1, 1) }, // a retry: fine
            Ack { conversation: c, seq: 2, key: (1, 2) }, // never seen by 2: lost
            Ack { conversation: c, seq: 3, key: (1, 1) }, // stored twice: dup
        ];
        let v = verdict(acks.iter(), &members, |user, _| (user == 2).then_some(&two));
        assert_eq!((v.lost, v.dup, v.messages), (1, 1, 2));
    }
}
