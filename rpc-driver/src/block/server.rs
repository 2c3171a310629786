//! Serving blocks: the `OpenBlocks` half of Spark's `NettyBlockRpcServer`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rpc_proto::StreamChunkId;
use tracing::debug;

use super::message::{BlockMessage, OpenBlocks, StreamHandle};
use crate::transport::{
    OneForOneStreamManager, RpcHandler, RpcResponder, StreamManager, TransportClient,
};

/// Where a [`BlockServer`] finds blocks: Spark's `BlockDataManager`, reduced to reading.
///
/// Called on the connection's driver task when an `OpenBlocks` arrives, once per block:
/// implementations must not block. Serve from memory or from buffers read ahead (`Bytes` are
/// cheap to clone). Closures `Fn(&str, &str, &str) -> Result<Bytes, String>` implement it.
pub trait BlockSource: Send + Sync + 'static {
    /// The bytes of `block_id`, written by executor `exec_id` of application `app_id`, or why
    /// it cannot be served (sent to the client, which fails every block of its request).
    fn block(&self, app_id: &str, exec_id: &str, block_id: &str) -> Result<Bytes, String>;
}

impl<F> BlockSource for F
where
    F: Fn(&str, &str, &str) -> Result<Bytes, String> + Send + Sync + 'static,
{
    fn block(&self, app_id: &str, exec_id: &str, block_id: &str) -> Result<Bytes, String> {
        self(app_id, exec_id, block_id)
    }
}

/// Serves blocks from a [`BlockSource`]: an [`RpcHandler`] that answers
/// [`OpenBlocks`](BlockMessage::OpenBlocks) and the [`StreamManager`] that serves the chunks.
///
/// Each `OpenBlocks` reads every block it names from the source, then registers them as one
/// stream on a [`OneForOneStreamManager`] owned by the requesting connection (released when
/// its last chunk is served or the connection closes) and answers with its
/// [`StreamHandle`]. A block the source refuses fails the RPC with a message naming it, and
/// nothing is registered.
///
/// ```no_run
/// # fn demo(rt: std::sync::Arc<dyn rpc_driver::Runtime>) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use rpc_driver::block::BlockServer;
/// use rpc_driver::transport::{TransportConfig, TransportServer};
///
/// let blocks = BlockServer::new(|_app: &str, _exec: &str, block: &str| match block {
///     "rdd_0_0" => Ok(Bytes::from_static(b"hello")),
///     other => Err(format!("no block {other}")),
/// });
/// let server = TransportServer::bind(
///     rt,
///     "127.0.0.1:0".parse().unwrap(),
///     Arc::new(blocks),
///     TransportConfig::default(),
/// )?;
/// # let _ = server; Ok(()) }
/// ```
pub struct BlockServer {
    source: Box<dyn BlockSource>,
    streams: OneForOneStreamManager,
}

impl BlockServer {
    /// A server of `source`'s blocks. Stream ids start at a number taken from the clock, so
    /// a restarted server does not hand out the ids of its previous life.
    pub fn new(source: impl BlockSource) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            source: Box::new(source),
            // Spark starts at a random int times 1000.
            streams: OneForOneStreamManager::new(u64::from(nanos) * 1000),
        }
    }

    /// The streams registered and not yet released.
    pub fn streams(&self) -> &OneForOneStreamManager {
        &self.streams
    }

    fn open_blocks(&self, client: &TransportClient, open: OpenBlocks, responder: RpcResponder) {
        let OpenBlocks {
            app_id,
            exec_id,
            block_ids,
        } = open;
        let Ok(num_chunks) = u32::try_from(block_ids.len()) else {
            let _ = responder.fail(&format!("too many blocks: {}", block_ids.len()));
            return;
        };
        let mut blocks = Vec::with_capacity(block_ids.len());
        for block_id in &block_ids {
            match self.source.block(&app_id, &exec_id, block_id) {
                Ok(block) => blocks.push(block),
                Err(error) => {
                    debug!(%app_id, %exec_id, %block_id, %error, "cannot open block");
                    let _ = responder.fail(&format!(
                        "cannot open block {block_id} of app {app_id}, executor {exec_id}: {error}"
                    ));
                    return;
                }
            }
        }
        let stream_id = self.streams.register_stream(&app_id, blocks, Some(client));
        debug!(%app_id, %exec_id, stream_id, num_chunks, "registered a stream of blocks");
        let handle = BlockMessage::StreamHandle(StreamHandle {
            stream_id,
            num_chunks,
        });
        // A connection that closed meanwhile releases the stream itself.
        let _ = responder.reply(handle.encode());
    }
}

impl RpcHandler for BlockServer {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        match BlockMessage::decode(&message) {
            Ok(BlockMessage::OpenBlocks(open)) => self.open_blocks(client, open, responder),
            Ok(other) => {
                let _ = responder.fail(&format!("unexpected block message: {other:?}"));
            }
            Err(error) => {
                let _ = responder.fail(&format!("malformed block message: {error}"));
            }
        }
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }
}

impl StreamManager for BlockServer {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, String> {
        self.streams.chunk(client, chunk)
    }

    fn connection_closed(&self, client: &TransportClient) {
        self.streams.connection_closed(client)
    }
}

impl fmt::Debug for BlockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockServer")
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}
