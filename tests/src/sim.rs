//! The simulation: connections, the links between them, virtual time and fault injection.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rpc_proto::{Config, Connection, Event};

use crate::netem::{Direction, LinkStats, Netem, Notice, Payload};

/// Names one connection of a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Side(usize);

impl Side {
    /// The index of the connection, in the order it was added.
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "side {}", self.0)
    }
}

/// An event a connection reported, with the virtual time it was drained at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// When the event was drained.
    pub at: Instant,
    /// The event.
    pub event: Event,
}

/// Reacts to a connection's events as they are drained, like the application above a driver:
/// it may issue commands on the connection (answer a request, feed a body). The simulation
/// drains the connection again afterwards.
pub type Handler = Box<dyn FnMut(&mut Connection, Instant, &Event)>;

/// Steps a simulation may take in one `run_*` call before it is declared stuck in a loop.
const STEP_LIMIT: u64 = 10_000_000;

/// Times one side may be woken at one instant before its timer is declared stuck.
const WAKE_LIMIT: u32 = 1_000;

struct Peer {
    conn: Connection,
    /// False once crashed: the connection is frozen, fed nothing and drained no more.
    alive: bool,
    /// What `poll_timeout` returned at the last drain.
    timer: Option<Instant>,
    history: Vec<Recorded>,
    /// How much of `history` [`Sim::new_events`] has handed out.
    cursor: usize,
    handler: Option<Handler>,
    /// The link the connection is on, and whether it is the link's `a` side.
    link: Option<(usize, bool)>,
}

struct Link {
    a: Side,
    b: Side,
    a_to_b: Direction,
    b_to_a: Direction,
}

/// A deterministic network simulation: [`Connection`]s wired through seeded in-memory links
/// on virtual time, like quinn's `Pair` with str0m's netem.
///
/// Each connection is a [`Side`]; [`connect`](Sim::connect) joins two sides with a link whose
/// directions each have their own [`Netem`] settings. The simulation owns the clock: it starts
/// at one real [`Instant`] taken at construction and only moves when it is stepped, so a run is
/// a pure function of the seed and the test's commands.
///
/// [`step`](Sim::step) drains every connection (the drain rule: every `poll_transmit`,
/// `poll_event`, then `poll_timeout`), advances virtual time to the next delivery, notice or
/// connection deadline, and feeds what is due: bytes to `handle_bytes`, end of file to
/// `handle_closed`, errors to `handle_transport_error`, deadlines to `handle_timeout`. Every
/// drained event is recorded per side with its time ([`history`](Sim::history)) and handed to
/// the side's [`Handler`], if it has one.
///
/// At one instant, deliveries are fed before deadlines. Like a driver, the simulation closes
/// a side's socket once its connection has ended and has nothing left to transmit: the peer
/// reads end of file after the last bytes.
///
/// ```
/// use rpc_proto::{Call, Config, Event};
/// use rpc_tests::{echo_server, reply_to, Netem, Sim};
///
/// let (mut sim, client, server) = Sim::pair(1, Config::default(), Config::default(), Netem::ideal());
/// sim.set_handler(server, echo_server());
/// let id = sim.command(client, |c, now| c.rpc(now, "ping".into(), None)).unwrap();
/// sim.run_until_quiet();
/// assert_eq!(
///     sim.events(client),
///     [Event::ReplyReceived { call: Call::Rpc(id), body: reply_to(b"ping") }]
/// );
/// ```
pub struct Sim {
    base: Instant,
    now: Instant,
    rng: SmallRng,
    peers: Vec<Peer>,
    links: Vec<Link>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("elapsed", &self.elapsed())
            .field("sides", &self.peers.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// An empty simulation whose randomness (jitter, byte splitting) comes from `seed`.
    pub fn new(seed: u64) -> Self {
        // The one real clock reading: everything after it is base + virtual offsets.
        let base = Instant::now();
        Self {
            base,
            now: base,
            rng: SmallRng::seed_from_u64(seed),
            peers: Vec::new(),
            links: Vec::new(),
        }
    }

    /// A simulation with two connections (client, server) joined by a link with `netem` in
    /// both directions.
    pub fn pair(seed: u64, client: Config, server: Config, netem: Netem) -> (Self, Side, Side) {
        let mut sim = Self::new(seed);
        let a = sim.add(client);
        let b = sim.add(server);
        sim.connect(a, b, netem.clone(), netem);
        (sim, a, b)
    }

    /// Adds a connection opened now. Until it is [connected](Sim::connect), what it transmits
    /// is lost.
    pub fn add(&mut self, config: Config) -> Side {
        let side = Side(self.peers.len());
        self.peers.push(Peer {
            conn: Connection::new(config, self.now),
            alive: true,
            timer: None,
            history: Vec::new(),
            cursor: 0,
            handler: None,
            link: None,
        });
        self.drain(side);
        side
    }

    /// Joins `a` and `b` with a link: `a_to_b` shapes what `a` writes, `b_to_a` what `b` writes.
    ///
    /// # Panics
    ///
    /// If either side is already on a link, or `a == b`.
    pub fn connect(&mut self, a: Side, b: Side, a_to_b: Netem, b_to_a: Netem) {
        assert_ne!(a, b, "a connection cannot be linked to itself");
        for side in [a, b] {
            assert!(
                self.peers[side.0].link.is_none(),
                "{side} is already linked"
            );
        }
        let index = self.links.len();
        self.links.push(Link {
            a,
            b,
            a_to_b: Direction::new(a_to_b),
            b_to_a: Direction::new(b_to_a),
        });
        self.peers[a.0].link = Some((index, true));
        self.peers[b.0].link = Some((index, false));
    }

    /// Sets the [`Handler`] that reacts to `side`'s events from now on.
    pub fn set_handler(
        &mut self,
        side: Side,
        handler: impl FnMut(&mut Connection, Instant, &Event) + 'static,
    ) {
        self.peers[side.0].handler = Some(Box::new(handler));
    }

    /// Removes `side`'s handler: its events are only recorded.
    pub fn clear_handler(&mut self, side: Side) {
        self.peers[side.0].handler = None;
    }

    // ------------------------------------------------------------------ time

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The instant the simulation started at.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// The instant `offset` after the start.
    pub fn at(&self, offset: Duration) -> Instant {
        self.base + offset
    }

    // ------------------------------------------------------------------ connections

    /// The connection of `side`, to inspect.
    pub fn conn(&self, side: Side) -> &Connection {
        &self.peers[side.0].conn
    }

    /// Runs a command on `side`'s connection at the current time, then drains it.
    ///
    /// ```
    /// # use rpc_proto::Config;
    /// # use rpc_tests::{Netem, Sim};
    /// # let (mut sim, client, _server) = Sim::pair(1, Config::default(), Config::default(), Netem::ideal());
    /// let id = sim.command(client, |c, now| c.rpc(now, "hi".into(), None)).unwrap();
    /// # let _ = id;
    /// ```
    pub fn command<R>(&mut self, side: Side, f: impl FnOnce(&mut Connection, Instant) -> R) -> R {
        let now = self.now;
        let out = f(&mut self.peers[side.0].conn, now);
        self.drain(side);
        out
    }

    /// Whether `side` has not crashed.
    pub fn is_alive(&self, side: Side) -> bool {
        self.peers[side.0].alive
    }

    /// The side at the other end of `side`'s link.
    pub fn peer_of(&self, side: Side) -> Option<Side> {
        let (link, is_a) = self.peers[side.0].link?;
        let link = &self.links[link];
        Some(if is_a { link.b } else { link.a })
    }

    // ------------------------------------------------------------------ events

    /// Every event `side` has reported, in order.
    pub fn events(&self, side: Side) -> Vec<Event> {
        self.peers[side.0]
            .history
            .iter()
            .map(|r| r.event.clone())
            .collect()
    }

    /// Every event `side` has reported, with the virtual time it was drained at.
    pub fn history(&self, side: Side) -> &[Recorded] {
        &self.peers[side.0].history
    }

    /// The events `side` reported since the last call to `new_events` for it. They stay in the
    /// [`history`](Sim::history).
    pub fn new_events(&mut self, side: Side) -> Vec<Event> {
        let peer = &mut self.peers[side.0];
        let new = peer.history[peer.cursor..]
            .iter()
            .map(|r| r.event.clone())
            .collect();
        peer.cursor = peer.history.len();
        new
    }

    /// The `Closed` event of `side` and when it came, if the connection has ended.
    pub fn closed_at(&self, side: Side) -> Option<(Instant, rpc_proto::ConnectionError)> {
        self.peers[side.0]
            .history
            .iter()
            .find_map(|r| match &r.event {
                Event::Closed { error } => Some((r.at, error.clone())),
                _ => None,
            })
    }

    // ------------------------------------------------------------------ links

    /// The settings of what `from` writes, to change them mid-run (they apply to bytes written
    /// from now on).
    ///
    /// # Panics
    ///
    /// If `from` is not linked.
    pub fn netem_mut(&mut self, from: Side) -> &mut Netem {
        &mut self.dir_from(from).netem
    }

    /// Byte counters of what `from` writes.
    ///
    /// # Panics
    ///
    /// If `from` is not linked.
    pub fn link_stats(&self, from: Side) -> LinkStats {
        self.direction(from).stats
    }

    /// Bytes `from` has written that have not arrived yet.
    ///
    /// # Panics
    ///
    /// If `from` is not linked.
    pub fn in_flight(&self, from: Side) -> u64 {
        self.direction(from).in_flight()
    }

    // ------------------------------------------------------------------ faults

    /// Cuts `side`'s link: both directions stop at once and what is in flight is lost. `side`
    /// learns of it by `this`, its peer by `peer`.
    ///
    /// # Panics
    ///
    /// If `side` is not linked.
    pub fn cut(&mut self, side: Side, this: Notice, peer: Notice) {
        let now = self.now;
        self.dir_from(side).cut();
        self.dir_to(side).cut();
        if let Some((after, payload)) = notice_payload(peer) {
            self.dir_from(side).notify(now, after, payload);
        }
        if let Some((after, payload)) = notice_payload(this) {
            self.dir_to(side).notify(now, after, payload);
        }
    }

    /// Crashes `side`: its connection is frozen and never fed or drained again. What it wrote
    /// before still arrives; what is on its way to it is lost. Its peer learns of it by `peer`,
    /// after the bytes in flight.
    pub fn crash(&mut self, side: Side, peer: Notice) {
        self.peers[side.0].alive = false;
        self.peers[side.0].timer = None;
        if self.peers[side.0].link.is_none() {
            return;
        }
        let now = self.now;
        self.dir_to(side).cut();
        match notice_payload(peer) {
            Some((after, payload)) => {
                let (dir, rng) = self.dir_from_rng(side);
                dir.end(now, after, payload, rng);
            }
            None => self.dir_from(side).seal(),
        }
    }

    /// Closes `side` gracefully: [`Connection::close`], then what it still transmits, then end
    /// of file to its peer (as every ended connection does once drained).
    pub fn close(&mut self, side: Side) {
        self.command(side, |conn, now| conn.close(now));
    }

    /// Lets `bytes` more bytes written by `from` through, then closes that direction with end
    /// of file, whatever `from` thinks: how a test makes a peer vanish mid-frame.
    ///
    /// # Panics
    ///
    /// If `from` is not linked.
    pub fn close_after(&mut self, from: Side, bytes: u64) {
        let now = self.now;
        let (dir, rng) = self.dir_from_rng(from);
        dir.close_after(now, bytes, rng);
    }

    /// Writes raw `bytes` onto the wire from `from`, behind what it already wrote, as if its
    /// connection had transmitted them (garbage, a hand-made frame).
    ///
    /// # Panics
    ///
    /// If `from` is not linked.
    pub fn inject(&mut self, from: Side, bytes: Bytes) {
        let now = self.now;
        self.drain(from);
        let (dir, rng) = self.dir_from_rng(from);
        dir.send(now, bytes, rng);
    }

    // ------------------------------------------------------------------ running

    /// Drains every connection, advances virtual time to the next delivery or deadline and
    /// feeds everything due then. Returns `false`, without moving time, if nothing is pending:
    /// the simulation is quiet.
    pub fn step(&mut self) -> bool {
        self.drain_all();
        let Some(next) = self.next_time() else {
            return false;
        };
        self.now = self.now.max(next);
        self.fire_due();
        true
    }

    /// Steps until `done` holds (checked before every step). Returns `false` if the
    /// simulation went quiet first.
    ///
    /// # Panics
    ///
    /// After ten million steps: the simulation is in a loop.
    pub fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool) -> bool {
        self.drain_all();
        for _ in 0..STEP_LIMIT {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        panic!("simulation did not settle within {STEP_LIMIT} steps");
    }

    /// Runs for `duration` of virtual time: everything due until then happens, and the clock
    /// ends exactly `duration` later.
    ///
    /// # Panics
    ///
    /// After ten million steps: the simulation is in a loop.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_to(end);
    }

    /// Runs until virtual time `end` (see [`run_for`](Sim::run_for)); does nothing if `end`
    /// has passed.
    ///
    /// # Panics
    ///
    /// After ten million steps: the simulation is in a loop.
    pub fn run_to(&mut self, end: Instant) {
        for _ in 0..STEP_LIMIT {
            self.drain_all();
            match self.next_time() {
                Some(next) if next <= end => {
                    self.now = self.now.max(next);
                    self.fire_due();
                }
                _ => {
                    self.now = self.now.max(end);
                    return;
                }
            }
        }
        panic!("simulation did not reach its end time within {STEP_LIMIT} steps");
    }

    /// Steps until nothing is pending: no bytes in flight, no deadline armed.
    ///
    /// # Panics
    ///
    /// After ten million steps: the simulation is in a loop.
    pub fn run_until_quiet(&mut self) {
        self.run_until(|_| false);
    }

    // ------------------------------------------------------------------ internals

    fn drain_all(&mut self) {
        for i in 0..self.peers.len() {
            self.drain(Side(i));
        }
    }

    /// The drain rule: transmits to the link, events to the record and the handler, until
    /// both are empty; then the timer.
    fn drain(&mut self, side: Side) {
        if !self.peers[side.0].alive {
            return;
        }
        let now = self.now;
        loop {
            let mut progressed = false;
            while let Some(bytes) = self.peers[side.0].conn.poll_transmit() {
                progressed = true;
                if self.peers[side.0].link.is_some() {
                    let (dir, rng) = self.dir_from_rng(side);
                    dir.send(now, bytes, rng);
                }
            }
            if progressed {
                // Handed to the link: written, as a driver tells the connection.
                self.peers[side.0].conn.handle_written(now);
            }
            let peer = &mut self.peers[side.0];
            while let Some(event) = peer.conn.poll_event() {
                progressed = true;
                peer.history.push(Recorded {
                    at: now,
                    event: event.clone(),
                });
                if let Some(handler) = peer.handler.as_mut() {
                    handler(&mut peer.conn, now, &event);
                }
            }
            if !progressed {
                break;
            }
        }
        let peer = &mut self.peers[side.0];
        peer.timer = peer.conn.poll_timeout();
        if peer.conn.is_drained() && peer.link.is_some() {
            // What a driver does once a connection has ended and flushed: close the socket.
            let (dir, rng) = self.dir_from_rng(side);
            dir.end(now, Duration::ZERO, Payload::Eof, rng);
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let deliveries = self
            .links
            .iter()
            .flat_map(|l| [l.a_to_b.next_at(), l.b_to_a.next_at()])
            .flatten();
        let timers = self
            .peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| p.timer);
        deliveries.chain(timers).min()
    }

    /// Feeds everything due at `now`, including what that causes at `now` (zero latency).
    fn fire_due(&mut self) {
        let now = self.now;
        let mut wakes = vec![0u32; self.peers.len()];
        loop {
            let mut any = false;
            for l in 0..self.links.len() {
                for a_to_b in [true, false] {
                    loop {
                        let link = &mut self.links[l];
                        let (dir, to) = if a_to_b {
                            (&mut link.a_to_b, link.b)
                        } else {
                            (&mut link.b_to_a, link.a)
                        };
                        let Some(payload) = dir.pop_due(now) else {
                            break;
                        };
                        any = true;
                        self.deliver(to, payload);
                    }
                }
            }
            for (i, woken) in wakes.iter_mut().enumerate() {
                let peer = &mut self.peers[i];
                if peer.alive && peer.timer.is_some_and(|t| t <= now) {
                    any = true;
                    *woken += 1;
                    assert!(
                        *woken <= WAKE_LIMIT,
                        "side {i} keeps asking to be woken at or before {:?} after handle_timeout",
                        now - self.base
                    );
                    peer.conn.handle_timeout(now);
                    self.drain(Side(i));
                }
            }
            if !any {
                return;
            }
        }
    }

    fn deliver(&mut self, to: Side, payload: Payload) {
        let now = self.now;
        let peer = &mut self.peers[to.0];
        if !peer.alive {
            return;
        }
        match payload {
            Payload::Data(bytes) => peer.conn.handle_bytes(now, &bytes),
            Payload::Eof => peer.conn.handle_closed(now),
            Payload::Error(reason) => peer.conn.handle_transport_error(now, reason),
        }
        self.drain(to);
    }

    fn direction(&self, from: Side) -> &Direction {
        let (link, is_a) = self.peers[from.0]
            .link
            .unwrap_or_else(|| panic!("{from} is not linked"));
        let link = &self.links[link];
        if is_a {
            &link.a_to_b
        } else {
            &link.b_to_a
        }
    }

    fn dir_from(&mut self, side: Side) -> &mut Direction {
        self.dir_from_rng(side).0
    }

    fn dir_from_rng(&mut self, side: Side) -> (&mut Direction, &mut SmallRng) {
        let (link, is_a) = self.peers[side.0]
            .link
            .unwrap_or_else(|| panic!("{side} is not linked"));
        let link = &mut self.links[link];
        let dir = if is_a {
            &mut link.a_to_b
        } else {
            &mut link.b_to_a
        };
        (dir, &mut self.rng)
    }

    fn dir_to(&mut self, side: Side) -> &mut Direction {
        let (link, is_a) = self.peers[side.0]
            .link
            .unwrap_or_else(|| panic!("{side} is not linked"));
        let link = &mut self.links[link];
        if is_a {
            &mut link.b_to_a
        } else {
            &mut link.a_to_b
        }
    }
}

fn notice_payload(notice: Notice) -> Option<(Duration, Payload)> {
    match notice {
        Notice::Silent => None,
        Notice::Eof { after } => Some((after, Payload::Eof)),
        Notice::Error { after, reason } => Some((after, Payload::Error(reason))),
    }
}
