//! What generated service code imports, so it names only `rpc_core::codegen::*`.

pub use crate::client::{Callback, Channel, ReplyFuture, Transport};
pub use crate::server::{Context, Service};
pub use crate::{Code, Error, Status};
pub use bytes::Bytes;
pub use prost::Message;
pub use std::time::Duration;

/// Decodes a request body, answering `InvalidArgument` when it is not a valid `M`.
///
/// # Errors
///
/// [`Code::InvalidArgument`] naming the method and the decode failure.
pub fn decode_request<M: Message + Default>(method: &str, body: Bytes) -> Result<M, Status> {
    M::decode(body).map_err(|e| Status::invalid_argument(format!("cannot decode {method} request: {e}")))
}

/// Encodes a reply message into a body.
pub fn encode_reply<M: Message>(reply: &M) -> Bytes {
    Bytes::from(reply.encode_to_vec())
}

/// Decodes a response body into `M`.
///
/// # Errors
///
/// [`Error::Decode`] when the server's reply is not a valid `M`.
pub fn decode_response<M: Message + Default>(body: Bytes) -> Result<M, Error> {
    Ok(M::decode(body)?)
}

/// The answer to a method name the service does not have.
pub fn unimplemented(service: &str, method: &str) -> Status {
    Status::unimplemented(format!("service '{service}' has no method '{method}'"))
}

/// Includes the code generated for a `.proto` package from `OUT_DIR`.
///
/// ```ignore
/// mod echo {
///     rpc_core::include_proto!("echo");
/// }
/// ```
#[macro_export]
macro_rules! include_proto {
    ($package:tt) => {
        include!(concat!(env!("OUT_DIR"), concat!("/", $package, ".rs")));
    };
}
