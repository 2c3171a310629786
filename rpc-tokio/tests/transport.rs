//! The transport layer on real sockets, on tokio.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc_tokio::rpc_proto::{ConnectionError, RpcError};
use rpc_tokio::{
    RpcHandler, RpcResponder, TokioRuntime, TransportClient, TransportClientFactory,
    TransportConfig, TransportServer,
};

/// Echoes RPCs ("fail" fails, "drop" drops the responder, "keep" keeps it unanswered),
/// counts one-way messages and connection events.
#[derive(Default)]
struct Echo {
    one_way: AtomicUsize,
    opened: AtomicUsize,
    closed: Mutex<Vec<ConnectionError>>,
    kept: Mutex<Vec<RpcResponder>>,
}

impl RpcHandler for Echo {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        match &message[..] {
            b"fail" => responder.fail("you asked for it").unwrap(),
            b"drop" => drop(responder),
            b"keep" => self.kept.lock().unwrap().push(responder),
            _ => {
                // Answer from another task, later: responders are Send + 'static.
                tokio::spawn(async move {
                    responder.reply(message).unwrap();
                });
            }
        }
    }

    fn receive_one_way(&self, _: &TransportClient, _: Bytes) {
        self.one_way.fetch_add(1, Ordering::SeqCst);
    }

    fn connection_opened(&self, _: &TransportClient) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn connection_closed(&self, _: &TransportClient, error: &ConnectionError) {
        self.closed.lock().unwrap().push(error.clone());
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn setup() -> (
    TransportServer,
    Arc<Echo>,
    TransportClientFactory,
    Arc<Echo>,
) {
    let server_handler = Arc::new(Echo::default());
    let server = TransportServer::bind(
        TokioRuntime::shared(),
        localhost(),
        server_handler.clone(),
        TransportConfig::default(),
    )
    .unwrap();
    let client_handler = Arc::new(Echo::default());
    let factory = TransportClientFactory::new(
        TokioRuntime::shared(),
        client_handler.clone(),
        TransportConfig::default(),
    );
    (server, server_handler, factory, client_handler)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn rpc_replies_failures_and_one_way_messages_cross_a_real_socket() {
    let (server, handler, factory, _) = setup().await;
    let client = factory.create_client(server.local_addr()).await.unwrap();

    let reply = client
        .send_rpc("hello".into(), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(reply, "hello");

    let err = client.send_rpc("fail".into(), None).await.unwrap_err();
    assert_eq!(err, RpcError::Remote("you asked for it".into()));

    let err = client.send_rpc("drop".into(), None).await.unwrap_err();
    assert_eq!(
        err,
        RpcError::Remote("the request was dropped without a reply".into())
    );

    for _ in 0..10 {
        client.send("tick".into()).unwrap();
    }
    eventually("one-way messages", || {
        handler.one_way.load(Ordering::SeqCst) == 10
    })
    .await;
    assert_eq!(handler.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_rpcs_on_one_connection_each_get_their_own_reply() {
    let (server, _, factory, _) = setup().await;
    let client = factory.create_client(server.local_addr()).await.unwrap();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = Bytes::from(format!("call {i}"));
                let reply = client.send_rpc(body.clone(), None).await.unwrap();
                assert_eq!(reply, body);
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(
        server.connections().len(),
        1,
        "all calls shared one connection"
    );
}

#[tokio::test]
async fn the_factory_pools_one_connection_per_peer() {
    let (server, handler, factory, _) = setup().await;
    let a = factory.create_client(server.local_addr()).await.unwrap();
    let b = factory.create_client(server.local_addr()).await.unwrap();
    assert_eq!(a, b);
    a.close();
    eventually("the close", || !b.is_active()).await;
    let c = factory.create_client(server.local_addr()).await.unwrap();
    assert_ne!(a, c, "a closed connection is replaced");
    eventually("two connections opened", || {
        handler.opened.load(Ordering::SeqCst) == 2
    })
    .await;
}

#[tokio::test]
async fn a_call_times_out_naming_its_timeout() {
    let (server, _, factory, _) = setup().await;
    let client = factory.create_client(server.local_addr()).await.unwrap();
    let err = client
        .send_rpc("keep".into(), Some(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RpcError::TimedOut {
            after: Duration::from_millis(50)
        }
    );
    assert!(err.to_string().contains("50ms"));
}

#[tokio::test]
async fn pending_calls_fail_fast_when_the_peer_goes_away() {
    let (server, _, factory, client_handler) = setup().await;
    let client = factory.create_client(server.local_addr()).await.unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.send_rpc("keep".into(), None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    server.close();
    let err = tokio::time::timeout(Duration::from_secs(1), pending)
        .await
        .expect("the pending call ends within a second")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RpcError::Disconnected(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    eventually("the client's close event", || {
        client_handler.closed.lock().unwrap().len() == 1
    })
    .await;
    assert!(!client.is_active());
}

#[tokio::test]
async fn a_dropped_call_is_forgotten_and_its_late_reply_discarded() {
    let (server, handler, factory, _) = setup().await;
    let client = factory.create_client(server.local_addr()).await.unwrap();
    let call = client.send_rpc("keep".into(), None);
    eventually("the request to arrive", || {
        handler.kept.lock().unwrap().len() == 1
    })
    .await;
    drop(call);
    let responder = handler.kept.lock().unwrap().pop().unwrap();
    responder.reply("late".into()).unwrap();
    eventually("the late reply to be counted", || {
        client.stats().unmatched_replies == 1
    })
    .await;
    assert_eq!(
        client.send_rpc("still works".into(), None).await.unwrap(),
        "still works"
    );
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_with_the_address() {
    let (_, _, factory, _) = setup().await;
    let addr = {
        let l = std::net::TcpListener::bind(localhost()).unwrap();
        l.local_addr().unwrap()
    };
    let err = factory.create_client(addr).await.unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn both_sides_can_send_requests_on_one_connection() {
    let (server, _, factory, client_handler) = setup().await;
    let client = factory.create_client(server.local_addr()).await.unwrap();
    client.send("hello".into()).unwrap();
    eventually("the server to see the connection", || {
        server.connections().len() == 1
    })
    .await;
    let back = server.connections().pop().unwrap();
    let reply = back.send_rpc("from the server".into(), None).await.unwrap();
    assert_eq!(
        reply, "from the server",
        "the client side's handler answered"
    );
    back.send("one way back".into()).unwrap();
    eventually("the one-way message", || {
        client_handler.one_way.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_backpressures_the_writer_with_bounded_memory() {
    // A peer that accepts and never reads.
    let listener = std::net::TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(10));
        drop(stream);
    });
    let limit = 256 * 1024;
    let config = TransportConfig::default().with_connection(
        rpc_tokio::rpc_proto::Config::builder()
            .with_max_send_buffer(limit)
            .build()
            .unwrap(),
    );
    let factory =
        TransportClientFactory::new(TokioRuntime::shared(), Arc::new(Echo::default()), config);
    let client = factory.create_client(addr).await.unwrap();

    let body = Bytes::from(vec![7u8; 64 * 1024]);
    let frame = (8 + 1 + 4 + body.len()) as u64;
    // Write as fast as the connection lets us: each send waits for room first. The peer reads
    // nothing, so once the kernel's socket buffers are full too, ready() must stop resolving.
    let mut sent = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), client.ready()).await {
            Err(_) => break, // backpressured: no room, and none coming
            Ok(result) => result.unwrap(),
        }
        match client.send(body.clone()) {
            Ok(()) => sent += 1,
            // Room may be gone again between ready() and send(): a refusal, not a failure.
            Err(rpc_tokio::rpc_proto::CallError::SendBufferFull { max, .. }) => {
                assert_eq!(max, limit)
            }
            Err(e) => panic!("{e}"),
        }
        // Memory is bounded: what we buffer stays within the limit plus one frame; the rest
        // of what was accepted sits in the kernel's socket buffers.
        let buffered = client.buffered_bytes();
        assert!(buffered <= limit + frame, "{buffered} bytes buffered");
        assert!(
            sent * frame < 1 << 30,
            "a gigabyte went into a socket nobody reads"
        );
    }
    assert!(sent > 0);
    assert!(
        client.buffered_bytes() > limit / 2,
        "stopped although there was room"
    );
    // ... and is released with an error when the connection goes.
    let ready = tokio::spawn({
        let client = client.clone();
        async move { client.ready().await }
    });
    client.close();
    let result = tokio::time::timeout(Duration::from_secs(5), ready)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, Err(rpc_tokio::rpc_proto::CallError::Closed));
}

#[tokio::test]
async fn ready_resolves_once_a_reading_peer_drains_the_buffer() {
    let (server, handler, _, _) = setup().await;
    let limit = 64 * 1024;
    let config = TransportConfig::default().with_connection(
        rpc_tokio::rpc_proto::Config::builder()
            .with_max_send_buffer(limit)
            .build()
            .unwrap(),
    );
    let factory =
        TransportClientFactory::new(TokioRuntime::shared(), Arc::new(Echo::default()), config);
    let client = factory.create_client(server.local_addr()).await.unwrap();
    let mut sent = 0;
    for _ in 0..2_000 {
        tokio::time::timeout(Duration::from_secs(5), client.ready())
            .await
            .unwrap()
            .unwrap();
        client.send(Bytes::from(vec![1u8; 512])).unwrap();
        sent += 1;
    }
    eventually("every message to arrive", || {
        handler.one_way.load(Ordering::SeqCst) == sent
    })
    .await;
}
