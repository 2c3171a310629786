//! Serving chunks and streams: Spark's `StreamManager` and `OneForOneStreamManager`.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use rpc_proto::StreamChunkId;

use super::{ManagedBuffer, TransportClient};
use crate::sync::{lock, Mutex};

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
/// `StreamManager`); returned by [`RpcHandler::stream_manager`](super::RpcHandler).
///
/// Called on the connection's driver task: implementations must not block. Errors are
/// sent to the peer as `ChunkFetchFailure` / `StreamFailure` with the given message; Spark
/// peers may match on it, so use Spark's texts where Spark has one (see
/// [`stream_not_found`]).
///
/// Spark limits the chunks being transferred (`spark.shuffle.maxChunksBeingTransferred`);
/// we limit the bytes: while a connection's send buffer is over its
/// [`max_send_buffer`](rpc_proto::Config::max_send_buffer), its chunk fetches and stream
/// requests are refused with a failure saying so, without asking the manager (so no chunk
/// is consumed and the peer may ask again later). A peer that asks for everything and reads
/// nothing cannot make the server buffer without bound.
pub trait StreamManager: Send + Sync + 'static {
    /// The chunk `chunk` asked for on `client`'s connection.
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, String>;

    /// The named stream asked for with a `StreamRequest` (Spark's `openStream`). The default
    /// has none: it fails with Spark's [`stream_not_found`] text.
    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, String> {
        let _ = client;
        Err(stream_not_found(stream_id))
    }

    /// The chunk as a [`ManagedBuffer`]: override to serve file segments (chunks travel in
    /// their frame, so a file segment is read into memory, on the runtime's blocking pool
    /// rather than the connection's task). Defaults to
    /// [`chunk`](StreamManager::chunk).
    fn chunk_buffer(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, String> {
        self.chunk(client, chunk).map(ManagedBuffer::Memory)
    }

    /// The named stream as a [`ManagedBuffer`]: override to serve file segments, which are
    /// sent without copying (see [`ManagedBuffer`]). Defaults to
    /// [`open_stream`](StreamManager::open_stream).
    fn open_stream_buffer(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, String> {
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

struct State {
    next_stream_id: u64,
    streams: HashMap<u64, Registered>,
}

struct Registered {
    app_id: String,
    buffers: std::collections::VecDeque<Bytes>,
    next_chunk: u32,
    owner: Option<u64>,
}

impl OneForOneStreamManager {
    /// A manager whose stream ids start at `first_stream_id` (Spark starts at a random
    /// number, so ids from a restarted server do not collide with old ones).
    pub fn new(first_stream_id: u64) -> Self {
        Self {
            state: Mutex::new(State {
                next_stream_id: first_stream_id,
                streams: HashMap::new(),
            }),
        }
    }

    /// Registers `buffers` as a stream of chunks for application `app_id`, returning its id.
    /// With an `owner`, the stream is released when that connection closes.
    pub fn register_stream(
        &self,
        app_id: &str,
        buffers: Vec<Bytes>,
        owner: Option<&TransportClient>,
    ) -> u64 {
        let mut s = lock(&self.state);
        let id = s.next_stream_id;
        s.next_stream_id = s.next_stream_id.wrapping_add(1);
        s.streams.insert(
            id,
            Registered {
                app_id: app_id.to_owned(),
                buffers: buffers.into(),
                next_chunk: 0,
                owner: owner.map(TransportClient::id),
            },
        );
        id
    }

    /// Streams registered and not yet released.
    pub fn registered(&self) -> usize {
        lock(&self.state).streams.len()
    }

    /// The application a stream was registered for.
    pub fn app_id(&self, stream_id: u64) -> Option<String> {
        lock(&self.state)
            .streams
            .get(&stream_id)
            .map(|r| r.app_id.clone())
    }
}

impl StreamManager for OneForOneStreamManager {
    fn chunk(&self, _client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, String> {
        let mut s = lock(&self.state);
        let Some(stream) = s.streams.get_mut(&chunk.stream_id) else {
            return Err(chunk_stream_closed(chunk.stream_id));
        };
        if chunk.chunk_index != stream.next_chunk {
            return Err(format!(
                "Received out-of-order chunk index {} (expected {})",
                chunk.chunk_index, stream.next_chunk
            ));
        }
        let Some(buffer) = stream.buffers.pop_front() else {
            return Err(format!(
                "Requested chunk index beyond end {}",
                chunk.chunk_index
            ));
        };
        stream.next_chunk += 1;
        if stream.buffers.is_empty() {
            s.streams.remove(&chunk.stream_id);
        }
        Ok(buffer)
    }

    fn connection_closed(&self, client: &TransportClient) {
        lock(&self.state)
            .streams
            .retain(|_, r| r.owner != Some(client.id()));
    }
}

impl fmt::Debug for OneForOneStreamManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneForOneStreamManager")
            .field("registered", &self.registered())
            .finish()
    }
}
