//! Spark's transport suites, the behaviours the other files do not cover yet:
//! `TransportClientFactorySuite` (pooling, round robin, closing, idle connections, fast-fail,
//! connect timeouts), `RequestTimeoutIntegrationSuite` (the idle timeout of a connection with
//! outstanding requests), `StreamSuite` (many streams at once on one connection),
//! `ChunkFetchIntegrationSuite` (many chunks at once, failures among them) and
//! `RpcIntegrationSuite` (failures, one-way messages, the frame limit), plus a body over
//! 4 GiB.
//!
//! Spark's `furtherRequestsDelay` makes a stream manager sleep in `getChunk`; ours is called on
//! the connection's driver and must not block, so a server that never answers (a raw socket
//! that reads and discards) stands in for the slow chunk.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::poll_once;
use futures_lite::StreamExt;
use rpc::{CallError, Config, ConnectionError, RequestError, StreamChunkId};
use rpc::{
    ConnectError, RpcHandler, RpcResponder, StreamManager, TransportClient, TransportClientFactory,
    TransportConfig, TransportServer, UploadSink,
};

use super::transport::localhost;
use super::util::*;

const MIB: usize = 1024 * 1024;

/// Bytes a frame adds around an RPC body: length (8), type (1), request id (8), body length
/// (4).
const RPC_FRAME_OVERHEAD: u64 = 21;

/// `n` bytes that depend on `seed`: each stream and chunk has its own.
fn pattern(n: usize, seed: usize) -> Bytes {
    (0..n)
        .map(|i| ((i + seed) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// The size of chunk `index` served by [`Spark`]: empty, tiny, small and large ones.
fn chunk_size(index: u32) -> usize {
    [0, 1, 1000, 300_000][index as usize % 4]
}

/// The chunk [`Spark`] serves for `chunk`.
fn chunk_body(chunk: StreamChunkId) -> Bytes {
    pattern(
        chunk_size(chunk.chunk_index),
        (chunk.stream_id as usize) * 7 + chunk.chunk_index as usize,
    )
}

/// Chunk indices from this one on do not exist.
const NO_SUCH_CHUNK: u32 = 1000;

/// The handler of these tests, like Spark's suites' test handlers:
///
/// - RPCs: `fail:<m>` fails with `m`, `keep` keeps the responder unanswered, `big:<n>`
///   answers with `n` pattern bytes, anything else is echoed at once.
/// - Every RPC and one-way message shorter than 64 bytes is logged in arrival order.
/// - Chunks: any stream id, any order; index `i` is [`chunk_body`], from [`NO_SUCH_CHUNK`]
///   on they fail.
/// - Streams `bytes/<n>/<seed>` of `n` pattern bytes.
/// - Uploads with meta `count`: a [`Counter`].
#[derive(Default)]
struct Spark {
    log: Mutex<Vec<String>>,
    kept: Mutex<Vec<RpcResponder>>,
}

impl Spark {
    fn log(&self, kind: &str, body: &[u8]) {
        if body.len() < 64 {
            let entry = format!("{kind}:{}", String::from_utf8_lossy(body));
            self.log.lock().unwrap().push(entry);
        }
    }

    async fn next_kept(&self) -> RpcResponder {
        eventually("a kept request", || !self.kept.lock().unwrap().is_empty()).await;
        self.kept.lock().unwrap().remove(0)
    }
}

impl RpcHandler for Spark {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        self.log("rpc", &message);
        if let Some(m) = message.strip_prefix(b"fail:") {
            let _ = responder.fail(&String::from_utf8_lossy(m));
        } else if &message[..] == b"keep" {
            self.kept.lock().unwrap().push(responder);
        } else if let Some(m) = message.strip_prefix(b"panic:") {
            panic!("{}", String::from_utf8_lossy(m));
        } else if let Some(n) = message.strip_prefix(b"big:") {
            let n = std::str::from_utf8(n).unwrap().parse().unwrap();
            // Too large for a frame: the caller receives the failure.
            let _ = responder.reply(pattern(n, 0));
        } else {
            let _ = responder.reply(message);
        }
    }

    fn receive_one_way(&self, _: &TransportClient, message: Bytes) {
        self.log("one-way", &message);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn receive_stream(
        &self,
        _: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, rpc::BoxError> {
        match &meta[..] {
            b"count" => Ok(Box::new(Counter::default())),
            other => Err(format!("unknown upload {other:?}").into()),
        }
    }
}

impl StreamManager for Spark {
    fn chunk(&self, _: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, rpc::BoxError> {
        if chunk.chunk_index >= NO_SUCH_CHUNK {
            return Err(format!("no chunk {chunk}").into());
        }
        Ok(chunk_body(chunk))
    }

    fn open_stream(&self, _: &TransportClient, stream_id: &str) -> Result<Bytes, rpc::BoxError> {
        let mut parts = stream_id.strip_prefix("bytes/").unwrap_or("").split('/');
        match (
            parts.next().and_then(|n| n.parse().ok()),
            parts.next().and_then(|s| s.parse().ok()),
        ) {
            (Some(n), Some(seed)) => Ok(pattern(n, seed)),
            _ => Err(format!("no stream {stream_id}").into()),
        }
    }
}

/// The byte at `position` of a body made of repeats of [`mib_piece`].
fn repeated_byte(position: u64) -> u8 {
    ((position % MIB as u64) % 251) as u8
}

/// One MiB of pattern bytes, repeated to make bodies larger than memory.
fn mib_piece() -> Bytes {
    pattern(MIB, 0)
}

/// An upload sink that only counts bytes and checks the first and last byte of every piece
/// against [`repeated_byte`]; replies `<count> <pieces>` or fails naming the first mismatch.
#[derive(Default)]
struct Counter {
    received: u64,
    pieces: u64,
    mismatch: Option<String>,
}

impl UploadSink for Counter {
    fn on_data(&mut self, data: Bytes) -> Result<(), rpc::BoxError> {
        if self.mismatch.is_none() && !data.is_empty() {
            let last = self.received + data.len() as u64 - 1;
            for (position, got) in [(self.received, data[0]), (last, data[data.len() - 1])] {
                if got != repeated_byte(position) {
                    self.mismatch = Some(format!(
                        "byte {position} is {got}, expected {}",
                        repeated_byte(position)
                    ));
                }
            }
        }
        self.received += data.len() as u64;
        self.pieces += 1;
        Ok(())
    }

    fn on_complete(self: Box<Self>, responder: RpcResponder) {
        let _ = match &self.mismatch {
            Some(m) => responder.fail(m),
            None => responder.reply(format!("{} {}", self.received, self.pieces).into()),
        };
    }
}

/// A [`Spark`] server with `config`.
fn serve_with(config: TransportConfig) -> (TransportServer, Arc<Spark>) {
    let handler = Arc::new(Spark::default());
    let server = TransportServer::bind(rt(), localhost(), handler.clone(), config).unwrap();
    (server, handler)
}

/// A [`Spark`] server with the default config.
fn serve() -> (TransportServer, Arc<Spark>) {
    serve_with(transport_config())
}

/// A factory with `config` whose connections' handler is a [`Spark`].
fn factory_with(config: TransportConfig) -> TransportClientFactory {
    TransportClientFactory::new(rt(), Arc::new(Spark::default()), config)
}

/// A transport config whose connections have `idle` as idle timeout, closing idle
/// connections or not.
fn idle_config(idle: Duration, close_idle_connections: bool) -> TransportConfig {
    let connection = Config::builder()
        .with_idle_timeout(Some(idle))
        .with_close_idle_connections(close_idle_connections)
        .build()
        .unwrap();
    transport_config()
        .to_builder()
        .with_connection(connection)
        .build()
        .unwrap()
}

async fn connect(factory: &TransportClientFactory, addr: SocketAddr) -> TransportClient {
    within("a connection", factory.create_client(addr))
        .await
        .expect("the connect succeeds")
}

async fn echo(client: &TransportClient, body: &str) {
    let reply = within("an echo", client.send_rpc(body.to_owned().into(), None)).await;
    assert_eq!(reply.expect("the echo succeeds"), body);
}

/// An echo on a connection that closes when idle: true if it was answered, false if it
/// failed only because the connection went idle first (the machine stalled this task for
/// longer than the idle timeout between connecting and asking). Any other outcome fails.
async fn echo_unless_idle(client: &TransportClient, body: &str) -> bool {
    match within("an echo", client.send_rpc(body.to_owned().into(), None)).await {
        Ok(reply) => {
            assert_eq!(reply, body);
            true
        }
        Err(error) => {
            assert!(
                matches!(client.close_reason(), Some(ConnectionError::Idle { .. })),
                "the echo failed ({error}) and the connection did not close as idle: {:?}",
                client.close_reason()
            );
            false
        }
    }
}

/// A server that accepts one connection and reads and discards what arrives, answering
/// nothing, until the peer closes.
fn never_answering_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    drop(on_thread(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
    }));
    addr
}

// ---- TransportClientFactorySuite ----

#[test]
fn concurrent_create_client_calls_share_one_pooled_connection() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let addr = server.local_addr();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let factory = factory.clone();
                spawn(async move { connect(&factory, addr).await })
            })
            .collect();
        let mut clients = Vec::new();
        for task in tasks {
            clients.push(within("every caller", task).await);
        }
        let ids: HashSet<_> = clients.iter().map(TransportClient::id).collect();
        assert_eq!(ids.len(), 1, "every caller got the same connection");
        assert!(clients[0].is_active());
        // Callers that lost the race closed their own connections.
        eventually("one connection left on the server", || {
            server.connections().len() == 1
        })
        .await;
        let again = connect(&factory, addr).await;
        assert_eq!(again, clients[0], "the pooled connection is reused");
        echo(&again, "reused").await;
        factory.close();
        server.close();
    })
}

#[test]
fn different_peers_get_different_connections() {
    block_on(async {
        let (one, _) = serve();
        let (two, _) = serve();
        let factory = factory_with(transport_config());
        let a = connect(&factory, one.local_addr()).await;
        let b = connect(&factory, two.local_addr()).await;
        assert_ne!(a, b);
        assert_eq!(a.peer_addr(), one.local_addr());
        assert_eq!(b.peer_addr(), two.local_addr());
        assert_eq!(connect(&factory, one.local_addr()).await, a);
        assert_eq!(connect(&factory, two.local_addr()).await, b);
        echo(&a, "one").await;
        echo(&b, "two").await;
        factory.close();
        one.close();
        two.close();
    })
}

#[test]
fn connections_per_peer_opens_that_many_connections_used_round_robin() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(
            transport_config()
                .to_builder()
                .with_connections_per_peer(3)
                .build()
                .unwrap(),
        );
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for _ in 0..9 {
            clients.push(connect(&factory, addr).await);
        }
        let ids: HashSet<_> = clients.iter().map(TransportClient::id).collect();
        assert_eq!(ids.len(), 3, "three distinct connections");
        for i in 3..9 {
            assert_eq!(clients[i], clients[i - 3], "call {i} is round robin");
        }
        for (i, client) in clients.iter().enumerate() {
            echo(client, &format!("over connection {i}")).await;
        }
        eventually("three connections on the server", || {
            server.connections().len() == 3
        })
        .await;

        // Many concurrent callers: still only those three.
        let tasks: Vec<_> = (0..30)
            .map(|_| {
                let factory = factory.clone();
                spawn(async move { connect(&factory, addr).await.id() })
            })
            .collect();
        for task in tasks {
            let id = within("every caller", task).await;
            assert!(ids.contains(&id), "connection {id} is one of the pool's");
        }
        assert_eq!(server.connections().len(), 3);
        factory.close();
        server.close();
    })
}

#[test]
fn a_closed_factory_closes_its_connections_and_refuses_new_ones() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        echo(&client, "before").await;
        factory.close();
        eventually("the pooled connection to close", || !client.is_active()).await;
        assert_eq!(client.close_reason(), Some(ConnectionError::LocallyClosed));
        let err = within("a refusal", factory.create_client(server.local_addr()))
            .await
            .unwrap_err();
        assert_eq!(err, ConnectError::Closed);
        factory.close(); // idempotent
        eventually("the server to see the close", || {
            server.connections().is_empty()
        })
        .await;
        server.close();
    })
}

#[test]
fn idle_connections_are_closed_and_the_next_create_client_reconnects() {
    block_on(async {
        let (server, _) = serve();
        let idle = Duration::from_millis(300);
        let factory = factory_with(idle_config(idle, true));
        let first = connect(&factory, server.local_addr()).await;
        echo_unless_idle(&first, "hello").await;
        eventually("the idle connection to close", || !first.is_active()).await;
        assert_eq!(first.close_reason(), Some(ConnectionError::Idle { idle }));

        // The next create_client makes a new connection that works (each try may itself go
        // idle before its echo on a stalled machine; one of three must get through).
        let mut answered = false;
        for _ in 0..3 {
            let next = connect(&factory, server.local_addr()).await;
            assert_ne!(first, next, "a new connection replaces the idle one");
            if echo_unless_idle(&next, "again").await {
                answered = true;
                break;
            }
        }
        assert!(answered, "no new connection answered");

        // Without close_idle_connections, an idle connection with nothing outstanding stays.
        let keeping = factory_with(idle_config(idle, false));
        let kept = connect(&keeping, server.local_addr()).await;
        echo(&kept, "hello").await;
        sleep(idle * 4).await;
        assert!(kept.is_active(), "{:?}", kept.close_reason());
        echo(&kept, "still here").await;
        factory.close();
        keeping.close();
        server.close();
    })
}

#[test]
fn fast_fail_returns_the_cached_error_without_connecting() {
    if skip_with_security("fast_fail_returns_the_cached_error_without_connecting", "its listener is a raw socket that never accepts, so never answers a handshake") {
        return;
    }
    block_on(async {
        let addr = {
            let l = std::net::TcpListener::bind(localhost()).unwrap();
            l.local_addr().unwrap()
        };
        let window = Duration::from_secs(3);
        let factory = factory_with(
            transport_config()
                .to_builder()
                .with_fast_fail_window(window)
                .build()
                .unwrap(),
        );
        let started = Instant::now();
        let first = within("the failed connect", factory.create_client(addr))
            .await
            .unwrap_err();
        assert!(
            matches!(&first, ConnectError::Io { kind, .. } if *kind == std::io::ErrorKind::ConnectionRefused),
            "{first}"
        );

        // Something listens there now; a fast-failing factory does not even try.
        let listener = std::net::TcpListener::bind(addr).expect("the port is free again");
        listener.set_nonblocking(true).unwrap();
        let second = within("the fast failure", factory.create_client(addr)).await;
        if started.elapsed() >= window {
            eprintln!("skipped: the machine is too loaded to stay within the window");
            return;
        }
        assert_eq!(second.unwrap_err(), first, "the cached error");
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "no connect was made"
        );

        // A factory without fast-fail connects at once, and this one after the window.
        let plain = factory_with(transport_config());
        let client = connect(&plain, addr).await;
        assert!(client.is_active());
        sleep(window + Duration::from_millis(200)).await;
        let client = connect(&factory, addr).await;
        assert!(client.is_active());
        plain.close();
        factory.close();
    })
}

/// A listener on 127.0.0.1 whose accept queue is full (backlog 1, never accepting, filled
/// by connects): the kernel drops further SYNs, so connects to it hang. `None` if the queue
/// would not fill.
fn full_backlog_listener() -> Option<(std::net::TcpListener, Vec<std::net::TcpStream>)> {
    // tokio's TcpSocket sets the backlog; a private current-thread runtime owns the
    // registration only until `into_std`.
    let listener = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(localhost()).unwrap();
        socket.listen(1).unwrap().into_std().unwrap()
    })
    .join()
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fillers.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Some((listener, fillers));
            }
            Err(e) => panic!("filling the backlog: {e}"),
        }
    }
    None
}

#[test]
fn a_connect_that_hangs_fails_with_the_connect_timeout() {
    block_on(async {
        let Some((listener, _fillers)) =
            within("a full backlog", on_thread(full_backlog_listener)).await
        else {
            eprintln!("skipped: the accept queue did not fill on this machine");
            return;
        };
        let addr = listener.local_addr().unwrap();
        let after = Duration::from_millis(500);
        let factory = factory_with(
            transport_config()
                .to_builder()
                .with_connect_timeout(after)
                .build()
                .unwrap(),
        );
        let err = within("the connect timeout", factory.create_client(addr))
            .await
            .unwrap_err();
        assert_eq!(err, ConnectError::TimedOut { addr, after });
        assert!(err.to_string().contains("500ms"), "{err}");
        factory.close();
    })
}

// ---- RequestTimeoutIntegrationSuite ----

#[test]
fn a_connection_with_an_unanswered_request_times_out_and_a_new_one_works() {
    block_on(async {
        let (server, handler) = serve();
        let idle = Duration::from_secs(1);
        let factory = factory_with(idle_config(idle, false));
        let client = connect(&factory, server.local_addr()).await;
        echo(&client, "first").await;
        let err = within("the idle timeout", client.send_rpc("keep".into(), None))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RequestError::Disconnected(ConnectionError::TimedOut {
                idle,
                outstanding: 1
            })
        );
        assert!(!client.is_active(), "the timeout closed the connection");
        // The server's late answer goes nowhere.
        let _ = handler.next_kept().await.reply("late".into());

        let fresh = connect(&factory, server.local_addr()).await;
        assert_ne!(fresh, client);
        echo(&fresh, "on a new connection").await;
        factory.close();
        server.close();
    })
}

#[test]
fn a_connection_with_traffic_keeps_an_old_request_waiting_past_the_idle_timeout() {
    block_on(async {
        let (server, handler) = serve();
        let idle = Duration::from_secs(2);
        let factory = factory_with(idle_config(idle, false));
        let client = connect(&factory, server.local_addr()).await;
        let mut waiting = Box::pin(client.send_rpc("keep".into(), None));
        let responder = handler.next_kept().await;
        let started = Instant::now();
        while started.elapsed() < idle * 3 / 2 {
            echo(&client, "traffic").await;
            sleep(Duration::from_millis(100)).await;
        }
        assert!(poll_once(&mut waiting).await.is_none(), "still waiting");
        assert!(client.is_active(), "{:?}", client.close_reason());
        responder.reply("at last".into()).unwrap();
        assert_eq!(within("the old reply", waiting).await.unwrap(), "at last");
        factory.close();
        server.close();
    })
}

#[test]
fn the_idle_timeout_counts_from_the_last_request_sent() {
    if skip_raw_plaintext("the_idle_timeout_counts_from_the_last_request_sent") {
        return;
    }
    // Spark's `furtherRequestsDelay`: two chunk fetches the server never answers both fail
    // when the connection has been quiet for the timeout since the second was sent.
    block_on(async {
        let addr = never_answering_server();
        let idle = Duration::from_secs(3);
        let factory = factory_with(idle_config(idle, false));
        let client = connect(&factory, addr).await;
        let first = client.fetch_chunk(StreamChunkId::new(0, 0), None);
        sleep(idle * 2 / 3).await;
        let second_sent = Instant::now();
        let second = client.fetch_chunk(StreamChunkId::new(0, 1), None);
        let first = give_up_after(idle * 3, first)
            .await
            .expect("the first fetch fails within three idle timeouts");
        // Lower bounds only: a loaded machine makes them longer, never shorter.
        let quiet = second_sent.elapsed();
        assert!(
            quiet + Duration::from_millis(50) >= idle,
            "the first fetch failed {quiet:?} after the second was sent, before the timeout"
        );
        let expected = RequestError::Disconnected(ConnectionError::TimedOut {
            idle,
            outstanding: 2,
        });
        assert_eq!(first.unwrap_err(), expected);
        assert_eq!(
            within("the second fetch", second).await.unwrap_err(),
            expected,
            "both fail together"
        );
        factory.close();
    })
}

#[test]
fn a_slow_request_does_not_hold_up_chunk_fetches_or_rpcs_behind_it() {
    block_on(async {
        let (server, handler) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let mut slow = Box::pin(client.send_rpc("keep".into(), None));
        let responder = handler.next_kept().await;
        for index in 0..20 {
            let chunk = StreamChunkId::new(9, index);
            let got = within("a chunk", client.fetch_chunk(chunk, None)).await;
            assert_eq!(got.unwrap(), chunk_body(chunk), "chunk {index}");
        }
        echo(&client, "meanwhile").await;
        assert!(poll_once(&mut slow).await.is_none());
        responder.reply("done".into()).unwrap();
        assert_eq!(within("the slow reply", slow).await.unwrap(), "done");
        factory.close();
        server.close();
    })
}

// ---- StreamSuite ----

#[test]
fn many_streams_requested_at_once_on_one_connection_each_get_their_own_bytes() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let sizes = [0usize, 1, 10_000, MIB, 5 * MIB];
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let client = client.clone();
                spawn(async move {
                    if i % 7 == 3 {
                        // A failure among them must not shift the others' replies.
                        let err = client.stream("missing", None).read_to_end().await;
                        assert!(
                            matches!(&err, Err(RequestError::Remote(m)) if m.contains("no stream missing")),
                            "{err:?}"
                        );
                        return;
                    }
                    let n = sizes[i % sizes.len()];
                    let got = client
                        .stream(&format!("bytes/{n}/{i}"), None)
                        .read_to_end()
                        .await
                        .unwrap();
                    assert_eq!(got.len(), n, "stream {i}");
                    assert!(got == pattern(n, i), "stream {i} has another's bytes");
                })
            })
            .collect();
        for task in tasks {
            give_up_after(Duration::from_secs(60), task)
                .await
                .expect("every stream ends");
        }
        assert_eq!(client.pending_stream_bytes(), 0);
        echo(&client, "after the streams").await;
        factory.close();
        server.close();
    })
}

#[test]
fn a_consumer_that_gives_up_midway_does_not_disturb_the_streams_behind_it() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let mut failing = client.stream(&format!("bytes/{}/1", 20 * MIB), None);
        let behind: Vec<_> = [(MIB, 2usize), (0, 3), (3 * MIB + 5, 4)]
            .into_iter()
            .map(|(n, seed)| (n, seed, client.stream(&format!("bytes/{n}/{seed}"), None)))
            .collect();
        // The consumer takes a piece, then fails (say, its destination is full) and drops the
        // call: the rest of the stream is read and discarded.
        let piece = within("a first piece", failing.next())
            .await
            .unwrap()
            .unwrap();
        assert!(!piece.is_empty() && piece.len() < 20 * MIB);
        drop(failing);
        for (n, seed, call) in behind {
            let got = within("a stream behind", call.read_to_end()).await.unwrap();
            assert!(got == pattern(n, seed), "stream {seed} differs");
        }
        echo(&client, "after").await;
        factory.close();
        server.close();
    })
}

// ---- ChunkFetchIntegrationSuite ----

#[test]
fn many_chunks_fetched_at_once_arrive_whole_and_failures_stay_with_their_chunk() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let client = client.clone();
                let stream_id = u64::from(i % 5) + 1;
                let index = if i % 13 == 0 { NO_SUCH_CHUNK + i } else { i };
                spawn(async move {
                    let chunk = StreamChunkId::new(stream_id, index);
                    let got = client.fetch_chunk(chunk, None).await;
                    if index >= NO_SUCH_CHUNK {
                        let err = got.unwrap_err();
                        let expected = format!("no chunk {chunk}");
                        assert!(
                            matches!(&err, RequestError::Remote(m) if m.contains(&expected)),
                            "{err}"
                        );
                    } else {
                        assert_eq!(got.unwrap(), chunk_body(chunk), "{chunk}");
                    }
                })
            })
            .collect();
        for task in tasks {
            give_up_after(Duration::from_secs(60), task)
                .await
                .expect("every fetch ends");
        }
        echo(&client, "after the chunks").await;
        factory.close();
        server.close();
    })
}

// ---- RpcIntegrationSuite ----

#[test]
fn successes_and_failures_of_many_concurrent_rpcs_reach_their_own_callers() {
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let client = client.clone();
                spawn(async move {
                    if i % 3 == 0 {
                        let err = client
                            .send_rpc(format!("fail:boom {i}").into(), None)
                            .await
                            .unwrap_err();
                        assert_eq!(err, RequestError::Remote(format!("boom {i}").into()));
                    } else {
                        let body = format!("call {i}");
                        let reply = client.send_rpc(body.clone().into(), None).await;
                        assert_eq!(reply.unwrap(), body);
                    }
                })
            })
            .collect();
        for task in tasks {
            within("every call", task).await;
        }
        assert!(client.is_active());
        factory.close();
        server.close();
    })
}

#[test]
fn a_handler_that_panics_fails_the_call_and_the_server_keeps_serving() {
    // Spark's `throwErrorRPC`: the handler throws, the caller receives the failure.
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let outcome = within(
            "the panicking call",
            client.send_rpc("panic:the handler broke".into(), None),
        )
        .await;
        let err = outcome.unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("the handler broke")),
            "{err}"
        );
        echo(&client, "after the panic").await;
        let other = factory_with(transport_config());
        echo(
            &connect(&other, server.local_addr()).await,
            "another connection",
        )
        .await;
        factory.close();
        other.close();
        server.close();
    })
}

#[test]
fn one_way_messages_and_rpcs_interleaved_arrive_in_the_order_sent() {
    block_on(async {
        let (server, handler) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let mut calls = Vec::new();
        let mut expected = Vec::new();
        for i in 0..100 {
            if i % 3 == 1 {
                calls.push((i, client.send_rpc(format!("{i}").into(), None)));
                expected.push(format!("rpc:{i}"));
            } else {
                client.send(format!("{i}").into()).unwrap();
                expected.push(format!("one-way:{i}"));
            }
        }
        for (i, call) in calls {
            assert_eq!(within("a reply", call).await.unwrap(), format!("{i}"));
        }
        eventually("every message to arrive", || {
            handler.log.lock().unwrap().len() == expected.len()
        })
        .await;
        assert_eq!(*handler.log.lock().unwrap(), expected);
        factory.close();
        server.close();
    })
}

#[test]
fn an_rpc_at_the_frame_limit_crosses_and_one_byte_more_is_refused_locally() {
    block_on(async {
        let max = MIB as u64;
        let connection = Config::builder().with_max_frame_size(max).build().unwrap();
        let config = transport_config()
            .to_builder()
            .with_connection(connection)
            .build()
            .unwrap();
        let (server, _) = serve_with(config.clone());
        let factory = factory_with(config);
        let client = connect(&factory, server.local_addr()).await;

        let largest = (max - RPC_FRAME_OVERHEAD) as usize;
        let body = pattern(largest, 5);
        let reply = within("the largest rpc", client.send_rpc(body.clone(), None)).await;
        assert!(reply.unwrap() == body, "the echo differs");

        let err = within("a refusal", client.send_rpc(pattern(largest + 1, 5), None))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RequestError::NotSent(CallError::FrameTooLarge { size: max + 1, max })
        );
        let err = client.send(pattern(largest + 100, 5)).unwrap_err();
        assert!(
            matches!(err, CallError::FrameTooLarge { max: m, .. } if m == max),
            "{err}"
        );

        // A reply over the limit is refused on the server, which says so.
        let err = within(
            "the refused reply",
            client.send_rpc(format!("big:{}", largest + 1).into(), None),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("exceeds the maximum frame size")),
            "{err}"
        );
        assert!(client.is_active());
        echo(&client, "still usable").await;
        factory.close();
        server.close();
    })
}

// ---- a body over 4 GiB ----

#[test]
fn an_upload_over_4_gib_arrives_whole_without_a_4_gib_allocation() {
    if skip_with_security("an_upload_over_4_gib_arrives_whole_without_a_4_gib_allocation", "4 GiB through a debug-build cipher") {
        return;
    }
    block_on(async {
        let (server, _) = serve();
        let factory = factory_with(transport_config());
        let client = connect(&factory, server.local_addr()).await;
        let pieces = 4 * 1024 + 1; // 4 GiB + 1 MiB
        let total = pieces as u64 * MIB as u64;
        assert!(total > u64::from(u32::MAX));
        let piece = mib_piece();
        let fed = Arc::new(AtomicUsize::new(0));
        let body = futures_lite::stream::iter(0..pieces).map({
            let fed = fed.clone();
            move |_| {
                fed.fetch_add(1, Ordering::Relaxed);
                piece.clone()
            }
        });
        let started = Instant::now();
        let call = client.upload_stream("count".into(), total, body, None);
        let reply = give_up_after(Duration::from_secs(900), call)
            .await
            .expect("the upload ends within 15 minutes")
            .expect("the upload succeeds");
        let reply = String::from_utf8(reply.to_vec()).unwrap();
        let (count, pieces_seen) = reply.split_once(' ').unwrap();
        assert_eq!(count, total.to_string(), "every byte arrived: {reply}");
        assert!(
            pieces_seen.parse::<u64>().unwrap() > 1,
            "the body arrived in pieces"
        );
        assert_eq!(fed.load(Ordering::Relaxed), pieces);
        eprintln!("{} bytes uploaded in {:?}", total, started.elapsed());
        echo(&client, "after 4 GiB").await;
        factory.close();
        server.close();
    })
}
