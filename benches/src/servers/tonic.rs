//! tonic serving the echo on a two-worker tokio runtime.

use std::net::SocketAddr;

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::WORKERS;
use crate::proto::echo_server::{Echo, EchoServer};
use crate::proto::EchoMessage;

/// Answers with the request; tonic's codec decodes and encodes it.
struct TonicEcho;

#[tonic::async_trait]
impl Echo for TonicEcho {
    async fn say(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// Serves until the process ends.
pub(super) fn serve(addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(WORKERS).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        ready(listener.local_addr()?);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder().add_service(EchoServer::new(TonicEcho)).serve_with_incoming(incoming).await?;
        Ok(())
    })
}
