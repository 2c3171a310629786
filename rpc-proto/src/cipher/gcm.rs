//! Spark 4.3.0's AES-GCM transport framing (`GcmTransportCipher`).
//!
//! Each outbound object Spark writes becomes one independent message:
//!
//! ```text
//! i64 BE   L            total bytes of the message, these 8 included
//! u8       header len   1 + key size + 7 (24 for a 16-byte key, 40 for a 32-byte key)
//! key size salt         random per message
//! 7 B      nonce prefix random per message
//! segments              each full segment: 32752 plaintext bytes → 32768 (ciphertext ‖ tag);
//!                       the last one: the rest + 16
//! ```
//!
//! The segment key is `HKDF-SHA256(ikm = session key, salt, info = BE64(L))` and segment `i`
//! uses nonce `prefix ‖ BE32(i) ‖ last`, with no GCM associated data: Tink's
//! `AesGcmHkdfStreaming` segments, but **not** Tink's stream layout. Tink shortens the first
//! segment by the header length; Spark fills it, so a Tink-layout stream is refused here.

use bytes::BytesMut;
use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use sha2::Sha256;
use zeroize::Zeroize;

use super::{CipherError, CipherKeys, KeySize};

/// Bytes of the `L` length prefix.
pub const LENGTH_PREFIX_LEN: usize = 8;
/// Bytes of a full ciphertext segment (Spark's `CIPHERTEXT_BUFFER_SIZE`).
pub const SEGMENT_LEN: usize = 32768;
/// Bytes of a GCM tag.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes in a full segment.
pub const SEGMENT_PLAINTEXT_LEN: usize = SEGMENT_LEN - TAG_LEN;
/// Bytes of the per-message nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;

/// Most segments in one message: the segment index in the nonce is 32 bits.
const MAX_SEGMENTS: u64 = 1 << 32;
/// Largest plaintext of one message (2^32 full segments, about 128 TiB).
pub const MAX_PLAINTEXT_LEN: u64 = MAX_SEGMENTS * SEGMENT_PLAINTEXT_LEN as u64;

const fn header_len(size: KeySize) -> usize {
    1 + size.bytes() + NONCE_PREFIX_LEN
}

/// The ciphertext length `L` (prefix included) of a message carrying `plaintext_len` bytes,
/// or `None` if it overflows.
pub fn message_len(size: KeySize, plaintext_len: u64) -> Option<u64> {
    let full = plaintext_len / SEGMENT_PLAINTEXT_LEN as u64;
    let partial = plaintext_len % SEGMENT_PLAINTEXT_LEN as u64;
    let segments = full + u64::from(partial > 0);
    if segments > MAX_SEGMENTS {
        return None;
    }
    let len = full
        .checked_mul(SEGMENT_LEN as u64)?
        .checked_add(if partial > 0 {
            partial + TAG_LEN as u64
        } else {
            0
        })?
        .checked_add((LENGTH_PREFIX_LEN + header_len(size)) as u64)?;
    (len <= i64::MAX as u64).then_some(len)
}

/// The random material of one message: the HKDF salt and the nonce prefix.
///
/// Spark draws both from a secure random source for every message; so must the caller
/// (`rpc-proto` has no randomness of its own). Never reuse one for two messages.
#[derive(Clone)]
pub struct MessageNonce {
    salt: [u8; 32],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl MessageNonce {
    /// Nonce material for a 16-byte session key.
    pub fn new(salt: [u8; 16], nonce_prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        let mut s = [0u8; 32];
        s[..16].copy_from_slice(&salt);
        Self {
            salt: s,
            nonce_prefix,
        }
    }

    /// Nonce material for a 32-byte session key (its salt is 32 bytes).
    pub fn new_256(salt: [u8; 32], nonce_prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        Self { salt, nonce_prefix }
    }

    /// Fresh nonce material drawn from a cryptographic RNG.
    pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut n = Self {
            salt: [0; 32],
            nonce_prefix: [0; NONCE_PREFIX_LEN],
        };
        rng.fill_bytes(&mut n.salt);
        rng.fill_bytes(&mut n.nonce_prefix);
        n
    }
}

impl std::fmt::Debug for MessageNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageNonce").finish_non_exhaustive()
    }
}

/// An AES-GCM instance keyed for one message's segments.
///
/// AES-GCM itself is *ring*'s (already the TLS provider): on x86-64 and ARM it runs several
/// times faster than a portable implementation (AES-NI/VAES with carry-less multiplication,
/// in assembly), which is what the transport's throughput comes down to. *ring* does not
/// promise to wipe key schedules; the session key and segment keys we hold are wiped.
struct SegmentCipher(Box<LessSafeKey>);

impl SegmentCipher {
    /// `HKDF-SHA256(ikm = session key, salt, info = BE64(L))`, as Tink's `AesGcmHkdfStreaming`.
    fn derive(keys: &CipherKeys, salt: &[u8], len: u64) -> Self {
        let mut seg_key = [0u8; 32];
        let seg_key_len = keys.key_size().bytes();
        Hkdf::<Sha256>::new(Some(salt), keys.key())
            .expand(&len.to_be_bytes(), &mut seg_key[..seg_key_len])
            .expect("16 or 32 bytes is a valid HKDF-SHA256 output length");
        let key = match keys.key_size() {
            KeySize::Aes128 => UnboundKey::new(&AES_128_GCM, &seg_key[..16]),
            KeySize::Aes256 => UnboundKey::new(&AES_256_GCM, &seg_key),
        }
        .expect("a 16- or 32-byte key");
        seg_key.zeroize();
        Self(Box::new(LessSafeKey::new(key)))
    }

    fn nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, last: bool) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(prefix);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        n
    }

    /// Encrypts `buf` in place and returns the tag.
    fn seal(
        &self,
        prefix: &[u8; NONCE_PREFIX_LEN],
        index: u32,
        last: bool,
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let nonce = Nonce::assume_unique_for_key(Self::nonce(prefix, index, last));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::empty(), buf)
            .expect("a segment is far below the GCM length limit");
        let mut out = [0; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `buf` (ciphertext without its tag) in place; `false` if the tag is wrong.
    fn open(
        &self,
        prefix: &[u8; NONCE_PREFIX_LEN],
        index: u32,
        last: bool,
        buf: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let nonce = Nonce::assume_unique_for_key(Self::nonce(prefix, index, last));
        let Ok(tag) = ring::aead::Tag::try_from(tag) else {
            return false;
        };
        self.0
            .open_in_place_separate_tag(nonce, Aad::empty(), tag, buf, 0..)
            .is_ok()
    }
}

/// The sending half of a GCM transport cipher: starts one [`GcmMessageEncrypter`] per
/// outbound message.
#[derive(Debug, Clone)]
pub struct GcmEncrypter {
    keys: CipherKeys,
}

impl GcmEncrypter {
    /// An encrypter with the session key of `keys` (the IVs are unused).
    pub fn new(keys: &CipherKeys) -> Self {
        Self { keys: keys.clone() }
    }

    /// Starts a message of exactly `plaintext_len` bytes and appends its length prefix and
    /// header to `out`.
    pub fn start(
        &self,
        nonce: MessageNonce,
        plaintext_len: u64,
        out: &mut BytesMut,
    ) -> Result<GcmMessageEncrypter, CipherError> {
        let size = self.keys.key_size();
        let len = message_len(size, plaintext_len).ok_or(CipherError::PlaintextTooLong {
            len: plaintext_len,
            max: MAX_PLAINTEXT_LEN,
        })?;
        let salt = &nonce.salt[..size.bytes()];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[header_len(size) as u8]);
        out.extend_from_slice(salt);
        out.extend_from_slice(&nonce.nonce_prefix);
        Ok(GcmMessageEncrypter {
            cipher: SegmentCipher::derive(&self.keys, salt, len),
            nonce_prefix: nonce.nonce_prefix,
            declared: plaintext_len,
            written: 0,
            index: 0,
            pending: Vec::new(),
        })
    }

    /// Encrypts one whole message into `out`.
    pub fn encrypt_message(
        &self,
        nonce: MessageNonce,
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CipherError> {
        let mut msg = self.start(nonce, plaintext.len() as u64, out)?;
        msg.write(plaintext, out)?;
        msg.finish()
    }
}

/// One outbound GCM message in progress: feed its plaintext in pieces of any size.
///
/// Segments are emitted as soon as they are complete, so at most one segment of plaintext
/// is buffered.
#[must_use = "a message must be written to its declared length and finished"]
pub struct GcmMessageEncrypter {
    cipher: SegmentCipher,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    declared: u64,
    written: u64,
    index: u32,
    pending: Vec<u8>,
}

impl std::fmt::Debug for GcmMessageEncrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmMessageEncrypter")
            .field("declared", &self.declared)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl GcmMessageEncrypter {
    /// Encrypts the next plaintext bytes, appending every completed segment to `out`.
    ///
    /// Fails without writing anything if this would exceed the declared length.
    pub fn write(&mut self, mut plaintext: &[u8], out: &mut BytesMut) -> Result<(), CipherError> {
        let total = self.written.checked_add(plaintext.len() as u64);
        if total.is_none_or(|t| t > self.declared) {
            return Err(CipherError::LengthMismatch {
                declared: self.declared,
                written: self.written.saturating_add(plaintext.len() as u64),
            });
        }
        while !plaintext.is_empty() {
            let room = SEGMENT_PLAINTEXT_LEN - self.pending.len();
            let take = room.min(plaintext.len());
            self.pending.extend_from_slice(&plaintext[..take]);
            plaintext = &plaintext[take..];
            self.written += take as u64;
            let last = self.written == self.declared;
            if self.pending.len() == SEGMENT_PLAINTEXT_LEN || last {
                let tag = self
                    .cipher
                    .seal(&self.nonce_prefix, self.index, last, &mut self.pending);
                out.extend_from_slice(&self.pending);
                out.extend_from_slice(&tag);
                self.pending.zeroize();
                self.pending.clear();
                self.index = self.index.wrapping_add(1);
            }
        }
        Ok(())
    }

    /// Plaintext bytes still expected before the message is complete.
    pub fn remaining(&self) -> u64 {
        self.declared - self.written
    }

    /// Ends the message; fails if fewer bytes than declared were written.
    pub fn finish(self) -> Result<(), CipherError> {
        if self.written == self.declared {
            Ok(())
        } else {
            Err(CipherError::LengthMismatch {
                declared: self.declared,
                written: self.written,
            })
        }
    }
}

enum Phase {
    /// Reading the 8-byte length prefix.
    Length,
    /// Reading the header of a message of length `len`.
    Header { len: u64 },
    /// Reading segment `index`; `remaining` ciphertext bytes of the message are still due.
    Segment {
        cipher: SegmentCipher,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        index: u32,
        remaining: u64,
    },
    /// A previous error; everything is refused.
    Failed,
}

/// The receiving half of a GCM transport cipher: incremental, any split of the byte stream,
/// any number of messages per input.
///
/// Memory is bounded by one segment (32 KiB) whatever `L` the peer announces. Plaintext is
/// released only after its segment's tag verified. Message boundaries are not reported: the
/// output is one byte stream for the frame decoder (Spark may split one frame across two
/// messages). Any error is final: later calls return [`CipherError::Failed`].
///
/// A zero-length message (header only, which Spark never sends) carries no tag, so nothing
/// authenticates its salt and nonce prefix; it also yields no plaintext.
pub struct GcmDecrypter {
    keys: CipherKeys,
    max_message_len: u64,
    phase: Phase,
    buf: Vec<u8>,
}

impl std::fmt::Debug for GcmDecrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmDecrypter")
            .field("max_message_len", &self.max_message_len)
            .finish_non_exhaustive()
    }
}

impl GcmDecrypter {
    /// A decrypter with the session key of `keys` (the IVs are unused), accepting any message
    /// length Spark can send.
    pub fn new(keys: &CipherKeys) -> Self {
        Self {
            keys: keys.clone(),
            max_message_len: i64::MAX as u64,
            phase: Phase::Length,
            buf: Vec::with_capacity(SEGMENT_LEN),
        }
    }

    /// Refuses messages whose length prefix `L` exceeds `max` bytes.
    pub fn with_max_message_len(mut self, max: u64) -> Self {
        self.max_message_len = max;
        self
    }

    /// Whether the decrypter is between messages (a clean place for the stream to end).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Length) && self.buf.is_empty()
    }

    /// Consumes all of `input`, appending the plaintext of every verified segment to `out`.
    pub fn decrypt(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), CipherError> {
        if matches!(self.phase, Phase::Failed) {
            return Err(CipherError::Failed);
        }
        while !input.is_empty() {
            let need = self.need();
            let take = (need - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.buf.len() == need {
                if let Err(e) = self.step(out) {
                    self.phase = Phase::Failed;
                    self.buf.zeroize();
                    self.buf.clear();
                    return Err(e);
                }
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Declares the end of the input: fails with [`CipherError::Truncated`] if it ended inside
    /// a message.
    pub fn finish(&self) -> Result<(), CipherError> {
        match self.phase {
            Phase::Failed => Err(CipherError::Failed),
            _ if self.is_idle() => Ok(()),
            _ => Err(CipherError::Truncated),
        }
    }

    /// Bytes the current unit (prefix, header or segment) needs in `buf`; at most a segment.
    fn need(&self) -> usize {
        match &self.phase {
            Phase::Length | Phase::Failed => LENGTH_PREFIX_LEN,
            Phase::Header { .. } => header_len(self.keys.key_size()),
            Phase::Segment { remaining, .. } => (*remaining).min(SEGMENT_LEN as u64) as usize,
        }
    }

    /// Processes the complete unit in `buf`.
    fn step(&mut self, out: &mut BytesMut) -> Result<(), CipherError> {
        let size = self.keys.key_size();
        let hlen = header_len(size);
        match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Length => {
                let raw = i64::from_be_bytes(self.buf[..8].try_into().expect("8 bytes"));
                let min = (LENGTH_PREFIX_LEN + hlen) as i64;
                if raw < min {
                    return Err(CipherError::InvalidLength { len: raw });
                }
                let len = raw as u64;
                if len > self.max_message_len {
                    return Err(CipherError::MessageTooLong {
                        len,
                        max: self.max_message_len,
                    });
                }
                let body = len - min as u64;
                let tail = body % SEGMENT_LEN as u64;
                let segments = body / SEGMENT_LEN as u64 + u64::from(tail > 0);
                if (1..=TAG_LEN as u64).contains(&tail) || segments > MAX_SEGMENTS {
                    return Err(CipherError::InvalidLength { len: raw });
                }
                self.phase = Phase::Header { len };
            }
            Phase::Header { len } => {
                if self.buf[0] as usize != hlen {
                    return Err(CipherError::InvalidHeader {
                        found: self.buf[0],
                        expected: hlen as u8,
                    });
                }
                let salt = &self.buf[1..1 + size.bytes()];
                let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
                nonce_prefix.copy_from_slice(&self.buf[1 + size.bytes()..hlen]);
                let remaining = len - (LENGTH_PREFIX_LEN + hlen) as u64;
                self.phase = if remaining == 0 {
                    Phase::Length
                } else {
                    Phase::Segment {
                        cipher: SegmentCipher::derive(&self.keys, salt, len),
                        nonce_prefix,
                        index: 0,
                        remaining,
                    }
                };
            }
            Phase::Segment {
                cipher,
                nonce_prefix,
                index,
                remaining,
            } => {
                let seg_len = self.buf.len();
                let last = seg_len as u64 == remaining;
                let (ct, tag) = self.buf.split_at_mut(seg_len - TAG_LEN);
                if !cipher.open(&nonce_prefix, index, last, ct, tag) {
                    return Err(CipherError::Authentication { segment: index });
                }
                out.extend_from_slice(ct);
                ct.zeroize();
                self.phase = if last {
                    Phase::Length
                } else {
                    Phase::Segment {
                        cipher,
                        nonce_prefix,
                        index: index + 1,
                        remaining: remaining - seg_len as u64,
                    }
                };
            }
            Phase::Failed => return Err(CipherError::Failed),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
