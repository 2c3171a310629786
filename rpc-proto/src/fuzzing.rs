//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their seeds.
//!
//! Each function takes arbitrary bytes and checks the crate's invariants with `assert!`: a
//! failed assertion is a bug in `rpc-proto`, whatever the input. Not part of the public API.
//!
//! - [`decode_frames`]: the [`FrameDecoder`] conserves bytes, round-trips every frame, hands
//!   out no more body than announced, never reserves memory for a length the peer merely
//!   claims, keeps returning its first error, and gives the same results however the input is
//!   split.
//! - [`connection`]: two [`Connection`]s wired back to back run a script of inputs and
//!   commands read from the bytes; every call resolves at most once (exactly once by
//!   [`Event::Closed`]), `Closed` is the last event, a closed connection refuses commands and
//!   has no deadline, and a connection fed only its peer's bytes never sees an invalid frame.
//! - [`gcm`]: the GCM transport cipher gives the same plaintext and error however its input
//!   is split, round-trips any messages, and detects a flipped byte.
//! - [`auth`]: the AES handshake's message codec round-trips and bounds its input, its roles
//!   accept only well-formed messages, and honest peers agree on keys.
//! - [`sasl`]: the SASL message codec round-trips and bounds its input, hostile tokens leave the
//!   DIGEST-MD5 roles failed for good or never complete them, honest peers always complete,
//!   and the `auth-conf` layer round-trips, detects a flipped byte and decrypts the same
//!   however its input is split.
//! - [`handshake`]: the connection handshake never lets a stranger in, answers it only with
//!   handshake replies within the protocol's rounds, behaves the same however its input is
//!   split, and always completes between honest peers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::auth::{
    AuthClient, AuthError, AuthMessage, AuthRandomness, AuthServer, AuthVersion, Secret,
    MAX_AUTH_MESSAGE_LEN,
};
use crate::config::{Config, DEFAULT_MAX_FRAME_SIZE};
use crate::connection::{Connection, Event};
use crate::error::{CallError, ConnectionError, DecodeError, RpcError};
use crate::frame::{Decoded, Frame, FrameDecoder, MessageType};
use crate::id::{BodyId, Call, InboundStreamId, RequestId, StreamCallId, StreamChunkId};

// ------------------------------------------------------------------------- frame decoder

/// The small frame limit the decoder is also run with, so that the limit is reached.
const SMALL_MAX_FRAME_SIZE: u64 = 64 * 1024;

/// Mirrors the decoder's private `RESERVE_STEP`: the most it may reserve at once.
const RESERVE_STEP: usize = 64 * 1024;

/// Decodes `data` with a 64 KiB and with the default frame limit, each in one piece and in
/// pieces split where the data's hash says, and checks the decoder's invariants.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn decode_frames(data: &[u8]) {
    let mut runs = Vec::new();
    for max in [SMALL_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE] {
        let whole = DecodeRun::new(data, max).whole();
        let split = DecodeRun::new(data, max).split(&mut XorShift::new(fnv1a(data)));
        assert_eq!(whole, split, "split invariance (max frame size {max})");
        runs.push(whole);
    }
    let (small, large) = (&runs[0], &runs[1]);
    // A lower limit only cuts the sequence short, with `FrameTooLarge`.
    match &small.error {
        Some(DecodeError::FrameTooLarge { .. }) => assert!(
            large.items.starts_with(&small.items),
            "a lower frame limit changed the frames before it was reached"
        ),
        _ => assert_eq!(small, large, "frames within both limits decode the same"),
    }
}

/// What one decoding of an input produced, with body pieces merged (how a body is cut into
/// pieces depends on how the input arrived; its bytes do not).
#[derive(Debug, PartialEq, Eq)]
struct DecodeOutcome {
    items: Vec<Item>,
    error: Option<DecodeError>,
    /// Bytes left in the buffer at the end (an incomplete frame).
    left: usize,
    /// Body bytes still expected at the end.
    body_remaining: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame(Frame),
    Body { data: Vec<u8>, remaining: u64 },
}

/// One decoder fed one input, checked after every call.
struct DecodeRun<'a> {
    data: &'a [u8],
    max: u64,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// Bytes of `data` appended to `buf` so far.
    fed: usize,
    /// Bytes of `data` the decoder has consumed, each accounted for by an item or an error.
    consumed: usize,
    /// Out-of-frame body bytes still expected, by our count.
    announced: u64,
    items: Vec<Item>,
    error: Option<DecodeError>,
    /// The most capacity the buffer may have: what the input holds plus one reserve step,
    /// doubled for amortized growth. A reservation sized by a claimed frame length exceeds it.
    capacity_bound: usize,
}

impl<'a> DecodeRun<'a> {
    fn new(data: &'a [u8], max: u64) -> Self {
        Self {
            data,
            max,
            decoder: FrameDecoder::new(max),
            buf: BytesMut::new(),
            fed: 0,
            consumed: 0,
            announced: 0,
            items: Vec::new(),
            error: None,
            capacity_bound: 2 * (data.len() + RESERVE_STEP) + 1024,
        }
    }

    fn whole(mut self) -> DecodeOutcome {
        self.buf = BytesMut::from(self.data);
        self.fed = self.data.len();
        self.drain();
        self.finish()
    }

    fn split(mut self, rng: &mut XorShift) -> DecodeOutcome {
        while self.fed < self.data.len() {
            let r = rng.next();
            let n = match r % 8 {
                0 => 0, // decode again with nothing new
                1 | 2 => 1,
                3 | 4 => 1 + (r >> 8) as usize % 8,
                5 | 6 => 1 + (r >> 8) as usize % 64,
                _ => 1 + (r >> 8) as usize % 1024,
            };
            let end = (self.fed + n).min(self.data.len());
            self.buf.extend_from_slice(&self.data[self.fed..end]);
            self.fed = end;
            self.drain();
        }
        self.finish()
    }

    fn finish(self) -> DecodeOutcome {
        assert_eq!(self.fed, self.data.len());
        DecodeOutcome {
            items: self.items,
            error: self.error,
            left: self.buf.len(),
            body_remaining: self.announced,
        }
    }

    /// Decodes until the decoder wants more input or has failed.
    fn drain(&mut self) {
        while self.step() {}
    }

    /// One `decode` call and its checks; whether to call again.
    fn step(&mut self) -> bool {
        let before = self.buf.len();
        let offset = self.consumed;
        let result = self.decoder.decode(&mut self.buf);
        let taken = before
            .checked_sub(self.buf.len())
            .expect("decode never adds bytes to the buffer");
        self.consumed += taken;
        assert!(
            self.buf.capacity() <= self.capacity_bound,
            "buffer capacity {} above {} for {} input bytes: a reservation followed a claimed length",
            self.buf.capacity(),
            self.capacity_bound,
            self.data.len()
        );
        // Conservation: what is left in the buffer is exactly the input not yet accounted for.
        assert_eq!(
            &self.buf[..],
            &self.data[self.consumed..self.fed],
            "consumed {} + buffered {} != fed {}",
            self.consumed,
            self.buf.len(),
            self.fed
        );
        let data = self.data;
        let wire = &data[offset..self.consumed];

        if let Some(first) = &self.error {
            assert_eq!(
                result.as_ref(),
                Err(first),
                "a failed decoder changed its error"
            );
            assert_eq!(taken, 0, "a failed decoder consumed input");
            return false;
        }
        let again = match result {
            Ok(None) => {
                assert_eq!(taken, 0, "Ok(None) consumed input");
                if self.announced > 0 {
                    assert!(
                        self.buf.is_empty(),
                        "body bytes buffered but not handed out"
                    );
                } else if self.buf.len() >= 8 {
                    let len = frame_len_field(&self.buf);
                    assert!(
                        (FRAME_MIN..=self.max as i64).contains(&len),
                        "a bad length field {len} was not reported"
                    );
                    assert!(
                        (self.buf.len() as i64) < len,
                        "a whole frame of {len} bytes is buffered but was not decoded"
                    );
                }
                false
            }
            Ok(Some(Decoded::Frame(frame))) => {
                assert_eq!(self.announced, 0, "a frame was decoded inside a body");
                let mut encoded = BytesMut::new();
                frame.encode(&mut encoded);
                // Spark ignores the legacy body length on read, so it need not round-trip.
                if let Some(at) = legacy_length_offset(frame.message_type()) {
                    if encoded.len() >= at + 4 && wire.len() >= at + 4 {
                        encoded[at..at + 4].copy_from_slice(&wire[at..at + 4]);
                    }
                }
                assert_eq!(&encoded[..], wire, "frame did not re-encode to its bytes");
                assert_eq!(frame.frame_len(), wire.len() as u64);
                self.announced = frame.out_of_frame_len();
                self.items.push(Item::Frame(frame));
                true
            }
            Ok(Some(Decoded::Body { data, remaining })) => {
                assert!(!data.is_empty(), "an empty body piece");
                assert!(
                    data.len() as u64 <= self.announced,
                    "body piece of {} bytes with {} announced",
                    data.len(),
                    self.announced
                );
                assert_eq!(remaining, self.announced - data.len() as u64);
                assert_eq!(&data[..], wire, "body piece is not the bytes consumed");
                self.announced = remaining;
                match self.items.last_mut() {
                    Some(Item::Body {
                        data: merged,
                        remaining: left,
                    }) if *left > 0 => {
                        merged.extend_from_slice(&data);
                        *left = remaining;
                    }
                    _ => self.items.push(Item::Body {
                        data: data.to_vec(),
                        remaining,
                    }),
                }
                true
            }
            Err(err) => {
                assert_eq!(self.announced, 0, "an error inside a body");
                let head = &data[offset..];
                assert!(head.len() >= 8, "an error before a whole length field");
                let len = frame_len_field(head);
                match &err {
                    DecodeError::FrameTooShort { length } => {
                        assert_eq!(taken, 0);
                        assert_eq!(*length, len);
                        assert!(len < FRAME_MIN);
                    }
                    DecodeError::FrameTooLarge { length, max } => {
                        assert_eq!(taken, 0);
                        assert_eq!(*length as i64, len);
                        assert_eq!(*max, self.max);
                        assert!(*length > *max);
                    }
                    other => {
                        // Header errors come after the whole frame was taken out.
                        assert_eq!(taken as i64, len, "{other} after consuming {taken} bytes");
                        if let DecodeError::UnknownType(ty) = other {
                            assert_eq!(*ty, wire[8]);
                            assert!(MessageType::from_byte(*ty).is_none());
                        }
                    }
                }
                // The error sticks, and consumes nothing more.
                let left = self.buf.len();
                assert_eq!(self.decoder.decode(&mut self.buf), Err(err.clone()));
                assert_eq!(self.buf.len(), left);
                self.error = Some(err);
                false
            }
        };
        assert_eq!(self.decoder.body_remaining(), self.announced);
        again
    }
}

const FRAME_MIN: i64 = crate::frame::FRAME_PREFIX_LEN as i64;

fn frame_len_field(buf: &[u8]) -> i64 {
    i64::from_be_bytes(buf[..8].try_into().expect("8 bytes"))
}

/// Where the legacy body length sits in frames that carry one.
fn legacy_length_offset(ty: MessageType) -> Option<usize> {
    match ty {
        MessageType::RpcRequest | MessageType::RpcResponse => Some(9 + 8),
        MessageType::OneWayMessage => Some(9),
        _ => None,
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Marsaglia's xorshift64: deterministic, and enough to pick split points.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

// ------------------------------------------------------------------------- connection

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
            _ => Some(crate::DEFAULT_IDLE_TIMEOUT),
        };
        Config::builder()
            .with_max_frame_size(if c & 1 == 1 {
                crate::MIN_MAX_FRAME_SIZE
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
            assert!(self.sides[s].t.closed.is_some(), "no Closed event");
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
            _ if self.t.closed.is_some() => Err(CallError::Closed),
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
        let call = if pick & 0x8000 == 0 && !self.t.issued.is_empty() {
            self.t.issued[usize::from(pick) % self.t.issued.len()]
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
        let pending = self.t.is_pending(call);
        assert_eq!(self.conn.cancel(call), pending, "cancel({call})");
        if pending {
            self.t.calls.insert(call, CallState::Cancelled);
        }
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
        for call in self.t.issued.clone() {
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
            self.t.closed.is_some(),
            "is_closed() disagrees with the Closed event"
        );
        assert!(
            !self.t.disconnected || self.t.closed.is_some(),
            "calls failed as disconnected without a Closed event"
        );
        match &self.t.closed {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Pending,
    Cancelled,
    Resolved,
}

/// What one side's events and commands say its state should be.
#[derive(Default)]
struct Tracker {
    calls: HashMap<Call, CallState>,
    /// Calls in the order they were issued, for picking.
    issued: Vec<Call>,
    last_stream: Option<StreamCallId>,
    /// Opened streams: announced bytes and bytes received.
    streams: HashMap<StreamCallId, (u64, u64)>,
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
    closed: Option<ConnectionError>,
}

impl Tracker {
    fn is_pending(&self, call: Call) -> bool {
        self.calls.get(&call) == Some(&CallState::Pending)
    }

    fn pending(&self) -> usize {
        let pending = |s: &&CallState| **s == CallState::Pending;
        self.calls.values().filter(pending).count()
    }

    fn issue(&mut self, call: Call) {
        assert!(
            !self.is_pending(call),
            "{call} issued while one with the same id is pending"
        );
        self.calls.insert(call, CallState::Pending);
        self.issued.push(call);
    }

    fn resolve(&mut self, call: Call) {
        match self.calls.get(&call) {
            Some(CallState::Pending) => {
                self.calls.insert(call, CallState::Resolved);
            }
            other => panic!("{call} resolved while {other:?} (not pending)"),
        }
        if let Call::Stream(stream) = call {
            self.streams.remove(&stream);
        }
    }

    fn on_event(&mut self, event: Event) {
        assert!(
            self.closed.is_none(),
            "event after Closed: {event:?} ({:?})",
            self.closed
        );
        match event {
            Event::RpcReceived { request, .. }
            | Event::MergedBlockMetaRequested { request, .. } => {
                self.owed_requests.insert(request);
            }
            Event::OneWayReceived { .. } => {}
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
            Event::ReplyReceived { call, .. } => {
                assert!(
                    matches!(call, Call::Rpc(_) | Call::Upload(_)),
                    "a reply to {call}"
                );
                self.resolve(call);
            }
            Event::ChunkReceived { chunk, .. } => self.resolve(Call::ChunkFetch(chunk)),
            Event::MergedBlockMetaReceived { request, .. } => {
                self.resolve(Call::MergedBlockMeta(request))
            }
            Event::StreamOpened { stream, byte_count } => {
                assert!(
                    self.is_pending(Call::Stream(stream)),
                    "{stream} opened, not pending"
                );
                let before = self.streams.insert(stream, (byte_count, 0));
                assert_eq!(before, None, "{stream} opened twice");
            }
            Event::StreamData { stream, data } => {
                assert!(
                    self.is_pending(Call::Stream(stream)),
                    "data for {stream}, not pending"
                );
                assert!(!data.is_empty(), "empty stream data");
                let (count, got) = self.streams.get_mut(&stream).expect("data before open");
                *got += data.len() as u64;
                assert!(*got <= *count, "{stream}: more bytes than announced");
            }
            Event::StreamFinished { stream } => {
                let (count, got) = *self.streams.get(&stream).expect("finished before open");
                assert_eq!(got, count, "{stream} finished early");
                self.resolve(Call::Stream(stream));
            }
            Event::CallFailed { call, error } => {
                if let RpcError::Disconnected(e) = &error {
                    self.disconnected = true;
                    if let Some(first) = &self.disconnect_error {
                        assert_eq!(first, e, "calls failed with different causes");
                    }
                    self.disconnect_error = Some(e.clone());
                }
                self.resolve(call);
            }
            Event::Closed { error } => {
                let pending: Vec<_> = self
                    .calls
                    .iter()
                    .filter(|(_, s)| **s == CallState::Pending)
                    .map(|(c, _)| *c)
                    .collect();
                assert!(
                    pending.is_empty(),
                    "closed with calls unresolved: {pending:?}"
                );
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
                self.closed = Some(error);
            }
        }
    }

    fn pick_request(&self, pick: u8) -> RequestId {
        let requests: Vec<RequestId> = self
            .issued
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
            .issued
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

// ------------------------------------------------------------------------- auth

/// Feeds `data` to the AES handshake: as an [`AuthMessage`] to decode, as a challenge to an
/// [`AuthServer`], as a response to an [`AuthClient`], and (cut into randomness, app id and
/// secret) to a client and server that must agree.
///
/// Invariants: a decoded message re-encodes to the same bytes and is within
/// [`MAX_AUTH_MESSAGE_LEN`]; a role accepts only input that decodes; a server's response decodes
/// and names the client's app id; keys have the version's length; a client and server with the
/// same secret and version derive the same key and mirrored IVs.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn auth(data: &[u8]) {
    let version = match data.first() {
        Some(b) if b & 1 == 1 => AuthVersion::V2,
        _ => AuthVersion::V1,
    };
    let key_len = match version {
        AuthVersion::V2 => 16,
        _ => 32,
    };
    let message = data.get(1..).unwrap_or_default();
    let decoded = AuthMessage::decode(message);
    if let Ok(m) = &decoded {
        assert_eq!(m.encode(), message, "decode then encode changed the bytes");
        assert!(message.len() <= MAX_AUTH_MESSAGE_LEN);
    }

    let server = AuthServer::new(version);
    if let Ok(accepted) = server.handle_challenge(
        message,
        |_| Some(Secret::new("secret")),
        AuthRandomness::from_bytes(&[5; AuthRandomness::LEN]),
    ) {
        let challenge = decoded
            .as_ref()
            .expect("accepted a challenge that does not decode");
        let response = AuthMessage::decode(&accepted.response).expect("response decodes");
        assert_eq!(response.app_id, challenge.app_id);
        assert_eq!(accepted.app_id, challenge.app_id);
        assert_eq!(accepted.keys.key().len(), key_len);
    }

    let client = AuthClient::new(
        version,
        "appId",
        Secret::new("secret"),
        AuthRandomness::from_bytes(&[6; AuthRandomness::LEN]),
    )
    .expect("short app id");
    if let Ok(keys) = client.handle_response(message) {
        let response = decoded
            .as_ref()
            .expect("accepted a response that does not decode");
        assert_eq!(response.app_id, "appId");
        assert_eq!(keys.key().len(), key_len);
    }

    // Two honest sides with randomness, app id and secret taken from the input.
    let mut rest = message;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        head
    };
    let mut random = [[0; AuthRandomness::LEN]; 2];
    for r in &mut random {
        let head = take(AuthRandomness::LEN);
        r[..head.len()].copy_from_slice(head);
    }
    let split = usize::from(take(1).first().copied().unwrap_or(0));
    let app_id = String::from_utf8_lossy(take(split)).into_owned();
    let secret = Secret::from_bytes(rest);
    let client = match AuthClient::new(
        version,
        app_id.clone(),
        secret.clone(),
        AuthRandomness::from_bytes(&random[0]),
    ) {
        Ok(client) => client,
        Err(AuthError::AppIdTooLong { .. }) => return,
        Err(e) => panic!("client refused honest input: {e}"),
    };
    // A clamped X25519 scalar never yields a low-order public key or shared secret, so an
    // honest exchange always succeeds, whatever the randomness.
    let accepted = server
        .handle_challenge(
            client.challenge(),
            |id| (id == app_id).then(|| secret.clone()),
            AuthRandomness::from_bytes(&random[1]),
        )
        .expect("server rejected an honest client");
    let keys = client
        .handle_response(&accepted.response)
        .expect("client rejected an honest server");
    assert_eq!(keys.key(), accepted.keys.key());
    assert_eq!(keys.key().len(), key_len);
    assert_eq!(keys.inbound_iv(), accepted.keys.outbound_iv());
    assert_eq!(keys.outbound_iv(), accepted.keys.inbound_iv());
}

// ------------------------------------------------------------------------- gcm cipher

/// The session key the `gcm` target uses: the v2 derived key of Spark's `AuthEngineSuite`, so
/// the research note's GCM frame vector is a valid input.
const GCM_KEY: [u8; 16] = [
    0x2d, 0x6e, 0x7a, 0x90, 0x48, 0xc8, 0x26, 0x5c, 0x33, 0xa8, 0xf3, 0x74, 0x7b, 0xfc, 0xc8, 0x4c,
];

/// Checks the GCM transport cipher on `data` twice over.
///
/// As ciphertext from a peer: decrypted whole and in pieces split where the data's hash says,
/// both give the same plaintext and the same error, and never more plaintext than input. As
/// plaintext (stretched past two segments when its first byte is odd): cut into messages,
/// encrypted in pieces, decrypted in other pieces, it comes back unchanged; with one byte of
/// the ciphertext flipped, decryption fails and releases only a prefix of the plaintext.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn gcm(data: &[u8]) {
    use crate::cipher::gcm::SEGMENT_PLAINTEXT_LEN;
    use crate::cipher::{CipherKeys, GcmEncrypter, MessageNonce};

    let keys = CipherKeys::new(&GCM_KEY, [0; 16], [0; 16]).expect("a 16-byte key");
    let mut rng = XorShift::new(fnv1a(data));

    // Peer input.
    let whole = gcm_decrypt(&keys, data, &[0, data.len()]);
    let split = gcm_decrypt(&keys, data, &cut_points(&mut rng, data.len()));
    assert_eq!(whole, split, "split invariance");
    assert!(whole.0.len() <= data.len(), "more plaintext than input");

    // Round trip.
    let len = match data.first() {
        Some(b) if b & 1 == 1 => 2 * SEGMENT_PLAINTEXT_LEN + usize::from(*b),
        _ => data.len(),
    };
    let plain: Vec<u8> = data.iter().copied().cycle().take(len).collect();
    let enc = GcmEncrypter::new(&keys);
    let mut wire = BytesMut::new();
    // No empty messages: a header-only message has no tag, so its salt is not authenticated.
    let mut messages = cut_points(&mut rng, plain.len());
    messages.dedup();
    for m in messages.windows(2) {
        let msg_plain = &plain[m[0]..m[1]];
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&rng.next().to_le_bytes());
        let prefix: [u8; 7] = rng.next().to_le_bytes()[..7].try_into().expect("7 bytes");
        let mut msg = enc
            .start(
                MessageNonce::new(salt, prefix),
                msg_plain.len() as u64,
                &mut wire,
            )
            .expect("a small message");
        for w in cut_points(&mut rng, msg_plain.len()).windows(2) {
            msg.write(&msg_plain[w[0]..w[1]], &mut wire)
                .expect("within the declared length");
        }
        msg.finish().expect("the declared length was written");
    }
    let (out, err) = gcm_decrypt(&keys, &wire, &cut_points(&mut rng, wire.len()));
    assert_eq!(err, None, "round trip failed");
    assert!(out == plain, "round trip changed the plaintext");

    // One flipped byte.
    if !plain.is_empty() {
        let pos = (rng.next() % wire.len() as u64) as usize;
        wire[pos] ^= (rng.next() % 255 + 1) as u8;
        let (out, err) = gcm_decrypt(&keys, &wire, &cut_points(&mut rng, wire.len()));
        assert!(err.is_some(), "corrupted byte {pos} undetected");
        assert!(plain.starts_with(&out), "unverified plaintext released");
    }
}

/// Up to eight sorted cut points in `0..=len`, starting at 0 and ending at `len`.
fn cut_points(rng: &mut XorShift, len: usize) -> Vec<usize> {
    let n = rng.next() % 8;
    let mut points: Vec<usize> = (0..n)
        .map(|_| (rng.next() % (len as u64 + 1)) as usize)
        .collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}

/// Decrypts `data` fed between consecutive `points`; the plaintext and the first error, from
/// `decrypt` or from `finish`.
fn gcm_decrypt(
    keys: &crate::cipher::CipherKeys,
    data: &[u8],
    points: &[usize],
) -> (Vec<u8>, Option<crate::cipher::CipherError>) {
    let mut dec = crate::cipher::GcmDecrypter::new(keys);
    let mut out = BytesMut::new();
    for w in points.windows(2) {
        if let Err(e) = dec.decrypt(&data[w[0]..w[1]], &mut out) {
            return (out.to_vec(), Some(e));
        }
    }
    (out.to_vec(), dec.finish().err())
}

// ------------------------------------------------------------------------- sasl

/// Feeds `data` to SASL DIGEST-MD5: as a [`SaslMessage`](crate::sasl::SaslMessage) to decode,
/// as tokens to a server and a client, as wrapped frames to a layer, and (cut into secret,
/// QOP and randomness) to an honest client and server whose layers then carry the data.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn sasl(data: &[u8]) {
    use crate::sasl::{
        Qop, QopOffer, SaslClient, SaslError, SaslMessage, SaslServer, MAX_RESPONSE_LEN,
        MAX_SASL_TOKEN_LEN,
    };

    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or_default();
    let offer = match flags % 3 {
        0 => QopOffer::Auth,
        1 => QopOffer::AuthConfOrAuth,
        _ => QopOffer::AuthConf,
    };
    let qop = if flags & 4 == 0 {
        Qop::Auth
    } else {
        Qop::AuthConf
    };

    // The codec.
    if let Ok(m) = SaslMessage::decode(rest) {
        assert_eq!(m.encode(), rest, "decode then encode changed the bytes");
        assert!(m.token.len() <= MAX_SASL_TOKEN_LEN);
    }

    // Hostile tokens: a server given garbage as the digest-response never completes (it would
    // take the secret), and every error is final.
    let secret = Secret::new("secret");
    let cut = rest.len() / 2;
    let (first, second) = rest.split_at(cut);
    let mut server = SaslServer::new("app", &secret, offer, [3; 30]);
    match server.handle_message(first) {
        Ok(challenge) => assert!(challenge.len() < 256, "a challenge of our own making"),
        Err(e) => assert!(matches!(e, SaslError::TokenTooLong { .. }), "{e}"),
    }
    let verdict = server.handle_message(second);
    if verdict.is_ok() {
        panic!("a server accepted a digest-response no client computed");
    }
    assert!(!server.is_complete());
    assert_eq!(server.handle_message(second), Err(SaslError::Finished));

    // A client given the data as a challenge answers within the limits, or fails for good.
    let mut client = SaslClient::new("app", &secret, qop, [4; 30]);
    match client.handle_response(rest) {
        Ok(Some(request)) => {
            let m = SaslMessage::decode(&request).expect("our request decodes");
            assert_eq!(m.app_id, "app");
            assert!(m.token.len() <= MAX_RESPONSE_LEN);
            // And the data as the rspauth: a forgery, unless it is an unlikely exact guess.
            assert!(client.handle_response(second).is_err());
            assert!(!client.is_complete());
        }
        Ok(None) => panic!("a client completed on its first challenge"),
        Err(_) => {
            assert_eq!(client.handle_response(rest), Err(SaslError::Finished));
        }
    }

    // Honest peers with the data's secret always complete; their layers carry the data.
    let split = usize::from(flags) % (rest.len() + 1);
    let secret = Secret::from_bytes(&rest[..split]);
    let mut random = [0u8; 30];
    for (r, b) in random.iter_mut().zip(rest.iter().rev()) {
        *r = *b;
    }
    let qop = if offer == QopOffer::AuthConf {
        Qop::AuthConf
    } else if offer == QopOffer::Auth {
        Qop::Auth
    } else {
        qop
    };
    let mut client = SaslClient::new("app", &secret, qop, random);
    let mut server = SaslServer::new("app", &secret, offer, [random[0]; 30]);
    let mut reply = server
        .handle_message(
            &SaslMessage::decode(&client.first_message())
                .expect("decodes")
                .token,
        )
        .expect("first step");
    while let Some(request) = client
        .handle_response(&reply)
        .expect("client refused an honest server")
    {
        let token = SaslMessage::decode(&request).expect("decodes").token;
        reply = server
            .handle_message(&token)
            .expect("server refused an honest client");
    }
    assert!(client.is_complete() && server.is_complete());
    assert_eq!(server.qop(), Some(qop));
    let (c, s) = (client.into_layer(), server.into_layer());
    assert_eq!(c.is_some(), qop == Qop::AuthConf);
    let (Some(mut c), Some(mut s)) = (c, s) else {
        return;
    };
    let mut rng = XorShift::new(fnv1a(data));
    let mut wire = BytesMut::new();
    c.encrypt(rest, &mut wire);
    let (plain, err) = sasl_decrypt(&mut s, &wire, &cut_points(&mut rng, wire.len()));
    assert_eq!(err, None, "round trip failed");
    assert!(plain == rest, "round trip changed the plaintext");

    // Peer bytes into a fresh layer (the server's twin): the same result however split.
    let twin = || {
        let mut client = SaslClient::new("app", &Secret::new("k"), Qop::AuthConf, [1; 30]);
        let mut server = SaslServer::new("app", &Secret::new("k"), QopOffer::AuthConf, [2; 30]);
        let mut reply = server.handle_message(b"").expect("challenge");
        while let Some(r) = client.handle_response(&reply).expect("honest") {
            reply = server
                .handle_message(&SaslMessage::decode(&r).expect("decodes").token)
                .expect("honest");
        }
        server.into_layer().expect("auth-conf")
    };
    let whole = sasl_decrypt(&mut twin(), rest, &[0, rest.len()]);
    let split = sasl_decrypt(&mut twin(), rest, &cut_points(&mut rng, rest.len()));
    assert_eq!(whole, split, "split invariance");
    assert!(whole.0.len() <= rest.len(), "more plaintext than input");

    // One flipped byte of a real frame is detected.
    if !rest.is_empty() {
        let mut wire = BytesMut::new();
        c.encrypt(rest, &mut wire);
        let pos = (rng.next() % wire.len() as u64) as usize;
        wire[pos] ^= (rng.next() % 255 + 1) as u8;
        let (out, err) = sasl_decrypt(&mut s, &wire, &cut_points(&mut rng, wire.len()));
        // A flip in a length field may leave the layer waiting for bytes that never come.
        assert!(
            err.is_some() || !s.is_idle(),
            "corrupted byte {pos} undetected"
        );
        assert!(rest.starts_with(&out), "unverified plaintext released");
    }
}

/// Decrypts `data` fed between consecutive `points`; the plaintext and the first error.
fn sasl_decrypt(
    layer: &mut crate::sasl::SaslLayer,
    data: &[u8],
    points: &[usize],
) -> (Vec<u8>, Option<crate::sasl::SaslError>) {
    let mut out = BytesMut::new();
    for w in points.windows(2) {
        if let Err(e) = layer.decrypt(&data[w[0]..w[1]], &mut out) {
            return (out.to_vec(), Some(e));
        }
    }
    (out.to_vec(), None)
}

// ------------------------------------------------------------------------- handshake

/// A deterministic generator standing in for the secure one the handshake asks for, so a
/// fuzz input replays exactly. (Never do this outside tests.)
struct FuzzRng(XorShift);

impl rand::RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            chunk.copy_from_slice(&self.0.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

impl rand::CryptoRng for FuzzRng {}

/// What a server handshake sent and how it ended, for `data` fed between `points`.
fn server_handshake(
    mechanisms: crate::handshake::ServerMechanisms,
    data: &[u8],
    points: &[usize],
) -> (Vec<Bytes>, Option<String>) {
    use crate::handshake::ServerHandshake;
    let secrets = |app: &str| (app == "app").then(|| Secret::new("secret"));
    let mut rng = FuzzRng(XorShift::new(7));
    let mut server = ServerHandshake::new(mechanisms);
    let mut sent = Vec::new();
    for w in points.windows(2) {
        server.handle_bytes(&data[w[0]..w[1]], &secrets, &mut rng);
        sent.extend(std::iter::from_fn(|| server.poll_transmit()));
    }
    server.handle_closed();
    sent.extend(std::iter::from_fn(|| server.poll_transmit()));
    let outcome = match server.poll_outcome() {
        Some(Ok(_)) => panic!("a stranger's bytes authenticated"),
        Some(Err(e)) => Some(e.to_string()),
        None => None,
    };
    assert!(server.is_done(), "a closed handshake is over");
    (sent, outcome)
}

/// The connection handshake ([`crate::handshake`]): whatever a stranger sends, split
/// anywhere, a server never authenticates it, answers every request at most once with
/// nothing but handshake replies (never more than the rounds of the protocol), and behaves
/// the same however the input is split; a client fed a stranger's bytes never completes; and
/// honest peers, with the exchange split at points read from the input, always do.
pub fn handshake(data: &[u8]) {
    use crate::auth::AuthVersion;
    use crate::cipher::CipherMode;
    use crate::handshake::{ClientHandshake, ClientMechanism, ServerHandshake, ServerMechanisms};
    use crate::sasl::QopOffer;

    let choice = data.first().copied().unwrap_or(0);
    let input = data.get(1..).unwrap_or_default();
    let aes = ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm);
    let mechanisms = match choice % 3 {
        0 => aes,
        1 => ServerMechanisms::sasl(QopOffer::AuthConfOrAuth),
        _ => aes.with_sasl(QopOffer::AuthConfOrAuth),
    };
    let mut rng = XorShift::new(fnv1a(data));

    // A stranger against the server.
    let whole = server_handshake(mechanisms, input, &[0, input.len()]);
    let split = server_handshake(mechanisms, input, &cut_points(&mut rng, input.len()));
    assert_eq!(whole, split, "split invariance");
    // One refused AES challenge plus the SASL rounds, at most.
    assert!(whole.0.len() <= 4, "{} answers", whole.0.len());
    for bytes in &whole.0 {
        let mut buf = BytesMut::from(&bytes[..]);
        match FrameDecoder::new(1 << 20).decode(&mut buf) {
            Ok(Some(Decoded::Frame(Frame::RpcResponse { .. } | Frame::RpcFailure { .. }))) => {}
            other => panic!("the server sent {other:?} during the handshake"),
        }
        assert!(buf.is_empty(), "one frame per transmit");
    }

    // A stranger against a client.
    let mechanism = match choice % 2 {
        0 => ClientMechanism::Aes {
            version: AuthVersion::V2,
            cipher: CipherMode::Gcm,
        },
        _ => ClientMechanism::Sasl {
            encrypt: choice & 4 != 0,
        },
    };
    let mut crng = FuzzRng(XorShift::new(11));
    let mut client = ClientHandshake::new(
        "app",
        Secret::new("secret"),
        mechanism,
        choice & 8 != 0,
        &mut crng,
    )
    .expect("a short app id");
    for w in cut_points(&mut rng, input.len()).windows(2) {
        client.handle_bytes(&input[w[0]..w[1]], &mut crng);
    }
    client.handle_closed();
    assert!(
        !matches!(client.poll_outcome(), Some(Ok(_))),
        "a stranger's bytes authenticated the server"
    );

    // Honest peers, every transmit cut at points from the input.
    let mut client =
        ClientHandshake::new("app", Secret::new("secret"), mechanism, false, &mut crng).unwrap();
    let mut server = ServerHandshake::new(aes.with_sasl(QopOffer::AuthConfOrAuth));
    let secrets = |app: &str| (app == "app").then(|| Secret::new("secret"));
    for _ in 0..4 {
        while let Some(bytes) = client.poll_transmit() {
            for w in cut_points(&mut rng, bytes.len()).windows(2) {
                server.handle_bytes(&bytes[w[0]..w[1]], &secrets, &mut crng);
            }
        }
        while let Some(bytes) = server.poll_transmit() {
            for w in cut_points(&mut rng, bytes.len()).windows(2) {
                client.handle_bytes(&bytes[w[0]..w[1]], &mut crng);
            }
        }
    }
    let c = client.poll_outcome().expect("the client finished");
    let s = server.poll_outcome().expect("the server finished");
    assert_eq!(c.expect("client").app_id, "app");
    assert_eq!(s.expect("server").app_id, "app");
}
