//! Spark's AES-CTR transport cipher (`CtrTransportCipher`, the default
//! `spark.network.crypto.cipher`).
//!
//! No framing and no tags: one AES-CTR keystream per direction for the life of the
//! connection, starting at that direction's IV, with a 128-bit big-endian counter.
//! Ciphertext length equals plaintext length, and the frame decoder sees the decrypted bytes.
//!
//! **CTR does not detect tampering.** A flipped ciphertext bit flips the same plaintext bit
//! and nothing here notices; only a malformed frame further up may. Prefer GCM where the peer
//! supports it.

use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit, StreamCipher};

use super::{CipherKeys, KeySize};

type Ctr128 = ctr::Ctr128BE<Aes128>;
type Ctr256 = ctr::Ctr128BE<Aes256>;

enum Keystream {
    Aes128(Box<Ctr128>),
    Aes256(Box<Ctr256>),
}

impl Keystream {
    fn new(keys: &CipherKeys, iv: &[u8; 16]) -> Self {
        match keys.key_size() {
            KeySize::Aes128 => Self::Aes128(Box::new(
                Ctr128::new_from_slices(keys.key(), iv).expect("16-byte key and IV"),
            )),
            KeySize::Aes256 => Self::Aes256(Box::new(
                Ctr256::new_from_slices(keys.key(), iv).expect("32-byte key and 16-byte IV"),
            )),
        }
    }

    fn apply(&mut self, buf: &mut [u8]) {
        // A 128-bit counter cannot run out within a connection (2^132 bytes).
        match self {
            Self::Aes128(c) => c.apply_keystream(buf),
            Self::Aes256(c) => c.apply_keystream(buf),
        }
    }
}

/// The sending half of a CTR transport cipher (keystream from [`CipherKeys`]' outbound IV).
pub struct CtrEncrypter(Keystream);

impl CtrEncrypter {
    /// An encrypter starting at the outbound IV of `keys`.
    pub fn new(keys: &CipherKeys) -> Self {
        Self(Keystream::new(keys, keys.outbound_iv()))
    }

    /// Encrypts the next bytes of the outbound stream in place.
    pub fn encrypt_in_place(&mut self, buf: &mut [u8]) {
        self.0.apply(buf);
    }
}

impl std::fmt::Debug for CtrEncrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrEncrypter").finish_non_exhaustive()
    }
}

/// The receiving half of a CTR transport cipher (keystream from [`CipherKeys`]' inbound IV).
///
/// Cannot fail and cannot detect tampering; see the [module docs](self).
pub struct CtrDecrypter(Keystream);

impl CtrDecrypter {
    /// A decrypter starting at the inbound IV of `keys`.
    pub fn new(keys: &CipherKeys) -> Self {
        Self(Keystream::new(keys, keys.inbound_iv()))
    }

    /// Decrypts the next bytes of the inbound stream in place.
    pub fn decrypt_in_place(&mut self, buf: &mut [u8]) {
        self.0.apply(buf);
    }
}

impl std::fmt::Debug for CtrDecrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrDecrypter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn matches_nist_sp800_38a_ctr_aes128() {
        // SP 800-38A F.5.1: the second block crosses a byte carry of the big-endian counter.
        let iv: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let keys = CipherKeys::new(&h("2b7e151628aed2a6abf7158809cf4f3c"), [0; 16], iv).unwrap();
        let mut buf = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let mut enc = CtrEncrypter::new(&keys);
        enc.encrypt_in_place(&mut buf[..5]);
        enc.encrypt_in_place(&mut buf[5..]);
        assert_eq!(
            buf,
            h("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")
        );
    }

    #[test]
    fn matches_nist_sp800_38a_ctr_aes256() {
        // SP 800-38A F.5.5 (first block): the v1 key is 32 bytes, so AES-256.
        let iv: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let keys = CipherKeys::new(&key, [0; 16], iv).unwrap();
        let mut buf = h("6bc1bee22e409f96e93d7e117393172a");
        CtrEncrypter::new(&keys).encrypt_in_place(&mut buf);
        assert_eq!(buf, h("601ec313775789a5b7a7f504bbf3d228"));
    }

    #[test]
    fn client_sends_with_output_iv_and_server_receives_with_it() {
        let (input, output) = ([1u8; 16], [2u8; 16]);
        let client = CipherKeys::client(&[9; 16], input, output).unwrap();
        let server = CipherKeys::server(&[9; 16], input, output).unwrap();
        let mut msg = b"client to server".to_vec();
        CtrEncrypter::new(&client).encrypt_in_place(&mut msg);
        let mut direct = b"client to server".to_vec();
        CtrEncrypter::new(&CipherKeys::new(&[9; 16], [0; 16], output).unwrap())
            .encrypt_in_place(&mut direct);
        assert_eq!(msg, direct);
        CtrDecrypter::new(&server).decrypt_in_place(&mut msg);
        assert_eq!(msg, b"client to server");
    }

    #[test]
    fn tampering_goes_undetected() {
        let keys = CipherKeys::new(&[3; 16], [4; 16], [4; 16]).unwrap();
        let mut buf = b"pay 100".to_vec();
        CtrEncrypter::new(&keys).encrypt_in_place(&mut buf);
        buf[4] ^= b'1' ^ b'9';
        CtrDecrypter::new(&keys).decrypt_in_place(&mut buf);
        assert_eq!(buf, b"pay 900");
    }

    proptest! {
        #[test]
        fn split_anywhere_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            wide in any::<bool>(),
        ) {
            let key = if wide { vec![5u8; 32] } else { vec![5u8; 16] };
            let keys = CipherKeys::new(&key, [6; 16], [6; 16]).unwrap();
            let mut wire = data.clone();
            CtrEncrypter::new(&keys).encrypt_in_place(&mut wire);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut dec = CtrDecrypter::new(&keys);
            for w in points.windows(2) {
                dec.decrypt_in_place(&mut wire[w[0]..w[1]]);
            }
            prop_assert_eq!(wire, data);
        }
    }
}
