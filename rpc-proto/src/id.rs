//! Identifiers that travel on the wire or name a call locally.
//!
//! Wire identifiers keep Spark's bit patterns: Spark writes them as signed Java `long`/`int`,
//! we carry the same bits unsigned, so every value a Spark peer sends round-trips unchanged.

use std::fmt;

/// Correlates an `RpcRequest`, `UploadStream` or `MergedBlockMetaRequest` with its reply.
///
/// Chosen by the side that sends the request; unique among that side's outstanding requests
/// on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spark prints request ids as signed longs; so do we, so logs on both sides match.
        write!(f, "{}", self.0 as i64)
    }
}

/// Names one chunk of a stream registered on the serving side: Spark's `StreamChunkId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamChunkId {
    /// The stream, as handed out by the serving side's stream manager.
    pub stream_id: u64,
    /// The chunk's index within the stream.
    pub chunk_index: u32,
}

impl StreamChunkId {
    /// A chunk id from its stream and index.
    pub const fn new(stream_id: u64, chunk_index: u32) -> Self {
        Self {
            stream_id,
            chunk_index,
        }
    }
}

impl fmt::Display for StreamChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.stream_id as i64, self.chunk_index as i32)
    }
}

/// A stream request this side sent, in the order it was sent.
///
/// Stream replies carry no request id on the wire; they are matched to requests in FIFO
/// order, so this id is local: it never leaves the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
// Hidden but public (as quinn-proto's `StreamId`): `rpc-oracle` names ids never issued.
pub struct StreamCallId(#[doc(hidden)] pub u64);

impl fmt::Display for StreamCallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream call #{}", self.0)
    }
}

/// A stream request the peer sent, which this side must answer (in arrival order).
///
/// Local, like [`StreamCallId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
// Hidden but public (as quinn-proto's `StreamId`): `rpc-oracle` names ids never issued.
pub struct InboundStreamId(#[doc(hidden)] pub u64);

impl fmt::Display for InboundStreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inbound stream request #{}", self.0)
    }
}

/// An outgoing out-of-frame body (of an `UploadStream` or a `StreamResponse`) whose bytes the
/// caller feeds with [`Connection::send_body`](crate::Connection::send_body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
// Hidden but public (as quinn-proto's `StreamId`): `rpc-oracle` names ids never issued.
pub struct BodyId(#[doc(hidden)] pub u64);

impl fmt::Display for BodyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "body #{}", self.0)
    }
}

/// A call this side made and is waiting on; named in [`Event::CallFailed`](crate::Event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// An RPC sent with [`Connection::rpc`](crate::Connection::rpc).
    Rpc(RequestId),
    /// An upload sent with [`Connection::upload_stream`](crate::Connection::upload_stream).
    Upload(RequestId),
    /// A request sent with
    /// [`Connection::merged_block_meta`](crate::Connection::merged_block_meta).
    MergedBlockMeta(RequestId),
    /// A chunk fetch sent with [`Connection::fetch_chunk`](crate::Connection::fetch_chunk).
    ChunkFetch(StreamChunkId),
    /// A stream request sent with [`Connection::stream`](crate::Connection::stream).
    Stream(StreamCallId),
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rpc(id) => write!(f, "rpc {id}"),
            Self::Upload(id) => write!(f, "upload {id}"),
            Self::MergedBlockMeta(id) => write!(f, "merged block meta request {id}"),
            Self::ChunkFetch(id) => write!(f, "chunk fetch {id}"),
            Self::Stream(id) => write!(f, "{id}"),
        }
    }
}
