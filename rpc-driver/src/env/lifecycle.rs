//! The env's lifecycle signals: whether it is stopping, and latches its shutdown waits on.

use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{lock, Mutex};
use crate::wait_list::{WaitKey, WaitList};

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// Set once the env starts shutting down. The env holds it; what outlives a call into the
/// env (call contexts, asks) holds it weakly, and takes a flag that is gone for a stopped
/// env.
#[derive(Default)]
pub(crate) struct StopFlag(AtomicBool);

impl StopFlag {
    /// Raises the flag; whether it was already raised.
    pub(crate) fn stop(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether the flag is raised.
    pub(crate) fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Whether the env that held `flag` is stopping or gone.
pub(crate) fn stopped_or_gone(flag: &Weak<StopFlag>) -> bool {
    flag.upgrade().is_none_or(|f| f.is_stopped())
}

/// A flag with waiters.
#[derive(Default)]
pub(crate) struct Latch {
    state: Mutex<(bool, WaitList)>,
}

impl Latch {
    pub(crate) fn open(&self) {
        let wakers = {
            let mut s = lock(&self.state);
            s.0 = true;
            s.1.take_all()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Resolves once the latch is open. However often it is polled, the wait stores one
    /// waker, and none once dropped.
    pub(crate) async fn wait(&self) {
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

#[cfg(test)]
mod latch_tests {
    use std::future::Future;
    use std::task::{Context, Wake};

    use super::*;
    use crate::sync::Arc;

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
