//! One hostile or broken peer, on raw sockets, against a real server (issue 11): it must not
//! stall, exhaust or flood the server. For each row, the offending connection meets the
//! expected typed outcome, the server's memory (read from its connections' own stats) stays
//! within the configured budgets, and a well-behaved client on another connection is still
//! answered. Limits are configured small so the tests run fast; deadlines are short and
//! waited for generously; nothing asserts speed.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpc::{Config, ConnectionError, DecodeError, RequestId, StreamChunkId};
use rpc_proto::{Frame};
use rpc::{
    FileSegment, ManagedBuffer, RpcHandler, RpcResponder, StreamManager, TransportClient,
    TransportClientFactory, TransportConfig, TransportServer,
};

use super::files::temp_file;
use super::transport::{localhost, Echo};
use super::util::*;
use super::wire::{encode, raw_connect, read_frames};

/// Bytes of every in-memory chunk served.
const CHUNK: usize = 4 * 1024;

/// Echoes RPCs; serves any chunk as [`CHUNK`] bytes (stream 7: a file segment set by the
/// test), the stream `empty` as no bytes, and refuses every other stream by name.
#[derive(Default)]
struct Hostile {
    closed: Mutex<Vec<ConnectionError>>,
    file: Mutex<Option<FileSegment>>,
}

impl RpcHandler for Hostile {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = responder.reply(message);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn connection_closed(&self, _: &TransportClient, error: &ConnectionError) {
        self.closed.lock().unwrap().push(error.clone());
    }
}

impl StreamManager for Hostile {
    fn chunk(&self, _: &TransportClient, _: StreamChunkId) -> Result<Bytes, rpc::BoxError> {
        Ok(Bytes::from_static(&[7; CHUNK]))
    }

    fn chunk_buffer(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, rpc::BoxError> {
        match (chunk.stream_id, &*self.file.lock().unwrap()) {
            (7, Some(segment)) => Ok(ManagedBuffer::File(segment.clone())),
            _ => self.chunk(client, chunk).map(ManagedBuffer::Memory),
        }
    }

    fn open_stream(&self, _: &TransportClient, stream_id: &str) -> Result<Bytes, rpc::BoxError> {
        match stream_id {
            "empty" => Ok(Bytes::new()),
            other => Err(format!("Stream '{other}' was not found.").into()),
        }
    }
}

fn serve(config: TransportConfig) -> (TransportServer, Arc<Hostile>) {
    let handler = Arc::new(Hostile::default());
    let server = TransportServer::bind(rt(), localhost(), handler.clone(), config).unwrap();
    (server, handler)
}

fn with_connection(config: Config) -> TransportConfig {
    transport_config()
        .to_builder()
        .with_connection(config)
        .build()
        .unwrap()
}

/// A well-behaved client on a connection of its own is answered.
async fn still_answers(server: &TransportServer) {
    let factory =
        TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config());
    let client = within("a connection", factory.create_client(server.local_addr()))
        .await
        .unwrap();
    let reply = within("an rpc", client.send_rpc("hello".into(), Some(LONG)))
        .await
        .unwrap();
    assert_eq!(reply, "hello");
    client.close();
}

/// Waits until the server has closed `peer`: a read returns end of file or a reset.
fn wait_closed(peer: &mut TcpStream) {
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = vec![0; 64 * 1024];
    loop {
        match peer.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server did not close the connection within {WAIT:?}: {e}"),
        }
    }
}

/// The sum of a stat over the server's open connections.
fn total(server: &TransportServer, stat: impl Fn(rpc_proto::ConnectionStats) -> u64) -> u64 {
    server.connections().iter().map(|c| stat(c.stats())).sum()
}

/// Sets its flag when dropped: a thread's end, even by a panic.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_peer_that_never_reads_its_answers_is_not_read_from() {
    // Before: every answer and every refusal was queued, about 5.5 bytes of server memory
    // per byte the peer sent, without bound, and the peer's writes never blocked.
    const LIMIT: u64 = 256 * 1024;
    block_on(async {
        let config = Config::builder()
            .with_max_send_buffer(LIMIT)
            .build()
            .unwrap();
        let (server, _) = serve(with_connection(config));
        let mut peer = raw_connect(server.local_addr());
        peer.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let fetches: Vec<Frame> = (0..10_000u32)
            .map(|i| Frame::ChunkFetchRequest {
                chunk: StreamChunkId::new(1, i),
            })
            .collect();
        let batch = encode(&fetches); // 210,000 bytes
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let writer = on_thread(move || {
            let _finished = SetOnDrop(finished);
            let mut written = 0u64;
            // The server stops reading, the kernel's buffers fill, and a write blocks.
            while written < 256 << 20 {
                match peer.write(&batch) {
                    Ok(n) => written += n as u64,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return (peer, written, true)
                    }
                    Err(e) => panic!("writing: {e}"),
                }
            }
            (peer, written, false)
        });
        // The answers held for the peer stay within the budget plus the answers to one read.
        let slack = 64 * 1024 + CHUNK as u64;
        let mut most = 0;
        while !done.load(Ordering::SeqCst) {
            let buffered = total(&server, |s| s.buffered_bytes);
            most = most.max(buffered);
            assert!(
                buffered <= LIMIT + slack,
                "{buffered} bytes queued for a peer that does not read (budget {LIMIT})"
            );
            sleep(Duration::from_millis(2)).await;
        }
        let (mut peer, written, blocked) = writer.await;
        assert!(
            blocked,
            "the server kept reading: {written} bytes accepted from a peer that reads nothing"
        );
        let buffered = total(&server, |s| s.buffered_bytes);
        assert!(buffered <= LIMIT + slack, "{buffered} bytes queued");
        still_answers(&server).await;
        // The peer reads at last: everything it was sent is whole frames, and the server
        // reads it again.
        let frames = on_thread(move || {
            peer.set_read_timeout(Some(WAIT)).unwrap();
            let frames = read_frames(&mut peer, 100, 64 * 1024);
            (peer, frames)
        })
        .await
        .1;
        assert!(frames
            .iter()
            .all(|f| matches!(f, Frame::ChunkFetchSuccess { .. } | Frame::ChunkFetchFailure { .. })));
        let _ = most;
        server.close();
    });
}

#[test]
fn half_frames_are_bounded_across_the_server_and_cut_at_the_frame_timeout() {
    // Before: each half frame pinned its memory forever, with no bound across connections,
    // and no connection was ever closed.
    const BUDGET: u64 = 300 * 1024;
    const HALF: usize = 128 * 1024;
    block_on(async {
        let config = Config::builder()
            .with_max_frame_size(1 << 20)
            .with_frame_timeout(Some(Duration::from_millis(1500)))
            .build()
            .unwrap();
        let (server, handler) = serve(
            with_connection(config)
                .to_builder()
                .with_max_partial_frame_bytes(BUDGET)
                .build()
                .unwrap(),
        );
        let frame = encode(&[Frame::RpcRequest {
            request: RequestId(1),
            body: Bytes::from(vec![1; (1 << 20) - 100]),
        }]);
        let mut peers: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut peer = raw_connect(server.local_addr());
                peer.write_all(&frame[..HALF]).unwrap();
                peer
            })
            .collect();
        let sampler = {
            let server = server.clone();
            spawn(async move {
                for _ in 0..500 {
                    let partial = total(&server, |s| s.partial_frame_bytes);
                    assert!(partial <= BUDGET, "{partial} bytes of partial frames held");
                    sleep(Duration::from_millis(5)).await;
                }
            })
        };
        still_answers(&server).await;
        for peer in &mut peers {
            let mut peer = peer.try_clone().unwrap();
            on_thread(move || wait_closed(&mut peer)).await;
        }
        // The well-behaved client's connections end with `PeerClosed`; the four others with
        // the budget or the frame timeout.
        eventually("every half-frame connection closed", || {
            let closed = handler.closed.lock().unwrap();
            let cut = |e: &&ConnectionError| {
                matches!(
                    e,
                    ConnectionError::OverBudget { limit: BUDGET, .. }
                        | ConnectionError::FrameTimedOut { .. }
                )
            };
            closed.iter().filter(cut).count() == 4
                && closed
                    .iter()
                    .all(|e| cut(&e) || *e == ConnectionError::PeerClosed)
        })
        .await;
        sampler.await;
        still_answers(&server).await;
        server.close();
    });
}

#[test]
fn an_idle_peer_is_closed_by_the_server() {
    // Before: a server never closed a connection with nothing outstanding.
    block_on(async {
        let config = Config::builder()
            .with_idle_timeout(Some(Duration::from_millis(300)))
            .build()
            .unwrap();
        let (server, handler) = serve(with_connection(config));
        let mut silent = raw_connect(server.local_addr());
        let mut answered = raw_connect(server.local_addr());
        answered
            .write_all(&encode(&[Frame::RpcRequest {
                request: RequestId(5),
                body: "x".into(),
            }]))
            .unwrap();
        let closed = on_thread(move || {
            let frames = read_frames(&mut answered, 1, 1024);
            wait_closed(&mut answered);
            wait_closed(&mut silent);
            frames
        })
        .await;
        assert!(matches!(&closed[0], Frame::RpcResponse { request: RequestId(5), .. }));
        eventually("both closed as idle", || {
            let closed = handler.closed.lock().unwrap();
            closed.len() == 2
                && closed
                    .iter()
                    .all(|e| matches!(e, ConnectionError::Idle { .. }))
        })
        .await;
        server.close();
    });
}

#[test]
fn a_huge_stream_id_is_refused_before_it_is_copied() {
    // Before: a 250 MiB id was buffered whole, copied, then formatted into a failure too
    // large to send. Now the id's length field is enough: the peer sends only the start of
    // the frame, and the server closes the connection without waiting for the rest.
    block_on(async {
        let (server, handler) = serve(transport_config());
        let mut peer = raw_connect(server.local_addr());
        let id_len: usize = 250 << 20;
        let frame_len = (9 + 4 + id_len) as u64;
        let mut start = frame_len.to_be_bytes().to_vec();
        start.push(6); // StreamRequest
        start.extend_from_slice(&(id_len as i32).to_be_bytes());
        start.extend_from_slice(&[b'x'; 64 * 1024]);
        let _ = on_thread(move || {
            let _ = peer.write_all(&start); // the server may close before it has all
            wait_closed(&mut peer);
        })
        .await;
        eventually("the connection closed with a decode error", || {
            handler.closed.lock().unwrap().iter().any(|e| {
                matches!(
                    e,
                    ConnectionError::Decode(DecodeError::StringTooLong {
                        length: 262_144_000,
                        ..
                    })
                )
            })
        })
        .await;
        still_answers(&server).await;
        server.close();
    });
}

#[test]
fn a_failure_too_large_for_a_frame_does_not_hold_up_later_stream_answers() {
    // Before: the failure was dropped, and since stream answers go out in order, every later
    // stream answer on the connection waited forever.
    block_on(async {
        let config = Config::builder()
            .with_max_frame_size(1024)
            .build()
            .unwrap();
        let (server, _) = serve(with_connection(config));
        let mut peer = raw_connect(server.local_addr());
        let long = "y".repeat(900);
        let requests = encode(&[
            Frame::StreamRequest {
                stream_id: long.clone(),
            },
            Frame::StreamRequest {
                stream_id: "empty".into(),
            },
        ]);
        let frames = on_thread(move || {
            peer.write_all(&requests).unwrap();
            read_frames(&mut peer, 2, 1024)
        })
        .await;
        match &frames[0] {
            Frame::StreamFailure { stream_id, error } => {
                assert!(long.starts_with(stream_id.as_str()));
                assert!(error.starts_with("Stream 'yyy"), "{error}");
                assert!(frames[0].frame_len() <= 1024);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            frames[1],
            Frame::StreamResponse {
                stream_id: "empty".into(),
                byte_count: 0
            }
        );
        server.close();
    });
}

#[test]
fn a_file_chunk_too_large_for_a_frame_is_refused_before_it_is_read() {
    // Before: the file was read whole, then found too large for a frame. Here the file was
    // cut short after the segment was made, so a read would fail with another text.
    block_on(async {
        let config = Config::builder()
            .with_max_frame_size(64 * 1024)
            .build()
            .unwrap();
        let (server, handler) = serve(with_connection(config));
        let path = temp_file(128 * 1024);
        let segment = FileSegment::open_range(&path, 0, 128 * 1024).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        *handler.file.lock().unwrap() = Some(segment);
        let mut peer = raw_connect(server.local_addr());
        let request = encode(&[Frame::ChunkFetchRequest {
            chunk: StreamChunkId::new(7, 0),
        }]);
        let frames = on_thread(move || {
            peer.write_all(&request).unwrap();
            read_frames(&mut peer, 1, 1024)
        })
        .await;
        let _ = std::fs::remove_file(&path);
        match &frames[0] {
            Frame::ChunkFetchFailure { error, .. } => {
                assert!(error.contains("exceeds the maximum frame size"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        server.close();
    });
}
