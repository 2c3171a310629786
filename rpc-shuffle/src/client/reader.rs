//! [`ShuffleReader`]: a reducer's reader of many services' blocks, with bounded memory.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use rpc_driver::block::{BlockFetchError, RetryingBlockFetcher};
use tracing::debug;

use super::ShuffleClient;
use crate::protocol::BlockId;

/// Blocks of one executor at one address, with their sizes as the map statuses tell them:
/// the input of a [`ShuffleReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBlocks {
    /// The shuffle service (or executor) that serves them.
    pub addr: SocketAddr,
    /// The executor that wrote them.
    pub exec_id: String,
    /// `(block id, size in bytes)`.
    pub blocks: Vec<(String, u64)>,
}

/// One block's outcome, from a [`ShuffleReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlock {
    /// Where it was fetched from.
    pub addr: SocketAddr,
    /// The executor that wrote it.
    pub exec_id: String,
    /// The block.
    pub block_id: String,
    /// Its size as given in [`RemoteBlocks`].
    pub size: u64,
    /// Its bytes, or why it was not fetched (after the client's retries).
    pub result: Result<Bytes, BlockFetchError>,
}

/// One fetch request: blocks of one executor at one address, fetchable with one message.
struct Request {
    addr: SocketAddr,
    exec_id: String,
    blocks: Vec<(String, u64)>,
    size: u64,
}

/// A request being fetched.
struct Active {
    addr: SocketAddr,
    exec_id: String,
    /// The declared sizes of its blocks not yet yielded, by id (a block listed twice has two).
    sizes: HashMap<String, Vec<u64>>,
    fetch: RetryingBlockFetcher,
}

/// Reads blocks from many shuffle services with a bound on memory: Spark's
/// `ShuffleBlockFetcherIterator`, simplified (no local or host-local reads, no fetch to
/// disk, no per-address limit). A [`Stream`] of [`FetchedBlock`]s, one per block given,
/// in the order they arrive, then the end.
///
/// The blocks are cut into fetch requests as Spark cuts them: per (address, executor) and
/// per kind of block (one shuffle; single or batch blocks; merged chunks), each request
/// closed once it reaches a fifth of
/// [`max_bytes_in_flight`](super::ShuffleClientConfig::max_bytes_in_flight), and a block of
/// at least that size fetched alone. Each request is one
/// [`ShuffleClient::fetch_blocks`] (with its retries).
///
/// **The bound.** A request is issued only while the declared sizes of the blocks requested
/// and not yet yielded to the consumer, its own included, stay within `max_bytes_in_flight`,
/// and while fewer than [`max_reqs_in_flight`](super::ShuffleClientConfig::max_reqs_in_flight)
/// requests are outstanding; when nothing is outstanding, the next request goes anyway, so a
/// request larger than the budget is fetched alone. Blocks fetched but not yet taken by the
/// consumer count against the budget, so a consumer that stops reading stops the fetching:
/// the bytes requested and not yet taken never exceed `max_bytes_in_flight` plus the largest
/// block's size, whatever the total. (Blocks already taken are the consumer's to hold;
/// declared sizes are trusted, as Spark trusts its map statuses.)
///
/// Nothing runs unless the stream is polled; it spawns nothing.
#[must_use = "streams do nothing unless polled"]
pub struct ShuffleReader {
    client: ShuffleClient,
    queue: VecDeque<Request>,
    active: Vec<Active>,
    bytes_in_flight: u64,
    max_bytes_in_flight: u64,
    max_reqs_in_flight: usize,
    /// Where the next poll of the active fetches starts, so none starves.
    next: usize,
}

/// What blocks may share a request: a kind, a shuffle, a shuffle merge.
type Kind = (u8, i32, i32);

/// The blocks of one request group: (address, executor, kind).
type GroupKey = (SocketAddr, String, Kind);

/// What blocks may share a request: Spark's fetcher sends one message per request, which
/// holds one shuffle's blocks of one kind.
fn kind(block_id: &str) -> Kind {
    match BlockId::parse(block_id) {
        Some(BlockId::Shuffle { shuffle_id, .. }) => (0, shuffle_id, 0),
        Some(BlockId::ShuffleBatch { shuffle_id, .. }) => (1, shuffle_id, 0),
        Some(BlockId::ShuffleChunk {
            shuffle_id,
            shuffle_merge_id,
            ..
        }) => (2, shuffle_id, shuffle_merge_id),
        Some(BlockId::Rdd { .. }) | None => (3, 0, 0),
    }
}

/// Cuts `blocks` into requests of about `target` bytes, a block of `target` or more alone.
fn requests(blocks: Vec<RemoteBlocks>, target: u64) -> VecDeque<Request> {
    // Groups in first-seen order.
    let mut groups: Vec<(GroupKey, Vec<(String, u64)>)> = Vec::new();
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    for remote in blocks {
        for (id, size) in remote.blocks {
            let key = (remote.addr, remote.exec_id.clone(), kind(&id));
            let slot = *index.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push((id, size));
        }
    }
    let mut out = VecDeque::new();
    for ((addr, exec_id, _), blocks) in groups {
        let mut current: Vec<(String, u64)> = Vec::new();
        let mut size = 0u64;
        let flush =
            |current: &mut Vec<(String, u64)>, size: &mut u64, out: &mut VecDeque<Request>| {
                if !current.is_empty() {
                    out.push_back(Request {
                        addr,
                        exec_id: exec_id.clone(),
                        blocks: std::mem::take(current),
                        size: std::mem::take(size),
                    });
                }
            };
        for (id, block_size) in blocks {
            if block_size >= target {
                flush(&mut current, &mut size, &mut out);
                current.push((id, block_size));
                size = block_size;
                flush(&mut current, &mut size, &mut out);
                continue;
            }
            current.push((id, block_size));
            size = size.saturating_add(block_size);
            if size >= target {
                flush(&mut current, &mut size, &mut out);
            }
        }
        flush(&mut current, &mut size, &mut out);
    }
    out
}

impl ShuffleReader {
    /// A reader of `blocks` with `client`'s settings; see [`ShuffleClient::reader`].
    pub fn new(client: ShuffleClient, blocks: Vec<RemoteBlocks>) -> Self {
        let max_bytes_in_flight = client.config().max_bytes_in_flight();
        let max_reqs_in_flight = client.config().max_reqs_in_flight();
        let target = (max_bytes_in_flight / 5).max(1);
        Self {
            client,
            queue: requests(blocks, target),
            active: Vec::new(),
            bytes_in_flight: 0,
            max_bytes_in_flight,
            max_reqs_in_flight,
            next: 0,
        }
    }

    /// The next block's outcome, or `None` once every block has one.
    pub async fn next_block(&mut self) -> Option<FetchedBlock> {
        self.next().await
    }

    /// The declared bytes of blocks requested and not yet yielded.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// Fetch requests outstanding.
    pub fn requests_in_flight(&self) -> usize {
        self.active.len()
    }

    /// Fetch requests not yet issued.
    pub fn requests_queued(&self) -> usize {
        self.queue.len()
    }

    /// Issues the queued requests the bounds allow.
    fn issue(&mut self) {
        while let Some(front) = self.queue.front() {
            let fits = self.active.len() < self.max_reqs_in_flight
                && self.bytes_in_flight.saturating_add(front.size) <= self.max_bytes_in_flight;
            if !(self.active.is_empty() || fits) {
                break;
            }
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            debug!(
                addr = %request.addr,
                exec_id = %request.exec_id,
                blocks = request.blocks.len(),
                bytes = request.size,
                in_flight = self.bytes_in_flight,
                "issuing a shuffle fetch request"
            );
            self.bytes_in_flight = self.bytes_in_flight.saturating_add(request.size);
            let mut sizes: HashMap<String, Vec<u64>> = HashMap::new();
            let mut ids = Vec::with_capacity(request.blocks.len());
            for (id, size) in request.blocks {
                sizes.entry(id.clone()).or_default().push(size);
                ids.push(id);
            }
            let fetch = self
                .client
                .fetch_blocks(request.addr, &request.exec_id, ids);
            self.active.push(Active {
                addr: request.addr,
                exec_id: request.exec_id,
                sizes,
                fetch,
            });
        }
    }
}

impl Stream for ShuffleReader {
    type Item = FetchedBlock;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FetchedBlock>> {
        let this = self.get_mut();
        'issue: loop {
            this.issue();
            if this.active.is_empty() {
                return Poll::Ready(None);
            }
            let n = this.active.len();
            for k in 0..n {
                let i = (this.next + k) % n;
                match this.active[i].fetch.poll_next(cx) {
                    Poll::Pending => {}
                    Poll::Ready(None) => {
                        this.active.swap_remove(i);
                        this.next = 0;
                        continue 'issue;
                    }
                    Poll::Ready(Some((block_id, result))) => {
                        let active = &mut this.active[i];
                        let size = active
                            .sizes
                            .get_mut(&block_id)
                            .and_then(Vec::pop)
                            .unwrap_or(0);
                        this.bytes_in_flight = this.bytes_in_flight.saturating_sub(size);
                        let block = FetchedBlock {
                            addr: active.addr,
                            exec_id: active.exec_id.clone(),
                            block_id,
                            size,
                            result,
                        };
                        this.next = (i + 1) % n;
                        return Poll::Ready(Some(block));
                    }
                }
            }
            return Poll::Pending;
        }
    }
}

impl fmt::Debug for ShuffleReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShuffleReader")
            .field("bytes_in_flight", &self.bytes_in_flight)
            .field("requests_in_flight", &self.active.len())
            .field("requests_queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(blocks: &[(&str, u64)]) -> RemoteBlocks {
        RemoteBlocks {
            addr: "127.0.0.1:7337".parse().unwrap(),
            exec_id: "1".into(),
            blocks: blocks.iter().map(|(id, n)| (id.to_string(), *n)).collect(),
        }
    }

    fn cut(blocks: Vec<RemoteBlocks>, target: u64) -> Vec<Vec<String>> {
        requests(blocks, target)
            .into_iter()
            .map(|r| {
                assert_eq!(r.size, r.blocks.iter().map(|(_, n)| n).sum::<u64>());
                r.blocks.into_iter().map(|(id, _)| id).collect()
            })
            .collect()
    }

    #[test]
    fn requests_close_at_the_target_and_big_blocks_go_alone() {
        let got = cut(
            vec![remote(&[
                ("shuffle_0_1_0", 4),
                ("shuffle_0_2_0", 4),
                ("shuffle_0_3_0", 4),
                ("shuffle_0_4_0", 50),
                ("shuffle_0_5_0", 1),
            ])],
            10,
        );
        assert_eq!(
            got,
            [
                vec!["shuffle_0_1_0", "shuffle_0_2_0", "shuffle_0_3_0"],
                vec!["shuffle_0_4_0"],
                vec!["shuffle_0_5_0"],
            ]
        );
    }

    #[test]
    fn requests_never_mix_executors_shuffles_or_kinds() {
        let mut other = remote(&[("shuffle_0_9_0", 1)]);
        other.exec_id = "2".into();
        let got = cut(
            vec![
                remote(&[
                    ("shuffle_0_1_0", 1),
                    ("shuffle_1_1_0", 1),
                    ("shuffle_0_1_1_3", 1),
                    ("rdd_1_1", 1),
                    ("shuffle_0_2_0", 1),
                ]),
                other,
            ],
            100,
        );
        assert_eq!(
            got,
            [
                vec!["shuffle_0_1_0", "shuffle_0_2_0"],
                vec!["shuffle_1_1_0"],
                vec!["shuffle_0_1_1_3"],
                vec!["rdd_1_1"],
                vec!["shuffle_0_9_0"],
            ]
        );
    }
}
