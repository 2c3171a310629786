//! Runs a connection's handshake ([`rpc_proto::handshake`]) on its stream, before the
//! connection's driver exists.

use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::future;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rpc_proto::handshake::{
    ClientHandshake, ClientMechanism, Established, HandshakeError, ServerHandshake,
    ServerMechanisms,
};

use super::stream::CipherStream;
use super::{Auth, AuthMechanism, Security, SecurityError};
use crate::runtime::{sleep_for, AsyncStream, Runtime};

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
        Secured {
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
    let Some(auth) = &security.auth else {
        return Ok(Secured::plain(stream));
    };
    let refused = |remote| SecurityError::AuthenticationFailed { peer, remote };
    let secret = auth.secrets.secret(&auth.app_id).ok_or(refused(None))?;
    let mut rng = StdRng::from_os_rng();
    let mechanism = match auth.mechanism {
        AuthMechanism::Aes { version, cipher } => ClientMechanism::Aes { version, cipher },
    };
    let handshake = ClientHandshake::new(&auth.app_id, secret, mechanism, false, &mut rng)
        .map_err(|e| error(peer, e))?;
    let side = Client { handshake, rng };
    run(rt, stream, side, security, peer).await
}

/// Authenticates a connection a server accepted, as `security` says; a stream without
/// security is returned as it is.
pub(crate) async fn secure_server(
    rt: &dyn Runtime,
    stream: Box<dyn AsyncStream>,
    security: &Security,
    peer: SocketAddr,
) -> Result<Secured, SecurityError> {
    let Some(auth) = &security.auth else {
        return Ok(Secured::plain(stream));
    };
    let mechanisms = match auth.mechanism {
        AuthMechanism::Aes { version, cipher } => ServerMechanisms::aes(version, cipher),
    };
    let side = Server {
        handshake: ServerHandshake::new(mechanisms),
        auth,
        rng: StdRng::from_os_rng(),
    };
    run(rt, stream, side, security, peer).await
}

/// Runs `side` on `stream` until it ends or the timeout passes; on success, puts the cipher
/// around the stream.
async fn run(
    rt: &dyn Runtime,
    mut stream: Box<dyn AsyncStream>,
    mut side: impl Side,
    security: &Security,
    peer: SocketAddr,
) -> Result<Secured, SecurityError> {
    let after = security.handshake_timeout;
    let exchange = exchange(&mut stream, &mut side, peer);
    let timeout = async {
        sleep_for(rt, after).await;
        Err(SecurityError::TimedOut { peer, after })
    };
    let outcome = future::or(exchange, timeout).await;
    let established = match outcome {
        Ok(established) => established,
        Err(error) => {
            // Whatever the refusal said was flushed; close our half cleanly so the peer
            // reads it before it sees the connection end.
            let _ = future::or(poll_fn(|cx| stream.poll_shutdown(cx)), async {
                sleep_for(rt, std::time::Duration::from_secs(1)).await;
                Ok(())
            })
            .await;
            return Err(error);
        }
    };
    let client_id = Some(Arc::from(established.app_id.as_str()));
    let stream: Box<dyn AsyncStream> = match established.cipher {
        Some(cipher) => Box::new(CipherStream::new(stream, cipher, &established.leftover)),
        None if established.leftover.is_empty() => stream,
        None => {
            return Err(SecurityError::Protocol {
                peer,
                reason: "bytes after the handshake on a connection without a cipher".into(),
            })
        }
    };
    Ok(Secured { stream, client_id })
}

/// Moves the handshake's bytes until it has an outcome, its last bytes sent.
async fn exchange(
    stream: &mut Box<dyn AsyncStream>,
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
