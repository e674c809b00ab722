//! Group commit of sends: concurrent [`Store::send`](crate::Store::send) calls on one
//! [`MySql`] store are queued to a few committer threads, each of which takes whatever
//! is waiting (up to [`Config::max_batch`](super::Config::max_batch)) and stores it in one
//! transaction with multi-row statements, so a batch costs about as many round trips and
//! one log flush as a single message did.
//!
//! The guarantees are those of a single send:
//!
//! * a sender is answered only after the transaction holding its message committed;
//! * sequence numbers are taken with the conversation rows locked, in ascending row id
//!   order (so batches never deadlock each other on them), `k` at a time for `k`
//!   messages to one conversation, and a rollback returns them all, so there are no gaps;
//! * a client message id already stored is answered with the original, checked inside
//!   the transaction as before, and a racing retry is caught by the unique key;
//! * when the batch fails for any reason (a duplicate key, a deadlock that outlived the
//!   retries, a lost connection), it is rolled back whole and each of its sends is
//!   answered by [`MySql::send_one`], the one-message path, on its caller's thread, so a
//!   failure is reported only to the send that caused it.
//!
//! With no committer running (none could start, or the last one died) sends are not
//! queued: each goes alone, and sends already queued are handed back.
//!
//! A send that the batch cannot decide cheaply (its conversation row id is not known
//! yet, the sender is not a member of the group, or the same client message id appears
//! twice in one batch) is also handed back to its caller's thread for `send_one`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use mysql::prelude::Queryable;
use mysql::{Params, Transaction, Value};

use super::queries::{advance_seq, message_from};
use super::MySql;
use crate::conversation::ConversationId;
use crate::ids::UserId;
use crate::store::rules::{conversation_from_columns, duplicate, stored};
use crate::store::{now_ms, Error, Message, NewMessage, Sent};

/// The most rows one multi-row statement carries; batches are cut into statements of
/// 32, 16, 8, 4, 2 and 1 rows, so each connection prepares at most six texts of each.
const CHUNK_MAX: usize = 32;

/// A send waiting for a committer.
struct Pending {
    /// The sender, the normalised conversation, and the message.
    sender: UserId,
    conversation: ConversationId,
    /// The conversation's row id, known before queueing.
    conversation_row: u64,
    client_msg_id: String,
    body: String,
    /// Where the committer answers.
    reply: SyncSender<Verdict>,
}

/// A committer's answer to one send.
enum Verdict {
    /// Committed (or found stored already), or refused.
    Done(Result<Sent, Error>),
    /// Not decided in the batch: the caller runs [`MySql::send_one`].
    Alone,
}

/// The queue between callers and committers.
#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    /// Signalled when a send arrives or the store is dropped.
    ready: Condvar,
}

#[derive(Default)]
struct State {
    /// Sends not yet taken.
    waiting: VecDeque<Pending>,
    /// The store is gone: the committers finish what is queued and exit.
    closed: bool,
    /// Committer threads running. With none (none could start, or the last one died)
    /// nothing would take a queued send, so sends go alone.
    committers: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a committer out when its thread ends, however it ends.
struct Running<'a>(&'a Queue);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.committers -= 1;
        if state.committers == 0 {
            // Dropping their reply senders sends the callers alone.
            state.waiting.clear();
        }
    }
}

/// The callers' end of the queue, shared by the clones of one [`MySql`]; when the last
/// clone drops, the committers finish what is queued and exit.
pub(super) struct Commits {
    /// The queue the committers take from.
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commits").finish_non_exhaustive()
    }
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

/// Starts `committers` threads storing sends for `store` (which must have no committers
/// of its own) in batches of at most `max_batch`.
pub(super) fn start(store: &MySql, committers: usize, max_batch: usize) -> Commits {
    let queue = Arc::new(Queue::default());
    for n in 0..committers.max(1) {
        queue.lock().committers += 1;
        let running = Arc::clone(&queue);
        let store = store.clone();
        let spawned = std::thread::Builder::new().name(format!("mysql-commit-{n}")).spawn(move || {
            let _running = Running(&running);
            commit_loop(&store, &running, max_batch.max(1));
        });
        if let Err(error) = spawned {
            queue.lock().committers -= 1;
            tracing::warn!(%error, "cannot start a mysql committer thread; sends go alone without one");
        }
    }
    Commits { queue }
}

impl Commits {
    /// Queues `message` (to conversation row `conversation_row`) and waits for its
    /// answer; `None` when the caller must send it alone.
    pub(super) fn send(
        &self,
        message: &NewMessage<'_>,
        conversation: ConversationId,
        conversation_row: u64,
    ) -> Option<Result<Sent, Error>> {
        let (reply, answer) = sync_channel(1);
        let pending = Pending {
            sender: message.sender,
            conversation,
            conversation_row,
            client_msg_id: message.client_msg_id.to_owned(),
            body: message.body.to_owned(),
            reply,
        };
        {
            let mut state = self.queue.lock();
            if state.committers == 0 {
                return None;
            }
            state.waiting.push_back(pending);
        }
        self.queue.ready.notify_one();
        match answer.recv() {
            Ok(Verdict::Done(result)) => Some(result),
            // A committer that died without answering may or may not have committed;
            // the one-message path finds the message if it did.
            Ok(Verdict::Alone) | Err(_) => None,
        }
    }
}

fn commit_loop(store: &MySql, queue: &Queue, max_batch: usize) {
    loop {
        let batch: Vec<Pending> = {
            let mut state = queue.lock();
            while state.waiting.is_empty() && !state.closed {
                state = queue.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.waiting.is_empty() {
                return;
            }
            let n = state.waiting.len().min(max_batch);
            state.waiting.drain(..n).collect()
        };
        if batch.len() == 1 {
            // Nothing to merge: the caller's own path costs the same and keeps this
            // thread free.
            for p in batch {
                let _ = p.reply.send(Verdict::Alone);
            }
            continue;
        }
        let verdicts = match store.transact(|tx| store_batch(tx, &batch)) {
            Ok(verdicts) => verdicts,
            Err(error) => {
                tracing::debug!(%error, size = batch.len(), "batch failed; its sends go alone");
                batch.iter().map(|_| Verdict::Alone).collect()
            }
        };
        for (p, verdict) in batch.into_iter().zip(verdicts) {
            let _ = p.reply.send(verdict);
        }
    }
}

/// Stores what it can of `batch` in `tx` (not committed here) and says what became of
/// each send, in order.
fn store_batch(tx: &mut Transaction<'_>, batch: &[Pending]) -> Result<Vec<Verdict>, Error> {
    let mut verdicts: Vec<Option<Verdict>> = batch.iter().map(|_| None).collect();

    // The same client message id twice in one batch: all but the first go alone, after
    // the first committed, and find it.
    let mut ids = HashSet::new();
    for (i, p) in batch.iter().enumerate() {
        if !ids.insert((p.sender, p.client_msg_id.as_str())) {
            verdicts[i] = Some(Verdict::Alone);
        }
    }

    // Retries are answered with the original before any other check.
    let keys: Vec<usize> = (0..batch.len()).filter(|&i| verdicts[i].is_none()).collect();
    let originals = find_sent_many(tx, batch, &keys)?;
    for &i in &keys {
        if let Some(original) = originals.get(&(batch[i].sender, batch[i].client_msg_id.as_str())) {
            verdicts[i] = Some(Verdict::Done(duplicate(original.clone(), batch[i].conversation)));
        }
    }

    // Group senders must be members; anyone else goes alone for the precise error.
    let group_sends: Vec<usize> = (0..batch.len())
        .filter(|&i| verdicts[i].is_none() && matches!(batch[i].conversation, ConversationId::Group(_)))
        .collect();
    let members = members_of(tx, batch, &group_sends)?;
    for &i in &group_sends {
        if let ConversationId::Group(group) = batch[i].conversation {
            if !members.contains(&(group.0, batch[i].sender.0)) {
                verdicts[i] = Some(Verdict::Alone);
            }
        }
    }

    // Take the numbers, rows locked in ascending id order.
    let mut by_row: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, p) in batch.iter().enumerate() {
        if verdicts[i].is_none() {
            by_row.entry(p.conversation_row).or_default().push(i);
        }
    }
    let mut seqs = vec![0u64; batch.len()];
    for (&row, sends) in &by_row {
        let k = sends.len() as u64;
        let last = advance_seq(tx, row, k)?;
        for (n, &i) in sends.iter().enumerate() {
            seqs[i] = last - k + 1 + n as u64;
        }
    }
    let writes: Vec<usize> = by_row.values().flatten().copied().collect();
    let sent_at_ms = now_ms();
    insert_messages(tx, batch, &writes, &seqs, sent_at_ms)?;
    raise_cursors(tx, batch, &writes, &seqs)?;

    for &i in &writes {
        let p = &batch[i];
        let message = NewMessage {
            sender: p.sender,
            conversation: p.conversation,
            client_msg_id: &p.client_msg_id,
            body: &p.body,
        };
        verdicts[i] = Some(Verdict::Done(Ok(stored(&message, p.conversation, seqs[i], sent_at_ms))));
    }
    Ok(verdicts.into_iter().map(|v| v.unwrap_or(Verdict::Alone)).collect())
}

/// Splits `0..len` into runs of 32, 16, 8, 4, 2 and 1.
fn chunks(len: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let mut size = CHUNK_MAX;
        while size > len - start {
            size /= 2;
        }
        out.push(start..start + size);
        start += size;
    }
    out
}

/// `n` copies of `row` joined by `sep`.
fn repeat(row: &str, sep: &str, n: usize) -> String {
    vec![row; n].join(sep)
}

/// The stored messages among `batch[keys]`, by (sender, client message id).
fn find_sent_many<'b>(
    tx: &mut Transaction<'_>,
    batch: &'b [Pending],
    keys: &[usize],
) -> Result<HashMap<(UserId, &'b str), Message>, Error> {
    type Row = (u64, u64, String, String, i64, Option<u64>, Option<u64>, Option<u64>);
    let mut found = HashMap::new();
    for range in chunks(keys.len()) {
        let sql = format!(
            "SELECT m.seq, m.sender_id, m.client_msg_id, m.body, m.sent_at_ms,
                    c.user_low, c.user_high, c.group_id
             FROM messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE {}",
            repeat("(m.sender_id = ? AND m.client_msg_id = ?)", " OR ", range.len())
        );
        let params: Vec<Value> = keys[range]
            .iter()
            .flat_map(|&i| [batch[i].sender.0.into(), batch[i].client_msg_id.as_str().into()])
            .collect();
        let rows: Vec<Row> = tx.exec(sql, Params::Positional(params))?;
        for (seq, sender, id, body, at, low, high, group) in rows {
            let conversation = conversation_from_columns(low, high, group)?;
            let message = message_from(conversation, (seq, sender, id, body, at));
            if let Some(&i) = keys.iter().find(|&&i| {
                batch[i].sender == message.sender && batch[i].client_msg_id == message.client_msg_id
            }) {
                found.insert((batch[i].sender, batch[i].client_msg_id.as_str()), message);
            }
        }
    }
    Ok(found)
}

/// Which (group, user) pairs among `batch[sends]` are memberships.
fn members_of(
    tx: &mut Transaction<'_>,
    batch: &[Pending],
    sends: &[usize],
) -> Result<HashSet<(u64, u64)>, Error> {
    let mut found = HashSet::new();
    for range in chunks(sends.len()) {
        let sql = format!(
            "SELECT group_id, user_id FROM group_members WHERE {}",
            repeat("(group_id = ? AND user_id = ?)", " OR ", range.len())
        );
        let params: Vec<Value> = sends[range]
            .iter()
            .flat_map(|&i| {
                let group = match batch[i].conversation {
                    ConversationId::Group(group) => group.0,
                    ConversationId::Direct { .. } => 0,
                };
                [group.into(), batch[i].sender.0.into()]
            })
            .collect();
        let rows: Vec<(u64, u64)> = tx.exec(sql, Params::Positional(params))?;
        found.extend(rows);
    }
    Ok(found)
}

fn insert_messages(
    tx: &mut Transaction<'_>,
    batch: &[Pending],
    writes: &[usize],
    seqs: &[u64],
    sent_at_ms: i64,
) -> Result<(), Error> {
    for range in chunks(writes.len()) {
        let sql = format!(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, body, sent_at_ms)
             VALUES {}",
            repeat("(?, ?, ?, ?, ?, ?)", ", ", range.len())
        );
        let params: Vec<Value> = writes[range]
            .iter()
            .flat_map(|&i| {
                let p = &batch[i];
                [
                    p.conversation_row.into(),
                    seqs[i].into(),
                    p.sender.0.into(),
                    p.client_msg_id.as_str().into(),
                    p.body.as_str().into(),
                    sent_at_ms.into(),
                ]
            })
            .collect();
        tx.exec_drop(sql, Params::Positional(params))?;
    }
    Ok(())
}

/// Moves each sender's read cursor to their newest message in the batch.
fn raise_cursors(
    tx: &mut Transaction<'_>,
    batch: &[Pending],
    writes: &[usize],
    seqs: &[u64],
) -> Result<(), Error> {
    let mut cursors: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for &i in writes {
        let seq = cursors.entry((batch[i].sender.0, batch[i].conversation_row)).or_default();
        *seq = (*seq).max(seqs[i]);
    }
    let cursors: Vec<((u64, u64), u64)> = cursors.into_iter().collect();
    for range in chunks(cursors.len()) {
        let sql = format!(
            "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES {}
             ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
            repeat("(?, ?, ?)", ", ", range.len())
        );
        let params: Vec<Value> = cursors[range]
            .iter()
            .flat_map(|&((user, row), seq)| [user.into(), row.into(), seq.into()])
            .collect();
        tx.exec_drop(sql, Params::Positional(params))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_covering_everything() {
        assert!(chunks(0).is_empty());
        assert_eq!(chunks(1), vec![0..1]);
        assert_eq!(chunks(13), vec![0..8, 8..12, 12..13]);
        assert_eq!(chunks(70), vec![0..32, 32..64, 64..68, 68..70]);
    }
}
