//! The ordering rules of one endpoint's inbox: Spark's `Inbox`, as pure state.

use std::collections::VecDeque;
use std::fmt;

/// What an [`Inbox`] hands out to be processed, from [`Inbox::next`].
///
/// The three steps of an endpoint's life are fixed (Spark's `OnStart`, a message, `OnStop`);
/// what a message is, including notifications such as Spark's `RemoteProcessConnected`, is up
/// to the driver's `M`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum InboxItem<M> {
    /// Start the endpoint (Spark's `onStart`). Always the first item, processed alone.
    Start,
    /// Process a message.
    Message(M),
    /// Stop the endpoint (Spark's `onStop`). The last item, processed alone.
    Stop,
}

/// A message could not be posted; the message is handed back so its sender can be failed.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError<M> {
    /// The inbox was stopped (Spark drops the message and fails its sender).
    #[error("inbox is stopped")]
    Stopped(M),
    /// The inbox holds as many messages as its capacity (Spark's inbox is unbounded): the
    /// message is refused so its sender can be told, or the message counted and dropped.
    #[error("inbox is full")]
    Full(M),
}

impl<M> InboxError<M> {
    /// The message that was not posted.
    pub fn into_inner(self) -> M {
        match self {
            Self::Stopped(m) | Self::Full(m) => m,
        }
    }
}

impl<M> fmt::Debug for InboxError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped(_) => f.write_str("Stopped(..)"),
            Self::Full(_) => f.write_str("Full(..)"),
        }
    }
}

/// The inbox of one endpoint: which item may be processed now. Spark's `Inbox`, without the
/// threads and the endpoint.
///
/// The inbox starts with [`InboxItem::Start`] queued. [`post`](Inbox::post) queues messages;
/// [`next`](Inbox::next) hands out an item only when it may be processed now, and
/// [`done`](Inbox::done) reports that one item handed out has finished. The rules:
///
/// - `Start` comes first and runs alone: nothing else is handed out until it is done.
/// - A serial inbox (`concurrent == false`, Spark's `ThreadSafeRpcEndpoint`) hands out one
///   item at a time, in post order.
/// - A concurrent inbox hands out any number of messages at once (still in post order), but
///   never while `Start` or `Stop` runs.
/// - [`stop`](Inbox::stop) queues `Stop` after the messages already queued and makes the inbox
///   serial, as Spark does: the remaining messages are still processed, one at a time, then
///   `Stop` runs alone, once every active item has finished. Later posts are refused with
///   [`InboxError::Stopped`].
///
/// Spark's inbox is unbounded, so a sender faster than the endpoint grows it until the
/// process runs out of memory. This one has a capacity ([`with_capacity`](Inbox::with_capacity);
/// unbounded with [`new`](Inbox::new)): [`post`](Inbox::post) refuses a message with
/// [`InboxError::Full`] while the messages queued plus those being processed reach it, so a
/// concurrent inbox bounds its parallel work too. [`post_unbounded`](Inbox::post_unbounded)
/// queues past the capacity, for the few notifications a driver must not lose.
///
/// A driver calls `next` until it returns `None` after every `post`, `done` and `stop`, and
/// processes what it gets (on as many workers as it likes: the inbox says what may run
/// together).
///
/// ```
/// use rpc_proto::{Inbox, InboxItem};
///
/// let mut inbox = Inbox::new(false);
/// inbox.post("a").unwrap();
/// inbox.post("b").unwrap();
/// assert_eq!(inbox.next(), Some(InboxItem::Start));
/// assert_eq!(inbox.next(), None); // Start runs alone
/// inbox.done();
/// assert_eq!(inbox.next(), Some(InboxItem::Message("a")));
/// assert_eq!(inbox.next(), None); // serial: one at a time
/// inbox.stop();
/// inbox.done();
/// assert_eq!(inbox.next(), Some(InboxItem::Message("b")));
/// inbox.done();
/// assert_eq!(inbox.next(), Some(InboxItem::Stop));
/// inbox.done();
/// assert!(inbox.is_finished());
/// assert!(inbox.post("c").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Inbox<M> {
    queue: VecDeque<InboxItem<M>>,
    concurrent: bool,
    /// `Start` or `Stop` is being processed.
    exclusive: bool,
    started: bool,
    stopped: bool,
    finished: bool,
    active: usize,
    /// Messages queued or being processed.
    messages: usize,
    capacity: usize,
}

impl<M> Inbox<M> {
    /// A new inbox with [`InboxItem::Start`] queued. With `concurrent`, messages may be
    /// processed in parallel.
    pub fn new(concurrent: bool) -> Self {
        Self::with_capacity(concurrent, usize::MAX)
    }

    /// A new inbox that holds at most `capacity` messages, queued or being processed
    /// (`Start` and `Stop` do not count); zero is taken as one.
    pub fn with_capacity(concurrent: bool, capacity: usize) -> Self {
        Self {
            queue: VecDeque::from([InboxItem::Start]),
            concurrent,
            exclusive: false,
            started: false,
            stopped: false,
            finished: false,
            active: 0,
            messages: 0,
            capacity: capacity.max(1),
        }
    }

    /// Queues a message, or hands it back if the inbox was stopped or is full.
    pub fn post(&mut self, message: M) -> Result<(), InboxError<M>> {
        if self.stopped {
            return Err(InboxError::Stopped(message));
        }
        if self.messages >= self.capacity {
            return Err(InboxError::Full(message));
        }
        self.push(message);
        Ok(())
    }

    /// Queues a message even past the capacity (for notifications that must not be lost,
    /// which the driver bounds otherwise), or hands it back if the inbox was stopped. It
    /// counts in [`messages`](Inbox::messages) like any other, so while it is held, fewer
    /// [`post`](Inbox::post)s are taken.
    pub fn post_unbounded(&mut self, message: M) -> Result<(), InboxError<M>> {
        if self.stopped {
            return Err(InboxError::Stopped(message));
        }
        self.push(message);
        Ok(())
    }

    fn push(&mut self, message: M) {
        self.messages += 1;
        self.queue.push_back(InboxItem::Message(message));
    }

    /// The next item to process, if one may be processed now. Every item handed out must be
    /// reported finished with [`done`](Inbox::done).
    ///
    /// Not an [`Iterator`]: `None` means "nothing may run now", not "the end".
    #[must_use]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<InboxItem<M>> {
        if self.exclusive {
            return None;
        }
        let may_run = match self.queue.front()? {
            InboxItem::Start | InboxItem::Stop => self.active == 0,
            InboxItem::Message(_) => self.active == 0 || self.is_concurrent(),
        };
        if !may_run {
            return None;
        }
        let item = self.queue.pop_front()?;
        self.exclusive = !matches!(item, InboxItem::Message(_));
        self.active += 1;
        Some(item)
    }

    /// Reports that one item handed out by [`next`](Inbox::next) has finished.
    ///
    /// # Panics
    ///
    /// If no item is active.
    pub fn done(&mut self) {
        assert!(self.active > 0, "Inbox::done called with no active item");
        self.active -= 1;
        if !self.exclusive {
            // Items run alone (`Start`, `Stop`) are never counted as messages.
            self.messages -= 1;
        }
        if self.exclusive {
            self.exclusive = false;
            if self.started {
                self.finished = true;
            } else {
                self.started = true;
            }
        }
    }

    /// Stops the inbox: queues [`InboxItem::Stop`] after the messages already queued, refuses
    /// later posts and makes the inbox serial. Idempotent.
    pub fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.queue.push_back(InboxItem::Stop);
        }
    }

    /// Whether [`stop`](Inbox::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether `Stop` was processed and reported done: the endpoint is gone.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether messages may be processed in parallel now: the inbox was made concurrent and is
    /// not stopped.
    pub fn is_concurrent(&self) -> bool {
        self.concurrent && !self.stopped
    }

    /// Items queued and not yet handed out, counting a queued `Start` and `Stop`.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Items handed out and not yet reported [`done`](Inbox::done).
    pub fn active(&self) -> usize {
        self.active
    }

    /// Messages queued or being processed: what the capacity bounds.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// How many messages [`post`](Inbox::post) accepts before refusing with
    /// [`InboxError::Full`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(concurrent: bool) -> Inbox<u32> {
        let mut inbox = Inbox::new(concurrent);
        assert_eq!(inbox.next(), Some(InboxItem::Start));
        inbox.done();
        inbox
    }

    #[test]
    fn start_comes_first_and_alone() {
        for concurrent in [false, true] {
            let mut inbox = Inbox::new(concurrent);
            assert_eq!(inbox.len(), 1);
            inbox.post(1).unwrap();
            inbox.post(2).unwrap();
            assert_eq!(inbox.next(), Some(InboxItem::Start));
            assert_eq!(inbox.next(), None);
            assert_eq!(inbox.active(), 1);
            inbox.done();
            assert_eq!(inbox.next(), Some(InboxItem::Message(1)));
        }
    }

    #[test]
    fn serial_inbox_hands_out_one_at_a_time_in_order() {
        let mut inbox = started(false);
        for m in 0..3 {
            inbox.post(m).unwrap();
        }
        for m in 0..3 {
            assert_eq!(inbox.next(), Some(InboxItem::Message(m)));
            assert_eq!(inbox.next(), None);
            inbox.done();
        }
        assert_eq!(inbox.next(), None);
        assert!(inbox.is_empty());
    }

    #[test]
    fn concurrent_inbox_hands_out_many_at_once() {
        let mut inbox = started(true);
        for m in 0..3 {
            inbox.post(m).unwrap();
        }
        for m in 0..3 {
            assert_eq!(inbox.next(), Some(InboxItem::Message(m)));
        }
        assert_eq!(inbox.active(), 3);
    }

    #[test]
    fn stop_waits_for_active_items_and_runs_alone() {
        let mut inbox = started(true);
        inbox.post(1).unwrap();
        inbox.post(2).unwrap();
        assert_eq!(inbox.next(), Some(InboxItem::Message(1)));
        assert_eq!(inbox.next(), Some(InboxItem::Message(2)));
        inbox.stop();
        assert_eq!(inbox.next(), None);
        inbox.done();
        assert_eq!(inbox.next(), None);
        inbox.done();
        assert_eq!(inbox.next(), Some(InboxItem::Stop));
        assert!(!inbox.is_finished());
        inbox.done();
        assert!(inbox.is_finished());
        assert_eq!(inbox.next(), None);
    }

    #[test]
    fn stop_makes_a_concurrent_inbox_serial_for_the_rest() {
        let mut inbox = started(true);
        for m in 0..3 {
            inbox.post(m).unwrap();
        }
        assert!(inbox.is_concurrent());
        inbox.stop();
        assert!(!inbox.is_concurrent());
        assert_eq!(inbox.next(), Some(InboxItem::Message(0)));
        assert_eq!(inbox.next(), None);
        inbox.done();
        assert_eq!(inbox.next(), Some(InboxItem::Message(1)));
        inbox.done();
        assert_eq!(inbox.next(), Some(InboxItem::Message(2)));
        inbox.done();
        assert_eq!(inbox.next(), Some(InboxItem::Stop));
    }

    #[test]
    fn posts_after_stop_are_handed_back() {
        let mut inbox = started(false);
        inbox.stop();
        inbox.stop();
        assert_eq!(inbox.len(), 1, "stop is idempotent");
        let err = inbox.post(7).unwrap_err();
        assert_eq!(err.to_string(), "inbox is stopped");
        assert_eq!(err.into_inner(), 7);
    }

    #[test]
    fn stop_before_start_still_starts_first() {
        let mut inbox = Inbox::new(true);
        inbox.post(1).unwrap();
        inbox.stop();
        assert_eq!(inbox.next(), Some(InboxItem::Start));
        inbox.done();
        assert_eq!(inbox.next(), Some(InboxItem::Message(1)));
        inbox.done();
        assert_eq!(inbox.next(), Some(InboxItem::Stop));
        inbox.done();
        assert!(inbox.is_finished());
    }

    /// Regression (issue 11): the inbox grew by one message per post, without bound, so a
    /// peer sending to a slow endpoint grew the server's memory linearly.
    #[test]
    fn a_full_inbox_refuses_posts_until_a_message_is_done() {
        for concurrent in [false, true] {
            let mut inbox = Inbox::with_capacity(concurrent, 2);
            inbox.post(1).unwrap();
            inbox.post(2).unwrap();
            let err = inbox.post(3).unwrap_err();
            assert_eq!(err.to_string(), "inbox is full");
            assert_eq!(err.into_inner(), 3);
            assert_eq!(inbox.messages(), 2);
            // Start does not count, a message being processed does.
            assert_eq!(inbox.next(), Some(InboxItem::Start));
            inbox.done();
            assert_eq!(inbox.next(), Some(InboxItem::Message(1)));
            assert!(matches!(inbox.post(4), Err(InboxError::Full(4))));
            inbox.done();
            inbox.post(4).unwrap();
            // Notifications go past the capacity; stopping still refuses everything.
            inbox.post_unbounded(5).unwrap();
            assert_eq!(inbox.messages(), 3);
            inbox.stop();
            assert!(matches!(
                inbox.post_unbounded(6),
                Err(InboxError::Stopped(6))
            ));
        }
    }

    #[test]
    #[should_panic(expected = "no active item")]
    fn done_without_an_active_item_panics() {
        Inbox::<u32>::new(false).done();
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Post,
        Next,
        /// Finish the active item at this index (modulo the number active).
        Done(usize),
        Stop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => Just(Op::Post),
            8 => Just(Op::Next),
            6 => any::<usize>().prop_map(Op::Done),
            1 => Just(Op::Stop),
        ]
    }

    /// The test's record of what the inbox handed out, checked at every step.
    struct Model {
        concurrent: bool,
        inbox: Inbox<u32>,
        posted: u32,
        accepted: Vec<u32>,
        handed_out: Vec<u32>,
        active: Vec<InboxItem<u32>>,
        starts: usize,
        stops: usize,
        items: usize,
        stopped: bool,
        capacity: usize,
        /// Messages reported done.
        finished: usize,
    }

    impl Model {
        fn new(concurrent: bool, capacity: usize) -> Self {
            Self {
                capacity,
                finished: 0,
                concurrent,
                inbox: Inbox::with_capacity(concurrent, capacity),
                posted: 0,
                accepted: Vec::new(),
                handed_out: Vec::new(),
                active: Vec::new(),
                starts: 0,
                stops: 0,
                items: 0,
                stopped: false,
            }
        }

        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Post => {
                    let m = self.posted;
                    self.posted += 1;
                    match self.inbox.post(m) {
                        Ok(()) => {
                            prop_assert!(!self.stopped, "post accepted after stop");
                            self.accepted.push(m);
                        }
                        Err(InboxError::Full(back)) => {
                            prop_assert!(!self.stopped, "a stopped inbox said full");
                            prop_assert_eq!(
                                self.accepted.len() - self.finished,
                                self.capacity,
                                "refused below capacity"
                            );
                            prop_assert_eq!(back, m);
                        }
                        Err(err) => {
                            prop_assert!(self.stopped, "post refused before stop");
                            prop_assert_eq!(err.into_inner(), m);
                        }
                    }
                }
                Op::Next => {
                    let exclusive_running = self
                        .active
                        .iter()
                        .any(|i| !matches!(i, InboxItem::Message(_)));
                    let Some(item) = self.inbox.next() else {
                        return Ok(());
                    };
                    prop_assert!(
                        !exclusive_running,
                        "{:?} handed out while Start or Stop runs",
                        item
                    );
                    prop_assert!(self.stops == 0, "{:?} handed out after Stop", item);
                    match &item {
                        InboxItem::Start => {
                            prop_assert_eq!(self.items, 0, "Start is first");
                            prop_assert!(self.active.is_empty());
                            self.starts += 1;
                        }
                        InboxItem::Message(m) => {
                            prop_assert_eq!(self.starts, 1, "a message before Start");
                            if !self.concurrent || self.stopped {
                                prop_assert!(
                                    self.active.is_empty(),
                                    "serial inbox ran two at once"
                                );
                            }
                            self.handed_out.push(*m);
                        }
                        InboxItem::Stop => {
                            prop_assert!(self.stopped);
                            prop_assert!(self.active.is_empty(), "Stop ran with others");
                            prop_assert_eq!(
                                &self.handed_out,
                                &self.accepted,
                                "Stop before a message"
                            );
                            self.stops += 1;
                        }
                    }
                    self.items += 1;
                    self.active.push(item);
                }
                Op::Done(i) => {
                    if !self.active.is_empty() {
                        let i = i % self.active.len();
                        if let InboxItem::Message(_) = self.active.swap_remove(i) {
                            self.finished += 1;
                        }
                        self.inbox.done();
                    }
                }
                Op::Stop => {
                    self.inbox.stop();
                    self.stopped = true;
                }
            }
            prop_assert_eq!(self.inbox.active(), self.active.len());
            prop_assert_eq!(self.inbox.is_stopped(), self.stopped);
            prop_assert_eq!(self.inbox.messages(), self.accepted.len() - self.finished);
            prop_assert!(self.inbox.messages() <= self.capacity);
            // Handed out in post order, in both modes.
            prop_assert_eq!(
                &self.handed_out[..],
                &self.accepted[..self.handed_out.len()]
            );
            Ok(())
        }

        /// Runs everything left to the end; checks nothing is stuck.
        fn drain(&mut self) -> Result<(), TestCaseError> {
            self.apply(Op::Stop)?;
            loop {
                if self.inbox.active() == 0 && !self.inbox.is_empty() {
                    let before = self.items;
                    self.apply(Op::Next)?;
                    prop_assert_eq!(self.items, before + 1, "inbox stuck with work queued");
                } else if self.inbox.active() > 0 {
                    self.apply(Op::Done(0))?;
                    self.apply(Op::Next)?;
                } else {
                    break;
                }
            }
            prop_assert!(self.inbox.is_finished());
            prop_assert_eq!(self.starts, 1);
            prop_assert_eq!(self.stops, 1);
            prop_assert_eq!(&self.handed_out, &self.accepted);
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn interleavings_keep_the_inbox_rules(
            concurrent in any::<bool>(),
            capacity in prop_oneof![1..6usize, Just(usize::MAX)],
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let mut model = Model::new(concurrent, capacity);
            for op in ops {
                model.apply(op)?;
            }
            model.drain()?;
        }
    }
}
