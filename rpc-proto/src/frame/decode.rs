//! The incremental, zero-copy frame decoder.

use bytes::{Buf, Bytes, BytesMut};

use super::{Frame, MessageType, FRAME_PREFIX_LEN};
use crate::error::DecodeError;
use crate::id::{RequestId, StreamChunkId};

/// The most the decoder asks the read buffer to grow by at once while a frame is incomplete.
///
/// The buffer grows with the bytes that actually arrive, never by a length the peer merely
/// claims.
const RESERVE_STEP: usize = 64 * 1024;

/// What one call to [`FrameDecoder::decode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame.
    Frame(Frame),
    /// A piece of the out-of-frame body announced by the last `StreamResponse` or
    /// `UploadStream` frame, in order.
    Body {
        /// The bytes, a slice of the read buffer.
        data: Bytes,
        /// How many bytes of the body are still to come after these; zero on the last piece.
        remaining: u64,
    },
}

/// Turns a byte stream into [`Decoded`] items.
///
/// Feed it the connection's read buffer: each [`decode`](Self::decode) consumes exactly one
/// frame (or one piece of an out-of-frame body) from the front of the buffer, or nothing if
/// the buffer does not hold a whole frame yet. Input may be split anywhere.
///
/// After a `StreamResponse` or `UploadStream` frame announcing `n > 0` bytes, the decoder is
/// in raw mode: the next `n` bytes are handed out as [`Decoded::Body`] pieces as they arrive,
/// without waiting for all of them, and then frames resume. Raw mode is entered by the decoder
/// itself because the wire demands it whatever the receiver thinks of the stream: skipping it
/// would parse body bytes as frames.
///
/// After an error the stream cannot be re-synchronised; the decoder keeps returning it.
///
/// ```
/// use bytes::BytesMut;
/// use rpc_proto::{Decoded, Frame, FrameDecoder, RequestId};
///
/// let frame = Frame::RpcRequest { request: RequestId(7), body: "hi".into() };
/// let mut wire = BytesMut::new();
/// frame.encode(&mut wire);
///
/// let mut decoder = FrameDecoder::new(1 << 20);
/// let mut buf = BytesMut::from(&wire[..5]); // half of the length field
/// assert_eq!(decoder.decode(&mut buf).unwrap(), None);
/// buf.extend_from_slice(&wire[5..]);
/// assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Decoded::Frame(frame)));
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_size: u64,
    max_id_len: u32,
    max_error_len: u32,
    body_remaining: u64,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder rejecting frames longer than `max_frame_size` bytes (length field included).
    ///
    /// Ids and error texts are limited only by the frame size; see
    /// [`with_string_limits`](Self::with_string_limits).
    pub fn new(max_frame_size: u64) -> Self {
        Self {
            max_frame_size,
            max_id_len: u32::MAX,
            max_error_len: u32::MAX,
            body_remaining: 0,
            failed: None,
        }
    }

    /// This decoder with limits on strings: an id (stream id, app id) longer than `max_id_len`
    /// bytes is [`DecodeError::StringTooLong`], an error text longer than `max_error_len` is
    /// cut to it at a character boundary. Either way nothing longer is copied.
    pub fn with_string_limits(mut self, max_id_len: u32, max_error_len: u32) -> Self {
        self.max_id_len = max_id_len;
        self.max_error_len = max_error_len;
        self
    }

    /// Bytes of an out-of-frame body still expected; zero between frames.
    pub fn body_remaining(&self) -> u64 {
        self.body_remaining
    }

    /// Decodes one item from the front of `src`, consuming exactly its bytes.
    ///
    /// Returns `Ok(None)` when `src` holds no complete item; it may then reserve room in `src`
    /// for the rest of the frame, at most `RESERVE_STEP` (64 KiB) bytes at a time.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.decode_inner(src);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn decode_inner(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        if self.body_remaining > 0 {
            if src.is_empty() {
                return Ok(None);
            }
            let n = usize::try_from(self.body_remaining).map_or(src.len(), |r| r.min(src.len()));
            self.body_remaining -= n as u64;
            let data = src.split_to(n).freeze();
            return Ok(Some(Decoded::Body {
                data,
                remaining: self.body_remaining,
            }));
        }
        if src.len() < 8 {
            return Ok(None);
        }
        let raw_len = i64::from_be_bytes(src[..8].try_into().expect("8 bytes"));
        if raw_len < FRAME_PREFIX_LEN as i64 {
            return Err(DecodeError::FrameTooShort { length: raw_len });
        }
        let len = raw_len as u64;
        if len > self.max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                length: len,
                max: self.max_frame_size,
            });
        }
        // `len <= max_frame_size`, which the caller keeps within addressable memory.
        let len = usize::try_from(len).map_err(|_| DecodeError::FrameTooLarge {
            length: len,
            max: self.max_frame_size,
        })?;
        if src.len() < len {
            self.check_id_early(src)?;
            src.reserve((len - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        let mut frame = src.split_to(len).freeze();
        frame.advance(8);
        let ty_byte = frame.get_u8();
        let ty = MessageType::from_byte(ty_byte).ok_or(DecodeError::UnknownType(ty_byte))?;
        let decoded = parse(ty, frame, self.max_id_len, self.max_error_len)?;
        self.body_remaining = decoded.out_of_frame_len();
        Ok(Some(Decoded::Frame(decoded)))
    }
}

impl FrameDecoder {
    /// Refuses an id over the limit as soon as its length field has arrived, so a frame that
    /// announces a huge id is not buffered whole first (the same error the whole frame would
    /// get).
    fn check_id_early(&self, src: &[u8]) -> Result<(), DecodeError> {
        let Some(ty) = src.get(8).and_then(|&b| MessageType::from_byte(b)) else {
            return Ok(());
        };
        let (at, field) = match ty {
            MessageType::StreamRequest
            | MessageType::StreamResponse
            | MessageType::StreamFailure => (9, "stream id"),
            MessageType::MergedBlockMetaRequest => (17, "app id"),
            _ => return Ok(()),
        };
        let Some(raw) = src.get(at..at + 4) else {
            return Ok(());
        };
        let length = i32::from_be_bytes(raw.try_into().expect("4 bytes"));
        match u64::try_from(length) {
            Ok(length) if length > u64::from(self.max_id_len) => Err(DecodeError::StringTooLong {
                message_type: ty,
                field,
                length,
                max: self.max_id_len,
            }),
            _ => Ok(()),
        }
    }
}

/// Reads header fields from one frame, with every length checked against what is left.
struct Fields {
    ty: MessageType,
    buf: Bytes,
    max_id_len: u32,
    max_error_len: u32,
}

impl Fields {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                message_type: self.ty,
                field,
            });
        }
        Ok(())
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64())
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_i32())
    }

    fn count(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let v = self.i64(field)?;
        u64::try_from(v).map_err(|_| DecodeError::NegativeLength {
            message_type: self.ty,
            field,
            value: v,
        })
    }

    fn request(&mut self) -> Result<RequestId, DecodeError> {
        Ok(RequestId(self.i64("request id")? as u64))
    }

    fn chunk(&mut self) -> Result<StreamChunkId, DecodeError> {
        let stream_id = self.i64("stream id")? as u64;
        let chunk_index = self.i32("chunk index")? as u32;
        Ok(StreamChunkId {
            stream_id,
            chunk_index,
        })
    }

    fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.i32(field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            message_type: self.ty,
            field,
            value: len.into(),
        })?;
        self.need(len, field)?;
        Ok(self.buf.split_to(len))
    }

    /// An id: refused (before any copy) when longer than the id limit.
    fn id(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes(field)?;
        if raw.len() as u64 > u64::from(self.max_id_len) {
            return Err(DecodeError::StringTooLong {
                message_type: self.ty,
                field,
                length: raw.len() as u64,
                max: self.max_id_len,
            });
        }
        self.utf8(&raw, field).map(str::to_owned)
    }

    /// An error text: validated in place, and only its first `max_error_len` bytes (to a
    /// character boundary) copied.
    fn error(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes(field)?;
        let text = self.utf8(&raw, field)?;
        Ok(truncate_str(text, self.max_error_len as usize).to_owned())
    }

    fn utf8<'a>(&self, raw: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 {
            message_type: self.ty,
            field,
        })
    }

    /// The rest of the frame, as the in-frame body.
    fn body(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Checks that the header used the whole frame.
    fn end(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(DecodeError::TrailingBytes {
                message_type: self.ty,
                extra: self.buf.remaining() as u64,
            });
        }
        Ok(())
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn parse(
    ty: MessageType,
    buf: Bytes,
    max_id_len: u32,
    max_error_len: u32,
) -> Result<Frame, DecodeError> {
    let mut f = Fields {
        ty,
        buf,
        max_id_len,
        max_error_len,
    };
    let frame = match ty {
        MessageType::ChunkFetchRequest => Frame::ChunkFetchRequest { chunk: f.chunk()? },
        MessageType::ChunkFetchSuccess => {
            let chunk = f.chunk()?;
            Frame::ChunkFetchSuccess {
                chunk,
                body: f.body(),
            }
        }
        MessageType::ChunkFetchFailure => {
            let chunk = f.chunk()?;
            Frame::ChunkFetchFailure {
                chunk,
                error: f.error("error")?,
            }
        }
        MessageType::RpcRequest | MessageType::RpcResponse => {
            let request = f.request()?;
            // The legacy body length: Spark writes it and ignores it on read; so do we.
            f.i32("legacy body length")?;
            let body = f.body();
            if ty == MessageType::RpcRequest {
                Frame::RpcRequest { request, body }
            } else {
                Frame::RpcResponse { request, body }
            }
        }
        MessageType::RpcFailure => {
            let request = f.request()?;
            Frame::RpcFailure {
                request,
                error: f.error("error")?,
            }
        }
        MessageType::StreamRequest => Frame::StreamRequest {
            stream_id: f.id("stream id")?,
        },
        MessageType::StreamResponse => {
            let stream_id = f.id("stream id")?;
            Frame::StreamResponse {
                stream_id,
                byte_count: f.count("byte count")?,
            }
        }
        MessageType::StreamFailure => {
            let stream_id = f.id("stream id")?;
            Frame::StreamFailure {
                stream_id,
                error: f.error("error")?,
            }
        }
        MessageType::OneWayMessage => {
            f.i32("legacy body length")?;
            Frame::OneWayMessage { body: f.body() }
        }
        MessageType::UploadStream => {
            let request = f.request()?;
            let meta = f.bytes("meta")?;
            Frame::UploadStream {
                request,
                meta,
                byte_count: f.count("body byte count")?,
            }
        }
        MessageType::MergedBlockMetaRequest => Frame::MergedBlockMetaRequest {
            request: f.request()?,
            app_id: f.id("app id")?,
            shuffle_id: f.i32("shuffle id")?,
            shuffle_merge_id: f.i32("shuffle merge id")?,
            reduce_id: f.i32("reduce id")?,
        },
        MessageType::MergedBlockMetaSuccess => {
            let request = f.request()?;
            let chunk_count = f.i32("chunk count")?;
            Frame::MergedBlockMetaSuccess {
                request,
                chunk_count,
                body: f.body(),
            }
        }
    };
    f.end()?;
    Ok(frame)
}
