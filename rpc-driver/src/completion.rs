//! A one-shot completion slot: how a pending call's result crosses from the driver task to
//! the future the caller awaits.
//!
//! Exactly one of three things happens to a slot: the completer delivers a value, the
//! completer is dropped without one (the waiter sees `None`), or the waiter goes away first
//! (the completer's value is handed back). Loom models in `tests/loom_completion.rs` check
//! these races.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{lock, Arc, Mutex};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    completer_gone: bool,
    waiter_gone: bool,
}

/// Creates a connected completer and waiter.
pub fn pair<T>() -> (Completer<T>, Waiter<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        completer_gone: false,
        waiter_gone: false,
    }));
    (
        Completer {
            slot: Some(slot.clone()),
        },
        Waiter { slot },
    )
}

/// The sending half: completes the call once.
pub struct Completer<T> {
    slot: Option<Arc<Mutex<Slot<T>>>>,
}

impl<T> Completer<T> {
    /// Delivers `value`, waking the waiter. Gives the value back if the waiter is gone.
    pub fn complete(mut self, value: T) -> Result<(), T> {
        let slot = self.slot.take().expect("a completer completes once");
        let waker = {
            let mut s = lock(&slot);
            s.completer_gone = true;
            if s.waiter_gone {
                return Err(value);
            }
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the waiter has gone away (the caller dropped its future).
    pub fn is_abandoned(&self) -> bool {
        self.slot.as_ref().is_none_or(|slot| lock(slot).waiter_gone)
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let waker = {
                let mut s = lock(&slot);
                s.completer_gone = true;
                s.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// The receiving half: a future of the value, or `None` if the completer was dropped without
/// one.
pub struct Waiter<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Waiter<T> {
    /// Takes the value if it has arrived, without waiting.
    pub fn try_take(&mut self) -> Option<T> {
        lock(&self.slot).value.take()
    }
}

impl<T> Future for Waiter<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.slot);
        if let Some(value) = s.value.take() {
            return Poll::Ready(Some(value));
        }
        if s.completer_gone {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Waiter<T> {
    fn drop(&mut self) {
        let value = {
            let mut s = lock(&self.slot);
            s.waiter_gone = true;
            s.waker = None;
            s.value.take()
        };
        // Dropped outside the lock: a value may own handles whose drop locks other state.
        drop(value);
    }
}

impl<T> std::fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").finish_non_exhaustive()
    }
}
