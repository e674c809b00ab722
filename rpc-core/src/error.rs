//! The crate's local error: what went wrong on this side of the wire.

use std::io;
use std::net::SocketAddr;

use crate::frame::FrameError;
use crate::status::{Code, Outcome, Status};

/// Everything that can go wrong in a call or while serving, with its cause kept.
///
/// A failure the server reported arrives as [`Error::Status`]; every other
/// variant happened locally or on the way. [`Error::outcome`] says whether the
/// call ran, which decides whether it may be sent again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a non-OK status; [`Status::outcome`] says
    /// whether the call ran.
    #[error("server returned {0}")]
    Status(Status),
    /// Opening a connection failed (refused, unreachable, timed out).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// An established connection broke (reset, closed, read or write error).
    /// A call that was in flight may have run: the outcome is unknown.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The peer.
        addr: SocketAddr,
        /// What happened, e.g. "reset by peer" or "server is shutting down".
        reason: String,
    },
    /// The server is known not to have run the call (it shut down before
    /// reading it), so it is safe to send it elsewhere.
    #[error("{addr} did not run the call: {reason}")]
    NotRun {
        /// The server.
        addr: SocketAddr,
        /// Why it did not.
        reason: String,
    },
    /// The call's deadline passed before its response arrived. The outcome is
    /// unknown: the server may still run it (a deadline travels with the call,
    /// but a server that was stopped or slow to read only learns of it late).
    /// Retry only with an idempotency key.
    #[error("call {service}/{method} timed out after {elapsed_ms} ms (outcome unknown)")]
    Timeout {
        /// The service called.
        service: String,
        /// The method called.
        method: String,
        /// How long the caller waited.
        elapsed_ms: u64,
    },
    /// A frame was larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Size of the frame.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The response body was not the protobuf message expected.
    #[error("cannot decode response: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A service or method name longer than the 255 bytes a frame allows.
    #[error("name '{name}' is longer than 255 bytes")]
    InvalidName {
        /// The offending name.
        name: String,
    },
    /// Too many bytes are queued to a connection that is not reading.
    #[error("connection is not keeping up: {0}")]
    Backpressure(String),
    /// The connection or server was closed.
    #[error("closed: {0}")]
    Closed(String),
    /// Discovery found no instance of the service.
    #[error("no instance of service '{service}' is available")]
    NoInstances {
        /// The service looked up.
        service: String,
    },
    /// The registry (e.g. ZooKeeper) failed.
    #[error("registry: {0}")]
    Registry(String),
    /// Binding or configuring a socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A blocking call made from a callback or push handler, which run on the
    /// client's event-loop thread: it would wait for that thread, so it fails at once.
    #[error("a blocking call from a callback or push handler would wait on itself; use the callback form")]
    BlockingOnReader,
}

impl Error {
    /// The status code that best describes this error, for passing it on.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(s) => s.code,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Connect { .. }
            | Error::ConnectionLost { .. }
            | Error::Closed(_)
            | Error::NotRun { .. }
            | Error::NoInstances { .. }
            | Error::Registry(_) => Code::Unavailable,
            Error::FrameTooLarge { .. } | Error::Backpressure(_) => Code::ResourceExhausted,
            Error::InvalidName { .. } => Code::InvalidArgument,
            Error::BlockingOnReader => Code::FailedPrecondition,
            Error::Protocol(_) | Error::Decode(_) | Error::Io(_) => Code::Internal,
        }
    }

    /// Whether the call certainly never ran on a server, so sending it again
    /// elsewhere cannot run it twice: its [`Error::outcome`] is
    /// [`Outcome::NotRun`]. A status from a handler, even `Unavailable`, does
    /// not qualify unless it says so: the handler may have done part of its work.
    /// Errors in the call itself (too large, a bad name, a blocking call on a
    /// reader) never ran either, but would fail the same way anywhere.
    pub fn is_retryable_elsewhere(&self) -> bool {
        let same_anywhere =
            matches!(self, Error::FrameTooLarge { .. } | Error::InvalidName { .. } | Error::BlockingOnReader);
        self.outcome() == Outcome::NotRun && !same_anywhere
    }

    /// Whether the call ran, as far as this side can know.
    ///
    /// [`Outcome::NotRun`] only when it is proved: the server said so, the
    /// call was never sent (no connection, no instance, refused locally), or
    /// the server's last go-away said it answered every call it read.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Status(s) => s.outcome(),
            Error::Connect { .. }
            | Error::NotRun { .. }
            | Error::NoInstances { .. }
            | Error::Registry(_)
            | Error::FrameTooLarge { .. }
            | Error::InvalidName { .. }
            | Error::Backpressure(_)
            | Error::BlockingOnReader => Outcome::NotRun,
            Error::Decode(_) => Outcome::Ran,
            Error::ConnectionLost { .. }
            | Error::Timeout { .. }
            | Error::Closed(_)
            | Error::Protocol(_)
            | Error::Io(_) => Outcome::Unknown,
        }
    }

    /// Converts the error into a status to answer a caller with, keeping
    /// whether the call ran: a handler that passes on a timeout answers
    /// "outcome unknown", one that passes on a refusal answers "not run".
    pub fn into_status(self) -> Status {
        let outcome = self.outcome();
        match self {
            Error::Status(s) => s,
            other => Status::new(other.code(), other.to_string()).with_outcome(outcome),
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Status(s)
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Error {
        match e {
            FrameError::TooLarge { size, max } => Error::FrameTooLarge { size, max },
            FrameError::Invalid(why) => Error::Protocol(why.to_owned()),
        }
    }
}
