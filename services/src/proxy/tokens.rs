//! The session token each connection's session was opened or resumed with, so that
//! `Logout` can revoke it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rpc_core::server::ConnectionId;

/// Session tokens by connection. At most one per connection, dropped when the connection
/// closes, so it holds no more than the server's connections.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    /// The token of each connection that opened a session.
    by_connection: Mutex<HashMap<ConnectionId, String>>,
}

impl Tokens {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnectionId, String>> {
        // Every change is one map operation: a panic cannot leave it half done.
        self.by_connection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the token of the session opened on `connection`, replacing any earlier.
    pub(super) fn set(&self, connection: ConnectionId, token: String) {
        self.lock().insert(connection, token);
    }

    /// The token of the session on `connection`.
    pub(super) fn get(&self, connection: ConnectionId) -> Option<String> {
        self.lock().get(&connection).cloned()
    }

    /// Forgets `connection`'s token (it logged out or closed).
    pub(super) fn remove(&self, connection: ConnectionId) {
        self.lock().remove(&connection);
    }
}
