//! Spark's SASL DIGEST-MD5 authentication (RFC 2831) as pure state machines.
//!
//! With `spark.authenticate=true` and `spark.network.crypto.enabled=false` (the defaults of
//! Spark 4.3.0), Spark authenticates connections with SASL DIGEST-MD5 as the JDK implements it,
//! configured by `SparkSaslClient`/`SparkSaslServer`. This module is that handshake, byte for
//! byte, and its optional `auth-conf` confidentiality layer. It does no I/O and draws no
//! randomness: the caller passes the secret and the nonce bytes, and carries the messages.
//!
//! ```text
//!  client                                                   server
//!  SaslClient::new(app id, secret, qop, rnd)
//!   first_message() ── RpcRequest: SaslMessage(appId, "") ──►  SaslMessage::decode, look up the
//!                                                              secret by appId, SaslServer::new
//!                                                              handle_message("")
//!   handle_response(challenge) ◄── RpcResponse: raw token ───   realm, nonce, qop, cipher, ...
//!   ─► Some(SaslMessage(appId, digest-response)) ── RpcRequest ──►  handle_message(response)
//!                                                              checks the digest (constant time)
//!   handle_response(rspauth) ◄──── RpcResponse: rspauth=… ────  complete
//!   ─► None: complete (rspauth checked in constant time)
//!  into_layer(): Some(SaslLayer) with auth-conf               into_layer()
//! ```
//!
//! Spark's parameters are fixed here: the digest-uri is `null/default` (protocol `null`,
//! server name `default`), the realm `default`, the SASL user the Base64 of
//! [`SPARK_SASL_USER`], and the password the Base64 of the secret's UTF-8 bytes **with a `\n`
//! after every 76 characters** (Netty's line-breaking encoder; a 64-character secret, the
//! default generated length, gets one).
//!
//! A wrong secret fails on the server with [`SaslError::AuthenticationFailed`] (Spark answers
//! with an `RpcFailure` and keeps the connection open), and a server that does not know the
//! secret fails on the client with the same error.
//!
//! With [`Qop::AuthConf`] (`spark.authenticate.enableSaslEncryption`), both sides get a
//! [`SaslLayer`]: every byte after the handshake (after the server's last response is sent,
//! after the client has read it) goes through [`SaslLayer::encrypt`] and
//! [`SaslLayer::decrypt`].
//!
//! # Driving it
//!
//! * Client: send [`SaslClient::first_message`] as an `RpcRequest` body; feed each
//!   `RpcResponse` body to [`SaslClient::handle_response`] and send what it returns as the next
//!   `RpcRequest`, until it returns `None`. An `RpcFailure` instead of a response means the
//!   server refused (Spark's text for a wrong secret contains `Mismatched response`).
//! * Server: decode each `RpcRequest` body with [`SaslMessage::decode`] (a first byte other than
//!   [`SASL_MESSAGE_TAG`] is not SASL: with Spark's `saslFallback` an AES server sees `0xFB`
//!   there). On the first message look the secret up by its `app_id` and build the
//!   [`SaslServer`]; answer every token with [`SaslServer::handle_message`]'s output as the
//!   `RpcResponse` body, or with an `RpcFailure` on error (Spark keeps the connection open).
//! * Each side draws [`NONCE_RANDOM_LEN`] (30) fresh random bytes for its nonce.
//! * With `auth-conf`, the switch happens at a message boundary that leaves nothing in flight:
//!   the server's last response goes out in clear and everything after it is wrapped; the
//!   client reads that response in clear and wraps everything after it. Spark's client waits
//!   for the response before sending, so no buffered bytes straddle the switch.
//!
//! # Example
//!
//! ```
//! use rpc_proto::auth::Secret;
//! use rpc_proto::sasl::{Qop, QopOffer, SaslClient, SaslMessage, SaslServer};
//!
//! let secret = Secret::new("s3cret");
//! let mut client = SaslClient::new("sparkSaslUser", &secret, Qop::AuthConf, [7; 30]);
//!
//! // The server learns the app id from the first message and looks the secret up by it.
//! let first = SaslMessage::decode(&client.first_message())?;
//! let mut server = SaslServer::new(&first.app_id, &secret, QopOffer::AuthConfOrAuth, [9; 30]);
//! let mut reply = server.handle_message(&first.token)?;
//! while let Some(request) = client.handle_response(&reply)? {
//!     reply = server.handle_message(&SaslMessage::decode(&request)?.token)?;
//! }
//! assert!(client.is_complete() && server.is_complete());
//!
//! let (mut c, mut s) = (client.into_layer().unwrap(), server.into_layer().unwrap());
//! let mut wire = bytes::BytesMut::new();
//! c.encrypt(b"hello", &mut wire);
//! let mut plain = bytes::BytesMut::new();
//! s.decrypt(&wire, &mut plain)?;
//! assert_eq!(&plain[..], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod digest;
mod directive;
mod layer;
mod message;
mod server;

pub use client::SaslClient;
pub use layer::{
    SaslCipher, SaslLayer, DEFAULT_MAX_WRAPPED_LEN, MAX_ENCRYPTED_BLOCK_SIZE,
    SASL_FRAME_HEADER_LEN, WRAP_OVERHEAD,
};
pub use message::{
    SaslMessage, SaslMessageError, MAX_SASL_APP_ID_LEN, MAX_SASL_TOKEN_LEN, SASL_MESSAGE_TAG,
};
pub use server::SaslServer;

/// The SASL user Spark authenticates as (`SecretKeyHolder.getSaslUser`), before Spark's Base64
/// encoding (`c3BhcmtTYXNsVXNlcg==` on the wire).
pub const SPARK_SASL_USER: &str = "sparkSaslUser";

/// How many random bytes each side's nonce takes ([`SaslClient::RANDOM_LEN`],
/// [`SaslServer::RANDOM_LEN`]).
pub const NONCE_RANDOM_LEN: usize = digest::NONCE_RANDOM_LEN;

/// Longest server token a client reads (the JDK's `MAX_CHALLENGE_LENGTH`).
pub const MAX_CHALLENGE_LEN: usize = 2048;

/// Longest client token a server reads (the JDK's `MAX_RESPONSE_LENGTH`).
pub const MAX_RESPONSE_LEN: usize = 4096;

/// Spark's digest-uri: protocol `null` (Spark passes none), server name `default`.
const DIGEST_URI: &[u8] = b"null/default";

/// Spark's realm (`SparkSaslServer.DEFAULT_REALM`).
const REALM: &[u8] = b"default";

/// A quality of protection a client asks for and a handshake settles on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum Qop {
    /// Authentication only; the connection stays in clear (Spark's default).
    #[default]
    Auth,
    /// Authentication and the confidentiality layer ([`SaslLayer`];
    /// `spark.authenticate.enableSaslEncryption`).
    AuthConf,
}

impl Qop {
    /// The QOP's RFC 2831 token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::AuthConf => "auth-conf",
        }
    }
}

/// What a server offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum QopOffer {
    /// `auth` only, refusing clients that insist on encryption (Spark's server never offers
    /// this: without `serverAlwaysEncrypt` it offers both).
    Auth,
    /// `auth-conf,auth`: what Spark's server always offers; the client chooses.
    #[default]
    AuthConfOrAuth,
    /// `auth-conf` only (`spark.network.sasl.serverAlwaysEncrypt`).
    AuthConf,
}

impl QopOffer {
    /// The `qop` directive's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::AuthConfOrAuth => "auth-conf,auth",
            Self::AuthConf => "auth-conf",
        }
    }

    /// Whether `qop` is on offer.
    pub fn offers(self, qop: Qop) -> bool {
        matches!(
            (self, qop),
            (Self::Auth | Self::AuthConfOrAuth, Qop::Auth)
                | (Self::AuthConf | Self::AuthConfOrAuth, Qop::AuthConf)
        )
    }
}

/// Why a SASL handshake or layer failed. Every error is final for the handshake or layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// The peer does not know the secret (or, on a server, named another SASL user or an
    /// authorization id other than itself). Deliberately one variant.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The peer's token is longer than DIGEST-MD5 allows.
    #[error("sasl token of {len} bytes exceeds the limit of {max}")]
    TokenTooLong {
        /// The token's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not a well-formed directive list.
    #[error("malformed digest directives at byte {offset}: expected {expected}")]
    Syntax {
        /// Where the parser stopped.
        offset: usize,
        /// What it expected there.
        expected: &'static str,
    },
    /// A directive appears twice.
    #[error("duplicate {0} directive")]
    DuplicateDirective(&'static str),
    /// A required directive is missing.
    #[error("missing {0} directive")]
    MissingDirective(&'static str),
    /// A directive has a value this side cannot accept.
    #[error("invalid {0} directive")]
    InvalidDirective(&'static str),
    /// The server offers no QOP the client asked for, or the client chose one not offered.
    #[error("no common quality of protection")]
    NoCommonQop,
    /// The client chose a QOP the server did not offer.
    #[error("client chose a quality of protection that was not offered")]
    QopNotOffered,
    /// No cipher both sides implement (this crate: `3des`, `rc4`).
    #[error("no common auth-conf cipher")]
    NoCommonCipher,
    /// The client's realm is not `default`.
    #[error("wrong realm")]
    WrongRealm,
    /// The client's nonce is not the one this server sent.
    #[error("wrong nonce")]
    WrongNonce,
    /// The client's nonce count is not 1.
    #[error("wrong nonce count")]
    WrongNonceCount,
    /// The client's digest-uri is missing or not `null/default`.
    #[error("wrong digest-uri")]
    WrongDigestUri,
    /// The handshake is over (complete or failed); nothing more is accepted.
    #[error("sasl handshake is finished")]
    Finished,
    /// A message the first byte of which is not the SASL tag, or otherwise malformed.
    #[error("malformed sasl message: {0}")]
    Message(#[from] SaslMessageError),
    /// A wrapped message failed its MAC, padding or type check (tampered or truncated).
    #[error("sasl layer integrity check failed")]
    Integrity,
    /// A wrapped message carries another sequence number than the next expected one (replayed,
    /// reordered or dropped).
    #[error("sasl layer sequence number {got}, expected {expected}")]
    SequenceMismatch {
        /// The next sequence number.
        expected: u32,
        /// The one received.
        got: u32,
    },
    /// A frame's length field is below 8 or above the limit.
    #[error("sasl frame length {len} outside 8..=8+{max}")]
    BadFrameLength {
        /// The length field.
        len: i64,
        /// The limit on wrapped bytes.
        max: usize,
    },
    /// The layer failed earlier; it accepts nothing more.
    #[error("sasl layer failed earlier")]
    LayerFailed,
}

/// Checks a `maxbuf` value: a decimal number that fits an `i32`, as the JDK parses it.
fn parse_maxbuf(value: &[u8]) -> Result<u32, SaslError> {
    let invalid = SaslError::InvalidDirective("maxbuf");
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid);
    }
    let n = value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n <= i32::MAX as u32)
        .ok_or(invalid)
}

#[cfg(test)]
mod tests;
