//! The frame decoder's oracle.

use bytes::BytesMut;
use rpc_proto::{DecodeError, Decoded, Frame, FrameDecoder, MessageType, DEFAULT_MAX_FRAME_SIZE};

use crate::rng::{fnv1a, XorShift};

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

const FRAME_MIN: i64 = rpc_proto::FRAME_PREFIX_LEN as i64;

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
