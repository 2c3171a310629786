//! Spark's transport ciphers (`spark.network.crypto.cipher`) as pure byte transforms.
//!
//! After the AES authentication handshake, Spark puts a cipher between the socket and the
//! frame codec. This module is that cipher and nothing else: bytes in, bytes out, keys taken
//! as plain inputs ([`CipherKeys`]). Deriving the keys is the handshake's job; deciding at
//! which byte the stream switches to ciphertext is the connection's.
//!
//! ```text
//!   plaintext ──► GcmMessageEncrypter / CtrEncrypter ──► bytes to write
//!   bytes read ──► GcmDecrypter / CtrDecrypter ──────────► plaintext for the FrameDecoder
//! ```
//!
//! * [`gcm`] (`AES/GCM/NoPadding`): Spark 4.3.0's segmented framing. Each outbound message
//!   is `L ‖ header ‖ segments`, every segment authenticated. The decrypter detects any
//!   corrupted, reordered or truncated segment.
//! * [`ctr`] (`AES/CTR/NoPadding`, Spark's default): a bare keystream per direction.
//!   **It has no tags and does not detect tampering**: a flipped ciphertext bit flips the same
//!   plaintext bit.
//!
//! Every error is fatal for the connection, as in Spark.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use rpc_proto::cipher::{CipherKeys, GcmDecrypter, GcmEncrypter, MessageNonce};
//!
//! let keys = CipherKeys::new(&[7; 16], [0; 16], [0; 16]).unwrap();
//! let enc = GcmEncrypter::new(&keys);
//! let mut wire = BytesMut::new();
//! // The nonce material is random per message in Spark; the caller draws it.
//! enc.encrypt_message(MessageNonce::new([1; 16], [2; 7]), b"hello", &mut wire).unwrap();
//!
//! let mut dec = GcmDecrypter::new(&keys);
//! let mut plain = BytesMut::new();
//! dec.decrypt(&wire[..3], &mut plain).unwrap();
//! dec.decrypt(&wire[3..], &mut plain).unwrap();
//! dec.finish().unwrap();
//! assert_eq!(&plain[..], b"hello");
//! ```

pub mod ctr;
pub mod gcm;
mod transport;

pub use self::ctr::{CtrDecrypter, CtrEncrypter};
pub use self::gcm::{GcmDecrypter, GcmEncrypter, GcmMessageEncrypter, MessageNonce};
pub use self::transport::{CipherMode, TransportCipher};

use std::fmt;

use zeroize::Zeroize;

/// Size of the session key: 16 bytes (AES-128, `authEngineVersion=2`) or 32 bytes
/// (AES-256, `authEngineVersion=1`, the raw X25519 output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySize {
    /// 16-byte key (AES-128).
    Aes128,
    /// 32-byte key (AES-256).
    Aes256,
}

impl KeySize {
    /// The key length in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }
}

/// The session key and the two CTR IVs of one side of a connection, zeroized on drop.
///
/// IVs are named from this side's point of view: `outbound_iv` encrypts what this side
/// sends, `inbound_iv` decrypts what it receives. Spark names them after the HKDF infos
/// (`"inputIv"`, `"outputIv"`), swapped between client and server; [`CipherKeys::client`] and
/// [`CipherKeys::server`] do the mapping. GCM uses only the key.
#[derive(Clone)]
pub struct CipherKeys {
    key: [u8; 32],
    size: KeySize,
    inbound_iv: [u8; 16],
    outbound_iv: [u8; 16],
}

impl CipherKeys {
    /// Keys from raw parts; `key` must be 16 or 32 bytes.
    pub fn new(
        key: &[u8],
        inbound_iv: [u8; 16],
        outbound_iv: [u8; 16],
    ) -> Result<Self, CipherError> {
        let size = match key.len() {
            16 => KeySize::Aes128,
            32 => KeySize::Aes256,
            len => return Err(CipherError::InvalidKeyLength { len }),
        };
        let mut k = [0u8; 32];
        k[..key.len()].copy_from_slice(key);
        Ok(Self {
            key: k,
            size,
            inbound_iv,
            outbound_iv,
        })
    }

    /// The client's keys, given the IVs derived with HKDF infos `"inputIv"` and `"outputIv"`
    /// (the client sends with `outputIv`).
    pub fn client(
        key: &[u8],
        input_iv: [u8; 16],
        output_iv: [u8; 16],
    ) -> Result<Self, CipherError> {
        Self::new(key, input_iv, output_iv)
    }

    /// The server's keys, given the IVs derived with HKDF infos `"inputIv"` and `"outputIv"`
    /// (the server sends with `inputIv`).
    pub fn server(
        key: &[u8],
        input_iv: [u8; 16],
        output_iv: [u8; 16],
    ) -> Result<Self, CipherError> {
        Self::new(key, output_iv, input_iv)
    }

    /// The size of the session key.
    pub fn key_size(&self) -> KeySize {
        self.size
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key[..self.size.bytes()]
    }

    pub(crate) fn inbound_iv(&self) -> &[u8; 16] {
        &self.inbound_iv
    }

    pub(crate) fn outbound_iv(&self) -> &[u8; 16] {
        &self.outbound_iv
    }
}

impl Drop for CipherKeys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.inbound_iv.zeroize();
        self.outbound_iv.zeroize();
    }
}

impl fmt::Debug for CipherKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherKeys")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Why a transport cipher refused its input or the caller's request. Fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CipherError {
    /// The session key is neither 16 nor 32 bytes.
    #[error("invalid session key length: {len} bytes (expected 16 or 32)")]
    InvalidKeyLength {
        /// The length given.
        len: usize,
    },
    /// A GCM message's length prefix is negative, shorter than the header, or leaves a last
    /// segment too short to hold a tag.
    #[error("invalid expected ciphertext length: {len}")]
    InvalidLength {
        /// The length prefix as Spark's signed `long`.
        len: i64,
    },
    /// A GCM message's length prefix exceeds the configured limit.
    #[error("gcm message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLong {
        /// The length prefix.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An outbound GCM message would need more than 2^32 segments.
    #[error("gcm plaintext of {len} bytes exceeds the limit of {max} bytes")]
    PlaintextTooLong {
        /// The plaintext length asked for.
        len: u64,
        /// The largest plaintext of one message.
        max: u64,
    },
    /// A GCM message header does not start with the expected header length byte.
    #[error("invalid gcm header length byte {found} (expected {expected})")]
    InvalidHeader {
        /// The byte found.
        found: u8,
        /// The header length for this key size.
        expected: u8,
    },
    /// A GCM segment failed authentication: corrupted, reordered, or from another key.
    #[error("gcm segment {segment} failed authentication")]
    Authentication {
        /// Index of the segment within its message.
        segment: u32,
    },
    /// The input ended inside a GCM message.
    #[error("gcm stream truncated inside a message")]
    Truncated,
    /// An outbound message got more or fewer plaintext bytes than announced.
    #[error("gcm message declared {declared} plaintext bytes, got {written}")]
    LengthMismatch {
        /// The plaintext length given when the message was started.
        declared: u64,
        /// The plaintext bytes written so far.
        written: u64,
    },
    /// The cipher already failed; the connection must be closed.
    #[error("cipher already failed")]
    Failed,
    /// SASL's `auth-conf` layer refused its input.
    #[error("sasl layer: {0}")]
    Sasl(#[from] crate::sasl::SaslError),
}
