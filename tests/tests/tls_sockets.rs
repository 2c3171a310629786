//! TLS ([`rpc_driver::tls`]) over real sockets, between runtimes: a tokio client and an
//! async-std server, and the other way round. The same `TlsStream` code runs on both; the
//! stream is used as the connection driver uses it (`poll_read_buf`, `poll_write_vectored`,
//! `poll_flush`, `poll_shutdown`).

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rpc_tokio::tls::{self, TlsConfig, TlsStream};
use rpc_tokio::{AsyncStream, Runtime};

/// How long either side may take before the test is declared hung.
const WAIT: Duration = Duration::from_secs(30);

/// A server identity for `server.test` from a CA, and a client trusting that CA.
fn configs() -> (TlsConfig, TlsConfig) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["server.test".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let server = TlsConfig::new()
        .with_identity_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .unwrap();
    let client = TlsConfig::new()
        .with_trust_pem(ca.pem().as_bytes())
        .unwrap();
    (client, server)
}

fn payload() -> Vec<u8> {
    (0..4 * 1024 * 1024 + 7)
        .map(|i: usize| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

async fn write_all(stream: &mut TlsStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // Several slices at once, as the driver writes.
        let (a, b) = data.split_at(data.len().min(5000));
        let n = poll_fn(|cx| stream.poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)]))
            .await?;
        data = &data[n..];
    }
    poll_fn(|cx| stream.poll_flush(cx)).await
}

/// Reads until the peer's close_notify.
async fn read_to_end(stream: &mut TlsStream) -> io::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    loop {
        match poll_fn(|cx| stream.poll_read_buf(cx, &mut buf, 64 * 1024)).await? {
            0 => return Ok(buf.to_vec()),
            _ => continue,
        }
    }
}

/// Accepts one connection, reads everything the client sends until its close_notify, sends
/// it back, and closes.
async fn echo_server(rt: Arc<dyn Runtime>, listener: TcpListener, config: TlsConfig) {
    listener.set_nonblocking(true).unwrap();
    let listener = rt.listen(listener).unwrap();
    let (socket, _) = poll_fn(|cx| listener.poll_accept(cx)).await.unwrap();
    let mut stream = tls::accept(socket, &config).await.unwrap();
    let received = read_to_end(&mut stream).await.unwrap();
    write_all(&mut stream, &received).await.unwrap();
    poll_fn(|cx| stream.poll_shutdown(cx)).await.unwrap();
}

/// Connects, sends the payload, closes its side, and returns what comes back.
async fn echo_client(rt: Arc<dyn Runtime>, port: u16, config: TlsConfig) -> Vec<u8> {
    let socket = rt.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut stream = tls::connect(socket, &config).await.unwrap();
    assert!(stream.peer_addr().unwrap().port() == port);
    write_all(&mut stream, &payload()).await.unwrap();
    poll_fn(|cx| stream.poll_shutdown(cx)).await.unwrap();
    read_to_end(&mut stream).await.unwrap()
}

fn tokio_block_on<T>(future: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(WAIT, future).await.expect("hung") })
}

fn async_std_block_on<T>(future: impl Future<Output = T>) -> T {
    async_std::task::block_on(async {
        async_std::future::timeout(WAIT, future)
            .await
            .expect("hung")
    })
}

#[test]
fn a_tokio_client_and_an_async_std_server_talk_tls() {
    let (client, server) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        async_std_block_on(echo_server(rpc_async_std::runtime(), listener, server))
    });
    let echoed = tokio_block_on(async { echo_client(rpc_tokio::runtime(), port, client).await });
    server.join().unwrap();
    assert!(echoed == payload(), "the echo differs");
}

#[test]
fn an_async_std_client_and_a_tokio_server_talk_tls() {
    let (client, server) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        tokio_block_on(async { echo_server(rpc_tokio::runtime(), listener, server).await })
    });
    let echoed = async_std_block_on(echo_client(rpc_async_std::runtime(), port, client));
    server.join().unwrap();
    assert!(echoed == payload(), "the echo differs");
}
