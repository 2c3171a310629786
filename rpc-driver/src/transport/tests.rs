//! Unit tests of the connection's shared state and the futures waiting on it, without a
//! driver task or a socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::Bytes;
use rpc_proto::{CallError, Config, Connection};

use super::addrs::ConnectionAddrs;
use super::client::TransportClient;
use super::feeder::feed_body;
use super::id::ConnectionId;
use super::state::{ConnInner, ConnState, BODY_HIGH_WATER};
use crate::runtime::{AsyncListener, AsyncStream, AsyncTimer, BoxFuture, Runtime};
use crate::sync::{lock, Arc, Mutex};

// `ConnInner::zero_copy`, a stats counter, is std's.
use crate::sync::unmodeled::atomic::AtomicU64;

// Wakers and the runtime trait object take std's `Arc`.
use crate::sync::unmodeled::Arc as StdArc;

/// A runtime that must not be used: the tests poll by hand.
#[derive(Debug)]
struct Unused;

impl Runtime for Unused {
    fn spawn(&self, _: BoxFuture<()>) {
        unreachable!("nothing is spawned here")
    }

    fn spawn_isolated(&self, _: BoxFuture<()>) {
        unreachable!("nothing is spawned here")
    }

    fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send>) {
        unreachable!("nothing blocks here")
    }

    fn new_timer(&self, _: Instant) -> Pin<Box<dyn AsyncTimer>> {
        unreachable!("no timers here")
    }

    fn connect(&self, _: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
        unreachable!("no connections here")
    }

    fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
        unreachable!("no listeners here")
    }
}

/// A connection's shared state, with no driver: nothing queued is ever written.
fn conn_inner(config: Config) -> Arc<ConnInner> {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    Arc::new(ConnInner {
        zero_copy: AtomicU64::new(0),
        rt: StdArc::new(Unused),
        addrs: ConnectionAddrs {
            local: addr,
            peer: addr,
        },
        id: ConnectionId::next(),
        client_id: None,
        state: Mutex::new(ConnState::new(Connection::new(config, Instant::now()))),
    })
}

struct Noop;

impl Wake for Noop {
    fn wake(self: StdArc<Self>) {}
}

/// A waker that is not `will_wake` any other.
fn fresh_waker() -> Waker {
    Waker::from(StdArc::new(Noop))
}

#[test]
fn polling_ready_again_and_again_keeps_one_waker() {
    let config = Config::builder()
        .with_max_send_buffer(1024)
        .build()
        .unwrap();
    let inner = conn_inner(config);
    let client = TransportClient {
        inner: inner.clone(),
    };
    while !client.is_send_buffer_full() {
        client.send(Bytes::from(vec![0; 512])).unwrap();
    }
    let mut ready = std::pin::pin!(client.ready());
    for _ in 0..1_000_000 {
        let waker = fresh_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(ready.as_mut().poll(&mut cx).is_pending());
        let (waiting, _) = lock(&inner.state).waiting();
        assert!(waiting <= 1, "{waiting} wakers stored");
    }
    // A fresh `ready()` per loop turn, given up each time, leaves nothing behind either.
    for _ in 0..1000 {
        let mut ready = std::pin::pin!(client.ready());
        let waker = fresh_waker();
        assert!(ready
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    let (waiting, _) = lock(&inner.state).waiting();
    assert!(waiting <= 1, "{waiting} wakers stored");
    client.close();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        ready.as_mut().poll(&mut cx),
        Poll::Ready(Err(CallError::Closed))
    ));
}

#[test]
fn a_waiting_upload_feeder_keeps_one_waker_however_often_it_is_polled() {
    let inner = conn_inner(Config::default());
    let piece = 256 * 1024;
    let byte_count = 4 * BODY_HIGH_WATER;
    let (_request, body) = inner.with_state(|st, now| {
        st.conn
            .upload_stream(now, Bytes::new(), byte_count, None)
            .unwrap()
    });
    let pieces = (0..byte_count / piece).map(move |_| Bytes::from(vec![7; piece as usize]));
    let mut feeder = Box::pin(feed_body(
        inner.clone(),
        body,
        byte_count,
        futures_lite::stream::iter(pieces),
    ));
    for _ in 0..1_000_000 {
        let waker = fresh_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(feeder.as_mut().poll(&mut cx).is_pending());
        let (_, waiting) = lock(&inner.state).waiting();
        assert!(waiting <= 1, "{waiting} wakers stored");
    }
    // It fed up to the high-water mark and waits for the socket.
    assert!(lock(&inner.state).conn.queued_bytes() >= BODY_HIGH_WATER);
    drop(feeder);
    let (_, waiting) = lock(&inner.state).waiting();
    assert_eq!(waiting, 0, "a dropped feeder leaves no waker");
}
