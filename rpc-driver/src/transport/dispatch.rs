//! Server dispatch: hands the requests a connection receives to its [`RpcHandler`] (on the
//! driver task, outside the lock), serves chunks and streams from its [`StreamManager`],
//! feeds uploads to their sinks, and fails what a panicking handler leaves unanswered.
//!
//! [`StreamManager`]: super::stream::StreamManager

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use rpc_proto::{ConnectionError, Event, RequestId, StreamChunkId};
use tracing::{debug, trace, warn};

use super::buffer::{FileSegment, ManagedBuffer};
use super::client::TransportClient;
use super::handler::{RpcHandler, UploadSink};
use super::merged::MergedBlockMetaRequest;
use super::registry::Registry;
use super::responder::{MergedBlockMetaResponder, RpcResponder, IN_HANDLER};
use super::state::ConnState;
use super::stream::{chunk_stream_closed, stream_not_found};
use crate::log_limit::limited;
use crate::sync::lock;

// Handles on trait objects (runtime, handler) are std `Arc`s even under loom: loom's `Arc`
// cannot coerce to `dyn`, and they are not state the loom models need to see.
use crate::sync::unmodeled::Arc as StdArc;

/// The failure a merged-block-meta request gets from a handler without a
/// [`MergedBlockMetaReqHandler`](super::handler::MergedBlockMetaReqHandler).
const UNSERVED: &str = "this peer serves no merged block metadata";

/// Answers a chunk fetch with its bytes or why there are none.
pub(super) fn respond_chunk(
    st: &mut ConnState,
    now: Instant,
    chunk: StreamChunkId,
    served: Result<Bytes, String>,
) {
    let sent = match served {
        Ok(body) => st.conn.respond_chunk(now, chunk, body),
        Err(error) => st.conn.respond_chunk_failure(now, chunk, &error),
    };
    if let Err(error) = sent {
        // Too large for a frame: tell the peer rather than leave it waiting.
        let _ = st
            .conn
            .respond_chunk_failure(now, chunk, &error.to_string());
    }
}

/// What a panicking handler leaves to be failed.
enum FailOnPanic {
    Nothing,
    Chunk(StreamChunkId),
    Stream(rpc_proto::InboundStreamId, String),
    Upload(RequestId),
}

impl FailOnPanic {
    fn of(event: &Event) -> Self {
        match event {
            Event::ChunkFetchReceived { chunk } => Self::Chunk(*chunk),
            Event::StreamRequested { request, stream_id } => {
                Self::Stream(*request, stream_id.clone())
            }
            Event::UploadReceived { request, .. } | Event::UploadData { request, .. } => {
                Self::Upload(*request)
            }
            _ => Self::Nothing,
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// What the driver hands inbound requests to, and the work they leave it: file bodies to
/// write (of streams and of chunks).
pub(super) struct Dispatcher {
    pub(super) client: TransportClient,
    handler: StdArc<dyn RpcHandler>,
    /// The server's open connections, when this one was accepted by a server.
    pub(super) registry: Option<StdArc<Registry>>,
    /// Uploads being received: their sink, or `None` once refused or failed (the rest of the
    /// body is discarded).
    uploads: HashMap<RequestId, Option<Box<dyn UploadSink>>>,
    /// Bodies sent from files by the driver itself (of stream answers, and of file-backed
    /// chunks), and how far each has got. Their bytes not yet written count in the
    /// connection's [`buffered_bytes`](rpc_proto::Connection::buffered_bytes), so they count
    /// against the send buffer's limit like bytes in memory.
    pub(super) externals: HashMap<rpc_proto::BodyId, (FileSegment, u64)>,
}

impl Dispatcher {
    /// A dispatcher of `client`'s requests to `handler`.
    pub(super) fn new(
        client: TransportClient,
        handler: StdArc<dyn RpcHandler>,
        registry: Option<StdArc<Registry>>,
    ) -> Self {
        Self {
            client,
            handler,
            registry,
            uploads: HashMap::new(),
            externals: HashMap::new(),
        }
    }

    /// Why a data request is refused while the send buffer is over its limit.
    fn too_much_data(&self) -> String {
        format!(
            "too much data being transferred on this connection ({} bytes waiting for the \
             peer to read)",
            self.client.buffered_bytes()
        )
    }

    /// Whether a chunk fetch is refused for lack of room: the send buffer is over its limit,
    /// counting the bytes of file-backed chunks (and stream bodies) not written yet.
    fn chunk_room_exhausted(&self) -> bool {
        lock(&self.client.inner.state).conn.is_send_buffer_full()
    }

    /// Hands inbound requests to the handler, outside the lock.
    pub(super) fn dispatch(&mut self, inbound: &mut Vec<Event>) {
        for event in inbound.drain(..) {
            // A handler that panics fails what it was handling, not the connection.
            let failed = FailOnPanic::of(&event);
            IN_HANDLER.with(|h| *h.borrow_mut() = Some(Vec::new()));
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch_one(event)));
            let dropped = IN_HANDLER
                .with(|h| h.borrow_mut().take())
                .unwrap_or_default();
            if let Err(panic) = outcome {
                let message = format!("the handler panicked: {}", panic_message(&panic));
                warn!(%message, "handler panicked");
                for responder in dropped {
                    let _ = responder.fail(&message);
                }
                self.fail_on_panic(failed, &message);
            }
        }
    }

    /// Answers the request a panicking handler left unanswered.
    fn fail_on_panic(&mut self, failed: FailOnPanic, message: &str) {
        match failed {
            FailOnPanic::Chunk(chunk) => self.client.inner.with_state(|st, now| {
                let _ = st.conn.respond_chunk_failure(now, chunk, message);
            }),
            FailOnPanic::Stream(request, stream_id) => self.client.inner.with_state(|st, now| {
                let _ = st
                    .conn
                    .respond_stream_failure(now, request, &stream_id, message);
            }),
            FailOnPanic::Upload(request) => {
                if let Some(slot) = self.uploads.get_mut(&request) {
                    *slot = None;
                }
                self.client.inner.with_state(|st, now| {
                    let _ = st.conn.respond_rpc_failure(now, request, message);
                });
            }
            FailOnPanic::Nothing => {}
        }
    }

    fn dispatch_one(&mut self, event: Event) {
        {
            match event {
                Event::RpcReceived { request, body } => {
                    let responder = RpcResponder::new(self.client.inner.clone(), request);
                    self.handler.receive(&self.client, body, responder);
                }
                Event::OneWayReceived { body } => self.handler.receive_one_way(&self.client, body),
                Event::MergedBlockMetaRequested {
                    request,
                    app_id,
                    shuffle_id,
                    shuffle_merge_id,
                    reduce_id,
                } => {
                    let responder = RpcResponder::new(self.client.inner.clone(), request);
                    match self.handler.merged_block_meta_req_handler() {
                        Some(handler) => handler.receive_merged_block_meta_req(
                            &self.client,
                            MergedBlockMetaRequest {
                                app_id,
                                shuffle_id,
                                shuffle_merge_id,
                                reduce_id,
                            },
                            MergedBlockMetaResponder::new(responder),
                        ),
                        None => {
                            let _ = responder.fail(UNSERVED);
                        }
                    }
                }
                Event::ChunkFetchReceived { chunk } => {
                    let served = match self.handler.stream_manager() {
                        // Spark's maxChunksBeingTransferred, by bytes: while the send buffer
                        // (with the file-backed chunks not written yet) is over its limit,
                        // fetches are refused (and the chunk is not taken, so the peer can
                        // ask again) instead of queued without bound.
                        Some(_) if self.chunk_room_exhausted() => Err(self.too_much_data()),
                        Some(streams) => streams
                            .chunk_buffer(&self.client, chunk)
                            .map_err(|e| e.to_string()),
                        // No streams at all: Spark's text for an unknown stream's chunk.
                        None => Err(chunk_stream_closed(chunk.stream_id)),
                    };
                    match served {
                        Ok(ManagedBuffer::File(segment)) => {
                            // Written by the driver itself, straight from the file (or
                            // read piece by piece where `sendfile` is unsupported), in the
                            // frame the connection heads it with: never read whole.
                            let externals = &mut self.externals;
                            self.client.inner.with_state(|st, now| {
                                match st.conn.respond_chunk_external(now, chunk, segment.len()) {
                                    Ok(id) => {
                                        if !segment.is_empty() {
                                            externals.insert(id, (segment, 0));
                                        }
                                    }
                                    // Too large for a frame (checked before any byte is
                                    // queued or read): tell the peer rather than leave it
                                    // waiting.
                                    Err(error) => {
                                        let _ = st.conn.respond_chunk_failure(
                                            now,
                                            chunk,
                                            &format!("{chunk}: {error}"),
                                        );
                                    }
                                }
                            });
                        }
                        served => {
                            let served = served
                                .and_then(|b| b.to_bytes().map_err(|e| format!("{chunk}: {e}")));
                            self.client
                                .inner
                                .with_state(|st, now| respond_chunk(st, now, chunk, served));
                        }
                    }
                }
                Event::StreamRequested { request, stream_id } => {
                    let served = match self.handler.stream_manager() {
                        Some(_) if self.client.is_send_buffer_full() => Err(self.too_much_data()),
                        Some(streams) => streams
                            .open_stream_buffer(&self.client, &stream_id)
                            .map_err(|e| e.to_string()),
                        None => Err(stream_not_found(&stream_id)),
                    };
                    let externals = &mut self.externals;
                    self.client.inner.with_state(|st, now| {
                        let buffer = match served {
                            Ok(buffer) => buffer,
                            Err(error) => {
                                let _ = st
                                    .conn
                                    .respond_stream_failure(now, request, &stream_id, &error);
                                return;
                            }
                        };
                        let id =
                            match st
                                .conn
                                .respond_stream(now, request, &stream_id, buffer.len())
                            {
                                Ok(id) => id,
                                Err(error) => {
                                    let _ = st.conn.respond_stream_failure(
                                        now,
                                        request,
                                        &stream_id,
                                        &error.to_string(),
                                    );
                                    return;
                                }
                            };
                        if buffer.is_empty() {
                            return;
                        }
                        match buffer {
                            ManagedBuffer::File(segment) => {
                                // Written by the driver itself, straight from the file.
                                let _ = st.conn.send_body_external(now, id, segment.len());
                                externals.insert(id, (segment, 0));
                            }
                            other => {
                                let bytes = other.to_bytes().unwrap_or_default();
                                let _ = st.conn.send_body(now, id, bytes);
                            }
                        }
                    });
                }
                Event::UploadReceived { request, meta, .. } => {
                    let sink = (self.handler.receive_stream(&self.client, meta))
                        .map_err(|e| e.to_string());
                    if let Err(error) = &sink {
                        self.client.inner.with_state(|st, now| {
                            let _ = st.conn.respond_rpc_failure(now, request, error);
                        });
                    }
                    self.uploads.insert(request, sink.ok());
                }
                Event::UploadData { request, data } => {
                    let Some(slot) = self.uploads.get_mut(&request) else {
                        return;
                    };
                    let Some(sink) = slot else { return };
                    if let Err(error) = sink.on_data(data).map_err(|e| e.to_string()) {
                        // The destination failed: tell the uploader now, discard the rest.
                        if let Some(sink) = slot.take() {
                            sink.on_failure(&error);
                        }
                        self.client.inner.with_state(|st, now| {
                            let _ = st.conn.respond_rpc_failure(now, request, &error);
                        });
                    }
                }
                Event::UploadFinished { request } => {
                    if let Some(Some(sink)) = self.uploads.remove(&request) {
                        sink.on_complete(RpcResponder::new(self.client.inner.clone(), request));
                    }
                }
                Event::UploadAborted { request, error } => {
                    if let Some(Some(sink)) = self.uploads.remove(&request) {
                        sink.on_failure(&error.to_string());
                    }
                }
                Event::Closed { error } => {
                    match &error {
                        ConnectionError::PeerClosed | ConnectionError::LocallyClosed => {
                            debug!(%error, "connection closed")
                        }
                        // Peers can cause these on purpose (undecodable frames) on
                        // connection after connection: logged at a bounded rate, counted
                        // in `ServerStats`.
                        _ => limited!(warn, %error, "connection failed"),
                    }
                    if let Some(registry) = &self.registry {
                        lock(registry).remove(&self.client.id());
                    }
                    if let Some(streams) = self.handler.stream_manager() {
                        streams.connection_closed(&self.client);
                    }
                    self.handler.connection_closed(&self.client, &error);
                }
                other => trace!(event = ?other, "event not handled by the transport layer"),
            }
        }
    }
}
