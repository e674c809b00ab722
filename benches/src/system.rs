//! The systems under test.

use std::fmt;

/// One server implementation (and the client that drives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum System {
    /// rpc-core; the handler runs on the worker pool.
    RpcCore,
    /// rpc-core; the service declares the handler cheap (`runs_inline`), so
    /// the event loop runs it.
    RpcCoreInline,
    /// rpc-core's server as in `RpcCore`, called through the client's futures
    /// (`Transport::call_future`) from a two-worker tokio runtime, the way an
    /// async caller would, instead of through callbacks.
    RpcCoreAsync,
    /// tonic (gRPC over HTTP/2) on a two-worker tokio runtime.
    Tonic,
    /// tarpc over TCP with bincode, on a two-worker tokio runtime.
    Tarpc,
    /// A mio loop handing frames to a two-thread crossbeam pool and back
    /// through a `Waker`: rpc-core's architecture with nothing else.
    BarePool,
    /// A single-threaded mio echo server: the practical limit of the box.
    Raw,
}

impl System {
    /// Every system, in the order they are interleaved.
    pub const ALL: [System; 7] = [
        System::RpcCore,
        System::RpcCoreInline,
        System::RpcCoreAsync,
        System::Tonic,
        System::Tarpc,
        System::BarePool,
        System::Raw,
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            System::RpcCore => "rpc-core",
            System::RpcCoreInline => "rpc-core-inline",
            System::RpcCoreAsync => "rpc-core-async",
            System::Tonic => "tonic",
            System::Tarpc => "tarpc",
            System::BarePool => "bare-pool",
            System::Raw => "raw",
        }
    }

    /// The system called `name`, if any.
    pub fn from_name(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the system speaks rpc-core's framing, so that rpc-core's
    /// client drives it.
    pub fn speaks_rpc_core_framing(self) -> bool {
        matches!(
            self,
            System::RpcCore | System::RpcCoreInline | System::RpcCoreAsync | System::BarePool | System::Raw
        )
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_round_trip_and_match_clap() {
        for s in System::ALL {
            assert_eq!(System::from_name(s.name()), Some(s));
            assert_eq!(s.to_possible_value().unwrap().get_name(), s.name());
        }
    }
}
