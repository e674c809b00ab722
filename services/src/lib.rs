//! The ChatRoom chat cluster's foundation: its API, its durable state, its presence
//! table and the limits on what clients send.
//!
//! * `proto/chat.proto` is the API: the `Gateway` a client calls on a proxy, the
//!   `UserService` and `ChatService` a proxy calls, the `Delivery` service each proxy
//!   exposes to the chat service, and the pushes a client receives.
//! * [`store`] holds users, friends, groups, messages and read cursors behind the
//!   [`Store`] trait, in SQLite ([`store::Sqlite`], standalone) or MySQL/MariaDB
//!   ([`store::MySql`], cluster). Message sequence numbers are assigned there.
//! * [`presence`] maps each online user to the proxy holding their session, under a
//!   lease, behind the [`Presence`] trait, in memory ([`presence::Memory`]) or Redis
//!   ([`presence::Redis`]).
//! * [`auth`] hashes and verifies passwords (argon2id); [`limits`] checks names,
//!   passwords, message bodies and group names.
//! * [`ConversationId`], [`UserId`] and [`GroupId`] name things across all of these.
//!
//! Nothing here owns a thread or a socket: stores and presence tables are called from the
//! services' worker threads and are `Send + Sync`; the MySQL and Redis implementations
//! keep their own connection pools.

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
mod served;
pub mod standalone;
pub mod store;
pub mod user_service;

pub use conversation::{ConversationId, ParseConversationError};
pub use ids::{GroupId, UserId};
pub use presence::Presence;
pub use served::{serve, Served, Traced};
pub use store::Store;
