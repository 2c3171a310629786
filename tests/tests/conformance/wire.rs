//! The adapter's sockets against a raw peer speaking Spark's wire format: frames split at
//! every byte, partial reads and writes in both directions, end of file in the middle of a
//! frame.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc::{ConnectionError, RequestId, RequestError};
use rpc_proto::{Decoded, Frame, FrameDecoder};

use super::transport::{big_body, localhost, setup};
use super::util::*;

/// The bytes of `frames`, back to back.
pub(crate) fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for frame in frames {
        frame.encode(&mut wire);
    }
    wire.to_vec()
}

/// A raw connection to `addr`, with reads bounded by [`WAIT`].
pub(crate) fn raw_connect(addr: SocketAddr) -> TcpStream {
    let peer = TcpStream::connect(addr).expect("a raw connection");
    peer.set_nodelay(true).unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer
}

/// Writes `bytes` one at a time, pausing after each, so each is a read of its own.
fn write_byte_by_byte(peer: &mut TcpStream, bytes: &[u8]) {
    for byte in bytes {
        peer.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// Reads `n` whole frames, `piece` bytes at most per read, pausing every 64 KiB.
pub(crate) fn read_frames(peer: &mut TcpStream, n: usize, piece: usize) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(64 << 20);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0; piece];
    let mut since_pause = 0;
    while frames.len() < n {
        while let Some(decoded) = decoder.decode(&mut buf).expect("valid frames") {
            match decoded {
                Decoded::Frame(frame) => frames.push(frame),
                other => panic!("unexpected {other:?}"),
            }
        }
        if frames.len() == n {
            break;
        }
        let read = peer.read(&mut chunk).expect("the frames, within WAIT");
        assert!(read > 0, "end of file after {} of {n} frames", frames.len());
        buf.extend_from_slice(&chunk[..read]);
        since_pause += read;
        if since_pause >= 64 * 1024 {
            since_pause = 0;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    frames
}

/// Reads until the peer closes (so nothing unread makes our close a reset).
fn read_to_end(peer: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = peer.read_to_end(&mut sink);
}

fn by_request(frames: Vec<Frame>) -> HashMap<u64, Frame> {
    frames
        .into_iter()
        .map(|frame| match &frame {
            Frame::RpcResponse { request, .. } | Frame::RpcFailure { request, .. } => {
                (request.0, frame)
            }
            other => panic!("not an answer: {other:?}"),
        })
        .collect()
}

fn response(request: u64, body: impl Into<Bytes>) -> Frame {
    Frame::RpcResponse {
        request: RequestId(request),
        body: body.into(),
    }
}

#[test]
fn frames_written_one_byte_at_a_time_are_served_and_replies_read_byte_by_byte_are_whole() {
    if skip_raw_plaintext("frames_written_one_byte_at_a_time_are_served_and_replies_read_byte_by_byte_are_whole") {
        return;
    }
    block_on(async {
        let (server, handler, _, _) = setup().await;
        let addr = server.local_addr();
        let frames = vec![
            Frame::RpcRequest {
                request: RequestId(1),
                body: "first".into(),
            },
            Frame::OneWayMessage {
                body: "one way".into(),
            },
            Frame::RpcRequest {
                request: RequestId(2),
                body: "second".into(),
            },
            Frame::RpcRequest {
                request: RequestId(3),
                body: "fail".into(),
            },
            Frame::RpcRequest {
                request: RequestId(4),
                body: Bytes::new(),
            },
        ];
        let exchange = on_thread(move || {
            let mut peer = raw_connect(addr);
            write_byte_by_byte(&mut peer, &encode(&frames));
            read_frames(&mut peer, 4, 1)
        });
        let answers = by_request(within("the byte-by-byte exchange", exchange).await);
        assert_eq!(answers[&1], response(1, "first"));
        assert_eq!(answers[&2], response(2, "second"));
        assert_eq!(
            answers[&3],
            Frame::RpcFailure {
                request: RequestId(3),
                error: "you asked for it".into()
            }
        );
        assert_eq!(answers[&4], response(4, Bytes::new()));
        assert_eq!(handler.one_way.load(Ordering::SeqCst), 1);
        assert_eq!(handler.opened.load(Ordering::SeqCst), 1);
    })
}

#[test]
fn large_replies_to_a_peer_reading_in_small_pieces_arrive_whole() {
    if skip_raw_plaintext("large_replies_to_a_peer_reading_in_small_pieces_arrive_whole") {
        return;
    }
    block_on(async {
        let (server, handler, _, _) = setup().await;
        let addr = server.local_addr();
        // Megabytes: more than the socket buffers hold, so our writes are partial and wait.
        let (first, second) = (3_000_000, 1_000_003);
        let frames = vec![
            Frame::RpcRequest {
                request: RequestId(1),
                body: format!("big:{first}").into(),
            },
            Frame::RpcRequest {
                request: RequestId(2),
                body: format!("big:{second}").into(),
            },
            Frame::OneWayMessage {
                body: "one way".into(),
            },
            Frame::RpcRequest {
                request: RequestId(3),
                body: "after".into(),
            },
        ];
        let exchange = on_thread(move || {
            let mut peer = raw_connect(addr);
            peer.write_all(&encode(&frames)).unwrap();
            // An odd size, so frames and writes straddle reads everywhere.
            read_frames(&mut peer, 3, 997)
        });
        let answers = by_request(within("the slow read", exchange).await);
        assert_eq!(answers[&1], response(1, big_body(first)));
        assert_eq!(answers[&2], response(2, big_body(second)));
        assert_eq!(answers[&3], response(3, "after"));
        assert_eq!(handler.one_way.load(Ordering::SeqCst), 1);
    })
}

#[test]
fn a_large_request_to_a_peer_reading_slowly_is_written_whole_and_a_reply_split_at_every_byte_is_read()
{
    if skip_raw_plaintext("a_large_request_to_a_peer_reading_slowly_is_written_whole_and_a_reply_split_at_every_byte_is_read") {
        return;
    }
    block_on(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let size = 2_000_000;
        let raw_server = on_thread(move || {
            let (mut peer, _) = listener.accept().unwrap();
            peer.set_nodelay(true).unwrap();
            peer.set_read_timeout(Some(WAIT)).unwrap();
            let request = match read_frames(&mut peer, 1, 1000).remove(0) {
                Frame::RpcRequest { request, body } => {
                    assert!(body == big_body(size), "the request arrived intact");
                    request
                }
                other => panic!("expected a request, got {other:?}"),
            };
            let reply = Frame::RpcResponse {
                request,
                body: format!("got {size} bytes").into(),
            };
            write_byte_by_byte(&mut peer, &encode(&[reply]));
            read_to_end(&mut peer);
        });
        let (_, _, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        let reply = within("the reply", client.send_rpc(big_body(size), None)).await;
        assert_eq!(reply.unwrap(), format!("got {size} bytes"));
        client.close();
        within("the raw server", raw_server).await;
    })
}

#[test]
fn a_reply_cut_off_by_end_of_file_fails_the_pending_call_with_a_disconnect() {
    if skip_raw_plaintext("a_reply_cut_off_by_end_of_file_fails_the_pending_call_with_a_disconnect") {
        return;
    }
    block_on(async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let raw_server = on_thread(move || {
            let (mut peer, _) = listener.accept().unwrap();
            peer.set_read_timeout(Some(WAIT)).unwrap();
            let Frame::RpcRequest { request, .. } = read_frames(&mut peer, 1, 1).remove(0) else {
                panic!("expected a request")
            };
            let reply = encode(&[Frame::RpcResponse {
                request,
                body: "never all of it".into(),
            }]);
            let half = reply.len() / 2;
            peer.write_all(&reply[..half]).unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            read_to_end(&mut peer);
            half
        });
        let (_, _, factory, _) = setup().await;
        let client = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        let err = within("the failed call", client.send_rpc("hello".into(), None))
            .await
            .unwrap_err();
        let half = within("the raw server", raw_server).await;
        assert_eq!(
            err,
            RequestError::Disconnected(ConnectionError::PeerClosedMidFrame { buffered: half })
        );
        assert!(!client.is_active());
    })
}

#[test]
fn a_peer_that_ends_mid_frame_fails_the_calls_pending_on_it_and_the_server_serves_others() {
    if skip_raw_plaintext("a_peer_that_ends_mid_frame_fails_the_calls_pending_on_it_and_the_server_serves_others") {
        return;
    }
    block_on(async {
        let (server, handler, factory, _) = setup().await;
        let addr = server.local_addr();
        let raw_peer = on_thread(move || {
            let mut peer = raw_connect(addr);
            // The server's request to us arrives; we start an answer and hang up.
            read_frames(&mut peer, 1, 1);
            peer.write_all(&[0, 0, 0, 0, 0, 0, 0]).unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            read_to_end(&mut peer);
        });
        eventually("the raw peer's connection", || {
            server.connections().len() == 1
        })
        .await;
        let to_raw = server.connections().remove(0);
        let err = within("the failed call", to_raw.send_rpc("still there?".into(), None))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RequestError::Disconnected(ConnectionError::PeerClosedMidFrame { buffered: 7 })
        );
        within("the raw peer", raw_peer).await;
        eventually("the close event", || handler.closed.lock().unwrap().len() == 1).await;
        assert_eq!(
            handler.closed.lock().unwrap()[0],
            ConnectionError::PeerClosedMidFrame { buffered: 7 }
        );

        // The server still serves other connections.
        let client = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        let reply = within("a reply", client.send_rpc("still serving".into(), None)).await;
        assert_eq!(reply.unwrap(), "still serving");
    })
}
