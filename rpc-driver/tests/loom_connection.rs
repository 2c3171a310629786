//! Loom models of the state a connection's handles share with its driver task (`ConnState`
//! behind `ConnInner`'s mutex): commands queued while the driver parks, close, and replies
//! racing the caller.
//!
//! The models run the real code end to end through the public API: a
//! [`TransportClientFactory`] on a fake [`Runtime`] whose `connect` returns an in-memory
//! stream and whose `spawn` hands the real connection driver future to the model, which
//! polls it on a loom thread as an executor would. A handle's command goes through
//! `ConnInner::with_state` (lock, mutate, take the driver's waker, wake); the driver checks
//! for work and parks its waker under the same lock.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 cargo test --release -p rpc-driver --test 'loom_*'`.
#![cfg(loom)]

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc as StdArc, Mutex as StdMutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::Bytes;
use loom::thread;
use rpc_driver::rpc_proto::{Config, Connection, Event};
use rpc_driver::transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportConfig,
};
use rpc_driver::{AsyncListener, AsyncStream, AsyncTimer, BoxFuture, Runtime};

// ------------------------------------------------------------------ wakers

/// A waker that counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl CountingWaker {
    fn wakes(&self) -> usize {
        self.0.load(SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: StdArc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &StdArc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn poll_with<F: Future + ?Sized>(
    fut: Pin<&mut F>,
    waker: &StdArc<CountingWaker>,
) -> Poll<F::Output> {
    let waker = Waker::from(waker.clone());
    fut.poll(&mut Context::from_waker(&waker))
}

/// Counts how often each outcome of a model was reached over all its interleavings.
struct Outcomes([AtomicUsize; 4]);

impl Outcomes {
    const fn new() -> Self {
        Self([const { AtomicUsize::new(0) }; 4])
    }

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

// ------------------------------------------------------------------ a fake runtime

/// The bytes on the fake socket, shared with the model.
#[derive(Default)]
struct Wire {
    /// What the driver wrote.
    written: StdMutex<Vec<u8>>,
    /// What the driver will read; a read of an empty buffer is `Pending`.
    inbound: StdMutex<VecDeque<u8>>,
    shut_down: AtomicUsize,
}

struct FakeStream(StdArc<Wire>);

impl AsyncStream for FakeStream {
    fn poll_read(&mut self, _cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut inbound = self.0.inbound.lock().unwrap();
        if inbound.is_empty() {
            return Poll::Pending;
        }
        let n = buf.len().min(inbound.len());
        for (dst, src) in buf.iter_mut().zip(inbound.drain(..n)) {
            *dst = src;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        &mut self,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut written = self.0.written.lock().unwrap();
        let mut n = 0;
        for buf in bufs {
            written.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.shut_down.fetch_add(1, SeqCst);
        Poll::Ready(Ok(()))
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(PEER)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(LOCAL)
    }
}

const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7077,
));
const LOCAL: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    40000,
));

/// A timer that never fires: the models are about wakes, not time.
#[derive(Debug)]
struct NeverTimer;

impl AsyncTimer for NeverTimer {
    fn reset(self: Pin<&mut Self>, _deadline: Instant) {}

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// A runtime whose clock stands still, whose `connect` returns the one fake stream, and whose
/// `spawn` keeps the future for the model to poll.
struct FakeRuntime {
    now: Instant,
    stream: StdMutex<Option<FakeStream>>,
    spawned: StdMutex<Vec<BoxFuture<()>>>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime").finish_non_exhaustive()
    }
}

impl Runtime for FakeRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        self.spawned.lock().unwrap().push(future);
    }

    fn spawn_isolated(&self, future: BoxFuture<()>) {
        self.spawn(future);
    }

    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send>) {
        // The models block nowhere: run it at once.
        f();
    }

    fn new_timer(&self, _deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(NeverTimer)
    }

    fn connect(&self, _addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
        let stream = self.stream.lock().unwrap().take();
        Box::pin(async move {
            stream
                .map(|s| Box::new(s) as Box<dyn AsyncStream>)
                .ok_or_else(|| io::Error::other("the fake runtime has one stream"))
        })
    }

    fn listen(&self, _listener: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
        Err(io::Error::other("the fake runtime does not listen"))
    }

    fn now(&self) -> Instant {
        self.now
    }
}

struct NoRequests;

impl RpcHandler for NoRequests {
    fn receive(&self, _client: &TransportClient, _message: Bytes, _responder: RpcResponder) {
        panic!("the models send no requests to the client");
    }
}

/// One connection: the handle, the real driver future and the fake socket.
struct Harness {
    client: TransportClient,
    driver: BoxFuture<()>,
    wire: StdArc<Wire>,
    now: Instant,
    // Keeps the pooled connection alive as an application's factory would.
    _factory: TransportClientFactory,
}

impl Harness {
    /// Opens a connection through the factory. Runs on the model's main thread before any
    /// other thread exists, so it adds no interleavings.
    fn open() -> Self {
        Self::open_with(TransportConfig::default())
    }

    /// [`open`](Self::open) with `config`.
    fn open_with(config: TransportConfig) -> Self {
        let wire = StdArc::new(Wire::default());
        let now = Instant::now();
        let rt = StdArc::new(FakeRuntime {
            now,
            stream: StdMutex::new(Some(FakeStream(wire.clone()))),
            spawned: StdMutex::new(Vec::new()),
        });
        let factory = TransportClientFactory::new(rt.clone(), StdArc::new(NoRequests), config);
        let client = {
            let mut connecting = std::pin::pin!(factory.create_client(PEER));
            match poll_with(connecting.as_mut(), &StdArc::default()) {
                Poll::Ready(Ok(client)) => client,
                Poll::Ready(Err(e)) => panic!("fake connect failed: {e}"),
                Poll::Pending => panic!("fake connect did not complete at once"),
            }
        };
        let mut spawned = rt.spawned.lock().unwrap();
        assert_eq!(spawned.len(), 1, "one driver per connection");
        let driver = spawned.pop().unwrap();
        drop(spawned);
        Harness {
            client,
            driver,
            wire,
            now,
            _factory: factory,
        }
    }

    fn written(&self) -> Vec<u8> {
        self.wire.written.lock().unwrap().clone()
    }
}

/// An executor's view of a driver: polls it, then polls again after every wake, until it is
/// parked without a wake pending (or finished).
struct DriverTask {
    driver: BoxFuture<()>,
    waker: StdArc<CountingWaker>,
    wakes_seen: usize,
    finished: bool,
}

impl DriverTask {
    fn new(driver: BoxFuture<()>) -> Self {
        Self {
            driver,
            waker: StdArc::default(),
            wakes_seen: 0,
            finished: false,
        }
    }

    /// Polls once, as the executor does when the task is first scheduled or woken.
    fn poll(&mut self) {
        assert!(!self.finished, "a finished driver is not polled");
        self.wakes_seen = self.waker.wakes();
        self.finished = poll_with(self.driver.as_mut(), &self.waker).is_ready();
    }

    /// Whether the driver was woken since its last poll began.
    fn woken(&self) -> bool {
        self.waker.wakes() > self.wakes_seen
    }

    /// Re-polls while woken, as an executor would; returns how many polls that took.
    fn run_while_woken(&mut self) -> usize {
        let mut polls = 0;
        while !self.finished && self.woken() {
            self.poll();
            polls += 1;
            assert!(polls < 100, "the driver keeps waking itself");
        }
        polls
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ------------------------------------------------------------------ models

/// (4) A command queued just as the driver parks. A handle sends a one-way message (under the
/// lock: queue it, take the driver's waker; then wake it) while the driver task checks for
/// work and parks its waker under the same lock. Whatever the interleaving, the driver is
/// never left parked with the message unwritten: either its poll found the message, or the
/// send took its parked waker and woke it, so the executor polls it again.
#[test]
fn command_queued_as_driver_parks_is_never_lost() {
    static SEEN: Outcomes = Outcomes::new();
    const BODY: &[u8] = b"queued just as the driver parks";
    loom::model(|| {
        let Harness {
            client,
            driver,
            wire,
            _factory,
            ..
        } = Harness::open();

        let sender = client.clone();
        let sending = thread::spawn(move || sender.send(Bytes::from_static(BODY)));
        let driving = thread::spawn(move || {
            let mut task = DriverTask::new(driver);
            task.poll();
            task
        });
        sending.join().unwrap().expect("send is accepted");
        let mut task = driving.join().unwrap();

        assert!(
            !task.finished,
            "an open connection's driver does not finish"
        );
        let written_by_first_poll = contains(&wire.written.lock().unwrap(), BODY);
        let woken = task.woken();
        if !woken {
            assert!(
                written_by_first_poll,
                "the driver parked, unwoken, with the message queued"
            );
        }
        SEEN.saw(match (written_by_first_poll, woken) {
            (true, false) => 0,
            (false, true) => 1,
            (true, true) => 2,
            (false, false) => unreachable!(),
        });
        task.run_while_woken();
        assert!(contains(&wire.written.lock().unwrap(), BODY));
        assert!(
            !task.woken() && !task.finished,
            "the driver is parked again"
        );
        drop(client);
    });
    SEEN.assert_all_seen(&[
        "found by the driver's poll",
        "sent after the driver parked, which woke it",
    ]);
}

/// (4b) Two handles queue messages concurrently with the driver parking: both are written,
/// in the order they were queued, and the driver ends parked with nothing pending.
#[test]
fn two_commands_queued_as_driver_parks() {
    loom::model(|| {
        let harness = Harness::open();
        let (a, b) = (harness.client.clone(), harness.client.clone());
        let first = thread::spawn(move || a.send(Bytes::from_static(b"message from a")));
        let second = thread::spawn(move || b.send(Bytes::from_static(b"message from b")));
        let mut task = DriverTask::new(harness.driver);
        task.poll();
        first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
        task.run_while_woken();

        let written = harness.wire.written.lock().unwrap().clone();
        assert!(
            contains(&written, b"message from a"),
            "a's message is written"
        );
        assert!(
            contains(&written, b"message from b"),
            "b's message is written"
        );
        assert!(!task.woken() && !task.finished);
    });
}

/// (4c) Close racing the driver parking: the driver is woken (or sees the close itself),
/// flushes, shuts the socket down and finishes; it is never left parked on a closed
/// connection.
#[test]
fn close_as_driver_parks_finishes_the_driver() {
    loom::model(|| {
        let harness = Harness::open();
        let closer = harness.client.clone();
        let closing = thread::spawn(move || closer.close());
        let driving = thread::spawn(move || {
            let mut task = DriverTask::new(harness.driver);
            task.poll();
            task
        });
        closing.join().unwrap();
        let mut task = driving.join().unwrap();
        task.run_while_woken();
        assert!(
            task.finished,
            "the driver finishes once the connection is closed"
        );
        assert_eq!(
            harness.wire.shut_down.load(SeqCst),
            1,
            "the socket is shut down"
        );
        assert!(!harness.client.is_active());
    });
}

/// (4d) A task waiting in `ready()` for room in a full send buffer, polling again with a new
/// waker, while the driver drains the buffer and wakes the waiters. Each `Ready` keeps one
/// slot in the connection's wait list, which its polls overwrite, under the lock the driver
/// wakes them under: whatever the interleaving, the task either sees the room itself or
/// the waker it registered last is woken, so the wake-up is never lost.
#[test]
fn ready_waiting_as_the_driver_drains_is_never_lost() {
    static SEEN: Outcomes = Outcomes::new();
    loom::model(|| {
        let config = Config::builder().with_max_send_buffer(64).build().unwrap();
        let harness = Harness::open_with(
            TransportConfig::builder()
                .with_connection(config)
                .build()
                .unwrap(),
        );
        while !harness.client.is_send_buffer_full() {
            harness.client.send(Bytes::from_static(&[7; 40])).unwrap();
        }
        let waiter = harness.client.clone();
        let (first, last) = (StdArc::default(), StdArc::default());
        let (w1, w2) = (StdArc::clone(&first), StdArc::clone(&last));
        let waiting = thread::spawn(move || {
            let mut ready = Box::pin(waiter.ready());
            let mut outcome = poll_with(ready.as_mut(), &w1).map(|r| (r, 0));
            if outcome.is_pending() {
                outcome = poll_with(ready.as_mut(), &w2).map(|r| (r, 1));
            }
            (ready, outcome)
        });
        let mut task = DriverTask::new(harness.driver);
        task.poll();
        let (mut ready, outcome) = waiting.join().unwrap();
        match outcome {
            Poll::Ready((result, poll)) => {
                result.expect("room, on an open connection");
                SEEN.saw(poll);
            }
            Poll::Pending => {
                assert!(
                    last.wakes() > 0,
                    "the waker registered last is woken once the buffer drains"
                );
                let woken = poll_with(ready.as_mut(), &last);
                assert!(matches!(woken, Poll::Ready(Ok(()))), "{woken:?}");
                SEEN.saw(2);
            }
        }
        task.run_while_woken();
        drop(ready);
    });
    SEEN.assert_all_seen(&[
        "room seen by the first poll",
        "room seen by the second poll",
        "woken after both polls",
    ]);
}

/// Sets up an RPC whose reply is waiting on the socket: the request was sent and written,
/// a peer connection answered it with `reply`, and those bytes are ready to be read.
fn rpc_with_reply_waiting(
    harness: &mut Harness,
    reply: &'static [u8],
) -> rpc_driver::transport::RpcCall {
    let call = harness.client.send_rpc(Bytes::from_static(b"ask"), None);
    let mut task = DriverTask::new(std::mem::replace(
        &mut harness.driver,
        Box::pin(std::future::pending()),
    ));
    task.poll();
    let written = harness.written();
    assert!(!written.is_empty(), "the request was written");

    let mut peer = Connection::new(Config::default(), harness.now);
    peer.handle_bytes(harness.now, &written);
    let request = match peer.poll_event() {
        Some(Event::RpcReceived { request, .. }) => request,
        other => panic!("the peer expected the request, got {other:?}"),
    };
    assert_eq!(request, call.request_id().unwrap());
    peer.respond_rpc(harness.now, request, Bytes::from_static(reply))
        .unwrap();
    let mut inbound = harness.wire.inbound.lock().unwrap();
    while let Some(bytes) = peer.poll_transmit() {
        inbound.extend(bytes.iter());
    }
    drop(inbound);
    harness.driver = task.driver;
    call
}

/// (2, end to end) A reply read by the driver racing the caller polling its `RpcCall`: the
/// caller gets the reply exactly once, and is woken if it had parked.
#[test]
fn reply_racing_caller_poll() {
    static SEEN: Outcomes = Outcomes::new();
    const REPLY: &[u8] = b"the reply";
    loom::model(|| {
        let mut harness = Harness::open();
        let mut call = rpc_with_reply_waiting(&mut harness, REPLY);
        let driver = std::mem::replace(&mut harness.driver, Box::pin(std::future::pending()));

        // The socket became readable: the executor polls the driver.
        let driving = thread::spawn(move || {
            let mut task = DriverTask::new(driver);
            task.poll();
            task
        });
        let waker = StdArc::<CountingWaker>::default();
        let first = poll_with(Pin::new(&mut call), &waker);
        let mut task = driving.join().unwrap();
        task.run_while_woken();

        match first {
            Poll::Ready(result) => {
                SEEN.saw(0);
                assert_eq!(result.unwrap(), REPLY);
                assert_eq!(waker.wakes(), 0);
            }
            Poll::Pending => {
                SEEN.saw(1);
                assert_eq!(waker.wakes(), 1, "a parked caller is woken exactly once");
                match poll_with(Pin::new(&mut call), &waker) {
                    Poll::Ready(result) => assert_eq!(result.unwrap(), REPLY),
                    Poll::Pending => panic!("woken, but the reply is not there"),
                }
            }
        }
        drop(call);
        assert_eq!(harness.client.stats().unmatched_replies, 0);
    });
    SEEN.assert_all_seen(&["ready at once", "parked, then woken"]);
}

/// (1, end to end) A reply read by the driver racing the caller dropping its `RpcCall`: no
/// panic; either the reply reaches the completion slot and is dropped with it, or the call
/// was abandoned first (the connection forgets it) and the late reply is counted as
/// unmatched.
#[test]
fn reply_racing_dropped_call() {
    static SEEN: Outcomes = Outcomes::new();
    loom::model(|| {
        let mut harness = Harness::open();
        let call = rpc_with_reply_waiting(&mut harness, b"nobody waits for this");
        let driver = std::mem::replace(&mut harness.driver, Box::pin(std::future::pending()));

        let driving = thread::spawn(move || {
            let mut task = DriverTask::new(driver);
            task.poll();
            task
        });
        drop(call);
        let mut task = driving.join().unwrap();
        task.run_while_woken();
        assert!(!task.finished && !task.woken());
        let unmatched = harness.client.stats().unmatched_replies;
        assert!(unmatched <= 1);
        SEEN.saw(unmatched as usize);
        assert!(harness.client.is_active());
    });
    SEEN.assert_all_seen(&["reply matched the call", "call forgotten, reply unmatched"]);
}
