//! [`BlockFetchError`], why a block was not fetched.

use rpc_proto::shuffle::FetchPlanError;
use rpc_proto::{CallError, RequestError, StreamChunkId};

use crate::transport::ConnectError;

// Shared error text; loom's `Arc` cannot hold `str`.
use crate::sync::unmodeled::Arc;

/// Why a block was not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockFetchError {
    /// The connection to the block server could not be opened. Fails every block of the
    /// fetch.
    #[error(transparent)]
    Connect(ConnectError),
    /// The blocks cannot be asked for in one message, as Spark's fetcher refuses them too
    /// (shuffle blocks of two shuffles, batch and single shuffle blocks mixed). Fails every
    /// block of the fetch, without connecting.
    #[error("the blocks cannot be fetched together: {0}")]
    Plan(FetchPlanError),
    /// The opening RPC (`FetchShuffleBlocks`, `FetchShuffleBlockChunks` or `OpenBlocks`)
    /// failed: the server refused it (a block it does not have, named in
    /// the [`RequestError::Remote`] message), or the call timed out or lost its connection. Fails
    /// every block of the fetch.
    #[error("opening the blocks failed: {0}")]
    Open(RequestError),
    /// Fetching `chunk` failed. That chunk is this block's, or an earlier block's of the same
    /// fetch: a failed chunk fails its block and every later block not yet delivered (Spark's
    /// `OneForOneBlockFetcher` does the same; the server serves a stream's chunks in order).
    #[error("fetching chunk {chunk} failed: {error}")]
    Chunk {
        /// The chunk whose fetch failed.
        chunk: StreamChunkId,
        /// Why.
        error: RequestError,
    },
    /// The server answered the opening RPC with something other than a stream of one chunk per
    /// block. Fails every block of the fetch.
    #[error("invalid answer to open blocks: {0}")]
    InvalidResponse(Arc<str>),
    /// The server refused to open another stream on this connection: it has as many open as
    /// [`BlockServer::max_streams_per_connection`](super::server::BlockServer::max_streams_per_connection)
    /// allows. Fails every block of the fetch; retryable (streams are released as their last
    /// chunk is fetched).
    #[error("the block server refused the fetch: {0}")]
    TooManyStreams(Arc<str>),
    /// An attempt of a [`RetryingBlockFetcher`](super::retry::RetryingBlockFetcher) ended
    /// without an outcome for this block (a fetch function that forgot it).
    #[error("the fetch ended without an outcome for this block")]
    Unanswered,
}

impl BlockFetchError {
    /// Whether the failure is an I/O failure that a new attempt may not meet: a connect that
    /// failed or timed out, a connection that ended, a call that timed out (Spark retries on
    /// `IOException`). Failures the server reported ([`RequestError::Remote`]), invalid answers
    /// and refusals that would recur (a frame too large) are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(error) => matches!(
                error,
                ConnectError::Io { .. } | ConnectError::TimedOut { .. }
            ),
            Self::Open(error) | Self::Chunk { error, .. } => is_io(error),
            Self::TooManyStreams(_) => true,
            Self::Plan(_) | Self::InvalidResponse(_) | Self::Unanswered => false,
        }
    }
}

/// Whether a call failed for a reason of the connection rather than of the peer's answer.
fn is_io(error: &RequestError) -> bool {
    matches!(
        error,
        RequestError::TimedOut { .. }
            | RequestError::Disconnected(_)
            | RequestError::NotSent(CallError::Closed | CallError::SendBufferFull { .. })
    )
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::time::Duration;

    use rpc_proto::ConnectionError;

    use super::*;
    use crate::block::fetch::BlockFetch;
    use crate::block::retry::RetryingBlockFetcher;
    use crate::block::server::BlockServer;

    fn chunk(error: RequestError) -> BlockFetchError {
        BlockFetchError::Chunk {
            chunk: StreamChunkId::new(1, 0),
            error,
        }
    }

    #[test]
    fn io_failures_are_retryable_and_answers_are_not() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let retryable = [
            BlockFetchError::Connect(ConnectError::Io {
                addr,
                kind: ErrorKind::ConnectionRefused,
                message: "refused".into(),
            }),
            BlockFetchError::Connect(ConnectError::TimedOut {
                addr,
                after: Duration::from_secs(1),
            }),
            BlockFetchError::Open(RequestError::Disconnected(ConnectionError::PeerClosed)),
            BlockFetchError::Open(RequestError::TimedOut {
                after: Duration::from_secs(1),
            }),
            chunk(RequestError::Disconnected(ConnectionError::Transport(
                "reset".into(),
            ))),
            chunk(RequestError::NotSent(CallError::Closed)),
            chunk(RequestError::NotSent(CallError::SendBufferFull {
                buffered: 2,
                max: 1,
            })),
        ];
        for error in retryable {
            assert!(error.is_retryable(), "{error:?}");
        }
        let last = [
            BlockFetchError::Connect(ConnectError::Closed),
            BlockFetchError::Open(RequestError::Remote("no such block".into())),
            chunk(RequestError::Remote("out of order".into())),
            chunk(RequestError::NotSent(CallError::FrameTooLarge {
                size: 9,
                max: 1,
            })),
            chunk(RequestError::NotSent(CallError::DuplicateChunkFetch(
                StreamChunkId::new(1, 0),
            ))),
            BlockFetchError::InvalidResponse("garbage".into()),
            BlockFetchError::Plan(FetchPlanError::MixedKinds("shuffle_0_1_2_3".into())),
            BlockFetchError::Unanswered,
        ];
        for error in last {
            assert!(!error.is_retryable(), "{error:?}");
        }
    }

    #[test]
    fn fetches_can_move_to_other_tasks_and_servers_are_shared() {
        fn send<T: Send>() {}
        fn shared<T: Send + Sync>() {}
        send::<BlockFetch>();
        send::<RetryingBlockFetcher>();
        shared::<BlockServer>();
        shared::<BlockFetchError>();
    }

    #[test]
    fn messages_say_what_failed() {
        let error = BlockFetchError::Open(RequestError::Remote("block b7 not found".into()));
        assert_eq!(
            error.to_string(),
            "opening the blocks failed: remote failure: block b7 not found"
        );
        assert_eq!(
            chunk(RequestError::Disconnected(ConnectionError::PeerClosed)).to_string(),
            "fetching chunk 1[0] failed: disconnected: connection closed by peer"
        );
    }
}
