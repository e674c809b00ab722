//! rpc-core serving the echo, from the pool or inline on the loop.

use std::net::SocketAddr;

use bytes::Bytes;
use rpc_core::codegen::{decode_request, encode_reply, unimplemented};
use rpc_core::server::{Builder, Config, Context, Service};
use rpc_core::Status;

use super::{METHOD, SERVICE, WORKERS};
use crate::proto::EchoMessage;

/// The echo, written the way `rpc-codegen`'s adapters are: decode with
/// `decode_request`, encode with `encode_reply`.
struct Echo {
    /// Whether to tell the server the method is cheap enough for the loop.
    inline: bool,
}

impl Service for Echo {
    fn name(&self) -> &str {
        SERVICE
    }

    fn call(&self, _ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        if method != METHOD {
            return Err(unimplemented(SERVICE, method));
        }
        let msg: EchoMessage = decode_request(method, body)?;
        Ok(encode_reply(&msg))
    }

    fn runs_inline(&self, _method: &str) -> bool {
        self.inline
    }
}

/// Serves until the process ends.
pub(super) fn serve(
    addr: SocketAddr,
    inline: bool,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), rpc_core::Error> {
    let config = Config { workers: WORKERS, event_loops: 1, ..Config::default() };
    let server = Builder::new(config).service(Echo { inline }).bind(addr)?;
    ready(server.local_addr());
    server.wait();
    Ok(())
}
