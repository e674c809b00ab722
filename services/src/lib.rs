//! The ChatRoom chat cluster: its API, the three services, and what they stand on.
//!
//! * `proto/chat.proto` is the API, generated into [`api`]: the `Gateway` a client calls
//!   on a proxy, the `UserService` and `ChatService` a proxy calls, the `Delivery`
//!   service each proxy exposes to the chat service, and the pushes a client receives.
//! * [`proxy`] is the gateway: the session table (connection <-> user), presence leases
//!   and their renewal thread, forwarding to the services through load-balanced stubs,
//!   and `Delivery` (pushes to its clients, kicks).
//! * [`user_service`] (accounts, friends, groups) and [`chat_service`] (messages, fan-out
//!   to proxies, history, sync, read cursors) are stateless over a [`Store`];
//!   [`proxies`] finds each proxy's `Delivery` by its instance id.
//! * [`serve`] runs a service on its own listener and registers it; [`standalone`] runs
//!   the three in one process on loopback with embedded backends. The `chatroom` binary
//!   (the `chatroom` crate, beside this one) starts either, and holds the tools that use
//!   the system from outside: the command-line client, the demo and the local cluster
//!   launcher.
//! * [`store`] holds users, friends, groups, messages and read cursors behind the
//!   [`Store`] trait, in SQLite ([`store::Sqlite`], standalone) or MySQL/MariaDB
//!   ([`store::MySql`], cluster), both keeping the rules written once in
//!   `store/rules.rs`. Message sequence numbers are assigned there.
//! * [`presence`] maps each online user to the proxy holding their session, under a
//!   lease, behind the [`Presence`] trait, in memory ([`presence::Memory`]) or Redis
//!   ([`presence::Redis`]).
//! * [`secret`] is the cluster secret: the user service, the chat service and each
//!   proxy's `Delivery` listener serve only peers that prove it in the connection's
//!   handshake, and every channel between the processes proves it.
//! * [`auth`] hashes and verifies passwords (argon2id); [`limits`] checks names,
//!   passwords, message bodies and group names; [`throttle`] limits login and
//!   registration attempts per account and per source address, in memory or Redis;
//!   [`session_token`] makes the tokens that resume a session without the password.
//! * [`ConversationId`], [`UserId`] and [`GroupId`] name things across all of these.
//!
//! Threads and sockets belong to rpc-core's servers and channels: the services' methods
//! run on server worker threads (password hashes on the user service's heavy lane, the
//! gateway's logins and resumes on two lanes of the proxy's); the proxy adds one
//! lease-renewal thread; the MySQL store adds its group-commit threads
//! (`mysql-commit-N`, `store/mysql/batch.rs`). Stores and presence tables are `Send + Sync`; the MySQL and Redis
//! implementations keep their own connection pools.

pub mod api;
pub mod auth;
pub mod chat_service;
mod conversation;
mod convert;
mod ids;
pub mod limits;
pub mod presence;
pub mod proxies;
pub mod proxy;
mod redis_pool;
pub mod secret;
mod served;
pub mod session_token;
pub mod standalone;
pub mod store;
pub mod throttle;
pub mod user_service;

/// Worker threads per server of the chat system's processes. The handlers mostly wait on
/// the store, presence and other services rather than on a core, so a few workers per core
/// would leave the database idle while every worker waits.
pub const SERVER_WORKERS: usize = 16;

pub use conversation::{ConversationId, ParseConversationError};
pub use ids::{GroupId, UserId};
pub use presence::Presence;
pub use served::{serve, Served, Traced};
pub use store::Store;
