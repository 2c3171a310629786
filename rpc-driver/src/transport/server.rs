//! Accepting connections: Spark's `TransportServer`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
// Handles on trait objects (runtime, handler) are std `Arc`s even under loom: loom's `Arc`
// cannot coerce to `dyn`, and they are not state the loom models need to see.
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Waker};

use tracing::{debug, warn, Instrument};

use super::conn::Registry;
use super::{ConnectionAddrs, RpcHandler, TransportClient, TransportConfig};
use crate::runtime::{AsyncListener, Runtime};
use crate::sync::{lock, Arc, Mutex};

/// Accepts connections and hands what arrives on them to an [`RpcHandler`].
///
/// Dropping the last handle does not stop it; [`close`](TransportServer::close) does.
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
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = rt.listen(std_listener)?;
        let local_addr = listener.local_addr()?;
        let inner = Arc::new(ServerInner {
            local_addr,
            closed: AtomicBool::new(false),
            accept_waker: Mutex::new(None),
            handler,
            open: StdArc::new(Registry::new(config.max_partial_frame_bytes)),
        });
        let accept = Accept {
            rt: rt.clone(),
            listener,
            server: inner.clone(),
            config,
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

/// The accept loop.
struct Accept {
    rt: StdArc<dyn Runtime>,
    listener: Box<dyn AsyncListener>,
    server: Arc<ServerInner>,
    config: TransportConfig,
}

impl Future for Accept {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            *lock(&this.server.accept_waker) = Some(cx.waker().clone());
            if this.server.closed.load(Ordering::SeqCst) {
                debug!("transport server stopped accepting");
                return Poll::Ready(());
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, peer))) => {
                    let local = stream.local_addr().unwrap_or(this.server.local_addr);
                    TransportClient::open(
                        this.rt.clone(),
                        stream,
                        ConnectionAddrs { local, peer },
                        this.config.connection.clone(),
                        this.server.handler.clone(),
                        Some(this.server.open.clone()),
                    );
                }
                Poll::Ready(Err(error)) => {
                    // Per-connection failures (the peer reset before accept, descriptors
                    // exhausted): log and keep accepting.
                    warn!(%error, "accept failed");
                }
            }
        }
    }
}
