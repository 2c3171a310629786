//! The control plane: Spark's `RpcEnv` model of named endpoints, on the transport layer.
//!
//! An [`RpcEnv`] hosts named endpoints ([`RpcEndpoint`], [`ConcurrentRpcEndpoint`]); an
//! [`RpcEndpointRef`] reaches one, locally or in another env, with fire-and-forget
//! [`send`](RpcEndpointRef::send) and [`ask`](RpcEndpointRef::ask). Asks are answered
//! through an [`RpcCallContext`].
//!
//! # Message identity
//!
//! Messages and replies implement [`RpcMessage`](trait@RpcMessage) (derive it): the name peers
//! know a type by, chosen in the code and so stable across builds, compilers and module moves.
//! Lookups and every remote message are checked against the endpoint's message and reply
//! names (`"Hello -> String"`); a difference is [`RpcError::TypeMismatch`]. See the trait for
//! renaming a type without breaking peers.
//!
//! # Delivery
//!
//! At most once. Messages to one remote env go through one outbox and one connection, in the
//! order they were sent; while the connection is being opened they are queued (bounded by
//! [`RpcEnvConfig::outbox`]). A failed connect is retried with exponential backoff and
//! jitter; when the attempts run out, queued asks fail with [`RpcError::Unreachable`] and
//! queued sends are dropped (and counted in [`EnvStats::failed`]). Nothing already written
//! is retried: an ask whose connection drops fails with [`RpcError::Disconnected`] at once.
//! Retrying is the caller's choice ([`RpcEndpointRef::ask_with_retry`], for idempotent
//! messages).
//!
//! # Network events
//!
//! Endpoints hear of the processes this env is connected to through
//! [`on_connected`](RpcEndpoint::on_connected), [`on_disconnected`](RpcEndpoint::on_disconnected)
//! and [`on_network_error`](RpcEndpoint::on_network_error), as in Spark
//! (`RemoteProcessConnected`, `RemoteProcessDisconnected`, `RemoteProcessConnectionError`).
//! Each connection stands for up to two addresses:
//!
//! - the address of its socket's far end: for a connection this env opened, the address it
//!   dialled (the peer env's own address); for one it accepted, the peer's ephemeral port;
//! - the address the peer env announces as the sender of its messages (a server-mode env
//!   names its own address), once its first message arrives, when that differs.
//!
//! An address is reported connected when the first connection standing for it opens (or
//! first announces it), and disconnected when the last such connection closes. So for every
//! address, connects and disconnects alternate, starting with a connect, even when one
//! process is reached over several connections: an endpoint can keep a set of live peers by
//! adding on connect and removing on disconnect. A connection that fails reports a network
//! error for its addresses first (whether or not other connections stand for them); a clean
//! close reports none. An env that is shutting down reports nothing for its own connections.
//!
//! # Limits
//!
//! Spark's inboxes are unbounded: an endpoint slower than its senders queues messages until
//! the process runs out of memory, and stays busy long after the senders left. Here each
//! endpoint's inbox holds at most [`RpcEnvConfig::inbox_capacity`] messages, queued or being
//! handled (per endpoint with [`RpcEndpoint::inbox_capacity`]). A message that finds it full
//! is refused, not queued:
//!
//! - an ask fails at once with [`RpcError::EndpointBusy`] (the asker, local or remote, can
//!   match it and try again later);
//! - a one-way message from another env is dropped, counted in [`EnvStats::dropped`] and
//!   logged (at a bounded rate: the 1st, 2nd, 4th, 8th… drop);
//! - a local [`send`](RpcEndpointRef::send) returns [`RpcError::EndpointBusy`].
//!
//! Network events are never refused: they take room in the inbox like messages, and are
//! bounded by the connections opened and closed. A message from another env of up to 64 KiB
//! is copied out of its connection's read buffer (up to 2 MiB) when queued, so the bound in
//! messages bounds memory too (a 1,000,000-message flood of a slow endpoint grows a server by
//! about 10 MiB with the default capacity, against about 180 MiB unbounded). Asks from other
//! envs are also bounded server-wide: at most [`RpcEnvConfig::max_pending_asks`] are being
//! handled at once (from their arrival until they are answered or their call context is
//! dropped, including asks whose contexts a handler keeps to answer later); beyond it, asks
//! fail with [`RpcError::EndpointBusy`]. Per-call bookkeeping is O(1): no work scans the
//! pending calls.
//!
//! # Identity
//!
//! A connection's peer env is the address it announces in its first message that names a
//! sender (as in Spark, without authentication that first claim is taken on trust). Later
//! messages on the connection cannot change it: a different claim is ignored (and logged at
//! debug level, at a bounded rate), network events are reported for the address bound to the
//! connection, and [`RpcCallContext::sender_address`] is that address too. Lookups from
//! other envs learn whether an endpoint exists and whether the types match, never which
//! types it takes.
//!
//! # Files
//!
//! Like Spark's `RpcEnvFileServer`, a server-mode env serves files, jars and directories to
//! other envs: [`RpcEnv::file_server`] registers them and returns their URIs
//! (`rpc://host:port/files/<name>`), and [`RpcEnv::open_channel`] downloads one as a
//! [`FileDownload`] (an `AsyncRead` with bounded memory). Downloads travel on connections of
//! their own, not on the one control messages use, so asks to a peer never wait behind a
//! large download from it. See [`FileServer`] for the rules (unique names, canonical paths,
//! no escaping a directory).

mod call;
mod endpoint;
mod error;
mod file_server;
mod mailbox;
pub(crate) mod message;
mod outbox;
mod reference;

pub use call::{Cancelled, RpcCallContext};
pub use endpoint::{
    BoxError, ConcurrentRpcEndpoint, EndpointContext, EndpointFailure, EndpointKind, RpcEndpoint,
};
pub use error::{RpcError, SetupError};
pub use file_server::{FileDownload, FileServer, FileServerError};
pub use message::RpcMessage;
pub use reference::{Ask, RpcEndpointRef};
/// Derives [`RpcMessage`](trait@RpcMessage): the name is the type's identifier, or the one set
/// with `#[rpc(name = "...")]`.
pub use rpc_derive::RpcMessage;

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::{
    encode_payload, ConnectionError, Envelope, EnvelopeKind, EnvelopeView, InboxError, Outbox,
    OutboxConfig, RequestId, RpcAddress, RpcEndpointAddress,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use self::call::CancelFlag;
use self::file_server::BulkHandler;
use self::mailbox::{Mailbox, Payload, Posted};
use self::message::endpoint_identity;
use self::outbox::OutboxCell;
use crate::log_limit::limited;
use crate::runtime::Runtime;
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{
    RpcHandler, RpcResponder, ServerStats, StreamManager, TransportClient, TransportClientFactory,
    TransportConfig, TransportServer,
};
use crate::wait_list::{WaitKey, WaitList};

/// Payloads from other envs up to this size are copied out of the read buffer before they
/// are queued (see [`EnvInner::deliver`]); a larger one keeps at most 32 times its size
/// alive.
const DETACH_MAX: usize = 64 * 1024;

/// The name of every env's built-in lookup endpoint (Spark's `RpcEndpointVerifier`).
pub const VERIFIER_NAME: &str = "endpoint-verifier";

/// Settings of an [`RpcEnv`].
#[derive(Debug, Clone)]
pub struct RpcEnvConfig {
    /// A name for logs.
    pub name: String,
    /// Where to listen: `None` for a client-mode env, which accepts no connections (its
    /// endpoints are reachable only over connections it opened).
    pub bind: Option<(String, u16)>,
    /// The address other envs are told to use, when it differs from the bound one (NAT,
    /// containers). Refs to this env's endpoints carry it.
    pub advertise: Option<RpcAddress>,
    /// When the port is taken, try the next ones, this many times (Spark's
    /// `spark.port.maxRetries`); 0 fails at once. Port 0 (any free port) never retries.
    pub port_retries: u16,
    /// The default timeout of [`RpcEndpointRef::ask`] (Spark's `spark.rpc.askTimeout`).
    pub ask_timeout: Duration,
    /// How long a lookup of a remote endpoint may take (Spark's `spark.rpc.lookupTimeout`).
    pub lookup_timeout: Duration,
    /// The transport layer's settings. The env's default differs from
    /// [`TransportConfig::default`] in one way: connections the env accepted stay open while
    /// idle ([`Config::close_idle_accepted`](rpc_proto::Config::close_idle_accepted) off), as
    /// in Spark's `NettyRpcEnv`, because a client-mode env's endpoints are reached only over
    /// the connection it opened. Keep that when replacing the transport settings, or
    /// client-mode peers are cut off after the idle timeout.
    pub transport: TransportConfig,
    /// Each remote env's outbox: queue bounds and connect retries.
    pub outbox: OutboxConfig,
    /// How many messages each endpoint's inbox holds, queued or being handled, before
    /// refusing more (see "Limits" in the [module docs](self)); an endpoint may set its own
    /// with [`RpcEndpoint::inbox_capacity`]. Zero is taken as one. Default 10,000 (Spark's
    /// inbox is unbounded).
    pub inbox_capacity: usize,
    /// How many asks from other envs the env handles at once, across its endpoints: from
    /// arrival until answered (or their call context is dropped). Beyond it, asks fail with
    /// [`RpcError::EndpointBusy`]. Default 65,536.
    pub max_pending_asks: usize,
}

impl RpcEnvConfig {
    /// A server-mode env listening on `host:port` (port 0 picks a free port).
    pub fn server(name: &str, host: &str, port: u16) -> Self {
        Self {
            bind: Some((host.to_owned(), port)),
            ..Self::client(name)
        }
    }

    /// A client-mode env: it accepts no connections.
    pub fn client(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            bind: None,
            advertise: None,
            port_retries: 0,
            ask_timeout: Duration::from_secs(120),
            lookup_timeout: Duration::from_secs(120),
            transport: env_transport(),
            outbox: OutboxConfig::default(),
            inbox_capacity: 10_000,
            max_pending_asks: 65_536,
        }
    }

    /// Sets [`inbox_capacity`](RpcEnvConfig::inbox_capacity).
    pub fn with_inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity;
        self
    }

    /// Sets [`max_pending_asks`](RpcEnvConfig::max_pending_asks).
    pub fn with_max_pending_asks(mut self, asks: usize) -> Self {
        self.max_pending_asks = asks;
        self
    }

    /// Sets [`advertise`](RpcEnvConfig::advertise).
    pub fn with_advertise(mut self, address: RpcAddress) -> Self {
        self.advertise = Some(address);
        self
    }

    /// Sets [`port_retries`](RpcEnvConfig::port_retries).
    pub fn with_port_retries(mut self, retries: u16) -> Self {
        self.port_retries = retries;
        self
    }

    /// Sets [`ask_timeout`](RpcEnvConfig::ask_timeout).
    pub fn with_ask_timeout(mut self, timeout: Duration) -> Self {
        self.ask_timeout = timeout;
        self
    }

    /// Sets [`lookup_timeout`](RpcEnvConfig::lookup_timeout).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Sets [`outbox`](RpcEnvConfig::outbox).
    pub fn with_outbox(mut self, outbox: OutboxConfig) -> Self {
        self.outbox = outbox;
        self
    }

    /// Sets [`transport`](RpcEnvConfig::transport).
    pub fn with_transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the security of every connection the env opens or accepts
    /// ([`TransportConfig::security`]): with a secret, a peer env must hold the same secret
    /// to reach any endpoint, and (with AES) everything between them is encrypted.
    ///
    /// ```
    /// # use rpc_driver::env::RpcEnvConfig;
    /// use rpc_driver::security::Security;
    /// let config = RpcEnvConfig::server("driver", "127.0.0.1", 0)
    ///     .with_security(Security::secret("s3cret"));
    /// assert!(config.transport.security.is_enabled());
    /// ```
    pub fn with_security(mut self, security: crate::security::Security) -> Self {
        self.transport.security = security;
        self
    }
}

/// Counters of an env, from [`RpcEnv::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvStats {
    /// Messages sent with `send`.
    pub sent: u64,
    /// Asks started.
    pub asked: u64,
    /// Asks not yet resolved.
    pub in_flight: u64,
    /// Messages queued in outboxes, waiting for a connection to their env.
    pub queued: u64,
    /// Asks that failed, and sends known to be lost.
    pub failed: u64,
    /// Messages received from other envs.
    pub received: u64,
    /// Connect attempts and asks retried.
    pub retried: u64,
    /// One-way messages from other envs dropped because their endpoint's inbox was full.
    pub dropped: u64,
    /// Asks from other envs refused with [`RpcError::EndpointBusy`] (a full inbox, or
    /// [`RpcEnvConfig::max_pending_asks`] reached).
    pub refused: u64,
    /// Asks from other envs being handled now (bounded by
    /// [`RpcEnvConfig::max_pending_asks`]).
    pub pending_asks: u64,
    /// Messages in this env's endpoints' inboxes, queued or being handled (each inbox is
    /// bounded by its capacity).
    pub inboxed: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    asked: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
    retried: AtomicU64,
    dropped: Tally,
    refused: Tally,
}

/// A counter whose events are logged at a bounded rate: [`hit`](Tally::hit) says to log the
/// 1st, 2nd, 4th, 8th… event, so a flood of `n` events logs about `log2(n)` lines. (Per-site
/// limits in time are `log_limit`'s; this one also counts, for the stats.)
#[derive(Default)]
pub(crate) struct Tally(AtomicU64);

impl Tally {
    /// Counts one event; `Some(count)` when this one should be logged.
    pub(crate) fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_power_of_two().then_some(n)
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Counters {
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn asked(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn answered(&self, ok: bool) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed();
        }
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// The answer of a lookup.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Verified {
    Found,
    NotFound,
    TypeMismatch(String),
}

pub(crate) enum Route {
    Local(Arc<Mailbox>),
    Remote(Arc<OutboxCell>),
    Client(TransportClient),
}

/// A flag with waiters.
#[derive(Default)]
struct Latch {
    state: Mutex<(bool, WaitList)>,
}

impl Latch {
    fn open(&self) {
        let wakers = {
            let mut s = lock(&self.state);
            s.0 = true;
            s.1.take_all()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Resolves once the latch is open. However often it is polled, the wait stores one
    /// waker, and none once dropped.
    async fn wait(&self) {
        struct Wait<'a> {
            latch: &'a Latch,
            key: WaitKey,
        }
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                lock(&self.latch.state).1.remove(&mut self.key);
            }
        }
        let mut wait = Wait {
            latch: self,
            key: WaitKey::default(),
        };
        poll_fn(|cx| {
            let mut s = lock(&wait.latch.state);
            if s.0 {
                Poll::Ready(())
            } else {
                s.1.register(&mut wait.key, cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// Wakers stored for tasks waiting on the latch.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.state).1.len()
    }
}

pub(crate) struct EnvInner {
    me: Weak<EnvInner>,
    pub(crate) rt: Arc<dyn Runtime>,
    pub(crate) config: RpcEnvConfig,
    pub(crate) address: Option<RpcAddress>,
    server: Mutex<Option<TransportServer>>,
    pub(crate) factory: TransportClientFactory,
    /// Opens the connections downloads travel on, apart from control messages.
    bulk_factory: TransportClientFactory,
    file_server: FileServer,
    endpoints: Mutex<FxHashMap<String, Arc<Mailbox>>>,
    live: Mutex<usize>,
    endpoints_done: Latch,
    terminated: Latch,
    outboxes: Mutex<HashMap<RpcAddress, Arc<OutboxCell>>>,
    stopped: AtomicBool,
    /// The env address each connection's peer announced first, by connection id: bound to
    /// the connection, later claims do not change it.
    remote_envs: Mutex<FxHashMap<u64, RpcAddress>>,
    /// Claims of another sender address on a connection already bound to one (logged at a
    /// bounded rate).
    claims_ignored: Tally,
    /// Asks from other envs being handled, bounded by `config.max_pending_asks`.
    pending_asks: Arc<std::sync::atomic::AtomicUsize>,
    /// How many connections stand for each address reported connected (see "Network
    /// events"); events are posted under this lock, so they alternate per address.
    peers: Mutex<HashMap<RpcAddress, usize>>,
    /// The cancel flags of asks being handled, by connection, then by the peer's request id
    /// (SipHash: the peer chooses those). A flag leaves when its call context goes, and a
    /// connection's flags are raised when it closes.
    cancels: Mutex<FxHashMap<u64, HashMap<RequestId, Weak<CancelFlag>>>>,
    next_seed: AtomicU64,
    pub(crate) stats: Counters,
}

impl EnvInner {
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Where messages to `target` go. `outbox` caches the outbox of a remote target (an env
    /// keeps its outboxes until it stops).
    pub(crate) fn route(
        &self,
        target: &RpcEndpointAddress,
        client: &Option<TransportClient>,
        outbox: Option<&std::sync::OnceLock<Arc<OutboxCell>>>,
    ) -> Result<Route, RpcError> {
        if self.is_stopped() {
            return Err(RpcError::EnvStopped);
        }
        let local = || {
            lock(&self.endpoints)
                .get(&target.name)
                .cloned()
                .map(Route::Local)
                .ok_or_else(|| RpcError::EndpointNotFound(target.to_string()))
        };
        match (&target.address, client) {
            (Some(a), _) if Some(a) == self.address.as_ref() => local(),
            (Some(a), _) => Ok(Route::Remote(match outbox {
                Some(cached) => cached.get_or_init(|| self.outbox(a)).clone(),
                None => self.outbox(a),
            })),
            (None, Some(client)) if client.is_active() => Ok(Route::Client(client.clone())),
            (None, Some(client)) => Err(RpcError::Disconnected {
                peer: client.peer_addr().to_string(),
                cause: client
                    .close_reason()
                    .unwrap_or(ConnectionError::LocallyClosed),
            }),
            (None, None) => local(),
        }
    }

    fn outbox(&self, remote: &RpcAddress) -> Arc<OutboxCell> {
        let mut outboxes = lock(&self.outboxes);
        if let Some(outbox) = outboxes.get(remote) {
            return outbox.clone();
        }
        outboxes
            .entry(remote.clone())
            .or_insert_with(|| {
                let seed = self.next_seed.fetch_add(1, Ordering::Relaxed);
                let env = self.weak();
                Arc::new(OutboxCell::new(
                    env,
                    remote.clone(),
                    Outbox::new(self.config.outbox.clone(), seed),
                ))
            })
            .clone()
    }

    fn weak(&self) -> Weak<EnvInner> {
        self.me.clone()
    }

    pub(crate) fn endpoint_finished(&self, mailbox: &Mailbox) {
        debug!(endpoint = %mailbox.name, "endpoint stopped");
        {
            let mut endpoints = lock(&self.endpoints);
            if endpoints
                .get(&mailbox.name)
                .is_some_and(|m| std::ptr::eq(&**m, mailbox))
            {
                endpoints.remove(&mailbox.name);
            }
        }
        let mut live = lock(&self.live);
        *live -= 1;
        if *live == 0 && self.is_stopped() {
            self.endpoints_done.open();
        }
    }

    /// One more connection stands for `address`: the first is reported connected.
    fn peer_up(&self, address: &RpcAddress) {
        let mut peers = lock(&self.peers);
        let count = peers.entry(address.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.post_all(|| Posted::Connected(address.clone()));
        }
    }

    /// One connection fewer stands for `address`: the last is reported disconnected.
    fn peer_down(&self, address: &RpcAddress) {
        let mut peers = lock(&self.peers);
        let Some(count) = peers.get_mut(address) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            peers.remove(address);
            self.post_all(|| Posted::Disconnected(address.clone()));
        }
    }

    /// The flag of ask `request` on `connection` is gone (its call context was dropped).
    pub(crate) fn forget_cancel(&self, connection: u64, request: RequestId) {
        let mut cancels = lock(&self.cancels);
        if let Some(calls) = cancels.get_mut(&connection) {
            calls.remove(&request);
            if calls.is_empty() {
                cancels.remove(&connection);
            }
        }
    }

    /// Takes the cancel flag of ask `request` on `connection`, if its call is still live.
    fn take_cancel(&self, connection: u64, request: RequestId) -> Option<Arc<CancelFlag>> {
        let flag = lock(&self.cancels)
            .get_mut(&connection)
            .and_then(|calls| calls.remove(&request));
        // Upgraded (and maybe dropped) outside the lock: a dropped flag takes it to forget itself.
        flag.and_then(|f| f.upgrade())
    }

    fn post_all(&self, event: impl Fn() -> Posted) {
        let mailboxes: Vec<_> = lock(&self.endpoints).values().cloned().collect();
        for mailbox in mailboxes {
            mailbox.notify(event());
        }
    }

    /// Whether endpoint `name` exists and takes `identity`. The mismatch names the
    /// endpoint's types only for a lookup from this env (`local`): other envs learn only
    /// that the types differ.
    fn verify(&self, name: &str, identity: &str, local: bool) -> Verified {
        match lock(&self.endpoints).get(name) {
            None => Verified::NotFound,
            Some(m) if m.identity == identity => Verified::Found,
            Some(m) if local => Verified::TypeMismatch(m.identity.clone()),
            Some(_) => Verified::TypeMismatch(String::new()),
        }
    }

    /// Counts a one-way message from another env that was dropped; logs at a bounded rate.
    fn dropped(&self, client: &TransportClient, endpoint: &str, why: &str) {
        if let Some(n) = self.stats.dropped.hit() {
            warn!(
                peer = %client.peer_addr(), %endpoint,
                dropped = n, "dropping a one-way message: {why} (logged at a bounded rate)"
            );
        }
    }

    /// Posts a message from another env; `bound` is the env address bound to its
    /// connection.
    fn deliver(
        &self,
        client: &TransportClient,
        envelope: EnvelopeView<'_>,
        bound: Option<RpcAddress>,
        payload: Bytes,
        responder: Option<RpcResponder>,
    ) {
        self.stats.received();
        let fail = |responder: Option<RpcResponder>, message: String| match responder {
            Some(r) => {
                let _ = r.fail(&message);
            }
            None => limited!(warn, peer = %client.peer_addr(), %message, "dropping a message"),
        };
        let Some(mailbox) = lock(&self.endpoints).get(envelope.receiver).cloned() else {
            return fail(
                responder,
                format!("{}{}", error::NOT_FOUND, envelope.receiver),
            );
        };
        if mailbox.identity != envelope.message_type {
            // The endpoint's own types are not told to other envs.
            return fail(
                responder,
                format!("{}{}", error::TYPE_MISMATCH, envelope.message_type),
            );
        }
        // An ask takes a permit of the env's budget first (O(1)); beyond it, refused.
        let (responder, permit) = match responder {
            Some(r) => {
                match call::AskPermit::try_acquire(&self.pending_asks, self.config.max_pending_asks)
                {
                    Some(permit) => (Some(r), Some(permit)),
                    None => {
                        self.refused(client, envelope.receiver);
                        let _ = r.fail(&format!(
                            "{}the env is handling {} asks from other envs, its limit \
                             (RpcEnvConfig::max_pending_asks)",
                            error::BUSY,
                            self.config.max_pending_asks
                        ));
                        return;
                    }
                }
            }
            None => (None, None),
        };
        // Only an ask can be cancelled: its flag is found by connection and request id.
        let cancel = responder.as_ref().map(|r| {
            let cancel = Arc::new(CancelFlag::registered(
                self.weak(),
                client.id(),
                r.request_id(),
            ));
            lock(&self.cancels)
                .entry(client.id())
                .or_default()
                .insert(r.request_id(), Arc::downgrade(&cancel));
            cancel
        });
        // A deadline the peer sets past our clock's range is none (never a panic).
        let deadline = envelope
            .deadline()
            .and_then(|d| crate::runtime::deadline_after(self.rt.now(), d));
        // Only a call context tells the sender (a one-way message's handler is not told):
        // the address bound to the connection, not what this envelope claims.
        let sender = responder.as_ref().and(bound);
        // A payload is a slice of the connection's read buffer (up to 2 MiB): a small one
        // waiting in an inbox would keep the whole buffer alive, so the inbox's bound in
        // messages would not bound its memory. Small payloads are copied out.
        let payload = if payload.len() <= DETACH_MAX {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        let posted = Posted::Message {
            payload: Payload::Remote {
                bytes: payload,
                client: Some(client.clone()),
            },
            request: responder.as_ref().map(|r| r.request_id()),
            reply: responder
                .zip(permit)
                .map(|(r, p)| call::ReplyTo::Remote(r, p)),
            sender,
            deadline,
            cancel,
        };
        let (full, refused) = match mailbox.post(posted) {
            Ok(()) => return,
            Err(InboxError::Full(refused)) => (true, refused),
            Err(refused) => (false, refused.into_inner()),
        };
        match (*refused, full) {
            (
                Posted::Message {
                    reply: Some(call::ReplyTo::Remote(r, _permit)),
                    ..
                },
                true,
            ) => {
                self.refused(client, envelope.receiver);
                let _ = r.fail(&format!(
                    "{}its inbox is full ({} messages)",
                    error::BUSY,
                    mailbox.capacity()
                ));
            }
            (
                Posted::Message {
                    reply: Some(call::ReplyTo::Remote(r, _permit)),
                    ..
                },
                false,
            ) => {
                let _ = r.fail(&format!("{}{}", error::STOPPED, envelope.receiver));
            }
            (_, true) => self.dropped(client, envelope.receiver, "the endpoint's inbox is full"),
            (_, false) => {}
        }
    }

    /// Counts an ask from another env refused as busy; logs at a bounded rate.
    fn refused(&self, client: &TransportClient, endpoint: &str) {
        if let Some(n) = self.stats.refused.hit() {
            warn!(
                peer = %client.peer_addr(), %endpoint, refused = n,
                "refusing an ask: the endpoint is busy (logged at a bounded rate)"
            );
        }
    }
}

/// The transport handler of an env: decodes envelopes and posts to mailboxes, and serves
/// the env's files.
struct EnvHandler {
    env: Weak<EnvInner>,
    files: FileServer,
}

impl EnvHandler {
    /// Decodes an envelope (an undecodable one is logged and counted) and binds the
    /// sending env's address to the connection, the first time one is announced. Returns,
    /// with the envelope, the address bound to the connection when the envelope names a
    /// sender (a later, different claim is ignored), for call contexts.
    fn open<'a>(
        env: &EnvInner,
        client: &TransportClient,
        message: &'a Bytes,
    ) -> Result<(EnvelopeView<'a>, Option<RpcAddress>, Bytes), rpc_proto::EnvelopeError> {
        let (envelope, payload) = Envelope::decode_view(message).inspect_err(|error| {
            limited!(warn, peer = %client.peer_addr(), %error, "undecodable envelope");
            env.stats.failed();
        })?;
        let Some((host, port)) = envelope.sender else {
            return Ok((envelope, None, payload));
        };
        let (bound, announced) = {
            let mut remote_envs = lock(&env.remote_envs);
            match remote_envs.entry(client.id()) {
                std::collections::hash_map::Entry::Occupied(entry) => {
                    let bound = entry.get();
                    if (bound.host.as_str(), bound.port) != (host, port) {
                        if let Some(n) = env.claims_ignored.hit() {
                            debug!(
                                peer = %client.peer_addr(), %bound, claimed = %format!("{host}:{port}"),
                                ignored = n,
                                "a message claims another sender than its connection's: ignored"
                            );
                        }
                    }
                    (bound.clone(), false)
                }
                std::collections::hash_map::Entry::Vacant(entry) => (
                    entry
                        .insert(RpcAddress {
                            host: host.to_owned(),
                            port,
                        })
                        .clone(),
                    true,
                ),
            }
        };
        // The first message to name the peer env reports it connected, before the
        // message itself is delivered (Spark's `RemoteProcessConnected`).
        if announced && bound != RpcAddress::from(client.peer_addr()) {
            env.peer_up(&bound);
        }
        Ok((envelope, Some(bound), payload))
    }
}

impl RpcHandler for EnvHandler {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let Some(env) = self.env.upgrade() else {
            let _ = responder.fail("the rpc env is stopped");
            return;
        };
        let (envelope, bound, payload) = match Self::open(&env, client, &message) {
            Ok(decoded) => decoded,
            Err(error) => {
                let _ = responder.fail(&format!(
                    "{}undecodable envelope: {error}",
                    error::BAD_MESSAGE
                ));
                return;
            }
        };
        match envelope.kind {
            EnvelopeKind::Verify => {
                let verified = env.verify(envelope.receiver, envelope.message_type, false);
                match encode_payload(&verified) {
                    Ok(bytes) => {
                        let _ = responder.reply(bytes.into());
                    }
                    Err(e) => {
                        let _ = responder.fail(&e.to_string());
                    }
                }
            }
            EnvelopeKind::Ask => env.deliver(client, envelope, bound, payload, Some(responder)),
            other => {
                let _ = responder.fail(&format!("a {other:?} envelope cannot be asked"));
            }
        }
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(&self.files)
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        let Some(env) = self.env.upgrade() else {
            return;
        };
        let Ok((envelope, bound, payload)) = Self::open(&env, client, &message) else {
            return;
        };
        match envelope.kind {
            EnvelopeKind::Send => env.deliver(client, envelope, bound, payload, None),
            EnvelopeKind::Cancel { request } => {
                if let Some(flag) = env.take_cancel(client.id(), request) {
                    debug!(%request, "ask cancelled by its caller");
                    flag.cancel();
                }
            }
            other => limited!(warn, kind = ?other, "unexpected one-way envelope"),
        }
    }

    fn connection_opened(&self, client: &TransportClient) {
        if let Some(env) = self.env.upgrade() {
            env.peer_up(&RpcAddress::from(client.peer_addr()));
        }
    }

    fn connection_closed(&self, client: &TransportClient, error: &ConnectionError) {
        let Some(env) = self.env.upgrade() else {
            return;
        };
        let now = env.rt.now();
        let outboxes: Vec<_> = lock(&env.outboxes).values().cloned().collect();
        for outbox in outboxes {
            outbox.connection_closed(client, now);
        }
        // Asks that came on this connection have no caller any more: their handlers hear
        // of it through `cancelled()` (raised outside the lock).
        let orphaned = lock(&env.cancels).remove(&client.id());
        for flag in orphaned.into_iter().flat_map(HashMap::into_values) {
            if let Some(flag) = flag.upgrade() {
                flag.cancel();
            }
        }
        let peer = RpcAddress::from(client.peer_addr());
        let remote_env = lock(&env.remote_envs)
            .remove(&client.id())
            .filter(|r| *r != peer);
        if !matches!(
            error,
            ConnectionError::PeerClosed | ConnectionError::LocallyClosed
        ) {
            for address in std::iter::once(&peer).chain(&remote_env) {
                env.post_all(|| Posted::NetworkError(error.clone(), address.clone()));
            }
        }
        env.peer_down(&peer);
        if let Some(remote) = remote_env {
            env.peer_down(&remote);
        }
    }
}

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
                stopped: AtomicBool::new(false),
                remote_envs: Mutex::new(FxHashMap::default()),
                claims_ignored: Tally::default(),
                pending_asks: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                peers: Mutex::new(HashMap::new()),
                cancels: Mutex::new(FxHashMap::default()),
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
        let task = mailbox::run_serial(endpoint, mailbox, ctx, self.inner.weak());
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
        let task = mailbox::run_concurrent(
            Arc::new(endpoint),
            mailbox,
            ctx,
            self.inner.weak(),
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
        if inner.stopped.swap(true, Ordering::SeqCst) {
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
        let c = &self.inner.stats;
        let asked = c.asked.load(Ordering::Relaxed);
        EnvStats {
            sent: c.sent.load(Ordering::Relaxed),
            asked,
            in_flight: asked.saturating_sub(c.answered.load(Ordering::Relaxed)),
            queued: lock(&self.inner.outboxes)
                .values()
                .map(|o| o.queued())
                .sum(),
            failed: c.failed.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dropped: c.dropped.get(),
            refused: c.refused.get(),
            pending_asks: self.inner.pending_asks.load(Ordering::Relaxed) as u64,
            inboxed: lock(&self.inner.endpoints)
                .values()
                .map(|m| m.messages() as u64)
                .sum(),
        }
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

/// The transport settings of an env: [`TransportConfig::default`], keeping idle accepted
/// connections (see [`RpcEnvConfig::transport`]).
fn env_transport() -> TransportConfig {
    let connection = rpc_proto::Config::builder()
        .with_close_idle_accepted(false)
        .build()
        .expect("the default connection settings are valid");
    TransportConfig::default().with_connection(connection)
}

impl RpcEnvConfig {
    fn outbox_seed(&self) -> u64 {
        // Different envs jitter differently; the same config jitters the same way.
        self.name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
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

#[cfg(test)]
mod latch_tests {
    use std::future::Future;
    use std::task::{Context, Wake};

    use super::*;

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn waiting_on_a_latch_again_and_again_keeps_one_waker() {
        let latch = Latch::default();
        let mut wait = std::pin::pin!(latch.wait());
        for _ in 0..1_000_000 {
            let waker = Waker::from(Arc::new(Noop));
            let mut cx = Context::from_waker(&waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert!(latch.waiting() <= 1, "{} wakers stored", latch.waiting());
        }
        latch.open();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // A wait that gives up leaves nothing behind.
        let other = Latch::default();
        for _ in 0..1000 {
            let mut wait = std::pin::pin!(other.wait());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(other.waiting(), 0);
    }
}
