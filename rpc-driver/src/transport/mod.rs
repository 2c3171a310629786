//! The transport layer: Spark's `TransportServer`, `TransportClient` and
//! `TransportClientFactory`, on [`rpc_proto::Connection`] and a [`Runtime`](crate::Runtime).
//!
//! A [`TransportServer`] accepts connections and hands every request that arrives on them to
//! an [`RpcHandler`]. A [`TransportClientFactory`] opens connections (pooled per peer) and
//! returns [`TransportClient`]s, which send RPCs and one-way messages. Connections are full
//! duplex: a client's connection also delivers the peer's requests to the factory's handler.

mod buffer;
mod config;
mod conn;
mod factory;
mod merged;
mod server;
mod stream;

pub use buffer::{FileSegment, ManagedBuffer};
pub use config::{
    TransportConfig, TransportConfigBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PARTIAL_FRAME_BYTES,
};
pub use conn::{
    MergedBlockMetaCall, Ready, RpcCall, RpcResponder, StreamCall, TransportClient,
    STREAM_BUFFER_LIMIT,
};
pub use factory::{ConnectError, TransportClientFactory};
pub use merged::{
    MergedBlockMeta, MergedBlockMetaReqHandler, MergedBlockMetaRequest, MergedBlockMetaResponder,
};
pub use server::{ServerStats, TransportServer};
pub use stream::{stream_not_found, OneForOneStreamManager, StreamManager};

use std::net::SocketAddr;

use bytes::Bytes;
use rpc_proto::ConnectionError;

/// Receives what peers send on a connection: Spark's `RpcHandler`.
///
/// Called on the connection's driver task: implementations must not block. Hand longer work
/// to a task and answer through the [`RpcResponder`], which may be kept and used later from
/// anywhere.
pub trait RpcHandler: Send + Sync + 'static {
    /// An RPC arrived; answer it through `responder` (dropping it unanswered fails the call).
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder);

    /// A one-way message arrived.
    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        let _ = (client, message);
    }

    /// The streams this handler serves chunks and named streams from (Spark's
    /// `getStreamManager`). `None`, the default, refuses every chunk fetch and stream request.
    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        None
    }

    /// Where merged-block-meta requests go (Spark's `getMergedBlockMetaReqHandler`). `None`,
    /// the default, refuses every request with a failure (Spark's default handler never
    /// answers, leaving the caller to time out).
    fn merged_block_meta_req_handler(&self) -> Option<&dyn MergedBlockMetaReqHandler> {
        None
    }

    /// An upload arrived (Spark's `receiveStream`): return where its body goes, or refuse it
    /// (the uploader receives the message as the call's failure; the body is read and
    /// discarded, and the connection stays usable). The default refuses every upload.
    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, String> {
        let _ = (client, meta);
        Err("this peer takes no uploads".to_owned())
    }

    /// A connection became active.
    fn connection_opened(&self, client: &TransportClient) {
        let _ = client;
    }

    /// A connection ended; `error` says why. Called once per opened connection.
    fn connection_closed(&self, client: &TransportClient, error: &ConnectionError) {
        let _ = (client, error);
    }
}

/// Where an upload's body goes, piece by piece, on the connection's driver task (so it
/// must not block). Returned by [`RpcHandler::receive_stream`].
pub trait UploadSink: Send + 'static {
    /// The next piece of the body. An error fails the upload: the uploader receives it, and
    /// the rest of the body is discarded (the connection stays usable).
    fn on_data(&mut self, data: Bytes) -> Result<(), String>;

    /// The whole body has arrived: answer the upload through `responder` (a failure here,
    /// say a failed post-processing step, reaches the uploader and leaves the connection
    /// usable).
    fn on_complete(self: Box<Self>, responder: RpcResponder);

    /// The upload failed: the connection ended before the body was whole, or `on_data`
    /// failed.
    fn on_failure(self: Box<Self>, error: &str) {
        let _ = error;
    }
}

/// Addresses of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionAddrs {
    /// This side's address.
    pub local: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
}
