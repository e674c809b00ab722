//! Example services built on rpc-core.
//!
//! - [`echo`]: the code `build.rs` generates from `proto/echo.proto`: its
//!   messages, the [`echo::Echo`] server trait, the [`echo::EchoServer`]
//!   adapter and the [`echo::EchoClient`] stub.
//! - [`EchoHandler`]: an implementation of the trait, served by
//!   `src/bin/echo_server.rs` and called by `src/bin/echo_client.rs`.
//!
//! ```no_run
//! use examples::echo::{EchoClient, EchoRequest, EchoServer};
//! use rpc_core::client::{self, Channel};
//! use rpc_core::server::{self, Builder};
//!
//! # fn main() -> Result<(), rpc_core::Error> {
//! let server = Builder::new(server::Config::default())
//!     .service(EchoServer(examples::EchoHandler::default()))
//!     .bind("127.0.0.1:0")?;
//! let client = EchoClient::new(Channel::connect(server.local_addr(), client::Config::default())?);
//! let reply = client.say(&EchoRequest { text: "hi".into(), ..Default::default() })?;
//! assert_eq!(reply.text, "hi");
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use rpc_core::server::Context;
use rpc_core::Status;

use echo::{EchoReply, EchoRequest, StatsReply, StatsRequest};

pub mod echo {
    //! The `echo` package, generated from `proto/echo.proto` by
    //! `rpc_codegen::Builder` in `build.rs`.
    rpc_core::include_proto!("echo");
}

/// Answers `Say` with what it was sent and counts the calls.
#[derive(Debug, Default)]
pub struct EchoHandler {
    /// `Say` calls answered, for `Stats`.
    say_calls: AtomicU64,
}

impl echo::Echo for EchoHandler {
    fn say(&self, _ctx: &Context, request: EchoRequest) -> Result<EchoReply, Status> {
        self.say_calls.fetch_add(1, Ordering::Relaxed);
        Ok(EchoReply { payload: request.payload, text: request.text })
    }

    fn stats(&self, _ctx: &Context, _request: StatsRequest) -> Result<StatsReply, Status> {
        Ok(StatsReply { say_calls: self.say_calls.load(Ordering::Relaxed) })
    }
}
