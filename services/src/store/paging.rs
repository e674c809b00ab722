//! Paging, the same in both SQL stores: how many messages a page holds, which rows a
//! history query reads and which of them make its page, and which conversations a sync
//! reads from where. A backend supplies the rows through its own SQL.

use std::collections::HashMap;

use crate::conversation::ConversationId;
use crate::limits;

use super::{Anchor, ConversationState, Cursor, Error, Message, Page};

/// The most messages a history page holds when `requested` were asked for.
pub(crate) fn history_limit(requested: usize) -> usize {
    limits::page_size(requested, limits::HISTORY_PAGE_DEFAULT, limits::HISTORY_PAGE_MAX)
}

/// The messages a history query reads, nearest to its anchor first.
pub(crate) enum HistoryRows {
    /// Below `before` (the newest when `None`) and above `hidden`, newest first.
    Before {
        /// The anchor's sequence number, if any.
        before: Option<u64>,
        /// The highest sequence number hidden from the reader.
        hidden: u64,
    },
    /// Above this sequence number, ascending.
    After(u64),
}

/// A page of history from `anchor` for a reader from whom the messages up to `hidden` are
/// hidden. `read(rows, n)` returns up to `n` of the messages `rows` names, nearest to the
/// anchor first; it is asked for one more than the page holds, to learn whether more
/// exist.
pub(crate) fn history(
    anchor: Anchor,
    limit: usize,
    hidden: u64,
    read: impl FnOnce(HistoryRows, usize) -> Result<Vec<Message>, Error>,
) -> Result<Page, Error> {
    let rows = match anchor {
        Anchor::Latest => HistoryRows::Before { before: None, hidden },
        Anchor::Before(seq) => HistoryRows::Before { before: Some(seq), hidden },
        Anchor::After(seq) => HistoryRows::After(seq.max(hidden)),
    };
    let rows = read(rows, limit + 1)?;
    Ok(history_page(rows, limit, anchor))
}

/// The page for a history query whose rows came back nearest-first, with one row more
/// than `limit` fetched to learn whether more exist. Puts the page in ascending order.
fn history_page(mut rows: Vec<Message>, limit: usize, anchor: Anchor) -> Page {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    if !matches!(anchor, Anchor::After(_)) {
        rows.reverse();
    }
    Page { messages: rows, has_more }
}

/// One of a user's conversations as the backends read it: a backend key, the state, and
/// the highest sequence number hidden from the user (their join into a group with
/// [`HistoryVisibility::Joined`](super::HistoryVisibility::Joined); 0 when everything
/// is visible).
pub(crate) type StateRow<K> = (K, ConversationState, u64);

/// The sync algorithm shared by the backends. `rows` are the user's conversations in
/// answer order; `fetch(key, conversation, after, n)` returns up to `n` messages with a
/// sequence number above `after`, ascending.
pub(crate) fn collect_sync<K: Copy>(
    rows: &[StateRow<K>],
    cursors: &[Cursor],
    limit: usize,
    mut fetch: impl FnMut(K, ConversationId, u64, usize) -> Result<Vec<Message>, Error>,
) -> Result<Page, Error> {
    let mut remaining = limits::page_size(limit, limits::SYNC_PAGE_DEFAULT, limits::SYNC_PAGE_MAX);
    let mut page = Page::default();
    // Looked up once per conversation: a request may name tens of thousands. The last
    // cursor of a conversation named twice wins.
    let cursors: HashMap<ConversationId, u64> =
        cursors.iter().map(|c| (c.conversation.normalized(), c.seq)).collect();
    for &(key, state, hidden) in rows {
        let after = cursors.get(&state.conversation).copied().unwrap_or(state.read_seq).max(hidden);
        if state.last_seq <= after {
            continue;
        }
        // Sequence numbers have no gaps, so the number still missing is exact.
        let missing = state.last_seq - after;
        if remaining == 0 {
            page.has_more = true;
            break;
        }
        let take = usize::try_from(missing).unwrap_or(usize::MAX).min(remaining);
        let got = fetch(key, state.conversation, after, take)?;
        remaining -= got.len();
        let short = (got.len() as u64) < missing;
        page.messages.extend(got);
        if short {
            page.has_more = true;
            break;
        }
    }
    Ok(page)
}
