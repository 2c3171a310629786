//! Metadata of push-merged shuffle blocks: Spark's `MergedBlockMetaRequest`,
//! `MergedBlockMetaSuccess` and `MergedBlockMetaReqHandler`.
//!
//! A client asks with [`TransportClient::send_merged_block_meta_req`]; a server answers through
//! the [`MergedBlockMetaReqHandler`] its [`RpcHandler`](super::RpcHandler) hands out. The
//! metadata travels as an opaque body (Spark puts the chunks' serialized bitmaps there) with
//! the number of chunks beside it; failures travel as an `RpcFailure`.

use std::fmt;

use bytes::Bytes;
use rpc_proto::{CallError, RequestId};

use super::{RpcResponder, TransportClient};

/// What a merged-block-meta request asks for (the fields of Spark's `MergedBlockMetaRequest`,
/// as Spark's `int`s).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MergedBlockMetaRequest {
    /// The application.
    pub app_id: String,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The shuffle merge attempt.
    pub shuffle_merge_id: i32,
    /// The reduce partition.
    pub reduce_id: i32,
}

/// The metadata of a push-merged block (Spark's `MergedBlockMetaSuccess`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedBlockMeta {
    /// The number of chunks of the merged block, as the peer sent it (Spark's `numChunks`).
    pub chunk_count: i32,
    /// The metadata itself (Spark: the chunks' serialized bitmaps), sent in its frame.
    pub body: Bytes,
}

/// Serves merged-block-meta requests: Spark's `MergedBlockMetaReqHandler`, handed out by
/// [`RpcHandler::merged_block_meta_req_handler`](super::RpcHandler::merged_block_meta_req_handler).
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

/// Answers one merged-block-meta request: Spark's `MergedBlockMetaResponseCallback`.
///
/// `Send + 'static`: keep it and answer later from any task. Dropping it unanswered fails the
/// caller at once rather than letting it time out. A handler that panics fails the request
/// with the panic's message.
pub struct MergedBlockMetaResponder {
    inner: RpcResponder,
}

impl MergedBlockMetaResponder {
    pub(crate) fn new(inner: RpcResponder) -> Self {
        Self { inner }
    }

    /// Sends the metadata (a `MergedBlockMetaSuccess`). Metadata larger than the connection's
    /// frame limit is refused with [`CallError::FrameTooLarge`], and the caller receives a
    /// failure saying so.
    pub fn reply(self, meta: MergedBlockMeta) -> Result<(), CallError> {
        self.inner.reply_merged_block_meta(meta)
    }

    /// Fails the call (an `RpcFailure`); the caller receives `error` as
    /// [`RpcError::Remote`](rpc_proto::RpcError::Remote).
    pub fn fail(self, error: &str) -> Result<(), CallError> {
        self.inner.fail(error)
    }

    /// The address of the peer that sent the request.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.inner.peer_addr()
    }

    /// The request id the peer chose.
    pub fn request_id(&self) -> RequestId {
        self.inner.request_id()
    }
}

impl fmt::Debug for MergedBlockMetaResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedBlockMetaResponder")
            .field("request", &self.inner.request_id())
            .finish_non_exhaustive()
    }
}
