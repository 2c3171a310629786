//! Answering an ask: the call context.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::time::Instant;

use rpc_proto::{encode_payload, RpcAddress};
use serde::Serialize;

use super::cancel::{CancelFlag, Cancelled};
use super::error::RpcError;
use super::lifecycle::{stopped_or_gone, StopFlag};
use crate::completion::Completer;
use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::{lock, Arc, Mutex};
use crate::transport::RpcResponder;

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// A local reply, not serialized.
pub(crate) type LocalReply = Result<Box<dyn Any + Send>, RpcError>;

/// Where an ask's answer goes.
pub(crate) enum ReplyTo {
    /// A caller in this process: the value itself.
    Local(Completer<LocalReply>),
    /// A caller across a connection: the serialized value. The permit counts the ask
    /// against the env's pending asks until it is answered (or dropped).
    Remote(RpcResponder, AskPermit),
}

/// One ask from another env counted against
/// [`RpcEnvConfig::max_pending_asks`](crate::env::config::RpcEnvConfig::max_pending_asks); released
/// when dropped (with the answer, or the unanswered call).
pub(crate) struct AskPermit {
    pending: Arc<AtomicUsize>,
}

impl AskPermit {
    /// A permit if fewer than `max` asks are pending; O(1).
    pub(crate) fn try_acquire(pending: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self {
                pending: pending.clone(),
            })
    }
}

impl Drop for AskPermit {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ReplyTo {
    fn fail(self, message: String) {
        match self {
            Self::Local(c) => {
                // The same mapping a remote caller applies, so both see the same error.
                let _ = c.complete(Err(super::error::from_remote(&message, "")));
            }
            Self::Remote(r, _permit) => {
                let _ = r.fail(&message);
            }
        }
    }
}

struct CallInner {
    reply: Mutex<Option<ReplyTo>>,
    sender: Option<RpcAddress>,
    deadline: Option<Instant>,
    cancel: Arc<CancelFlag>,
    endpoint: String,
    /// The env's stop flag: a local caller whose env is stopping hears that.
    stopped: Weak<StopFlag>,
}

impl Drop for CallInner {
    fn drop(&mut self) {
        let reply = match self.reply.get_mut() {
            Ok(r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match reply {
            // A local caller is in the same env: if that env is shutting down, that is why.
            Some(ReplyTo::Local(c)) if stopped_or_gone(&self.stopped) => {
                let _ = c.complete(Err(RpcError::EnvStopped));
            }
            Some(reply) => reply.fail(format!(
                "endpoint {} dropped the call without replying",
                self.endpoint
            )),
            None => {}
        }
    }
}

/// Answers one ask: Spark's `RpcCallContext`.
///
/// Clone it, keep it, answer it later from any task: the first answer counts, the rest are
/// ignored. When the last clone is dropped unanswered, the caller fails at once instead of
/// waiting for its timeout (with [`RpcError::EnvStopped`] if it is a local caller whose env
/// is shutting down, else with [`RpcError::Remote`]).
pub struct RpcCallContext<R> {
    inner: Arc<CallInner>,
    _reply: PhantomData<fn(R)>,
}

impl<R> Clone for RpcCallContext<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _reply: PhantomData,
        }
    }
}

impl<R: Serialize + Send + 'static> RpcCallContext<R> {
    pub(crate) fn new(
        reply: ReplyTo,
        sender: Option<RpcAddress>,
        deadline: Option<Instant>,
        cancel: Option<Arc<CancelFlag>>,
        endpoint: &str,
        stopped: &Weak<StopFlag>,
    ) -> Self {
        Self {
            inner: Arc::new(CallInner {
                reply: Mutex::new(Some(reply)),
                sender,
                deadline,
                // A context made without a flag (its caller cannot cancel) gets one that is
                // never raised.
                cancel: cancel.unwrap_or_default(),
                endpoint: endpoint.to_owned(),
                stopped: stopped.clone(),
            }),
            _reply: PhantomData,
        }
    }

    fn take(&self) -> Option<ReplyTo> {
        lock(&self.inner.reply).take()
    }

    /// Answers the ask. Returns `false` if it was already answered.
    pub fn reply(&self, value: R) -> bool {
        let Some(to) = self.take() else { return false };
        match to {
            ReplyTo::Local(c) => {
                let _ = c.complete(Ok(Box::new(value)));
            }
            ReplyTo::Remote(r, _permit) => match encode_payload(&value) {
                Ok(bytes) => {
                    let _ = r.reply(bytes.into());
                }
                Err(e) => {
                    let _ = r.fail(&format!("the reply could not be serialized: {e}"));
                }
            },
        }
        true
    }

    /// Fails the ask: the caller receives `error`'s text as [`RpcError::Remote`]. Returns
    /// `false` if it was already answered.
    pub fn send_failure(&self, error: impl fmt::Display) -> bool {
        let Some(to) = self.take() else { return false };
        to.fail(error.to_string());
        true
    }

    /// Whether it has been answered.
    pub fn is_answered(&self) -> bool {
        lock(&self.inner.reply).is_none()
    }

    /// The address of the caller's env, as Spark's `RpcCallContext.senderAddress`: a local
    /// caller's is this env's own address; `None` when the caller's env is in client mode
    /// (it has no address).
    pub fn sender_address(&self) -> Option<&RpcAddress> {
        self.inner.sender.as_ref()
    }

    /// When the caller stops waiting, if it said (the remaining time travels with the ask).
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Whether the caller has stopped waiting (dropped or aborted its ask).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the caller stops waiting.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled::new(self.inner.cancel.clone())
    }
}

impl<R> fmt::Debug for RpcCallContext<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcCallContext")
            .field("endpoint", &self.inner.endpoint)
            .field("sender", &self.inner.sender)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Wake, Waker};

    use super::*;
    use crate::completion::{self, Waiter};

    struct Noop;

    impl Wake for Noop {
        fn wake(self: crate::sync::unmodeled::Arc<Self>) {}
    }

    /// A waker that is not `will_wake` any other.
    fn fresh_waker() -> Waker {
        Waker::from(Arc::new(Noop))
    }

    fn context(flag: &Arc<CancelFlag>) -> RpcCallContext<()> {
        let (completer, _waiter) = completion::pair();
        RpcCallContext::new(
            ReplyTo::Local(completer),
            None,
            None,
            Some(flag.clone()),
            "e",
            &Weak::new(),
        )
    }

    #[test]
    fn polling_cancelled_again_and_again_keeps_one_waker() {
        let flag = Arc::new(CancelFlag::default());
        let call = context(&flag);
        let mut cancelled = std::pin::pin!(call.cancelled());
        for _ in 0..1_000_000 {
            let waker = fresh_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(cancelled.as_mut().poll(&mut cx).is_pending());
            assert!(flag.waiting() <= 1, "{} wakers stored", flag.waiting());
        }
        flag.cancel();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(cancelled.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_fresh_cancelled_per_loop_turn_leaves_no_waker_behind() {
        // A handler looping on `select!` over `call.cancelled()` makes one per turn.
        let flag = Arc::new(CancelFlag::default());
        let call = context(&flag);
        for _ in 0..1_000_000 {
            let mut cancelled = std::pin::pin!(call.cancelled());
            let waker = fresh_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(cancelled.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(flag.waiting(), 0);
    }

    #[test]
    fn cancel_wakes_every_waiting_task() {
        use crate::sync::atomic::AtomicUsize;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: crate::sync::unmodeled::Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(CancelFlag::default());
        let call = context(&flag);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = Box::pin(call.cancelled());
        let mut second = Box::pin(call.cancelled());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        flag.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(first.as_mut().poll(&mut cx).is_ready());
        assert!(second.as_mut().poll(&mut cx).is_ready());
        assert_eq!(flag.waiting(), 0);
    }

    /// A call context for a local caller, with the env's stop flag `stopped`; the caller's
    /// end.
    fn local_call(stopped: &Weak<StopFlag>) -> (RpcCallContext<u32>, Waiter<LocalReply>) {
        let (completer, waiter) = completion::pair();
        let call = RpcCallContext::new(ReplyTo::Local(completer), None, None, None, "e", stopped);
        (call, waiter)
    }

    fn resolved(mut waiter: Waiter<LocalReply>) -> Option<LocalReply> {
        waiter.try_take()
    }

    #[test]
    fn the_first_answer_counts_and_the_rest_are_ignored() {
        let (call, waiter) = local_call(&Weak::new());
        let other = call.clone();
        assert!(!call.is_answered());
        assert!(other.reply(1));
        assert!(call.is_answered());
        assert!(!call.reply(2));
        assert!(!call.send_failure("too late"));
        drop((call, other));
        match resolved(waiter) {
            Some(Ok(value)) => assert_eq!(*value.downcast::<u32>().unwrap(), 1),
            _ => panic!("expected the first reply"),
        }
    }

    #[test]
    fn dropping_the_last_clone_unanswered_fails_the_caller_at_once() {
        let flag = Arc::new(StopFlag::default());
        let (call, waiter) = local_call(&Arc::downgrade(&flag));
        let other = call.clone();
        drop(call);
        drop(other);
        match resolved(waiter) {
            Some(Err(RpcError::Remote(message))) => {
                assert!(
                    message.contains("dropped the call without replying"),
                    "{message}"
                )
            }
            _ => panic!("expected a remote failure"),
        }
    }

    #[test]
    fn a_local_caller_whose_env_stops_hears_that_the_env_stopped() {
        let flag = Arc::new(StopFlag::default());
        let (call, waiter) = local_call(&Arc::downgrade(&flag));
        assert!(!flag.stop());
        drop(call);
        assert!(matches!(resolved(waiter), Some(Err(RpcError::EnvStopped))));
        // An env that is gone is as good as stopped.
        let (call, waiter) = local_call(&Weak::new());
        drop(call);
        assert!(matches!(resolved(waiter), Some(Err(RpcError::EnvStopped))));
    }
}
