//! A ready-made server [`Handler`](crate::Handler) and the payloads it answers with, so tests
//! can check that every reply carries what its own request asked for.

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rpc_proto::{Connection, Event, RequestId, StreamChunkId};

/// The reply the echo server sends to an RPC with `body`: `re:` and the body.
pub fn reply_to(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(3 + body.len());
    out.extend_from_slice(b"re:");
    out.extend_from_slice(body);
    out.freeze()
}

/// The bytes the echo server serves for `chunk`: its name repeated, a different length per
/// chunk.
pub fn chunk_body(chunk: StreamChunkId) -> Bytes {
    let name = format!("chunk {}/{};", chunk.stream_id, chunk.chunk_index);
    Bytes::from(name.repeat(chunk.chunk_index as usize % 5 + 1))
}

/// The bytes the echo server streams for `stream_id`: the name repeated, a different length
/// per name.
pub fn stream_body(stream_id: &str) -> Bytes {
    let times = stream_id.bytes().map(usize::from).sum::<usize>() % 13 + 1;
    Bytes::from(format!("<{stream_id}>").repeat(times))
}

/// The reply the echo server sends to an upload of `body` with `meta`: `re:`, the meta, `/`,
/// the body.
pub fn upload_reply(meta: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(b"re:");
    out.extend_from_slice(meta);
    out.extend_from_slice(b"/");
    out.extend_from_slice(body);
    out.freeze()
}

/// A server that answers every request with the payloads above: RPCs with [`reply_to`],
/// chunk fetches with [`chunk_body`], stream requests with [`stream_body`] (fed in three
/// pieces), uploads with [`upload_reply`] once their body is in, merged-block-meta requests
/// with the app id as body and the reduce id as chunk count. One-way messages are ignored.
///
/// Commands that fail (the connection closed meanwhile) are ignored.
pub fn echo_server() -> impl FnMut(&mut Connection, Instant, &Event) + 'static {
    let mut uploads: HashMap<RequestId, (Bytes, BytesMut)> = HashMap::new();
    move |conn, now, event| match event {
        Event::RpcReceived { request, body } => {
            let _ = conn.respond_rpc(now, *request, reply_to(body));
        }
        Event::ChunkFetchReceived { chunk } => {
            let _ = conn.respond_chunk(now, *chunk, chunk_body(*chunk));
        }
        Event::StreamRequested { request, stream_id } => {
            let mut body = stream_body(stream_id);
            if let Ok(id) = conn.respond_stream(now, *request, stream_id, body.len() as u64) {
                let third = body.len().div_ceil(3);
                while !body.is_empty() {
                    let piece = body.split_to(third.min(body.len()));
                    let _ = conn.send_body(now, id, piece);
                }
            }
        }
        Event::UploadReceived { request, meta, .. } => {
            uploads.insert(*request, (meta.clone(), BytesMut::new()));
        }
        Event::UploadData { request, data } => {
            if let Some((_, body)) = uploads.get_mut(request) {
                body.extend_from_slice(data);
            }
        }
        Event::UploadFinished { request } => {
            if let Some((meta, body)) = uploads.remove(request) {
                let _ = conn.respond_rpc(now, *request, upload_reply(&meta, &body));
            }
        }
        Event::UploadAborted { request, .. } => {
            uploads.remove(request);
        }
        Event::MergedBlockMetaRequested {
            request,
            app_id,
            reduce_id,
            ..
        } => {
            let body = Bytes::from(app_id.clone());
            let _ = conn.respond_merged_block_meta(now, *request, *reduce_id, body);
        }
        _ => {}
    }
}
