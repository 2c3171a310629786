//! Spark's network-common frame format, byte for byte.
//!
//! ```text
//! +----------------+------+-----------------+----------------------+
//! | length: i64 BE | type | header (by type) | body (if in frame)  |  raw body bytes (if out of frame)
//! +----------------+------+-----------------+----------------------+
//!   length counts all of the frame, its own 8 bytes included, but not an out-of-frame body
//! ```
//!
//! Strings and byte arrays inside headers are an `i32` big-endian length, then the bytes
//! (strings in UTF-8). `StreamResponse` and `UploadStream` announce a byte count; exactly that
//! many raw bytes follow the frame on the wire.
//!
//! This module knows nothing of connections: it turns [`Frame`]s into bytes and back.

mod decode;
#[cfg(test)]
mod proptests;

pub(crate) use decode::truncate_str;
pub use decode::{Decoded, FrameDecoder};

use bytes::{BufMut, Bytes, BytesMut};

use crate::id::{RequestId, StreamChunkId};

/// Bytes every frame starts with: the 8-byte length and the 1-byte type.
pub const FRAME_PREFIX_LEN: usize = 9;

/// The message type byte, with Spark's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Ask for one chunk of a registered stream.
    ChunkFetchRequest = 0,
    /// A chunk, in the frame.
    ChunkFetchSuccess = 1,
    /// A chunk could not be served.
    ChunkFetchFailure = 2,
    /// A request expecting one reply.
    RpcRequest = 3,
    /// The reply to an `RpcRequest` or `UploadStream`.
    RpcResponse = 4,
    /// The failure of an `RpcRequest`, `UploadStream` or `MergedBlockMetaRequest`.
    RpcFailure = 5,
    /// Ask for a named stream.
    StreamRequest = 6,
    /// A stream's header; its bytes follow out of frame.
    StreamResponse = 7,
    /// A stream could not be opened.
    StreamFailure = 8,
    /// A message expecting no reply.
    OneWayMessage = 9,
    /// A request with metadata, whose body follows out of frame.
    UploadStream = 10,
    /// Ask for the metadata of a push-merged shuffle block.
    MergedBlockMetaRequest = 11,
    /// The metadata of a push-merged shuffle block.
    MergedBlockMetaSuccess = 12,
}

impl MessageType {
    /// All message types, in type-byte order.
    pub const ALL: [Self; 13] = [
        Self::ChunkFetchRequest,
        Self::ChunkFetchSuccess,
        Self::ChunkFetchFailure,
        Self::RpcRequest,
        Self::RpcResponse,
        Self::RpcFailure,
        Self::StreamRequest,
        Self::StreamResponse,
        Self::StreamFailure,
        Self::OneWayMessage,
        Self::UploadStream,
        Self::MergedBlockMetaRequest,
        Self::MergedBlockMetaSuccess,
    ];

    /// The type for a type byte, if it names one. (Spark's `User` type, byte 255, is never
    /// sent on the wire and is rejected like any unknown byte.)
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.get(usize::from(byte)).copied()
    }
}

/// One message of Spark's transport protocol.
///
/// Bodies are [`Bytes`], so a decoded body is a slice of the read buffer, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // fields are documented on the variants
pub enum Frame {
    /// Type 0: stream id `i64`, chunk index `i32`.
    ChunkFetchRequest { chunk: StreamChunkId },
    /// Type 1: stream id `i64`, chunk index `i32`; the chunk is the in-frame body.
    ChunkFetchSuccess { chunk: StreamChunkId, body: Bytes },
    /// Type 2: stream id `i64`, chunk index `i32`, error string.
    ChunkFetchFailure { chunk: StreamChunkId, error: String },
    /// Type 3: request id `i64`, legacy body length `i32`; in-frame body.
    RpcRequest { request: RequestId, body: Bytes },
    /// Type 4: request id `i64`, legacy body length `i32`; in-frame body.
    RpcResponse { request: RequestId, body: Bytes },
    /// Type 5: request id `i64`, error string.
    RpcFailure { request: RequestId, error: String },
    /// Type 6: stream id string.
    StreamRequest { stream_id: String },
    /// Type 7: stream id string, byte count `i64`; the body follows out of frame.
    StreamResponse { stream_id: String, byte_count: u64 },
    /// Type 8: stream id string, error string.
    StreamFailure { stream_id: String, error: String },
    /// Type 9: legacy body length `i32`; in-frame body.
    OneWayMessage { body: Bytes },
    /// Type 10: request id `i64`, meta as `i32` length and bytes, body byte count `i64`; the
    /// body follows out of frame.
    UploadStream {
        request: RequestId,
        meta: Bytes,
        byte_count: u64,
    },
    /// Type 11: request id `i64`, app id string, shuffle id, shuffle merge id and reduce id as
    /// `i32`.
    MergedBlockMetaRequest {
        request: RequestId,
        app_id: String,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_id: i32,
    },
    /// Type 12: request id `i64`, chunk count `i32`; the chunk bitmaps are the in-frame body.
    MergedBlockMetaSuccess {
        request: RequestId,
        chunk_count: i32,
        body: Bytes,
    },
}

impl Frame {
    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::ChunkFetchRequest { .. } => MessageType::ChunkFetchRequest,
            Self::ChunkFetchSuccess { .. } => MessageType::ChunkFetchSuccess,
            Self::ChunkFetchFailure { .. } => MessageType::ChunkFetchFailure,
            Self::RpcRequest { .. } => MessageType::RpcRequest,
            Self::RpcResponse { .. } => MessageType::RpcResponse,
            Self::RpcFailure { .. } => MessageType::RpcFailure,
            Self::StreamRequest { .. } => MessageType::StreamRequest,
            Self::StreamResponse { .. } => MessageType::StreamResponse,
            Self::StreamFailure { .. } => MessageType::StreamFailure,
            Self::OneWayMessage { .. } => MessageType::OneWayMessage,
            Self::UploadStream { .. } => MessageType::UploadStream,
            Self::MergedBlockMetaRequest { .. } => MessageType::MergedBlockMetaRequest,
            Self::MergedBlockMetaSuccess { .. } => MessageType::MergedBlockMetaSuccess,
        }
    }

    /// The body carried inside the frame, for the types that have one.
    pub fn in_frame_body(&self) -> Option<&Bytes> {
        match self {
            Self::ChunkFetchSuccess { body, .. }
            | Self::RpcRequest { body, .. }
            | Self::RpcResponse { body, .. }
            | Self::OneWayMessage { body }
            | Self::MergedBlockMetaSuccess { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The number of raw bytes that follow this frame on the wire (`StreamResponse` and
    /// `UploadStream`), zero for every other type.
    pub fn out_of_frame_len(&self) -> u64 {
        match self {
            Self::StreamResponse { byte_count, .. } | Self::UploadStream { byte_count, .. } => {
                *byte_count
            }
            _ => 0,
        }
    }

    /// Length of the type-specific header (what follows the type byte, before any body).
    pub fn header_len(&self) -> u64 {
        fn s(v: &str) -> u64 {
            4 + v.len() as u64
        }
        match self {
            Self::ChunkFetchRequest { .. } | Self::ChunkFetchSuccess { .. } => 12,
            Self::ChunkFetchFailure { error, .. } => 12 + s(error),
            Self::RpcRequest { .. } | Self::RpcResponse { .. } => 12,
            Self::RpcFailure { error, .. } => 8 + s(error),
            Self::StreamRequest { stream_id } => s(stream_id),
            Self::StreamResponse { stream_id, .. } => s(stream_id) + 8,
            Self::StreamFailure { stream_id, error } => s(stream_id) + s(error),
            Self::OneWayMessage { .. } => 4,
            Self::UploadStream { meta, .. } => 8 + 4 + meta.len() as u64 + 8,
            Self::MergedBlockMetaRequest { app_id, .. } => 8 + s(app_id) + 12,
            Self::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// The value of the frame's length field: prefix, header and in-frame body.
    pub fn frame_len(&self) -> u64 {
        FRAME_PREFIX_LEN as u64
            + self.header_len()
            + self.in_frame_body().map_or(0, |b| b.len() as u64)
    }

    /// Appends the length field, type byte and header, but not the in-frame body, to `dst`.
    ///
    /// Callers that send a large body without copying it write this, then the body.
    /// Lengths must fit Spark's fields: check [`Frame::frame_len`] against a limit of at most
    /// [`SPARK_MAX_FRAME_LENGTH`](crate::SPARK_MAX_FRAME_LENGTH) first (the
    /// [`Connection`](crate::Connection) does).
    pub fn encode_head(&self, dst: &mut BytesMut) {
        self.encode_head_with_len(dst, self.frame_len());
    }

    /// [`Frame::encode_head`] with `frame_len` in the length field: for a frame whose
    /// in-frame body is written by someone else (a `ChunkFetchSuccess` sent from a file),
    /// the length counts that body, not the one this value holds.
    pub(crate) fn encode_head_with_len(&self, dst: &mut BytesMut, frame_len: u64) {
        dst.reserve(FRAME_PREFIX_LEN + self.header_len() as usize);
        dst.put_i64(frame_len as i64);
        dst.put_u8(self.message_type() as u8);
        fn put_str(dst: &mut BytesMut, v: &str) {
            dst.put_i32(v.len() as i32);
            dst.put_slice(v.as_bytes());
        }
        fn put_chunk(dst: &mut BytesMut, c: &StreamChunkId) {
            dst.put_i64(c.stream_id as i64);
            dst.put_i32(c.chunk_index as i32);
        }
        match self {
            Self::ChunkFetchRequest { chunk } | Self::ChunkFetchSuccess { chunk, .. } => {
                put_chunk(dst, chunk)
            }
            Self::ChunkFetchFailure { chunk, error } => {
                put_chunk(dst, chunk);
                put_str(dst, error);
            }
            Self::RpcRequest { request, body } | Self::RpcResponse { request, body } => {
                dst.put_i64(request.0 as i64);
                // Spark writes the body length here for old readers and ignores it on read.
                dst.put_i32(body.len() as i32);
            }
            Self::RpcFailure { request, error } => {
                dst.put_i64(request.0 as i64);
                put_str(dst, error);
            }
            Self::StreamRequest { stream_id } => put_str(dst, stream_id),
            Self::StreamResponse {
                stream_id,
                byte_count,
            } => {
                put_str(dst, stream_id);
                dst.put_i64(*byte_count as i64);
            }
            Self::StreamFailure { stream_id, error } => {
                put_str(dst, stream_id);
                put_str(dst, error);
            }
            Self::OneWayMessage { body } => dst.put_i32(body.len() as i32),
            Self::UploadStream {
                request,
                meta,
                byte_count,
            } => {
                dst.put_i64(request.0 as i64);
                dst.put_i32(meta.len() as i32);
                dst.put_slice(meta);
                dst.put_i64(*byte_count as i64);
            }
            Self::MergedBlockMetaRequest {
                request,
                app_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
            } => {
                dst.put_i64(request.0 as i64);
                put_str(dst, app_id);
                dst.put_i32(*shuffle_id);
                dst.put_i32(*shuffle_merge_id);
                dst.put_i32(*reduce_id);
            }
            Self::MergedBlockMetaSuccess {
                request,
                chunk_count,
                ..
            } => {
                dst.put_i64(request.0 as i64);
                dst.put_i32(*chunk_count);
            }
        }
    }

    /// Appends the whole frame, in-frame body included, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_head(dst);
        if let Some(body) = self.in_frame_body() {
            dst.extend_from_slice(body);
        }
    }

    /// The whole frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.frame_len() as usize);
        self.encode(&mut dst);
        dst.freeze()
    }
}
