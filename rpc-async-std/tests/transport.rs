//! Smoke tests of the transport layer on this adapter, each run under async-std, under
//! `smol::block_on` and on a single smol thread: RPCs and one-way messages both ways, call
//! timeouts, and closing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::Timer;
use bytes::Bytes;
use common::{on_each_executor, within, WAIT};
use rpc_async_std::{ConnectionError, RequestError};
use rpc_async_std::{
    RpcHandler, RpcResponder, Runtime, TransportClient, TransportClientFactory, TransportConfig,
    TransportServer,
};

on_each_executor!(
    rpcs_and_one_way_messages_cross_in_both_directions,
    a_call_times_out_and_a_pending_call_fails_when_the_server_closes,
);

/// Echoes RPCs from a task of the runtime (keeps the ones saying "keep"), counts one-way
/// messages and closed connections.
struct Echo {
    rt: Arc<dyn Runtime>,
    one_way: AtomicUsize,
    closed: AtomicUsize,
    kept: Mutex<Vec<RpcResponder>>,
}

impl Echo {
    fn new(rt: &Arc<dyn Runtime>) -> Arc<Self> {
        Arc::new(Self {
            rt: rt.clone(),
            one_way: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            kept: Mutex::default(),
        })
    }
}

impl RpcHandler for Echo {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        if message == "keep" {
            self.kept.lock().unwrap().push(responder);
        } else {
            self.rt.spawn(Box::pin(async move {
                responder.reply(message).unwrap();
            }));
        }
    }

    fn receive_one_way(&self, _: &TransportClient, _: Bytes) {
        self.one_way.fetch_add(1, Ordering::SeqCst);
    }

    fn connection_closed(&self, _: &TransportClient, _: &ConnectionError) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

struct Setup {
    server: TransportServer,
    server_handler: Arc<Echo>,
    factory: TransportClientFactory,
    client_handler: Arc<Echo>,
}

fn setup(rt: &Arc<dyn Runtime>) -> Setup {
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server_handler = Echo::new(rt);
    let client_handler = Echo::new(rt);
    let config = TransportConfig::default();
    Setup {
        server: TransportServer::bind(
            rt.clone(),
            localhost,
            server_handler.clone(),
            config.clone(),
        )
        .unwrap(),
        factory: TransportClientFactory::new(rt.clone(), client_handler.clone(), config),
        server_handler,
        client_handler,
    }
}

/// Polls `f` until it holds, failing the test after [`WAIT`].
async fn eventually(what: &str, f: impl Fn() -> bool) {
    within(what, async {
        while !f() {
            Timer::after(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn rpcs_and_one_way_messages_cross_in_both_directions(rt: Arc<dyn Runtime>) {
    let s = setup(&rt);
    let client = within(
        "a connection",
        s.factory.create_client(s.server.local_addr()),
    )
    .await
    .unwrap();
    let reply = within("a reply", client.send_rpc("hello".into(), None)).await;
    assert_eq!(reply.unwrap(), "hello");
    for _ in 0..10 {
        client.send("tick".into()).unwrap();
    }
    eventually("ten one-way messages", || {
        s.server_handler.one_way.load(Ordering::SeqCst) == 10
    })
    .await;

    let back = s.server.connections().pop().expect("the server's side");
    let reply = within("a reply", back.send_rpc("from the server".into(), None)).await;
    assert_eq!(reply.unwrap(), "from the server");
    back.send("tock".into()).unwrap();
    eventually("a one-way message back", || {
        s.client_handler.one_way.load(Ordering::SeqCst) == 1
    })
    .await;
    s.factory.close();
    s.server.close();
}

async fn a_call_times_out_and_a_pending_call_fails_when_the_server_closes(rt: Arc<dyn Runtime>) {
    let s = setup(&rt);
    let client = within(
        "a connection",
        s.factory.create_client(s.server.local_addr()),
    )
    .await
    .unwrap();
    let after = Duration::from_millis(50);
    let err = within("the timeout", client.send_rpc("keep".into(), Some(after)))
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::TimedOut { after });

    let pending = client.send_rpc("keep".into(), Some(WAIT * 2));
    eventually("the request to arrive", || {
        s.server_handler.kept.lock().unwrap().len() == 2
    })
    .await;
    s.server.close();
    let err = within("the pending call to fail", pending)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Disconnected(_)), "{err}");
    eventually("the client to see the close", || {
        s.client_handler.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(!client.is_active());
}
