//! Spark's external shuffle service, in Rust: a [client] that reads shuffle blocks
//! from a shuffle service (Spark's or ours) and the [service](server) itself, which
//! unmodified Spark executors register with and fetch from.
//!
//! The wire protocol, without I/O, is [`protocol`] (Spark 4.3.0's `BlockTransferMessage`s,
//! block ids and the on-disk layout of sort-shuffle files); both halves run on the transport
//! of [`rpc_driver`], on any runtime its adapters support (`rpc-tokio`, `rpc-async-std`).

#![forbid(unsafe_code)]

pub use rpc_proto::shuffle as protocol;

pub mod client;
pub mod server;
