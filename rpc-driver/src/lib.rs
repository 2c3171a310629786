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
//! Layers: [`transport`] (Spark's `TransportServer`, `TransportClient` and
//! `TransportClientFactory`) and, on it, [`env`](mod@env) (Spark's `RpcEnv`: named endpoints, refs,
//! `send` and `ask`). [`tls`] runs TLS (rustls) over any runtime's streams.

#![forbid(unsafe_code)]

// The derive names `::rpc_driver`, which this crate's own tests reach through this.
#[cfg(test)]
extern crate self as rpc_driver;

pub mod block;
mod completion;
#[cfg(not(loom))]
pub mod env;
mod error;
mod log_limit;
mod runtime;
pub mod security;
mod sync;
pub mod tls;
pub mod transport;
mod wait_list;

#[doc(hidden)]
pub use completion::{pair as completion_pair, Completer, Waiter};

/// What the adapters re-export under other names; not an API of its own.
#[doc(hidden)]
#[cfg(not(loom))]
pub mod __private {
    /// [`RpcMessage`](crate::env::RpcMessage), the trait without the derive of the same name,
    /// so that an adapter can put its own derive (naming the adapter) beside it.
    pub use crate::env::message::RpcMessage as RpcMessageTrait;
}
pub use error::BoxError;
pub use rpc_proto;
pub use runtime::{
    sleep_until, timer_fired, AsyncListener, AsyncStream, AsyncTimer, BoxFuture, Runtime,
    TimerFired,
};
