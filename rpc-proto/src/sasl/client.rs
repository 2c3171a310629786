//! The DIGEST-MD5 client, as the JDK's `DigestMD5Client` runs under Spark's `SparkSaslClient`.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::digest::{self, DigestInput, NONCE_COUNT, NONCE_RANDOM_LEN};
use super::directive::{self, Writer};
use super::layer::{SaslCipher, SaslLayer};
use super::message::{SaslMessage, MAX_SASL_APP_ID_LEN};
use super::{Qop, SaslError, DIGEST_URI, MAX_CHALLENGE_LEN, MAX_RESPONSE_LEN, SPARK_SASL_USER};
use crate::auth::Secret;

/// The JDK client's receive buffer size, sent as `maxbuf` (`AbstractSaslImpl.recvMaxBufSize`).
const CLIENT_MAXBUF: &[u8] = b"65536";

/// The directives a client reads from the server's challenges.
const CHALLENGE_KEYS: [&str; 8] = [
    "realm",
    "qop",
    "algorithm",
    "nonce",
    "maxbuf",
    "charset",
    "cipher",
    "rspauth",
];
const REALM: usize = 0;
const QOP: usize = 1;
const ALGORITHM: usize = 2;
const NONCE: usize = 3;
const MAXBUF: usize = 4;
const CHARSET: usize = 5;
const CIPHER: usize = 6;
const RSPAUTH: usize = 7;

/// The client side of Spark's SASL DIGEST-MD5 handshake (`SparkSaslClient` on the JDK's
/// `DigestMD5Client`), step by step and without I/O.
///
/// Send [`first_message`](Self::first_message) as an `RpcRequest`; feed each `RpcResponse`
/// body to [`handle_response`](Self::handle_response) and send what it returns, until it
/// returns `None`: the server has proved it knows the secret. Any error is final.
pub struct SaslClient {
    app_id: String,
    /// Base64 of the SASL user, as Spark sends it.
    user: Vec<u8>,
    /// Spark's password: the line-broken Base64 of the secret.
    password: Zeroizing<Vec<u8>>,
    qop: Qop,
    cnonce: Zeroizing<Vec<u8>>,
    state: State,
}

enum State {
    AwaitChallenge,
    AwaitRspauth {
        expected: Zeroizing<[u8; 32]>,
        session_key: Zeroizing<[u8; 16]>,
        cipher: Option<SaslCipher>,
    },
    Complete(Option<SaslLayer>),
    Failed,
}

impl std::fmt::Debug for SaslClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitChallenge => "await challenge",
            State::AwaitRspauth { .. } => "await rspauth",
            State::Complete(_) => "complete",
            State::Failed => "failed",
        };
        f.debug_struct("SaslClient")
            .field("app_id", &self.app_id)
            .field("qop", &self.qop)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl SaslClient {
    /// How many random bytes the client nonce takes (the JDK's 30, sent as 40 Base64 chars).
    pub const RANDOM_LEN: usize = NONCE_RANDOM_LEN;

    /// A client authenticating as `app_id` (what the server looks the secret up by; Spark's
    /// RpcEnv sends `"sparkSaslUser"`, block transfer the application id) with `secret`,
    /// asking for `qop`, as SASL user [`SPARK_SASL_USER`]. `cnonce_random` must be fresh
    /// uniformly random bytes, never reused.
    ///
    /// # Panics
    ///
    /// If `app_id` is longer than [`MAX_SASL_APP_ID_LEN`] bytes (a server would refuse it).
    pub fn new(
        app_id: impl Into<String>,
        secret: &Secret,
        qop: Qop,
        cnonce_random: [u8; NONCE_RANDOM_LEN],
    ) -> Self {
        let app_id = app_id.into();
        assert!(
            app_id.len() <= MAX_SASL_APP_ID_LEN,
            "sasl app id longer than {MAX_SASL_APP_ID_LEN} bytes"
        );
        let cnonce = Zeroizing::new(digest::nonce(&cnonce_random));
        Self {
            app_id,
            user: digest::netty_base64(SPARK_SASL_USER.as_bytes()).to_vec(),
            password: digest::netty_base64(secret.expose()),
            qop,
            cnonce,
            state: State::AwaitChallenge,
        }
    }

    /// Uses `user` as the SASL user instead of [`SPARK_SASL_USER`] (Spark's
    /// `SecretKeyHolder.getSaslUser`; it is sent Base64-encoded, as Spark does).
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = digest::netty_base64(user.as_bytes()).to_vec();
        self
    }

    /// The app id this client authenticates as.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The encoded [`SaslMessage`] that opens the handshake: DIGEST-MD5 has no initial
    /// response, so its token is empty.
    pub fn first_message(&self) -> Vec<u8> {
        SaslMessage::new(self.app_id.clone(), Vec::new()).encode()
    }

    /// Takes the body of the server's `RpcResponse` (a raw token) and gives the next encoded
    /// [`SaslMessage`] to send as an `RpcRequest`, or `None` when the handshake is complete
    /// (the server's `rspauth` matched, compared in constant time).
    pub fn handle_response(&mut self, server_token: &[u8]) -> Result<Option<Vec<u8>>, SaslError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let result = self.step(state, server_token);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step(&mut self, state: State, token: &[u8]) -> Result<Option<Vec<u8>>, SaslError> {
        if token.len() > MAX_CHALLENGE_LEN {
            return Err(SaslError::TokenTooLong {
                len: token.len(),
                max: MAX_CHALLENGE_LEN,
            });
        }
        match state {
            State::AwaitChallenge => {
                let (response, next) = self.respond(token)?;
                self.state = next;
                Ok(Some(
                    SaslMessage::new(self.app_id.clone(), response).encode(),
                ))
            }
            State::AwaitRspauth {
                expected,
                session_key,
                cipher,
            } => {
                let v = directive::parse(token, &CHALLENGE_KEYS)?;
                let rspauth = v[RSPAUTH]
                    .as_deref()
                    .ok_or(SaslError::MissingDirective("rspauth"))?;
                if !bool::from(rspauth.ct_eq(expected.as_ref())) {
                    return Err(SaslError::AuthenticationFailed);
                }
                let layer = cipher.map(|c| SaslLayer::new(c, &session_key, true));
                self.state = State::Complete(layer);
                Ok(None)
            }
            State::Complete(_) | State::Failed => Err(SaslError::Finished),
        }
    }

    /// Reads the server's challenge and builds the digest-response.
    fn respond(&self, challenge: &[u8]) -> Result<(Vec<u8>, State), SaslError> {
        let v = directive::parse(challenge, &CHALLENGE_KEYS)?;
        let utf8 = match v[CHARSET].as_deref() {
            None => false,
            Some(b"utf-8") => true,
            Some(_) => return Err(SaslError::InvalidDirective("charset")),
        };
        match v[ALGORITHM].as_deref() {
            None => return Err(SaslError::MissingDirective("algorithm")),
            Some(b"md5-sess") => {}
            Some(_) => return Err(SaslError::InvalidDirective("algorithm")),
        }
        let nonce = v[NONCE]
            .as_deref()
            .ok_or(SaslError::MissingDirective("nonce"))?;
        if nonce.is_empty() {
            return Err(SaslError::InvalidDirective("nonce"));
        }
        if let Some(maxbuf) = v[MAXBUF].as_deref() {
            super::parse_maxbuf(maxbuf)?;
        }
        // Spark's callback takes the server's realm (`RealmCallback.getDefaultText`); none
        // means the empty realm, which is then not sent.
        let realm = v[REALM].as_deref().unwrap_or_default();

        let offered = match v[QOP].as_deref() {
            None => vec![&b"auth"[..]],
            Some(list) => directive::list(list).collect(),
        };
        if !offered
            .iter()
            .any(|q| q.eq_ignore_ascii_case(self.qop.as_str().as_bytes()))
        {
            return Err(SaslError::NoCommonQop);
        }
        let cipher = match self.qop {
            Qop::Auth => None,
            Qop::AuthConf => {
                let list = v[CIPHER]
                    .as_deref()
                    .ok_or(SaslError::MissingDirective("cipher"))?;
                let tokens: Vec<&[u8]> = directive::list(list).collect();
                // The JDK's preference among the ciphers this crate implements.
                let chosen = [SaslCipher::TripleDes, SaslCipher::Rc4]
                    .into_iter()
                    .find(|c| tokens.contains(&c.as_str().as_bytes()));
                Some(chosen.ok_or(SaslError::NoCommonCipher)?)
            }
        };

        let input = DigestInput {
            user: &self.user,
            realm,
            password: &self.password,
            nonce,
            cnonce: &self.cnonce,
            authzid: None,
            qop: self.qop,
            digest_uri: DIGEST_URI,
        };
        let session_key = input.session_key();
        let response = input.response(&session_key, true);
        let expected = input.response(&session_key, false);

        let mut w = Writer::default();
        if utf8 {
            w.token("charset", b"utf-8");
        }
        w.quoted("username", &self.user);
        if !realm.is_empty() {
            w.quoted("realm", realm);
        }
        w.quoted("nonce", nonce)
            .token("nc", NONCE_COUNT)
            .quoted("cnonce", &self.cnonce)
            .quoted("digest-uri", DIGEST_URI)
            .token("maxbuf", CLIENT_MAXBUF)
            .token("response", response.as_ref())
            .token("qop", self.qop.as_str().as_bytes());
        if let Some(c) = cipher {
            w.quoted("cipher", c.as_str().as_bytes());
        }
        let response = w.finish();
        // The JDK's limit on what it sends (and on what its server reads).
        if response.len() > MAX_RESPONSE_LEN {
            return Err(SaslError::TokenTooLong {
                len: response.len(),
                max: MAX_RESPONSE_LEN,
            });
        }
        let state = State::AwaitRspauth {
            expected,
            session_key,
            cipher,
        };
        Ok((response, state))
    }

    /// Whether the server has been authenticated and the handshake is over.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete(_))
    }

    /// The quality of protection this client asked for (and, once complete, got).
    pub fn qop(&self) -> Qop {
        self.qop
    }

    /// The confidentiality layer, when the handshake completed with [`Qop::AuthConf`];
    /// `None` for [`Qop::Auth`] or an incomplete handshake.
    pub fn into_layer(self) -> Option<SaslLayer> {
        match self.state {
            State::Complete(layer) => layer,
            _ => None,
        }
    }
}
