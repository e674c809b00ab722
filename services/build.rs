//! Generates the chat API's messages, server traits, adapters and client stubs from
//! `proto/chat.proto`.
//!
//! Register, VerifyLogin and ChangePassword compute argon2 hashes (19 MiB and tens of
//! milliseconds each at full cost): they run on the user service's heavy lane, so that a
//! burst of logins waits there, bounded, and never delays the cheap calls.
//!
//! The gateway's Register, Login and Resume open sessions (or an account): each waits on
//! several calls to the services. On a proxy they run on lanes of their own
//! (`proxy::gateway_config` sizes them), so that thousands of clients coming back at once
//! after a proxy crash queue there instead of taking every worker from the users already
//! online. Register and Login wait for a password hash and share the lane "logins";
//! Resume, a token lookup, has the lane "resumes", so that a flood of logins never holds
//! up the users of a crashed proxy coming back.

fn main() -> std::io::Result<()> {
    rpc_codegen::Builder::new()
        .heavy("chatroom.UserService/Register")
        .heavy("chatroom.UserService/VerifyLogin")
        .heavy("chatroom.UserService/ChangePassword")
        .lane("chatroom.Gateway/Register", "logins")
        .lane("chatroom.Gateway/Login", "logins")
        .lane("chatroom.Gateway/Resume", "resumes")
        .compile(&["proto/chat.proto"], &["proto"])
}
