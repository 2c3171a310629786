//! What a [`Connection`](crate::Connection) reports.

use bytes::Bytes;

use crate::error::{ConnectionError, RequestError};
use crate::id::{Call, InboundStreamId, RequestId, StreamCallId, StreamChunkId};

/// Something that happened on a connection, drained with
/// [`Connection::poll_event`](crate::Connection::poll_event).
///
/// Two groups: requests from the peer, which this side answers with the `respond_*` commands,
/// and the outcomes of calls this side made. Every call ends with exactly one terminal event:
/// [`ReplyReceived`](Event::ReplyReceived), [`ChunkReceived`](Event::ChunkReceived),
/// [`MergedBlockMetaReceived`](Event::MergedBlockMetaReceived),
/// [`StreamFinished`](Event::StreamFinished) or [`CallFailed`](Event::CallFailed), unless the
/// caller [cancelled](crate::Connection::cancel) it first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer sent an RPC; answer with
    /// [`respond_rpc`](crate::Connection::respond_rpc) or
    /// [`respond_rpc_failure`](crate::Connection::respond_rpc_failure).
    RpcReceived {
        /// The peer's request id.
        request: RequestId,
        /// The request body.
        body: Bytes,
    },
    /// The peer sent a one-way message.
    OneWayReceived {
        /// The message body.
        body: Bytes,
    },
    /// The peer asked for a chunk; answer with
    /// [`respond_chunk`](crate::Connection::respond_chunk) or
    /// [`respond_chunk_failure`](crate::Connection::respond_chunk_failure).
    ChunkFetchReceived {
        /// The chunk asked for.
        chunk: StreamChunkId,
    },
    /// The peer asked for a stream; answer with
    /// [`respond_stream`](crate::Connection::respond_stream) or
    /// [`respond_stream_failure`](crate::Connection::respond_stream_failure). Answers go out in
    /// the order the requests came in, whatever order they are given in.
    StreamRequested {
        /// Names this request when answering it.
        request: InboundStreamId,
        /// The stream the peer asked for.
        stream_id: String,
    },
    /// The peer started an upload; its body follows as [`UploadData`](Event::UploadData)
    /// events, then [`UploadFinished`](Event::UploadFinished) (at once if `byte_count` is 0).
    /// Answer with [`respond_rpc`](crate::Connection::respond_rpc) or
    /// [`respond_rpc_failure`](crate::Connection::respond_rpc_failure).
    UploadReceived {
        /// The peer's request id.
        request: RequestId,
        /// The upload's metadata.
        meta: Bytes,
        /// The size of the body that follows.
        byte_count: u64,
    },
    /// A piece of an upload's body, in order.
    UploadData {
        /// The upload.
        request: RequestId,
        /// The bytes.
        data: Bytes,
    },
    /// All of an upload's body has arrived.
    UploadFinished {
        /// The upload.
        request: RequestId,
    },
    /// The connection ended before all of an upload's body arrived.
    UploadAborted {
        /// The upload.
        request: RequestId,
        /// Why the connection ended.
        error: ConnectionError,
    },
    /// The peer asked for merged block metadata; answer with
    /// [`respond_merged_block_meta`](crate::Connection::respond_merged_block_meta) or
    /// [`respond_rpc_failure`](crate::Connection::respond_rpc_failure).
    MergedBlockMetaRequested {
        /// The peer's request id.
        request: RequestId,
        /// The application.
        app_id: String,
        /// The shuffle.
        shuffle_id: i32,
        /// The shuffle merge attempt.
        shuffle_merge_id: i32,
        /// The reduce partition.
        reduce_id: i32,
    },

    /// The reply to an [`rpc`](crate::Connection::rpc) or
    /// [`upload_stream`](crate::Connection::upload_stream) call.
    ReplyReceived {
        /// The call it answers: [`Call::Rpc`] or [`Call::Upload`] (the two share the request
        /// id space; the connection knows which one it sent).
        call: Call,
        /// The reply body.
        body: Bytes,
    },
    /// The chunk asked for with [`fetch_chunk`](crate::Connection::fetch_chunk).
    ChunkReceived {
        /// The chunk.
        chunk: StreamChunkId,
        /// Its bytes.
        body: Bytes,
    },
    /// The reply to a [`merged_block_meta`](crate::Connection::merged_block_meta) call.
    MergedBlockMetaReceived {
        /// The call's request id.
        request: RequestId,
        /// The number of chunks of the merged block.
        chunk_count: i32,
        /// The chunk bitmaps.
        body: Bytes,
    },
    /// The peer accepted a [`stream`](crate::Connection::stream) call; its bytes follow as
    /// [`StreamData`](Event::StreamData), then [`StreamFinished`](Event::StreamFinished) (at once
    /// if `byte_count` is 0) or [`CallFailed`](Event::CallFailed).
    StreamOpened {
        /// The call.
        stream: StreamCallId,
        /// The stream's size.
        byte_count: u64,
    },
    /// A piece of a stream, in order.
    StreamData {
        /// The call.
        stream: StreamCallId,
        /// The bytes.
        data: Bytes,
    },
    /// All of a stream has arrived: the call succeeded.
    StreamFinished {
        /// The call.
        stream: StreamCallId,
    },
    /// A call failed: the peer's failure reply, its timeout, or the connection's end.
    CallFailed {
        /// The call.
        call: Call,
        /// Why.
        error: RequestError,
    },
    /// The connection ended; the last event. Every call still pending was failed before it.
    Closed {
        /// Why.
        error: ConnectionError,
    },
}
