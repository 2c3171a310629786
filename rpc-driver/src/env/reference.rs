//! Endpoint refs: the typed handle on an endpoint, local or remote, and how it sends and
//! asks (the route is [`route`](super::route)'s, the reply future [`ask`](super::ask)'s).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::{EnvelopeKind, EnvelopePrefix, RpcEndpointAddress};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ask::{Ask, AskState};
use super::binding::{self, BoundEnv};
use super::call::ReplyTo;
use super::cancel::{CancelFlag, CancelOnDrop};
use super::error::RpcError;
use super::lookup::{Verified, VERIFIER_NAME};
use super::mailbox::{Mailbox, Payload, Posted};
use super::message::{endpoint_identity, RpcMessage};
use super::outbox::{Asked, OutboxCell};
use super::route::{route, Route};
use crate::completion;
use crate::runtime::deadline_after;
use crate::sync::Arc;
use crate::transport::TransportClient;

// The outbox cache is set once per ref; env is not built under loom.
use crate::sync::unmodeled::OnceLock;

// What a ref's clones share, immutable once made: nothing for loom to model.
use crate::sync::unmodeled::Arc as StdArc;

/// A handle on an endpoint, local or remote: Spark's `RpcEndpointRef`.
///
/// Typed by the messages the endpoint takes (`M`) and its replies (`R`), whose
/// [`RpcMessage`] identities must be the endpoint's. Refs are cheap to
/// clone, compare equal by address and name, and travel inside messages (they serialize as
/// their address; the receiving env binds them). A ref to an endpoint of a client-mode env
/// travels back over the connection it came on, and fails with
/// [`RpcError::Disconnected`] once that connection is gone.
pub struct RpcEndpointRef<M, R> {
    pub(crate) address: RpcEndpointAddress,
    pub(crate) env: BoundEnv,
    pub(crate) client: Option<TransportClient>,
    shared: StdArc<RefShared>,
    _types: PhantomData<fn(M) -> R>,
}

/// What every message through a ref (and its clones) needs, worked out once.
pub(crate) struct RefShared {
    /// The endpoint as errors name it.
    pub(crate) endpoint: StdArc<str>,
    /// The envelope header of messages from the ref's env to the endpoint, up to the deadline.
    pub(crate) prefix: EnvelopePrefix,
    /// The outbox to the endpoint's env, once looked up.
    pub(crate) outbox: OnceLock<Arc<OutboxCell>>,
}

impl<M: RpcMessage, R: RpcMessage> RpcEndpointRef<M, R> {
    /// A ref to `address`; works out the envelope header (with the types' identity) once.
    pub(crate) fn new(
        address: RpcEndpointAddress,
        env: BoundEnv,
        client: Option<TransportClient>,
    ) -> Self {
        let sender = env.upgrade().and_then(|e| e.address().cloned());
        let shared = StdArc::new(RefShared {
            endpoint: address.to_string().into(),
            prefix: EnvelopePrefix::new(
                sender.as_ref(),
                &address.name,
                &endpoint_identity::<M, R>(),
            ),
            outbox: OnceLock::new(),
        });
        Self {
            address,
            env,
            client,
            shared,
            _types: PhantomData,
        }
    }
}

impl<M, R> RpcEndpointRef<M, R> {
    /// The endpoint's address and name.
    pub fn address(&self) -> &RpcEndpointAddress {
        &self.address
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.address.name
    }
}

impl<M, R> Clone for RpcEndpointRef<M, R> {
    fn clone(&self) -> Self {
        Self {
            address: self.address.clone(),
            env: self.env.clone(),
            client: self.client.clone(),
            shared: self.shared.clone(),
            _types: PhantomData,
        }
    }
}

impl<M, R> PartialEq for RpcEndpointRef<M, R> {
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address
    }
}

impl<M, R> Eq for RpcEndpointRef<M, R> {}

impl<M, R> Hash for RpcEndpointRef<M, R> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.address.hash(state)
    }
}

impl<M, R> fmt::Debug for RpcEndpointRef<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcEndpointRef({})", self.address)
    }
}

impl<M, R> fmt::Display for RpcEndpointRef<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.address, f)
    }
}

impl<M, R> Serialize for RpcEndpointRef<M, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.address.serialize(serializer)
    }
}

impl<'de, M: RpcMessage, R: RpcMessage> Deserialize<'de> for RpcEndpointRef<M, R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let address = RpcEndpointAddress::deserialize(deserializer)?;
        let (env, client) = binding::current();
        let client = if address.address.is_none() {
            client
        } else {
            None
        };
        Ok(Self::new(address, env, client))
    }
}

impl<M, R> RpcEndpointRef<M, R>
where
    M: RpcMessage + Serialize + Send + 'static,
    R: RpcMessage + DeserializeOwned + Send + 'static,
{
    fn encode(
        &self,
        message: &M,
        kind: EnvelopeKind,
        deadline_ms: Option<u64>,
    ) -> Result<Bytes, RpcError> {
        self.shared
            .prefix
            .encode(deadline_ms, kind, message)
            .map_err(|e| RpcError::Serialization(e.to_string().into()))
    }

    /// Sends `message` without waiting for anything (fire-and-forget, at most once).
    ///
    /// Errors that can be known at once are returned (unknown or stopped local endpoint,
    /// stopped env, full outbox); delivery to a remote endpoint is not confirmed. A local
    /// message is handed over as it is, without serialization.
    pub fn send(&self, message: M) -> Result<(), RpcError> {
        let env = self
            .env
            .upgrade()
            .ok_or_else(|| RpcError::Unbound(self.address.clone()))?;
        env.stats().sent();
        match route(
            &*env,
            &self.address,
            &self.client,
            Some(&self.shared.outbox),
        )? {
            Route::Local(mailbox) => mailbox
                .post(Posted::Message {
                    payload: Payload::Local(Box::new(message)),
                    request: None,
                    reply: None,
                    sender: env.address().cloned(),
                    deadline: None,
                    cancel: None,
                })
                .map_err(|e| refusal(&e, &mailbox, &self.shared.endpoint)),
            Route::Remote(outbox) => {
                let body = self.encode(&message, EnvelopeKind::Send, None)?;
                outbox.send(body)
            }
            Route::Client(client) => {
                let body = self.encode(&message, EnvelopeKind::Send, None)?;
                client.send(body).map_err(|e| match e {
                    // Closed since `route` looked: as if it had been closed then.
                    rpc_proto::CallError::Closed => RpcError::Disconnected {
                        peer: client.peer_addr().to_string(),
                        cause: client
                            .close_reason()
                            .unwrap_or(rpc_proto::ConnectionError::LocallyClosed),
                    },
                    e => RpcError::NotSent(e),
                })
            }
        }
    }

    /// Asks with the env's default timeout ([`RpcEnvConfig::ask_timeout`](crate::env::config::RpcEnvConfig::ask_timeout)).
    pub fn ask(&self, message: M) -> Ask<R> {
        let timeout = self
            .env
            .upgrade()
            .map_or(Duration::from_secs(120), |e| e.ask_timeout());
        self.ask_with_timeout(message, timeout)
    }

    /// Sends `message` now and returns a future of the reply, which fails with
    /// [`RpcError::TimedOut`] after `timeout`. The remaining time travels with the message.
    ///
    /// Dropping the future (or calling [`Ask::abort`]) stops waiting: the endpoint sees its
    /// call context cancelled and a late reply is discarded.
    pub fn ask_with_timeout(&self, message: M, timeout: Duration) -> Ask<R> {
        let endpoint = self.shared.endpoint.clone();
        let Some(env) = self.env.upgrade() else {
            return Ask::failed(RpcError::Unbound(self.address.clone()));
        };
        env.stats().asked();
        // A deadline past the clock's range is none: the ask waits as long as it takes.
        let deadline = deadline_after(env.runtime().now(), timeout);
        let mut ask = Ask::new(self.env.clone(), endpoint, deadline, timeout, true);
        let route = match route(
            &*env,
            &self.address,
            &self.client,
            Some(&self.shared.outbox),
        ) {
            Ok(route) => route,
            Err(e) => {
                ask.state = AskState::Failed(e);
                return ask;
            }
        };
        // The time left travels with the message; no deadline travels as none.
        let deadline_ms = deadline.and_then(|_| u64::try_from(timeout.as_millis()).ok());
        ask.state = match route {
            Route::Local(mailbox) => {
                let (completer, waiter) = completion::pair();
                let cancel = Arc::new(CancelFlag::default());
                ask.cancel = Some(cancel.clone());
                match mailbox.post(Posted::Message {
                    payload: Payload::Local(Box::new(message)),
                    request: None,
                    reply: Some(ReplyTo::Local(completer)),
                    sender: env.address().cloned(),
                    deadline,
                    cancel: Some(cancel),
                }) {
                    Ok(()) => AskState::Local(waiter),
                    Err(e) => AskState::Failed(refusal(&e, &mailbox, &ask.endpoint)),
                }
            }
            Route::Remote(outbox) => match self.encode(&message, EnvelopeKind::Ask, deadline_ms) {
                Ok(body) => {
                    match outbox.ask(body, &self.shared.endpoint, &self.shared.prefix, timeout) {
                        Ok(Asked::Sent(call, guard)) => AskState::Sent(call, Some(guard)),
                        Ok(Asked::Queued(waiter)) => AskState::Queued(waiter),
                        Err(e) => AskState::Failed(e),
                    }
                }
                Err(e) => AskState::Failed(e),
            },
            Route::Client(client) => {
                // The ref names no address: say which connection it goes over.
                ask.endpoint = format!("{} via {}", self.address, client.peer_addr()).into();
                match self.encode(&message, EnvelopeKind::Ask, deadline_ms) {
                    Ok(body) => {
                        let call = client.send_rpc(body, Some(timeout));
                        let guard = CancelOnDrop::new(
                            client,
                            self.shared.prefix.clone(),
                            call.request_id(),
                        );
                        AskState::Sent(call, Some(guard))
                    }
                    Err(e) => AskState::Failed(e),
                }
            }
        };
        ask
    }

    /// Asks the endpoint's env whether the endpoint exists and takes `M` and answers `R`.
    pub(crate) fn verify(&self, timeout: Duration) -> Ask<Verified> {
        let Some(env) = self.env.upgrade() else {
            return Ask::failed(RpcError::Unbound(self.address.clone()));
        };
        let endpoint: StdArc<str> = format!(
            "rpc://{}@{}",
            VERIFIER_NAME,
            self.address
                .address
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default()
        )
        .into();
        let deadline = deadline_after(env.runtime().now(), timeout);
        let mut ask = Ask::new(self.env.clone(), endpoint, deadline, timeout, false);
        let body = rpc_proto::wire::lookup_request(&self.shared.prefix);
        ask.state = match route(&*env, &self.address, &self.client, None) {
            Ok(Route::Remote(outbox)) => {
                match outbox.ask(body, &ask.endpoint, &self.shared.prefix, timeout) {
                    Ok(Asked::Sent(call, guard)) => AskState::Sent(call, Some(guard)),
                    Ok(Asked::Queued(waiter)) => AskState::Queued(waiter),
                    Err(e) => AskState::Failed(e),
                }
            }
            Ok(Route::Client(client)) => AskState::Sent(client.send_rpc(body, Some(timeout)), None),
            Ok(Route::Local(_)) => {
                AskState::Failed(RpcError::EndpointNotFound(self.address.to_string()))
            }
            Err(e) => AskState::Failed(e),
        };
        ask
    }

    /// Asks up to `attempts` times, waiting `wait` between attempts (Spark's `askWithRetry`).
    ///
    /// **Only for idempotent messages**: an attempt that timed out may still have been
    /// handled, so the endpoint can see the message more than once. Remote failures (the
    /// endpoint answered with an error) and lookups of missing endpoints are not retried.
    pub async fn ask_with_retry(
        &self,
        message: M,
        attempts: u32,
        wait: Duration,
    ) -> Result<R, RpcError>
    where
        M: Clone,
    {
        let attempts = attempts.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            match self.ask(message.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(
                    e @ (RpcError::Remote(_)
                    | RpcError::EndpointNotFound(_)
                    | RpcError::TypeMismatch { .. }
                    | RpcError::EnvStopped
                    | RpcError::Serialization(_)
                    | RpcError::Unbound(_)),
                ) => return Err(e),
                Err(e) => {
                    tracing::warn!(endpoint = %self.address, attempt, error = %e, "ask failed, retrying");
                    if let Some(env) = self.env.upgrade() {
                        env.stats().retried();
                        let rt = env.runtime().clone();
                        drop(env);
                        if attempt < attempts {
                            crate::runtime::sleep_for(&*rt, wait).await;
                        }
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }
}

/// The error a local sender gets when an inbox refuses its message.
fn refusal<M>(error: &rpc_proto::InboxError<M>, mailbox: &Mailbox, endpoint: &str) -> RpcError {
    match error {
        rpc_proto::InboxError::Full(_) => RpcError::EndpointBusy {
            endpoint: endpoint.to_owned(),
            reason: format!("its inbox is full ({} messages)", mailbox.capacity()).into(),
        },
        _ => RpcError::EndpointStopped(endpoint.to_owned()),
    }
}

impl<M: RpcMessage, R: RpcMessage> RpcMessage for RpcEndpointRef<M, R> {
    const NAME: &'static str = "RpcEndpointRef";
    fn write_identity(out: &mut String) {
        rpc_proto::wire::write_generic(out, Self::NAME, &[M::write_identity, R::write_identity]);
    }
}
