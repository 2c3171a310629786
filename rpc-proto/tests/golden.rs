//! Pins the wire format to the golden vectors in `tests/vectors/frames.txt`.
//!
//! The vectors were produced independently of this crate's encoder, from the layouts of
//! Spark's `encode()` methods. Each is checked both ways: our encoding of the named values is
//! exactly the vector's bytes, and decoding the bytes gives exactly those values.

use bytes::{Bytes, BytesMut};
use rpc_proto::{Decoded, Frame, FrameDecoder, MessageType, RequestId, StreamChunkId};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The values of every vector, by name.
fn expected() -> Vec<(&'static str, Frame)> {
    let chunk = StreamChunkId::new(1_234_567_890_123, 7);
    vec![
        ("ChunkFetchRequest", Frame::ChunkFetchRequest { chunk }),
        (
            "ChunkFetchSuccess",
            Frame::ChunkFetchSuccess {
                chunk,
                body: b("chunk"),
            },
        ),
        (
            "ChunkFetchFailure",
            Frame::ChunkFetchFailure {
                chunk: StreamChunkId::new(42, 0),
                error: "no such chunk".into(),
            },
        ),
        (
            "RpcRequest",
            Frame::RpcRequest {
                request: RequestId(5_764_607_523_034_234_880),
                body: b("ping"),
            },
        ),
        (
            "RpcRequest/empty",
            Frame::RpcRequest {
                request: RequestId(0),
                body: Bytes::new(),
            },
        ),
        (
            "RpcResponse",
            Frame::RpcResponse {
                request: RequestId(5_764_607_523_034_234_880),
                body: b("pong!"),
            },
        ),
        (
            "RpcFailure",
            Frame::RpcFailure {
                request: RequestId(9),
                error: "java.lang.RuntimeException: boom".into(),
            },
        ),
        (
            "StreamRequest",
            Frame::StreamRequest {
                stream_id: "/jars/app 1.jar".into(),
            },
        ),
        (
            "StreamRequest/empty",
            Frame::StreamRequest {
                stream_id: String::new(),
            },
        ),
        (
            "StreamResponse",
            Frame::StreamResponse {
                stream_id: "/jars/app 1.jar".into(),
                byte_count: 5_000_000_000,
            },
        ),
        (
            "StreamFailure",
            Frame::StreamFailure {
                stream_id: "/files/x".into(),
                error: "Stream '/files/x' was not found.".into(),
            },
        ),
        ("OneWayMessage", Frame::OneWayMessage { body: b("hello") }),
        (
            "UploadStream",
            Frame::UploadStream {
                request: RequestId(77),
                meta: b("block_0_1"),
                byte_count: 1_048_576,
            },
        ),
        (
            "MergedBlockMetaRequest",
            Frame::MergedBlockMetaRequest {
                request: RequestId(11),
                app_id: "app-20261121-0001".into(),
                shuffle_id: 3,
                shuffle_merge_id: 1,
                reduce_id: -1,
            },
        ),
        (
            "MergedBlockMetaSuccess",
            Frame::MergedBlockMetaSuccess {
                request: RequestId(11),
                chunk_count: 2,
                body: b("bitmaps"),
            },
        ),
        (
            "RpcRequest/utf8",
            Frame::RpcRequest {
                request: RequestId(u64::MAX),
                body: b("hé"),
            },
        ),
    ]
}

/// The `field=value` text a vector's heading gives for `frame`, as Spark's signed types print.
fn describe(frame: &Frame) -> String {
    let body = |b: &Bytes| format!("body={:?}", std::str::from_utf8(b).unwrap());
    let chunk = |c: &StreamChunkId| {
        format!(
            "stream_id={} chunk_index={}",
            c.stream_id as i64, c.chunk_index as i32
        )
    };
    match frame {
        Frame::ChunkFetchRequest { chunk: c } => chunk(c),
        Frame::ChunkFetchSuccess { chunk: c, body: x } => format!("{} {}", chunk(c), body(x)),
        Frame::ChunkFetchFailure { chunk: c, error } => format!("{} error={error:?}", chunk(c)),
        Frame::RpcRequest { request, body: x } | Frame::RpcResponse { request, body: x } => {
            format!("request_id={request} {}", body(x))
        }
        Frame::RpcFailure { request, error } => format!("request_id={request} error={error:?}"),
        Frame::StreamRequest { stream_id } => format!("stream_id={stream_id:?}"),
        Frame::StreamResponse {
            stream_id,
            byte_count,
        } => {
            format!("stream_id={stream_id:?} byte_count={byte_count}")
        }
        Frame::StreamFailure { stream_id, error } => {
            format!("stream_id={stream_id:?} error={error:?}")
        }
        Frame::OneWayMessage { body: x } => body(x),
        Frame::UploadStream {
            request,
            meta,
            byte_count,
        } => format!(
            "request_id={request} meta={:?} byte_count={byte_count}",
            std::str::from_utf8(meta).unwrap()
        ),
        Frame::MergedBlockMetaRequest {
            request,
            app_id,
            shuffle_id,
            shuffle_merge_id,
            reduce_id,
        } => {
            format!(
                "request_id={request} app_id={app_id:?} shuffle_id={shuffle_id} \
                 shuffle_merge_id={shuffle_merge_id} reduce_id={reduce_id}"
            )
        }
        Frame::MergedBlockMetaSuccess {
            request,
            chunk_count,
            body: x,
        } => {
            format!("request_id={request} chunk_count={chunk_count} {}", body(x))
        }
    }
}

struct Vector {
    name: String,
    values: String,
    bytes: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/frames.txt");
    let mut out: Vec<Vector> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(heading) = line.strip_prefix("== ") {
            let (name, values) = heading.split_once(' ').unwrap_or((heading, ""));
            out.push(Vector {
                name: name.into(),
                values: values.into(),
                bytes: Vec::new(),
            });
        } else {
            let v = out.last_mut().expect("hex before the first heading");
            v.bytes.extend(hex::decode(line).expect("valid hex"));
        }
    }
    out
}

#[test]
fn every_message_type_has_a_vector() {
    let vectors = vectors();
    for ty in MessageType::ALL {
        assert!(
            vectors.iter().any(|v| v.bytes.get(8) == Some(&(ty as u8))),
            "no vector for {ty:?}"
        );
    }
    let names: Vec<_> = vectors.iter().map(|v| v.name.as_str()).collect();
    let expected: Vec<_> = expected().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, expected);
}

#[test]
fn encoding_matches_every_vector() {
    for (v, (_, frame)) in vectors().iter().zip(expected()) {
        assert_eq!(describe(&frame), v.values, "heading of {}", v.name);
        assert_eq!(
            hex::encode(frame.to_bytes()),
            hex::encode(&v.bytes),
            "bytes of {}",
            v.name
        );
    }
}

#[test]
fn decoding_every_vector_gives_its_values() {
    for (v, (_, frame)) in vectors().iter().zip(expected()) {
        let mut buf = BytesMut::from(&v.bytes[..]);
        let decoded = FrameDecoder::new(1 << 20).decode(&mut buf).unwrap();
        assert_eq!(decoded, Some(Decoded::Frame(frame)), "{}", v.name);
        assert!(buf.is_empty(), "{} left bytes over", v.name);
    }
}
