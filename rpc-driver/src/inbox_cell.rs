//! An inbox shared by the tasks that post into it and the one task that takes from it: the
//! waker hand-off behind each env endpoint's mailbox, apart from the env so that loom can
//! model it (`rpc-driver/tests/loom_inbox.rs`).

use std::future::poll_fn;
use std::task::{Poll, Waker};

use rpc_proto::{Inbox, InboxError, InboxItem};

use crate::sync::{lock, Mutex};

/// An [`Inbox`] behind a lock, with the waker of the task waiting in [`next`](Self::next):
/// every change that may give that task something to do wakes it.
pub struct InboxCell<M> {
    state: Mutex<State<M>>,
}

struct State<M> {
    inbox: Inbox<M>,
    waker: Option<Waker>,
}

impl<M> InboxCell<M> {
    /// An inbox of at most `capacity` messages (see [`Inbox::with_capacity`]).
    pub fn new(concurrent: bool, capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                inbox: Inbox::with_capacity(concurrent, capacity),
                waker: None,
            }),
        }
    }

    /// Posts a message ([`Inbox::post`]) and wakes the task; gives it back if the inbox is
    /// stopped or full.
    pub fn post(&self, message: M) -> Result<(), InboxError<M>> {
        self.change(|inbox| inbox.post(message))
    }

    /// Posts a message past the capacity ([`Inbox::post_unbounded`]) and wakes the task.
    pub fn post_unbounded(&self, message: M) -> Result<(), InboxError<M>> {
        self.change(|inbox| inbox.post_unbounded(message))
    }

    /// Stops the inbox ([`Inbox::stop`]) and wakes the task.
    pub fn stop(&self) {
        let _ = self.change(|inbox| {
            inbox.stop();
            Ok(())
        });
    }

    /// The task finished with the item it took last ([`Inbox::done`]); wakes it.
    pub fn done(&self) {
        let _ = self.change(|inbox| {
            inbox.done();
            Ok(())
        });
    }

    /// Messages queued or being handled.
    pub fn messages(&self) -> usize {
        lock(&self.state).inbox.messages()
    }

    /// How many messages the inbox holds before refusing more.
    pub fn capacity(&self) -> usize {
        lock(&self.state).inbox.capacity()
    }

    /// The next item for the task, once there is one.
    pub async fn next(&self) -> InboxItem<M> {
        poll_fn(|cx| {
            let mut s = lock(&self.state);
            match s.inbox.next() {
                Some(item) => Poll::Ready(item),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Applies `f` under the lock; unless it failed, wakes the waiting task (outside the
    /// lock).
    fn change(
        &self,
        f: impl FnOnce(&mut Inbox<M>) -> Result<(), InboxError<M>>,
    ) -> Result<(), InboxError<M>> {
        let waker = {
            let mut s = lock(&self.state);
            f(&mut s.inbox)?;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}
