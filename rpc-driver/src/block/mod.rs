//! Fetching blocks over chunk streams: Spark's `OneForOneBlockFetcher`,
//! `RetryingBlockTransferor` (formerly `RetryingBlockFetcher`) and the serving half of
//! `NettyBlockRpcServer`, on the [`transport`](crate::transport) layer.
//!
//! ```text
//!   client                                          server: BlockServer (RpcHandler + StreamManager)
//!   fetch_blocks ── RPC FetchShuffleBlocks ─────────►  one stream on a OneForOneStreamManager,
//!                   (or FetchShuffleBlockChunks,        owned by the requesting connection
//!                    OpenBlocks{app, exec, ids})        (at most max_streams_per_connection)
//!                ◄── StreamHandle{stream_id, n} ──────
//!                ── fetch_chunk(stream_id, i) ───────►  chunk i is block i, served in order:
//!                   (or stream("<stream_id>_<i>");      BlockSource::block(app, exec, id) now
//!                    at most max_chunks_in_flight)
//!                ◄── chunk i ─────────────────────────
//!   yields (block_id, Ok(bytes) | Err(BlockFetchError)), one per block, as chunks arrive
//!
//!   RetryingBlockFetcher: runs such fetches for the blocks still outstanding, again after an
//!   I/O failure (connect, disconnect, timeout), up to max_retries times
//! ```
//!
//! The primary API is a [`Stream`](futures_lite::Stream) of outcomes, one per requested block:
//! [`BlockFetch`] (one attempt, from [`fetch_blocks`]) and [`RetryingBlockFetcher`] (attempts
//! until every block has an outcome). Both are pull-driven and spawn nothing: chunk fetches
//! are issued while the stream is polled, so a consumer that stops reading stops the fetch
//! after at most [`max_chunks_in_flight`](BlockFetchConfig::max_chunks_in_flight) more
//! chunks, and works on any runtime. Read them with `next_block().await` (or any `Stream`
//! combinator), or hand the outcomes to Spark's callback shape, a [`BlockFetchingListener`],
//! with `deliver_to`.
//!
//! The RPC bodies are Spark's [`BlockTransferMessage`]s, encoded as Spark 4.3.0 does, and the
//! opening message is the one Spark's `OneForOneBlockFetcher` would send ([`FetchPlan`]):
//! `FetchShuffleBlocks` for shuffle blocks of one shuffle (`shuffle_S_M_R`, or batches
//! `shuffle_S_M_R1_R2`), `FetchShuffleBlockChunks` for merged chunks (`shuffleChunk_…`),
//! `OpenBlocks` for anything else (or always, with
//! [`use_old_fetch_protocol`](BlockFetchConfig::use_old_fetch_protocol)). So the fetchers read
//! from a Spark executor's block server or an external shuffle service, and Spark's fetchers
//! read from a [`BlockServer`].
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(
//! #     rt: std::sync::Arc<dyn rpc_driver::Runtime>,
//! #     factory: rpc_driver::transport::TransportClientFactory,
//! #     addr: std::net::SocketAddr,
//! # ) {
//! use std::time::Duration;
//! use rpc_driver::block::{BlockFetchConfig, RetryingBlockFetcher};
//!
//! let config = BlockFetchConfig::builder()
//!     .with_max_chunks_in_flight(4)
//!     .with_max_retries(3)
//!     .with_retry_wait(Duration::from_secs(1))
//!     .build()
//!     .expect("valid settings");
//! let ids = vec!["rdd_0_0".to_owned(), "rdd_0_1".to_owned()];
//! let mut fetch = RetryingBlockFetcher::one_for_one(rt, &factory, addr, "app-1", "exec-1", ids, &config);
//! while let Some((block_id, result)) = fetch.next_block().await {
//!     match result {
//!         Ok(bytes) => println!("{block_id}: {} bytes", bytes.len()),
//!         Err(error) => println!("{block_id} failed: {error}"),
//!     }
//! }
//! # }
//! ```

mod config;
mod error;
mod fetch;
mod listener;
mod message;
mod retry;
mod server;

pub use config::{BlockFetchConfig, BlockFetchConfigBuilder};
pub use error::BlockFetchError;
pub use fetch::{fetch_blocks, BlockFetch};
pub use listener::BlockFetchingListener;
pub use message::{
    BlockTransferMessage, FetchPlan, FetchPlanError, FetchShuffleBlockChunks, FetchShuffleBlocks,
    OpenBlocks, StreamHandle,
};
pub use retry::RetryingBlockFetcher;
pub use server::{BlockServer, BlockServerBuilder, BlockSource};
