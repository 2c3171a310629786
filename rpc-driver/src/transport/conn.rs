//! One connection: the shared state, the driver task, and the handles on it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
// Handles on trait objects (runtime, handler) are std `Arc`s even under loom: loom's `Arc`
// cannot coerce to `dyn`, and they are not state the loom models need to see.
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{Stream, StreamExt};
use rpc_proto::{
    Call, CallError, Config, Connection, ConnectionError, Event, RequestId, RpcError, StreamCallId,
    StreamChunkId,
};
use rustc_hash::FxHashMap;
use tracing::{debug, trace, warn, Instrument};

use super::stream::{chunk_stream_closed, stream_not_found};
use super::{
    ConnectionAddrs, FileSegment, ManagedBuffer, MergedBlockMeta, MergedBlockMetaRequest,
    MergedBlockMetaResponder, RpcHandler, UploadSink,
};
use crate::completion::{self, Completer, Waiter};
use crate::log_limit::limited;
use crate::runtime::{unblock, AsyncStream, AsyncTimer, Runtime, Unblock};
use crate::sync::{lock, Arc, Mutex};
use crate::wait_list::{WaitKey, WaitList};

/// Reads start this large and double while they fill the buffer.
const READ_CHUNK_MIN: usize = 8 * 1024;
const READ_CHUNK_MAX: usize = 2 * 1024 * 1024;
/// Buffers gathered into one vectored write.
const MAX_IOVECS: usize = 64;
/// Loop turns in one poll of the driver before it yields to other tasks.
const POLL_BUDGET: usize = 32;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A seed of its own for each connection's random number generator (its first request id),
/// from the standard library's per-process random keys: not for secrets, only so that
/// connections do not share request ids.
fn connection_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new()
        .hash_one(NEXT_CONNECTION_ID.load(Ordering::Relaxed))
}

type RpcResult = Result<Bytes, RpcError>;
type MetaResult = Result<MergedBlockMeta, RpcError>;

/// Where a pending call's result goes: a body (RPCs, uploads, chunk fetches) or merged block
/// metadata.
enum CallSlot {
    Body(Completer<RpcResult>),
    Meta(Completer<MetaResult>),
}

impl CallSlot {
    fn fail(self, error: RpcError) {
        // The caller may have dropped its future a moment ago; then nobody wants it.
        match self {
            CallSlot::Body(completer) => drop(completer.complete(Err(error))),
            CallSlot::Meta(completer) => drop(completer.complete(Err(error))),
        }
    }
}

/// Stream bytes received but not yet taken by their [`StreamCall`] past which the driver
/// stops reading the socket: a slow consumer holds at most about this much (plus one read).
pub const STREAM_BUFFER_LIMIT: usize = 4 * 1024 * 1024;

/// Bytes of a `ChunkFetchSuccess` frame besides the chunk: length, type, stream id, index.
const CHUNK_HEADER_LEN: u64 = 9 + 8 + 4;

/// Upload body bytes queued for the socket past which an upload's feeder waits.
const BODY_HIGH_WATER: u64 = 1024 * 1024;

/// The open connections of a server, by id (the registry derefs to them), and the budget
/// they share: bytes of partial frames across all of them.
pub(crate) struct Registry {
    open: Mutex<HashMap<u64, TransportClient>>,
    /// Bytes of partial frames held by the server's connections now.
    partial_frame_bytes: AtomicU64,
    /// [`TransportConfig::max_partial_frame_bytes`](super::TransportConfig).
    max_partial_frame_bytes: u64,
}

impl Registry {
    /// An empty registry whose connections share `max_partial_frame_bytes` of partial frames.
    pub(crate) fn new(max_partial_frame_bytes: u64) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            partial_frame_bytes: AtomicU64::new(0),
            max_partial_frame_bytes,
        }
    }
}

impl std::ops::Deref for Registry {
    type Target = Mutex<HashMap<u64, TransportClient>>;

    fn deref(&self) -> &Self::Target {
        &self.open
    }
}

/// What the handles and the driver task share, behind one mutex.
pub(crate) struct ConnState {
    pub(crate) conn: Connection,
    /// Completion slots of the calls handles are waiting on (RPCs, uploads, chunk fetches,
    /// merged-block-meta requests). Keyed by ids this side chose, so a fast non-keyed hash is
    /// safe here.
    calls: FxHashMap<Call, CallSlot>,
    /// Streams being received, by call.
    streams: FxHashMap<StreamCallId, StreamSlot>,
    /// Bytes in `streams` not yet taken by their consumers.
    stream_buffered: usize,
    /// Whether the driver stopped reading because of `stream_buffered`; the consumer that
    /// brings it below half the limit wakes the driver.
    read_paused: bool,
    driver: Option<Waker>,
    /// Tasks waiting in [`TransportClient::ready`] for room in the send buffer.
    ready: WaitList,
    /// Upload feeders waiting for the body queue to drain.
    feeders: WaitList,
}

/// What has arrived of one stream.
#[derive(Default)]
struct StreamSlot {
    pieces: VecDeque<Bytes>,
    byte_count: Option<u64>,
    end: Option<Result<(), RpcError>>,
    waker: Option<Waker>,
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
    fn reading_allowed(&mut self) -> bool {
        self.read_paused = self.stream_buffered >= STREAM_BUFFER_LIMIT;
        !self.read_paused
    }

    /// The most one read may bring in: what stream consumers leave of
    /// [`STREAM_BUFFER_LIMIT`], so that waiting stream bytes stay within the limit plus
    /// `READ_CHUNK_MIN`, however large reads have grown.
    fn read_room(&self, chunk: usize) -> usize {
        chunk.min(
            STREAM_BUFFER_LIMIT
                .saturating_sub(self.stream_buffered)
                .max(READ_CHUNK_MIN),
        )
    }

    /// Called as stream bytes are taken: whether the driver must be woken to read again.
    fn resume_reading(&mut self) -> bool {
        if self.read_paused && self.stream_buffered < STREAM_BUFFER_LIMIT / 2 {
            self.read_paused = false;
            return true;
        }
        false
    }

    /// Whether an upload's feeder may queue more body bytes.
    fn body_has_room(&self) -> bool {
        self.conn.is_closed() || self.conn.queued_bytes() < BODY_HIGH_WATER
    }

    /// Whether a task waiting for room may go on: the send buffer drained below half its
    /// limit (hysteresis, so waiters are not woken for every write), or the connection ended.
    fn has_room(&self) -> bool {
        self.conn.is_closed()
            || self.conn.buffered_bytes() < self.conn.config().max_send_buffer() / 2
    }

    /// Wakes the tasks waiting for room, if there is room.
    fn wake_ready(&mut self) {
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
                Event::ReplyReceived { request, body } => {
                    // An RPC's or an upload's: they share the request id space.
                    let call = if self.calls.contains_key(&Call::Upload(request)) {
                        Call::Upload(request)
                    } else {
                        Call::Rpc(request)
                    };
                    self.complete(call, Ok(body))
                }
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
                        Some(other) => other.fail(RpcError::UnexpectedReply {
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
            Some(slot @ CallSlot::Meta(_)) => slot.fail(RpcError::UnexpectedReply {
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
    fn start_merged_block_meta(
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
    fn abandon_stream(&mut self, id: StreamCallId) -> bool {
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

    /// Wakers stored for tasks waiting for room: in [`TransportClient::ready`], and upload
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

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;

/// The failure a merged-block-meta request gets from a handler without a
/// [`MergedBlockMetaReqHandler`](super::MergedBlockMetaReqHandler).
const UNSERVED: &str = "this peer serves no merged block metadata";

pub(crate) struct ConnInner {
    /// Body bytes written straight from files with `sendfile`.
    zero_copy: AtomicU64,
    pub(crate) rt: StdArc<dyn Runtime>,
    pub(crate) addrs: ConnectionAddrs,
    id: u64,
    /// The app id the peer authenticated as, on a secured connection.
    client_id: Option<StdArc<str>>,
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

/// A handle on one connection: Spark's `TransportClient`. Cheap to clone.
///
/// Sends RPCs and one-way messages to the peer. The connection is full duplex: the peer's
/// requests on it go to the [`RpcHandler`] it was opened with.
#[derive(Clone)]
pub struct TransportClient {
    pub(crate) inner: Arc<ConnInner>,
}

impl TransportClient {
    /// Opens the connection's driver on `stream` and returns a handle on it.
    pub(crate) fn open(
        rt: StdArc<dyn Runtime>,
        stream: Box<dyn AsyncStream>,
        addrs: ConnectionAddrs,
        config: Config,
        handler: StdArc<dyn RpcHandler>,
        registry: Option<StdArc<Registry>>,
        client_id: Option<StdArc<str>>,
    ) -> Self {
        let now = rt.now();
        let inner = Arc::new(ConnInner {
            zero_copy: AtomicU64::new(0),
            addrs,
            client_id,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(ConnState::new(Connection::new(
                if registry.is_some() {
                    config.accepted()
                } else {
                    config
                }
                .with_seed(connection_seed()),
                now,
            ))),
            rt: rt.clone(),
        });
        let client = TransportClient { inner };
        debug!(id = client.inner.id, local = %addrs.local, peer = %addrs.peer, "connection opened");
        if let Some(registry) = &registry {
            lock(registry).insert(client.id(), client.clone());
        }
        handler.connection_opened(&client);
        let span = tracing::debug_span!("connection", id = client.inner.id, peer = %addrs.peer);
        let driver = Driver {
            client: client.clone(),
            stream,
            handler,
            registry,
            timer: None,
            uploads: HashMap::new(),
            externals: HashMap::new(),
            sendfile_unsupported: false,
            body_read: None,
            chunk_reads: VecDeque::new(),
            chunk_read: None,
            chunk_read_bytes: 0,
            partial_counted: 0,
            read_buf: BytesMut::new(),
            read_chunk: READ_CHUNK_MIN,
            writing: VecDeque::new(),
            read_done: false,
            unflushed: false,
        };
        rt.spawn(Box::pin(driver.instrument(span)));
        client
    }

    /// Sends an RPC. The reply (or why there is none) is the future's output; with a
    /// `timeout`, the call fails with [`RpcError::TimedOut`] when it passes. Dropping the
    /// future forgets the call; a late reply is discarded.
    pub fn send_rpc(&self, body: Bytes, timeout: Option<Duration>) -> RpcCall {
        self.try_send_rpc(body, timeout)
            .unwrap_or_else(RpcCall::refused)
    }

    /// Like [`send_rpc`](TransportClient::send_rpc), with a refusal returned at once.
    pub(crate) fn try_send_rpc(
        &self,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<RpcCall, CallError> {
        let (id, waiter) = self
            .inner
            .with_state(|st, now| st.start_rpc(now, body, timeout))?;
        Ok(RpcCall::started(&self.inner, Call::Rpc(id), waiter))
    }

    /// Fetches one chunk of a stream the peer registered (Spark's `fetchChunk`). Resolves to
    /// the chunk, or the peer's failure ([`RpcError::Remote`]), the timeout, or the
    /// connection's end. A second fetch of a chunk already being fetched on this connection
    /// is refused ([`CallError::DuplicateChunkFetch`]).
    pub fn fetch_chunk(&self, chunk: StreamChunkId, timeout: Option<Duration>) -> RpcCall {
        match self
            .inner
            .with_state(|st, now| st.start_chunk_fetch(now, chunk, timeout))
        {
            Ok(waiter) => RpcCall::started(&self.inner, Call::ChunkFetch(chunk), waiter),
            Err(error) => RpcCall::refused(error),
        }
    }

    /// Asks for the metadata of a push-merged shuffle block (Spark's
    /// `sendMergedBlockMetaReq`). Resolves to the chunk count and the metadata body, or the
    /// peer's failure ([`RpcError::Remote`]; a peer without a handler for these requests
    /// refuses them), the timeout, or the connection's end. Dropping the future forgets the
    /// call; a late reply is discarded.
    pub fn send_merged_block_meta_req(
        &self,
        request: &MergedBlockMetaRequest,
        timeout: Option<Duration>,
    ) -> MergedBlockMetaCall {
        match self
            .inner
            .with_state(|st, now| st.start_merged_block_meta(now, request, timeout))
        {
            Ok((id, waiter)) => MergedBlockMetaCall(Pending::started(
                &self.inner,
                Call::MergedBlockMeta(id),
                waiter,
            )),
            Err(error) => MergedBlockMetaCall(Pending::refused(error)),
        }
    }

    /// Asks for the named stream (Spark's `stream`): its bytes arrive as a [`StreamCall`], a
    /// [`Stream`] of pieces in order, with bounded memory (the connection stops reading while
    /// more than [`STREAM_BUFFER_LIMIT`] bytes wait for the consumer). The timeout covers the
    /// whole stream.
    pub fn stream(&self, stream_id: &str, timeout: Option<Duration>) -> StreamCall {
        let started = self.inner.with_state(|st, now| {
            let id = st.conn.stream(now, stream_id, timeout)?;
            st.streams.insert(id, StreamSlot::default());
            Ok(id)
        });
        match started {
            Ok(id) => StreamCall {
                inner: self.inner.clone(),
                id: Some(id),
                refused: None,
            },
            Err(error) => StreamCall {
                inner: self.inner.clone(),
                id: None,
                refused: Some(error),
            },
        }
    }

    /// Uploads `byte_count` bytes from `body` with `meta` (Spark's `uploadStream`). The body
    /// is fed from a task of the runtime, no faster than the socket takes it. Resolves to the
    /// peer's reply.
    ///
    /// The announced size is a promise to the peer: if `body` ends early or runs long, the
    /// stream cannot be resynchronised and the connection is closed
    /// ([`ConnectionError::BodyAborted`]). Nothing else is written on this connection until
    /// the body is complete.
    pub fn upload_stream<S>(
        &self,
        meta: Bytes,
        byte_count: u64,
        body: S,
        timeout: Option<Duration>,
    ) -> RpcCall
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let started = self.inner.with_state(|st, now| {
            let (request, body) = st.conn.upload_stream(now, meta, byte_count, timeout)?;
            let (completer, waiter) = completion::pair();
            st.calls
                .insert(Call::Upload(request), CallSlot::Body(completer));
            Ok((request, body, waiter))
        });
        let (request, body_id, waiter) = match started {
            Ok(started) => started,
            Err(error) => return RpcCall::refused(error),
        };
        let inner = self.inner.clone();
        self.inner
            .rt
            .spawn(Box::pin(feed_body(inner, body_id, byte_count, body)));
        RpcCall::started(&self.inner, Call::Upload(request), waiter)
    }

    /// Sends a one-way message. It is queued for the socket when this returns; delivery is
    /// not confirmed.
    pub fn send(&self, body: Bytes) -> Result<(), CallError> {
        self.inner
            .with_state(|st, now| st.conn.send_one_way(now, body))
    }

    /// Waits until the send buffer has room: at once if a call would be accepted now, else
    /// once the buffer has drained below half of
    /// [`Config::max_send_buffer`](rpc_proto::Config::max_send_buffer). How a writer is
    /// backpressured by a peer that reads slowly:
    ///
    /// ```no_run
    /// # async fn demo(client: rpc_driver::transport::TransportClient) -> Result<(), rpc_driver::rpc_proto::CallError> {
    /// for i in 0..1_000_000u32 {
    ///     client.ready().await?;
    ///     client.send(i.to_be_bytes().to_vec().into())?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`CallError::Closed`] if the connection ends.
    pub fn ready(&self) -> Ready {
        Ready {
            inner: self.inner.clone(),
            key: WaitKey::default(),
        }
    }

    /// Closes the connection. Pending calls fail with
    /// [`ConnectionError::LocallyClosed`]; what was already queued is still written.
    pub fn close(&self) {
        self.inner.with_state(|st, now| st.conn.close(now));
    }

    /// Whether the connection is still open.
    pub fn is_active(&self) -> bool {
        !lock(&self.inner.state).conn.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        lock(&self.inner.state).conn.close_reason().cloned()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.inner.addrs.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.addrs.local
    }

    /// A number naming this connection in logs, unique in the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The app id this connection authenticated as (Spark's `getClientId`): on a connection
    /// with [`Security`](crate::security::Security), the id the client presented and proved
    /// it holds the secret of; `None` on a connection without authentication.
    pub fn client_id(&self) -> Option<&str> {
        self.inner.client_id.as_deref()
    }

    /// Whether new calls would be refused with [`CallError::SendBufferFull`] now.
    pub fn is_send_buffer_full(&self) -> bool {
        lock(&self.inner.state).conn.is_send_buffer_full()
    }

    /// Stream body bytes this side sent straight from files with `sendfile` (zero-copy).
    pub fn zero_copy_bytes(&self) -> u64 {
        self.inner.zero_copy.load(Ordering::Relaxed)
    }

    /// Bytes of streams received but not yet taken by their [`StreamCall`]s (bounded by
    /// about [`STREAM_BUFFER_LIMIT`] plus one read).
    pub fn pending_stream_bytes(&self) -> usize {
        lock(&self.inner.state).stream_buffered
    }

    /// Bytes buffered for sending, not yet written to the socket.
    pub fn buffered_bytes(&self) -> u64 {
        lock(&self.inner.state).conn.buffered_bytes()
    }

    /// The connection's counters.
    pub fn stats(&self) -> rpc_proto::ConnectionStats {
        lock(&self.inner.state).conn.stats()
    }
}

impl PartialEq for TransportClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for TransportClient {}

impl fmt::Debug for TransportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClient")
            .field("id", &self.inner.id)
            .field("local", &self.inner.addrs.local)
            .field("peer", &self.inner.addrs.peer)
            .finish()
    }
}

/// Feeds an upload's body from `body`, waiting for the socket to take what is queued.
async fn feed_body<S>(inner: Arc<ConnInner>, id: rpc_proto::BodyId, byte_count: u64, body: S)
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut fed = 0u64;
    let outcome = loop {
        let Some(piece) = body.next().await else {
            break if fed == byte_count {
                Ok(())
            } else {
                Err(format!("the body ended after {fed} of {byte_count} bytes"))
            };
        };
        if fed + piece.len() as u64 > byte_count {
            break Err(format!("the body runs past its {byte_count} bytes"));
        }
        // Wait until the socket has taken most of what is queued.
        BodyRoom {
            inner: &inner,
            key: WaitKey::default(),
        }
        .await;
        fed += piece.len() as u64;
        if piece.is_empty() {
            continue;
        }
        if inner
            .with_state(|st, now| st.conn.send_body(now, id, piece))
            .is_err()
        {
            return; // the connection ended; the upload's call has failed with it
        }
    };
    if let Err(reason) = outcome {
        warn!(%reason, "upload body aborted; closing the connection");
        inner.with_state(|st, now| st.conn.abort_body(now, id, &reason));
    }
}

/// Resolves when an upload's feeder may queue more body bytes; one waker stored however
/// often it is polled, none once it is dropped.
struct BodyRoom<'a> {
    inner: &'a Arc<ConnInner>,
    key: WaitKey,
}

impl Future for BodyRoom<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.body_has_room() {
            st.feeders.remove(&mut this.key);
            Poll::Ready(())
        } else {
            st.feeders.register(&mut this.key, cx.waker());
            Poll::Pending
        }
    }
}

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        lock(&self.inner.state).feeders.remove(&mut self.key);
    }
}

/// A stream being received: a [`Stream`] of its pieces, in order, ending after the last one
/// (or with the error that ended it). From [`TransportClient::stream`].
///
/// Dropping it before the end forgets the stream: its remaining bytes are read and discarded.
#[must_use = "streams do nothing unless polled"]
pub struct StreamCall {
    inner: Arc<ConnInner>,
    id: Option<StreamCallId>,
    refused: Option<CallError>,
}

impl StreamCall {
    /// The stream's size, once the peer has announced it.
    pub fn byte_count(&self) -> Option<u64> {
        let id = self.id?;
        lock(&self.inner.state).streams.get(&id)?.byte_count
    }

    /// Collects the whole stream into one buffer.
    pub async fn read_to_end(mut self) -> Result<Bytes, RpcError> {
        let mut out = bytes::BytesMut::new();
        while let Some(piece) = self.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out.freeze())
    }
}

impl Stream for StreamCall {
    type Item = Result<Bytes, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(error) = self.refused.take() {
            return Poll::Ready(Some(Err(RpcError::NotSent(error))));
        }
        let Some(id) = self.id else {
            return Poll::Ready(None);
        };
        let (item, driver) = {
            let mut st = lock(&self.inner.state);
            let Some(slot) = st.streams.get_mut(&id) else {
                return Poll::Ready(None);
            };
            if let Some(piece) = slot.pieces.pop_front() {
                st.stream_buffered -= piece.len();
                // Resume reading once the consumer has caught up by half.
                let resume = st.resume_reading();
                (
                    Poll::Ready(Some(Ok(piece))),
                    if resume { st.take_driver() } else { None },
                )
            } else if let Some(end) = slot.end.take() {
                st.streams.remove(&id);
                (Poll::Ready(end.err().map(Err)), None)
            } else {
                slot.waker = Some(cx.waker().clone());
                (Poll::Pending, None)
            }
        };
        if let Poll::Ready(None | Some(Err(_))) = item {
            self.id = None;
        }
        if let Some(w) = driver {
            w.wake();
        }
        item
    }
}

/// Answers a chunk fetch with its bytes or why there are none.
fn respond_chunk(
    st: &mut ConnState,
    now: Instant,
    chunk: StreamChunkId,
    served: Result<Bytes, String>,
) {
    let sent = match served {
        Ok(body) => st.conn.respond_chunk(now, chunk, body),
        Err(error) => st.conn.respond_chunk_failure(now, chunk, &error),
    };
    if let Err(error) = sent {
        // Too large for a frame: tell the peer rather than leave it waiting.
        let _ = st
            .conn
            .respond_chunk_failure(now, chunk, &error.to_string());
    }
}

/// What a panicking handler leaves to be failed.
enum FailOnPanic {
    Nothing,
    Chunk(StreamChunkId),
    Stream(rpc_proto::InboundStreamId, String),
    Upload(RequestId),
}

impl FailOnPanic {
    fn of(event: &Event) -> Self {
        match event {
            Event::ChunkFetchReceived { chunk } => FailOnPanic::Chunk(*chunk),
            Event::StreamRequested { request, stream_id } => {
                FailOnPanic::Stream(*request, stream_id.clone())
            }
            Event::UploadReceived { request, .. } | Event::UploadData { request, .. } => {
                FailOnPanic::Upload(*request)
            }
            _ => FailOnPanic::Nothing,
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else {
        "a non-string panic payload".to_owned()
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let resume = {
                let mut st = lock(&self.inner.state);
                st.abandon_stream(id).then(|| st.take_driver()).flatten()
            };
            if let Some(w) = resume {
                w.wake();
            }
        }
    }
}

impl fmt::Debug for StreamCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCall")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The future of [`TransportClient::ready`]. Polling it again replaces the waker it
/// stored: one waker per `Ready` however often it is polled, none once it is dropped.
#[must_use = "futures do nothing unless polled"]
pub struct Ready {
    inner: Arc<ConnInner>,
    key: WaitKey,
}

impl Future for Ready {
    type Output = Result<(), CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.conn.is_closed() {
            st.ready.remove(&mut this.key);
            return Poll::Ready(Err(CallError::Closed));
        }
        if !st.conn.is_send_buffer_full() {
            st.ready.remove(&mut this.key);
            return Poll::Ready(Ok(()));
        }
        st.ready.register(&mut this.key, cx.waker());
        Poll::Pending
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        lock(&self.inner.state).ready.remove(&mut self.key);
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

/// A call in flight, waiting for a `T`: what [`RpcCall`] and [`MergedBlockMetaCall`] share.
/// Dropping it forgets the call.
struct Pending<T> {
    client: Option<Arc<ConnInner>>,
    call: Option<Call>,
    waiter: Option<Waiter<Result<T, RpcError>>>,
    refused: Option<CallError>,
}

impl<T> Pending<T> {
    fn started(inner: &Arc<ConnInner>, call: Call, waiter: Waiter<Result<T, RpcError>>) -> Self {
        Self {
            client: Some(inner.clone()),
            call: Some(call),
            waiter: Some(waiter),
            refused: None,
        }
    }

    fn refused(error: CallError) -> Self {
        Self {
            client: None,
            call: None,
            waiter: None,
            refused: Some(error),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<Result<T, RpcError>> {
        if let Some(error) = self.refused.take() {
            return Poll::Ready(Err(RpcError::NotSent(error)));
        }
        let Some(waiter) = self.waiter.as_mut() else {
            panic!("{what} polled after it completed");
        };
        match Pin::new(waiter).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.waiter = None;
                let unauthenticated = self.client.take().is_some_and(|c| c.client_id.is_none());
                Poll::Ready(match result {
                    // A server that wants authentication this connection did not do.
                    Some(Err(RpcError::Remote(text)))
                        if unauthenticated && rpc_proto::handshake::is_refusal(&text) =>
                    {
                        Err(RpcError::AuthenticationRequired(text))
                    }
                    Some(result) => result,
                    None => Err(RpcError::Disconnected(ConnectionError::Transport(
                        "connection driver stopped".into(),
                    ))),
                })
            }
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let (Some(inner), Some(call)) = (self.client.take(), self.call) {
            // Drop the waiter first so a completion racing this drop is handed back, not kept.
            self.waiter = None;
            inner.with_state(|st, _| st.abandon(call));
        }
    }
}

/// An RPC in flight: resolves to the reply body or the reason there is none.
///
/// Dropping it forgets the call (the late reply, if any, is discarded).
#[must_use = "an RPC's reply is only seen by awaiting it"]
pub struct RpcCall(Pending<Bytes>);

impl RpcCall {
    fn started(inner: &Arc<ConnInner>, call: Call, waiter: Waiter<RpcResult>) -> Self {
        Self(Pending::started(inner, call, waiter))
    }

    pub(crate) fn refused(error: CallError) -> Self {
        Self(Pending::refused(error))
    }

    /// The request id an RPC went out with, unless it was refused before being sent (or is a
    /// chunk fetch, which has none).
    pub fn request_id(&self) -> Option<RequestId> {
        match self.0.call {
            Some(Call::Rpc(id) | Call::Upload(id)) => Some(id),
            _ => None,
        }
    }
}

impl Future for RpcCall {
    type Output = RpcResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RpcResult> {
        self.0.poll(cx, "RpcCall")
    }
}

impl fmt::Debug for RpcCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcCall")
            .field("call", &self.0.call)
            .finish_non_exhaustive()
    }
}

/// A merged-block-meta request in flight, from
/// [`TransportClient::send_merged_block_meta_req`]: resolves to the metadata or the reason
/// there is none.
///
/// Dropping it forgets the call (the late reply, if any, is discarded).
#[must_use = "the metadata is only seen by awaiting it"]
pub struct MergedBlockMetaCall(Pending<MergedBlockMeta>);

impl MergedBlockMetaCall {
    /// The request id the request went out with, unless it was refused before being sent.
    pub fn request_id(&self) -> Option<RequestId> {
        match self.0.call {
            Some(Call::MergedBlockMeta(id)) => Some(id),
            _ => None,
        }
    }
}

impl Future for MergedBlockMetaCall {
    type Output = MetaResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<MetaResult> {
        self.0.poll(cx, "MergedBlockMetaCall")
    }
}

impl fmt::Debug for MergedBlockMetaCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedBlockMetaCall")
            .field("call", &self.0.call)
            .finish_non_exhaustive()
    }
}

/// Answers one RPC received by an [`RpcHandler`]: Spark's `RpcResponseCallback`.
///
/// `Send + 'static`: keep it and answer later from any task. Dropping it unanswered fails the
/// caller at once rather than letting it time out.
pub struct RpcResponder {
    conn: Option<Arc<ConnInner>>,
    request: RequestId,
}

impl RpcResponder {
    pub(crate) fn new(conn: Arc<ConnInner>, request: RequestId) -> Self {
        Self {
            conn: Some(conn),
            request,
        }
    }

    /// Sends the reply. A reply larger than the connection's frame limit is refused with
    /// [`CallError::FrameTooLarge`], and the caller receives a failure saying so.
    pub fn reply(mut self, body: Bytes) -> Result<(), CallError> {
        let conn = self.conn.take().expect("answered once");
        let request = self.request;
        conn.with_state(|st, now| match st.conn.respond_rpc(now, request, body) {
            Err(error @ CallError::FrameTooLarge { .. }) => {
                let _ = st
                    .conn
                    .respond_rpc_failure(now, request, &error.to_string());
                Err(error)
            }
            other => other,
        })
    }

    /// Answers a merged-block-meta request (for [`MergedBlockMetaResponder`]), with the same
    /// care for metadata too large for a frame as [`reply`](RpcResponder::reply).
    pub(crate) fn reply_merged_block_meta(
        mut self,
        meta: MergedBlockMeta,
    ) -> Result<(), CallError> {
        let conn = self.conn.take().expect("answered once");
        let request = self.request;
        conn.with_state(|st, now| {
            match st
                .conn
                .respond_merged_block_meta(now, request, meta.chunk_count, meta.body)
            {
                Err(error @ CallError::FrameTooLarge { .. }) => {
                    let _ = st
                        .conn
                        .respond_rpc_failure(now, request, &error.to_string());
                    Err(error)
                }
                other => other,
            }
        })
    }

    /// Fails the call; the caller receives `error` as [`RpcError::Remote`].
    pub fn fail(mut self, error: &str) -> Result<(), CallError> {
        let conn = self.conn.take().expect("answered once");
        let request = self.request;
        conn.with_state(|st, now| st.conn.respond_rpc_failure(now, request, error))
    }

    /// The address of the peer that sent the request.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.conn.as_ref().expect("not yet answered").addrs.peer
    }

    /// The request id the peer chose.
    pub fn request_id(&self) -> RequestId {
        self.request
    }
}

thread_local! {
    /// Set while the driver runs a handler: responders dropped by that handler's panic are
    /// kept here, so the driver can fail their calls with the panic's message.
    static IN_HANDLER: std::cell::RefCell<Option<Vec<RpcResponder>>> =
        const { std::cell::RefCell::new(None) };
}

impl Drop for RpcResponder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = IN_HANDLER.with(|h| match h.try_borrow_mut() {
                Ok(mut slot) => match slot.as_mut() {
                    Some(list) => {
                        list.push(RpcResponder {
                            conn: self.conn.take(),
                            request: self.request,
                        });
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            });
            if kept {
                return;
            }
        }
        if let Some(conn) = self.conn.take() {
            let request = self.request;
            let _ = conn.with_state(|st, now| {
                st.conn
                    .respond_rpc_failure(now, request, "the request was dropped without a reply")
            });
        }
    }
}

impl fmt::Debug for RpcResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcResponder")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// The task that moves bytes between the socket and the connection.
struct Driver {
    client: TransportClient,
    stream: Box<dyn AsyncStream>,
    handler: StdArc<dyn RpcHandler>,
    /// The server's open connections, when this one was accepted by a server.
    registry: Option<StdArc<Registry>>,
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    read_buf: BytesMut,
    read_chunk: usize,
    writing: VecDeque<Bytes>,
    read_done: bool,
    /// Whether the stream accepted bytes since it was last flushed
    /// ([`AsyncStream::poll_flush`]).
    unflushed: bool,
    /// Uploads being received: their sink, or `None` once refused or failed (the rest of the
    /// body is discarded).
    uploads: HashMap<RequestId, Option<Box<dyn UploadSink>>>,
    /// Stream bodies sent from files by the driver itself, and how far each has got.
    externals: HashMap<rpc_proto::BodyId, (FileSegment, u64)>,
    /// Set once the socket has refused `sendfile`; files are then read and written.
    sendfile_unsupported: bool,
    /// Where `sendfile` is unsupported: the read of the next piece of the file body being
    /// written, on the runtime's blocking pool (one piece in flight at a time).
    body_read: Option<BodyRead>,
    /// File-backed chunks to read (whole, for their frame) and answer, in order.
    chunk_reads: VecDeque<(StreamChunkId, FileSegment)>,
    /// The chunk being read on the runtime's blocking pool (one at a time).
    chunk_read: Option<(StreamChunkId, u64, Unblock<Bytes>)>,
    /// Bytes of the chunks in `chunk_reads` and `chunk_read`: they count against the send
    /// buffer's limit as if they were already queued.
    chunk_read_bytes: u64,
    /// This connection's partial-frame bytes as last added to the registry's total.
    partial_counted: u64,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(registry) = &self.registry {
            registry
                .partial_frame_bytes
                .fetch_sub(self.partial_counted, Ordering::Relaxed);
        }
    }
}

/// The read of a piece of a file body, on the blocking pool.
struct BodyRead {
    body: rpc_proto::BodyId,
    len: u64,
    read: Unblock<Bytes>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let inner = this.client.inner.clone();
        let mut inbound = Vec::new();
        let mut budget = POLL_BUDGET;
        let drained = loop {
            let now = inner.rt.now();
            let mut st = lock(&inner.state);
            let mut progress = false;
            if !this.read_done
                && !st.conn.is_closed()
                && st.reading_allowed()
                && this.send_room(&st) > 0
            {
                progress |= this.read(cx, &mut st, now);
                this.count_partial_frame(&mut st, now);
            }
            progress |= this.poll_timer(cx, &mut st, now);
            progress |= this.poll_chunk_reads(cx, &mut st, now);
            st.process_events(&mut inbound);
            progress |= this.write(cx, &mut st, now);
            st.process_events(&mut inbound);
            st.wake_ready();
            this.count_partial_frame(&mut st, now);
            let drained = st.conn.is_drained() && this.writing.is_empty() && !this.unflushed;
            if drained || !progress {
                st.park_driver(cx.waker());
                break drained;
            }
            drop(st);
            this.dispatch(&mut inbound);
            budget -= 1;
            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                break false;
            }
        };
        this.dispatch(&mut inbound);
        if this.chunk_read.is_none() && !this.chunk_reads.is_empty() {
            // A chunk read was queued by that dispatch: start it on the next poll.
            cx.waker().wake_by_ref();
        }
        if !drained {
            return Poll::Pending;
        }
        match this.stream.poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if let Err(error) = result {
                    trace!(%error, "shutdown after close failed");
                }
                debug!("connection driver finished");
                Poll::Ready(())
            }
        }
    }
}

impl Driver {
    /// Reads once; returns whether anything happened.
    ///
    /// Reads into the spare capacity of `read_buf` (no zeroing), up to `read_chunk` bytes but
    /// no more than stream consumers leave room for (`ConnState::read_room`), and hands what
    /// was read to the connection with `split`. `read_chunk` doubles after a read
    /// that filled it, up to `READ_CHUNK_MAX`, and halves after one that used less than a
    /// quarter of it, down to `READ_CHUNK_MIN`, so small-message connections do not keep
    /// reserving the largest chunk.
    fn read(&mut self, cx: &mut Context<'_>, st: &mut ConnState, now: Instant) -> bool {
        debug_assert!(self.read_buf.is_empty());
        let max = st.read_room(self.read_chunk).min(self.send_room(st));
        match self.stream.poll_read_buf(cx, &mut self.read_buf, max) {
            Poll::Pending => {
                self.read_buf.clear();
                false
            }
            Poll::Ready(Ok(0)) => {
                self.read_buf.clear();
                self.read_done = true;
                st.conn.handle_closed(now);
                true
            }
            Poll::Ready(Ok(n)) => {
                debug_assert_eq!(self.read_buf.len(), n);
                st.conn.handle_data(now, self.read_buf.split());
                if n >= self.read_chunk {
                    self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                } else if n < max / 4 {
                    self.read_chunk = (self.read_chunk / 2).max(READ_CHUNK_MIN);
                }
                true
            }
            Poll::Ready(Err(error)) => {
                self.read_buf.clear();
                self.read_done = true;
                st.conn.handle_transport_error(now, error);
                true
            }
        }
    }

    /// How much one read may bring in for what the send buffer has room for: on a
    /// connection a server accepted, nothing while the send buffer (file bodies and chunks
    /// being read included) is over [`Config::max_send_buffer`], so a peer that does not read
    /// its answers is not read from either (TCP's own backpressure) instead of being
    /// answered into memory without bound; below that, a 32nd of the room left (at least
    /// `READ_CHUNK_MIN`), so the answers to one read stay near the limit: answers with data
    /// are refused once the buffer is over the limit, and a refusal is about six times the
    /// 21-byte chunk fetch it answers, so the refusals to one read take at most a sixth of
    /// the room (or 48 KiB). With the default 64 MiB limit and an empty buffer, reads are
    /// not limited by this. Connections this side
    /// opened always read: their peer's answers are what drains their own calls, and two
    /// peers that both stopped reading would wait for each other forever.
    fn send_room(&self, st: &ConnState) -> usize {
        if self.registry.is_none() {
            return usize::MAX;
        }
        let used = st.conn.buffered_bytes() + self.chunk_read_bytes;
        let max = st.conn.config().max_send_buffer();
        if used >= max {
            return 0;
        }
        usize::try_from((max - used) / 32)
            .unwrap_or(usize::MAX)
            .max(READ_CHUNK_MIN)
    }

    /// Adds this connection's partial-frame bytes to its server's total; closes it if that
    /// takes the total over [`TransportConfig::max_partial_frame_bytes`](super::TransportConfig).
    fn count_partial_frame(&mut self, st: &mut ConnState, now: Instant) {
        let Some(registry) = &self.registry else {
            return;
        };
        let held = st.conn.partial_frame_bytes();
        if held <= self.partial_counted {
            registry
                .partial_frame_bytes
                .fetch_sub(self.partial_counted - held, Ordering::Relaxed);
            self.partial_counted = held;
            return;
        }
        let grew = held - self.partial_counted;
        let total = registry
            .partial_frame_bytes
            .fetch_add(grew, Ordering::Relaxed)
            + grew;
        self.partial_counted = held;
        let limit = registry.max_partial_frame_bytes;
        if total > limit {
            st.conn
                .close_over_budget(now, "partial frames across the server", total, limit);
            registry
                .partial_frame_bytes
                .fetch_sub(self.partial_counted, Ordering::Relaxed);
            self.partial_counted = 0;
        }
    }

    /// Acts on the connection's deadline; returns whether it passed.
    fn poll_timer(&mut self, cx: &mut Context<'_>, st: &mut ConnState, now: Instant) -> bool {
        let Some(deadline) = st.conn.poll_timeout() else {
            return false;
        };
        if deadline <= now {
            st.conn.handle_timeout(now);
            return true;
        }
        let timer = match &mut self.timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => self.timer.insert(self.client.inner.rt.new_timer(deadline)),
        };
        if timer.as_mut().poll(cx).is_ready() {
            st.conn.handle_timeout(now.max(deadline));
            return true;
        }
        false
    }

    /// Writes what the connection has to send; returns whether anything was written.
    fn write(&mut self, cx: &mut Context<'_>, st: &mut ConnState, now: Instant) -> bool {
        let mut progress = false;
        loop {
            while self.writing.len() < MAX_IOVECS {
                match st.conn.poll_transmit() {
                    Some(bytes) => self.writing.push_back(bytes),
                    None => break,
                }
            }
            if self.writing.is_empty() {
                match self.write_external(cx, st, now) {
                    Poll::Ready(true) => {
                        progress = true;
                        continue;
                    }
                    Poll::Ready(false) | Poll::Pending => {
                        return self.flush(cx, st, now) || progress;
                    }
                }
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.writing.len().min(MAX_IOVECS);
            for (slice, bytes) in slices.iter_mut().zip(&self.writing) {
                *slice = IoSlice::new(bytes);
            }
            match self.stream.poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(0)) => {
                    self.writing.clear();
                    st.conn
                        .handle_transport_error(now, "socket accepted no bytes");
                    return true;
                }
                Poll::Ready(Ok(mut written)) => {
                    progress = true;
                    self.unflushed = true;
                    st.conn.handle_written(now);
                    while written > 0 {
                        let front = self.writing.front_mut().expect("wrote queued bytes");
                        if written >= front.len() {
                            written -= front.len();
                            self.writing.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Poll::Ready(Err(error)) => {
                    self.writing.clear();
                    st.conn.handle_transport_error(now, error);
                    return true;
                }
            }
        }
    }

    /// Flushes what the stream buffered of the bytes it accepted (a cipher's or TLS's
    /// output; a plain socket buffers nothing); returns whether that failed the connection.
    fn flush(&mut self, cx: &mut Context<'_>, st: &mut ConnState, now: Instant) -> bool {
        if !self.unflushed {
            return false;
        }
        match self.stream.poll_flush(cx) {
            Poll::Pending => false,
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                false
            }
            Poll::Ready(Err(error)) => {
                self.unflushed = false;
                st.conn.handle_transport_error(now, error);
                true
            }
        }
    }

    /// Why a data request is refused while the send buffer is over its limit.
    fn too_much_data(&self) -> String {
        format!(
            "too much data being transferred on this connection ({} bytes waiting for the \
             peer to read)",
            self.client.buffered_bytes() + self.chunk_read_bytes
        )
    }

    /// Whether a chunk fetch is refused for lack of room: the send buffer is over its limit,
    /// counting the file-backed chunks accepted but not read yet.
    fn chunk_room_exhausted(&self) -> bool {
        let st = lock(&self.client.inner.state);
        st.conn.is_send_buffer_full()
            || st.conn.buffered_bytes() + self.chunk_read_bytes
                >= st.conn.config().max_send_buffer()
    }

    /// Reads the queued file-backed chunks, one at a time, on the runtime's blocking pool,
    /// and answers each with its bytes (or why they could not be read). Returns whether a
    /// chunk was answered.
    fn poll_chunk_reads(&mut self, cx: &mut Context<'_>, st: &mut ConnState, now: Instant) -> bool {
        let mut progress = false;
        loop {
            if self.chunk_read.is_none() {
                let Some((chunk, segment)) = self.chunk_reads.pop_front() else {
                    return progress;
                };
                let len = segment.len();
                let read = unblock(&*self.client.inner.rt, move || {
                    ManagedBuffer::File(segment).to_bytes()
                });
                self.chunk_read = Some((chunk, len, read));
            }
            let Some((chunk, len, read)) = &mut self.chunk_read else {
                unreachable!("a chunk read was just started")
            };
            let Poll::Ready(result) = Pin::new(read).poll(cx) else {
                return progress;
            };
            let (chunk, len) = (*chunk, *len);
            self.chunk_read = None;
            self.chunk_read_bytes -= len;
            progress = true;
            respond_chunk(st, now, chunk, result.map_err(|e| format!("{chunk}: {e}")));
        }
    }

    /// Writes the body bytes the connection left to the driver (file segments): with
    /// `sendfile` where the socket supports it, else by reading a piece into `writing`.
    /// Ready(true): made progress; Ready(false): nothing to do; Pending: the socket is full.
    fn write_external(
        &mut self,
        cx: &mut Context<'_>,
        st: &mut ConnState,
        now: Instant,
    ) -> Poll<bool> {
        const PIECE: u64 = 256 * 1024;
        const SENDFILE_MAX: u64 = 4 * 1024 * 1024;
        let Some((body, left)) = st.conn.poll_external() else {
            return Poll::Ready(false);
        };
        let Some((segment, done)) = self.externals.get_mut(&body) else {
            st.conn
                .abort_body(now, body, "the file behind this body is gone");
            return Poll::Ready(true);
        };
        let offset = segment.offset() + *done;
        if !self.sendfile_unsupported {
            let len = left.min(SENDFILE_MAX) as usize;
            match self.stream.poll_send_file(cx, segment.file(), offset, len) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let reason = format!("{segment:?} ended early (truncated?)");
                    st.conn.abort_body(now, body, &reason);
                    self.externals.remove(&body);
                    return Poll::Ready(true);
                }
                Poll::Ready(Ok(n)) => {
                    *done += n as u64;
                    if *done == segment.len() {
                        self.externals.remove(&body);
                    }
                    self.client
                        .inner
                        .zero_copy
                        .fetch_add(n as u64, Ordering::Relaxed);
                    st.conn.handle_external_written(now, n as u64);
                    return Poll::Ready(true);
                }
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                    trace!("sendfile unsupported here; reading and writing files instead");
                    self.sendfile_unsupported = true;
                }
                Poll::Ready(Err(error)) => {
                    self.writing.clear();
                    st.conn.handle_transport_error(now, error);
                    return Poll::Ready(true);
                }
            }
        }
        // Read and write: the next piece is read on the runtime's blocking pool, not on this
        // task and not under the connection's lock (the driver only polls for it), one piece
        // in flight at a time.
        if self.body_read.as_ref().is_some_and(|r| r.body != body) {
            self.body_read = None; // a body aborted mid-read
        }
        let read = match &mut self.body_read {
            Some(read) => read,
            None => {
                let len = left.min(PIECE);
                let (piece, at) = (segment.clone(), *done);
                let read = unblock(&*self.client.inner.rt, move || piece.read(at, len as usize));
                self.body_read.insert(BodyRead { body, len, read })
            }
        };
        let Poll::Ready(result) = Pin::new(&mut read.read).poll(cx) else {
            return Poll::Pending;
        };
        let len = read.len;
        self.body_read = None;
        match result {
            Ok(bytes) => {
                *done += len;
                if *done == segment.len() {
                    self.externals.remove(&body);
                }
                self.writing.push_back(bytes);
                st.conn.handle_external_written(now, len);
            }
            Err(error) => {
                let reason = format!("reading {segment:?} failed: {error}");
                st.conn.abort_body(now, body, &reason);
                self.externals.remove(&body);
            }
        }
        Poll::Ready(true)
    }

    /// Hands inbound requests to the handler, outside the lock.
    fn dispatch(&mut self, inbound: &mut Vec<Event>) {
        for event in inbound.drain(..) {
            // A handler that panics fails what it was handling, not the connection.
            let failed = FailOnPanic::of(&event);
            IN_HANDLER.with(|h| *h.borrow_mut() = Some(Vec::new()));
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch_one(event)));
            let dropped = IN_HANDLER
                .with(|h| h.borrow_mut().take())
                .unwrap_or_default();
            if let Err(panic) = outcome {
                let message = format!("the handler panicked: {}", panic_message(&panic));
                warn!(%message, "handler panicked");
                for responder in dropped {
                    let _ = responder.fail(&message);
                }
                self.fail_on_panic(failed, &message);
            }
        }
    }

    /// Answers the request a panicking handler left unanswered.
    fn fail_on_panic(&mut self, failed: FailOnPanic, message: &str) {
        match failed {
            FailOnPanic::Chunk(chunk) => self.client.inner.with_state(|st, now| {
                let _ = st.conn.respond_chunk_failure(now, chunk, message);
            }),
            FailOnPanic::Stream(request, stream_id) => self.client.inner.with_state(|st, now| {
                let _ = st
                    .conn
                    .respond_stream_failure(now, request, &stream_id, message);
            }),
            FailOnPanic::Upload(request) => {
                if let Some(slot) = self.uploads.get_mut(&request) {
                    *slot = None;
                }
                self.client.inner.with_state(|st, now| {
                    let _ = st.conn.respond_rpc_failure(now, request, message);
                });
            }
            FailOnPanic::Nothing => {}
        }
    }

    fn dispatch_one(&mut self, event: Event) {
        {
            match event {
                Event::RpcReceived { request, body } => {
                    let responder = RpcResponder::new(self.client.inner.clone(), request);
                    self.handler.receive(&self.client, body, responder);
                }
                Event::OneWayReceived { body } => self.handler.receive_one_way(&self.client, body),
                Event::MergedBlockMetaRequested {
                    request,
                    app_id,
                    shuffle_id,
                    shuffle_merge_id,
                    reduce_id,
                } => {
                    let responder = RpcResponder::new(self.client.inner.clone(), request);
                    match self.handler.merged_block_meta_req_handler() {
                        Some(handler) => handler.receive_merged_block_meta_req(
                            &self.client,
                            MergedBlockMetaRequest {
                                app_id,
                                shuffle_id,
                                shuffle_merge_id,
                                reduce_id,
                            },
                            MergedBlockMetaResponder::new(responder),
                        ),
                        None => {
                            let _ = responder.fail(UNSERVED);
                        }
                    }
                }
                Event::ChunkFetchReceived { chunk } => {
                    let served = match self.handler.stream_manager() {
                        // Spark's maxChunksBeingTransferred, by bytes: while the send buffer
                        // (with the file-backed chunks still being read) is over its limit,
                        // fetches are refused (and the chunk is not taken, so the peer can
                        // ask again) instead of queued without bound.
                        Some(_) if self.chunk_room_exhausted() => Err(self.too_much_data()),
                        Some(streams) => streams
                            .chunk_buffer(&self.client, chunk)
                            .map_err(|e| e.to_string()),
                        // No streams at all: Spark's text for an unknown stream's chunk.
                        None => Err(chunk_stream_closed(chunk.stream_id)),
                    };
                    let max = self
                        .client
                        .inner
                        .with_state(|st, _| st.conn.config().max_frame_size());
                    match served {
                        Ok(ManagedBuffer::File(segment))
                            if segment.len().saturating_add(CHUNK_HEADER_LEN) > max =>
                        {
                            // Checked before any read: a file too large for a frame is never
                            // read into memory.
                            let error = CallError::FrameTooLarge {
                                size: segment.len().saturating_add(CHUNK_HEADER_LEN),
                                max,
                            };
                            let served = Err(format!("{chunk}: {error}"));
                            self.client
                                .inner
                                .with_state(|st, now| respond_chunk(st, now, chunk, served));
                        }
                        Ok(ManagedBuffer::File(segment)) => {
                            // Read on the blocking pool, not on this task (see
                            // `poll_chunk_reads`).
                            self.chunk_read_bytes += segment.len();
                            self.chunk_reads.push_back((chunk, segment));
                        }
                        served => {
                            let served = served
                                .and_then(|b| b.to_bytes().map_err(|e| format!("{chunk}: {e}")));
                            self.client
                                .inner
                                .with_state(|st, now| respond_chunk(st, now, chunk, served));
                        }
                    }
                }
                Event::StreamRequested { request, stream_id } => {
                    let served = match self.handler.stream_manager() {
                        Some(_) if self.client.is_send_buffer_full() => Err(self.too_much_data()),
                        Some(streams) => streams
                            .open_stream_buffer(&self.client, &stream_id)
                            .map_err(|e| e.to_string()),
                        None => Err(stream_not_found(&stream_id)),
                    };
                    let externals = &mut self.externals;
                    self.client.inner.with_state(|st, now| {
                        let buffer = match served {
                            Ok(buffer) => buffer,
                            Err(error) => {
                                let _ = st
                                    .conn
                                    .respond_stream_failure(now, request, &stream_id, &error);
                                return;
                            }
                        };
                        let id =
                            match st
                                .conn
                                .respond_stream(now, request, &stream_id, buffer.len())
                            {
                                Ok(id) => id,
                                Err(error) => {
                                    let _ = st.conn.respond_stream_failure(
                                        now,
                                        request,
                                        &stream_id,
                                        &error.to_string(),
                                    );
                                    return;
                                }
                            };
                        if buffer.is_empty() {
                            return;
                        }
                        match buffer {
                            ManagedBuffer::File(segment) => {
                                // Written by the driver itself, straight from the file.
                                let _ = st.conn.send_body_external(now, id, segment.len());
                                externals.insert(id, (segment, 0));
                            }
                            other => {
                                let bytes = other.to_bytes().unwrap_or_default();
                                let _ = st.conn.send_body(now, id, bytes);
                            }
                        }
                    });
                }
                Event::UploadReceived { request, meta, .. } => {
                    let sink = (self.handler.receive_stream(&self.client, meta))
                        .map_err(|e| e.to_string());
                    if let Err(error) = &sink {
                        self.client.inner.with_state(|st, now| {
                            let _ = st.conn.respond_rpc_failure(now, request, error);
                        });
                    }
                    self.uploads.insert(request, sink.ok());
                }
                Event::UploadData { request, data } => {
                    let Some(slot) = self.uploads.get_mut(&request) else {
                        return;
                    };
                    let Some(sink) = slot else { return };
                    if let Err(error) = sink.on_data(data).map_err(|e| e.to_string()) {
                        // The destination failed: tell the uploader now, discard the rest.
                        if let Some(sink) = slot.take() {
                            sink.on_failure(&error);
                        }
                        self.client.inner.with_state(|st, now| {
                            let _ = st.conn.respond_rpc_failure(now, request, &error);
                        });
                    }
                }
                Event::UploadFinished { request } => {
                    if let Some(Some(sink)) = self.uploads.remove(&request) {
                        sink.on_complete(RpcResponder::new(self.client.inner.clone(), request));
                    }
                }
                Event::UploadAborted { request, error } => {
                    if let Some(Some(sink)) = self.uploads.remove(&request) {
                        sink.on_failure(&error.to_string());
                    }
                }
                Event::Closed { error } => {
                    match &error {
                        ConnectionError::PeerClosed | ConnectionError::LocallyClosed => {
                            debug!(%error, "connection closed")
                        }
                        // Peers can cause these on purpose (undecodable frames) on
                        // connection after connection: logged at a bounded rate, counted
                        // in `ServerStats`.
                        _ => limited!(warn, %error, "connection failed"),
                    }
                    if let Some(registry) = &self.registry {
                        lock(registry).remove(&self.client.id());
                    }
                    if let Some(streams) = self.handler.stream_manager() {
                        streams.connection_closed(&self.client);
                    }
                    self.handler.connection_closed(&self.client, &error);
                }
                other => trace!(event = ?other, "event not handled by the transport layer"),
            }
        }
    }
}
