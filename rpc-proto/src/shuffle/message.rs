//! Spark's `BlockTransferMessage`s (network-shuffle's `protocol/*.java`), as Spark 4.3.0
//! encodes them: a type byte, then the fields in order.

use bytes::{BufMut, Bytes, BytesMut};

use super::bitmap::Bitmap;
use super::block_id::BlockId;
use super::codec::{Reader, ShuffleDecodeError, Writer};

/// A message of Spark's shuffle service protocol: the body of an `RpcRequest` or
/// `RpcResponse` (or the meta of an `UploadStream`, or a `OneWayMessage`'s body).
///
/// The encoding is Spark's: a type byte (the id below), then the fields, big-endian, with
/// Spark's `Encoders` (strings and byte arrays as an `i32` length and bytes, arrays as an `i32`
/// count and elements, bitmaps in RoaringBitmap's portable serialization). Decoding bounds
/// every count by the bytes left, as Spark 4.3.0 does, refuses strings that are not UTF-8
/// (Java would replace the bad bytes), and, like Spark, ignores bytes after the last field;
/// what it accepts re-encodes to exactly the bytes it was read from.
///
/// ```
/// use rpc_proto::shuffle::{BlockTransferMessage, StreamHandle};
///
/// let handle = BlockTransferMessage::StreamHandle(StreamHandle { stream_id: 12345, num_chunks: 16 });
/// let bytes = handle.encode();
/// assert_eq!(&bytes[..], &[3, 0, 0, 0, 0, 0, 0, 0x30, 0x39, 0, 0, 0, 16]);
/// assert_eq!(BlockTransferMessage::decode(&bytes).unwrap(), handle);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockTransferMessage {
    /// 0: open a stream of blocks (client to server; the legacy fetch protocol).
    OpenBlocks(OpenBlocks),
    /// 1: upload a block (executor to executor, replication).
    UploadBlock(UploadBlock),
    /// 2: register an executor's shuffle files with its host's shuffle service.
    RegisterExecutor(RegisterExecutor),
    /// 3: the reply to a fetch: the stream registered for it.
    StreamHandle(StreamHandle),
    /// 6: the meta of an `UploadStream` whose body is a block.
    UploadBlockStream(UploadBlockStream),
    /// 7: remove blocks (driver to shuffle service).
    RemoveBlocks(RemoveBlocks),
    /// 8: the reply to [`RemoveBlocks`].
    BlocksRemoved(BlocksRemoved),
    /// 9: fetch shuffle blocks (client to server; the default fetch protocol).
    FetchShuffleBlocks(FetchShuffleBlocks),
    /// 10: ask for executors' local directories.
    GetLocalDirsForExecutors(GetLocalDirsForExecutors),
    /// 11: the reply to [`GetLocalDirsForExecutors`].
    LocalDirsForExecutors(LocalDirsForExecutors),
    /// 12: the meta of a pushed block (push-based shuffle).
    PushBlockStream(PushBlockStream),
    /// 13: finish merging a shuffle (push-based shuffle).
    FinalizeShuffleMerge(FinalizeShuffleMerge),
    /// 14: the reply to [`FinalizeShuffleMerge`].
    MergeStatuses(MergeStatuses),
    /// 15: fetch chunks of merged shuffle blocks (push-based shuffle).
    FetchShuffleBlockChunks(FetchShuffleBlockChunks),
    /// 16: ask why a block's checksum did not match.
    DiagnoseCorruption(DiagnoseCorruption),
    /// 17: the reply to [`DiagnoseCorruption`].
    CorruptionCause(CorruptionCause),
    /// 18: the reply to a pushed block.
    BlockPushReturnCode(BlockPushReturnCode),
    /// 19: remove a shuffle's merged data (a one-way message).
    RemoveShuffleMerge(RemoveShuffleMerge),
}

/// Spark's `OpenBlocks` (type 0): `appId`, `execId`, `blockIds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBlocks {
    /// The application the blocks belong to.
    pub app_id: String,
    /// The executor that wrote them.
    pub exec_id: String,
    /// The blocks, in the order of the stream's chunks.
    pub block_ids: Vec<String>,
}

/// Spark's `UploadBlock` (type 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadBlock {
    /// The application.
    pub app_id: String,
    /// The executor.
    pub exec_id: String,
    /// The block.
    pub block_id: String,
    /// Java-serialized `(StorageLevel, ClassTag)`, opaque here.
    pub metadata: Vec<u8>,
    /// The block's bytes.
    pub block_data: Vec<u8>,
}

/// Spark's `ExecutorShuffleInfo`: where an executor keeps its shuffle files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorShuffleInfo {
    /// The executor's local directories (its `blockmgr-*` dirs).
    pub local_dirs: Vec<String>,
    /// Sub-directories per local directory (`spark.diskStore.subDirectories`, 64 by default).
    pub sub_dirs_per_local_dir: i32,
    /// The shuffle manager's class name (with push-based shuffle, followed by `:` and JSON).
    pub shuffle_manager: String,
}

/// Spark's `RegisterExecutor` (type 2), answered with an empty `RpcResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterExecutor {
    /// The application.
    pub app_id: String,
    /// The executor.
    pub exec_id: String,
    /// Where its files are.
    pub executor_info: ExecutorShuffleInfo,
}

/// Spark's `StreamHandle` (type 3): chunk `i` of stream `stream_id` is the `i`th block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamHandle {
    /// The stream's id (a Java `long`, its bits kept as they are).
    pub stream_id: u64,
    /// How many chunks it has (a negative count on the wire is refused).
    pub num_chunks: u32,
}

/// Spark's `UploadBlockStream` (type 6): the meta of an `UploadStream` carrying a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadBlockStream {
    /// The block.
    pub block_id: String,
    /// Java-serialized `(StorageLevel, ClassTag)`, opaque here.
    pub metadata: Vec<u8>,
}

/// Spark's `RemoveBlocks` (type 7), answered with [`BlocksRemoved`]. Each id is a file name
/// (`shuffle_S_M_0.data`, `rdd_R_P`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveBlocks {
    /// The application.
    pub app_id: String,
    /// The executor that wrote the files.
    pub exec_id: String,
    /// The files to remove.
    pub block_ids: Vec<String>,
}

/// Spark's `BlocksRemoved` (type 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlocksRemoved {
    /// How many files were removed.
    pub num_removed_blocks: i32,
}

/// Spark's `FetchShuffleBlocks` (type 9), answered with a [`StreamHandle`].
///
/// `reduce_ids[i]` belongs to `map_ids[i]`. Without batch fetch, chunk order is map-major:
/// one chunk per `(map_ids[i], reduce_ids[i][j])`. With batch fetch, each `reduce_ids[i]` is
/// a range `[start, end)` and yields one chunk, the range's bytes of map `map_ids[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchShuffleBlocks {
    /// The application.
    pub app_id: String,
    /// The executor that wrote the map outputs.
    pub exec_id: String,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The map tasks (task attempt ids).
    pub map_ids: Vec<i64>,
    /// The reduce partitions of each map task.
    pub reduce_ids: Vec<Vec<i32>>,
    /// Whether each `reduce_ids[i]` is a `[start, end)` range fetched as one chunk.
    pub batch_fetch_enabled: bool,
}

impl FetchShuffleBlocks {
    /// How many chunks the stream has (Spark's `getNumBlocks`): one per map in batch mode,
    /// else one per reduce id.
    pub fn num_blocks(&self) -> usize {
        if self.batch_fetch_enabled {
            self.map_ids.len()
        } else {
            self.reduce_ids.iter().map(Vec::len).sum()
        }
    }
}

/// Why a fetch message's blocks cannot be listed: its lists do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchShapeError {
    /// The lists that go together have different lengths (map ids and reduce id lists, or
    /// reduce ids and chunk id lists).
    #[error("{ids} {what} ids but {lists} lists of {listed} ids")]
    Mismatched {
        /// Which ids: "map" or "reduce".
        what: &'static str,
        /// What the lists hold: "reduce" or "chunk".
        listed: &'static str,
        /// How many ids.
        ids: usize,
        /// How many lists.
        lists: usize,
    },
    /// A batch fetch whose reduce ids of a map are not one `[start, end)` range.
    #[error("a batch fetch of map {map_id} needs a reduce range [start, end), got {count} ids")]
    BadBatchRange {
        /// The map.
        map_id: i64,
        /// How many reduce ids it had.
        count: usize,
    },
}

impl FetchShuffleBlocks {
    /// The blocks the message asks for, in chunk order (what chunk `i` of its stream is):
    /// [`BlockId::Shuffle`] per map and reduce id, or with batch fetch one
    /// [`BlockId::ShuffleBatch`] per map. Fails if the lists do not fit together, which
    /// Spark's server would only find out part way through.
    ///
    /// ```
    /// use rpc_proto::shuffle::{BlockId, FetchShuffleBlocks};
    ///
    /// let fetch = FetchShuffleBlocks {
    ///     app_id: "app".into(),
    ///     exec_id: "1".into(),
    ///     shuffle_id: 0,
    ///     map_ids: vec![7],
    ///     reduce_ids: vec![vec![2, 5]],
    ///     batch_fetch_enabled: true,
    /// };
    /// let blocks = fetch.blocks().unwrap();
    /// assert_eq!(blocks[0].to_string(), "shuffle_0_7_2_5");
    /// ```
    pub fn blocks(&self) -> Result<Vec<BlockId>, FetchShapeError> {
        if self.map_ids.len() != self.reduce_ids.len() {
            return Err(FetchShapeError::Mismatched {
                what: "map",
                listed: "reduce",
                ids: self.map_ids.len(),
                lists: self.reduce_ids.len(),
            });
        }
        let shuffle_id = self.shuffle_id;
        let mut blocks = Vec::with_capacity(self.num_blocks());
        for (&map_id, reduces) in self.map_ids.iter().zip(&self.reduce_ids) {
            if self.batch_fetch_enabled {
                let &[start_reduce_id, end_reduce_id] = reduces.as_slice() else {
                    return Err(FetchShapeError::BadBatchRange {
                        map_id,
                        count: reduces.len(),
                    });
                };
                blocks.push(BlockId::ShuffleBatch {
                    shuffle_id,
                    map_id,
                    start_reduce_id,
                    end_reduce_id,
                });
            } else {
                blocks.extend(reduces.iter().map(|&reduce_id| BlockId::Shuffle {
                    shuffle_id,
                    map_id,
                    reduce_id,
                }));
            }
        }
        Ok(blocks)
    }
}

impl FetchShuffleBlockChunks {
    /// The merged chunks the message asks for, in chunk order (reduce-major, then chunk ids).
    pub fn blocks(&self) -> Result<Vec<BlockId>, FetchShapeError> {
        if self.reduce_ids.len() != self.chunk_ids.len() {
            return Err(FetchShapeError::Mismatched {
                what: "reduce",
                listed: "chunk",
                ids: self.reduce_ids.len(),
                lists: self.chunk_ids.len(),
            });
        }
        let (shuffle_id, shuffle_merge_id) = (self.shuffle_id, self.shuffle_merge_id);
        Ok(self
            .reduce_ids
            .iter()
            .zip(&self.chunk_ids)
            .flat_map(|(&reduce_id, chunks)| {
                chunks.iter().map(move |&chunk_id| BlockId::ShuffleChunk {
                    shuffle_id,
                    shuffle_merge_id,
                    reduce_id,
                    chunk_id,
                })
            })
            .collect())
    }
}

/// Spark's `GetLocalDirsForExecutors` (type 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetLocalDirsForExecutors {
    /// The application.
    pub app_id: String,
    /// The executors.
    pub exec_ids: Vec<String>,
}

/// Spark's `LocalDirsForExecutors` (type 11): each executor's local directories. On the wire,
/// the ids, the number of directories of each, and all directories flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDirsForExecutors {
    /// `(executor id, its local directories)`, in the order sent.
    pub dirs: Vec<(String, Vec<String>)>,
}

/// Spark's `PushBlockStream` (type 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBlockStream {
    /// The application.
    pub app_id: String,
    /// The application attempt.
    pub app_attempt_id: i32,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The shuffle merge.
    pub shuffle_merge_id: i32,
    /// The map task's index.
    pub map_index: i32,
    /// The reduce partition.
    pub reduce_id: i32,
    /// The block's index in the push request.
    pub index: i32,
}

/// Spark's `FinalizeShuffleMerge` (type 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizeShuffleMerge {
    /// The application.
    pub app_id: String,
    /// The application attempt.
    pub app_attempt_id: i32,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The shuffle merge.
    pub shuffle_merge_id: i32,
}

/// Spark's `MergeStatuses` (type 14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeStatuses {
    /// The shuffle.
    pub shuffle_id: i32,
    /// The shuffle merge.
    pub shuffle_merge_id: i32,
    /// Per merged partition, the map indexes merged into it.
    pub bitmaps: Vec<Bitmap>,
    /// The merged partitions.
    pub reduce_ids: Vec<i32>,
    /// Their sizes.
    pub sizes: Vec<i64>,
}

/// Spark's `FetchShuffleBlockChunks` (type 15): chunks of merged blocks, reduce-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchShuffleBlockChunks {
    /// The application.
    pub app_id: String,
    /// The executor.
    pub exec_id: String,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The shuffle merge.
    pub shuffle_merge_id: i32,
    /// The merged partitions.
    pub reduce_ids: Vec<i32>,
    /// The chunks of each.
    pub chunk_ids: Vec<Vec<i32>>,
}

/// Spark's `DiagnoseCorruption` (type 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnoseCorruption {
    /// The application.
    pub app_id: String,
    /// The executor.
    pub exec_id: String,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The map task.
    pub map_id: i64,
    /// The reduce partition.
    pub reduce_id: i32,
    /// The checksum the reader computed.
    pub checksum: i64,
    /// The checksum algorithm (`ADLER32`, `CRC32`, `CRC32C`).
    pub algorithm: String,
}

/// Why a block was corrupt: Spark's `Cause`, sent as its ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// 0: the file on disk is bad.
    DiskIssue,
    /// 1: the bytes were damaged on the way.
    NetworkIssue,
    /// 2: cannot tell.
    UnknownIssue,
    /// 3: the checksum matches after all.
    ChecksumVerifyPass,
    /// 4: the algorithm is not supported.
    UnsupportedChecksumAlgorithm,
}

impl Cause {
    const ALL: [Self; 5] = [
        Self::DiskIssue,
        Self::NetworkIssue,
        Self::UnknownIssue,
        Self::ChecksumVerifyPass,
        Self::UnsupportedChecksumAlgorithm,
    ];

    /// The ordinal Spark writes.
    pub fn ordinal(self) -> u8 {
        self as u8
    }

    /// The cause with this ordinal.
    pub fn from_ordinal(ordinal: u8) -> Option<Self> {
        Self::ALL.get(usize::from(ordinal)).copied()
    }
}

/// Spark's `CorruptionCause` (type 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptionCause {
    /// The cause.
    pub cause: Cause,
}

/// Spark's `BlockPushReturnCode` (type 18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPushReturnCode {
    /// `BlockPushNonFatalFailure.ReturnCode`: 0 success, 1 too late, 2 collision, 3 stale,
    /// 4 too old attempt.
    pub return_code: u8,
    /// The block that failed (empty on success).
    pub failure_block_id: String,
}

/// Spark's `RemoveShuffleMerge` (type 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveShuffleMerge {
    /// The application.
    pub app_id: String,
    /// The application attempt.
    pub app_attempt_id: i32,
    /// The shuffle.
    pub shuffle_id: i32,
    /// The shuffle merge.
    pub shuffle_merge_id: i32,
}

impl BlockTransferMessage {
    /// The type byte Spark writes first.
    pub fn type_id(&self) -> u8 {
        match self {
            Self::OpenBlocks(_) => 0,
            Self::UploadBlock(_) => 1,
            Self::RegisterExecutor(_) => 2,
            Self::StreamHandle(_) => 3,
            Self::UploadBlockStream(_) => 6,
            Self::RemoveBlocks(_) => 7,
            Self::BlocksRemoved(_) => 8,
            Self::FetchShuffleBlocks(_) => 9,
            Self::GetLocalDirsForExecutors(_) => 10,
            Self::LocalDirsForExecutors(_) => 11,
            Self::PushBlockStream(_) => 12,
            Self::FinalizeShuffleMerge(_) => 13,
            Self::MergeStatuses(_) => 14,
            Self::FetchShuffleBlockChunks(_) => 15,
            Self::DiagnoseCorruption(_) => 16,
            Self::CorruptionCause(_) => 17,
            Self::BlockPushReturnCode(_) => 18,
            Self::RemoveShuffleMerge(_) => 19,
        }
    }

    /// Spark's class name of the message, for logs and failure texts.
    pub fn name(&self) -> &'static str {
        match self {
            Self::OpenBlocks(_) => "OpenBlocks",
            Self::UploadBlock(_) => "UploadBlock",
            Self::RegisterExecutor(_) => "RegisterExecutor",
            Self::StreamHandle(_) => "StreamHandle",
            Self::UploadBlockStream(_) => "UploadBlockStream",
            Self::RemoveBlocks(_) => "RemoveBlocks",
            Self::BlocksRemoved(_) => "BlocksRemoved",
            Self::FetchShuffleBlocks(_) => "FetchShuffleBlocks",
            Self::GetLocalDirsForExecutors(_) => "GetLocalDirsForExecutors",
            Self::LocalDirsForExecutors(_) => "LocalDirsForExecutors",
            Self::PushBlockStream(_) => "PushBlockStream",
            Self::FinalizeShuffleMerge(_) => "FinalizeShuffleMerge",
            Self::MergeStatuses(_) => "MergeStatuses",
            Self::FetchShuffleBlockChunks(_) => "FetchShuffleBlockChunks",
            Self::DiagnoseCorruption(_) => "DiagnoseCorruption",
            Self::CorruptionCause(_) => "CorruptionCause",
            Self::BlockPushReturnCode(_) => "BlockPushReturnCode",
            Self::RemoveShuffleMerge(_) => "RemoveShuffleMerge",
        }
    }

    /// The application the message names, for the messages that name one (the ones a
    /// server checks against the authenticated client's app id).
    pub fn app_id(&self) -> Option<&str> {
        match self {
            Self::OpenBlocks(m) => Some(&m.app_id),
            Self::UploadBlock(m) => Some(&m.app_id),
            Self::RegisterExecutor(m) => Some(&m.app_id),
            Self::RemoveBlocks(m) => Some(&m.app_id),
            Self::FetchShuffleBlocks(m) => Some(&m.app_id),
            Self::GetLocalDirsForExecutors(m) => Some(&m.app_id),
            Self::PushBlockStream(m) => Some(&m.app_id),
            Self::FinalizeShuffleMerge(m) => Some(&m.app_id),
            Self::FetchShuffleBlockChunks(m) => Some(&m.app_id),
            Self::DiagnoseCorruption(m) => Some(&m.app_id),
            Self::RemoveShuffleMerge(m) => Some(&m.app_id),
            Self::StreamHandle(_)
            | Self::UploadBlockStream(_)
            | Self::BlocksRemoved(_)
            | Self::LocalDirsForExecutors(_)
            | Self::MergeStatuses(_)
            | Self::CorruptionCause(_)
            | Self::BlockPushReturnCode(_) => None,
        }
    }

    /// The message's bytes (Spark's `toByteBuffer`).
    ///
    /// # Panics
    ///
    /// If a string or array has more than `i32::MAX` bytes or elements, which Spark's
    /// encoding cannot express.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the message's bytes to `out`. Panics as [`encode`](Self::encode) does.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.put_u8(self.type_id());
        match self {
            Self::OpenBlocks(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_strings(&m.block_ids);
            }
            Self::UploadBlock(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_string(&m.block_id);
                out.put_bytes_field(&m.metadata);
                out.put_bytes_field(&m.block_data);
            }
            Self::RegisterExecutor(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_strings(&m.executor_info.local_dirs);
                out.put_i32(m.executor_info.sub_dirs_per_local_dir);
                out.put_string(&m.executor_info.shuffle_manager);
            }
            Self::StreamHandle(m) => {
                out.put_u64(m.stream_id);
                out.put_u32(m.num_chunks);
            }
            Self::UploadBlockStream(m) => {
                out.put_string(&m.block_id);
                out.put_bytes_field(&m.metadata);
            }
            Self::RemoveBlocks(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_strings(&m.block_ids);
            }
            Self::BlocksRemoved(m) => out.put_i32(m.num_removed_blocks),
            Self::FetchShuffleBlocks(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_i32(m.shuffle_id);
                out.put_longs(&m.map_ids);
                out.put_i32(i32::try_from(m.reduce_ids.len()).expect("too many maps"));
                for ids in &m.reduce_ids {
                    out.put_ints(ids);
                }
                out.put_u8(u8::from(m.batch_fetch_enabled));
            }
            Self::GetLocalDirsForExecutors(m) => {
                out.put_string(&m.app_id);
                out.put_strings(&m.exec_ids);
            }
            Self::LocalDirsForExecutors(m) => {
                let ids: Vec<String> = m.dirs.iter().map(|(id, _)| id.clone()).collect();
                let counts: Vec<i32> = m
                    .dirs
                    .iter()
                    .map(|(_, d)| i32::try_from(d.len()).expect("too many dirs"))
                    .collect();
                let all: Vec<String> = m.dirs.iter().flat_map(|(_, d)| d.iter().cloned()).collect();
                out.put_strings(&ids);
                out.put_ints(&counts);
                out.put_strings(&all);
            }
            Self::PushBlockStream(m) => {
                out.put_string(&m.app_id);
                out.put_i32(m.app_attempt_id);
                out.put_i32(m.shuffle_id);
                out.put_i32(m.shuffle_merge_id);
                out.put_i32(m.map_index);
                out.put_i32(m.reduce_id);
                out.put_i32(m.index);
            }
            Self::FinalizeShuffleMerge(m) => {
                out.put_string(&m.app_id);
                out.put_i32(m.app_attempt_id);
                out.put_i32(m.shuffle_id);
                out.put_i32(m.shuffle_merge_id);
            }
            Self::MergeStatuses(m) => {
                out.put_i32(m.shuffle_id);
                out.put_i32(m.shuffle_merge_id);
                out.put_i32(i32::try_from(m.bitmaps.len()).expect("too many bitmaps"));
                for bitmap in &m.bitmaps {
                    out.put_bitmap(bitmap);
                }
                out.put_ints(&m.reduce_ids);
                out.put_longs(&m.sizes);
            }
            Self::FetchShuffleBlockChunks(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_i32(m.shuffle_id);
                out.put_i32(m.shuffle_merge_id);
                out.put_ints(&m.reduce_ids);
                out.put_i32(i32::try_from(m.chunk_ids.len()).expect("too many reduce ids"));
                for ids in &m.chunk_ids {
                    out.put_ints(ids);
                }
            }
            Self::DiagnoseCorruption(m) => {
                out.put_string(&m.app_id);
                out.put_string(&m.exec_id);
                out.put_i32(m.shuffle_id);
                out.put_i64(m.map_id);
                out.put_i32(m.reduce_id);
                out.put_i64(m.checksum);
                out.put_string(&m.algorithm);
            }
            Self::CorruptionCause(m) => out.put_u8(m.cause.ordinal()),
            Self::BlockPushReturnCode(m) => {
                out.put_u8(m.return_code);
                out.put_string(&m.failure_block_id);
            }
            Self::RemoveShuffleMerge(m) => {
                out.put_string(&m.app_id);
                out.put_i32(m.app_attempt_id);
                out.put_i32(m.shuffle_id);
                out.put_i32(m.shuffle_merge_id);
            }
        }
    }

    /// Reads a message Spark (or [`encode`](Self::encode)) wrote. Bytes after the last
    /// field are ignored, as Spark's decoder ignores them.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShuffleDecodeError> {
        let (&type_id, rest) = bytes.split_first().ok_or(ShuffleDecodeError::Empty)?;
        let mut r = Reader::new(rest);
        let r = &mut r;
        Ok(match type_id {
            0 => Self::OpenBlocks(OpenBlocks {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                block_ids: r.strings("blockIds")?,
            }),
            1 => Self::UploadBlock(UploadBlock {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                block_id: r.string("blockId")?,
                metadata: r.bytes("metadata")?,
                block_data: r.bytes("blockData")?,
            }),
            2 => Self::RegisterExecutor(RegisterExecutor {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                executor_info: ExecutorShuffleInfo {
                    local_dirs: r.strings("localDirs")?,
                    sub_dirs_per_local_dir: r.i32("subDirsPerLocalDir")?,
                    shuffle_manager: r.string("shuffleManager")?,
                },
            }),
            3 => {
                let stream_id = r.i64("streamId")? as u64;
                let value = r.i32("numChunks")?;
                let num_chunks =
                    u32::try_from(value).map_err(|_| ShuffleDecodeError::Negative {
                        what: "numChunks",
                        value,
                    })?;
                Self::StreamHandle(StreamHandle {
                    stream_id,
                    num_chunks,
                })
            }
            4 | 5 => return Err(ShuffleDecodeError::RetiredType(type_id)),
            6 => Self::UploadBlockStream(UploadBlockStream {
                block_id: r.string("blockId")?,
                metadata: r.bytes("metadata")?,
            }),
            7 => Self::RemoveBlocks(RemoveBlocks {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                block_ids: r.strings("blockIds")?,
            }),
            8 => Self::BlocksRemoved(BlocksRemoved {
                num_removed_blocks: r.i32("numRemovedBlocks")?,
            }),
            9 => Self::FetchShuffleBlocks(FetchShuffleBlocks {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                shuffle_id: r.i32("shuffleId")?,
                map_ids: r.longs("mapIds")?,
                reduce_ids: r.int_arrays("reduceIds")?,
                batch_fetch_enabled: r.bool("batchFetchEnabled")?,
            }),
            10 => Self::GetLocalDirsForExecutors(GetLocalDirsForExecutors {
                app_id: r.string("appId")?,
                exec_ids: r.strings("execIds")?,
            }),
            11 => {
                let ids = r.strings("execIds")?;
                let counts = r.ints("numLocalDirsByExec")?;
                let mut all = r.strings("allLocalDirs")?.into_iter();
                if ids.len() != counts.len() {
                    return Err(ShuffleDecodeError::Inconsistent("numLocalDirsByExec"));
                }
                let mut dirs = Vec::with_capacity(ids.len());
                let mut left = all.len();
                for (id, count) in ids.into_iter().zip(counts) {
                    let count = usize::try_from(count)
                        .ok()
                        .filter(|&c| c <= left)
                        .ok_or(ShuffleDecodeError::Inconsistent("numLocalDirsByExec"))?;
                    left -= count;
                    dirs.push((id, all.by_ref().take(count).collect()));
                }
                // Spark would ignore directories no count claims; they mean a broken peer.
                if left != 0 {
                    return Err(ShuffleDecodeError::Inconsistent("numLocalDirsByExec"));
                }
                Self::LocalDirsForExecutors(LocalDirsForExecutors { dirs })
            }
            12 => Self::PushBlockStream(PushBlockStream {
                app_id: r.string("appId")?,
                app_attempt_id: r.i32("appAttemptId")?,
                shuffle_id: r.i32("shuffleId")?,
                shuffle_merge_id: r.i32("shuffleMergeId")?,
                map_index: r.i32("mapIndex")?,
                reduce_id: r.i32("reduceId")?,
                index: r.i32("index")?,
            }),
            13 => Self::FinalizeShuffleMerge(FinalizeShuffleMerge {
                app_id: r.string("appId")?,
                app_attempt_id: r.i32("appAttemptId")?,
                shuffle_id: r.i32("shuffleId")?,
                shuffle_merge_id: r.i32("shuffleMergeId")?,
            }),
            14 => Self::MergeStatuses(MergeStatuses {
                shuffle_id: r.i32("shuffleId")?,
                shuffle_merge_id: r.i32("shuffleMergeId")?,
                bitmaps: r.bitmaps()?,
                reduce_ids: r.ints("reduceIds")?,
                sizes: r.longs("sizes")?,
            }),
            15 => Self::FetchShuffleBlockChunks(FetchShuffleBlockChunks {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                shuffle_id: r.i32("shuffleId")?,
                shuffle_merge_id: r.i32("shuffleMergeId")?,
                reduce_ids: r.ints("reduceIds")?,
                chunk_ids: r.int_arrays("chunkIds")?,
            }),
            16 => Self::DiagnoseCorruption(DiagnoseCorruption {
                app_id: r.string("appId")?,
                exec_id: r.string("execId")?,
                shuffle_id: r.i32("shuffleId")?,
                map_id: r.i64("mapId")?,
                reduce_id: r.i32("reduceId")?,
                checksum: r.i64("checksum")?,
                algorithm: r.string("algorithm")?,
            }),
            17 => {
                let value = r.u8("cause")?;
                let cause = Cause::from_ordinal(value).ok_or(ShuffleDecodeError::InvalidEnum {
                    what: "corruption cause",
                    value,
                })?;
                Self::CorruptionCause(CorruptionCause { cause })
            }
            18 => Self::BlockPushReturnCode(BlockPushReturnCode {
                return_code: r.u8("returnCode")?,
                failure_block_id: r.string("failureBlockId")?,
            }),
            19 => Self::RemoveShuffleMerge(RemoveShuffleMerge {
                app_id: r.string("appId")?,
                app_attempt_id: r.i32("appAttemptId")?,
                shuffle_id: r.i32("shuffleId")?,
                shuffle_merge_id: r.i32("shuffleMergeId")?,
            }),
            other => return Err(ShuffleDecodeError::UnknownType(other)),
        })
    }
}

macro_rules! from_message {
    ($($ty:ident),*) => {$(
        impl From<$ty> for BlockTransferMessage {
            fn from(m: $ty) -> Self {
                Self::$ty(m)
            }
        }
    )*};
}

from_message!(
    OpenBlocks,
    UploadBlock,
    RegisterExecutor,
    StreamHandle,
    UploadBlockStream,
    RemoveBlocks,
    BlocksRemoved,
    FetchShuffleBlocks,
    GetLocalDirsForExecutors,
    LocalDirsForExecutors,
    PushBlockStream,
    FinalizeShuffleMerge,
    MergeStatuses,
    FetchShuffleBlockChunks,
    DiagnoseCorruption,
    CorruptionCause,
    BlockPushReturnCode,
    RemoveShuffleMerge
);
