//! Error types: one enum per kind of outcome.
//!
//! - [`DecodeError`]: the peer sent bytes that are not a valid frame. Fatal for the connection.
//! - [`ConnectionError`]: why a connection ended.
//! - [`RequestError`]: what a pending call resolved to when it did not succeed.
//! - [`CallError`]: the caller misused the API or hit a limit; nothing was sent.
//! - [`ConfigError`]: a configuration value is out of range.

use std::sync::Arc;
use std::time::Duration;

use crate::frame::MessageType;
use crate::id::{BodyId, InboundStreamId, RequestId, StreamCallId, StreamChunkId};

/// The peer sent bytes that are not a valid frame of Spark's transport protocol.
///
/// Every variant is fatal for the connection: after it the byte stream cannot be re-synchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame length field is below the 9 bytes every frame needs (length and type).
    #[error("frame length {length} is below the minimum of 9 bytes")]
    FrameTooShort {
        /// The length field as sent, read as Spark's signed 64-bit integer.
        length: i64,
    },
    /// The frame length field exceeds the configured maximum frame size.
    #[error("frame length {length} exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The length field as sent.
        length: u64,
        /// The configured limit.
        max: u64,
    },
    /// The type byte names no message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A header field extends past the end of its frame.
    #[error("{message_type:?} frame is too short for its {field} field")]
    Truncated {
        /// The message being decoded.
        message_type: MessageType,
        /// The field that did not fit.
        field: &'static str,
    },
    /// A length or byte-count field is negative.
    #[error("{message_type:?} frame has a negative {field}: {value}")]
    NegativeLength {
        /// The message being decoded.
        message_type: MessageType,
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A string field is not valid UTF-8.
    #[error("{message_type:?} frame has a {field} that is not valid utf-8")]
    InvalidUtf8 {
        /// The message being decoded.
        message_type: MessageType,
        /// The offending field.
        field: &'static str,
    },
    /// An id (stream id, app id) is longer than [`Config::max_id_len`](crate::Config::max_id_len).
    /// Refused before the id is copied.
    #[error("{message_type:?} frame has a {field} of {length} bytes, above the limit of {max}")]
    StringTooLong {
        /// The message being decoded.
        message_type: MessageType,
        /// The offending field.
        field: &'static str,
        /// Its length as sent.
        length: u64,
        /// The limit.
        max: u32,
    },
    /// A message type that carries no in-frame body has bytes after its header.
    #[error("{message_type:?} frame has {extra} unexpected bytes after its header")]
    TrailingBytes {
        /// The message being decoded.
        message_type: MessageType,
        /// How many bytes were left over.
        extra: u64,
    },
}

/// Why a connection ended. Cloned into the failure of every call still pending on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer sent an invalid frame.
    #[error("peer sent an invalid frame: {0}")]
    Decode(#[from] DecodeError),
    /// Requests were outstanding but nothing was read or written for the idle timeout.
    #[error(
        "connection timed out: no traffic for {idle:?} with {outstanding} outstanding requests"
    )]
    TimedOut {
        /// The configured idle timeout.
        idle: Duration,
        /// How many requests were waiting.
        outstanding: usize,
    },
    /// Closed by the idle policy: nothing outstanding and nothing read or written for the timeout.
    #[error("connection closed after being idle for {idle:?}")]
    Idle {
        /// The configured idle timeout.
        idle: Duration,
    },
    /// A frame started arriving but was not whole within
    /// [`Config::frame_timeout`](crate::Config::frame_timeout): the peer stalled mid-frame
    /// or trickled it.
    #[error("frame not received within {after:?} ({received} bytes of it received)")]
    FrameTimedOut {
        /// The configured frame timeout.
        after: Duration,
        /// How many bytes of the unfinished frame had arrived.
        received: usize,
    },
    /// An out-of-frame body was arriving and nothing was read or written for the idle
    /// timeout.
    #[error("stalled for {idle:?} with {remaining} bytes of a body still to come")]
    BodyStalled {
        /// The configured idle timeout.
        idle: Duration,
        /// How many bytes of the body were missing.
        remaining: u64,
    },
    /// A budget the driver keeps for this connection or its server was exceeded (see
    /// [`Connection::close_over_budget`](crate::Connection::close_over_budget)).
    #[error("{budget} over budget: {used} (limit {limit})")]
    OverBudget {
        /// Which budget.
        budget: &'static str,
        /// What would have been used (bytes, or a count, as the budget says).
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// The peer closed the connection cleanly, between frames.
    #[error("connection closed by peer")]
    PeerClosed,
    /// The peer closed the connection in the middle of a frame.
    #[error(
        "connection closed by peer in the middle of a frame ({buffered} bytes of it received)"
    )]
    PeerClosedMidFrame {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
    /// The peer closed the connection in the middle of an out-of-frame stream body.
    #[error("connection closed by peer with {remaining} bytes of a stream body still to come")]
    PeerClosedMidBody {
        /// How many bytes of the body were missing.
        remaining: u64,
    },
    /// This side called [`Connection::close`](crate::Connection::close).
    #[error("connection closed locally")]
    LocallyClosed,
    /// This side gave up on an out-of-frame body half sent, which leaves the byte stream
    /// unusable.
    #[error("{body} was aborted after part of it was sent: {reason}")]
    BodyAborted {
        /// The body.
        body: BodyId,
        /// Why the caller aborted it.
        reason: Arc<str>,
    },
    /// The transport (socket, TLS, ...) failed; the message is the driver's.
    #[error("transport error: {0}")]
    Transport(Arc<str>),
}

/// What a pending call resolved to when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The peer answered with a failure (`RpcFailure`, `ChunkFetchFailure`, `StreamFailure`).
    #[error("remote failure: {0}")]
    Remote(Arc<str>),
    /// The call's own timeout passed before a reply arrived.
    #[error("timed out after {after:?}")]
    TimedOut {
        /// The timeout the call was made with.
        after: Duration,
    },
    /// The connection ended before the call was answered.
    #[error("disconnected: {0}")]
    Disconnected(ConnectionError),
    /// The call was never sent.
    #[error("call not sent: {0}")]
    NotSent(CallError),
    /// The peer refused the call because this connection did not authenticate: it requires
    /// authentication (or another mechanism) that this side is not configured for. The text
    /// is the peer's refusal.
    #[error("the peer requires authentication: {0}")]
    AuthenticationRequired(Arc<str>),
    /// The peer answered with a message of the wrong kind for this call.
    #[error("expected a reply to {expected}, got a {got:?} frame")]
    UnexpectedReply {
        /// What kind of call was waiting.
        expected: &'static str,
        /// What arrived.
        got: MessageType,
    },
}

/// A command could not be carried out; nothing was queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The connection is closed or closing.
    #[error("connection is closed")]
    Closed,
    /// The encoded frame would exceed the maximum frame size.
    #[error("frame of {size} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The frame's encoded length, including its length field.
        size: u64,
        /// The limit (the configured one, and never above Spark's 2 GiB frame limit).
        max: u64,
    },
    /// The peer is not reading fast enough: the send buffer is over
    /// [`Config::max_send_buffer`](crate::Config::max_send_buffer). Retry once it drains.
    #[error("send buffer full: {buffered} bytes waiting for the peer to read (limit {max})")]
    SendBufferFull {
        /// Bytes buffered.
        buffered: u64,
        /// The limit.
        max: u64,
    },
    /// An out-of-frame byte count does not fit Spark's signed 64-bit field.
    #[error("byte count {0} does not fit a signed 64-bit integer")]
    ByteCountTooLarge(u64),
    /// A fetch of this chunk is already outstanding on this connection.
    #[error("a fetch of chunk {0} is already outstanding")]
    DuplicateChunkFetch(StreamChunkId),
    /// No request with this id is waiting for an answer from this side.
    #[error("no request {0} is waiting for an answer")]
    UnknownRequest(RequestId),
    /// No fetch of this chunk is waiting for an answer from this side.
    #[error("no fetch of chunk {0} is waiting for an answer")]
    UnknownChunkFetch(StreamChunkId),
    /// No such stream request is waiting for an answer from this side.
    #[error("{0} is not waiting for an answer")]
    UnknownStreamRequest(InboundStreamId),
    /// No such stream call is outstanding.
    #[error("{0} is not outstanding")]
    UnknownStreamCall(StreamCallId),
    /// The body is unknown or already complete.
    #[error("{0} is unknown or already complete")]
    UnknownBody(BodyId),
    /// More bytes were offered for a body than its announced byte count.
    #[error("{body} has {remaining} bytes left but {offered} were offered")]
    BodyOverrun {
        /// The body.
        body: BodyId,
        /// Bytes still expected.
        remaining: u64,
        /// Bytes offered.
        offered: u64,
    },
}

/// A configuration value is out of range: what every config builder's `build` returns
/// ([`Config`](crate::Config), [`OutboxConfig`](crate::OutboxConfig), and the driver's
/// transport, env and block fetch settings). Each variant names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The maximum frame size is outside the range the protocol allows.
    #[error("max frame size {value} is outside {min}..={max}")]
    MaxFrameSize {
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A limit of zero would refuse everything.
    #[error("{0} must be greater than zero")]
    ZeroLimit(&'static str),
    /// A timeout or wait of zero would fire at once.
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    /// The initial backoff exceeds the max backoff.
    #[error("initial backoff {initial:?} exceeds max backoff {max:?}")]
    BackoffRange {
        /// The initial backoff given.
        initial: Duration,
        /// The max backoff given.
        max: Duration,
    },
    /// The jitter is not in `0.0..1.0`.
    #[error("jitter {0} is outside 0..1")]
    Jitter(f64),
}
