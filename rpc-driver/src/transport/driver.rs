//! The I/O driver: the task that moves bytes between a connection's socket and its
//! [`Connection`], and time into it; and [`open`], which starts one.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use rpc_proto::{Config, Connection};
use tracing::{debug, trace, Instrument};

use super::addrs::ConnectionAddrs;
use super::client::TransportClient;
use super::dispatch::Dispatcher;
use super::handler::RpcHandler;
use super::id::ConnectionId;
use super::registry::Registry;
use super::state::{ConnInner, ConnState, READ_CHUNK_MIN};
use crate::runtime::{unblock, AsyncStream, AsyncTimer, Runtime, Unblock};
use crate::sync::atomic::Ordering;
use crate::sync::{lock, Arc, Mutex};

// Handles on trait objects (runtime, handler) are std `Arc`s even under loom: loom's `Arc`
// cannot coerce to `dyn`, and they are not state the loom models need to see.
use crate::sync::unmodeled::Arc as StdArc;

// `zero_copy` is a stats counter, read only for logs: loom need not model it.
use crate::sync::unmodeled::atomic::AtomicU64;

/// The largest read: reads start at `READ_CHUNK_MIN` and double while they fill the buffer.
const READ_CHUNK_MAX: usize = 2 * 1024 * 1024;
/// Buffers gathered into one vectored write.
const MAX_IOVECS: usize = 64;
/// Loop turns in one poll of the driver before it yields to other tasks.
const POLL_BUDGET: usize = 32;

/// A seed of its own for each connection's random number generator (its first request id),
/// from the standard library's per-process random keys: not for secrets, only so that
/// connections do not share request ids.
fn connection_seed(id: ConnectionId) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(id.get())
}

/// Opens a connection on `stream`: spawns its driver task and returns a handle on it.
/// `registry` is the server's, for a connection a server accepted.
pub(crate) fn open(
    rt: StdArc<dyn Runtime>,
    stream: Box<dyn AsyncStream>,
    addrs: ConnectionAddrs,
    config: Config,
    handler: StdArc<dyn RpcHandler>,
    registry: Option<StdArc<Registry>>,
    client_id: Option<StdArc<str>>,
) -> TransportClient {
    let now = rt.now();
    let id = ConnectionId::next();
    let inner = Arc::new(ConnInner {
        zero_copy: AtomicU64::new(0),
        addrs,
        client_id,
        id,
        state: Mutex::new(ConnState::new(Connection::new(
            if registry.is_some() {
                config.accepted()
            } else {
                config
            }
            .with_seed(connection_seed(id)),
            now,
        ))),
        rt: rt.clone(),
    });
    let client = TransportClient { inner };
    debug!(id = %client.inner.id, local = %addrs.local, peer = %addrs.peer, "connection opened");
    if let Some(registry) = &registry {
        lock(registry).insert(client.id(), client.clone());
    }
    handler.connection_opened(&client);
    let span = tracing::debug_span!("connection", id = %client.inner.id, peer = %addrs.peer);
    let driver = Driver {
        dispatcher: Dispatcher::new(client, handler, registry),
        stream,
        timer: None,
        sendfile_unsupported: false,
        body_read: None,
        partial_counted: 0,
        read_buf: BytesMut::new(),
        read_chunk: READ_CHUNK_MIN,
        writing: VecDeque::new(),
        read_done: false,
        unflushed: false,
    };
    let client = driver.dispatcher.client.clone();
    rt.spawn(Box::pin(driver.instrument(span)));
    client
}

/// The task that moves bytes between the socket and the connection.
struct Driver {
    /// Where inbound requests go, and the file bodies and chunks they leave to write.
    dispatcher: Dispatcher,
    stream: Box<dyn AsyncStream>,
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    read_buf: BytesMut,
    read_chunk: usize,
    writing: VecDeque<Bytes>,
    read_done: bool,
    /// Whether the stream accepted bytes since it was last flushed
    /// ([`AsyncStream::poll_flush`]).
    unflushed: bool,
    /// Set once the socket has refused `sendfile`; files are then read and written.
    sendfile_unsupported: bool,
    /// Where `sendfile` is unsupported: the read of the next piece of the file body being
    /// written, on the runtime's blocking pool (one piece in flight at a time).
    body_read: Option<BodyRead>,
    /// This connection's partial-frame bytes as last added to the registry's total.
    partial_counted: u64,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(registry) = &self.dispatcher.registry {
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
        let inner = this.dispatcher.client.inner.clone();
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
            this.dispatcher.dispatch(&mut inbound);
            budget -= 1;
            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                break false;
            }
        };
        this.dispatcher.dispatch(&mut inbound);
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
    /// connection a server accepted, nothing while the send buffer (file-backed bodies and
    /// chunks not written yet included) is over [`Config::max_send_buffer`], so a peer that does not read
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
        if self.dispatcher.registry.is_none() {
            return usize::MAX;
        }
        let used = st.conn.buffered_bytes();
        let max = st.conn.config().max_send_buffer();
        if used >= max {
            return 0;
        }
        usize::try_from((max - used) / 32)
            .unwrap_or(usize::MAX)
            .max(READ_CHUNK_MIN)
    }

    /// Adds this connection's partial-frame bytes to its server's total; closes it if that
    /// takes the total over
    /// [`TransportConfig::max_partial_frame_bytes`](super::config::TransportConfig).
    fn count_partial_frame(&mut self, st: &mut ConnState, now: Instant) {
        let Some(registry) = &self.dispatcher.registry else {
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
            None => self
                .timer
                .insert(self.dispatcher.client.inner.rt.new_timer(deadline)),
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
        let Some((segment, done)) = self.dispatcher.externals.get_mut(&body) else {
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
                    self.dispatcher.externals.remove(&body);
                    return Poll::Ready(true);
                }
                Poll::Ready(Ok(n)) => {
                    *done += n as u64;
                    if *done == segment.len() {
                        self.dispatcher.externals.remove(&body);
                    }
                    self.dispatcher
                        .client
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
                let read = unblock(&*self.dispatcher.client.inner.rt, move || {
                    piece.read(at, len as usize)
                });
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
                    self.dispatcher.externals.remove(&body);
                }
                self.writing.push_back(bytes);
                st.conn.handle_external_written(now, len);
            }
            Err(error) => {
                let reason = format!("reading {segment:?} failed: {error}");
                st.conn.abort_body(now, body, &reason);
                self.dispatcher.externals.remove(&body);
            }
        }
        Poll::Ready(true)
    }
}
