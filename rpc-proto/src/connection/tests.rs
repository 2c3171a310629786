//! Unit tests of the connection state machine; wider behaviour is simulated in `rpc-tests`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::config::ConfigBuilder;
use crate::error::DecodeError;
use crate::frame::{Decoded, Frame, MessageType};

/// The base of each test's virtual timeline: the one clock read a test makes.
#[allow(clippy::disallowed_methods)]
fn base() -> Instant {
    Instant::now()
}

fn pair() -> (Instant, Connection, Connection) {
    let now = base();
    let a = Connection::new(Config::builder().with_seed(1).build().unwrap(), now);
    let b = Connection::new(Config::builder().with_seed(2).build().unwrap(), now);
    (now, a, b)
}

/// Moves every queued byte from `from` to `to`.
fn pump(now: Instant, from: &mut Connection, to: &mut Connection) {
    while let Some(bytes) = from.poll_transmit() {
        to.handle_bytes(now, &bytes);
    }
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn wire(c: &mut Connection) -> Vec<u8> {
    std::iter::from_fn(|| c.poll_transmit())
        .flat_map(|b| b.to_vec())
        .collect()
}

#[test]
fn answering_a_request_that_is_not_owed_is_refused() {
    let (now, mut a, _) = pair();
    assert_eq!(
        a.respond_rpc(now, RequestId(5), Bytes::new()),
        Err(CallError::UnknownRequest(RequestId(5)))
    );
    let chunk = StreamChunkId::new(1, 1);
    assert_eq!(
        a.respond_chunk(now, chunk, Bytes::new()),
        Err(CallError::UnknownChunkFetch(chunk))
    );
    assert!(a.poll_transmit().is_none());
}

#[test]
fn a_request_is_answered_once() {
    let (now, mut a, mut b) = pair();
    a.rpc(now, "x".into(), None).unwrap();
    pump(now, &mut a, &mut b);
    let [Event::RpcReceived { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    b.respond_rpc(now, request, "y".into()).unwrap();
    assert_eq!(
        b.respond_rpc_failure(now, request, "z"),
        Err(CallError::UnknownRequest(request))
    );
}

#[test]
fn a_second_fetch_of_the_same_chunk_is_refused() {
    let (now, mut a, _) = pair();
    let chunk = StreamChunkId::new(9, 0);
    a.fetch_chunk(now, chunk, None).unwrap();
    assert_eq!(
        a.fetch_chunk(now, chunk, None),
        Err(CallError::DuplicateChunkFetch(chunk))
    );
}

#[test]
fn an_oversized_reply_is_refused_and_the_request_can_still_fail() {
    let now = base();
    let config = Config::builder().with_max_frame_size(2048).build().unwrap();
    let mut a = Connection::new(config.clone(), now);
    let mut b = Connection::new(config, now);
    let id = a.rpc(now, "q".into(), None).unwrap();
    pump(now, &mut a, &mut b);
    let [Event::RpcReceived { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    let err = b
        .respond_rpc(now, request, Bytes::from(vec![0; 4096]))
        .unwrap_err();
    assert!(matches!(err, CallError::FrameTooLarge { max: 2048, .. }));
    b.respond_rpc_failure(now, request, "reply too large")
        .unwrap();
    pump(now, &mut b, &mut a);
    assert_eq!(
        events(&mut a),
        [Event::CallFailed {
            call: Call::Rpc(id),
            error: RequestError::Remote("reply too large".into())
        }]
    );
}

#[test]
fn a_body_refuses_more_bytes_than_announced() {
    let (now, mut a, _) = pair();
    let (_, body) = a.upload_stream(now, Bytes::new(), 3, None).unwrap();
    a.send_body(now, body, "ab".into()).unwrap();
    assert_eq!(a.body_remaining(body), Some(1));
    assert_eq!(
        a.send_body(now, body, "cd".into()),
        Err(CallError::BodyOverrun {
            body,
            remaining: 1,
            offered: 2
        })
    );
    a.send_body(now, body, "c".into()).unwrap();
    assert_eq!(a.body_remaining(body), None);
    assert_eq!(
        a.send_body(now, body, "d".into()),
        Err(CallError::UnknownBody(body))
    );
}

#[test]
fn frames_queued_during_an_upload_body_go_after_it() {
    let (now, mut a, mut b) = pair();
    let (up, body) = a.upload_stream(now, "meta".into(), 4, None).unwrap();
    a.send_one_way(now, "behind".into()).unwrap();
    a.send_body(now, body, "ab".into()).unwrap();
    pump(now, &mut a, &mut b);
    // The one-way message waits: only half the body could be written.
    assert!(!events(&mut b)
        .iter()
        .any(|e| matches!(e, Event::OneWayReceived { .. })));
    a.send_body(now, body, "cd".into()).unwrap();
    pump(now, &mut a, &mut b);
    let got = events(&mut b);
    assert_eq!(
        got,
        [
            Event::UploadData {
                request: up,
                data: "cd".into()
            },
            Event::UploadFinished { request: up },
            Event::OneWayReceived {
                body: "behind".into()
            },
        ]
    );
}

#[test]
fn stream_answers_given_out_of_order_are_sent_in_request_order() {
    let (now, mut a, mut b) = pair();
    let first = a.stream(now, "one", None).unwrap();
    let second = a.stream(now, "two", None).unwrap();
    pump(now, &mut a, &mut b);
    let ids: Vec<_> = events(&mut b)
        .into_iter()
        .map(|e| match e {
            Event::StreamRequested { request, .. } => request,
            other => panic!("{other:?}"),
        })
        .collect();
    let body2 = b.respond_stream(now, ids[1], "two", 3).unwrap();
    b.send_body(now, body2, "222".into()).unwrap();
    assert!(
        b.poll_transmit().is_none(),
        "the second answer waits for the first"
    );
    b.respond_stream_failure(now, ids[0], "one", "missing")
        .unwrap();
    pump(now, &mut b, &mut a);
    assert_eq!(
        events(&mut a),
        [
            Event::CallFailed {
                call: Call::Stream(first),
                error: RequestError::Remote("missing".into())
            },
            Event::StreamOpened {
                stream: second,
                byte_count: 3
            },
            Event::StreamData {
                stream: second,
                data: "222".into()
            },
            Event::StreamFinished { stream: second },
        ]
    );
}

#[test]
fn closing_fails_pending_calls_once_and_flushes_what_was_queued() {
    let (now, mut a, mut b) = pair();
    let id = a.rpc(now, "q".into(), None).unwrap();
    let chunk = StreamChunkId::new(1, 2);
    a.fetch_chunk(now, chunk, None).unwrap();
    let s = a.stream(now, "s", None).unwrap();
    a.send_one_way(now, "last words".into()).unwrap();
    a.close(now);
    let lost = RequestError::Disconnected(ConnectionError::LocallyClosed);
    assert_eq!(
        events(&mut a),
        [
            Event::CallFailed {
                call: Call::Rpc(id),
                error: lost.clone()
            },
            Event::CallFailed {
                call: Call::ChunkFetch(chunk),
                error: lost.clone()
            },
            Event::CallFailed {
                call: Call::Stream(s),
                error: lost
            },
            Event::Closed {
                error: ConnectionError::LocallyClosed
            },
        ]
    );
    assert!(!a.is_drained(), "queued frames may still be written");
    pump(now, &mut a, &mut b);
    assert!(a.is_drained());
    assert!(events(&mut b).contains(&Event::OneWayReceived {
        body: "last words".into()
    }));
    assert_eq!(a.rpc(now, "again".into(), None), Err(CallError::Closed));
    assert_eq!(a.poll_timeout(), None);
    a.close(now);
    a.handle_closed(now);
    assert!(events(&mut a).is_empty(), "closing twice reports nothing");
}

#[test]
fn closing_drops_what_stands_behind_an_unfinished_body() {
    let (now, mut a, _) = pair();
    let (_, body) = a.upload_stream(now, Bytes::new(), 10, None).unwrap();
    a.send_body(now, body, "12345".into()).unwrap();
    a.send_one_way(now, "never".into()).unwrap();
    a.close(now);
    // What was whole before the body (the upload's frame) may still go; the body can never
    // complete, so neither it nor what stands behind it is written.
    let header = Frame::UploadStream {
        request: RequestId(0),
        meta: Bytes::new(),
        byte_count: 10,
    };
    assert_eq!(a.queued_bytes(), header.frame_len());
    assert_eq!(wire(&mut a).len() as u64, header.frame_len());
    assert!(a.is_drained());
}

#[test]
fn garbage_from_the_peer_fails_pending_calls_with_the_decode_error() {
    let (now, mut a, _) = pair();
    let id = a.rpc(now, "q".into(), None).unwrap();
    let mut garbage = 9i64.to_be_bytes().to_vec();
    garbage.push(200);
    a.handle_bytes(now, &garbage);
    let err = ConnectionError::Decode(DecodeError::UnknownType(200));
    assert_eq!(
        events(&mut a),
        [
            Event::CallFailed {
                call: Call::Rpc(id),
                error: RequestError::Disconnected(err.clone())
            },
            Event::Closed { error: err },
        ]
    );
    assert!(a.is_drained());
}

#[test]
fn a_reply_of_the_wrong_kind_fails_the_call() {
    let (now, mut a, mut b) = pair();
    let id = a.merged_block_meta(now, "app", 1, 0, 2, None).unwrap();
    pump(now, &mut a, &mut b);
    let [Event::MergedBlockMetaRequested { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    b.respond_rpc(now, request, "not meta".into()).unwrap();
    pump(now, &mut b, &mut a);
    assert_eq!(
        events(&mut a),
        [Event::CallFailed {
            call: Call::MergedBlockMeta(id),
            error: RequestError::UnexpectedReply {
                expected: "a merged block meta request",
                got: MessageType::RpcResponse
            }
        }]
    );
}

#[test]
fn a_cancelled_call_reports_nothing_and_its_late_reply_is_counted() {
    let (now, mut a, mut b) = pair();
    let id = a
        .rpc(now, "q".into(), Some(Duration::from_secs(1)))
        .unwrap();
    assert!(a.cancel(Call::Rpc(id)));
    assert!(!a.cancel(Call::Rpc(id)));
    assert_eq!(a.poll_timeout(), None, "the call's timer went with it");
    pump(now, &mut a, &mut b);
    let [Event::RpcReceived { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    b.respond_rpc(now, request, "late".into()).unwrap();
    pump(now, &mut b, &mut a);
    assert!(events(&mut a).is_empty());
    assert_eq!(a.stats().unmatched_replies, 1);
}

#[test]
fn a_call_times_out_at_its_deadline() {
    let (now, mut a, _) = pair();
    let id = a
        .rpc(now, "q".into(), Some(Duration::from_millis(250)))
        .unwrap();
    let deadline = now + Duration::from_millis(250);
    assert_eq!(a.poll_timeout(), Some(deadline));
    a.handle_timeout(deadline - Duration::from_nanos(1));
    assert!(events(&mut a).is_empty());
    a.handle_timeout(deadline);
    assert_eq!(
        events(&mut a),
        [Event::CallFailed {
            call: Call::Rpc(id),
            error: RequestError::TimedOut {
                after: Duration::from_millis(250)
            }
        }]
    );
}

#[test]
fn large_bodies_are_sent_without_copying() {
    let (now, mut a, _) = pair();
    let body = Bytes::from(vec![1u8; 100_000]);
    a.send_one_way(now, body.clone()).unwrap();
    let head = a.poll_transmit().unwrap();
    assert_eq!(head.len(), 13, "length, type and legacy length");
    let sent = a.poll_transmit().unwrap();
    assert_eq!(sent.as_ptr(), body.as_ptr());
    assert!(a.poll_transmit().is_none());
}

#[test]
fn small_frames_are_coalesced_into_one_write() {
    let (now, mut a, _) = pair();
    for _ in 0..100 {
        a.send_one_way(now, Bytes::from_static(&[0; 32])).unwrap();
    }
    let expected = 100
        * Frame::OneWayMessage {
            body: Bytes::from_static(&[0; 32]),
        }
        .frame_len();
    assert_eq!(a.queued_bytes(), expected);
    assert_eq!(a.poll_transmit().unwrap().len() as u64, expected);
    assert_eq!(a.queued_bytes(), 0);
}

#[test]
fn wire_bytes_are_spark_frames() {
    let (now, mut a, _) = pair();
    let id = a.rpc(now, "abc".into(), None).unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&24i64.to_be_bytes());
    expected.push(3);
    expected.extend_from_slice(&(id.0 as i64).to_be_bytes());
    expected.extend_from_slice(&3i32.to_be_bytes());
    expected.extend_from_slice(b"abc");
    assert_eq!(wire(&mut a), expected);
    assert!(
        id.0 <= i64::MAX as u64,
        "request ids are non-negative, as Spark's"
    );
}

#[test]
fn without_outstanding_calls_an_idle_connection_sets_no_timer() {
    let (now, mut a, _) = pair();
    assert_eq!(a.poll_timeout(), None);
    a.rpc(now, "q".into(), None).unwrap();
    assert_eq!(
        a.poll_timeout(),
        Some(now + crate::config::DEFAULT_IDLE_TIMEOUT)
    );
}

#[test]
fn a_full_send_buffer_refuses_new_calls_but_not_answers() {
    let now = base();
    let config = Config::builder()
        .with_max_send_buffer(1000)
        .build()
        .unwrap();
    let mut a = Connection::new(config.clone(), now);
    let mut b = Connection::new(config, now);
    a.rpc(now, "q".into(), None).unwrap();
    pump(now, &mut a, &mut b);
    let [Event::RpcReceived { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    // The peer stops reading: b's one-way messages pile up until the limit.
    let mut accepted = 0u64;
    let err = loop {
        match b.send_one_way(now, Bytes::from(vec![0; 100])) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    let one = Frame::OneWayMessage {
        body: Bytes::from(vec![0; 100]),
    }
    .frame_len();
    assert_eq!(accepted, 1000u64.div_ceil(one));
    assert_eq!(
        err,
        CallError::SendBufferFull {
            buffered: accepted * one,
            max: 1000
        }
    );
    assert!(b.is_send_buffer_full());
    assert!(matches!(
        b.rpc(now, "x".into(), None),
        Err(CallError::SendBufferFull { .. })
    ));
    // Answers are not refused: the peer asked for them.
    b.respond_rpc(now, request, "answer".into()).unwrap();
    // Once the peer reads, there is room again.
    pump(now, &mut b, &mut a);
    assert_eq!(b.buffered_bytes(), 0);
    b.send_one_way(now, "again".into()).unwrap();
}

#[test]
fn external_body_bytes_are_left_to_the_driver_in_their_place() {
    let (now, mut a, mut b) = pair();
    let call = a.stream(now, "file", None).unwrap();
    pump(now, &mut a, &mut b);
    let [Event::StreamRequested { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    let body = b.respond_stream(now, request, "file", 10).unwrap();
    b.send_body(now, body, "abc".into()).unwrap();
    b.send_body_external(now, body, 5).unwrap();
    b.send_body(now, body, "xy".into()).unwrap();
    b.send_one_way(now, "after".into()).unwrap();
    // The frame and the first bytes go out; then the wire is at the external bytes.
    let mut wire = Vec::new();
    while let Some(bytes) = b.poll_transmit() {
        wire.extend_from_slice(&bytes);
    }
    assert_eq!(b.poll_external(), Some((body, 5)));
    assert!(
        b.poll_transmit().is_none(),
        "nothing may overtake the external bytes"
    );
    // The driver writes them (here: by hand) in two goes.
    wire.extend_from_slice(b"12");
    b.handle_external_written(now, 2);
    assert_eq!(b.poll_external(), Some((body, 3)));
    wire.extend_from_slice(b"345");
    b.handle_external_written(now, 3);
    assert_eq!(b.poll_external(), None);
    while let Some(bytes) = b.poll_transmit() {
        wire.extend_from_slice(&bytes);
    }
    a.handle_bytes(now, &wire);
    let mut got = Vec::new();
    let mut one_way = None;
    for event in events(&mut a) {
        match event {
            Event::StreamData { data, .. } => got.extend_from_slice(&data),
            Event::OneWayReceived { body } => one_way = Some(body),
            Event::StreamOpened { stream, byte_count } => {
                assert_eq!((stream, byte_count), (call, 10))
            }
            Event::StreamFinished { stream } => assert_eq!(stream, call),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"abc12345xy");
    assert_eq!(one_way.as_deref(), Some(&b"after"[..]));
    assert_eq!(
        b.send_body_external(now, body, 1),
        Err(CallError::UnknownBody(body)),
        "the body is complete"
    );
}

#[test]
fn aborting_a_body_keeps_what_was_queued_before_it() {
    let (now, mut a, mut b) = pair();
    a.send_one_way(now, "before".into()).unwrap();
    let (up, body) = a.upload_stream(now, "m".into(), 10, None).unwrap();
    a.send_body(now, body, "12345".into()).unwrap();
    a.send_one_way(now, "behind".into()).unwrap();
    a.abort_body(now, body, "source failed");
    let lost = ConnectionError::BodyAborted {
        body,
        reason: "source failed".into(),
    };
    assert_eq!(
        events(&mut a),
        [
            Event::CallFailed {
                call: Call::Upload(up),
                error: RequestError::Disconnected(lost.clone())
            },
            Event::Closed { error: lost },
        ]
    );
    pump(now, &mut a, &mut b);
    assert!(a.is_drained());
    b.handle_closed(now);
    let got = events(&mut b);
    assert_eq!(
        got[0],
        Event::OneWayReceived {
            body: "before".into()
        }
    );
    assert!(matches!(got[1], Event::UploadReceived { request, .. } if request == up));
    assert!(
        matches!(&got[2], Event::UploadAborted { request, error: ConnectionError::PeerClosedMidBody { remaining: 10 } } if *request == up),
        "{:?}",
        got[2]
    );
}

#[test]
fn closing_fails_requests_and_fetches_then_aborts_the_arriving_upload_then_fails_streams() {
    let (now, mut a, mut b) = pair();
    // b's calls, of every kind, wait on a; a's upload to b is half sent.
    let rpc = b.rpc(now, "r".into(), None).unwrap();
    let chunk = StreamChunkId::new(4, 0);
    b.fetch_chunk(now, chunk, None).unwrap();
    let stream = b.stream(now, "s", None).unwrap();
    pump(now, &mut b, &mut a);
    let (up, body) = a.upload_stream(now, "m".into(), 10, None).unwrap();
    a.send_body(now, body, "12345".into()).unwrap();
    pump(now, &mut a, &mut b);
    let _ = events(&mut b);
    b.handle_closed(now);
    let lost = ConnectionError::PeerClosedMidBody { remaining: 5 };
    let failed = |call| Event::CallFailed {
        call,
        error: RequestError::Disconnected(lost.clone()),
    };
    assert_eq!(
        events(&mut b),
        [
            failed(Call::Rpc(rpc)),
            failed(Call::ChunkFetch(chunk)),
            Event::UploadAborted {
                request: up,
                error: lost.clone()
            },
            failed(Call::Stream(stream)),
            Event::Closed {
                error: lost.clone()
            },
        ]
    );
}

// ------------------------------------------------------------ hardening (issue 11)

fn with(config: ConfigBuilder) -> Connection {
    Connection::new(config.with_seed(3).build().unwrap(), base())
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.to_vec()
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(crate::config::SPARK_MAX_FRAME_LENGTH);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(item) = decoder.decode(&mut buf).unwrap() {
        if let Decoded::Frame(f) = item {
            out.push(f);
        }
    }
    out
}

#[test]
fn a_stream_id_over_the_limit_is_a_decode_error_and_closes() {
    let now = base();
    let mut server = with(Config::builder().with_max_id_len(16));
    server.handle_bytes(
        now,
        &frame_bytes(&Frame::StreamRequest {
            stream_id: "x".repeat(17),
        }),
    );
    assert!(matches!(
        server.close_reason(),
        Some(ConnectionError::Decode(DecodeError::StringTooLong {
            field: "stream id",
            length: 17,
            max: 16,
            ..
        }))
    ));
    assert!(events(&mut server)
        .iter()
        .all(|e| !matches!(e, Event::StreamRequested { .. })));
}

#[test]
fn a_huge_stream_id_is_refused_before_the_frame_is_buffered() {
    let now = base();
    let mut server = with(Config::builder());
    let mut wire = frame_bytes(&Frame::StreamRequest {
        stream_id: "x".repeat(64 * 1024),
    });
    wire.truncate(13 + 100); // the length field and the first bytes of the id
    server.handle_bytes(now, &wire);
    assert!(matches!(
        server.close_reason(),
        Some(ConnectionError::Decode(DecodeError::StringTooLong {
            length: 65536,
            max: 4096,
            ..
        }))
    ));
}

#[test]
fn a_long_error_text_from_the_peer_is_cut_to_the_limit() {
    let (now, mut a, _) = pair();
    let mut a2 = with(Config::builder().with_max_error_len(10));
    let request = a2.rpc(now, "x".into(), None).unwrap();
    let _ = wire(&mut a2);
    let _ = &mut a;
    // "é" is two bytes: the cut falls inside the sixth one and moves back to a boundary.
    let error = format!("abcd{}", "é".repeat(1000));
    a2.handle_bytes(now, &frame_bytes(&Frame::RpcFailure { request, error }));
    let failed = events(&mut a2);
    assert_eq!(
        failed,
        vec![Event::CallFailed {
            call: Call::Rpc(request),
            error: RequestError::Remote(Arc::from("abcdééé")),
        }]
    );
}

#[test]
fn failure_texts_sent_are_cut_to_the_limit() {
    let now = base();
    let mut client = with(Config::builder());
    let mut server = with(Config::builder().with_max_error_len(8));
    client.rpc(now, "x".into(), None).unwrap();
    client
        .fetch_chunk(now, StreamChunkId::new(1, 0), None)
        .unwrap();
    pump(now, &mut client, &mut server);
    for event in events(&mut server) {
        match event {
            Event::RpcReceived { request, .. } => server
                .respond_rpc_failure(now, request, &"r".repeat(1 << 20))
                .unwrap(),
            Event::ChunkFetchReceived { chunk } => server
                .respond_chunk_failure(now, chunk, &"c".repeat(1 << 20))
                .unwrap(),
            other => panic!("{other:?}"),
        }
    }
    let frames = decode_all(&wire(&mut server));
    assert!(matches!(&frames[0], Frame::RpcFailure { error, .. } if error == "rrrrrrrr"));
    assert!(matches!(&frames[1], Frame::ChunkFetchFailure { error, .. } if error == "cccccccc"));
}

#[test]
fn a_stream_failure_too_large_for_a_frame_is_cut_and_later_answers_still_go_out() {
    // Before: the failure was refused as too large, its slot never answered, and every later
    // stream answer on the connection waited behind it forever.
    let now = base();
    let mut server = with(
        Config::builder()
            .with_max_frame_size(crate::config::MIN_MAX_FRAME_SIZE)
            .with_max_error_len(u32::MAX),
    );
    for id in ["a", "b"] {
        server.handle_bytes(
            now,
            &frame_bytes(&Frame::StreamRequest {
                stream_id: id.into(),
            }),
        );
    }
    let requests: Vec<_> = events(&mut server)
        .into_iter()
        .map(|e| match e {
            Event::StreamRequested { request, .. } => request,
            other => panic!("{other:?}"),
        })
        .collect();
    server
        .respond_stream(now, requests[1], "b", 0)
        .expect("answered early: waits for the first");
    server
        .respond_stream_failure(now, requests[0], "a", &"e".repeat(1 << 20))
        .expect("a failure always fits");
    let frames = decode_all(&wire(&mut server));
    assert_eq!(frames.len(), 2);
    assert!(
        matches!(&frames[0], Frame::StreamFailure { stream_id, error } if stream_id == "a" && !error.is_empty())
    );
    assert!(frames[0].frame_len() <= crate::config::MIN_MAX_FRAME_SIZE);
    assert!(matches!(&frames[1], Frame::StreamResponse { stream_id, .. } if stream_id == "b"));
}

#[test]
fn requests_past_the_pending_limit_are_refused_without_an_event() {
    let now = base();
    let mut client = with(Config::builder());
    let mut server = with(Config::builder().with_max_pending_requests(2));
    let ids: Vec<_> = (0..3)
        .map(|_| client.rpc(now, "x".into(), None).unwrap())
        .collect();
    client
        .fetch_chunk(now, StreamChunkId::new(1, 0), None)
        .unwrap();
    pump(now, &mut client, &mut server);
    assert_eq!(events(&mut server).len(), 2);
    assert_eq!(server.pending_requests(), 2);
    assert_eq!(server.stats().refused_requests, 2);
    pump(now, &mut server, &mut client);
    let failed = events(&mut client);
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().any(|e| matches!(
        e,
        Event::CallFailed { call: Call::Rpc(id), error: RequestError::Remote(m) }
            if *id == ids[2] && m.contains("too many requests pending")
    )));
    assert!(failed.iter().any(|e| matches!(
        e,
        Event::CallFailed {
            call: Call::ChunkFetch(_),
            ..
        }
    )));
}

#[test]
fn stream_requests_past_the_limit_are_refused_in_order_and_a_flood_closes() {
    let now = base();
    let mut server = with(Config::builder().with_max_pending_streams(1));
    let ask = |s: &mut Connection, id: &str| {
        s.handle_bytes(
            now,
            &frame_bytes(&Frame::StreamRequest {
                stream_id: id.into(),
            }),
        )
    };
    ask(&mut server, "a");
    ask(&mut server, "b");
    let evs = events(&mut server);
    assert_eq!(evs.len(), 1, "the second is refused: {evs:?}");
    assert!(
        wire(&mut server).is_empty(),
        "the refusal waits for the first answer"
    );
    assert_eq!(server.stats().refused_requests, 1);
    // The first is never answered and the peer keeps asking: its refusals would pile up.
    for _ in 0..4 {
        ask(&mut server, "c");
    }
    assert!(matches!(
        server.close_reason(),
        Some(ConnectionError::OverBudget { .. })
    ));
}

#[test]
fn a_stalled_partial_frame_is_cut_at_the_frame_timeout() {
    let t0 = base();
    let timeout = Duration::from_secs(10);
    let mut server = with(
        Config::builder()
            .with_frame_timeout(Some(timeout))
            .with_idle_timeout(None),
    );
    let frame = frame_bytes(&Frame::RpcRequest {
        request: RequestId(1),
        body: Bytes::from(vec![0; 100]),
    });
    server.handle_bytes(t0, &frame[..50]);
    assert_eq!(server.partial_frame_bytes(), 50);
    assert_eq!(server.poll_timeout(), Some(t0 + timeout));
    // One byte a second keeps the connection busy but does not move the deadline.
    for i in 1..10u64 {
        let at = t0 + Duration::from_secs(i);
        server.handle_bytes(at, &frame[49 + i as usize..50 + i as usize]);
        server.handle_timeout(at);
    }
    assert!(!server.is_closed());
    server.handle_timeout(t0 + timeout);
    assert_eq!(
        server.close_reason(),
        Some(&ConnectionError::FrameTimedOut {
            after: timeout,
            received: 59
        })
    );
    assert_eq!(server.partial_frame_bytes(), 0);
}

#[test]
fn a_whole_frame_clears_the_frame_deadline() {
    let t0 = base();
    let mut server = with(Config::builder().with_idle_timeout(None));
    let frame = frame_bytes(&Frame::OneWayMessage { body: "x".into() });
    server.handle_bytes(t0, &frame[..5]);
    assert!(server.poll_timeout().is_some());
    server.handle_bytes(t0, &frame[5..]);
    assert_eq!(server.poll_timeout(), None);
    assert_eq!(server.partial_frame_bytes(), 0);
}

#[test]
fn an_accepted_connection_idle_with_nothing_owed_is_closed() {
    let t0 = base();
    let idle = Duration::from_secs(120);
    let mut server = Connection::new(Config::default().accepted(), t0);
    assert_eq!(server.poll_timeout(), Some(t0 + idle));
    // A request owed to the peer keeps it open: the peer waits for us.
    server.handle_bytes(
        t0,
        &frame_bytes(&Frame::RpcRequest {
            request: RequestId(1),
            body: "x".into(),
        }),
    );
    let _ = events(&mut server);
    assert_eq!(server.poll_timeout(), None);
    server.respond_rpc(t0, RequestId(1), "y".into()).unwrap();
    let _ = wire(&mut server);
    server.handle_written(t0);
    server.handle_timeout(t0 + idle);
    assert_eq!(server.close_reason(), Some(&ConnectionError::Idle { idle }));
}

#[test]
fn bytes_written_count_as_traffic_for_the_idle_policy() {
    let t0 = base();
    let idle = Duration::from_secs(120);
    let mut server = Connection::new(Config::default().accepted(), t0);
    server.handle_bytes(
        t0,
        &frame_bytes(&Frame::RpcRequest {
            request: RequestId(1),
            body: "x".into(),
        }),
    );
    let _ = events(&mut server);
    server.respond_rpc(t0, RequestId(1), "y".into()).unwrap();
    let later = t0 + Duration::from_secs(100);
    let _ = server.poll_transmit();
    server.handle_written(later); // by a slow reader
    server.handle_timeout(t0 + idle);
    assert!(!server.is_closed());
    server.handle_timeout(later + idle);
    assert!(server.is_closed());
}

#[test]
fn a_body_that_stops_arriving_is_cut_at_the_idle_timeout() {
    let t0 = base();
    let idle = Duration::from_secs(30);
    let mut server = with(Config::builder().with_idle_timeout(Some(idle)));
    server.handle_bytes(
        t0,
        &frame_bytes(&Frame::UploadStream {
            request: RequestId(1),
            meta: Bytes::new(),
            byte_count: 1000,
        }),
    );
    server.handle_bytes(t0, &[0; 10]);
    let _ = events(&mut server);
    server.respond_rpc_failure(t0, RequestId(1), "no").unwrap();
    let _ = wire(&mut server);
    server.handle_written(t0);
    assert_eq!(server.poll_timeout(), Some(t0 + idle));
    server.handle_timeout(t0 + idle);
    assert_eq!(
        server.close_reason(),
        Some(&ConnectionError::BodyStalled {
            idle,
            remaining: 990
        })
    );
}

#[test]
fn file_backed_body_bytes_count_against_the_send_buffer() {
    // Before: they counted zero, so any number of file bodies could be queued.
    let now = base();
    let mut server = with(Config::builder().with_max_send_buffer(1000));
    server.handle_bytes(
        now,
        &frame_bytes(&Frame::StreamRequest {
            stream_id: "f".into(),
        }),
    );
    let [Event::StreamRequested { request, .. }] = events(&mut server)[..] else {
        panic!()
    };
    let body = server.respond_stream(now, request, "f", 5000).unwrap();
    server.send_body_external(now, body, 5000).unwrap();
    assert!(server.buffered_bytes() >= 5000);
    assert!(server.is_send_buffer_full());
    assert_eq!(server.pending_streams(), 1);
    let _ = wire(&mut server);
    assert_eq!(server.poll_external(), Some((body, 5000)));
    server.handle_external_written(now, 5000);
    assert_eq!(server.buffered_bytes(), 0);
    assert!(server.poll_transmit().is_none());
    assert_eq!(server.pending_streams(), 0);
}

#[test]
fn closing_over_budget_reports_the_budget() {
    let now = base();
    let mut server = with(Config::builder());
    server.handle_bytes(now, &[0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(server.partial_frame_bytes(), 7);
    server.close_over_budget(now, "partial frames of the server", 7, 5);
    assert_eq!(server.partial_frame_bytes(), 0);
    assert!(matches!(
        events(&mut server).last(),
        Some(Event::Closed {
            error: ConnectionError::OverBudget { limit: 5, .. }
        })
    ));
}

mod budget_proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever mix of requests a peer sends to a side that answers none of them, what
        /// that side owes stays within its limits, every request is either handed to the
        /// handler or refused on the wire (never both, never neither), and a flood of
        /// stream requests ends in a typed close rather than growth.
        #[test]
        fn what_a_side_owes_the_peer_stays_within_its_limits(
            kinds in prop::collection::vec(0u8..4, 0..200),
            max_requests in 1usize..8,
            max_streams in 1usize..4,
        ) {
            let now = base();
            let mut server = with(
                Config::builder()
                    .with_max_pending_requests(max_requests)
                    .with_max_pending_streams(max_streams),
            );
            let mut sent = 0u64;
            for (i, kind) in kinds.iter().enumerate() {
                let frame = match kind {
                    0 => Frame::RpcRequest { request: RequestId(i as u64), body: "x".into() },
                    1 => Frame::ChunkFetchRequest { chunk: StreamChunkId::new(1, i as u32) },
                    2 => Frame::StreamRequest { stream_id: format!("s{i}") },
                    _ => Frame::MergedBlockMetaRequest {
                        request: RequestId(i as u64),
                        app_id: "app".into(),
                        shuffle_id: 0,
                        shuffle_merge_id: 0,
                        reduce_id: 0,
                    },
                };
                server.handle_bytes(now, &frame_bytes(&frame));
                if server.is_closed() {
                    break;
                }
                sent += 1;
                prop_assert!(server.pending_requests() <= max_requests);
                prop_assert!(server.pending_streams() <= 2 * max_streams);
            }
            let handed = events(&mut server)
                .iter()
                .filter(|e| !matches!(e, Event::Closed { .. }))
                .count() as u64;
            match server.close_reason() {
                None => prop_assert_eq!(handed + server.stats().refused_requests, sent),
                Some(ConnectionError::OverBudget { .. }) => {}
                Some(other) => prop_assert!(false, "closed with {other}"),
            }
        }
    }
}

/// A server connection owing the fetch of `chunk` (a one-way message queued before it is
/// answered), and its client.
fn owing_chunk(chunk: StreamChunkId) -> (Instant, Connection, Connection) {
    let (now, mut client, mut server) = pair();
    client.fetch_chunk(now, chunk, None).unwrap();
    pump(now, &mut client, &mut server);
    assert_eq!(events(&mut server), [Event::ChunkFetchReceived { chunk }]);
    server.send_one_way(now, "before".into()).unwrap();
    (now, client, server)
}

/// Everything `c` sends, external body bytes written from `body` in pieces of at most
/// `piece` bytes, as a driver would; stops early after `stop_after` body bytes.
fn wire_with_external(
    now: Instant,
    c: &mut Connection,
    body: &[u8],
    piece: u64,
    stop_after: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut written = 0u64;
    loop {
        while let Some(bytes) = c.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
        let Some((_, left)) = c.poll_external() else {
            return out;
        };
        if stop_after == Some(written) {
            return out;
        }
        let n = left
            .min(piece)
            .min(stop_after.map_or(u64::MAX, |s| s - written));
        out.extend_from_slice(&body[written as usize..(written + n) as usize]);
        written += n;
        c.handle_external_written(now, n);
    }
}

#[test]
fn an_external_chunk_is_byte_for_byte_the_chunk_with_its_body_in_the_frame() {
    let chunk = StreamChunkId::new(0x0102_0304_0506_0708, 9);
    for len in [0usize, 1, 5, COPY_THRESHOLD_FOR_TESTS, 20_000, 100_003] {
        let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();

        let (now, _, mut inside) = owing_chunk(chunk);
        inside
            .respond_chunk(now, chunk, Bytes::from(body.clone()))
            .unwrap();
        inside.send_one_way(now, "after".into()).unwrap();
        let golden = wire(&mut inside);

        let (now, mut client, mut external) = owing_chunk(chunk);
        let id = external
            .respond_chunk_external(now, chunk, len as u64)
            .unwrap();
        assert_eq!(external.pending_requests(), 0, "the fetch is answered");
        external.send_one_way(now, "after".into()).unwrap();
        if len > 0 {
            assert!(external.buffered_bytes() >= len as u64);
        }
        let got = wire_with_external(now, &mut external, &body, 4099, None);
        assert_eq!(got, golden, "{len} bytes");
        assert_eq!(external.buffered_bytes(), 0);
        assert_eq!(external.body_remaining(id), None);
        assert_eq!(external.stats().frames_sent, 3);
        assert_eq!(external.stats().bytes_sent, golden.len() as u64);

        // The spelled-out frame: [i64 length incl. itself][u8 type][i64 stream][i32 index][body].
        let before = frame_bytes(&Frame::OneWayMessage {
            body: "before".into(),
        });
        let frame = &got[before.len()..before.len() + 21 + len];
        assert_eq!(frame[..8], ((21 + len) as i64).to_be_bytes());
        assert_eq!(frame[8], MessageType::ChunkFetchSuccess as u8);
        assert_eq!(frame[9..17], 0x0102_0304_0506_0708i64.to_be_bytes());
        assert_eq!(frame[17..21], 9i32.to_be_bytes());
        assert_eq!(frame[21..], body[..]);

        client.handle_bytes(now, &got);
        assert_eq!(
            events(&mut client),
            [
                Event::OneWayReceived {
                    body: "before".into()
                },
                Event::ChunkReceived {
                    chunk,
                    body: body.into()
                },
                Event::OneWayReceived {
                    body: "after".into()
                },
            ]
        );
    }
}

const COPY_THRESHOLD_FOR_TESTS: usize = send::COPY_THRESHOLD + 1;

#[test]
fn an_external_chunk_cut_mid_body_closes_with_the_bytes_of_a_cut_frame() {
    let chunk = StreamChunkId::new(4, 0);
    let body: Vec<u8> = (0..1000).map(|i| i as u8).collect();
    let (now, _, mut inside) = owing_chunk(chunk);
    inside
        .respond_chunk(now, chunk, Bytes::from(body.clone()))
        .unwrap();
    let golden = wire(&mut inside);

    let (now, mut client, mut server) = owing_chunk(chunk);
    let id = server.respond_chunk_external(now, chunk, 1000).unwrap();
    server.send_one_way(now, "behind".into()).unwrap();
    let mut got = wire_with_external(now, &mut server, &body, 100, Some(300));
    // The file shrank: the driver gives up.
    server.abort_body(now, id, "file ended early");
    let error = ConnectionError::BodyAborted {
        body: id,
        reason: "file ended early".into(),
    };
    assert_eq!(events(&mut server), [Event::Closed { error }]);
    assert_eq!(server.poll_external(), None, "nothing left for the driver");
    got.extend(wire(&mut server));
    assert!(server.is_drained());
    assert_eq!(server.buffered_bytes(), 0);
    // What went out is the golden wire cut 300 bytes into the body; "behind" is dropped.
    let before = frame_bytes(&Frame::OneWayMessage {
        body: "before".into(),
    });
    assert_eq!(got.len(), before.len() + 21 + 300);
    assert_eq!(got[..], golden[..got.len()]);
    // The peer sees the frame cut short: the fetch fails, typed.
    client.handle_bytes(now, &got);
    client.handle_closed(now);
    let lost = ConnectionError::PeerClosedMidFrame { buffered: 21 + 300 };
    assert_eq!(
        events(&mut client),
        [
            Event::OneWayReceived {
                body: "before".into()
            },
            Event::CallFailed {
                call: Call::ChunkFetch(chunk),
                error: RequestError::Disconnected(lost.clone())
            },
            Event::Closed { error: lost },
        ]
    );
}

#[test]
fn an_external_chunk_failing_before_its_first_byte_sends_only_its_head() {
    let chunk = StreamChunkId::new(4, 1);
    let (now, _, mut server) = owing_chunk(chunk);
    let id = server.respond_chunk_external(now, chunk, 10).unwrap();
    let got = wire(&mut server);
    assert_eq!(server.poll_external(), Some((id, 10)));
    server.abort_body(now, id, "unreadable");
    assert!(server.is_drained());
    let before = frame_bytes(&Frame::OneWayMessage {
        body: "before".into(),
    });
    assert_eq!(got.len(), before.len() + 21);
}

#[test]
fn an_external_chunk_too_large_for_a_frame_is_refused_before_anything_is_queued() {
    let now = base();
    let chunk = StreamChunkId::new(1, 2);
    let mut server = with(Config::builder().with_max_frame_size(1024));
    server.handle_bytes(now, &frame_bytes(&Frame::ChunkFetchRequest { chunk }));
    let _ = events(&mut server);
    assert_eq!(
        server.respond_chunk_external(now, chunk, 1024 - 21 + 1),
        Err(CallError::FrameTooLarge {
            size: 1025,
            max: 1024
        })
    );
    assert_eq!(
        server.respond_chunk_external(now, chunk, u64::MAX),
        Err(CallError::FrameTooLarge {
            size: u64::MAX,
            max: 1024
        })
    );
    assert!(server.poll_transmit().is_none());
    assert_eq!(server.buffered_bytes(), 0);
    // Still owed: it can be failed, or answered with what fits.
    assert_eq!(server.pending_requests(), 1);
    let id = server
        .respond_chunk_external(now, chunk, 1024 - 21)
        .unwrap();
    assert_eq!(server.buffered_bytes(), 1024);
    assert_eq!(
        server.respond_chunk_external(now, chunk, 1),
        Err(CallError::UnknownChunkFetch(chunk)),
        "answered once"
    );
    let _ = wire(&mut server);
    assert_eq!(server.poll_external(), Some((id, 1003)));
}

#[test]
fn external_chunk_bytes_count_against_the_send_buffer_until_written() {
    let now = base();
    let mut server = with(Config::builder().with_max_send_buffer(1000));
    let chunks = [StreamChunkId::new(1, 0), StreamChunkId::new(1, 1)];
    for chunk in chunks {
        server.handle_bytes(now, &frame_bytes(&Frame::ChunkFetchRequest { chunk }));
    }
    let _ = events(&mut server);
    let a = server.respond_chunk_external(now, chunks[0], 600).unwrap();
    assert!(!server.is_send_buffer_full());
    let b = server.respond_chunk_external(now, chunks[1], 600).unwrap();
    assert_eq!(server.buffered_bytes(), 2 * (21 + 600));
    assert!(server.is_send_buffer_full());
    // Nothing of the second chunk may overtake the first's body.
    assert_eq!(wire(&mut server).len(), 21);
    assert_eq!(server.poll_external(), Some((a, 600)));
    server.handle_external_written(now, 600);
    assert_eq!(wire(&mut server).len(), 21);
    assert_eq!(server.poll_external(), Some((b, 600)));
    assert_eq!(server.buffered_bytes(), 600);
    server.handle_external_written(now, 600);
    assert_eq!(server.buffered_bytes(), 0);
    assert!(server.poll_transmit().is_none());
    assert_eq!(server.poll_external(), None);
}

#[test]
fn aborting_an_external_body_fed_in_full_leaves_nothing_for_the_driver() {
    // A stream body fed at once as file bytes, cut mid-write: before, the queue kept the
    // rest of it, so a driver was asked forever for bytes of a body it had given up on.
    let (now, mut a, mut b) = pair();
    a.stream(now, "file", None).unwrap();
    pump(now, &mut a, &mut b);
    let [Event::StreamRequested { request, .. }] = events(&mut b)[..] else {
        panic!()
    };
    let body = b.respond_stream(now, request, "file", 10).unwrap();
    b.send_body_external(now, body, 10).unwrap();
    let _ = wire(&mut b);
    b.handle_external_written(now, 4);
    b.abort_body(now, body, "truncated");
    assert_eq!(b.poll_external(), None);
    assert!(b.poll_transmit().is_none());
    assert!(b.is_drained());
    assert_eq!(b.buffered_bytes(), 0);
}
