//! Spark's `AuthEngine`: the key schedule and the client and server roles.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::message::{AuthMessage, AuthMessageError, MAX_APP_ID_LEN};

/// Length of the handshake's AES-GCM IV (Tink's `AesGcmJce` prepends it to the ciphertext).
const GCM_IV_LEN: usize = 12;
/// Length of the handshake's AES-GCM tag.
const GCM_TAG_LEN: usize = 16;
/// Length of an X25519 key.
const KEY_LEN: usize = 32;
/// Length of the key-encryption key (AES-128).
const KEK_LEN: usize = 16;
/// Length of the salt this crate sends (Spark's).
const SALT_LEN: usize = 16;
/// Length of a transport IV.
const IV_LEN: usize = 16;
/// Length of the v2 transport key (AES-128).
const V2_KEY_LEN: usize = 16;

/// `spark.network.crypto.authEngineVersion`: how the transport key is derived.
///
/// Peers of different versions complete the handshake but derive different keys, so their
/// first encrypted frame fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum AuthVersion {
    /// Spark's default: the raw 32-byte X25519 output is the key (AES-256). Legacy, weaker.
    #[default]
    V1,
    /// The key is `HKDF(shared, salt = transcript, info = "derivedKey", 16)` (AES-128).
    V2,
}

/// A shared secret (`spark.authenticate.secret`): the UTF-8 bytes of the configured string.
///
/// Never printed by `Debug`, compared in constant time, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret Spark derives from the configured string: its UTF-8 bytes, never decoded
    /// from hex or Base64.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().into_bytes())
    }

    /// A secret from raw bytes (Spark always uses a string's UTF-8 bytes; see [`Secret::new`]).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret's bytes.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl ConstantTimeEq for Secret {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Secret {}

/// The randomness one side of the handshake consumes: its ephemeral X25519 private key, the
/// salt of its key-encryption key and the AES-GCM IV. `rpc-proto` draws none of it itself.
///
/// Never printed by `Debug`, wiped on drop. Never reuse one for two handshakes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AuthRandomness {
    private_key: [u8; KEY_LEN],
    salt: [u8; SALT_LEN],
    iv: [u8; GCM_IV_LEN],
}

impl AuthRandomness {
    /// How many random bytes [`from_bytes`](Self::from_bytes) takes.
    pub const LEN: usize = KEY_LEN + SALT_LEN + GCM_IV_LEN;

    /// Randomness from its three parts.
    pub fn new(private_key: [u8; 32], salt: [u8; 16], iv: [u8; 12]) -> Self {
        Self {
            private_key,
            salt,
            iv,
        }
    }

    /// Randomness from [`Self::LEN`] uniformly random bytes (key, then salt, then IV).
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        let mut r = Self::new([0; KEY_LEN], [0; SALT_LEN], [0; GCM_IV_LEN]);
        r.private_key.copy_from_slice(&bytes[..KEY_LEN]);
        r.salt.copy_from_slice(&bytes[KEY_LEN..KEY_LEN + SALT_LEN]);
        r.iv.copy_from_slice(&bytes[KEY_LEN + SALT_LEN..]);
        r
    }
}

impl std::fmt::Debug for AuthRandomness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthRandomness(..)")
    }
}

/// What the transport cipher of one side needs: the session key and the IV of each direction.
///
/// `inbound_iv` starts the keystream of bytes this side receives, `outbound_iv` that of bytes
/// it sends (for AES-CTR; AES-GCM uses only the key). The client's outbound IV is the server's
/// inbound IV. Never printed by `Debug`, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TransportKeys {
    #[zeroize(skip)]
    version: AuthVersion,
    key: Vec<u8>,
    inbound_iv: [u8; IV_LEN],
    outbound_iv: [u8; IV_LEN],
}

impl TransportKeys {
    /// The engine version the keys were derived with.
    pub fn version(&self) -> AuthVersion {
        self.version
    }

    /// The session key: 32 bytes (AES-256) for [`AuthVersion::V1`], 16 (AES-128) for V2.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The IV of the bytes this side receives.
    pub fn inbound_iv(&self) -> &[u8; 16] {
        &self.inbound_iv
    }

    /// The IV of the bytes this side sends.
    pub fn outbound_iv(&self) -> &[u8; 16] {
        &self.outbound_iv
    }

    /// Spark's key id (`TransportCipherUtil`): `HKDF(key, no salt, info = "keyID", 32)`.
    ///
    /// Safe to log or compare; it reveals nothing about the key.
    pub fn key_id(&self) -> [u8; 32] {
        let mut id = [0; 32];
        hkdf(&self.key, &[], b"keyID", &mut id);
        id
    }
}

impl std::fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportKeys")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why a handshake did not produce keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's message is not a well-formed [`AuthMessage`]. On the server,
    /// [`AuthMessageError::UnknownTag`] means the client speaks another protocol (SASL).
    #[error("malformed auth message: {0}")]
    Malformed(#[from] AuthMessageError),
    /// The peer did not prove knowledge of the secret: a wrong secret, an unknown app id, a
    /// changed app id, salt or ciphertext, or a low-order public key. Deliberately one variant.
    #[error("authentication failed")]
    Failed,
    /// The caller's app id is longer than [`MAX_APP_ID_LEN`] bytes; nothing was produced.
    #[error("app id is {len} bytes long, above the limit of {max}")]
    AppIdTooLong {
        /// The app id's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// RFC 5869 HKDF-SHA256 (Tink's `Hkdf.computeHkdf("HMACSHA256", ..)`); an empty salt is 32
/// zero bytes, as in the RFC.
fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("hkdf output of at most 32 bytes is always valid");
}

/// `UTF-8(appId) ‖ salt ‖ transcript`: the AAD and HKDF info of one handshake message.
fn aad(app_id: &str, salt: &[u8], transcript: &[u8]) -> Vec<u8> {
    [app_id.as_bytes(), salt, transcript].concat()
}

/// Builds one side's message: its public key encrypted under `HKDF(psk, salt, aad)`.
pub(super) fn seal(
    app_id: &str,
    secret: &Secret,
    random: &AuthRandomness,
    transcript: &[u8],
) -> AuthMessage {
    let aad = aad(app_id, &random.salt, transcript);
    let mut kek = Zeroizing::new([0; KEK_LEN]);
    hkdf(secret.expose(), &random.salt, &aad, kek.as_mut());
    let public = PublicKey::from(&StaticSecret::from(random.private_key));
    let sealed = Aes128Gcm::new(kek.as_ref().into())
        .encrypt(
            Nonce::from_slice(&random.iv),
            Payload {
                msg: public.as_bytes(),
                aad: &aad,
            },
        )
        .expect("aes-gcm encryption of 32 bytes cannot fail");
    let mut ciphertext = Vec::with_capacity(GCM_IV_LEN + sealed.len());
    ciphertext.extend_from_slice(&random.iv);
    ciphertext.extend_from_slice(&sealed);
    AuthMessage {
        app_id: app_id.to_owned(),
        salt: random.salt.to_vec(),
        ciphertext,
    }
}

/// Decrypts the peer's public key from its message; any failure is [`AuthError::Failed`].
fn open(message: &AuthMessage, secret: &Secret, transcript: &[u8]) -> Result<PublicKey, AuthError> {
    if message.ciphertext.len() != GCM_IV_LEN + KEY_LEN + GCM_TAG_LEN {
        return Err(AuthError::Failed);
    }
    let aad = aad(&message.app_id, &message.salt, transcript);
    let mut kek = Zeroizing::new([0; KEK_LEN]);
    hkdf(secret.expose(), &message.salt, &aad, kek.as_mut());
    let (iv, sealed) = message.ciphertext.split_at(GCM_IV_LEN);
    let public = Aes128Gcm::new(kek.as_ref().into())
        .decrypt(
            Nonce::from_slice(iv),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| AuthError::Failed)?;
    let public: [u8; KEY_LEN] = public
        .as_slice()
        .try_into()
        .map_err(|_| AuthError::Failed)?;
    Ok(PublicKey::from(public))
}

/// The shared secret and the transcript give the session key and both IVs.
///
/// `client` says which side the keys are for (it decides which IV is inbound).
fn derive_keys(
    version: AuthVersion,
    private: &StaticSecret,
    peer: &PublicKey,
    transcript: &[u8],
    client: bool,
) -> Result<TransportKeys, AuthError> {
    let shared = private.diffie_hellman(peer);
    // Tink rejects low-order public keys; an all-zero shared secret is how they show here.
    if !shared.was_contributory() {
        return Err(AuthError::Failed);
    }
    let key = match version {
        AuthVersion::V1 => shared.as_bytes().to_vec(),
        AuthVersion::V2 => {
            let mut key = vec![0; V2_KEY_LEN];
            hkdf(shared.as_bytes(), transcript, b"derivedKey", &mut key);
            key
        }
    };
    let mut input_iv = [0; IV_LEN];
    let mut output_iv = [0; IV_LEN];
    hkdf(shared.as_bytes(), transcript, b"inputIv", &mut input_iv);
    hkdf(shared.as_bytes(), transcript, b"outputIv", &mut output_iv);
    let (inbound_iv, outbound_iv) = if client {
        (input_iv, output_iv)
    } else {
        (output_iv, input_iv)
    };
    input_iv.zeroize();
    output_iv.zeroize();
    Ok(TransportKeys {
        version,
        key,
        inbound_iv,
        outbound_iv,
    })
}

/// The client role: sends a challenge, takes the server's response, yields the keys.
///
/// ```text
///   AuthClient::new(version, app id, secret, randomness)
///        │ challenge()  ──► body of the handshake RpcRequest
///        ▼
///   handle_response(body of the RpcResponse) ──► TransportKeys | AuthError
/// ```
///
/// Everything the client sends after the response arrived is encrypted with the keys.
pub struct AuthClient {
    version: AuthVersion,
    app_id: String,
    secret: Secret,
    private: StaticSecret,
    challenge: Vec<u8>,
}

impl AuthClient {
    /// Starts a handshake as `app_id` (Spark's RpcEnv uses `"sparkSaslUser"`, block transfer
    /// and the shuffle service the application id).
    pub fn new(
        version: AuthVersion,
        app_id: impl Into<String>,
        secret: Secret,
        random: AuthRandomness,
    ) -> Result<Self, AuthError> {
        let app_id = app_id.into();
        if app_id.len() > MAX_APP_ID_LEN {
            return Err(AuthError::AppIdTooLong {
                len: app_id.len(),
                max: MAX_APP_ID_LEN,
            });
        }
        let challenge = seal(&app_id, &secret, &random, &[]).encode();
        Ok(Self {
            version,
            app_id,
            secret,
            private: StaticSecret::from(random.private_key),
            challenge,
        })
    }

    /// The engine version the keys will be derived with.
    pub fn version(&self) -> AuthVersion {
        self.version
    }

    /// The app id this client authenticates as.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The encoded challenge: the body of the handshake `RpcRequest`.
    pub fn challenge(&self) -> &[u8] {
        &self.challenge
    }

    /// Checks the server's response (the body of its `RpcResponse`) and derives the keys.
    pub fn handle_response(self, response: &[u8]) -> Result<TransportKeys, AuthError> {
        let response = AuthMessage::decode(response)?;
        if response.app_id != self.app_id {
            return Err(AuthError::Failed);
        }
        let server_public = open(&response, &self.secret, &self.challenge)?;
        let transcript = [self.challenge.as_slice(), &response.encode()].concat();
        derive_keys(
            self.version,
            &self.private,
            &server_public,
            &transcript,
            true,
        )
    }
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("version", &self.version)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// What a server that accepted a challenge sends and keeps.
#[derive(Debug)]
#[must_use]
pub struct ServerAccepted {
    /// The app id the client authenticated as (Spark's `clientId`).
    pub app_id: String,
    /// The encoded response: the body of the `RpcResponse`, sent in plaintext. Everything after
    /// it, in both directions, is encrypted with `keys`.
    pub response: Vec<u8>,
    /// The server's transport keys.
    pub keys: TransportKeys,
}

/// The server role: takes a client's challenge, answers it and yields the keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthServer {
    version: AuthVersion,
}

impl AuthServer {
    /// A server deriving keys with `version`.
    pub fn new(version: AuthVersion) -> Self {
        Self { version }
    }

    /// The engine version the keys are derived with.
    pub fn version(&self) -> AuthVersion {
        self.version
    }

    /// Checks the challenge (the body of the client's first `RpcRequest`) with the secret that
    /// `lookup` gives for its app id, and answers it.
    ///
    /// `lookup` returning `None` (an unregistered app) fails with [`AuthError::Failed`], like a
    /// wrong secret. Pass `|_| Some(secret)` when there is one secret for every app.
    pub fn handle_challenge(
        &self,
        challenge: &[u8],
        lookup: impl FnOnce(&str) -> Option<Secret>,
        random: AuthRandomness,
    ) -> Result<ServerAccepted, AuthError> {
        let challenge = AuthMessage::decode(challenge)?;
        let secret = lookup(&challenge.app_id).ok_or(AuthError::Failed)?;
        let client_public = open(&challenge, &secret, &[])?;
        let challenge_bytes = challenge.encode();
        let response = seal(&challenge.app_id, &secret, &random, &challenge_bytes).encode();
        let private = StaticSecret::from(random.private_key);
        let transcript = [challenge_bytes.as_slice(), &response].concat();
        let keys = derive_keys(self.version, &private, &client_public, &transcript, false)?;
        Ok(ServerAccepted {
            app_id: challenge.app_id,
            response,
            keys,
        })
    }
}
