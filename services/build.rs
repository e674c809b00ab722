//! Generates the chat API's messages, server traits, adapters and client stubs from
//! `proto/chat.proto`.

fn main() -> std::io::Result<()> {
    rpc_codegen::compile_protos(&["proto/chat.proto"], &["proto"])
}
