//! One fetch of a list of blocks: Spark's `OneForOneBlockFetcher`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use rpc_proto::{RequestError, StreamChunkId};
use tracing::debug;

use super::config::BlockFetchConfig;
use super::error::BlockFetchError;
use super::listener::{deliver, BlockFetchingListener};
use super::message::{BlockTransferMessage, FetchPlan, StreamHandle};
use crate::runtime::BoxFuture;
use crate::transport::{ConnectError, RpcCall, TransportClient, TransportClientFactory};

/// Fetches `block_ids` of executor `exec_id` of application `app_id` from the block server
/// at `addr`, once, over a connection from `factory`: opens them with the RPC Spark's
/// `OneForOneBlockFetcher` would send ([`FetchPlan`]: `FetchShuffleBlocks`,
/// `FetchShuffleBlockChunks` or `OpenBlocks`), then fetches the stream's chunks, at most
/// [`max_chunks_in_flight`](BlockFetchConfig::max_chunks_in_flight) at a time (as
/// `StreamRequest`s with [`fetch_as_streams`](BlockFetchConfig::fetch_as_streams)).
///
/// Returns the fetch, a stream of `(block_id, outcome)`: see [`BlockFetch`]. Nothing is sent
/// until it is polled. For a fetch that survives I/O failures, use
/// [`RetryingBlockFetcher`](super::retry::RetryingBlockFetcher).
pub fn fetch_blocks(
    factory: &TransportClientFactory,
    addr: SocketAddr,
    app_id: &str,
    exec_id: &str,
    block_ids: Vec<String>,
    config: &BlockFetchConfig,
) -> BlockFetch {
    let mut fetch = BlockFetch {
        block_ids: Vec::new(),
        max_in_flight: config.max_chunks_in_flight(),
        open_timeout: config.open_timeout(),
        chunk_timeout: config.chunk_timeout(),
        as_streams: config.fetch_as_streams(),
        state: State::Done,
        failed: VecDeque::new(),
    };
    if block_ids.is_empty() {
        return fetch;
    }
    match FetchPlan::new(app_id, exec_id, &block_ids, config.use_old_fetch_protocol()) {
        Ok(plan) => {
            let open = plan.message.encode();
            // Chunk `i` is `chunk_block_ids[i]`: Spark's fetcher reorders shuffle blocks.
            fetch.block_ids = plan.chunk_block_ids;
            let factory = factory.clone();
            fetch.state = State::Connecting {
                connect: Box::pin(async move { factory.create_client(addr).await }),
                open,
            };
        }
        Err(error) => {
            fetch.block_ids = block_ids;
            fetch.fail_all(BlockFetchError::Plan(error));
        }
    }
    fetch
}

/// One fetch of a list of blocks (from [`fetch_blocks`]): a [`Stream`] of
/// `(block_id, Result<Bytes, BlockFetchError>)`, exactly one item per requested block, in the
/// order the outcomes are known, then the end.
///
/// - A list Spark's fetcher refuses to send in one message (shuffle blocks of two shuffles,
///   batch and single shuffle blocks mixed) fails every block with
///   [`BlockFetchError::Plan`], without connecting.
/// - A failure to connect or of the opening RPC (a block the server does not have, a
///   timeout, a lost connection) fails every block with the same error.
/// - Chunk `i` is block `i` of the plan's order ([`FetchPlan::chunk_block_ids`]: shuffle blocks
///   grouped by map task). A failed chunk fails its block and every later block not yet
///   delivered ([`BlockFetchError::Chunk`] names the failed chunk); blocks before it still
///   arrive. Spark's `OneForOneBlockFetcher` fails the same blocks, but may then also report
///   a success for a later block whose chunk was already on its way; this reports one outcome
///   per block and cancels the later chunks' fetches.
/// - An empty list of blocks ends at once, without connecting (Spark refuses it).
///
/// Chunk fetches are issued while the stream is polled: a consumer that stops reading leaves
/// at most `max_chunks_in_flight` fetches outstanding. Dropping the fetch cancels its calls;
/// the server releases the stream when the connection closes.
#[must_use = "streams do nothing unless polled"]
pub struct BlockFetch {
    /// The requested blocks; an entry is taken out when its outcome is yielded.
    block_ids: Vec<String>,
    max_in_flight: usize,
    open_timeout: Option<Duration>,
    chunk_timeout: Option<Duration>,
    as_streams: bool,
    state: State,
    /// Outcomes decided and not yet yielded: failures of several blocks at once.
    failed: VecDeque<(String, BlockFetchError)>,
}

enum State {
    Connecting {
        connect: BoxFuture<Result<TransportClient, ConnectError>>,
        open: Bytes,
    },
    Opening {
        client: TransportClient,
        call: RpcCall,
    },
    Fetching(Chunks),
    Done,
}

/// The chunk fetches of an opened stream.
struct Chunks {
    client: TransportClient,
    stream_id: u64,
    /// The next chunk to ask for.
    next: u32,
    /// Chunks from here on are not asked for (the end, or the first failed chunk).
    end: u32,
    /// Whether chunks are asked for as named streams.
    as_streams: bool,
    /// Fetches outstanding, by increasing chunk index.
    in_flight: VecDeque<(u32, ChunkCall)>,
}

/// One chunk being fetched: a `ChunkFetchRequest`, or a `StreamRequest` collected.
enum ChunkCall {
    Chunk(RpcCall),
    Stream(BoxFuture<Result<Bytes, RequestError>>),
}

impl Future for ChunkCall {
    type Output = Result<Bytes, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Chunk(call) => Pin::new(call).poll(cx),
            Self::Stream(call) => call.as_mut().poll(cx),
        }
    }
}

impl Chunks {
    /// Asks for chunks until `max` are outstanding or none are left to ask for.
    fn top_up(&mut self, max: usize, timeout: Option<Duration>) {
        while self.in_flight.len() < max && self.next < self.end {
            let call = if self.as_streams {
                // Spark's fetch-to-disk names chunk i of stream s "s_i".
                let name = format!("{}_{}", self.stream_id as i64, self.next);
                let stream = self.client.stream(&name, timeout);
                ChunkCall::Stream(Box::pin(stream.read_to_end()))
            } else {
                let chunk = StreamChunkId::new(self.stream_id, self.next);
                ChunkCall::Chunk(self.client.fetch_chunk(chunk, timeout))
            };
            self.in_flight.push_back((self.next, call));
            self.next += 1;
        }
    }

    /// The earliest outstanding fetch, taken out once it has finished: outcomes go out in
    /// chunk order. (Taking whichever had finished first, scanning in order, let a later
    /// chunk overtake an earlier one whose reply the connection's task completed between
    /// the two polls.)
    fn poll_finished(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<(u32, Result<Bytes, RequestError>)> {
        let (_, call) = self.in_flight.front_mut()?;
        match Pin::new(call).poll(cx) {
            Poll::Ready(result) => {
                let (index, _finished) = self.in_flight.pop_front()?;
                Some((index, result))
            }
            Poll::Pending => None,
        }
    }
}

impl BlockFetch {
    /// The next outcome, or `None` once every block has one.
    pub async fn next_block(&mut self) -> Option<(String, Result<Bytes, BlockFetchError>)> {
        self.next().await
    }

    /// Hands every outcome to `listener`, one call per block, and returns when all are in.
    pub async fn deliver_to(&mut self, listener: &mut (impl BlockFetchingListener + ?Sized)) {
        deliver(self, listener).await
    }

    /// Fails every block not yet decided with `error`, and ends the fetch.
    fn fail_all(&mut self, error: BlockFetchError) {
        debug!(%error, blocks = self.block_ids.len(), "block fetch failed");
        self.failed.extend(
            self.block_ids
                .iter_mut()
                .map(|id| (std::mem::take(id), error.clone())),
        );
        self.state = State::Done;
    }

    /// Chunk `index` failed: fails its block and every later one not yet delivered, and
    /// cancels their fetches.
    fn fail_from(&mut self, index: u32, error: RequestError) {
        let State::Fetching(chunks) = &mut self.state else {
            unreachable!("chunks fail only while fetching");
        };
        let failure = BlockFetchError::Chunk {
            chunk: StreamChunkId::new(chunks.stream_id, index),
            error,
        };
        debug!(%failure, "block fetch failed");
        let later_in_flight = chunks
            .in_flight
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| *i > index);
        let failed: Vec<u32> = std::iter::once(index)
            .chain(later_in_flight)
            .chain(chunks.next..chunks.end)
            .collect();
        chunks.in_flight.retain(|(i, _)| *i < index);
        chunks.end = index;
        for i in failed {
            let id = std::mem::take(&mut self.block_ids[i as usize]);
            self.failed.push_back((id, failure.clone()));
        }
    }
}

/// Reads the server's answer to the opening of `blocks` blocks.
fn opened(body: &[u8], blocks: usize) -> Result<StreamHandle, BlockFetchError> {
    let handle = match BlockTransferMessage::decode(body) {
        Ok(BlockTransferMessage::StreamHandle(handle)) => handle,
        Ok(other) => {
            return Err(BlockFetchError::InvalidResponse(
                format!("expected a stream handle, got {}", other.name()).into(),
            ))
        }
        Err(error) => return Err(BlockFetchError::InvalidResponse(error.to_string().into())),
    };
    if handle.num_chunks as usize != blocks {
        return Err(BlockFetchError::InvalidResponse(
            format!(
                "stream {} has {} chunks for {blocks} blocks",
                handle.stream_id, handle.num_chunks
            )
            .into(),
        ));
    }
    Ok(handle)
}

impl Stream for BlockFetch {
    type Item = (String, Result<Bytes, BlockFetchError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some((id, error)) = this.failed.pop_front() {
                return Poll::Ready(Some((id, Err(error))));
            }
            match &mut this.state {
                State::Connecting { connect, open } => match connect.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(client)) => {
                        let call = client.send_rpc(open.clone(), this.open_timeout);
                        this.state = State::Opening { client, call };
                    }
                    Poll::Ready(Err(error)) => this.fail_all(BlockFetchError::Connect(error)),
                },
                State::Opening { client, call } => match Pin::new(call).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(RequestError::Remote(message)))
                        if rpc_proto::TooManyStreams::matches(&message) =>
                    {
                        this.fail_all(BlockFetchError::TooManyStreams(message))
                    }
                    Poll::Ready(Err(error)) => this.fail_all(BlockFetchError::Open(error)),
                    Poll::Ready(Ok(body)) => match opened(&body, this.block_ids.len()) {
                        Err(error) => this.fail_all(error),
                        Ok(handle) => {
                            this.state = State::Fetching(Chunks {
                                client: client.clone(),
                                stream_id: handle.stream_id,
                                next: 0,
                                end: handle.num_chunks,
                                as_streams: this.as_streams,
                                in_flight: VecDeque::new(),
                            });
                        }
                    },
                },
                State::Fetching(chunks) => {
                    chunks.top_up(this.max_in_flight, this.chunk_timeout);
                    match chunks.poll_finished(cx) {
                        Some((index, Ok(body))) => {
                            // Keep the pipeline full while the consumer handles this block.
                            chunks.top_up(this.max_in_flight, this.chunk_timeout);
                            let id = std::mem::take(&mut this.block_ids[index as usize]);
                            return Poll::Ready(Some((id, Ok(body))));
                        }
                        Some((index, Err(error))) => this.fail_from(index, error),
                        None if chunks.in_flight.is_empty() => this.state = State::Done,
                        None => return Poll::Pending,
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl fmt::Debug for BlockFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Connecting { .. } => "connecting",
            State::Opening { .. } => "opening",
            State::Fetching(_) => "fetching",
            State::Done => "done",
        };
        f.debug_struct("BlockFetch")
            .field("blocks", &self.block_ids.len())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
