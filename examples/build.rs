//! Generates the echo service's messages, server trait, adapter and client. `Stats`
//! reads one counter, cheaper to run on the event loop than to hand to a worker and
//! back, so it is declared inline here (a typo in the name fails the build).

fn main() -> std::io::Result<()> {
    rpc_codegen::Builder::new().inline("echo.Echo/Stats").compile(&["proto/echo.proto"], &["proto"])
}
