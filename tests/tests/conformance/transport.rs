//! The transport layer on real sockets: Spark's `TransportServer`, `TransportClient` and
//! `TransportClientFactory`, and the [`Echo`] handler the transport tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc::{ConnectionError, RequestError};
use rpc::{
    ConnectError, NoopRpcHandler, RpcHandler, RpcResponder, TransportClient,
    TransportClientFactory, TransportServer,
};

use super::util::*;

/// Echoes RPCs from another task ("fail" fails, "drop" drops the responder, "keep" keeps
/// it unanswered, `big:<n>` answers with [`big_body`]`(n)`), counts one-way messages and
/// connection events.
#[derive(Default)]
pub(crate) struct Echo {
    pub(crate) one_way: AtomicUsize,
    pub(crate) opened: AtomicUsize,
    pub(crate) closed: Mutex<Vec<ConnectionError>>,
    pub(crate) kept: Mutex<Vec<RpcResponder>>,
}

impl RpcHandler for Echo {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        match &message[..] {
            b"fail" => responder.fail("you asked for it").unwrap(),
            b"drop" => drop(responder),
            b"keep" => self.kept.lock().unwrap().push(responder),
            m if m.starts_with(b"big:") => {
                let n = std::str::from_utf8(&m[4..]).unwrap().parse().unwrap();
                responder.reply(big_body(n)).unwrap();
            }
            _ => {
                // Answer from another task, later: responders are Send + 'static. The caller
                // may be gone by then (a dropped call, a closed connection): not an error.
                drop(spawn(async move {
                    let _ = responder.reply(message);
                }));
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

/// `n` bytes that are not all alike: where each byte lands is checked.
pub(crate) fn big_body(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// Any free port of 127.0.0.1.
pub(crate) fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An [`Echo`] server, and a factory whose connections' handler is another [`Echo`].
pub(crate) async fn setup() -> (
    TransportServer,
    Arc<Echo>,
    TransportClientFactory,
    Arc<Echo>,
) {
    let server_handler = Arc::new(Echo::default());
    let server = TransportServer::bind(
        rt(),
        localhost(),
        server_handler.clone(),
        transport_config(),
    )
    .unwrap();
    let client_handler = Arc::new(Echo::default());
    let factory =
        TransportClientFactory::new(rt(), client_handler.clone(), transport_config());
    (server, server_handler, factory, client_handler)
}

#[test]
fn rpc_replies_failures_and_one_way_messages_cross_a_real_socket() {
    block_on(async {
        let (server, handler, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();

        let reply = within("the reply", client.send_rpc("hello".into(), None))
            .await
            .unwrap();
        assert_eq!(reply, "hello");

        let err = within("the failure", client.send_rpc("fail".into(), None))
            .await
            .unwrap_err();
        assert_eq!(err, RequestError::Remote("you asked for it".into()));

        let err = within("the failure", client.send_rpc("drop".into(), None))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RequestError::Remote("the request was dropped without a reply".into())
        );

        for _ in 0..10 {
            client.send("tick".into()).unwrap();
        }
        eventually("one-way messages", || {
            handler.one_way.load(Ordering::SeqCst) == 10
        })
        .await;
        assert_eq!(handler.opened.load(Ordering::SeqCst), 1);
    })
}

#[test]
fn many_concurrent_rpcs_on_one_connection_each_get_their_own_reply() {
    block_on(async {
        let (server, _, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let calls: Vec<_> = (0..1000)
            .map(|i| {
                let client = client.clone();
                spawn(async move {
                    let body = Bytes::from(format!("call {i}"));
                    let reply = within("a reply", client.send_rpc(body.clone(), None)).await;
                    let reply = reply.unwrap();
                    assert_eq!(reply, body);
                })
            })
            .collect();
        for call in calls {
            within("every call", call).await;
        }
        assert_eq!(
            server.connections().len(),
            1,
            "all calls shared one connection"
        );
    })
}

#[test]
fn the_factory_pools_one_connection_per_peer() {
    block_on(async {
        let (server, handler, factory, _) = setup().await;
        let a = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let b = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        assert_eq!(a, b);
        a.close();
        eventually("the close", || !b.is_active()).await;
        let c = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        assert_ne!(a, c, "a closed connection is replaced");
        eventually("two connections opened", || {
            handler.opened.load(Ordering::SeqCst) == 2
        })
        .await;
    })
}

#[test]
fn unmanaged_client_is_not_pooled() {
    block_on(async {
        let (server, _, factory, _) = setup().await;
        let addr = server.local_addr();
        let pooled = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        let unmanaged = within("a connection", factory.create_unmanaged_client(addr))
            .await
            .unwrap();
        assert_ne!(*unmanaged, pooled, "not taken from the pool");
        assert_ne!(unmanaged.id(), pooled.id());
        // Opened with the factory's settings (its security among them): the server serves it.
        let reply = within("the reply", unmanaged.send_rpc("hello".into(), None))
            .await
            .unwrap();
        assert_eq!(reply, "hello");
        assert_eq!(unmanaged.client_id(), pooled.client_id());
        let again = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        assert_eq!(again, pooled, "not put in the pool");
        let other = within("a connection", factory.create_unmanaged_client(addr))
            .await
            .unwrap();
        assert_ne!(*other, *unmanaged, "each is a connection of its own");
        eventually("three connections", || server.connections().len() == 3).await;

        // Closing the factory closes its pool only.
        let handle = unmanaged.client().clone();
        factory.close();
        eventually("the pool closed", || !pooled.is_active()).await;
        assert!(handle.is_active() && other.is_active());
        // Dropping it closes it, whatever clones of its handle remain.
        drop(unmanaged);
        eventually("the drop to close it", || !handle.is_active()).await;
        assert_eq!(handle.close_reason(), Some(ConnectionError::LocallyClosed));
        other.close();
        eventually("the explicit close", || !other.is_active()).await;
        eventually("the server to see every close", || {
            server.connections().is_empty()
        })
        .await;
        let refused = factory.create_unmanaged_client(addr).await.unwrap_err();
        assert_eq!(refused, ConnectError::Closed);
    })
}

#[test]
fn a_noop_handler_fails_the_peers_rpcs_at_once() {
    block_on(async {
        let server = TransportServer::bind(
            rt(),
            localhost(),
            Arc::new(Echo::default()),
            transport_config(),
        )
        .unwrap();
        let factory =
            TransportClientFactory::new(rt(), Arc::new(NoopRpcHandler), transport_config());
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        client.send("hello".into()).unwrap();
        eventually("the server to see the connection", || {
            server.connections().len() == 1
        })
        .await;
        let back = server.connections().pop().unwrap();
        let error = within("the refusal", back.send_rpc("anyone there?".into(), None))
            .await
            .unwrap_err();
        assert_eq!(error, RequestError::Remote(NoopRpcHandler::REFUSAL.into()));
        assert!(client.is_active(), "the connection stays usable");
        let reply = within("the reply", client.send_rpc("hello".into(), None))
            .await
            .unwrap();
        assert_eq!(reply, "hello");
    })
}

#[test]
fn a_call_times_out_naming_its_timeout() {
    block_on(async {
        let (server, _, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let err = within(
            "the timeout",
            client.send_rpc("keep".into(), Some(Duration::from_millis(50))),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            RequestError::TimedOut {
                after: Duration::from_millis(50)
            }
        );
        assert!(err.to_string().contains("50ms"));
    })
}

#[test]
fn pending_calls_fail_fast_when_the_peer_goes_away() {
    block_on(async {
        let (server, _, factory, client_handler) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let pending = spawn({
            let client = client.clone();
            async move { client.send_rpc("keep".into(), None).await }
        });
        sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        server.close();
        let err = give_up_after(Duration::from_secs(1), pending)
            .await
            .expect("the pending call ends within a second")
            .unwrap_err();
        assert!(matches!(err, RequestError::Disconnected(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        eventually("the client's close event", || {
            client_handler.closed.lock().unwrap().len() == 1
        })
        .await;
        assert!(!client.is_active());
    })
}

#[test]
fn a_dropped_call_is_forgotten_and_its_late_reply_discarded() {
    block_on(async {
        let (server, handler, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
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
            within("a reply", client.send_rpc("still works".into(), None))
                .await
                .unwrap(),
            "still works"
        );
    })
}

#[test]
fn connecting_to_a_closed_port_fails_with_the_address() {
    block_on(async {
        let (_, _, factory, _) = setup().await;
        let addr = {
            let l = std::net::TcpListener::bind(localhost()).unwrap();
            l.local_addr().unwrap()
        };
        let err = within("the failed connect", factory.create_client(addr))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    })
}

#[test]
fn both_sides_can_send_requests_on_one_connection() {
    block_on(async {
        let (server, _, factory, client_handler) = setup().await;
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        client.send("hello".into()).unwrap();
        eventually("the server to see the connection", || {
            server.connections().len() == 1
        })
        .await;
        let back = server.connections().pop().unwrap();
        let reply = within("the reply", back.send_rpc("from the server".into(), None))
            .await
            .unwrap();
        assert_eq!(
            reply, "from the server",
            "the client side's handler answered"
        );
        back.send("one way back".into()).unwrap();
        eventually("the one-way message", || {
            client_handler.one_way.load(Ordering::SeqCst) == 1
        })
        .await;
    })
}
