//! Accepting connections: Spark's `TransportServer`.
//!
//! The accept loop keeps a server reachable when a peer is hostile or the process runs out
//! of file descriptors:
//!
//! - A failed `accept` that says nothing about the next one (the peer reset the connection
//!   first) is retried at once; any other failure (descriptors exhausted: `EMFILE`,
//!   `ENFILE`; no memory) pauses accepting, 1 ms after the first failure, doubling up to
//!   1 s, back to 1 ms after the next success (tokio's and hyper's servers do the same). The
//!   connections already open are served meanwhile, and accepting resumes by itself once
//!   descriptors are free.
//! - Beyond [`TransportConfig::max_connections`] open connections, new ones are accepted and
//!   closed at once, and counted in [`ServerStats::refused`].
//! - One poll accepts at most [`ACCEPT_BATCH`] connections before yielding, so a flood of
//!   connects cannot keep the loop from giving the executor thread back.
//! - What a peer can cause is logged at a bounded rate (see `log_limit`) and counted in
//!   [`ServerStats`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::ConnectionError;
use tracing::{debug, Instrument};

use super::addrs::ConnectionAddrs;
use super::client::TransportClient;
use super::config::TransportConfig;
use super::driver;
use super::handler::{MergedBlockMetaReqHandler, RpcHandler, UploadSink};
use super::registry::Registry;
use super::responder::RpcResponder;
use super::stream::StreamManager;
use crate::error::BoxError;
use crate::log_limit::limited;
use crate::runtime::{AsyncListener, AsyncStream, AsyncTimer, Runtime};
use crate::security::secure_server;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{lock, Arc, Mutex};

// The stats counters are read only for `stats()`: loom need not model them.
use crate::sync::unmodeled::atomic::AtomicU64;

// Handles on trait objects (runtime, handler) are std `Arc`s even under loom: loom's `Arc`
// cannot coerce to `dyn`, and they are not state the loom models need to see.
use crate::sync::unmodeled::Arc as StdArc;

/// Connections one poll of the accept loop takes before it yields to the executor.
const ACCEPT_BATCH: usize = 64;

/// The first pause after a failed accept; it doubles with each failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(1);

/// The longest pause after failed accepts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Counters of a [`TransportServer`], from [`TransportServer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and closed at once, because
    /// [`max_connections`](TransportConfig::max_connections) were open.
    pub refused: u64,
    /// Accepts that failed (descriptors exhausted, the peer reset first, ...).
    pub accept_errors: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed because the peer sent an invalid frame.
    pub protocol_errors: u64,
    /// Connections whose handshake failed (a wrong secret, an unknown app, a request before
    /// authenticating, garbage, a stall past the handshake timeout), cut off before anything
    /// was served. Counted with [`Security`](crate::security::Security) on.
    pub auth_failures: u64,
    /// Connections in their handshake now (counted against
    /// [`max_connections`](TransportConfig::max_connections)).
    pub handshaking: u64,
    /// Connections that ended with any other error (timeouts, transport errors, ...).
    pub failed: u64,
    /// Replies that matched no outstanding call, dropped, on every connection the server
    /// accepted (open or closed): see
    /// [`ConnectionStats::unmatched_replies`](rpc_proto::ConnectionStats::unmatched_replies).
    pub unmatched_replies: u64,
}

/// The counters behind [`ServerStats`].
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    protocol_errors: AtomicU64,
    auth_failures: AtomicU64,
    handshaking: AtomicU64,
    failed: AtomicU64,
    /// Unmatched replies of connections already closed.
    unmatched_replies: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Accepts connections and hands what arrives on them to an [`RpcHandler`].
///
/// Dropping the last handle does not stop it; [`close`](TransportServer::close) does.
///
/// A hostile peer or a lack of file descriptors does not stall it: when `accept` fails (say
/// with `EMFILE`), accepting pauses, 1 ms doubling up to 1 s, and resumes by itself once
/// descriptors are free, while open connections are served on; beyond
/// [`TransportConfig::max_connections`] open connections, new ones are closed at once.
/// Failed accepts, refused connections and what peers got wrong are counted in
/// [`stats`](TransportServer::stats) and logged at a bounded rate (at most 10 lines per
/// 10 s of each kind).
#[derive(Clone)]
pub struct TransportServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    local_addr: SocketAddr,
    closed: AtomicBool,
    accept_waker: Mutex<Option<Waker>>,
    handler: StdArc<dyn RpcHandler>,
    /// The open connections, so closing the server can close them.
    open: StdArc<Registry>,
    counters: StdArc<Counters>,
}

impl TransportServer {
    /// Binds `addr` (port 0 picks a free port) and starts accepting connections.
    ///
    /// A port already in use is [`io::ErrorKind::AddrInUse`].
    pub fn bind(
        rt: StdArc<dyn Runtime>,
        addr: SocketAddr,
        handler: StdArc<dyn RpcHandler>,
        config: TransportConfig,
    ) -> io::Result<Self> {
        if let Some(tls) = config.security().tls_config() {
            // A server without an identity would fail every handshake: say so now.
            tls.check_server()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = rt.listen(std_listener)?;
        let local_addr = listener.local_addr()?;
        let counters = StdArc::new(Counters::default());
        let inner = Arc::new(ServerInner {
            local_addr,
            closed: AtomicBool::new(false),
            accept_waker: Mutex::new(None),
            handler: StdArc::new(Counting {
                handler,
                counters: counters.clone(),
            }),
            open: StdArc::new(Registry::new(config.max_partial_frame_bytes())),
            counters,
        });
        let accept = Accept {
            rt: rt.clone(),
            listener,
            server: inner.clone(),
            config,
            pause: None,
            backoff: BACKOFF_MIN,
        };
        let span = tracing::debug_span!("server", addr = %local_addr);
        rt.spawn(Box::pin(accept.instrument(span)));
        debug!(addr = %local_addr, "transport server listening");
        Ok(Self { inner })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The connections currently open.
    pub fn connections(&self) -> Vec<TransportClient> {
        lock(&self.inner.open).values().cloned().collect()
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.inner.counters;
        let open = self.connections();
        let unmatched_open: u64 = open.iter().map(|c| c.stats().unmatched_replies).sum();
        ServerStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            accept_errors: c.accept_errors.load(Ordering::Relaxed),
            open: open.len() as u64,
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            auth_failures: c.auth_failures.load(Ordering::Relaxed),
            handshaking: c.handshaking.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            unmatched_replies: c.unmatched_replies.load(Ordering::Relaxed) + unmatched_open,
        }
    }

    /// Stops accepting and closes every open connection. Idempotent.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(waker) = lock(&self.inner.accept_waker).take() {
            waker.wake();
        }
        for client in self.connections() {
            client.close();
        }
    }
}

impl fmt::Debug for TransportServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportServer")
            .field("addr", &self.inner.local_addr)
            .finish()
    }
}

/// Whether a failed accept concerns only the connection it would have returned (the peer
/// gave up first, a signal), so the next accept may be tried at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// The accept loop.
struct Accept {
    rt: StdArc<dyn Runtime>,
    listener: Box<dyn AsyncListener>,
    server: Arc<ServerInner>,
    config: TransportConfig,
    /// Accepting is paused until this fires, after a failed accept.
    pause: Option<Pin<Box<dyn AsyncTimer>>>,
    /// The next pause.
    backoff: Duration,
}

impl Accept {
    /// Serves an accepted connection, or closes it at once beyond the cap.
    fn take(&mut self, stream: Box<dyn AsyncStream>, peer: SocketAddr) {
        let server = &self.server;
        let open =
            lock(&server.open).len() + server.counters.handshaking.load(Ordering::Relaxed) as usize;
        if open >= self.config.max_connections() {
            bump(&server.counters.refused);
            limited!(
                warn,
                %peer,
                open,
                max_connections = self.config.max_connections(),
                "connection refused: too many open connections"
            );
            drop(stream);
            return;
        }
        bump(&server.counters.accepted);
        let local = stream.local_addr().unwrap_or(server.local_addr);
        let addrs = ConnectionAddrs { local, peer };
        if !self.config.security().is_enabled() {
            open_accepted(&self.rt, server, stream, addrs, &self.config, None);
            return;
        }
        // The handshake runs on a task of its own; the connection exists (and can be
        // served) only once it succeeded.
        bump(&server.counters.handshaking);
        let (rt, server, config) = (self.rt.clone(), server.clone(), self.config.clone());
        let handshake = async move {
            let secured = secure_server(&*rt, stream, config.security(), peer).await;
            server.counters.handshaking.fetch_sub(1, Ordering::Relaxed);
            match secured {
                Ok(secured) if !server.closed.load(Ordering::SeqCst) => {
                    debug!(%peer, client_id = ?secured.client_id, "authenticated");
                    open_accepted(
                        &rt,
                        &server,
                        secured.stream,
                        addrs,
                        &config,
                        secured.client_id,
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    bump(&server.counters.auth_failures);
                    // Once per attempt, at a bounded rate; the error names the peer and
                    // what kind of failure, never which check failed.
                    limited!(warn, %peer, %error, "connection refused: handshake failed");
                }
            }
        };
        let span = tracing::debug_span!("handshake", %peer);
        self.rt.spawn(Box::pin(handshake.instrument(span)));
    }

    /// Counts and logs a failed accept; pauses accepting unless it concerned only one
    /// connection.
    fn failed(&mut self, error: io::Error) {
        bump(&self.server.counters.accept_errors);
        if is_per_connection(&error) {
            debug!(%error, "accept failed; retrying");
            return;
        }
        let pause = self.backoff;
        self.backoff = (pause * 2).min(BACKOFF_MAX);
        limited!(warn, %error, ?pause, "accept failed; pausing accepts");
        self.pause = Some(self.rt.new_timer(self.rt.now() + pause));
    }
}

impl Future for Accept {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Stored before `closed` is read, so a `close` after the read finds it.
        *lock(&this.server.accept_waker) = Some(cx.waker().clone());
        let mut budget = ACCEPT_BATCH;
        loop {
            if this.server.closed.load(Ordering::SeqCst) {
                debug!("transport server stopped accepting");
                return Poll::Ready(());
            }
            if let Some(pause) = &mut this.pause {
                match pause.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => this.pause = None,
                }
            }
            if budget == 0 {
                // Let the executor run others; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, peer))) => {
                    this.backoff = BACKOFF_MIN;
                    this.take(stream, peer);
                }
                Poll::Ready(Err(error)) => this.failed(error),
            }
        }
    }
}

/// Starts serving a connection the server accepted (and, with security, authenticated).
fn open_accepted(
    rt: &StdArc<dyn Runtime>,
    server: &Arc<ServerInner>,
    stream: Box<dyn AsyncStream>,
    addrs: ConnectionAddrs,
    config: &TransportConfig,
    client_id: Option<StdArc<str>>,
) {
    driver::open(
        rt.clone(),
        stream,
        addrs,
        config.connection().clone(),
        server.handler.clone(),
        Some(server.open.clone()),
        client_id,
    );
}

/// The server's handler around the user's: counts how connections end.
struct Counting {
    handler: StdArc<dyn RpcHandler>,
    counters: StdArc<Counters>,
}

impl RpcHandler for Counting {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        self.handler.receive(client, message, responder)
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        self.handler.receive_one_way(client, message)
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        self.handler.stream_manager()
    }

    fn merged_block_meta_req_handler(&self) -> Option<&dyn MergedBlockMetaReqHandler> {
        self.handler.merged_block_meta_req_handler()
    }

    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, BoxError> {
        self.handler.receive_stream(client, meta)
    }

    fn connection_opened(&self, client: &TransportClient) {
        self.handler.connection_opened(client)
    }

    fn connection_closed(&self, client: &TransportClient, error: &ConnectionError) {
        let c = &self.counters;
        c.unmatched_replies
            .fetch_add(client.stats().unmatched_replies, Ordering::Relaxed);
        match error {
            ConnectionError::PeerClosed
            | ConnectionError::LocallyClosed
            | ConnectionError::Idle { .. } => {}
            ConnectionError::Decode(_) => bump(&c.protocol_errors),
            _ => bump(&c.failed),
        }
        self.handler.connection_closed(client, error)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::VecDeque;
    use std::time::Instant;

    use super::*;
    use crate::runtime::{AsyncStream, BoxFuture};
    use crate::sync::atomic::AtomicUsize;

    /// A clock stopped at `base`, and timers that fire only when the test says so.
    #[derive(Debug)]
    struct Manual {
        base: Instant,
        /// The pauses asked for, as durations from `base`.
        pauses: Mutex<Vec<Duration>>,
        fired: StdArc<AtomicBool>,
    }

    #[derive(Debug)]
    struct ManualTimer(StdArc<AtomicBool>);

    impl AsyncTimer for ManualTimer {
        fn reset(self: Pin<&mut Self>, _: Instant) {}

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.swap(false, Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Runtime for Manual {
        fn spawn(&self, _: BoxFuture<()>) {
            unreachable!()
        }

        fn spawn_isolated(&self, _: BoxFuture<()>) {
            unreachable!()
        }

        fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send>) {
            unreachable!()
        }

        fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
            self.pauses.lock().unwrap().push(deadline - self.base);
            Box::pin(ManualTimer(self.fired.clone()))
        }

        fn connect(&self, _: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
            unreachable!()
        }

        fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
            unreachable!()
        }

        fn now(&self) -> Instant {
            self.base
        }
    }

    /// A listener failing as scripted, then with `EMFILE` for ever.
    struct Failing {
        script: Mutex<VecDeque<io::ErrorKind>>,
        calls: StdArc<AtomicUsize>,
    }

    impl AsyncListener for Failing {
        fn poll_accept(
            &self,
            _: &mut Context<'_>,
        ) -> Poll<io::Result<(Box<dyn AsyncStream>, SocketAddr)>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let error = match self.script.lock().unwrap().pop_front() {
                Some(kind) => io::Error::from(kind),
                None => io::Error::from_raw_os_error(24), // EMFILE
            };
            Poll::Ready(Err(error))
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            unreachable!()
        }
    }

    struct Nobody;

    impl RpcHandler for Nobody {
        fn receive(&self, _: &TransportClient, _: Bytes, _: RpcResponder) {}
    }

    #[test]
    fn failed_accepts_pause_the_loop_doubling_to_a_second_and_per_connection_ones_do_not() {
        let fired = StdArc::new(AtomicBool::new(false));
        let rt = StdArc::new(Manual {
            base: Instant::now(),
            pauses: Mutex::new(Vec::new()),
            fired: fired.clone(),
        });
        let calls = StdArc::new(AtomicUsize::new(0));
        let listener = Failing {
            script: Mutex::new(
                [
                    io::ErrorKind::ConnectionReset,
                    io::ErrorKind::ConnectionAborted,
                ]
                .into(),
            ),
            calls: calls.clone(),
        };
        let counters = StdArc::new(Counters::default());
        let server = Arc::new(ServerInner {
            local_addr: "127.0.0.1:1".parse().unwrap(),
            closed: AtomicBool::new(false),
            accept_waker: Mutex::new(None),
            handler: StdArc::new(Nobody),
            open: StdArc::new(Registry::new(u64::MAX)),
            counters: counters.clone(),
        });
        let mut accept = Accept {
            rt: rt.clone(),
            listener: Box::new(listener),
            server: server.clone(),
            config: TransportConfig::default(),
            pause: None,
            backoff: BACKOFF_MIN,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut poll = |accept: &mut Accept| Pin::new(accept).poll(&mut cx);

        // Two per-connection failures are retried at once; `EMFILE` pauses: one poll, three
        // accepts, then pending on the timer rather than spinning.
        assert!(poll(&mut accept).is_pending());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Pending again while the timer has not fired: no accept tried.
        assert!(poll(&mut accept).is_pending());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        for _ in 0..12 {
            fired.store(true, Ordering::SeqCst);
            assert!(poll(&mut accept).is_pending());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 15, "one accept per pause");
        let ms = Duration::from_millis;
        assert_eq!(
            *rt.pauses.lock().unwrap(),
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000, 1000].map(ms)
        );
        assert_eq!(counters.accept_errors.load(Ordering::Relaxed), 15);

        // Closing ends the loop, even mid-pause.
        TransportServer { inner: server }.close();
        assert!(poll(&mut accept).is_ready());
    }
}
