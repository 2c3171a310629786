//! Loom models of the one-shot completion slot (`rpc_driver::completion_pair`): how a call's
//! result crosses from the driver to the future its caller awaits.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 cargo test --release -p rpc-driver --test 'loom_*'`.
//!
//! Each model also counts, across all the interleavings loom explores, which outcomes it saw,
//! and asserts that every outcome the race allows was reached: a model that only ever runs one
//! order checks nothing.
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};

use loom::thread;
use rpc_driver::{completion_pair, Waiter};

/// A waker that counts its wakes, and optionally forwards them (to `block_on` waker).
struct CountingWaker {
    wakes: AtomicUsize,
    forward: Option<Waker>,
}

impl CountingWaker {
    fn new() -> StdArc<Self> {
        StdArc::new(Self {
            wakes: AtomicUsize::new(0),
            forward: None,
        })
    }

    fn forwarding(to: Waker) -> StdArc<Self> {
        StdArc::new(Self {
            wakes: AtomicUsize::new(0),
            forward: Some(to),
        })
    }

    fn wakes(&self) -> usize {
        self.wakes.load(SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: StdArc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &StdArc<Self>) {
        self.wakes.fetch_add(1, SeqCst);
        if let Some(w) = &self.forward {
            w.wake_by_ref();
        }
    }
}

/// Parks the current loom thread until `fut` is ready: loom's `future::block_on`, which this
/// crate does not get (its loom dependency is built without the `futures` feature). A waiter
/// that is never woken leaves the thread parked forever, which loom reports as a deadlock.
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

/// Polls `fut` once with `waker`.
fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &StdArc<CountingWaker>) -> Poll<F::Output> {
    let waker = Waker::from(waker.clone());
    Pin::new(fut).poll(&mut Context::from_waker(&waker))
}

/// A value whose drops are counted, to see it is neither leaked nor dropped twice.
struct Tracked {
    value: u32,
    drops: StdArc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Counts how often each outcome of a model was reached over all its interleavings.
#[derive(Default)]
struct Outcomes([AtomicUsize; 4]);

impl Outcomes {
    fn saw(&self, outcome: usize) {
        self.0[outcome].fetch_add(1, SeqCst);
    }

    fn assert_all_seen(&self, names: &[&str]) {
        for (i, name) in names.iter().enumerate() {
            assert!(
                self.0[i].load(SeqCst) > 0,
                "the model never reached the outcome \"{name}\""
            );
        }
    }
}

/// (1) A reply racing a dropped waiter. The waiter had parked (registered a waker). Either the
/// completion lands first (the value is stored, the waker is woken once, and the waiter's drop
/// drops the value), or the waiter is gone first (the value is handed back untouched and nobody
/// is woken). Never a panic, a leak or a double drop.
#[test]
fn complete_racing_dropped_waiter() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    loom::model(|| {
        let drops = StdArc::new(AtomicUsize::new(0));
        let (completer, mut waiter) = completion_pair::<Tracked>();
        let waker = CountingWaker::new();
        assert!(poll_once(&mut waiter, &waker).is_pending());

        let value = Tracked {
            value: 7,
            drops: drops.clone(),
        };
        let completing = thread::spawn(move || completer.complete(value));
        let dropping = thread::spawn(move || drop(waiter));
        let result = completing.join().unwrap();
        dropping.join().unwrap();

        match result {
            Ok(()) => {
                SEEN.saw(0);
                assert_eq!(waker.wakes(), 1, "a delivered value wakes the waiter once");
                assert_eq!(
                    drops.load(SeqCst),
                    1,
                    "the dropped waiter dropped the value"
                );
            }
            Err(back) => {
                SEEN.saw(1);
                assert_eq!(back.value, 7);
                assert_eq!(drops.load(SeqCst), 0, "the value came back untouched");
                assert_eq!(waker.wakes(), 0, "a gone waiter is not woken");
                drop(back);
                assert_eq!(drops.load(SeqCst), 1);
            }
        }
    });
    SEEN.assert_all_seen(&["delivered, then dropped", "handed back"]);
}

/// (1b) The same race with a waiter that never polled, and with `is_abandoned` asked
/// concurrently: once the completer sees the waiter abandoned, completing hands the value back.
#[test]
fn complete_racing_dropped_waiter_that_never_polled() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    loom::model(|| {
        let (completer, waiter) = completion_pair::<u32>();
        let dropping = thread::spawn(move || drop(waiter));
        let abandoned = completer.is_abandoned();
        let result = completer.complete(7);
        dropping.join().unwrap();
        if abandoned {
            assert_eq!(result, Err(7), "an abandoned call hands its value back");
        }
        SEEN.saw(match (abandoned, result) {
            (true, _) => 0,
            (false, Err(_)) => 1,
            (false, Ok(())) => 2,
        });
    });
    SEEN.assert_all_seen(&[
        "seen abandoned",
        "dropped between check and complete",
        "delivered",
    ]);
}

/// (2) A reply racing a poll: the waiter sees the value exactly once, and if its poll parked
/// (returned `Pending`), the completion wakes it exactly once.
#[test]
fn complete_racing_poll() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    loom::model(|| {
        let (completer, mut waiter) = completion_pair::<u32>();
        let completing = thread::spawn(move || completer.complete(7));
        let waker = CountingWaker::new();
        let first = poll_once(&mut waiter, &waker);
        assert_eq!(completing.join().unwrap(), Ok(()));
        match first {
            Poll::Ready(value) => {
                SEEN.saw(0);
                assert_eq!(value, Some(7));
                assert_eq!(waker.wakes(), 0, "no waker was registered");
            }
            Poll::Pending => {
                SEEN.saw(1);
                assert_eq!(waker.wakes(), 1, "a parked waiter is woken exactly once");
                assert_eq!(poll_once(&mut waiter, &waker), Poll::Ready(Some(7)));
            }
        }
        assert_eq!(waiter.try_take(), None, "the value is seen exactly once");
    });
    SEEN.assert_all_seen(&["ready at once", "parked, then woken"]);
}

/// (2b) A reply racing a re-poll with a new waker (the future moved to another task): the
/// waker registered last when the value lands is the one woken, never a stale one only.
#[test]
fn complete_racing_repoll_with_new_waker() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    loom::model(|| {
        let (completer, mut waiter) = completion_pair::<u32>();
        let old = CountingWaker::new();
        assert!(poll_once(&mut waiter, &old).is_pending());

        let completing = thread::spawn(move || completer.complete(7));
        let new = CountingWaker::new();
        let second = poll_once(&mut waiter, &new);
        assert_eq!(completing.join().unwrap(), Ok(()));
        match second {
            Poll::Ready(value) => {
                SEEN.saw(0);
                assert_eq!(value, Some(7));
                assert_eq!(
                    old.wakes(),
                    1,
                    "completed while the old waker was registered"
                );
                assert_eq!(new.wakes(), 0);
            }
            Poll::Pending => {
                SEEN.saw(1);
                assert_eq!(old.wakes(), 0, "the replaced waker is not woken");
                assert_eq!(new.wakes(), 1, "the current waker is woken");
                assert_eq!(poll_once(&mut waiter, &new), Poll::Ready(Some(7)));
            }
        }
    });
    SEEN.assert_all_seen(&[
        "completed before the re-poll",
        "completed after the re-poll",
    ]);
}

/// (2c) A completer dropped without a value racing a poll: the waiter resolves to `None`,
/// once, and is woken if it parked.
#[test]
fn completer_dropped_racing_poll() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    loom::model(|| {
        let (completer, mut waiter) = completion_pair::<u32>();
        let dropping = thread::spawn(move || drop(completer));
        let waker = CountingWaker::new();
        let first = poll_once(&mut waiter, &waker);
        dropping.join().unwrap();
        match first {
            Poll::Ready(value) => {
                SEEN.saw(0);
                assert_eq!(value, None);
                assert_eq!(waker.wakes(), 0);
            }
            Poll::Pending => {
                SEEN.saw(1);
                assert_eq!(waker.wakes(), 1, "a parked waiter is woken by the drop");
                assert_eq!(poll_once(&mut waiter, &waker), Poll::Ready(None));
            }
        }
    });
    SEEN.assert_all_seen(&["ready at once", "parked, then woken"]);
}

/// What the shutting-down thread does to each completer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Complete,
    Drop,
}

/// A waiter that records whether it ever parked (returned `Pending`) and counts its wakes.
/// `block_on` may also poll again spuriously; those polls are not wakes.
struct Counted {
    waiter: Waiter<u32>,
    parked: bool,
    waker: Option<StdArc<CountingWaker>>,
}

impl Future for Counted {
    type Output = (Option<u32>, bool, usize);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let counting = self
            .waker
            .get_or_insert_with(|| CountingWaker::forwarding(cx.waker().clone()))
            .clone();
        match poll_once(&mut self.waiter, &counting) {
            Poll::Ready(value) => Poll::Ready((value, self.parked, counting.wakes())),
            Poll::Pending => {
                self.parked = true;
                Poll::Pending
            }
        }
    }
}

/// (3) Shutdown racing many waiting asks: `ends.len()` waiters, each blocked on its future in
/// its own thread (`block_on`, which reports a deadlock if a parked waiter is never
/// woken), while one thread completes or drops every completer. Each waiter resolves exactly
/// once, to the value or `None` as its completer ended, and each one that parked was woken
/// exactly once.
fn shutdown_racing_waiters(ends: &'static [End], seen: &'static Outcomes) {
    loom::model(move || {
        let mut completers = Vec::new();
        let mut waiters = Vec::new();
        for (i, _) in ends.iter().enumerate() {
            let (completer, waiter) = completion_pair::<u32>();
            completers.push(completer);
            waiters.push(thread::spawn(move || {
                let out = block_on(Counted {
                    waiter,
                    parked: false,
                    waker: None,
                });
                (i, out)
            }));
        }
        let shutdown = thread::spawn(move || {
            for (i, (completer, end)) in completers.into_iter().zip(ends).enumerate() {
                match end {
                    End::Complete => assert_eq!(completer.complete(i as u32), Ok(())),
                    End::Drop => drop(completer),
                }
            }
        });
        shutdown.join().unwrap();
        for waiter in waiters {
            let (i, (value, parked, wakes)) = waiter.join().unwrap();
            let expected = (ends[i] == End::Complete).then_some(i as u32);
            assert_eq!(value, expected, "waiter {i} resolves to how its call ended");
            let want = usize::from(parked);
            assert_eq!(
                wakes, want,
                "waiter {i} (parked: {parked}) woken {wakes} times"
            );
            seen.saw(want);
        }
    });
    seen.assert_all_seen(&["resolved without parking", "parked, then woken"]);
}

#[test]
fn shutdown_dropping_two_waiting_asks() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    shutdown_racing_waiters(&[End::Drop, End::Drop], &SEEN);
}

#[test]
fn shutdown_completing_two_waiting_asks() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    shutdown_racing_waiters(&[End::Complete, End::Complete], &SEEN);
}

#[test]
fn shutdown_racing_three_waiting_asks() {
    static SEEN: Outcomes = Outcomes([const { AtomicUsize::new(0) }; 4]);
    shutdown_racing_waiters(&[End::Complete, End::Drop, End::Drop], &SEEN);
}
