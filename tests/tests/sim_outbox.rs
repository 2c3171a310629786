//! Simulation tests of the outbox policy (`rpc_proto::Outbox`): connect on demand, queue while
//! connecting, retry with jittered exponential backoff, fail after the attempt budget, deliver
//! in push order, never re-send.
//!
//! A small driver ([`OutboxSim`]) feeds an `Outbox` on the virtual clock of `rpc_tests::Sim`.
//! The remote env is simulated: each connect attempt takes a (seeded) time and succeeds or is
//! refused by a [`Schedule`]. A successful connect opens a real `rpc_proto::Connection` pair
//! in the simulation, which carries the delivered messages to the peer, so the tests check
//! what arrives there, not only what the outbox emits.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rpc_proto::{
    Call, Config, ConnectionError, Event, Outbox, OutboxAction, OutboxConfig, OutboxError,
    OutboxFailure, OutboxState, RequestError, RequestId,
};
use rpc_tests::{echo_server, reply_to, Netem, Notice, Side, Sim};

const MS: Duration = Duration::from_millis(1);

/// A message for the remote env: a one-way message or an ask, named by `id`.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    id: u32,
    ask: bool,
    body: Bytes,
}

impl Msg {
    fn one_way(id: u32) -> Self {
        Self {
            id,
            ask: false,
            body: Bytes::from(format!("one-way message {id}")),
        }
    }

    fn ask(id: u32) -> Self {
        Self {
            id,
            ask: true,
            body: Bytes::from(format!("ask {id}")),
        }
    }

    /// A message whose body is `len` bytes, for the byte limit.
    fn sized(id: u32, len: usize) -> Self {
        Self {
            id,
            ask: false,
            body: Bytes::from(vec![b'x'; len]),
        }
    }

    fn len(&self) -> u64 {
        self.body.len() as u64
    }
}

/// When the remote env accepts connections.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Refused until this long after the start: an attempt succeeds if it completes then or
    /// later.
    DownUntil(Duration),
    /// Refused forever.
    Down,
}

/// The remote env as connect attempts see it.
struct RemotePeer {
    schedule: Schedule,
    /// How long an attempt takes to succeed or be refused, drawn per attempt.
    connect_time: RangeInclusive<Duration>,
    rng: SmallRng,
}

impl RemotePeer {
    fn new(seed: u64, schedule: Schedule, connect_time: RangeInclusive<Duration>) -> Self {
        Self {
            schedule,
            connect_time,
            // Its own stream, so the peer's draws do not shift the link's or the outbox's.
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed_0f9e_e5e5),
        }
    }

    fn draw_connect_time(&mut self) -> Duration {
        let (lo, hi) = (*self.connect_time.start(), *self.connect_time.end());
        if lo == hi {
            return lo;
        }
        Duration::from_micros(
            self.rng
                .random_range(lo.as_micros() as u64..=hi.as_micros() as u64),
        )
    }

    fn accepts_at(&self, since_start: Duration) -> bool {
        match self.schedule {
            Schedule::DownUntil(up) => since_start >= up,
            Schedule::Down => false,
        }
    }
}

/// One connect attempt, as the driver saw it.
#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    started: Instant,
    finished: Option<Instant>,
    /// `None` while outstanding; the refusal reason if refused.
    refused: Option<Option<Arc<str>>>,
}

/// A driver of one [`Outbox`] on the simulation's virtual clock: it carries out every action
/// (connecting to the [`RemotePeer`], writing deliveries to a real connection, recording
/// failures) and feeds the outbox its inputs at the exact instants they happen.
struct OutboxSim {
    sim: Sim,
    outbox: Outbox<Msg>,
    peer: RemotePeer,
    netem: Netem,
    /// Whether the remote env answers asks (else it holds them).
    answer_asks: bool,
    attempts: Vec<Attempt>,
    /// The outstanding connect: when it completes, and the refusal reason if it will fail.
    connecting: Option<(Instant, Option<Arc<str>>)>,
    /// The current connection: (our side, the remote env's side).
    link: Option<(Side, Side)>,
    /// Every connection opened, in order.
    links: Vec<(Side, Side)>,
    pushed: Vec<(Instant, u32)>,
    delivered: Vec<(Instant, Msg)>,
    failed: Vec<(Instant, Msg, OutboxFailure)>,
    /// Asks written to a connection: (our side, request id, message id).
    asks: Vec<(Side, RequestId, u32)>,
    /// After each refused attempt that is retried: when the outbox said to retry.
    retry_at: Vec<Instant>,
    disconnects: Vec<Instant>,
}

impl OutboxSim {
    fn new(seed: u64, config: OutboxConfig, peer: RemotePeer) -> Self {
        Self {
            sim: Sim::new(seed),
            outbox: Outbox::new(config, seed),
            peer,
            netem: Netem::ideal().with_latency(MS),
            answer_asks: true,
            attempts: Vec::new(),
            connecting: None,
            link: None,
            links: Vec::new(),
            pushed: Vec::new(),
            delivered: Vec::new(),
            failed: Vec::new(),
            asks: Vec::new(),
            retry_at: Vec::new(),
            disconnects: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.sim.now()
    }

    fn at(&self, offset: Duration) -> Instant {
        self.sim.at(offset)
    }

    fn since_start(&self, t: Instant) -> Duration {
        t - self.sim.base()
    }

    /// Pushes `msg` now and carries out what follows.
    fn push(&mut self, msg: Msg) -> Result<(), OutboxError<Msg>> {
        let (now, id, len) = (self.now(), msg.id, msg.len());
        self.outbox.push(now, msg, len)?;
        self.pushed.push((now, id));
        self.drain();
        Ok(())
    }

    /// The drain rule: carry out every action.
    fn drain(&mut self) {
        let now = self.now();
        while let Some(action) = self.outbox.poll_action() {
            match action {
                OutboxAction::Connect => {
                    assert!(self.connecting.is_none(), "two connects outstanding");
                    assert!(self.link.is_none(), "connect while connected");
                    let done = now + self.peer.draw_connect_time();
                    let refused = (!self.peer.accepts_at(self.since_start(done))).then(|| {
                        Arc::from(format!(
                            "connection refused (attempt {})",
                            self.attempts.len() + 1
                        ))
                    });
                    self.attempts.push(Attempt {
                        started: now,
                        finished: None,
                        refused: None,
                    });
                    self.connecting = Some((done, refused));
                }
                OutboxAction::Deliver(msg) => {
                    let (ours, _) = self.link.expect("a delivery while not connected");
                    let body = msg.body.clone();
                    if msg.ask {
                        let request = self
                            .sim
                            .command(ours, |c, now| c.rpc(now, body, None))
                            .expect("the connection takes the ask");
                        self.asks.push((ours, request, msg.id));
                    } else {
                        self.sim
                            .command(ours, |c, now| c.send_one_way(now, body))
                            .expect("the connection takes the message");
                    }
                    self.delivered.push((now, msg));
                }
                OutboxAction::Fail(msg, failure) => self.failed.push((now, msg, failure)),
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    /// When the driver must next act: the outstanding connect's end, or the backoff timer.
    fn next_event(&self) -> Option<Instant> {
        let connect = self.connecting.as_ref().map(|(at, _)| *at);
        match (connect, self.outbox.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on whatever is due now.
    fn fire(&mut self) {
        let now = self.now();
        if let Some((at, refused)) = self.connecting.take_if(|(at, _)| *at <= now) {
            assert_eq!(at, now, "a connect result is fed late");
            let attempt = self.attempts.last_mut().unwrap();
            attempt.finished = Some(now);
            attempt.refused = Some(refused.clone());
            match refused {
                None => {
                    let config = Config::default();
                    let ours = self.sim.add(config.clone());
                    let theirs = self.sim.add(config);
                    self.sim
                        .connect(ours, theirs, self.netem.clone(), self.netem.clone());
                    if self.answer_asks {
                        self.sim.set_handler(theirs, echo_server());
                    }
                    self.link = Some((ours, theirs));
                    self.links.push((ours, theirs));
                    self.outbox.handle_connected(now);
                }
                Some(reason) => {
                    self.outbox.handle_connect_failed(now, reason);
                    if let Some(retry) = self.outbox.poll_timeout() {
                        self.retry_at.push(retry);
                    }
                }
            }
        } else if let Some(retry) = self.outbox.poll_timeout().filter(|t| *t <= now) {
            assert_eq!(retry, now, "the backoff timer is fed late");
            self.outbox.handle_timeout(now);
        }
        self.drain();
    }

    /// Tells the outbox when its connection has ended (the driver's `connection_closed`).
    fn check_link(&mut self) {
        if let Some((ours, _)) = self.link {
            if self.sim.closed_at(ours).is_some() {
                self.link = None;
                self.disconnects.push(self.now());
                self.outbox.handle_disconnected(self.now());
                self.drain();
            }
        }
    }

    /// Runs the outbox and the network until virtual time `end`.
    fn run_to(&mut self, end: Instant) {
        loop {
            self.check_link();
            match self.next_event() {
                Some(t) if t <= end => {
                    let early = t - Duration::from_micros(1);
                    if self.outbox.poll_timeout() == Some(t) && early > self.now() {
                        // A timer may fire early (a coarse runtime timer): too early is a
                        // no-op, so the retry still starts exactly at its deadline.
                        self.sim.run_to(early);
                        self.outbox.handle_timeout(early);
                        self.drain();
                        continue;
                    }
                    self.sim.run_to(t);
                    self.check_link();
                    self.fire();
                }
                _ => {
                    self.sim.run_to(end);
                    self.check_link();
                    return;
                }
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now() + duration;
        self.run_to(end);
    }

    /// What the remote env received on connection `link`, in order.
    fn received_on(&self, link: (Side, Side)) -> Vec<Bytes> {
        self.sim
            .events(link.1)
            .into_iter()
            .filter_map(|e| match e {
                Event::OneWayReceived { body } | Event::RpcReceived { body, .. } => Some(body),
                _ => None,
            })
            .collect()
    }

    /// What the remote env received, over every connection, in order.
    fn received(&self) -> Vec<Bytes> {
        self.links
            .iter()
            .flat_map(|&l| self.received_on(l))
            .collect()
    }

    fn delivered_ids(&self) -> Vec<u32> {
        self.delivered.iter().map(|(_, m)| m.id).collect()
    }

    fn pushed_ids(&self) -> Vec<u32> {
        self.pushed.iter().map(|(_, id)| *id).collect()
    }

    fn bodies(&self, ids: &[u32]) -> Vec<Bytes> {
        ids.iter()
            .map(|id| {
                self.delivered
                    .iter()
                    .find(|(_, m)| m.id == *id)
                    .map(|(_, m)| m.body.clone())
                    .unwrap_or_else(|| panic!("message {id} was not delivered"))
            })
            .collect()
    }

    /// Asserts every ask written got its reply on our side of its connection.
    fn assert_asks_answered(&self) {
        for (ours, request, id) in &self.asks {
            let body = Msg::ask(*id).body;
            let replies: Vec<_> = self
                .sim
                .events(*ours)
                .into_iter()
                .filter(|e| matches!(e, Event::ReplyReceived { call: Call::Rpc(r), .. } if r == request))
                .collect();
            assert_eq!(
                replies,
                [Event::ReplyReceived {
                    call: Call::Rpc(*request),
                    body: reply_to(&body)
                }],
                "ask {id}"
            );
        }
    }
}

fn outbox_config(initial: Duration, max: Duration, jitter: f64, attempts: u32) -> OutboxConfig {
    OutboxConfig::builder()
        .with_initial_backoff(initial)
        .with_max_backoff(max)
        .with_jitter(jitter)
        .with_max_connect_attempts(attempts)
        .build()
        .unwrap()
}

/// The wait before attempt `n + 1` after `n` failures, before jitter.
fn base_backoff(config: &OutboxConfig, failures: u32) -> Duration {
    config
        .initial_backoff()
        .saturating_mul(1 << (failures - 1).min(30))
        .min(config.max_backoff())
}

// ------------------------------------------------------------------ peer down, then up

#[test]
fn messages_queued_during_an_outage_are_delivered_in_order_once_the_peer_is_back() {
    // 8 attempts waiting at least 0.8 * (100 + 200 + 400 + 800 + 3 * 1000) ms = 3.6 s in all:
    // an outage of under 3 s always ends within the budget.
    let config = outbox_config(100 * MS, 1000 * MS, 0.2, 8);
    for seed in 0..60 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let outage = Duration::from_millis(rng.random_range(0..3000));
        let peer = RemotePeer::new(seed, Schedule::DownUntil(outage), MS..=5 * MS);
        let mut h = OutboxSim::new(seed, config.clone(), peer);

        // Messages pushed at random times during the outage (the first at the start).
        let count = rng.random_range(1..=12);
        let mut at = Duration::ZERO;
        for id in 0..count {
            let at_instant = h.at(at);
            h.run_to(at_instant);
            let msg = if rng.random_bool(0.3) {
                Msg::ask(id)
            } else {
                Msg::one_way(id)
            };
            if h.outbox.is_connected() {
                // The outage ended before this push: it is delivered at once.
                h.push(msg).unwrap();
                assert_eq!(h.delivered.last().unwrap().1.id, id, "seed {seed}");
                continue;
            }
            h.push(msg).unwrap();
            assert!(
                h.delivered.is_empty(),
                "seed {seed}: delivered while the peer is down"
            );
            at += Duration::from_millis(rng.random_range(0..=outage.as_millis() as u64 / 4 + 1));
        }
        h.run_for(Duration::from_secs(10));

        let last = h.attempts.last().unwrap();
        let up_at = last.finished.unwrap();
        assert_eq!(
            last.refused,
            Some(None),
            "seed {seed}: the last attempt connected"
        );
        assert!(
            h.since_start(up_at) >= outage,
            "seed {seed}: connected during the outage"
        );
        for attempt in &h.attempts[..h.attempts.len() - 1] {
            assert!(
                matches!(attempt.refused, Some(Some(_))),
                "seed {seed}: {attempt:?}"
            );
        }
        assert!(h.attempts.len() <= 8, "seed {seed}: within the budget");
        assert!(h.failed.is_empty(), "seed {seed}: {:?}", h.failed);
        assert_eq!(
            h.delivered_ids(),
            h.pushed_ids(),
            "seed {seed}: every message delivered once, in push order"
        );
        for (t, msg) in &h.delivered {
            let pushed_at = h.pushed.iter().find(|(_, id)| *id == msg.id).unwrap().0;
            assert_eq!(
                *t,
                pushed_at.max(up_at),
                "seed {seed}: message {} delivered when the connect succeeded (or at once)",
                msg.id
            );
        }
        assert_eq!(h.links.len(), 1, "seed {seed}");
        assert_eq!(
            h.received(),
            h.bodies(&h.pushed_ids()),
            "seed {seed}: the peer received everything in push order"
        );
        h.assert_asks_answered();

        // Connected now: a later push goes straight out, behind the others.
        h.push(Msg::one_way(100)).unwrap();
        assert_eq!(h.delivered.last().unwrap(), &(h.now(), Msg::one_way(100)));
        h.run_for(Duration::from_secs(1));
        assert_eq!(
            h.received().last(),
            Some(&Msg::one_way(100).body),
            "seed {seed}"
        );
    }
}

// ------------------------------------------------------------------ slow connect

#[test]
fn slow_connect_queues_messages_and_delivers_nothing_early() {
    for seed in 0..30 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let connect_time = Duration::from_millis(rng.random_range(200..3000));
        let peer = RemotePeer::new(
            seed,
            Schedule::DownUntil(Duration::ZERO),
            connect_time..=connect_time,
        );
        let mut h = OutboxSim::new(seed, OutboxConfig::default(), peer);
        h.netem = Netem::ideal()
            .with_latency(rng.random_range(0..20) * MS)
            .with_jitter(3 * MS)
            .with_max_piece(rng.random_range(1..=40));

        // Pushes while the connect is outstanding: they queue, nothing goes out.
        let mut id = 0;
        let mut at = Duration::ZERO;
        while at < connect_time {
            let t = h.at(at);
            h.run_to(t);
            h.push(if id % 3 == 1 {
                Msg::ask(id)
            } else {
                Msg::one_way(id)
            })
            .unwrap();
            id += 1;
            assert_eq!(
                h.outbox.state(),
                OutboxState::Connecting { attempt: 1 },
                "seed {seed}"
            );
            assert_eq!(h.outbox.queued_messages(), id as usize, "seed {seed}");
            assert_eq!(
                h.attempts.len(),
                1,
                "seed {seed}: one connect for every push"
            );
            assert!(h.delivered.is_empty(), "seed {seed}: delivered early");
            at += Duration::from_millis(rng.random_range(1..400));
        }
        let queued = id;

        // A moment before the connect completes: still nothing.
        let just_before = h.at(connect_time - Duration::from_micros(1));
        h.run_to(just_before);
        assert!(h.delivered.is_empty(), "seed {seed}");
        assert!(h.links.is_empty(), "seed {seed}");

        // At the instant it completes: everything, in push order.
        let connected = h.at(connect_time);
        h.run_to(connected);
        assert!(h.outbox.is_connected(), "seed {seed}");
        assert_eq!(h.outbox.queued_messages(), 0);
        assert_eq!(h.outbox.queued_bytes(), 0);
        assert_eq!(
            h.delivered_ids(),
            (0..queued).collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert!(
            h.delivered.iter().all(|(t, _)| *t == connected),
            "seed {seed}"
        );

        // Later pushes go out at once, behind the queued ones.
        for _ in 0..3 {
            h.run_for(Duration::from_millis(rng.random_range(0..50)));
            let now = h.now();
            h.push(Msg::one_way(id)).unwrap();
            assert_eq!(h.delivered.last().unwrap(), &(now, Msg::one_way(id)));
            id += 1;
        }
        h.run_for(Duration::from_secs(2));
        assert_eq!(h.attempts.len(), 1);
        assert_eq!(h.received(), h.bodies(&h.pushed_ids()), "seed {seed}");
        h.assert_asks_answered();
    }
}

// ------------------------------------------------------------------ connect never succeeds

#[test]
fn when_connect_never_succeeds_every_queued_message_fails_once_with_the_last_reason() {
    // Bases 100, 200, 400, 800, 800 ms, each stretched by up to ±20%.
    let config = outbox_config(100 * MS, 800 * MS, 0.2, 6);
    let mut timelines = Vec::new();
    for seed in 0..40 {
        let mut rng = SmallRng::seed_from_u64(seed);
        // Some attempts are refused at once, some take a while (an unreachable host).
        let peer = RemotePeer::new(seed, Schedule::Down, Duration::ZERO..=300 * MS);
        let mut h = OutboxSim::new(seed, config.clone(), peer);

        h.push(Msg::ask(0)).unwrap();
        let mut id = 1;
        while h.outbox.queued_messages() > 0 && id < 20 {
            h.run_for(Duration::from_millis(rng.random_range(0..500)));
            if h.outbox.queued_messages() == 0 {
                break;
            }
            h.push(if rng.random_bool(0.5) {
                Msg::ask(id)
            } else {
                Msg::one_way(id)
            })
            .unwrap();
            id += 1;
        }
        h.run_for(Duration::from_secs(30));

        // The whole budget was spent, and nothing more.
        assert_eq!(h.attempts.len(), 6, "seed {seed}: {:#?}", h.attempts);
        assert_eq!(h.outbox.state(), OutboxState::Idle, "seed {seed}");
        assert_eq!(h.outbox.poll_timeout(), None);
        assert!(h.delivered.is_empty() && h.links.is_empty());

        // Each retry starts exactly when the outbox said, after a wait within the jittered
        // bounds that grows while the base doubles and stays in the capped bounds after.
        assert_eq!(h.retry_at.len(), 5, "seed {seed}");
        let j = config.jitter();
        let (mut last_delay, mut last_base) = (Duration::ZERO, Duration::ZERO);
        for (n, pair) in h.attempts.windows(2).enumerate() {
            let failures = n as u32 + 1;
            let refused_at = pair[0].finished.unwrap();
            assert_eq!(
                pair[1].started, h.retry_at[n],
                "seed {seed}: retry {failures} on time"
            );
            let delay = pair[1].started - refused_at;
            let base = base_backoff(&config, failures);
            assert!(
                delay >= base.mul_f64(1.0 - j) && delay <= base.mul_f64(1.0 + j),
                "seed {seed}: wait {delay:?} after {failures} failures, base {base:?}"
            );
            assert!(base >= last_base, "the base never shrinks");
            if base >= last_base * 2 {
                // With ±20% jitter a doubled wait is always longer: 0.8 * 2b > 1.2 * b.
                assert!(
                    delay > last_delay,
                    "seed {seed}: wait {failures} did not grow"
                );
            }
            (last_delay, last_base) = (delay, base);
        }

        // Every message pushed failed exactly once, when the last attempt was refused, with
        // its reason.
        let gave_up = h.attempts[5].finished.unwrap();
        let reason: Arc<str> = Arc::from("connection refused (attempt 6)");
        assert_eq!(h.attempts[5].refused, Some(Some(reason.clone())));
        let failed_ids: Vec<u32> = h.failed.iter().map(|(_, m, _)| m.id).collect();
        assert_eq!(
            failed_ids,
            h.pushed_ids(),
            "seed {seed}: each failed once, in order"
        );
        for (t, msg, failure) in &h.failed {
            assert_eq!(*t, gave_up, "seed {seed}: message {}", msg.id);
            assert_eq!(
                failure,
                &OutboxFailure::ConnectFailed {
                    attempts: 6,
                    reason: reason.clone()
                }
            );
        }
        timelines.push(
            h.attempts
                .iter()
                .map(|a| h.since_start(a.started))
                .collect::<Vec<_>>(),
        );

        // A push after giving up starts over at once, with a fresh budget and backoff.
        let now = h.now();
        h.push(Msg::one_way(99)).unwrap();
        assert_eq!(h.attempts.len(), 7);
        assert_eq!(h.attempts[6].started, now);
        h.run_for(Duration::from_secs(30));
        assert_eq!(h.attempts.len(), 12, "seed {seed}: a second budget of 6");
        let delay = h.attempts[7].started - h.attempts[6].finished.unwrap();
        assert!(
            delay <= config.initial_backoff().mul_f64(1.0 + j),
            "seed {seed}"
        );
        assert_eq!(h.failed.last().unwrap().1.id, 99);
    }
    // Jitter comes from the seed: the timelines differ across seeds...
    timelines.sort();
    timelines.dedup();
    assert!(timelines.len() > 30, "jitter varies with the seed");
}

#[test]
fn retries_happen_at_exact_virtual_times() {
    // Without jitter and with refusals at once, the timeline is exact: waits of 100, 200,
    // 400, 800 and (capped) 800 ms.
    let config = outbox_config(100 * MS, 800 * MS, 0.0, 6);
    let peer = RemotePeer::new(0, Schedule::Down, Duration::ZERO..=Duration::ZERO);
    let mut h = OutboxSim::new(0, config, peer);
    h.push(Msg::one_way(0)).unwrap();
    h.run_for(Duration::from_secs(10));
    let starts: Vec<_> = h
        .attempts
        .iter()
        .map(|a| h.since_start(a.started))
        .collect();
    assert_eq!(
        starts,
        [0, 100, 300, 700, 1500, 2300].map(|ms| ms * MS),
        "attempt start times"
    );
    assert_eq!(h.failed.len(), 1);
    assert_eq!(h.since_start(h.failed[0].0), 2300 * MS);

    // And the same seed replays the same jittered timeline.
    let run = |seed| {
        let config = outbox_config(100 * MS, 800 * MS, 0.2, 6);
        let peer = RemotePeer::new(seed, Schedule::Down, Duration::ZERO..=50 * MS);
        let mut h = OutboxSim::new(seed, config, peer);
        h.push(Msg::one_way(0)).unwrap();
        h.run_for(Duration::from_secs(10));
        h.attempts
            .iter()
            .map(|a| (h.since_start(a.started), h.since_start(a.finished.unwrap())))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

// ------------------------------------------------------------------ disconnect mid-ask

#[test]
fn disconnect_mid_ask_fails_the_ask_and_the_next_push_reconnects_without_resending() {
    for seed in 0..20 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let peer = RemotePeer::new(seed, Schedule::DownUntil(Duration::ZERO), 10 * MS..=30 * MS);
        let mut h = OutboxSim::new(seed, OutboxConfig::default(), peer);
        // The remote env takes the ask but never answers it.
        h.answer_asks = false;

        h.push(Msg::ask(1)).unwrap();
        h.push(Msg::one_way(2)).unwrap();
        h.run_for(100 * MS);
        assert_eq!(h.delivered_ids(), [1, 2], "seed {seed}");
        let first = h.links[0];
        assert_eq!(h.received_on(first), h.bodies(&[1, 2]));
        let (ours, request, _) = h.asks[0];

        // The remote env crashes with the ask outstanding; our side reads end of file.
        let after = Duration::from_millis(rng.random_range(0..50));
        h.sim.crash(first.1, Notice::Eof { after });
        h.run_for(Duration::from_secs(1));

        // The connection failed the ask as disconnected, once, then closed.
        let failures: Vec<_> = h
            .sim
            .events(ours)
            .into_iter()
            .filter(|e| matches!(e, Event::CallFailed { call: Call::Rpc(r), .. } if *r == request))
            .collect();
        assert!(
            matches!(
                failures.as_slice(),
                [Event::CallFailed {
                    error: RequestError::Disconnected(ConnectionError::PeerClosed),
                    ..
                }]
            ),
            "seed {seed}: {failures:?}"
        );
        assert!(matches!(
            h.sim.events(ours).last(),
            Some(Event::Closed {
                error: ConnectionError::PeerClosed
            })
        ));

        // The outbox went idle: no reconnect, nothing re-sent, nothing failed.
        assert_eq!(h.disconnects.len(), 1, "seed {seed}");
        assert_eq!(h.outbox.state(), OutboxState::Idle, "seed {seed}");
        assert_eq!(
            h.attempts.len(),
            1,
            "seed {seed}: no reconnect without a push"
        );
        assert_eq!(h.delivered_ids(), [1, 2], "seed {seed}: nothing re-sent");
        assert!(h.failed.is_empty());

        // The next push reconnects and goes out on the new connection, alone.
        h.push(Msg::ask(3)).unwrap();
        assert_eq!(h.attempts.len(), 2);
        assert_eq!(h.outbox.state(), OutboxState::Connecting { attempt: 1 });
        h.run_for(Duration::from_secs(1));
        assert_eq!(h.links.len(), 2, "seed {seed}");
        assert_eq!(
            h.delivered_ids(),
            [1, 2, 3],
            "seed {seed}: each delivered once"
        );
        assert_eq!(h.received_on(h.links[1]), h.bodies(&[3]), "seed {seed}");
        assert_eq!(h.received_on(first), h.bodies(&[1, 2]));
    }
}

// ------------------------------------------------------------------ full queue

#[test]
fn a_full_queue_refuses_with_the_message_handed_back_and_accepts_again_once_drained() {
    let config = OutboxConfig::builder()
        .with_max_messages(3)
        .with_max_bytes(100)
        .with_max_connect_attempts(2)
        .with_jitter(0.0)
        .build()
        .unwrap();
    let peer = RemotePeer::new(1, Schedule::DownUntil(Duration::ZERO), 500 * MS..=500 * MS);
    let mut h = OutboxSim::new(1, config.clone(), peer);

    // The count limit, while connecting.
    for id in 0..3 {
        h.push(Msg::sized(id, 10)).unwrap();
    }
    match h.push(Msg::sized(3, 10)) {
        Err(OutboxError::Full {
            message,
            queued_messages,
            queued_bytes,
            ..
        }) => {
            assert_eq!(message, Msg::sized(3, 10), "the message is handed back");
            assert_eq!((queued_messages, queued_bytes), (3, 30));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(h.outbox.queued_messages(), 3);

    // Drained by the connect: pushes are accepted again, with no limit while connected.
    h.run_for(500 * MS);
    assert_eq!(h.delivered_ids(), [0, 1, 2]);
    for id in 4..10 {
        h.push(Msg::sized(id, 60)).unwrap();
    }
    assert_eq!(h.delivered_ids(), [0, 1, 2, 4, 5, 6, 7, 8, 9]);

    // Disconnected and connecting again: the byte limit, counted afresh.
    let (_, theirs) = h.link.unwrap();
    h.sim.crash(theirs, Notice::eof());
    h.run_for(100 * MS);
    assert_eq!(h.outbox.state(), OutboxState::Idle);
    h.push(Msg::sized(10, 60)).unwrap();
    let refused = h.push(Msg::sized(11, 41)).unwrap_err();
    assert!(
        matches!(
            refused,
            OutboxError::Full {
                queued_messages: 1,
                queued_bytes: 60,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(refused.into_inner(), Msg::sized(11, 41));
    h.push(Msg::sized(12, 40)).unwrap(); // exactly at the limit
    assert_eq!(h.outbox.queued_bytes(), 100);
    assert!(h.push(Msg::sized(13, 1)).is_err());

    // A message larger than the whole limit is refused even by an empty queue.
    let mut empty = OutboxSim::new(
        2,
        config.clone(),
        RemotePeer::new(2, Schedule::Down, MS..=MS),
    );
    assert!(matches!(
        empty.push(Msg::sized(0, 101)),
        Err(OutboxError::Full {
            queued_messages: 0,
            queued_bytes: 0,
            ..
        })
    ));
    assert_eq!(
        empty.outbox.state(),
        OutboxState::Idle,
        "a refused push does not connect"
    );

    // Drained by giving up: the failed messages free the queue.
    let peer = RemotePeer::new(3, Schedule::Down, MS..=MS);
    let mut h = OutboxSim::new(3, config, peer);
    for id in 0..3 {
        h.push(Msg::sized(id, 30)).unwrap();
    }
    assert!(h.push(Msg::sized(3, 1)).is_err());
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.failed.len(), 3);
    assert_eq!(
        (h.outbox.queued_messages(), h.outbox.queued_bytes()),
        (0, 0)
    );
    for id in 4..7 {
        h.push(Msg::sized(id, 30)).unwrap();
    }
    assert_eq!(h.outbox.queued_messages(), 3);
}
