//! Generates the chat API's messages, server traits, adapters and client stubs from
//! `proto/chat.proto`.
//!
//! Register, VerifyLogin and ChangePassword compute argon2 hashes (19 MiB and tens of
//! milliseconds each at full cost): they run on the user service's heavy lane, so that a
//! burst of logins waits there, bounded, and never delays the cheap calls.

fn main() -> std::io::Result<()> {
    rpc_codegen::Builder::new()
        .heavy("chatroom.UserService/Register")
        .heavy("chatroom.UserService/VerifyLogin")
        .heavy("chatroom.UserService/ChangePassword")
        .compile(&["proto/chat.proto"], &["proto"])
}
