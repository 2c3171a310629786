//! What the peer sent: decoded frames and body pieces routed to the tables they concern,
//! and turned into events.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use super::failure::{stream_failure, too_many_requests, too_many_streams};
use super::outbound::{RequestKind, StreamMatch};
use super::{Connection, Event, Receiving};
use crate::error::{ConnectionError, RequestError};
use crate::frame::{Decoded, Frame, MessageType};
use crate::id::{Call, RequestId, StreamCallId, StreamChunkId};

impl Connection {
    pub(super) fn on_decoded(&mut self, item: Decoded) {
        match item {
            Decoded::Frame(frame) => {
                self.stats.frames_received += 1;
                self.on_frame(frame);
            }
            Decoded::Body { data, remaining } => self.on_body(data, remaining),
        }
    }

    fn on_body(&mut self, data: Bytes, remaining: u64) {
        match self.receiving {
            Some(Receiving::Stream) => {
                if let Some(stream) = self.outbound.stream_body() {
                    if !data.is_empty() {
                        self.events.push_back(Event::StreamData { stream, data });
                    }
                }
                if remaining == 0 {
                    self.receiving = None;
                    if let Some(stream) = self.outbound.finish_stream_body() {
                        self.events.push_back(Event::StreamFinished { stream });
                    }
                }
            }
            Some(Receiving::Upload(request)) => {
                if !data.is_empty() {
                    self.events.push_back(Event::UploadData { request, data });
                }
                if remaining == 0 {
                    self.receiving = None;
                    self.events.push_back(Event::UploadFinished { request });
                }
            }
            Some(Receiving::Discard) | None => {
                // The bytes of a refused upload: discarded.
                if remaining == 0 {
                    self.receiving = None;
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let ty = frame.message_type();
        let full = self.pending_requests() >= self.config.max_pending_requests();
        match frame {
            Frame::RpcRequest { request, .. } | Frame::MergedBlockMetaRequest { request, .. }
                if full =>
            {
                let error = too_many_requests(&self.config);
                self.refuse(Frame::RpcFailure { request, error });
            }
            Frame::UploadStream {
                request,
                byte_count,
                ..
            } if full => {
                let error = too_many_requests(&self.config);
                self.refuse(Frame::RpcFailure { request, error });
                if byte_count > 0 {
                    self.receiving = Some(Receiving::Discard);
                }
            }
            Frame::ChunkFetchRequest { chunk } if full => {
                let error = too_many_requests(&self.config);
                self.refuse(Frame::ChunkFetchFailure { chunk, error });
            }
            Frame::StreamRequest { .. }
                if self.owed.waiting_streams() >= 2 * self.config.max_pending_streams() =>
            {
                // Refusals wait in line behind an answer that does not come: the peer keeps
                // asking regardless, and holding its refusals would grow without bound.
                let limit = 2 * self.config.max_pending_streams() as u64;
                self.recv = BytesMut::new();
                self.send.clear();
                self.fail_all(ConnectionError::OverBudget {
                    budget: "stream requests waiting for an answer",
                    used: limit + 1,
                    limit,
                });
            }
            Frame::StreamRequest { stream_id }
                if self.pending_streams() >= self.config.max_pending_streams() =>
            {
                // Answered in its place in the order, like any stream answer.
                let error = too_many_streams(&self.config);
                let frame = stream_failure(&self.config, &stream_id, &error);
                self.stats.refused_requests += 1;
                debug!("refusing a stream request: too many pending");
                self.owed.owe_stream(Some(frame));
                self.flush_stream_answers(self.last_activity);
            }
            Frame::RpcRequest { request, body } => {
                self.owed.owe_request(request);
                self.events.push_back(Event::RpcReceived { request, body });
            }
            Frame::OneWayMessage { body } => {
                self.events.push_back(Event::OneWayReceived { body });
            }
            Frame::ChunkFetchRequest { chunk } => {
                self.owed.owe_chunk(chunk);
                self.events.push_back(Event::ChunkFetchReceived { chunk });
            }
            Frame::StreamRequest { stream_id } => {
                let request = self.owed.owe_stream(None);
                self.events
                    .push_back(Event::StreamRequested { request, stream_id });
            }
            Frame::UploadStream {
                request,
                meta,
                byte_count,
            } => {
                self.owed.owe_request(request);
                self.events.push_back(Event::UploadReceived {
                    request,
                    meta,
                    byte_count,
                });
                if byte_count > 0 {
                    self.receiving = Some(Receiving::Upload(request));
                } else {
                    self.events.push_back(Event::UploadFinished { request });
                }
            }
            Frame::MergedBlockMetaRequest {
                request,
                app_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
            } => {
                self.owed.owe_request(request);
                self.events.push_back(Event::MergedBlockMetaRequested {
                    request,
                    app_id,
                    shuffle_id,
                    shuffle_merge_id,
                    reduce_id,
                });
            }
            Frame::RpcResponse { request, body } => match self.take_request(request, ty) {
                Some(kind @ (RequestKind::Rpc | RequestKind::Upload)) => {
                    let call = kind.call(request);
                    self.events.push_back(Event::ReplyReceived { call, body });
                }
                Some(kind) => {
                    self.unexpected(kind.call(request), "a merged block meta request", ty)
                }
                None => {}
            },
            Frame::MergedBlockMetaSuccess {
                request,
                chunk_count,
                body,
            } => match self.take_request(request, ty) {
                Some(RequestKind::MergedBlockMeta) => {
                    self.events.push_back(Event::MergedBlockMetaReceived {
                        request,
                        chunk_count,
                        body,
                    });
                }
                Some(kind) => self.unexpected(kind.call(request), "an rpc or upload", ty),
                None => {}
            },
            Frame::RpcFailure { request, error } => {
                if let Some(kind) = self.take_request(request, ty) {
                    self.fail(kind.call(request), RequestError::Remote(Arc::from(error)));
                }
            }
            Frame::ChunkFetchSuccess { chunk, body } => {
                if self.take_chunk(chunk, ty) {
                    self.events.push_back(Event::ChunkReceived { chunk, body });
                }
            }
            Frame::ChunkFetchFailure { chunk, error } => {
                if self.take_chunk(chunk, ty) {
                    self.fail(
                        Call::ChunkFetch(chunk),
                        RequestError::Remote(Arc::from(error)),
                    );
                }
            }
            Frame::StreamResponse {
                stream_id,
                byte_count,
            } => {
                let found = self.outbound.answer_stream(byte_count);
                if byte_count > 0 {
                    self.receiving = Some(Receiving::Stream);
                }
                if let Some(stream) = self.matched_stream(found, ty, &stream_id) {
                    self.events
                        .push_back(Event::StreamOpened { stream, byte_count });
                    if byte_count == 0 {
                        self.events.push_back(Event::StreamFinished { stream });
                    }
                }
            }
            Frame::StreamFailure { stream_id, error } => {
                let found = self.outbound.fail_stream();
                if let Some(stream) = self.matched_stream(found, ty, &stream_id) {
                    self.fail(Call::Stream(stream), RequestError::Remote(Arc::from(error)));
                }
            }
        }
    }

    /// Refuses a request of the peer at once (too many pending): queued without an event.
    fn refuse(&mut self, frame: Frame) {
        self.stats.refused_requests += 1;
        debug!(message_type = ?frame.message_type(), "refusing a request: too many pending");
        self.send.push_frame(&frame);
    }

    fn take_request(&mut self, request: RequestId, ty: MessageType) -> Option<RequestKind> {
        let kind = self.outbound.take_request(request);
        if kind.is_none() {
            self.unmatched(ty, &request);
        }
        kind
    }

    fn take_chunk(&mut self, chunk: StreamChunkId, ty: MessageType) -> bool {
        let found = self.outbound.take_chunk_fetch(chunk);
        if !found {
            self.unmatched(ty, &chunk);
        }
        found
    }

    /// The live stream call a stream reply answers, counting a reply that answers none.
    fn matched_stream(
        &mut self,
        found: StreamMatch,
        ty: MessageType,
        stream_id: &str,
    ) -> Option<StreamCallId> {
        match found {
            StreamMatch::Live(stream) => Some(stream),
            StreamMatch::Gone => {
                self.stats.unmatched_replies += 1;
                None
            }
            StreamMatch::Unmatched => {
                self.unmatched(ty, &stream_id);
                None
            }
        }
    }

    fn unmatched(&mut self, ty: MessageType, id: &dyn std::fmt::Debug) {
        self.stats.unmatched_replies += 1;
        // A peer can send these on purpose, as many as it likes: counted, logged at debug
        // level only, so they cannot flood the log.
        debug!(message_type = ?ty, id = ?id, "dropping a reply that matches no outstanding call");
    }

    fn unexpected(&mut self, call: Call, expected: &'static str, got: MessageType) {
        self.fail(call, RequestError::UnexpectedReply { expected, got });
    }
}
