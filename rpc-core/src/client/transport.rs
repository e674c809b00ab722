//! [`Transport`]: the seam generated client stubs call through, and its
//! implementation for a [`Channel`] to one server.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::{Callback, Channel, ReplyFuture};
use crate::Error;

/// Something generated client stubs can call through: a [`Channel`] to one
/// server, or a load-balanced set of them ([`crate::balance::Balanced`]).
pub trait Transport: Send + Sync {
    /// Calls `service.method` with `request` and waits for the encoded reply.
    ///
    /// # Errors
    ///
    /// Whatever the call met: [`Error::Status`] from the server,
    /// [`Error::Timeout`], [`Error::Connect`], [`Error::ConnectionLost`], ...
    fn call<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error>;

    /// Starts a call and returns at once; `callback` gets the outcome on a
    /// client event-loop thread, or on this thread, before `call_with` returns, if the
    /// call could not be sent (so a callback that starts the next call may
    /// recur on one stack while sends fail: hand the next call off, or use
    /// [`call_future`](Self::call_future)).
    fn call_with<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
        callback: Callback,
    );

    /// Starts a call and returns a future of its encoded reply, for async code;
    /// see [`ReplyFuture`]. The call is sent at once.
    fn call_future<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
    ) -> ReplyFuture<Bytes> {
        let (future, callback) = ReplyFuture::new(Ok);
        self.call_with(service, method, request, timeout, callback);
        future
    }
}

impl Transport for Channel {
    fn call<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        self.call_blocking(service, method, timeout, request.encoded_len(), |b| request.encode_raw(b))
    }

    fn call_with<M: Message>(
        &self,
        service: &str,
        method: &str,
        request: &M,
        timeout: Option<Duration>,
        callback: Callback,
    ) {
        self.call_async(service, method, timeout, request.encoded_len(), |b| request.encode_raw(b), callback)
    }
}
