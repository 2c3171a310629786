//! Opening and pooling connections: Spark's `TransportClientFactory`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::future;
use tracing::{debug, info};

use super::addrs::ConnectionAddrs;
use super::client::TransportClient;
use super::config::TransportConfig;
use super::driver;
use super::handler::RpcHandler;
use crate::runtime::{sleep_for, Runtime};
use crate::security::{secure_client, SecurityError};
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{lock, Arc, Mutex};

// Handles on trait objects (runtime, handler) and shared messages are std `Arc`s even under
// loom: loom's `Arc` cannot coerce to `dyn` or hold `str`, and they are not state to model.
use crate::sync::unmodeled::Arc as StdArc;

/// Opening a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connect itself failed.
    #[error("failed to connect to {addr}: {message}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The kind of I/O error.
        kind: std::io::ErrorKind,
        /// The error's message.
        message: StdArc<str>,
    },
    /// The connect took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {after:?}")]
    TimedOut {
        /// The address.
        addr: SocketAddr,
        /// The connect timeout.
        after: Duration,
    },
    /// The factory was closed.
    #[error("the client factory is closed")]
    Closed,
    /// The connection was made, but its handshake failed: a wrong secret, a peer that
    /// wants another mechanism, a handshake that timed out.
    #[error("{0}")]
    Security(#[from] SecurityError),
}

/// Opens connections to peers and pools them: one (or
/// [`connections_per_peer`](TransportConfig::connections_per_peer)) per address, shared by
/// every caller. Cheap to clone.
///
/// The connections it opens are full duplex: requests the peer sends on them go to the
/// factory's handler. A pure client, which serves nothing, gives it a [`NoopRpcHandler`]:
///
/// ```no_run
/// # async fn demo(rt: std::sync::Arc<dyn rpc_driver::Runtime>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
///
/// use rpc_driver::transport::{NoopRpcHandler, TransportClientFactory, TransportConfig};
///
/// let factory =
///     TransportClientFactory::new(rt, Arc::new(NoopRpcHandler), TransportConfig::default());
/// let client = factory.create_client("127.0.0.1:7077".parse()?).await?;
/// let reply = client.send_rpc("ping".into(), None).await?;
/// # let _ = reply;
/// # Ok(()) }
/// ```
///
/// [`NoopRpcHandler`]: super::handler::NoopRpcHandler
#[derive(Clone)]
pub struct TransportClientFactory {
    inner: Arc<FactoryInner>,
}

struct FactoryInner {
    rt: StdArc<dyn Runtime>,
    handler: StdArc<dyn RpcHandler>,
    config: TransportConfig,
    pools: Mutex<HashMap<SocketAddr, Pool>>,
    closed: AtomicBool,
    next: AtomicUsize,
}

#[derive(Default)]
struct Pool {
    clients: Vec<Option<TransportClient>>,
    failed: Option<(Instant, ConnectError)>,
}

impl TransportClientFactory {
    /// A factory whose connections deliver the peers' requests to `handler`.
    pub fn new(
        rt: StdArc<dyn Runtime>,
        handler: StdArc<dyn RpcHandler>,
        config: TransportConfig,
    ) -> Self {
        Self {
            inner: Arc::new(FactoryInner {
                rt,
                handler,
                config,
                pools: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The runtime its connections run on.
    #[cfg_attr(loom, allow(dead_code))] // used by `env`, which loom builds leave out
    pub(crate) fn runtime(&self) -> &StdArc<dyn Runtime> {
        &self.inner.rt
    }

    /// A connection to `addr`: a pooled one if it is still open, else a new one.
    pub async fn create_client(&self, addr: SocketAddr) -> Result<TransportClient, ConnectError> {
        let inner = &self.inner;
        let per_peer = inner.config.connections_per_peer();
        let slot = inner.next.fetch_add(1, Ordering::Relaxed) % per_peer;
        {
            let mut pools = lock(&inner.pools);
            if inner.closed.load(Ordering::SeqCst) {
                return Err(ConnectError::Closed);
            }
            let pool = pools.entry(addr).or_default();
            pool.clients.resize(per_peer, None);
            if let Some(client) = &pool.clients[slot] {
                if client.is_active() {
                    return Ok(client.clone());
                }
            }
            if let Some((at, error)) = &pool.failed {
                if inner.rt.now() < *at + inner.config.fast_fail_window() {
                    return Err(error.clone());
                }
            }
        }
        let client = match self.connect(addr).await {
            Ok(client) => client,
            Err(error) => {
                info!(%addr, %error, "connect failed");
                if !inner.config.fast_fail_window().is_zero() {
                    let now = inner.rt.now();
                    lock(&inner.pools).entry(addr).or_default().failed = Some((now, error.clone()));
                }
                return Err(error);
            }
        };
        let mut pools = lock(&inner.pools);
        let pool = pools.entry(addr).or_default();
        pool.failed = None;
        pool.clients.resize(per_peer, None);
        if let Some(existing) = &pool.clients[slot] {
            if existing.is_active() {
                // Another caller connected first; use theirs.
                let existing = existing.clone();
                drop(pools);
                client.close();
                return Ok(existing);
            }
        }
        pool.clients[slot] = Some(client.clone());
        if inner.closed.load(Ordering::SeqCst) {
            client.close();
            return Err(ConnectError::Closed);
        }
        Ok(client)
    }

    /// A new connection to `addr` that is not pooled (Spark's `createUnmanagedClient`):
    /// never taken from the pool nor put in it, so no other caller shares it and
    /// [`close`](Self::close) does not reach it. It is opened as pooled ones are (the connect
    /// timeout, the factory's [`Security`](crate::security::Security) and handler), but
    /// without the fast-fail window: an earlier failure to `addr` is not repeated.
    ///
    /// The connection closes when the returned [`UnmanagedClient`] is dropped or
    /// [closed](TransportClient::close), whatever clones of its [`TransportClient`] remain.
    /// Fails with [`ConnectError::Closed`] once the factory is closed.
    pub async fn create_unmanaged_client(
        &self,
        addr: SocketAddr,
    ) -> Result<UnmanagedClient, ConnectError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(ConnectError::Closed);
        }
        let client = self.connect(addr).await.inspect_err(|error| {
            info!(%addr, %error, "connect failed");
        })?;
        Ok(UnmanagedClient { client })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TransportClient, ConnectError> {
        let inner = &self.inner;
        let after = inner.config.connect_timeout();
        let connect = async {
            inner.rt.connect(addr).await.map_err(|e| ConnectError::Io {
                addr,
                kind: e.kind(),
                message: e.to_string().into(),
            })
        };
        let timeout = async {
            sleep_for(&*inner.rt, after).await;
            Err(ConnectError::TimedOut { addr, after })
        };
        let stream = future::or(connect, timeout).await?;
        let local = stream.local_addr().map_err(|e| ConnectError::Io {
            addr,
            kind: e.kind(),
            message: e.to_string().into(),
        })?;
        debug!(%addr, %local, "connected");
        // Boxed: the handshake's state (a TLS connection among it) is large, and would
        // otherwise sit inline in every future that awaits a connection.
        let secured = Box::pin(secure_client(
            &*inner.rt,
            stream,
            inner.config.security(),
            addr,
        ))
        .await?;
        Ok(driver::open(
            inner.rt.clone(),
            secured.stream,
            ConnectionAddrs { local, peer: addr },
            inner.config.connection().clone(),
            inner.handler.clone(),
            None,
            secured.client_id,
        ))
    }

    /// Closes every pooled connection and refuses new ones. Idempotent.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let clients: Vec<_> = lock(&self.inner.pools)
            .drain()
            .flat_map(|(_, pool)| pool.clients.into_iter().flatten())
            .collect();
        for client in clients {
            client.close();
        }
    }
}

impl fmt::Debug for TransportClientFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClientFactory")
            .finish_non_exhaustive()
    }
}

/// A connection of its own from [`TransportClientFactory::create_unmanaged_client`], outside
/// the factory's pool: closed when this is dropped. Derefs to its [`TransportClient`].
#[must_use = "the connection closes when this is dropped"]
#[derive(Debug)]
pub struct UnmanagedClient {
    client: TransportClient,
}

impl UnmanagedClient {
    /// The handle on the connection. A clone of it does not keep the connection open: the
    /// connection closes when this `UnmanagedClient` is dropped.
    pub fn client(&self) -> &TransportClient {
        &self.client
    }
}

impl std::ops::Deref for UnmanagedClient {
    type Target = TransportClient;

    fn deref(&self) -> &TransportClient {
        &self.client
    }
}

impl Drop for UnmanagedClient {
    fn drop(&mut self) {
        self.client.close();
    }
}
