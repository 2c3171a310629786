//! The service: Spark's `ExternalBlockHandler` and `ExternalShuffleBlockResolver` — what
//! unmodified Spark executors register their shuffle files with and fetch blocks from.
//!
//! ```text
//!  executor ── RegisterExecutor ─────────► ShuffleService ──► registration table (+ redb store)
//!  reducer  ── FetchShuffleBlocks ───────►   │  StreamHandle{id, n}  (a lazy stream, owned by
//!           ◄── StreamHandle ─────────────   │   the connection and the application)
//!           ── ChunkFetchRequest(id, i) ──►  │  chunk i = FileSegment of shuffle_S_M_0.data at
//!           ◄── the block's bytes ─────────   │   the index's offsets (index files cached)
//!  driver   ── RemoveBlocks ─────────────►   └─ deletes files, BlocksRemoved{n}
//! ```
//!
//! [`ShuffleService`] is an [`RpcHandler`] and [`StreamManager`]: bind a
//! [`TransportServer`](rpc_driver::transport::TransportServer) with it, on any runtime; the
//! `spark-shuffle-service` binary of this crate does that on tokio.
//!
//! A service on tokio, an executor registering with it, and a reducer fetching one block
//! (a real deployment adds [`with_db`](ShuffleServiceBuilder::with_db) and a secret; see
//! the crate's README):
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use rpc_shuffle::protocol::{
//!     executor_file_path, BlockTransferMessage, ExecutorShuffleInfo, FetchShuffleBlocks,
//!     RegisterExecutor,
//! };
//! use rpc_shuffle::server::ShuffleService;
//! use rpc_tokio::{
//!     NoopRpcHandler, StreamChunkId, TransportClientFactory, TransportConfig, TransportServer,
//! };
//!
//! // The service's local dir, and an executor's dir under it holding one map output of two
//! // blocks, "hello" and "shuffle", as Spark's sort shuffle writes it.
//! let root = tempfile::tempdir()?;
//! let dirs = vec![root.path().join("blockmgr-1").display().to_string()];
//! for (name, bytes) in [
//!     ("shuffle_0_7_0.data", b"helloshuffle".to_vec()),
//!     ("shuffle_0_7_0.index", [0i64, 5, 12].iter().flat_map(|o| o.to_be_bytes()).collect()),
//! ] {
//!     let path = executor_file_path(&dirs, 64, name).unwrap();
//!     std::fs::create_dir_all(path.parent().unwrap())?;
//!     std::fs::write(path, bytes)?;
//! }
//!
//! let service = Arc::new(ShuffleService::builder().with_local_dir(root.path()).build()?);
//! let server = TransportServer::bind(
//!     rpc_tokio::runtime(),
//!     "127.0.0.1:0".parse()?,
//!     service.clone(),
//!     TransportConfig::default(),
//! )?;
//!
//! let factory = TransportClientFactory::new(
//!     rpc_tokio::runtime(),
//!     Arc::new(NoopRpcHandler),
//!     TransportConfig::default(),
//! );
//! let client = factory.create_client(server.local_addr()).await?;
//! let register = BlockTransferMessage::RegisterExecutor(RegisterExecutor {
//!     app_id: "app-1".into(),
//!     exec_id: "0".into(),
//!     executor_info: ExecutorShuffleInfo {
//!         local_dirs: dirs,
//!         sub_dirs_per_local_dir: 64,
//!         shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
//!     },
//! });
//! assert!(client.send_rpc(register.encode(), None).await?.is_empty());
//!
//! let fetch = BlockTransferMessage::FetchShuffleBlocks(FetchShuffleBlocks {
//!     app_id: "app-1".into(),
//!     exec_id: "0".into(),
//!     shuffle_id: 0,
//!     map_ids: vec![7],
//!     reduce_ids: vec![vec![1]],
//!     batch_fetch_enabled: false,
//! });
//! let reply = client.send_rpc(fetch.encode(), None).await?;
//! let BlockTransferMessage::StreamHandle(handle) = BlockTransferMessage::decode(&reply)? else {
//!     unreachable!("a fetch is answered with a stream handle")
//! };
//! let chunk = StreamChunkId { stream_id: handle.stream_id, chunk_index: 0 };
//! assert_eq!(&client.fetch_chunk(chunk, None).await?[..], b"shuffle");
//! assert_eq!(service.metrics().bytes_served, 7);
//! server.close();
//! # Ok(())
//! # }
//! ```
//!
//! # What it serves, and what it refuses
//!
//! | message | answer |
//! |---|---|
//! | `RegisterExecutor` | empty reply; stored (replacing an earlier one) |
//! | `FetchShuffleBlocks`, `OpenBlocks` | `StreamHandle`; chunks are file segments, fetched as chunks or (to disk) as streams named `<stream>_<chunk>` |
//! | `GetLocalDirsForExecutors` | `LocalDirsForExecutors` |
//! | `RemoveBlocks` | `BlocksRemoved` |
//! | `PushBlockStream` (an upload) | `BlockPushReturnCode(TOO_LATE_BLOCK_PUSH)`: the pusher stops pushing, readers use the map outputs |
//! | `DiagnoseCorruption` | `CorruptionCause`, from the writer's checksum file (ADLER32, CRC32, CRC32C) |
//! | `UploadBlock`, `FinalizeShuffleMerge`, `FetchShuffleBlockChunks`, other uploads | failure naming the message |
//! | `RemoveShuffleMerge` (one-way) | logged and ignored |
//! | replies sent as requests, undecodable bodies | failure |
//!
//! Every failure is an `RpcFailure` (or chunk failure) on a connection that stays open.
//!
//! # Security
//!
//! * **Per-application authorization** (Spark's `checkAuth`): on a connection that
//!   authenticated (its [`client_id`](TransportClient::client_id) is the application it
//!   authenticated as), a message naming another application is refused with Spark's text
//!   `Client for <client> not authorized for application <app>.`; streams are served only to
//!   the connection that opened them, and only to their application. Without authentication
//!   there is no check, as in Spark.
//! * **Paths**: every name from the wire that becomes a file name is one path component
//!   (not empty, `.` or `..`, no `/`, `\` or NUL); every file served or deleted is resolved
//!   (links included) and must lie under the executor's registered local dirs; every
//!   registered local dir must lie under one of the service's
//!   [local dirs](ShuffleServiceBuilder::with_local_dir) (Spark 4.3's `LocalDirValidator`).
//!   With no local dirs configured, any existing absolute dir is accepted (Spark's standalone
//!   service checks against its own `spark.local.dir`): configure them.
//!
//! # Where the work happens
//!
//! Handlers run on the connection's task, as Spark's run on its event loop: a registration
//! writes the store (one small durable transaction), a chunk's index lookup reads the index
//! file once (then the cache serves it), `RemoveBlocks` deletes files and
//! `DiagnoseCorruption` reads one block. Block bytes are not read there: a chunk is handed to
//! the transport as a file segment, read on the runtime's blocking pool (chunk fetches) or
//! sent with `sendfile` (blocks fetched to disk, where the connection's security allows it).

mod checksum;
mod error;
mod metrics;
mod resolver;
mod store;

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rpc_driver::transport::{
    stream_not_found, FileSegment, ManagedBuffer, OneForOneStreamManager, RpcHandler, RpcResponder,
    StreamManager, TransportClient, UploadSink,
};
use rpc_driver::BoxError;
use rpc_proto::shuffle::{
    shuffle_data_file, shuffle_index_file, BlockId, BlockPushReturnCode, BlockTransferMessage,
    BlocksRemoved, CorruptionCause, DiagnoseCorruption, ExecutorShuffleInfo, FetchShuffleBlocks,
    GetLocalDirsForExecutors, LocalDirsForExecutors, OpenBlocks, RegisterExecutor, RemoveBlocks,
    StreamHandle,
};
use rpc_proto::StreamChunkId;
use tracing::{debug, info, warn};

pub use error::{ShuffleServiceConfigError, ShuffleServiceError, StoreError};
pub use metrics::ShuffleServiceMetrics;

use metrics::Counters;
use resolver::{validate_file_name, Executor, Executors, IndexCache};
use store::RegistrationStore;

/// Spark's default index cache size (`spark.shuffle.service.index.cache.size`, `100m`).
pub const DEFAULT_INDEX_CACHE_BYTES: u64 = 100 * 1024 * 1024;

/// The default of [`ShuffleServiceBuilder::with_max_streams_per_connection`].
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 4096;

/// `BlockPushReturnCode`'s `TOO_LATE_BLOCK_PUSH`: what a pushed block is answered with.
const TOO_LATE_BLOCK_PUSH: u8 = 1;

/// Spark's external shuffle service: an [`RpcHandler`] and [`StreamManager`] serving the
/// sort-shuffle files of registered executors (see the [module docs](self)).
pub struct ShuffleService {
    shared: Arc<Shared>,
    /// Here rather than in `Shared`, which streams hold: the database closes (and its file
    /// lock is released) when the service is dropped.
    store: Option<RegistrationStore>,
    streams: OneForOneStreamManager,
    max_streams_per_connection: usize,
}

/// What the service and the chunk sources of its streams share.
struct Shared {
    roots: Vec<PathBuf>,
    fetch_rdd: bool,
    executors: Executors,
    indexes: IndexCache,
    counters: Counters,
}

/// One chunk of a stream: what to read when it is fetched.
#[derive(Debug, Clone)]
enum ChunkPlan {
    /// Reduce partitions `[start, end)` of a map output.
    Shuffle {
        shuffle_id: i32,
        map_id: i64,
        start: i32,
        end: i32,
    },
    /// A whole file (`rdd_R_P`).
    File(String),
}

impl ShuffleService {
    /// A builder of a service, with Spark's defaults.
    pub fn builder() -> ShuffleServiceBuilder {
        ShuffleServiceBuilder {
            local_dirs: Vec::new(),
            db: None,
            index_cache_bytes: DEFAULT_INDEX_CACHE_BYTES,
            fetch_rdd: false,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }

    /// A snapshot of the service's counters.
    pub fn metrics(&self) -> ShuffleServiceMetrics {
        let (index_cache_entries, index_cache_bytes) = self.shared.indexes.usage();
        self.shared.counters.snapshot(
            self.shared.executors.len() as u64,
            self.streams.registered() as u64,
            index_cache_entries as u64,
            index_cache_bytes,
        )
    }

    /// Forgets application `app_id` (Spark's `applicationRemoved`, which the standalone
    /// Worker calls when an application ends): its registrations, from memory and from the
    /// store. Its files are left alone. Returns how many executors it had.
    pub fn remove_application(&self, app_id: &str) -> Result<usize, StoreError> {
        let removed = self.shared.executors.remove_app(app_id);
        if let Some(store) = &self.store {
            store.remove_app(app_id)?;
        }
        info!(%app_id, executors = removed, "application removed");
        Ok(removed)
    }

    /// The registration of an executor, if it registered.
    pub fn executor(&self, app_id: &str, exec_id: &str) -> Option<ExecutorShuffleInfo> {
        self.shared
            .executors
            .get(app_id, exec_id)
            .ok()
            .map(|e| e.info.clone())
    }

    /// Handles one decoded request; `Ok` is the reply's body.
    fn handle(
        &self,
        client: &TransportClient,
        message: BlockTransferMessage,
    ) -> Result<Bytes, ShuffleServiceError> {
        check_auth(client, &message)?;
        match message {
            BlockTransferMessage::RegisterExecutor(m) => self.register(m),
            BlockTransferMessage::FetchShuffleBlocks(m) => self.fetch_shuffle_blocks(client, m),
            BlockTransferMessage::OpenBlocks(m) => self.open_blocks(client, m),
            BlockTransferMessage::GetLocalDirsForExecutors(m) => self.local_dirs(m),
            BlockTransferMessage::RemoveBlocks(m) => self.remove_blocks(m),
            BlockTransferMessage::DiagnoseCorruption(m) => self.diagnose_corruption(m),
            m @ (BlockTransferMessage::UploadBlock(_)
            | BlockTransferMessage::UploadBlockStream(_)
            | BlockTransferMessage::PushBlockStream(_)
            | BlockTransferMessage::FinalizeShuffleMerge(_)
            | BlockTransferMessage::FetchShuffleBlockChunks(_)
            | BlockTransferMessage::RemoveShuffleMerge(_)) => {
                Err(ShuffleServiceError::Unsupported(m.name()))
            }
            m => Err(ShuffleServiceError::Unexpected(m.name())),
        }
    }

    fn register(&self, m: RegisterExecutor) -> Result<Bytes, ShuffleServiceError> {
        let RegisterExecutor {
            app_id,
            exec_id,
            executor_info,
        } = m;
        let executor = Executor::new(&exec_id, executor_info, &self.shared.roots)?;
        if let Some(store) = &self.store {
            store.put(&app_id, &exec_id, &executor.info)?;
        }
        info!(
            %app_id,
            %exec_id,
            local_dirs = ?executor.info.local_dirs,
            sub_dirs = executor.info.sub_dirs_per_local_dir,
            shuffle_manager = shuffle_manager_class(&executor.info.shuffle_manager),
            "executor registered"
        );
        self.shared.executors.insert(&app_id, &exec_id, executor);
        self.shared
            .counters
            .registrations
            .fetch_add(1, Ordering::Relaxed);
        Ok(Bytes::new())
    }

    fn fetch_shuffle_blocks(
        &self,
        client: &TransportClient,
        m: FetchShuffleBlocks,
    ) -> Result<Bytes, ShuffleServiceError> {
        let blocks = m.blocks()?;
        self.shared.executors.get(&m.app_id, &m.exec_id)?;
        let plan = blocks
            .into_iter()
            .filter_map(|block| match block {
                BlockId::Shuffle {
                    shuffle_id,
                    map_id,
                    reduce_id,
                } => Some(ChunkPlan::Shuffle {
                    shuffle_id,
                    map_id,
                    start: reduce_id,
                    end: reduce_id.saturating_add(1),
                }),
                BlockId::ShuffleBatch {
                    shuffle_id,
                    map_id,
                    start_reduce_id,
                    end_reduce_id,
                } => Some(ChunkPlan::Shuffle {
                    shuffle_id,
                    map_id,
                    start: start_reduce_id,
                    end: end_reduce_id,
                }),
                // FetchShuffleBlocks::blocks lists shuffle blocks only.
                BlockId::ShuffleChunk { .. } | BlockId::Rdd { .. } => None,
            })
            .collect();
        self.open_stream(client, m.app_id, m.exec_id, plan)
    }

    fn open_blocks(
        &self,
        client: &TransportClient,
        m: OpenBlocks,
    ) -> Result<Bytes, ShuffleServiceError> {
        self.shared.executors.get(&m.app_id, &m.exec_id)?;
        let mut plan = Vec::with_capacity(m.block_ids.len());
        for id in &m.block_ids {
            match BlockId::parse(id) {
                Some(BlockId::Shuffle {
                    shuffle_id,
                    map_id,
                    reduce_id,
                }) => plan.push(ChunkPlan::Shuffle {
                    shuffle_id,
                    map_id,
                    start: reduce_id,
                    end: reduce_id.saturating_add(1),
                }),
                Some(BlockId::Rdd { .. }) if self.shared.fetch_rdd => {
                    validate_file_name(id)?;
                    plan.push(ChunkPlan::File(id.clone()));
                }
                Some(BlockId::Rdd { .. }) => {
                    return Err(ShuffleServiceError::RddFetchDisabled(id.clone()))
                }
                _ => return Err(ShuffleServiceError::UnexpectedBlockId(id.clone())),
            }
        }
        self.open_stream(client, m.app_id, m.exec_id, plan)
    }

    /// Registers `plan` as a lazy stream owned by `client`'s connection and `app_id`.
    fn open_stream(
        &self,
        client: &TransportClient,
        app_id: String,
        exec_id: String,
        plan: Vec<ChunkPlan>,
    ) -> Result<Bytes, ShuffleServiceError> {
        let num_chunks = u32::try_from(plan.len())
            .map_err(|_| ShuffleServiceError::TooManyBlocks(plan.len()))?;
        let open = self.streams.registered_for(client);
        if open >= self.max_streams_per_connection {
            return Err(ShuffleServiceError::TooManyStreams {
                open,
                limit: self.max_streams_per_connection,
            });
        }
        let shared = self.shared.clone();
        let (app, exec) = (app_id.clone(), exec_id.clone());
        let stream_id = self.streams.register_lazy_buffer_stream(
            &app_id,
            num_chunks,
            Some(client),
            move |chunk| {
                let outcome = plan
                    .get(chunk as usize)
                    .ok_or_else(|| format!("Requested chunk index beyond end {chunk}"))
                    .and_then(|p| shared.chunk(&app, &exec, p).map_err(|e| e.to_string()));
                match &outcome {
                    Ok(buffer) => {
                        shared.counters.blocks_served.fetch_add(1, Ordering::Relaxed);
                        shared
                            .counters
                            .bytes_served
                            .fetch_add(buffer.len(), Ordering::Relaxed);
                    }
                    Err(error) => {
                        shared.counters.block_failures.fetch_add(1, Ordering::Relaxed);
                        debug!(app_id = %app, exec_id = %exec, chunk, %error, "cannot serve a block");
                    }
                }
                outcome
            },
        );
        self.shared
            .counters
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        debug!(%app_id, %exec_id, stream_id, num_chunks, "stream registered");
        Ok(BlockTransferMessage::StreamHandle(StreamHandle {
            stream_id,
            num_chunks,
        })
        .encode())
    }

    fn local_dirs(&self, m: GetLocalDirsForExecutors) -> Result<Bytes, ShuffleServiceError> {
        let dirs = m
            .exec_ids
            .iter()
            .map(|exec_id| {
                let executor = self.shared.executors.get(&m.app_id, exec_id)?;
                Ok((exec_id.clone(), executor.info.local_dirs.clone()))
            })
            .collect::<Result<_, ShuffleServiceError>>()?;
        Ok(BlockTransferMessage::LocalDirsForExecutors(LocalDirsForExecutors { dirs }).encode())
    }

    /// Spark's `diagnoseShuffleBlockCorruption`: why a block's checksum did not match, from
    /// the checksum file `shuffle_S_M_0.checksum.<ALGORITHM>` the writer left.
    fn diagnose_corruption(&self, m: DiagnoseCorruption) -> Result<Bytes, ShuffleServiceError> {
        let executor = self.shared.executors.get(&m.app_id, &m.exec_id)?;
        let name = format!(
            "shuffle_{}_{}_0.checksum.{}",
            m.shuffle_id, m.map_id, m.algorithm
        );
        let checksum_file = match executor.file(&name) {
            Ok(path) => Some(path),
            // No checksum file: the cause is unknown, as Spark says.
            Err(ShuffleServiceError::Io { .. }) => None,
            // A name that could leave its dir, or a file outside the executor's dirs.
            Err(error) => return Err(error),
        };
        let plan = ChunkPlan::Shuffle {
            shuffle_id: m.shuffle_id,
            map_id: m.map_id,
            start: m.reduce_id,
            end: m.reduce_id.saturating_add(1),
        };
        let block = || match self.shared.chunk(&m.app_id, &m.exec_id, &plan) {
            Ok(ManagedBuffer::File(segment)) => Ok(segment),
            Ok(_) => Err(std::io::Error::other("not a file")),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        let cause = checksum::diagnose(
            &m.algorithm,
            checksum_file.as_deref(),
            m.reduce_id,
            block,
            m.checksum,
        );
        info!(app_id = %m.app_id, exec_id = %m.exec_id, shuffle_id = m.shuffle_id, map_id = m.map_id, reduce_id = m.reduce_id, ?cause, "diagnosed a corrupt block");
        Ok(BlockTransferMessage::CorruptionCause(CorruptionCause { cause }).encode())
    }

    /// Deletes the files named; invalid or missing ones are skipped with a warning (as
    /// Spark does: the reply counts what was deleted). An unknown executor is refused.
    fn remove_blocks(&self, m: RemoveBlocks) -> Result<Bytes, ShuffleServiceError> {
        let executor = self.shared.executors.get(&m.app_id, &m.exec_id)?;
        let mut removed = 0i32;
        for id in &m.block_ids {
            let outcome = executor.file(id).and_then(|path| {
                fs::remove_file(&path)
                    .map_err(|source| ShuffleServiceError::Io {
                        path: path.clone(),
                        source,
                    })
                    .map(|()| path)
            });
            match outcome {
                Ok(path) => {
                    self.shared.indexes.invalidate(&path);
                    removed = removed.saturating_add(1);
                }
                Err(error) => {
                    warn!(app_id = %m.app_id, exec_id = %m.exec_id, block_id = ?id, %error, "block not removed");
                }
            }
        }
        self.shared
            .counters
            .blocks_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
        Ok(BlockTransferMessage::BlocksRemoved(BlocksRemoved {
            num_removed_blocks: removed,
        })
        .encode())
    }
}

impl Shared {
    /// Reads the chunk `plan` of executor `exec_id`: a segment of its data file.
    fn chunk(
        &self,
        app_id: &str,
        exec_id: &str,
        plan: &ChunkPlan,
    ) -> Result<ManagedBuffer, ShuffleServiceError> {
        let executor = self.executors.get(app_id, exec_id)?;
        match plan {
            &ChunkPlan::Shuffle {
                shuffle_id,
                map_id,
                start,
                end,
            } => {
                let index_path = executor.file(&shuffle_index_file(shuffle_id, map_id))?;
                let index = self.indexes.get(&index_path)?;
                let (offset, len) =
                    index
                        .range(start, end)
                        .map_err(|source| ShuffleServiceError::Index {
                            path: index_path,
                            source,
                        })?;
                let data_path = executor.file(&shuffle_data_file(shuffle_id, map_id))?;
                let segment =
                    FileSegment::open_range(&data_path, offset, len).map_err(|source| {
                        ShuffleServiceError::Io {
                            path: data_path,
                            source,
                        }
                    })?;
                Ok(ManagedBuffer::File(segment))
            }
            ChunkPlan::File(name) => {
                let path = executor.file(name)?;
                let segment = FileSegment::open(&path)
                    .map_err(|source| ShuffleServiceError::Io { path, source })?;
                Ok(ManagedBuffer::File(segment))
            }
        }
    }
}

/// Spark's `checkAuth`: an authenticated connection may only name its own application.
fn check_auth(
    client: &TransportClient,
    message: &BlockTransferMessage,
) -> Result<(), ShuffleServiceError> {
    match (client.client_id(), message.app_id()) {
        (Some(client_id), Some(app_id)) if client_id != app_id => {
            Err(ShuffleServiceError::Unauthorized {
                client_id: client_id.to_owned(),
                app_id: app_id.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// The class of a shuffle manager string: with push-based shuffle Spark sends
/// `"<class>:<json>}}"`; this service only logs it.
fn shuffle_manager_class(shuffle_manager: &str) -> &str {
    shuffle_manager
        .split_once(':')
        .map_or(shuffle_manager, |(class, _)| class)
}

impl RpcHandler for ShuffleService {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let outcome = BlockTransferMessage::decode(&message)
            .map_err(ShuffleServiceError::from)
            .and_then(|m| self.handle(client, m));
        match outcome {
            Ok(reply) => {
                let _ = responder.reply(reply);
            }
            Err(error) => {
                self.shared.counters.refused(&error);
                debug!(peer = %client.peer_addr(), %error, "request refused");
                let _ = responder.fail(&error.to_string());
            }
        }
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        match BlockTransferMessage::decode(&message) {
            Ok(BlockTransferMessage::RemoveShuffleMerge(m)) => {
                debug!(app_id = %m.app_id, shuffle_id = m.shuffle_id, "ignoring RemoveShuffleMerge: no push-based shuffle here");
            }
            Ok(other) => {
                debug!(peer = %client.peer_addr(), message = other.name(), "ignoring one-way message");
            }
            Err(error) => {
                debug!(peer = %client.peer_addr(), %error, "ignoring malformed one-way message");
            }
        }
    }

    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, BoxError> {
        let message = BlockTransferMessage::decode(&meta).map_err(ShuffleServiceError::from);
        let refusal = match message {
            Ok(BlockTransferMessage::PushBlockStream(push)) => {
                match check_auth(client, &BlockTransferMessage::PushBlockStream(push.clone())) {
                    Ok(()) => {
                        // Spark's pusher decodes every reply as a BlockPushReturnCode: answer
                        // "too late" (a non-fatal code), so it stops pushing this shuffle and the
                        // reducers read the map outputs instead.
                        let block_id = format!(
                            "shufflePush_{}_{}_{}_{}",
                            push.shuffle_id, push.shuffle_merge_id, push.map_index, push.reduce_id
                        );
                        debug!(app_id = %push.app_id, %block_id, "refusing a pushed block: no push-based shuffle here");
                        self.shared
                            .counters
                            .requests_refused
                            .fetch_add(1, Ordering::Relaxed);
                        let reply =
                            BlockTransferMessage::BlockPushReturnCode(BlockPushReturnCode {
                                return_code: TOO_LATE_BLOCK_PUSH,
                                failure_block_id: block_id,
                            });
                        return Ok(Box::new(Discard(reply.encode())));
                    }
                    Err(error) => error,
                }
            }
            Ok(other) => ShuffleServiceError::Unsupported(other.name()),
            Err(error) => error,
        };
        self.shared.counters.refused(&refusal);
        debug!(peer = %client.peer_addr(), error = %refusal, "upload refused");
        Err(refusal.to_string().into())
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }
}

/// Reads and drops an upload's body, then answers with a fixed reply.
struct Discard(Bytes);

impl UploadSink for Discard {
    fn on_data(&mut self, _: Bytes) -> Result<(), BoxError> {
        Ok(())
    }

    fn on_complete(self: Box<Self>, responder: RpcResponder) {
        let _ = responder.reply(self.0);
    }
}

impl StreamManager for ShuffleService {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        self.streams.chunk(client, chunk)
    }

    fn chunk_buffer(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, BoxError> {
        self.streams.chunk_buffer(client, chunk)
    }

    /// A chunk asked for as a named stream, `"<stream id>_<chunk index>"`: how Spark
    /// fetches blocks to disk (`spark.network.maxRemoteBlockSizeFetchToMem`), as Spark's
    /// `OneForOneStreamManager.openStream` serves them. Sent without copying where the
    /// transport can.
    fn open_stream_buffer(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, BoxError> {
        let chunk = stream_id.split_once('_').and_then(|(stream, chunk)| {
            Some(StreamChunkId {
                stream_id: stream.parse().ok()?,
                chunk_index: chunk.parse().ok()?,
            })
        });
        match chunk {
            Some(chunk) => self.streams.chunk_buffer(client, chunk),
            None => Err(stream_not_found(stream_id).into()),
        }
    }

    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, BoxError> {
        self.open_stream_buffer(client, stream_id)
            .and_then(|buffer| buffer.to_bytes().map_err(Into::into))
    }

    fn connection_closed(&self, client: &TransportClient) {
        self.streams.connection_closed(client)
    }
}

impl fmt::Debug for ShuffleService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShuffleService")
            .field("roots", &self.shared.roots)
            .field("fetch_rdd", &self.shared.fetch_rdd)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

/// Builds a [`ShuffleService`]; from [`ShuffleService::builder`].
#[derive(Debug, Clone)]
pub struct ShuffleServiceBuilder {
    local_dirs: Vec<PathBuf>,
    db: Option<PathBuf>,
    index_cache_bytes: u64,
    fetch_rdd: bool,
    max_streams_per_connection: usize,
}

impl ShuffleServiceBuilder {
    /// Adds one of the service's local dirs (Spark: the service's `spark.local.dir`): every
    /// local dir an executor registers must lie under one of them, links resolved. With
    /// none, any existing absolute dir is accepted.
    pub fn with_local_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.local_dirs.push(dir.into());
        self
    }

    /// Keeps registrations in a redb database at `path`, created if missing: the service
    /// reloads them when it starts (registrations whose dirs no longer pass the checks are
    /// skipped with a warning). Without it, registrations live in memory only.
    pub fn with_db(mut self, path: impl Into<PathBuf>) -> Self {
        self.db = Some(path.into());
        self
    }

    /// The index cache's capacity in bytes, each index weighed as Spark weighs it
    /// (`8 × entries + 176`); default [`DEFAULT_INDEX_CACHE_BYTES`]
    /// (`spark.shuffle.service.index.cache.size`).
    pub fn with_index_cache_bytes(mut self, bytes: u64) -> Self {
        self.index_cache_bytes = bytes;
        self
    }

    /// Serve disk-persisted RDD blocks (`rdd_R_P`) through `OpenBlocks` (Spark's
    /// `spark.shuffle.service.fetch.rdd.enabled`); default off.
    pub fn with_fetch_rdd(mut self, enabled: bool) -> Self {
        self.fetch_rdd = enabled;
        self
    }

    /// How many streams one connection may have open at once (Spark has no limit);
    /// default [`DEFAULT_MAX_STREAMS_PER_CONNECTION`].
    pub fn with_max_streams_per_connection(mut self, streams: usize) -> Self {
        self.max_streams_per_connection = streams;
        self
    }

    /// Resolves the local dirs, opens the store and reloads its registrations.
    pub fn build(self) -> Result<ShuffleService, ShuffleServiceConfigError> {
        if self.max_streams_per_connection == 0 {
            return Err(ShuffleServiceConfigError::Zero(
                "max streams per connection",
            ));
        }
        let roots = self
            .local_dirs
            .iter()
            .map(|path| {
                fs::canonicalize(path).map_err(|source| ShuffleServiceConfigError::LocalDir {
                    path: path.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = self
            .db
            .as_deref()
            .map(RegistrationStore::open)
            .transpose()?;
        let executors = Executors::default();
        if let Some(store) = &store {
            let mut reloaded = 0;
            for (app_id, exec_id, info) in store.load()? {
                match Executor::new(&exec_id, info, &roots) {
                    Ok(executor) => {
                        executors.insert(&app_id, &exec_id, executor);
                        reloaded += 1;
                    }
                    Err(error) => {
                        warn!(%app_id, %exec_id, %error, "stored registration not reloaded")
                    }
                }
            }
            info!(executors = reloaded, "registrations reloaded");
        }
        Ok(ShuffleService {
            shared: Arc::new(Shared {
                roots,
                fetch_rdd: self.fetch_rdd,
                executors,
                indexes: IndexCache::new(self.index_cache_bytes),
                counters: Counters::default(),
            }),
            store,
            streams: OneForOneStreamManager::random(),
            max_streams_per_connection: self.max_streams_per_connection,
        })
    }
}

#[cfg(test)]
mod tests;
