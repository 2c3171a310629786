//! A peer that accepts and does not read: the writer's memory stays bounded (sends are
//! refused at the send buffer limit, `ready()` waits for room), and nothing accepted is lost
//! once the peer reads.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc::{CallError, Config};
use rpc_proto::{Decoded, Frame, FrameDecoder};
use rpc::{
    RpcAddress, RpcEndpointAddress, RpcEndpointRef, RpcEnv, RpcError, TransportClient,
    TransportClientFactory, TransportConfig,
};

use super::transport::{localhost, setup, Echo};
use super::util::*;

/// Connections whose send buffer holds at most `limit` bytes.
fn limited(limit: u64) -> TransportConfig {
    transport_config()
        .to_builder()
        .with_connection(
            Config::builder()
                .with_max_send_buffer(limit)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// More than a peer that never reads can make us accept: the kernel's socket buffers hold a
/// few megabytes, our send buffer its limit.
const UNBOUNDED: u64 = 1 << 30;

/// A raw peer on a free port that accepts one connection, reads nothing until `go` is
/// signalled, then reads to the end and returns how many one-way messages came.
fn slow_reader() -> (std::net::SocketAddr, mpsc::Sender<()>, Task<usize>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let reader = on_thread(move || {
        let (mut peer, _) = listener.accept().unwrap();
        if wait.recv_timeout(Duration::from_secs(60)).is_err() {
            return 0; // the test ended without asking us to read
        }
        peer.set_read_timeout(Some(WAIT)).unwrap();
        let mut decoder = FrameDecoder::new(64 << 20);
        let mut buf = BytesMut::new();
        let mut chunk = vec![0; 64 * 1024];
        let mut one_way = 0;
        loop {
            while let Some(decoded) = decoder.decode(&mut buf).expect("valid frames") {
                match decoded {
                    Decoded::Frame(Frame::OneWayMessage { .. }) => one_way += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            match peer.read(&mut chunk) {
                Ok(0) => return one_way,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading: {e}"),
            }
        }
    });
    (addr, go, reader)
}

/// Sends `body` as fast as `client` accepts it, until it has refused 20 times in a row (the
/// peer reads nothing, so our buffer and the kernel's fill up). Checks at every step that
/// what we buffer stays within `limit` plus one frame. Returns how many were accepted.
async fn send_until_refused(client: &TransportClient, body: &Bytes, limit: u64) -> u64 {
    let frame = (8 + 1 + 4 + body.len()) as u64;
    let deadline = Instant::now() + WAIT;
    let (mut sent, mut refused_in_a_row) = (0u64, 0);
    while refused_in_a_row < 20 {
        assert!(Instant::now() < deadline, "sends were never refused");
        match client.send(body.clone()) {
            Ok(()) => {
                sent += 1;
                refused_in_a_row = 0;
            }
            Err(CallError::SendBufferFull { buffered, max }) => {
                assert_eq!(max, limit);
                assert!(buffered >= limit, "refused below the limit: {buffered}");
                refused_in_a_row += 1;
            }
            Err(e) => panic!("{e}"),
        }
        let buffered = client.buffered_bytes();
        assert!(buffered <= limit + frame, "{buffered} bytes buffered");
        assert!(
            sent * frame < UNBOUNDED,
            "a gigabyte went into a socket nobody reads"
        );
        // A moment for the connection to move what it can into the kernel.
        sleep(Duration::from_millis(1)).await;
    }
    sent
}

#[test]
fn sends_to_a_peer_that_never_reads_are_refused_at_the_buffer_limit_and_none_is_lost() {
    if skip_raw_plaintext("sends_to_a_peer_that_never_reads_are_refused_at_the_buffer_limit_and_none_is_lost") {
        return;
    }
    block_on(async {
        let (addr, go, reader) = slow_reader();
        let limit = 256 * 1024;
        let factory = TransportClientFactory::new(rt(), Arc::new(Echo::default()), limited(limit));
        let client = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        let body = Bytes::from(vec![7u8; 64 * 1024]);
        let mut sent = send_until_refused(&client, &body, limit).await;
        assert!(client.is_send_buffer_full());

        // A writer waiting for room gets it once the peer reads.
        let room = spawn(client.ready());
        go.send(()).unwrap();
        within("room in the send buffer", room).await.unwrap();
        for _ in 0..10 {
            within("room", client.ready()).await.unwrap();
            client.send(body.clone()).unwrap();
            sent += 1;
        }
        // Closing writes what was queued: every accepted message arrives.
        client.close();
        let received = within("the reader to reach the end", reader).await;
        assert_eq!(received as u64, sent);
    })
}

#[test]
fn a_writer_waiting_for_room_is_released_with_an_error_when_the_connection_closes() {
    if skip_raw_plaintext("a_writer_waiting_for_room_is_released_with_an_error_when_the_connection_closes") {
        return;
    }
    block_on(async {
        let (addr, _go, _reader) = slow_reader();
        let limit = 128 * 1024;
        let factory = TransportClientFactory::new(rt(), Arc::new(Echo::default()), limited(limit));
        let client = within("a connection", factory.create_client(addr))
            .await
            .unwrap();
        send_until_refused(&client, &Bytes::from(vec![1u8; 32 * 1024]), limit).await;
        let waiting = spawn(client.ready());
        client.close();
        let result = within("the waiting writer", waiting).await;
        assert_eq!(result, Err(CallError::Closed));
    })
}

#[test]
fn ready_resolves_once_a_reading_peer_drains_the_buffer() {
    if skip_raw_plaintext("ready_resolves_once_a_reading_peer_drains_the_buffer") {
        return;
    }
    block_on(async {
        let (server, handler, _, _) = setup().await;
        let factory =
            TransportClientFactory::new(rt(), Arc::new(Echo::default()), limited(64 * 1024));
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let mut sent = 0;
        for _ in 0..2_000 {
            within("room", client.ready()).await.unwrap();
            client.send(Bytes::from(vec![1u8; 512])).unwrap();
            sent += 1;
        }
        eventually("every message to arrive", || {
            handler.one_way.load(Ordering::SeqCst) == sent
        })
        .await;
    })
}

#[test]
fn env_sends_to_a_peer_that_never_reads_are_refused_not_buffered_without_bound() {
    if skip_raw_plaintext("env_sends_to_a_peer_that_never_reads_are_refused_not_buffered_without_bound") {
        return;
    }
    block_on(async {
        let (addr, _go, _reader) = slow_reader();
        let limit = 256 * 1024;
        let env = RpcEnv::create(
            rt(),
            client_config("writer")
                .to_builder()
                .with_transport(limited(limit))
                .build()
                .unwrap(),
        )
        .unwrap();
        // Unverified: the raw peer answers no lookup.
        let slow: RpcEndpointRef<Cmd, String> =
            env.endpoint_ref(RpcEndpointAddress::new(RpcAddress::from(addr), "slow"));
        slow.send(Cmd::Note("hello".into())).unwrap();
        eventually("the connection to take the first message", || {
            env.stats().queued == 0
        })
        .await;

        let note = Cmd::Note("x".repeat(64 * 1024));
        let deadline = Instant::now() + WAIT;
        let (mut accepted, mut refused_in_a_row) = (0u64, 0);
        while refused_in_a_row < 20 {
            assert!(Instant::now() < deadline, "sends were never refused");
            match slow.send(note.clone()) {
                Ok(()) => {
                    accepted += 1;
                    refused_in_a_row = 0;
                }
                Err(
                    refused @ (RpcError::NotSent(CallError::SendBufferFull { .. })
                    | RpcError::OutboxFull { .. }),
                ) => {
                    let reason = refused.to_string();
                    assert!(reason.contains("full"), "{reason}");
                    refused_in_a_row += 1;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(
                accepted * 64 * 1024 < UNBOUNDED,
                "a gigabyte went into a socket nobody reads"
            );
            sleep(Duration::from_millis(1)).await;
        }
        // Nothing piles up in the outbox either.
        assert_eq!(env.stats().queued, 0, "{:?}", env.stats());
        shutdown(&[&env]).await;
    })
}
