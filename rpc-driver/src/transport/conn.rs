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
use rpc_proto::{
    Call, CallError, Config, Connection, ConnectionError, Event, RequestId, RpcError, StreamChunkId,
};
use tracing::{debug, trace, warn, Instrument};

use super::{ConnectionAddrs, RpcHandler};
use crate::completion::{self, Completer, Waiter};
use crate::runtime::{AsyncStream, AsyncTimer, Runtime};
use crate::sync::{lock, Arc, Mutex};

/// Reads start this large and double while they fill the buffer.
const READ_CHUNK_MIN: usize = 8 * 1024;
const READ_CHUNK_MAX: usize = 256 * 1024;
/// Buffers gathered into one vectored write.
const MAX_IOVECS: usize = 64;
/// Loop turns in one poll of the driver before it yields to other tasks.
const POLL_BUDGET: usize = 32;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

type RpcResult = Result<Bytes, RpcError>;

/// What the handles and the driver task share, behind one mutex.
pub(crate) struct ConnState {
    pub(crate) conn: Connection,
    /// Completion slots of the calls handles are waiting on (RPCs and chunk fetches).
    calls: HashMap<Call, Completer<RpcResult>>,
    driver: Option<Waker>,
    /// Tasks waiting in [`TransportClient::ready`] for room in the send buffer.
    ready: Vec<Waker>,
}

impl ConnState {
    pub(crate) fn new(conn: Connection) -> Self {
        Self {
            conn,
            calls: HashMap::new(),
            driver: None,
            ready: Vec::new(),
        }
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
            self.ready.drain(..).for_each(Waker::wake);
        }
    }

    /// Drains the connection's events: completes the calls they end, answers requests this
    /// layer does not serve, and collects the rest for the handler.
    pub(crate) fn process_events(&mut self, now: Instant, inbound: &mut Vec<Event>) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::ReplyReceived { request, body } => {
                    self.complete(Call::Rpc(request), Ok(body))
                }
                Event::ChunkReceived { chunk, body } => {
                    self.complete(Call::ChunkFetch(chunk), Ok(body))
                }
                Event::CallFailed { call, error } => self.complete(call, Err(error)),
                Event::UploadReceived { request, .. }
                | Event::MergedBlockMetaRequested { request, .. } => {
                    let _ = self.conn.respond_rpc_failure(now, request, UNSERVED);
                }
                Event::UploadData { .. }
                | Event::UploadFinished { .. }
                | Event::UploadAborted { .. } => {}
                other => inbound.push(other),
            }
        }
    }

    fn complete(&mut self, call: Call, result: RpcResult) {
        if let Some(completer) = self.calls.remove(&call) {
            // The caller may have dropped its future a moment ago; then nobody wants it.
            let _ = completer.complete(result);
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
        self.calls.insert(Call::Rpc(id), completer);
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
        self.calls.insert(Call::ChunkFetch(chunk), completer);
        Ok(waiter)
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

    /// Registers the driver's waker.
    pub(crate) fn park_driver(&mut self, waker: &Waker) {
        match &mut self.driver {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
    }
}

const NO_STREAMS: &str = "this peer serves no chunks or streams";
const UNSERVED: &str = "this peer serves no uploads or merged block metadata";

pub(crate) struct ConnInner {
    pub(crate) rt: StdArc<dyn Runtime>,
    pub(crate) addrs: ConnectionAddrs,
    id: u64,
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
    ) -> Self {
        let now = rt.now();
        let inner = Arc::new(ConnInner {
            addrs,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(ConnState::new(Connection::new(config, now))),
            rt: rt.clone(),
        });
        let client = TransportClient { inner };
        debug!(id = client.inner.id, local = %addrs.local, peer = %addrs.peer, "connection opened");
        handler.connection_opened(&client);
        let span = tracing::debug_span!("connection", id = client.inner.id, peer = %addrs.peer);
        let driver = Driver {
            client: client.clone(),
            stream,
            handler,
            timer: None,
            read_buf: BytesMut::new(),
            read_chunk: READ_CHUNK_MIN,
            writing: VecDeque::new(),
            read_done: false,
        };
        rt.spawn(Box::pin(driver.instrument(span)));
        client
    }

    /// Sends an RPC. The reply (or why there is none) is the future's output; with a
    /// `timeout`, the call fails with [`RpcError::TimedOut`] when it passes. Dropping the
    /// future forgets the call; a late reply is discarded.
    pub fn send_rpc(&self, body: Bytes, timeout: Option<Duration>) -> RpcCall {
        match self
            .inner
            .with_state(|st, now| st.start_rpc(now, body, timeout))
        {
            Ok((id, waiter)) => RpcCall::started(&self.inner, Call::Rpc(id), waiter),
            Err(error) => RpcCall::refused(error),
        }
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

    /// Whether new calls would be refused with [`CallError::SendBufferFull`] now.
    pub fn is_send_buffer_full(&self) -> bool {
        lock(&self.inner.state).conn.is_send_buffer_full()
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

/// The future of [`TransportClient::ready`].
#[must_use = "futures do nothing unless polled"]
pub struct Ready {
    inner: Arc<ConnInner>,
}

impl Future for Ready {
    type Output = Result<(), CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = lock(&self.inner.state);
        if st.conn.is_closed() {
            return Poll::Ready(Err(CallError::Closed));
        }
        if !st.conn.is_send_buffer_full() {
            return Poll::Ready(Ok(()));
        }
        st.ready.push(cx.waker().clone());
        Poll::Pending
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

/// An RPC in flight: resolves to the reply body or the reason there is none.
///
/// Dropping it forgets the call (the late reply, if any, is discarded).
#[must_use = "an RPC's reply is only seen by awaiting it"]
pub struct RpcCall {
    client: Option<Arc<ConnInner>>,
    call: Option<Call>,
    waiter: Option<Waiter<RpcResult>>,
    refused: Option<CallError>,
}

impl RpcCall {
    fn started(inner: &Arc<ConnInner>, call: Call, waiter: Waiter<RpcResult>) -> Self {
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

    /// The request id an RPC went out with, unless it was refused before being sent (or is a
    /// chunk fetch, which has none).
    pub fn request_id(&self) -> Option<RequestId> {
        match self.call {
            Some(Call::Rpc(id)) => Some(id),
            _ => None,
        }
    }
}

impl Future for RpcCall {
    type Output = RpcResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RpcResult> {
        if let Some(error) = self.refused.take() {
            return Poll::Ready(Err(RpcError::NotSent(error)));
        }
        let Some(waiter) = self.waiter.as_mut() else {
            panic!("RpcCall polled after it completed");
        };
        match Pin::new(waiter).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.waiter = None;
                self.client = None;
                Poll::Ready(result.unwrap_or_else(|| {
                    Err(RpcError::Disconnected(ConnectionError::Transport(
                        "connection driver stopped".into(),
                    )))
                }))
            }
        }
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        if let (Some(inner), Some(call)) = (self.client.take(), self.call) {
            // Drop the waiter first so a completion racing this drop is handed back, not kept.
            self.waiter = None;
            inner.with_state(|st, _| st.abandon(call));
        }
    }
}

impl fmt::Debug for RpcCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcCall")
            .field("call", &self.call)
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

impl Drop for RpcResponder {
    fn drop(&mut self) {
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
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    read_buf: BytesMut,
    read_chunk: usize,
    writing: VecDeque<Bytes>,
    read_done: bool,
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
            if !this.read_done && !st.conn.is_closed() {
                progress |= this.read(cx, &mut st, now);
            }
            progress |= this.poll_timer(cx, &mut st, now);
            st.process_events(now, &mut inbound);
            progress |= this.write(cx, &mut st, now);
            st.process_events(now, &mut inbound);
            st.wake_ready();
            let drained = st.conn.is_drained() && this.writing.is_empty();
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
    fn read(&mut self, cx: &mut Context<'_>, st: &mut ConnState, now: Instant) -> bool {
        self.read_buf.resize(self.read_chunk, 0);
        match self.stream.poll_read(cx, &mut self.read_buf) {
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
                self.read_buf.truncate(n);
                st.conn.handle_data(now, self.read_buf.split());
                if n == self.read_chunk {
                    self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
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
                return progress;
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

    /// Hands inbound requests to the handler, outside the lock.
    fn dispatch(&mut self, inbound: &mut Vec<Event>) {
        for event in inbound.drain(..) {
            match event {
                Event::RpcReceived { request, body } => {
                    let responder = RpcResponder::new(self.client.inner.clone(), request);
                    self.handler.receive(&self.client, body, responder);
                }
                Event::OneWayReceived { body } => self.handler.receive_one_way(&self.client, body),
                Event::ChunkFetchReceived { chunk } => {
                    let served = match self.handler.stream_manager() {
                        Some(streams) => streams.chunk(&self.client, chunk),
                        None => Err(NO_STREAMS.to_owned()),
                    };
                    self.client.inner.with_state(|st, now| {
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
                    });
                }
                Event::StreamRequested { request, stream_id } => {
                    let served = match self.handler.stream_manager() {
                        Some(streams) => streams.open_stream(&self.client, &stream_id),
                        None => Err(NO_STREAMS.to_owned()),
                    };
                    self.client.inner.with_state(|st, now| match served {
                        Ok(body) => {
                            match st.conn.respond_stream(
                                now,
                                request,
                                &stream_id,
                                body.len() as u64,
                            ) {
                                Ok(id) if !body.is_empty() => {
                                    let _ = st.conn.send_body(now, id, body);
                                }
                                Ok(_) => {}
                                Err(error) => {
                                    let _ = st.conn.respond_stream_failure(
                                        now,
                                        request,
                                        &stream_id,
                                        &error.to_string(),
                                    );
                                }
                            }
                        }
                        Err(error) => {
                            let _ = st
                                .conn
                                .respond_stream_failure(now, request, &stream_id, &error);
                        }
                    });
                }
                Event::Closed { error } => {
                    match &error {
                        ConnectionError::PeerClosed | ConnectionError::LocallyClosed => {
                            debug!(%error, "connection closed")
                        }
                        _ => warn!(%error, "connection failed"),
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
