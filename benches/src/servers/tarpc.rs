//! tarpc serving the echo over TCP with bincode, on a two-worker tokio runtime.
//!
//! Sockets are accepted here rather than by `tarpc::serde_transport::tcp`, so
//! that `TCP_NODELAY` can be set on them as every other system does;
//! otherwise Nagle's algorithm would add delayed-ACK waits to tarpc's latency.

use std::net::SocketAddr;

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::WORKERS;
use crate::proto::EchoMessage;

/// The echo service as tarpc declares it; the same message type as the others.
#[tarpc::service]
pub trait EchoRpc {
    /// Returns the request as it came.
    async fn say(msg: EchoMessage) -> EchoMessage;
}

/// Answers with the request; tarpc's serde transport decodes and encodes it.
#[derive(Clone)]
struct TarpcEcho;

impl EchoRpc for TarpcEcho {
    async fn say(self, _: tarpc::context::Context, msg: EchoMessage) -> EchoMessage {
        msg
    }
}

/// Wraps a connected socket in tarpc's length-delimited bincode transport.
pub fn transport<Item, SinkItem>(
    stream: tokio::net::TcpStream,
) -> tarpc::serde_transport::Transport<tokio::net::TcpStream, Item, SinkItem, Bincode<Item, SinkItem>>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    tarpc::serde_transport::new(Framed::new(stream, LengthDelimitedCodec::new()), Bincode::default())
}

/// Serves until the process ends.
pub(super) fn serve(addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(WORKERS).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        ready(listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let channel = BaseChannel::with_defaults(transport(stream));
            // Each request runs as a task of its own, as tarpc's examples do.
            tokio::spawn(channel.execute(TarpcEcho.serve()).for_each(|call| async {
                tokio::spawn(call);
            }));
        }
    })
}
