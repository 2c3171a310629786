//! The ordered queue of bytes waiting to be written to the socket.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::error::CallError;
use crate::frame::Frame;
use crate::id::BodyId;

/// In-frame bodies larger than this are queued by reference instead of copied next to their
/// header; the driver writes both with one vectored write.
pub(crate) const COPY_THRESHOLD: usize = 16 * 1024;

/// Small frames are coalesced into one buffer up to about this size.
const COALESCE_LIMIT: usize = 64 * 1024;

enum Item {
    /// Encoded frames, coalesced.
    Buf(BytesMut),
    /// A large in-frame body, sent without copying.
    Shared(Bytes),
    /// An out-of-frame body, fed piece by piece; nothing behind it may be sent before it is.
    Body(BodyId),
}

/// A piece of an out-of-frame body.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Bytes to hand out with `poll_transmit`.
    Data(Bytes),
    /// This many bytes the driver writes itself (from a file, zero-copy).
    External(u64),
}

impl Piece {
    /// Bytes of the body it stands for.
    fn len(&self) -> u64 {
        match self {
            Self::Data(b) => b.len() as u64,
            Self::External(n) => *n,
        }
    }

    /// Bytes held in memory.
    fn held(&self) -> u64 {
        match self {
            Self::Data(b) => b.len() as u64,
            Self::External(_) => 0,
        }
    }

    /// Bytes counted as buffered: in memory, or in a file the driver writes from.
    fn counted(&self) -> u64 {
        match self {
            Self::Data(b) => b.len() as u64,
            Self::External(n) => *n,
        }
    }
}

/// An out-of-frame body being fed by the caller.
#[derive(Debug)]
struct OutBody {
    /// Bytes the caller has still to feed.
    unfed: u64,
    pieces: VecDeque<Piece>,
    /// Whether its place in the send queue has been taken (stream responses wait for earlier
    /// answers).
    queued: bool,
}

/// Frames and bodies in the order they go on the wire.
#[derive(Default)]
pub(crate) struct SendQueue {
    items: VecDeque<Item>,
    bodies: HashMap<BodyId, OutBody>,
    frames: u64,
    /// Every byte held: queued frames, and fed body pieces wherever they wait, file-backed
    /// pieces included (they hold a file open and count against the send buffer's limit).
    buffered: u64,
}

impl SendQueue {
    pub(crate) fn push_frame(&mut self, frame: &Frame) {
        self.frames += 1;
        let large = frame.in_frame_body().filter(|b| b.len() > COPY_THRESHOLD);
        let buf = self.tail_buf();
        let before = buf.len();
        if large.is_some() {
            frame.encode_head(buf);
        } else {
            frame.encode(buf);
        }
        self.buffered += (buf.len() - before) as u64;
        if let Some(body) = large {
            self.buffered += body.len() as u64;
            self.items.push_back(Item::Shared(body.clone()));
        }
    }

    /// Queues the head of `frame` (length, type, header) with a length field counting
    /// `body_len` more bytes of in-frame body than `frame` holds: the caller queues those
    /// bytes right behind it, as a body ([`SendQueue::new_body`]).
    pub(crate) fn push_head(&mut self, frame: &Frame, body_len: u64) {
        self.frames += 1;
        let buf = self.tail_buf();
        let before = buf.len();
        frame.encode_head_with_len(buf, frame.frame_len() + body_len);
        if let Some(body) = frame.in_frame_body() {
            buf.extend_from_slice(body);
        }
        self.buffered += (buf.len() - before) as u64;
    }

    fn tail_buf(&mut self) -> &mut BytesMut {
        if !matches!(self.items.back(), Some(Item::Buf(b)) if b.len() < COALESCE_LIMIT) {
            self.items
                .push_back(Item::Buf(BytesMut::with_capacity(1024)));
        }
        match self.items.back_mut() {
            Some(Item::Buf(b)) => b,
            _ => unreachable!("a buffer was just pushed"),
        }
    }

    /// Registers a body of `len > 0` bytes; it takes its place in the queue at
    /// [`SendQueue::enqueue_body`].
    pub(crate) fn new_body(&mut self, id: BodyId, len: u64) {
        self.bodies.insert(
            id,
            OutBody {
                unfed: len,
                pieces: VecDeque::new(),
                queued: false,
            },
        );
    }

    pub(crate) fn enqueue_body(&mut self, id: BodyId) {
        if let Some(body) = self.bodies.get_mut(&id) {
            body.queued = true;
            self.items.push_back(Item::Body(id));
        }
    }

    pub(crate) fn bodies_unfed(&self, id: BodyId) -> Option<u64> {
        self.bodies.get(&id).map(|b| b.unfed).filter(|&n| n > 0)
    }

    /// Whether the body is still registered (not complete, or not yet sent).
    pub(crate) fn has_body(&self, id: BodyId) -> bool {
        self.bodies.contains_key(&id)
    }

    /// Adds the next piece of a body: refused if the body is unknown or fed in full
    /// already, or if the piece is longer than what is left to feed.
    pub(crate) fn feed(&mut self, id: BodyId, piece: Piece) -> Result<(), CallError> {
        let body = match self.bodies.get_mut(&id) {
            Some(body) if body.unfed > 0 => body,
            _ => return Err(CallError::UnknownBody(id)),
        };
        let len = piece.len();
        if len > body.unfed {
            return Err(CallError::BodyOverrun {
                body: id,
                remaining: body.unfed,
                offered: len,
            });
        }
        body.unfed -= len;
        self.buffered += len;
        if len > 0 {
            body.pieces.push_back(piece);
        }
        if body.unfed == 0 && body.pieces.is_empty() && !body.queued {
            // Complete before it was queued and nothing to send: it is done.
            self.bodies.remove(&id);
        }
        Ok(())
    }

    /// The body bytes the driver must write itself next, if the wire is at them.
    pub(crate) fn external(&self) -> Option<(BodyId, u64)> {
        match self.items.front()? {
            Item::Body(id) => match self.bodies.get(id)?.pieces.front()? {
                Piece::External(n) => Some((*id, *n)),
                Piece::Data(_) => None,
            },
            _ => None,
        }
    }

    /// The driver wrote `n` of the external bytes at the front.
    pub(crate) fn external_written(&mut self, n: u64) {
        let Some(Item::Body(id)) = self.items.front() else {
            return;
        };
        let Some(body) = self.bodies.get_mut(id) else {
            return;
        };
        if let Some(Piece::External(left)) = body.pieces.front_mut() {
            let n = n.min(*left);
            *left -= n;
            self.buffered -= n;
            if *left == 0 {
                body.pieces.pop_front();
            }
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        loop {
            let out = match self.items.front_mut()? {
                Item::Buf(buf) => std::mem::take(buf).freeze(),
                Item::Shared(bytes) => std::mem::take(bytes),
                Item::Body(id) => {
                    let id = *id;
                    let body = self
                        .bodies
                        .get_mut(&id)
                        .expect("queued bodies are registered");
                    match body.pieces.front() {
                        Some(Piece::Data(_)) => {
                            let Some(Piece::Data(piece)) = body.pieces.pop_front() else {
                                unreachable!("just matched")
                            };
                            self.buffered -= piece.len() as u64;
                            return Some(piece);
                        }
                        // The driver writes these itself: see `external`.
                        Some(Piece::External(_)) => return None,
                        None => {}
                    }
                    if body.unfed > 0 {
                        return None; // waiting for the caller to feed it
                    }
                    self.bodies.remove(&id);
                    Bytes::new()
                }
            };
            self.items.pop_front();
            if !out.is_empty() {
                self.buffered -= out.len() as u64;
                return Some(out);
            }
        }
    }

    /// Bytes [`SendQueue::pop`] can hand out now: everything up to the first body still
    /// waiting to be fed, and what has been fed of that body. Bytes behind such a body, and
    /// bodies whose place in the queue is not yet taken, do not count: they cannot move until
    /// the body does, so a driver must not hold the body back because of them.
    pub(crate) fn ready_bytes(&self) -> u64 {
        let mut total = 0;
        for item in &self.items {
            match item {
                Item::Buf(b) => total += b.len() as u64,
                Item::Shared(b) => total += b.len() as u64,
                Item::Body(id) => {
                    let body = &self.bodies[id];
                    total += body.pieces.iter().map(Piece::held).sum::<u64>();
                    if body.unfed > 0 {
                        break;
                    }
                }
            }
        }
        total
    }

    /// Every byte held, whether it can move now or not.
    pub(crate) fn buffered_bytes(&self) -> u64 {
        self.buffered
    }

    /// Frames queued since the connection opened.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops everything from the first body that can no longer complete (one still to be
    /// fed, or `aborted`, fed in full or not), and every body not yet queued: used when the
    /// connection closes locally and only what is whole may still go.
    pub(crate) fn truncate_unfinished(&mut self, aborted: Option<BodyId>) {
        let cut = self.items.iter().position(|item| {
            matches!(item, Item::Body(id)
                if Some(*id) == aborted || self.bodies.get(id).is_some_and(|b| b.unfed > 0))
        });
        if let Some(cut) = cut {
            self.items.truncate(cut);
        }
        let items = &self.items;
        self.bodies
            .retain(|id, _| items.iter().any(|i| matches!(i, Item::Body(b) if b == id)));
        let bodies = &self.bodies;
        self.buffered = self
            .items
            .iter()
            .map(|item| match item {
                Item::Buf(b) => b.len() as u64,
                Item::Shared(b) => b.len() as u64,
                Item::Body(id) => bodies[id].pieces.iter().map(Piece::counted).sum(),
            })
            .sum();
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.bodies.clear();
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut SendQueue) -> Vec<u8> {
        std::iter::from_fn(|| q.pop())
            .flat_map(|b| b.to_vec())
            .collect()
    }

    #[test]
    fn the_body_feeder_refuses_unknown_bodies_and_overruns() {
        let mut q = SendQueue::default();
        let body = BodyId(0);
        assert_eq!(
            q.feed(body, Piece::Data("x".into())),
            Err(CallError::UnknownBody(body))
        );
        q.new_body(body, 4);
        q.enqueue_body(body);
        assert_eq!(
            q.feed(body, Piece::External(5)),
            Err(CallError::BodyOverrun {
                body,
                remaining: 4,
                offered: 5
            })
        );
        q.feed(body, Piece::Data("ab".into())).unwrap();
        assert_eq!(
            q.feed(body, Piece::Data("cde".into())),
            Err(CallError::BodyOverrun {
                body,
                remaining: 2,
                offered: 3
            })
        );
        q.feed(body, Piece::External(2)).unwrap();
        // Fed in full: more is refused, as for an unknown body.
        assert_eq!(
            q.feed(body, Piece::Data(Bytes::new())),
            Err(CallError::UnknownBody(body))
        );
        assert_eq!(q.buffered_bytes(), 4);
        assert_eq!(drain(&mut q), b"ab");
        assert_eq!(q.external(), Some((body, 2)));
        q.external_written(2);
        assert_eq!(q.buffered_bytes(), 0);
        assert_eq!(drain(&mut q), b"");
        assert!(q.is_empty());
        assert!(!q.has_body(body));
    }

    #[test]
    fn a_body_fed_in_full_before_its_turn_waits_for_it() {
        let mut q = SendQueue::default();
        let body = BodyId(3);
        q.new_body(body, 3);
        q.feed(body, Piece::Data("abc".into())).unwrap();
        assert!(q.has_body(body));
        assert_eq!(q.ready_bytes(), 0);
        q.enqueue_body(body);
        assert_eq!(q.ready_bytes(), 3);
        assert_eq!(drain(&mut q), b"abc");
        assert!(!q.has_body(body));
    }
}
