//! Integration tests of the services crate: one behavioural suite for every [`Store`]
//! and one for every [`Presence`], each run against the embedded implementation and the
//! real server (MariaDB, Redis).
//!
//! The real servers are found through `CHATROOM_MYSQL_URL` and `CHATROOM_REDIS_URL`
//! (defaults in [`support`]); `bash scripts/services.sh up` starts them. A test whose
//! server is unreachable fails and says so. Every MySQL test works in a database of its
//! own, created for it and dropped after it; every Redis test uses keys under a prefix of
//! its own.
//!
//! `chat_standalone` runs the chat scenarios (`chat_scenarios`, with the private-group
//! scenarios of `chat_groups`) end to end against the standalone system;
//! `chat_two_proxies` runs the cross-proxy ones against two in-process proxies.
//! The tests that run the `chatroom` binary's processes (a cluster on ZooKeeper, MariaDB
//! and Redis, behind nginx, killed and stopped with signals) are the `chatroom` crate's;
//! they share `support`, `chat_client`, `chat_scenarios` and `chat_groups` with these.
//!
//! [`Store`]: services::Store
//! [`Presence`]: services::Presence

mod chat_client;
#[macro_use]
mod chat_scenarios;
mod chat_groups;
mod chat_standalone;
mod chat_two_proxies;
mod proto;
// Shared by the tests of `services` and `chatroom`: each uses only some of it.
#[allow(dead_code)]
mod support;

#[macro_use]
mod store_suite;
mod store_mysql;
mod store_sqlite;

#[macro_use]
mod presence_suite;
mod presence_memory;
mod presence_redis;

#[macro_use]
mod throttle_suite;
