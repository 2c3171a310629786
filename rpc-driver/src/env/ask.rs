//! The `Ask` future: an ask's reply, resolving exactly once to the reply or why there is
//! none, whether the endpoint is local, behind an outbox, or across a connection.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rpc_proto::decode_payload;
use serde::de::DeserializeOwned;

use super::binding::{with_binding, BoundEnv};
use super::call::LocalReply;
use super::cancel::{CancelFlag, CancelOnDrop};
use super::error::{from_remote, RpcError};
use super::outbox::Sent;
use super::route::detached;
use crate::completion::Waiter;
use crate::runtime::AsyncTimer;
use crate::security::SecurityError;
use crate::sync::unmodeled::Arc as StdArc;
use crate::sync::Arc;
use crate::transport::{RpcCall, TransportClient};

/// Where an ask is.
pub(crate) enum AskState {
    /// Failed before it was sent.
    Failed(RpcError),
    /// Posted to a local endpoint: the value itself comes back.
    Local(Waiter<LocalReply>),
    /// Queued in an outbox until its connection is up.
    Queued(Waiter<Sent>),
    /// Written on a connection; the guard cancels it if it is dropped unanswered.
    Sent(RpcCall, Option<CancelOnDrop>),
    /// Resolved.
    Done,
}

/// The reply to an ask: resolves exactly once, to the reply or why there is none.
#[must_use = "an ask's reply is only seen by awaiting it"]
pub struct Ask<R> {
    pub(crate) state: AskState,
    /// Made only while the ask waits in this process (for a local endpoint, or for a
    /// connection): once sent, the connection times the call out at the same deadline.
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    /// `None` for a timeout past the clock's range: no timer at all.
    deadline: Option<std::time::Instant>,
    timeout: Duration,
    /// The endpoint, as errors name it.
    pub(crate) endpoint: StdArc<str>,
    env: BoundEnv,
    /// Raised if the caller stops waiting for a local endpoint's reply.
    pub(crate) cancel: Option<Arc<CancelFlag>>,
    /// Whether it counts in the env's stats (asks do, lookups do not).
    counted: bool,
    _reply: PhantomData<fn() -> R>,
}

impl<R> Ask<R> {
    /// An ask of `endpoint` from `env` that waits until `deadline` (`None`: for ever), not
    /// yet started: set its [`state`](Self::state). `counted` asks count in the env's
    /// stats.
    pub(crate) fn new(
        env: BoundEnv,
        endpoint: StdArc<str>,
        deadline: Option<std::time::Instant>,
        timeout: Duration,
        counted: bool,
    ) -> Self {
        Self {
            state: AskState::Done,
            timer: None,
            deadline,
            timeout,
            endpoint,
            env,
            cancel: None,
            counted,
            _reply: PhantomData,
        }
    }

    /// An ask that failed before it started.
    pub(crate) fn failed(error: RpcError) -> Self {
        Self {
            state: AskState::Failed(error),
            timer: None,
            deadline: None,
            timeout: Duration::ZERO,
            endpoint: "".into(),
            env: detached(),
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
                        let client = guard.as_ref().map(|g| g.client().clone());
                        // The call was sent with the ask's timeout, so the connection may time
                        // it out before our own timer fires: the endpoint is still working on
                        // it then, and must hear of the cancel like after our timer.
                        let timed_out =
                            matches!(result, Err(rpc_proto::RequestError::TimedOut { .. }));
                        if let Some(g) = guard.as_mut().filter(|_| !timed_out) {
                            g.disarm();
                        }
                        reply::<R>(result, &this.env, client, &this.endpoint, this.timeout)
                    }
                },
            };
            this.state = AskState::Done;
            if let Some(env) = this.env.upgrade().filter(|_| this.counted) {
                env.stats().answered(result.is_ok());
            }
            return Poll::Ready(result);
        }
        // A sent call is timed out by its connection (at the same deadline); until then,
        // our own timer does it.
        let waiting_here = !matches!(this.state, AskState::Sent(..));
        if let (None, true, Some(deadline)) = (&this.timer, waiting_here, this.deadline) {
            if let Some(env) = this.env.upgrade() {
                this.timer = Some(env.runtime().new_timer(deadline));
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
                env.stats().answered(false);
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
            env.stats().answered(false);
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
    result: Result<Bytes, rpc_proto::RequestError>,
    env: &BoundEnv,
    client: Option<TransportClient>,
    endpoint: &str,
    timeout: Duration,
) -> Result<R, RpcError> {
    match result {
        Ok(bytes) => with_binding(env, client, || decode_payload::<R>(&bytes))
            .map_err(|e| RpcError::Serialization(e.to_string().into())),
        Err(rpc_proto::RequestError::Remote(message)) => Err(from_remote(&message, endpoint)),
        Err(rpc_proto::RequestError::AuthenticationRequired(remote)) => Err(RpcError::Security {
            endpoint: endpoint.to_owned(),
            cause: SecurityError::AuthenticationRequired {
                remote: remote.to_string(),
            },
        }),
        Err(rpc_proto::RequestError::TimedOut { .. }) => Err(RpcError::TimedOut {
            after: timeout,
            endpoint: endpoint.to_owned(),
        }),
        Err(rpc_proto::RequestError::Disconnected(cause)) => {
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
        Err(rpc_proto::RequestError::NotSent(rpc_proto::CallError::Closed)) => {
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
        Err(rpc_proto::RequestError::NotSent(e)) => Err(RpcError::NotSent(e)),
        Err(other) => Err(RpcError::Remote(other.to_string().into())),
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Instant;

    use super::super::route::fake::FakeEnv;
    use super::*;
    use crate::completion::{self, Completer};
    use crate::sync::unmodeled::Weak;

    /// A local ask of endpoint `e` from `env`, waiting for the reply `completer` gives, with
    /// the flag its handler would watch.
    fn local_ask(
        env: &Arc<FakeEnv>,
        counted: bool,
    ) -> (Ask<u32>, Completer<LocalReply>, Arc<CancelFlag>) {
        let weak: Weak<FakeEnv> = Arc::downgrade(env);
        let timeout = Duration::from_secs(5);
        let deadline = Some(Instant::now() + timeout);
        let mut ask = Ask::new(
            weak,
            "rpc://e@driver:7077".into(),
            deadline,
            timeout,
            counted,
        );
        let (completer, waiter) = completion::pair();
        let cancel = Arc::new(CancelFlag::default());
        ask.state = AskState::Local(waiter);
        ask.cancel = Some(cancel.clone());
        if counted {
            env.stats.asked();
        }
        (ask, completer, cancel)
    }

    fn poll(ask: &mut Ask<u32>) -> Poll<Result<u32, RpcError>> {
        Pin::new(ask).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// (in flight, failed) as the env reports them.
    fn counts(env: &FakeEnv) -> (u64, u64) {
        let stats = env.stats.snapshot(0, 0, 0);
        (stats.in_flight, stats.failed)
    }

    #[test]
    fn an_ask_resolves_once_with_its_reply() {
        let env = FakeEnv::new(None);
        let (mut ask, completer, cancel) = local_ask(&env, true);
        assert!(poll(&mut ask).is_pending());
        assert_eq!(counts(&env), (1, 0));
        assert!(completer.complete(Ok(Box::new(7u32))).is_ok());
        assert!(matches!(poll(&mut ask), Poll::Ready(Ok(7))));
        assert_eq!(counts(&env), (0, 0), "answered once, as a success");
        // Firing the timer after the reply changes nothing; neither does dropping it.
        env.clock.fire();
        drop(ask);
        assert_eq!(counts(&env), (0, 0));
        assert!(!cancel.is_cancelled(), "an answered ask is not cancelled");
    }

    #[test]
    fn an_ask_times_out_once_and_its_handler_hears_of_it() {
        let env = FakeEnv::new(None);
        let (mut ask, completer, cancel) = local_ask(&env, true);
        assert!(poll(&mut ask).is_pending());
        assert!(poll(&mut ask).is_pending());
        assert_eq!(
            env.clock.timers.load(crate::sync::atomic::Ordering::SeqCst),
            1
        );
        env.clock.fire();
        match poll(&mut ask) {
            Poll::Ready(Err(RpcError::TimedOut { after, endpoint })) => {
                assert_eq!(after, Duration::from_secs(5));
                assert_eq!(endpoint, "rpc://e@driver:7077");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(cancel.is_cancelled(), "the handler sees its call cancelled");
        assert_eq!(counts(&env), (0, 1), "answered once, as a failure");
        // The late reply finds nobody waiting, and is not counted again.
        assert!(completer.complete(Ok(Box::new(7u32))).is_err());
        drop(ask);
        assert_eq!(counts(&env), (0, 1));
    }

    #[test]
    fn dropping_an_ask_cancels_it_and_counts_one_failure() {
        let env = FakeEnv::new(None);
        let (mut ask, completer, cancel) = local_ask(&env, true);
        assert!(poll(&mut ask).is_pending());
        ask.abort();
        assert!(cancel.is_cancelled());
        assert!(completer.is_abandoned(), "the reply has nowhere to go");
        assert_eq!(counts(&env), (0, 1));
    }

    #[test]
    fn an_ask_whose_endpoint_drops_the_reply_fails_as_stopped() {
        let env = FakeEnv::new(None);
        let (mut ask, completer, _cancel) = local_ask(&env, true);
        drop(completer);
        match poll(&mut ask) {
            Poll::Ready(Err(RpcError::EndpointStopped(endpoint))) => {
                assert_eq!(endpoint, "rpc://e@driver:7077")
            }
            other => panic!("expected EndpointStopped, got {other:?}"),
        }
        assert_eq!(counts(&env), (0, 1));
    }

    #[test]
    fn a_failed_ask_resolves_to_its_error_once() {
        let mut ask = Ask::<u32>::failed(RpcError::EnvStopped);
        assert!(matches!(
            poll(&mut ask),
            Poll::Ready(Err(RpcError::EnvStopped))
        ));
        let resolved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(&mut ask)));
        assert!(resolved.is_err(), "an ask is not polled after it resolved");
    }

    #[test]
    fn a_lookup_is_not_counted_as_an_ask() {
        let env = FakeEnv::new(None);
        let (mut ask, completer, _cancel) = local_ask(&env, false);
        drop(completer);
        assert!(poll(&mut ask).is_ready());
        let (mut other, _completer, _cancel) = local_ask(&env, false);
        assert!(poll(&mut other).is_pending());
        drop(other);
        assert_eq!(counts(&env), (0, 0));
    }

    #[test]
    fn an_ask_outliving_its_env_still_resolves() {
        let env = FakeEnv::new(None);
        let (mut ask, completer, _cancel) = local_ask(&env, true);
        drop(env);
        assert!(completer.complete(Ok(Box::new(1u32))).is_ok());
        assert!(matches!(poll(&mut ask), Poll::Ready(Ok(1))));
    }
}
