//! Cancelling asks: the guard that tells a peer its caller stopped waiting, the flag a
//! handler hears it by, and the table the env finds those flags in.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use rpc_proto::{EnvelopeKind, EnvelopePrefix, RequestId};
use rustc_hash::FxHashMap;

use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{ConnectionId, TransportClient};
use crate::wait_list::{WaitKey, WaitList};

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// Set when the caller of an ask stops waiting (dropped or aborted its future, or its
/// connection closed).
#[derive(Default)]
pub(crate) struct CancelFlag {
    cancelled: AtomicBool,
    /// One slot per [`Cancelled`] future waiting.
    waiters: Mutex<WaitList>,
    /// Where the env finds it by connection and request id; removed from there when the
    /// flag goes (when the call context does), so the env holds only live calls' flags.
    registration: Option<(Weak<CancelRegistry>, ConnectionId, RequestId)>,
}

impl Drop for CancelFlag {
    fn drop(&mut self) {
        if let Some((registry, connection, request)) = &self.registration {
            if let Some(registry) = registry.upgrade() {
                registry.forget(*connection, *request);
            }
        }
    }
}

impl CancelFlag {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let wakers = lock(&self.waiters).take_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Wakers stored for tasks waiting on the flag.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.waiters).len()
    }
}

/// The cancel flags of asks being handled, by connection, then by the peer's request id
/// (SipHash: the peer chooses those). A flag leaves when its call context goes, and a
/// connection's flags are raised when it closes.
#[derive(Default)]
pub(crate) struct CancelRegistry {
    calls: Mutex<FxHashMap<ConnectionId, HashMap<RequestId, Weak<CancelFlag>>>>,
}

impl CancelRegistry {
    /// A flag for ask `request` on `connection`, found by them until it is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        connection: ConnectionId,
        request: RequestId,
    ) -> Arc<CancelFlag> {
        let cancel = Arc::new(CancelFlag {
            cancelled: AtomicBool::new(false),
            waiters: Mutex::default(),
            registration: Some((Arc::downgrade(self), connection, request)),
        });
        lock(&self.calls)
            .entry(connection)
            .or_default()
            .insert(request, Arc::downgrade(&cancel));
        cancel
    }

    /// The flag of ask `request` on `connection` is gone (its call context was dropped).
    fn forget(&self, connection: ConnectionId, request: RequestId) {
        let mut cancels = lock(&self.calls);
        if let Some(calls) = cancels.get_mut(&connection) {
            calls.remove(&request);
            if calls.is_empty() {
                cancels.remove(&connection);
            }
        }
    }

    /// Takes the cancel flag of ask `request` on `connection`, if its call is still live.
    pub(crate) fn take(
        &self,
        connection: ConnectionId,
        request: RequestId,
    ) -> Option<Arc<CancelFlag>> {
        let flag = lock(&self.calls)
            .get_mut(&connection)
            .and_then(|calls| calls.remove(&request));
        // Upgraded (and maybe dropped) outside the lock: a dropped flag takes it to forget itself.
        flag.and_then(|f| f.upgrade())
    }

    /// Connection `connection` closed: asks that came on it have no caller any more, and
    /// their handlers hear of it through `cancelled()` (raised outside the lock).
    pub(crate) fn connection_closed(&self, connection: ConnectionId) {
        let orphaned = lock(&self.calls).remove(&connection);
        for flag in orphaned.into_iter().flat_map(HashMap::into_values) {
            if let Some(flag) = flag.upgrade() {
                flag.cancel();
            }
        }
    }

    /// Connections with live flags.
    #[cfg(test)]
    fn connections(&self) -> usize {
        lock(&self.calls).len()
    }
}

/// Resolves when an ask's caller stops waiting; from
/// [`RpcCallContext::cancelled`](crate::env::call::RpcCallContext::cancelled).
///
/// Polling it again, from any task, replaces the waker it stored: one waker per `Cancelled`
/// however often it is polled, and none once it is dropped.
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled {
    flag: Arc<CancelFlag>,
    key: WaitKey,
}

impl Cancelled {
    /// Waits on `flag`.
    pub(crate) fn new(flag: Arc<CancelFlag>) -> Self {
        Self {
            flag,
            key: WaitKey::default(),
        }
    }
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

/// Sends a `Cancel` to the peer when an ask sent on `client` is dropped before its reply.
pub(crate) struct CancelOnDrop {
    client: TransportClient,
    /// The header prefix the ask was sent with (sender and receiver).
    prefix: EnvelopePrefix,
    armed: bool,
    request: Option<RequestId>,
}

impl CancelOnDrop {
    /// A guard for the call sent on `client` as `request` (`None` if it was refused before
    /// being sent: nothing to cancel) with an envelope starting with `prefix`.
    pub(crate) fn new(
        client: TransportClient,
        prefix: EnvelopePrefix,
        request: Option<RequestId>,
    ) -> Self {
        Self {
            client,
            prefix,
            armed: true,
            request,
        }
    }

    /// The connection the ask was sent on.
    pub(crate) fn client(&self) -> &TransportClient {
        &self.client
    }

    /// The ask was answered: nothing to cancel.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
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

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;

    struct Count(crate::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: crate::sync::unmodeled::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn conn(n: u64) -> ConnectionId {
        ConnectionId::for_test(n)
    }

    fn request(n: u64) -> RequestId {
        RequestId(n)
    }

    #[test]
    fn a_registered_flag_is_found_once_by_connection_and_request() {
        let registry = Arc::new(CancelRegistry::default());
        let flag = registry.register(conn(1), request(7));
        assert!(
            registry.take(conn(2), request(7)).is_none(),
            "another connection"
        );
        assert!(
            registry.take(conn(1), request(8)).is_none(),
            "another request"
        );
        let found = registry.take(conn(1), request(7)).expect("registered");
        assert!(Arc::ptr_eq(&found, &flag));
        assert!(registry.take(conn(1), request(7)).is_none(), "taken once");
    }

    #[test]
    fn a_dropped_flag_leaves_the_registry() {
        let registry = Arc::new(CancelRegistry::default());
        let first = registry.register(conn(1), request(1));
        let second = registry.register(conn(1), request(2));
        drop(first);
        assert!(registry.take(conn(1), request(1)).is_none());
        assert_eq!(registry.connections(), 1);
        drop(second);
        assert_eq!(
            registry.connections(),
            0,
            "nothing kept for a connection without calls"
        );
    }

    #[test]
    fn closing_a_connection_raises_its_flags_only() {
        let registry = Arc::new(CancelRegistry::default());
        let on_closed = [
            registry.register(conn(1), request(1)),
            registry.register(conn(1), request(2)),
        ];
        let elsewhere = registry.register(conn(2), request(1));
        let count = Arc::new(Count(crate::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting = Box::pin(Cancelled::new(on_closed[0].clone()));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        registry.connection_closed(conn(1));
        assert!(on_closed.iter().all(|f| f.is_cancelled()));
        assert!(!elsewhere.is_cancelled());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the waiting task is woken"
        );
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        assert!(registry.take(conn(1), request(1)).is_none());
        assert!(registry.take(conn(2), request(1)).is_some());
    }
}
