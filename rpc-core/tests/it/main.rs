//! rpc-core's integration tests: one binary, one module per area. Servers
//! bind 127.0.0.1:0; registry tests use the real ZooKeeper in `CHATROOM_ZK`
//! (default 127.0.0.1:2181) and private ones started by `scripts/services.sh`.

mod auth;
mod balance;
mod client_faults;
mod isolation;
mod lanes;
mod per_address;
mod proxy_header;
mod registry;
mod registry_access;
mod server_limits;
mod support;
