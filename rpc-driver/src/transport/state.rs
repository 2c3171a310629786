//! What a connection's handles and its driver task share: the protocol state behind one
//! mutex, the completion slots of pending calls, the streams being received, and the flow
//! control between them (when the driver reads, when writers and upload feeders may go on).

use std::collections::VecDeque;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc_proto::{
    Call, CallError, Connection, Event, RequestError, RequestId, StreamCallId, StreamChunkId,
};
use rustc_hash::FxHashMap;

use super::addrs::ConnectionAddrs;
use super::id::ConnectionId;
use super::merged::{MergedBlockMeta, MergedBlockMetaRequest};
use crate::completion::{self, Completer, Waiter};
use crate::runtime::Runtime;
use crate::sync::{lock, Mutex};
use crate::wait_list::WaitList;

// Handles on trait objects (runtime, handler) are std `Arc`s even under loom: loom's `Arc`
// cannot coerce to `dyn`, and they are not state the loom models need to see.
use crate::sync::unmodeled::Arc as StdArc;

// `zero_copy` is a stats counter, read only for logs: loom need not model it.
use crate::sync::unmodeled::atomic::AtomicU64;

/// Reads start this large and double while they fill the buffer.
pub(super) const READ_CHUNK_MIN: usize = 8 * 1024;

pub(super) type RpcResult = Result<Bytes, RequestError>;
pub(super) type MetaResult = Result<MergedBlockMeta, RequestError>;

/// Where a pending call's result goes: a body (RPCs, uploads, chunk fetches) or merged block
/// metadata.
pub(super) enum CallSlot {
    Body(Completer<RpcResult>),
    Meta(Completer<MetaResult>),
}

impl CallSlot {
    pub(super) fn fail(self, error: RequestError) {
        // The caller may have dropped its future a moment ago; then nobody wants it.
        match self {
            Self::Body(completer) => drop(completer.complete(Err(error))),
            Self::Meta(completer) => drop(completer.complete(Err(error))),
        }
    }
}

/// Stream bytes received but not yet taken by their
/// [`StreamCall`](super::stream_call::StreamCall) past which the driver stops reading the
/// socket: a slow consumer holds at most about this much (plus one read).
pub const STREAM_BUFFER_LIMIT: usize = 4 * 1024 * 1024;

/// Upload body bytes queued for the socket past which an upload's feeder waits.
pub(super) const BODY_HIGH_WATER: u64 = 1024 * 1024;

/// What the handles and the driver task share, behind one mutex.
pub(crate) struct ConnState {
    pub(crate) conn: Connection,
    /// Completion slots of the calls handles are waiting on (RPCs, uploads, chunk fetches,
    /// merged-block-meta requests). Keyed by ids this side chose, so a fast non-keyed hash is
    /// safe here.
    pub(super) calls: FxHashMap<Call, CallSlot>,
    /// Streams being received, by call.
    pub(super) streams: FxHashMap<StreamCallId, StreamSlot>,
    /// Bytes in `streams` not yet taken by their consumers.
    pub(super) stream_buffered: usize,
    /// Whether the driver stopped reading because of `stream_buffered`; the consumer that
    /// brings it below half the limit wakes the driver.
    read_paused: bool,
    driver: Option<Waker>,
    /// Tasks waiting in [`TransportClient::ready`](super::client::TransportClient::ready)
    /// for room in the send buffer.
    pub(super) ready: WaitList,
    /// Upload feeders waiting for the body queue to drain.
    pub(super) feeders: WaitList,
}

/// What has arrived of one stream.
#[derive(Default)]
pub(super) struct StreamSlot {
    pub(super) pieces: VecDeque<Bytes>,
    pub(super) byte_count: Option<u64>,
    pub(super) end: Option<Result<(), RequestError>>,
    pub(super) waker: Option<Waker>,
}

impl StreamSlot {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl ConnState {
    pub(crate) fn new(conn: Connection) -> Self {
        Self {
            conn,
            calls: FxHashMap::default(),
            streams: FxHashMap::default(),
            stream_buffered: 0,
            read_paused: false,
            driver: None,
            ready: WaitList::default(),
            feeders: WaitList::default(),
        }
    }

    /// Whether the driver may read: not while consumers of streams lag too far behind.
    pub(super) fn reading_allowed(&mut self) -> bool {
        self.read_paused = self.stream_buffered >= STREAM_BUFFER_LIMIT;
        !self.read_paused
    }

    /// The most one read may bring in: what stream consumers leave of
    /// [`STREAM_BUFFER_LIMIT`], so that waiting stream bytes stay within the limit plus
    /// `READ_CHUNK_MIN`, however large reads have grown.
    pub(super) fn read_room(&self, chunk: usize) -> usize {
        chunk.min(
            STREAM_BUFFER_LIMIT
                .saturating_sub(self.stream_buffered)
                .max(READ_CHUNK_MIN),
        )
    }

    /// Called as stream bytes are taken: whether the driver must be woken to read again.
    pub(super) fn resume_reading(&mut self) -> bool {
        if self.read_paused && self.stream_buffered < STREAM_BUFFER_LIMIT / 2 {
            self.read_paused = false;
            return true;
        }
        false
    }

    /// Whether an upload's feeder may queue more body bytes.
    pub(super) fn body_has_room(&self) -> bool {
        self.conn.is_closed() || self.conn.queued_bytes() < BODY_HIGH_WATER
    }

    /// Whether a task waiting for room may go on: the send buffer drained below half its
    /// limit (hysteresis, so waiters are not woken for every write), or the connection ended.
    fn has_room(&self) -> bool {
        self.conn.is_closed()
            || self.conn.buffered_bytes() < self.conn.config().max_send_buffer() / 2
    }

    /// Wakes the tasks waiting for room, if there is room.
    pub(super) fn wake_ready(&mut self) {
        if !self.ready.is_empty() && self.has_room() {
            self.ready.wake_all();
        }
        if !self.feeders.is_empty()
            && (self.conn.is_closed() || self.conn.queued_bytes() < BODY_HIGH_WATER / 2)
        {
            self.feeders.wake_all();
        }
    }

    /// Drains the connection's events: completes the calls they end and collects the rest
    /// for the handler.
    pub(crate) fn process_events(&mut self, inbound: &mut Vec<Event>) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::ReplyReceived { call, body } => self.complete(call, Ok(body)),
                Event::ChunkReceived { chunk, body } => {
                    self.complete(Call::ChunkFetch(chunk), Ok(body))
                }
                Event::MergedBlockMetaReceived {
                    request,
                    chunk_count,
                    body,
                } => {
                    let meta = MergedBlockMeta { chunk_count, body };
                    match self.calls.remove(&Call::MergedBlockMeta(request)) {
                        Some(CallSlot::Meta(completer)) => drop(completer.complete(Ok(meta))),
                        Some(other) => other.fail(RequestError::UnexpectedReply {
                            expected: "a merged block meta request",
                            got: rpc_proto::MessageType::MergedBlockMetaSuccess,
                        }),
                        None => {}
                    }
                }
                Event::StreamOpened { stream, byte_count } => {
                    if let Some(slot) = self.streams.get_mut(&stream) {
                        slot.byte_count = Some(byte_count);
                        slot.wake();
                    }
                }
                Event::StreamData { stream, data } => {
                    if let Some(slot) = self.streams.get_mut(&stream) {
                        self.stream_buffered += data.len();
                        slot.pieces.push_back(data);
                        slot.wake();
                    }
                }
                Event::StreamFinished { stream } => {
                    if let Some(slot) = self.streams.get_mut(&stream) {
                        slot.end = Some(Ok(()));
                        slot.wake();
                    }
                }
                Event::CallFailed {
                    call: Call::Stream(stream),
                    error,
                } => {
                    if let Some(slot) = self.streams.get_mut(&stream) {
                        slot.end = Some(Err(error));
                        slot.wake();
                    }
                }
                Event::CallFailed { call, error } => {
                    if let Some(slot) = self.calls.remove(&call) {
                        slot.fail(error);
                    }
                }
                other => inbound.push(other),
            }
        }
    }

    /// Completes a call waiting for a body.
    fn complete(&mut self, call: Call, result: RpcResult) {
        match self.calls.remove(&call) {
            // The caller may have dropped its future a moment ago; then nobody wants it.
            Some(CallSlot::Body(completer)) => drop(completer.complete(result)),
            Some(slot @ CallSlot::Meta(_)) => slot.fail(RequestError::UnexpectedReply {
                expected: "a merged block meta request",
                got: rpc_proto::MessageType::RpcResponse,
            }),
            None => {}
        }
    }

    /// Starts an RPC; the waiter resolves exactly once.
    pub(crate) fn start_rpc(
        &mut self,
        now: Instant,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<(RequestId, Waiter<RpcResult>), CallError> {
        let id = self.conn.rpc(now, body, timeout)?;
        let (completer, waiter) = completion::pair();
        self.calls.insert(Call::Rpc(id), CallSlot::Body(completer));
        Ok((id, waiter))
    }

    /// Starts a merged-block-meta request; the waiter resolves exactly once.
    pub(super) fn start_merged_block_meta(
        &mut self,
        now: Instant,
        request: &MergedBlockMetaRequest,
        timeout: Option<Duration>,
    ) -> Result<(RequestId, Waiter<MetaResult>), CallError> {
        let id = self.conn.merged_block_meta(
            now,
            &request.app_id,
            request.shuffle_id,
            request.shuffle_merge_id,
            request.reduce_id,
            timeout,
        )?;
        let (completer, waiter) = completion::pair();
        self.calls
            .insert(Call::MergedBlockMeta(id), CallSlot::Meta(completer));
        Ok((id, waiter))
    }

    /// Starts a chunk fetch; the waiter resolves exactly once.
    pub(crate) fn start_chunk_fetch(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        timeout: Option<Duration>,
    ) -> Result<Waiter<RpcResult>, CallError> {
        self.conn.fetch_chunk(now, chunk, timeout)?;
        let (completer, waiter) = completion::pair();
        self.calls
            .insert(Call::ChunkFetch(chunk), CallSlot::Body(completer));
        Ok(waiter)
    }

    /// Forgets a stream whose consumer went away; its remaining bytes are discarded.
    /// Returns whether reading may resume because of it.
    pub(super) fn abandon_stream(&mut self, id: StreamCallId) -> bool {
        if let Some(slot) = self.streams.remove(&id) {
            self.stream_buffered -= slot.pieces.iter().map(Bytes::len).sum::<usize>();
            if slot.end.is_none() {
                self.conn.cancel(Call::Stream(id));
            }
        }
        self.resume_reading()
    }

    /// Forgets a call whose caller went away.
    pub(crate) fn abandon(&mut self, call: Call) {
        if self.calls.remove(&call).is_some() {
            self.conn.cancel(call);
        }
    }

    /// The driver's waker, to be woken after the lock is released.
    pub(crate) fn take_driver(&mut self) -> Option<Waker> {
        self.driver.take()
    }

    /// Wakers stored for tasks waiting for room: in
    /// [`TransportClient::ready`](super::client::TransportClient::ready), and upload
    /// feeders.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> (usize, usize) {
        (self.ready.len(), self.feeders.len())
    }

    /// Registers the driver's waker.
    pub(crate) fn park_driver(&mut self, waker: &Waker) {
        match &mut self.driver {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
    }
}

/// A connection's shared state and what its handles need besides: the one allocation every
/// handle, call and responder of the connection points to.
pub(crate) struct ConnInner {
    /// Body bytes written straight from files with `sendfile`.
    pub(super) zero_copy: AtomicU64,
    pub(crate) rt: StdArc<dyn Runtime>,
    pub(crate) addrs: ConnectionAddrs,
    pub(super) id: ConnectionId,
    /// The app id the peer authenticated as, on a secured connection.
    pub(super) client_id: Option<StdArc<str>>,
    pub(crate) state: Mutex<ConnState>,
}

impl ConnInner {
    /// Runs `f` on the state under the lock, then wakes the driver so it acts on the change.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut ConnState, Instant) -> R) -> R {
        let now = self.rt.now();
        let (result, waker) = {
            let mut st = lock(&self.state);
            let result = f(&mut st, now);
            (result, st.take_driver())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        result
    }
}
