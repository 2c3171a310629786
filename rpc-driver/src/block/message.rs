//! The block protocol's RPC bodies: Spark's `BlockTransferMessage`s, specified, encoded and
//! tested in [`rpc_proto::shuffle`], re-exported here.

pub use rpc_proto::shuffle::{
    BlockTransferMessage, FetchPlan, FetchPlanError, FetchShuffleBlockChunks, FetchShuffleBlocks,
    OpenBlocks, StreamHandle,
};
