//! Serving blocks: the fetching half of Spark's `NettyBlockRpcServer`.

use std::fmt;

use bytes::Bytes;
use rpc_proto::shuffle::{BlockId, FetchShapeError};
use rpc_proto::{ConfigError, StreamChunkId};
use tracing::debug;

use super::message::{
    BlockTransferMessage, FetchShuffleBlockChunks, FetchShuffleBlocks, OpenBlocks, StreamHandle,
};
use crate::transport::{
    stream_not_found, BoxError, OneForOneStreamManager, RpcHandler, RpcResponder, StreamManager,
    TransportClient,
};

// The block source is a trait object, which loom's `Arc` cannot hold.
use crate::sync::unmodeled::Arc;

/// Where a [`BlockServer`] finds blocks: Spark's `BlockDataManager`, reduced to reading.
///
/// Called on the connection's driver task when a block's chunk is fetched (not when the
/// message naming it arrives), once per block: implementations must not block. Serve from memory or from buffers read ahead (`Bytes` are
/// cheap to clone). Closures `Fn(&str, &str, &str) -> Result<Bytes, E>` implement it, for
/// any error `E` that converts into a [`BoxError`] (a `String`, a `&str`, any error type).
pub trait BlockSource: Send + Sync + 'static {
    /// The bytes of `block_id`, written by executor `exec_id` of application `app_id`, or why
    /// it cannot be served (its text is sent to the client, which fails every block of its
    /// request).
    fn block(&self, app_id: &str, exec_id: &str, block_id: &str) -> Result<Bytes, BoxError>;
}

impl<F, E> BlockSource for F
where
    F: Fn(&str, &str, &str) -> Result<Bytes, E> + Send + Sync + 'static,
    E: Into<BoxError>,
{
    fn block(&self, app_id: &str, exec_id: &str, block_id: &str) -> Result<Bytes, BoxError> {
        self(app_id, exec_id, block_id).map_err(Into::into)
    }
}

/// Serves blocks from a [`BlockSource`]: an [`RpcHandler`] that answers Spark's
/// [`OpenBlocks`], [`FetchShuffleBlocks`] and [`FetchShuffleBlockChunks`], and the
/// [`StreamManager`] that serves the chunks (as `ChunkFetchRequest`s, or as
/// `StreamRequest`s for `"<stream id>_<chunk index>"`, Spark's fetch-to-disk). Other
/// [`BlockTransferMessage`]s fail with a text naming them.
///
/// A `FetchShuffleBlocks` names its blocks by map and reduce ids; the server asks the source
/// for them by Spark's names, in the message's chunk order (`shuffle_S_M_R`, map-major, or
/// `shuffle_S_M_R1_R2` in batch mode), and a `FetchShuffleBlockChunks` for
/// `shuffleChunk_S_SM_R_C`, reduce-major. Each opening message registers the blocks it names as one stream on a
/// [`OneForOneStreamManager`], served only to the requesting connection (released when its
/// last chunk is served or the connection closes), and answers with its [`StreamHandle`]
/// (whose id is random). Blocks are read from the source lazily, each when its chunk is
/// fetched, as Spark's external shuffle service does: opening many blocks holds nothing but
/// their ids. A block the source refuses fails its chunk with a message naming it (and the
/// fetcher fails it and the blocks after it).
///
/// A connection may have at most
/// [`max_streams_per_connection`](BlockServer::max_streams_per_connection) streams open
/// (default 256; Spark has no limit); beyond it, opening fails with a message the
/// fetcher turns into [`BlockFetchError::TooManyStreams`](super::error::BlockFetchError).
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
    source: Arc<dyn BlockSource>,
    streams: OneForOneStreamManager,
    max_streams_per_connection: usize,
}

impl BlockServer {
    /// A server of `source`'s blocks. Stream ids are random (Spark starts at a random number
    /// and counts up, which lets a peer guess other connections' ids).
    pub fn new(source: impl BlockSource) -> Self {
        Self {
            source: Arc::new(source),
            streams: OneForOneStreamManager::random(),
            max_streams_per_connection: 256,
        }
    }

    /// A builder of a server of `source`'s blocks, for settings other than the defaults
    /// [`new`](BlockServer::new) uses.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use rpc_driver::block::BlockServer;
    ///
    /// # fn main() -> Result<(), rpc_proto::ConfigError> {
    /// let source = |_app: &str, _exec: &str, _block: &str| Ok::<_, std::io::Error>(Bytes::new());
    /// let blocks = BlockServer::builder(source)
    ///     .with_max_streams_per_connection(16)
    ///     .build()?;
    /// assert_eq!(blocks.max_streams_per_connection(), 16);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(source: impl BlockSource) -> BlockServerBuilder {
        BlockServerBuilder {
            server: Self::new(source),
        }
    }

    /// How many streams one connection may have open at once; default 256.
    pub fn max_streams_per_connection(&self) -> usize {
        self.max_streams_per_connection
    }

    /// The streams registered and not yet released.
    pub fn streams(&self) -> &OneForOneStreamManager {
        &self.streams
    }

    /// Opens the blocks a fetch message listed, or fails it with why they could not be
    /// listed.
    fn open_listed(
        &self,
        client: &TransportClient,
        app_id: String,
        exec_id: String,
        block_ids: Result<Vec<String>, String>,
        responder: RpcResponder,
    ) {
        match block_ids {
            Ok(block_ids) => self.open_blocks(
                client,
                OpenBlocks {
                    app_id,
                    exec_id,
                    block_ids,
                },
                responder,
            ),
            Err(error) => {
                let _ = responder.fail(&error);
            }
        }
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
        let open = self.streams.registered_for(client);
        if open >= self.max_streams_per_connection {
            debug!(%app_id, %exec_id, open, "refusing to open another stream of blocks");
            let _ = responder.fail(
                &rpc_proto::TooManyStreams {
                    open,
                    limit: self.max_streams_per_connection,
                }
                .to_string(),
            );
            return;
        }
        let source = self.source.clone();
        let (app, exec) = (app_id.clone(), exec_id.clone());
        let stream_id =
            self.streams
                .register_lazy_stream(&app_id, num_chunks, Some(client), move |chunk| {
                    let Some(block_id) = block_ids.get(chunk as usize) else {
                        return Err(format!("Requested chunk index beyond end {chunk}"));
                    };
                    source.block(&app, &exec, block_id).map_err(|error| {
                    debug!(app_id = %app, exec_id = %exec, %block_id, %error, "cannot open block");
                    format!("cannot open block {block_id} of app {app}, executor {exec}: {error}")
                })
                });
        debug!(%app_id, %exec_id, stream_id, num_chunks, "registered a stream of blocks");
        let handle = BlockTransferMessage::StreamHandle(StreamHandle {
            stream_id,
            num_chunks,
        });
        // A connection that closed meanwhile releases the stream itself.
        let _ = responder.reply(handle.encode());
    }
}

/// Builds a validated [`BlockServer`], from [`BlockServer::builder`].
pub struct BlockServerBuilder {
    server: BlockServer,
}

impl BlockServerBuilder {
    /// Sets [`BlockServer::max_streams_per_connection`]; at least 1.
    pub fn with_max_streams_per_connection(mut self, streams: usize) -> Self {
        self.server.max_streams_per_connection = streams;
        self
    }

    /// Validates and returns the server: a zero where zero makes no sense is an error
    /// naming the setting.
    pub fn build(self) -> Result<BlockServer, ConfigError> {
        if self.server.max_streams_per_connection == 0 {
            return Err(ConfigError::ZeroLimit("max streams per connection"));
        }
        Ok(self.server)
    }
}

impl fmt::Debug for BlockServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockServerBuilder")
            .field(
                "max_streams_per_connection",
                &self.server.max_streams_per_connection,
            )
            .finish_non_exhaustive()
    }
}

impl RpcHandler for BlockServer {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        match BlockTransferMessage::decode(&message) {
            Ok(BlockTransferMessage::OpenBlocks(open)) => self.open_blocks(client, open, responder),
            Ok(BlockTransferMessage::FetchShuffleBlocks(fetch)) => {
                let ids = shuffle_block_ids(&fetch);
                self.open_listed(client, fetch.app_id, fetch.exec_id, ids, responder)
            }
            Ok(BlockTransferMessage::FetchShuffleBlockChunks(fetch)) => {
                let ids = chunk_block_ids(&fetch);
                self.open_listed(client, fetch.app_id, fetch.exec_id, ids, responder)
            }
            Ok(other) => {
                let _ = responder.fail(&format!(
                    "unsupported block message: {} (type {})",
                    other.name(),
                    other.type_id()
                ));
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
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        self.streams.chunk(client, chunk)
    }

    /// Spark's fetch-to-disk: `"<stream id>_<chunk index>"` is that chunk (the stream id as
    /// Spark writes a `long`, signed).
    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, BoxError> {
        let parsed = stream_id.split_once('_').and_then(|(stream, chunk)| {
            Some(StreamChunkId::new(
                stream.parse::<i64>().ok()? as u64,
                chunk.parse::<u32>().ok()?,
            ))
        });
        match parsed {
            Some(chunk) => self.streams.chunk(client, chunk),
            None => Err(stream_not_found(stream_id).into()),
        }
    }

    fn connection_closed(&self, client: &TransportClient) {
        self.streams.connection_closed(client)
    }
}

/// The blocks a [`FetchShuffleBlocks`] asks for, by Spark's names, in chunk order.
fn shuffle_block_ids(fetch: &FetchShuffleBlocks) -> Result<Vec<String>, String> {
    names(fetch.blocks())
}

/// The blocks a [`FetchShuffleBlockChunks`] asks for, by Spark's names, in chunk order.
fn chunk_block_ids(fetch: &FetchShuffleBlockChunks) -> Result<Vec<String>, String> {
    names(fetch.blocks())
}

fn names(blocks: Result<Vec<BlockId>, FetchShapeError>) -> Result<Vec<String>, String> {
    blocks
        .map(|blocks| blocks.iter().map(ToString::to_string).collect())
        .map_err(|error| error.to_string())
}

impl fmt::Debug for BlockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockServer")
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// The text a source's refusal would put on the wire.
    fn refusal(source: &dyn BlockSource) -> String {
        source
            .block("app", "exec", "rdd_0_0")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn closures_failing_with_strings_or_any_error_are_block_sources() {
        let text = |_: &str, _: &str, block: &str| Err::<Bytes, _>(format!("no block {block}"));
        assert_eq!(refusal(&text), "no block rdd_0_0");
        let static_text = |_: &str, _: &str, _: &str| Err::<Bytes, _>("refused");
        assert_eq!(refusal(&static_text), "refused");
        let io = |_: &str, _: &str, _: &str| -> Result<Bytes, io::Error> {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the block file is gone",
            ))
        };
        assert_eq!(refusal(&io), "the block file is gone");
        let ok = |_: &str, _: &str, block: &str| Ok::<_, BoxError>(Bytes::from(block.to_owned()));
        assert_eq!(ok.block("a", "e", "b").unwrap(), Bytes::from_static(b"b"));
    }

    #[test]
    fn fetch_messages_name_their_blocks_in_chunk_order() {
        let mut fetch = FetchShuffleBlocks {
            app_id: "app".into(),
            exec_id: "1".into(),
            shuffle_id: 3,
            map_ids: vec![10, 2],
            reduce_ids: vec![vec![1, 3], vec![0]],
            batch_fetch_enabled: false,
        };
        assert_eq!(
            shuffle_block_ids(&fetch).unwrap(),
            ["shuffle_3_10_1", "shuffle_3_10_3", "shuffle_3_2_0"]
        );
        fetch.reduce_ids = vec![vec![1, 3], vec![0, 9]];
        fetch.batch_fetch_enabled = true;
        assert_eq!(
            shuffle_block_ids(&fetch).unwrap(),
            ["shuffle_3_10_1_3", "shuffle_3_2_0_9"]
        );
        fetch.reduce_ids = vec![vec![1, 3], vec![0]];
        assert!(shuffle_block_ids(&fetch)
            .unwrap_err()
            .contains("needs a reduce range"));
        fetch.map_ids.pop();
        assert!(shuffle_block_ids(&fetch)
            .unwrap_err()
            .contains("1 map ids but 2 lists"));

        let mut chunks = FetchShuffleBlockChunks {
            app_id: "app".into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            shuffle_merge_id: 4,
            reduce_ids: vec![7, 2],
            chunk_ids: vec![vec![0, 1], vec![5]],
        };
        assert_eq!(
            chunk_block_ids(&chunks).unwrap(),
            [
                "shuffleChunk_0_4_7_0",
                "shuffleChunk_0_4_7_1",
                "shuffleChunk_0_4_2_5"
            ]
        );
        chunks.chunk_ids.pop();
        assert!(chunk_block_ids(&chunks).is_err());
    }
}
