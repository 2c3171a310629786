//! Interoperability with a real Spark: Spark's own network-common in a JVM
//! (`tests/interop/SparkPeer.java`) against ours, both ways, on 127.0.0.1.
//!
//! ```text
//!   our TransportClient  ──────────►  Spark TransportServer   (SparkPeer server)
//!   Spark TransportClient ─────────►  our TransportServer     (SparkPeer client <port>)
//!   our frame codec (raw socket) ◄──►  Spark, either side      (every message type it can send)
//! ```
//!
//! Two layers are checked:
//! - the transport layer: RPC replies (empty, small and 1 MiB bodies), RPC failures carrying
//!   the other side's message, one-way messages, chunk fetches, streams, uploads and merged
//!   block metadata both ways, and the failure texts Spark matches on;
//! - the frame codec: every frame Spark sends re-encodes with [`Frame::to_bytes`] to exactly
//!   the bytes Spark sent, and Spark acts correctly on every frame we encode, for every message
//!   type (0 to 12).
//!
//! Needs Spark's jars, cached outside the checkout by `.ci/spark-jars.sh` (at
//! `$SPARK_JARS_CACHE`, default `~/.cache/spark-rpc-rs/spark-jars`), and a JDK (`javac` and
//! `java` from `$JAVA_HOME/bin`, else `PATH`). Without them each test prints a `SKIPPED` line
//! and passes, unless `RPC_REQUIRE_SPARK=1` (CI sets it): then they fail.
//!
//! Every wait is bounded (by [`WAIT`]); Java children are killed when their handle drops.
//! Nothing here measures speed.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_proto::{Decoded, Frame, FrameDecoder, RequestError, RequestId, StreamChunkId};
use rpc_tokio::{
    FileSegment, ManagedBuffer, MergedBlockMeta, MergedBlockMetaReqHandler, MergedBlockMetaRequest,
    MergedBlockMetaResponder, RpcHandler, RpcResponder, StreamManager, TransportClient,
    TransportClientFactory, TransportConfig, TransportServer, UploadSink,
};

use common::*;

/// The message SparkPeer fails an RPC with (`SparkPeer.FAIL_MESSAGE`).
const SPARK_FAIL_MESSAGE: &str = "SparkPeer refused the request: you asked for it";

/// The message our handler fails an RPC with.
const OUR_FAIL_MESSAGE: &str = "the rust peer refused the request";

// -------------------------------------------------------------------------------------------
// Our side

/// Echoes RPCs, fails "fail" with [`OUR_FAIL_MESSAGE`], records one-way messages.
#[derive(Default)]
struct Echo {
    one_way: Mutex<Vec<Bytes>>,
}

impl RpcHandler for Echo {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        let sent = if message == "fail" {
            responder.fail(OUR_FAIL_MESSAGE)
        } else {
            responder.reply(message)
        };
        sent.expect("answer an rpc");
    }

    fn receive_one_way(&self, _: &TransportClient, message: Bytes) {
        self.one_way.lock().unwrap().push(message);
    }
}

/// Our transport server on a free port of 127.0.0.1, serving `handler`, on `rt`.
fn bind_ours(rt: &tokio::runtime::Runtime, handler: Arc<dyn RpcHandler>) -> TransportServer {
    let _in_runtime = rt.enter();
    TransportServer::bind(
        rpc_tokio::runtime(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        handler,
        TransportConfig::default(),
    )
    .expect("bind our server")
}

fn our_server(rt: &tokio::runtime::Runtime) -> (TransportServer, Arc<Echo>) {
    let handler = Arc::new(Echo::default());
    (bind_ours(rt, handler.clone()), handler)
}

fn our_client(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
) -> (TransportClientFactory, TransportClient) {
    let _in_runtime = rt.enter();
    let factory = TransportClientFactory::new(
        rpc_tokio::runtime(),
        Arc::new(Echo::default()),
        TransportConfig::builder()
            .with_connect_timeout(WAIT)
            .build()
            .unwrap(),
    );
    let client = rt
        .block_on(factory.create_client(addr))
        .unwrap_or_else(|e| panic!("connect to Spark's server at {addr}: {e}"));
    (factory, client)
}

fn rpc(
    rt: &tokio::runtime::Runtime,
    client: &TransportClient,
    body: Bytes,
) -> Result<Bytes, RequestError> {
    rt.block_on(client.send_rpc(body, Some(WAIT)))
}

// -------------------------------------------------------------------------------------------
// Data

/// SparkPeer's merged block metadata for a request (`SparkPeer.meta`): `shuffle + reduce`
/// chunks and the request's fields as text. Our [`Patterns`] answers the same.
fn spark_meta(request: &MergedBlockMetaRequest) -> MergedBlockMeta {
    MergedBlockMeta {
        chunk_count: request.shuffle_id + request.reduce_id,
        body: format!(
            "{}/{}/{}/{}",
            request.app_id, request.shuffle_id, request.shuffle_merge_id, request.reduce_id
        )
        .into(),
    }
}

fn meta_request(
    app_id: &str,
    shuffle_id: i32,
    shuffle_merge_id: i32,
    reduce_id: i32,
) -> MergedBlockMetaRequest {
    MergedBlockMetaRequest {
        app_id: app_id.to_owned(),
        shuffle_id,
        shuffle_merge_id,
        reduce_id,
    }
}

/// Requests both sides answer with [`spark_meta`]: ids of every sign, a non-ASCII app id.
fn meta_requests() -> [MergedBlockMetaRequest; 3] {
    [
        meta_request("app-20261121-0001", 3, 1, 4),
        meta_request("app-é", 0, 0, -1),
        meta_request("a", i32::MAX, -7, 0),
    ]
}

fn bodies() -> [(&'static str, Bytes); 3] {
    [
        ("a small body", Bytes::from_static(b"hello, spark")),
        ("an empty body", Bytes::new()),
        ("a 1 MiB body", pattern(MIB, 7)),
    ]
}

// -------------------------------------------------------------------------------------------
// Our TransportClient against Spark's TransportServer

#[test]
fn our_rpcs_get_spark_echo_replies_for_empty_small_and_1mib_bodies() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (peer, addr) = spark_server(spark);
    let (_factory, client) = our_client(&rt, addr);
    for (what, body) in bodies() {
        let reply = rpc(&rt, &client, body.clone()).unwrap_or_else(|e| {
            panic!(
                "rpc with {what} to Spark failed: {e}\n{}",
                peer.diagnostics()
            )
        });
        assert!(
            reply == body,
            "Spark echoed {what} as {}, sent {}",
            summary(&reply),
            summary(&body)
        );
    }
    peer.finish();
}

#[test]
fn our_rpc_failed_by_spark_is_remote_with_spark_message() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (peer, addr) = spark_server(spark);
    let (_factory, client) = our_client(&rt, addr);
    match rpc(&rt, &client, Bytes::from_static(b"fail")) {
        Err(RequestError::Remote(message)) => assert!(
            message.contains(SPARK_FAIL_MESSAGE),
            "Spark's failure should carry its message {SPARK_FAIL_MESSAGE:?}, got {message:?}"
        ),
        other => panic!(
            "expected RequestError::Remote, got {other:?}\n{}",
            peer.diagnostics()
        ),
    }
    // The connection is still in step: a failure is an ordinary answer.
    let reply = rpc(&rt, &client, Bytes::from_static(b"after")).expect("rpc after the failure");
    assert_eq!(reply, "after");
    peer.finish();
}

#[test]
fn our_one_way_messages_reach_spark_in_order() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (peer, addr) = spark_server(spark);
    let (_factory, client) = our_client(&rt, addr);
    let messages = [
        Bytes::from_static(b"one-way"),
        Bytes::new(),
        pattern(64 * 1024, 3),
    ];
    for message in &messages {
        client
            .send(message.clone())
            .expect("send a one-way message");
    }
    for message in &messages {
        let seen = unhex(&peer.line_starting("ONEWAY "));
        assert!(
            seen == message[..],
            "Spark received the one-way message {}, sent {}",
            summary(&seen),
            summary(message)
        );
    }
    peer.finish();
}

// -------------------------------------------------------------------------------------------
// Spark's TransportClient against our TransportServer

#[test]
fn spark_rpcs_get_our_echo_replies_for_empty_small_and_1mib_bodies() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (server, _handler) = our_server(&rt);
    let mut peer = spark_client(spark, server.local_addr());
    for (what, body) in bodies() {
        let line = peer.command(&format!("rpc {}", hex(&body)));
        let Some(reply) = line.strip_prefix("OK ") else {
            panic!(
                "Spark's rpc with {what} to us: {line:.300}\n{}",
                peer.diagnostics()
            );
        };
        let reply = unhex(reply);
        assert!(
            reply == body[..],
            "we echoed {what} to Spark as {}, it sent {}",
            summary(&reply),
            summary(&body)
        );
    }
    peer.finish();
}

#[test]
fn spark_rpc_failed_by_us_carries_our_message() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (server, _handler) = our_server(&rt);
    let mut peer = spark_client(spark, server.local_addr());
    let line = peer.command(&format!("rpc {}", hex(b"fail")));
    assert_eq!(
        line,
        format!("FAILED {OUR_FAIL_MESSAGE}"),
        "{}",
        peer.diagnostics()
    );
    let line = peer.command(&format!("rpc {}", hex(b"after")));
    assert_eq!(
        line,
        format!("OK {}", hex(b"after")),
        "{}",
        peer.diagnostics()
    );
    peer.finish();
}

#[test]
fn spark_one_way_messages_reach_our_handler_in_order() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (server, handler) = our_server(&rt);
    let mut peer = spark_client(spark, server.local_addr());
    let messages = [
        Bytes::from_static(b"one-way"),
        Bytes::new(),
        pattern(64 * 1024, 3),
    ];
    for message in &messages {
        let line = peer.command(&format!("send {}", hex(message)));
        assert_eq!(line, "SENT", "{}", peer.diagnostics());
    }
    let deadline = Instant::now() + WAIT;
    while handler.one_way.lock().unwrap().len() < messages.len() {
        assert!(
            Instant::now() < deadline,
            "our handler saw {} of {} one-way messages from Spark within {WAIT:?}\n{}",
            handler.one_way.lock().unwrap().len(),
            messages.len(),
            peer.diagnostics()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(handler.one_way.lock().unwrap()[..], messages[..]);
    peer.finish();
}

/// Until our transport serves the data plane it answers chunk fetches, streams and uploads
/// with failures; Spark must see each as a failure of that request, and the connection must
/// stay usable (an upload's out-of-frame body consumed, not parsed as frames). When the data
/// plane lands, this becomes the place for the success cases.
#[test]
fn spark_data_plane_requests_fail_cleanly_on_our_server_and_the_connection_survives() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (server, _handler) = our_server(&rt);
    let mut peer = spark_client(spark, server.local_addr());
    for command in [
        "fetch 10 3".to_owned(),
        "stream bytes/100".to_owned(),
        format!("upload {} {}", hex(b"meta"), hex(&pattern(70_000, 5))),
    ] {
        let line = peer.command(&command);
        assert!(
            line.starts_with("FAILED "),
            "{command:.40}: expected a failure from our server, got {line:.300}\n{}",
            peer.diagnostics()
        );
        let line = peer.command(&format!("rpc {}", hex(b"still there?")));
        assert_eq!(
            line,
            format!("OK {}", hex(b"still there?")),
            "after {command:.40}"
        );
    }
    peer.finish();
}

/// Serves SparkPeer's test data from our side: chunk `i` of stream `s` is `pattern(s, i)`,
/// stream `bytes/<n>` is `pattern(n, 0)`; negative stream ids fail.
struct Patterns;

impl RpcHandler for Patterns {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        responder.reply(message).expect("answer an rpc");
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn merged_block_meta_req_handler(&self) -> Option<&dyn MergedBlockMetaReqHandler> {
        Some(self)
    }

    /// Answers an upload the way SparkPeer does: with its meta, then its bytes.
    fn receive_stream(
        &self,
        _: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, rpc_tokio::BoxError> {
        struct Mirror(BytesMut);
        impl UploadSink for Mirror {
            fn on_data(&mut self, data: Bytes) -> Result<(), rpc_tokio::BoxError> {
                self.0.extend_from_slice(&data);
                Ok(())
            }
            fn on_complete(self: Box<Self>, responder: RpcResponder) {
                responder.reply(self.0.freeze()).expect("answer an upload");
            }
        }
        Ok(Box::new(Mirror(BytesMut::from(&meta[..]))))
    }
}

/// Answers merged block metadata the way SparkPeer does: app id "fail" fails with
/// [`OUR_FAIL_MESSAGE`], anything else gets [`spark_meta`].
impl MergedBlockMetaReqHandler for Patterns {
    fn receive_merged_block_meta_req(
        &self,
        _: &TransportClient,
        request: MergedBlockMetaRequest,
        responder: MergedBlockMetaResponder,
    ) {
        let sent = if request.app_id == "fail" {
            responder.fail(OUR_FAIL_MESSAGE)
        } else {
            responder.reply(spark_meta(&request))
        };
        sent.expect("answer a merged block meta request");
    }
}

/// A file holding `pattern(FILE_LEN, 0)`, for file-backed chunks and streams.
fn pattern_file() -> &'static std::path::Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("spark-interop-{}", std::process::id()));
        std::fs::write(&path, pattern(FILE_LEN, 0)).expect("write the pattern file");
        path
    })
}

const FILE_LEN: usize = 4 * MIB;

/// Stream ids from here up are file-backed chunks: chunk `i` of stream `FILE_CHUNKS + k` is
/// 100 bytes of the pattern file from offset `k + i`, which is `pattern(100, k + i)`.
const FILE_CHUNKS: u64 = 1 << 41;

impl StreamManager for Patterns {
    fn chunk_buffer(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, rpc_tokio::BoxError> {
        if (FILE_CHUNKS..FILE_CHUNKS + (1 << 20)).contains(&chunk.stream_id) {
            let offset = chunk.stream_id - FILE_CHUNKS + u64::from(chunk.chunk_index);
            return FileSegment::open_range(pattern_file(), offset, 100)
                .map(ManagedBuffer::File)
                .map_err(Into::into);
        }
        self.chunk(client, chunk).map(ManagedBuffer::Memory)
    }

    fn open_stream_buffer(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, rpc_tokio::BoxError> {
        if let Some(n) = stream_id
            .strip_prefix("file/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            return FileSegment::open_range(pattern_file(), 0, n)
                .map(ManagedBuffer::File)
                .map_err(Into::into);
        }
        self.open_stream(client, stream_id)
            .map(ManagedBuffer::Memory)
    }

    fn chunk(
        &self,
        _: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<Bytes, rpc_tokio::BoxError> {
        let stream = chunk.stream_id as i64;
        if !(0..=64 * MIB as i64).contains(&stream) {
            return Err(format!("we have no stream {stream}").into());
        }
        Ok(pattern(stream as usize, u64::from(chunk.chunk_index)))
    }

    fn open_stream(
        &self,
        _: &TransportClient,
        stream_id: &str,
    ) -> Result<Bytes, rpc_tokio::BoxError> {
        let n = stream_id
            .strip_prefix("bytes/")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("we have no stream {stream_id}"))?;
        Ok(pattern(n, 0))
    }
}

#[test]
fn our_chunk_fetches_get_sparks_chunks_and_failures() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (_peer, addr) = spark_server(spark);
    let (_factory, client) = our_client(&rt, addr);
    for (stream, index) in [(10u64, 0u32), (10, 3), (0, 1), (MIB as u64, 2)] {
        let got = rt
            .block_on(client.fetch_chunk(chunk(stream, index), Some(WAIT)))
            .unwrap_or_else(|e| panic!("chunk {stream}/{index} from Spark: {e}"));
        assert_eq!(
            got,
            pattern(stream as usize, u64::from(index)),
            "chunk {stream}/{index}"
        );
    }
    let err = rt
        .block_on(client.fetch_chunk(chunk(u64::MAX, 0), Some(WAIT)))
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Remote(m) if m.contains("SparkPeer has no stream -1")),
        "{err}"
    );
    assert_eq!(rpc(&rt, &client, "after".into()).unwrap(), "after");
}

#[test]
fn our_streams_and_uploads_work_against_sparks_server() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (_peer, addr) = spark_server(spark);
    let (_factory, client) = our_client(&rt, addr);
    for n in [0usize, 100, 3 * MIB] {
        let got = rt
            .block_on(
                client
                    .stream(&format!("bytes/{n}"), Some(WAIT))
                    .read_to_end(),
            )
            .unwrap_or_else(|e| panic!("stream bytes/{n} from Spark: {e}"));
        assert_eq!(got, pattern(n, 0), "stream bytes/{n}");
    }
    let err = rt
        .block_on(client.stream("nothing", Some(WAIT)).read_to_end())
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Remote(m) if m.contains("SparkPeer has no stream nothing")),
        "{err}"
    );
    for n in [0usize, 70_000, 2 * MIB + 3] {
        let body = pattern(n, 5);
        let pieces: Vec<Bytes> = (0..n.div_ceil(8192))
            .map(|i| body.slice(i * 8192..((i + 1) * 8192).min(n)))
            .collect();
        let reply = rt
            .block_on(client.upload_stream(
                Bytes::from_static(b"meta"),
                n as u64,
                futures_lite::stream::iter(pieces),
                Some(WAIT),
            ))
            .unwrap_or_else(|e| panic!("upload of {n} bytes to Spark: {e}"));
        let mut expected = b"meta".to_vec();
        expected.extend_from_slice(&body);
        assert!(
            reply == expected,
            "Spark's answer to an upload of {n} bytes differs"
        );
    }
    assert_eq!(rpc(&rt, &client, "after".into()).unwrap(), "after");
}

#[test]
fn our_merged_block_meta_requests_get_sparks_answers() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let (_peer, addr) = spark_server(spark);
    let (_factory, client) = our_client(&rt, addr);
    for request in meta_requests() {
        let meta = rt
            .block_on(client.send_merged_block_meta_req(&request, Some(WAIT)))
            .unwrap_or_else(|e| panic!("{request:?} to Spark: {e}"));
        assert_eq!(meta, spark_meta(&request), "{request:?}");
    }
    let err = rt
        .block_on(client.send_merged_block_meta_req(&meta_request("fail", 1, 2, 3), Some(WAIT)))
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Remote(m) if m.contains(SPARK_FAIL_MESSAGE)),
        "{err}"
    );
    assert_eq!(rpc(&rt, &client, "after".into()).unwrap(), "after");
}

#[test]
fn spark_merged_block_meta_requests_get_our_answers_or_our_refusal() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let server = bind_ours(&rt, Arc::new(Patterns));
    let mut peer = spark_client(spark, server.local_addr());
    for r in meta_requests() {
        let line = peer.command(&format!(
            "meta {} {} {} {}",
            r.app_id, r.shuffle_id, r.shuffle_merge_id, r.reduce_id
        ));
        let meta = spark_meta(&r);
        assert_eq!(
            line,
            format!("META {} {}", meta.chunk_count, hex(&meta.body)),
            "{r:?}\n{}",
            peer.diagnostics()
        );
    }
    let line = peer.command("meta fail 1 2 3");
    assert_eq!(line, format!("FAILED {OUR_FAIL_MESSAGE}"));
    let line = peer.command(&format!("rpc {}", hex(b"still there?")));
    assert_eq!(line, format!("OK {}", hex(b"still there?")));
    peer.finish();

    // A handler without a merged-block-meta handler refuses (Spark's default never answers).
    let (server, _handler) = our_server(&rt);
    let mut peer = spark_client(spark, server.local_addr());
    let line = peer.command("meta app 1 2 3");
    assert_eq!(line, "FAILED this peer serves no merged block metadata");
    peer.finish();
}

/// Spark matches on some failure texts: `ExecutorClassLoader` turns exactly
/// `Stream '<id>' was not found.` into a `ClassNotFoundException` when it loads classes from
/// the driver's file server. Spark's client must see Spark's own texts from our transport
/// (a stream manager's default, unknown chunks) and from our env's file server.
#[test]
fn spark_sees_sparks_exact_texts_for_unknown_streams_chunks_and_files() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    struct Bare(rpc_tokio::OneForOneStreamManager);
    impl RpcHandler for Bare {
        fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
            responder.reply(message).expect("answer an rpc");
        }
        fn stream_manager(&self) -> Option<&dyn StreamManager> {
            Some(&self.0)
        }
    }
    let server = bind_ours(
        &rt,
        Arc::new(Bare(rpc_tokio::OneForOneStreamManager::new(100))),
    );
    let mut peer = spark_client(spark, server.local_addr());
    let line = peer.command("stream /classes/Foo.class");
    assert_eq!(line, "FAILED Stream '/classes/Foo.class' was not found.");
    let line = peer.command("fetch 5 0");
    assert!(
        line.starts_with("FAILED ")
            && line.ends_with(": Requested chunk not available since streamId 5 is closed"),
        "{line}"
    );
    peer.finish();

    // The env's file server, as ExecutorClassLoader meets it: a class that is not there.
    let env = {
        let _in_runtime = rt.enter();
        rpc_tokio::RpcEnv::create(
            rpc_tokio::runtime(),
            rpc_tokio::RpcEnvConfig::server("driver", "127.0.0.1", 0)
                .build()
                .unwrap(),
        )
        .expect("an env")
    };
    let classes =
        std::env::temp_dir().join(format!("spark-interop-classes-{}", std::process::id()));
    std::fs::create_dir_all(&classes).expect("a classes dir");
    env.file_server()
        .add_directory("/classes", &classes)
        .expect("serve the classes dir");
    let port = env.address().expect("a server env").port;
    let mut peer = spark_client(spark, SocketAddr::from(([127, 0, 0, 1], port)));
    let line = peer.command("stream /classes/pkg/Missing.class");
    assert_eq!(
        line,
        "FAILED Stream '/classes/pkg/Missing.class' was not found."
    );
    let line = peer.command("stream /files/missing.txt");
    assert_eq!(line, "FAILED Stream '/files/missing.txt' was not found.");
    peer.finish();
    env.shutdown();
    let _ = std::fs::remove_dir_all(&classes);
}

#[test]
fn spark_uploads_to_our_server() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let server = bind_ours(&rt, Arc::new(Patterns));
    let mut peer = spark_client(spark, server.local_addr());
    for n in [0usize, 70_000, MIB] {
        let body = pattern(n, 5);
        let line = peer.command(&format!("upload {} {}", hex(b"meta"), hex(&body)));
        let mut expected = b"meta".to_vec();
        expected.extend_from_slice(&body);
        assert_eq!(
            line,
            format!("OK {}", hex(&expected)),
            "upload of {n} bytes from Spark"
        );
    }
    peer.finish();
}

#[test]
fn spark_fetches_chunks_and_streams_from_our_server() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let server = bind_ours(&rt, Arc::new(Patterns));
    let mut peer = spark_client(spark, server.local_addr());
    for (stream, index) in [(10u64, 3u32), (0, 0), (MIB as u64, 1)] {
        let line = peer.command(&format!("fetch {stream} {index}"));
        let got = line.strip_prefix("CHUNK ").unwrap_or_else(|| {
            panic!(
                "fetch {stream} {index}: {line:.300}\n{}",
                peer.diagnostics()
            )
        });
        assert_eq!(
            unhex(got),
            pattern(stream as usize, u64::from(index)),
            "chunk {stream}/{index} as Spark received it"
        );
    }
    for n in [100usize, 0, 3 * MIB] {
        let line = peer.command(&format!("stream bytes/{n}"));
        let got = line
            .strip_prefix("STREAM ")
            .or_else(|| (line == "STREAM").then_some(""))
            .unwrap_or_else(|| panic!("stream bytes/{n}: {line:.300}\n{}", peer.diagnostics()));
        assert_eq!(
            unhex(got),
            pattern(n, 0),
            "stream bytes/{n} as Spark received it"
        );
    }
    // File-backed: a chunk and streams written from the file (sendfile) behind their heads.
    for (k, index) in [(0u64, 0u32), (5, 2)] {
        let line = peer.command(&format!("fetch {} {index}", FILE_CHUNKS + k));
        let got = line
            .strip_prefix("CHUNK ")
            .unwrap_or_else(|| panic!("{line:.300}"));
        assert_eq!(
            unhex(got),
            pattern(100, k + u64::from(index)),
            "file-backed chunk"
        );
    }
    for n in [0usize, 1, FILE_LEN] {
        let line = peer.command(&format!("stream file/{n}"));
        let got = line
            .strip_prefix("STREAM ")
            .or_else(|| (line == "STREAM").then_some(""))
            .unwrap_or_else(|| panic!("stream file/{n}: {line:.300}\n{}", peer.diagnostics()));
        assert_eq!(
            unhex(got),
            pattern(n, 0),
            "file-backed stream file/{n} as Spark received it"
        );
    }
    // Concurrent streams on one connection: Spark requests them all, then reads them all.
    let ids = [
        "bytes/100",
        "file/3000000",
        "bytes/0",
        "nothing",
        "bytes/70000",
    ];
    let line = peer.command(&format!("streams {}", ids.join(" ")));
    let results: Vec<&str> = line
        .strip_prefix("STREAMS | ")
        .unwrap_or_else(|| panic!("{line:.300}"))
        .split(" | ")
        .collect();
    assert_eq!(results.len(), ids.len(), "{line:.300}");
    for (id, result) in ids.iter().zip(&results) {
        if *id == "nothing" {
            assert!(
                result.starts_with("FAILED ") && result.contains("no stream nothing"),
                "{result:.200}"
            );
            continue;
        }
        let n: usize = id.split('/').nth(1).unwrap().parse().unwrap();
        let got = result
            .strip_prefix("STREAM ")
            .or_else(|| (*result == "STREAM").then_some(""))
            .unwrap_or_else(|| panic!("{id}: {result:.200}"));
        assert_eq!(unhex(got), pattern(n, 0), "{id} among concurrent streams");
    }
    let line = peer.command("fetch -5 0");
    assert!(
        line.starts_with("FAILED ") && line.contains("we have no stream -5"),
        "{line:.300}"
    );
    let line = peer.command(&format!("rpc {}", hex(b"still there?")));
    assert_eq!(line, format!("OK {}", hex(b"still there?")));
    peer.finish();
}

// -------------------------------------------------------------------------------------------
// Our frame codec against Spark's bytes, on a raw socket

/// A raw connection decoding with our [`FrameDecoder`] and keeping each frame's exact bytes.
struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

/// One frame as Spark sent it: decoded, its exact bytes, and its out-of-frame body.
struct Received {
    frame: Frame,
    raw: Bytes,
    body: Vec<u8>,
}

impl RawConn {
    fn new(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(rpc_proto::SPARK_MAX_FRAME_LENGTH),
        }
    }

    /// Sends our encoding of `frame`, then `body` (the out-of-frame body, if any).
    fn send(&mut self, frame: &Frame, body: &[u8]) {
        assert_eq!(frame.out_of_frame_len(), body.len() as u64, "test bug");
        self.stream
            .write_all(&frame.to_bytes())
            .expect("send a frame to Spark");
        self.stream.write_all(body).expect("send a body to Spark");
    }

    fn fill(&mut self, peer: &JavaPeer) {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("Spark closed the connection\n{}", peer.diagnostics()),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "no bytes from Spark within {WAIT:?} ({e})\n{}",
                peer.diagnostics()
            ),
        }
    }

    /// The next frame from Spark, with its exact bytes and any out-of-frame body.
    fn recv(&mut self, peer: &JavaPeer) -> Received {
        // The frame's bytes per its own length field, before our decoder sees them.
        while self.buf.len() < 8 {
            self.fill(peer);
        }
        let len = u64::from_be_bytes(self.buf[..8].try_into().unwrap());
        assert!(
            (9..=64 * MIB as u64).contains(&len),
            "Spark sent a frame length of {len}: {}",
            summary(&self.buf)
        );
        while self.buf.len() < len as usize {
            self.fill(peer);
        }
        let raw = Bytes::copy_from_slice(&self.buf[..len as usize]);
        let frame = match self.decoder.decode(&mut self.buf) {
            Ok(Some(Decoded::Frame(frame))) => frame,
            other => panic!("our decoder on Spark's frame {}: {other:?}", summary(&raw)),
        };
        assert_eq!(
            self.decoder.body_remaining(),
            frame.out_of_frame_len(),
            "the decoder expects the body the frame announces"
        );
        let mut body = Vec::new();
        while self.decoder.body_remaining() > 0 {
            if self.buf.is_empty() {
                self.fill(peer);
            }
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Body { data, .. })) => body.extend_from_slice(&data),
                other => panic!("our decoder inside Spark's stream body: {other:?}"),
            }
        }
        assert_same_bytes(&frame, &raw);
        Received { frame, raw, body }
    }
}

/// Spark's bytes for a frame must be exactly what we encode for the frame we decoded from them.
fn assert_same_bytes(frame: &Frame, spark: &[u8]) {
    let ours = frame.to_bytes();
    if ours[..] == spark[..] {
        return;
    }
    let at = ours
        .iter()
        .zip(spark)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(spark.len()));
    panic!(
        "WIRE FORMAT DIFFERENCE in {:?} at byte {at} (of {} from Spark, {} ours):\n  spark: {}\n  ours:  {}\n  frame: {frame:?}",
        frame.message_type(),
        spark.len(),
        ours.len(),
        summary(spark),
        summary(&ours)
    );
}

fn chunk(stream_id: u64, chunk_index: u32) -> StreamChunkId {
    StreamChunkId {
        stream_id,
        chunk_index,
    }
}

#[test]
fn spark_server_frames_match_our_codec_byte_for_byte() {
    let spark = spark_or_skip!();
    let (peer, addr) = spark_server(spark);
    let mut conn = RawConn::new(TcpStream::connect(addr).expect("connect to Spark"));

    // RpcRequest -> RpcResponse / RpcFailure. The second id has the top bit set: a negative
    // Java long, which must come back as the same 8 bytes.
    for (id, body) in [
        (0x0123_4567_89ab_cdef_u64, pattern(300, 1)),
        (0x8000_0000_0000_0007, Bytes::new()),
    ] {
        let request = RequestId(id);
        conn.send(
            &Frame::RpcRequest {
                request,
                body: body.clone(),
            },
            &[],
        );
        let got = conn.recv(&peer);
        assert_eq!(
            got.frame,
            Frame::RpcResponse { request, body },
            "{}",
            summary(&got.raw)
        );
    }
    let request = RequestId(42);
    conn.send(
        &Frame::RpcRequest {
            request,
            body: "fail".into(),
        },
        &[],
    );
    match conn.recv(&peer).frame {
        Frame::RpcFailure { request: r, error } => {
            assert_eq!(r, request);
            assert!(error.contains(SPARK_FAIL_MESSAGE), "{error}");
        }
        other => panic!("expected an RpcFailure, got {other:?}"),
    }

    // OneWayMessage: no answer on the wire; SparkPeer reports it.
    conn.send(
        &Frame::OneWayMessage {
            body: "one-way".into(),
        },
        &[],
    );
    assert_eq!(unhex(&peer.line_starting("ONEWAY ")), b"one-way");

    // ChunkFetchRequest -> ChunkFetchSuccess / ChunkFetchFailure.
    conn.send(
        &Frame::ChunkFetchRequest {
            chunk: chunk(10, 3),
        },
        &[],
    );
    let got = conn.recv(&peer);
    assert_eq!(
        got.frame,
        Frame::ChunkFetchSuccess {
            chunk: chunk(10, 3),
            body: pattern(10, 3)
        }
    );
    conn.send(
        &Frame::ChunkFetchRequest {
            chunk: chunk(1 << 40, 0),
        },
        &[],
    );
    match conn.recv(&peer).frame {
        Frame::ChunkFetchFailure { chunk: c, error } => {
            assert_eq!(c, chunk(1 << 40, 0));
            assert!(
                error.contains("SparkPeer has no stream 1099511627776"),
                "{error}"
            );
        }
        other => panic!("expected a ChunkFetchFailure, got {other:?}"),
    }

    // StreamRequest -> StreamResponse and its out-of-frame body / StreamFailure.
    for len in [100_000, 0] {
        let stream_id = format!("bytes/{len}");
        conn.send(
            &Frame::StreamRequest {
                stream_id: stream_id.clone(),
            },
            &[],
        );
        let got = conn.recv(&peer);
        assert_eq!(
            got.frame,
            Frame::StreamResponse {
                stream_id,
                byte_count: len as u64
            }
        );
        assert!(
            got.body == pattern(len, 0)[..],
            "stream body {}",
            summary(&got.body)
        );
    }
    conn.send(
        &Frame::StreamRequest {
            stream_id: "nope".into(),
        },
        &[],
    );
    match conn.recv(&peer).frame {
        Frame::StreamFailure { stream_id, error } => {
            assert_eq!(stream_id, "nope");
            assert!(error.contains("SparkPeer has no stream nope"), "{error}");
        }
        other => panic!("expected a StreamFailure, got {other:?}"),
    }

    // UploadStream and its out-of-frame body -> RpcResponse (SparkPeer answers meta + data).
    let data = pattern(70_000, 5);
    let request = RequestId(77);
    conn.send(
        &Frame::UploadStream {
            request,
            meta: "meta".into(),
            byte_count: data.len() as u64,
        },
        &data,
    );
    let got = conn.recv(&peer);
    let mut expected = b"meta".to_vec();
    expected.extend_from_slice(&data);
    assert_eq!(
        got.frame,
        Frame::RpcResponse {
            request,
            body: expected.into()
        }
    );

    // MergedBlockMetaRequest -> MergedBlockMetaSuccess / RpcFailure.
    for (id, r) in [0x8000_0000_0000_0011_u64, 12, 13]
        .into_iter()
        .zip(meta_requests())
    {
        let request = RequestId(id);
        conn.send(
            &Frame::MergedBlockMetaRequest {
                request,
                app_id: r.app_id.clone(),
                shuffle_id: r.shuffle_id,
                shuffle_merge_id: r.shuffle_merge_id,
                reduce_id: r.reduce_id,
            },
            &[],
        );
        let meta = spark_meta(&r);
        assert_eq!(
            conn.recv(&peer).frame,
            Frame::MergedBlockMetaSuccess {
                request,
                chunk_count: meta.chunk_count,
                body: meta.body
            },
            "{r:?}"
        );
    }
    let request = RequestId(99);
    conn.send(
        &Frame::MergedBlockMetaRequest {
            request,
            app_id: "fail".into(),
            shuffle_id: 1,
            shuffle_merge_id: 2,
            reduce_id: 3,
        },
        &[],
    );
    match conn.recv(&peer).frame {
        Frame::RpcFailure { request: r, error } => {
            assert_eq!(r, request);
            assert!(error.contains(SPARK_FAIL_MESSAGE), "{error}");
        }
        other => panic!("expected an RpcFailure, got {other:?}"),
    }

    drop(conn);
    peer.finish();
}

#[test]
fn spark_client_frames_match_our_codec_byte_for_byte() {
    let spark = spark_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut peer = JavaPeer::spawn(
        spark,
        &["client", &listener.local_addr().unwrap().port().to_string()],
    );
    let mut conn = RawConn::new(accept(&listener, &peer));
    assert_eq!(peer.line(), "CONNECTED", "{}", peer.diagnostics());

    // RpcRequest from Spark; our RpcResponse / RpcFailure back.
    for body in [pattern(300, 1), Bytes::new()] {
        peer.write(&format!("rpc {}", hex(&body)));
        let got = conn.recv(&peer);
        let Frame::RpcRequest {
            request,
            body: seen,
        } = got.frame
        else {
            panic!("expected an RpcRequest, got {:?}", got.frame);
        };
        assert_eq!(seen, body);
        let reply = pattern(body.len() + 5, 9);
        conn.send(
            &Frame::RpcResponse {
                request,
                body: reply.clone(),
            },
            &[],
        );
        assert_eq!(peer.line(), format!("OK {}", hex(&reply)));
    }
    peer.write(&format!("rpc {}", hex(b"x")));
    let Frame::RpcRequest { request, .. } = conn.recv(&peer).frame else {
        panic!("expected an RpcRequest");
    };
    conn.send(
        &Frame::RpcFailure {
            request,
            error: "our failure".into(),
        },
        &[],
    );
    assert_eq!(peer.line(), "FAILED our failure");

    // OneWayMessage from Spark.
    peer.write(&format!("send {}", hex(b"one-way")));
    assert_eq!(
        conn.recv(&peer).frame,
        Frame::OneWayMessage {
            body: "one-way".into()
        }
    );
    assert_eq!(peer.line(), "SENT");

    // ChunkFetchRequest from Spark; our ChunkFetchSuccess / ChunkFetchFailure back.
    peer.write("fetch 10 3");
    assert_eq!(
        conn.recv(&peer).frame,
        Frame::ChunkFetchRequest {
            chunk: chunk(10, 3)
        }
    );
    conn.send(
        &Frame::ChunkFetchSuccess {
            chunk: chunk(10, 3),
            body: pattern(10, 3),
        },
        &[],
    );
    assert_eq!(peer.line(), format!("CHUNK {}", hex(&pattern(10, 3))));
    peer.write(&format!("fetch {} 0", 1u64 << 40));
    assert_eq!(
        conn.recv(&peer).frame,
        Frame::ChunkFetchRequest {
            chunk: chunk(1 << 40, 0)
        }
    );
    conn.send(
        &Frame::ChunkFetchFailure {
            chunk: chunk(1 << 40, 0),
            error: "no such chunk".into(),
        },
        &[],
    );
    let line = peer.line();
    assert!(
        line.starts_with("FAILED ") && line.contains("no such chunk"),
        "{line}"
    );

    // StreamRequest from Spark; our StreamResponse (and body) / StreamFailure back.
    for len in [100_000, 0] {
        let stream_id = format!("bytes/{len}");
        peer.write(&format!("stream {stream_id}"));
        assert_eq!(
            conn.recv(&peer).frame,
            Frame::StreamRequest {
                stream_id: stream_id.clone()
            }
        );
        let data = pattern(len, 0);
        conn.send(
            &Frame::StreamResponse {
                stream_id,
                byte_count: len as u64,
            },
            &data,
        );
        assert_eq!(peer.line(), format!("STREAM {}", hex(&data)));
    }
    peer.write("stream nope");
    assert_eq!(
        conn.recv(&peer).frame,
        Frame::StreamRequest {
            stream_id: "nope".into()
        }
    );
    conn.send(
        &Frame::StreamFailure {
            stream_id: "nope".into(),
            error: "no such stream".into(),
        },
        &[],
    );
    let line = peer.line();
    assert!(
        line.starts_with("FAILED ") && line.contains("no such stream"),
        "{line}"
    );

    // UploadStream (and body) from Spark; our RpcResponse back.
    let data = pattern(70_000, 5);
    peer.write(&format!("upload {} {}", hex(b"meta"), hex(&data)));
    let got = conn.recv(&peer);
    let Frame::UploadStream {
        request,
        meta,
        byte_count,
    } = got.frame
    else {
        panic!("expected an UploadStream, got {:?}", got.frame);
    };
    assert_eq!((&meta[..], byte_count), (&b"meta"[..], data.len() as u64));
    assert!(got.body == data[..], "upload body {}", summary(&got.body));
    conn.send(
        &Frame::RpcResponse {
            request,
            body: "stored".into(),
        },
        &[],
    );
    assert_eq!(peer.line(), format!("OK {}", hex(b"stored")));

    // MergedBlockMetaRequest from Spark; our MergedBlockMetaSuccess / RpcFailure back.
    for r in meta_requests() {
        peer.write(&format!(
            "meta {} {} {} {}",
            r.app_id, r.shuffle_id, r.shuffle_merge_id, r.reduce_id
        ));
        let Frame::MergedBlockMetaRequest {
            request,
            app_id,
            shuffle_id,
            shuffle_merge_id,
            reduce_id,
        } = conn.recv(&peer).frame
        else {
            panic!("expected a MergedBlockMetaRequest");
        };
        assert_eq!(
            meta_request(&app_id, shuffle_id, shuffle_merge_id, reduce_id),
            r
        );
        let meta = spark_meta(&r);
        conn.send(
            &Frame::MergedBlockMetaSuccess {
                request,
                chunk_count: meta.chunk_count,
                body: meta.body.clone(),
            },
            &[],
        );
        assert_eq!(
            peer.line(),
            format!("META {} {}", meta.chunk_count, hex(&meta.body))
        );
    }
    peer.write("meta x 1 2 3");
    let Frame::MergedBlockMetaRequest { request, .. } = conn.recv(&peer).frame else {
        panic!("expected a MergedBlockMetaRequest");
    };
    conn.send(
        &Frame::RpcFailure {
            request,
            error: "our failure".into(),
        },
        &[],
    );
    assert_eq!(peer.line(), "FAILED our failure");

    peer.finish();
}

/// Accepts one connection, bounded by [`WAIT`].
fn accept(listener: &TcpListener, peer: &JavaPeer) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!(
                "Spark did not connect within {WAIT:?} ({e})\n{}",
                peer.diagnostics()
            ),
        }
    }
}
