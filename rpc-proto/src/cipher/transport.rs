//! Both directions of one side's transport cipher, as the connection uses them.

use bytes::BytesMut;

use super::MessageNonce;
use super::{CipherError, CipherKeys, CtrDecrypter, CtrEncrypter, GcmDecrypter, GcmEncrypter};
use crate::sasl::SaslLayer;

/// Which of Spark's transport ciphers follows AES authentication
/// (`spark.network.crypto.cipher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CipherMode {
    /// `AES/GCM/NoPadding`: every message authenticated. The default here; Spark 4.0+ peers
    /// speak it (use Spark 4.3, whose receiver is fixed: see the module docs).
    #[default]
    Gcm,
    /// `AES/CTR/NoPadding`, Spark's default: a bare keystream, **no integrity**. For talking
    /// to Spark deployments that kept Spark's default.
    Ctr,
}

impl CipherMode {
    /// Spark's name for it (`spark.network.crypto.cipher`).
    pub fn spark_name(self) -> &'static str {
        match self {
            Self::Gcm => "AES/GCM/NoPadding",
            Self::Ctr => "AES/CTR/NoPadding",
        }
    }
}

/// One side's transport cipher: what it sends is encrypted with [`encrypt`](Self::encrypt),
/// what it receives decrypted with [`decrypt`](Self::decrypt), each direction with its own
/// state.
///
/// With GCM, each [`encrypt`](Self::encrypt) call is one GCM message; the receiver treats the
/// messages as one byte stream, so the caller may cut messages wherever it likes (Spark cuts
/// one per frame, and a file body apart from its frame header). Any error is fatal for the
/// connection.
pub struct TransportCipher {
    inner: Inner,
}

enum Inner {
    Sasl(Box<SaslLayer>),
    Ctr {
        enc: Box<CtrEncrypter>,
        dec: Box<CtrDecrypter>,
    },
    Gcm {
        enc: Box<GcmEncrypter>,
        dec: Box<GcmDecrypter>,
    },
}

impl std::fmt::Debug for TransportCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportCipher")
            .field("cipher", &self.name())
            .finish_non_exhaustive()
    }
}

impl TransportCipher {
    /// The cipher of `mode` with this side's `keys`.
    pub fn new(mode: CipherMode, keys: &CipherKeys) -> Self {
        let inner = match mode {
            CipherMode::Ctr => Inner::Ctr {
                enc: Box::new(CtrEncrypter::new(keys)),
                dec: Box::new(CtrDecrypter::new(keys)),
            },
            CipherMode::Gcm => Inner::Gcm {
                enc: Box::new(GcmEncrypter::new(keys)),
                dec: Box::new(GcmDecrypter::new(keys)),
            },
        };
        Self { inner }
    }

    /// SASL's `auth-conf` layer (3DES or RC4 with HMAC-MD5, in Spark's `SaslEncryption`
    /// framing), after a SASL handshake that negotiated it.
    pub fn sasl(layer: SaslLayer) -> Self {
        Self {
            inner: Inner::Sasl(Box::new(layer)),
        }
    }

    /// Which AES cipher this is; `None` for SASL's layer.
    pub fn mode(&self) -> Option<CipherMode> {
        match self.inner {
            Inner::Ctr { .. } => Some(CipherMode::Ctr),
            Inner::Gcm { .. } => Some(CipherMode::Gcm),
            Inner::Sasl(_) => None,
        }
    }

    /// A name for logs: Spark's name of the cipher, or `SASL auth-conf (3des)`.
    pub fn name(&self) -> String {
        match &self.inner {
            Inner::Sasl(layer) => format!("SASL auth-conf ({})", layer.cipher().as_str()),
            _ => self
                .mode()
                .map(CipherMode::spark_name)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Encrypts the concatenation of `plaintext` (one GCM message) and appends it to `out`.
    ///
    /// `nonce` is drawn by the caller from a secure random source for every call (GCM uses
    /// it; CTR ignores it). Fails only if the plaintext is longer than a GCM message can be
    /// ([`gcm::MAX_PLAINTEXT_LEN`](super::gcm::MAX_PLAINTEXT_LEN)).
    pub fn encrypt(
        &mut self,
        plaintext: &[&[u8]],
        nonce: MessageNonce,
        out: &mut BytesMut,
    ) -> Result<(), CipherError> {
        match &mut self.inner {
            Inner::Sasl(layer) => {
                for piece in plaintext {
                    layer.encrypt(piece, out);
                }
                Ok(())
            }
            Inner::Ctr { enc, .. } => {
                for piece in plaintext {
                    let start = out.len();
                    out.extend_from_slice(piece);
                    enc.encrypt_in_place(&mut out[start..]);
                }
                Ok(())
            }
            Inner::Gcm { enc, .. } => {
                let len: usize = plaintext.iter().map(|p| p.len()).sum();
                let mut message = enc.start(nonce, len as u64, out)?;
                for piece in plaintext {
                    message.write(piece, out)?;
                }
                message.finish()
            }
        }
    }

    /// Consumes all of `input`, appending the plaintext it completes to `out` (for GCM, only
    /// plaintext whose segment verified).
    pub fn decrypt(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), CipherError> {
        match &mut self.inner {
            Inner::Ctr { dec, .. } => {
                let start = out.len();
                out.extend_from_slice(input);
                dec.decrypt_in_place(&mut out[start..]);
                Ok(())
            }
            Inner::Gcm { dec, .. } => dec.decrypt(input, out),
            Inner::Sasl(layer) => layer.decrypt(input, out).map_err(CipherError::Sasl),
        }
    }

    /// The input ended: fails with [`CipherError::Truncated`] if it ended inside a GCM
    /// message.
    pub fn finish_input(&self) -> Result<(), CipherError> {
        match &self.inner {
            Inner::Ctr { .. } => Ok(()),
            Inner::Gcm { dec, .. } => dec.finish(),
            Inner::Sasl(layer) if layer.is_idle() => Ok(()),
            Inner::Sasl(_) => Err(CipherError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(mode: CipherMode) -> (TransportCipher, TransportCipher) {
        let (input, output) = ([1; 16], [2; 16]);
        let client = CipherKeys::client(&[5; 16], input, output).unwrap();
        let server = CipherKeys::server(&[5; 16], input, output).unwrap();
        (
            TransportCipher::new(mode, &client),
            TransportCipher::new(mode, &server),
        )
    }

    #[test]
    fn each_direction_decrypts_what_the_other_side_encrypted_split_anywhere() {
        for mode in [CipherMode::Ctr, CipherMode::Gcm] {
            let (mut client, mut server) = pair(mode);
            let mut wire = BytesMut::new();
            let nonce = || MessageNonce::new([3; 16], [4; 7]);
            client
                .encrypt(&[b"hello ", b"world"], nonce(), &mut wire)
                .unwrap();
            client
                .encrypt(&[&[9u8; 70_000][..]], nonce(), &mut wire)
                .unwrap();
            assert_ne!(&wire[..5], b"hello", "{mode:?} sent plaintext");
            for split in [1, 7, 33, 40_000, wire.len()] {
                let (mut c2, mut s2) = pair(mode);
                let mut w2 = BytesMut::new();
                c2.encrypt(&[b"hello ", b"world"], nonce(), &mut w2)
                    .unwrap();
                c2.encrypt(&[&[9u8; 70_000][..]], nonce(), &mut w2).unwrap();
                let mut plain = BytesMut::new();
                for piece in w2.chunks(split) {
                    s2.decrypt(piece, &mut plain).unwrap();
                }
                s2.finish_input().unwrap();
                assert_eq!(plain.len(), 11 + 70_000, "{mode:?} split {split}");
                assert_eq!(&plain[..11], b"hello world");
                assert!(plain[11..].iter().all(|&b| b == 9));
            }
            // And back: the server's direction has its own keystream.
            let mut back = BytesMut::new();
            server.encrypt(&[b"reply"], nonce(), &mut back).unwrap();
            let mut plain = BytesMut::new();
            client.decrypt(&back, &mut plain).unwrap();
            assert_eq!(&plain[..], b"reply", "{mode:?}");
        }
    }

    #[test]
    fn gcm_refuses_a_flipped_bit_and_reports_a_message_cut_short() {
        let (mut client, mut server) = pair(CipherMode::Gcm);
        let mut wire = BytesMut::new();
        client
            .encrypt(
                &[b"attack at dawn"],
                MessageNonce::new([0; 16], [0; 7]),
                &mut wire,
            )
            .unwrap();
        let mut bad = wire.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut plain = BytesMut::new();
        assert!(server.decrypt(&bad, &mut plain).is_err());
        assert!(plain.is_empty(), "unverified plaintext was released");

        let (_, mut server) = pair(CipherMode::Gcm);
        server.decrypt(&wire[..wire.len() - 3], &mut plain).unwrap();
        assert_eq!(server.finish_input(), Err(CipherError::Truncated));
    }
}
