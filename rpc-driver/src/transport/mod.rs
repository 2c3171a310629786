//! The transport layer: Spark's `TransportServer`, `TransportClient` and
//! `TransportClientFactory`, on [`rpc_proto::Connection`] and a [`Runtime`](crate::Runtime).
//!
//! A [`TransportServer`] accepts connections and hands every request that arrives on them to
//! an [`RpcHandler`]. A [`TransportClientFactory`] opens connections (pooled per peer) and
//! returns [`TransportClient`]s, which send RPCs and one-way messages. Connections are full
//! duplex: a client's connection also delivers the peer's requests to the factory's handler.
//!
//! One connection is spread over modules the way quinn spreads its own:
//!
//! ```text
//!   handles (client, call, stream_call, ready, feeder, responder)
//!        │ lock, mutate, wake the driver
//!        ▼
//!   state: ConnState behind ConnInner's mutex ◄── driver: socket I/O, timers, file bodies
//!                                                    │ inbound requests, outside the lock
//!                                                    ▼
//!                                                 dispatch ──► handler (RpcHandler, ...)
//! ```

mod addrs;
mod buffer;
mod call;
mod client;
mod config;
mod dispatch;
mod driver;
mod factory;
mod feeder;
mod handler;
mod id;
mod merged;
mod ready;
mod registry;
mod responder;
mod server;
mod state;
mod stream;
mod stream_call;
#[cfg(test)]
mod tests;

pub use addrs::ConnectionAddrs;
pub use buffer::{FileSegment, ManagedBuffer};
pub use call::{MergedBlockMetaCall, RpcCall};
pub use client::TransportClient;
pub use config::{
    TransportConfig, TransportConfigBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PARTIAL_FRAME_BYTES,
};
pub use factory::{ConnectError, TransportClientFactory, UnmanagedClient};
pub use handler::{MergedBlockMetaReqHandler, NoopRpcHandler, RpcHandler, UploadSink};
pub use id::ConnectionId;
pub use merged::{MergedBlockMeta, MergedBlockMetaRequest};
pub use ready::Ready;
pub use responder::{MergedBlockMetaResponder, RpcResponder};
pub use server::{ServerStats, TransportServer};
pub use state::STREAM_BUFFER_LIMIT;
pub use stream::{stream_not_found, OneForOneStreamManager, StreamManager};
pub use stream_call::StreamCall;

pub use crate::error::BoxError;
