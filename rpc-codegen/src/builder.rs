//! From `.proto` files to Rust: protox parses, prost-build generates.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use prost_types::FileDescriptorSet;

use crate::names::{not_unary, streaming_kind};

/// Where the server runs a method's handler, declared when the code is generated
/// ([`Builder::inline`], [`Builder::lane`], [`Builder::heavy`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Placement {
    /// On the server's worker threads (the default).
    #[default]
    Workers,
    /// On the event loop that read the call: cheap methods that never block.
    Inline,
    /// In the server's lane of this name: threads and a bounded queue of its own.
    Lane(String),
}

impl Placement {
    /// How a message names the placement: "inline", "heavy", `in the lane "name"`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Placement::Workers => "on the workers".to_owned(),
            Placement::Inline => "inline".to_owned(),
            Placement::Lane(lane) if lane == HEAVY => "heavy".to_owned(),
            Placement::Lane(lane) => format!("in the lane \"{lane}\""),
        }
    }
}

/// The lane [`Builder::heavy`] declares methods in, as rpc-core's server names it.
pub(crate) const HEAVY: &str = "heavy";

/// Declared placements by `package.Service/Method`.
pub(crate) type Placements = BTreeMap<String, Placement>;

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
    /// Methods declared inline or in a lane, checked against the files in `compile`.
    placements: Placements,
    /// What was wrong with the declarations (a method declared twice, a lane
    /// name that is no name), reported by `compile`.
    mistakes: Vec<String>,
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
        Builder {
            out_dir: None,
            prost: prost_build::Config::new(),
            emit_rerun_if_changed: true,
            placements: Placements::new(),
            mistakes: Vec::new(),
        }
    }

    /// Declares that the server runs `method` (`package.Service/Method`, as in
    /// `"echo.Echo/Stats"`) on the event loop that read the call instead of
    /// handing it to a worker: for methods so cheap (reading a counter) that the
    /// hand-off would cost more than the call. An inline method must never
    /// block; while it runs, every connection on its loop waits.
    ///
    /// The generated trait's `runs_inline` answers `true` for the declared
    /// methods and the generated docs of each method say where it runs.
    /// [`compile`](Self::compile) fails when the name is not an rpc of the
    /// compiled files, so a typo is a build error rather than a method quietly
    /// left on the workers.
    pub fn inline(self, method: impl Into<String>) -> Builder {
        self.declare(method.into(), Placement::Inline)
    }

    /// Declares that the server runs `method` (`package.Service/Method`) in its
    /// lane named `lane`: a few threads of their own with a bounded queue
    /// (`rpc_core::server::Config::lane` sizes it), for calls that must not take
    /// the workers from everything else, nor wait behind the calls of another
    /// lane. A burst of the lane's calls waits there, refused with
    /// `ResourceExhausted` past the lane's bounds.
    ///
    /// The generated trait's `lanes` lists the declared methods with their lane,
    /// and the generated docs of each method say where it runs. Checked like
    /// [`inline`](Self::inline); a method declared in two places fails the build,
    /// and so does a lane name other than letters, digits, `-` and `_`.
    pub fn lane(self, method: impl Into<String>, lane: impl Into<String>) -> Builder {
        let lane = lane.into();
        let method = method.into();
        if lane.is_empty() || !lane.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            let mut builder = self;
            builder.mistakes.push(format!(
                "rpc-codegen: `{method}` is declared in the lane \"{lane}\"; a lane's name is letters, \
                 digits, `-` and `_`"
            ));
            return builder;
        }
        self.declare(method, Placement::Lane(lane))
    }

    /// Declares that the server runs `method` (`package.Service/Method`) on its
    /// heavy lane, the lane named `"heavy"` that `rpc_core::server::Config`'s
    /// `heavy_workers` and `max_heavy_queued` size: for expensive calls (a
    /// password hash). The same as [`lane`](Self::lane)`(method, "heavy")`.
    pub fn heavy(self, method: impl Into<String>) -> Builder {
        self.lane(method, HEAVY)
    }

    fn declare(mut self, method: String, placement: Placement) -> Builder {
        match self.placements.get(&method) {
            Some(old) if *old != placement => {
                let (old, new) = (old.describe(), placement.describe());
                self.mistakes
                    .push(format!("rpc-codegen: `{method}` is declared both {old} and {new}; pick one"));
            }
            _ => {
                self.placements.insert(method, placement);
            }
        }
        self
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
        if let Some(mistake) = self.mistakes.first() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, mistake.clone()));
        }
        check_placements(&files, &self.placements)?;

        let mut prost = self.prost;
        if let Some(dir) = &self.out_dir {
            prost.out_dir(dir);
        }
        prost.service_generator(Box::new(crate::generator::Generator::new(self.placements)));
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

/// Refuses a method declared inline or in a lane that is no rpc of `files`, naming it
/// and what the service does have.
fn check_placements(files: &FileDescriptorSet, placements: &Placements) -> io::Result<()> {
    let mut services: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for file in &files.file {
        for service in &file.service {
            let full_name = match file.package() {
                "" => service.name().to_owned(),
                package => format!("{package}.{}", service.name()),
            };
            services.insert(full_name, service.method.iter().map(|m| m.name()).collect());
        }
    }
    for (declared, placement) in placements {
        let how = placement.describe();
        let found = declared
            .split_once('/')
            .and_then(|(service, method)| services.get(service).map(|methods| (service, method, methods)));
        let message = match found {
            Some((_, method, methods)) if methods.contains(&method) => continue,
            Some((service, _, methods)) => format!(
                "rpc-codegen: `{declared}` is declared {how}, but {service} has no such rpc; it has {}",
                methods.join(", ")
            ),
            None => format!(
                "rpc-codegen: `{declared}` is declared {how}, but no compiled service is named like \
                 its part before the `/` (write `package.Service/Method`); the services are {}",
                services.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    Ok(())
}

/// protox's `Debug` is its readable form: `file.proto:3:9: expected ...`.
fn invalid_input(e: protox::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("rpc-codegen: {e:?}"))
}
