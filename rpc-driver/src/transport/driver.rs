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
/// Bytes one poll of the driver may move (read and written together) before it yields to
/// other tasks: a bulk transfer's turn on the worker is bounded, so the other connections'
/// drivers and the env's dispatch (a control message waiting behind it) get their turn
/// within about this much copying. A read or write is cut to what is left of it.
///
/// 4 MiB, measured (issue 15): against no bound, W6's ask p99 under a bulk load fell from
/// about 3x the raw floor's to 1.2-1.6x with the bulk rate kept; 256 KiB and 1 MiB bounded
/// latency no better but cost W4 and W7 a quarter to a half of their rate, as every yield
/// is a trip through the scheduler (and often a wake-up of the other worker).
pub(super) const POLL_BYTES: usize = 4 * 1024 * 1024;

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
        armed: None,
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
    /// The instant `timer` is set for, at or before the connection's deadline (see
    /// [`Driver::poll_timer`]).
    armed: Option<Instant>,
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
        let mut bytes = POLL_BYTES;
        let drained = loop {
            let now = inner.rt.now();
            let mut st = lock(&inner.state);
            let mut progress = false;
            if !this.read_done
                && !st.conn.is_closed()
                && st.reading_allowed()
                && this.send_room(&st) > 0
            {
                progress |= this.read(cx, &mut st, now, &mut bytes);
                this.count_partial_frame(&mut st, now);
            }
            progress |= this.poll_timer(cx, &mut st, now);
            st.process_events(&mut inbound);
            progress |= this.write(cx, &mut st, now, &mut bytes);
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
            if budget == 0 || bytes == 0 {
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
    /// reserving the largest chunk. A read is cut to the poll's byte budget `bytes` (at
    /// least `READ_CHUNK_MIN`), which it uses up.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        st: &mut ConnState,
        now: Instant,
        bytes: &mut usize,
    ) -> bool {
        debug_assert!(self.read_buf.is_empty());
        let max = st
            .read_room(self.read_chunk)
            .min(self.send_room(st))
            .min((*bytes).max(READ_CHUNK_MIN));
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
                *bytes = bytes.saturating_sub(n);
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
    ///
    /// The timer is moved only when the deadline moves earlier than the instant it is set
    /// for. A deadline that moves later (the idle deadline after every read, a call's after
    /// its reply) leaves it where it is: it fires early, once, and is set again then. Every
    /// move is a reset, which on async-io is a round trip through the reactor (a queued
    /// removal and insertion and a notify), so moving it on every turn costs more than the
    /// rare early wake.
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
                if self.armed.is_none_or(|armed| armed > deadline) {
                    timer.as_mut().reset(deadline);
                    self.armed = Some(deadline);
                }
                timer
            }
            None => {
                self.armed = Some(deadline);
                self.timer
                    .insert(self.dispatcher.client.inner.rt.new_timer(deadline))
            }
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.armed.is_some_and(|armed| armed < deadline) {
            // Fired for a deadline that has since moved later: set it for the real one.
            timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
        st.conn.handle_timeout(now.max(deadline));
        true
    }

    /// Writes what the connection has to send, no more than the poll's byte budget `bytes`
    /// (which it uses up); returns whether anything was written.
    fn write(
        &mut self,
        cx: &mut Context<'_>,
        st: &mut ConnState,
        now: Instant,
        bytes: &mut usize,
    ) -> bool {
        let mut progress = false;
        loop {
            if *bytes == 0 {
                // The rest waits for the next poll, which the caller asks for at once.
                return progress;
            }
            while self.writing.len() < MAX_IOVECS {
                match st.conn.poll_transmit() {
                    Some(bytes) => self.writing.push_back(bytes),
                    None => break,
                }
            }
            if self.writing.is_empty() {
                match self.write_external(cx, st, now, bytes) {
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
            let mut n = 0;
            let mut room = *bytes;
            for (slice, queued) in slices.iter_mut().zip(&self.writing) {
                let take = queued.len().min(room);
                *slice = IoSlice::new(&queued[..take]);
                n += 1;
                room -= take;
                if room == 0 {
                    break;
                }
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
                    *bytes = bytes.saturating_sub(written);
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
        bytes: &mut usize,
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
            let len = left.min(SENDFILE_MAX).min(*bytes as u64) as usize;
            match self.stream.poll_send_file(cx, segment.file(), offset, len) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let reason = format!("{segment:?} ended early (truncated?)");
                    st.conn.abort_body(now, body, &reason);
                    self.dispatcher.externals.remove(&body);
                    return Poll::Ready(true);
                }
                Poll::Ready(Ok(n)) => {
                    *bytes = bytes.saturating_sub(n);
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

#[cfg(test)]
mod tests {
    //! The driver polled by hand on a stream that is always ready: one poll moves at most
    //! [`POLL_BYTES`], then the driver wakes itself and yields.
    // The runtime double below counts with std's atomics and keeps spawned tasks under std's
    // mutex: it is test scaffolding outside what loom models, never crate state.
    #![allow(clippy::disallowed_types)]

    use std::io;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use rpc_proto::Frame;

    use super::*;
    use crate::runtime::{AsyncListener, BoxFuture};
    use crate::transport::RpcResponder;

    /// Keeps what is spawned, to be polled by hand; its timers fire only when told to.
    #[derive(Default)]
    struct Captured {
        spawned: std::sync::Mutex<Vec<BoxFuture<()>>>,
        timers: StdArc<TimerLog>,
    }

    impl std::fmt::Debug for Captured {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Captured").finish_non_exhaustive()
        }
    }

    /// What the timers of a [`Captured`] runtime were asked to do.
    #[derive(Debug, Default)]
    struct TimerLog {
        created: AtomicUsize,
        resets: AtomicUsize,
        /// Makes the timers ready until they are next reset.
        fire: std::sync::atomic::AtomicBool,
    }

    impl Runtime for Captured {
        fn spawn(&self, future: BoxFuture<()>) {
            self.spawned.lock().unwrap().push(future);
        }

        fn spawn_isolated(&self, _: BoxFuture<()>) {
            unreachable!("nothing is isolated here")
        }

        fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send>) {
            unreachable!("nothing blocks here")
        }

        fn new_timer(&self, _: Instant) -> Pin<Box<dyn AsyncTimer>> {
            self.timers.created.fetch_add(1, Ordering::Relaxed);
            Box::pin(Manual(StdArc::clone(&self.timers)))
        }

        fn connect(&self, _: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
            unreachable!("no connections here")
        }

        fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
            unreachable!("no listeners here")
        }
    }

    #[derive(Debug)]
    struct Manual(StdArc<TimerLog>);

    impl AsyncTimer for Manual {
        fn reset(self: Pin<&mut Self>, _: Instant) {
            self.0.resets.fetch_add(1, Ordering::Relaxed);
            self.0.fire.store(false, Ordering::Relaxed);
        }

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.fire.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// A socket that takes every byte written at once and, with `inbound`, has that frame to
    /// read again and again (as many bytes as `allowed` holds, without limit if `None`); it
    /// counts the bytes it moved.
    struct Endless {
        inbound: Option<Bytes>,
        allowed: StdArc<std::sync::Mutex<Option<usize>>>,
        at: usize,
        read: StdArc<AtomicUsize>,
        written: StdArc<AtomicUsize>,
    }

    impl AsyncStream for Endless {
        fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let Some(frame) = &self.inbound else {
                return Poll::Pending;
            };
            let mut allowed = self.allowed.lock().unwrap();
            let want = allowed.map_or(buf.len(), |a| a.min(buf.len()));
            if want == 0 {
                return Poll::Pending;
            }
            if let Some(a) = allowed.as_mut() {
                *a -= want;
            }
            let mut n = 0;
            while n < want {
                let take = (frame.len() - self.at).min(want - n);
                buf[n..n + take].copy_from_slice(&frame[self.at..self.at + take]);
                n += take;
                self.at = (self.at + take) % frame.len();
            }
            self.read.fetch_add(n, Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            &mut self,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.written.fetch_add(n, Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }

        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn peer_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:2".parse().unwrap())
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
    }

    /// Counts one-way messages.
    #[derive(Default)]
    struct Counting {
        one_way: AtomicUsize,
    }

    impl RpcHandler for Counting {
        fn receive(&self, _: &TransportClient, _: Bytes, _: RpcResponder) {}

        fn receive_one_way(&self, _: &TransportClient, _: Bytes) {
            self.one_way.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: StdArc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Setup {
        client: TransportClient,
        driver: BoxFuture<()>,
        timers: StdArc<TimerLog>,
        allowed: StdArc<std::sync::Mutex<Option<usize>>>,
        handler: StdArc<Counting>,
        read: StdArc<AtomicUsize>,
        written: StdArc<AtomicUsize>,
    }

    fn setup(inbound: Option<Bytes>, config: Config) -> Setup {
        let rt = StdArc::new(Captured::default());
        let (read, written, allowed) = Default::default();
        let stream = Endless {
            inbound,
            allowed: StdArc::clone(&allowed),
            at: 0,
            read: StdArc::clone(&read),
            written: StdArc::clone(&written),
        };
        let handler = StdArc::new(Counting::default());
        let addrs = ConnectionAddrs {
            local: stream.local_addr().unwrap(),
            peer: stream.peer_addr().unwrap(),
        };
        let client = open(
            rt.clone(),
            Box::new(stream),
            addrs,
            config,
            handler.clone(),
            None,
            None,
        );
        let driver = rt
            .spawned
            .lock()
            .unwrap()
            .pop()
            .expect("the driver was spawned");
        Setup {
            client,
            driver,
            timers: StdArc::clone(&rt.timers),
            allowed,
            handler,
            read,
            written,
        }
    }

    #[test]
    fn a_poll_writes_at_most_the_byte_budget_then_yields() {
        let mut s = setup(None, Config::default());
        let body = 64 * 1024;
        let count = 4 * POLL_BYTES / body;
        for _ in 0..count {
            s.client.send(Bytes::from(vec![7; body])).unwrap();
        }
        let wakes = StdArc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let mut before = 0;
        loop {
            let woken = wakes.0.load(Ordering::Relaxed);
            assert!(s.driver.as_mut().poll(&mut cx).is_pending());
            polls += 1;
            let written = s.written.load(Ordering::Relaxed);
            assert!(
                written - before <= POLL_BYTES,
                "poll {polls} wrote {} bytes",
                written - before
            );
            before = written;
            if wakes.0.load(Ordering::Relaxed) == woken {
                break; // nothing left: the driver waits to be woken
            }
            assert!(polls < 10_000, "the driver never finished writing");
        }
        assert!(s.written.load(Ordering::Relaxed) > count * body);
        assert!(polls > count * body / POLL_BYTES, "{polls} polls");
        assert_eq!(s.client.buffered_bytes(), 0);
    }

    #[test]
    fn a_poll_reads_at_most_the_byte_budget_then_yields() {
        let frame = Frame::OneWayMessage {
            body: Bytes::from(vec![1; 1000]),
        }
        .to_bytes();
        let s = setup(Some(frame.clone()), Config::default());
        let mut driver = s.driver;
        let wakes = StdArc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut before = 0;
        for poll in 1..=20 {
            let woken = wakes.0.load(Ordering::Relaxed);
            assert!(driver.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                wakes.0.load(Ordering::Relaxed),
                woken + 1,
                "poll {poll}: the driver yields and asks to be polled again"
            );
            let read = s.read.load(Ordering::Relaxed);
            assert!(read > before, "poll {poll} read nothing");
            assert!(
                read - before <= POLL_BYTES,
                "poll {poll} read {} bytes",
                read - before
            );
            before = read;
        }
        // What was read was handled: every whole frame reached the handler.
        assert_eq!(
            s.handler.one_way.load(Ordering::Relaxed),
            before / frame.len()
        );
        assert!(s.client.is_active());
    }

    /// The idle deadline moves later with every read; the timer stays where it was set and,
    /// when it fires early, is set again for the real deadline with no timeout acted on. A
    /// deadline earlier than the timer's moves it at once.
    #[test]
    fn the_timer_moves_only_when_the_deadline_moves_earlier() {
        let frame = Frame::OneWayMessage {
            body: Bytes::from_static(b"x"),
        }
        .to_bytes();
        let config = Config::builder()
            .with_idle_timeout(Some(std::time::Duration::from_secs(3600)))
            .build()
            .unwrap();
        let s = setup(Some(frame.clone()), config);
        let mut driver = s.driver;
        *s.allowed.lock().unwrap() = Some(0);
        let mut cx = Context::from_waker(Waker::noop());
        // An outstanding call: the idle deadline applies, and moves with every read.
        let mut call = s.client.send_rpc(Bytes::from_static(b"ask"), None);
        assert!(driver.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.timers.created.load(Ordering::Relaxed), 1);
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            *s.allowed.lock().unwrap() = Some(frame.len());
            assert!(driver.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(s.handler.one_way.load(Ordering::Relaxed), 10);
        assert_eq!(
            s.timers.resets.load(Ordering::Relaxed),
            0,
            "moved later: no reset"
        );
        // It fires for the old deadline: set again for the new one, nothing timed out.
        s.timers.fire.store(true, Ordering::Relaxed);
        assert!(driver.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.timers.resets.load(Ordering::Relaxed), 1);
        assert!(s.client.is_active());
        assert!(
            Pin::new(&mut call).poll(&mut cx).is_pending(),
            "the call is still waiting"
        );
        // An earlier deadline moves it at once.
        let short = s.client.send_rpc(
            Bytes::from_static(b"ask"),
            Some(std::time::Duration::from_secs(60)),
        );
        assert!(driver.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.timers.resets.load(Ordering::Relaxed), 2);
        assert_eq!(s.timers.created.load(Ordering::Relaxed), 1);
        drop((call, short));
    }
}
