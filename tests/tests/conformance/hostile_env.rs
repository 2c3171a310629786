//! One hostile peer against a server, on real sockets (issue 11): a flood of messages to a
//! slow endpoint, asks parked without end, a forged sender, lookups probing types, another
//! connection's streams, blocks opened and never fetched. Each limit is reached with a clear
//! outcome (a typed refusal, or a message counted and dropped), never by unbounded growth,
//! and a well-behaved client on another connection keeps being answered.
//!
//! Nothing here measures speed or depends on scheduling: the slow endpoint is held by a gate
//! the test opens, so what the inbox holds is exact.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc::{RequestId, RpcAddress, RequestError as WireError, StreamChunkId};
use rpc_proto::{EnvelopeKind, EnvelopePrefix, Frame};
use rpc::{
    fetch_blocks, BlockFetchConfig, BlockFetchError, BlockServer, BlockTransferMessage, BoxError,
    EndpointContext, OneForOneStreamManager, OpenBlocks, RpcCallContext, RpcEndpoint, RpcEnv,
    RpcError, RpcHandler, RpcResponder, SetupError, StreamManager, TransportClient,
    TransportClientFactory, TransportServer,
};

use super::transport::{localhost, Echo};
use super::util::*;
use super::wire::{encode, raw_connect, read_frames};

/// The identity of an endpoint taking `Cmd` and answering `String`.
const CMD: &str = "Cmd -> String";

/// A serial endpoint whose handlers wait until the gate opens, then count the message; it
/// counts connection events too.
struct Gated {
    open: Arc<AtomicBool>,
    handled: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
}

impl Gated {
    async fn wait(&self) {
        while !self.open.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(2)).await;
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
    }
}

impl RpcEndpoint for Gated {
    type Message = Cmd;
    type Reply = String;

    async fn receive(&mut self, _: &EndpointContext<Cmd, String>, _: Cmd) -> Result<(), BoxError> {
        self.wait().await;
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Cmd, String>,
        _: Cmd,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        self.wait().await;
        call.reply("gated".into());
        Ok(())
    }

    async fn on_connected(&mut self, _: &EndpointContext<Cmd, String>, _: RpcAddress) {
        self.connected.fetch_add(1, Ordering::SeqCst);
    }
}

/// The socket address of a server-mode env on 127.0.0.1.
fn socket(env: &RpcEnv) -> std::net::SocketAddr {
    addr(env).to_string().parse().unwrap()
}

/// An envelope body from `sender` to `receiver` carrying `cmd`.
fn body(sender: Option<&RpcAddress>, receiver: &str, kind: EnvelopeKind, cmd: &Cmd) -> Bytes {
    EnvelopePrefix::new(sender, receiver, CMD)
        .encode(None, kind, cmd)
        .unwrap()
}

fn ask(request: u64, body: Bytes) -> Frame {
    Frame::RpcRequest {
        request: RequestId(request),
        body,
    }
}

/// Closes a raw connection cleanly.
fn hang_up(peer: TcpStream) {
    let _ = peer.shutdown(Shutdown::Both);
}

fn is_busy(result: &Result<String, RpcError>) -> bool {
    matches!(result, Err(RpcError::EndpointBusy { .. }))
}

/// Regression (issue 11): a peer sending one-way messages to a slow endpoint grew its inbox
/// without bound (218 B a message), keeping it busy long after the peer left.
#[test]
fn a_flood_of_one_way_messages_fills_the_inbox_to_its_bound_and_no_further() {
    const CAPACITY: usize = 100;
    const SENT: usize = 3_000;
    block_on(async {
        let a = RpcEnv::create(
            rt(),
            server_config("a")
                .to_builder()
                .with_inbox_capacity(CAPACITY)
                .build()
                .unwrap(),
        )
        .unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let handled = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        let slow = a
            .setup_endpoint(
                "slow",
                Gated {
                    open: open.clone(),
                    handled: handled.clone(),
                    connected: connected.clone(),
                },
            )
            .unwrap();
        a.setup_endpoint("probe", Probe::default()).unwrap();

        let mut peer = raw_connect(socket(&a));
        // Events take room in the inbox (they are never refused): let the endpoint handle
        // the peer's before the flood, so exactly CAPACITY messages of it are taken.
        eventually("the peer's connection event", || {
            connected.load(Ordering::SeqCst) == 1
        })
        .await;
        let note = body(None, "slow", EnvelopeKind::Send, &Cmd::Note("flood".into()));
        let frames: Vec<Frame> = (0..SENT)
            .map(|_| Frame::OneWayMessage { body: note.clone() })
            .collect();
        peer.write_all(&encode(&frames)).unwrap();

        // Everything past the capacity is counted and dropped; the inbox holds its bound.
        eventually("the flood to be dropped", || {
            a.stats().dropped == (SENT - CAPACITY) as u64
        })
        .await;
        assert_eq!(a.stats().inboxed, CAPACITY as u64);

        // A well-behaved client on another connection is answered by another endpoint, and
        // told at once that the slow one is busy.
        let c = client_env("c");
        let probe = lookup(&c, &a, "probe").await;
        let reply = within("an ask to another endpoint", probe.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "hi");
        let to_slow = lookup(&c, &a, "slow").await;
        let refused = within("a refusal", to_slow.ask(Cmd::Echo("hi".into()))).await;
        assert!(is_busy(&refused), "{refused:?}");
        assert!(a.stats().refused >= 1);
        // A local sender is told too: `send` and `ask` return the error.
        assert!(
            matches!(slow.send(Cmd::Note("local".into())), Err(RpcError::EndpointBusy { .. })),
            "a local send to a full inbox"
        );
        let local = within("a local refusal", slow.ask(Cmd::Echo("local".into()))).await;
        assert!(is_busy(&local), "{local:?}");
        // Plus the event of c's connection, queued behind the held message: network events
        // are never refused.
        assert_eq!(a.stats().inboxed, CAPACITY as u64 + 1);

        // The endpoint works through what it holds, and no more.
        hang_up(peer);
        open.store(true, Ordering::SeqCst);
        eventually("the inbox to drain", || a.stats().inboxed == 0).await;
        assert_eq!(handled.load(Ordering::SeqCst), CAPACITY);
        let reply = within("an ask once drained", to_slow.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "gated");
        shutdown(&[&a, &c]).await;
    })
}

/// Regression (issue 11): asks parked by a peer were unbounded.
#[test]
fn asks_past_the_pending_budget_are_refused_as_busy_until_some_are_answered() {
    const BUDGET: usize = 50;
    const ASKED: u64 = 200;
    block_on(async {
        let a = RpcEnv::create(
            rt(),
            server_config("a")
                .to_builder()
                .with_max_pending_asks(BUDGET)
                .build()
                .unwrap(),
        )
        .unwrap();
        let rec = Recorder::default();
        let probe_local = a.setup_endpoint("probe", Probe::new(&rec)).unwrap();

        let mut peer = raw_connect(socket(&a));
        let keep = body(None, "probe", EnvelopeKind::Ask, &Cmd::Keep);
        let frames: Vec<Frame> = (1..=ASKED).map(|id| ask(id, keep.clone())).collect();
        peer.write_all(&encode(&frames)).unwrap();
        // The first BUDGET asks are kept unanswered; every later one is refused at once.
        let refused = on_thread(move || {
            let frames = read_frames(&mut peer, (ASKED as usize) - BUDGET, 64 * 1024);
            (frames, peer)
        });
        let (frames, peer) = within("the refusals", refused).await;
        let mut ids = BTreeSet::new();
        for frame in frames {
            match frame {
                Frame::RpcFailure { request, error } => {
                    assert!(error.starts_with("[rpc:endpoint-busy] "), "{error}");
                    ids.insert(request.0);
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(ids, (BUDGET as u64 + 1..=ASKED).collect::<BTreeSet<_>>());
        eventually("the kept asks", || rec.starting_with("kept").len() == BUDGET).await;
        let stats = a.stats();
        assert_eq!(stats.pending_asks, BUDGET as u64);
        assert_eq!(stats.refused, ASKED - BUDGET as u64);

        // Another env's ask is refused with a typed error while the budget is spent; local
        // asks are not counted against it.
        let c = client_env("c");
        let probe = lookup(&c, &a, "probe").await;
        let busy = within("a refusal", probe.ask(Cmd::Echo("c".into()))).await;
        assert!(is_busy(&busy), "{busy:?}");
        let local = within("a local ask", probe_local.ask(Cmd::Quiet("me".into()))).await;
        assert_eq!(local.unwrap(), "me");

        // Answering the parked asks gives the budget back.
        for call in rec.take_kept() {
            call.reply("late".into());
        }
        eventually("the budget back", || a.stats().pending_asks == 0).await;
        let reply = within("an ask", probe.ask(Cmd::Echo("c".into()))).await;
        assert_eq!(reply.unwrap(), "c");
        hang_up(peer);
        shutdown(&[&a, &c]).await;
    })
}

/// Regression (issue 11): a call context's `sender_address` was whatever the envelope
/// claimed. Network events and call contexts now use the address bound to the connection
/// (the first one announced); a later claim never produces events for the claimed address.
#[test]
fn a_forged_sender_is_ignored_for_network_events_and_call_contexts() {
    block_on(async {
        let (a, victim) = (server_env("a"), server_env("victim"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let own = RpcAddress::new("127.0.0.1", 1);
        let forged = addr(&victim);

        let mut peer = raw_connect(socket(&a));
        let frames = [
            ask(1, body(Some(&own), "probe", EnvelopeKind::Ask, &Cmd::Echo("first".into()))),
            ask(
                2,
                body(Some(&forged), "probe", EnvelopeKind::Ask, &Cmd::Echo("forged".into())),
            ),
            Frame::OneWayMessage {
                body: body(Some(&forged), "probe", EnvelopeKind::Send, &Cmd::Note("x".into())),
            },
        ];
        peer.write_all(&encode(&frames)).unwrap();
        let replies = on_thread(move || {
            let frames = read_frames(&mut peer, 2, 64 * 1024);
            (frames, peer)
        });
        let (replies, peer) = within("the replies", replies).await;
        assert_eq!(replies.len(), 2);
        rec.wait_for("note:x").await;
        assert_eq!(
            rec.starting_with("ask:"),
            [format!("ask:first from {own}"), format!("ask:forged from {own}")]
        );
        hang_up(peer);
        rec.wait_for(&format!("disconnected:{own}")).await;
        let probe = lookup(&victim, &a, "probe").await;
        flush(&probe).await;
        // The victim's own connection reports it; the forged claim never did.
        let about_victim: Vec<_> = rec
            .entries()
            .into_iter()
            .filter(|e| e.ends_with(&format!(":{forged}")))
            .collect();
        assert_eq!(about_victim, [format!("connected:{forged}")]);
        shutdown(&[&victim]).await;
        rec.wait_for(&format!("disconnected:{forged}")).await;
        shutdown(&[&a]).await;
    })
}

/// Regression (issue 11): a lookup or message with the wrong types was told the endpoint's
/// types.
#[test]
fn a_mismatched_lookup_or_message_does_not_reveal_the_endpoints_types() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        a.setup_endpoint("probe", Probe::default()).unwrap();

        let mut peer = raw_connect(socket(&a));
        let prefix = EnvelopePrefix::new(None, "probe", "Evil -> Evil");
        let frames = [
            ask(1, prefix.encode_raw(None, EnvelopeKind::Verify, &[])),
            ask(2, prefix.encode(None, EnvelopeKind::Ask, &0u8).unwrap()),
        ];
        peer.write_all(&encode(&frames)).unwrap();
        let replies = on_thread(move || read_frames(&mut peer, 2, 64 * 1024));
        for frame in within("the answers", replies).await {
            let text = match frame {
                Frame::RpcResponse { body, .. } => String::from_utf8_lossy(&body).into_owned(),
                Frame::RpcFailure { error, .. } => error,
                other => panic!("unexpected {other:?}"),
            };
            assert!(!text.contains("Cmd"), "the answer names the endpoint's type: {text:?}");
        }

        // Through the API: another env learns only that the types differ.
        let err = within("a lookup", b.setup_endpoint_ref::<String, String>(addr(&a), "probe"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SetupError::Lookup(RpcError::TypeMismatch { found: None, .. })),
            "{err:?}"
        );
        assert!(!err.to_string().contains("Cmd"), "{err}");
        shutdown(&[&a, &b]).await;
    })
}

/// Serves chunks from a [`OneForOneStreamManager`] with random ids.
struct Streams(OneForOneStreamManager);

impl RpcHandler for Streams {
    fn receive(&self, _: &TransportClient, _: Bytes, responder: RpcResponder) {
        let _ = responder.fail("no rpcs here");
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(&self.0)
    }
}

fn factory() -> TransportClientFactory {
    TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config())
}

/// Regression (issue 11): a peer fetched another connection's stream (ids were
/// sequential), and the owner's next fetch failed "out-of-order chunk".
#[test]
fn a_stream_registered_for_a_connection_is_served_on_that_connection_only() {
    block_on(async {
        let streams = Arc::new(Streams(OneForOneStreamManager::random()));
        let server =
            TransportServer::bind(rt(), localhost(), streams.clone(), transport_config())
                .unwrap();
        let (owner_factory, thief_factory) = (factory(), factory());
        let owner = owner_factory.create_client(server.local_addr()).await.unwrap();
        let thief = thief_factory.create_client(server.local_addr()).await.unwrap();
        eventually("both connections", || server.connections().len() == 2).await;
        let theirs = server
            .connections()
            .into_iter()
            .find(|c| c.peer_addr() == owner.local_addr())
            .unwrap();
        let chunks = vec![Bytes::from_static(b"zero"), Bytes::from_static(b"one")];
        let id = streams.0.register_stream("app", chunks, Some(&theirs));
        let other = streams.0.register_stream("app", Vec::new(), None);
        assert!(id <= i64::MAX as u64 && other <= i64::MAX as u64);
        assert_ne!(other, id.wrapping_add(1), "ids follow each other");

        let stolen = within("the thief's fetch", thief.fetch_chunk(StreamChunkId::new(id, 0), None)).await;
        assert_eq!(
            stolen,
            Err(WireError::Remote(
                format!("Requested chunk not available since streamId {id} is closed").into()
            )),
        );
        for (i, expected) in [&b"zero"[..], b"one"].into_iter().enumerate() {
            let chunk = within(
                "the owner's fetch",
                owner.fetch_chunk(StreamChunkId::new(id, i as u32), None),
            )
            .await;
            assert_eq!(chunk.unwrap(), expected);
        }
        owner_factory.close();
        thief_factory.close();
        server.close();
    })
}

/// Regression (issue 11): `OpenBlocks` read every block at once, and a connection could open
/// streams without limit.
#[test]
fn a_block_server_reads_blocks_when_fetched_and_limits_streams_per_connection() {
    block_on(async {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let source = move |_: &str, _: &str, id: &str| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Bytes::from(id.to_owned()))
        };
        let blocks = Arc::new(
            BlockServer::builder(source)
                .with_max_streams_per_connection(2)
                .build()
                .unwrap(),
        );
        let server =
            TransportServer::bind(rt(), localhost(), blocks.clone(), transport_config())
                .unwrap();
        let first = factory();
        let client = first.create_client(server.local_addr()).await.unwrap();
        let open = |n: usize| {
            BlockTransferMessage::OpenBlocks(OpenBlocks {
                app_id: "app".into(),
                exec_id: "1".into(),
                block_ids: (0..n).map(|i| format!("b{i}")).collect(),
            })
            .encode()
        };
        let mut handles = Vec::new();
        for _ in 0..2 {
            let reply = within("an open", client.send_rpc(open(1000), None)).await.unwrap();
            match BlockTransferMessage::decode(&reply).unwrap() {
                BlockTransferMessage::StreamHandle(handle) => handles.push(handle),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(reads.load(Ordering::SeqCst), 0, "blocks read before being fetched");

        // A third stream on the same connection is refused; the fetcher says so.
        let refused = within("a refused open", client.send_rpc(open(1), None)).await;
        assert!(
            matches!(&refused, Err(WireError::Remote(m)) if m.starts_with("too many open streams")),
            "{refused:?}"
        );
        let config = BlockFetchConfig::default();
        let mut fetch = fetch_blocks(&first, server.local_addr(), "app", "1", vec!["b0".into()], &config);
        let (_, outcome) = within("a refused fetch", futures_lite::StreamExt::next(&mut fetch))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Err(BlockFetchError::TooManyStreams(_))),
            "{outcome:?}"
        );
        assert_eq!(blocks.streams().registered(), 2);

        // Another connection is not limited by this one's streams.
        let other_factory = factory();
        let mut fetch =
            fetch_blocks(&other_factory, server.local_addr(), "app", "1", vec!["b5".into()], &config);
        let (id, outcome) = within("a fetch", futures_lite::StreamExt::next(&mut fetch))
            .await
            .unwrap();
        assert_eq!((id.as_str(), outcome.unwrap()), ("b5", Bytes::from_static(b"b5")));

        // A chunk fetch reads its block, and only it.
        let before = reads.load(Ordering::SeqCst);
        let chunk = within(
            "a chunk",
            client.fetch_chunk(StreamChunkId::new(handles[0].stream_id, 0), None),
        )
        .await;
        assert_eq!(chunk.unwrap(), Bytes::from_static(b"b0"));
        assert_eq!(reads.load(Ordering::SeqCst), before + 1);
        first.close();
        other_factory.close();
        eventually("the streams released", || blocks.streams().registered() == 0).await;
        server.close();
    })
}
