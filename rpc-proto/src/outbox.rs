//! The outbox of one remote env: messages waiting for a connection, and when to (re)connect.
//! Spark's `Outbox`, as pure state, with a connect retry policy Spark does not have.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use crate::error::ConfigError;

/// Default [`OutboxConfig::max_messages`]: 10 000.
pub const DEFAULT_OUTBOX_MAX_MESSAGES: usize = 10_000;

/// Default [`OutboxConfig::max_bytes`]: 64 MiB.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Default [`OutboxConfig::initial_backoff`]: 100 ms.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Default [`OutboxConfig::max_backoff`]: 5 s.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Default [`OutboxConfig::jitter`]: ±20%.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.2;

/// Default [`OutboxConfig::max_connect_attempts`]: 5.
pub const DEFAULT_MAX_CONNECT_ATTEMPTS: u32 = 5;

/// Settings of an [`Outbox`], validated when built. Cheap to clone.
///
/// The connect retry budget is a number of attempts, not a total duration: it does not depend
/// on how long each attempt takes to fail (a refused connection fails at once, an unreachable
/// host after the driver's connect timeout), and it is what a log shows. With the defaults an
/// outbox tries 5 times, waiting about 100, 200, 400 and 800 ms between attempts (±20%), so it
/// gives up about 1.5 s plus 5 connect times after the first push.
///
/// ```
/// use std::time::Duration;
/// use rpc_proto::OutboxConfig;
///
/// let config = OutboxConfig::builder()
///     .with_max_messages(100)
///     .with_initial_backoff(Duration::from_millis(50))
///     .with_max_connect_attempts(3)
///     .build()
///     .unwrap();
/// assert_eq!(config.max_messages(), 100);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    max_messages: usize,
    max_bytes: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
    jitter: f64,
    max_connect_attempts: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_messages: DEFAULT_OUTBOX_MAX_MESSAGES,
            max_bytes: DEFAULT_OUTBOX_MAX_BYTES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            jitter: DEFAULT_BACKOFF_JITTER,
            max_connect_attempts: DEFAULT_MAX_CONNECT_ATTEMPTS,
        }
    }
}

impl OutboxConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> OutboxConfigBuilder {
        OutboxConfigBuilder {
            config: Self::default(),
        }
    }

    /// The most messages that may wait for a connection.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// The most bytes (as given to [`Outbox::push`]) that may wait for a connection.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The wait after the first failed connect; each further failure doubles it, up to
    /// [`max_backoff`](OutboxConfig::max_backoff).
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The longest wait between connect attempts, before jitter.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// How far each wait is randomly stretched or shrunk, as a fraction: a wait `d` becomes a
    /// uniform draw from `d * (1 - jitter) ..= d * (1 + jitter)`.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// How many connect attempts in a row may fail before the queued messages fail. Counts the
    /// first attempt: 1 means no retry.
    pub fn max_connect_attempts(&self) -> u32 {
        self.max_connect_attempts
    }
}

/// Builds a validated [`OutboxConfig`].
#[derive(Debug, Clone)]
pub struct OutboxConfigBuilder {
    config: OutboxConfig,
}

impl OutboxConfigBuilder {
    /// Sets [`OutboxConfig::max_messages`]; at least 1.
    pub fn with_max_messages(mut self, messages: usize) -> Self {
        self.config.max_messages = messages;
        self
    }

    /// Sets [`OutboxConfig::max_bytes`]; at least 1.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.config.max_bytes = bytes;
        self
    }

    /// Sets [`OutboxConfig::initial_backoff`]; above zero and at most the max backoff.
    pub fn with_initial_backoff(mut self, backoff: Duration) -> Self {
        self.config.initial_backoff = backoff;
        self
    }

    /// Sets [`OutboxConfig::max_backoff`]; at least the initial backoff.
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.config.max_backoff = backoff;
        self
    }

    /// Sets [`OutboxConfig::jitter`]; from 0 (none) to below 1.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// Sets [`OutboxConfig::max_connect_attempts`]; at least 1.
    pub fn with_max_connect_attempts(mut self, attempts: u32) -> Self {
        self.config.max_connect_attempts = attempts;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<OutboxConfig, ConfigError> {
        let c = self.config;
        if c.max_messages == 0 {
            return Err(ConfigError::ZeroLimit("max messages"));
        }
        if c.max_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max bytes"));
        }
        if c.initial_backoff.is_zero() {
            return Err(ConfigError::ZeroTimeout("initial backoff"));
        }
        if c.max_connect_attempts == 0 {
            return Err(ConfigError::ZeroLimit("max connect attempts"));
        }
        if c.initial_backoff > c.max_backoff {
            return Err(ConfigError::BackoffRange {
                initial: c.initial_backoff,
                max: c.max_backoff,
            });
        }
        if !(0.0..1.0).contains(&c.jitter) {
            return Err(ConfigError::Jitter(c.jitter));
        }
        Ok(c)
    }
}

/// Why a message in an [`Outbox`] was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxFailure {
    /// Every connect attempt of the budget failed; the reason is the last attempt's.
    #[error("could not connect after {attempts} attempts: {reason}")]
    ConnectFailed {
        /// How many attempts were made.
        attempts: u32,
        /// Why the last one failed, as the driver reported it.
        reason: Arc<str>,
    },
    /// The outbox was closed with the message still queued.
    #[error("outbox closed")]
    Closed,
}

/// A message could not be queued; it is handed back so its sender can be failed.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError<T> {
    /// Queueing it would exceed [`OutboxConfig::max_messages`] or
    /// [`OutboxConfig::max_bytes`].
    #[error("outbox is full: {queued_messages} messages of {queued_bytes} bytes queued")]
    Full {
        /// The message.
        message: T,
        /// Messages queued when it was refused.
        queued_messages: usize,
        /// Bytes queued when it was refused.
        queued_bytes: u64,
    },
    /// The outbox was [closed](Outbox::close).
    #[error("outbox is closed")]
    Closed(T),
}

impl<T> OutboxError<T> {
    /// The message that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full { message, .. } | Self::Closed(message) => message,
        }
    }
}

impl<T> fmt::Debug for OutboxError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full {
                queued_messages,
                queued_bytes,
                ..
            } => f
                .debug_struct("Full")
                .field("queued_messages", queued_messages)
                .field("queued_bytes", queued_bytes)
                .finish_non_exhaustive(),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

/// What the driver must do for an [`Outbox`], from [`Outbox::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub enum OutboxAction<T> {
    /// Start connecting to the remote env; report the outcome with
    /// [`handle_connected`](Outbox::handle_connected) or
    /// [`handle_connect_failed`](Outbox::handle_connect_failed).
    Connect,
    /// Write this message to the connection now. Deliveries come in push order.
    Deliver(T),
    /// The message will not be delivered; fail its sender.
    Fail(T, OutboxFailure),
}

/// Where an [`Outbox`] stands, from [`Outbox::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxState {
    /// No connection and none wanted: nothing is queued.
    Idle,
    /// A connect attempt is outstanding.
    Connecting {
        /// Which attempt, from 1.
        attempt: u32,
    },
    /// Waiting before the next connect attempt.
    BackingOff {
        /// The attempt that will be made, from 2.
        attempt: u32,
        /// When it will be made.
        until: Instant,
    },
    /// Connected: pushes are delivered at once.
    Connected,
    /// Closed: pushes are refused.
    Closed,
}

/// The messages for one remote env and the policy for connecting to it: Spark's `Outbox`, as
/// pure state, plus a connect retry policy.
///
/// # Connecting on demand
///
/// An outbox connects only when it has something to send. A [`push`](Outbox::push) to an
/// idle outbox queues the message and emits [`OutboxAction::Connect`] once; while the
/// connect is outstanding or backing off, pushes queue. When the driver reports
/// [`handle_connected`](Outbox::handle_connected), everything queued is delivered in push
/// order, and later pushes are delivered at once. When a connect fails, the outbox waits
/// ([`poll_timeout`](Outbox::poll_timeout)) and emits `Connect` again, up to
/// [`OutboxConfig::max_connect_attempts`] attempts in a row; then every queued message fails
/// with the last reason and the outbox goes idle, so a later push starts over with a fresh
/// budget. Waits double from [`OutboxConfig::initial_backoff`] up to
/// [`OutboxConfig::max_backoff`], each stretched by a random jitter from the outbox's seeded
/// RNG, so that many outboxes do not retry in step.
///
/// # Delivery semantics: at most once
///
/// Each accepted message ends in exactly one [`OutboxAction::Deliver`] or
/// [`OutboxAction::Fail`]. A message is handed out for delivery once and never again: if the
/// connection drops after that ([`handle_disconnected`](Outbox::handle_disconnected)), the
/// outbox does not know whether the peer got it and does not retry it; a driver that needs an
/// answer learns of the loss from the connection (the ask fails as disconnected). What is
/// retried is the connect, never a message: messages wait while the outbox connects, and
/// fail if it cannot.
///
/// # Limits
///
/// [`OutboxConfig::max_messages`] and [`OutboxConfig::max_bytes`] bound what waits for a
/// connection; a push beyond them is refused with [`OutboxError::Full`] (the size is whatever
/// the driver says it is, normally the encoded message). While connected nothing waits, so
/// nothing is refused.
///
/// # The drain rule
///
/// After every input (`handle_*`) and command (`push`, `close`), call
/// [`poll_action`](Outbox::poll_action) until it returns `None`, and re-arm the timer to
/// [`poll_timeout`](Outbox::poll_timeout).
///
/// ```
/// use std::time::{Duration, Instant};
/// use rpc_proto::{Outbox, OutboxAction, OutboxConfig};
///
/// let now = Instant::now();
/// let mut outbox = Outbox::new(OutboxConfig::default(), 7);
/// outbox.push(now, "hello", 5).unwrap();
/// assert_eq!(outbox.poll_action(), Some(OutboxAction::Connect));
/// assert_eq!(outbox.poll_action(), None);
///
/// outbox.handle_connect_failed(now, "connection refused".into());
/// let retry_at = outbox.poll_timeout().unwrap();
/// assert!(retry_at >= now + Duration::from_millis(80));
/// outbox.handle_timeout(retry_at);
/// assert_eq!(outbox.poll_action(), Some(OutboxAction::Connect));
///
/// outbox.handle_connected(retry_at);
/// assert_eq!(outbox.poll_action(), Some(OutboxAction::Deliver("hello")));
/// assert_eq!(outbox.poll_action(), None);
/// ```
#[derive(Debug)]
pub struct Outbox<T> {
    config: OutboxConfig,
    rng: SmallRng,
    state: OutboxState,
    /// The wait before the next attempt, before jitter.
    backoff: Duration,
    queue: VecDeque<(T, u64)>,
    queued_bytes: u64,
    actions: VecDeque<OutboxAction<T>>,
}

impl<T> Outbox<T> {
    /// A new, idle outbox. `seed` seeds the jitter; drivers seed from the OS, tests use fixed
    /// seeds.
    pub fn new(config: OutboxConfig, seed: u64) -> Self {
        Self {
            backoff: config.initial_backoff,
            config,
            rng: SmallRng::seed_from_u64(seed),
            state: OutboxState::Idle,
            queue: VecDeque::new(),
            queued_bytes: 0,
            actions: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    // ---------------------------------------------------------------- commands

    /// Sends a message of `bytes` bytes: delivers it at once when connected, otherwise queues
    /// it (and starts connecting when idle). Refused when the queue is full or the outbox is
    /// closed, handing the message back.
    pub fn push(&mut self, now: Instant, message: T, bytes: u64) -> Result<(), OutboxError<T>> {
        let _ = now;
        match self.state {
            OutboxState::Closed => return Err(OutboxError::Closed(message)),
            OutboxState::Connected => {
                self.actions.push_back(OutboxAction::Deliver(message));
                return Ok(());
            }
            OutboxState::Idle | OutboxState::Connecting { .. } | OutboxState::BackingOff { .. } => {
            }
        }
        let fits = self.queue.len() < self.config.max_messages
            && self
                .queued_bytes
                .checked_add(bytes)
                .is_some_and(|total| total <= self.config.max_bytes);
        if !fits {
            return Err(OutboxError::Full {
                message,
                queued_messages: self.queue.len(),
                queued_bytes: self.queued_bytes,
            });
        }
        self.queue.push_back((message, bytes));
        self.queued_bytes += bytes;
        if self.state == OutboxState::Idle {
            self.backoff = self.config.initial_backoff;
            self.state = OutboxState::Connecting { attempt: 1 };
            self.actions.push_back(OutboxAction::Connect);
        }
        Ok(())
    }

    /// Closes the outbox: every queued message fails with [`OutboxFailure::Closed`] and later
    /// pushes are refused. A connection the driver holds or is opening for it should be
    /// closed; later reports about it are ignored. Idempotent.
    pub fn close(&mut self) {
        if self.state != OutboxState::Closed {
            self.state = OutboxState::Closed;
            self.fail_queued(&OutboxFailure::Closed);
        }
    }

    // ---------------------------------------------------------------- inputs

    /// The outstanding connect succeeded: everything queued is delivered, in push order.
    /// Ignored unless a connect is outstanding.
    pub fn handle_connected(&mut self, now: Instant) {
        let _ = now;
        if !matches!(self.state, OutboxState::Connecting { .. }) {
            return;
        }
        self.state = OutboxState::Connected;
        self.queued_bytes = 0;
        let delivered = self
            .queue
            .drain(..)
            .map(|(message, _)| OutboxAction::Deliver(message));
        self.actions.extend(delivered);
    }

    /// The outstanding connect failed: retries after a backoff, or, when that was the last
    /// attempt of the budget, fails every queued message with `reason` and goes idle. Ignored
    /// unless a connect is outstanding.
    pub fn handle_connect_failed(&mut self, now: Instant, reason: Arc<str>) {
        let OutboxState::Connecting { attempt } = self.state else {
            return;
        };
        if attempt >= self.config.max_connect_attempts {
            debug!(attempt, %reason, "giving up connecting");
            self.state = OutboxState::Idle;
            self.fail_queued(&OutboxFailure::ConnectFailed {
                attempts: attempt,
                reason,
            });
            return;
        }
        let delay = self.next_delay();
        debug!(attempt, %reason, ?delay, "connect failed, retrying");
        self.state = OutboxState::BackingOff {
            attempt: attempt + 1,
            // An `Instant` this far out cannot be represented; retry at once rather than never.
            until: now.checked_add(delay).unwrap_or(now),
        };
    }

    /// The connection was lost. The outbox goes idle and the next push reconnects; messages
    /// already delivered are not retried. Ignored unless connected.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        if self.state == OutboxState::Connected {
            self.state = OutboxState::Idle;
        }
    }

    /// Acts on the backoff timer: at or after [`poll_timeout`](Outbox::poll_timeout), emits
    /// the next [`OutboxAction::Connect`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if let OutboxState::BackingOff { attempt, until } = self.state {
            if now >= until {
                self.state = OutboxState::Connecting { attempt };
                self.actions.push_back(OutboxAction::Connect);
            }
        }
    }

    // ---------------------------------------------------------------- outputs

    /// The next thing the driver must do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<OutboxAction<T>> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Outbox::handle_timeout) must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            OutboxState::BackingOff { until, .. } => Some(until),
            _ => None,
        }
    }

    // ---------------------------------------------------------------- state

    /// Where the outbox stands.
    pub fn state(&self) -> OutboxState {
        self.state
    }

    /// Whether the outbox is connected.
    pub fn is_connected(&self) -> bool {
        self.state == OutboxState::Connected
    }

    /// Whether the outbox was closed.
    pub fn is_closed(&self) -> bool {
        self.state == OutboxState::Closed
    }

    /// Messages waiting for a connection.
    pub fn queued_messages(&self) -> usize {
        self.queue.len()
    }

    /// Bytes waiting for a connection, as given to [`push`](Outbox::push).
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    // ---------------------------------------------------------------- internals

    fn fail_queued(&mut self, failure: &OutboxFailure) {
        self.queued_bytes = 0;
        let failed = self
            .queue
            .drain(..)
            .map(|(message, _)| OutboxAction::Fail(message, failure.clone()));
        self.actions.extend(failed);
    }

    /// The jittered wait before the next attempt; doubles the base for the one after.
    fn next_delay(&mut self) -> Duration {
        let base = self.backoff;
        self.backoff = base
            .checked_mul(2)
            .unwrap_or(self.config.max_backoff)
            .min(self.config.max_backoff);
        let jitter = self.config.jitter;
        if jitter == 0.0 {
            return base;
        }
        let factor = self.rng.random_range(1.0 - jitter..=1.0 + jitter);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base of each test's virtual timeline: the one clock read a test makes.
    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    fn no_jitter() -> OutboxConfig {
        OutboxConfig::builder().with_jitter(0.0).build().unwrap()
    }

    fn drain<T>(outbox: &mut Outbox<T>) -> Vec<OutboxAction<T>> {
        std::iter::from_fn(|| outbox.poll_action()).collect()
    }

    fn reason() -> Arc<str> {
        Arc::from("connection refused")
    }

    #[test]
    fn defaults() {
        let c = OutboxConfig::default();
        assert_eq!(OutboxConfig::builder().build().unwrap(), c);
        assert_eq!(c.max_messages(), 10_000);
        assert_eq!(c.max_bytes(), 64 << 20);
        assert_eq!(c.initial_backoff(), Duration::from_millis(100));
        assert_eq!(c.max_backoff(), Duration::from_secs(5));
        assert_eq!(c.jitter(), 0.2);
        assert_eq!(c.max_connect_attempts(), 5);
    }

    #[test]
    fn config_rejects_out_of_range_values() {
        let b = OutboxConfig::builder;
        assert_eq!(
            b().with_max_messages(0).build(),
            Err(ConfigError::ZeroLimit("max messages"))
        );
        assert_eq!(
            b().with_max_bytes(0).build(),
            Err(ConfigError::ZeroLimit("max bytes"))
        );
        assert_eq!(
            b().with_initial_backoff(Duration::ZERO).build(),
            Err(ConfigError::ZeroTimeout("initial backoff"))
        );
        assert_eq!(
            b().with_max_connect_attempts(0).build(),
            Err(ConfigError::ZeroLimit("max connect attempts"))
        );
        assert_eq!(
            b().with_max_backoff(Duration::from_millis(99)).build(),
            Err(ConfigError::BackoffRange {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(99)
            })
        );
        for bad in [-0.1, 1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                b().with_jitter(bad).build(),
                Err(ConfigError::Jitter(_))
            ));
        }
        assert_eq!(
            ConfigError::ZeroLimit("max bytes").to_string(),
            "max bytes must be greater than zero"
        );
    }

    #[test]
    fn first_push_connects_once_and_later_pushes_queue() {
        let now = base();
        let mut outbox = Outbox::new(OutboxConfig::default(), 0);
        assert_eq!(outbox.state(), OutboxState::Idle);
        outbox.push(now, 1, 10).unwrap();
        outbox.push(now, 2, 10).unwrap();
        assert_eq!(drain(&mut outbox), [OutboxAction::Connect]);
        assert_eq!(outbox.state(), OutboxState::Connecting { attempt: 1 });
        assert_eq!((outbox.queued_messages(), outbox.queued_bytes()), (2, 20));
        outbox.push(now, 3, 10).unwrap();
        assert_eq!(drain(&mut outbox), []);
    }

    #[test]
    fn connected_delivers_queued_then_pushes_at_once_in_order() {
        let now = base();
        let mut outbox = Outbox::new(OutboxConfig::default(), 0);
        outbox.push(now, 1, 10).unwrap();
        outbox.push(now, 2, 10).unwrap();
        let _ = drain(&mut outbox);
        outbox.handle_connected(now);
        outbox.push(now, 3, 10).unwrap();
        assert_eq!(
            drain(&mut outbox),
            [
                OutboxAction::Deliver(1),
                OutboxAction::Deliver(2),
                OutboxAction::Deliver(3)
            ]
        );
        assert!(outbox.is_connected());
        assert_eq!((outbox.queued_messages(), outbox.queued_bytes()), (0, 0));
    }

    #[test]
    fn full_by_count_or_bytes_hands_the_message_back() {
        let now = base();
        let config = OutboxConfig::builder()
            .with_max_messages(2)
            .with_max_bytes(100)
            .build()
            .unwrap();
        let mut outbox = Outbox::new(config, 0);
        assert!(matches!(
            outbox.push(now, 0, 101),
            Err(OutboxError::Full {
                message: 0,
                queued_messages: 0,
                queued_bytes: 0
            })
        ));
        outbox.push(now, 1, 60).unwrap();
        let err = outbox.push(now, 2, 41).unwrap_err();
        assert_eq!(
            err.to_string(),
            "outbox is full: 1 messages of 60 bytes queued"
        );
        assert_eq!(err.into_inner(), 2);
        outbox.push(now, 3, 40).unwrap();
        assert!(matches!(
            outbox.push(now, 4, 0),
            Err(OutboxError::Full { message: 4, .. })
        ));
        assert!(matches!(
            outbox.push(now, 5, u64::MAX),
            Err(OutboxError::Full { message: 5, .. })
        ));
        // While connected nothing waits, so nothing is refused.
        outbox.handle_connected(now);
        outbox.push(now, 6, 1_000).unwrap();
    }

    #[test]
    fn connect_failures_back_off_doubling_up_to_the_max() {
        let now = base();
        let config = OutboxConfig::builder()
            .with_jitter(0.0)
            .with_max_backoff(Duration::from_millis(300))
            .with_max_connect_attempts(5)
            .build()
            .unwrap();
        let mut outbox = Outbox::new(config, 0);
        outbox.push(now, 1, 1).unwrap();
        let mut t = now;
        for (attempt, wait) in [(2, 100), (3, 200), (4, 300), (5, 300)] {
            assert_eq!(drain(&mut outbox), [OutboxAction::Connect]);
            outbox.handle_connect_failed(t, reason());
            let until = t + Duration::from_millis(wait);
            assert_eq!(outbox.state(), OutboxState::BackingOff { attempt, until });
            assert_eq!(outbox.poll_timeout(), Some(until));
            outbox.handle_timeout(until - Duration::from_millis(1));
            assert_eq!(drain(&mut outbox), []);
            t = until;
            outbox.handle_timeout(t);
        }
        assert_eq!(drain(&mut outbox), [OutboxAction::Connect]);
        outbox.handle_connect_failed(t, reason());
        assert_eq!(
            drain(&mut outbox),
            [OutboxAction::Fail(
                1,
                OutboxFailure::ConnectFailed {
                    attempts: 5,
                    reason: reason()
                }
            )]
        );
        assert_eq!(outbox.state(), OutboxState::Idle);
        assert_eq!(outbox.poll_timeout(), None);
    }

    #[test]
    fn push_after_giving_up_starts_over_with_a_fresh_budget() {
        let now = base();
        let config = OutboxConfig::builder()
            .with_jitter(0.0)
            .with_max_connect_attempts(2)
            .build()
            .unwrap();
        let mut outbox = Outbox::new(config, 0);
        outbox.push(now, 1, 1).unwrap();
        outbox.handle_connect_failed(now, reason());
        outbox.handle_timeout(outbox.poll_timeout().unwrap());
        outbox.handle_connect_failed(now, reason());
        let failure = OutboxFailure::ConnectFailed {
            attempts: 2,
            reason: reason(),
        };
        assert_eq!(
            failure.to_string(),
            "could not connect after 2 attempts: connection refused"
        );
        assert_eq!(
            drain(&mut outbox),
            [
                OutboxAction::Connect,
                OutboxAction::Connect,
                OutboxAction::Fail(1, failure)
            ]
        );
        outbox.push(now, 2, 1).unwrap();
        assert_eq!(drain(&mut outbox), [OutboxAction::Connect]);
        outbox.handle_connect_failed(now, reason());
        assert_eq!(
            outbox.poll_timeout(),
            Some(now + Duration::from_millis(100)),
            "the backoff starts over too"
        );
    }

    #[test]
    fn disconnect_goes_idle_and_the_next_push_reconnects() {
        let now = base();
        let mut outbox = Outbox::new(no_jitter(), 0);
        outbox.push(now, 1, 1).unwrap();
        outbox.handle_connected(now);
        assert_eq!(
            drain(&mut outbox),
            [OutboxAction::Connect, OutboxAction::Deliver(1)]
        );
        outbox.handle_disconnected(now);
        assert_eq!(outbox.state(), OutboxState::Idle);
        assert_eq!(drain(&mut outbox), [], "delivered messages are not retried");
        outbox.push(now, 2, 1).unwrap();
        assert_eq!(drain(&mut outbox), [OutboxAction::Connect]);
        outbox.handle_connected(now);
        assert_eq!(drain(&mut outbox), [OutboxAction::Deliver(2)]);
    }

    #[test]
    fn close_fails_queued_and_refuses_later_pushes() {
        let now = base();
        let mut outbox = Outbox::new(no_jitter(), 0);
        outbox.push(now, 1, 1).unwrap();
        outbox.push(now, 2, 1).unwrap();
        outbox.close();
        outbox.close();
        assert_eq!(
            drain(&mut outbox),
            [
                OutboxAction::Connect,
                OutboxAction::Fail(1, OutboxFailure::Closed),
                OutboxAction::Fail(2, OutboxFailure::Closed)
            ]
        );
        let err = outbox.push(now, 3, 1).unwrap_err();
        assert_eq!(err.to_string(), "outbox is closed");
        assert_eq!(err.into_inner(), 3);
        // A late connect result changes nothing.
        outbox.handle_connected(now);
        outbox.handle_connect_failed(now, reason());
        assert!(outbox.is_closed());
        assert_eq!(drain(&mut outbox), []);
    }

    #[test]
    fn stray_inputs_are_ignored() {
        let now = base();
        let mut outbox = Outbox::<u32>::new(no_jitter(), 0);
        outbox.handle_connected(now);
        outbox.handle_connect_failed(now, reason());
        outbox.handle_disconnected(now);
        outbox.handle_timeout(now);
        assert_eq!(outbox.state(), OutboxState::Idle);
        assert_eq!(drain(&mut outbox), []);
    }

    #[test]
    fn jitter_is_deterministic_per_seed() {
        let now = base();
        let delay = |seed| {
            let mut outbox = Outbox::new(OutboxConfig::default(), seed);
            outbox.push(now, (), 1).unwrap();
            outbox.handle_connect_failed(now, reason());
            outbox.poll_timeout().unwrap() - now
        };
        assert_eq!(delay(1), delay(1));
        let delays: Vec<_> = (0..20).map(delay).collect();
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter varies across seeds"
        );
        for d in delays {
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// The base of each test's virtual timeline: the one clock read a test makes.
    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64),
        Connected,
        ConnectFailed,
        Disconnected,
        /// Advance time by this many milliseconds, then fire the timer if due.
        Timeout(u64),
        Close,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..400).prop_map(Op::Push),
            2 => Just(Op::Connected),
            3 => Just(Op::ConnectFailed),
            1 => Just(Op::Disconnected),
            4 => (0u64..6_000).prop_map(Op::Timeout),
            1 => Just(Op::Close),
        ]
    }

    fn config() -> impl Strategy<Value = OutboxConfig> {
        (
            1usize..8,
            1u64..2_000,
            1u64..300,
            1u64..20,
            0.0f64..0.9,
            1u32..8,
        )
            .prop_map(|(messages, bytes, initial, factor, jitter, attempts)| {
                OutboxConfig::builder()
                    .with_max_messages(messages)
                    .with_max_bytes(bytes)
                    .with_initial_backoff(Duration::from_millis(initial))
                    .with_max_backoff(Duration::from_millis(initial * factor))
                    .with_jitter(jitter)
                    .with_max_connect_attempts(attempts)
                    .build()
                    .unwrap()
            })
    }

    proptest! {
        #[test]
        fn every_message_ends_once_in_order_within_limits(
            config in config(),
            seed in any::<u64>(),
            ops in prop::collection::vec(op(), 0..120),
        ) {
            let start = base();
            let mut now = start;
            let mut outbox = Outbox::new(config.clone(), seed);
            let mut next_id = 0u64;
            let mut accepted = Vec::new();
            let mut ended: Vec<Option<bool>> = Vec::new(); // by id: Some(delivered)
            let mut delivered = Vec::new();
            let mut connect_outstanding = false;
            let mut failures_in_a_row = 0u32;
            let mut last_base: Option<Duration> = None;

            for op in ops {
                let before = outbox.state();
                match op {
                    Op::Push(bytes) => {
                        let id = next_id;
                        next_id += 1;
                        ended.push(None);
                        match outbox.push(now, id, bytes) {
                            Ok(()) => accepted.push(id),
                            Err(err) => {
                                match &err {
                                    OutboxError::Closed(_) => prop_assert!(outbox.is_closed()),
                                    OutboxError::Full { queued_messages, queued_bytes, .. } => {
                                        prop_assert!(
                                            *queued_messages == config.max_messages()
                                                || queued_bytes + bytes > config.max_bytes()
                                        );
                                    }
                                }
                                prop_assert_eq!(err.into_inner(), id);
                            }
                        }
                    }
                    Op::Connected => {
                        outbox.handle_connected(now);
                        if connect_outstanding {
                            connect_outstanding = false;
                            failures_in_a_row = 0;
                            last_base = None;
                            prop_assert!(outbox.is_connected());
                        } else {
                            prop_assert_eq!(outbox.state(), before);
                        }
                    }
                    Op::ConnectFailed => {
                        outbox.handle_connect_failed(now, Arc::from("refused"));
                        if connect_outstanding {
                            connect_outstanding = false;
                            failures_in_a_row += 1;
                            match outbox.state() {
                                OutboxState::BackingOff { attempt, until } => {
                                    prop_assert_eq!(attempt, failures_in_a_row + 1);
                                    prop_assert!(attempt <= config.max_connect_attempts());
                                    // The base doubles from the initial backoff, capped.
                                    let base = config
                                        .initial_backoff()
                                        .saturating_mul(1 << (failures_in_a_row - 1).min(30))
                                        .min(config.max_backoff());
                                    if let Some(last) = last_base {
                                        prop_assert!(base >= last, "backoff shrank");
                                    }
                                    last_base = Some(base);
                                    let delay = until - now;
                                    let j = config.jitter();
                                    let slack = Duration::from_micros(1);
                                    prop_assert!(delay + slack >= base.mul_f64(1.0 - j), "{:?} < {:?}", delay, base);
                                    prop_assert!(delay <= base.mul_f64(1.0 + j) + slack, "{:?} > {:?}", delay, base);
                                    prop_assert!(delay + slack >= config.initial_backoff().mul_f64(1.0 - j));
                                    prop_assert!(delay <= config.max_backoff().mul_f64(1.0 + j) + slack);
                                }
                                OutboxState::Idle => {
                                    prop_assert_eq!(failures_in_a_row, config.max_connect_attempts());
                                    prop_assert_eq!(outbox.queued_messages(), 0);
                                    failures_in_a_row = 0;
                                    last_base = None;
                                }
                                other => prop_assert!(false, "unexpected state {:?}", other),
                            }
                        } else {
                            prop_assert_eq!(outbox.state(), before);
                        }
                    }
                    Op::Disconnected => {
                        outbox.handle_disconnected(now);
                        if before == OutboxState::Connected {
                            prop_assert_eq!(outbox.state(), OutboxState::Idle);
                        }
                    }
                    Op::Timeout(ms) => {
                        now += Duration::from_millis(ms);
                        outbox.handle_timeout(now);
                    }
                    Op::Close => {
                        outbox.close();
                        // The driver abandons whatever connect it had going.
                        connect_outstanding = false;
                    }
                }

                // Drain, checking every action.
                while let Some(action) = outbox.poll_action() {
                    match action {
                        OutboxAction::Connect => {
                            prop_assert!(!connect_outstanding, "two connects outstanding");
                            prop_assert!(!outbox.is_closed());
                            connect_outstanding = true;
                        }
                        OutboxAction::Deliver(id) => {
                            prop_assert_eq!(ended[id as usize], None, "message {} ended twice", id);
                            ended[id as usize] = Some(true);
                            if let Some(last) = delivered.last() {
                                prop_assert!(id > *last, "delivered out of push order");
                            }
                            delivered.push(id);
                        }
                        OutboxAction::Fail(id, _) => {
                            prop_assert_eq!(ended[id as usize], None, "message {} ended twice", id);
                            ended[id as usize] = Some(false);
                        }
                    }
                }
                prop_assert!(outbox.queued_messages() <= config.max_messages());
                prop_assert!(outbox.queued_bytes() <= config.max_bytes());
                prop_assert_eq!(
                    connect_outstanding,
                    matches!(outbox.state(), OutboxState::Connecting { .. })
                );
                if outbox.queued_messages() > 0 {
                    prop_assert!(matches!(
                        outbox.state(),
                        OutboxState::Connecting { .. } | OutboxState::BackingOff { .. }
                    ), "messages wait with no connect under way");
                }
            }

            // Close ends everything still waiting: every accepted message ended exactly once.
            outbox.close();
            while let Some(action) = outbox.poll_action() {
                match action {
                    OutboxAction::Fail(id, OutboxFailure::Closed) => {
                        prop_assert_eq!(ended[id as usize], None);
                        ended[id as usize] = Some(false);
                    }
                    other => prop_assert!(false, "unexpected {:?} on close", other),
                }
            }
            for id in accepted {
                prop_assert!(ended[id as usize].is_some(), "message {} never ended", id);
            }
        }
    }
}
