//! One direction of a simulated TCP link: latency, jitter, byte splitting and bandwidth, like
//! Linux netem, but never reordering (TCP delivers bytes in order).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::Rng;

/// How one direction of a link treats the bytes written into it.
///
/// The default is an ideal wire: no latency, no splitting, unlimited bandwidth.
///
/// ```
/// use std::time::Duration;
/// use rpc_tests::Netem;
///
/// let wan = Netem::ideal()
///     .with_latency(Duration::from_millis(40))
///     .with_jitter(Duration::from_millis(5))
///     .with_max_piece(7)
///     .with_bandwidth(1_000_000);
/// assert_eq!(wan.latency(), Duration::from_millis(40));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netem {
    latency: Duration,
    jitter: Duration,
    max_piece: Option<usize>,
    bandwidth: Option<u64>,
}

impl Netem {
    /// An ideal wire: bytes arrive at once, in the buffers they were written in.
    pub fn ideal() -> Self {
        Self::default()
    }

    /// Sets the fixed one-way delay.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the jitter: each piece is delayed by an extra seeded random amount up to this.
    /// Pieces never overtake each other, so jitter stretches gaps but never reorders.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Splits every transmit into pieces of a seeded random size from 1 to `max` bytes, each
    /// delivered with its own `handle_bytes`.
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    pub fn with_max_piece(mut self, max: usize) -> Self {
        assert!(max > 0, "pieces must hold at least one byte");
        self.max_piece = Some(max);
        self
    }

    /// Limits the direction to `bytes_per_second`: pieces queue behind each other on the wire.
    ///
    /// # Panics
    ///
    /// If `bytes_per_second` is zero.
    pub fn with_bandwidth(mut self, bytes_per_second: u64) -> Self {
        assert!(bytes_per_second > 0, "bandwidth must be positive");
        self.bandwidth = Some(bytes_per_second);
        self
    }

    /// The fixed one-way delay.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The largest extra random delay of a piece.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// The largest piece a transmit is split into, if transmits are split.
    pub fn max_piece(&self) -> Option<usize> {
        self.max_piece
    }

    /// The bandwidth in bytes per second, if limited.
    pub fn bandwidth(&self) -> Option<u64> {
        self.bandwidth
    }
}

/// How a side learns that its connection is gone, after a [cut](crate::Sim::cut) or a
/// [crash](crate::Sim::crash) of its peer.
///
/// After a cut, a notice comes exactly `after` the cut (the local network stack notices; no
/// latency applies). After a crash, it travels the link like a FIN or RST: one latency (and
/// jitter) plus `after` later, and never before the bytes the crashed peer wrote earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// It learns nothing: only its own timers can end the connection.
    Silent,
    /// It reads end of file (`handle_closed`) this long after the fault.
    Eof {
        /// Delay after the fault.
        after: Duration,
    },
    /// Its socket fails (`handle_transport_error`) this long after the fault.
    Error {
        /// Delay after the fault.
        after: Duration,
        /// The reason passed to `handle_transport_error`.
        reason: Arc<str>,
    },
}

impl Notice {
    /// End of file, as soon as the bytes already in flight have arrived.
    pub fn eof() -> Self {
        Self::Eof {
            after: Duration::ZERO,
        }
    }

    /// A transport error with `reason`, as soon as the bytes already in flight have arrived.
    pub fn error(reason: &str) -> Self {
        Self::Error {
            after: Duration::ZERO,
            reason: Arc::from(reason),
        }
    }
}

/// Byte counters of one direction of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes written into the direction (accepted by the wire).
    pub sent: u64,
    /// Bytes handed to the receiving connection.
    pub delivered: u64,
    /// Bytes lost: written after the direction ended, or in flight when it was cut.
    pub dropped: u64,
    /// Pieces handed to the receiving connection (calls of `handle_bytes`).
    pub pieces: u64,
}

/// What the wire hands to the receiving side.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Data(Bytes),
    Eof,
    Error(Arc<str>),
}

/// One direction of a link: the bytes in flight, in order.
#[derive(Debug)]
pub(crate) struct Direction {
    pub(crate) netem: Netem,
    queue: VecDeque<(Instant, Payload)>,
    /// When the last queued item arrives: later items never arrive before it.
    last_at: Option<Instant>,
    /// When the wire finishes sending what is queued (bandwidth limit).
    busy_until: Option<Instant>,
    /// No more bytes are accepted: the direction was cut, closed or crashed.
    ended: bool,
    /// Bytes still accepted before the direction closes with end of file.
    fin_after: Option<u64>,
    pub(crate) stats: LinkStats,
}

impl Direction {
    pub(crate) fn new(netem: Netem) -> Self {
        Self {
            netem,
            queue: VecDeque::new(),
            last_at: None,
            busy_until: None,
            ended: false,
            fin_after: None,
            stats: LinkStats::default(),
        }
    }

    /// Writes `bytes` into the wire at `now`.
    pub(crate) fn send(&mut self, now: Instant, mut bytes: Bytes, rng: &mut SmallRng) {
        if self.ended {
            self.stats.dropped += bytes.len() as u64;
            return;
        }
        let mut fin = false;
        if let Some(left) = &mut self.fin_after {
            let keep = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.stats.dropped += (bytes.len() - keep) as u64;
            bytes.truncate(keep);
            *left -= keep as u64;
            fin = *left == 0;
        }
        self.stats.sent += bytes.len() as u64;
        while !bytes.is_empty() {
            let size = match self.netem.max_piece {
                Some(max) => rng.random_range(1..=max.min(bytes.len())),
                None => bytes.len(),
            };
            let piece = bytes.split_to(size);
            self.schedule(now, Duration::ZERO, Payload::Data(piece), rng);
        }
        if fin {
            self.end(now, Duration::ZERO, Payload::Eof, rng);
        }
    }

    /// Accepts `bytes` more bytes, then ends the direction with end of file.
    pub(crate) fn close_after(&mut self, now: Instant, bytes: u64, rng: &mut SmallRng) {
        if bytes == 0 {
            self.end(now, Duration::ZERO, Payload::Eof, rng);
        } else {
            self.fin_after = Some(bytes);
        }
    }

    /// Ends the direction: `last` (end of file or an error) arrives after what is in flight,
    /// at least `after` from now, and nothing more is accepted.
    pub(crate) fn end(&mut self, now: Instant, after: Duration, last: Payload, rng: &mut SmallRng) {
        if self.ended {
            return;
        }
        self.schedule(now, after, last, rng);
        self.ended = true;
    }

    /// Ends the direction without delivering anything more: what is in flight is lost.
    pub(crate) fn cut(&mut self) {
        for (_, payload) in self.queue.drain(..) {
            if let Payload::Data(bytes) = payload {
                self.stats.dropped += bytes.len() as u64;
            }
        }
        // Nothing is in flight any more: a notice is not held back by lost bytes.
        self.last_at = None;
        self.busy_until = None;
        self.ended = true;
    }

    /// Accepts nothing more, without telling the receiver: what is in flight still arrives.
    pub(crate) fn seal(&mut self) {
        self.ended = true;
    }

    /// Schedules a notice after a cut (the queue is empty; `ended` is already set).
    pub(crate) fn notify(&mut self, now: Instant, after: Duration, last: Payload) {
        let at = self.in_order(now + after);
        self.queue.push_back((at, last));
    }

    fn schedule(&mut self, now: Instant, extra: Duration, payload: Payload, rng: &mut SmallRng) {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let departs = match (&payload, self.netem.bandwidth) {
            (Payload::Data(bytes), Some(bw)) => {
                let nanos = (bytes.len() as u128 * 1_000_000_000).div_ceil(u128::from(bw));
                let done = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                self.busy_until = Some(done);
                done
            }
            _ => start,
        };
        let jitter = if self.netem.jitter.is_zero() {
            Duration::ZERO
        } else {
            let max = u64::try_from(self.netem.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rng.random_range(0..=max))
        };
        let at = self.in_order(departs + self.netem.latency + jitter + extra);
        self.queue.push_back((at, payload));
    }

    /// `at`, or later if an earlier item arrives later: TCP never reorders.
    fn in_order(&mut self, at: Instant) -> Instant {
        let at = self.last_at.map_or(at, |last| last.max(at));
        self.last_at = Some(at);
        at
    }

    /// When the next item arrives.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// The next item if it has arrived by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Payload> {
        if self.next_at()? > now {
            return None;
        }
        let (_, payload) = self.queue.pop_front()?;
        if let Payload::Data(bytes) = &payload {
            self.stats.delivered += bytes.len() as u64;
            self.stats.pieces += 1;
        }
        Some(payload)
    }

    /// Bytes written but not yet delivered.
    pub(crate) fn in_flight(&self) -> u64 {
        self.queue
            .iter()
            .map(|(_, p)| match p {
                Payload::Data(b) => b.len() as u64,
                _ => 0,
            })
            .sum()
    }
}
