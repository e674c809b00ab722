//! Generates the echo service's messages, server trait, adapter and client.

fn main() -> std::io::Result<()> {
    rpc_codegen::compile_protos(&["proto/echo.proto"], &["proto"])
}
