//! A send stored on its own, in a transaction of its own: the path for a send that is
//! not batched (`batch.rs`), or that its batch could not decide; and the conversation
//! row ids the store remembers, which let a send to a known conversation skip a look-up.

use mysql::prelude::Queryable;
use mysql::PooledConn;

use super::queries::{
    check_participant, check_sender, conversation_row, create_pair, find_sent, next_seq, raise_cursor,
    require_user,
};
use super::transact::is_duplicate;
use super::MySql;
use crate::conversation::ConversationId;
use crate::store::rules::{duplicate, no_conversation_row, stored};
use crate::store::{now_ms, Error, NewMessage, Sent};

/// The most conversation ids [`MySql`] remembers; past it the table starts over.
const CONVERSATION_IDS: usize = 100_000;

impl MySql {
    /// The row id of `conversation` (normalised), looked up once and then remembered;
    /// `None` while the conversation has no row.
    fn conversation_id(
        &self,
        conn: &mut PooledConn,
        conversation: ConversationId,
    ) -> Result<Option<u64>, Error> {
        let ids = || self.conversation_ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = ids().get(&conversation) {
            return Ok(Some(id));
        }
        let Some((id, _)) = conversation_row(conn, conversation, false)? else { return Ok(None) };
        self.remember_conversation_id(conversation, id);
        Ok(Some(id))
    }

    /// Remembers that `conversation` (normalised) has row `id`.
    fn remember_conversation_id(&self, conversation: ConversationId, id: u64) {
        let mut ids = self.conversation_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() >= CONVERSATION_IDS {
            ids.clear();
        }
        ids.insert(conversation, id);
    }

    /// The remembered row id of `conversation` (normalised), without asking the
    /// database.
    pub(super) fn known_conversation_id(&self, conversation: ConversationId) -> Option<u64> {
        self.conversation_ids.lock().unwrap_or_else(|p| p.into_inner()).get(&conversation).copied()
    }

    /// Stores one message in its own transaction: the path for a send that is not
    /// batched, or that its batch could not decide. `conversation` is the message's,
    /// normalised and checked by
    /// [`check_new_message`](crate::store::rules::check_new_message).
    ///
    /// The first message of a one-to-one pair creates the pair's row in the same
    /// transaction (`INSERT ... ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)`, which
    /// names the row whether this transaction created it or not): one commit, not two.
    /// When both users race, the second insert waits for the first transaction and then
    /// finds its row.
    pub(super) fn send_one(
        &self,
        message: &NewMessage<'_>,
        conversation: ConversationId,
    ) -> Result<Sent, Error> {
        let sender = message.sender;
        let client_msg_id = message.client_msg_id;
        let mut conn = self.conn()?;
        let known = self.conversation_id(&mut conn, conversation)?;
        if known.is_none() && !matches!(conversation, ConversationId::Direct { .. }) {
            // Every group has its row; without one, the group does not exist.
            if let Some(original) = find_sent(&mut conn, sender, client_msg_id)? {
                return duplicate(original, conversation);
            }
            check_participant(&mut conn, sender, conversation)?;
            return Err(no_conversation_row(conversation));
        }
        let sent_at_ms = now_ms();
        let mut conn = Some(conn);
        let outcome = self.transact_on(&mut conn, &mut |tx| {
            // A retry is answered before any other check, so that it still gets its
            // original answer after, say, the sender left the group.
            if let Some(original) = find_sent(tx, sender, client_msg_id)? {
                return duplicate(original, conversation).map(|sent| (0, sent));
            }
            let id = match (known, conversation) {
                (Some(id), _) => {
                    check_sender(tx, sender, conversation)?;
                    id
                }
                (None, ConversationId::Direct { low, high }) => {
                    let peer = if low == sender { high } else { low };
                    require_user(tx, peer)?;
                    create_pair(tx, low, high)?
                }
                (None, ConversationId::Group(_)) => {
                    return Err(no_conversation_row(conversation));
                }
            };
            // Locks the row until commit and takes the next number. A concurrent retry
            // of this message that commits while this one waits for the lock is caught
            // by the unique key on (sender_id, client_msg_id) below.
            let seq = next_seq(tx, id)?;
            tx.exec_drop(
                "INSERT INTO messages
                    (conversation_id, seq, sender_id, client_msg_id, body, sent_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?)",
                (id, seq, sender.0, client_msg_id, message.body, sent_at_ms),
            )?;
            raise_cursor(tx, sender, id, seq)?;
            Ok((id, stored(message, conversation, seq, sent_at_ms)))
        });
        match outcome {
            Ok((id, sent)) => {
                if known.is_none() && !sent.duplicate {
                    self.remember_conversation_id(conversation, id);
                }
                Ok(sent)
            }
            // The same client message id won a race (into this or another conversation).
            Err(e) if is_duplicate(&e) => match find_sent(&mut self.conn()?, sender, client_msg_id)? {
                Some(original) => duplicate(original, conversation),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}
