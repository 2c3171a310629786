//! Block fetches on real sockets: a `BlockServer` and the fetchers (Spark's
//! `OneForOneBlockFetcherSuite` and the retrying fetcher's I/O behaviour, on connections that
//! really drop).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpc::{RequestError, StreamChunkId};
use rpc::{
    fetch_blocks, BlockFetchConfig, BlockFetchError, BlockFetchingListener, BlockTransferMessage,
    BlockServer, ConnectError, RetryingBlockFetcher, RpcHandler, RpcResponder, StreamManager,
    TransportClient, TransportClientFactory, TransportServer,
};

use super::transport::{localhost, Echo};
use super::util::*;

/// `n` bytes that differ from block to block and within one.
fn block(seed: usize, n: usize) -> Bytes {
    (0..n)
        .map(|i| ((i + seed * 7) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("b{i}")).collect()
}

/// Blocks `b0`, `b1`, … of the given sizes.
fn blocks(sizes: &[usize]) -> HashMap<String, Bytes> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("b{i}"), block(i, n)))
        .collect()
}

/// Faults a [`Watched`] server injects.
#[derive(Default)]
struct Faults {
    /// Fail every fetch of this chunk index.
    fail_chunk: Option<u32>,
    /// Close the connection instead of serving the chunk request with this (0-based) number,
    /// once.
    drop_at: Option<usize>,
}

/// A [`BlockServer`] of app `app`, executor `exec`, that records what reaches it.
struct Watched {
    blocks: BlockServer,
    faults: Faults,
    dropped: AtomicBool,
    /// The blocks each `OpenBlocks` asked for.
    opens: Mutex<Vec<Vec<String>>>,
    /// Every block message received.
    messages: Mutex<Vec<BlockTransferMessage>>,
    /// Chunk requests received.
    chunks: AtomicUsize,
    /// Connections opened.
    connections: AtomicUsize,
}

impl Watched {
    fn opens(&self) -> Vec<Vec<String>> {
        self.opens.lock().unwrap().clone()
    }

    fn chunks(&self) -> usize {
        self.chunks.load(Ordering::SeqCst)
    }
}

impl RpcHandler for Watched {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        if let Ok(decoded) = BlockTransferMessage::decode(&message) {
            if let BlockTransferMessage::OpenBlocks(open) = &decoded {
                self.opens.lock().unwrap().push(open.block_ids.clone());
            }
            self.messages.lock().unwrap().push(decoded);
        }
        self.blocks.receive(client, message, responder)
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn connection_opened(&self, _: &TransportClient) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }
}

impl StreamManager for Watched {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, rpc::BoxError> {
        let n = self.chunks.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_chunk == Some(chunk.chunk_index) {
            return Err(format!("chunk {} is cursed", chunk.chunk_index).into());
        }
        if self.faults.drop_at == Some(n) && !self.dropped.swap(true, Ordering::SeqCst) {
            client.close();
            return Err("closing".into());
        }
        StreamManager::chunk(&self.blocks, client, chunk)
    }

    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, rpc::BoxError> {
        self.chunks.fetch_add(1, Ordering::SeqCst);
        StreamManager::open_stream(&self.blocks, client, stream_id)
    }

    fn connection_closed(&self, client: &TransportClient) {
        StreamManager::connection_closed(&self.blocks, client)
    }
}

/// A block server of `blocks` (app `app`, executor `1`) with `faults`, on a free port.
fn serve(blocks: HashMap<String, Bytes>, faults: Faults) -> (TransportServer, Arc<Watched>) {
    let source = move |app: &str, exec: &str, id: &str| {
        assert_eq!((app, exec), ("app", "1"));
        blocks.get(id).cloned().ok_or_else(|| "not here".to_owned())
    };
    let watched = Arc::new(Watched {
        blocks: BlockServer::new(source),
        faults,
        dropped: AtomicBool::new(false),
        opens: Mutex::new(Vec::new()),
        messages: Mutex::new(Vec::new()),
        chunks: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
    });
    let server = TransportServer::bind(
        rt(),
        localhost(),
        watched.clone(),
        transport_config(),
    )
    .unwrap();
    (server, watched)
}

fn factory() -> TransportClientFactory {
    TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config())
}

/// Retries after 10 ms, up to 3 times.
fn config() -> BlockFetchConfig {
    BlockFetchConfig::builder()
        .with_max_retries(3)
        .with_retry_wait(Duration::from_millis(10))
        .build()
        .unwrap()
}

type Outcome = (String, Result<Bytes, BlockFetchError>);

/// Every outcome left, each within [`WAIT`].
async fn all(fetch: &mut (impl futures_lite::Stream<Item = Outcome> + Unpin)) -> Vec<Outcome> {
    let mut got = Vec::new();
    while let Some(outcome) = within("a block", futures_lite::StreamExt::next(fetch)).await {
        got.push(outcome);
    }
    got
}

#[test]
fn twenty_blocks_of_various_sizes_arrive_intact_and_the_stream_is_released() {
    block_on(async {
        let sizes = [
            0,
            1,
            2,
            100,
            4 << 20,
            1000,
            0,
            4096,
            65_536,
            7,
            300_000,
            13,
            1 << 20,
            0,
            5,
            64,
            999,
            128 * 1024 + 1,
            3,
            12_345,
        ];
        let (server, watched) = serve(blocks(&sizes), Faults::default());
        let factory = factory();
        let config = config()
            .to_builder()
            .with_max_chunks_in_flight(4)
            .build()
            .unwrap();
        let mut fetch = fetch_blocks(&factory, server.local_addr(), "app", "1", ids(20), &config);
        let got = all(&mut fetch).await;
        // One connection serves a stream's chunks in order: outcomes come in order.
        let got_ids: Vec<_> = got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(got_ids, ids(20));
        for (i, (id, result)) in got.into_iter().enumerate() {
            let data = result.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(data.len(), sizes[i], "{id}");
            assert_eq!(data, block(i, sizes[i]), "{id}");
        }
        assert_eq!(watched.opens(), [ids(20)]);
        assert_eq!(
            watched.blocks.streams().registered(),
            0,
            "served to the end, the stream is released"
        );
        factory.close();
        server.close();
    })
}

/// Blocks are read when their chunk is fetched (issue 11), so an unknown block fails its
/// chunk, and the blocks after it with it, not the open.
#[test]
fn an_unknown_block_fails_its_chunk_and_every_later_block_without_a_retry() {
    block_on(async {
        let (server, watched) = serve(blocks(&[5, 6]), Faults::default());
        let factory = factory();
        let requested = vec!["b0".to_owned(), "b7".to_owned(), "b1".to_owned()];
        let mut fetch = RetryingBlockFetcher::one_for_one(
            rt(),
            &factory,
            server.local_addr(),
            "app",
            "1",
            requested.clone(),
            &config(),
        );
        let got = all(&mut fetch).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("b0".to_owned(), Ok(block(0, 5))));
        for (i, (id, result)) in got.into_iter().enumerate().skip(1) {
            assert_eq!(id, requested[i]);
            let error = result.unwrap_err();
            assert!(
                matches!(&error, BlockFetchError::Chunk { chunk, error: RequestError::Remote(m) }
                    if chunk.chunk_index == 1 && m.contains("block b7") && m.contains("not here")),
                "{error}"
            );
            assert!(!error.is_retryable());
        }
        assert_eq!(fetch.retries(), 0);
        assert_eq!(watched.opens().len(), 1, "a refusal is not retried");
        factory.close();
        eventually("the stream released with its connection", || {
            watched.blocks.streams().registered() == 0
        })
        .await;
        server.close();
    })
}

#[test]
fn a_failed_chunk_fails_its_block_and_every_later_one_exactly_once() {
    // Spark's testFailure and testFailureAndSuccess: b0 arrives, chunk 1 fails, and b2 fails
    // with it (Spark may also report b2 a success; we report one outcome per block).
    block_on(async {
        let faults = Faults {
            fail_chunk: Some(1),
            ..Faults::default()
        };
        let (server, watched) = serve(blocks(&[12, 23, 21]), faults);
        let factory = factory();
        let mut fetch = RetryingBlockFetcher::one_for_one(
            rt(),
            &factory,
            server.local_addr(),
            "app",
            "1",
            ids(3),
            &config()
                .to_builder()
                .with_max_chunks_in_flight(3)
                .build()
                .unwrap(),
        );
        let got = all(&mut fetch).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("b0".to_owned(), Ok(block(0, 12))));
        for (id, result) in &got[1..] {
            let error = result.as_ref().unwrap_err();
            assert!(
                matches!(error, BlockFetchError::Chunk { chunk, error: RequestError::Remote(m) }
                    if chunk.chunk_index == 1 && m.contains("cursed")),
                "{id}: {error}"
            );
        }
        assert_eq!(got[1].0, "b1");
        assert_eq!(got[2].0, "b2");
        assert_eq!(watched.opens().len(), 1, "a remote failure is not retried");
        factory.close();
        server.close();
    })
}

/// Records a listener's calls.
#[derive(Default)]
struct Received {
    ok: Vec<(String, Bytes)>,
    failed: Vec<(String, BlockFetchError)>,
}

impl BlockFetchingListener for Received {
    fn on_block_fetch_success(&mut self, block_id: String, data: Bytes) {
        self.ok.push((block_id, data));
    }

    fn on_block_fetch_failure(&mut self, block_id: String, error: BlockFetchError) {
        self.failed.push((block_id, error));
    }
}

#[test]
fn a_connection_closed_mid_fetch_is_retried_for_the_missing_blocks_only() {
    block_on(async {
        let sizes = [10_000; 20];
        let faults = Faults {
            drop_at: Some(7),
            ..Faults::default()
        };
        let (server, watched) = serve(blocks(&sizes), faults);
        let factory = factory();
        let mut fetch = RetryingBlockFetcher::one_for_one(
            rt(),
            &factory,
            server.local_addr(),
            "app",
            "1",
            ids(20),
            &config()
                .to_builder()
                .with_max_chunks_in_flight(4)
                .build()
                .unwrap(),
        );
        let mut received = Received::default();
        within("every block", fetch.deliver_to(&mut received)).await;
        assert!(received.failed.is_empty(), "{:?}", received.failed);
        let got_ids: Vec<_> = received.ok.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(got_ids, ids(20), "each block exactly once");
        for (i, (id, data)) in received.ok.iter().enumerate() {
            assert_eq!(data, &block(i, sizes[i]), "{id}");
        }
        // Chunks 0..7 were served before the connection closed; the retry asked for the rest.
        assert_eq!(watched.opens(), [ids(20), ids(20)[7..].to_vec()]);
        assert_eq!(fetch.retries(), 1);
        assert_eq!(watched.connections.load(Ordering::SeqCst), 2);
        factory.close();
        server.close();
    })
}

#[test]
fn chunk_fetches_in_flight_are_bounded_and_pulled_by_the_consumer() {
    block_on(async {
        let (server, watched) = serve(blocks(&[100; 20]), Faults::default());
        let factory = factory();
        let mut fetch = fetch_blocks(
            &factory,
            server.local_addr(),
            "app",
            "1",
            ids(20),
            &config()
                .to_builder()
                .with_max_chunks_in_flight(3)
                .build()
                .unwrap(),
        );
        let mut taken = 0;
        for pause_after in [1, 5, 6] {
            while taken < pause_after {
                let (id, result) = within("a block", fetch.next_block()).await.unwrap();
                assert_eq!(id, format!("b{taken}"));
                assert_eq!(result.unwrap(), block(taken, 100));
                taken += 1;
            }
            // The consumer pauses: the server sees the blocks taken plus three in flight.
            eventually("the chunk requests to reach the server", || {
                watched.chunks() == taken + 3
            })
            .await;
            sleep(Duration::from_millis(50)).await;
            assert_eq!(watched.chunks(), taken + 3, "after {taken} blocks");
        }
        let rest = all(&mut fetch).await;
        assert_eq!(rest.len(), 20 - taken);
        assert!(rest.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(watched.chunks(), 20);
        factory.close();
        server.close();
    })
}

#[test]
fn a_refused_connection_is_retried_then_fails_every_block() {
    block_on(async {
        let addr = std::net::TcpListener::bind(localhost())
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is gone: connects are refused.
        let factory = factory();
        let mut fetch = RetryingBlockFetcher::one_for_one(
            rt(),
            &factory,
            addr,
            "app",
            "1",
            ids(2),
            &config()
                .to_builder()
                .with_max_retries(2)
                .build()
                .unwrap(),
        );
        let got = all(&mut fetch).await;
        assert_eq!(got.len(), 2);
        for (id, result) in got {
            let error = result.unwrap_err();
            assert!(
                matches!(error, BlockFetchError::Connect(ConnectError::Io { .. })),
                "{id}: {error}"
            );
        }
        assert_eq!(fetch.retries(), 2);
        factory.close();
    })
}

#[test]
fn an_empty_fetch_ends_at_once_without_connecting() {
    block_on(async {
        let (server, watched) = serve(blocks(&[1]), Faults::default());
        let factory = factory();
        let mut fetch = fetch_blocks(
            &factory,
            server.local_addr(),
            "app",
            "1",
            Vec::new(),
            &config(),
        );
        assert!(within("the end", fetch.next_block()).await.is_none());
        let mut retrying = RetryingBlockFetcher::one_for_one(
            rt(),
            &factory,
            server.local_addr(),
            "app",
            "1",
            Vec::new(),
            &config(),
        );
        assert!(within("the end", retrying.next_block()).await.is_none());
        sleep(Duration::from_millis(20)).await;
        assert_eq!(watched.connections.load(Ordering::SeqCst), 0);
        factory.close();
        server.close();
    })
}

#[test]
fn dropping_a_fetch_midway_releases_its_stream_when_the_connection_closes() {
    block_on(async {
        let (server, watched) = serve(blocks(&[1000; 10]), Faults::default());
        let factory = factory();
        let mut fetch = fetch_blocks(
            &factory,
            server.local_addr(),
            "app",
            "1",
            ids(10),
            &config()
                .to_builder()
                .with_max_chunks_in_flight(2)
                .build()
                .unwrap(),
        );
        let (id, result) = within("a block", fetch.next_block()).await.unwrap();
        assert_eq!((id.as_str(), result.unwrap()), ("b0", block(0, 1000)));
        drop(fetch);
        assert_eq!(watched.blocks.streams().registered(), 1);
        factory.close();
        eventually("the stream to be released", || {
            watched.blocks.streams().registered() == 0
        })
        .await;
        server.close();
    })
}

/// Blocks named `names[i]`, with the bytes of `block(i, 100 + i)`.
fn named(names: &[&str]) -> HashMap<String, Bytes> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.to_string(), block(i, 100 + i)))
        .collect()
}

/// Spark's `OneForOneBlockFetcherSuite.testFetchShuffleBlocksOrder`, on sockets: shuffle
/// blocks go as one `FetchShuffleBlocks`, grouped by map in first-seen order, and each chunk
/// is matched to its block in that order.
#[test]
fn shuffle_blocks_go_as_fetch_shuffle_blocks_and_chunks_map_to_the_plans_order() {
    block_on(async {
        let names = ["shuffle_0_10_1", "shuffle_0_2_0", "shuffle_0_10_3", "shuffle_0_2_7"];
        let served = named(&names);
        let (server, watched) = serve(served.clone(), Faults::default());
        let factory = factory();
        let requested: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut fetch =
            fetch_blocks(&factory, server.local_addr(), "app", "1", requested, &config());
        let got = all(&mut fetch).await;
        let got_ids: Vec<_> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            got_ids,
            ["shuffle_0_10_1", "shuffle_0_10_3", "shuffle_0_2_0", "shuffle_0_2_7"],
            "chunk order is the plan's: grouped by map, first seen first"
        );
        for (id, result) in got {
            assert_eq!(result.unwrap(), served[&id], "{id}");
        }
        let messages = watched.messages.lock().unwrap().clone();
        assert_eq!(
            messages,
            [BlockTransferMessage::FetchShuffleBlocks(rpc::FetchShuffleBlocks {
                app_id: "app".into(),
                exec_id: "1".into(),
                shuffle_id: 0,
                map_ids: vec![10, 2],
                reduce_ids: vec![vec![1, 3], vec![0, 7]],
                batch_fetch_enabled: false,
            })]
        );
        factory.close();
        server.close();
    })
}

#[test]
fn batch_blocks_the_old_protocol_and_fetching_as_streams_all_deliver_every_byte() {
    block_on(async {
        let names = ["shuffle_1_5_0_3", "shuffle_1_9_2_4", "shuffle_1_7_3_8"];
        let served = named(&names);
        let (server, watched) = serve(served.clone(), Faults::default());
        let factory = factory();
        let requested: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let variants = [
            config(),
            config().to_builder().with_use_old_fetch_protocol(true).build().unwrap(),
            config().to_builder().with_fetch_as_streams(true).build().unwrap(),
        ];
        for config in &variants {
            let mut fetch = fetch_blocks(
                &factory,
                server.local_addr(),
                "app",
                "1",
                requested.clone(),
                config,
            );
            let got = all(&mut fetch).await;
            assert_eq!(got.len(), 3, "{config:?}");
            for (id, result) in got {
                let data = result.unwrap_or_else(|e| panic!("{id}: {e} ({config:?})"));
                assert_eq!(data, served[&id], "{id}");
            }
        }
        let messages = watched.messages.lock().unwrap().clone();
        let kinds: Vec<_> = messages.iter().map(|m| m.name()).collect();
        assert_eq!(kinds, ["FetchShuffleBlocks", "OpenBlocks", "FetchShuffleBlocks"]);
        let BlockTransferMessage::FetchShuffleBlocks(batch) = &messages[0] else {
            unreachable!()
        };
        assert!(batch.batch_fetch_enabled);
        assert_eq!(batch.map_ids, [5, 9, 7]);
        assert_eq!(batch.reduce_ids, [vec![0, 3], vec![2, 4], vec![3, 8]]);
        factory.close();
        server.close();
    })
}

#[test]
fn blocks_spark_would_not_fetch_together_fail_without_connecting() {
    block_on(async {
        let (server, watched) = serve(HashMap::new(), Faults::default());
        let factory = factory();
        let requested = vec!["shuffle_0_1_2".to_owned(), "shuffle_1_1_2".to_owned()];
        let mut fetch = RetryingBlockFetcher::one_for_one(
            rt(),
            &factory,
            server.local_addr(),
            "app",
            "1",
            requested.clone(),
            &config(),
        );
        let got = all(&mut fetch).await;
        assert_eq!(got.len(), 2);
        for (_, result) in got {
            let error = result.unwrap_err();
            assert!(matches!(error, BlockFetchError::Plan(_)), "{error}");
            assert!(!error.is_retryable());
        }
        assert_eq!(fetch.retries(), 0);
        assert_eq!(watched.connections.load(Ordering::SeqCst), 0);
        factory.close();
        server.close();
    })
}

#[test]
fn a_block_server_refuses_other_block_messages_naming_them() {
    block_on(async {
        let (server, _watched) = serve(HashMap::new(), Faults::default());
        let factory = factory();
        let client = factory.create_client(server.local_addr()).await.unwrap();
        let remove = BlockTransferMessage::RemoveBlocks(rpc::RemoveBlocks {
            app_id: "app".into(),
            exec_id: "1".into(),
            block_ids: vec!["rdd_0_0".into()],
        });
        let refused = within("a refusal", client.send_rpc(remove.encode(), None)).await;
        assert!(
            matches!(&refused, Err(RequestError::Remote(m)) if m.contains("RemoveBlocks")),
            "{refused:?}"
        );
        let garbage = within("a refusal", client.send_rpc(Bytes::from_static(&[4, 0]), None)).await;
        assert!(
            matches!(&garbage, Err(RequestError::Remote(m)) if m.starts_with("malformed block message")),
            "{garbage:?}"
        );
        factory.close();
        server.close();
    })
}
