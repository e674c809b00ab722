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
//! `chat_standalone` runs the chat scenarios end to end against the standalone system
//! (with the private-group scenarios of `chat_groups`);
//! `chat_two_proxies` runs the cross-proxy ones against two in-process proxies;
//! `chat_cluster` runs the `chatroom` binary's processes against MariaDB, Redis and
//! ZooKeeper (`CHATROOM_ZK`, default `127.0.0.1:2181`), including graceful stops on
//! SIGTERM; `chat_nginx` runs the same chat scenarios on a whole cluster behind nginx
//! (`chatroom cluster up`), and kills a chat service and a proxy with SIGKILL;
//! `chat_resume` kills a proxy with SIGKILL and resumes its users' sessions on the other
//! with their session tokens, counting the user service's password checks.
//! `redis_faults` restarts, and kills and empties, a Redis of its own under the
//! processes of `chat_cluster`; `send_outcomes` stops their only chat service with
//! SIGSTOP while messages are sent. `internal_ports` checks that the user service, the
//! chat service and a proxy's delivery port serve only callers with the cluster secret,
//! standalone and in a cluster.
//!
//! [`Store`]: services::Store
//! [`Presence`]: services::Presence

mod chat_cluster;
mod chat_groups;
#[macro_use]
mod chat_standalone;
mod chat_nginx;
mod chat_resume;
mod chat_two_proxies;
mod client_cli;
mod cluster_up_down;
mod internal_ports;
mod proto;
mod redis_faults;
mod send_outcomes;
mod support;

#[macro_use]
mod store_suite;
mod store_mysql;
mod store_sqlite;

#[macro_use]
mod presence_suite;
mod presence_memory;
mod presence_redis;

mod throttle_e2e;
#[macro_use]
mod throttle_suite;
