//! Endpoint refs: how endpoints are reached, locally or across the network.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc as StdArc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::{decode_payload, EnvelopeKind, EnvelopePrefix, RpcEndpointAddress};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::call::{CancelFlag, LocalReply, ReplyTo};
use super::error::{from_remote, RpcError};
use super::mailbox::{Payload, Posted};
use super::message::{endpoint_identity, RpcMessage};
use super::outbox::{Asked, OutboxCell};
use super::{EnvInner, Route};
use crate::completion::{self, Waiter};
use crate::runtime::{deadline_after, AsyncTimer};
use crate::security::SecurityError;
use crate::sync::Arc;
use crate::transport::{RpcCall, TransportClient};

thread_local! {
    /// The env (and connection) that refs deserialized on this thread bind to.
    static BINDING: RefCell<Option<(Weak<EnvInner>, Option<TransportClient>)>> =
        const { RefCell::new(None) };
}

/// Runs `f` (a deserialization) with refs binding to `env` and, for refs to client-mode
/// endpoints, to the connection `client` the message came on.
pub(crate) fn with_binding<T>(
    env: &Weak<EnvInner>,
    client: Option<TransportClient>,
    f: impl FnOnce() -> T,
) -> T {
    let previous = BINDING.with(|b| b.replace(Some((env.clone(), client))));
    let result = f();
    BINDING.with(|b| *b.borrow_mut() = previous);
    result
}

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
    pub(crate) env: Weak<EnvInner>,
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
        env: Weak<EnvInner>,
        client: Option<TransportClient>,
    ) -> Self {
        let sender = env.upgrade().and_then(|e| e.address.clone());
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
        let (env, client) = BINDING.with(|b| b.borrow().clone()).unwrap_or_default();
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
        env.stats.sent();
        match env.route(&self.address, &self.client, Some(&self.shared.outbox))? {
            Route::Local(mailbox) => mailbox
                .post(Posted::Message {
                    payload: Payload::Local(Box::new(message)),
                    request: None,
                    reply: None,
                    sender: env.address.clone(),
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

    /// Asks with the env's default timeout ([`RpcEnvConfig::ask_timeout`](super::RpcEnvConfig)).
    pub fn ask(&self, message: M) -> Ask<R> {
        let timeout = self
            .env
            .upgrade()
            .map_or(Duration::from_secs(120), |e| e.config.ask_timeout);
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
        env.stats.asked();
        // A deadline past the clock's range is none: the ask waits as long as it takes.
        let deadline = deadline_after(env.rt.now(), timeout);
        let mut ask = Ask {
            state: AskState::Done,
            timer: None,
            deadline,
            timeout,
            endpoint,
            env: self.env.clone(),
            cancel: None,
            counted: true,
            _reply: PhantomData,
        };
        let route = match env.route(&self.address, &self.client, Some(&self.shared.outbox)) {
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
                    sender: env.address.clone(),
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
    pub(crate) fn verify(&self, timeout: Duration) -> Ask<super::Verified> {
        let Some(env) = self.env.upgrade() else {
            return Ask::failed(RpcError::Unbound(self.address.clone()));
        };
        let endpoint: StdArc<str> = format!(
            "rpc://{}@{}",
            super::VERIFIER_NAME,
            self.address
                .address
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default()
        )
        .into();
        let mut ask = Ask {
            state: AskState::Done,
            timer: None,
            deadline: deadline_after(env.rt.now(), timeout),
            timeout,
            endpoint,
            env: self.env.clone(),
            cancel: None,
            counted: false,
            _reply: PhantomData,
        };
        let body = self
            .shared
            .prefix
            .encode_raw(None, EnvelopeKind::Verify, &[]);
        ask.state = match env.route(&self.address, &self.client, None) {
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
                        env.stats.retried();
                        let rt = env.rt.clone();
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
fn refusal<M>(
    error: &rpc_proto::InboxError<M>,
    mailbox: &super::mailbox::Mailbox,
    endpoint: &str,
) -> RpcError {
    match error {
        rpc_proto::InboxError::Full(_) => RpcError::EndpointBusy {
            endpoint: endpoint.to_owned(),
            reason: format!("its inbox is full ({} messages)", mailbox.capacity()).into(),
        },
        _ => RpcError::EndpointStopped(endpoint.to_owned()),
    }
}

/// Sends a `Cancel` to the peer when an ask sent on `client` is dropped before its reply.
pub(crate) struct CancelOnDrop {
    client: TransportClient,
    /// The header prefix the ask was sent with (sender and receiver).
    prefix: EnvelopePrefix,
    armed: bool,
    request: Option<rpc_proto::RequestId>,
}

impl CancelOnDrop {
    /// A guard for the call sent on `client` as `request` (`None` if it was refused before
    /// being sent: nothing to cancel) with an envelope starting with `prefix`.
    pub(crate) fn new(
        client: TransportClient,
        prefix: EnvelopePrefix,
        request: Option<rpc_proto::RequestId>,
    ) -> Self {
        Self {
            client,
            prefix,
            armed: true,
            request,
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let (true, Some(request)) = (self.armed, self.request) {
            let body = self
                .prefix
                .encode_raw(None, EnvelopeKind::Cancel { request }, &[]);
            let _ = self.client.send(body);
        }
    }
}

enum AskState {
    Failed(RpcError),
    Local(Waiter<LocalReply>),
    Queued(Waiter<Result<(RpcCall, CancelOnDrop), RpcError>>),
    Sent(RpcCall, Option<CancelOnDrop>),
    Done,
}

/// The reply to an ask: resolves exactly once, to the reply or why there is none.
#[must_use = "an ask's reply is only seen by awaiting it"]
pub struct Ask<R> {
    state: AskState,
    /// Made only while the ask waits in this process (for a local endpoint, or for a
    /// connection): once sent, the connection times the call out at the same deadline.
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    /// `None` for a timeout past the clock's range: no timer at all.
    deadline: Option<std::time::Instant>,
    timeout: Duration,
    endpoint: StdArc<str>,
    env: Weak<EnvInner>,
    cancel: Option<Arc<CancelFlag>>,
    /// Whether it counts in the env's stats (asks do, lookups do not).
    counted: bool,
    _reply: PhantomData<fn() -> R>,
}

impl<R> Ask<R> {
    fn failed(error: RpcError) -> Self {
        Self {
            state: AskState::Failed(error),
            timer: None,
            deadline: None,
            timeout: Duration::ZERO,
            endpoint: "".into(),
            env: Weak::new(),
            cancel: None,
            counted: false,
            _reply: PhantomData,
        }
    }

    /// Stops waiting: the endpoint sees its call context cancelled; a late reply is dropped.
    pub fn abort(self) {}

    fn timed_out(&self) -> RpcError {
        RpcError::TimedOut {
            after: self.timeout,
            endpoint: self.endpoint.to_string(),
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> Future for Ask<R> {
    type Output = Result<R, RpcError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let result = match &mut this.state {
                AskState::Done => panic!("Ask polled after it completed"),
                AskState::Failed(_) => match std::mem::replace(&mut this.state, AskState::Done) {
                    AskState::Failed(e) => Err(e),
                    _ => unreachable!(),
                },
                AskState::Local(waiter) => match Pin::new(waiter).poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(value))) => downcast::<R>(value),
                    Poll::Ready(Some(Err(e))) => Err(e),
                    Poll::Ready(None) => Err(RpcError::EndpointStopped(this.endpoint.to_string())),
                },
                AskState::Queued(waiter) => match Pin::new(waiter).poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok((call, guard)))) => {
                        this.state = AskState::Sent(call, Some(guard));
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => Err(e),
                    Poll::Ready(None) => Err(RpcError::EnvStopped),
                },
                AskState::Sent(call, guard) => match Pin::new(call).poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(result) => {
                        let client = guard.as_ref().map(|g| g.client.clone());
                        // The call was sent with the ask's timeout, so the connection may time
                        // it out before our own timer fires: the endpoint is still working on
                        // it then, and must hear of the cancel like after our timer.
                        let timed_out = matches!(result, Err(rpc_proto::RpcError::TimedOut { .. }));
                        if let Some(g) = guard.as_mut().filter(|_| !timed_out) {
                            g.armed = false;
                        }
                        self::reply::<R>(result, &this.env, client, &this.endpoint, this.timeout)
                    }
                },
            };
            this.state = AskState::Done;
            if let Some(env) = this.env.upgrade().filter(|_| this.counted) {
                env.stats.answered(result.is_ok());
            }
            return Poll::Ready(result);
        }
        // A sent call is timed out by its connection (at the same deadline); until then,
        // our own timer does it.
        let waiting_here = !matches!(this.state, AskState::Sent(..));
        if let (None, true, Some(deadline)) = (&this.timer, waiting_here, this.deadline) {
            if let Some(env) = this.env.upgrade() {
                this.timer = Some(env.rt.new_timer(deadline));
            }
        }
        if this
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
        {
            let error = this.timed_out();
            if let Some(cancel) = &this.cancel {
                cancel.cancel();
            }
            this.state = AskState::Done; // drops the call: it is forgotten, a cancel is sent
            if let Some(env) = this.env.upgrade().filter(|_| this.counted) {
                env.stats.answered(false);
            }
            return Poll::Ready(Err(error));
        }
        Poll::Pending
    }
}

impl<R> Drop for Ask<R> {
    fn drop(&mut self) {
        if matches!(self.state, AskState::Done) {
            return;
        }
        if let Some(cancel) = &self.cancel {
            cancel.cancel();
        }
        // Dropped before it resolved (even if it had already failed): a failed ask.
        if let Some(env) = self.env.upgrade().filter(|_| self.counted) {
            env.stats.answered(false);
        }
    }
}

impl<R> fmt::Debug for Ask<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ask")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn downcast<R: 'static>(value: Box<dyn Any + Send>) -> Result<R, RpcError> {
    value.downcast::<R>().map(|b| *b).map_err(|_| {
        RpcError::Serialization(
            format!("the local reply is not a {}", std::any::type_name::<R>()).into(),
        )
    })
}

fn reply<R: DeserializeOwned>(
    result: Result<Bytes, rpc_proto::RpcError>,
    env: &Weak<EnvInner>,
    client: Option<TransportClient>,
    endpoint: &str,
    timeout: Duration,
) -> Result<R, RpcError> {
    match result {
        Ok(bytes) => with_binding(env, client, || decode_payload::<R>(&bytes))
            .map_err(|e| RpcError::Serialization(e.to_string().into())),
        Err(rpc_proto::RpcError::Remote(message)) => Err(from_remote(&message, endpoint)),
        Err(rpc_proto::RpcError::AuthenticationRequired(remote)) => Err(RpcError::Security {
            endpoint: endpoint.to_owned(),
            cause: SecurityError::AuthenticationRequired {
                remote: remote.to_string(),
            },
        }),
        Err(rpc_proto::RpcError::TimedOut { .. }) => Err(RpcError::TimedOut {
            after: timeout,
            endpoint: endpoint.to_owned(),
        }),
        Err(rpc_proto::RpcError::Disconnected(cause)) => {
            if env.upgrade().is_none_or(|e| e.is_stopped()) {
                Err(RpcError::EnvStopped)
            } else {
                Err(RpcError::Disconnected {
                    peer: endpoint.to_owned(),
                    cause,
                })
            }
        }
        // Refused because its connection had closed: the connection's end is why.
        Err(rpc_proto::RpcError::NotSent(rpc_proto::CallError::Closed)) => {
            if env.upgrade().is_none_or(|e| e.is_stopped()) {
                return Err(RpcError::EnvStopped);
            }
            Err(RpcError::Disconnected {
                peer: endpoint.to_owned(),
                cause: client
                    .and_then(|c| c.close_reason())
                    .unwrap_or(rpc_proto::ConnectionError::LocallyClosed),
            })
        }
        Err(rpc_proto::RpcError::NotSent(e)) => Err(RpcError::NotSent(e)),
        Err(other) => Err(RpcError::Remote(other.to_string().into())),
    }
}
