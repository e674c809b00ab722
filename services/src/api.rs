//! The `chatroom` package, generated from `proto/chat.proto` by
//! `rpc_codegen::compile_protos` in `build.rs`: its messages, and for each service
//! (`Gateway`, `UserService`, `ChatService`, `Delivery`) a module `<service>_rpc` with
//! the server trait, the `...Server` adapter and the `...Client` stub.

rpc_core::include_proto!("chatroom");
