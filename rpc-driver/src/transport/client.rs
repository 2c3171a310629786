//! The handle on one connection: Spark's `TransportClient`, which starts calls and sends
//! messages.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::Stream;
use rpc_proto::{Call, CallError, ConnectionError, StreamChunkId};

use super::call::{MergedBlockMetaCall, Pending, RpcCall};
use super::feeder::feed_body;
use super::id::ConnectionId;
use super::merged::MergedBlockMetaRequest;
use super::ready::Ready;
use super::state::{CallSlot, ConnInner, StreamSlot};
use super::stream_call::StreamCall;
use crate::completion;
use crate::sync::{lock, Arc};
use crate::wait_list::WaitKey;

/// A handle on one connection: Spark's `TransportClient`. Cheap to clone.
///
/// Sends RPCs and one-way messages to the peer. The connection is full duplex: the peer's
/// requests on it go to the [`RpcHandler`](super::handler::RpcHandler) it was opened with.
#[derive(Clone)]
pub struct TransportClient {
    pub(crate) inner: Arc<ConnInner>,
}

impl TransportClient {
    /// Sends an RPC. The reply (or why there is none) is the future's output; with a
    /// `timeout`, the call fails with [`RequestError::TimedOut`](rpc_proto::RequestError::TimedOut)
    /// when it passes. Dropping the future forgets the call; a late reply is discarded.
    pub fn send_rpc(&self, body: Bytes, timeout: Option<Duration>) -> RpcCall {
        self.try_send_rpc_or_return(body, timeout)
            .unwrap_or_else(|(error, _)| RpcCall::refused(error))
    }

    /// Like [`send_rpc`](TransportClient::send_rpc), with a refusal returned at once, and
    /// `body` handed back when the connection has closed, so that the caller can send it
    /// elsewhere without having kept a clone of it (cloning a body made from a `Vec`
    /// allocates). The error is the refusal, with the body when (and only when) it is
    /// [`CallError::Closed`].
    pub(crate) fn try_send_rpc_or_return(
        &self,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<RpcCall, (CallError, Option<Bytes>)> {
        let (id, waiter) = self.inner.with_state(|st, now| {
            if st.conn.is_closed() {
                return Err((CallError::Closed, Some(body)));
            }
            st.start_rpc(now, body, timeout).map_err(|e| (e, None))
        })?;
        Ok(RpcCall::started(&self.inner, Call::Rpc(id), waiter))
    }

    /// Fetches one chunk of a stream the peer registered (Spark's `fetchChunk`). Resolves
    /// to the chunk, or the peer's failure
    /// ([`RequestError::Remote`](rpc_proto::RequestError::Remote)), the timeout, or the
    /// connection's end. A second fetch of a chunk already being fetched on this connection
    /// is refused ([`CallError::DuplicateChunkFetch`]).
    pub fn fetch_chunk(&self, chunk: StreamChunkId, timeout: Option<Duration>) -> RpcCall {
        match self
            .inner
            .with_state(|st, now| st.start_chunk_fetch(now, chunk, timeout))
        {
            Ok(waiter) => RpcCall::started(&self.inner, Call::ChunkFetch(chunk), waiter),
            Err(error) => RpcCall::refused(error),
        }
    }

    /// Asks for the metadata of a push-merged shuffle block (Spark's
    /// `sendMergedBlockMetaReq`). Resolves to the chunk count and the metadata body, or the
    /// peer's failure ([`RequestError::Remote`](rpc_proto::RequestError::Remote); a peer without a
    /// handler for these requests refuses them), the timeout, or the connection's end.
    /// Dropping the future forgets the call; a late reply is discarded.
    pub fn send_merged_block_meta_req(
        &self,
        request: &MergedBlockMetaRequest,
        timeout: Option<Duration>,
    ) -> MergedBlockMetaCall {
        match self
            .inner
            .with_state(|st, now| st.start_merged_block_meta(now, request, timeout))
        {
            Ok((id, waiter)) => MergedBlockMetaCall(Pending::started(
                &self.inner,
                Call::MergedBlockMeta(id),
                waiter,
            )),
            Err(error) => MergedBlockMetaCall(Pending::refused(error)),
        }
    }

    /// Asks for the named stream (Spark's `stream`): its bytes arrive as a [`StreamCall`],
    /// a [`Stream`] of pieces in order, with bounded memory (the connection stops reading
    /// while more than [`STREAM_BUFFER_LIMIT`](super::state::STREAM_BUFFER_LIMIT) bytes
    /// wait for the consumer). The timeout covers the whole stream.
    pub fn stream(&self, stream_id: &str, timeout: Option<Duration>) -> StreamCall {
        let started = self.inner.with_state(|st, now| {
            let id = st.conn.stream(now, stream_id, timeout)?;
            st.streams.insert(id, StreamSlot::default());
            Ok(id)
        });
        match started {
            Ok(id) => StreamCall {
                inner: self.inner.clone(),
                id: Some(id),
                refused: None,
            },
            Err(error) => StreamCall {
                inner: self.inner.clone(),
                id: None,
                refused: Some(error),
            },
        }
    }

    /// Uploads `byte_count` bytes from `body` with `meta` (Spark's `uploadStream`). The body
    /// is fed from a task of the runtime, no faster than the socket takes it. Resolves to the
    /// peer's reply.
    ///
    /// The announced size is a promise to the peer: if `body` ends early or runs long, the
    /// stream cannot be resynchronised and the connection is closed
    /// ([`ConnectionError::BodyAborted`]). Nothing else is written on this connection until
    /// the body is complete.
    pub fn upload_stream<S>(
        &self,
        meta: Bytes,
        byte_count: u64,
        body: S,
        timeout: Option<Duration>,
    ) -> RpcCall
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let started = self.inner.with_state(|st, now| {
            let (request, body) = st.conn.upload_stream(now, meta, byte_count, timeout)?;
            let (completer, waiter) = completion::pair();
            st.calls
                .insert(Call::Upload(request), CallSlot::Body(completer));
            Ok((request, body, waiter))
        });
        let (request, body_id, waiter) = match started {
            Ok(started) => started,
            Err(error) => return RpcCall::refused(error),
        };
        let inner = self.inner.clone();
        self.inner
            .rt
            .spawn(Box::pin(feed_body(inner, body_id, byte_count, body)));
        RpcCall::started(&self.inner, Call::Upload(request), waiter)
    }

    /// Sends a one-way message. It is queued for the socket when this returns; delivery is
    /// not confirmed.
    pub fn send(&self, body: Bytes) -> Result<(), CallError> {
        self.send_or_return(body).map_err(|(error, _)| error)
    }

    /// Like [`send`](TransportClient::send), handing `body` back when the connection has
    /// closed (see [`try_send_rpc_or_return`](TransportClient::try_send_rpc_or_return)).
    pub(crate) fn send_or_return(&self, body: Bytes) -> Result<(), (CallError, Option<Bytes>)> {
        self.inner.with_state(|st, now| {
            if st.conn.is_closed() {
                return Err((CallError::Closed, Some(body)));
            }
            st.conn.send_one_way(now, body).map_err(|e| (e, None))
        })
    }

    /// Waits until the send buffer has room: at once if a call would be accepted now, else
    /// once the buffer has drained below half of
    /// [`Config::max_send_buffer`](rpc_proto::Config::max_send_buffer). How a writer is
    /// backpressured by a peer that reads slowly:
    ///
    /// ```no_run
    /// # async fn demo(client: rpc_driver::transport::TransportClient) -> Result<(), rpc_driver::rpc_proto::CallError> {
    /// for i in 0..1_000_000u32 {
    ///     client.ready().await?;
    ///     client.send(i.to_be_bytes().to_vec().into())?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`CallError::Closed`] if the connection ends.
    pub fn ready(&self) -> Ready {
        Ready {
            inner: self.inner.clone(),
            key: WaitKey::default(),
        }
    }

    /// Closes the connection. Pending calls fail with
    /// [`ConnectionError::LocallyClosed`]; what was already queued is still written.
    pub fn close(&self) {
        self.inner.with_state(|st, now| st.conn.close(now));
    }

    /// Whether the connection is still open.
    pub fn is_active(&self) -> bool {
        !lock(&self.inner.state).conn.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        lock(&self.inner.state).conn.close_reason().cloned()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.inner.addrs.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.addrs.local
    }

    /// A number naming this connection in logs, unique in the process.
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }

    /// The app id this connection authenticated as (Spark's `getClientId`): on a connection
    /// with [`Security`](crate::security::Security), the id the client presented and proved
    /// it holds the secret of; `None` on a connection without authentication.
    pub fn client_id(&self) -> Option<&str> {
        self.inner.client_id.as_deref()
    }

    /// Whether new calls would be refused with [`CallError::SendBufferFull`] now.
    pub fn is_send_buffer_full(&self) -> bool {
        lock(&self.inner.state).conn.is_send_buffer_full()
    }

    /// Stream body bytes this side sent straight from files with `sendfile` (zero-copy).
    pub fn zero_copy_bytes(&self) -> u64 {
        self.inner.zero_copy.load(Ordering::Relaxed)
    }

    /// Bytes of streams received but not yet taken by their [`StreamCall`]s (bounded by
    /// about [`STREAM_BUFFER_LIMIT`](super::state::STREAM_BUFFER_LIMIT) plus one read).
    pub fn pending_stream_bytes(&self) -> usize {
        lock(&self.inner.state).stream_buffered
    }

    /// Bytes buffered for sending, not yet written to the socket.
    pub fn buffered_bytes(&self) -> u64 {
        lock(&self.inner.state).conn.buffered_bytes()
    }

    /// The send buffer's limit ([`Config::max_send_buffer`](rpc_proto::Config::max_send_buffer)).
    pub(crate) fn max_send_buffer(&self) -> u64 {
        lock(&self.inner.state).conn.config().max_send_buffer()
    }

    /// The connection's counters.
    pub fn stats(&self) -> rpc_proto::ConnectionStats {
        lock(&self.inner.state).conn.stats()
    }
}

impl PartialEq for TransportClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for TransportClient {}

impl fmt::Debug for TransportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClient")
            .field("id", &self.inner.id)
            .field("local", &self.inner.addrs.local)
            .field("peer", &self.inner.addrs.peer)
            .finish()
    }
}
