//! Runs a connection's handshake ([`rpc_proto::handshake`]) on its stream, before the
//! connection's driver exists.

use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::future;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rpc_proto::handshake::{
    ClientHandshake, ClientMechanism, Established, HandshakeError, ServerHandshake,
    ServerMechanisms,
};
use rpc_proto::sasl::QopOffer;

use super::config::{Auth, AuthMechanism, Security};
use super::error::SecurityError;
use super::stream::{CipherStream, Prefixed};
use crate::runtime::{sleep_for, AsyncStream, Runtime};
use crate::sync::unmodeled::Arc;
use crate::tls::TlsStream;

/// Bytes read at once during the handshake: a handshake frame is small.
const READ_CHUNK: usize = 16 * 1024;

/// A stream after its handshake.
pub(crate) struct Secured {
    /// The stream to run the connection on: the cipher around the socket, or the socket.
    pub(crate) stream: Box<dyn AsyncStream>,
    /// The app id the client authenticated as, if there was a handshake.
    pub(crate) client_id: Option<Arc<str>>,
}

impl Secured {
    fn plain(stream: Box<dyn AsyncStream>) -> Self {
        Self {
            stream,
            client_id: None,
        }
    }
}

/// One side's handshake, as the I/O loop drives it.
trait Side {
    fn poll_transmit(&mut self) -> Option<Bytes>;
    fn handle_bytes(&mut self, data: &[u8]);
    fn handle_closed(&mut self);
    fn poll_outcome(&mut self) -> Option<Result<Established, HandshakeError>>;
}

struct Client {
    handshake: ClientHandshake,
    rng: StdRng,
}

impl Side for Client {
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.handshake.poll_transmit()
    }
    fn handle_bytes(&mut self, data: &[u8]) {
        self.handshake.handle_bytes(data, &mut self.rng);
    }
    fn handle_closed(&mut self) {
        self.handshake.handle_closed();
    }
    fn poll_outcome(&mut self) -> Option<Result<Established, HandshakeError>> {
        self.handshake.poll_outcome()
    }
}

struct Server<'a> {
    handshake: ServerHandshake,
    auth: &'a Auth,
    rng: StdRng,
}

impl Side for Server<'_> {
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.handshake.poll_transmit()
    }
    fn handle_bytes(&mut self, data: &[u8]) {
        let secrets = &self.auth.secrets;
        self.handshake
            .handle_bytes(data, &|app| secrets.secret(app), &mut self.rng);
    }
    fn handle_closed(&mut self) {
        self.handshake.handle_closed();
    }
    fn poll_outcome(&mut self) -> Option<Result<Established, HandshakeError>> {
        self.handshake.poll_outcome()
    }
}

/// Authenticates a connection this side opened, as `security` says; a stream without
/// security is returned as it is.
pub(crate) async fn secure_client(
    rt: &dyn Runtime,
    stream: Box<dyn AsyncStream>,
    security: &Security,
    peer: SocketAddr,
) -> Result<Secured, SecurityError> {
    let side = match &security.auth {
        None => None,
        Some(auth) => {
            let secret = auth
                .secrets
                .secret(&auth.app_id)
                .ok_or(SecurityError::AuthenticationFailed { peer, remote: None })?;
            let mut rng = StdRng::from_os_rng();
            let mechanism = match auth.mechanism {
                AuthMechanism::Aes { version, cipher } => ClientMechanism::Aes { version, cipher },
                AuthMechanism::Sasl { encrypt } => ClientMechanism::Sasl { encrypt },
            };
            let handshake = ClientHandshake::new(
                &auth.app_id,
                secret,
                mechanism,
                auth.sasl_fallback,
                &mut rng,
            )
            .map_err(|e| error(peer, e))?;
            Some(Client { handshake, rng })
        }
    };
    bounded(rt, security, peer, async {
        match &security.tls {
            None => plain_then(stream, side, peer).await,
            Some(config) => {
                let tls = crate::tls::connect(stream, config)
                    .await
                    .map_err(|e| tls_error(peer, e))?;
                tls_then(tls, side, peer).await
            }
        }
    })
    .await
}

/// Authenticates a connection a server accepted, as `security` says; a stream without
/// security is returned as it is.
pub(crate) async fn secure_server(
    rt: &dyn Runtime,
    stream: Box<dyn AsyncStream>,
    security: &Security,
    peer: SocketAddr,
) -> Result<Secured, SecurityError> {
    let side = security.auth.as_ref().map(|auth| {
        let mechanisms = match auth.mechanism {
            AuthMechanism::Aes { version, cipher } => {
                let aes = ServerMechanisms::aes(version, cipher);
                if auth.sasl_fallback {
                    aes.with_sasl(QopOffer::AuthConfOrAuth)
                } else {
                    aes
                }
            }
            AuthMechanism::Sasl { encrypt: true } => ServerMechanisms::sasl(QopOffer::AuthConf),
            AuthMechanism::Sasl { encrypt: false } => {
                ServerMechanisms::sasl(QopOffer::AuthConfOrAuth)
            }
        };
        Server {
            handshake: ServerHandshake::new(mechanisms),
            auth,
            rng: StdRng::from_os_rng(),
        }
    });
    bounded(rt, security, peer, async {
        match &security.tls {
            None => plain_then(stream, side, peer).await,
            Some(config) => {
                let tls = crate::tls::accept(stream, config)
                    .await
                    .map_err(|e| tls_error(peer, e))?;
                tls_then(tls, side, peer).await
            }
        }
    })
    .await
}

/// Runs `secure` within the handshake timeout.
async fn bounded(
    rt: &dyn Runtime,
    security: &Security,
    peer: SocketAddr,
    secure: impl std::future::Future<Output = Result<Secured, SecurityError>>,
) -> Result<Secured, SecurityError> {
    let after = security.handshake_timeout;
    let timeout = async {
        sleep_for(rt, after).await;
        Err(SecurityError::TimedOut { peer, after })
    };
    future::or(secure, timeout).await
}

/// Authenticates over the plain stream (if there is a `side`), then puts the cipher around it.
async fn plain_then(
    mut stream: Box<dyn AsyncStream>,
    side: Option<impl Side>,
    peer: SocketAddr,
) -> Result<Secured, SecurityError> {
    let Some(mut side) = side else {
        return Ok(Secured::plain(stream));
    };
    let established = authenticate(&mut *stream, &mut side, peer).await?;
    let client_id = Some(Arc::from(established.app_id.as_str()));
    let stream: Box<dyn AsyncStream> = match established.cipher {
        Some(cipher) => Box::new(CipherStream::new(stream, cipher, &established.leftover)),
        None if established.leftover.is_empty() => stream,
        None => Box::new(Prefixed::new(stream, established.leftover)),
    };
    Ok(Secured { stream, client_id })
}

/// Authenticates inside TLS (if there is a `side`); a cipher goes under TLS, as Spark puts it.
async fn tls_then(
    mut tls: TlsStream,
    side: Option<impl Side>,
    peer: SocketAddr,
) -> Result<Secured, SecurityError> {
    let Some(mut side) = side else {
        return Ok(Secured::plain(Box::new(tls)));
    };
    let established = authenticate(&mut tls, &mut side, peer).await?;
    let client_id = Some(Arc::from(established.app_id.as_str()));
    let stream: Box<dyn AsyncStream> = match established.cipher {
        // Nothing may follow the handshake's last frame inside TLS: the peer's next bytes are
        // cipher-wrapped TLS records, which TLS cannot have read.
        Some(_) if !established.leftover.is_empty() => {
            return Err(SecurityError::Protocol {
                peer,
                reason: "bytes after the handshake, before the cipher".into(),
            })
        }
        Some(cipher) => {
            Box::new(tls.map_inner(|raw, read| Box::new(CipherStream::new(raw, cipher, &read))))
        }
        None if established.leftover.is_empty() => Box::new(tls),
        None => Box::new(Prefixed::new(Box::new(tls), established.leftover)),
    };
    Ok(Secured { stream, client_id })
}

/// Runs `side` on `stream` to its outcome; on failure, closes our half so the peer reads the
/// refusal before it sees the connection end.
async fn authenticate<S: AsyncStream + ?Sized>(
    stream: &mut S,
    side: &mut impl Side,
    peer: SocketAddr,
) -> Result<Established, SecurityError> {
    match exchange(stream, side, peer).await {
        Ok(established) => Ok(established),
        Err(error) => {
            let _ = poll_fn(|cx| stream.poll_shutdown(cx)).await;
            Err(error)
        }
    }
}

/// Moves the handshake's bytes until it has an outcome, its last bytes sent.
async fn exchange<S: AsyncStream + ?Sized>(
    stream: &mut S,
    side: &mut impl Side,
    peer: SocketAddr,
) -> Result<Established, SecurityError> {
    let mut sending = Bytes::new();
    let mut buf = BytesMut::new();
    poll_fn(|cx| loop {
        loop {
            if sending.is_empty() {
                match side.poll_transmit() {
                    Some(bytes) => sending = bytes,
                    None => break,
                }
            }
            match stream.poll_write_vectored(cx, &[IoSlice::new(&sending)]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(closed(peer, "write of zero bytes"))),
                Poll::Ready(Ok(n)) => sending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(closed(peer, e))),
            }
        }
        match stream.poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(closed(peer, e))),
        }
        if let Some(outcome) = side.poll_outcome() {
            return Poll::Ready(outcome.map_err(|e| error(peer, e)));
        }
        buf.clear();
        match stream.poll_read_buf(cx, &mut buf, READ_CHUNK) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => side.handle_closed(),
            Poll::Ready(Ok(_)) => side.handle_bytes(&buf),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(closed(peer, e))),
        }
    })
    .await
}

fn tls_error(peer: SocketAddr, error: crate::tls::TlsError) -> SecurityError {
    SecurityError::Tls {
        peer,
        reason: error.to_string(),
    }
}

fn closed(peer: SocketAddr, reason: impl std::fmt::Display) -> SecurityError {
    SecurityError::Closed {
        peer,
        reason: reason.to_string(),
    }
}

fn error(peer: SocketAddr, error: HandshakeError) -> SecurityError {
    match error {
        HandshakeError::AuthenticationFailed { remote } => {
            SecurityError::AuthenticationFailed { peer, remote }
        }
        HandshakeError::Closed => closed(peer, "closed by the peer"),
        other => SecurityError::Protocol {
            peer,
            reason: other.to_string(),
        },
    }
}
