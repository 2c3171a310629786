//! Call deadlines: a timer wheel keyed by `(deadline, sequence)`, so timers that fall due at
//! the same instant fire in the order they were armed.

use std::collections::BTreeMap;
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
#[derive(Debug)]
pub(super) struct Timers<K> {
    armed: BTreeMap<TimerAt, K>,
    next: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            armed: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<K: Copy> Timers<K> {
    /// Arms a timer for `key` firing `timeout` after `now`; `None` without a timeout, or when
    /// the deadline is past what `Instant` can hold (such a timer would never fire).
    pub(super) fn arm(&mut self, now: Instant, timeout: Option<Duration>, key: K) -> Option<Timer> {
        let after = timeout?;
        let deadline = now.checked_add(after)?;
        let at = (deadline, self.next);
        self.next += 1;
        self.armed.insert(at, key);
        Some(Timer { after, at })
    }

    /// Disarms a timer, if there is one.
    pub(super) fn disarm(&mut self, timer: Option<Timer>) {
        if let Some(timer) = timer {
            self.armed.remove(&timer.at);
        }
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (&at, _) = self.armed.first_key_value()?;
        if at.0 > now {
            return None;
        }
        self.armed.remove(&at)
    }

    /// The earliest deadline, if any timer is armed.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.armed.keys().next().map(|at| at.0)
    }

    /// Disarms every timer.
    pub(super) fn clear(&mut self) {
        self.armed.clear();
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
}
