//! Rate-limited logging for events a peer can cause on purpose (accept failures, refused
//! connections, undecodable frames and envelopes): at most [`LINES_PER_INTERVAL`] lines per
//! [`INTERVAL`] per kind (call site), the first line after a quiet spell carrying how many
//! similar lines were suppressed. A hostile peer then cannot fill a disk through our logs;
//! the counters in the stats (`ServerStats`, `ConnectionStats`, `EnvStats`) still count every
//! event.

use std::time::{Duration, Instant};

// In statics, created outside any loom model, and about logging only.
use crate::sync::unmodeled::Mutex;

/// Lines a kind may log per [`INTERVAL`].
pub(crate) const LINES_PER_INTERVAL: u32 = 10;

/// The window [`LINES_PER_INTERVAL`] applies to.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// A fixed-window limiter: at most `lines` admitted per `interval`, counting what it refuses.
/// `const`-constructible, so each call site keeps one in a `static` (see [`limited!`]).
#[derive(Debug)]
pub(crate) struct LogLimit {
    lines: u32,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// When the current window opened; `None` before the first line.
    start: Option<Instant>,
    /// Lines admitted in the current window.
    admitted: u32,
    /// Lines refused since the last admitted one.
    suppressed: u64,
}

impl LogLimit {
    /// A limiter admitting `lines` per `interval`.
    pub(crate) const fn new(lines: u32, interval: Duration) -> Self {
        Self {
            lines,
            interval,
            window: Mutex::new(Window {
                start: None,
                admitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged at `now`: `Some(k)` if so, `k` being how many lines were
    /// suppressed since the last admitted one (to report with it), `None` if not.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = match self.window.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let expired = match w.start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        };
        if expired {
            w.start = Some(now);
            w.admitted = 0;
        }
        if w.admitted < self.lines {
            w.admitted += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Logs like `tracing::$level!` at most [`LINES_PER_INTERVAL`] times per [`INTERVAL`] for
/// this call site; a line after suppressed ones carries `suppressed = k`.
///
/// ```ignore
/// limited!(warn, %error, "accept failed");
/// ```
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new(
            $crate::log_limit::LINES_PER_INTERVAL,
            $crate::log_limit::INTERVAL,
        );
        match LIMIT.admit(::std::time::Instant::now()) {
            Some(0) => ::tracing::$level!($($arg)+),
            Some(suppressed) => ::tracing::$level!(suppressed, $($arg)+),
            None => {}
        }
    }};
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_n_lines_per_window_and_reports_what_it_suppressed() {
        let limit = LogLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted: Vec<_> = (0..10)
            .map(|i| limit.admit(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // Still the same window just before it ends.
        assert_eq!(limit.admit(t0 + Duration::from_millis(9_999)), None);
        // The next window: the first line reports the 8 suppressed ones, the next none.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(limit.admit(t1), Some(8));
        assert_eq!(limit.admit(t1), Some(0));
        assert_eq!(limit.admit(t1), Some(0));
        assert_eq!(limit.admit(t1), None);
        // A clock that seems to go backwards does not panic or reopen the window.
        assert_eq!(limit.admit(t0), None);
    }

    #[test]
    fn the_macro_logs_at_most_the_limit_per_call_site() {
        // No subscriber: only checks that it expands and runs, with and without fields.
        for i in 0..100 {
            limited!(warn, i, "a line");
            limited!(debug, "another line");
        }
    }
}
