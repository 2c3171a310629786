//! Streams and uploads on real sockets: out-of-frame bodies in pieces with bounded memory
//! (Spark's `StreamSuite` and the upload cases of `RpcIntegrationSuite`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_lite::StreamExt;
use rpc::{ConnectionError, RequestError, StreamChunkId};
use rpc::{
    RpcHandler, RpcResponder, StreamManager, TransportClient, TransportClientFactory,
    TransportServer, UploadSink, STREAM_BUFFER_LIMIT,
};

use super::transport::{localhost, Echo};
use super::util::*;

/// Streams `bytes/<n>` of `n` pattern bytes; takes uploads whose meta says what to do:
/// `keep` (reply with the body's length and checksum), `refuse`, `fail-data` (the
/// destination fails after the first piece), `fail-complete` (post-processing fails).
#[derive(Default)]
struct Files {
    failures: Arc<Mutex<Vec<String>>>,
}

fn pattern(n: usize, seed: usize) -> Bytes {
    (0..n)
        .map(|i| ((i + seed) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// Length and a rolling checksum of bytes seen so far.
fn checksum(bytes: &[u8], state: &mut (u64, u64)) {
    for &b in bytes {
        state.0 += 1;
        state.1 = state.1.wrapping_mul(31).wrapping_add(u64::from(b));
    }
}

impl RpcHandler for Files {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = responder.reply(message);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn receive_stream(
        &self,
        _: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, rpc::BoxError> {
        match &meta[..] {
            b"refuse" => Err("uploads of this kind are refused".into()),
            b"keep" | b"fail-data" | b"fail-complete" => Ok(Box::new(Sink {
                mode: meta,
                seen: (0, 0),
                failures: self.failures.clone(),
            })),
            other => Err(format!("unknown upload {other:?}").into()),
        }
    }
}

impl StreamManager for Files {
    fn chunk(&self, _: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, rpc::BoxError> {
        Err(format!("no chunk {chunk}").into())
    }

    fn open_stream(&self, _: &TransportClient, stream_id: &str) -> Result<Bytes, rpc::BoxError> {
        let n = stream_id
            .strip_prefix("bytes/")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no stream {stream_id}"))?;
        Ok(pattern(n, 0))
    }
}

struct Sink {
    mode: Bytes,
    seen: (u64, u64),
    failures: Arc<Mutex<Vec<String>>>,
}

impl UploadSink for Sink {
    fn on_data(&mut self, data: Bytes) -> Result<(), rpc::BoxError> {
        if &self.mode[..] == b"fail-data" && self.seen.0 > 0 {
            return Err("the destination is full".into());
        }
        checksum(&data, &mut self.seen);
        Ok(())
    }

    fn on_complete(self: Box<Self>, responder: RpcResponder) {
        if &self.mode[..] == b"fail-complete" {
            let _ = responder.fail("post-processing failed");
        } else {
            let _ = responder.reply(format!("{} {}", self.seen.0, self.seen.1).into());
        }
    }

    fn on_failure(self: Box<Self>, error: &str) {
        self.failures.lock().unwrap().push(error.to_owned());
    }
}

async fn serve() -> (TransportServer, Arc<Files>, TransportClient) {
    let files = Arc::new(Files::default());
    let server =
        TransportServer::bind(rt(), localhost(), files.clone(), transport_config())
            .unwrap();
    let factory =
        TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config());
    let client = within("a connection", factory.create_client(server.local_addr()))
        .await
        .unwrap();
    (server, files, client)
}

/// The pieces of `body`, `piece` bytes each.
fn pieces(body: Bytes, piece: usize) -> impl futures_lite::Stream<Item = Bytes> + Send {
    let count = body.len().div_ceil(piece.max(1));
    futures_lite::stream::iter(
        (0..count).map(move |i| body.slice(i * piece..((i + 1) * piece).min(body.len()))),
    )
}

#[test]
fn streams_of_any_size_arrive_whole_and_in_order() {
    block_on(async {
        let (server, _, client) = serve().await;
        for n in [0usize, 1, 100_000, 3 * STREAM_BUFFER_LIMIT] {
            let call = client.stream(&format!("bytes/{n}"), None);
            let got = within("a stream", call.read_to_end()).await.unwrap();
            assert_eq!(got.len(), n);
            assert!(got == pattern(n, 0), "stream bytes/{n} differs");
        }
        server.close();
    })
}

#[test]
fn a_slow_consumer_holds_a_bounded_amount_of_a_large_stream() {
    block_on(async {
        let (server, _, client) = serve().await;
        let n = 8 * STREAM_BUFFER_LIMIT;
        let expected = pattern(n, 0);
        let mut call = client.stream(&format!("bytes/{n}"), None);
        let mut received = 0usize;
        let mut pieces = 0usize;
        let mut most = 0usize;
        while let Some(piece) = within("a piece", call.next()).await {
            let piece = piece.unwrap();
            assert!(piece == expected.slice(received..received + piece.len()));
            received += piece.len();
            pieces += 1;
            if pieces < 100 {
                // Consume slowly for a while: the connection must stop reading meanwhile.
                sleep(std::time::Duration::from_millis(2)).await;
            }
            most = most.max(client.pending_stream_bytes());
        }
        assert_eq!(received, n);
        // The limit, plus what one read can bring in before the driver notices.
        assert!(
            most <= STREAM_BUFFER_LIMIT + 512 * 1024,
            "{most} bytes were waiting"
        );
        server.close();
    })
}

#[test]
fn a_stream_dropped_midway_is_discarded_and_the_next_one_gets_its_own_bytes() {
    block_on(async {
        let (server, _, client) = serve().await;
        let mut first = client.stream("bytes/5000000", None);
        let piece = within("a first piece", first.next())
            .await
            .unwrap()
            .unwrap();
        assert!(!piece.is_empty());
        drop(first);
        let second = within(
            "the next stream",
            client.stream("bytes/777", None).read_to_end(),
        )
        .await
        .unwrap();
        assert_eq!(second, pattern(777, 0));
        assert_eq!(
            within("an rpc", client.send_rpc("after".into(), None))
                .await
                .unwrap(),
            "after"
        );
        server.close();
    })
}

#[test]
fn an_unknown_stream_ends_with_the_servers_failure() {
    block_on(async {
        let (server, _, client) = serve().await;
        let mut call = client.stream("nothing-here", None);
        let err = within("a failure", call.next()).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RequestError::Remote(m) if m.contains("no stream nothing-here")),
            "{err}"
        );
        assert!(within("the end", call.next()).await.is_none());
        server.close();
    })
}

#[test]
fn an_upload_fed_in_pieces_arrives_whole_and_its_reply_resolves_the_call() {
    block_on(async {
        let (server, _, client) = serve().await;
        for (n, piece) in [
            (0usize, 1usize),
            (10, 3),
            (5 * 1024 * 1024 + 17, 64 * 1024 + 1),
        ] {
            let body = pattern(n, 9);
            let mut expected = (0, 0);
            checksum(&body, &mut expected);
            let call = client.upload_stream("keep".into(), n as u64, pieces(body, piece), None);
            let reply = within("the upload's reply", call).await.unwrap();
            assert_eq!(
                reply,
                format!("{} {}", expected.0, expected.1),
                "upload of {n}"
            );
        }
        server.close();
    })
}

#[test]
fn upload_failures_reach_the_uploader_and_leave_the_connection_usable() {
    block_on(async {
        let (server, files, client) = serve().await;
        for (meta, expected) in [
            ("refuse", "uploads of this kind are refused"),
            ("fail-data", "the destination is full"),
            ("fail-complete", "post-processing failed"),
        ] {
            let body = pattern(300_000, 1);
            let call = client.upload_stream(meta.into(), 300_000, pieces(body, 4096), None);
            let err = within("the failure", call).await.unwrap_err();
            assert!(
                matches!(&err, RequestError::Remote(m) if m.contains(expected)),
                "{meta}: {err}"
            );
            let reply = within("an rpc after it", client.send_rpc(meta.into(), None)).await;
            assert_eq!(reply.unwrap(), meta, "the connection survives {meta}");
        }
        assert_eq!(
            files.failures.lock().unwrap()[..],
            ["the destination is full"]
        );
        server.close();
    })
}

#[test]
fn a_body_shorter_than_announced_closes_the_connection_and_fails_the_upload() {
    block_on(async {
        let (server, files, client) = serve().await;
        let call = client.upload_stream("keep".into(), 1000, pieces(pattern(600, 0), 100), None);
        let err = within("the failure", call).await.unwrap_err();
        assert!(
            matches!(
                &err,
                RequestError::Disconnected(ConnectionError::BodyAborted { .. })
            ),
            "{err}"
        );
        eventually("the server to see the upload fail", || {
            files.failures.lock().unwrap().len() == 1
        })
        .await;
        assert!(!client.is_active());
        server.close();
    })
}
