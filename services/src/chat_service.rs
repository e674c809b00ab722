//! The chat service: stores messages, fans them out to the proxies, and serves history,
//! sync and read cursors.
//!
//! Stateless like the user service. A message is stored (and its sequence number
//! assigned) before anything else happens; only then are the online recipients looked up
//! in the presence table, grouped by proxy, and pushed to with one asynchronous
//! `Delivery.DeliverBatch` per proxy. The sender's answer does not wait for those pushes:
//! a push is a hint, and a recipient who misses one pulls the message with `Sync`. A
//! retried send (same client message id) is pushed again, since the attempt that stored
//! it may have died before pushing; clients drop sequences they have already seen.

use std::sync::Arc;

use rpc_core::server::Context;
use rpc_core::Status;

use crate::api::{self, chat_service_rpc};
use crate::conversation::ConversationId;
use crate::convert::{caller, conversation_id, message, presence_status, state, store_status, write_status};
use crate::ids::UserId;
use crate::proxies::{by_proxy, Proxies};
use crate::store::{Anchor, Cursor, NewMessage};
use crate::{Presence, Store};

/// Implements [`chat_service_rpc::ChatService`]; serve it with
/// [`api::ChatServiceServer`].
pub struct ChatService {
    /// Where messages and read cursors live.
    store: Arc<dyn Store>,
    /// Which proxy holds each online user.
    presence: Arc<dyn Presence>,
    /// The proxies' delivery services.
    proxies: Proxies,
}

impl ChatService {
    /// A chat service over `store`, pushing to the proxies `presence` names, found
    /// through `proxies`.
    pub fn new(store: Arc<dyn Store>, presence: Arc<dyn Presence>, proxies: Proxies) -> Self {
        ChatService { store, presence, proxies }
    }

    /// Pushes `stored` to every participant but its sender who is online; errors are
    /// logged, never returned, because the message is already safe.
    fn fan_out(&self, stored: &crate::store::Message) {
        let recipients: Vec<UserId> = match stored.conversation {
            ConversationId::Direct { .. } => stored.conversation.peer_of(stored.sender).into_iter().collect(),
            ConversationId::Group(group) => match self.store.group_member_ids(group) {
                Ok(members) => members.into_iter().filter(|&id| id != stored.sender).collect(),
                Err(error) => {
                    tracing::warn!(%group, %error, "cannot list group members to push to");
                    return;
                }
            },
        };
        let grouped = match by_proxy(self.presence.as_ref(), &recipients) {
            Ok(grouped) => grouped,
            Err(error) => {
                tracing::warn!(%error, "cannot look up recipients' proxies; they will sync");
                return;
            }
        };
        let wire = message(stored.clone());
        for (proxy, user_ids) in grouped {
            let Some(client) = self.proxies.client(&proxy) else {
                tracing::debug!(%proxy, "recipients' proxy is not registered; they will sync");
                continue;
            };
            let request = api::DeliverBatchRequest { user_ids, message: Some(wire.clone()) };
            client.deliver_batch_with(&request, move |outcome| {
                if let Err(error) = outcome {
                    tracing::debug!(%proxy, %error, "push failed; recipients will sync");
                }
            });
        }
    }
}

/// How old a message may be for a resend of it (same client message id) to push it again,
/// in milliseconds: longer than clients retry a send whose outcome was unknown.
const REPUSH_WINDOW_MS: i64 = 60_000;

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService").field("proxies", &self.proxies).finish_non_exhaustive()
    }
}

impl chat_service_rpc::ChatService for ChatService {
    fn send(&self, _ctx: &Context, request: api::SendCall) -> Result<api::SendMessageResponse, Status> {
        let sender = caller(request.sender_id)?;
        let request = request.request.unwrap_or_default();
        let conversation = conversation_id(request.conversation)?;
        let sent = self
            .store
            .send(&NewMessage {
                sender,
                conversation,
                client_msg_id: &request.client_msg_id,
                body: &request.body,
            })
            .map_err(write_status)?;
        // A retry is pushed again: the first attempt may have stored the message and died
        // before pushing it. Clients drop a pushed sequence they have already seen. Only
        // a recent one, though: an old message's recipients have long had it (or will at
        // their next Sync), and pushing it again on every resend would let a sender spam
        // a group with it, or show it to members who joined after it was sent.
        let recent = crate::store::now_ms().saturating_sub(sent.message.sent_at_ms) <= REPUSH_WINDOW_MS;
        if !sent.duplicate || recent {
            self.fan_out(&sent.message);
        }
        Ok(api::SendMessageResponse { message: Some(message(sent.message)), duplicate: sent.duplicate })
    }

    fn history(&self, _ctx: &Context, request: api::HistoryCall) -> Result<api::HistoryResponse, Status> {
        let user = caller(request.user_id)?;
        let request = request.request.unwrap_or_default();
        let anchor = match request.anchor {
            Some(api::history_request::Anchor::BeforeSeq(seq)) => Anchor::Before(seq),
            Some(api::history_request::Anchor::AfterSeq(seq)) => Anchor::After(seq),
            None => Anchor::Latest,
        };
        let conversation = conversation_id(request.conversation)?;
        let page =
            self.store.history(user, conversation, anchor, request.limit as usize).map_err(store_status)?;
        Ok(api::HistoryResponse {
            messages: page.messages.into_iter().map(message).collect(),
            has_more: page.has_more,
        })
    }

    fn sync(&self, _ctx: &Context, request: api::SyncCall) -> Result<api::SyncResponse, Status> {
        let user = caller(request.user_id)?;
        let request = request.request.unwrap_or_default();
        let cursors = request
            .cursors
            .into_iter()
            .map(|c| Ok(Cursor { conversation: conversation_id(c.conversation)?, seq: c.seq }))
            .collect::<Result<Vec<_>, Status>>()?;
        let page = self.store.sync(user, &cursors, request.limit as usize).map_err(store_status)?;
        Ok(api::SyncResponse {
            messages: page.messages.into_iter().map(message).collect(),
            has_more: page.has_more,
        })
    }

    fn ack(&self, _ctx: &Context, request: api::AckCall) -> Result<api::AckResponse, Status> {
        let user = caller(request.user_id)?;
        let request = request.request.unwrap_or_default();
        let conversation = conversation_id(request.conversation)?;
        let read_seq = self.store.ack(user, conversation, request.seq).map_err(store_status)?;
        Ok(api::AckResponse { read_seq })
    }

    fn conversations(
        &self,
        _ctx: &Context,
        request: api::UserCall,
    ) -> Result<api::ConversationsResponse, Status> {
        let states = self.store.conversations(caller(request.user_id)?).map_err(store_status)?;
        Ok(api::ConversationsResponse { conversations: states.into_iter().map(state).collect() })
    }

    fn announce_presence(
        &self,
        _ctx: &Context,
        request: api::AnnouncePresenceCall,
    ) -> Result<api::AnnouncePresenceResponse, Status> {
        let user = caller(request.user_id)?;
        // Every "online" is announced after the user's lease is claimed (login), every
        // "offline" after it is gone (logout, a proxy stopping, a lapsed lease swept). One
        // that disagrees with the table was overtaken by a newer one (a new login, a
        // logout) and would leave friends with the wrong state: it is dropped.
        let holds_lease = self.presence.lookup(&[user]).map_err(presence_status)?.iter().any(Option::is_some);
        if holds_lease != request.online {
            return Ok(api::AnnouncePresenceResponse { notified: 0 });
        }
        let friends: Vec<UserId> =
            self.store.friends(user).map_err(store_status)?.into_iter().map(|f| f.id).collect();
        let grouped = by_proxy(self.presence.as_ref(), &friends).map_err(presence_status)?;
        let mut notified = 0u32;
        let change = api::PresenceChanged { user_id: user.0, online: request.online };
        for (proxy, user_ids) in grouped {
            notified = notified.saturating_add(u32::try_from(user_ids.len()).unwrap_or(u32::MAX));
            let Some(client) = self.proxies.client(&proxy) else { continue };
            let request = api::PresenceBatchRequest { user_ids, change: Some(change) };
            client.notify_presence_with(&request, move |outcome| {
                if let Err(error) = outcome {
                    tracing::debug!(%proxy, %error, "presence push failed");
                }
            });
        }
        Ok(api::AnnouncePresenceResponse { notified })
    }
}
