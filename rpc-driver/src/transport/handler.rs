//! What a connection hands its peer's requests to: the [`RpcHandler`] and
//! [`MergedBlockMetaReqHandler`] a user implements, the [`UploadSink`] of an upload, and
//! [`NoopRpcHandler`] for pure clients.

use bytes::Bytes;
use rpc_proto::ConnectionError;

use super::client::TransportClient;
use super::merged::MergedBlockMetaRequest;
use super::responder::{MergedBlockMetaResponder, RpcResponder};
use super::stream::StreamManager;
use crate::error::BoxError;

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

/// Serves merged-block-meta requests: Spark's `MergedBlockMetaReqHandler`, handed out by
/// [`RpcHandler::merged_block_meta_req_handler`].
///
/// Called on the connection's driver task: implementations must not block. Hand longer work
/// to a task and answer through the [`MergedBlockMetaResponder`], which may be kept and used
/// later from anywhere.
pub trait MergedBlockMetaReqHandler: Send + Sync + 'static {
    /// A request arrived on `client`'s connection; answer it through `responder` (dropping it
    /// unanswered fails the call).
    fn receive_merged_block_meta_req(
        &self,
        client: &TransportClient,
        request: MergedBlockMetaRequest,
        responder: MergedBlockMetaResponder,
    );
}

/// The handler of a pure client, which serves nothing: every RPC it receives fails with
/// [`NoopRpcHandler::REFUSAL`], one-way messages are dropped, and chunk fetches, streams,
/// uploads and merged-block-meta requests are refused as by [`RpcHandler`]'s defaults.
///
/// Give it to a [`TransportClientFactory`](super::factory::TransportClientFactory) whose
/// connections only call out: the peer may still send requests on them (connections are full
/// duplex), and this answers each at once rather than leaving the peer to time out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoopRpcHandler;

impl NoopRpcHandler {
    /// The failure every RPC sent to this handler receives.
    pub const REFUSAL: &'static str = "this peer serves nothing: it is a client without a handler";
}

impl RpcHandler for NoopRpcHandler {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = (client, message);
        let _ = responder.fail(Self::REFUSAL);
    }
}
