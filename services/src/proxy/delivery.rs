//! `Delivery`, the service the chat service calls: pushes to this proxy's clients, and
//! kicks of sessions that a login on another proxy replaced.

use prost::Message as _;
use rpc_core::server::{Connection, Context};
use rpc_core::Status;

use super::{Proxy, PUSH_METHOD, PUSH_SERVICE};
use crate::api::{self, delivery_rpc};
use crate::convert::presence_status;
use crate::ids::UserId;

impl Proxy {
    /// Pushes `event` to each of `users` that has a session here, encoding it once; returns
    /// those who have none or whose push failed.
    fn push_to_all(&self, users: Vec<u64>, event: api::push::Event) -> Vec<u64> {
        let body = api::Push { event: Some(event) }.encode_to_vec();
        users
            .into_iter()
            .filter(|&user| match self.inner.sessions.connection_of(UserId(user)) {
                Some(connection) => !push_encoded(&connection, &body),
                None => true,
            })
            .collect()
    }
}

impl delivery_rpc::Delivery for Proxy {
    fn deliver_batch(
        &self,
        _ctx: &Context,
        request: api::DeliverBatchRequest,
    ) -> Result<api::DeliverBatchResponse, Status> {
        let message = request.message.ok_or_else(|| Status::invalid_argument("no message to deliver"))?;
        let not_connected = self.push_to_all(request.user_ids, api::push::Event::Message(message));
        Ok(api::DeliverBatchResponse { not_connected })
    }

    fn notify_presence(
        &self,
        _ctx: &Context,
        request: api::PresenceBatchRequest,
    ) -> Result<api::PresenceBatchResponse, Status> {
        let change =
            request.change.ok_or_else(|| Status::invalid_argument("no presence change to deliver"))?;
        let not_connected = self.push_to_all(request.user_ids, api::push::Event::Presence(change));
        Ok(api::PresenceBatchResponse { not_connected })
    }

    fn kick(&self, _ctx: &Context, request: api::KickRequest) -> Result<api::KickResponse, Status> {
        let user = UserId(request.user_id);
        let kicked = self
            .inner
            .sessions
            .kick_stale(user, &request.new_proxy_id, &request.reason)
            .map_err(presence_status)?;
        Ok(api::KickResponse { kicked })
    }
}

/// Tells a connection why its session ends, then closes it.
pub(super) fn kick(connection: &Connection, reason: &str) {
    let event = api::push::Event::Kicked(api::Kicked { reason: reason.to_owned() });
    push_encoded(connection, &api::Push { event: Some(event) }.encode_to_vec());
    connection.close();
}

/// Pushes an encoded `Push` to a connection; false when it could not be queued.
fn push_encoded(connection: &Connection, body: &[u8]) -> bool {
    match connection.push(PUSH_SERVICE, PUSH_METHOD, body) {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(connection = %connection.id(), %error, "push failed");
            false
        }
    }
}
