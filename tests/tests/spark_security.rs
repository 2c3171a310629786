//! Security interoperability with a real Spark: every row of the security matrix
//! (`tests/interop/security-matrix.sh`, which runs the same rows Spark-to-Spark) against
//! Spark 4.3's own `TransportServer` and `TransportClient` (`tests/interop/SparkPeer.java`),
//! both ways, on 127.0.0.1, with rpc-tokio on our side.
//!
//! ```text
//!   our TransportClientFactory ──► SparkPeer server --report <flags>   ("ours → spark")
//!   SparkPeer client <flags> ─────► our TransportServer                 ("spark → ours")
//! ```
//!
//! Each direction of each row carries an RPC with a body above 1 MiB, an RPC failure, a
//! one-way message, a chunk fetch, a stream and an upload (both above 1 MiB), all through the
//! row's authentication, cipher and TLS, and checks every byte. Spark's client also reports
//! the protection layers Spark installed (`LAYERS`), so a silent downgrade shows; Spark's
//! server reports the client it authenticated (`AUTHENTICATED`) and everything it served
//! (`SERVED`), so a refused client that got something served shows.
//!
//! Rows: AES (v1, v2) × (CTR, GCM); SASL auth and auth-conf; Spark's SASL fallback both ways;
//! TLS alone, under SASL, and under AES v2 GCM (Spark stacks the AES cipher under TLS, and so
//! do we); wrong secrets both ways; a Spark client without authentication against our AES and
//! SASL servers. One Spark JVM per direction per row: the refused wrong-secret attempts of our
//! client go to the row's Spark server before the row's real client does.
//!
//! Needs Spark's jars and a JDK, as `spark_interop.rs` (see `common/mod.rs`): without them
//! each test prints a `SKIPPED` line and passes, unless `RPC_REQUIRE_SPARK=1`: then it fails.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_proto::{RequestError, StreamChunkId};
use rpc_tokio::security::{AuthVersion, CipherMode, SPARK_RPC_APP_ID};
use rpc_tokio::{
    AuthMechanism, ConnectError, RpcHandler, RpcResponder, Security, SecurityError, StreamManager,
    TlsConfig, TransportClient, TransportClientFactory, TransportConfig, TransportServer,
    UploadSink,
};

use common::*;

/// The secret both sides share (SparkPeer's `--secret`).
const SECRET: &str = "interop-secret";

/// The size of the big RPC body, chunk, stream and upload: above 1 MiB, and not a multiple
/// of any cipher's block or record.
const BIG: usize = MIB + MIB / 2 + 7;

/// The message SparkPeer fails an RPC with (`SparkPeer.FAIL_MESSAGE`).
const SPARK_FAIL_MESSAGE: &str = "SparkPeer refused the request: you asked for it";

/// The message our handler fails an RPC with.
const OUR_FAIL_MESSAGE: &str = "the rust peer refused the request (secured)";

const UPLOAD_META: &[u8] = b"upload-meta";

// -------------------------------------------------------------------------------------------
// Test data, in hex once (SparkPeer speaks hex on its stdin and stdout)

/// Lowercase hex, fast enough for megabytes in a debug build.
fn fast_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    String::from_utf8(out).expect("hex is ascii")
}

/// The big bodies and their hex.
struct Data {
    /// The RPC and upload body.
    body: Bytes,
    body_hex: String,
    /// `pattern(BIG, 3)`: chunk 3 of stream `BIG` on either side.
    chunk: Bytes,
    chunk_hex: String,
    /// `pattern(BIG, 0)`: the stream `bytes/BIG` on either side.
    stream: Bytes,
    stream_hex: String,
    /// What an upload of `body` with [`UPLOAD_META`] is answered with: meta, then the bytes.
    upload_reply: Bytes,
    upload_reply_hex: String,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let body: Bytes = (0..BIG).map(|k| ((7 * k + 3) % 256) as u8).collect();
        let chunk = pattern(BIG, 3);
        let stream = pattern(BIG, 0);
        let mut upload_reply = BytesMut::from(UPLOAD_META);
        upload_reply.extend_from_slice(&body);
        let upload_reply = upload_reply.freeze();
        Data {
            body_hex: fast_hex(&body),
            chunk_hex: fast_hex(&chunk),
            stream_hex: fast_hex(&stream),
            upload_reply_hex: fast_hex(&upload_reply),
            body,
            chunk,
            stream,
            upload_reply,
        }
    })
}

/// The pieces of `body`, 64 KiB each, for an upload.
fn pieces(body: Bytes) -> impl futures_lite::Stream<Item = Bytes> + Send + 'static {
    let count = body.len().div_ceil(64 * 1024);
    futures_lite::stream::iter(
        (0..count).map(move |i| body.slice(i * 65536..((i + 1) * 65536).min(body.len()))),
    )
}

// -------------------------------------------------------------------------------------------
// TLS identity: one self-signed certificate for both sides, as Spark expects one for the
// whole cluster (Spark's client in PEM mode trusts exactly its own --tls-cert)

struct Identity {
    key: PathBuf,
    cert: PathBuf,
    key_pem: String,
    cert_pem: String,
}

fn identity() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("generate a key");
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate parameters")
                .self_signed(&key)
                .expect("self-sign");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("spark-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the tls dir");
        let identity = Identity {
            key: dir.join("key.pem"),
            cert: dir.join("cert.pem"),
            // PKCS#8 ("BEGIN PRIVATE KEY"), what Spark's PEM configuration reads.
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        };
        std::fs::write(&identity.key, &identity.key_pem).expect("write the key");
        std::fs::write(&identity.cert, &identity.cert_pem).expect("write the cert");
        identity
    })
}

/// SparkPeer's TLS flags (PEM configuration), for either role.
fn spark_tls() -> Vec<String> {
    let id = identity();
    vec![
        "--tls".into(),
        "--tls-key".into(),
        id.key.display().to_string(),
        "--tls-cert".into(),
        id.cert.display().to_string(),
    ]
}

/// Our TLS settings, for either role: the identity as a server, trusting it as a client.
fn our_tls() -> TlsConfig {
    let id = identity();
    TlsConfig::new()
        .with_identity_pem(id.cert_pem.as_bytes(), id.key_pem.as_bytes())
        .expect("our tls identity")
        .with_trust_pem(id.cert_pem.as_bytes())
        .expect("our tls trust")
}

// -------------------------------------------------------------------------------------------
// Rows

fn flags(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn spark_aes(version: u8, cipher: &str) -> Vec<String> {
    flags(&[
        "--auth",
        "aes",
        "--aes-version",
        &version.to_string(),
        "--cipher",
        cipher,
        "--secret",
        SECRET,
    ])
}

fn spark_sasl(encrypt: bool) -> Vec<String> {
    let mut f = flags(&["--auth", "sasl", "--secret", SECRET]);
    if encrypt {
        f.push("--sasl-encrypt".into());
    }
    f
}

fn aes(version: AuthVersion, cipher: CipherMode) -> AuthMechanism {
    AuthMechanism::Aes { version, cipher }
}

fn ours(mechanism: AuthMechanism) -> Security {
    Security::secret(SECRET).with_mechanism(mechanism)
}

fn with(mut a: Vec<String>, b: &[String]) -> Vec<String> {
    a.extend_from_slice(b);
    a
}

// -------------------------------------------------------------------------------------------
// Our client → Spark's server

/// A SparkPeer server with `--report`, and every line it printed so far.
struct SparkServer {
    peer: JavaPeer,
    addr: SocketAddr,
    log: Vec<String>,
}

impl SparkServer {
    fn start(spark: &Spark, flags: &[String]) -> Self {
        let args: Vec<&str> = ["--report"]
            .into_iter()
            .chain(flags.iter().map(String::as_str))
            .collect();
        let (peer, addr) = spark_server_with(spark, &args);
        Self {
            peer,
            addr,
            log: Vec::new(),
        }
    }

    /// Reads lines up to the next one starting with `prefix`; returns the rest of it.
    fn until(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = self.peer.line();
            self.log.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no line starting with {prefix:?} from SparkPeer within {WAIT:?}\n{}",
                self.peer.diagnostics()
            );
        }
    }

    /// Stops the server; returns every line it printed.
    fn finish(self) -> Vec<String> {
        let mut log = self.log;
        log.extend(self.peer.finish_lines());
        log
    }
}

fn factory(rt: &tokio::runtime::Runtime, security: Security) -> TransportClientFactory {
    let _in_runtime = rt.enter();
    TransportClientFactory::new(
        rpc_tokio::runtime(),
        Arc::new(Ours::default()),
        TransportConfig::builder()
            .with_connect_timeout(WAIT)
            .with_security(security)
            .build()
            .unwrap(),
    )
}

fn connect(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    security: Security,
) -> Result<TransportClient, ConnectError> {
    let factory = factory(rt, security);
    rt.block_on(factory.create_client(addr))
}

/// Our client with `wrong` (a wrong secret) is refused by `server` with
/// [`SecurityError::AuthenticationFailed`].
fn ours_refused(
    rt: &tokio::runtime::Runtime,
    what: &str,
    server: &mut SparkServer,
    wrong: Security,
) {
    match connect(rt, server.addr, wrong) {
        Err(ConnectError::Security(SecurityError::AuthenticationFailed { .. })) => {}
        other => panic!(
            "{what}: our client with a wrong secret: expected AuthenticationFailed, got {:?}\n{}",
            other.map(|c| c.client_id().map(str::to_owned)),
            server.peer.diagnostics()
        ),
    }
    let refusal = server.until("AUTH_FAILED ");
    assert!(!refusal.is_empty(), "{what}");
}

/// Connects our client with `security` to `server` and runs every kind of request through it.
fn ours_to_spark(
    rt: &tokio::runtime::Runtime,
    what: &str,
    server: &mut SparkServer,
    security: Security,
    authenticates: bool,
) {
    let d = data();
    let client = connect(rt, server.addr, security).unwrap_or_else(|e| {
        panic!(
            "{what}: our client to Spark's server: {e:?}\n{}",
            server.peer.diagnostics()
        )
    });
    if authenticates {
        assert_eq!(client.client_id(), Some(SPARK_RPC_APP_ID), "{what}");
        assert_eq!(server.until("AUTHENTICATED "), SPARK_RPC_APP_ID, "{what}");
    }
    let fail = |kind: &str, e: &dyn std::fmt::Debug| -> ! {
        panic!(
            "{what}: our {kind} to Spark's server: {e:?}\n{}",
            server.peer.diagnostics()
        )
    };

    let reply = rt
        .block_on(client.send_rpc(d.body.clone(), Some(WAIT)))
        .unwrap_or_else(|e| fail("rpc", &e));
    assert!(reply == d.body, "{what}: Spark echoed {}", summary(&reply));

    match rt.block_on(client.send_rpc(Bytes::from_static(b"fail"), Some(WAIT))) {
        Err(RequestError::Remote(message)) => {
            assert!(message.contains(SPARK_FAIL_MESSAGE), "{what}: {message:?}")
        }
        other => fail("failing rpc", &other),
    }

    let one_way = format!("one-way message over {what}");
    client
        .send(Bytes::from(one_way.clone()))
        .unwrap_or_else(|e| fail("one-way message", &e));

    let chunk = rt
        .block_on(client.fetch_chunk(StreamChunkId::new(BIG as u64, 3), Some(WAIT)))
        .unwrap_or_else(|e| fail("chunk fetch", &e));
    assert!(chunk == d.chunk, "{what}: chunk {}", summary(&chunk));

    let stream = rt
        .block_on(
            client
                .stream(&format!("bytes/{BIG}"), Some(WAIT))
                .read_to_end(),
        )
        .unwrap_or_else(|e| fail("stream", &e));
    assert!(stream == d.stream, "{what}: stream {}", summary(&stream));

    let upload = rt
        .block_on(client.upload_stream(
            Bytes::from_static(UPLOAD_META),
            d.body.len() as u64,
            pieces(d.body.clone()),
            Some(WAIT),
        ))
        .unwrap_or_else(|e| fail("upload", &e));
    assert!(
        upload == d.upload_reply,
        "{what}: upload answered {}",
        summary(&upload)
    );

    assert_eq!(
        server.until("ONEWAY "),
        fast_hex(one_way.as_bytes()),
        "{what}: the one-way message Spark received"
    );
    assert!(client.is_active(), "{what}: the connection closed");
}

/// Checks a SparkPeer server's lines: nothing served before the first client authenticated
/// (only refused clients came before it), and every kind of request served after.
fn check_served_only_after_authentication(what: &str, lines: &[String]) {
    let first = lines
        .iter()
        .position(|l| l.starts_with("AUTHENTICATED "))
        .unwrap_or_else(|| panic!("{what}: Spark authenticated nobody: {lines:?}"));
    let before: Vec<&String> = lines[..first]
        .iter()
        .filter(|l| l.starts_with("SERVED") || l.starts_with("ONEWAY"))
        .collect();
    assert!(
        before.is_empty(),
        "{what}: Spark served before authenticating anybody: {before:?}"
    );
    for kind in [
        "SERVED rpc",
        "SERVED fetch",
        "SERVED stream",
        "SERVED upload",
        "ONEWAY",
    ] {
        assert!(
            lines[first..].iter().any(|l| l.starts_with(kind)),
            "{what}: no {kind} line"
        );
    }
}

// -------------------------------------------------------------------------------------------
// Spark's client → our server

/// Our handler: echoes RPCs (fails "fail"), serves SparkPeer's chunks and `bytes/<n>`
/// streams, answers uploads with meta then bytes; counts everything it serves and records
/// one-way messages and the client ids it served.
#[derive(Default)]
struct Ours {
    served: AtomicUsize,
    one_way: Mutex<Vec<Bytes>>,
    client_ids: Mutex<Vec<Option<String>>>,
}

impl Ours {
    fn served(&self, client: &TransportClient) {
        self.served.fetch_add(1, Ordering::SeqCst);
        self.client_ids
            .lock()
            .unwrap()
            .push(client.client_id().map(str::to_owned));
    }

    fn count(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl RpcHandler for Ours {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        self.served(client);
        let _ = if message == "fail" {
            responder.fail(OUR_FAIL_MESSAGE)
        } else {
            responder.reply(message)
        };
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        self.served(client);
        self.one_way.lock().unwrap().push(message);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
    ) -> Result<Box<dyn UploadSink>, rpc_tokio::BoxError> {
        self.served(client);
        struct Mirror(BytesMut);
        impl UploadSink for Mirror {
            fn on_data(&mut self, data: Bytes) -> Result<(), rpc_tokio::BoxError> {
                self.0.extend_from_slice(&data);
                Ok(())
            }
            fn on_complete(self: Box<Self>, responder: RpcResponder) {
                let _ = responder.reply(self.0.freeze());
            }
        }
        Ok(Box::new(Mirror(BytesMut::from(&meta[..]))))
    }
}

impl StreamManager for Ours {
    fn chunk(
        &self,
        client: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<Bytes, rpc_tokio::BoxError> {
        self.served(client);
        let len = chunk.stream_id as usize;
        if len > 64 * MIB {
            return Err(format!("we have no stream {}", chunk.stream_id).into());
        }
        Ok(pattern(len, u64::from(chunk.chunk_index)))
    }

    fn open_stream(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<Bytes, rpc_tokio::BoxError> {
        self.served(client);
        let n = stream_id
            .strip_prefix("bytes/")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("we have no stream {stream_id}"))?;
        Ok(pattern(n, 0))
    }
}

/// Our server with `security` on a free port of 127.0.0.1.
fn our_server(rt: &tokio::runtime::Runtime, security: Security) -> (TransportServer, Arc<Ours>) {
    let _in_runtime = rt.enter();
    let handler = Arc::new(Ours::default());
    let server = TransportServer::bind(
        rpc_tokio::runtime(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        handler.clone(),
        TransportConfig::builder()
            .with_security(security)
            .build()
            .unwrap(),
    )
    .expect("bind our server");
    (server, handler)
}

/// A SparkPeer client with `--report` and `flags` against `addr`: the peer and its first
/// line (`CONNECTED` or `CONNECT_FAILED ...`), and the LAYERS line after `CONNECTED`.
fn spark_client_reporting(
    spark: &Spark,
    addr: SocketAddr,
    flags: &[String],
) -> (JavaPeer, String, Option<String>) {
    let args: Vec<&str> = ["--report"]
        .into_iter()
        .chain(flags.iter().map(String::as_str))
        .collect();
    match spark_client_with(spark, addr, &args) {
        Ok(peer) => {
            let layers = peer.line_starting("LAYERS ");
            (peer, "CONNECTED".into(), Some(layers))
        }
        Err((peer, line)) => (peer, line, None),
    }
}

/// Asserts a SparkPeer result line is `prefix` + `hex`, without printing megabytes.
fn assert_hex_line(what: &str, kind: &str, line: &str, prefix: &str, hex: &str, peer: &JavaPeer) {
    let ok = line
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == hex.len() && rest == hex);
    assert!(
        ok,
        "{what}: Spark's {kind}: expected {prefix}<{} hex digits>, got {:.300}\n{}",
        hex.len(),
        line,
        peer.diagnostics()
    );
}

/// Runs a SparkPeer client with `flags` against our server with `security`, every kind of
/// request; checks the layers Spark reports.
fn spark_to_ours(
    rt: &tokio::runtime::Runtime,
    spark: &Spark,
    what: &str,
    security: Security,
    flags: &[String],
    authenticates: bool,
    layers: &str,
) -> (TransportServer, Arc<Ours>) {
    let d = data();
    let (server, handler) = our_server(rt, security);
    let (mut peer, hello, reported) = spark_client_reporting(spark, server.local_addr(), flags);
    assert_eq!(hello, "CONNECTED", "{what}\n{}", peer.diagnostics());
    assert_eq!(
        reported.as_deref(),
        Some(layers),
        "{what}: the layers Spark installed"
    );

    let line = peer.command(&format!("rpc {}", d.body_hex));
    assert_hex_line(what, "rpc", &line, "OK ", &d.body_hex, &peer);
    let line = peer.command(&format!("rpc {}", fast_hex(b"fail")));
    assert_eq!(line, format!("FAILED {OUR_FAIL_MESSAGE}"), "{what}");
    let one_way = format!("one-way message over {what}");
    assert_eq!(
        peer.command(&format!("send {}", fast_hex(one_way.as_bytes()))),
        "SENT",
        "{what}"
    );
    let line = peer.command(&format!("fetch {BIG} 3"));
    assert_hex_line(what, "chunk fetch", &line, "CHUNK ", &d.chunk_hex, &peer);
    let line = peer.command(&format!("stream bytes/{BIG}"));
    assert_hex_line(what, "stream", &line, "STREAM ", &d.stream_hex, &peer);
    let line = peer.command(&format!("upload {} {}", fast_hex(UPLOAD_META), d.body_hex));
    assert_hex_line(what, "upload", &line, "OK ", &d.upload_reply_hex, &peer);
    peer.finish();

    let deadline = Instant::now() + WAIT;
    while !handler
        .one_way
        .lock()
        .unwrap()
        .iter()
        .any(|m| *m == one_way.as_bytes())
    {
        assert!(
            Instant::now() < deadline,
            "{what}: our handler did not get Spark's one-way message"
        );
        thread::sleep(Duration::from_millis(10));
    }
    // rpc, failing rpc, one-way, chunk, stream, upload.
    assert_eq!(handler.count(), 6, "{what}");
    let ids = handler.client_ids.lock().unwrap().clone();
    let expected = authenticates.then_some(SPARK_RPC_APP_ID);
    assert!(
        ids.iter().all(|id| id.as_deref() == expected),
        "{what}: client ids {ids:?}"
    );
    assert_eq!(server.stats().auth_failures, 0, "{what}");
    (server, handler)
}

/// A SparkPeer client with `flags` must get nothing from our `server`: it fails to connect or
/// every request fails, our handler sees nothing, and the server counts the failure.
fn spark_refused(
    spark: &Spark,
    what: &str,
    server: &TransportServer,
    handler: &Ours,
    flags: &[String],
) -> String {
    let before = handler.count();
    let failures_before = server.stats().auth_failures;
    let (mut peer, hello, _) = spark_client_reporting(spark, server.local_addr(), flags);
    let d = data();
    let mut seen = vec![hello.clone()];
    // The requests Spark's own server serves before authentication come first.
    for command in [
        format!("fetch {BIG} 3"),
        format!("stream bytes/{BIG}"),
        format!("rpc {}", fast_hex(b"hello")),
        format!("send {}", fast_hex(b"one-way")),
        format!(
            "upload {} {}",
            fast_hex(UPLOAD_META),
            fast_hex(&d.body[..1000])
        ),
    ] {
        let line = peer.command(&command);
        let kind = command.split(' ').next().unwrap_or_default();
        // A one-way message is "SENT" once written to the socket: what counts is that our
        // handler never sees it.
        if kind != "send" {
            assert!(
                line.starts_with("FAILED ") || line.starts_with("TIMEOUT "),
                "{what}: Spark's {kind} got {line:.200}\n{}",
                peer.diagnostics()
            );
        }
        seen.push(format!("{kind}: {line:.120}"));
    }
    peer.finish();
    let deadline = Instant::now() + WAIT;
    while server.stats().auth_failures <= failures_before {
        assert!(
            Instant::now() < deadline,
            "{what}: our server counted no authentication failure ({seen:?})"
        );
        thread::sleep(Duration::from_millis(10));
    }
    // Anything that slipped through would have reached the handler by now.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        handler.count(),
        before,
        "{what}: our handler served a refused client"
    );
    seen.join(" | ")
}

// -------------------------------------------------------------------------------------------
// The rows

#[test]
fn aes_v1_and_v2_with_ctr_and_gcm_both_ways() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    for (version, v, cipher, c, layers) in [
        (AuthVersion::V1, 1, CipherMode::Ctr, "ctr", "aes-ctr"),
        (AuthVersion::V1, 1, CipherMode::Gcm, "gcm", "aes-gcm"),
        (AuthVersion::V2, 2, CipherMode::Ctr, "ctr", "aes-ctr"),
        (AuthVersion::V2, 2, CipherMode::Gcm, "gcm", "aes-gcm"),
    ] {
        let what = format!("aes v{v} {c}");
        let security = ours(aes(version, cipher));

        // Ours → Spark: a wrong secret first (refused, nothing served), then ours.
        let mut server = SparkServer::start(spark, &spark_aes(v, c));
        ours_refused(
            &rt,
            &what,
            &mut server,
            Security::secret("wrong").with_mechanism(aes(version, cipher)),
        );
        ours_to_spark(&rt, &what, &mut server, security.clone(), true);
        check_served_only_after_authentication(&what, &server.finish());

        // Spark → ours.
        spark_to_ours(&rt, spark, &what, security, &spark_aes(v, c), true, layers);
    }
}

#[test]
fn sasl_auth_and_auth_conf_both_ways() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    for (encrypt, layers) in [(false, "none"), (true, "sasl")] {
        let what = format!("sasl encrypt={encrypt}");
        let mechanism = AuthMechanism::Sasl { encrypt };
        let mut server = SparkServer::start(spark, &spark_sasl(encrypt));
        ours_refused(
            &rt,
            &what,
            &mut server,
            Security::secret("wrong").with_mechanism(mechanism),
        );
        ours_to_spark(&rt, &what, &mut server, ours(mechanism), true);
        check_served_only_after_authentication(&what, &server.finish());

        spark_to_ours(
            &rt,
            spark,
            &what,
            ours(mechanism),
            &spark_sasl(encrypt),
            true,
            layers,
        );
    }
}

#[test]
fn sasl_fallback_both_ways() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let gcm = aes(AuthVersion::V2, CipherMode::Gcm);

    // Our AES client with the fallback → Spark's SASL server: Spark refuses the AES challenge,
    // our client retries with SASL on the same connection.
    let what = "our aes client (fallback) → spark sasl server";
    let mut server = SparkServer::start(spark, &spark_sasl(false));
    ours_to_spark(
        &rt,
        what,
        &mut server,
        ours(gcm).with_sasl_fallback(true),
        true,
    );
    let lines = server.finish();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("AUTH_FAILED ") && l.contains("Expected SaslMessage")),
        "{what}: Spark refused no AES challenge: {lines:?}"
    );
    check_served_only_after_authentication(what, &lines);

    // Our SASL client → Spark's AES server (Spark's fallback is on by default).
    let what = "our sasl client → spark aes server (its fallback)";
    let mut server = SparkServer::start(spark, &spark_aes(2, "gcm"));
    ours_to_spark(
        &rt,
        what,
        &mut server,
        ours(AuthMechanism::spark_default()),
        true,
    );
    check_served_only_after_authentication(what, &server.finish());

    // Spark's AES client (fallback on by default) → our SASL-only server: ours refuses the
    // AES challenge with an RpcFailure and keeps the connection; Spark falls back to SASL.
    let what = "spark aes client (its fallback) → our sasl server";
    let (server, _) = spark_to_ours(
        &rt,
        spark,
        what,
        ours(AuthMechanism::spark_default()),
        &spark_aes(2, "gcm"),
        true,
        "none",
    );
    assert_eq!(server.stats().accepted, 1, "{what}: one connection, kept");

    // Spark's SASL client → our AES server with the fallback.
    let what = "spark sasl client → our aes server (fallback)";
    spark_to_ours(
        &rt,
        spark,
        what,
        ours(gcm).with_sasl_fallback(true),
        &spark_sasl(false),
        true,
        "none",
    );
}

#[test]
fn tls_alone_and_under_sasl_and_aes_v2_gcm_both_ways() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let rows = [
        ("tls", Vec::new(), None, false, "tls"),
        (
            "tls + sasl",
            spark_sasl(false),
            Some(AuthMechanism::spark_default()),
            true,
            "tls",
        ),
        (
            "tls + aes v2 gcm",
            spark_aes(2, "gcm"),
            Some(aes(AuthVersion::V2, CipherMode::Gcm)),
            true,
            // Spark's AES cipher under its TLS handler, socket side first.
            "aes-gcm tls",
        ),
    ];
    for (what, auth, mechanism, authenticates, layers) in rows {
        let spark_flags = with(spark_tls(), &auth);
        let security = match mechanism {
            None => Security::tls(our_tls()),
            Some(mechanism) => ours(mechanism).with_tls(our_tls()),
        };
        let mut server = SparkServer::start(spark, &spark_flags);
        if let Some(mechanism) = mechanism {
            // Inside TLS, a wrong secret is refused all the same.
            let wrong = Security::secret("wrong")
                .with_mechanism(mechanism)
                .with_tls(our_tls());
            ours_refused(&rt, what, &mut server, wrong);
        }
        ours_to_spark(&rt, what, &mut server, security.clone(), authenticates);
        let lines = server.finish();
        if authenticates {
            check_served_only_after_authentication(what, &lines);
        }
        spark_to_ours(
            &rt,
            spark,
            what,
            security,
            &spark_flags,
            authenticates,
            layers,
        );
    }
}

#[test]
fn wrong_secrets_and_unauthenticated_spark_clients_get_nothing_from_our_server() {
    let spark = spark_or_skip!();
    let rt = tokio_runtime();
    let gcm = aes(AuthVersion::V2, CipherMode::Gcm);
    let wrong = |mut f: Vec<String>| {
        let at = f.iter().position(|w| w == "--secret").expect("--secret") + 1;
        f[at] = "wrong".into();
        f
    };
    let cases = [
        // Spark's AES client falls back to SASL after the refusal (its default): our
        // AES-only server has closed the connection by then.
        (
            "spark aes v2 gcm client, wrong secret",
            ours(gcm),
            wrong(spark_aes(2, "gcm")),
        ),
        (
            "spark aes v1 ctr client, wrong secret, no fallback",
            ours(AuthMechanism::spark_aes_default()),
            with(wrong(spark_aes(1, "ctr")), &flags(&["--no-sasl-fallback"])),
        ),
        (
            "spark sasl client, wrong secret",
            ours(AuthMechanism::spark_default()),
            wrong(spark_sasl(false)),
        ),
        (
            "spark sasl auth-conf client, wrong secret",
            ours(AuthMechanism::Sasl { encrypt: true }),
            wrong(spark_sasl(true)),
        ),
        // Spark's own SASL and AES servers serve chunk fetches and streams to such a client;
        // ours must not.
        (
            "spark client without authentication → our aes server",
            ours(gcm),
            Vec::new(),
        ),
        (
            "spark client without authentication → our sasl server",
            ours(AuthMechanism::spark_default()),
            Vec::new(),
        ),
    ];
    for (what, security, spark_flags) in cases {
        let (server, handler) = our_server(&rt, security);
        let seen = spark_refused(spark, what, &server, &handler, &spark_flags);
        loud(&format!("{what}: {seen}"));
        assert!(
            server.connections().is_empty(),
            "{what}: a connection was served"
        );
    }
}
