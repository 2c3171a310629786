//! Runtime-neutral glue between [`rpc_proto`] and an async runtime, written once.
//!
//! The driver moves bytes between sockets and [`rpc_proto::Connection`]s, and time into them.
//! It is generic over [`Runtime`], the few things it needs from an executor: tasks, timers and
//! TCP. `rpc-tokio` and `rpc-async-std` implement it and re-export the same API, so endpoint
//! code does not change with the runtime.
//!
//! ```text
//!   TransportClient ──send_rpc/send──┐            ┌── RpcHandler::receive (peer's requests)
//!   RpcCall (future) ◄── completion ─┤ ConnState  ├── RpcResponder::reply / fail
//!                                    │ (Mutex)    │
//!   socket ◄── poll_write ── Driver task ── poll_read ──► Connection (rpc-proto)
//! ```
//!
//! The API users see is [`api`]: the adapters re-export it whole, so it is defined once, here.
//!
//! Layers: [`transport`] (Spark's `TransportServer`, `TransportClient` and
//! `TransportClientFactory`) and, on it, [`env`](mod@env) (Spark's `RpcEnv`: named endpoints, refs,
//! `send` and `ask`). [`tls`] runs TLS (rustls) over any runtime's streams.
//!
//! # Configuration
//!
//! Every group of settings is built one way: `X::builder()` (for an env,
//! [`RpcEnvConfig::server`](env::RpcEnvConfig::server) or
//! [`RpcEnvConfig::client`](env::RpcEnvConfig::client)) returns a builder whose `with_*`
//! setters start from the defaults; `build()` returns the config, or a
//! [`ConfigError`](rpc_proto::ConfigError) naming the setting that is out of range. A zero
//! where zero makes no sense (a limit that would refuse everything, a timeout that would fire
//! at once) is such an error, never silently taken as one. A built config is immutable, read
//! through getters, and nests built configs: [`rpc_proto::Config`] (one connection) in
//! [`TransportConfig`](transport::TransportConfig), that and
//! [`OutboxConfig`](rpc_proto::OutboxConfig) in [`RpcEnvConfig`](env::RpcEnvConfig);
//! [`BlockFetchConfig`](block::BlockFetchConfig) and
//! [`BlockServer::builder`](block::BlockServer::builder) for blocks. `to_builder()` starts a
//! builder from a built config.
//!
//! ```
//! use std::time::Duration;
//! use rpc_driver::transport::TransportConfig;
//! use rpc_proto::ConfigError;
//!
//! # fn main() -> Result<(), ConfigError> {
//! let config = TransportConfig::builder()
//!     .with_connect_timeout(Duration::from_secs(5))
//!     .build()?;
//! assert_eq!(config.connect_timeout(), Duration::from_secs(5));
//!
//! let error = TransportConfig::builder().with_connections_per_peer(0).build().unwrap_err();
//! assert_eq!(error, ConfigError::ZeroLimit("connections per peer"));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

// The derive names `::rpc_driver`, which this crate's own tests reach through this.
#[cfg(test)]
extern crate self as rpc_driver;

#[cfg(not(loom))]
pub mod api;
pub mod block;
mod completion;
#[cfg(not(loom))]
pub mod env;
mod error;
mod inbox_cell;
mod io_error;
mod log_limit;
mod runtime;
pub mod security;
mod sync;
pub mod tls;
pub mod transport;
mod wait_list;

#[doc(hidden)]
pub use completion::{pair as completion_pair, Completer, Waiter};
#[doc(hidden)]
pub use inbox_cell::InboxCell;

pub use error::BoxError;
pub use rpc_proto;
pub use runtime::{
    sleep_until, timer_fired, AsyncListener, AsyncStream, AsyncTimer, BoxFuture, Runtime,
    TimerFired,
};
