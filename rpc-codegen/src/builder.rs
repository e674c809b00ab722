//! From `.proto` files to Rust: protox parses, prost-build generates.

use std::io;
use std::path::{Path, PathBuf};

use prost_types::FileDescriptorSet;

use crate::names::{not_unary, streaming_kind};

/// Options for compiling `.proto` files. `Builder::new()` has the defaults
/// [`compile_protos`](crate::compile_protos) uses.
///
/// ```no_run
/// // build.rs
/// fn main() -> std::io::Result<()> {
///     let mut prost = rpc_codegen::prost_build::Config::new();
///     prost.bytes(["."]);
///     rpc_codegen::Builder::new()
///         .prost_config(prost)
///         .compile(&["proto/chat.proto"], &["proto"])
/// }
/// ```
#[derive(Debug)]
pub struct Builder {
    /// Where the `.rs` files go; `None` means `OUT_DIR`.
    out_dir: Option<PathBuf>,
    /// prost-build's own settings (type attributes, `bytes`, extern paths...).
    prost: prost_build::Config,
    /// Whether to tell Cargo to rerun the build script when a `.proto` changes.
    emit_rerun_if_changed: bool,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// Writes to `OUT_DIR` with prost-build's defaults and prints
    /// `cargo:rerun-if-changed` for every `.proto` file read.
    pub fn new() -> Builder {
        Builder { out_dir: None, prost: prost_build::Config::new(), emit_rerun_if_changed: true }
    }

    /// Writes the generated files to `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.out_dir = Some(dir.into());
        self
    }

    /// Starts from `config` instead of `prost_build::Config::new()`, to set
    /// prost options such as type attributes or extern paths. Its output
    /// directory and service generator are replaced by this builder's.
    pub fn prost_config(mut self, config: prost_build::Config) -> Builder {
        self.prost = config;
        self
    }

    /// Whether to print `cargo:rerun-if-changed=<file>` for every `.proto`
    /// file read, imports included (on by default). Turn it off outside build
    /// scripts or when the build script watches the files itself.
    pub fn emit_rerun_if_changed(mut self, enabled: bool) -> Builder {
        self.emit_rerun_if_changed = enabled;
        self
    }

    /// Parses `protos` and what they import (looked up under `includes`) and
    /// writes one `<package>.rs` per protobuf package: prost's messages plus a
    /// server trait, adapter and client per service.
    ///
    /// # Errors
    ///
    /// An [`io::Error`] of kind `InvalidInput` when a file does not parse, an
    /// import cannot be found, or a service has a streaming rpc; other kinds
    /// when no output directory is known or a file cannot be written.
    ///
    /// # Panics
    ///
    /// On rpc names that clash in Rust, as [`compile_protos`](crate::compile_protos) does.
    pub fn compile(self, protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> io::Result<()> {
        let mut compiler = protox::Compiler::new(includes).map_err(invalid_input)?;
        compiler.include_source_info(true).include_imports(true);
        compiler.open_files(protos).map_err(invalid_input)?;
        if self.emit_rerun_if_changed {
            for path in compiler.files().filter_map(|f| f.path()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        let files = compiler.file_descriptor_set();
        check_unary(&files)?;

        let mut prost = self.prost;
        if let Some(dir) = &self.out_dir {
            prost.out_dir(dir);
        }
        prost.service_generator(crate::service_generator());
        prost.compile_fds(files)
    }
}

/// Refuses streaming rpcs before prost-build runs, so the build fails with an
/// error naming the rpc rather than a panic.
fn check_unary(files: &FileDescriptorSet) -> io::Result<()> {
    for file in &files.file {
        for service in &file.service {
            let full_name = match file.package() {
                "" => service.name().to_owned(),
                package => format!("{package}.{}", service.name()),
            };
            for m in &service.method {
                if let Some(kind) = streaming_kind(m.client_streaming(), m.server_streaming()) {
                    let message = not_unary(&full_name, m.name(), kind, m.input_type(), m.output_type());
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
                }
            }
        }
    }
    Ok(())
}

/// protox's `Debug` is its readable form: `file.proto:3:9: expected ...`.
fn invalid_input(e: protox::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("rpc-codegen: {e:?}"))
}
