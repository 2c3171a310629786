//! Property tests of the codec: round trip, split invariance, hostile input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{Decoded, Frame, FrameDecoder};
use crate::error::DecodeError;
use crate::id::{RequestId, StreamChunkId};

const MAX: u64 = 1 << 20;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn string() -> impl Strategy<Value = String> {
    // Empty strings, ASCII and multi-byte UTF-8.
    prop_oneof![Just(String::new()), "[a-z0-9_/.-]{1,40}", "\\PC{0,20}"]
}

fn chunk() -> impl Strategy<Value = StreamChunkId> {
    (any::<u64>(), any::<u32>()).prop_map(|(s, c)| StreamChunkId::new(s, c))
}

fn request() -> impl Strategy<Value = RequestId> {
    any::<u64>().prop_map(RequestId)
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..300, Just(i64::MAX as u64)]
}

/// Any frame of any of the 13 types.
pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        chunk().prop_map(|chunk| Frame::ChunkFetchRequest { chunk }),
        (chunk(), bytes(300)).prop_map(|(chunk, body)| Frame::ChunkFetchSuccess { chunk, body }),
        (chunk(), string()).prop_map(|(chunk, error)| Frame::ChunkFetchFailure { chunk, error }),
        (request(), bytes(300)).prop_map(|(request, body)| Frame::RpcRequest { request, body }),
        (request(), bytes(300)).prop_map(|(request, body)| Frame::RpcResponse { request, body }),
        (request(), string()).prop_map(|(request, error)| Frame::RpcFailure { request, error }),
        string().prop_map(|stream_id| Frame::StreamRequest { stream_id }),
        (string(), count()).prop_map(|(stream_id, byte_count)| Frame::StreamResponse {
            stream_id,
            byte_count
        }),
        (string(), string())
            .prop_map(|(stream_id, error)| Frame::StreamFailure { stream_id, error }),
        bytes(300).prop_map(|body| Frame::OneWayMessage { body }),
        (request(), bytes(100), count()).prop_map(|(request, meta, byte_count)| {
            Frame::UploadStream {
                request,
                meta,
                byte_count,
            }
        }),
        (
            request(),
            string(),
            any::<i32>(),
            any::<i32>(),
            any::<i32>()
        )
            .prop_map(
                |(request, app_id, shuffle_id, shuffle_merge_id, reduce_id)| {
                    Frame::MergedBlockMetaRequest {
                        request,
                        app_id,
                        shuffle_id,
                        shuffle_merge_id,
                        reduce_id,
                    }
                }
            ),
        (request(), any::<i32>(), bytes(300)).prop_map(|(request, chunk_count, body)| {
            Frame::MergedBlockMetaSuccess {
                request,
                chunk_count,
                body,
            }
        }),
    ]
}

/// A frame whose out-of-frame body is small enough to generate, with that body.
fn frame_with_body() -> impl Strategy<Value = (Frame, Bytes)> {
    frame()
        .prop_filter("out-of-frame body small enough to materialise", |f| {
            f.out_of_frame_len() < 1000
        })
        .prop_flat_map(|f| {
            let n = f.out_of_frame_len() as usize;
            (
                Just(f),
                prop::collection::vec(any::<u8>(), n..=n).prop_map(Bytes::from),
            )
        })
}

/// What a byte stream means: frames, and each out-of-frame body whole.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame(Frame),
    Body(Vec<u8>),
}

/// Decodes `wire` fed in pieces cut at `cuts`, joining body pieces.
fn decode_split(wire: &[u8], cuts: &[usize]) -> Result<Vec<Item>, DecodeError> {
    let mut decoder = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    ends.push(wire.len());
    ends.sort_unstable();
    for end in ends {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        while let Some(item) = decoder.decode(&mut buf)? {
            match item {
                Decoded::Frame(f) => items.push(Item::Frame(f)),
                Decoded::Body { data, remaining } => {
                    assert!(remaining == decoder.body_remaining());
                    match items.last_mut() {
                        Some(Item::Body(b)) => b.extend_from_slice(&data),
                        _ => items.push(Item::Body(data.to_vec())),
                    }
                }
            }
        }
    }
    assert!(buf.is_empty(), "a valid stream is consumed completely");
    Ok(items)
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let wire = frame.to_bytes();
        prop_assert_eq!(wire.len() as u64, frame.frame_len());
        let mut buf = BytesMut::from(&wire[..]);
        let mut decoder = FrameDecoder::new(MAX);
        let decoded = decoder.decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(Decoded::Frame(frame.clone())));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoder.body_remaining(), frame.out_of_frame_len());
    }

    #[test]
    fn any_split_decodes_to_the_same_items(
        frames in prop::collection::vec(frame_with_body(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for (frame, body) in &frames {
            frame.encode(&mut wire);
            wire.extend_from_slice(body);
            expected.push(Item::Frame(frame.clone()));
            if !body.is_empty() {
                expected.push(Item::Body(body.to_vec()));
            }
        }
        prop_assert_eq!(&decode_split(&wire, &[]).unwrap(), &expected);
        prop_assert_eq!(&decode_split(&wire, &cuts).unwrap(), &expected);
    }

    #[test]
    fn byte_at_a_time_decodes_like_whole(frames in prop::collection::vec(frame_with_body(), 1..4)) {
        let mut wire = BytesMut::new();
        for (frame, body) in &frames {
            frame.encode(&mut wire);
            wire.extend_from_slice(body);
        }
        let every_byte: Vec<usize> = (0..wire.len()).collect();
        prop_assert_eq!(decode_split(&wire, &every_byte), decode_split(&wire, &[]));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_conserved(
        data in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut decoder = FrameDecoder::new(4096);
        let mut buf = BytesMut::new();
        let mut consumed = 0usize;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        ends.push(data.len());
        ends.sort_unstable();
        let mut start = 0;
        let mut failed = None;
        'feed: for end in ends {
            buf.extend_from_slice(&data[start..end]);
            start = end;
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => {
                        prop_assert!(buf.len() < before, "an item consumes bytes");
                        consumed += before - buf.len();
                    }
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before, "no item, no bytes consumed");
                        break;
                    }
                    Err(err) => {
                        failed = Some(err);
                        break 'feed;
                    }
                }
                // Never more room than the limit plus what was fed: no peer-sized allocation.
                prop_assert!(buf.capacity() <= data.len() + 4096 + 64 * 1024);
            }
        }
        prop_assert_eq!(consumed + buf.len(), start);
        if let Some(err) = failed {
            // Errors are sticky: the stream cannot be re-synchronised.
            prop_assert_eq!(decoder.decode(&mut buf), Err(err));
        }
    }

    #[test]
    fn a_frame_with_its_type_byte_mutated_is_decoded_or_rejected_cleanly(
        frame in frame(),
        ty in any::<u8>(),
    ) {
        let mut wire = BytesMut::from(&frame.to_bytes()[..]);
        wire[8] = ty;
        let mut decoder = FrameDecoder::new(MAX);
        let len = wire.len();
        match decoder.decode(&mut wire) {
            Ok(Some(Decoded::Frame(f))) => prop_assert_eq!(f.frame_len() as usize, len),
            Ok(other) => prop_assert!(false, "unexpected {:?}", other),
            Err(DecodeError::UnknownType(t)) => prop_assert!(t > 12 && t == ty),
            Err(_) => {}
        }
    }
}

#[test]
fn lengths_below_nine_are_rejected() {
    for len in [i64::MIN, -1, 0, 1, 8] {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let err = FrameDecoder::new(MAX).decode(&mut buf).unwrap_err();
        assert_eq!(err, DecodeError::FrameTooShort { length: len });
    }
}

#[test]
fn an_oversized_length_is_rejected_before_any_allocation() {
    let mut buf = BytesMut::from(&(u64::MAX >> 1).to_be_bytes()[..]);
    let cap = buf.capacity();
    let err = FrameDecoder::new(MAX).decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            length: u64::MAX >> 1,
            max: MAX
        }
    );
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn a_claimed_length_reserves_at_most_one_step() {
    let mut buf = BytesMut::from(&(MAX as i64).to_be_bytes()[..]);
    assert_eq!(FrameDecoder::new(MAX).decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() <= 8 + 64 * 1024,
        "capacity {}",
        buf.capacity()
    );
}

#[test]
fn unknown_and_user_type_bytes_are_rejected() {
    for ty in [13u8, 127, 128, 255] {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&9i64.to_be_bytes());
        buf.extend_from_slice(&[ty]);
        assert_eq!(
            FrameDecoder::new(MAX).decode(&mut buf),
            Err(DecodeError::UnknownType(ty))
        );
    }
}

#[test]
fn truncated_headers_negative_lengths_bad_utf8_and_trailing_bytes_are_typed_errors() {
    use crate::frame::MessageType as T;
    fn frame(ty: u8, header: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(9 + header.len() as i64).to_be_bytes());
        buf.extend_from_slice(&[ty]);
        buf.extend_from_slice(header);
        buf
    }
    let decode = |mut b: BytesMut| FrameDecoder::new(MAX).decode(&mut b);

    // RpcRequest with only 4 of the 8 request id bytes.
    assert_eq!(
        decode(frame(3, &[0, 0, 0, 1])),
        Err(DecodeError::Truncated {
            message_type: T::RpcRequest,
            field: "request id"
        })
    );
    // StreamRequest whose string claims more bytes than the frame has.
    assert_eq!(
        decode(frame(6, &[0, 0, 0, 5, b'a'])),
        Err(DecodeError::Truncated {
            message_type: T::StreamRequest,
            field: "stream id"
        })
    );
    // StreamRequest with a negative string length.
    assert_eq!(
        decode(frame(6, &(-1i32).to_be_bytes())),
        Err(DecodeError::NegativeLength {
            message_type: T::StreamRequest,
            field: "stream id",
            value: -1
        })
    );
    // StreamRequest with invalid UTF-8.
    assert_eq!(
        decode(frame(6, &[0, 0, 0, 2, 0xc3, 0x28])),
        Err(DecodeError::InvalidUtf8 {
            message_type: T::StreamRequest,
            field: "stream id"
        })
    );
    // StreamResponse with a negative byte count.
    let mut header = vec![0, 0, 0, 1, b's'];
    header.extend_from_slice(&(-5i64).to_be_bytes());
    assert_eq!(
        decode(frame(7, &header)),
        Err(DecodeError::NegativeLength {
            message_type: T::StreamResponse,
            field: "byte count",
            value: -5
        })
    );
    // ChunkFetchRequest with a byte after its header.
    let mut header = vec![0; 12];
    header.push(1);
    assert_eq!(
        decode(frame(0, &header)),
        Err(DecodeError::TrailingBytes {
            message_type: T::ChunkFetchRequest,
            extra: 1
        })
    );
}

#[test]
fn a_stream_body_is_handed_out_as_it_arrives_without_buffering() {
    let frame = Frame::StreamResponse {
        stream_id: "s".into(),
        byte_count: 10,
    };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.extend_from_slice(b"abc");
    let mut decoder = FrameDecoder::new(MAX);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::Frame(frame))));
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(Decoded::Body {
            data: Bytes::from_static(b"abc"),
            remaining: 7
        }))
    );
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"defghijRPC");
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(Decoded::Body {
            data: Bytes::from_static(b"defghij"),
            remaining: 0
        }))
    );
    assert_eq!(
        &buf[..],
        b"RPC",
        "bytes after the body are left for the next frame"
    );
}

#[test]
fn a_body_past_four_gib_is_counted_without_overflow() {
    let big = 5 * 1024 * 1024 * 1024u64;
    let frame = Frame::UploadStream {
        request: RequestId(1),
        meta: Bytes::new(),
        byte_count: big,
    };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let mut decoder = FrameDecoder::new(MAX);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Decoded::Frame(_)))
    ));
    let piece = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    // 5 GiB in 1 MiB pieces: 5120 decode calls, never more than one piece buffered.
    while seen < big {
        buf.extend_from_slice(&piece);
        let Ok(Some(Decoded::Body { data, remaining })) = decoder.decode(&mut buf) else {
            panic!("expected body");
        };
        seen += data.len() as u64;
        assert_eq!(remaining, big - seen);
    }
    assert_eq!(decoder.body_remaining(), 0);
}

#[test]
fn decoded_bodies_are_slices_of_the_read_buffer() {
    let frame = Frame::RpcRequest {
        request: RequestId(3),
        body: Bytes::from(vec![7u8; 100]),
    };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Decoded::Frame(Frame::RpcRequest { body, .. }))) =
        FrameDecoder::new(MAX).decode(&mut buf)
    else {
        panic!("expected an rpc request");
    };
    let p = body.as_ptr() as usize;
    assert!(p >= start && p + body.len() <= end, "body was copied");
}

proptest! {
    /// With string limits, every frame decodes to itself but with ids over the limit refused
    /// (`StringTooLong`, nothing else) and error texts cut to a prefix within the limit.
    #[test]
    fn string_limits_refuse_long_ids_and_cut_long_errors(
        frame in frame(),
        max_id in 0u32..24,
        max_error in 0u32..24,
    ) {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire);
        let mut decoder = FrameDecoder::new(MAX).with_string_limits(max_id, max_error);
        let id_len = match &frame {
            Frame::StreamRequest { stream_id }
            | Frame::StreamResponse { stream_id, .. }
            | Frame::StreamFailure { stream_id, .. } => Some(stream_id.len()),
            Frame::MergedBlockMetaRequest { app_id, .. } => Some(app_id.len()),
            _ => None,
        };
        match decoder.decode(&mut wire) {
            Err(DecodeError::StringTooLong { length, max, .. }) => {
                prop_assert_eq!(max, max_id);
                prop_assert!(length > u64::from(max_id));
                prop_assert_eq!(Some(length as usize), id_len);
            }
            Ok(Some(Decoded::Frame(got))) => {
                prop_assert!(id_len.is_none_or(|n| n <= max_id as usize));
                let cut = |sent: &str, got: &str| {
                    got.len() <= max_error as usize && sent.starts_with(got)
                        && (sent.len() <= max_error as usize) == (sent == got)
                };
                match (&frame, &got) {
                    (Frame::RpcFailure { error: a, .. }, Frame::RpcFailure { error: b, .. })
                    | (Frame::ChunkFetchFailure { error: a, .. }, Frame::ChunkFetchFailure { error: b, .. })
                    | (Frame::StreamFailure { error: a, .. }, Frame::StreamFailure { error: b, .. }) => {
                        prop_assert!(cut(a, b), "{a:?} -> {b:?}");
                    }
                    _ => prop_assert_eq!(&got, &frame),
                }
            }
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
