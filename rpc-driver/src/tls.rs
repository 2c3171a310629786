//! TLS for connections (Spark 4's `spark.ssl.rpc.*`), with rustls, written once for every
//! runtime.
//!
//! [`connect`] and [`accept`] run the TLS handshake over any [`AsyncStream`] and hand back a
//! [`TlsStream`], itself an [`AsyncStream`] carrying plaintext, for the connection driver to
//! use in place of the socket:
//!
//! ```text
//!   Driver ──poll_write_vectored / poll_flush──► TlsStream ──write_tls──► inner AsyncStream
//!   Driver ◄─────────poll_read_buf────────────── TlsStream ◄──read_tls─── (the socket)
//!                                                (rustls::Connection, driven by hand)
//! ```
//!
//! ```no_run
//! # async fn demo(
//! #     rt: std::sync::Arc<dyn rpc_driver::Runtime>,
//! #     addr: std::net::SocketAddr,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use rpc_driver::tls::{self, TlsConfig};
//!
//! // Once, shared by every connection (the rustls configuration is built once).
//! let config = TlsConfig::new().with_trust_file("/etc/spark/tls/ca.pem")?;
//! let socket = rt.connect(addr).await?;
//! // Under the caller's own timeout.
//! let stream = tls::connect(socket, &config).await?;
//! // What the connection driver takes in place of the socket.
//! let stream: Box<dyn rpc_driver::AsyncStream> = Box::new(stream);
//! # drop(stream);
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! rustls is itself sans-IO: it takes TLS bytes in (`read_tls`, `process_new_packets`) and
//! hands plaintext out (`reader`), takes plaintext in (`writer`) and hands TLS bytes out
//! (`write_tls`). [`TlsStream`] drives it by hand over the inner stream's `poll_*` methods,
//! so the same code serves tokio, async-std and any other [`Runtime`](crate::Runtime);
//! there is no tokio-rustls or futures-rustls underneath.
//!
//! * **Wakeups.** A `poll_*` method returns `Pending` only when the inner stream did, so the
//!   inner stream holds the task's waker. Reading may also write (TLS messages the peer's
//!   asked for, such as a key update, and pending output), and writing never waits on
//!   reading.
//! * **Backpressure.** rustls takes at most [`SEND_BUFFER_LIMIT`] bytes of TLS records
//!   that the socket has not taken yet; past that `poll_write_vectored` first writes them
//!   out, and returns `Pending` when the socket is full. Bytes accepted by
//!   `poll_write_vectored` may still be inside rustls: `poll_flush` writes them out (the
//!   driver calls it after writing).
//! * **Reading** hands out at most `max` bytes to `poll_read_buf` and keeps the rest of the
//!   decrypted plaintext inside rustls for the next read, so the bytes a peer sends right
//!   after its handshake are never lost.
//! * **Closing.** `poll_shutdown` sends a TLS `close_notify` alert before shutting the
//!   socket's write half; a peer's `close_notify` reads as end of file. The socket ending
//!   without one is an error of kind [`io::ErrorKind::UnexpectedEof`]: the stream was
//!   truncated, perhaps by an attacker.
//! * **Errors.** A TLS failure (a bad record, a failed check, an alert from the peer) is an
//!   [`io::Error`] of kind [`io::ErrorKind::InvalidData`] whose inner error is the
//!   [`rustls::Error`], so it prints as rustls' reason; a fatal alert is sent to the peer
//!   (best effort) first. The handshake functions return a [`TlsError`] instead.
//!
//! # The cost: no `sendfile`
//!
//! Bytes must be encrypted on their way out, so [`TlsStream`] cannot send a file straight
//! from the page cache ([`AsyncStream::poll_send_file`] says `Unsupported`): the driver reads
//! file-backed bodies (shuffle blocks, `RpcEnv` files) into memory and writes them through
//! TLS, as Spark does (its `SslMessageEncoder` turns `FileRegion`s into chunked streams).
//!
//! # What Spark does, and what we do
//!
//! Spark's RPC TLS (`spark.ssl.rpc.enabled`) reads a PEM private key and certificate chain
//! (or a JKS/PKCS12 key store), trusts a trust store, sends no SNI, checks no host name, and
//! trusts every server when no trust store is set (Spark 4.3 on Netty 4.2 would check host
//! names, but Spark's launcher turns that off); it never asks for client certificates,
//! and allows TLS 1.2 and 1.3. [`TlsConfig`] maps each of those settings (see its table):
//! PEM only (no JKS, no encrypted keys), the same defaults for SNI and host names (with
//! [`TlsConfig::with_server_name`] to check one), trusting everything only when asked
//! ([`TlsConfig::trust_any_server_certificate`]), and mutual TLS as an option
//! ([`TlsConfig::require_client_certificates`]). The frames inside TLS are Spark's usual
//! ones. There is no ALPN (Spark sends none) and no session resumption. The cipher suites
//! are rustls' (AES-GCM and ChaCha20-Poly1305 with ECDHE), all on Spark's default list;
//! rustls has no DHE suites, which Spark also offers, so a peer limited to DHE cannot
//! connect. Keys and signatures use the *ring* crypto provider.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::{ClientConnection, Connection, ServerConnection};
use rustls_pki_types::ServerName;

use crate::runtime::AsyncStream;

mod config;
#[cfg(test)]
mod tests;

pub use config::{TlsConfig, TlsConfigError, TlsVersion};

/// TLS records rustls holds that the socket has not taken yet, past which
/// [`TlsStream`]'s `poll_write_vectored` accepts no more plaintext until they are written.
pub const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The configuration cannot serve this role (a server without an identity, a client
    /// without a trust store).
    #[error("invalid tls configuration: {0}")]
    Config(#[from] TlsConfigError),
    /// TLS failed: the peer's certificate was refused, the peer sent an alert or something
    /// that is not TLS, no common version or cipher suite, ...
    #[error("tls handshake failed: {0}")]
    Handshake(#[source] rustls::Error),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the tls handshake")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("i/o error during the tls handshake: {0}")]
    Io(#[source] io::Error),
}

impl From<TlsError> for io::Error {
    /// The error as the driver sees stream errors: a TLS failure is
    /// [`io::ErrorKind::InvalidData`] (carrying the [`TlsError`]), a close during the
    /// handshake [`io::ErrorKind::UnexpectedEof`], and an I/O error itself.
    fn from(error: TlsError) -> Self {
        match error {
            TlsError::Io(error) => error,
            TlsError::Closed => Self::new(io::ErrorKind::UnexpectedEof, error),
            error => Self::new(io::ErrorKind::InvalidData, error),
        }
    }
}

/// Runs the client side of a TLS handshake over `stream`.
///
/// Without a [server name](TlsConfig::with_server_name) no SNI is sent and the server's
/// certificate is checked against the trust roots but not against a name (Spark's
/// behaviour); see [`connect_with_server_name`] to check a name for this connection only.
/// The caller bounds the handshake with its own timeout. The returned stream is ready for
/// the connection driver.
///
/// With TLS 1.3 the client finishes its handshake before the server has checked the
/// client's certificate: a server that refuses it (mutual TLS) says so with an alert that
/// the client reads as an error on its first read, not here.
pub async fn connect(
    stream: Box<dyn AsyncStream>,
    config: &TlsConfig,
) -> Result<TlsStream, TlsError> {
    let name = config.configured_server_name().cloned();
    connect_as(stream, config, name).await
}

/// [`connect`], checking the server's certificate against `server_name` (a DNS name or IP
/// address, such as the host being connected to) and sending it as SNI, whatever name the
/// configuration holds.
pub async fn connect_with_server_name(
    stream: Box<dyn AsyncStream>,
    config: &TlsConfig,
    server_name: &str,
) -> Result<TlsStream, TlsError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TlsConfigError::InvalidServerName(server_name.to_owned()))?;
    connect_as(stream, config, Some(name)).await
}

async fn connect_as(
    stream: Box<dyn AsyncStream>,
    config: &TlsConfig,
    name: Option<ServerName<'static>>,
) -> Result<TlsStream, TlsError> {
    let client_config = config.client_config(name.is_some())?;
    // Without a name, rustls still wants one: an address, which is neither sent (rustls sends
    // no SNI for addresses, and SNI is off) nor checked (the verifier forgives names).
    let name = name.unwrap_or(ServerName::IpAddress(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED).into(),
    ));
    let conn = ClientConnection::new(client_config, name).map_err(TlsError::Handshake)?;
    handshake(stream, conn.into()).await
}

/// Runs the server side of a TLS handshake over `stream` (a freshly accepted connection).
///
/// The configuration needs an [identity](TlsConfig::with_identity_pem). The caller bounds
/// the handshake with its own timeout. The returned stream is ready for the connection
/// driver.
pub async fn accept(
    stream: Box<dyn AsyncStream>,
    config: &TlsConfig,
) -> Result<TlsStream, TlsError> {
    let conn = ServerConnection::new(config.server_config()?).map_err(TlsError::Handshake)?;
    handshake(stream, conn.into()).await
}

async fn handshake(stream: Box<dyn AsyncStream>, conn: Connection) -> Result<TlsStream, TlsError> {
    let mut stream = TlsStream::new(stream, conn);
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// A TLS connection over another [`AsyncStream`]: plaintext in and out, TLS records on the
/// inner stream. Made by [`connect`] and [`accept`]; see the [module docs](self).
pub struct TlsStream {
    inner: Box<dyn AsyncStream>,
    conn: Connection,
    /// The TLS failure reported already: every later read and write reports it again.
    failed: Option<rustls::Error>,
    /// `close_notify` was queued by `poll_shutdown`.
    close_notify_queued: bool,
    /// TLS bytes read from the inner stream and not yet taken by rustls: the socket is read
    /// [`READ_CHUNK`] at a time (rustls alone reads at most a record per call), and the
    /// records of one read are handed out in one [`poll_read_buf`](AsyncStream::poll_read_buf).
    incoming: BytesMut,
    /// The inner stream reached its end.
    incoming_eof: bool,
}

/// TLS bytes read from the socket at once.
const READ_CHUNK: usize = 256 * 1024;

impl TlsStream {
    fn new(inner: Box<dyn AsyncStream>, mut conn: Connection) -> Self {
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Self {
            inner,
            conn,
            failed: None,
            close_notify_queued: false,
            incoming: BytesMut::new(),
            incoming_eof: false,
        }
    }

    /// Puts `f(stream, bytes)` between this TLS connection and the stream it ran on: for a
    /// layer that starts under TLS after its handshake (Spark places its AES cipher there
    /// when both are on). `bytes` are those already read from the old stream and not yet
    /// taken by TLS: they belong to the new layer.
    pub(crate) fn map_inner(
        self,
        f: impl FnOnce(Box<dyn AsyncStream>, bytes::Bytes) -> Box<dyn AsyncStream>,
    ) -> Self {
        let Self {
            inner,
            conn,
            failed,
            close_notify_queued,
            mut incoming,
            incoming_eof,
        } = self;
        Self {
            inner: f(inner, incoming.split().freeze()),
            conn,
            failed,
            close_notify_queued,
            incoming,
            incoming_eof,
        }
    }

    /// The protocol version agreed in the handshake.
    pub fn protocol_version(&self) -> Option<TlsVersion> {
        match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }

    /// Whether this is the client side.
    pub fn is_client(&self) -> bool {
        matches!(self.conn, Connection::Client(_))
    }

    /// Drives the handshake: ready once it is complete and everything rustls had to send for
    /// it has been written and flushed.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TlsError>> {
        loop {
            let write_blocked = match self.poll_write_tls(cx) {
                Poll::Ready(Ok(())) => false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(self.explain(cx, error))),
                Poll::Pending => true,
            };
            if !self.conn.is_handshaking() {
                if write_blocked {
                    return Poll::Pending;
                }
                return self.inner.poll_flush(cx).map_err(TlsError::Io);
            }
            // Read even while output waits, although rustls' `wants_read` says it would
            // rather not: the peer may be blocked writing to us too (a TLS 1.3 client's
            // compatibility `ChangeCipherSpec` crosses the server's first flight), and with
            // both socket buffers full nobody would read. rustls buffers what it reads.
            match self.poll_read_tls(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(TlsError::Io(error))),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(TlsError::Closed)),
                Poll::Ready(Ok(_)) => {
                    if let Err(error) = self.process(cx) {
                        return Poll::Ready(Err(TlsError::Handshake(error)));
                    }
                }
            }
        }
    }

    /// Why a write failed during the handshake: usually the peer refused the handshake and
    /// left, and the alert it sent first says why; else the write's error.
    fn explain(&mut self, cx: &mut Context<'_>, error: io::Error) -> TlsError {
        while let Poll::Ready(Ok(1..)) = self.poll_read_tls(cx) {
            if let Err(alert) = self.process(cx) {
                return TlsError::Handshake(alert);
            }
        }
        TlsError::Io(error)
    }

    /// Writes out the TLS records rustls holds; ready once there are none left.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut io = Io::new(&mut *self.inner, cx);
            match self.conn.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(_) if io.pending => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads TLS bytes from the inner stream into rustls (without processing them): from
    /// what an earlier read left, else from a new read of up to [`READ_CHUNK`] bytes. `Ok(0)`
    /// is the inner stream's end (rustls then knows it).
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.is_empty() && !self.incoming_eof {
            match self.inner.poll_read_buf(cx, &mut self.incoming, READ_CHUNK) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => self.incoming_eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(self.read_incoming())
    }

    /// Hands rustls what it takes of the bytes read; at the end, tells it so.
    fn read_incoming(&mut self) -> io::Result<usize> {
        let mut bytes: &[u8] = &self.incoming;
        let n = self.conn.read_tls(&mut bytes)?;
        self.incoming.advance(n);
        Ok(n)
    }

    /// Processes the TLS bytes read. On failure, remembers the error and sends the alert
    /// rustls queued for the peer, as far as the socket takes it now.
    fn process(&mut self, cx: &mut Context<'_>) -> Result<(), rustls::Error> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(error) => {
                self.failed = Some(error.clone());
                if self.poll_write_tls(cx).is_ready() {
                    let _ = self.inner.poll_flush(cx);
                }
                Err(error)
            }
        }
    }

    /// Ready once rustls holds plaintext to hand out, or the peer's `close_notify` (the
    /// reader then yields 0 bytes).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(error) = &self.failed {
                return Poll::Ready(Err(tls_failure(error.clone())));
            }
            match self.conn.reader().fill_buf() {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Err(truncated()))
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
            // Send what the peer's messages called for (a key update, say) and any output
            // left over, without waiting for the socket to take it. A write error is left
            // for the next write or flush to report: the peer may have sent everything and
            // gone, and what it sent is still to be read.
            let _ = self.poll_write_tls(cx);
            // Ok(0), the socket's end, makes the reader report the end or a truncation.
            ready!(self.poll_read_tls(cx))?;
            self.process(cx).map_err(tls_failure)?;
        }
    }
}

/// A TLS failure as an I/O error: [`io::ErrorKind::InvalidData`], carrying the rustls error.
fn tls_failure(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the connection without a tls close_notify (truncated)",
    )
}

impl AsyncStream for TlsStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll_fill(cx))?;
        match self.conn.reader().read(buf) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Err(truncated()))
            }
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_fill(cx))?;
        // Copy out of rustls' buffers, no zeroing; what is past `max` stays for later. The
        // records already read from the socket are decrypted and handed out too, up to `max`.
        let mut read = 0;
        loop {
            let mut reader = self.conn.reader();
            while read < max {
                let chunk = match reader.fill_buf() {
                    Ok(chunk) if !chunk.is_empty() => chunk,
                    _ => break,
                };
                let n = chunk.len().min(max - read);
                buf.extend_from_slice(&chunk[..n]);
                reader.consume(n);
                read += n;
            }
            if read >= max || self.incoming.is_empty() || self.failed.is_some() {
                break;
            }
            // A failure here is reported by the next read, after what was read already.
            match self.read_incoming() {
                Ok(n) if n > 0 && self.process(cx).is_ok() => {}
                _ => break,
            }
        }
        Poll::Ready(Ok(read))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = &self.failed {
            return Poll::Ready(Err(tls_failure(error.clone())));
        }
        if self.close_notify_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the tls stream was shut down",
            )));
        }
        if bufs.iter().all(|buf| buf.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            // Make room: write out the records of earlier writes.
            let blocked = match self.poll_write_tls(cx) {
                Poll::Ready(Ok(())) => false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => true,
            };
            let accepted = self.conn.writer().write_vectored(bufs)?;
            if accepted > 0 {
                return Poll::Ready(Ok(accepted));
            }
            if blocked {
                return Poll::Pending;
            }
            if !self.conn.wants_write() {
                // rustls' buffer is empty and still takes nothing: it cannot send at all.
                return Poll::Ready(Err(io::Error::other(
                    "the tls connection accepts no more data",
                )));
            }
        }
    }

    // `poll_send_file` keeps the default: bytes must pass through TLS.

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = &self.failed {
            return Poll::Ready(Err(tls_failure(error.clone())));
        }
        ready!(self.poll_write_tls(cx))?;
        self.inner.poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_notify_queued {
            // Nothing is queued after a fatal alert: rustls sent that instead.
            self.conn.send_close_notify();
            self.close_notify_queued = true;
        }
        ready!(self.poll_write_tls(cx))?;
        ready!(self.inner.poll_flush(cx))?;
        self.inner.poll_shutdown(cx)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("client", &self.is_client())
            .field("version", &self.protocol_version())
            .field(
                "cipher_suite",
                &self.conn.negotiated_cipher_suite().map(|s| s.suite()),
            )
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The inner stream as the blocking `Read` and `Write` rustls takes, for one call: `Pending`
/// becomes [`io::ErrorKind::WouldBlock`] and is noted in `pending`, so that an error of that
/// kind from the stream itself is never taken for a registered waker.
struct Io<'a, 'b> {
    stream: &'a mut dyn AsyncStream,
    cx: &'a mut Context<'b>,
    pending: bool,
}

impl<'a, 'b> Io<'a, 'b> {
    fn new(stream: &'a mut dyn AsyncStream, cx: &'a mut Context<'b>) -> Self {
        Io {
            stream,
            cx,
            pending: false,
        }
    }

    fn ready<T>(&mut self, poll: Poll<io::Result<T>>) -> io::Result<T> {
        match poll {
            Poll::Ready(result) => result,
            Poll::Pending => {
                self.pending = true;
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let poll = self.stream.poll_read(self.cx, buf);
        self.ready(poll)
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let poll = self.stream.poll_write_vectored(self.cx, bufs);
        self.ready(poll)
    }

    fn flush(&mut self) -> io::Result<()> {
        // The stream's own flush is polled by the callers, with its waker.
        Ok(())
    }
}
