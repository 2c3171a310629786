//! The GCM transport cipher's oracle.

use bytes::BytesMut;
use rpc_proto::cipher::gcm::SEGMENT_PLAINTEXT_LEN;
use rpc_proto::cipher::{CipherError, CipherKeys, GcmDecrypter, GcmEncrypter, MessageNonce};

use crate::rng::{cut_points, fnv1a, XorShift};

/// The session key the `gcm` target uses: the v2 derived key of Spark's `AuthEngineSuite`, so
/// the research note's GCM frame vector is a valid input.
const GCM_KEY: [u8; 16] = [
    0x2d, 0x6e, 0x7a, 0x90, 0x48, 0xc8, 0x26, 0x5c, 0x33, 0xa8, 0xf3, 0x74, 0x7b, 0xfc, 0xc8, 0x4c,
];

/// Checks the GCM transport cipher on `data` twice over.
///
/// As ciphertext from a peer: decrypted whole and in pieces split where the data's hash says,
/// both give the same plaintext and the same error, and never more plaintext than input. As
/// plaintext (stretched past two segments when its first byte is odd): cut into messages,
/// encrypted in pieces, decrypted in other pieces, it comes back unchanged; with one byte of
/// the ciphertext flipped, decryption fails and releases only a prefix of the plaintext.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn gcm(data: &[u8]) {
    let keys = CipherKeys::new(&GCM_KEY, [0; 16], [0; 16]).expect("a 16-byte key");
    let mut rng = XorShift::new(fnv1a(data));

    // Peer input.
    let whole = gcm_decrypt(&keys, data, &[0, data.len()]);
    let split = gcm_decrypt(&keys, data, &cut_points(&mut rng, data.len()));
    assert_eq!(whole, split, "split invariance");
    assert!(whole.0.len() <= data.len(), "more plaintext than input");

    // Round trip.
    let len = match data.first() {
        Some(b) if b & 1 == 1 => 2 * SEGMENT_PLAINTEXT_LEN + usize::from(*b),
        _ => data.len(),
    };
    let plain: Vec<u8> = data.iter().copied().cycle().take(len).collect();
    let enc = GcmEncrypter::new(&keys);
    let mut wire = BytesMut::new();
    // No empty messages: a header-only message has no tag, so its salt is not authenticated.
    let mut messages = cut_points(&mut rng, plain.len());
    messages.dedup();
    for m in messages.windows(2) {
        let msg_plain = &plain[m[0]..m[1]];
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&rng.next().to_le_bytes());
        let prefix: [u8; 7] = rng.next().to_le_bytes()[..7].try_into().expect("7 bytes");
        let mut msg = enc
            .start(
                MessageNonce::new(salt, prefix),
                msg_plain.len() as u64,
                &mut wire,
            )
            .expect("a small message");
        for w in cut_points(&mut rng, msg_plain.len()).windows(2) {
            msg.write(&msg_plain[w[0]..w[1]], &mut wire)
                .expect("within the declared length");
        }
        msg.finish().expect("the declared length was written");
    }
    let (out, err) = gcm_decrypt(&keys, &wire, &cut_points(&mut rng, wire.len()));
    assert_eq!(err, None, "round trip failed");
    assert!(out == plain, "round trip changed the plaintext");

    // One flipped byte.
    if !plain.is_empty() {
        let pos = (rng.next() % wire.len() as u64) as usize;
        wire[pos] ^= (rng.next() % 255 + 1) as u8;
        let (out, err) = gcm_decrypt(&keys, &wire, &cut_points(&mut rng, wire.len()));
        assert!(err.is_some(), "corrupted byte {pos} undetected");
        assert!(plain.starts_with(&out), "unverified plaintext released");
    }
}

/// Decrypts `data` fed between consecutive `points`; the plaintext and the first error, from
/// `decrypt` or from `finish`.
fn gcm_decrypt(keys: &CipherKeys, data: &[u8], points: &[usize]) -> (Vec<u8>, Option<CipherError>) {
    let mut dec = GcmDecrypter::new(keys);
    let mut out = BytesMut::new();
    for w in points.windows(2) {
        if let Err(e) = dec.decrypt(&data[w[0]..w[1]], &mut out) {
            return (out.to_vec(), Some(e));
        }
    }
    (out.to_vec(), dec.finish().err())
}
