//! The owed-answer tables: requests the peer made that this side still owes an answer to.
//!
//! RPCs, uploads and merged-block-meta requests are owed by [`RequestId`], chunk fetches by
//! [`StreamChunkId`] (the peer may ask for the same chunk more than once), stream requests
//! by their place in the order they came in: Spark matches stream answers by order, so an
//! answer given early waits here until the earlier ones are given.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::error::CallError;
use crate::frame::Frame;
use crate::id::{BodyId, InboundStreamId, RequestId, StreamChunkId};

/// A stream request of the peer, and its answer once given: the frame, and the body that
/// follows it, if any.
struct OwedStream {
    id: InboundStreamId,
    answer: Option<(Frame, Option<BodyId>)>,
}

/// Answers this side owes the peer.
#[derive(Default)]
pub(super) struct Owed {
    // Keyed by ids the peer chose: the default (keyed) hasher.
    requests: HashSet<RequestId>,
    chunks: HashMap<StreamChunkId, u32>,
    /// The sum of `chunks`' counts.
    chunk_count: usize,
    /// Stream requests in the order they came in, from the oldest unsent answer.
    streams: VecDeque<OwedStream>,
    next_stream: u64,
    /// Bodies of stream answers given, while the send queue may still hold them.
    answer_bodies: Vec<BodyId>,
}

impl Owed {
    /// The peer sent a request with id `request`.
    pub(super) fn owe_request(&mut self, request: RequestId) {
        self.requests.insert(request);
    }

    /// Refuses to answer a request that is not owed.
    pub(super) fn check_request(&self, request: RequestId) -> Result<(), CallError> {
        if !self.requests.contains(&request) {
            return Err(CallError::UnknownRequest(request));
        }
        Ok(())
    }

    /// The request was answered.
    pub(super) fn settle_request(&mut self, request: RequestId) {
        self.requests.remove(&request);
    }

    /// The peer asked for `chunk` (once more).
    pub(super) fn owe_chunk(&mut self, chunk: StreamChunkId) {
        *self.chunks.entry(chunk).or_default() += 1;
        self.chunk_count += 1;
    }

    /// Refuses to answer a chunk fetch that is not owed.
    pub(super) fn check_chunk(&self, chunk: StreamChunkId) -> Result<(), CallError> {
        if !self.chunks.contains_key(&chunk) {
            return Err(CallError::UnknownChunkFetch(chunk));
        }
        Ok(())
    }

    /// One fetch of `chunk` was answered.
    pub(super) fn settle_chunk(&mut self, chunk: StreamChunkId) {
        if let Some(n) = self.chunks.get_mut(&chunk) {
            *n -= 1;
            self.chunk_count -= 1;
            if *n == 0 {
                self.chunks.remove(&chunk);
            }
        }
    }

    /// The peer asked for a stream: the id that names its answer. `answer` is given at once
    /// for a request refused on arrival.
    pub(super) fn owe_stream(&mut self, answer: Option<Frame>) -> InboundStreamId {
        let id = InboundStreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.push_back(OwedStream {
            id,
            answer: answer.map(|frame| (frame, None)),
        });
        id
    }

    /// Refuses to answer a stream request that is not owed or already answered.
    pub(super) fn check_stream(&self, request: InboundStreamId) -> Result<(), CallError> {
        self.stream_index(request).map(|_| ())
    }

    fn stream_index(&self, request: InboundStreamId) -> Result<usize, CallError> {
        let unknown = CallError::UnknownStreamRequest(request);
        let front = self.streams.front().ok_or(unknown.clone())?;
        let index = request
            .0
            .checked_sub(front.id.0)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.streams.len())
            .ok_or(unknown.clone())?;
        if self.streams[index].answer.is_some() {
            return Err(unknown);
        }
        Ok(index)
    }

    /// Gives the answer to a stream request (checked with [`Owed::check_stream`]): `frame`,
    /// then `body` if it has one. `sending` says whether the send queue still holds a body.
    pub(super) fn answer_stream(
        &mut self,
        request: InboundStreamId,
        frame: Frame,
        body: Option<BodyId>,
        sending: impl Fn(BodyId) -> bool,
    ) -> Result<(), CallError> {
        let index = self.stream_index(request)?;
        if let Some(body) = body {
            self.answer_bodies.retain(|&b| sending(b));
            self.answer_bodies.push(body);
        }
        self.streams[index].answer = Some((frame, body));
        Ok(())
    }

    /// The next stream answer that may go out now (every earlier one has gone), removed.
    pub(super) fn pop_stream_answer(&mut self) -> Option<(Frame, Option<BodyId>)> {
        if self.streams.front().is_some_and(|s| s.answer.is_some()) {
            self.streams.pop_front()?.answer
        } else {
            None
        }
    }

    /// Requests (RPCs, uploads, merged-block-meta requests, chunk fetches) not answered yet.
    pub(super) fn pending_requests(&self) -> usize {
        self.requests.len() + self.chunk_count
    }

    /// Stream requests waiting for their answer to go out, answered or not.
    pub(super) fn waiting_streams(&self) -> usize {
        self.streams.len()
    }

    /// Stream requests not answered yet or whose answer's body is still being sent;
    /// `sending` says whether the send queue still holds a body.
    pub(super) fn pending_streams(&self, sending: impl Fn(BodyId) -> bool) -> usize {
        self.streams.len() + self.answer_bodies.iter().filter(|&&b| sending(b)).count()
    }

    /// Whether nothing is owed (bodies still being sent aside).
    pub(super) fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.chunks.is_empty() && self.streams.is_empty()
    }

    /// Forgets every debt (the connection ended).
    pub(super) fn clear(&mut self) {
        self.requests.clear();
        self.chunks.clear();
        self.chunk_count = 0;
        self.streams.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: u8) -> Frame {
        Frame::StreamFailure {
            stream_id: n.to_string(),
            error: String::new(),
        }
    }

    #[test]
    fn a_request_is_owed_until_settled() {
        let mut owed = Owed::default();
        assert!(owed.is_empty());
        owed.owe_request(RequestId(7));
        assert_eq!(owed.check_request(RequestId(7)), Ok(()));
        assert_eq!(
            owed.check_request(RequestId(8)),
            Err(CallError::UnknownRequest(RequestId(8)))
        );
        assert_eq!(owed.pending_requests(), 1);
        owed.settle_request(RequestId(7));
        assert_eq!(
            owed.check_request(RequestId(7)),
            Err(CallError::UnknownRequest(RequestId(7)))
        );
        assert!(owed.is_empty());
    }

    #[test]
    fn a_chunk_asked_for_twice_is_owed_twice() {
        let mut owed = Owed::default();
        let chunk = StreamChunkId::new(3, 4);
        owed.owe_chunk(chunk);
        owed.owe_chunk(chunk);
        assert_eq!(owed.pending_requests(), 2);
        owed.settle_chunk(chunk);
        assert_eq!(owed.check_chunk(chunk), Ok(()));
        assert_eq!(owed.pending_requests(), 1);
        owed.settle_chunk(chunk);
        assert_eq!(
            owed.check_chunk(chunk),
            Err(CallError::UnknownChunkFetch(chunk))
        );
        owed.settle_chunk(chunk);
        assert_eq!(owed.pending_requests(), 0);
        assert!(owed.is_empty());
    }

    #[test]
    fn stream_answers_go_out_in_request_order() {
        let mut owed = Owed::default();
        let a = owed.owe_stream(None);
        let b = owed.owe_stream(None);
        let c = owed.owe_stream(Some(answer(2)));
        assert_eq!(
            owed.check_stream(c),
            Err(CallError::UnknownStreamRequest(c))
        );
        owed.answer_stream(b, answer(1), None, |_| false).unwrap();
        assert_eq!(owed.pop_stream_answer(), None);
        assert_eq!(
            owed.answer_stream(b, answer(1), None, |_| false),
            Err(CallError::UnknownStreamRequest(b))
        );
        owed.answer_stream(a, answer(0), Some(BodyId(9)), |_| false)
            .unwrap();
        let popped: Vec<_> = std::iter::from_fn(|| owed.pop_stream_answer()).collect();
        assert_eq!(
            popped,
            [
                (answer(0), Some(BodyId(9))),
                (answer(1), None),
                (answer(2), None)
            ]
        );
        // Gone: no longer owed.
        assert_eq!(
            owed.check_stream(a),
            Err(CallError::UnknownStreamRequest(a))
        );
        assert!(owed.is_empty());
    }

    #[test]
    fn a_stream_is_pending_while_its_answer_body_is_sent() {
        let mut owed = Owed::default();
        let a = owed.owe_stream(None);
        assert_eq!(owed.pending_streams(|_| true), 1);
        owed.answer_stream(a, answer(0), Some(BodyId(1)), |_| true)
            .unwrap();
        assert!(owed.pop_stream_answer().is_some());
        assert_eq!(owed.waiting_streams(), 0);
        assert_eq!(owed.pending_streams(|b| b == BodyId(1)), 1);
        assert_eq!(owed.pending_streams(|_| false), 0);
    }

    #[test]
    fn clear_forgets_every_debt() {
        let mut owed = Owed::default();
        owed.owe_request(RequestId(1));
        owed.owe_chunk(StreamChunkId::new(1, 1));
        let s = owed.owe_stream(None);
        owed.clear();
        assert!(owed.is_empty());
        assert_eq!(owed.pending_requests(), 0);
        assert_eq!(
            owed.check_stream(s),
            Err(CallError::UnknownStreamRequest(s))
        );
        // Ids are not reused.
        assert_ne!(owed.owe_stream(None), s);
    }
}
