//! Call deadlines, ordered by `(deadline, sequence)`, so timers that fall due at the same
//! instant fire in the order they were armed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Where a timer sits in [`Timers`]: its deadline, then a sequence number that keeps equal
/// deadlines apart and in arming order.
type TimerAt = (Instant, u64);

/// An armed timer, kept by the table that armed it to disarm it or to report its duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timer {
    /// The timeout it was armed with.
    pub(super) after: Duration,
    at: TimerAt,
}

/// Deadlines of keys `K`, fired in deadline order.
///
/// Most timers are armed in deadline order (calls on a connection mostly share one timeout,
/// and `now` only grows): those are appended to a queue kept sorted, and disarmed in place
/// by binary search, leaving a hole that is dropped once it reaches the front (or when holes
/// outnumber live timers). The rare timer due before the last one queued goes to a tree.
/// Either way timers fire in `(deadline, arming order)`, as from one ordered map.
#[derive(Debug)]
pub(super) struct Timers<K> {
    /// Timers in `(deadline, sequence)` order; `None` is a disarmed one. Never starts or
    /// ends with `None`.
    queue: VecDeque<(TimerAt, Option<K>)>,
    /// The `Some` entries of `queue`.
    live: usize,
    /// Timers armed before the back of `queue` was due.
    early: BTreeMap<TimerAt, K>,
    next: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            live: 0,
            early: BTreeMap::new(),
            next: 0,
        }
    }
}

/// Holes are compacted away once the queue is this long and mostly holes.
const COMPACT_MIN: usize = 64;

impl<K: Copy> Timers<K> {
    /// Arms a timer for `key` firing `timeout` after `now`; `None` without a timeout, or when
    /// the deadline is past what `Instant` can hold (such a timer would never fire).
    pub(super) fn arm(&mut self, now: Instant, timeout: Option<Duration>, key: K) -> Option<Timer> {
        let after = timeout?;
        let deadline = now.checked_add(after)?;
        let at = (deadline, self.next);
        self.next += 1;
        // `at`'s sequence is the largest yet: it goes last unless it is due earlier.
        if self.queue.back().is_none_or(|(back, _)| back.0 <= deadline) {
            self.queue.push_back((at, Some(key)));
            self.live += 1;
        } else {
            self.early.insert(at, key);
        }
        Some(Timer { after, at })
    }

    /// Disarms a timer, if there is one.
    pub(super) fn disarm(&mut self, timer: Option<Timer>) {
        let Some(timer) = timer else {
            return;
        };
        match self.queue.binary_search_by(|(at, _)| at.cmp(&timer.at)) {
            Ok(i) => {
                if self.queue[i].1.take().is_some() {
                    self.live -= 1;
                }
                self.trim();
            }
            Err(_) => {
                self.early.remove(&timer.at);
            }
        }
    }

    /// Drops holes at both ends, and all of them once they outnumber live timers.
    fn trim(&mut self) {
        while self.queue.front().is_some_and(|(_, key)| key.is_none()) {
            self.queue.pop_front();
        }
        while self.queue.back().is_some_and(|(_, key)| key.is_none()) {
            self.queue.pop_back();
        }
        if self.queue.len() >= COMPACT_MIN && self.queue.len() > 2 * self.live {
            self.queue.retain(|(_, key)| key.is_some());
        }
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let queued = self.queue.front().map(|(at, _)| *at);
        let early = self.early.first_key_value().map(|(at, _)| *at);
        let from_queue = match (queued, early) {
            (Some(q), Some(e)) => q < e,
            (queued, _) => queued.is_some(),
        };
        let at = if from_queue { queued } else { early }?;
        if at.0 > now {
            return None;
        }
        if !from_queue {
            return self.early.remove(&at);
        }
        let (_, key) = self.queue.pop_front()?;
        self.live -= 1;
        self.trim();
        key
    }

    /// The earliest deadline, if any timer is armed.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let queued = self.queue.front().map(|(at, _)| at.0);
        let early = self.early.keys().next().map(|at| at.0);
        match (queued, early) {
            (Some(q), Some(e)) => Some(q.min(e)),
            (q, e) => q.or(e),
        }
    }

    /// Disarms every timer.
    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.live = 0;
        self.early.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    #[test]
    fn timers_fire_in_deadline_order_then_arming_order() {
        let now = base();
        let mut timers = Timers::default();
        timers.arm(now, Some(Duration::from_secs(2)), 'a');
        timers.arm(now, Some(Duration::from_secs(1)), 'b');
        timers.arm(now, Some(Duration::from_secs(1)), 'c');
        assert_eq!(timers.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(now), None);
        let later = now + Duration::from_secs(2);
        let fired: Vec<_> = std::iter::from_fn(|| timers.pop_due(later)).collect();
        assert_eq!(fired, ['b', 'c', 'a']);
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn a_disarmed_timer_never_fires() {
        let now = base();
        let mut timers = Timers::default();
        let t = timers.arm(now, Some(Duration::from_secs(1)), 1);
        assert_eq!(t.map(|t| t.after), Some(Duration::from_secs(1)));
        timers.arm(now, Some(Duration::from_secs(3)), 2);
        timers.disarm(t);
        assert_eq!(timers.pop_due(now + Duration::from_secs(5)), Some(2));
        assert_eq!(timers.pop_due(now + Duration::from_secs(5)), None);
    }

    #[test]
    fn no_timeout_or_an_unrepresentable_deadline_arms_nothing() {
        let now = base();
        let mut timers = Timers::default();
        assert_eq!(timers.arm(now, None, ()), None);
        assert_eq!(timers.arm(now, Some(Duration::MAX), ()), None);
        assert_eq!(timers.next_deadline(), None);
    }

    mod proptests {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Arm after `now` moves on by the first (ms), with the second as timeout (ms).
            Arm(u64, Option<u64>),
            /// Disarm the timer armed this many arms ago (if still remembered).
            Disarm(usize),
            /// Fire what is due this many ms after now.
            Fire(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..5u64, prop::option::weighted(0.9, prop_oneof![Just(1000u64), 0..2000u64]))
                    .prop_map(|(step, t)| Op::Arm(step, t)),
                3 => (0..80usize).prop_map(Op::Disarm),
                1 => (0..3000u64).prop_map(Op::Fire),
            ]
        }

        proptest! {
            #[test]
            fn timers_behave_as_one_ordered_map(ops in prop::collection::vec(op(), 1..400)) {
                let base = base();
                let mut now = base;
                let mut timers = Timers::default();
                let mut model: BTreeMap<(Instant, u64), u32> = BTreeMap::new();
                let mut armed: Vec<Option<Timer>> = Vec::new();
                let mut seq = 0u64;
                for (n, op) in ops.into_iter().enumerate() {
                    let n = n as u32;
                    match op {
                        Op::Arm(step, timeout) => {
                            now += Duration::from_millis(step);
                            let timeout = timeout.map(Duration::from_millis);
                            let timer = timers.arm(now, timeout, n);
                            if let Some(t) = timeout {
                                model.insert((now + t, seq), n);
                                seq += 1;
                            }
                            armed.push(timer);
                        }
                        Op::Disarm(back) => {
                            if let Some(i) = armed.len().checked_sub(back + 1) {
                                let timer = armed[i];
                                timers.disarm(timer);
                                if let Some(t) = timer {
                                    model.remove(&t.at);
                                }
                            }
                        }
                        Op::Fire(ahead) => {
                            let at = now + Duration::from_millis(ahead);
                            let fired: Vec<_> = std::iter::from_fn(|| timers.pop_due(at)).collect();
                            let due: Vec<_> = model.keys().take_while(|k| k.0 <= at).copied().collect();
                            let expected: Vec<_> = due.iter().map(|k| model.remove(k).unwrap()).collect();
                            prop_assert_eq!(fired, expected);
                        }
                    }
                    prop_assert_eq!(timers.next_deadline(), model.keys().next().map(|k| k.0));
                    prop_assert_eq!(timers.live + timers.early.len(), model.len());
                    prop_assert!(timers.queue.len() < COMPACT_MIN || timers.queue.len() <= 2 * timers.live);
                }
            }
        }
    }
}
