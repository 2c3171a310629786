//! The connection oracle: two connections wired back to back, driven by a script.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_proto::{
    BodyId, Call, CallError, Config, Connection, ConnectionError, Event, Frame, InboundStreamId,
    RequestError, RequestId, StreamCallId, StreamChunkId, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_FRAME_SIZE, MIN_MAX_FRAME_SIZE,
};

use crate::ledger::{CallLedger, LedgerError};

/// Runs two connections wired back to back through a script read from `data`, and checks the
/// connection's invariants after every step.
///
/// The first two bytes configure the two sides; every following byte picks an operation for
/// one side, whose arguments are the bytes after it: deliver the peer's bytes (in pieces of
/// chosen sizes), inject raw bytes or a crafted frame, advance virtual time and handle
/// timeouts, issue calls, feed bodies, cancel, answer the peer's requests, close. At the end
/// both sides exchange what is left and are closed.
///
/// `base` is the virtual time the script starts at; the caller reads the clock (this crate
/// never does).
///
/// # Panics
///
/// When an invariant does not hold.
pub fn connection(base: Instant, data: &[u8]) {
    let mut script = Script { data, pos: 0 };
    let mut sim = Sim::new(base, &mut script);
    while let Some(op) = script.op() {
        sim.step(op, &mut script);
        sim.drain();
    }
    sim.finish();
}

/// The fuzz input, read front to back; reads past its end give zeros.
struct Script<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Script<'_> {
    fn op(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn byte(&mut self) -> u8 {
        self.op().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes, fewer at the end of the script.
    fn bytes(&mut self, n: usize) -> Bytes {
        let end = (self.pos + n).min(self.data.len());
        let out = Bytes::copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        out
    }

    /// A body of up to 255 bytes; its length is the next byte.
    fn body(&mut self) -> Bytes {
        let n = self.byte();
        self.bytes(usize::from(n))
    }

    /// A short ASCII name.
    fn name(&mut self) -> String {
        let n = usize::from(self.byte() % 12);
        (0..n)
            .map(|_| char::from(b'a' + self.byte() % 26))
            .collect()
    }

    fn timeout(&mut self) -> Option<Duration> {
        match self.byte() {
            0..=63 => None,
            255 => Some(Duration::MAX), // past what `Instant` holds: never fires
            b => Some(Duration::from_millis(u64::from(b % 64 + 1) * 10)),
        }
    }

    fn chunk(&mut self) -> StreamChunkId {
        let b = self.byte();
        StreamChunkId::new(u64::from(b % 4), u32::from(b / 4 % 4))
    }

    fn config(&mut self) -> Config {
        let c = self.byte();
        let idle = match (c >> 1) & 3 {
            0 => None,
            1 => Some(Duration::from_millis(100)),
            2 => Some(Duration::from_secs(5)),
            _ => Some(DEFAULT_IDLE_TIMEOUT),
        };
        Config::builder()
            .with_max_frame_size(if c & 1 == 1 {
                MIN_MAX_FRAME_SIZE
            } else {
                DEFAULT_MAX_FRAME_SIZE
            })
            .with_idle_timeout(idle)
            .with_close_idle_connections(c & 8 != 0)
            .with_seed(u64::from(c >> 4))
            .build()
            .expect("a valid configuration")
    }
}

/// The two connections, the bytes in flight between them, and virtual time.
struct Sim {
    base: Instant,
    elapsed: Duration,
    sides: [Side; 2],
}

struct Side {
    conn: Connection,
    t: Tracker,
    /// Bytes the peer transmitted that this side has not been fed yet.
    inbox: Vec<u8>,
    /// Whether this side was fed anything but its peer's bytes, in order.
    tainted: bool,
    /// Bytes fed while open, which the connection must count.
    fed: u64,
    /// Bytes taken from `poll_transmit`.
    sent: u64,
}

impl Sim {
    fn new(base: Instant, script: &mut Script<'_>) -> Self {
        let side = |config| Side {
            conn: Connection::new(config, base),
            t: Tracker::default(),
            inbox: Vec::new(),
            tainted: false,
            fed: 0,
            sent: 0,
        };
        Self {
            base,
            elapsed: Duration::ZERO,
            sides: [side(script.config()), side(script.config())],
        }
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Feeds `bytes` to side `s`, counting them as the connection should.
    fn feed(&mut self, s: usize, bytes: &[u8]) {
        let now = self.now();
        let side = &mut self.sides[s];
        if !side.conn.is_closed() {
            side.fed += bytes.len() as u64;
        }
        side.conn.handle_bytes(now, bytes);
    }

    /// Delivers up to `n` bytes of what the peer sent.
    fn deliver(&mut self, s: usize, n: usize) {
        let n = n.min(self.sides[s].inbox.len());
        let bytes: Vec<u8> = self.sides[s].inbox.drain(..n).collect();
        self.feed(s, &bytes);
    }

    fn step(&mut self, op: u8, script: &mut Script<'_>) {
        let s = usize::from(op & 1);
        let now = self.now();
        match (op >> 1) % 24 {
            0..=3 => {
                let b = script.byte();
                let n = match b % 4 {
                    0 => usize::MAX,
                    1 => usize::from(b >> 2) % 16 + 1,
                    2 => usize::from(b >> 2) * 4 + 1,
                    _ => usize::from(b) * 64,
                };
                self.deliver(s, n);
            }
            4 => {
                let n = usize::from(script.byte() % 64);
                let raw = script.bytes(n);
                self.sides[s].tainted = true;
                self.feed(s, &raw);
            }
            5 => {
                let wire = self.craft(s, script);
                let cut = usize::from(script.byte()) % (wire.len() + 1);
                self.sides[s].tainted = true;
                self.feed(s, &wire[..cut]);
                self.feed(s, &wire[cut..]);
            }
            6 | 7 => {
                let b = script.byte();
                let dt = match b % 4 {
                    0 => self.sides[s]
                        .conn
                        .poll_timeout()
                        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
                    1 => Duration::from_millis(u64::from(b)),
                    2 => Duration::from_millis(u64::from(b) * 50),
                    _ => Duration::from_secs(u64::from(b)),
                };
                self.elapsed += dt;
                self.timeout(s);
            }
            8 => self.timeout(s),
            9 | 10 => {
                let body = script.body();
                let timeout = script.timeout();
                let r = self.sides[s].conn.rpc(now, body, timeout);
                self.sides[s].issued(r.map(Call::Rpc));
            }
            11 => {
                let body = script.body();
                let r = self.sides[s].conn.send_one_way(now, body);
                self.sides[s].expect_ok(r);
            }
            12 => {
                let chunk = script.chunk();
                let timeout = script.timeout();
                let side = &mut self.sides[s];
                let duplicate = side.t.is_pending(Call::ChunkFetch(chunk));
                match side.conn.fetch_chunk(now, chunk, timeout) {
                    Err(CallError::DuplicateChunkFetch(c)) if !side.conn.is_closed() => {
                        assert!(duplicate && c == chunk, "refused a fetch of {chunk}")
                    }
                    r => {
                        assert!(!duplicate || side.conn.is_closed(), "fetched {chunk} twice");
                        side.issued(r.map(|()| Call::ChunkFetch(chunk)));
                    }
                }
            }
            13 => {
                let name = script.name();
                let timeout = script.timeout();
                let side = &mut self.sides[s];
                let r = side.conn.stream(now, &name, timeout);
                if let Ok(id) = r {
                    assert!(
                        side.t.last_stream.is_none_or(|last| id > last),
                        "stream call ids go up"
                    );
                    side.t.last_stream = Some(id);
                }
                side.issued(r.map(Call::Stream));
            }
            14 => {
                let meta_len = usize::from(script.byte() % 32);
                let meta = script.bytes(meta_len);
                let count = u64::from(script.byte() % 48);
                let timeout = script.timeout();
                let side = &mut self.sides[s];
                let r = side.conn.upload_stream(now, meta, count, timeout);
                if let Ok((_, body)) = r {
                    side.new_body(body, count);
                }
                side.issued(r.map(|(request, _)| Call::Upload(request)));
            }
            15 => {
                let app = script.name();
                let (a, b, c) = (script.i32(), script.i32(), script.i32());
                let timeout = script.timeout();
                let side = &mut self.sides[s];
                let r = side.conn.merged_block_meta(now, &app, a, b, c, timeout);
                side.issued(r.map(Call::MergedBlockMeta));
            }
            16 | 17 => {
                let pick = script.byte();
                let n = usize::from(script.byte() % 40);
                let data = script.bytes(n);
                self.sides[s].send_body(now, pick, data);
            }
            18 => {
                let pick = script.u16();
                self.sides[s].cancel(pick);
            }
            19 | 20 => self.respond(s, script),
            21 => match script.byte() % 8 {
                0 => self.sides[s].conn.close(now),
                1 => self.sides[s].conn.handle_closed(now),
                2 => self.sides[s].conn.handle_transport_error(now, "fuzz"),
                3 => {
                    let body = self.sides[s].t.pick_body(script.byte());
                    self.sides[s].conn.abort_body(now, body, "fuzz");
                }
                _ => {}
            },
            _ => {
                // Deliver everything both ways.
                self.deliver(0, usize::MAX);
                self.drain();
                self.deliver(1, usize::MAX);
            }
        }
    }

    fn timeout(&mut self, s: usize) {
        let now = self.now();
        let conn = &mut self.sides[s].conn;
        conn.handle_timeout(now);
        if let Some(at) = conn.poll_timeout() {
            assert!(
                at > now,
                "a deadline at or before `now` survived handle_timeout"
            );
        }
    }

    /// A frame as the peer of side `s` might send it (or not: ids may be stale or made up),
    /// with any out-of-frame body bytes after it.
    fn craft(&self, s: usize, script: &mut Script<'_>) -> Vec<u8> {
        let t = &self.sides[s].t;
        let kind = script.byte() % 13;
        let pick = script.byte();
        let mut trailing = Bytes::new();
        let frame = match kind {
            0 => Frame::ChunkFetchRequest {
                chunk: script.chunk(),
            },
            1 => Frame::ChunkFetchSuccess {
                chunk: t.pick_chunk(pick, script),
                body: script.body(),
            },
            2 => Frame::ChunkFetchFailure {
                chunk: t.pick_chunk(pick, script),
                error: script.name(),
            },
            3 => Frame::RpcRequest {
                request: RequestId(u64::from(pick)),
                body: script.body(),
            },
            4 => Frame::RpcResponse {
                request: t.pick_request(pick),
                body: script.body(),
            },
            5 => Frame::RpcFailure {
                request: t.pick_request(pick),
                error: script.name(),
            },
            6 => Frame::StreamRequest {
                stream_id: script.name(),
            },
            7 => {
                let byte_count = u64::from(pick % 48);
                let sent = usize::from(script.byte() % 48);
                trailing = script.bytes(sent);
                Frame::StreamResponse {
                    stream_id: script.name(),
                    byte_count,
                }
            }
            8 => Frame::StreamFailure {
                stream_id: script.name(),
                error: script.name(),
            },
            9 => Frame::OneWayMessage {
                body: script.body(),
            },
            10 => {
                let byte_count = u64::from(script.byte() % 48);
                let sent = usize::from(script.byte() % 48);
                trailing = script.bytes(sent);
                let meta_len = usize::from(script.byte() % 16);
                Frame::UploadStream {
                    request: RequestId(u64::from(pick)),
                    meta: script.bytes(meta_len),
                    byte_count,
                }
            }
            11 => Frame::MergedBlockMetaRequest {
                request: RequestId(u64::from(pick)),
                app_id: script.name(),
                shuffle_id: script.i32(),
                shuffle_merge_id: script.i32(),
                reduce_id: script.i32(),
            },
            _ => Frame::MergedBlockMetaSuccess {
                request: t.pick_request(pick),
                chunk_count: script.i32(),
                body: script.body(),
            },
        };
        let mut wire = BytesMut::new();
        frame.encode(&mut wire);
        wire.extend_from_slice(&trailing);
        wire.to_vec()
    }

    /// Side `s` answers one of the peer's requests (or a made-up one).
    fn respond(&mut self, s: usize, script: &mut Script<'_>) {
        let now = self.now();
        let what = script.byte();
        let pick = script.byte();
        let side = &mut self.sides[s];
        let (conn, t) = (&mut side.conn, &mut side.t);
        let closed = conn.is_closed();
        match what % 7 {
            kind @ 0..=2 => {
                let request = t.pick_owed_request(pick);
                let owed = t.owed_requests.contains(&request);
                let r = match kind {
                    0 => conn.respond_rpc(now, request, script.body()),
                    1 => conn.respond_rpc_failure(now, request, &script.name()),
                    _ => conn.respond_merged_block_meta(now, request, script.i32(), script.body()),
                };
                let expected = match () {
                    () if closed => Err(CallError::Closed),
                    () if owed => Ok(()),
                    () => Err(CallError::UnknownRequest(request)),
                };
                assert_eq!(r, expected, "answering request {request}");
                if r.is_ok() {
                    t.owed_requests.remove(&request);
                }
            }
            kind @ 3..=4 => {
                let chunk = t.pick_owed_chunk(pick, script);
                let owed = t.owed_chunks.contains_key(&chunk);
                let r = if kind == 3 {
                    conn.respond_chunk(now, chunk, script.body())
                } else {
                    conn.respond_chunk_failure(now, chunk, &script.name())
                };
                let expected = match () {
                    () if closed => Err(CallError::Closed),
                    () if owed => Ok(()),
                    () => Err(CallError::UnknownChunkFetch(chunk)),
                };
                assert_eq!(r, expected, "answering a fetch of {chunk}");
                if r.is_ok() {
                    let n = t.owed_chunks.get_mut(&chunk).expect("owed");
                    *n -= 1;
                    if *n == 0 {
                        t.owed_chunks.remove(&chunk);
                    }
                }
            }
            kind => {
                let request = t.pick_owed_stream(pick);
                let owed = t.owed_streams.iter().position(|&r| r == request);
                let name = script.name();
                let expected = match () {
                    () if closed => Err(CallError::Closed),
                    () if owed.is_some() => Ok(()),
                    () => Err(CallError::UnknownStreamRequest(request)),
                };
                if kind == 5 {
                    let count = u64::from(script.byte() % 48);
                    let r = conn.respond_stream(now, request, &name, count);
                    assert_eq!(r.clone().map(|_| ()), expected, "answering {request}");
                    if let Ok(body) = r {
                        side.new_body(body, count);
                    }
                } else {
                    let r = conn.respond_stream_failure(now, request, &name, &script.name());
                    assert_eq!(r, expected, "answering {request}");
                }
                if let Some(i) = owed.filter(|_| !closed) {
                    side.t.owed_streams.remove(i);
                }
            }
        }
    }

    /// The drain rule, and the checks that hold whenever the outputs are drained.
    fn drain(&mut self) {
        for s in 0..2 {
            let (this, other) = match &mut self.sides {
                [a, b] if s == 0 => (a, b),
                [a, b] => (b, a),
            };
            while let Some(bytes) = this.conn.poll_transmit() {
                assert!(!bytes.is_empty(), "poll_transmit gave an empty buffer");
                this.sent += bytes.len() as u64;
                other.inbox.extend_from_slice(&bytes);
            }
            while let Some(event) = this.conn.poll_event() {
                this.t.on_event(event);
            }
            let timeout = this.conn.poll_timeout();
            this.check(timeout);
        }
    }

    /// Exchanges what is left, closes both sides and checks that a closed connection refuses
    /// everything.
    fn finish(&mut self) {
        for _ in 0..4 {
            self.deliver(0, usize::MAX);
            self.deliver(1, usize::MAX);
            self.drain();
        }
        let now = self.now();
        self.sides[0].conn.close(now);
        self.sides[1].conn.handle_closed(now);
        self.drain();
        for s in 0..2 {
            assert!(self.sides[s].t.closed().is_some(), "no Closed event");
            self.sides[s].refuses_everything(now);
            self.feed(s, b"\0\0\0\0\0\0\0\x09\x09");
            self.sides[s]
                .conn
                .handle_timeout(now + Duration::from_secs(3600));
            self.drain();
        }
    }
}

impl Side {
    fn issued(&mut self, r: Result<Call, CallError>) {
        match r {
            Ok(call) => {
                assert!(
                    !self.conn.is_closed(),
                    "{call} issued on a closed connection"
                );
                self.t.issue(call);
            }
            Err(err) => self.expect_ok::<()>(Err(err)),
        }
    }

    /// Commands with arguments the script keeps within limits succeed while open, and are
    /// refused with `Closed` after.
    fn expect_ok<T: std::fmt::Debug>(&self, r: Result<T, CallError>) {
        if self.conn.is_closed() {
            assert_eq!(
                r.err(),
                Some(CallError::Closed),
                "a command on a closed connection"
            );
        } else {
            assert!(r.is_ok(), "command refused: {:?}", r.err());
        }
    }

    fn new_body(&mut self, body: BodyId, count: u64) {
        assert_eq!(
            self.conn.body_remaining(body),
            (count > 0).then_some(count),
            "a new body's remaining bytes"
        );
        self.t.bodies.push(body);
    }

    fn send_body(&mut self, now: Instant, pick: u8, data: Bytes) {
        let body = self.t.pick_body(pick);
        let remaining = self.conn.body_remaining(body);
        let offered = data.len() as u64;
        let r = self.conn.send_body(now, body, data);
        let expected = match remaining {
            _ if self.t.closed().is_some() => Err(CallError::Closed),
            None => Err(CallError::UnknownBody(body)),
            Some(remaining) if offered > remaining => Err(CallError::BodyOverrun {
                body,
                remaining,
                offered,
            }),
            Some(_) => Ok(()),
        };
        assert_eq!(r, expected, "feeding {body}");
        if r.is_ok() {
            let left = remaining.expect("checked") - offered;
            assert_eq!(self.conn.body_remaining(body), (left > 0).then_some(left));
        }
    }

    fn cancel(&mut self, pick: u16) {
        let issued = self.t.issued();
        let call = if pick & 0x8000 == 0 && !issued.is_empty() {
            issued[usize::from(pick) % issued.len()]
        } else {
            let id = u64::from(pick & 0xff);
            match (pick >> 8) % 5 {
                0 => Call::Rpc(RequestId(id)),
                1 => Call::Upload(RequestId(id)),
                2 => Call::MergedBlockMeta(RequestId(id)),
                3 => Call::ChunkFetch(StreamChunkId::new(id % 4, 0)),
                _ => Call::Stream(StreamCallId(id)),
            }
        };
        let cancelled = self.conn.cancel(call);
        held(self.t.calls.cancelled(call, cancelled));
    }

    fn refuses_everything(&mut self, now: Instant) {
        let conn = &mut self.conn;
        let closed = Some(CallError::Closed);
        let chunk = StreamChunkId::new(0, 0);
        assert!(conn.is_closed());
        assert_eq!(conn.poll_timeout(), None);
        assert_eq!(conn.rpc(now, Bytes::new(), None).err(), closed);
        assert_eq!(conn.send_one_way(now, Bytes::new()).err(), closed);
        assert_eq!(conn.fetch_chunk(now, chunk, None).err(), closed);
        assert_eq!(conn.stream(now, "s", None).err(), closed);
        assert_eq!(conn.upload_stream(now, Bytes::new(), 3, None).err(), closed);
        assert_eq!(
            conn.merged_block_meta(now, "a", 1, 2, 3, None).err(),
            closed
        );
        for body in self.t.bodies.iter().copied().chain([BodyId(u64::MAX)]) {
            assert_eq!(conn.send_body(now, body, Bytes::new()).err(), closed);
        }
        let request = RequestId(0);
        assert_eq!(conn.respond_rpc(now, request, Bytes::new()).err(), closed);
        assert_eq!(conn.respond_rpc_failure(now, request, "e").err(), closed);
        let meta = conn.respond_merged_block_meta(now, request, 0, Bytes::new());
        assert_eq!(meta.err(), closed);
        assert_eq!(conn.respond_chunk(now, chunk, Bytes::new()).err(), closed);
        assert_eq!(conn.respond_chunk_failure(now, chunk, "e").err(), closed);
        let stream = InboundStreamId(0);
        assert_eq!(conn.respond_stream(now, stream, "s", 0).err(), closed);
        let failure = conn.respond_stream_failure(now, stream, "s", "e");
        assert_eq!(failure.err(), closed);
        for call in self.t.issued().to_vec() {
            assert!(!conn.cancel(call), "cancelled {call} after close");
        }
        conn.close(now);
        conn.handle_closed(now);
        conn.handle_transport_error(now, "again");
    }

    /// Checks after a drain; `timeout` is what `poll_timeout` returned.
    fn check(&mut self, timeout: Option<Instant>) {
        let stats = self.conn.stats();
        assert_eq!(stats.bytes_received, self.fed, "bytes received");
        assert_eq!(stats.bytes_sent, self.sent, "bytes sent");
        assert_eq!(
            self.conn.is_closed(),
            self.t.closed().is_some(),
            "is_closed() disagrees with the Closed event"
        );
        assert!(
            !self.t.disconnected || self.t.closed().is_some(),
            "calls failed as disconnected without a Closed event"
        );
        match self.t.closed() {
            Some(error) => {
                assert_eq!(timeout, None, "a closed connection asked for a timeout");
                assert_eq!(self.conn.outstanding_calls(), 0);
                assert!(
                    self.conn.is_drained(),
                    "closed, drained, yet not is_drained()"
                );
                assert_eq!(self.conn.close_reason(), Some(error));
                if !self.tainted {
                    assert!(
                        !matches!(error, ConnectionError::Decode(_)),
                        "fed only its peer's bytes, yet saw an invalid frame: {error}"
                    );
                }
            }
            None => assert!(
                self.t.pending() <= self.conn.outstanding_calls(),
                "{} calls pending but {} outstanding",
                self.t.pending(),
                self.conn.outstanding_calls()
            ),
        }
    }
}

/// What one side's events and commands say its state should be.
#[derive(Default)]
struct Tracker {
    /// The calls this side made: every one resolves exactly once.
    calls: CallLedger,
    last_stream: Option<StreamCallId>,
    bodies: Vec<BodyId>,

    owed_requests: BTreeSet<RequestId>,
    owed_chunks: BTreeMap<StreamChunkId, u32>,
    /// Unanswered stream requests, in arrival order.
    owed_streams: Vec<InboundStreamId>,
    next_inbound_stream: u64,
    /// The upload whose body is arriving: id, announced bytes, bytes received.
    upload: Option<(RequestId, u64, u64)>,
    aborted: Option<ConnectionError>,

    /// A call failed with `Disconnected` (a `Closed` must follow in the same drain).
    disconnected: bool,
    disconnect_error: Option<ConnectionError>,
}

/// The ledger's verdict, as an oracle gives it: a broken promise is a panic.
#[track_caller]
fn held<T>(verdict: Result<T, LedgerError>) -> T {
    verdict.unwrap_or_else(|e| panic!("{e}"))
}

impl Tracker {
    fn is_pending(&self, call: Call) -> bool {
        self.calls.is_pending(call)
    }

    fn pending(&self) -> usize {
        self.calls.pending()
    }

    /// Calls in the order they were issued, for picking.
    fn issued(&self) -> &[Call] {
        self.calls.issued_calls()
    }

    fn closed(&self) -> Option<&ConnectionError> {
        self.calls.closed()
    }

    fn issue(&mut self, call: Call) {
        held(self.calls.issued(call));
    }

    fn on_event(&mut self, event: Event) {
        // Calls resolve exactly once, streams deliver what they announced, nothing follows
        // `Closed`, and every event is one the ledger knows.
        let _ = held(self.calls.observe(&event));
        match event {
            Event::RpcReceived { request, .. }
            | Event::MergedBlockMetaRequested { request, .. } => {
                self.owed_requests.insert(request);
            }
            Event::ChunkFetchReceived { chunk } => *self.owed_chunks.entry(chunk).or_default() += 1,
            Event::StreamRequested { request, .. } => {
                assert_eq!(request, InboundStreamId(self.next_inbound_stream));
                self.next_inbound_stream += 1;
                self.owed_streams.push(request);
            }
            Event::UploadReceived {
                request,
                byte_count,
                ..
            } => {
                assert_eq!(self.upload, None, "an upload started inside another");
                self.owed_requests.insert(request);
                self.upload = Some((request, byte_count, 0));
            }
            Event::UploadData { request, data } => {
                let (id, count, got) = self.upload.as_mut().expect("upload data outside one");
                assert_eq!(request, *id);
                assert!(!data.is_empty(), "empty upload data");
                *got += data.len() as u64;
                assert!(
                    *got <= *count,
                    "upload {request}: more bytes than announced"
                );
            }
            Event::UploadFinished { request } => {
                let (id, count, got) = self.upload.take().expect("upload finished outside one");
                assert_eq!(request, id);
                assert_eq!(got, count, "upload {request} finished early");
            }
            Event::UploadAborted { request, error } => {
                let (id, count, got) = self.upload.take().expect("upload aborted outside one");
                assert_eq!(request, id);
                assert!(got < count, "a complete upload aborted");
                self.aborted = Some(error);
            }
            Event::CallFailed {
                error: RequestError::Disconnected(e),
                ..
            } => {
                self.disconnected = true;
                if let Some(first) = &self.disconnect_error {
                    assert_eq!(first, &e, "calls failed with different causes");
                }
                self.disconnect_error = Some(e);
            }
            Event::Closed { error } => {
                assert_eq!(self.upload, None, "closed mid-upload without UploadAborted");
                for cause in [&self.aborted, &self.disconnect_error]
                    .into_iter()
                    .flatten()
                {
                    assert_eq!(cause, &error, "closed with a cause other than announced");
                }
                self.owed_requests.clear();
                self.owed_chunks.clear();
                self.owed_streams.clear();
            }
            // The ledger checked the calls' ends and a stream's progress, and refused any
            // event it does not know.
            _ => {}
        }
    }

    fn pick_request(&self, pick: u8) -> RequestId {
        let requests: Vec<RequestId> = self
            .issued()
            .iter()
            .filter_map(|c| match c {
                Call::Rpc(id) | Call::Upload(id) | Call::MergedBlockMeta(id) => Some(*id),
                _ => None,
            })
            .collect();
        if pick & 0x80 != 0 || requests.is_empty() {
            RequestId(u64::from(pick))
        } else {
            requests[usize::from(pick) % requests.len()]
        }
    }

    fn pick_chunk(&self, pick: u8, script: &mut Script<'_>) -> StreamChunkId {
        let chunks: Vec<StreamChunkId> = self
            .issued()
            .iter()
            .filter_map(|c| match c {
                Call::ChunkFetch(chunk) => Some(*chunk),
                _ => None,
            })
            .collect();
        if pick & 0x80 != 0 || chunks.is_empty() {
            script.chunk()
        } else {
            chunks[usize::from(pick) % chunks.len()]
        }
    }

    fn pick_owed_request(&self, pick: u8) -> RequestId {
        match self.owed_requests.iter().nth(usize::from(pick % 8)) {
            Some(&id) if pick & 0x80 == 0 => id,
            _ => RequestId(u64::from(pick)),
        }
    }

    fn pick_owed_chunk(&self, pick: u8, script: &mut Script<'_>) -> StreamChunkId {
        match self.owed_chunks.keys().nth(usize::from(pick % 8)) {
            Some(&chunk) if pick & 0x80 == 0 => chunk,
            _ => script.chunk(),
        }
    }

    fn pick_owed_stream(&self, pick: u8) -> InboundStreamId {
        match self.owed_streams.get(usize::from(pick % 8)) {
            Some(&id) if pick & 0x80 == 0 => id,
            _ => InboundStreamId(u64::from(pick % 16)),
        }
    }

    fn pick_body(&self, pick: u8) -> BodyId {
        match self.bodies.len() {
            0 => BodyId(u64::from(pick)),
            n if pick & 0x80 != 0 => BodyId(u64::from(pick) % (n as u64 + 2)),
            n => self.bodies[usize::from(pick) % n],
        }
    }
}
