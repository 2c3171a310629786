//! RFC 2831's confidentiality layer (`auth-conf`) as the JDK's `DigestPrivacy` implements it,
//! and Spark's framing of wrapped chunks (`SaslEncryption`).

use bytes::{Buf, BytesMut};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit, StreamCipher};
use des::TdesEde3;
use hmac::{Hmac, Mac};
use md5::Md5;
use rc4::consts::U16;
use rc4::Rc4;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::digest::derive;
use super::SaslError;

/// Spark's `spark.network.sasl.maxEncryptedBlockSize` default: the largest plaintext chunk
/// wrapped at once.
pub const MAX_ENCRYPTED_BLOCK_SIZE: usize = 64 * 1024;

/// Length of the big-endian `i64` that opens every frame of wrapped bytes (it counts itself).
pub const SASL_FRAME_HEADER_LEN: usize = 8;

/// Most bytes wrapping adds to a chunk: up to 8 padding bytes, a 10-byte MAC, the 2-byte
/// message type and the 4-byte sequence number.
pub const WRAP_OVERHEAD: usize = 8 + 10 + 2 + 4;

/// The default limit on one inbound frame's wrapped bytes: a full chunk of Spark's default
/// block size plus [`WRAP_OVERHEAD`].
pub const DEFAULT_MAX_WRAPPED_LEN: usize = MAX_ENCRYPTED_BLOCK_SIZE + WRAP_OVERHEAD;

/// RFC 2831 message type of a wrapped message (always 1).
const MESSAGE_TYPE: [u8; 2] = [0, 1];
const MAC_LEN: usize = 10;
const DES_BLOCK: usize = 8;

const CLIENT_INTEGRITY_MAGIC: &str =
    "Digest session key to client-to-server signing key magic constant";
const SERVER_INTEGRITY_MAGIC: &str =
    "Digest session key to server-to-client signing key magic constant";
const CLIENT_SEALING_MAGIC: &str = "Digest H(A1) to client-to-server sealing key magic constant";
const SERVER_SEALING_MAGIC: &str = "Digest H(A1) to server-to-client sealing key magic constant";

/// The cipher of an `auth-conf` layer. Only the two strong ones of RFC 2831 are implemented:
/// a JDK peer picks `3des` when offered, and this crate never negotiates `des`, `rc4-56` or
/// `rc4-40`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum SaslCipher {
    /// `3des`: two-key triple DES (EDE) in CBC mode, chained across messages.
    TripleDes,
    /// `rc4`: RC4 with a 128-bit key, one keystream per direction.
    Rc4,
}

impl SaslCipher {
    /// The cipher's RFC 2831 token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TripleDes => "3des",
            Self::Rc4 => "rc4",
        }
    }
}

enum Sealer {
    TripleDes(Box<cbc::Encryptor<TdesEde3>>),
    Rc4(Box<Rc4<U16>>),
}

enum Opener {
    TripleDes(Box<cbc::Decryptor<TdesEde3>>),
    Rc4(Box<Rc4<U16>>),
}

/// One DES key from 7 bytes: 8 groups of 7 bits, each shifted left with odd parity in the
/// low bit (the JDK's `addDesParity`).
fn des_key(raw: &[u8]) -> [u8; 8] {
    let mut bits = 0u64;
    for &b in &raw[..7] {
        bits = bits << 8 | u64::from(b);
    }
    let mut key = [0u8; 8];
    for (i, k) in key.iter_mut().enumerate() {
        let b = ((bits >> (7 * (7 - i))) as u8 & 0x7f) << 1;
        *k = b | ((b.count_ones() as u8 & 1) ^ 1);
    }
    key
}

/// The JDK's `makeDesKeys(kc, "desede")`: `k1 = kc[0..7]`, `k2 = kc[7..14]`, EDE key
/// `k1 ‖ k2 ‖ k1`; the CBC IV is `kc[8..16]`.
fn triple_des(kc: &[u8; 16]) -> (Zeroizing<[u8; 24]>, [u8; 8]) {
    let (k1, k2) = (des_key(&kc[..7]), des_key(&kc[7..14]));
    let mut key = Zeroizing::new([0u8; 24]);
    key[..8].copy_from_slice(&k1);
    key[8..16].copy_from_slice(&k2);
    key[16..].copy_from_slice(&k1);
    let iv: [u8; 8] = kc[8..].try_into().expect("8 bytes");
    (key, iv)
}

/// An established `auth-conf` security layer: wraps outbound and unwraps inbound messages
/// (RFC 2831 §2.4: cipher, HMAC-MD5 MAC, sequence numbers), and frames them as Spark's
/// `SaslEncryption` does.
///
/// Any inbound error is fatal: the layer refuses all further input, as the connection must
/// close. Never printed by `Debug`; keys are wiped on drop.
pub struct SaslLayer {
    cipher: SaslCipher,
    sealer: Sealer,
    opener: Opener,
    my_ki: Zeroizing<[u8; 16]>,
    peer_ki: Zeroizing<[u8; 16]>,
    my_seq: u32,
    peer_seq: u32,
    failed: bool,
    /// Inbound frame bytes not yet unwrapped.
    frame: BytesMut,
    max_wrapped_len: usize,
}

impl std::fmt::Debug for SaslLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslLayer")
            .field("cipher", &self.cipher)
            .field("sent", &self.my_seq)
            .field("received", &self.peer_seq)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8; 16], seq: u32, msg: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Hmac<Md5> as Mac>::new_from_slice(key).expect("hmac takes any key length");
    m.update(&seq.to_be_bytes());
    m.update(msg);
    let full = m.finalize().into_bytes();
    full[..MAC_LEN].try_into().expect("10 bytes")
}

impl SaslLayer {
    /// The layer of one side, from the session key `H(A1)`.
    pub(super) fn new(cipher: SaslCipher, session_key: &[u8; 16], client: bool) -> Self {
        let kic = derive(session_key, CLIENT_INTEGRITY_MAGIC);
        let kis = derive(session_key, SERVER_INTEGRITY_MAGIC);
        // 3des and rc4 use all 16 bytes of H(A1) for the sealing keys.
        let kcc = derive(session_key, CLIENT_SEALING_MAGIC);
        let kcs = derive(session_key, SERVER_SEALING_MAGIC);
        let (my_ki, peer_ki, my_kc, peer_kc) = if client {
            (kic, kis, kcc, kcs)
        } else {
            (kis, kic, kcs, kcc)
        };
        let (sealer, opener) = match cipher {
            SaslCipher::TripleDes => {
                let (key, iv) = triple_des(&my_kc);
                let sealer = cbc::Encryptor::<TdesEde3>::new(key.as_ref().into(), &iv.into());
                let (key, iv) = triple_des(&peer_kc);
                let opener = cbc::Decryptor::<TdesEde3>::new(key.as_ref().into(), &iv.into());
                (
                    Sealer::TripleDes(Box::new(sealer)),
                    Opener::TripleDes(Box::new(opener)),
                )
            }
            SaslCipher::Rc4 => (
                Sealer::Rc4(Box::new(Rc4::new(my_kc.as_ref().into()))),
                Opener::Rc4(Box::new(Rc4::new(peer_kc.as_ref().into()))),
            ),
        };
        Self {
            cipher,
            sealer,
            opener,
            my_ki,
            peer_ki,
            my_seq: 0,
            peer_seq: 0,
            failed: false,
            frame: BytesMut::new(),
            max_wrapped_len: DEFAULT_MAX_WRAPPED_LEN,
        }
    }

    /// Sets the largest wrapped frame [`decrypt`](Self::decrypt) accepts (default
    /// [`DEFAULT_MAX_WRAPPED_LEN`]; raise it when the peer's `maxEncryptedBlockSize` is larger).
    pub fn with_max_wrapped_len(mut self, max: usize) -> Self {
        self.max_wrapped_len = max;
        self
    }

    /// The negotiated cipher.
    pub fn cipher(&self) -> SaslCipher {
        self.cipher
    }

    /// Wraps one message: `CIPHER(msg ‖ padding ‖ MAC) ‖ 0x0001 ‖ seq` with
    /// `MAC = HMAC-MD5(Ki, seq ‖ msg)[..10]`. An empty message wraps to nothing (as in the JDK).
    ///
    /// The outbound direction is independent of the inbound one: it keeps working after an
    /// inbound error (which still ends the connection).
    pub fn wrap(&mut self, plaintext: &[u8]) -> Vec<u8> {
        if plaintext.is_empty() {
            return Vec::new();
        }
        let seq = self.my_seq;
        self.my_seq = self.my_seq.wrapping_add(1);
        let mac = hmac(&self.my_ki, seq, plaintext);
        let mut out = Vec::with_capacity(plaintext.len() + WRAP_OVERHEAD);
        out.extend_from_slice(plaintext);
        match &mut self.sealer {
            Sealer::TripleDes(enc) => {
                let pad = DES_BLOCK - (plaintext.len() + MAC_LEN) % DES_BLOCK;
                out.resize(plaintext.len() + pad, pad as u8);
                out.extend_from_slice(&mac);
                for block in out.chunks_exact_mut(DES_BLOCK) {
                    enc.encrypt_block_mut(block.into());
                }
            }
            Sealer::Rc4(rc4) => {
                out.extend_from_slice(&mac);
                rc4.apply_keystream(&mut out);
            }
        }
        out.extend_from_slice(&MESSAGE_TYPE);
        out.extend_from_slice(&seq.to_be_bytes());
        out
    }

    /// Unwraps one message from the peer, checking its padding, MAC, message type and sequence
    /// number (a replayed, reordered or altered message fails). An empty input unwraps to
    /// nothing.
    pub fn unwrap(&mut self, wrapped: &[u8]) -> Result<Vec<u8>, SaslError> {
        if self.failed {
            return Err(SaslError::LayerFailed);
        }
        let result = self.open(wrapped);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn open(&mut self, wrapped: &[u8]) -> Result<Vec<u8>, SaslError> {
        if wrapped.is_empty() {
            return Ok(Vec::new());
        }
        let Some((body, trailer)) = wrapped.split_last_chunk::<6>() else {
            return Err(SaslError::Integrity);
        };
        let msg_type = &trailer[..2];
        let seq = u32::from_be_bytes(trailer[2..].try_into().expect("4 bytes"));
        let mut plain = body.to_vec();
        let msg_len = match &mut self.opener {
            Opener::TripleDes(dec) => {
                if plain.len() < 2 * DES_BLOCK || plain.len() % DES_BLOCK != 0 {
                    return Err(SaslError::Integrity);
                }
                for block in plain.chunks_exact_mut(DES_BLOCK) {
                    dec.decrypt_block_mut(block.into());
                }
                let padded = plain.len() - MAC_LEN;
                let pad = usize::from(plain[padded - 1]);
                if pad == 0 || pad > DES_BLOCK || pad > padded {
                    return Err(SaslError::Integrity);
                }
                padded - pad
            }
            Opener::Rc4(rc4) => {
                if plain.len() < MAC_LEN {
                    return Err(SaslError::Integrity);
                }
                rc4.apply_keystream(&mut plain);
                plain.len() - MAC_LEN
            }
        };
        let mac_at = plain.len() - MAC_LEN;
        let expected = hmac(&self.peer_ki, seq, &plain[..msg_len]);
        if !bool::from(plain[mac_at..].ct_eq(&expected)) {
            return Err(SaslError::Integrity);
        }
        if seq != self.peer_seq {
            return Err(SaslError::SequenceMismatch {
                expected: self.peer_seq,
                got: seq,
            });
        }
        if msg_type != MESSAGE_TYPE {
            return Err(SaslError::Integrity);
        }
        self.peer_seq = self.peer_seq.wrapping_add(1);
        plain.truncate(msg_len);
        Ok(plain)
    }

    /// Encrypts `plaintext` as Spark's `SaslEncryption` sends it: cut into chunks of at most
    /// [`MAX_ENCRYPTED_BLOCK_SIZE`], each wrapped and written as
    /// `i64 BE (8 + wrappedLen) ‖ wrapped`. An empty input writes nothing.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut BytesMut) {
        for chunk in plaintext.chunks(MAX_ENCRYPTED_BLOCK_SIZE) {
            let wrapped = self.wrap(chunk);
            let len = (SASL_FRAME_HEADER_LEN + wrapped.len()) as i64;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&wrapped);
        }
    }

    /// Decrypts bytes read from the peer, split anywhere: completes frames, unwraps each, and
    /// appends the plaintext to `out`. Frames are bounded by
    /// [`with_max_wrapped_len`](Self::with_max_wrapped_len) before any buffering. The first
    /// error is final.
    pub fn decrypt(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), SaslError> {
        if self.failed {
            return Err(SaslError::LayerFailed);
        }
        while !input.is_empty() {
            let want = if self.frame.len() < SASL_FRAME_HEADER_LEN {
                SASL_FRAME_HEADER_LEN - self.frame.len()
            } else {
                self.frame_len()? - self.frame.len()
            };
            let n = want.min(input.len());
            self.frame.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.frame.len() == SASL_FRAME_HEADER_LEN {
                // Validate the length as soon as it is known, before buffering its body.
                self.frame_len()?;
            }
            if self.frame.len() >= SASL_FRAME_HEADER_LEN && self.frame.len() == self.frame_len()? {
                let mut frame = std::mem::take(&mut self.frame);
                frame.advance(SASL_FRAME_HEADER_LEN);
                let plain = self.unwrap(&frame)?;
                out.extend_from_slice(&plain);
                frame.clear();
                self.frame = frame;
            }
        }
        Ok(())
    }

    /// The total length of the frame being read (header included), checked.
    fn frame_len(&mut self) -> Result<usize, SaslError> {
        let header: [u8; 8] = self.frame[..SASL_FRAME_HEADER_LEN]
            .try_into()
            .expect("8 bytes");
        let len = i64::from_be_bytes(header);
        let max = self.max_wrapped_len.saturating_add(SASL_FRAME_HEADER_LEN);
        match usize::try_from(len) {
            Ok(n) if (SASL_FRAME_HEADER_LEN..=max).contains(&n) => Ok(n),
            _ => {
                self.failed = true;
                Err(SaslError::BadFrameLength {
                    len,
                    max: self.max_wrapped_len,
                })
            }
        }
    }

    /// Whether no partial inbound frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.frame.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn des_keys_spread_seven_bytes_over_eight_with_odd_parity() {
        assert_eq!(des_key(&[0; 7]), [1; 8]);
        assert_eq!(des_key(&[0xff; 7]), [0xfe; 8]);
        // 0x80 00.. : the first 7-bit group is 1000000.
        assert_eq!(
            des_key(&[0x80, 0, 0, 0, 0, 0, 0]),
            [0x80, 1, 1, 1, 1, 1, 1, 1]
        );
        let (key, iv) = triple_des(&std::array::from_fn(|i| i as u8));
        assert_eq!(key[..8], key[16..]);
        assert_eq!(iv, [8, 9, 10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn a_valid_mac_with_the_wrong_sequence_number_is_refused() {
        for cipher in [SaslCipher::TripleDes, SaslCipher::Rc4] {
            let mut c = SaslLayer::new(cipher, &[1; 16], true);
            let mut s = SaslLayer::new(cipher, &[1; 16], false);
            c.my_seq = 1;
            let m = c.wrap(b"skipped one");
            assert_eq!(
                s.unwrap(&m),
                Err(SaslError::SequenceMismatch {
                    expected: 0,
                    got: 1
                })
            );
            assert_eq!(s.unwrap(&m), Err(SaslError::LayerFailed));
        }
    }

    #[test]
    fn sending_still_works_after_an_inbound_failure() {
        let mut c = SaslLayer::new(SaslCipher::TripleDes, &[1; 16], true);
        let mut s = SaslLayer::new(SaslCipher::TripleDes, &[1; 16], false);
        assert!(s.unwrap(&[0; 22]).is_err());
        let mut out = BytesMut::new();
        assert_eq!(s.decrypt(&[1], &mut out), Err(SaslError::LayerFailed));
        let m = s.wrap(b"goodbye");
        assert_eq!(c.unwrap(&m).unwrap(), b"goodbye");
    }

    #[test]
    fn a_wrong_message_type_is_refused() {
        let mut c = SaslLayer::new(SaslCipher::Rc4, &[1; 16], true);
        let mut s = SaslLayer::new(SaslCipher::Rc4, &[1; 16], false);
        let mut m = c.wrap(b"typed");
        let at = m.len() - 5;
        m[at] = 2;
        assert_eq!(s.unwrap(&m), Err(SaslError::Integrity));
    }
}
