//! Spark's external shuffle service protocol, without I/O: the `BlockTransferMessage`s that
//! travel in RPC bodies, block ids, and the on-disk rules a shuffle service follows to find
//! a block's bytes.
//!
//! ```text
//!   executor ── RegisterExecutor{app, exec, local dirs, sub-dirs} ──► service   (empty reply)
//!   reducer  ── FetchShuffleBlocks{app, exec, shuffle, maps, reduces} ──► service
//!            ◄── StreamHandle{stream id, chunks} ──
//!            ── ChunkFetchRequest(stream, i) ──►  chunk i = the i-th block, read from
//!                                                  shuffle_S_M_0.data at the offsets of
//!                                                  shuffle_S_M_0.index (executor_file_path)
//!   driver   ── RemoveBlocks{app, exec, files} ──► service  ◄── BlocksRemoved{n}
//! ```
//!
//! Everything here is Spark 4.3.0's byte for byte (the golden vectors in the tests were made
//! by Spark's own classes). Decoding never panics and never allocates more than the input
//! could hold: every count is bounded by the bytes left, as Spark 4.3.0 bounds them.
//!
//! | type | message | type | message |
//! |------|---------|------|---------|
//! | 0 | [`OpenBlocks`] | 11 | [`LocalDirsForExecutors`] |
//! | 1 | [`UploadBlock`] | 12 | [`PushBlockStream`] |
//! | 2 | [`RegisterExecutor`] | 13 | [`FinalizeShuffleMerge`] |
//! | 3 | [`StreamHandle`] | 14 | [`MergeStatuses`] |
//! | 4, 5 | retired (Mesos), refused | 15 | [`FetchShuffleBlockChunks`] |
//! | 6 | [`UploadBlockStream`] | 16 | [`DiagnoseCorruption`] |
//! | 7 | [`RemoveBlocks`] | 17 | [`CorruptionCause`] |
//! | 8 | [`BlocksRemoved`] | 18 | [`BlockPushReturnCode`] |
//! | 9 | [`FetchShuffleBlocks`] | 19 | [`RemoveShuffleMerge`] |
//! | 10 | [`GetLocalDirsForExecutors`] | | |

mod bitmap;
mod block_id;
mod codec;
mod index;
mod message;
mod path;

pub use bitmap::Bitmap;
pub use block_id::{shuffle_data_file, shuffle_index_file, BlockId, FetchPlan, FetchPlanError};
pub use codec::ShuffleDecodeError;
pub use index::{IndexError, ShuffleIndex};
pub use message::{
    BlockPushReturnCode, BlockTransferMessage, BlocksRemoved, Cause, CorruptionCause,
    DiagnoseCorruption, ExecutorShuffleInfo, FetchShapeError, FetchShuffleBlockChunks,
    FetchShuffleBlocks, FinalizeShuffleMerge, GetLocalDirsForExecutors, LocalDirsForExecutors,
    MergeStatuses, OpenBlocks, PushBlockStream, RegisterExecutor, RemoveBlocks, RemoveShuffleMerge,
    StreamHandle, UploadBlock, UploadBlockStream,
};
pub use path::{executor_file_path, java_string_hash, non_negative_hash};
/// The `roaring` crate's bitmap, which [`Bitmap::to_roaring`] builds.
pub use roaring::RoaringBitmap;

#[cfg(test)]
mod tests;
