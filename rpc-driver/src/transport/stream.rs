//! Serving chunks and streams: Spark's `StreamManager` and `OneForOneStreamManager`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::BuildHasher;

use bytes::Bytes;
use rpc_proto::StreamChunkId;

use super::buffer::ManagedBuffer;
use super::client::TransportClient;
use super::id::ConnectionId;
use crate::error::BoxError;
use crate::sync::{lock, Mutex};

// A stream's chunk source is a trait object, which loom's `Arc` cannot hold.
use crate::sync::unmodeled::Arc;

/// Spark's text for a stream that does not exist, `Stream '<id>' was not found.`, as Spark's
/// `TransportRequestHandler` sends it. Spark matches on it (`ExecutorClassLoader` turns it
/// into a `ClassNotFoundException`), so a [`StreamManager`] without the stream should fail
/// with exactly this; the default [`open_stream`](StreamManager::open_stream) does.
pub fn stream_not_found(stream_id: &str) -> String {
    format!("Stream '{stream_id}' was not found.")
}

/// Spark's text for a chunk of a stream that does not exist (or no longer does), as Spark's
/// `OneForOneStreamManager` fails it.
pub(crate) fn chunk_stream_closed(stream_id: u64) -> String {
    format!("Requested chunk not available since streamId {stream_id} is closed")
}

/// Where a transport server finds the chunks and streams peers ask for (Spark's
/// `StreamManager`); returned by [`RpcHandler::stream_manager`](super::handler::RpcHandler).
///
/// Called on the connection's driver task: implementations must not block. Errors are
/// sent to the peer as `ChunkFetchFailure` / `StreamFailure` with their text
/// ([`Display`](fmt::Display)); Spark peers may match on it, so use Spark's texts where Spark
/// has one (see [`stream_not_found`]).
///
/// Spark limits the chunks being transferred (`spark.shuffle.maxChunksBeingTransferred`);
/// we limit the bytes: while a connection's send buffer is over its
/// [`max_send_buffer`](rpc_proto::Config::max_send_buffer), its chunk fetches and stream
/// requests are refused with a failure saying so, without asking the manager (so no chunk
/// is consumed and the peer may ask again later). A peer that asks for everything and reads
/// nothing cannot make the server buffer without bound.
pub trait StreamManager: Send + Sync + 'static {
    /// The chunk `chunk` asked for on `client`'s connection.
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError>;

    /// The named stream asked for with a `StreamRequest` (Spark's `openStream`). The default
    /// has none: it fails with Spark's [`stream_not_found`] text.
    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, BoxError> {
        let _ = client;
        Err(stream_not_found(stream_id).into())
    }

    /// The chunk as a [`ManagedBuffer`]: override to serve file segments. A file segment is
    /// never read whole: the driver writes it behind its frame's head as it writes a stream
    /// body, with `sendfile` where the socket supports it, else read in pieces on the
    /// runtime's blocking pool (Spark's `FileSegmentManagedBuffer` sent as a
    /// `DefaultFileRegion`); if the file turns out shorter than the segment, the connection
    /// closes (the peer cannot be told mid-frame). Defaults to
    /// [`chunk`](StreamManager::chunk).
    fn chunk_buffer(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, BoxError> {
        self.chunk(client, chunk).map(ManagedBuffer::Memory)
    }

    /// The named stream as a [`ManagedBuffer`]: override to serve file segments, which are
    /// sent without copying (see [`ManagedBuffer`]). Defaults to
    /// [`open_stream`](StreamManager::open_stream).
    fn open_stream_buffer(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, BoxError> {
        self.open_stream(client, stream_id)
            .map(ManagedBuffer::Memory)
    }

    /// A connection ended: release what was registered for it.
    fn connection_closed(&self, client: &TransportClient) {
        let _ = client;
    }
}

/// Spark's `OneForOneStreamManager`: each registered stream is a list of buffers served as
/// chunks 0, 1, 2… in order, each exactly once; a stream is released when its last chunk is
/// served, or when the connection it was registered for closes. Chunks it cannot serve fail
/// with Spark's texts; it serves no named streams.
///
/// A stream registered for a connection (an `owner`) is served on that connection only, as
/// in Spark 4.3 (which checks the channel): on any other, it fails as if it did not exist.
/// Stream ids from [`random`](OneForOneStreamManager::random) (and `default`) are drawn
/// from the OS's randomness, so a peer cannot guess another connection's ids from its own;
/// [`new`](OneForOneStreamManager::new) numbers them in sequence, for tests.
///
/// Chunks are either buffers given at registration ([`register_stream`]) or made when they
/// are fetched ([`register_lazy_stream`]), so a stream of many large blocks holds nothing
/// until a chunk is asked for.
///
/// [`register_stream`]: OneForOneStreamManager::register_stream
/// [`register_lazy_stream`]: OneForOneStreamManager::register_lazy_stream
///
/// ```
/// use rpc_driver::transport::OneForOneStreamManager;
///
/// let streams = OneForOneStreamManager::new(7);
/// let id = streams.register_stream("app-1", vec!["a".into(), "b".into()], None);
/// assert_eq!(streams.registered(), 1);
/// # let _ = id;
/// ```
pub struct OneForOneStreamManager {
    state: Mutex<State>,
}

/// Makes the chunk with the given index, when it is fetched.
type ChunkSource = Arc<dyn Fn(u32) -> Result<ManagedBuffer, BoxError> + Send + Sync>;

struct State {
    ids: StreamIds,
    streams: HashMap<u64, Registered>,
    /// The streams registered for each connection, by connection id: a connection's close
    /// and its count of streams touch only its own.
    by_owner: HashMap<ConnectionId, HashSet<u64>>,
}

enum StreamIds {
    Sequential(u64),
    /// SipHash of a counter under random keys: unpredictable without the keys.
    Random {
        keys: RandomState,
        counter: u64,
    },
}

enum Chunks {
    Ready(VecDeque<Bytes>),
    Lazy { count: u32, source: ChunkSource },
}

struct Registered {
    app_id: String,
    chunks: Chunks,
    next_chunk: u32,
    owner: Option<ConnectionId>,
}

impl Default for OneForOneStreamManager {
    fn default() -> Self {
        Self::random()
    }
}

impl OneForOneStreamManager {
    /// A manager whose stream ids are `first_stream_id`, then the next numbers in sequence.
    /// Predictable: for tests; servers use [`random`](OneForOneStreamManager::random).
    pub fn new(first_stream_id: u64) -> Self {
        Self::with_ids(StreamIds::Sequential(first_stream_id))
    }

    /// A manager whose stream ids are random (from the OS's randomness, through
    /// [`RandomState`]) positive 63-bit numbers, never two alike at once.
    pub fn random() -> Self {
        Self::with_ids(StreamIds::Random {
            keys: RandomState::new(),
            counter: 0,
        })
    }

    fn with_ids(ids: StreamIds) -> Self {
        Self {
            state: Mutex::new(State {
                ids,
                streams: HashMap::new(),
                by_owner: HashMap::new(),
            }),
        }
    }

    /// Registers `buffers` as a stream of chunks for application `app_id`, returning its id.
    /// With an `owner`, the stream is served only on that connection and released when it
    /// closes.
    pub fn register_stream(
        &self,
        app_id: &str,
        buffers: Vec<Bytes>,
        owner: Option<&TransportClient>,
    ) -> u64 {
        self.register(app_id, Chunks::Ready(buffers.into()), owner)
    }

    /// Registers a stream of `count` chunks for application `app_id` whose chunk `i` is
    /// made by `source(i)` when it is fetched (in order, each once), returning its id. A
    /// source's error (a `String`, or any error) fails that chunk's fetch with its text. `source` runs on the
    /// fetching connection's task, outside the manager's lock: it must not block. With an
    /// `owner`, as for [`register_stream`](OneForOneStreamManager::register_stream).
    pub fn register_lazy_stream<E: Into<BoxError>>(
        &self,
        app_id: &str,
        count: u32,
        owner: Option<&TransportClient>,
        source: impl Fn(u32) -> Result<Bytes, E> + Send + Sync + 'static,
    ) -> u64 {
        let source: ChunkSource =
            Arc::new(move |index| source(index).map(ManagedBuffer::Memory).map_err(Into::into));
        self.register(app_id, Chunks::Lazy { count, source }, owner)
    }

    /// As [`register_lazy_stream`](OneForOneStreamManager::register_lazy_stream), for chunks
    /// made as [`ManagedBuffer`]s: a [`FileSegment`](super::buffer::FileSegment) chunk is
    /// read on the runtime's blocking pool, not on the connection's task (served through
    /// [`StreamManager::chunk_buffer`]; [`chunk`](StreamManager::chunk) reads it in place).
    pub fn register_lazy_buffer_stream<E: Into<BoxError>>(
        &self,
        app_id: &str,
        count: u32,
        owner: Option<&TransportClient>,
        source: impl Fn(u32) -> Result<ManagedBuffer, E> + Send + Sync + 'static,
    ) -> u64 {
        let source: ChunkSource = Arc::new(move |index| source(index).map_err(Into::into));
        self.register(app_id, Chunks::Lazy { count, source }, owner)
    }

    fn register(&self, app_id: &str, chunks: Chunks, owner: Option<&TransportClient>) -> u64 {
        let mut s = lock(&self.state);
        let id = loop {
            let id = match &mut s.ids {
                StreamIds::Sequential(next) => {
                    let id = *next;
                    *next = next.wrapping_add(1);
                    id
                }
                StreamIds::Random { keys, counter } => {
                    *counter = counter.wrapping_add(1);
                    keys.hash_one(*counter) & (i64::MAX as u64)
                }
            };
            if !s.streams.contains_key(&id) {
                break id;
            }
        };
        let owner = owner.map(TransportClient::id);
        if let Some(owner) = owner {
            s.by_owner.entry(owner).or_default().insert(id);
        }
        s.streams.insert(
            id,
            Registered {
                app_id: app_id.to_owned(),
                chunks,
                next_chunk: 0,
                owner,
            },
        );
        id
    }

    /// Streams registered and not yet released.
    pub fn registered(&self) -> usize {
        lock(&self.state).streams.len()
    }

    /// Streams registered for `client`'s connection and not yet released.
    pub fn registered_for(&self, client: &TransportClient) -> usize {
        lock(&self.state)
            .by_owner
            .get(&client.id())
            .map_or(0, HashSet::len)
    }

    /// The application a stream was registered for.
    pub fn app_id(&self, stream_id: u64) -> Option<String> {
        lock(&self.state)
            .streams
            .get(&stream_id)
            .map(|r| r.app_id.clone())
    }
}

impl State {
    fn release(&mut self, stream_id: u64) {
        if let Some(owner) = self.streams.remove(&stream_id).and_then(|r| r.owner) {
            if let Some(ids) = self.by_owner.get_mut(&owner) {
                ids.remove(&stream_id);
                if ids.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }
}

impl StreamManager for OneForOneStreamManager {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        self.chunk_buffer(client, chunk)
            .and_then(|buffer| buffer.to_bytes().map_err(Into::into))
    }

    fn chunk_buffer(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, BoxError> {
        let mut s = lock(&self.state);
        let Some(stream) = s
            .streams
            .get_mut(&chunk.stream_id)
            // Another connection's stream is not there for this one.
            .filter(|r| r.owner.is_none_or(|owner| owner == client.id()))
        else {
            return Err(chunk_stream_closed(chunk.stream_id).into());
        };
        // Spark's `checkAuthorization`: an authenticated connection reads only its own
        // application's streams.
        if let Some(client_id) = client.client_id() {
            if client_id != stream.app_id {
                return Err(format!(
                    "Client {client_id} not authorized to read stream {}.",
                    chunk.stream_id
                )
                .into());
            }
        }
        if chunk.chunk_index != stream.next_chunk {
            return Err(format!(
                "Received out-of-order chunk index {} (expected {})",
                chunk.chunk_index, stream.next_chunk
            )
            .into());
        }
        let beyond_end = || format!("Requested chunk index beyond end {}", chunk.chunk_index);
        let (outcome, last) = match &mut stream.chunks {
            Chunks::Ready(buffers) => {
                let Some(buffer) = buffers.pop_front() else {
                    return Err(beyond_end().into());
                };
                (Ok(ManagedBuffer::Memory(buffer)), buffers.is_empty())
            }
            Chunks::Lazy { count, source } => {
                if chunk.chunk_index >= *count {
                    return Err(beyond_end().into());
                }
                (Err(source.clone()), chunk.chunk_index + 1 == *count)
            }
        };
        stream.next_chunk += 1;
        if last {
            s.release(chunk.stream_id);
        }
        drop(s);
        // A lazy chunk is made outside the lock.
        outcome.or_else(|source| source(chunk.chunk_index))
    }

    fn connection_closed(&self, client: &TransportClient) {
        let mut s = lock(&self.state);
        if let Some(ids) = s.by_owner.remove(&client.id()) {
            for id in ids {
                s.streams.remove(&id);
            }
        }
    }
}

impl fmt::Debug for OneForOneStreamManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneForOneStreamManager")
            .field("registered", &self.registered())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 11): ids were sequential, so a peer could guess another
    /// connection's from its own.
    #[test]
    fn random_stream_ids_are_positive_distinct_and_not_in_sequence() {
        let streams = OneForOneStreamManager::random();
        let ids: Vec<u64> = (0..1000)
            .map(|_| streams.register_stream("app", Vec::new(), None))
            .collect();
        assert!(ids.iter().all(|id| *id <= i64::MAX as u64));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        let in_sequence = ids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(
            in_sequence < 2,
            "{in_sequence} ids follow their predecessor"
        );
        assert_eq!(streams.registered(), 1000);
        // Two managers draw different ids.
        let other = OneForOneStreamManager::random().register_stream("app", Vec::new(), None);
        assert_ne!(other, ids[0]);
        // Sequential ids stay available for tests.
        let sequential = OneForOneStreamManager::new(7);
        assert_eq!(sequential.register_stream("app", Vec::new(), None), 7);
        assert_eq!(sequential.register_stream("app", Vec::new(), None), 8);
    }
}
