//! SASL DIGEST-MD5 against the JDK's own implementation (`javax.security.sasl`), configured as
//! Spark's `SparkSaslClient`/`SparkSaslServer` configure it (`tests/interop/SaslPeer.java`).
//!
//! ```text
//!   rpc_proto::sasl::SaslClient  ◄── hex tokens over stdin/stdout ──►  JDK SaslServer
//!   rpc_proto::sasl::SaslServer  ◄──────────────────────────────────►  JDK SaslClient
//! ```
//!
//! Covered: QOP `auth` and `auth-conf` (3DES, and RC4 when the JDK client is told to pick it),
//! wrap/unwrap both ways over several messages, a wrong secret both ways, Spark's
//! line-broken password (a 64-character secret), QOP mismatches.
//!
//! End to end against Spark 4.3.0's own bootstraps (`tests/interop/SparkSaslPeer.java`:
//! `SaslServerBootstrap`/`SaslClientBootstrap` on a real `TransportServer`/`TransportClient`),
//! over TCP with our frame codec: the handshake in `RpcRequest`/`RpcResponse` frames, then RPCs
//! in clear (`auth`) or through `SaslEncryption`'s framing (`auth-conf`), bodies past one
//! 64 KiB chunk, and a wrong secret.
//!
//! Needs a JDK (`javac` and `java` from `$JAVA_HOME/bin`, else `PATH`), and for the end-to-end
//! tests Spark's jars (`.ci/spark-jars.sh`, at `$SPARK_JARS_CACHE`, default
//! `~/.cache/spark-rpc-rs/spark-jars`). Without them each test prints a `SKIPPED` line and
//! passes, unless `RPC_REQUIRE_SPARK=1`: then it fails.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use std::io::Read;
use std::net::{TcpListener, TcpStream};

use bytes::{Bytes, BytesMut};
use rpc_proto::auth::Secret;
use rpc_proto::sasl::{
    Qop, QopOffer, SaslCipher, SaslClient, SaslError, SaslLayer, SaslMessage, SaslServer,
};
use rpc_proto::{Decoded, Frame, FrameDecoder, RequestId};

use common::{compile_java, find_tool, jar_cache_dir};

/// The longest any step waits for the JVM.
const WAIT: Duration = Duration::from_secs(60);

/// The default generated secret's shape (64 hex characters): its password has a `\n`.
const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn required() -> bool {
    common::spark_required()
}

struct Jdk {
    java: PathBuf,
    classes: PathBuf,
    /// Spark's jars and SparkSaslPeer compiled against them, when the jar cache is there.
    spark: Result<(PathBuf, PathBuf), String>,
}

fn jdk() -> Option<&'static Jdk> {
    static JDK: OnceLock<Result<Jdk, String>> = OnceLock::new();
    let test = thread::current().name().unwrap_or("(unnamed)").to_owned();
    match JDK.get_or_init(locate) {
        Ok(jdk) => Some(jdk),
        Err(why) if required() => {
            panic!("the JDK is required (RPC_REQUIRE_SPARK is set) but {why}")
        }
        Err(why) => {
            let _ = std::io::stderr().write_all(
                format!("\nSKIPPED: sasl jdk test {test}: {why} (set RPC_REQUIRE_SPARK=1 to make this a failure)\n")
                    .as_bytes(),
            );
            None
        }
    }
}

macro_rules! jdk_or_skip {
    () => {
        match jdk() {
            Some(jdk) => jdk,
            None => return,
        }
    };
}

fn locate() -> Result<Jdk, String> {
    let javac = find_tool("javac").ok_or("no javac (a JDK 17+) in $JAVA_HOME/bin or PATH")?;
    let java = find_tool("java").ok_or("no java in $JAVA_HOME/bin or PATH")?;
    let classes = compile_java(&javac, "SaslPeer", None, "");
    let spark = compile_spark_peer(&javac);
    Ok(Jdk {
        java,
        classes,
        spark,
    })
}

/// Compiles SparkSaslPeer.java against the jar cache: (jars, classes), or why not.
fn compile_spark_peer(javac: &Path) -> Result<(PathBuf, PathBuf), String> {
    let jars = jar_cache_dir()?;
    let marker = std::fs::read_to_string(jars.join("spark-jars.complete"))
        .map_err(|_| format!("no Spark jars at {}; run .ci/spark-jars.sh", jars.display()))?;
    let classes = compile_java(javac, "SparkSaslPeer", Some(&jars), &marker);
    Ok((jars, classes))
}

/// Spark's jars and the compiled SparkSaslPeer, or `None` after a loud skip message.
fn spark() -> Option<(&'static Jdk, &'static Path, &'static Path)> {
    let jdk = jdk()?;
    match &jdk.spark {
        Ok((jars, classes)) => Some((jdk, jars, classes)),
        Err(why) if required() => panic!("Spark is required (RPC_REQUIRE_SPARK is set) but {why}"),
        Err(why) => {
            let test = thread::current().name().unwrap_or("(unnamed)").to_owned();
            let _ = std::io::stderr().write_all(
                format!("\nSKIPPED: spark sasl test {test}: {why} (set RPC_REQUIRE_SPARK=1 to make this a failure)\n")
                    .as_bytes(),
            );
            None
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".into();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the peer"))
        .collect()
}

/// A running SaslPeer, killed on drop.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Peer {
    fn spawn(jdk: &Jdk, args: &[&str]) -> Self {
        Self::spawn_class(jdk, jdk.classes.as_os_str().to_owned(), "SaslPeer", args)
    }

    fn spawn_spark(jdk: &Jdk, jars: &Path, classes: &Path, args: &[&str]) -> Self {
        let classpath =
            std::env::join_paths([classes.to_path_buf(), jars.join("*")]).expect("classpath");
        Self::spawn_class(jdk, classpath, "SparkSaslPeer", args)
    }

    fn spawn_class(jdk: &Jdk, classpath: std::ffi::OsString, class: &str, args: &[&str]) -> Self {
        let mut child = Command::new(&jdk.java)
            .arg("-cp")
            .arg(classpath)
            .arg(class)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start java");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, command: &str, bytes: &[u8]) {
        writeln!(self.stdin, "{command} {}", hex(bytes)).expect("write to the peer");
        self.stdin.flush().expect("flush");
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from the JDK peer within the time limit")
    }

    /// The next line, which must start with `word`; its hex argument.
    fn expect(&mut self, word: &str) -> Vec<u8> {
        let line = self.line();
        let (w, rest) = line.split_once(' ').unwrap_or((&line, ""));
        assert_eq!(w, word, "unexpected line from the JDK peer: {line}");
        unhex(rest.trim())
    }

    fn wrap(&mut self, plain: &[u8]) -> Vec<u8> {
        self.send("WRAP", plain);
        self.expect("WRAPPED")
    }

    fn unwrap(&mut self, wrapped: &[u8]) -> Vec<u8> {
        self.send("UNWRAP", wrapped);
        self.expect("PLAIN")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random(seed: u8) -> [u8; 30] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7))
}

/// Rust client against the JDK server: runs the handshake; the client on success.
fn rust_client(
    peer: &mut Peer,
    secret: &str,
    qop: Qop,
) -> Result<(SaslClient, Vec<String>), SaslError> {
    let mut client = SaslClient::new("app-1", &Secret::new(secret), qop, random(1));
    let mut transcript = Vec::new();
    let mut request = client.first_message();
    loop {
        let token = SaslMessage::decode(&request)
            .expect("our message decodes")
            .token;
        transcript.push(format!("C: {}", String::from_utf8_lossy(&token)));
        peer.send("TOKEN", &token);
        let line = peer.line();
        let reply = match line.split_once(' ') {
            Some(("TOKEN", hex)) => unhex(hex.trim()),
            _ => panic!("JDK server failed: {line}"),
        };
        transcript.push(format!("S: {}", String::from_utf8_lossy(&reply)));
        match client.handle_response(&reply)? {
            Some(next) => request = next,
            None => break,
        }
    }
    let complete = peer.line();
    assert_eq!(complete, format!("COMPLETE {}", client.qop().as_str()));
    Ok((client, transcript))
}

/// JDK client against the Rust server: the server's result and the transcript.
fn rust_server(
    peer: &mut Peer,
    secret: &str,
    offer: QopOffer,
) -> (SaslServer, Result<(), SaslError>, Vec<String>) {
    let mut server = SaslServer::new("app-1", &Secret::new(secret), offer, random(2));
    let mut transcript = Vec::new();
    let mut line = peer.line();
    loop {
        let token = match line.split_once(' ') {
            Some(("TOKEN", hex)) => unhex(hex.trim()),
            Some(("COMPLETE", _)) => break,
            _ => panic!("JDK client failed: {line}"),
        };
        transcript.push(format!("C: {}", String::from_utf8_lossy(&token)));
        let reply = match server.handle_message(&token) {
            Ok(reply) => reply,
            Err(e) => return (server, Err(e), transcript),
        };
        transcript.push(format!("S: {}", String::from_utf8_lossy(&reply)));
        peer.send("TOKEN", &reply);
        line = peer.line();
    }
    (server, Ok(()), transcript)
}

fn print(transcript: &[String]) {
    for line in transcript {
        eprintln!("{line}");
    }
}

/// Messages of assorted lengths (block-aligned and not) through the layer both ways.
fn exchange(ours: &mut SaslLayer, peer: &mut Peer) {
    for len in [1usize, 5, 6, 7, 8, 13, 64, 1000, 4096] {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        // Ours to the JDK: raw wrap, and Spark's framing taken apart by hand.
        let wrapped = ours.wrap(&plain);
        assert_eq!(
            peer.unwrap(&wrapped),
            plain,
            "JDK unwrap of our {len} bytes"
        );
        let mut framed = BytesMut::new();
        ours.encrypt(&plain, &mut framed);
        let frame_len = i64::from_be_bytes(framed[..8].try_into().unwrap());
        assert_eq!(frame_len as usize, framed.len());
        assert_eq!(peer.unwrap(&framed[8..]), plain);
        // The JDK's to ours: raw, and framed as Spark frames it, fed in two pieces.
        let theirs = peer.wrap(&plain);
        assert_eq!(ours.unwrap(&theirs).expect("unwrap the JDK's"), plain);
        let theirs = peer.wrap(&plain);
        let mut wire = ((theirs.len() + 8) as i64).to_be_bytes().to_vec();
        wire.extend_from_slice(&theirs);
        let mut out = BytesMut::new();
        let cut = wire.len() / 3;
        ours.decrypt(&wire[..cut], &mut out).unwrap();
        ours.decrypt(&wire[cut..], &mut out).unwrap();
        assert_eq!(&out[..], &plain[..]);
    }
    // A replayed JDK message is refused (the chained cipher state already garbles it), and
    // the layer stays failed.
    let theirs = peer.wrap(b"once");
    assert_eq!(ours.unwrap(&theirs).unwrap(), b"once");
    assert!(ours.unwrap(&theirs).is_err());
    let next = peer.wrap(b"next");
    assert_eq!(ours.unwrap(&next), Err(SaslError::LayerFailed));
}

#[test]
fn rust_client_authenticates_to_jdk_server() {
    let jdk = jdk_or_skip!();
    for secret in ["s3cret", LONG_SECRET] {
        for server_qop in ["auth", "auth-conf,auth"] {
            let mut peer = Peer::spawn(jdk, &["server", server_qop, secret]);
            let (client, transcript) = rust_client(&mut peer, secret, Qop::Auth)
                .unwrap_or_else(|e| panic!("secret {secret:?}, server {server_qop}: {e}"));
            print(&transcript);
            assert!(client.is_complete());
            assert!(client.into_layer().is_none());
        }
    }
}

#[test]
fn rust_client_negotiates_3des_with_jdk_server() {
    let jdk = jdk_or_skip!();
    for (secret, server_qop) in [(LONG_SECRET, "auth-conf,auth"), ("s3cret", "auth-conf")] {
        let mut peer = Peer::spawn(jdk, &["server", server_qop, secret]);
        let (client, transcript) = rust_client(&mut peer, secret, Qop::AuthConf).unwrap();
        print(&transcript);
        let mut layer = client.into_layer().expect("auth-conf gives a layer");
        assert_eq!(layer.cipher(), SaslCipher::TripleDes);
        exchange(&mut layer, &mut peer);
    }
}

#[test]
fn jdk_client_authenticates_to_rust_server() {
    let jdk = jdk_or_skip!();
    for secret in ["s3cret", LONG_SECRET] {
        for (client_qop, offer) in [("auth", QopOffer::AuthConfOrAuth), ("auth", QopOffer::Auth)] {
            let mut peer = Peer::spawn(jdk, &["client", client_qop, secret]);
            let (server, result, transcript) = rust_server(&mut peer, secret, offer);
            print(&transcript);
            result.unwrap();
            assert_eq!(server.qop(), Some(Qop::Auth));
            assert!(server.into_layer().is_none());
        }
    }
}

#[test]
fn jdk_client_negotiates_auth_conf_with_rust_server() {
    let jdk = jdk_or_skip!();
    for (cipher, expected) in [
        (None, SaslCipher::TripleDes),
        (Some("rc4"), SaslCipher::Rc4),
    ] {
        for offer in [QopOffer::AuthConf, QopOffer::AuthConfOrAuth] {
            let mut args = vec!["client", "auth-conf", LONG_SECRET];
            if let Some(c) = cipher {
                args.extend(["sparkSaslUser", c]);
            }
            let mut peer = Peer::spawn(jdk, &args);
            let (server, result, transcript) = rust_server(&mut peer, LONG_SECRET, offer);
            print(&transcript);
            result.unwrap();
            assert_eq!(server.qop(), Some(Qop::AuthConf));
            let mut layer = server.into_layer().expect("auth-conf gives a layer");
            assert_eq!(layer.cipher(), expected);
            exchange(&mut layer, &mut peer);
        }
    }
}

#[test]
fn wrong_secret_fails_both_ways() {
    let jdk = jdk_or_skip!();
    // Rust client, JDK server: the JDK refuses our response.
    let mut peer = Peer::spawn(jdk, &["server", "auth-conf,auth", LONG_SECRET]);
    let mut client = SaslClient::new("app-1", &Secret::new("wrong"), Qop::Auth, random(3));
    peer.send("TOKEN", &[]);
    let challenge = peer.expect("TOKEN");
    let request = client.handle_response(&challenge).unwrap().unwrap();
    peer.send("TOKEN", &SaslMessage::decode(&request).unwrap().token);
    let line = peer.line();
    assert!(
        line.starts_with("ERROR javax.security.sasl.SaslException")
            && line.contains("Mismatched response"),
        "{line}"
    );
    assert!(!client.is_complete());

    // JDK client, Rust server: we refuse its response.
    let mut peer = Peer::spawn(jdk, &["client", "auth", "wrong"]);
    let (server, result, _) = rust_server(&mut peer, LONG_SECRET, QopOffer::AuthConfOrAuth);
    assert_eq!(result, Err(SaslError::AuthenticationFailed));
    assert!(!server.is_complete());

    // A secret differing only after the line break (character 58 of 64) fails too.
    let mut other = LONG_SECRET.to_owned();
    other.replace_range(60..61, "X");
    let mut peer = Peer::spawn(jdk, &["client", "auth", &other]);
    let (_, result, _) = rust_server(&mut peer, LONG_SECRET, QopOffer::AuthConfOrAuth);
    assert_eq!(result, Err(SaslError::AuthenticationFailed));
}

#[test]
fn rust_server_refuses_what_it_does_not_offer() {
    let jdk = jdk_or_skip!();
    // A JDK client that insists on auth-conf cannot use an auth-only server.
    let mut peer = Peer::spawn(jdk, &["client", "auth-conf", "s3cret"]);
    let mut server = SaslServer::new("app-1", &Secret::new("s3cret"), QopOffer::Auth, random(4));
    assert_eq!(peer.expect("TOKEN"), b"");
    peer.send("TOKEN", &server.handle_message(&[]).unwrap());
    let line = peer.line();
    assert!(
        line.starts_with("ERROR") && line.contains("No common protection layer"),
        "{line}"
    );

    // A Rust client that insists on auth-conf cannot use a JDK auth-only server.
    let mut peer = Peer::spawn(jdk, &["server", "auth", "s3cret"]);
    assert_eq!(
        rust_client(&mut peer, "s3cret", Qop::AuthConf).err(),
        Some(SaslError::NoCommonQop)
    );
}

/// Prints the transcripts that `rpc-proto`'s unit tests pin (`sasl/tests.rs`): the JDK's side
/// of a handshake whose Rust side has fixed randomness, and JDK-wrapped messages.
/// `cargo test -p rpc-tests --test sasl_jdk record_vectors -- --ignored --nocapture`
#[test]
#[ignore = "prints vectors for rpc-proto's tests"]
fn record_vectors() {
    let jdk = jdk_or_skip!();
    let mut peer = Peer::spawn(jdk, &["server", "auth-conf,auth", LONG_SECRET]);
    let (client, transcript) = rust_client(&mut peer, LONG_SECRET, Qop::AuthConf).unwrap();
    eprintln!("== rust client (cnonce random(1)) vs jdk server, auth-conf");
    print(&transcript);
    let mut layer = client.into_layer().unwrap();
    let ours = layer.wrap(b"hello from the client");
    assert_eq!(peer.unwrap(&ours), b"hello from the client");
    eprintln!("client wrap #0: {}", hex(&ours));
    eprintln!(
        "server wrap #0: {}",
        hex(&peer.wrap(b"hello from the jdk server"))
    );
    eprintln!("server wrap #1: {}", hex(&peer.wrap(b"0123456789abcdef")));

    let mut peer = Peer::spawn(jdk, &["client", "auth-conf", LONG_SECRET]);
    let (server, result, transcript) =
        rust_server(&mut peer, LONG_SECRET, QopOffer::AuthConfOrAuth);
    result.unwrap();
    eprintln!("== jdk client vs rust server (nonce random(2)), auth-conf");
    print(&transcript);
    let mut layer = server.into_layer().unwrap();
    let ours = layer.wrap(b"hello from the server");
    assert_eq!(peer.unwrap(&ours), b"hello from the server");
    eprintln!("server wrap #0: {}", hex(&ours));
    eprintln!(
        "client wrap #0: {}",
        hex(&peer.wrap(b"hello from the jdk client"))
    );

    let mut peer = Peer::spawn(
        jdk,
        &["client", "auth-conf", LONG_SECRET, "sparkSaslUser", "rc4"],
    );
    let (server, result, transcript) = rust_server(&mut peer, LONG_SECRET, QopOffer::AuthConf);
    result.unwrap();
    eprintln!("== jdk client (rc4) vs rust server (nonce random(2)), auth-conf only");
    print(&transcript);
    let mut layer = server.into_layer().unwrap();
    let ours = layer.wrap(b"hello from the server");
    assert_eq!(peer.unwrap(&ours), b"hello from the server");
    eprintln!("server wrap #0: {}", hex(&ours));
    eprintln!(
        "client wrap #0: {}",
        hex(&peer.wrap(b"hello from the jdk client"))
    );
}

// -------------------------------------------------------------------------------------------
// End to end against Spark's bootstraps

/// One TCP connection carrying Spark frames, in clear or through a SASL layer.
struct Wire {
    stream: TcpStream,
    layer: Option<SaslLayer>,
    /// Decrypted (or clear) bytes not yet decoded.
    plain: BytesMut,
    decoder: FrameDecoder,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            layer: None,
            plain: BytesMut::new(),
            decoder: FrameDecoder::new(rpc_proto::SPARK_MAX_FRAME_LENGTH),
        }
    }

    /// Everything after this goes through `layer`; nothing may be buffered in clear.
    fn secure(&mut self, layer: SaslLayer) {
        assert!(
            self.plain.is_empty(),
            "clear bytes buffered past the handshake"
        );
        self.layer = Some(layer);
    }

    fn send(&mut self, frame: &Frame) {
        let bytes = frame.to_bytes();
        match &mut self.layer {
            Some(layer) => {
                let mut wire = BytesMut::new();
                layer.encrypt(&bytes, &mut wire);
                self.stream.write_all(&wire).expect("send");
            }
            None => self.stream.write_all(&bytes).expect("send"),
        }
    }

    /// The next frame, or `None` when the peer closed the connection.
    fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.decode(&mut self.plain).expect("a valid frame") {
                Some(Decoded::Frame(frame)) => return Some(frame),
                Some(Decoded::Body { .. }) => panic!("no out-of-frame bodies here"),
                None => {}
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .expect("bytes within the time limit");
            if n == 0 {
                return None;
            }
            match &mut self.layer {
                Some(layer) => layer
                    .decrypt(&chunk[..n], &mut self.plain)
                    .expect("decrypt Spark's frames"),
                None => self.plain.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn rpc_body(frame: Option<Frame>, id: u64) -> Result<Bytes, String> {
    match frame {
        Some(Frame::RpcResponse { request, body }) if request == RequestId(id) => Ok(body),
        Some(Frame::RpcFailure { request, error }) if request == RequestId(id) => Err(error),
        other => panic!("expected the reply to request {id}, got {other:?}"),
    }
}

/// A body past one 64 KiB SASL chunk, deterministic.
fn big_body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

/// Our client's handshake against Spark's server over `wire`; the client when it completed.
fn handshake_with_spark(wire: &mut Wire, secret: &str, qop: Qop) -> Result<SaslClient, String> {
    let mut client = SaslClient::new("app-1", &Secret::new(secret), qop, random(7));
    let mut request = client.first_message();
    for id in 1.. {
        wire.send(&Frame::RpcRequest {
            request: RequestId(id),
            body: request.into(),
        });
        let token = rpc_body(wire.recv(), id)?;
        match client.handle_response(&token).map_err(|e| e.to_string())? {
            Some(next) => request = next,
            None => break,
        }
    }
    Ok(client)
}

/// The port a SparkSaslPeer server printed.
fn port(peer: &mut Peer) -> u16 {
    let line = peer.line();
    line.strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected PORT, got {line}"))
}

#[test]
fn rust_client_talks_to_spark_sasl_server() {
    let Some((jdk, jars, classes)) = spark() else {
        return;
    };
    // Spark's own encodePassword: a 64-character secret (one line break), a 130-character
    // one (two) and a non-ASCII one.
    let very_long = "s3cr3t-".repeat(19)[..130].to_owned();
    for (secret, qop, always_encrypt) in [
        (LONG_SECRET, Qop::Auth, "false"),
        (very_long.as_str(), Qop::Auth, "false"),
        ("pässwörd ✓", Qop::Auth, "false"),
        (LONG_SECRET, Qop::AuthConf, "false"),
        ("s3cret", Qop::AuthConf, "true"),
    ] {
        let mut peer = Peer::spawn_spark(jdk, jars, classes, &["server", secret, always_encrypt]);
        let stream = TcpStream::connect(("127.0.0.1", port(&mut peer))).expect("connect");
        let mut wire = Wire::new(stream);
        let client = handshake_with_spark(&mut wire, secret, qop)
            .unwrap_or_else(|e| panic!("{qop:?}, alwaysEncrypt {always_encrypt}: {e}"));
        assert!(client.is_complete());
        match client.into_layer() {
            Some(layer) => {
                assert_eq!(qop, Qop::AuthConf);
                assert_eq!(layer.cipher(), SaslCipher::TripleDes);
                wire.secure(layer);
            }
            None => assert_eq!(qop, Qop::Auth),
        }
        // RPCs after the handshake, small and past one SASL chunk, each echoed by Spark.
        for (id, body) in [
            (10, b"ping".to_vec()),
            (11, big_body()),
            (12, b"pong".to_vec()),
        ] {
            wire.send(&Frame::RpcRequest {
                request: RequestId(id),
                body: body.clone().into(),
            });
            let reply = rpc_body(wire.recv(), id).expect("echo");
            assert_eq!(&reply[..5], b"echo:");
            assert!(reply[5..] == body[..], "echo of request {id} differs");
        }
    }
}

#[test]
fn spark_sasl_server_refuses_a_wrong_secret_and_an_unencrypted_client() {
    let Some((jdk, jars, classes)) = spark() else {
        return;
    };
    let mut peer = Peer::spawn_spark(jdk, jars, classes, &["server", LONG_SECRET, "false"]);
    let stream = TcpStream::connect(("127.0.0.1", port(&mut peer))).expect("connect");
    let mut wire = Wire::new(stream);
    let error = handshake_with_spark(&mut wire, "wrong", Qop::Auth).expect_err("refused");
    assert!(error.contains("Mismatched response"), "{error}");

    // serverAlwaysEncrypt: an auth-only client finds no common QOP in the challenge.
    let mut peer = Peer::spawn_spark(jdk, jars, classes, &["server", "s3cret", "true"]);
    let stream = TcpStream::connect(("127.0.0.1", port(&mut peer))).expect("connect");
    let mut wire = Wire::new(stream);
    let error = handshake_with_spark(&mut wire, "s3cret", Qop::Auth).expect_err("refused");
    assert_eq!(error, SaslError::NoCommonQop.to_string());
}

/// Serves one Spark client connection with our SASL server, then echoes RPCs. Returns the
/// server's verdict on the handshake.
fn serve_spark_client(
    listener: &TcpListener,
    secret: &str,
    offer: QopOffer,
) -> Result<(), SaslError> {
    let (stream, _) = listener.accept().expect("Spark connects");
    let mut wire = Wire::new(stream);
    // Some while the handshake runs; None once it is over.
    let mut handshake: Option<Option<SaslServer>> = Some(None);
    while let Some(frame) = wire.recv() {
        let Frame::RpcRequest { request, body } = frame else {
            panic!("expected an RpcRequest, got {frame:?}");
        };
        let Some(slot) = handshake.as_mut() else {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&body);
            wire.send(&Frame::RpcResponse {
                request,
                body: reply.into(),
            });
            continue;
        };
        // The first message names the app id the secret is looked up by.
        let message = SaslMessage::decode(&body).expect("a SaslMessage");
        let server = slot.get_or_insert_with(|| {
            SaslServer::new(&message.app_id, &Secret::new(secret), offer, random(8))
        });
        assert_eq!(server.app_id(), "app-1");
        match server.handle_message(&message.token) {
            Ok(token) => wire.send(&Frame::RpcResponse {
                request,
                body: token.into(),
            }),
            Err(e) => {
                // Spark answers with an RpcFailure and keeps the connection.
                wire.send(&Frame::RpcFailure {
                    request,
                    error: e.to_string(),
                });
                return Err(e);
            }
        }
        if server.is_complete() {
            // The last response went out in clear; everything after is wrapped.
            let server = handshake.take().flatten().expect("a server");
            if let Some(layer) = server.into_layer() {
                wire.secure(layer);
            }
        }
    }
    Ok(())
}

#[test]
fn spark_client_talks_to_rust_sasl_server() {
    let Some((jdk, jars, classes)) = spark() else {
        return;
    };
    for (secret, encrypt, offer) in [
        (LONG_SECRET, "false", QopOffer::AuthConfOrAuth),
        (LONG_SECRET, "true", QopOffer::AuthConfOrAuth),
        ("s3cret", "true", QopOffer::AuthConf),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port().to_string();
        let mut peer = Peer::spawn_spark(jdk, jars, classes, &["client", &port, secret, encrypt]);
        let server = thread::spawn(move || serve_spark_client(&listener, secret, offer));
        assert_eq!(peer.line(), "CONNECTED", "encrypt {encrypt}");
        for body in [b"hello".to_vec(), big_body()] {
            peer.send("rpc", &body);
            let reply = peer.expect("OK");
            assert_eq!(&reply[..5], b"echo:");
            assert!(reply[5..] == body[..]);
        }
        drop(peer);
        server.join().expect("server thread").expect("handshake");
    }
}

#[test]
fn spark_client_with_a_wrong_secret_is_refused() {
    let Some((jdk, jars, classes)) = spark() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port().to_string();
    let mut peer = Peer::spawn_spark(jdk, jars, classes, &["client", &port, "wrong", "false"]);
    let server =
        thread::spawn(move || serve_spark_client(&listener, LONG_SECRET, QopOffer::AuthConfOrAuth));
    let line = peer.line();
    assert!(
        line.starts_with("FAILED") && line.contains("authentication failed"),
        "{line}"
    );
    assert_eq!(server.join().unwrap(), Err(SaslError::AuthenticationFailed));
}
