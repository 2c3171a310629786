//! Chunk fetches and named streams served by a transport server's stream manager (Spark's
//! `ChunkFetchIntegrationSuite` and `OneForOneStreamManagerSuite`, the parts that exist).

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use rpc::{CallError, RequestError, StreamChunkId};
use rpc_proto::{Frame};
use rpc::{
    OneForOneStreamManager, RpcHandler, RpcResponder, StreamManager, TransportClient,
    TransportClientFactory, TransportServer,
};

use super::transport::{localhost, Echo};
use super::util::*;
use super::wire::{encode, read_frames};

/// Serves chunks from a [`OneForOneStreamManager`] and named streams `bytes/<n>` of `n`
/// pattern bytes.
struct Blocks {
    streams: OneForOneStreamManager,
}

impl RpcHandler for Blocks {
    fn receive(&self, _: &TransportClient, _: Bytes, responder: RpcResponder) {
        let _ = responder.fail("no rpcs here");
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }
}

impl StreamManager for Blocks {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, rpc::BoxError> {
        assert_ne!(chunk.stream_id, 666, "stream 666 is cursed");
        self.streams.chunk(client, chunk)
    }

    fn open_stream(&self, _: &TransportClient, stream_id: &str) -> Result<Bytes, rpc::BoxError> {
        let n: usize = stream_id
            .strip_prefix("bytes/")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no stream {stream_id}"))?;
        Ok(pattern(n))
    }

    fn connection_closed(&self, client: &TransportClient) {
        self.streams.connection_closed(client)
    }
}

fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

async fn serve() -> (TransportServer, Arc<Blocks>, TransportClient) {
    let blocks = Arc::new(Blocks {
        streams: OneForOneStreamManager::new(1 << 40),
    });
    let server = TransportServer::bind(
        rt(),
        localhost(),
        blocks.clone(),
        transport_config(),
    )
    .unwrap();
    let factory =
        TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config());
    let client = within("a connection", factory.create_client(server.local_addr()))
        .await
        .unwrap();
    (server, blocks, client)
}

#[test]
fn chunks_of_a_registered_stream_are_fetched_in_order_and_the_stream_is_released() {
    block_on(async {
        let (server, blocks, client) = serve().await;
        let buffers = vec![pattern(10), Bytes::new(), pattern(100_000), pattern(1)];
        let id = blocks.streams.register_stream("app", buffers.clone(), None);
        for (index, expected) in buffers.iter().enumerate() {
            let chunk = StreamChunkId::new(id, index as u32);
            let got = within("a chunk", client.fetch_chunk(chunk, None))
                .await
                .unwrap();
            assert_eq!(&got, expected, "chunk {index}");
        }
        assert_eq!(
            blocks.streams.registered(),
            0,
            "served to the end, the stream is gone"
        );
        let err = within(
            "a failure",
            client.fetch_chunk(StreamChunkId::new(id, 4), None),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("closed")),
            "{err}"
        );
        server.close();
    })
}

#[test]
fn out_of_order_missing_and_past_the_end_chunks_fail_and_the_connection_stays_usable() {
    block_on(async {
        let (server, blocks, client) = serve().await;
        let id = blocks
            .streams
            .register_stream("app", vec![pattern(5), pattern(6)], None);
        let err = within(
            "out of order",
            client.fetch_chunk(StreamChunkId::new(id, 1), None),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("out-of-order")),
            "{err}"
        );
        let err = within(
            "unknown",
            client.fetch_chunk(StreamChunkId::new(id + 9, 0), None),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("closed")),
            "{err}"
        );
        assert_eq!(
            within(
                "chunk 0",
                client.fetch_chunk(StreamChunkId::new(id, 0), None)
            )
            .await
            .unwrap(),
            pattern(5)
        );
        assert_eq!(
            within(
                "chunk 1",
                client.fetch_chunk(StreamChunkId::new(id, 1), None)
            )
            .await
            .unwrap(),
            pattern(6)
        );
        server.close();
    })
}

/// The first fetch is held unanswered by a raw server until the second has been refused, so
/// the refusal does not depend on how fast the first is served (it used to: under load the
/// first could complete before the second was made, and the second then reached the server).
#[test]
fn fetching_a_chunk_already_being_fetched_is_refused() {
    if skip_raw_plaintext("fetching_a_chunk_already_being_fetched_is_refused") {
        return;
    }
    block_on(async {
        let chunk = StreamChunkId::new(7, 0);
        let listener = std::net::TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (refused_tx, refused_rx) = std::sync::mpsc::channel::<()>();
        let raw_server = on_thread(move || {
            let (mut peer, _) = listener.accept().unwrap();
            peer.set_read_timeout(Some(WAIT)).unwrap();
            let request = read_frames(&mut peer, 1, 1 << 16).remove(0);
            assert_eq!(request, Frame::ChunkFetchRequest { chunk });
            // Answer only once the duplicate has been refused.
            refused_rx.recv_timeout(WAIT).expect("the duplicate was refused");
            let reply = Frame::ChunkFetchSuccess {
                chunk,
                body: pattern(5),
            };
            peer.write_all(&encode(&[reply])).unwrap();
            // Nothing else arrives: the duplicate never went on the wire.
            let mut rest = Vec::new();
            let _ = peer.read_to_end(&mut rest);
            rest
        });
        let factory =
            TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config());
        let client = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        let first = client.fetch_chunk(chunk, None);
        let second = within("a refusal", client.fetch_chunk(chunk, None))
            .await
            .unwrap_err();
        assert_eq!(
            second,
            RequestError::NotSent(CallError::DuplicateChunkFetch(chunk))
        );
        refused_tx.send(()).unwrap();
        assert_eq!(within("the first", first).await.unwrap(), pattern(5));
        client.close();
        let rest = within("the raw server", raw_server).await;
        assert!(rest.is_empty(), "{} more bytes arrived", rest.len());
    })
}

#[test]
fn streams_registered_for_a_connection_are_released_when_it_closes() {
    block_on(async {
        let (server, blocks, client) = serve().await;
        eventually("the server to see the connection", || {
            server.connections().len() == 1
        })
        .await;
        let theirs = server.connections().pop().unwrap();
        blocks
            .streams
            .register_stream("app", vec![pattern(5)], Some(&theirs));
        blocks
            .streams
            .register_stream("app", vec![pattern(5)], None);
        assert_eq!(blocks.streams.registered(), 2);
        client.close();
        eventually("the owned stream to be released", || {
            blocks.streams.registered() == 1
        })
        .await;
        server.close();
    })
}

#[test]
fn a_server_without_a_stream_manager_fails_chunk_fetches_cleanly() {
    block_on(async {
        let echo = Arc::new(Echo::default());
        let server =
            TransportServer::bind(rt(), localhost(), echo, transport_config()).unwrap();
        let factory = TransportClientFactory::new(
            rt(),
            Arc::new(Echo::default()),
            transport_config(),
        );
        let client = factory.create_client(server.local_addr()).await.unwrap();
        let err = within(
            "a failure",
            client.fetch_chunk(StreamChunkId::new(1, 0), None),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            RequestError::Remote("Requested chunk not available since streamId 1 is closed".into())
        );
        let reply = within(
            "an rpc after it",
            client.send_rpc("still here".into(), None),
        )
        .await;
        assert_eq!(reply.unwrap(), "still here");
        server.close();
    })
}

#[test]
fn a_peer_that_fetches_without_reading_is_refused_rather_than_buffered_without_bound() {
    if skip_raw_plaintext("a_peer_that_fetches_without_reading_is_refused_rather_than_buffered_without_bound") {
        return;
    }
    block_on(async {
        use rpc::{Config};
        use rpc_proto::{Decoded, Frame, FrameDecoder};
        use std::io::{Read, Write};

        let blocks = Arc::new(Blocks {
            streams: OneForOneStreamManager::new(1),
        });
        let limit = 4 * 1024 * 1024;
        let config = transport_config()
            .to_builder()
            .with_connection(
                Config::builder()
                    .with_max_send_buffer(limit)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let server = TransportServer::bind(rt(), localhost(), blocks.clone(), config).unwrap();
        let chunks = 200u32;
        let one = pattern(1024 * 1024);
        let id =
            blocks
                .streams
                .register_stream("app", (0..chunks).map(|_| one.clone()).collect(), None);
        let addr = server.local_addr();
        // A raw peer: asks for every chunk at once, then reads nothing for a while.
        let replies = on_thread(move || {
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            let mut wire = bytes::BytesMut::new();
            for index in 0..chunks {
                Frame::ChunkFetchRequest {
                    chunk: StreamChunkId::new(id, index),
                }
                .encode(&mut wire);
            }
            socket.write_all(&wire).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(500));
            socket.set_read_timeout(Some(WAIT)).unwrap();
            let mut decoder = FrameDecoder::new(64 * 1024 * 1024);
            let mut buf = bytes::BytesMut::new();
            let mut replies = Vec::new();
            let mut scratch = vec![0u8; 256 * 1024];
            while replies.len() < chunks as usize {
                while let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf).unwrap() {
                    replies.push(frame);
                }
                if replies.len() == chunks as usize {
                    break;
                }
                let n = socket.read(&mut scratch).unwrap();
                assert!(n > 0, "the server closed after {} replies", replies.len());
                buf.extend_from_slice(&scratch[..n]);
            }
            replies
        });
        let replies = within("every reply", replies).await;
        let served = replies
            .iter()
            .filter(|f| matches!(f, Frame::ChunkFetchSuccess { .. }))
            .count();
        let refused = replies
            .iter()
            .filter(|f| {
                matches!(f, Frame::ChunkFetchFailure { error, .. }
                    if error.contains("too much data being transferred"))
            })
            .count();
        assert!(
            refused > 0,
            "all {served} chunks were queued for a peer that read nothing"
        );
        assert!(
            served > 0 && served < chunks as usize,
            "{served} served, {refused} refused"
        );
        server.close();
    })
}

#[test]
fn a_stream_manager_that_panics_fails_that_fetch_and_the_connection_keeps_working() {
    block_on(async {
        let (server, blocks, client) = serve().await;
        let err = within(
            "a failure",
            client.fetch_chunk(StreamChunkId::new(666, 0), None),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("panicked") && m.contains("cursed")),
            "{err}"
        );
        let id = blocks
            .streams
            .register_stream("app", vec![pattern(3)], None);
        let chunk = within(
            "a chunk after it",
            client.fetch_chunk(StreamChunkId::new(id, 0), None),
        );
        assert_eq!(chunk.await.unwrap(), pattern(3));
        server.close();
    })
}

/// Serves what a bare [`OneForOneStreamManager`] serves: its chunks, and no named streams
/// (the trait's default `open_stream`).
struct Bare {
    streams: OneForOneStreamManager,
}

impl RpcHandler for Bare {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = responder.reply(message);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(&self.streams)
    }
}

/// Spark peers read these texts, and some match on them: `ExecutorClassLoader` turns exactly
/// `Stream '<id>' was not found.` into a `ClassNotFoundException`. Spark's
/// `TransportRequestHandler` sends that text for a stream its manager does not have, and
/// `OneForOneStreamManager` fails chunks with the texts checked here.
#[test]
fn unknown_streams_and_chunks_fail_with_sparks_exact_texts() {
    block_on(async {
        let bare = Arc::new(Bare {
            streams: OneForOneStreamManager::new(100),
        });
        let server =
            TransportServer::bind(rt(), localhost(), bare.clone(), transport_config())
                .unwrap();
        let bare_without_streams = TransportServer::bind(
            rt(),
            localhost(),
            Arc::new(Echo::default()),
            transport_config(),
        )
        .unwrap();
        let factory =
            TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config());
        let remote = |text: String| RequestError::Remote(text.into());
        for addr in [server.local_addr(), bare_without_streams.local_addr()] {
            let client = within("a connection", factory.create_client(addr))
                .await
                .unwrap();
            for id in ["/classes/Foo.class", "bytes/10", ""] {
                let err = within("a stream failure", client.stream(id, None).read_to_end())
                    .await
                    .unwrap_err();
                assert_eq!(err, remote(format!("Stream '{id}' was not found.")));
            }
            let err = within(
                "a chunk failure",
                client.fetch_chunk(StreamChunkId::new(5, 0), None),
            )
            .await
            .unwrap_err();
            assert_eq!(
                err,
                remote("Requested chunk not available since streamId 5 is closed".into())
            );
        }
        let id = bare.streams.register_stream("app", vec![pattern(5)], None);
        let err = within(
            "out of order",
            client_fetch(&factory, server.local_addr(), StreamChunkId::new(id, 1)),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            remote("Received out-of-order chunk index 1 (expected 0)".into())
        );
        let empty = bare.streams.register_stream("app", Vec::new(), None);
        let err = within(
            "past the end",
            client_fetch(&factory, server.local_addr(), StreamChunkId::new(empty, 0)),
        )
        .await
        .unwrap_err();
        assert_eq!(err, remote("Requested chunk index beyond end 0".into()));
        server.close();
        bare_without_streams.close();
    })
}

async fn client_fetch(
    factory: &TransportClientFactory,
    addr: std::net::SocketAddr,
    chunk: StreamChunkId,
) -> Result<Bytes, RequestError> {
    let client = factory.create_client(addr).await.unwrap();
    client.fetch_chunk(chunk, None).await
}
