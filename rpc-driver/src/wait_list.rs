//! Tasks waiting for a condition that another task makes true (tokio's `Notify` pattern,
//! without the runtime).
//!
//! A [`WaitList`] lives inside the state its condition is about, behind that state's mutex,
//! so checking the condition and registering a waker happen under one lock and no wake-up is
//! lost. Each waiting future owns one [`WaitKey`]: its polls replace the waker stored there
//! (cloning only when the waker changed) and its drop frees it. The list is therefore as long
//! as the number of futures waiting at once, however often each is polled: a handler looping
//! on `select!` over such a future, with a fresh one each turn or one pinned future, keeps
//! memory constant.

use std::task::Waker;

/// The slot a waiting future owns in a [`WaitList`]; give it back with
/// [`WaitList::remove`] when the future is dropped.
#[derive(Debug, Default)]
pub(crate) struct WaitKey(Option<usize>);

/// Wakers of the tasks waiting for one condition, one slot per waiting future.
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    slots: Vec<Option<Waker>>,
    /// Slots no future owns, reused first.
    free: Vec<usize>,
    /// Slots holding a waker.
    stored: usize,
}

impl WaitList {
    /// Stores `waker` in the slot `key` owns, taking a slot first if it owns none.
    pub(crate) fn register(&mut self, key: &mut WaitKey, waker: &Waker) {
        let index = match key.0 {
            Some(index) => index,
            None => {
                let index = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                key.0 = Some(index);
                index
            }
        };
        match &mut self.slots[index] {
            Some(stored) => {
                if !stored.will_wake(waker) {
                    stored.clone_from(waker);
                }
            }
            slot => {
                *slot = Some(waker.clone());
                self.stored += 1;
            }
        }
    }

    /// Frees the slot `key` owns, with its waker if one is stored.
    pub(crate) fn remove(&mut self, key: &mut WaitKey) {
        if let Some(index) = key.0.take() {
            if self.slots[index].take().is_some() {
                self.stored -= 1;
            }
            self.free.push(index);
        }
    }

    /// Takes every stored waker, to be woken (after the lock is released where possible).
    /// The slots stay owned by their futures, which store a waker again if they wait on.
    #[must_use = "the wakers must be woken"]
    pub(crate) fn take_all(&mut self) -> Vec<Waker> {
        if self.stored == 0 {
            return Vec::new();
        }
        self.stored = 0;
        self.slots.iter_mut().filter_map(Option::take).collect()
    }

    /// Wakes every stored waker now.
    pub(crate) fn wake_all(&mut self) {
        if self.stored > 0 {
            self.take_all().into_iter().for_each(Waker::wake);
        }
    }

    /// Whether no waker is stored.
    pub(crate) fn is_empty(&self) -> bool {
        self.stored == 0
    }

    /// How many wakers are stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.stored
    }
}

#[cfg(test)]
mod tests {
    use crate::sync::atomic::{AtomicUsize, Ordering};
    use crate::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_key_holds_one_waker_the_last_registered() {
        let mut list = WaitList::default();
        let mut key = WaitKey::default();
        let (first, waker) = counting();
        list.register(&mut key, &waker);
        let (last, waker) = counting();
        for _ in 0..1000 {
            list.register(&mut key, &waker);
        }
        assert_eq!(list.len(), 1);
        assert_eq!(list.slots.len(), 1);
        list.wake_all();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(last.0.load(Ordering::SeqCst), 1);
        assert!(list.is_empty());
    }

    #[test]
    fn every_key_is_woken_once_and_slots_are_reused() {
        let mut list = WaitList::default();
        let (count, waker) = counting();
        let mut keys: Vec<WaitKey> = (0..3).map(|_| WaitKey::default()).collect();
        for key in &mut keys {
            list.register(key, &waker);
        }
        assert_eq!(list.take_all().len(), 3);
        assert!(list.take_all().is_empty());
        // Woken keys keep their slots and register again in them.
        list.register(&mut keys[1], &waker);
        assert_eq!(list.len(), 1);
        for key in &mut keys {
            list.remove(key);
        }
        assert!(list.is_empty());
        let mut again = WaitKey::default();
        list.register(&mut again, &waker);
        assert_eq!(list.slots.len(), 3, "freed slots are reused");
        list.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        list.remove(&mut again);
        list.remove(&mut again);
        assert!(list.is_empty());
    }
}
