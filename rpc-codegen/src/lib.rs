//! Code generation for rpc-core services.
