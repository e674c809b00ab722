//! The workload message and tonic's echo service, generated from `proto/echo.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/bench.rs"));
