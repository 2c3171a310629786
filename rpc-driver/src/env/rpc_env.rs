//! The env's handle: creating an env, hosting endpoints, reaching other envs' endpoints,
//! shutting down.

use crate::sync::atomic::Ordering;
use std::fmt;

use rpc_proto::{RpcAddress, RpcEndpointAddress};
use serde::Serialize;
use tracing::info;

use super::config::RpcEnvConfig;
use super::error::{RpcError, SetupError};
use super::file_server::{self, FileDownload, FileServer, FileServerError};
use super::hub::EnvInner;
use super::lookup::Verified;
use super::message::{endpoint_identity, RpcMessage};
use super::reference::RpcEndpointRef;
use super::stats::EnvStats;
use crate::runtime::Runtime;
use crate::sync::{lock, Arc};
use crate::transport::{ServerStats, TransportServer};

/// Hosts named endpoints and reaches other envs' endpoints: Spark's `RpcEnv`. Cheap to clone.
///
/// In server mode it listens for connections; in client mode it only opens them, and its
/// endpoints are reached over the connections it opened.
#[derive(Clone)]
pub struct RpcEnv {
    pub(super) inner: Arc<EnvInner>,
}

impl RpcEnv {
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
                .verify(self.inner.config.lookup_timeout())
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
        info!(name = %inner.config.name(), "rpc env shutting down");
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
            info!(name = %me.config.name(), "rpc env terminated");
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
            .field("name", &self.inner.config.name())
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}
