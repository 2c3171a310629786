//! The connection state machine: one per TCP connection, the same on both ends.
//!
//! This file holds the [`Connection`] type and its public methods; the state they act on
//! lives in submodules with one job each:
//!
//! - `outbound`: the calls this side made and waits on, with their deadlines (`timer`);
//! - `owed`: the requests of the peer this side still owes an answer to;
//! - `receive`: what the peer sent, routed to those tables and turned into events;
//! - `send`: the ordered queue of bytes for the peer, out-of-frame bodies included;
//! - `failure`: failure answers cut to fit the limits;
//! - `event`: what the connection reports.

mod event;
mod failure;
mod outbound;
mod owed;
mod receive;
mod send;
#[cfg(test)]
mod tests;
mod timer;

pub use event::Event;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use crate::config::Config;
use crate::error::{CallError, ConnectionError, RequestError};
use crate::frame::{Frame, FrameDecoder};
use crate::id::{BodyId, Call, InboundStreamId, RequestId, StreamCallId, StreamChunkId};
use failure::{fit_error, stream_failure, CHUNK_FAILURE_HEAD_LEN, FAILURE_HEAD_LEN};
use outbound::{Outbound, RequestKind};
use owed::Owed;
use send::{Piece, SendQueue};

/// Counters of one connection, read with [`Connection::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Frames decoded from the peer.
    pub frames_received: u64,
    /// Frames queued for the peer.
    pub frames_sent: u64,
    /// Bytes fed in with `handle_*`.
    pub bytes_received: u64,
    /// Bytes handed out by [`Connection::poll_transmit`].
    pub bytes_sent: u64,
    /// Replies that matched no outstanding call (late after a timeout or cancel, or bogus);
    /// dropped, as Spark drops them.
    pub unmatched_replies: u64,
    /// Requests of the peer refused at once because too many were pending
    /// ([`Config::max_pending_requests`], [`Config::max_pending_streams`]).
    pub refused_requests: u64,
    /// Bytes held for sending now, file-backed body bytes included (see
    /// [`Connection::buffered_bytes`]).
    pub buffered_bytes: u64,
    /// Bytes of a frame received in part now (see [`Connection::partial_frame_bytes`]).
    pub partial_frame_bytes: u64,
    /// Requests of the peer (RPCs, uploads, merged-block-meta requests, chunk fetches) not
    /// answered yet.
    pub pending_requests: usize,
    /// Stream requests of the peer not answered yet or whose body is still being sent.
    pub pending_streams: usize,
}

/// The state of one transport connection: Spark's `TransportClient` and
/// `TransportRequestHandler`/`TransportResponseHandler` in one sans-IO value.
///
/// Spark connections are full duplex: either side may send requests and answer the peer's,
/// so the same type serves both ends.
///
/// # Inputs, commands and outputs
///
/// ```text
///              handle_data / handle_bytes (bytes read)       rpc, send_one_way, fetch_chunk,
///              handle_timeout (a deadline passed)            stream, upload_stream, send_body,
///              handle_closed / handle_transport_error        respond_*, cancel, close
///                            |                                        |
///                            v                                        v
///                  +------------------------------------------------------+
///                  |                      Connection                      |
///                  +------------------------------------------------------+
///                     |                       |                       |
///               poll_transmit           poll_timeout             poll_event
///             (bytes to write)      (next deadline to wake)   (requests, replies, close)
/// ```
///
/// **The drain rule:** after every input and every command, call [`poll_transmit`],
/// [`poll_event`] and [`poll_timeout`] until they return `None` (for `poll_timeout`: call it
/// once and re-arm the timer to what it returns). Nothing happens between calls; the
/// connection never reads a clock, `now` is always an argument.
///
/// # Calls and correlation
///
/// RPCs, uploads and merged-block-meta requests are matched to replies by [`RequestId`], chunk
/// fetches by [`StreamChunkId`], stream requests by order (Spark's rule: stream replies carry
/// no id). Every call ends exactly once: a reply, the peer's failure, its own timeout, or the
/// connection ending (then every pending call fails at once with the cause). A reply for no
/// pending call is dropped and counted in [`ConnectionStats::unmatched_replies`].
///
/// # Idle policy
///
/// Spark's rule: when nothing has been read or written for [`Config::idle_timeout`] and calls
/// are outstanding, the connection is closed with [`ConnectionError::TimedOut`] and the calls
/// fail; with [`Config::close_idle_connections`], an idle connection with nothing outstanding
/// is closed too ([`ConnectionError::Idle`]), unless this side still owes the peer an answer.
/// An out-of-frame body that stops arriving for the idle timeout closes the connection with
/// [`ConnectionError::BodyStalled`] whatever the policy, and a frame that takes longer than
/// [`Config::frame_timeout`] from its first byte to its last with
/// [`ConnectionError::FrameTimedOut`].
///
/// # Limits on what the peer can make this side hold
///
/// Ids above [`Config::max_id_len`] are decode errors, error texts are cut to
/// [`Config::max_error_len`]; requests beyond [`Config::max_pending_requests`] and stream
/// requests beyond [`Config::max_pending_streams`] are refused at once; bytes queued for the
/// peer are reported by [`buffered_bytes`](Connection::buffered_bytes) (file bodies
/// included), partial frames by [`partial_frame_bytes`](Connection::partial_frame_bytes), so
/// a driver can stop reading, or close with
/// [`close_over_budget`](Connection::close_over_budget), when they are over its budgets.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use rpc_proto::{Call, Config, Connection, Event};
///
/// let now = Instant::now();
/// let mut client = Connection::new(Config::default(), now);
/// let mut server = Connection::new(Config::default(), now);
///
/// let id = client.rpc(now, "ping".into(), Some(Duration::from_secs(5))).unwrap();
/// while let Some(bytes) = client.poll_transmit() {
///     server.handle_bytes(now, &bytes);
/// }
/// let Some(Event::RpcReceived { request, body }) = server.poll_event() else { panic!() };
/// assert_eq!(body, "ping");
/// server.respond_rpc(now, request, "pong".into()).unwrap();
/// while let Some(bytes) = server.poll_transmit() {
///     client.handle_bytes(now, &bytes);
/// }
/// assert_eq!(
///     client.poll_event(),
///     Some(Event::ReplyReceived { call: Call::Rpc(id), body: "pong".into() })
/// );
/// ```
///
/// [`poll_transmit`]: Connection::poll_transmit
/// [`poll_event`]: Connection::poll_event
/// [`poll_timeout`]: Connection::poll_timeout
pub struct Connection {
    config: Config,
    decoder: FrameDecoder,
    recv: BytesMut,
    next_body: u64,

    /// Calls this side made and waits on.
    outbound: Outbound,
    /// Answers this side owes the peer.
    owed: Owed,
    /// Whose out-of-frame body is arriving, if any.
    receiving: Option<Receiving>,
    /// When the first byte of the frame now arriving was received.
    frame_started: Option<Instant>,
    /// Whether `poll_transmit` handed out bytes since the last input: counted as traffic by
    /// the next input, which has the time.
    transmitted: bool,

    send: SendQueue,
    events: VecDeque<Event>,
    closed: Option<ConnectionError>,
    last_activity: Instant,
    stats: ConnectionStats,
}

/// Whose out-of-frame body is arriving.
#[derive(Debug, Clone, Copy)]
enum Receiving {
    /// A stream reply's; its call, if still live, is [`Outbound::stream_body`].
    Stream,
    /// An upload of the peer's.
    Upload(RequestId),
    /// The body of a request refused at once: discarded.
    Discard,
}

impl Connection {
    /// A new connection, opened at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed());
        // Spark's request ids are random non-negative longs; ours start at a random one.
        let first_request = rng.random::<u64>();
        Self {
            decoder: FrameDecoder::new(config.max_frame_size())
                .with_string_limits(config.max_id_len(), config.max_error_len()),
            config,
            recv: BytesMut::new(),
            next_body: 0,
            outbound: Outbound::new(first_request),
            owed: Owed::default(),
            receiving: None,
            frame_started: None,
            transmitted: false,
            send: SendQueue::default(),
            events: VecDeque::new(),
            closed: None,
            last_activity: now,
            stats: ConnectionStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---------------------------------------------------------------- inputs

    /// Feeds bytes read from the peer, copying them. See [`Connection::handle_data`] for the
    /// zero-copy form.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) {
        self.handle_data(now, BytesMut::from(data));
    }

    /// Feeds bytes read from the peer.
    ///
    /// Decoded bodies are slices of these bytes, not copies. If the driver reads into one
    /// buffer and passes what it read with `BytesMut::split`, a frame split across reads is
    /// re-joined without copying while the buffer has room.
    pub fn handle_data(&mut self, now: Instant, data: BytesMut) {
        if self.closed.is_some() || data.is_empty() {
            return;
        }
        self.stats.bytes_received += data.len() as u64;
        self.last_activity = now;
        if self.recv.is_empty() {
            self.recv = data;
        } else {
            self.recv.unsplit(data);
        }
        loop {
            match self.decoder.decode(&mut self.recv) {
                Ok(Some(item)) => self.on_decoded(item),
                Ok(None) => break,
                Err(err) => {
                    debug!(%err, "peer sent an invalid frame");
                    self.recv = BytesMut::new();
                    self.send.clear();
                    self.fail_all(err.into());
                    return;
                }
            }
            if self.closed.is_some() {
                return;
            }
        }
        self.frame_started = if self.partial_frame_bytes() > 0 {
            self.frame_started.or(Some(now))
        } else {
            None
        };
    }

    /// Tells the connection that bytes handed out by
    /// [`poll_transmit`](Connection::poll_transmit) were written at `now`: traffic, for the
    /// idle policy. A driver that does not call it has its writes counted at the next input
    /// instead, which only delays the idle policy.
    pub fn handle_written(&mut self, now: Instant) {
        self.transmitted = false;
        self.last_activity = self.last_activity.max(now);
    }

    /// Tells the connection that the peer closed its side (read returned end of file).
    pub fn handle_closed(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let _ = now;
        let error = if self.decoder.body_remaining() > 0 {
            ConnectionError::PeerClosedMidBody {
                remaining: self.decoder.body_remaining(),
            }
        } else if !self.recv.is_empty() {
            ConnectionError::PeerClosedMidFrame {
                buffered: self.recv.len(),
            }
        } else {
            ConnectionError::PeerClosed
        };
        self.send.clear();
        self.fail_all(error);
    }

    /// Tells the connection that the transport failed; `reason` is reported in the error.
    pub fn handle_transport_error(&mut self, now: Instant, reason: impl std::fmt::Display) {
        if self.closed.is_some() {
            return;
        }
        let _ = now;
        self.send.clear();
        self.fail_all(ConnectionError::Transport(Arc::from(reason.to_string())));
    }

    /// Acts on every deadline at or before `now`: call timeouts, the frame timeout and the
    /// idle policy.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if std::mem::take(&mut self.transmitted) {
            self.last_activity = now;
        }
        while let Some((call, after)) = self.outbound.pop_expired(now) {
            debug!(%call, ?after, "call timed out");
            self.fail(call, RequestError::TimedOut { after });
        }
        if let Some(deadline) = self.frame_deadline() {
            if now >= deadline {
                let error = ConnectionError::FrameTimedOut {
                    after: self
                        .config
                        .frame_timeout()
                        .expect("deadline implies a timeout"),
                    received: self.recv.len(),
                };
                debug!(%error, "cutting a peer stalled mid-frame");
                self.recv = BytesMut::new();
                self.send.clear();
                self.fail_all(error);
                return;
            }
        }
        if let Some(deadline) = self.idle_deadline() {
            if now >= deadline {
                let idle = self
                    .config
                    .idle_timeout()
                    .expect("deadline implies a timeout");
                let outstanding = self.outstanding_calls();
                let remaining = self.decoder.body_remaining();
                let error = if outstanding > 0 {
                    ConnectionError::TimedOut { idle, outstanding }
                } else if remaining > 0 {
                    ConnectionError::BodyStalled { idle, remaining }
                } else {
                    ConnectionError::Idle { idle }
                };
                debug!(%error, "closing idle connection");
                self.send.clear();
                self.fail_all(error);
            }
        }
    }

    // ---------------------------------------------------------------- outputs

    /// The next bytes to write to the peer, in order. Small frames are coalesced into one
    /// buffer; a large in-frame body comes as its own buffer right after its header, so a
    /// driver that gathers several results into one vectored write sends a frame in one write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let out = self.send.pop()?;
        self.transmitted = true;
        self.stats.bytes_sent += out.len() as u64;
        Some(out)
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Connection::handle_timeout) must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        [
            self.outbound.next_deadline(),
            self.idle_deadline(),
            self.frame_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---------------------------------------------------------------- state

    /// Whether the connection has ended (see [`close_reason`](Connection::close_reason)).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<&ConnectionError> {
        self.closed.as_ref()
    }

    /// Whether the connection has ended and has nothing left to transmit: the driver may close
    /// the socket.
    pub fn is_drained(&self) -> bool {
        self.closed.is_some() && self.send.is_empty()
    }

    /// Bytes [`poll_transmit`](Connection::poll_transmit) can hand out now. Drivers stop
    /// feeding body bytes while this is high, which bounds memory to what the socket can take.
    ///
    /// Frames queued behind a body that is still being fed do not count (they cannot move
    /// before the body does), nor do bodies of stream answers waiting for earlier answers.
    pub fn queued_bytes(&self) -> u64 {
        self.send.ready_bytes()
    }

    /// Every byte held for sending, including what waits behind an unfinished body and the
    /// file-backed body bytes the driver is to write itself (each such body holds a file
    /// open): what [`Config::max_send_buffer`] limits.
    pub fn buffered_bytes(&self) -> u64 {
        self.send.buffered_bytes()
    }

    /// Bytes of a frame received in part (the frame now arriving, or several frames' worth
    /// not yet decoded); zero between frames and while an out-of-frame body arrives (its
    /// bytes are handed out as they come). The read buffer grows only with bytes that
    /// arrive, so this is what a peer that stops mid-frame pins; drivers add it up across a
    /// server's connections.
    pub fn partial_frame_bytes(&self) -> u64 {
        if self.closed.is_some() {
            return 0;
        }
        self.recv.len() as u64
    }

    /// Requests of the peer this side has not answered yet: RPCs, uploads, merged-block-meta
    /// requests and chunk fetches, limited by [`Config::max_pending_requests`].
    pub fn pending_requests(&self) -> usize {
        self.owed.pending_requests()
    }

    /// Stream requests of the peer not answered yet, or answered with a body still in the
    /// send queue: limited by [`Config::max_pending_streams`].
    pub fn pending_streams(&self) -> usize {
        self.owed.pending_streams(|b| self.send.has_body(b))
    }

    /// Closes the connection because a budget the driver keeps was exceeded (bytes of partial
    /// frames across a server's connections, say): like [`close`](Connection::close), but
    /// the cause is [`ConnectionError::OverBudget`] and nothing queued is sent (the peer is
    /// the problem).
    pub fn close_over_budget(&mut self, now: Instant, budget: &'static str, used: u64, limit: u64) {
        if self.closed.is_some() {
            return;
        }
        let _ = now;
        self.recv = BytesMut::new();
        self.send.clear();
        self.fail_all(ConnectionError::OverBudget {
            budget,
            used,
            limit,
        });
    }

    /// Whether new calls would be refused with [`CallError::SendBufferFull`] now.
    pub fn is_send_buffer_full(&self) -> bool {
        self.send.buffered_bytes() >= self.config.max_send_buffer()
    }

    /// Calls of this side still waiting for the peer, as Spark counts them (RPCs, uploads,
    /// merged-block-meta requests, chunk fetches, stream requests, a stream being received).
    pub fn outstanding_calls(&self) -> usize {
        self.outbound.len()
    }

    /// The connection's counters.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            frames_sent: self.send.frames(),
            buffered_bytes: self.buffered_bytes(),
            partial_frame_bytes: self.partial_frame_bytes(),
            pending_requests: self.pending_requests(),
            pending_streams: self.pending_streams(),
            ..self.stats
        }
    }

    // ---------------------------------------------------------------- calls

    /// Sends an RPC; its reply arrives as [`Event::ReplyReceived`] or [`Event::CallFailed`].
    ///
    /// With a `timeout`, the call fails with [`RequestError::TimedOut`] if no reply has arrived
    /// by then.
    pub fn rpc(
        &mut self,
        now: Instant,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<RequestId, CallError> {
        self.start_request(now, RequestKind::Rpc, timeout, |request| {
            Frame::RpcRequest { request, body }
        })
    }

    /// Sends a one-way message.
    pub fn send_one_way(&mut self, now: Instant, body: Bytes) -> Result<(), CallError> {
        self.start(now, &Frame::OneWayMessage { body })
    }

    /// Asks for one chunk of a stream registered on the peer; it arrives as
    /// [`Event::ChunkReceived`] or [`Event::CallFailed`].
    pub fn fetch_chunk(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        timeout: Option<Duration>,
    ) -> Result<(), CallError> {
        self.check_open()?;
        self.check_room()?;
        if self.outbound.has_chunk_fetch(chunk) {
            return Err(CallError::DuplicateChunkFetch(chunk));
        }
        self.queue(now, &Frame::ChunkFetchRequest { chunk })?;
        self.outbound.add_chunk_fetch(now, chunk, timeout);
        Ok(())
    }

    /// Asks for a named stream; it arrives as [`Event::StreamOpened`], [`Event::StreamData`]
    /// pieces and [`Event::StreamFinished`], or as [`Event::CallFailed`].
    ///
    /// The timeout covers the whole stream, until its last byte.
    pub fn stream(
        &mut self,
        now: Instant,
        stream_id: &str,
        timeout: Option<Duration>,
    ) -> Result<StreamCallId, CallError> {
        let frame = Frame::StreamRequest {
            stream_id: stream_id.to_owned(),
        };
        self.start(now, &frame)?;
        Ok(self.outbound.add_stream(now, timeout))
    }

    /// Starts an upload: `meta` in the frame, then `byte_count` body bytes fed with
    /// [`send_body`](Connection::send_body). The reply arrives as [`Event::ReplyReceived`] or
    /// [`Event::CallFailed`].
    ///
    /// Until the body is complete, nothing else can be written on this connection: frames
    /// queued meanwhile wait behind it, as in Spark.
    pub fn upload_stream(
        &mut self,
        now: Instant,
        meta: Bytes,
        byte_count: u64,
        timeout: Option<Duration>,
    ) -> Result<(RequestId, BodyId), CallError> {
        self.check_open()?;
        self.check_room()?;
        check_byte_count(byte_count)?;
        let request = self.start_request(now, RequestKind::Upload, timeout, |request| {
            Frame::UploadStream {
                request,
                meta,
                byte_count,
            }
        })?;
        let body = self.start_body(byte_count);
        self.send.enqueue_body(body);
        Ok((request, body))
    }

    /// Asks for the metadata of a push-merged shuffle block; it arrives as
    /// [`Event::MergedBlockMetaReceived`] or [`Event::CallFailed`].
    pub fn merged_block_meta(
        &mut self,
        now: Instant,
        app_id: &str,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_id: i32,
        timeout: Option<Duration>,
    ) -> Result<RequestId, CallError> {
        self.start_request(now, RequestKind::MergedBlockMeta, timeout, |request| {
            Frame::MergedBlockMetaRequest {
                request,
                app_id: app_id.to_owned(),
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
            }
        })
    }

    /// Feeds the next bytes of an out-of-frame body (an upload's, or a stream response's).
    ///
    /// Bytes are sent in the order fed; the body ends when its announced byte count has been
    /// fed. Offering more than that is refused with [`CallError::BodyOverrun`].
    pub fn send_body(&mut self, now: Instant, body: BodyId, data: Bytes) -> Result<(), CallError> {
        self.feed(now, body, Piece::Data(data))
    }

    /// Feeds the next `len` bytes of a body as bytes the driver writes to the socket itself
    /// (from a file, with `sendfile`): when the wire reaches them,
    /// [`poll_external`](Connection::poll_external) names them and
    /// [`poll_transmit`](Connection::poll_transmit) returns `None` until the driver reports
    /// them written with [`handle_external_written`](Connection::handle_external_written).
    pub fn send_body_external(
        &mut self,
        now: Instant,
        body: BodyId,
        len: u64,
    ) -> Result<(), CallError> {
        self.feed(now, body, Piece::External(len))
    }

    /// Body bytes the driver must write itself before anything else: `(body, len)`. See
    /// [`send_body_external`](Connection::send_body_external).
    #[must_use]
    pub fn poll_external(&self) -> Option<(BodyId, u64)> {
        self.send.external()
    }

    /// The driver wrote `n` of the external body bytes [`poll_external`] named.
    ///
    /// [`poll_external`]: Connection::poll_external
    pub fn handle_external_written(&mut self, now: Instant, n: u64) {
        self.stats.bytes_sent += n;
        self.last_activity = now;
        self.send.external_written(n);
    }

    /// Bytes of a body still to be fed, or `None` if the body is unknown or complete.
    pub fn body_remaining(&self, body: BodyId) -> Option<u64> {
        self.send.bodies_unfed(body)
    }

    /// Gives up on a body that cannot be completed (its source failed).
    ///
    /// The peer expects the announced number of bytes and there is no way to tell it
    /// otherwise, so this closes the connection with [`ConnectionError::BodyAborted`], as
    /// Spark does. As with [`close`](Connection::close), what was queued whole before the
    /// body (its own frame included) is still written, so the peer sees the body cut short
    /// rather than losing earlier messages; the body and everything behind it are dropped.
    pub fn abort_body(&mut self, now: Instant, body: BodyId, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        let _ = now;
        self.send.truncate_unfinished(Some(body));
        self.fail_all(ConnectionError::BodyAborted {
            body,
            reason: Arc::from(reason),
        });
    }

    /// Forgets a pending call: no event will be reported for it, and a late reply is dropped
    /// (a late stream reply's bytes are read and discarded). Returns whether the call was
    /// pending.
    pub fn cancel(&mut self, call: Call) -> bool {
        self.outbound.cancel(call)
    }

    /// Closes the connection: every pending call fails with
    /// [`ConnectionError::LocallyClosed`]. Frames already queued stay queued, so the driver
    /// can flush them before closing the socket (see [`is_drained`](Connection::is_drained)),
    /// except what stands behind an unfinished body.
    pub fn close(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let _ = now;
        self.send.truncate_unfinished(None);
        self.fail_all(ConnectionError::LocallyClosed);
    }

    // ---------------------------------------------------------------- answers

    /// Answers the peer's RPC or upload with a reply.
    pub fn respond_rpc(
        &mut self,
        now: Instant,
        request: RequestId,
        body: Bytes,
    ) -> Result<(), CallError> {
        self.answer(now, request, &Frame::RpcResponse { request, body })
    }

    /// Answers the peer's RPC, upload or merged-block-meta request with a failure.
    pub fn respond_rpc_failure(
        &mut self,
        now: Instant,
        request: RequestId,
        error: &str,
    ) -> Result<(), CallError> {
        let error = fit_error(&self.config, error, FAILURE_HEAD_LEN);
        self.answer(now, request, &Frame::RpcFailure { request, error })
    }

    /// Answers the peer's merged-block-meta request.
    pub fn respond_merged_block_meta(
        &mut self,
        now: Instant,
        request: RequestId,
        chunk_count: i32,
        body: Bytes,
    ) -> Result<(), CallError> {
        let frame = Frame::MergedBlockMetaSuccess {
            request,
            chunk_count,
            body,
        };
        self.answer(now, request, &frame)
    }

    /// Answers the peer's chunk fetch with the chunk.
    pub fn respond_chunk(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        body: Bytes,
    ) -> Result<(), CallError> {
        self.answer_chunk(now, chunk, &Frame::ChunkFetchSuccess { chunk, body })
    }

    /// Answers the peer's chunk fetch with a chunk of `len` bytes that the driver writes to
    /// the socket itself (from a file, with `sendfile`): the bytes on the wire are those of
    /// [`respond_chunk`](Connection::respond_chunk) with the same body, a
    /// `ChunkFetchSuccess` frame whose length counts the body.
    ///
    /// The frame's head is queued now, and the body behind it as `len` external bytes, as
    /// [`send_body_external`](Connection::send_body_external) queues them for a stream: when
    /// the wire reaches them, [`poll_external`](Connection::poll_external) names the returned
    /// body and [`poll_transmit`](Connection::poll_transmit) returns `None` until the driver
    /// reports them written with
    /// [`handle_external_written`](Connection::handle_external_written); frames queued later
    /// go after them. The bytes count in [`buffered_bytes`](Connection::buffered_bytes) until
    /// written. A driver that cannot write them all (the file shrank, a read failed) must
    /// call [`abort_body`](Connection::abort_body): the peer cannot be told in the middle of
    /// a frame, so the connection closes with [`ConnectionError::BodyAborted`].
    ///
    /// An empty chunk is queued whole (no body to write; the id names nothing). A chunk too
    /// large for a frame ([`Config::max_frame_size`]) is refused with
    /// [`CallError::FrameTooLarge`] before anything is queued, and the fetch is still owed
    /// (answer it with [`respond_chunk_failure`](Connection::respond_chunk_failure)).
    pub fn respond_chunk_external(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        len: u64,
    ) -> Result<BodyId, CallError> {
        self.check_open()?;
        self.owed.check_chunk(chunk)?;
        let frame = Frame::ChunkFetchSuccess {
            chunk,
            body: Bytes::new(),
        };
        let size = frame.frame_len().saturating_add(len);
        let max = self.config.max_frame_size();
        if size > max {
            return Err(CallError::FrameTooLarge { size, max });
        }
        self.send.push_head(&frame, len);
        let body = self.start_body(len);
        if len > 0 {
            self.send.enqueue_body(body);
            self.send.feed(body, Piece::External(len))?;
        }
        self.last_activity = now;
        self.owed.settle_chunk(chunk);
        Ok(body)
    }

    /// Answers the peer's chunk fetch with a failure.
    pub fn respond_chunk_failure(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        error: &str,
    ) -> Result<(), CallError> {
        let error = fit_error(&self.config, error, CHUNK_FAILURE_HEAD_LEN);
        self.answer_chunk(now, chunk, &Frame::ChunkFetchFailure { chunk, error })
    }

    /// Answers the peer's stream request: the stream has `byte_count` bytes, fed with
    /// [`send_body`](Connection::send_body) using the returned id.
    ///
    /// Answers are sent in the order the requests arrived (the peer matches them by order):
    /// an answer given early waits, and body bytes fed for it are buffered, until the earlier
    /// requests are answered.
    pub fn respond_stream(
        &mut self,
        now: Instant,
        request: InboundStreamId,
        stream_id: &str,
        byte_count: u64,
    ) -> Result<BodyId, CallError> {
        self.check_open()?;
        check_byte_count(byte_count)?;
        let frame = Frame::StreamResponse {
            stream_id: stream_id.to_owned(),
            byte_count,
        };
        self.check_size(&frame)?;
        self.owed.check_stream(request)?;
        let body = self.start_body(byte_count);
        let send = &self.send;
        self.owed
            .answer_stream(request, frame, (byte_count > 0).then_some(body), |b| {
                send.has_body(b)
            })?;
        self.flush_stream_answers(now);
        Ok(body)
    }

    /// Answers the peer's stream request with a failure.
    ///
    /// The stream id and the error are cut to [`Config::max_id_len`] and
    /// [`Config::max_error_len`] and to what fits a frame, so a failure can always be sent
    /// and the answers queued behind it go out.
    pub fn respond_stream_failure(
        &mut self,
        now: Instant,
        request: InboundStreamId,
        stream_id: &str,
        error: &str,
    ) -> Result<(), CallError> {
        self.check_open()?;
        self.owed.check_stream(request)?;
        let frame = stream_failure(&self.config, stream_id, error);
        let send = &self.send;
        self.owed
            .answer_stream(request, frame, None, |b| send.has_body(b))?;
        self.flush_stream_answers(now);
        Ok(())
    }

    // ---------------------------------------------------------------- internals

    fn check_open(&self) -> Result<(), CallError> {
        match self.closed {
            Some(_) => Err(CallError::Closed),
            None => Ok(()),
        }
    }

    /// Refuses new calls while the send buffer is over its limit.
    fn check_room(&self) -> Result<(), CallError> {
        let buffered = self.send.buffered_bytes();
        let max = self.config.max_send_buffer();
        if buffered >= max {
            return Err(CallError::SendBufferFull { buffered, max });
        }
        Ok(())
    }

    fn check_size(&self, frame: &Frame) -> Result<(), CallError> {
        let size = frame.frame_len();
        let max = self.config.max_frame_size();
        if size > max {
            return Err(CallError::FrameTooLarge { size, max });
        }
        Ok(())
    }

    /// Checks and queues one frame.
    fn queue(&mut self, now: Instant, frame: &Frame) -> Result<(), CallError> {
        self.check_open()?;
        self.check_size(frame)?;
        self.send.push_frame(frame);
        self.last_activity = now;
        Ok(())
    }

    /// Sends the frame that starts an outbound call (or a one-way message): refused when the
    /// connection has ended, the send buffer is full or the frame too large.
    fn start(&mut self, now: Instant, frame: &Frame) -> Result<(), CallError> {
        self.check_open()?;
        self.check_room()?;
        self.queue(now, frame)
    }

    /// Starts a call matched by request id: picks the id, sends the frame `frame` builds with
    /// it and records the call, with its timer, in the outbound table.
    fn start_request(
        &mut self,
        now: Instant,
        kind: RequestKind,
        timeout: Option<Duration>,
        frame: impl FnOnce(RequestId) -> Frame,
    ) -> Result<RequestId, CallError> {
        self.check_open()?;
        self.check_room()?;
        let request = self.outbound.next_request_id();
        self.queue(now, &frame(request))?;
        self.outbound.add_request(now, request, kind, timeout);
        Ok(request)
    }

    /// Feeds the next piece of an out-of-frame body, refusing an unknown or complete body and
    /// more bytes than are left to feed.
    fn feed(&mut self, now: Instant, body: BodyId, piece: Piece) -> Result<(), CallError> {
        self.check_open()?;
        self.send.feed(body, piece)?;
        self.last_activity = now;
        Ok(())
    }

    /// Sends the answer to an owed request, then settles it.
    fn answer(&mut self, now: Instant, request: RequestId, frame: &Frame) -> Result<(), CallError> {
        self.check_open()?;
        self.owed.check_request(request)?;
        self.queue(now, frame)?;
        self.owed.settle_request(request);
        Ok(())
    }

    /// Sends the answer to an owed chunk fetch, then settles it.
    fn answer_chunk(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        frame: &Frame,
    ) -> Result<(), CallError> {
        self.check_open()?;
        self.owed.check_chunk(chunk)?;
        self.queue(now, frame)?;
        self.owed.settle_chunk(chunk);
        Ok(())
    }

    /// Queues the stream answers whose turn has come.
    fn flush_stream_answers(&mut self, now: Instant) {
        while let Some((frame, body)) = self.owed.pop_stream_answer() {
            self.send.push_frame(&frame);
            if let Some(body) = body {
                self.send.enqueue_body(body);
            }
            self.last_activity = now;
        }
    }

    fn start_body(&mut self, byte_count: u64) -> BodyId {
        let id = BodyId(self.next_body);
        self.next_body += 1;
        if byte_count > 0 {
            self.send.new_body(id, byte_count);
        }
        id
    }

    /// The idle policy's deadline: with calls of this side outstanding (Spark's rule), while
    /// an out-of-frame body arrives, or, with [`Config::close_idle_connections`], when
    /// nothing is outstanding on either side (this side owes the peer no answer).
    fn idle_deadline(&self) -> Option<Instant> {
        let timeout = self.config.idle_timeout()?;
        let applies = self.outstanding_calls() > 0
            || self.decoder.body_remaining() > 0
            || (self.config.close_idle_connections() && self.owed.is_empty());
        if !applies {
            return None;
        }
        self.last_activity.checked_add(timeout)
    }

    /// When the frame now arriving must be whole.
    fn frame_deadline(&self) -> Option<Instant> {
        self.frame_started?
            .checked_add(self.config.frame_timeout()?)
    }

    fn fail(&mut self, call: Call, error: RequestError) {
        self.events.push_back(Event::CallFailed { call, error });
    }

    /// Ends the connection: fails every pending call with `error`, then reports `Closed`.
    fn fail_all(&mut self, error: ConnectionError) {
        debug!(%error, "connection closed");
        self.closed = Some(error.clone());
        let lost = RequestError::Disconnected(error.clone());

        let calls = self.outbound.drain();
        // Requests and chunk fetches fail first, then an upload arriving is aborted, then the
        // streams fail, in reply order.
        let streams_from = calls
            .iter()
            .position(|c| matches!(c, Call::Stream(_)))
            .unwrap_or(calls.len());
        let (calls, streams) = calls.split_at(streams_from);
        for &call in calls {
            self.fail(call, lost.clone());
        }
        if let Some(Receiving::Upload(request)) = self.receiving.take() {
            self.events.push_back(Event::UploadAborted {
                request,
                error: error.clone(),
            });
        }
        for &call in streams {
            self.fail(call, lost.clone());
        }
        self.owed.clear();
        self.events.push_back(Event::Closed { error });
    }
}

fn check_byte_count(byte_count: u64) -> Result<(), CallError> {
    if byte_count > i64::MAX as u64 {
        return Err(CallError::ByteCountTooLarge(byte_count));
    }
    Ok(())
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("outstanding_calls", &self.outstanding_calls())
            .field("queued_bytes", &self.queued_bytes())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}
