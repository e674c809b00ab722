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

    /// Ends every session and returns each user with their connection.
    pub fn unbind_all(&self) -> Vec<(UserId, Connection)> {
        let mut tables = self.lock();
        tables.by_connection.clear();
        tables.by_user.drain().collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    // `Connection` handles come only from a running server, so these tests run one.
    fn connections(n: usize) -> (rpc_core::server::Handle, Vec<Connection>, Vec<rpc_core::client::Channel>) {
        use std::sync::mpsc;

        use rpc_core::server::{Builder, Config, Context, Service};

        struct Grab(Mutex<mpsc::Sender<Connection>>);
        impl Service for Grab {
            fn name(&self) -> &str {
                "test.Grab"
            }
            fn call(
                &self,
                ctx: &Context,
                _method: &str,
                _body: bytes::Bytes,
            ) -> Result<bytes::Bytes, rpc_core::Status> {
                self.0.lock().unwrap().send(ctx.connection().clone()).unwrap();
                Ok(bytes::Bytes::new())
            }
        }
        let (tx, rx) = mpsc::channel();
        let server =
            Builder::new(Config::default()).service(Grab(Mutex::new(tx))).bind("127.0.0.1:0").unwrap();
        let mut channels = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..n {
            let channel =
                rpc_core::client::Channel::connect(server.local_addr(), rpc_core::client::Config::default())
                    .unwrap();
            channel.call_raw("test.Grab", "Grab", b"", None).unwrap();
            conns.push(rx.recv().unwrap());
            channels.push(channel);
        }
        (server, conns, channels)
    }

    #[test]
    fn a_second_connection_replaces_the_first_and_the_first_cannot_log_it_out() {
        let (_server, conns, _channels) = connections(2);
        let sessions = Sessions::default();
        let user = UserId(7);
        assert!(sessions.bind(user, conns[0].clone()).is_none());
        let old = sessions.bind(user, conns[1].clone()).expect("the first connection is replaced");
        assert_eq!(old.id(), conns[0].id());
        assert_eq!(sessions.unbind_connection(conns[0].id()), None, "the old connection has no session left");
        assert_eq!(sessions.user_of(conns[1].id()), Some(user));
        assert_eq!(sessions.unbind_connection(conns[1].id()), Some(user));
        assert!(sessions.is_empty());
    }

    #[test]
    fn unbinding_all_ends_every_session_both_ways() {
        let (_server, conns, _channels) = connections(2);
        let sessions = Sessions::default();
        sessions.bind(UserId(1), conns[0].clone());
        sessions.bind(UserId(2), conns[1].clone());
        let mut ended: Vec<(UserId, ConnectionId)> =
            sessions.unbind_all().into_iter().map(|(user, c)| (user, c.id())).collect();
        ended.sort_by_key(|(user, _)| user.0);
        assert_eq!(ended, [(UserId(1), conns[0].id()), (UserId(2), conns[1].id())]);
        assert!(sessions.is_empty());
        assert_eq!(sessions.user_of(conns[0].id()), None);
        assert_eq!(sessions.unbind_connection(conns[1].id()), None);
    }

    #[test]
    fn a_connection_logging_in_as_someone_else_drops_the_first_user() {
        let (_server, conns, _channels) = connections(1);
        let sessions = Sessions::default();
        sessions.bind(UserId(1), conns[0].clone());
        sessions.bind(UserId(2), conns[0].clone());
        assert!(sessions.connection_of(UserId(1)).is_none());
        assert_eq!(sessions.users(), [UserId(2)]);
        assert_eq!(sessions.unbind_user(UserId(2)).map(|c| c.id()), Some(conns[0].id()));
        assert_eq!(sessions.user_of(conns[0].id()), None);
    }
}
