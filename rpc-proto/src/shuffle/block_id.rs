//! Spark's block ids (`org.apache.spark.storage.BlockId`), as far as the shuffle service
//! protocol needs them, and how a fetcher turns a list of them into one message.

use std::fmt;

use thiserror::Error;

use super::message::{
    BlockTransferMessage, FetchShuffleBlockChunks, FetchShuffleBlocks, OpenBlocks,
};

/// A block id the shuffle service protocol knows.
///
/// Parsed the way Spark's servers parse them (`split("_")` and decimal numbers, each in its
/// Java type's range); [`Display`](fmt::Display) writes Spark's name back.
///
/// ```
/// use rpc_proto::shuffle::BlockId;
///
/// let id = BlockId::parse("shuffle_3_17_2").unwrap();
/// assert_eq!(id, BlockId::Shuffle { shuffle_id: 3, map_id: 17, reduce_id: 2 });
/// assert_eq!(id.to_string(), "shuffle_3_17_2");
/// assert_eq!(BlockId::parse("shuffle_3_17"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockId {
    /// `shuffle_S_M_R`: reduce partition `R` of map task `M` of shuffle `S`.
    Shuffle {
        /// The shuffle.
        shuffle_id: i32,
        /// The map task (its task attempt id since Spark 3.0).
        map_id: i64,
        /// The reduce partition.
        reduce_id: i32,
    },
    /// `shuffle_S_M_R1_R2`: reduce partitions `[R1, R2)` of map task `M`, as one block.
    ShuffleBatch {
        /// The shuffle.
        shuffle_id: i32,
        /// The map task.
        map_id: i64,
        /// The first reduce partition.
        start_reduce_id: i32,
        /// One past the last reduce partition.
        end_reduce_id: i32,
    },
    /// `shuffleChunk_S_SM_R_C`: chunk `C` of merged reduce partition `R`.
    ShuffleChunk {
        /// The shuffle.
        shuffle_id: i32,
        /// The shuffle merge.
        shuffle_merge_id: i32,
        /// The merged reduce partition.
        reduce_id: i32,
        /// The chunk.
        chunk_id: i32,
    },
    /// `rdd_R_P`: partition `P` of RDD `R`, persisted to disk.
    Rdd {
        /// The RDD.
        rdd_id: i32,
        /// The partition.
        split_index: i32,
    },
}

/// Parses one decimal field the way Java's `parseInt` / `parseLong` would accept it
/// (digits only here: Spark's ids never carry signs).
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl BlockId {
    /// Reads a block id, or `None` if it is none of the kinds above.
    pub fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('_');
        let kind = parts.next()?;
        let fields: Vec<&str> = parts.collect();
        match (kind, fields.as_slice()) {
            ("shuffle", [s, m, r]) => Some(Self::Shuffle {
                shuffle_id: number(s)?,
                map_id: number(m)?,
                reduce_id: number(r)?,
            }),
            ("shuffle", [s, m, r1, r2]) => Some(Self::ShuffleBatch {
                shuffle_id: number(s)?,
                map_id: number(m)?,
                start_reduce_id: number(r1)?,
                end_reduce_id: number(r2)?,
            }),
            ("shuffleChunk", [s, sm, r, c]) => Some(Self::ShuffleChunk {
                shuffle_id: number(s)?,
                shuffle_merge_id: number(sm)?,
                reduce_id: number(r)?,
                chunk_id: number(c)?,
            }),
            ("rdd", [r, p]) => Some(Self::Rdd {
                rdd_id: number(r)?,
                split_index: number(p)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Shuffle {
                shuffle_id,
                map_id,
                reduce_id,
            } => write!(f, "shuffle_{shuffle_id}_{map_id}_{reduce_id}"),
            Self::ShuffleBatch {
                shuffle_id,
                map_id,
                start_reduce_id,
                end_reduce_id,
            } => write!(
                f,
                "shuffle_{shuffle_id}_{map_id}_{start_reduce_id}_{end_reduce_id}"
            ),
            Self::ShuffleChunk {
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
                chunk_id,
            } => write!(
                f,
                "shuffleChunk_{shuffle_id}_{shuffle_merge_id}_{reduce_id}_{chunk_id}"
            ),
            Self::Rdd {
                rdd_id,
                split_index,
            } => write!(f, "rdd_{rdd_id}_{split_index}"),
        }
    }
}

/// The file names of a sort-shuffle map output: Spark's `ShuffleDataBlockId` and
/// `ShuffleIndexBlockId` (the reduce id in the name is always 0, `NOOP_REDUCE_ID`).
///
/// ```
/// use rpc_proto::shuffle::{shuffle_data_file, shuffle_index_file};
///
/// assert_eq!(shuffle_data_file(0, 5), "shuffle_0_5_0.data");
/// assert_eq!(shuffle_index_file(0, 5), "shuffle_0_5_0.index");
/// ```
pub fn shuffle_data_file(shuffle_id: i32, map_id: i64) -> String {
    format!("shuffle_{shuffle_id}_{map_id}_0.data")
}

/// See [`shuffle_data_file`].
pub fn shuffle_index_file(shuffle_id: i32, map_id: i64) -> String {
    format!("shuffle_{shuffle_id}_{map_id}_0.index")
}

/// Why a list of block ids cannot be fetched with one message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FetchPlanError {
    /// No blocks.
    #[error("no blocks to fetch")]
    Empty,
    /// Shuffle blocks of more than one shuffle (Spark's fetcher refuses them too).
    #[error("expected shuffleId={expected}, got: {block_id}")]
    MixedShuffles {
        /// The first block's shuffle.
        expected: i32,
        /// The block of another.
        block_id: String,
    },
    /// Batch and single shuffle blocks, or merged chunks and other blocks, in one list.
    #[error("block {0} is not of the same kind as the first block")]
    MixedKinds(String),
    /// Two batch blocks of one map task: `FetchShuffleBlocks` has room for one range per map
    /// (Spark's reader never asks for two; a server would answer with fewer chunks).
    #[error("block {0} is a second batch of the same map task")]
    RepeatedBatchMap(String),
    /// More blocks than a stream can have chunks.
    #[error("too many blocks: {0}")]
    TooMany(usize),
}

/// How a fetch of a list of blocks goes on the wire: the message that opens the stream, and
/// the block each of its chunks is (chunk `i` is `chunk_block_ids[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    /// The `FetchShuffleBlocks`, `FetchShuffleBlockChunks` or `OpenBlocks` to send.
    pub message: BlockTransferMessage,
    /// The blocks in chunk order (Spark's fetcher reorders them: grouped by map task, in the
    /// order each map task first appears).
    pub chunk_block_ids: Vec<String>,
}

impl FetchPlan {
    /// Spark's `OneForOneBlockFetcher` choice: shuffle blocks (`shuffle_S_M_R`, or all
    /// `shuffle_S_M_R1_R2` batches) become one `FetchShuffleBlocks`, merged chunks
    /// (`shuffleChunk_…`) one `FetchShuffleBlockChunks`, anything else (or anything at all
    /// when `use_old_fetch_protocol`, Spark's `spark.shuffle.useOldFetchProtocol`) one
    /// `OpenBlocks` in the order given.
    ///
    /// ```
    /// use rpc_proto::shuffle::{BlockTransferMessage, FetchPlan};
    ///
    /// let ids = ["shuffle_0_7_1", "shuffle_0_9_1", "shuffle_0_7_2"].map(String::from);
    /// let plan = FetchPlan::new("app-1", "exec-2", &ids, false).unwrap();
    /// let BlockTransferMessage::FetchShuffleBlocks(fetch) = &plan.message else { panic!() };
    /// assert_eq!(fetch.map_ids, [7, 9]);
    /// assert_eq!(fetch.reduce_ids, [vec![1, 2], vec![1]]);
    /// assert_eq!(plan.chunk_block_ids, ["shuffle_0_7_1", "shuffle_0_7_2", "shuffle_0_9_1"]);
    /// ```
    pub fn new(
        app_id: &str,
        exec_id: &str,
        block_ids: &[String],
        use_old_fetch_protocol: bool,
    ) -> Result<Self, FetchPlanError> {
        if block_ids.is_empty() {
            return Err(FetchPlanError::Empty);
        }
        if i32::try_from(block_ids.len()).is_err() {
            return Err(FetchPlanError::TooMany(block_ids.len()));
        }
        let parsed: Vec<Option<BlockId>> = block_ids.iter().map(|id| BlockId::parse(id)).collect();
        let all = |f: fn(&BlockId) -> bool| parsed.iter().all(|p| p.as_ref().is_some_and(f));
        let shuffle = all(|b| matches!(b, BlockId::Shuffle { .. } | BlockId::ShuffleBatch { .. }));
        let chunks = all(|b| matches!(b, BlockId::ShuffleChunk { .. }));
        if use_old_fetch_protocol || !(shuffle || chunks) {
            return Ok(Self {
                message: OpenBlocks {
                    app_id: app_id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    block_ids: block_ids.to_vec(),
                }
                .into(),
                chunk_block_ids: block_ids.to_vec(),
            });
        }
        // Groups in order of first appearance: (key, values, block ids).
        let mut groups: Vec<(i64, Vec<i32>, Vec<String>)> = Vec::new();
        let first = parsed[0].expect("checked: every id parsed");
        let (expected_shuffle, batch, merge_id) = match first {
            BlockId::Shuffle { shuffle_id, .. } => (shuffle_id, false, 0),
            BlockId::ShuffleBatch { shuffle_id, .. } => (shuffle_id, true, 0),
            BlockId::ShuffleChunk {
                shuffle_id,
                shuffle_merge_id,
                ..
            } => (shuffle_id, false, shuffle_merge_id),
            BlockId::Rdd { .. } => unreachable!("checked: shuffle blocks or chunks"),
        };
        for (id, block) in block_ids.iter().zip(&parsed) {
            let block = block.expect("checked: every id parsed");
            let (shuffle_id, key, values) = match block {
                BlockId::Shuffle {
                    shuffle_id,
                    map_id,
                    reduce_id,
                } if !batch => (shuffle_id, map_id, vec![reduce_id]),
                BlockId::ShuffleBatch {
                    shuffle_id,
                    map_id,
                    start_reduce_id,
                    end_reduce_id,
                } if batch => (shuffle_id, map_id, vec![start_reduce_id, end_reduce_id]),
                BlockId::ShuffleChunk {
                    shuffle_id,
                    reduce_id,
                    chunk_id,
                    ..
                } if chunks => (shuffle_id, i64::from(reduce_id), vec![chunk_id]),
                _ => return Err(FetchPlanError::MixedKinds(id.clone())),
            };
            if shuffle_id != expected_shuffle {
                return Err(FetchPlanError::MixedShuffles {
                    expected: expected_shuffle,
                    block_id: id.clone(),
                });
            }
            match groups.iter_mut().find(|(k, _, _)| *k == key) {
                // FetchShuffleBlocks has room for one range per map: Spark's reader never
                // asks for two, and a server would answer with fewer chunks than blocks.
                Some(_) if batch => return Err(FetchPlanError::RepeatedBatchMap(id.clone())),
                Some((_, v, ids)) => {
                    v.extend_from_slice(&values);
                    ids.push(id.clone());
                }
                None => groups.push((key, values, vec![id.clone()])),
            }
        }
        let chunk_block_ids = groups
            .iter()
            .flat_map(|(_, _, ids)| ids.iter().cloned())
            .collect();
        let message = if chunks {
            FetchShuffleBlockChunks {
                app_id: app_id.to_owned(),
                exec_id: exec_id.to_owned(),
                shuffle_id: expected_shuffle,
                shuffle_merge_id: merge_id,
                // Keys are reduce ids here, which came from i32s.
                reduce_ids: groups.iter().map(|(k, _, _)| *k as i32).collect(),
                chunk_ids: groups.into_iter().map(|(_, v, _)| v).collect(),
            }
            .into()
        } else {
            FetchShuffleBlocks {
                app_id: app_id.to_owned(),
                exec_id: exec_id.to_owned(),
                shuffle_id: expected_shuffle,
                map_ids: groups.iter().map(|(k, _, _)| *k).collect(),
                reduce_ids: groups.into_iter().map(|(_, v, _)| v).collect(),
                batch_fetch_enabled: batch,
            }
            .into()
        };
        Ok(Self {
            message,
            chunk_block_ids,
        })
    }
}
