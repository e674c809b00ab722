//! Generates rpc-core services from `.proto` files, from a `build.rs`.
//!
//! For every `service` in the compiled files, the package's generated file
//! gets, next to prost's messages, one module `<service>_rpc` holding:
//!
//! - a server trait named after the service (the skeleton you implement),
//!   one method per rpc: `fn say(&self, ctx: &Context, request: EchoRequest)
//!   -> Result<EchoReply, Status>`;
//! - `<Service>Server<T>`, the adapter that serves such an implementation as an
//!   `rpc_core::server::Service`: it dispatches on the method name, decodes
//!   the request, calls the trait and encodes the reply;
//! - `<Service>Client<T = Channel>`, the typed stub: a blocking method per rpc,
//!   a `<rpc>_with` variant that takes a callback and a `<rpc>_async` variant
//!   that returns a future (any executor; no thread per call);
//! - `SERVICE_NAME` and a `methods` module with one constant per rpc name, and `ALL`
//!   listing them.
//!
//! The trait, adapter and client are re-exported at the package level (unless
//! a message of the package already has that name), so a `build.rs` like
//!
//! ```no_run
//! // build.rs
//! fn main() -> std::io::Result<()> {
//!     rpc_codegen::compile_protos(&["proto/echo.proto"], &["proto"])
//! }
//! ```
//!
//! and a `rpc_core::include_proto!("echo")` inside `mod echo` give you
//! `echo::Echo`, `echo::EchoServer` and `echo::EchoClient`. Only unary rpcs
//! are supported; a streaming rpc fails the build with a message naming it.
//!
//! Where things live:
//!
//! - [`Builder`] (in `builder.rs`): parses `.proto` files with protox (no
//!   system `protoc`), runs prost-build with the service generator, writes to
//!   `OUT_DIR`.
//! - `generator.rs`: the prost-build [`ServiceGenerator`] that turns one
//!   service into one module, and the package-level re-exports.
//! - `server.rs` and `client.rs`: one small function per generated item.
//! - `names.rs`: identifiers, type paths and doc comments taken from the
//!   descriptor.
//!
//! Generated code names only `rpc_core::codegen::*`, so the crate that
//! includes it depends on `rpc-core` and `prost` and nothing else.

mod builder;
mod client;
mod generator;
mod names;
mod server;

use std::path::Path;

pub use builder::Builder;
pub use prost_build;
pub use prost_build::ServiceGenerator;

/// Compiles `protos` (found under `includes`) into Rust in `OUT_DIR`, with
/// rpc-core servers and clients for their services.
///
/// The same as `Builder::new().compile(protos, includes)`; use [`Builder`] to
/// pick another output directory or to configure prost.
///
/// # Errors
///
/// An [`std::io::Error`] of kind `InvalidInput` when a file does not parse,
/// an import cannot be found, or a service has a streaming rpc; other kinds
/// when `OUT_DIR` is not set or the output cannot be written.
///
/// # Panics
///
/// When two rpcs of a service would get the same Rust method name (`GetUser`
/// and `get_user`), an rpc would take the name of a method every generated
/// client or trait has (`New`, `WithTimeout`, `Timeout`, `Transport`,
/// `RunsInline`, `Lanes`), or a service is named like an item of `rpc_core::codegen`
/// (`Service`, `Status`, `Error`, ...); the message names the culprit.
pub fn compile_protos(protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> std::io::Result<()> {
    Builder::new().compile(protos, includes)
}

/// The service generator on its own, for a `build.rs` that drives prost-build
/// (or `protoc`) itself:
///
/// ```no_run
/// let mut config = rpc_codegen::prost_build::Config::new();
/// config.service_generator(rpc_codegen::service_generator());
/// config.compile_protos(&["proto/echo.proto"], &["proto"])?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
///
/// The generator panics, failing the build, on a client- or server-streaming
/// rpc (rpc-core calls are unary) and on the name clashes
/// [`compile_protos`] panics on.
pub fn service_generator() -> Box<dyn ServiceGenerator> {
    Box::new(generator::Generator::default())
}
