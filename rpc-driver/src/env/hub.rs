//! The env's shared state: its endpoints, outboxes and peers, and how messages from other
//! envs are delivered to its endpoints.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::{EnvelopeView, InboxError, Outbox, RemoteFailure, RpcAddress};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::call;
use super::cancel::CancelRegistry;
use super::config::RpcEnvConfig;
use super::file_server::FileServer;
use super::lifecycle::{Latch, StopFlag};
use super::lookup::Verified;
use super::mailbox::{Mailbox, Payload, Posted};
use super::outbox::{OutboxCell, OutboxEnv};
use super::route::Router;
use super::stats::{Counters, Tally};
use crate::log_limit::limited;
use crate::runtime::Runtime;
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{
    ConnectionId, RpcResponder, TransportClient, TransportClientFactory, TransportServer,
};

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// Payloads from other envs up to this size are copied out of the read buffer before they
/// are queued (see [`EnvInner::deliver`]); a larger one keeps at most 32 times its size
/// alive.
const DETACH_MAX: usize = 64 * 1024;

/// The state of one env, shared by its handle ([`RpcEnv`](super::rpc_env::RpcEnv)) and its
/// transport handler ([`EnvHandler`](super::handler::EnvHandler)): its endpoints, outboxes,
/// peers and counters. Refs, asks, outboxes and running endpoints do not see it: each gets
/// the narrow view it needs ([`Router`], [`OutboxEnv`], [`RunnerEnv`](super::runner::RunnerEnv)).
pub(crate) struct EnvInner {
    pub(super) me: Weak<Self>,
    pub(super) rt: Arc<dyn Runtime>,
    pub(super) config: RpcEnvConfig,
    pub(super) address: Option<RpcAddress>,
    pub(super) server: Mutex<Option<TransportServer>>,
    pub(super) factory: TransportClientFactory,
    /// Opens the connections downloads travel on, apart from control messages.
    pub(super) bulk_factory: TransportClientFactory,
    pub(super) file_server: FileServer,
    pub(super) endpoints: Mutex<FxHashMap<String, Arc<Mailbox>>>,
    pub(super) live: Mutex<usize>,
    pub(super) endpoints_done: Latch,
    pub(super) terminated: Latch,
    pub(super) outboxes: Mutex<HashMap<RpcAddress, Arc<OutboxCell>>>,
    pub(super) stopped: Arc<StopFlag>,
    /// The env address each connection's peer announced first, by connection id: bound to
    /// the connection, later claims do not change it.
    pub(super) remote_envs: Mutex<FxHashMap<ConnectionId, RpcAddress>>,
    /// Claims of another sender address on a connection already bound to one (logged at a
    /// bounded rate).
    pub(super) claims_ignored: Tally,
    /// Asks from other envs being handled, bounded by `config.max_pending_asks()`.
    pub(super) pending_asks: Arc<AtomicUsize>,
    /// How many connections stand for each address reported connected (see "Network
    /// events"); events are posted under this lock, so they alternate per address.
    pub(super) peers: Mutex<HashMap<RpcAddress, usize>>,
    /// The cancel flags of asks being handled.
    pub(super) cancels: Arc<CancelRegistry>,
    pub(super) next_seed: AtomicU64,
    pub(super) stats: Counters,
}

impl EnvInner {
    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.is_stopped()
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
                let env: Weak<dyn OutboxEnv> = self.weak();
                Arc::new(OutboxCell::new(
                    env,
                    remote.clone(),
                    Outbox::new(self.config.outbox().clone(), seed),
                ))
            })
            .clone()
    }

    pub(super) fn weak(&self) -> Weak<Self> {
        self.me.clone()
    }

    pub(super) fn endpoint_finished(&self, mailbox: &Mailbox) {
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
    pub(super) fn peer_up(&self, address: &RpcAddress) {
        let mut peers = lock(&self.peers);
        let count = peers.entry(address.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.post_all(|| Posted::Connected(address.clone()));
        }
    }

    /// One connection fewer stands for `address`: the last is reported disconnected.
    pub(super) fn peer_down(&self, address: &RpcAddress) {
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

    pub(super) fn post_all(&self, event: impl Fn() -> Posted) {
        let mailboxes: Vec<_> = lock(&self.endpoints).values().cloned().collect();
        for mailbox in mailboxes {
            mailbox.notify(event());
        }
    }

    /// Whether endpoint `name` exists and takes `identity`. The mismatch names the
    /// endpoint's types only for a lookup from this env (`local`): other envs learn only
    /// that the types differ.
    pub(super) fn verify(&self, name: &str, identity: &str, local: bool) -> Verified {
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
    pub(super) fn deliver(
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
                RemoteFailure::EndpointNotFound(envelope.receiver.to_owned()).to_string(),
            );
        };
        if mailbox.identity != envelope.message_type {
            // The endpoint's own types are not told to other envs.
            return fail(
                responder,
                RemoteFailure::TypeMismatch {
                    expected: envelope.message_type.to_owned(),
                    found: None,
                }
                .to_string(),
            );
        }
        // An ask takes a permit of the env's budget first (O(1)); beyond it, refused.
        let (responder, permit) = match responder {
            Some(r) => {
                match call::AskPermit::try_acquire(
                    &self.pending_asks,
                    self.config.max_pending_asks(),
                ) {
                    Some(permit) => (Some(r), Some(permit)),
                    None => {
                        self.refused(client, envelope.receiver);
                        let _ = r.fail(
                            &RemoteFailure::EndpointBusy(format!(
                                "the env is handling {} asks from other envs, its limit \
                                 (RpcEnvConfig::max_pending_asks)",
                                self.config.max_pending_asks()
                            ))
                            .to_string(),
                        );
                        return;
                    }
                }
            }
            None => (None, None),
        };
        // Only an ask can be cancelled: its flag is found by connection and request id.
        let cancel = responder
            .as_ref()
            .map(|r| self.cancels.register(client.id(), r.request_id()));
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
                let _ = r.fail(
                    &RemoteFailure::EndpointBusy(format!(
                        "its inbox is full ({} messages)",
                        mailbox.capacity()
                    ))
                    .to_string(),
                );
            }
            (
                Posted::Message {
                    reply: Some(call::ReplyTo::Remote(r, _permit)),
                    ..
                },
                false,
            ) => {
                let _ = r.fail(
                    &RemoteFailure::EndpointStopped(envelope.receiver.to_owned()).to_string(),
                );
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

impl Router for EnvInner {
    fn is_stopped(&self) -> bool {
        Self::is_stopped(self)
    }
    fn address(&self) -> Option<&RpcAddress> {
        self.address.as_ref()
    }
    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }
    fn stats(&self) -> &Counters {
        &self.stats
    }
    fn ask_timeout(&self) -> Duration {
        self.config.ask_timeout()
    }
    fn mailbox(&self, name: &str) -> Option<Arc<Mailbox>> {
        lock(&self.endpoints).get(name).cloned()
    }
    fn outbox(&self, remote: &RpcAddress) -> Arc<OutboxCell> {
        Self::outbox(self, remote)
    }
}

impl OutboxEnv for EnvInner {
    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }
    fn factory(&self) -> &TransportClientFactory {
        &self.factory
    }
    fn stats(&self) -> &Counters {
        &self.stats
    }
    fn is_stopped(&self) -> bool {
        Self::is_stopped(self)
    }
}
