//! Metadata of push-merged shuffle blocks: Spark's `MergedBlockMetaRequest` and
//! `MergedBlockMetaSuccess`.
//!
//! A client asks with
//! [`TransportClient::send_merged_block_meta_req`](super::client::TransportClient::send_merged_block_meta_req);
//! a server answers through the
//! [`MergedBlockMetaReqHandler`](super::handler::MergedBlockMetaReqHandler) its
//! [`RpcHandler`](super::handler::RpcHandler) hands out, with a
//! [`MergedBlockMetaResponder`](super::responder::MergedBlockMetaResponder). The metadata
//! travels as an opaque body (Spark puts the chunks' serialized bitmaps there) with the
//! number of chunks beside it; failures travel as an `RpcFailure`.

use bytes::Bytes;

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
