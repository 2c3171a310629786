//! The env's transport handler: what arrives on its connections (envelopes, lookups,
//! cancels, connection events) and the files it serves.

use std::cell::RefCell;

use bytes::Bytes;
use rpc_proto::{
    ConnectionError, Envelope, EnvelopeCache, EnvelopeError, EnvelopeKind, EnvelopeView,
    RemoteFailure, RpcAddress,
};
use tracing::debug;

use super::file_server::FileServer;
use super::hub::EnvInner;
use super::mailbox::Posted;
use crate::log_limit::limited;
use crate::sync::lock;
use crate::transport::{RpcHandler, RpcResponder, StreamManager, TransportClient};

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

thread_local! {
    /// The header prefix last decoded on this thread: the messages of one connection
    /// mostly repeat it (one sender, one endpoint), and so skip decoding and validating it.
    static ENVELOPES: RefCell<EnvelopeCache> = RefCell::new(EnvelopeCache::default());
}

/// Runs `f` on `message` decoded as an envelope, through this thread's cache (the result is
/// exactly [`Envelope::decode_view`]'s).
fn with_envelope<T>(
    message: &Bytes,
    f: impl for<'a> FnOnce(Result<(EnvelopeView<'a>, Bytes), EnvelopeError>) -> T,
) -> T {
    ENVELOPES.with(|cache| match cache.try_borrow_mut() {
        Ok(mut cache) => f(cache.decode_view(message)),
        // Entered again from inside `f` on this thread: decode without the cache.
        Err(_) => f(Envelope::decode_view(message)),
    })
}

/// The transport handler of an env: decodes envelopes and posts to mailboxes, and serves
/// the env's files.
pub(crate) struct EnvHandler {
    pub(super) env: Weak<EnvInner>,
    pub(super) files: FileServer,
}

impl EnvHandler {
    /// Decodes an envelope (an undecodable one is logged and counted) and binds the
    /// sending env's address to the connection, the first time one is announced. Returns,
    /// with the envelope, the address bound to the connection when the envelope names a
    /// sender (a later, different claim is ignored), for call contexts.
    fn open<'a>(
        env: &EnvInner,
        client: &TransportClient,
        decoded: Result<(EnvelopeView<'a>, Bytes), EnvelopeError>,
    ) -> Result<(EnvelopeView<'a>, Option<RpcAddress>, Bytes), EnvelopeError> {
        let (envelope, payload) = decoded.inspect_err(|error| {
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
        with_envelope(&message, |decoded| {
            let (envelope, bound, payload) = match Self::open(&env, client, decoded) {
                Ok(decoded) => decoded,
                Err(error) => {
                    let _ = responder.fail(
                        &RemoteFailure::BadMessage(format!("undecodable envelope: {error}"))
                            .to_string(),
                    );
                    return;
                }
            };
            match envelope.kind {
                EnvelopeKind::Verify => {
                    let verified = env.verify(envelope.receiver, envelope.message_type, false);
                    let _ = responder.reply(verified.encode());
                }
                EnvelopeKind::Ask => env.deliver(client, envelope, bound, payload, Some(responder)),
                other => {
                    let _ = responder.fail(&format!("a {other:?} envelope cannot be asked"));
                }
            }
        })
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(&self.files)
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        let Some(env) = self.env.upgrade() else {
            return;
        };
        with_envelope(&message, |decoded| {
            let Ok((envelope, bound, payload)) = Self::open(&env, client, decoded) else {
                return;
            };
            match envelope.kind {
                EnvelopeKind::Send => env.deliver(client, envelope, bound, payload, None),
                EnvelopeKind::Cancel { request } => {
                    if let Some(flag) = env.cancels.take(client.id(), request) {
                        debug!(%request, "ask cancelled by its caller");
                        flag.cancel();
                    }
                }
                other => limited!(warn, kind = ?other, "unexpected one-way envelope"),
            }
        })
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
        env.cancels.connection_closed(client.id());
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
