//! The transport layer: Spark's `TransportServer`, `TransportClient` and
//! `TransportClientFactory`, on [`rpc_proto::Connection`] and a [`Runtime`](crate::Runtime).
//!
//! A [`TransportServer`] accepts connections and hands every request that arrives on them to
//! an [`RpcHandler`]. A [`TransportClientFactory`] opens connections (pooled per peer) and
//! returns [`TransportClient`]s, which send RPCs and one-way messages. Connections are full
//! duplex: a client's connection also delivers the peer's requests to the factory's handler.

mod buffer;
mod conn;
mod factory;
mod merged;
mod server;
mod stream;

pub use buffer::{FileSegment, ManagedBuffer};
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

pub use crate::error::BoxError;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::{Config, ConnectionError};

use crate::security::Security;

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
    /// (the uploader receives the error's text as the call's failure; the body is read and
    /// discarded, and the connection stays usable). The default refuses every upload.
    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, BoxError> {
        let _ = (client, meta);
        Err("this peer takes no uploads".into())
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
    /// The next piece of the body. An error fails the upload: the uploader receives its
    /// text, and the rest of the body is discarded (the connection stays usable); then
    /// [`on_failure`](UploadSink::on_failure) is called with that text.
    fn on_data(&mut self, data: Bytes) -> Result<(), BoxError>;

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

/// Settings of the transport layer.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The protocol settings of every connection.
    pub connection: Config,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Connections kept per peer address by a [`TransportClientFactory`]; requests are spread
    /// over them.
    pub connections_per_peer: usize,
    /// After a failed connect, further connects to the same address fail at once with the
    /// same error for this long (Spark's fast-fail). Zero disables it.
    pub fast_fail_window: Duration,
    /// Connections a [`TransportServer`] keeps open at once; beyond it, new connections are
    /// accepted and closed at once (counted in [`ServerStats::refused`]), so one peer cannot
    /// take every file descriptor of the process. The default, [`DEFAULT_MAX_CONNECTIONS`],
    /// suits a small machine with the usual limit of 1,024 descriptors per process; raise it
    /// (and the process's descriptor limit) for a server with more peers.
    pub max_connections: usize,
    /// Bytes of partial frames (frames begun but not whole) a server holds across all its
    /// connections; the connection whose bytes would take the total past it is closed with
    /// [`ConnectionError::OverBudget`]. Each
    /// connection's own partial frame is bounded by
    /// [`Config::max_frame_size`] and, in time, by
    /// [`Config::frame_timeout`]. Default
    /// [`DEFAULT_MAX_PARTIAL_FRAME_BYTES`] (256 MiB, the default frame limit, so any one
    /// frame fits); a frame larger than this cannot be received by a server.
    pub max_partial_frame_bytes: u64,
    /// Authentication and encryption of every connection: none by default. See
    /// [`security`](crate::security).
    pub security: Security,
}

/// The default of [`TransportConfig::max_connections`]: half the usual per-process limit of
/// 1,024 file descriptors, leaving the rest to files, outgoing connections and the runtime.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default [`TransportConfig::max_partial_frame_bytes`]: 256 MiB.
pub const DEFAULT_MAX_PARTIAL_FRAME_BYTES: u64 = 256 * 1024 * 1024;

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connection: Config::default(),
            connect_timeout: Duration::from_secs(30),
            connections_per_peer: 1,
            fast_fail_window: Duration::ZERO,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_partial_frame_bytes: DEFAULT_MAX_PARTIAL_FRAME_BYTES,
            security: Security::none(),
        }
    }
}

impl TransportConfig {
    /// Sets [`connection`](TransportConfig::connection).
    pub fn with_connection(mut self, config: Config) -> Self {
        self.connection = config;
        self
    }

    /// Sets [`connect_timeout`](TransportConfig::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`connections_per_peer`](TransportConfig::connections_per_peer).
    pub fn with_connections_per_peer(mut self, connections: usize) -> Self {
        self.connections_per_peer = connections;
        self
    }

    /// Sets [`max_partial_frame_bytes`](TransportConfig::max_partial_frame_bytes) (at least 1).
    pub fn with_max_partial_frame_bytes(mut self, bytes: u64) -> Self {
        self.max_partial_frame_bytes = bytes;
        self
    }

    /// Checks the settings a server uses: a zero budget is an error naming it.
    pub fn validate(&self) -> Result<(), rpc_proto::ConfigError> {
        if self.max_partial_frame_bytes == 0 {
            return Err(rpc_proto::ConfigError::ZeroLimit("max partial frame bytes"));
        }
        if self.max_connections == 0 {
            return Err(rpc_proto::ConfigError::ZeroLimit("max connections"));
        }
        Ok(())
    }

    /// Sets [`fast_fail_window`](TransportConfig::fast_fail_window).
    pub fn with_fast_fail_window(mut self, window: Duration) -> Self {
        self.fast_fail_window = window;
        self
    }

    /// Sets [`security`](TransportConfig::security).
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Sets [`max_connections`](TransportConfig::max_connections).
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
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
