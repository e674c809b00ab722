//! Generates the workload message and tonic's echo service from `proto/echo.proto`.
//!
//! `protox` parses the file in Rust, so no system `protoc` is needed. The
//! message gets a `bytes::Bytes` field (no copy when decoding from a `Bytes`
//! buffer) and serde derives, so tarpc can carry the very same type.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["proto/echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".bench.EchoMessage.payload")
        .type_attribute(".bench.EchoMessage", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;
    Ok(())
}
