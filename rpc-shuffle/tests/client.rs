//! The shuffle client against a fake shuffle service on real sockets (rpc-tokio): an
//! `RpcHandler` answering Spark's messages from memory, serving fetches through a
//! `BlockServer`, and counting what it serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpc_shuffle::client::{RemoteBlocks, ShuffleClient, ShuffleClientConfig, ShuffleClientError};
use rpc_tokio::security::{AuthMechanism, Security};
use rpc_tokio::{
    BlockFetchConfig, BlockFetchError, BlockServer, BlockTransferMessage, BlocksRemoved, BoxError,
    ConnectError, ConnectionError, ExecutorShuffleInfo, LocalDirsForExecutors, RequestError,
    RpcHandler, RpcResponder, StreamChunkId, StreamManager, TransportClient, TransportConfig,
    TransportServer,
};

const APP: &str = "app-1";
/// Every test's bound on itself.
const LIMIT: Duration = Duration::from_secs(30);

/// Counters shared by the fake services of a test.
#[derive(Default)]
struct Counters {
    /// Chunk bytes served.
    served: AtomicU64,
    /// Bytes the consumer has taken.
    taken: AtomicU64,
    /// The most `served - taken` seen when serving a chunk.
    max_outstanding: AtomicU64,
}

/// Faults a [`Fake`] injects.
#[derive(Default)]
struct Faults {
    /// Refuse this many registrations first.
    refuse_registrations: usize,
    /// Close the connection instead of serving this (0-based) chunk request, once.
    drop_chunk: Option<usize>,
    /// Never answer a registration.
    ignore_registrations: bool,
}

/// A shuffle service of app [`APP`]: blocks by (executor, block id) in memory.
struct Fake {
    blocks: Arc<Mutex<HashMap<(String, String), Bytes>>>,
    server: BlockServer,
    faults: Faults,
    refused: AtomicUsize,
    dropped: AtomicBool,
    chunks: AtomicUsize,
    registered: Mutex<HashMap<String, ExecutorShuffleInfo>>,
    /// The client id (the authenticated app id) of every message's connection.
    client_ids: Mutex<Vec<Option<String>>>,
    /// The fetch messages received.
    fetches: Mutex<Vec<BlockTransferMessage>>,
    opened: AtomicUsize,
    closed: AtomicUsize,
    counters: Arc<Counters>,
    /// Registrations left unanswered.
    ignored: Mutex<Vec<RpcResponder>>,
}

impl Fake {
    fn new(
        blocks: HashMap<(String, String), Bytes>,
        faults: Faults,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        let blocks = Arc::new(Mutex::new(blocks));
        let source_blocks = blocks.clone();
        let source = move |app: &str, exec: &str, id: &str| {
            if app != APP {
                return Err(format!("unknown app {app}"));
            }
            source_blocks
                .lock()
                .unwrap()
                .get(&(exec.to_owned(), id.to_owned()))
                .cloned()
                .ok_or_else(|| format!("no block {id} of executor {exec}"))
        };
        Arc::new(Self {
            blocks,
            server: BlockServer::new(source),
            faults,
            refused: AtomicUsize::new(0),
            dropped: AtomicBool::new(false),
            chunks: AtomicUsize::new(0),
            registered: Mutex::new(HashMap::new()),
            client_ids: Mutex::new(Vec::new()),
            fetches: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            counters,
            ignored: Mutex::new(Vec::new()),
        })
    }

    fn fetches(&self) -> Vec<BlockTransferMessage> {
        self.fetches.lock().unwrap().clone()
    }
}

impl RpcHandler for Fake {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let Ok(decoded) = BlockTransferMessage::decode(&message) else {
            let _ = responder.fail("malformed block message");
            return;
        };
        self.client_ids
            .lock()
            .unwrap()
            .push(client.client_id().map(str::to_owned));
        match decoded {
            BlockTransferMessage::RegisterExecutor(register) => {
                if self.faults.ignore_registrations {
                    self.ignored.lock().unwrap().push(responder);
                    return;
                }
                if self.refused.fetch_add(1, Ordering::SeqCst) < self.faults.refuse_registrations {
                    let _ = responder.fail("java.io.IOException: not now");
                    return;
                }
                self.registered
                    .lock()
                    .unwrap()
                    .insert(register.exec_id, register.executor_info);
                let _ = responder.reply(Bytes::new());
            }
            BlockTransferMessage::GetLocalDirsForExecutors(get) => {
                let registered = self.registered.lock().unwrap();
                let mut dirs = Vec::new();
                for exec in get.exec_ids {
                    match registered.get(&exec) {
                        Some(info) => dirs.push((exec, info.local_dirs.clone())),
                        None => {
                            let _ = responder.fail(&format!("executor {exec} is not registered"));
                            return;
                        }
                    }
                }
                let reply =
                    BlockTransferMessage::LocalDirsForExecutors(LocalDirsForExecutors { dirs });
                let _ = responder.reply(reply.encode());
            }
            BlockTransferMessage::RemoveBlocks(remove) => {
                let mut blocks = self.blocks.lock().unwrap();
                let removed = remove
                    .block_ids
                    .iter()
                    .filter(|id| {
                        blocks
                            .remove(&(remove.exec_id.clone(), id.to_string()))
                            .is_some()
                    })
                    .count();
                let reply = BlockTransferMessage::BlocksRemoved(BlocksRemoved {
                    num_removed_blocks: removed as i32,
                });
                let _ = responder.reply(reply.encode());
            }
            other => {
                self.fetches.lock().unwrap().push(other);
                self.server.receive(client, message, responder)
            }
        }
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn connection_opened(&self, _: &TransportClient) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn connection_closed(&self, _: &TransportClient, _: &ConnectionError) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

impl StreamManager for Fake {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        let n = self.chunks.fetch_add(1, Ordering::SeqCst);
        if self.faults.drop_chunk == Some(n) && !self.dropped.swap(true, Ordering::SeqCst) {
            client.close();
            return Err("closing".into());
        }
        let bytes = StreamManager::chunk(&self.server, client, chunk)?;
        let c = &self.counters;
        let served = c.served.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64;
        let outstanding = served.saturating_sub(c.taken.load(Ordering::SeqCst));
        c.max_outstanding.fetch_max(outstanding, Ordering::SeqCst);
        Ok(bytes)
    }

    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, BoxError> {
        StreamManager::open_stream(&self.server, client, stream_id)
    }

    fn connection_closed(&self, client: &TransportClient) {
        StreamManager::connection_closed(&self.server, client)
    }
}

/// `n` bytes that differ from block to block and within one.
fn data(seed: usize, n: usize) -> Bytes {
    (0..n)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// Blocks of executor `exec`: `ids[i]` holds `data(i, sizes[i])`.
fn blocks_of(exec: &str, ids: &[&str], sizes: &[usize]) -> HashMap<(String, String), Bytes> {
    ids.iter()
        .zip(sizes)
        .enumerate()
        .map(|(i, (id, &n))| ((exec.to_owned(), id.to_string()), data(i, n)))
        .collect()
}

fn serve(fake: Arc<Fake>, security: Security) -> TransportServer {
    let config = TransportConfig::builder()
        .with_security(security)
        .build()
        .unwrap();
    TransportServer::bind(
        rpc_tokio::runtime(),
        "127.0.0.1:0".parse().unwrap(),
        fake,
        config,
    )
    .unwrap()
}

/// Fast retries, short waits.
fn config() -> ShuffleClientConfig {
    ShuffleClientConfig::builder()
        .with_registration_wait(Duration::from_millis(20))
        .with_registration_timeout(Duration::from_secs(5))
        .with_rpc_timeout(Duration::from_secs(10))
        .with_fetch(
            BlockFetchConfig::builder()
                .with_max_retries(3)
                .with_retry_wait(Duration::from_millis(10))
                .with_open_timeout(Some(Duration::from_secs(10)))
                .with_chunk_timeout(Some(Duration::from_secs(10)))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn client(config: ShuffleClientConfig) -> ShuffleClient {
    ShuffleClient::new(rpc_tokio::runtime(), APP, config).unwrap()
}

fn info(dir: &str) -> ExecutorShuffleInfo {
    ExecutorShuffleInfo {
        local_dirs: vec![dir.to_owned()],
        sub_dirs_per_local_dir: 64,
        shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
    }
}

type Outcome = (String, Result<Bytes, BlockFetchError>);

async fn all(mut fetch: impl futures_lite::Stream<Item = Outcome> + Unpin) -> Vec<Outcome> {
    let mut got = Vec::new();
    while let Some(outcome) = futures_lite::StreamExt::next(&mut fetch).await {
        got.push(outcome);
    }
    got
}

/// Waits (boundedly) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_retries_a_refused_attempt_on_a_connection_of_its_own() {
    bounded(async {
        let fake = Fake::new(
            HashMap::new(),
            Faults {
                refuse_registrations: 1,
                ..Faults::default()
            },
            Arc::default(),
        );
        let server = serve(fake.clone(), Security::none());
        let client = client(config());
        client
            .register_executor(server.local_addr(), "3", info("/tmp/blockmgr-3"))
            .await
            .unwrap();
        assert_eq!(fake.refused.load(Ordering::SeqCst), 2, "one refused, one accepted");
        assert_eq!(fake.registered.lock().unwrap()["3"], info("/tmp/blockmgr-3"));
        assert_eq!(fake.opened.load(Ordering::SeqCst), 2, "a connection per attempt");
        eventually("both connections closed", || fake.closed.load(Ordering::SeqCst) == 2).await;

        // Host-local dirs of what was registered; an unknown executor fails the request.
        let dirs = client
            .get_host_local_dirs(server.local_addr(), &["3".to_owned()])
            .await
            .unwrap();
        assert_eq!(dirs, HashMap::from([("3".to_owned(), vec!["/tmp/blockmgr-3".to_owned()])]));
        let error = client
            .get_host_local_dirs(server.local_addr(), &["3".to_owned(), "9".to_owned()])
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ShuffleClientError::Request { request: "GetLocalDirsForExecutors", error: RequestError::Remote(m) } if m.contains("executor 9")),
            "{error}"
        );
        client.close();
        server.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_gives_up_after_its_attempts_with_the_last_error() {
    bounded(async {
        // Nothing listens here.
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = client(config());
        let error = client
            .register_executor(addr, "1", info("/d"))
            .await
            .unwrap_err();
        let ShuffleClientError::RegistrationFailed { attempts, last, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(*attempts, 3);
        assert!(
            matches!(**last, ShuffleClientError::Connect(ConnectError::Io { .. })),
            "{last}"
        );
        assert!(!error.is_authentication_failure());
        assert!(error
            .to_string()
            .starts_with("registering executor 1 failed after 3 attempts"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_nobody_answers_times_out_each_attempt() {
    bounded(async {
        let fake = Fake::new(
            HashMap::new(),
            Faults {
                ignore_registrations: true,
                ..Faults::default()
            },
            Arc::default(),
        );
        let server = serve(fake.clone(), Security::none());
        let client = client(
            config()
                .to_builder()
                .with_registration_timeout(Duration::from_millis(200))
                .with_registration_attempts(2)
                .build()
                .unwrap(),
        );
        let error = client
            .register_executor(server.local_addr(), "1", info("/d"))
            .await
            .unwrap_err();
        let ShuffleClientError::RegistrationFailed { last, .. } = &error else {
            panic!("{error}");
        };
        assert!(
            matches!(
                **last,
                ShuffleClientError::Request {
                    request: "RegisterExecutor",
                    error: RequestError::TimedOut { .. }
                }
            ),
            "{last}"
        );
        assert_eq!(fake.ignored.lock().unwrap().len(), 2);
        eventually("both connections closed", || {
            fake.closed.load(Ordering::SeqCst) == 2
        })
        .await;
        server.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_blocks_arrive_intact_mapped_through_the_chunk_order() {
    bounded(async {
        let ids = [
            "shuffle_0_10_1",
            "shuffle_0_2_0",
            "shuffle_0_10_3",
            "shuffle_0_2_7",
            "shuffle_1_4_0_5",
            "shuffle_1_3_2_4",
        ];
        let sizes = [100, 0, 70_000, 1, 300_000, 12];
        let served = blocks_of("1", &ids, &sizes);
        let fake = Fake::new(served.clone(), Faults::default(), Arc::default());
        let server = serve(fake.clone(), Security::none());
        let client = client(config());
        let single: Vec<String> = ids[..4].iter().map(|s| s.to_string()).collect();
        let got = all(client.fetch_blocks(server.local_addr(), "1", single)).await;
        let order: Vec<_> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["shuffle_0_10_1", "shuffle_0_10_3", "shuffle_0_2_0", "shuffle_0_2_7"]);
        for (id, result) in got {
            assert_eq!(result.unwrap(), served[&("1".to_owned(), id.clone())], "{id}");
        }
        let batch: Vec<String> = ids[4..].iter().map(|s| s.to_string()).collect();
        let got = all(client.fetch_blocks(server.local_addr(), "1", batch)).await;
        assert_eq!(got.len(), 2);
        for (id, result) in got {
            assert_eq!(result.unwrap(), served[&("1".to_owned(), id.clone())], "{id}");
        }
        let fetches = fake.fetches();
        let [BlockTransferMessage::FetchShuffleBlocks(first), BlockTransferMessage::FetchShuffleBlocks(second)] =
            &fetches[..]
        else {
            panic!("{fetches:?}");
        };
        assert_eq!((first.app_id.as_str(), first.exec_id.as_str()), (APP, "1"));
        assert_eq!(first.map_ids, [10, 2]);
        assert_eq!(first.reduce_ids, [vec![1, 3], vec![0, 7]]);
        assert!(!first.batch_fetch_enabled);
        assert_eq!(second.map_ids, [4, 3]);
        assert_eq!(second.reduce_ids, [vec![0, 5], vec![2, 4]]);
        assert!(second.batch_fetch_enabled);
        client.close();
        server.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_block_fails_itself_and_later_blocks_only() {
    bounded(async {
        let served = blocks_of("1", &["shuffle_0_1_0", "shuffle_0_2_0"], &[10, 20]);
        let fake = Fake::new(served.clone(), Faults::default(), Arc::default());
        let server = serve(fake.clone(), Security::none());
        let client = client(config());
        let ids = ["shuffle_0_1_0", "shuffle_0_1_1", "shuffle_0_2_0"].map(String::from).to_vec();
        let got = all(client.fetch_blocks(server.local_addr(), "1", ids)).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("shuffle_0_1_0".to_owned(), Ok(served[&("1".to_owned(), "shuffle_0_1_0".to_owned())].clone())));
        for (id, result) in &got[1..] {
            let error = result.as_ref().unwrap_err();
            assert!(
                matches!(error, BlockFetchError::Chunk { chunk, error: RequestError::Remote(m) } if chunk.chunk_index == 1 && m.contains("shuffle_0_1_1")),
                "{id}: {error}"
            );
        }
        assert_eq!(fake.fetches().len(), 1, "a refusal by the server is not retried");
        client.close();
        server.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_retried_for_the_outstanding_blocks() {
    bounded(async {
        let ids: Vec<String> = (0..6).map(|m| format!("shuffle_2_{m}_0")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let served = blocks_of("1", &id_refs, &[1000, 2000, 3000, 4000, 5000, 6000]);
        let fake = Fake::new(
            served.clone(),
            Faults {
                drop_chunk: Some(3),
                ..Faults::default()
            },
            Arc::default(),
        );
        let server = serve(fake.clone(), Security::none());
        let client = client(config());
        let mut fetch = client.fetch_blocks(server.local_addr(), "1", ids.clone());
        let got = all(&mut fetch).await;
        assert_eq!(got.len(), 6);
        for (id, result) in got {
            assert_eq!(
                result.unwrap(),
                served[&("1".to_owned(), id.clone())],
                "{id}"
            );
        }
        assert_eq!(fetch.retries(), 1);
        let fetches = fake.fetches();
        assert_eq!(fetches.len(), 2);
        let BlockTransferMessage::FetchShuffleBlocks(retry) = &fetches[1] else {
            panic!("{fetches:?}");
        };
        assert_eq!(retry.map_ids, [3, 4, 5], "only the outstanding blocks");
        client.close();
        server.close();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_blocks_counts_what_the_service_removed() {
    bounded(async {
        let served = blocks_of("1", &["shuffle_0_1_0.data", "shuffle_0_1_0.index"], &[1, 1]);
        let fake = Fake::new(served, Faults::default(), Arc::default());
        let server = serve(fake.clone(), Security::none());
        let client = client(config());
        let ids = [
            "shuffle_0_1_0.data",
            "shuffle_0_1_0.index",
            "shuffle_0_7_0.data",
        ]
        .map(String::from)
        .to_vec();
        let removed = client
            .remove_blocks(server.local_addr(), "1", ids.clone())
            .await
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!(
            client
                .remove_blocks(server.local_addr(), "1", ids)
                .await
                .unwrap(),
            0
        );
        client.close();
        server.close();
    })
    .await
}

/// Reads 60 blocks of two executors (two services) with a budget of `BUDGET` bytes, `big`
/// of them larger than the budget; returns the most bytes outstanding at the services (served
/// and not yet taken) and the largest block.
async fn read_with_budget(big: bool) -> (u64, u64) {
    {
        let counters = Arc::new(Counters::default());
        let mut servers = Vec::new();
        let mut remote = Vec::new();
        let mut expected = HashMap::new();
        let mut largest = 0u64;
        for (s, exec) in ["1", "2"].into_iter().enumerate() {
            let ids: Vec<String> = (0..30)
                .map(|m| format!("shuffle_5_{}_{}", m + 100 * s, 7))
                .collect();
            // Sizes from 1 to ~40 KB, and one block larger than the whole budget.
            let mut sizes: Vec<usize> = (0..30)
                .map(|i| 1 + (i * 7919 + s * 104_729) % 40_000)
                .collect();
            if big {
                sizes[17] = 300_000;
            }
            let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let served = blocks_of(exec, &id_refs, &sizes);
            largest = largest.max(*sizes.iter().max().unwrap() as u64);
            let fake = Fake::new(served.clone(), Faults::default(), counters.clone());
            let server = serve(fake, Security::none());
            remote.push(RemoteBlocks {
                addr: server.local_addr(),
                exec_id: exec.to_owned(),
                blocks: ids
                    .iter()
                    .cloned()
                    .zip(sizes.iter().map(|&n| n as u64))
                    .collect(),
            });
            expected.extend(served);
            servers.push(server);
        }
        let client = client(
            config()
                .to_builder()
                .with_max_bytes_in_flight(BUDGET)
                .build()
                .unwrap(),
        );
        let mut reader = client.reader(remote);
        let mut got = 0;
        while let Some(block) = reader.next_block().await {
            let bytes = block
                .result
                .unwrap_or_else(|e| panic!("{}: {e}", block.block_id));
            assert_eq!(
                bytes,
                expected[&(block.exec_id.clone(), block.block_id.clone())],
                "{}",
                block.block_id
            );
            assert_eq!(bytes.len() as u64, block.size);
            assert!(reader.bytes_in_flight() <= BUDGET + largest);
            counters.taken.fetch_add(block.size, Ordering::SeqCst);
            got += 1;
            if got % 5 == 0 {
                // A slow consumer: the fetching waits for it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(got, 60);
        let max = counters.max_outstanding.load(Ordering::SeqCst);
        assert_eq!(
            counters.served.load(Ordering::SeqCst),
            counters.taken.load(Ordering::SeqCst)
        );
        client.close();
        for server in servers {
            server.close();
        }
        (max, largest)
    }
}

const BUDGET: u64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_keeps_the_bytes_outstanding_within_its_budget() {
    let (max, largest) = bounded(read_with_budget(false)).await;
    assert!(largest < BUDGET / 5);
    assert!(max <= BUDGET, "{max} bytes outstanding, budget {BUDGET}");
    assert!(max > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_larger_than_the_budget_is_fetched_alone() {
    let (max, largest) = bounded(read_with_budget(true)).await;
    assert!(largest > BUDGET);
    // Alone: nothing else is outstanding while it is.
    assert!(
        max <= BUDGET.max(largest),
        "{max} bytes outstanding, budget {BUDGET}, largest block {largest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_is_not_read_stops_fetching_at_the_budget() {
    bounded(async {
        const BUDGET: u64 = 50_000;
        let counters = Arc::new(Counters::default());
        let ids: Vec<String> = (0..40).map(|m| format!("shuffle_0_{m}_0")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let served = blocks_of("1", &id_refs, &[10_000; 40]);
        let fake = Fake::new(served, Faults::default(), counters.clone());
        let server = serve(fake, Security::none());
        let client = client(
            config()
                .to_builder()
                .with_max_bytes_in_flight(BUDGET)
                .build()
                .unwrap(),
        );
        let remote = vec![RemoteBlocks {
            addr: server.local_addr(),
            exec_id: "1".into(),
            blocks: ids.iter().map(|id| (id.clone(), 10_000)).collect(),
        }];
        let mut reader = client.reader(remote);
        let first = reader.next_block().await.unwrap();
        counters.taken.fetch_add(first.size, Ordering::SeqCst);
        // Not read for a while: the fetches stop within the budget.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let served = counters.served.load(Ordering::SeqCst);
        assert!(
            served <= BUDGET + 10_000,
            "{served} bytes served while nobody read"
        );
        let mut rest = 0;
        while let Some(block) = reader.next_block().await {
            block.result.unwrap();
            rest += 1;
        }
        assert_eq!(rest, 39);
        client.close();
        server.close();
    })
    .await
}

/// The fake service with a secret, and a client presenting [`APP`] with `mechanism`.
async fn authenticated(mechanism: AuthMechanism) {
    let served = blocks_of("1", &["shuffle_0_0_0", "shuffle_0_1_0"], &[5000, 70_000]);
    let fake = Fake::new(served.clone(), Faults::default(), Arc::default());
    let server = serve(
        fake.clone(),
        Security::secret("s3cret").with_mechanism(mechanism),
    );
    let good = client(
        config()
            .to_builder()
            .with_security(Security::secret("s3cret").with_mechanism(mechanism))
            .build()
            .unwrap(),
    );
    good.register_executor(server.local_addr(), "1", info("/d"))
        .await
        .unwrap();
    let got = all(good.fetch_blocks(
        server.local_addr(),
        "1",
        vec!["shuffle_0_0_0".into(), "shuffle_0_1_0".into()],
    ))
    .await;
    for (id, result) in got {
        assert_eq!(
            result.unwrap(),
            served[&("1".to_owned(), id.clone())],
            "{id}"
        );
    }
    let ids = fake.client_ids.lock().unwrap().clone();
    assert!(!ids.is_empty());
    assert!(
        ids.iter().all(|id| id.as_deref() == Some(APP)),
        "the app id authenticates: {ids:?}"
    );

    // A wrong secret is refused, with a typed error, after the registration's attempts.
    let bad = client(
        config()
            .to_builder()
            .with_registration_attempts(2)
            .with_security(Security::secret("wrong").with_mechanism(mechanism))
            .build()
            .unwrap(),
    );
    let error = bad
        .register_executor(server.local_addr(), "2", info("/e"))
        .await
        .unwrap_err();
    assert!(error.is_authentication_failure(), "{error:?}");
    assert!(!fake.registered.lock().unwrap().contains_key("2"));
    let fetched =
        all(bad.fetch_blocks(server.local_addr(), "1", vec!["shuffle_0_0_0".into()])).await;
    assert!(
        matches!(
            &fetched[0].1,
            Err(BlockFetchError::Connect(ConnectError::Security(_)))
        ),
        "{fetched:?}"
    );
    // And a client without a secret gets nothing.
    let none = client(
        config()
            .to_builder()
            .with_registration_attempts(1)
            .build()
            .unwrap(),
    );
    assert!(none
        .register_executor(server.local_addr(), "3", info("/f"))
        .await
        .is_err());
    assert!(!fake.registered.lock().unwrap().contains_key("3"));
    good.close();
    bad.close();
    none.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_authenticates_with_the_app_id() {
    bounded(authenticated(AuthMechanism::spark_default())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_authenticates_with_the_app_id() {
    bounded(authenticated(AuthMechanism::aes_gcm())).await
}
