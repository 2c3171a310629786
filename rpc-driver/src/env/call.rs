//! Answering an ask: the call context.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Weak;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use rpc_proto::{encode_payload, RequestId, RpcAddress};
use serde::Serialize;

use super::error::RpcError;
use super::EnvInner;
use crate::completion::Completer;
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{ConnectionId, RpcResponder};
use crate::wait_list::{WaitKey, WaitList};

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
/// [`RpcEnvConfig::max_pending_asks`](super::RpcEnvConfig::max_pending_asks); released
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
            ReplyTo::Local(c) => {
                // The same mapping a remote caller applies, so both see the same error.
                let _ = c.complete(Err(super::error::from_remote(&message, "")));
            }
            ReplyTo::Remote(r, _permit) => {
                let _ = r.fail(&message);
            }
        }
    }
}

/// Set when the caller of an ask stops waiting (dropped or aborted its future, or its
/// connection closed).
#[derive(Default)]
pub(crate) struct CancelFlag {
    cancelled: AtomicBool,
    /// One slot per [`Cancelled`] future waiting.
    waiters: Mutex<WaitList>,
    /// Where the env finds it by connection and request id; removed from there when the
    /// flag goes (when the call context does), so the env holds only live calls' flags.
    registration: Option<(Weak<EnvInner>, ConnectionId, RequestId)>,
}

impl Drop for CancelFlag {
    fn drop(&mut self) {
        if let Some((env, connection, request)) = &self.registration {
            if let Some(env) = env.upgrade() {
                env.forget_cancel(*connection, *request);
            }
        }
    }
}

impl CancelFlag {
    /// A flag the env finds by the `connection` and `request` id the ask came with.
    pub(crate) fn registered(
        env: Weak<EnvInner>,
        connection: ConnectionId,
        request: RequestId,
    ) -> Self {
        Self {
            cancelled: AtomicBool::new(false),
            waiters: Mutex::default(),
            registration: Some((env, connection, request)),
        }
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let wakers = lock(&self.waiters).take_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Wakers stored for tasks waiting on the flag.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.waiters).len()
    }
}

struct CallInner {
    reply: Mutex<Option<ReplyTo>>,
    sender: Option<RpcAddress>,
    deadline: Option<Instant>,
    cancel: Arc<CancelFlag>,
    endpoint: String,
    env: Weak<EnvInner>,
}

impl Drop for CallInner {
    fn drop(&mut self) {
        let reply = match self.reply.get_mut() {
            Ok(r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match reply {
            // A local caller is in the same env: if that env is shutting down, that is why.
            Some(ReplyTo::Local(c)) if self.env.upgrade().is_none_or(|e| e.is_stopped()) => {
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
        env: &Weak<EnvInner>,
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
                env: env.clone(),
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
        Cancelled {
            flag: self.inner.cancel.clone(),
            key: WaitKey::default(),
        }
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

/// Resolves when an ask's caller stops waiting; from [`RpcCallContext::cancelled`].
///
/// Polling it again, from any task, replaces the waker it stored: one waker per `Cancelled`
/// however often it is polled, and none once it is dropped.
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled {
    flag: Arc<CancelFlag>,
    key: WaitKey,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.flag.is_cancelled() {
            return Poll::Ready(());
        }
        let mut waiters = lock(&this.flag.waiters);
        // Checked again under the lock `cancel` takes: a cancel between the two checks has
        // not taken the wakers yet, so the one stored now is woken.
        if this.flag.is_cancelled() {
            waiters.remove(&mut this.key);
            return Poll::Ready(());
        }
        waiters.register(&mut this.key, cx.waker());
        Poll::Pending
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        lock(&self.flag.waiters).remove(&mut self.key);
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;
    use crate::completion;

    struct Noop;

    impl Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    /// A waker that is not `will_wake` any other.
    fn fresh_waker() -> Waker {
        Waker::from(std::sync::Arc::new(Noop))
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
        use std::sync::atomic::AtomicUsize;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(CancelFlag::default());
        let call = context(&flag);
        let count = std::sync::Arc::new(Count(AtomicUsize::new(0)));
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
}
