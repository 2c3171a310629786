//! The DIGEST-MD5 server, as the JDK's `DigestMD5Server` runs under Spark's `SparkSaslServer`.

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use super::digest::{self, DigestInput, NONCE_RANDOM_LEN};
use super::directive::{self, Writer};
use super::layer::{SaslCipher, SaslLayer};
use super::{Qop, QopOffer, SaslError, DIGEST_URI, MAX_RESPONSE_LEN, REALM, SPARK_SASL_USER};
use crate::auth::Secret;

/// The directives a server reads from the client's digest-response.
const RESPONSE_KEYS: [&str; 12] = [
    "username",
    "realm",
    "nonce",
    "cnonce",
    "nc",
    "qop",
    "digest-uri",
    "response",
    "maxbuf",
    "charset",
    "cipher",
    "authzid",
];
const USERNAME: usize = 0;
const REALM_KEY: usize = 1;
const NONCE: usize = 2;
const CNONCE: usize = 3;
const NC: usize = 4;
const QOP: usize = 5;
const DIGEST_URI_KEY: usize = 6;
const RESPONSE: usize = 7;
const MAXBUF: usize = 8;
const CHARSET: usize = 9;
const CIPHER: usize = 10;
const AUTHZID: usize = 11;

/// The ciphers this server offers for `auth-conf`, strongest first (the JDK also offers the
/// weak `des`, `rc4-56` and `rc4-40`; a JDK client picks `3des` first either way).
const OFFERED_CIPHERS: &[u8] = b"3des,rc4";

/// The server side of Spark's SASL DIGEST-MD5 handshake (`SparkSaslServer` on the JDK's
/// `DigestMD5Server`), step by step and without I/O.
///
/// The driver decodes each `RpcRequest` body as a [`SaslMessage`](super::SaslMessage); on
/// the first, it looks the secret up by the message's app id and builds this server; it feeds
/// every message's token to [`handle_message`](Self::handle_message) and answers with the
/// returned raw token as the `RpcResponse` body. After the second message the server is
/// [complete](Self::is_complete). Any error is final.
pub struct SaslServer {
    app_id: String,
    /// Base64 of the SASL user the client must name.
    user: Vec<u8>,
    password: Zeroizing<Vec<u8>>,
    offer: QopOffer,
    nonce: Vec<u8>,
    state: State,
}

enum State {
    Start,
    AwaitResponse,
    Complete { qop: Qop, layer: Option<SaslLayer> },
    Failed,
}

impl std::fmt::Debug for SaslServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::AwaitResponse => "await response",
            State::Complete { .. } => "complete",
            State::Failed => "failed",
        };
        f.debug_struct("SaslServer")
            .field("app_id", &self.app_id)
            .field("offer", &self.offer)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl SaslServer {
    /// How many random bytes the server nonce takes (the JDK's 30, sent as 40 Base64 chars).
    pub const RANDOM_LEN: usize = NONCE_RANDOM_LEN;

    /// A server for a client that named `app_id` in its first [`SaslMessage`](super::SaslMessage),
    /// with the `secret` looked up for that app id, offering `offer`, expecting SASL user
    /// [`SPARK_SASL_USER`]. `nonce_random` must be fresh uniformly random bytes.
    pub fn new(
        app_id: impl Into<String>,
        secret: &Secret,
        offer: QopOffer,
        nonce_random: [u8; NONCE_RANDOM_LEN],
    ) -> Self {
        Self {
            app_id: app_id.into(),
            user: digest::netty_base64(SPARK_SASL_USER.as_bytes()).to_vec(),
            password: digest::netty_base64(secret.expose()),
            offer,
            nonce: digest::nonce(&nonce_random),
            state: State::Start,
        }
    }

    /// Expects `user` as the SASL user instead of [`SPARK_SASL_USER`] (compared with the
    /// Base64 the client sends, as part of the one authentication check).
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = digest::netty_base64(user.as_bytes()).to_vec();
        self
    }

    /// The app id the client authenticates as.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Takes the token of the client's next [`SaslMessage`](super::SaslMessage) and gives the
    /// raw token to send back as the `RpcResponse` body: the challenge for the first message,
    /// `rspauth=…` for the second (after which the server is complete).
    ///
    /// A wrong secret, SASL user or authorization id is the one
    /// [`SaslError::AuthenticationFailed`], whichever it was.
    pub fn handle_message(&mut self, client_token: &[u8]) -> Result<Vec<u8>, SaslError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        if client_token.len() > MAX_RESPONSE_LEN {
            return Err(SaslError::TokenTooLong {
                len: client_token.len(),
                max: MAX_RESPONSE_LEN,
            });
        }
        match state {
            State::Start => {
                // The JDK ignores a non-empty initial response; so does this server.
                self.state = State::AwaitResponse;
                Ok(self.challenge())
            }
            State::AwaitResponse => {
                let (token, qop, layer) = self.verify(client_token)?;
                self.state = State::Complete { qop, layer };
                Ok(token)
            }
            State::Complete { .. } | State::Failed => Err(SaslError::Finished),
        }
    }

    /// The first challenge, as the JDK writes it.
    fn challenge(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.quoted("realm", REALM)
            .quoted("nonce", &self.nonce)
            .quoted("qop", self.offer.as_str().as_bytes())
            .token("charset", b"utf-8");
        if self.offer.offers(Qop::AuthConf) {
            w.quoted("cipher", OFFERED_CIPHERS);
        }
        w.token("algorithm", b"md5-sess");
        w.finish()
    }

    /// Checks the digest-response; the `rspauth` token, the QOP and the layer.
    fn verify(&self, token: &[u8]) -> Result<(Vec<u8>, Qop, Option<SaslLayer>), SaslError> {
        let v = directive::parse(token, &RESPONSE_KEYS)?;
        match v[CHARSET].as_deref() {
            None | Some(b"utf-8") => {}
            Some(_) => return Err(SaslError::InvalidDirective("charset")),
        }
        if let Some(maxbuf) = v[MAXBUF].as_deref() {
            super::parse_maxbuf(maxbuf)?;
        }
        let user = v[USERNAME]
            .as_deref()
            .ok_or(SaslError::MissingDirective("username"))?;
        if v[REALM_KEY].as_deref() != Some(REALM) {
            return Err(SaslError::WrongRealm);
        }
        let nonce = v[NONCE]
            .as_deref()
            .ok_or(SaslError::MissingDirective("nonce"))?;
        if nonce != self.nonce.as_slice() {
            return Err(SaslError::WrongNonce);
        }
        let cnonce = v[CNONCE]
            .as_deref()
            .ok_or(SaslError::MissingDirective("cnonce"))?;
        if cnonce.is_empty() {
            return Err(SaslError::InvalidDirective("cnonce"));
        }
        if let Some(nc) = v[NC].as_deref() {
            // The JDK's parseInt(nc, 16) == 1, with the length bounded.
            let one = !nc.is_empty()
                && nc.len() <= 8
                && nc.iter().all(u8::is_ascii_hexdigit)
                && nc.iter().rev().skip(1).all(|&b| b == b'0')
                && nc.last() == Some(&b'1');
            if !one {
                return Err(SaslError::WrongNonceCount);
            }
        }
        let qop = match v[QOP].as_deref() {
            None | Some(b"auth") => Qop::Auth,
            Some(b"auth-conf") => Qop::AuthConf,
            Some(_) => return Err(SaslError::QopNotOffered),
        };
        if !self.offer.offers(qop) {
            return Err(SaslError::QopNotOffered);
        }
        let cipher = match qop {
            Qop::Auth => None,
            Qop::AuthConf => {
                let c = v[CIPHER]
                    .as_deref()
                    .ok_or(SaslError::MissingDirective("cipher"))?;
                let c = [SaslCipher::TripleDes, SaslCipher::Rc4]
                    .into_iter()
                    .find(|k| k.as_str().as_bytes() == c)
                    .ok_or(SaslError::NoCommonCipher)?;
                Some(c)
            }
        };
        let uri = v[DIGEST_URI_KEY]
            .as_deref()
            .ok_or(SaslError::WrongDigestUri)?;
        if !uri.eq_ignore_ascii_case(DIGEST_URI) {
            return Err(SaslError::WrongDigestUri);
        }
        let response = v[RESPONSE]
            .as_deref()
            .ok_or(SaslError::MissingDirective("response"))?;
        let authzid = v[AUTHZID].as_deref();

        // One verdict for everything the secret holder controls: the digest, the user name and
        // (Spark's AuthorizeCallback) an authorization id other than the user.
        let input = DigestInput {
            user,
            realm: REALM,
            password: &self.password,
            nonce: &self.nonce,
            cnonce,
            authzid,
            qop,
            // The JDK computes with the client's spelling of the (case-insensitively equal) URI.
            digest_uri: uri,
        };
        let session_key = input.session_key();
        let expected = input.response(&session_key, true);
        let mut ok: Choice = response.ct_eq(expected.as_ref());
        ok &= user.ct_eq(&self.user);
        if let Some(authzid) = authzid {
            ok &= authzid.ct_eq(user);
        }
        if !bool::from(ok) {
            return Err(SaslError::AuthenticationFailed);
        }
        let rspauth = input.response(&session_key, false);
        let token = Writer::default()
            .token("rspauth", rspauth.as_ref())
            .finish();
        let layer = cipher.map(|c| SaslLayer::new(c, &session_key, false));
        Ok((token, qop, layer))
    }

    /// Whether the client has been authenticated and the handshake is over.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete { .. })
    }

    /// The negotiated quality of protection, once complete.
    pub fn qop(&self) -> Option<Qop> {
        match self.state {
            State::Complete { qop, .. } => Some(qop),
            _ => None,
        }
    }

    /// The confidentiality layer, when the handshake completed with [`Qop::AuthConf`];
    /// `None` for [`Qop::Auth`] or an incomplete handshake.
    pub fn into_layer(self) -> Option<SaslLayer> {
        match self.state {
            State::Complete { layer, .. } => layer,
            _ => None,
        }
    }
}
