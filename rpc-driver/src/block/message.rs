//! The block protocol's RPC bodies: specified, encoded and tested in
//! [`rpc_proto::wire`](rpc_proto::wire#block-messages), re-exported here.

pub use rpc_proto::{BlockMessage, OpenBlocks, StreamHandle};
