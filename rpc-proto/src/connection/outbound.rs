//! The outbound call tables: calls this side made and waits on, matched to the peer's
//! replies, with their deadlines.
//!
//! RPCs, uploads and merged-block-meta requests are keyed by [`RequestId`], chunk fetches by
//! [`StreamChunkId`], stream requests by order (Spark's stream replies carry no id). The
//! tables know nothing of frames or events: they answer "which call does this reply end"
//! and "which calls are due", and the connection turns that into events.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::timer::{Timer, Timers};
use crate::id::{Call, RequestId, StreamCallId, StreamChunkId};

/// What a request-id-keyed call is, so a reply can be checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestKind {
    Rpc,
    Upload,
    MergedBlockMeta,
}

impl RequestKind {
    /// The call named by this kind and `id`.
    pub(super) fn call(self, id: RequestId) -> Call {
        match self {
            Self::Rpc => Call::Rpc(id),
            Self::Upload => Call::Upload(id),
            Self::MergedBlockMeta => Call::MergedBlockMeta(id),
        }
    }
}

/// What a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKey {
    Request(RequestId),
    Chunk(StreamChunkId),
    Stream(StreamCallId),
}

struct PendingRequest {
    kind: RequestKind,
    timer: Option<Timer>,
}

/// A stream call in the reply order.
struct StreamSlot {
    id: StreamCallId,
    /// `None` once the call timed out or was cancelled: the slot stays so that later replies
    /// still line up, and its reply is discarded.
    live: Option<Option<Timer>>,
}

/// The stream call a stream reply answered, as [`Outbound::answer_stream`] and
/// [`Outbound::fail_stream`] find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamMatch {
    /// No stream call was waiting: a bogus reply.
    Unmatched,
    /// The call it answers timed out or was cancelled: the reply is dropped.
    Gone,
    /// The live call it answers.
    Live(StreamCallId),
}

/// Calls this side made and waits on.
pub(super) struct Outbound {
    next_request: u64,
    next_stream: u64,
    // Keyed by ids this side chose (not the peer), so a fast non-keyed hash is safe here.
    requests: FxHashMap<RequestId, PendingRequest>,
    chunk_fetches: FxHashMap<StreamChunkId, Option<Timer>>,
    /// Stream calls not answered yet, oldest first.
    streams: VecDeque<StreamSlot>,
    /// The stream reply whose body is arriving: `Some(None)` when its call is gone (or there
    /// was none) and the bytes are discarded.
    arriving: Option<Option<(StreamCallId, Option<Timer>)>>,
    timers: Timers<TimerKey>,
}

impl Outbound {
    /// Empty tables; request ids start at `first_request` (masked to a non-negative long, as
    /// Spark's are).
    pub(super) fn new(first_request: u64) -> Self {
        Self {
            next_request: first_request & i64::MAX as u64,
            next_stream: 0,
            requests: FxHashMap::default(),
            chunk_fetches: FxHashMap::default(),
            streams: VecDeque::new(),
            arriving: None,
            timers: Timers::default(),
        }
    }

    /// A request id no pending call uses.
    pub(super) fn next_request_id(&mut self) -> RequestId {
        loop {
            let id = RequestId(self.next_request);
            self.next_request = (self.next_request + 1) & i64::MAX as u64;
            if !self.requests.contains_key(&id) {
                return id;
            }
        }
    }

    /// Records a request sent with id `id` (from [`Outbound::next_request_id`]).
    pub(super) fn add_request(
        &mut self,
        now: Instant,
        id: RequestId,
        kind: RequestKind,
        timeout: Option<Duration>,
    ) {
        let timer = self.timers.arm(now, timeout, TimerKey::Request(id));
        self.requests.insert(id, PendingRequest { kind, timer });
    }

    /// Whether a fetch of `chunk` is pending.
    pub(super) fn has_chunk_fetch(&self, chunk: StreamChunkId) -> bool {
        self.chunk_fetches.contains_key(&chunk)
    }

    /// Records a chunk fetch sent; the caller has checked none is pending for `chunk`.
    pub(super) fn add_chunk_fetch(
        &mut self,
        now: Instant,
        chunk: StreamChunkId,
        timeout: Option<Duration>,
    ) {
        let timer = self.timers.arm(now, timeout, TimerKey::Chunk(chunk));
        self.chunk_fetches.insert(chunk, timer);
    }

    /// Records a stream request sent, last in the reply order; returns its id.
    pub(super) fn add_stream(&mut self, now: Instant, timeout: Option<Duration>) -> StreamCallId {
        let id = StreamCallId(self.next_stream);
        self.next_stream += 1;
        let timer = self.timers.arm(now, timeout, TimerKey::Stream(id));
        self.streams.push_back(StreamSlot {
            id,
            live: Some(timer),
        });
        id
    }

    /// Ends the request `id` (a reply or failure arrived): its kind, or `None` if no such
    /// request is pending.
    pub(super) fn take_request(&mut self, id: RequestId) -> Option<RequestKind> {
        let p = self.requests.remove(&id)?;
        self.timers.disarm(p.timer);
        Some(p.kind)
    }

    /// Ends the fetch of `chunk`; whether it was pending.
    pub(super) fn take_chunk_fetch(&mut self, chunk: StreamChunkId) -> bool {
        match self.chunk_fetches.remove(&chunk) {
            Some(timer) => {
                self.timers.disarm(timer);
                true
            }
            None => false,
        }
    }

    /// A stream reply announcing `byte_count` bytes arrived: it answers the oldest stream
    /// call. With bytes to follow, that call's body is arriving (see
    /// [`Outbound::stream_body`]) and its timer keeps running until the last byte; without,
    /// a live call has succeeded.
    pub(super) fn answer_stream(&mut self, byte_count: u64) -> StreamMatch {
        let (found, live) = self.pop_stream();
        if byte_count > 0 {
            self.arriving = Some(live);
        } else if let Some((_, timer)) = live {
            self.timers.disarm(timer);
        }
        found
    }

    /// A stream failure arrived: it ends the oldest stream call.
    pub(super) fn fail_stream(&mut self) -> StreamMatch {
        let (found, live) = self.pop_stream();
        if let Some((_, timer)) = live {
            self.timers.disarm(timer);
        }
        found
    }

    fn pop_stream(&mut self) -> (StreamMatch, Option<(StreamCallId, Option<Timer>)>) {
        match self.streams.pop_front() {
            None => (StreamMatch::Unmatched, None),
            Some(StreamSlot { live: None, .. }) => (StreamMatch::Gone, None),
            Some(StreamSlot {
                id,
                live: Some(timer),
            }) => (StreamMatch::Live(id), Some((id, timer))),
        }
    }

    /// The live stream call whose body is arriving, if any.
    pub(super) fn stream_body(&self) -> Option<StreamCallId> {
        self.arriving.flatten().map(|(id, _)| id)
    }

    /// The arriving stream body is complete: the call it belongs to (if still live) has
    /// succeeded.
    pub(super) fn finish_stream_body(&mut self) -> Option<StreamCallId> {
        let (id, timer) = self.arriving.take().flatten()?;
        self.timers.disarm(timer);
        Some(id)
    }

    /// Forgets a pending call; whether it was pending. A stream call keeps its place in the
    /// reply order, so its reply is recognised and dropped.
    pub(super) fn cancel(&mut self, call: Call) -> bool {
        match call {
            Call::Rpc(id) | Call::Upload(id) | Call::MergedBlockMeta(id) => {
                match self.requests.get(&id) {
                    Some(p) if p.kind.call(id) == call => {
                        self.take_request(id);
                        true
                    }
                    _ => false,
                }
            }
            Call::ChunkFetch(chunk) => self.take_chunk_fetch(chunk),
            Call::Stream(id) => self.abandon_stream(id).is_some(),
        }
    }

    /// Removes the next call whose deadline is at or before `now`: the call and its timeout.
    pub(super) fn pop_expired(&mut self, now: Instant) -> Option<(Call, Duration)> {
        while let Some(key) = self.timers.pop_due(now) {
            let expired = match key {
                TimerKey::Request(id) => self
                    .requests
                    .remove(&id)
                    .map(|p| (p.kind.call(id), p.timer)),
                TimerKey::Chunk(chunk) => self
                    .chunk_fetches
                    .remove(&chunk)
                    .map(|timer| (Call::ChunkFetch(chunk), timer)),
                TimerKey::Stream(id) => self
                    .abandon_stream(id)
                    .map(|timer| (Call::Stream(id), timer)),
            };
            if let Some((call, timer)) = expired {
                return Some((call, timer.map(|t| t.after).unwrap_or_default()));
            }
        }
        None
    }

    /// Marks a live stream call as gone, keeping its place in the reply order. Returns its
    /// timer (disarmed) if it was live.
    fn abandon_stream(&mut self, id: StreamCallId) -> Option<Option<Timer>> {
        let timer = if matches!(self.arriving, Some(Some((live, _))) if live == id) {
            self.arriving
                .as_mut()
                .and_then(Option::take)
                .map(|(_, t)| t)
        } else {
            self.streams
                .iter_mut()
                .find(|s| s.id == id)
                .and_then(|s| s.live.take())
        };
        if let Some(t) = timer {
            self.timers.disarm(t);
        }
        timer
    }

    /// When the next call times out, if any has a timeout.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Calls still waiting for the peer, as Spark counts them: a stream whose body is
    /// arriving counts, even one nobody waits for any more.
    pub(super) fn len(&self) -> usize {
        self.requests.len()
            + self.chunk_fetches.len()
            + self.streams.len()
            + usize::from(self.arriving.is_some())
    }

    /// Empties the tables (the connection ended): the calls that were live, in the order they
    /// are failed (requests by id, chunk fetches by id, then streams in reply order).
    pub(super) fn drain(&mut self) -> Vec<Call> {
        let mut requests: Vec<_> = self.requests.drain().collect();
        requests.sort_by_key(|(id, _)| *id);
        let mut chunks: Vec<_> = self.chunk_fetches.drain().map(|(c, _)| c).collect();
        chunks.sort();
        let arriving = self.arriving.take().flatten().map(|(id, _)| id);
        let streams = std::mem::take(&mut self.streams)
            .into_iter()
            .filter(|s| s.live.is_some())
            .map(|s| s.id);
        self.timers.clear();
        requests
            .into_iter()
            .map(|(id, p)| p.kind.call(id))
            .chain(chunks.into_iter().map(Call::ChunkFetch))
            .chain(arriving.into_iter().chain(streams).map(Call::Stream))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn request_ids_are_non_negative_wrap_and_skip_pending_ones() {
        let now = base();
        let mut t = Outbound::new(u64::MAX);
        let first = t.next_request_id();
        assert_eq!(first, RequestId(i64::MAX as u64));
        t.add_request(now, first, RequestKind::Rpc, None);
        assert_eq!(t.next_request_id(), RequestId(0));
        // Ids wrap round to the pending one: it is skipped.
        let mut t = Outbound::new(5);
        let id = t.next_request_id();
        t.add_request(now, id, RequestKind::Rpc, None);
        t.next_request = 5;
        assert_eq!(t.next_request_id(), RequestId(6));
    }

    #[test]
    fn a_reply_ends_its_request_once_and_says_what_it_was() {
        let now = base();
        let mut t = Outbound::new(0);
        let rpc = t.next_request_id();
        t.add_request(now, rpc, RequestKind::Rpc, Some(SEC));
        let up = t.next_request_id();
        t.add_request(now, up, RequestKind::Upload, None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.take_request(up), Some(RequestKind::Upload));
        assert_eq!(t.take_request(rpc), Some(RequestKind::Rpc));
        assert_eq!(t.take_request(rpc), None);
        assert_eq!(t.len(), 0);
        // Its timer went with it.
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.pop_expired(now + 2 * SEC), None);
    }

    #[test]
    fn cancel_needs_the_right_kind_of_call() {
        let now = base();
        let mut t = Outbound::new(0);
        let id = t.next_request_id();
        t.add_request(now, id, RequestKind::Upload, Some(SEC));
        assert!(!t.cancel(Call::Rpc(id)));
        assert!(t.cancel(Call::Upload(id)));
        assert!(!t.cancel(Call::Upload(id)));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn calls_expire_at_their_deadlines_in_order_naming_their_timeouts() {
        let now = base();
        let mut t = Outbound::new(0);
        let chunk = StreamChunkId::new(1, 2);
        t.add_chunk_fetch(now, chunk, Some(2 * SEC));
        let id = t.next_request_id();
        t.add_request(now, id, RequestKind::MergedBlockMeta, Some(SEC));
        let stream = t.add_stream(now, Some(3 * SEC));
        assert_eq!(t.next_deadline(), Some(now + SEC));
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(
            t.pop_expired(now + 2 * SEC),
            Some((Call::MergedBlockMeta(id), SEC))
        );
        assert_eq!(
            t.pop_expired(now + 2 * SEC),
            Some((Call::ChunkFetch(chunk), 2 * SEC))
        );
        assert_eq!(t.pop_expired(now + 2 * SEC), None);
        assert_eq!(
            t.pop_expired(now + 3 * SEC),
            Some((Call::Stream(stream), 3 * SEC))
        );
        assert!(!t.has_chunk_fetch(chunk));
        // The expired stream keeps its place: its late reply is recognised as gone.
        assert_eq!(t.len(), 1);
        assert_eq!(t.answer_stream(0), StreamMatch::Gone);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn stream_replies_match_calls_in_order() {
        let now = base();
        let mut t = Outbound::new(0);
        let a = t.add_stream(now, None);
        let b = t.add_stream(now, None);
        let c = t.add_stream(now, None);
        assert!(t.cancel(Call::Stream(b)));
        assert!(!t.cancel(Call::Stream(b)));
        assert_eq!(t.answer_stream(0), StreamMatch::Live(a));
        assert_eq!(t.fail_stream(), StreamMatch::Gone);
        assert_eq!(t.fail_stream(), StreamMatch::Live(c));
        assert_eq!(t.answer_stream(0), StreamMatch::Unmatched);
    }

    #[test]
    fn a_stream_body_keeps_its_call_and_timer_until_its_last_byte() {
        let now = base();
        let mut t = Outbound::new(0);
        let a = t.add_stream(now, Some(SEC));
        assert_eq!(t.answer_stream(10), StreamMatch::Live(a));
        assert_eq!(t.stream_body(), Some(a));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(now + SEC));
        assert_eq!(t.finish_stream_body(), Some(a));
        assert_eq!(t.stream_body(), None);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_stream_timing_out_mid_body_stays_outstanding_until_the_body_ends() {
        let now = base();
        let mut t = Outbound::new(0);
        let a = t.add_stream(now, Some(SEC));
        t.answer_stream(10);
        assert_eq!(t.pop_expired(now + SEC), Some((Call::Stream(a), SEC)));
        assert_eq!(t.stream_body(), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.finish_stream_body(), None);
        assert_eq!(t.len(), 0);
        // An unmatched reply's body is arriving too, and counted.
        t.answer_stream(3);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn drain_lists_live_calls_in_failure_order_and_disarms_everything() {
        let now = base();
        let mut t = Outbound::new(10);
        let s0 = t.add_stream(now, Some(SEC));
        let s1 = t.add_stream(now, Some(SEC));
        let s2 = t.add_stream(now, Some(SEC));
        t.cancel(Call::Stream(s2));
        let c = StreamChunkId::new(0, 0);
        t.add_chunk_fetch(now, c, Some(SEC));
        let r1 = t.next_request_id();
        let r2 = t.next_request_id();
        t.add_request(now, r2, RequestKind::Upload, Some(SEC));
        t.add_request(now, r1, RequestKind::Rpc, None);
        t.answer_stream(5);
        assert_eq!(
            t.drain(),
            [
                Call::Rpc(r1),
                Call::Upload(r2),
                Call::ChunkFetch(c),
                Call::Stream(s0),
                Call::Stream(s1)
            ]
        );
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
    }
}
