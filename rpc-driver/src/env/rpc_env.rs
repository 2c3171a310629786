//! The env's handle: creating an env, hosting endpoints, reaching other envs' endpoints,
//! shutting down.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

use rpc_proto::{RpcAddress, RpcEndpointAddress};
use rustc_hash::FxHashMap;
use serde::Serialize;
use tracing::{debug, info};

use super::cancel::CancelRegistry;
use super::config::RpcEnvConfig;
use super::endpoint::{ConcurrentRpcEndpoint, EndpointContext, EndpointKind, RpcEndpoint};
use super::error::{RpcError, SetupError};
use super::file_server::{self, BulkHandler, FileDownload, FileServer, FileServerError};
use super::handler::EnvHandler;
use super::hub::EnvInner;
use super::lifecycle::{Latch, StopFlag};
use super::lookup::{Verified, VERIFIER_NAME};
use super::mailbox::Mailbox;
use super::message::{endpoint_identity, RpcMessage};
use super::reference::RpcEndpointRef;
use super::runner::{self, RunnerEnv};
use super::stats::{Counters, EnvStats, Tally};
use crate::runtime::Runtime;
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{
    RpcHandler, ServerStats, TransportClientFactory, TransportConfig, TransportServer,
};

/// Hosts named endpoints and reaches other envs' endpoints: Spark's `RpcEnv`. Cheap to clone.
///
/// In server mode it listens for connections; in client mode it only opens them, and its
/// endpoints are reached over the connections it opened.
#[derive(Clone)]
pub struct RpcEnv {
    inner: Arc<EnvInner>,
}

impl RpcEnv {
    /// Starts an env on `rt`.
    ///
    /// In server mode, binds the configured address; a port in use is
    /// [`SetupError::Bind`], unless [`RpcEnvConfig::port_retries`] allows trying the next ones.
    ///
    /// An IP address to bind (`0.0.0.0`, `127.0.0.1`, `::`) is used as it is. A host name is
    /// resolved with the system resolver here, on the calling thread, because `create` is
    /// synchronous: it may block for as long as the resolver takes. Bind to an IP address, or
    /// call `create` where blocking is allowed (before entering the runtime, or from its
    /// blocking pool), if the name may resolve slowly. Everything the env resolves later
    /// (the hosts of peers it connects to) is resolved on the runtime's blocking pool.
    pub fn create(rt: Arc<dyn Runtime>, config: RpcEnvConfig) -> Result<RpcEnv, SetupError> {
        let mut bind_error = None;
        let file_server = FileServer::new();
        let inner = Arc::new_cyclic(|me: &Weak<EnvInner>| {
            let handler: Arc<dyn RpcHandler> = Arc::new(EnvHandler {
                env: me.clone(),
                files: file_server.clone(),
            });
            let factory =
                TransportClientFactory::new(rt.clone(), handler.clone(), config.transport.clone());
            let bulk_factory = TransportClientFactory::new(
                rt.clone(),
                Arc::new(BulkHandler),
                config.transport.clone(),
            );
            let mut server = None;
            let mut address = None;
            if let Some((host, port)) = &config.bind {
                match bind(
                    &rt,
                    host,
                    *port,
                    config.port_retries,
                    handler,
                    &config.transport,
                ) {
                    Ok(s) => {
                        let bound = s.local_addr();
                        address = Some(
                            config
                                .advertise
                                .clone()
                                .unwrap_or_else(|| RpcAddress::new(host.clone(), bound.port())),
                        );
                        server = Some(s);
                    }
                    Err(e) => bind_error = Some(e),
                }
            }
            file_server.set_address(address.clone());
            EnvInner {
                me: me.clone(),
                rt: rt.clone(),
                address,
                server: Mutex::new(server),
                factory,
                bulk_factory,
                file_server: file_server.clone(),
                endpoints: Mutex::new(FxHashMap::default()),
                live: Mutex::new(0),
                endpoints_done: Latch::default(),
                terminated: Latch::default(),
                outboxes: Mutex::new(HashMap::new()),
                stopped: Arc::new(StopFlag::default()),
                remote_envs: Mutex::new(FxHashMap::default()),
                claims_ignored: Tally::default(),
                pending_asks: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                peers: Mutex::new(HashMap::new()),
                cancels: Arc::new(CancelRegistry::default()),
                next_seed: AtomicU64::new(config.outbox_seed()),
                stats: Counters::default(),
                config: config.clone(),
            }
        });
        if let Some(error) = bind_error {
            return Err(error);
        }
        info!(name = %config.name, address = ?inner.address, "rpc env started");
        let env = RpcEnv { inner };
        env.setup_endpoint(VERIFIER_NAME, VerifierEndpoint)?;
        Ok(env)
    }

    /// The address other envs reach this one at (the advertised one if set); `None` in
    /// client mode.
    pub fn address(&self) -> Option<&RpcAddress> {
        self.inner.address.as_ref()
    }

    /// The runtime the env runs on.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.rt
    }

    /// The env's configuration.
    pub fn config(&self) -> &RpcEnvConfig {
        &self.inner.config
    }

    /// The files, jars and directories this env serves to other envs (Spark's
    /// `RpcEnv.fileServer`). In client mode, adding to it fails with
    /// [`FileServerError::NoAddress`].
    pub fn file_server(&self) -> &FileServer {
        &self.inner.file_server
    }

    /// Downloads a file another env serves, by the URI its [`FileServer`] returned (Spark's
    /// `RpcEnv.openChannel`). Resolves once the serving env has answered: a refusal (not
    /// found, a path escaping its directory) is [`FileServerError::Download`] carrying the
    /// serving env's message.
    ///
    /// The host is resolved with the system resolver, as for control connections. The
    /// download has no timeout of its own: drop the [`FileDownload`] to abandon it.
    ///
    /// The download travels on a connection of its own (the env keeps a second client
    /// factory for them), so control messages to the same env never wait behind it.
    pub async fn open_channel(&self, uri: &str) -> Result<FileDownload, FileServerError> {
        file_server::open_channel(&self.inner.bulk_factory, uri).await
    }

    fn register(
        &self,
        name: &str,
        identity: String,
        concurrent: bool,
        capacity: Option<usize>,
    ) -> Result<(Arc<Mailbox>, RpcEndpointAddress), SetupError> {
        let address = match &self.inner.address {
            Some(a) => RpcEndpointAddress::new(a.clone(), name),
            None => RpcEndpointAddress::client(name),
        };
        let capacity = capacity.unwrap_or(self.inner.config.inbox_capacity);
        let mailbox = Arc::new(Mailbox::new(name, identity, concurrent, capacity));
        {
            let mut endpoints = lock(&self.inner.endpoints);
            // Checked under the lock `shutdown` takes after setting the flag: an endpoint is
            // either refused or among those `shutdown` stops.
            if self.inner.is_stopped() {
                return Err(SetupError::EnvStopped);
            }
            if endpoints.contains_key(name) {
                return Err(SetupError::DuplicateName(name.to_owned()));
            }
            endpoints.insert(name.to_owned(), mailbox.clone());
            *lock(&self.inner.live) += 1;
        }
        debug!(endpoint = %address, "endpoint registered");
        Ok((mailbox, address))
    }

    /// What the task running an endpoint needs of this env.
    fn runner_env(&self) -> RunnerEnv {
        RunnerEnv {
            binding: self.inner.weak(),
            stopped: Arc::downgrade(&self.inner.stopped),
        }
    }

    /// What the task running an endpoint calls once the endpoint has stopped.
    fn finished(&self) -> impl FnOnce(&Mailbox) + Send + 'static {
        let env = self.inner.weak();
        move |mailbox| {
            if let Some(env) = env.upgrade() {
                env.endpoint_finished(mailbox);
            }
        }
    }

    /// Registers a serial endpoint under `name` and starts it: `on_start` runs before any
    /// message. A taken name, or a stopped env, is an error.
    pub fn setup_endpoint<E: RpcEndpoint>(
        &self,
        name: &str,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message, E::Reply>, SetupError> {
        let identity = endpoint_identity::<E::Message, E::Reply>();
        let (mailbox, address) = self.register(name, identity, false, endpoint.inbox_capacity())?;
        let self_ref = RpcEndpointRef::new(address, self.inner.weak(), None);
        let ctx = EndpointContext {
            self_ref: self_ref.clone(),
            env: self.clone(),
        };
        let kind = endpoint.kind();
        let task = runner::run_serial(endpoint, mailbox, ctx, self.runner_env(), self.finished());
        match kind {
            EndpointKind::Isolated => self.inner.rt.spawn_isolated(Box::pin(task)),
            _ => self.inner.rt.spawn(Box::pin(task)),
        }
        Ok(self_ref)
    }

    /// Registers a concurrent endpoint under `name` and starts it.
    pub fn setup_concurrent_endpoint<E: ConcurrentRpcEndpoint>(
        &self,
        name: &str,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message, E::Reply>, SetupError> {
        let identity = endpoint_identity::<E::Message, E::Reply>();
        let (mailbox, address) = self.register(name, identity, true, endpoint.inbox_capacity())?;
        let self_ref = RpcEndpointRef::new(address, self.inner.weak(), None);
        let ctx = Arc::new(EndpointContext {
            self_ref: self_ref.clone(),
            env: self.clone(),
        });
        let rt = self.inner.rt.clone();
        let task = runner::run_concurrent(
            Arc::new(endpoint),
            mailbox,
            ctx,
            self.runner_env(),
            self.finished(),
            move |f| rt.spawn(f),
        );
        self.inner.rt.spawn(Box::pin(task));
        Ok(self_ref)
    }

    /// A ref to endpoint `name` of the env at `address`, after checking with that env (within
    /// [`RpcEnvConfig::lookup_timeout`]) that the endpoint exists and takes `M` and
    /// answers `R`.
    pub async fn setup_endpoint_ref<M, R>(
        &self,
        address: RpcAddress,
        name: &str,
    ) -> Result<RpcEndpointRef<M, R>, SetupError>
    where
        M: RpcMessage + Serialize + Send + 'static,
        R: RpcMessage + serde::de::DeserializeOwned + Send + 'static,
    {
        let target = RpcEndpointAddress::new(address, name);
        let endpoint_ref = RpcEndpointRef::<M, R>::new(target.clone(), self.inner.weak(), None);
        let expected = endpoint_identity::<M, R>();
        let verified = if Some(&target.address) == Some(&self.inner.address) {
            self.inner.verify(name, &expected, true)
        } else {
            endpoint_ref
                .verify(self.inner.config.lookup_timeout)
                .await?
        };
        match verified {
            Verified::Found => Ok(endpoint_ref),
            Verified::NotFound => Err(RpcError::EndpointNotFound(target.to_string()).into()),
            Verified::TypeMismatch(found) => Err(RpcError::TypeMismatch {
                endpoint: target.to_string(),
                expected,
                // Empty from another env, which does not say (older peers did).
                found: (!found.is_empty()).then_some(found),
            }
            .into()),
        }
    }

    /// A ref to `address` without asking its env first: no round trip, and no check that the
    /// endpoint exists or takes `M` (a mismatch shows as [`RpcError::TypeMismatch`] on the
    /// first message). For endpoints that may not be up yet; prefer
    /// [`setup_endpoint_ref`](RpcEnv::setup_endpoint_ref).
    pub fn endpoint_ref<M: RpcMessage, R: RpcMessage>(
        &self,
        address: RpcEndpointAddress,
    ) -> RpcEndpointRef<M, R> {
        RpcEndpointRef::new(address, self.inner.weak(), None)
    }

    /// [`setup_endpoint_ref`](RpcEnv::setup_endpoint_ref) by URI: `rpc://name@host:port`.
    pub async fn setup_endpoint_ref_by_uri<M, R>(
        &self,
        uri: &str,
    ) -> Result<RpcEndpointRef<M, R>, SetupError>
    where
        M: RpcMessage + Serialize + Send + 'static,
        R: RpcMessage + serde::de::DeserializeOwned + Send + 'static,
    {
        let target: RpcEndpointAddress = uri.parse()?;
        let address = target
            .address
            .ok_or_else(|| SetupError::Resolve(uri.to_owned()))?;
        self.setup_endpoint_ref(address, &target.name).await
    }

    /// Stops an endpoint of this env: messages already queued are still handled, then
    /// `on_stop` runs; later messages are refused. Idempotent.
    pub fn stop<M, R>(&self, endpoint: &RpcEndpointRef<M, R>) {
        let mailbox = {
            let mut endpoints = lock(&self.inner.endpoints);
            match endpoints.get(endpoint.name()) {
                Some(m) if endpoint.address.address == self.inner.address => {
                    let m = m.clone();
                    endpoints.remove(endpoint.name());
                    Some(m)
                }
                _ => None,
            }
        };
        if let Some(mailbox) = mailbox {
            mailbox.stop();
        }
    }

    /// Shuts the env down: stops every endpoint, then (once they have all run `on_stop`)
    /// closes its connections and listener. Pending asks fail with [`RpcError::EnvStopped`].
    /// Idempotent; [`await_termination`](RpcEnv::await_termination) waits for the end.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        if inner.stopped.stop() {
            return;
        }
        info!(name = %inner.config.name, "rpc env shutting down");
        let mailboxes: Vec<_> = lock(&inner.endpoints).values().cloned().collect();
        for mailbox in &mailboxes {
            mailbox.stop();
        }
        if *lock(&inner.live) == 0 {
            inner.endpoints_done.open();
        }
        let me = inner.clone();
        inner.rt.spawn(Box::pin(async move {
            me.endpoints_done.wait().await;
            let outboxes: Vec<_> = lock(&me.outboxes).drain().map(|(_, o)| o).collect();
            for outbox in outboxes {
                outbox.close();
            }
            if let Some(server) = lock(&me.server).take() {
                server.close();
            }
            me.factory.close();
            me.bulk_factory.close();
            me.terminated.open();
            info!(name = %me.config.name, "rpc env terminated");
        }));
    }

    /// Waits until the env has shut down.
    pub async fn await_termination(&self) {
        self.inner.terminated.wait().await
    }

    /// Whether [`shutdown`](RpcEnv::shutdown) was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    /// The env's counters.
    pub fn stats(&self) -> EnvStats {
        self.inner.stats.snapshot(
            lock(&self.inner.outboxes)
                .values()
                .map(|o| o.queued())
                .sum(),
            self.inner.pending_asks.load(Ordering::Relaxed) as u64,
            lock(&self.inner.endpoints)
                .values()
                .map(|m| m.messages() as u64)
                .sum(),
        )
    }

    /// The counters of the env's server (connections accepted, refused, failed, ...); `None`
    /// for a client-mode env, or once the env is shut down.
    pub fn server_stats(&self) -> Option<ServerStats> {
        lock(&self.inner.server)
            .as_ref()
            .map(TransportServer::stats)
    }
}

impl fmt::Debug for RpcEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcEnv")
            .field("name", &self.inner.config.name)
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

fn bind(
    rt: &Arc<dyn Runtime>,
    host: &str,
    port: u16,
    retries: u16,
    handler: Arc<dyn RpcHandler>,
    transport: &TransportConfig,
) -> Result<TransportServer, SetupError> {
    use std::net::ToSocketAddrs;
    // An IP literal never touches the resolver; a host name is resolved once, here, on the
    // calling thread (see `RpcEnv::create`).
    let ip = match crate::runtime::ip_literal(host, port) {
        Some(addr) => addr.ip(),
        None => (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| SetupError::Resolve(format!("{host}:{port}")))?
            .ip(),
    };
    let tries = if port == 0 { 0 } else { retries };
    let mut last = None;
    for offset in 0..=tries {
        let Some(p) = port.checked_add(offset) else {
            break;
        };
        let addr = SocketAddr::new(ip, p);
        match TransportServer::bind(rt.clone(), addr, handler.clone(), transport.clone()) {
            Ok(server) => return Ok(server),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && offset < tries => {
                debug!(port = p, "port in use, trying the next one");
                last = Some(e);
            }
            Err(e) => {
                return Err(SetupError::Bind {
                    addr: addr.to_string(),
                    source: e,
                })
            }
        }
    }
    Err(SetupError::Bind {
        addr: format!("{host}:{port}"),
        source: last.unwrap_or_else(|| std::io::Error::other("no port to try")),
    })
}

/// The built-in endpoint that answers lookups locally (remote lookups are answered by the
/// env's handler, which knows the caller's expected types).
struct VerifierEndpoint;

impl RpcEndpoint for VerifierEndpoint {
    type Message = ();
    type Reply = ();
}
