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
//! Needs a JDK (`javac` and `java` from `$JAVA_HOME/bin`, else `PATH`). Without one each test
//! prints a `SKIPPED` line and passes, unless `RPC_REQUIRE_SPARK=1`: then it fails.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use rpc_proto::auth::Secret;
use rpc_proto::sasl::{
    Qop, QopOffer, SaslCipher, SaslClient, SaslError, SaslLayer, SaslMessage, SaslServer,
};

/// The longest any step waits for the JVM.
const WAIT: Duration = Duration::from_secs(60);

/// The default generated secret's shape (64 hex characters): its password has a `\n`.
const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn required() -> bool {
    std::env::var("RPC_REQUIRE_SPARK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let java_home = std::env::var_os("JAVA_HOME").map(|home| PathBuf::from(home).join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    java_home
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

struct Jdk {
    java: PathBuf,
    classes: PathBuf,
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
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/SaslPeer.java");
    let code = std::fs::read(&source).map_err(|e| format!("cannot read SaslPeer.java: {e}"))?;
    let mut hasher = DefaultHasher::new();
    code.hash(&mut hasher);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let classes = tmp.join(format!("sasl-peer-{:016x}", hasher.finish()));
    if !classes.join("SaslPeer.class").is_file() {
        let staging = tmp.join(format!("sasl-peer-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).expect("create the javac output dir");
        let output = Command::new(&javac)
            .arg("-d")
            .arg(&staging)
            .arg(&source)
            .stdin(Stdio::null())
            .output()
            .expect("run javac");
        assert!(
            output.status.success(),
            "javac failed on {}:\n{}{}",
            source.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if std::fs::rename(&staging, &classes).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    Ok(Jdk { java, classes })
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
        let mut child = Command::new(&jdk.java)
            .arg("-cp")
            .arg(&jdk.classes)
            .arg("SaslPeer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        Peer {
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
