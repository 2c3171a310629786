//! Starting an env and the endpoints it hosts: binding its address, registering endpoints
//! and running them.

use std::collections::HashMap;
use std::net::SocketAddr;

use rpc_proto::{RpcAddress, RpcEndpointAddress};
use rustc_hash::FxHashMap;
use tracing::{debug, info};

use super::cancel::CancelRegistry;
use super::config::RpcEnvConfig;
use super::endpoint::{ConcurrentRpcEndpoint, EndpointContext, EndpointKind, RpcEndpoint};
use super::error::SetupError;
use super::file_server::{BulkHandler, FileServer};
use super::handler::EnvHandler;
use super::hub::EnvInner;
use super::lifecycle::{Latch, StopFlag};
use super::lookup::VERIFIER_NAME;
use super::mailbox::Mailbox;
use super::message::endpoint_identity;
use super::reference::RpcEndpointRef;
use super::rpc_env::RpcEnv;
use super::runner::{self, RunnerEnv};
use super::stats::{Counters, Tally};
use crate::runtime::Runtime;
use crate::sync::atomic::{AtomicU64, AtomicUsize};
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{RpcHandler, TransportClientFactory, TransportConfig, TransportServer};

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

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
    pub fn create(rt: Arc<dyn Runtime>, config: RpcEnvConfig) -> Result<Self, SetupError> {
        let mut bind_error = None;
        let file_server = FileServer::new();
        let inner =
            Arc::new_cyclic(|me: &Weak<EnvInner>| {
                let handler: Arc<dyn RpcHandler> = Arc::new(EnvHandler {
                    env: me.clone(),
                    files: file_server.clone(),
                });
                let factory = TransportClientFactory::new(
                    rt.clone(),
                    handler.clone(),
                    config.transport().clone(),
                );
                let bulk_factory = TransportClientFactory::new(
                    rt.clone(),
                    Arc::new(BulkHandler),
                    config.transport().clone(),
                );
                let mut server = None;
                let mut address = None;
                if let Some((host, port)) = config.bind() {
                    match bind(
                        &rt,
                        host,
                        port,
                        config.port_retries(),
                        handler,
                        config.transport(),
                    ) {
                        Ok(s) => {
                            let bound = s.local_addr();
                            address =
                                Some(config.advertise().cloned().unwrap_or_else(|| {
                                    RpcAddress::new(host.to_owned(), bound.port())
                                }));
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
                    pending_asks: Arc::new(AtomicUsize::new(0)),
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
        info!(name = %config.name(), address = ?inner.address, "rpc env started");
        let env = Self { inner };
        env.setup_endpoint(VERIFIER_NAME, VerifierEndpoint)?;
        Ok(env)
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
        if capacity == Some(0) {
            return Err(rpc_proto::ConfigError::ZeroLimit("inbox capacity").into());
        }
        let capacity = capacity.unwrap_or(self.inner.config.inbox_capacity());
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
