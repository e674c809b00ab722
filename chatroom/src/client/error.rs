//! Why a command failed, typed by cause; printed as an `error` event.

/// Why the client cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {server}: {source} (is a proxy or `chatroom standalone` running there?)")]
pub struct ConnectError {
    /// Where it tried.
    pub server: std::net::SocketAddr,
    /// What the connection attempt answered.
    #[source]
    pub source: rpc_core::Error,
}

/// Why one command failed. The client prints it as an `error` event (see
/// [`super::Event::Error`]) and reads the next line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The line does not parse (clap's message), or names a conversation wrongly.
    #[error("{message}")]
    Usage {
        /// The command words the line got through (`group invite`), or its first word.
        command: String,
        /// What is wrong and the command's usage.
        message: String,
    },
    /// The call failed: the system refused it, or it did not get through.
    #[error("{error}")]
    Rpc {
        /// The command whose call failed.
        command: &'static str,
        /// The call's error.
        error: rpc_core::Error,
    },
    /// The command needs a session and the client has none.
    #[error("log in first")]
    NotLoggedIn {
        /// The command that needs it.
        command: &'static str,
    },
    /// An input line was not UTF-8; it was skipped.
    #[error("the line is not UTF-8; it was skipped")]
    NotUtf8,
}

impl Error {
    /// A failed call of `command`.
    pub fn rpc(command: &'static str) -> impl FnOnce(rpc_core::Error) -> Error {
        move |error| Error::Rpc { command, error }
    }

    /// The command it is about, as the `error` event names it.
    pub fn command(&self) -> &str {
        match self {
            Error::Usage { command, .. } => command,
            Error::Rpc { command, .. } | Error::NotLoggedIn { command } => command,
            Error::NotUtf8 => "input",
        }
    }

    /// Its code, as the `error` event names it: `Usage`, or the status code of the call
    /// (`Unauthenticated`, `NotFound`, `Unavailable`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Usage { .. } => "Usage",
            Error::Rpc { error, .. } => error.code().as_str(),
            Error::NotLoggedIn { .. } => rpc_core::Code::Unauthenticated.as_str(),
            Error::NotUtf8 => rpc_core::Code::InvalidArgument.as_str(),
        }
    }

    /// Its message: the server's own text for a refused call.
    pub fn message(&self) -> String {
        match self {
            Error::Rpc { error: rpc_core::Error::Status(status), .. } => status.message.clone(),
            other => other.to_string(),
        }
    }

    /// The call's status code, for a failed call.
    pub fn rpc_code(&self) -> Option<rpc_core::Code> {
        match self {
            Error::Rpc { error, .. } => Some(error.code()),
            _ => None,
        }
    }
}
