//! Example services built on rpc-core.
