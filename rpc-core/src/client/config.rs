//! A channel's settings: [`Config`] and its defaults.

use std::time::Duration;

use super::{DisconnectHandler, PushHandler};
use crate::frame;

/// Settings of a channel. Start from `Config::default()`.
///
/// Later versions may add fields, each with a default, so build one as
/// `Config { connections: 2, ..Config::default() }`: a struct literal naming
/// every field stops compiling when one is added.
#[derive(Clone)]
pub struct Config {
    /// Longest wait for a TCP connection to open.
    pub connect_timeout: Duration,
    /// Deadline for calls that do not give one; `None` waits forever.
    pub default_timeout: Option<Duration>,
    /// Connections to open to the server; calls are spread over them in turn.
    pub connections: usize,
    /// Largest frame sent or accepted, in bytes after the length prefix. A
    /// larger request fails with `Error::FrameTooLarge` before it is sent.
    pub max_frame_size: usize,
    /// How often to ping the server; a connection that hears nothing for three
    /// intervals is declared dead. `Duration::ZERO` turns pings off.
    pub keepalive: Duration,
    /// Wait after the first failed connect; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest wait between connect attempts.
    pub backoff_max: Duration,
    /// Longest a connection may go with the server taking none of the bytes
    /// queued for it; the connection is then closed and its calls fail with
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost). Writes never
    /// block the caller: past 64 MiB queued for one connection they fail with
    /// [`Error::Backpressure`](crate::Error::Backpressure).
    pub write_timeout: Duration,
    /// Receives push frames from the server.
    pub on_push: Option<PushHandler>,
    /// Told when a connection is lost.
    pub on_disconnect: Option<DisconnectHandler>,
    /// Proves who we are to a server that requires it ([`crate::auth`]): the
    /// handshake runs on every connection as it opens, within
    /// `connect_timeout`, and a connection whose handshake fails (the server
    /// refused us, or could not prove itself) fails to connect. `None` runs no
    /// handshake.
    pub credential: Option<crate::auth::Credential>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: Duration::from_secs(3),
            default_timeout: Some(Duration::from_secs(30)),
            connections: 1,
            max_frame_size: frame::DEFAULT_MAX_FRAME,
            keepalive: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            on_push: None,
            on_disconnect: None,
            credential: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("connect_timeout", &self.connect_timeout)
            .field("default_timeout", &self.default_timeout)
            .field("connections", &self.connections)
            .field("max_frame_size", &self.max_frame_size)
            .field("keepalive", &self.keepalive)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}
