//! [`BlockFetchingListener`], Spark's callback shape for a fetch's outcomes.

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};

use super::error::BlockFetchError;

/// Receives a fetch's outcomes as callbacks: Spark's `BlockFetchingListener`. Each block gets
/// exactly one call. Feed one with
/// [`BlockFetch::deliver_to`](super::fetch::BlockFetch::deliver_to) or
/// [`RetryingBlockFetcher::deliver_to`](super::retry::RetryingBlockFetcher::deliver_to).
pub trait BlockFetchingListener {
    /// `block_id` arrived.
    fn on_block_fetch_success(&mut self, block_id: String, data: Bytes);

    /// `block_id` could not be fetched.
    fn on_block_fetch_failure(&mut self, block_id: String, error: BlockFetchError);
}

/// Hands every outcome of `stream` to `listener`, until the stream ends.
pub(super) async fn deliver<S, L>(stream: &mut S, listener: &mut L)
where
    S: Stream<Item = (String, Result<Bytes, BlockFetchError>)> + Unpin + ?Sized,
    L: BlockFetchingListener + ?Sized,
{
    while let Some((block_id, result)) = stream.next().await {
        match result {
            Ok(data) => listener.on_block_fetch_success(block_id, data),
            Err(error) => listener.on_block_fetch_failure(block_id, error),
        }
    }
}
