//! Integration tests of the `chatroom` binary: its processes and tools end to end
//! against ZooKeeper (`CHATROOM_ZK`, default `127.0.0.1:2181`), MariaDB, Redis and nginx
//! (`bash scripts/services.sh up` starts them; a test that cannot reach one fails and
//! says so).
//!
//! `client_cli` drives `chatroom client --json` and `chatroom demo` against
//! `chatroom standalone`; `cluster_up_down` runs `chatroom cluster up|status|down`;
//! `chat_cluster` runs the binary's processes, including graceful stops on SIGTERM;
//! `chat_nginx` runs the chat scenarios of `services` on a whole cluster behind nginx
//! (`chatroom cluster up`), and kills a chat service and a proxy with SIGKILL;
//! `chat_resume` kills a proxy with SIGKILL and resumes its users' sessions on the other
//! with their session tokens, counting the user service's password checks.
//! `redis_faults` restarts, and kills and empties, a Redis of its own under the
//! processes of `chat_cluster`; `send_outcomes` stops their only chat service with
//! SIGSTOP while messages are sent. `internal_ports` checks that the user service, the
//! chat service and a proxy's delivery port serve only callers with the cluster secret,
//! standalone and in a cluster, and `registry_access` that their ZooKeeper root admits
//! only callers with it; `throttle_e2e` the login and registration limits through
//! nginx and from a standalone system; `connection_limit` the limit on connections per
//! client address, standalone and through nginx.
//!
//! What drives a chat system in tests (`support`, `chat_client`, `chat_scenarios`,
//! `chat_groups`) is `services`' own test code, included here by path: one copy for both
//! crates.

#[path = "../../../services/tests/it/chat_client.rs"]
mod chat_client;
#[path = "../../../services/tests/it/chat_groups.rs"]
mod chat_groups;
#[macro_use]
#[path = "../../../services/tests/it/chat_scenarios.rs"]
mod chat_scenarios;
// Shared with the tests of `services`: each crate uses only some of it.
#[allow(dead_code)]
#[path = "../../../services/tests/it/support.rs"]
mod support;

mod chat_cluster;
mod chat_nginx;
mod chat_resume;
mod client_cli;
mod cluster_up_down;
mod connection_limit;
mod internal_ports;
mod redis_faults;
mod registry_access;
mod send_outcomes;
mod throttle_e2e;
