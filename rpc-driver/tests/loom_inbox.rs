//! Loom models of an endpoint's inbox (`rpc_driver::InboxCell`, behind each env mailbox): the
//! env's threads post and stop while the endpoint's task takes items and parks its waker under
//! the same lock. A wake lost in the hand-off leaves the task parked forever, which loom
//! reports as a deadlock.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 cargo test --release -p rpc-driver --test 'loom_*'`.
#![cfg(loom)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::Arc;
use loom::thread;
use rpc_driver::rpc_proto::{InboxError, InboxItem};
use rpc_driver::InboxCell;

/// Parks the current loom thread until `fut` is ready (see `loom_completion.rs`).
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(loom::sync::Notify);
    impl Wake for Unpark {
        fn wake(self: StdArc<Self>) {
            self.0.notify();
        }
        fn wake_by_ref(self: &StdArc<Self>) {
            self.0.notify();
        }
    }
    let unpark = StdArc::new(Unpark(loom::sync::Notify::new()));
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        unpark.0.wait();
    }
}

/// The endpoint's task: takes items until `Stop`, marking each done; returns the messages.
fn run_endpoint(inbox: &InboxCell<u32>) -> Vec<u32> {
    let mut got = Vec::new();
    loop {
        let item = block_on(inbox.next());
        inbox.done();
        match item {
            InboxItem::Start => {}
            InboxItem::Message(m) => got.push(m),
            InboxItem::Stop => return got,
        }
    }
}

/// A message posted as the task parks for it is handed over, whichever comes first.
#[test]
fn post_racing_the_task_parking_is_never_lost() {
    let parked_first = StdArc::new(AtomicUsize::new(0));
    let counted = parked_first.clone();
    loom::model(move || {
        let inbox = Arc::new(InboxCell::new(false, 4));
        let poster = {
            let inbox = inbox.clone();
            thread::spawn(move || inbox.post(7).unwrap())
        };
        assert!(matches!(block_on(inbox.next()), InboxItem::Start));
        inbox.done();
        if inbox.messages() == 0 {
            counted.fetch_add(1, SeqCst);
        }
        assert!(matches!(block_on(inbox.next()), InboxItem::Message(7)));
        inbox.done();
        poster.join().unwrap();
    });
    // Some interleaving had the task find no message yet, so waiting for one was explored.
    assert!(parked_first.load(SeqCst) > 0);
}

/// Posts from two threads and a stop from one of them: the task gets every message accepted,
/// then `Stop`, and a post after the stop is refused.
#[test]
fn posts_and_stop_from_two_threads_all_reach_the_task() {
    loom::model(|| {
        let inbox = Arc::new(InboxCell::new(false, 4));
        let first = {
            let inbox = inbox.clone();
            thread::spawn(move || inbox.post(1).is_ok())
        };
        let second = {
            let inbox = inbox.clone();
            thread::spawn(move || {
                inbox.post(2).unwrap();
                inbox.stop();
                assert!(matches!(inbox.post(3), Err(InboxError::Stopped(3))));
            })
        };
        let mut got = run_endpoint(&inbox);
        let first_posted = first.join().unwrap();
        second.join().unwrap();
        got.sort_unstable();
        // `1` may come after the stop and be refused; `2` never is.
        let expected: &[u32] = if first_posted { &[1, 2] } else { &[2] };
        assert_eq!(got, expected);
    });
}
