//! Two connections wired back to back in memory: one of each kind of call goes out, is
//! answered, and every frame is printed as it crosses the "wire" in Spark's format.
//!
//! Run with `cargo run -p rpc-proto --example roundtrip`.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_proto::{Config, Connection, Decoded, Event, FrameDecoder, StreamChunkId};

/// Moves every queued byte from `from` to `to`, printing the frames on the way.
fn wire(now: Instant, label: &str, from: &mut Connection, to: &mut Connection) {
    let mut tap = FrameDecoder::new(from.config().max_frame_size());
    let mut buf = BytesMut::new();
    while let Some(bytes) = from.poll_transmit() {
        buf.extend_from_slice(&bytes);
        to.handle_bytes(now, &bytes);
    }
    let mut raw = buf.clone();
    while let Ok(Some(item)) = tap.decode(&mut buf) {
        let used = raw.len() - buf.len();
        let bytes = raw.split_to(used);
        match item {
            Decoded::Frame(frame) => {
                println!("{label} {:?}", frame.message_type());
                println!("    {}", hex(&bytes));
            }
            Decoded::Body { data, remaining } => {
                println!(
                    "{label} raw body: {} bytes, {remaining} to come",
                    data.len()
                );
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 48 {
        format!("{shown}… ({} bytes)", bytes.len())
    } else {
        shown
    }
}

/// The server side: answers whatever it is asked.
fn serve(now: Instant, server: &mut Connection) {
    while let Some(event) = server.poll_event() {
        println!("  server got {event:?}");
        let result = match event {
            Event::RpcReceived { request, body } => {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(&body);
                server.respond_rpc(now, request, reply.into())
            }
            Event::ChunkFetchReceived { chunk } => {
                server.respond_chunk(now, chunk, Bytes::from_static(b"chunk bytes"))
            }
            Event::StreamRequested { request, stream_id } => {
                let data = Bytes::from_static(b"the contents of a file");
                server
                    .respond_stream(now, request, &stream_id, data.len() as u64)
                    .and_then(|body| server.send_body(now, body, data))
            }
            Event::UploadFinished { request } => server.respond_rpc(now, request, "stored".into()),
            _ => Ok(()),
        };
        result.expect("answer accepted");
    }
}

#[allow(clippy::disallowed_methods)] // the demo's one clock read: the base of its timeline
fn main() {
    let now = Instant::now();
    let timeout = Some(Duration::from_secs(10));
    let mut client = Connection::new(Config::default(), now);
    let mut server = Connection::new(Config::builder().with_seed(1).build().unwrap(), now);

    client.rpc(now, "ping".into(), timeout).unwrap();
    client.send_one_way(now, "fire and forget".into()).unwrap();
    client
        .fetch_chunk(now, StreamChunkId::new(7, 0), timeout)
        .unwrap();
    client.stream(now, "/files/notes.txt", timeout).unwrap();
    let (_, body) = client
        .upload_stream(now, "block_1_2".into(), 8, timeout)
        .unwrap();
    client.send_body(now, body, "uploaded".into()).unwrap();

    println!("client -> server");
    wire(now, "  >", &mut client, &mut server);
    serve(now, &mut server);

    println!("server -> client");
    wire(now, "  <", &mut server, &mut client);
    while let Some(event) = client.poll_event() {
        println!("  client got {event:?}");
    }
    let stats = client.stats();
    println!(
        "client sent {} frames ({} bytes), received {} frames ({} bytes)",
        stats.frames_sent, stats.bytes_sent, stats.frames_received, stats.bytes_received
    );
}
