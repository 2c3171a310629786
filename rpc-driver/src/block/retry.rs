//! Fetching again after I/O failures: Spark's `RetryingBlockTransferor`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use tracing::{debug, info};

use super::config::BlockFetchConfig;
use super::error::BlockFetchError;
use super::fetch::fetch_blocks;
use super::listener::{deliver, BlockFetchingListener};
use crate::runtime::{sleep_for, BoxFuture, Runtime};
use crate::transport::TransportClientFactory;

// The runtime is a trait object, which loom's `Arc` cannot hold.
use crate::sync::unmodeled::Arc;

type Outcome = (String, Result<Bytes, BlockFetchError>);
type Attempt = Pin<Box<dyn Stream<Item = Outcome> + Send>>;
type Start = Box<dyn FnMut(Vec<String>) -> Attempt + Send>;

/// Fetches blocks in attempts until each has an outcome, starting a new attempt for the blocks
/// still outstanding after an I/O failure: Spark's `RetryingBlockTransferor`.
///
/// A [`Stream`] of `(block_id, Result<Bytes, BlockFetchError>)`, exactly one item per
/// requested block (a block listed twice gets two), then the end:
///
/// - An attempt is a stream of outcomes from a fetch function (for
///   [`one_for_one`](RetryingBlockFetcher::one_for_one),
///   [`fetch_blocks`](super::fetch::fetch_blocks)).
///   Its successes and final failures are passed on.
/// - The first [retryable](BlockFetchError::is_retryable) failure (connect failures,
///   disconnects, timeouts; never a failure the server reported) while retries are left
///   abandons the attempt: its later outcomes are ignored and it is dropped, cancelling its
///   calls. After [`retry_wait`](BlockFetchConfig::retry_wait) a new attempt asks for the
///   blocks still outstanding, in their original order, and only those.
/// - At most `1 + max_retries` attempts are made in all; after that, retryable failures are
///   final too.
/// - Outcomes for blocks not outstanding (already decided, or never asked for) are ignored.
///   An attempt that ends without an outcome for a block fails it with
///   [`BlockFetchError::Unanswered`].
///
/// Nothing runs unless the stream is polled; the wait between attempts is a timer of the
/// [`Runtime`].
///
/// ```no_run
/// # async fn demo(
/// #     rt: std::sync::Arc<dyn rpc_driver::Runtime>,
/// #     factory: rpc_driver::transport::TransportClientFactory,
/// #     addr: std::net::SocketAddr,
/// # ) {
/// use std::time::Duration;
/// use rpc_driver::block::{BlockFetchConfig, RetryingBlockFetcher};
///
/// let config = BlockFetchConfig::builder().with_max_retries(2).with_retry_wait(Duration::from_millis(500)).build().unwrap();
/// let ids: Vec<String> = (0..10).map(|i| format!("rdd_3_{i}")).collect();
/// let mut fetch = RetryingBlockFetcher::one_for_one(rt, &factory, addr, "app-1", "exec-2", ids, &config);
/// while let Some((block_id, result)) = fetch.next_block().await {
///     match result {
///         Ok(bytes) => println!("{block_id}: {} bytes", bytes.len()),
///         Err(error) => println!("{block_id} failed after {} retries: {error}", fetch.retries()),
///     }
/// }
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct RetryingBlockFetcher {
    rt: Arc<dyn Runtime>,
    start: Start,
    /// Every requested block, in order.
    block_ids: Vec<String>,
    /// Blocks without an outcome, with how many times each is still owed.
    outstanding: HashMap<String, usize>,
    /// Outcomes still owed.
    remaining: usize,
    max_retries: u32,
    retry_wait: Duration,
    retries: u32,
    phase: Phase,
    /// Blocks an ended attempt gave no outcome for, to be failed.
    unanswered: VecDeque<String>,
}

enum Phase {
    /// Not polled yet.
    Idle,
    Fetching(Attempt),
    /// Waiting before the next attempt.
    Waiting(BoxFuture<()>),
    Done,
}

impl RetryingBlockFetcher {
    /// Fetches `block_ids` with `start`, which begins an attempt for the blocks it is given
    /// and returns its outcomes (Spark's `BlockTransferStarter`). Takes
    /// [`max_retries`](BlockFetchConfig::max_retries) and
    /// [`retry_wait`](BlockFetchConfig::retry_wait) from `config`; waits on `rt`'s timers.
    pub fn new<F, S>(
        rt: Arc<dyn Runtime>,
        block_ids: Vec<String>,
        config: &BlockFetchConfig,
        mut start: F,
    ) -> Self
    where
        F: FnMut(Vec<String>) -> S + Send + 'static,
        S: Stream<Item = Outcome> + Send + 'static,
    {
        let mut outstanding = HashMap::new();
        for id in &block_ids {
            *outstanding.entry(id.clone()).or_insert(0) += 1;
        }
        Self {
            rt,
            start: Box::new(move |ids| Box::pin(start(ids)) as Attempt),
            remaining: block_ids.len(),
            block_ids,
            outstanding,
            max_retries: config.max_retries(),
            retry_wait: config.retry_wait(),
            retries: 0,
            phase: Phase::Idle,
            unanswered: VecDeque::new(),
        }
    }

    /// Fetches `block_ids` of executor `exec_id` of application `app_id` from the block
    /// server at `addr`, with [`fetch_blocks`](super::fetch::fetch_blocks) over `factory`'s
    /// connections, retrying as `config` says.
    pub fn one_for_one(
        rt: Arc<dyn Runtime>,
        factory: &TransportClientFactory,
        addr: SocketAddr,
        app_id: &str,
        exec_id: &str,
        block_ids: Vec<String>,
        config: &BlockFetchConfig,
    ) -> Self {
        let factory = factory.clone();
        let (app_id, exec_id, fetch_config) =
            (app_id.to_owned(), exec_id.to_owned(), config.clone());
        Self::new(rt, block_ids, config, move |ids| {
            fetch_blocks(&factory, addr, &app_id, &exec_id, ids, &fetch_config)
        })
    }

    /// The next outcome, or `None` once every block has one.
    pub async fn next_block(&mut self) -> Option<Outcome> {
        self.next().await
    }

    /// Hands every outcome to `listener`, one call per block, and returns when all are in.
    pub async fn deliver_to(&mut self, listener: &mut (impl BlockFetchingListener + ?Sized)) {
        deliver(self, listener).await
    }

    /// Retries started so far: attempts made, minus one.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The blocks without an outcome yet, in the order they were asked for.
    pub fn outstanding(&self) -> Vec<String> {
        let mut owed = self.outstanding.clone();
        self.block_ids
            .iter()
            .filter(|id| match owed.get_mut(*id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            })
            .cloned()
            .collect()
    }

    /// Records `id`'s outcome; `false` if none was owed.
    fn settle(&mut self, id: &str) -> bool {
        let Some(owed) = self.outstanding.get_mut(id) else {
            return false;
        };
        *owed -= 1;
        if *owed == 0 {
            self.outstanding.remove(id);
        }
        self.remaining -= 1;
        if self.remaining == 0 {
            // Every block has its outcome: the attempt has nothing more to say.
            self.phase = Phase::Done;
        }
        true
    }

    fn start_attempt(&mut self) {
        let ids = self.outstanding();
        debug!(
            blocks = ids.len(),
            attempt = self.retries + 1,
            "starting a block fetch attempt"
        );
        self.phase = Phase::Fetching((self.start)(ids));
    }
}

impl Stream for RetryingBlockFetcher {
    type Item = Outcome;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let this = self.get_mut();
        loop {
            if let Some(id) = this.unanswered.pop_front() {
                this.settle(&id);
                return Poll::Ready(Some((id, Err(BlockFetchError::Unanswered))));
            }
            match &mut this.phase {
                Phase::Idle if this.remaining == 0 => this.phase = Phase::Done,
                Phase::Idle => this.start_attempt(),
                Phase::Waiting(wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => this.start_attempt(),
                },
                Phase::Fetching(attempt) => match attempt.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        this.unanswered = this.outstanding().into();
                        this.phase = Phase::Done;
                    }
                    Poll::Ready(Some((id, result))) => {
                        if !this.outstanding.contains_key(&id) {
                            debug!(block_id = %id, "ignoring the outcome of a block already decided");
                            continue;
                        }
                        match result {
                            Err(error)
                                if error.is_retryable() && this.retries < this.max_retries =>
                            {
                                this.retries += 1;
                                info!(
                                    block_id = %id,
                                    %error,
                                    retry = this.retries,
                                    max_retries = this.max_retries,
                                    outstanding = this.remaining,
                                    wait = ?this.retry_wait,
                                    "block fetch failed; retrying the outstanding blocks"
                                );
                                let rt = this.rt.clone();
                                let wait = this.retry_wait;
                                // Dropping the attempt ignores (and cancels) the rest of it.
                                this.phase =
                                    Phase::Waiting(Box::pin(
                                        async move { sleep_for(&*rt, wait).await },
                                    ));
                            }
                            result => {
                                this.settle(&id);
                                return Poll::Ready(Some((id, result)));
                            }
                        }
                    }
                },
                Phase::Done => return Poll::Ready(None),
            }
        }
    }
}

impl fmt::Debug for RetryingBlockFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryingBlockFetcher")
            .field("blocks", &self.block_ids.len())
            .field("remaining", &self.remaining)
            .field("retries", &self.retries)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Spark's `RetryingBlockTransferorSuite`, ported: a scripted fetch function answers each
    //! attempt, checking that it was asked for exactly the blocks it scripts.

    use std::io;
    use std::time::Instant;

    use futures_lite::future::block_on;
    use rpc_proto::{ConnectionError, RequestError, StreamChunkId};

    use super::*;
    use crate::runtime::{AsyncListener, AsyncStream, AsyncTimer};
    use crate::sync::Mutex;

    /// A runtime whose clock stands still and whose timers fire at once, recording how long
    /// each was set for.
    #[derive(Debug)]
    struct Clock {
        now: Instant,
        waits: Mutex<Vec<Duration>>,
    }

    impl Clock {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                now: Instant::now(),
                waits: Mutex::new(Vec::new()),
            })
        }
    }

    #[derive(Debug)]
    struct Fired;

    impl AsyncTimer for Fired {
        fn reset(self: Pin<&mut Self>, _: Instant) {}

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    impl Runtime for Clock {
        fn spawn(&self, _: BoxFuture<()>) {
            unreachable!("the retry logic spawns nothing")
        }

        fn spawn_isolated(&self, _: BoxFuture<()>) {
            unreachable!("the retry logic spawns nothing")
        }

        fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send>) {
            unreachable!("the retry logic does not block")
        }

        fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
            self.waits.lock().unwrap().push(deadline - self.now);
            Box::pin(Fired)
        }

        fn connect(&self, _: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
            unreachable!("the retry logic opens no connections")
        }

        fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
            unreachable!("the retry logic listens nowhere")
        }

        fn now(&self) -> Instant {
            self.now
        }
    }

    /// What the script answers for one block.
    #[derive(Clone, Copy)]
    enum Answer {
        /// The block's bytes.
        Data(&'static str),
        /// An I/O failure (Spark's `IOException`).
        Io,
        /// A failure the server reported (Spark's `RuntimeException`).
        Remote,
    }

    use Answer::{Data, Io, Remote};

    fn io_error() -> BlockFetchError {
        BlockFetchError::Chunk {
            chunk: StreamChunkId::new(9, 0),
            error: RequestError::Disconnected(ConnectionError::PeerClosed),
        }
    }

    fn remote_error() -> BlockFetchError {
        BlockFetchError::Open(RequestError::Remote("ouch".into()))
    }

    type Interaction = Vec<(&'static str, Answer)>;

    /// Spark's `performInteractions`: each attempt takes the next interaction, checks it was
    /// asked for exactly its blocks, and answers them in order. `max_retries` 2, `retry_wait`
    /// 0 as in Spark's suite, unless `config` says otherwise.
    struct Script {
        asked: Arc<Mutex<Vec<Vec<String>>>>,
        clock: Arc<Clock>,
        fetcher: RetryingBlockFetcher,
    }

    fn script(block_ids: &[&str], interactions: Vec<Interaction>) -> Script {
        let config = BlockFetchConfig::builder()
            .with_max_retries(2)
            .with_retry_wait(Duration::ZERO)
            .build()
            .unwrap();
        script_with(block_ids, interactions, &config)
    }

    fn script_with(
        block_ids: &[&str],
        interactions: Vec<Interaction>,
        config: &BlockFetchConfig,
    ) -> Script {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let clock = Clock::new();
        let mut interactions = VecDeque::from(interactions);
        let log = asked.clone();
        let fetcher = RetryingBlockFetcher::new(
            clock.clone(),
            block_ids.iter().map(|s| s.to_string()).collect(),
            config,
            move |ids: Vec<String>| {
                log.lock().unwrap().push(ids.clone());
                let interaction = interactions
                    .pop_front()
                    .unwrap_or_else(|| panic!("an attempt nobody expected, for {ids:?}"));
                let scripted: Vec<&str> = interaction.iter().map(|(id, _)| *id).collect();
                assert_eq!(ids, scripted, "the blocks asked for");
                futures_lite::stream::iter(interaction.into_iter().map(|(id, answer)| {
                    let result = match answer {
                        Data(data) => Ok(Bytes::from_static(data.as_bytes())),
                        Io => Err(io_error()),
                        Remote => Err(remote_error()),
                    };
                    (id.to_owned(), result)
                }))
            },
        );
        Script {
            asked,
            clock,
            fetcher,
        }
    }

    /// Every outcome, as `id=data` or `id!error`.
    fn run(script: &mut Script) -> Vec<String> {
        block_on((&mut script.fetcher).collect::<Vec<_>>())
            .into_iter()
            .map(|(id, result)| match result {
                Ok(data) => format!("{id}={}", std::str::from_utf8(&data).unwrap()),
                Err(error) if error == remote_error() => format!("{id}!remote"),
                Err(error) if error == io_error() => format!("{id}!io"),
                Err(error) => format!("{id}!{error}"),
            })
            .collect()
    }

    fn attempts(script: &Script) -> usize {
        script.asked.lock().unwrap().len()
    }

    #[test]
    fn no_failures_fetch_every_block_in_one_attempt() {
        let mut s = script(
            &["b0", "b1"],
            vec![vec![("b0", Data("0")), ("b1", Data("1"))]],
        );
        assert_eq!(run(&mut s), ["b0=0", "b1=1"]);
        assert_eq!(attempts(&s), 1);
        assert_eq!(s.fetcher.retries(), 0);
    }

    #[test]
    fn an_unrecoverable_failure_is_final_and_not_retried() {
        let mut s = script(&["b0", "b1"], vec![vec![("b0", Remote), ("b1", Data("1"))]]);
        assert_eq!(run(&mut s), ["b0!remote", "b1=1"]);
        assert_eq!(attempts(&s), 1);
    }

    #[test]
    fn an_io_failure_on_the_first_block_retries_both() {
        // b0's failure abandons the attempt, so b1's success in it is ignored.
        let mut s = script(
            &["b0", "b1"],
            vec![
                vec![("b0", Io), ("b1", Data("1 first"))],
                vec![("b0", Data("0")), ("b1", Data("1 second"))],
            ],
        );
        assert_eq!(run(&mut s), ["b0=0", "b1=1 second"]);
        assert_eq!(s.fetcher.retries(), 1);
    }

    #[test]
    fn an_io_failure_on_the_second_block_retries_only_it() {
        let mut s = script(
            &["b0", "b1"],
            vec![vec![("b0", Data("0")), ("b1", Io)], vec![("b1", Data("1"))]],
        );
        assert_eq!(run(&mut s), ["b0=0", "b1=1"]);
        assert_eq!(*s.asked.lock().unwrap(), [vec!["b0", "b1"], vec!["b1"]]);
    }

    #[test]
    fn two_io_failures_are_retried() {
        let mut s = script(
            &["b0", "b1"],
            vec![
                // b0's failure starts a retry; b1's is ignored.
                vec![("b0", Io), ("b1", Io)],
                vec![("b0", Data("0")), ("b1", Io)],
                vec![("b1", Data("1"))],
            ],
        );
        assert_eq!(run(&mut s), ["b0=0", "b1=1"]);
        assert_eq!(s.fetcher.retries(), 2);
    }

    #[test]
    fn a_third_io_failure_exhausts_the_retries_and_is_final() {
        // A fourth interaction is not scripted: asking for it would panic.
        let mut s = script(
            &["b0", "b1"],
            vec![
                vec![("b0", Io), ("b1", Io)],
                vec![("b0", Data("0")), ("b1", Io)],
                vec![("b1", Io)],
            ],
        );
        assert_eq!(run(&mut s), ["b0=0", "b1!io"]);
        assert_eq!(attempts(&s), 3);
    }

    #[test]
    fn retries_and_unrecoverable_failures_interleave() {
        let mut s = script(
            &["b0", "b1", "b2"],
            vec![
                // b0 starts a retry: b1's failure and b2's success here are ignored.
                vec![("b0", Io), ("b1", Remote), ("b2", Data("2 first"))],
                // b0 arrives, b1 fails for good, b2 starts a retry.
                vec![("b0", Data("0")), ("b1", Remote), ("b2", Io)],
                vec![("b2", Data("2"))],
            ],
        );
        assert_eq!(run(&mut s), ["b0=0", "b1!remote", "b2=2"]);
        assert_eq!(
            *s.asked.lock().unwrap(),
            [vec!["b0", "b1", "b2"], vec!["b0", "b1", "b2"], vec!["b2"]]
        );
    }

    #[test]
    fn outcomes_of_a_superseded_attempt_or_of_decided_blocks_are_ignored() {
        let superseded = Arc::new(Mutex::new(false));
        let polled_after_failure = superseded.clone();
        let clock = Clock::new();
        let mut attempt = 0;
        let config = BlockFetchConfig::builder()
            .with_retry_wait(Duration::ZERO)
            .build()
            .unwrap();
        let mut fetcher = RetryingBlockFetcher::new(
            clock,
            vec!["b0".into(), "b1".into()],
            &config,
            move |ids: Vec<String>| {
                attempt += 1;
                let flag = polled_after_failure.clone();
                let outcomes: Vec<Outcome> = match attempt {
                    1 => vec![
                        ("b0".into(), Ok(Bytes::from_static(b"0"))),
                        ("b1".into(), Err(io_error())),
                        // Never read: the attempt is dropped after the failure.
                        ("b1".into(), Ok(Bytes::from_static(b"1 stale"))),
                    ],
                    _ => {
                        assert_eq!(ids, ["b1"]);
                        vec![
                            ("b0".into(), Ok(Bytes::from_static(b"0 again"))),
                            ("nobody-asked".into(), Ok(Bytes::new())),
                            ("b1".into(), Ok(Bytes::from_static(b"1"))),
                            ("b1".into(), Err(remote_error())),
                        ]
                    }
                };
                let first_attempt = attempt == 1;
                futures_lite::stream::iter(outcomes.into_iter().enumerate()).map(
                    move |(i, outcome)| {
                        if first_attempt && i == 2 {
                            *flag.lock().unwrap() = true;
                        }
                        outcome
                    },
                )
            },
        );
        let got: Vec<_> = block_on((&mut fetcher).collect::<Vec<_>>());
        assert_eq!(
            got,
            [
                ("b0".to_owned(), Ok(Bytes::from_static(b"0"))),
                ("b1".to_owned(), Ok(Bytes::from_static(b"1"))),
            ]
        );
        assert!(
            !*superseded.lock().unwrap(),
            "the superseded attempt was read after its failure"
        );
    }

    #[test]
    fn the_configured_wait_separates_attempts() {
        let config = BlockFetchConfig::builder()
            .with_max_retries(5)
            .with_retry_wait(Duration::from_millis(250))
            .build()
            .unwrap();
        let mut s = script_with(
            &["b0"],
            vec![vec![("b0", Io)], vec![("b0", Io)], vec![("b0", Data("0"))]],
            &config,
        );
        assert_eq!(run(&mut s), ["b0=0"]);
        assert_eq!(
            *s.clock.waits.lock().unwrap(),
            [Duration::from_millis(250); 2]
        );
    }

    #[test]
    fn no_retries_means_one_attempt() {
        let config = BlockFetchConfig::builder()
            .with_max_retries(0)
            .build()
            .unwrap();
        let mut s = script_with(&["b0", "b1"], vec![vec![("b0", Io), ("b1", Io)]], &config);
        assert_eq!(run(&mut s), ["b0!io", "b1!io"]);
        assert!(s.clock.waits.lock().unwrap().is_empty());
    }

    #[test]
    fn blocks_an_attempt_ends_without_are_failed_as_unanswered() {
        let mut fetcher = RetryingBlockFetcher::new(
            Clock::new(),
            vec!["b0".into(), "b1".into(), "b2".into()],
            &BlockFetchConfig::default(),
            |_| futures_lite::stream::once(("b1".to_owned(), Ok(Bytes::from_static(b"1")))),
        );
        let got: Vec<_> = block_on((&mut fetcher).collect::<Vec<_>>());
        assert_eq!(
            got,
            [
                ("b1".to_owned(), Ok(Bytes::from_static(b"1"))),
                ("b0".to_owned(), Err(BlockFetchError::Unanswered)),
                ("b2".to_owned(), Err(BlockFetchError::Unanswered)),
            ]
        );
    }

    #[test]
    fn a_block_listed_twice_gets_two_outcomes() {
        let mut s = script(
            &["b0", "b0"],
            vec![
                vec![("b0", Data("0")), ("b0", Io)],
                vec![("b0", Data("0 again"))],
            ],
        );
        assert_eq!(run(&mut s), ["b0=0", "b0=0 again"]);
    }

    #[test]
    fn no_blocks_means_no_attempt() {
        let mut s = script(&[], vec![]);
        assert!(run(&mut s).is_empty());
        assert_eq!(attempts(&s), 0);
    }

    #[test]
    fn a_listener_gets_one_call_per_block() {
        #[derive(Default)]
        struct Record(Vec<String>);

        impl BlockFetchingListener for Record {
            fn on_block_fetch_success(&mut self, block_id: String, data: Bytes) {
                self.0.push(format!("ok {block_id} {}", data.len()));
            }

            fn on_block_fetch_failure(&mut self, block_id: String, error: BlockFetchError) {
                self.0.push(format!("failed {block_id}: {error}"));
            }
        }

        let mut s = script(
            &["b0", "b1"],
            vec![
                vec![("b0", Io), ("b1", Data("1"))],
                vec![("b0", Data("00")), ("b1", Remote)],
            ],
        );
        let mut record = Record::default();
        block_on(s.fetcher.deliver_to(&mut record));
        assert_eq!(
            record.0,
            [
                "ok b0 2".to_owned(),
                format!("failed b1: {}", remote_error())
            ]
        );
    }
}
