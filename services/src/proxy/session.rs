//! The proxy's session table: which connection belongs to which user, both ways.
//!
//! One session per user: binding a user to a new connection unbinds the old one and
//! hands it back so the caller can kick it. A connection that closes after being
//! replaced finds nothing to unbind, so it cannot log out the session that replaced it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use rpc_core::server::{Connection, ConnectionId};

use crate::ids::UserId;

/// The sessions of one proxy; shared by its worker threads.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Both directions under one lock, so they never disagree.
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    /// The user logged in on each connection.
    by_connection: HashMap<ConnectionId, UserId>,
    /// Each logged-in user's connection, to push to.
    by_user: HashMap<UserId, Connection>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user logged in on `connection`, if any.
    pub fn user_of(&self, connection: ConnectionId) -> Option<UserId> {
        self.lock().by_connection.get(&connection).copied()
    }

    /// The connection `user` is logged in on, if any.
    pub fn connection_of(&self, user: UserId) -> Option<Connection> {
        self.lock().by_user.get(&user).cloned()
    }

    /// Every logged-in user.
    pub fn users(&self) -> Vec<UserId> {
        self.lock().by_user.keys().copied().collect()
    }

    /// Logs `user` in on `connection` and returns the connection `user` was logged in
    /// on before, if it was another one. Whoever was logged in on `connection` is
    /// unbound first (the caller logs them out before logging in someone new).
    pub fn bind(&self, user: UserId, connection: Connection) -> Option<Connection> {
        let mut tables = self.lock();
        if let Some(previous_user) = tables.by_connection.insert(connection.id(), user) {
            if previous_user != user {
                tables.by_user.remove(&previous_user);
            }
        }
        let old = tables.by_user.insert(user, connection.clone())?;
        if old.id() == connection.id() {
            return None;
        }
        tables.by_connection.remove(&old.id());
        Some(old)
    }

    /// Ends the session on `connection` and returns its user, if it had one.
    pub fn unbind_connection(&self, connection: ConnectionId) -> Option<UserId> {
        let mut tables = self.lock();
        let user = tables.by_connection.remove(&connection)?;
        if tables.by_user.get(&user).is_some_and(|c| c.id() == connection) {
            tables.by_user.remove(&user);
        }
        Some(user)
    }

    /// Ends `user`'s session and returns its connection, if it had one.
    pub fn unbind_user(&self, user: UserId) -> Option<Connection> {
        let mut tables = self.lock();
        let connection = tables.by_user.remove(&user)?;
        tables.by_connection.remove(&connection.id());
        Some(connection)
    }

    /// How many users are logged in.
    pub fn len(&self) -> usize {
        self.lock().by_user.len()
    }

    /// Whether nobody is logged in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
