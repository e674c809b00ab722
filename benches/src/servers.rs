//! One echo server per system; `rpcbench serve SYSTEM ADDR` runs one of them.
//!
//! Every server does the same application work per call: decode the
//! [`EchoMessage`] and encode it again ([`echo`]); tonic and tarpc do it
//! through their codecs. Every server runs handlers on [`WORKERS`] threads
//! (or on the loop thread, for the inline and raw variants), so none gets
//! more of the two cores than another.

use std::net::SocketAddr;

use bytes::Bytes;
use prost::Message;

use crate::proto::EchoMessage;
use crate::System;

mod bare_pool;
mod mio_conn;
mod raw;
mod rpc_core;
pub mod tarpc;
mod tonic;

/// The service name the rpc-core framing carries.
pub const SERVICE: &str = "bench.Echo";
/// The method name the rpc-core framing carries.
pub const METHOD: &str = "Say";
/// Handler threads of the pooled servers and tokio workers of tonic and tarpc.
pub const WORKERS: usize = 2;

/// The application work of one call: decode the request, encode the reply.
///
/// The payload is not copied: it is a slice of `body`. A body that does not
/// decode is answered with an empty one, which the client counts as an error.
pub fn echo(body: Bytes) -> Bytes {
    match EchoMessage::decode(body) {
        Ok(msg) => Bytes::from(msg.encode_to_vec()),
        Err(_) => Bytes::new(),
    }
}

/// Runs `system`'s server on `addr` until the process ends, calling `ready`
/// with the bound address once it accepts connections.
///
/// # Errors
///
/// When the address cannot be bound or a thread or runtime cannot start.
pub fn serve(system: System, addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    match system {
        System::RpcCore | System::RpcCoreAsync => rpc_core::serve(addr, false, ready)?,
        System::RpcCoreInline => rpc_core::serve(addr, true, ready)?,
        System::Tonic => tonic::serve(addr, ready)?,
        System::Tarpc => tarpc::serve(addr, ready)?,
        System::BarePool => bare_pool::serve(addr, ready)?,
        System::Raw => raw::serve(addr, ready)?,
    }
    Ok(())
}

/// Starts `system`'s server on a thread of this process and returns its
/// address; for tests, where a server process would be overkill. The server
/// lives until the process ends.
///
/// # Panics
///
/// If the server cannot start.
pub fn spawn_in_process(system: System) -> SocketAddr {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        serve(system, addr, |a| tx.send(a).expect("test waits for the address")).expect("server starts");
    });
    rx.recv().expect("server reports its address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_returns_the_same_message() {
        let msg = EchoMessage { payload: Bytes::from(vec![7u8; 100]) };
        let reply = EchoMessage::decode(echo(Bytes::from(msg.encode_to_vec()))).unwrap();
        assert_eq!(reply, msg);
        assert!(echo(Bytes::from_static(&[0xff])).is_empty());
    }
}
