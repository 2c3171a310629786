//! TLS over an in-memory duplex pipe, on a one-future executor that fails a test the moment
//! its future is pending with nothing left to wake it: every `Pending` must have left a
//! waker with the pipe, so a lost wakeup or a deadlock fails at once instead of hanging.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Wake, Waker};

use futures_lite::future::zip;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{AlertDescription, CertificateError};

// The test executor and pipe are plain std state, not a loom model.
use super::*;
use crate::sync::unmodeled::atomic::AtomicBool;
use crate::sync::unmodeled::{Arc, Mutex};

// ---- the pipe --------------------------------------------------------------------------

/// One direction: bytes written and not read yet, and who waits for them.
#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    /// The writer shut down or went away: the reader sees end of file once it has the bytes.
    write_closed: bool,
    /// The reader went away: writes fail.
    read_closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// One end of a duplex pipe: reads and writes move at most `piece` bytes, and at most
/// `capacity` bytes wait in each direction.
struct End {
    rx: Arc<Mutex<Pipe>>,
    tx: Arc<Mutex<Pipe>>,
    piece: usize,
    capacity: usize,
}

fn pair(piece: usize, capacity: usize) -> (End, End) {
    let (a, b) = (Arc::<Mutex<Pipe>>::default(), Arc::<Mutex<Pipe>>::default());
    let end = |rx: &Arc<Mutex<Pipe>>, tx: &Arc<Mutex<Pipe>>| End {
        rx: rx.clone(),
        tx: tx.clone(),
        piece,
        capacity,
    };
    (end(&a, &b), end(&b, &a))
}

/// Watches what one end sent and the other has not read yet.
#[derive(Clone)]
struct Probe(Arc<Mutex<Pipe>>);

impl Probe {
    fn queued(&self) -> usize {
        self.0.lock().unwrap().bytes.len()
    }

    fn closed(&self) -> bool {
        self.0.lock().unwrap().write_closed
    }
}

impl End {
    /// What this end sends.
    fn probe(&self) -> Probe {
        Probe(self.tx.clone())
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

impl AsyncStream for End {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut pipe = self.rx.lock().unwrap();
        if pipe.bytes.is_empty() {
            if pipe.write_closed {
                return Poll::Ready(Ok(0));
            }
            pipe.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(self.piece).min(pipe.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.bytes.drain(..n)) {
            *slot = byte;
        }
        wake(&mut pipe.writer);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = self.tx.lock().unwrap();
        if pipe.read_closed || pipe.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = self.capacity - pipe.bytes.len();
        if room == 0 {
            pipe.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut left = room.min(self.piece);
        let mut written = 0;
        for buf in bufs {
            let n = buf.len().min(left);
            pipe.bytes.extend(&buf[..n]);
            written += n;
            left -= n;
            if left == 0 {
                break;
            }
        }
        wake(&mut pipe.reader);
        Poll::Ready(Ok(written))
    }

    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pipe = self.tx.lock().unwrap();
        pipe.write_closed = true;
        wake(&mut pipe.reader);
        Poll::Ready(Ok(()))
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 2)))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
    }
}

impl Drop for End {
    fn drop(&mut self) {
        let mut tx = self.tx.lock().unwrap();
        tx.write_closed = true;
        wake(&mut tx.reader);
        drop(tx);
        let mut rx = self.rx.lock().unwrap();
        rx.read_closed = true;
        wake(&mut rx.writer);
    }
}

// ---- the executor ----------------------------------------------------------------------

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

/// Polls `future` to the end; panics as soon as it is pending and nothing woke it during
/// that poll (everything is in memory on this thread, so nothing else ever could).
fn run<F: Future>(future: F) -> F::Output {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    for _ in 0..10_000_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        assert!(
            flag.0.swap(false, SeqCst),
            "stalled: pending with nothing left to wake it (a lost wakeup or a deadlock)"
        );
    }
    panic!("no end after ten million polls");
}

/// One poll with a waker that records whether it was woken.
fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> (Poll<T>, Arc<Flag>) {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let poll = f(&mut Context::from_waker(&waker));
    (poll, flag)
}

// ---- stream helpers --------------------------------------------------------------------

async fn write_all(stream: &mut dyn AsyncStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| stream.poll_write_vectored(cx, &[IoSlice::new(data)])).await?;
        assert!(n > 0 && n <= data.len());
        data = &data[n..];
    }
    Ok(())
}

async fn flush(stream: &mut dyn AsyncStream) -> io::Result<()> {
    poll_fn(|cx| stream.poll_flush(cx)).await
}

async fn shutdown(stream: &mut dyn AsyncStream) -> io::Result<()> {
    poll_fn(|cx| stream.poll_shutdown(cx)).await
}

/// Reads `len` bytes with `poll_read_buf`, asking for `max` at a time, and checks that no
/// read hands out more than asked.
async fn read_exact(stream: &mut dyn AsyncStream, len: usize, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    while buf.len() < len {
        let before = buf.len();
        let want = max.min(len - buf.len());
        let n = poll_fn(|cx| stream.poll_read_buf(cx, &mut buf, want)).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        assert!(n <= want, "read {n} bytes when asked for at most {want}");
        assert_eq!(buf.len(), before + n);
    }
    Ok(buf.to_vec())
}

/// Reads with `poll_read` until the end.
async fn read_to_end(stream: &mut dyn AsyncStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0; 1000];
    loop {
        match poll_fn(|cx| stream.poll_read(cx, &mut buf)).await? {
            0 => return Ok(out),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

// ---- certificates ----------------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate chain and its key, PEM.
struct Identity {
    chain: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, name: &str) -> Identity {
        self.issue_with(name, |_| {})
    }

    fn issue_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Identity {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Identity {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn self_signed(name: &str) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Identity {
        chain: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn with_identity(config: TlsConfig, identity: &Identity) -> TlsConfig {
    config
        .with_identity_pem(identity.chain.as_bytes(), identity.key.as_bytes())
        .unwrap()
}

fn server_config(identity: &Identity) -> TlsConfig {
    with_identity(TlsConfig::new(), identity)
}

fn trusting(ca: &Ca) -> TlsConfig {
    TlsConfig::new()
        .with_trust_pem(ca.pem().as_bytes())
        .unwrap()
}

type Handshakes = (Result<TlsStream, TlsError>, Result<TlsStream, TlsError>);

/// Runs both handshakes over a fresh pipe.
fn handshakes(client: &TlsConfig, server: &TlsConfig, piece: usize, capacity: usize) -> Handshakes {
    let (c, s) = pair(piece, capacity);
    run(zip(
        connect(Box::new(c), client),
        accept(Box::new(s), server),
    ))
}

fn established(client: &TlsConfig, server: &TlsConfig) -> (TlsStream, TlsStream) {
    match handshakes(client, server, 1 << 20, 1 << 20) {
        (Ok(c), Ok(s)) => (c, s),
        (c, s) => panic!(
            "handshake failed: client {:?}, server {:?}",
            c.err(),
            s.err()
        ),
    }
}

/// A CA, a server certificate for `server.test` from it, and a client trusting the CA.
fn trusted_setup() -> (TlsConfig, TlsConfig) {
    let ca = Ca::new("test ca");
    (trusting(&ca), server_config(&ca.issue("server.test")))
}

/// Sends `data` from `from` and reads it at `to`, `max` bytes a read, concurrently.
fn transfer(from: &mut TlsStream, to: &mut TlsStream, data: &[u8], max: usize) {
    let (sent, received) = run(zip(
        async {
            write_all(from, data).await?;
            flush(from).await
        },
        read_exact(to, data.len(), max),
    ));
    sent.unwrap();
    assert!(received.unwrap() == data, "the bytes arrived changed");
}

/// The name a server received as SNI.
fn sni(server: &TlsStream) -> Option<&str> {
    match &server.conn {
        Connection::Server(conn) => conn.server_name(),
        Connection::Client(_) => panic!("not a server"),
    }
}

fn handshake_error(result: Result<TlsStream, TlsError>) -> TlsError {
    result.expect_err("the handshake should have failed")
}

// ---- data ------------------------------------------------------------------------------

#[test]
fn data_flows_both_ways_small_large_and_in_many_writes_on_both_versions() {
    let (client, server) = trusted_setup();
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let client = client.clone().with_protocol_versions(&[version]).unwrap();
        let (mut c, mut s) = established(&client, &server);
        assert_eq!(c.protocol_version(), Some(version));
        assert_eq!(s.protocol_version(), Some(version));
        assert!(c.is_client() && !s.is_client());

        transfer(&mut c, &mut s, b"ping", 64 * 1024);
        transfer(&mut s, &mut c, b"pong", 64 * 1024);
        let large = pattern(3 << 19, 7); // 1.5 MiB
        transfer(&mut s, &mut c, &large, 64 * 1024);
        transfer(&mut c, &mut s, &large, 1 << 20);

        // Many small writes, each accepted on its own, then one flush.
        let (sent, received) = run(zip(
            async {
                for i in 0..2000u32 {
                    write_all(&mut c, &i.to_be_bytes()).await?;
                }
                flush(&mut c).await
            },
            read_exact(&mut s, 8000, 8 * 1024),
        ));
        sent.unwrap();
        let expected: Vec<u8> = (0..2000u32).flat_map(u32::to_be_bytes).collect();
        assert!(received.unwrap() == expected);
    }
}

#[test]
fn handshake_and_data_survive_every_split_of_the_bytes() {
    let (client, server) = trusted_setup();
    let data = pattern(5000, 3);
    let pieces = (1..=48).chain([100, 1000, 5000, 17_000]);
    for piece in pieces {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let client = client.clone().with_protocol_versions(&[version]).unwrap();
            // A pipe that holds little: the writer waits for the reader all along.
            let (c, s) = handshakes(&client, &server, piece, piece * 3);
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            transfer(&mut c, &mut s, &data, 1 + piece % 13);
            transfer(&mut s, &mut c, &data, 4096);
        }
    }
}

#[test]
fn bytes_sent_right_after_the_handshake_are_not_lost() {
    let (client, server) = trusted_setup();
    // TLS 1.3: the client finishes first; its first bytes come with its Finished.
    let (c, s) = pair(1 << 20, 1 << 20);
    let to_server = c.probe();
    let (c, s) = run(zip(
        async {
            let mut c = connect(Box::new(c), &client).await.unwrap();
            write_all(&mut c, b"right away").await.unwrap();
            flush(&mut c).await.unwrap();
            c
        },
        accept(Box::new(s), &server),
    ));
    let mut s = s.unwrap();
    assert_eq!(s.protocol_version(), Some(TlsVersion::Tls13));
    assert_eq!(
        to_server.queued(),
        0,
        "the server read the data with its handshake"
    );
    assert_eq!(run(read_exact(&mut s, 10, 100)).unwrap(), b"right away");
    drop(c);

    // TLS 1.2: the server finishes last; its first bytes come with its Finished.
    let client = client.with_protocol_versions(&[TlsVersion::Tls12]).unwrap();
    let (c, s) = pair(1 << 20, 1 << 20);
    let to_client = s.probe();
    let (c, _s) = run(zip(connect(Box::new(c), &client), async {
        let mut s = accept(Box::new(s), &server).await.unwrap();
        write_all(&mut s, b"right away").await.unwrap();
        flush(&mut s).await.unwrap();
        s
    }));
    let mut c = c.unwrap();
    assert_eq!(c.protocol_version(), Some(TlsVersion::Tls12));
    assert_eq!(
        to_client.queued(),
        0,
        "the client read the data with its handshake"
    );
    assert_eq!(run(read_exact(&mut c, 10, 3)).unwrap(), b"right away");
}

#[test]
fn a_key_update_is_answered_by_the_reading_side() {
    let (client, server) = trusted_setup();
    let (mut c, mut s) = established(&client, &server);
    // The client asks for new keys both ways (TLS 1.3 KeyUpdate, update_requested); the
    // server answers from its read path, and data keeps flowing both ways.
    c.conn.refresh_traffic_keys().unwrap();
    let data = pattern(100_000, 9);
    transfer(&mut c, &mut s, &data, 1 << 16);
    transfer(&mut s, &mut c, &data, 1 << 16);
    s.conn.refresh_traffic_keys().unwrap();
    transfer(&mut s, &mut c, &data, 1 << 16);
    transfer(&mut c, &mut s, &data, 1 << 16);
}

#[test]
fn read_buf_hands_out_at_most_max_and_keeps_the_rest() {
    let (client, server) = trusted_setup();
    let (mut c, mut s) = established(&client, &server);
    let data = pattern(20_000, 1);
    run(async {
        write_all(&mut s, &data).await?;
        flush(&mut s).await
    })
    .unwrap();
    let mut buf = BytesMut::from(&b"kept"[..]);
    let mut got = 0;
    while got < data.len() {
        let n = run(poll_fn(|cx| c.poll_read_buf(cx, &mut buf, 7))).unwrap();
        assert!((1..=7).contains(&n));
        got += n;
    }
    assert_eq!(&buf[..4], b"kept");
    assert!(buf[4..] == data[..]);
}

#[test]
fn accepted_bytes_reach_the_peer_only_once_flushed() {
    let (client, server) = trusted_setup();
    let (c, s) = pair(1 << 20, 1 << 20);
    let to_server = c.probe();
    let (c, s) = run(zip(
        connect(Box::new(c), &client),
        accept(Box::new(s), &server),
    ));
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert_eq!(to_server.queued(), 0);

    let (written, _) = poll_once(|cx| c.poll_write_vectored(cx, &[IoSlice::new(b"hello")]));
    assert!(matches!(written, Poll::Ready(Ok(5))), "{written:?}");
    assert_eq!(
        to_server.queued(),
        0,
        "accepted, but still inside the tls stream"
    );
    let mut buf = [0; 16];
    let (read, _) = poll_once(|cx| s.poll_read(cx, &mut buf));
    assert!(
        read.is_pending(),
        "nothing reached the server before the flush"
    );

    let (flushed, _) = poll_once(|cx| c.poll_flush(cx));
    assert!(matches!(flushed, Poll::Ready(Ok(()))), "{flushed:?}");
    assert!(to_server.queued() > 5, "a tls record went out");
    assert_eq!(run(read_exact(&mut s, 5, 16)).unwrap(), b"hello");
}

#[test]
fn a_full_socket_stops_writes_and_wakes_the_writer_when_it_drains() {
    let (client, server) = trusted_setup();
    let capacity = 16 * 1024;
    let (c, s) = pair(1 << 20, capacity);
    let to_server = c.probe();
    let (c, s) = run(zip(
        connect(Box::new(c), &client),
        accept(Box::new(s), &server),
    ));
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let data = pattern(1 << 20, 5);
    let mut accepted = 0;
    let flag = loop {
        let (poll, flag) =
            poll_once(|cx| c.poll_write_vectored(cx, &[IoSlice::new(&data[accepted..])]));
        match poll {
            Poll::Ready(Ok(n)) => accepted += n,
            Poll::Ready(Err(error)) => panic!("{error}"),
            Poll::Pending => break flag,
        }
    };
    // The pipe's capacity, rustls' buffer, and a record's worth of slack.
    assert!(accepted > 0);
    assert!(
        accepted <= capacity + SEND_BUFFER_LIMIT + 17 * 1024,
        "accepted {accepted} bytes into a full connection"
    );
    assert!(!flag.0.load(SeqCst));
    // The server reads what the socket holds: the blocked writer is woken.
    let mut first = BytesMut::new();
    let (read, _) = poll_once(|cx| s.poll_read_buf(cx, &mut first, 1000));
    assert!(!matches!(read, Poll::Ready(Err(_))), "{read:?}");
    assert!(to_server.queued() < capacity);
    assert!(
        flag.0.load(SeqCst),
        "the writer was woken once there was room"
    );
    // And everything arrives.
    let (sent, rest) = run(zip(
        async {
            write_all(&mut c, &data[accepted..]).await?;
            flush(&mut c).await
        },
        read_exact(&mut s, data.len() - first.len(), 1 << 16),
    ));
    sent.unwrap();
    first.extend_from_slice(&rest.unwrap());
    assert!(first[..] == data[..]);
}

// ---- closing ---------------------------------------------------------------------------

#[test]
fn shutdown_sends_close_notify_which_reads_as_the_end() {
    let (client, server) = trusted_setup();
    let (c, s) = pair(1 << 20, 1 << 20);
    let to_server = c.probe();
    let (c, s) = run(zip(
        connect(Box::new(c), &client),
        accept(Box::new(s), &server),
    ));
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    run(async {
        write_all(&mut c, b"last words").await?;
        shutdown(&mut c).await
    })
    .unwrap();
    assert!(to_server.closed(), "the socket's write half is shut");
    assert!(s.conn.reader().read(&mut [0]).is_err(), "not read yet");
    assert_eq!(run(read_to_end(&mut s)).unwrap(), b"last words");
    assert!(s.conn.process_new_packets().unwrap().peer_has_closed());
    // The other direction still works until the server shuts down too.
    run(async {
        write_all(&mut s, b"reply").await?;
        shutdown(&mut s).await
    })
    .unwrap();
    assert_eq!(run(read_to_end(&mut c)).unwrap(), b"reply");
    // Nothing may be written after a shutdown.
    let (write, _) = poll_once(|cx| c.poll_write_vectored(cx, &[IoSlice::new(b"x")]));
    assert!(matches!(write, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe));
}

#[test]
fn an_end_without_close_notify_is_a_truncation_error() {
    let (client, server) = trusted_setup();
    // The socket shut without close_notify.
    let (mut c, mut s) = established(&client, &server);
    run(async {
        write_all(&mut c, b"partial").await?;
        flush(&mut c).await?;
        poll_fn(|cx| c.inner.poll_shutdown(cx)).await
    })
    .unwrap();
    assert_eq!(run(read_exact(&mut s, 7, 100)).unwrap(), b"partial");
    let end = run(read_to_end(&mut s)).unwrap_err();
    assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    assert!(end.to_string().contains("close_notify"), "{end}");
    // The same through `poll_read_buf`, with the peer simply gone.
    let (c, mut s) = established(&client, &server);
    drop(c);
    let mut buf = BytesMut::new();
    let end = run(poll_fn(|cx| s.poll_read_buf(cx, &mut buf, 100))).unwrap_err();
    assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
}

// ---- certificates ----------------------------------------------------------------------

#[test]
fn an_untrusted_server_certificate_is_refused_as_unknown_issuer() {
    let server = server_config(&Ca::new("their ca").issue("server.test"));
    let client = trusting(&Ca::new("our ca"));
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let client = client.clone().with_protocol_versions(&[version]).unwrap();
        let (c, s) = handshakes(&client, &server, 1 << 20, 1 << 20);
        let error = handshake_error(c);
        assert!(
            matches!(
                &error,
                TlsError::Handshake(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "tls handshake failed: invalid peer certificate: UnknownIssuer"
        );
        // The client told the server why, with an alert.
        let error = handshake_error(s);
        assert!(
            matches!(
                error,
                TlsError::Handshake(rustls::Error::AlertReceived(AlertDescription::UnknownCA))
            ),
            "{error:?}"
        );
        let io_error = io::Error::from(error);
        assert_eq!(io_error.kind(), io::ErrorKind::InvalidData);
        assert!(io_error.to_string().contains("UnknownCA"), "{io_error}");
    }
}

#[test]
fn without_a_name_only_the_chain_is_checked_with_one_the_name_too() {
    let ca = Ca::new("test ca");
    let server = server_config(&ca.issue("server.test"));
    let client = trusting(&ca);
    let named = |name: &str| client.clone().with_server_name(name).unwrap();

    // No name (Spark): any name in a trusted certificate will do, and no SNI is sent.
    let (_, s) = established(&client, &server);
    assert_eq!(sni(&s), None::<&str>);
    // The right name: checked, and sent as SNI.
    let (_, s) = established(&named("server.test"), &server);
    assert_eq!(sni(&s), Some("server.test"));
    // A wrong one: refused.
    for config in [named("other.test"), named("127.0.0.1")] {
        let (c, _) = handshakes(&config, &server, 1 << 20, 1 << 20);
        let error = handshake_error(c);
        assert!(
            matches!(
                error,
                TlsError::Handshake(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{error:?}"
        );
    }
    // A name for one connection overrides the configuration's.
    for (name, ok) in [("server.test", true), ("other.test", false)] {
        let (c, s) = pair(1 << 20, 1 << 20);
        let (c, _) = run(zip(
            connect_with_server_name(Box::new(c), &client, name),
            accept(Box::new(s), &server),
        ));
        assert_eq!(c.is_ok(), ok, "{name}: {:?}", c.err());
    }
    let (c, _) = pair(1, 1);
    let error = run(connect_with_server_name(
        Box::new(c),
        &client,
        "not a name!",
    ))
    .unwrap_err();
    assert!(matches!(
        error,
        TlsError::Config(TlsConfigError::InvalidServerName(_))
    ));
}

#[test]
fn without_a_name_an_expired_or_untrusted_chain_is_still_refused() {
    let ca = Ca::new("test ca");
    let expired = server_config(&ca.issue_with("server.test", |params| {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }));
    let (c, _) = handshakes(&trusting(&ca), &expired, 1 << 20, 1 << 20);
    let error = handshake_error(c);
    assert!(
        matches!(
            error,
            TlsError::Handshake(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{error:?}"
    );
    let self_signed = server_config(&self_signed("server.test"));
    let (c, _) = handshakes(&trusting(&ca), &self_signed, 1 << 20, 1 << 20);
    assert!(handshake_error(c).to_string().contains("UnknownIssuer"));
}

#[test]
fn a_self_signed_certificate_is_accepted_when_it_is_the_trust_root() {
    let identity = self_signed("server.test");
    let client = TlsConfig::new()
        .with_trust_pem(identity.chain.as_bytes())
        .unwrap();
    let (mut c, mut s) = established(&client, &server_config(&identity));
    transfer(&mut c, &mut s, b"hi", 10);
}

#[test]
fn a_certificate_in_the_trust_store_is_trusted_as_it_is() {
    // What `openssl req -x509` makes: self-signed and marked as a CA, which webpki refuses
    // as an end-entity certificate.
    let server = TlsConfig::new()
        .with_identity_pem(CA_FLAG_CERT, SEC1_KEY)
        .unwrap();
    let client = TlsConfig::new().with_trust_pem(CA_FLAG_CERT).unwrap();
    let (mut c, mut s) = established(&client, &server);
    transfer(&mut c, &mut s, b"pinned", 10);
    established(
        &client.clone().with_server_name("sec1.test").unwrap(),
        &server,
    );
    let wrong = client.clone().with_server_name("other.test").unwrap();
    let (c, _) = handshakes(&wrong, &server, 1 << 20, 1 << 20);
    let error = handshake_error(c);
    assert!(
        matches!(
            error,
            TlsError::Handshake(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{error:?}"
    );
    // Without the pin, webpki's verdict stands.
    let elsewhere = trusting(&Ca::new("some ca"));
    let (c, _) = handshakes(&elsewhere, &server, 1 << 20, 1 << 20);
    let error = handshake_error(c);
    assert!(matches!(error, TlsError::Handshake(_)), "{error:?}");

    // An expired self-signed certificate, trusted as it is (a Java trust store entry is).
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["old.test".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let old = Identity {
        chain: params.self_signed(&key).unwrap().pem(),
        key: key.serialize_pem(),
    };
    let client = TlsConfig::new()
        .with_trust_pem(old.chain.as_bytes())
        .unwrap();
    established(&client, &server_config(&old));

    // The same for client certificates.
    let server = server_config(&self_signed("server.test"))
        .require_client_certificates(CA_FLAG_CERT)
        .unwrap();
    let client = TlsConfig::new()
        .trust_any_server_certificate()
        .with_identity_pem(CA_FLAG_CERT, SEC1_KEY)
        .unwrap();
    let (mut c, mut s) = established(&client, &server);
    transfer(&mut c, &mut s, b"pinned client", 10);
}

#[test]
fn trust_any_accepts_any_certificate_but_still_checks_the_handshake_signature() {
    let client = TlsConfig::new().trust_any_server_certificate();
    let server = server_config(&self_signed("whoever.test"));
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let client = client.clone().with_protocol_versions(&[version]).unwrap();
        let (mut c, mut s) = established(&client, &server);
        transfer(&mut s, &mut c, b"hello", 10);
    }
    // Trust-any with a name: sent as SNI, not checked.
    let (_, s) = established(&client.clone().with_server_name("x.test").unwrap(), &server);
    assert_eq!(sni(&s), Some("x.test"));

    // A server presenting one certificate and signing with another key is refused.
    let presented = self_signed("victim.test");
    let chain = config::parse_certificates(presented.chain.as_bytes(), "chain").unwrap();
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let key =
        <rustls_pki_types::PrivateKeyDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
            other_key.as_bytes(),
        )
        .unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let forged = rustls::sign::CertifiedKey::new(chain, signer);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                forged.clone(),
            ))),
        );
        let (c_end, s_end) = pair(1 << 20, 1 << 20);
        let (c, _) = run(zip(
            connect(Box::new(c_end), &client),
            handshake(
                Box::new(s_end),
                ServerConnection::new(config).unwrap().into(),
            ),
        ));
        let error = handshake_error(c);
        assert!(
            matches!(
                error,
                TlsError::Handshake(rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature
                ))
            ),
            "{error:?}"
        );
    }
}

#[test]
fn a_client_needs_trust_and_a_server_an_identity() {
    let (c, s) = pair(1, 1);
    let server = server_config(&self_signed("server.test"));
    let error = run(connect(Box::new(c), &server)).unwrap_err();
    assert!(
        matches!(error, TlsError::Config(TlsConfigError::NoTrust)),
        "{error:?}"
    );
    assert!(server.check_client().is_err() && server.check_server().is_ok());
    let client = TlsConfig::new().trust_any_server_certificate();
    let error = run(accept(Box::new(s), &client)).unwrap_err();
    assert!(
        matches!(error, TlsError::Config(TlsConfigError::NoIdentity)),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "invalid tls configuration: a tls server needs a certificate chain and private key \
         (with_identity_pem or with_identity_files)"
    );
}

#[test]
fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let server = server_config(&server_ca.issue("server.test"))
        .require_client_certificates(client_ca.pem().as_bytes())
        .unwrap();
    let client = trusting(&server_ca);
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let client = client.clone().with_protocol_versions(&[version]).unwrap();
        // With a certificate from the client CA: in, and the server sees it.
        let ok = with_identity(client.clone(), &client_ca.issue("client.test"));
        let (mut c, mut s) = established(&ok, &server);
        assert_eq!(s.conn.peer_certificates().map(<[_]>::len), Some(1));
        transfer(&mut c, &mut s, b"authenticated", 100);

        // Without one, or with one from elsewhere: refused by the server. With TLS 1.3 the
        // client finishes first and learns it from the server's alert on its first read.
        let stranger = with_identity(client.clone(), &Ca::new("other ca").issue("client.test"));
        for (config, expected) in [
            (&client, rustls::Error::NoCertificatesPresented),
            (
                &stranger,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            ),
        ] {
            let (c, s) = handshakes(config, &server, 1 << 20, 1 << 20);
            match handshake_error(s) {
                TlsError::Handshake(error) => assert_eq!(error, expected),
                error => panic!("{error:?}"),
            }
            let client_error = match c {
                Err(TlsError::Handshake(error)) => error,
                Err(error) => panic!("{error:?}"),
                Ok(mut c) => {
                    let error = run(read_to_end(&mut c)).unwrap_err();
                    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                    *error
                        .into_inner()
                        .unwrap()
                        .downcast::<rustls::Error>()
                        .unwrap()
                }
            };
            assert!(
                matches!(client_error, rustls::Error::AlertReceived(_)),
                "{client_error:?}"
            );
        }
    }
}

#[test]
fn no_common_version_fails_both_sides() {
    let (client, server) = trusted_setup();
    let client = client.with_protocol_versions(&[TlsVersion::Tls12]).unwrap();
    let server = server.with_protocol_versions(&[TlsVersion::Tls13]).unwrap();
    let (c, s) = handshakes(&client, &server, 1 << 20, 1 << 20);
    assert!(matches!(handshake_error(c), TlsError::Handshake(_)));
    assert!(matches!(handshake_error(s), TlsError::Handshake(_)));
}

// ---- a peer that does not speak TLS, or stops ------------------------------------------

/// Runs `accept` against a raw peer that sends `bytes`, shuts down, and collects the answer.
fn accept_from_raw(bytes: &[u8]) -> (TlsError, Vec<u8>) {
    let (_, server) = trusted_setup();
    let (mut raw, s) = pair(1 << 20, 1 << 20);
    let (accepted, answer) = run(zip(accept(Box::new(s), &server), async {
        write_all(&mut raw, bytes).await.unwrap();
        shutdown(&mut raw).await.unwrap();
        read_to_end(&mut raw).await.unwrap()
    }));
    (handshake_error(accepted), answer)
}

#[test]
fn garbage_instead_of_a_client_hello_is_an_error_and_an_alert() {
    let (error, answer) = accept_from_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(error, TlsError::Handshake(_)), "{error:?}");
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a tls alert record: {answer:?}"
    );
    // Anything at all: an error, never a panic.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Sometimes a plausible record header, to get past the first check.
                match i {
                    0 if len % 2 == 0 => 0x16,
                    1 if len % 2 == 0 => 0x03,
                    _ => state as u8,
                }
            })
            .collect();
        let (error, _) = accept_from_raw(&bytes);
        assert!(
            matches!(error, TlsError::Handshake(_) | TlsError::Closed),
            "{error:?}"
        );
    }
}

#[test]
fn a_peer_leaving_mid_handshake_is_an_error() {
    // A client that sends the start of a ClientHello record, then leaves.
    let (error, _) = accept_from_raw(&[0x16, 0x03, 0x01, 0x00, 0x50, 0x01, 0x00, 0x00]);
    assert!(matches!(error, TlsError::Closed), "{error:?}");
    assert_eq!(
        error.to_string(),
        "the peer closed the connection during the tls handshake"
    );
    assert_eq!(io::Error::from(error).kind(), io::ErrorKind::UnexpectedEof);

    // A server that reads the ClientHello, then leaves.
    let (client, _) = trusted_setup();
    let (c, mut raw) = pair(1 << 20, 1 << 20);
    let (connected, ()) = run(zip(connect(Box::new(c), &client), async move {
        let mut buf = [0; 5];
        poll_fn(|cx| raw.poll_read(cx, &mut buf)).await.unwrap();
        drop(raw);
    }));
    let error = handshake_error(connected);
    // Its write may fail first, or its read see the end.
    let broken_pipe = matches!(&error, TlsError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe);
    assert!(
        matches!(error, TlsError::Closed) || broken_pipe,
        "{error:?}"
    );
}

#[test]
fn a_refusing_peer_that_leaves_is_reported_by_its_alert() {
    // A "server" that answers with a handshake_failure alert and leaves while the client
    // is still writing its ClientHello (the pipe holds 10 bytes): the write fails, and the
    // alert says why.
    let (client, _) = trusted_setup();
    let (c, mut raw) = pair(1 << 20, 10);
    let (connected, ()) = run(zip(connect(Box::new(c), &client), async move {
        write_all(&mut raw, &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
            .await
            .unwrap();
    }));
    let error = handshake_error(connected);
    assert!(
        matches!(
            error,
            TlsError::Handshake(rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
            ))
        ),
        "{error:?}"
    );
}

#[test]
fn a_failed_stream_keeps_failing() {
    let (client, server) = trusted_setup();
    let (mut c, s) = established(&client, &server);
    // The server's socket, written raw: a record that does not decrypt.
    let mut inner = s.inner;
    run(write_all(
        &mut *inner,
        &[0x17, 0x03, 0x03, 0x00, 0x20]
            .iter()
            .copied()
            .chain([0xAB; 32])
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    let error = run(read_to_end(&mut c)).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    let rustls_error = error
        .get_ref()
        .unwrap()
        .downcast_ref::<rustls::Error>()
        .unwrap();
    assert_eq!(*rustls_error, rustls::Error::DecryptError);
    let again = run(read_to_end(&mut c)).unwrap_err();
    assert_eq!(again.to_string(), error.to_string());
    let (write, _) = poll_once(|cx| c.poll_write_vectored(cx, &[IoSlice::new(b"x")]));
    assert!(matches!(write, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::InvalidData));
    // The client sent an alert to say why.
    drop(c);
    let answer = run(read_to_end(&mut *inner)).unwrap();
    // Under TLS 1.3 the alert is encrypted: an application data record.
    assert_eq!(answer[..3], [0x17, 0x03, 0x03], "{answer:?}");
}

// ---- configuration ---------------------------------------------------------------------

const SEC1_KEY: &[u8] = include_bytes!("testdata/sec1.key");
const SEC1_CERT: &[u8] = include_bytes!("testdata/sec1.crt");
const PKCS1_KEY: &[u8] = include_bytes!("testdata/pkcs1.key");
const PKCS1_CERT: &[u8] = include_bytes!("testdata/pkcs1.crt");
const CA_FLAG_CERT: &[u8] = include_bytes!("testdata/ca-flag.crt");

#[test]
fn pkcs8_pkcs1_and_sec1_keys_all_serve() {
    let pkcs8 = self_signed("pkcs8.test");
    for (chain, key) in [
        (pkcs8.chain.as_bytes(), pkcs8.key.as_bytes()),
        (SEC1_CERT, SEC1_KEY),
        (PKCS1_CERT, PKCS1_KEY),
    ] {
        let server = TlsConfig::new().with_identity_pem(chain, key).unwrap();
        let client = TlsConfig::new().with_trust_pem(chain).unwrap();
        let (mut c, mut s) = established(&client, &server);
        transfer(&mut c, &mut s, b"ok", 2);
    }
}

#[test]
fn identity_and_trust_files_are_read() {
    let dir = std::env::temp_dir().join(format!("rpc-driver-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = self_signed("files.test");
    let (chain, key) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&chain, &identity.chain).unwrap();
    std::fs::write(&key, &identity.key).unwrap();
    let server = TlsConfig::new().with_identity_files(&chain, &key).unwrap();
    let client = TlsConfig::new()
        .with_identity_files(&chain, &key)
        .unwrap()
        .with_trust_file(&chain)
        .unwrap();
    let server = server.require_client_certificates_file(&chain).unwrap();
    established(&client, &server);
    let missing = dir.join("missing.pem");
    let error = TlsConfig::new().with_trust_file(&missing).unwrap_err();
    assert!(matches!(error, TlsConfigError::Read { .. }));
    assert!(error
        .to_string()
        .starts_with(&format!("could not read {}: ", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_keys_and_certificates_are_refused_clearly() {
    let identity = self_signed("x.test");
    let chain = identity.chain.as_bytes();
    for encrypted in [
        &include_bytes!("testdata/encrypted-pkcs8.key")[..],
        &include_bytes!("testdata/encrypted-sec1.key")[..],
    ] {
        let error = TlsConfig::new()
            .with_identity_pem(chain, encrypted)
            .unwrap_err();
        assert!(
            matches!(error, TlsConfigError::EncryptedPrivateKey),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .starts_with("the private key is encrypted"));
    }
    let error = TlsConfig::new()
        .with_identity_pem(chain, chain)
        .unwrap_err();
    assert!(matches!(error, TlsConfigError::NoPrivateKey), "{error:?}");
    let error = TlsConfig::new().with_identity_pem(chain, b"").unwrap_err();
    assert!(matches!(error, TlsConfigError::NoPrivateKey), "{error:?}");
    let error = TlsConfig::new()
        .with_identity_pem(identity.key.as_bytes(), identity.key.as_bytes())
        .unwrap_err();
    assert!(matches!(
        error,
        TlsConfigError::NoCertificates {
            what: "certificate chain"
        }
    ));
    // A key that is not the certificate's.
    let error = TlsConfig::new()
        .with_identity_pem(chain, self_signed("y.test").key.as_bytes())
        .unwrap_err();
    assert!(matches!(error, TlsConfigError::Identity(_)), "{error:?}");
    let truncated = &identity.chain[..identity.chain.len() - 10];
    let error = TlsConfig::new()
        .with_trust_pem(truncated.as_bytes())
        .unwrap_err();
    assert!(
        matches!(
            error,
            TlsConfigError::Pem {
                what: "trust store",
                ..
            }
        ),
        "{error:?}"
    );
    let error = TlsConfig::new()
        .require_client_certificates(b"no pem here")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no certificate found in the client trust store (expected pem `CERTIFICATE` sections)"
    );
    let error = TlsConfig::new().with_protocol_versions(&[]).unwrap_err();
    assert_eq!(error.to_string(), "no tls protocol version enabled");
    let error = TlsConfig::new().with_server_name("a b").unwrap_err();
    assert_eq!(error.to_string(), "invalid server name \"a b\"");
    TlsConfig::new().with_server_name("10.0.0.1").unwrap();
}

#[test]
fn debug_shows_settings_but_never_key_material() {
    let identity = self_signed("x.test");
    let config = server_config(&identity)
        .with_trust_pem(identity.chain.as_bytes())
        .unwrap()
        .with_server_name("x.test")
        .unwrap();
    let debug = format!("{config:?}");
    assert!(
        debug.contains("1 certificate(s) and a private key"),
        "{debug}"
    );
    assert!(debug.contains("x.test"), "{debug}");
    let key_body: String = identity
        .key
        .lines()
        .nth(1)
        .unwrap()
        .chars()
        .take(16)
        .collect();
    assert!(!debug.contains(&key_body), "{debug}");
    assert!(!debug.contains("BEGIN"), "{debug}");
    let (c, s) = established(&config, &config);
    let debug = format!("{c:?} {s:?}");
    assert!(!debug.contains(&key_body), "{debug}");
    assert!(debug.contains("client: true"), "{debug}");
}

#[test]
fn configurations_are_built_once_and_shared_by_clones() {
    let (client, server) = trusted_setup();
    let copy = client.clone();
    let a = client.client_config(false).unwrap();
    let b = copy.client_config(false).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!a.enable_sni);
    assert!(client.client_config(true).unwrap().enable_sni);
    assert!(Arc::ptr_eq(
        &server.server_config().unwrap(),
        &server.server_config().unwrap()
    ));
    // A changed copy builds its own.
    let changed = copy.with_protocol_versions(&[TlsVersion::Tls13]).unwrap();
    assert!(!Arc::ptr_eq(&a, &changed.client_config(false).unwrap()));
}

#[test]
fn configs_and_streams_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send + Unpin + 'static>() {}
    send_sync::<TlsConfig>();
    send_sync::<TlsError>();
    send_sync::<TlsConfigError>();
    send::<TlsStream>();
}
