//! Unit tests of the connection state machine; wider behaviour is simulated in `rpc-tests`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::frame::Frame;

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
            error: RpcError::Remote("reply too large".into())
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
                error: RpcError::Remote("missing".into())
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
    let lost = RpcError::Disconnected(ConnectionError::LocallyClosed);
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
    let err = ConnectionError::Decode(crate::error::DecodeError::UnknownType(200));
    assert_eq!(
        events(&mut a),
        [
            Event::CallFailed {
                call: Call::Rpc(id),
                error: RpcError::Disconnected(err.clone())
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
            error: RpcError::UnexpectedReply {
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
            error: RpcError::TimedOut {
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
                error: RpcError::Disconnected(lost.clone())
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
