//! The authentication handshake that opens a connection, over Spark's frames, as a pure state
//! machine.
//!
//! Spark authenticates a connection before anything else crosses it: the client sends its
//! first message in an `RpcRequest`, the server answers in an `RpcResponse` (or an
//! `RpcFailure`), until both sides are satisfied. Then, for AES, every byte that follows in
//! either direction goes through the transport cipher. This module runs that exchange on top
//! of [`auth`](crate::auth) (and [`sasl`](crate::sasl)): bytes in, bytes out, and at the end
//! an [`Established`] with the peer's app id, the [`TransportCipher`] to install, and the
//! bytes that arrived after the last handshake frame (already ciphertext).
//!
//! ```text
//!   client                                              server
//!   ClientHandshake::new ── poll_transmit ──►  handle_bytes ─┐  (only RpcRequests whose body
//!   handle_bytes ◄── poll_transmit ──────────────────────────┘   is a handshake message)
//!   poll_outcome: Established { app_id, cipher, leftover }      poll_outcome: Established
//! ```
//!
//! Drain rule: after [`new`](ClientHandshake::new) and after every `handle_*` call, send every
//! [`poll_transmit`](ClientHandshake::poll_transmit) until `None`, then check
//! [`poll_outcome`](ClientHandshake::poll_outcome). An outcome, success or failure, is final;
//! on failure, send what is left to transmit (the server's refusal) and close.
//!
//! The server accepts nothing but the handshake: any other frame, a frame larger than a
//! handshake needs ([`MAX_HANDSHAKE_FRAME`]), or more round trips than the protocol has, fail
//! the handshake. Its outcome does not depend on how the input was split. A failed attempt is one
//! [`HandshakeError::AuthenticationFailed`] whatever was wrong, and the client is told only
//! Spark's `Authentication failed.`.
//!
//! ```
//! use rpc_proto::auth::{AuthVersion, Secret};
//! use rpc_proto::cipher::CipherMode;
//! use rpc_proto::handshake::{ClientHandshake, ClientMechanism, ServerHandshake, ServerMechanisms};
//!
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7); // a fixed seed: for examples only
//! let mechanism = ClientMechanism::Aes { version: AuthVersion::V2, cipher: CipherMode::Gcm };
//! let mut client =
//!     ClientHandshake::new("app-1", Secret::new("s3cret"), mechanism, false, &mut rng)?;
//! let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
//! let secrets = |app: &str| (app == "app-1").then(|| Secret::new("s3cret"));
//!
//! while let Some(bytes) = client.poll_transmit() {
//!     server.handle_bytes(&bytes, &secrets, &mut rng);
//! }
//! while let Some(bytes) = server.poll_transmit() {
//!     client.handle_bytes(&bytes, &mut rng);
//! }
//! let at_server = server.poll_outcome().expect("done")?;
//! let at_client = client.poll_outcome().expect("done")?;
//! assert_eq!(at_server.app_id, "app-1");
//! assert_eq!(at_client.app_id, "app-1");
//! assert!(at_client.cipher.is_some());
//! # Ok::<(), rpc_proto::handshake::HandshakeError>(())
//! ```

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rand::{CryptoRng, RngCore};

use crate::auth::{
    AuthClient, AuthRandomness, AuthServer, AuthVersion, Secret, TransportKeys, AUTH_MESSAGE_TAG,
};
use crate::cipher::{CipherKeys, CipherMode, TransportCipher};
use crate::frame::{Decoded, Frame, FrameDecoder};
use crate::id::RequestId;
use crate::sasl::{
    Qop, QopOffer, SaslClient, SaslError, SaslMessage, SaslServer, MAX_SASL_APP_ID_LEN,
    NONCE_RANDOM_LEN,
};

/// The largest frame either side accepts during the handshake: ample for AES messages (a few
/// hundred bytes), SASL tokens, and a Java stack trace in a refusal.
pub const MAX_HANDSHAKE_FRAME: u64 = 64 * 1024;

/// The text Spark's server fails a bad AES challenge with (the client sees it as the
/// `RpcFailure`'s message); we send the same, and nothing that says what was wrong.
pub const AUTH_FAILED_TEXT: &str = "java.lang.IllegalArgumentException: Authentication failed.";

/// What a SASL-only server answers an AES challenge with (Spark's text), keeping the
/// connection open for the client's SASL fallback.
pub const SASL_EXPECTED_TEXT: &str = "java.lang.IllegalStateException: Expected SaslMessage, \
     received something else (maybe your client does not have SASL enabled?)";

/// Whether `failure` (an `RpcFailure`'s text) is how a server that requires authentication
/// refuses a request from a connection that did not authenticate: ours and Spark's AES and
/// SASL servers.
pub fn is_refusal(failure: &str) -> bool {
    failure.starts_with(AUTH_FAILED_TEXT)
        || failure.contains("Expected SaslMessage, received something else")
        || failure.contains("Unknown challenge message")
}

/// How a client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMechanism {
    /// Spark's AES protocol (`spark.network.crypto.enabled=true`), then the transport cipher.
    Aes {
        /// `spark.network.crypto.authEngineVersion`: both sides must agree.
        version: AuthVersion,
        /// `spark.network.crypto.cipher`: both sides must agree.
        cipher: CipherMode,
    },
    /// SASL DIGEST-MD5 (Spark's default with `spark.authenticate=true`).
    Sasl {
        /// Ask for the `auth-conf` layer (`spark.authenticate.enableSaslEncryption`); the
        /// handshake fails if the server does not offer it.
        encrypt: bool,
    },
}

/// What a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerMechanisms {
    /// AES authentication with this version and cipher, if accepted.
    pub aes: Option<(AuthVersion, CipherMode)>,
    /// SASL DIGEST-MD5 with these qualities of protection, if accepted.
    pub sasl: Option<QopOffer>,
}

impl ServerMechanisms {
    /// AES only.
    pub fn aes(version: AuthVersion, cipher: CipherMode) -> Self {
        Self {
            aes: Some((version, cipher)),
            sasl: None,
        }
    }

    /// SASL only, offering `offer`.
    pub fn sasl(offer: QopOffer) -> Self {
        Self {
            aes: None,
            sasl: Some(offer),
        }
    }

    /// These, and SASL too (Spark's `saslFallback` on an AES server).
    pub fn with_sasl(mut self, offer: QopOffer) -> Self {
        self.sasl = Some(offer);
        self
    }
}

/// SASL round trips a server allows: DIGEST-MD5 takes two.
const MAX_SASL_ROUNDS: u32 = 3;

/// Why a handshake did not establish an authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer did not prove it holds the secret, asked for an app this side has no secret
    /// for, or (on the client) the server refused us; `remote` is the server's refusal text,
    /// when it sent one. Deliberately one variant on the server: it never says which check
    /// failed.
    #[error("authentication failed{}", remote.as_ref().map(|r| format!(": the peer said {r:?}")).unwrap_or_default())]
    AuthenticationFailed {
        /// The server's refusal, on the client.
        remote: Option<String>,
    },
    /// The peer sent something a handshake never contains: another frame type, an
    /// undecodable frame, an oversized one, or bytes out of turn.
    #[error("protocol violation during the handshake: {0}")]
    Protocol(String),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The caller's app id is too long to send.
    #[error("app id is {len} bytes long, above the limit of {max}")]
    AppIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A finished handshake.
#[derive(Debug)]
#[must_use]
pub struct Established {
    /// The app id the client authenticated as (Spark's `clientId`).
    pub app_id: String,
    /// The cipher to put between the socket and the frame codec, if the mechanism has one.
    pub cipher: Option<TransportCipher>,
    /// Bytes that arrived after the handshake's last frame: the first bytes of the
    /// encrypted stream (feed them to the cipher), or of the plain one.
    pub leftover: Bytes,
}

/// Frame input shared by both roles: a bounded decoder and the bytes not yet decoded.
#[derive(Debug)]
struct Input {
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl Input {
    fn new() -> Self {
        Self {
            decoder: FrameDecoder::new(MAX_HANDSHAKE_FRAME),
            buf: BytesMut::new(),
        }
    }

    /// The next whole frame, if the buffer holds one.
    fn next(&mut self) -> Result<Option<Frame>, HandshakeError> {
        match self.decoder.decode(&mut self.buf) {
            Ok(None) => Ok(None),
            Ok(Some(Decoded::Frame(frame))) => Ok(Some(frame)),
            // Bodies follow only StreamResponse/UploadStream frames, refused before this.
            Ok(Some(Decoded::Body { .. })) => {
                Err(HandshakeError::Protocol("unexpected stream body".into()))
            }
            Err(e) => Err(HandshakeError::Protocol(e.to_string())),
        }
    }

    fn leftover(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// A random positive request id, as Spark draws them.
fn request_id<R: RngCore + ?Sized>(rng: &mut R) -> RequestId {
    RequestId(rng.next_u64() & (i64::MAX as u64))
}

fn randomness<R: CryptoRng + ?Sized>(rng: &mut R) -> AuthRandomness {
    let mut bytes = [0; AuthRandomness::LEN];
    rng.fill_bytes(&mut bytes);
    let random = AuthRandomness::from_bytes(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    random
}

fn cipher(mode: CipherMode, keys: &TransportKeys) -> TransportCipher {
    let keys = CipherKeys::new(keys.key(), *keys.inbound_iv(), *keys.outbound_iv())
        .expect("auth keys are 16 or 32 bytes");
    TransportCipher::new(mode, &keys)
}

/// The client's side of the handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    app_id: String,
    state: ClientState,
    /// The server's refusal of our AES challenge, when we fell back to SASL: reported if
    /// SASL then fails too.
    aes_refusal: Option<String>,
    input: Input,
    transmit: VecDeque<Bytes>,
    outcome: Option<Result<Established, HandshakeError>>,
}

enum ClientState {
    Aes {
        client: AuthClient,
        cipher: CipherMode,
        request: RequestId,
        /// With Spark's `saslFallback`: the secret to try SASL with if the server refuses.
        fallback: Option<Secret>,
    },
    Sasl {
        client: Box<SaslClient>,
        request: RequestId,
    },
    Done,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Aes { .. } => "Aes",
            Self::Sasl { .. } => "Sasl",
            Self::Done => "Done",
        })
    }
}

fn nonce_random<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; NONCE_RANDOM_LEN] {
    let mut random = [0; NONCE_RANDOM_LEN];
    rng.fill_bytes(&mut random);
    random
}

/// A SASL failure as the handshake reports it: a credential failure is one error, anything
/// else the peer's protocol violation.
fn sasl_error(error: SaslError) -> HandshakeError {
    match error {
        SaslError::AuthenticationFailed => HandshakeError::AuthenticationFailed { remote: None },
        other => HandshakeError::Protocol(other.to_string()),
    }
}

impl ClientHandshake {
    /// Starts authenticating as `app_id` with `secret`; the first message is ready to
    /// transmit. `rng` must be a cryptographically secure source: it draws the ephemeral
    /// key, salts and nonces.
    ///
    /// `sasl_fallback` is Spark's `spark.network.crypto.saslFallback`: with AES, if the server
    /// refuses the challenge, try SASL (without encryption) on the same connection. It makes a
    /// downgrade possible: an active attacker who makes AES fail gets an unencrypted
    /// connection.
    pub fn new<R: CryptoRng + ?Sized>(
        app_id: &str,
        secret: Secret,
        mechanism: ClientMechanism,
        sasl_fallback: bool,
        rng: &mut R,
    ) -> Result<Self, HandshakeError> {
        if app_id.len() > MAX_SASL_APP_ID_LEN {
            return Err(HandshakeError::AppIdTooLong {
                len: app_id.len(),
                max: MAX_SASL_APP_ID_LEN,
            });
        }
        let mut handshake = Self {
            app_id: app_id.to_owned(),
            state: ClientState::Done,
            aes_refusal: None,
            input: Input::new(),
            transmit: VecDeque::new(),
            outcome: None,
        };
        match mechanism {
            ClientMechanism::Sasl { encrypt } => {
                let qop = if encrypt { Qop::AuthConf } else { Qop::Auth };
                handshake.start_sasl(&secret, qop, rng);
            }
            ClientMechanism::Aes { version, cipher } => {
                let fallback = sasl_fallback.then(|| secret.clone());
                let client = AuthClient::new(version, app_id, secret, randomness(rng)).map_err(
                    |e| match e {
                        crate::auth::AuthError::AppIdTooLong { len, max } => {
                            HandshakeError::AppIdTooLong { len, max }
                        }
                        _ => HandshakeError::AuthenticationFailed { remote: None },
                    },
                )?;
                let request = request_id(rng);
                handshake.send(request, Bytes::copy_from_slice(client.challenge()));
                handshake.state = ClientState::Aes {
                    client,
                    cipher,
                    request,
                    fallback,
                };
            }
        }
        Ok(handshake)
    }

    fn start_sasl<R: CryptoRng + ?Sized>(&mut self, secret: &Secret, qop: Qop, rng: &mut R) {
        let client = SaslClient::new(self.app_id.clone(), secret, qop, nonce_random(rng));
        let request = request_id(rng);
        self.send(request, client.first_message().into());
        self.state = ClientState::Sasl {
            client: Box::new(client),
            request,
        };
    }

    fn send(&mut self, request: RequestId, body: Bytes) {
        self.transmit
            .push_back(Frame::RpcRequest { request, body }.to_bytes());
    }

    /// The next bytes to send, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The result, once there is one (taken once).
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<Result<Established, HandshakeError>> {
        self.outcome.take()
    }

    /// Whether the handshake has ended (its outcome may already have been taken).
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }

    /// Bytes from the server.
    pub fn handle_bytes<R: CryptoRng + ?Sized>(&mut self, data: &[u8], rng: &mut R) {
        if self.is_done() {
            return;
        }
        self.input.buf.extend_from_slice(data);
        loop {
            let frame = match self.input.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.fail(e),
            };
            self.handle_frame(frame, rng);
            if self.is_done() {
                return;
            }
        }
    }

    /// The server closed the connection.
    pub fn handle_closed(&mut self) {
        if !self.is_done() {
            // After a fallback, the AES refusal explains the close better (Spark's server
            // closes after refusing a challenge).
            let error = match self.aes_refusal.take() {
                Some(remote) => HandshakeError::AuthenticationFailed {
                    remote: Some(remote),
                },
                None => HandshakeError::Closed,
            };
            self.fail(error);
        }
    }

    fn fail(&mut self, error: HandshakeError) {
        self.state = ClientState::Done;
        self.outcome = Some(Err(error));
    }

    fn handle_frame<R: CryptoRng + ?Sized>(&mut self, frame: Frame, rng: &mut R) {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        match (state, frame) {
            (
                ClientState::Sasl {
                    mut client,
                    request,
                },
                Frame::RpcResponse { request: r, body },
            ) if r == request => match client.handle_response(&body) {
                Ok(Some(next)) => {
                    let request = request_id(rng);
                    self.send(request, next.into());
                    self.state = ClientState::Sasl { client, request };
                }
                Ok(None) => {
                    self.outcome = Some(Ok(Established {
                        app_id: self.app_id.clone(),
                        cipher: client.into_layer().map(TransportCipher::sasl),
                        leftover: self.input.leftover(),
                    }));
                }
                Err(e) => self.fail(sasl_error(e)),
            },
            (ClientState::Sasl { request, .. }, Frame::RpcFailure { request: r, error })
                if r == request =>
            {
                self.fail(HandshakeError::AuthenticationFailed {
                    remote: Some(error),
                });
            }
            (
                ClientState::Aes {
                    fallback: Some(secret),
                    request,
                    ..
                },
                Frame::RpcFailure { request: r, error },
            ) if r == request => {
                // Spark's saslFallback: the server may not speak AES; try SASL.
                self.aes_refusal = Some(error);
                self.start_sasl(&secret, Qop::Auth, rng);
            }
            (
                ClientState::Aes {
                    client,
                    cipher: mode,
                    request,
                    ..
                },
                Frame::RpcResponse { request: r, body },
            ) if r == request => match client.handle_response(&body) {
                Ok(keys) => {
                    self.outcome = Some(Ok(Established {
                        app_id: self.app_id.clone(),
                        cipher: Some(cipher(mode, &keys)),
                        leftover: self.input.leftover(),
                    }));
                }
                Err(_) => self.fail(HandshakeError::AuthenticationFailed { remote: None }),
            },
            (ClientState::Aes { request, .. }, Frame::RpcFailure { request: r, error })
                if r == request =>
            {
                self.fail(HandshakeError::AuthenticationFailed {
                    remote: Some(error),
                });
            }
            (_, frame) => self.fail(HandshakeError::Protocol(format!(
                "expected the answer to the handshake, got {:?}",
                frame.message_type()
            ))),
        }
    }
}

/// The server's side of the handshake: accepts only handshake messages until it ends.
#[derive(Debug)]
pub struct ServerHandshake {
    mechanisms: ServerMechanisms,
    done: bool,
    /// A SASL exchange in progress, and the rounds it took.
    sasl: Option<(Box<SaslServer>, u32)>,
    /// Whether an AES challenge was refused (once) to let the client fall back to SASL.
    refused_aes: bool,
    input: Input,
    transmit: VecDeque<Bytes>,
    outcome: Option<Result<Established, HandshakeError>>,
}

impl ServerHandshake {
    /// A server handshake accepting `mechanisms`.
    pub fn new(mechanisms: ServerMechanisms) -> Self {
        Self {
            mechanisms,
            done: false,
            sasl: None,
            refused_aes: false,
            input: Input::new(),
            transmit: VecDeque::new(),
            outcome: None,
        }
    }

    /// The next bytes to send, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The result, once there is one (taken once).
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<Result<Established, HandshakeError>> {
        self.outcome.take()
    }

    /// Whether the handshake has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The client closed the connection.
    pub fn handle_closed(&mut self) {
        if !self.done {
            self.fail(HandshakeError::Closed);
        }
    }

    /// Bytes from the client. `secrets` gives the secret of an app id (Spark's
    /// `SecretKeyHolder`), `None` for an app this server does not know; `rng` must be a
    /// cryptographically secure source.
    pub fn handle_bytes<R: CryptoRng + ?Sized>(
        &mut self,
        data: &[u8],
        secrets: &dyn Fn(&str) -> Option<Secret>,
        rng: &mut R,
    ) {
        if self.done {
            return;
        }
        self.input.buf.extend_from_slice(data);
        while !self.done {
            let frame = match self.input.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.fail(e),
            };
            self.handle_frame(frame, secrets, rng);
        }
    }

    fn handle_frame<R: CryptoRng + ?Sized>(
        &mut self,
        frame: Frame,
        secrets: &dyn Fn(&str) -> Option<Secret>,
        rng: &mut R,
    ) {
        let (request, body) = match frame {
            Frame::RpcRequest { request, body } => (request, body),
            other => {
                return self.fail(HandshakeError::Protocol(format!(
                    "{:?} before authentication",
                    other.message_type()
                )))
            }
        };
        // Frames are taken in order however they arrive (a client waits for each answer,
        // but when it does not, the outcome must not depend on how its bytes were cut): SASL
        // rounds are bounded, and what follows the last frame is the encrypted stream's,
        // which a stranger cannot produce.
        if let Some((server, rounds)) = self.sasl.take() {
            return self.sasl_step(server, rounds, request, &body);
        }
        match (body.first(), self.mechanisms.aes, self.mechanisms.sasl) {
            (Some(&crate::sasl::SASL_MESSAGE_TAG), _, Some(offer)) => {
                let message = match SaslMessage::decode(&body) {
                    Ok(message) => message,
                    Err(e) => return self.refuse(request, HandshakeError::Protocol(e.to_string())),
                };
                let Some(secret) = secrets(&message.app_id) else {
                    return self.refuse(
                        request,
                        HandshakeError::AuthenticationFailed { remote: None },
                    );
                };
                let server =
                    SaslServer::new(message.app_id.clone(), &secret, offer, nonce_random(rng));
                self.sasl_step(Box::new(server), 0, request, &body);
            }
            (Some(&AUTH_MESSAGE_TAG), None, Some(_)) if !self.refused_aes => {
                // A SASL server, an AES client: as Spark's, refuse the challenge but keep
                // the connection, so a client with Spark's saslFallback can retry with SASL.
                // Once: a second challenge ends the handshake.
                self.refused_aes = true;
                self.transmit.push_back(
                    Frame::RpcFailure {
                        request,
                        error: SASL_EXPECTED_TEXT.to_owned(),
                    }
                    .to_bytes(),
                );
            }
            (Some(&AUTH_MESSAGE_TAG), Some((version, mode)), _) => {
                let server = AuthServer::new(version);
                match server.handle_challenge(&body, |app| secrets(app), randomness(rng)) {
                    Ok(accepted) => {
                        self.transmit.push_back(
                            Frame::RpcResponse {
                                request,
                                body: accepted.response.into(),
                            }
                            .to_bytes(),
                        );
                        self.done = true;
                        self.outcome = Some(Ok(Established {
                            app_id: accepted.app_id,
                            cipher: Some(cipher(mode, &accepted.keys)),
                            leftover: self.input.leftover(),
                        }));
                    }
                    Err(_) => self.refuse(
                        request,
                        HandshakeError::AuthenticationFailed { remote: None },
                    ),
                }
            }
            _ => self.refuse(
                request,
                HandshakeError::AuthenticationFailed { remote: None },
            ),
        }
    }

    /// One SASL round: `body` is a `SaslMessage` (the first one already decoded once, which
    /// is harmless: decoding is pure).
    fn sasl_step(
        &mut self,
        mut server: Box<SaslServer>,
        rounds: u32,
        request: RequestId,
        body: &[u8],
    ) {
        if rounds >= MAX_SASL_ROUNDS {
            return self.refuse(
                request,
                HandshakeError::Protocol("too many sasl rounds".into()),
            );
        }
        let message = match SaslMessage::decode(body) {
            Ok(message) if message.app_id == server.app_id() => message,
            Ok(_) => {
                return self.refuse(
                    request,
                    HandshakeError::AuthenticationFailed { remote: None },
                )
            }
            Err(e) => return self.refuse(request, HandshakeError::Protocol(e.to_string())),
        };
        match server.handle_message(&message.token) {
            Ok(token) => {
                self.transmit.push_back(
                    Frame::RpcResponse {
                        request,
                        body: token.into(),
                    }
                    .to_bytes(),
                );
                if server.is_complete() {
                    self.done = true;
                    let app_id = server.app_id().to_owned();
                    self.outcome = Some(Ok(Established {
                        app_id,
                        cipher: server.into_layer().map(TransportCipher::sasl),
                        leftover: self.input.leftover(),
                    }));
                } else {
                    self.sasl = Some((server, rounds + 1));
                }
            }
            Err(e) => self.refuse(request, sasl_error(e)),
        }
    }

    /// Fails the handshake and answers the request with Spark's refusal.
    fn refuse(&mut self, request: RequestId, error: HandshakeError) {
        self.transmit.push_back(
            Frame::RpcFailure {
                request,
                error: AUTH_FAILED_TEXT.to_owned(),
            }
            .to_bytes(),
        );
        self.fail(error);
    }

    fn fail(&mut self, error: HandshakeError) {
        self.done = true;
        self.outcome = Some(Err(error));
    }
}
