use super::*;
use proptest::prelude::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

/// The v2 derived key of the `AuthEngineSuite` vectors (research note §4).
fn spark_keys() -> CipherKeys {
    CipherKeys::new(&h("2d6e7a9048c8265c33a8f3747bfcc84c"), [0; 16], [0; 16]).unwrap()
}

fn vector_nonce() -> MessageNonce {
    MessageNonce::new(
        h("000102030405060708090a0b0c0d0e0f").try_into().unwrap(),
        h("a0a1a2a3a4a5a6").try_into().unwrap(),
    )
}

/// Research note §6.4: built with fixed salt and nonce prefix, verified with Tink 1.20.0.
const VECTOR: &str = "0000000000000058 18 000102030405060708090a0b0c0d0e0f a0a1a2a3a4a5a6
    5a0ecb58ca3c219b7ac25b770519a76e5033b9c23eb3c66932381bb8687683253c8e7171f511b36f4e4e63eb2555c816a208f73762e0ea73";

fn vector_plaintext() -> Vec<u8> {
    (0..40u32).map(|i| (7 * i % 256) as u8).collect()
}

fn encrypt(keys: &CipherKeys, seed: u8, plaintext: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let nonce = MessageNonce::new_256([seed; 32], [seed.wrapping_add(1); 7]);
    GcmEncrypter::new(keys)
        .encrypt_message(nonce, plaintext, &mut out)
        .unwrap();
    out
}

fn decrypt_all(keys: &CipherKeys, wire: &[u8]) -> Result<Vec<u8>, CipherError> {
    let mut dec = GcmDecrypter::new(keys);
    let mut out = BytesMut::new();
    dec.decrypt(wire, &mut out)?;
    dec.finish()?;
    Ok(out.to_vec())
}

#[test]
fn encrypts_the_spark_frame_vector_byte_for_byte() {
    let mut wire = BytesMut::new();
    GcmEncrypter::new(&spark_keys())
        .encrypt_message(vector_nonce(), &vector_plaintext(), &mut wire)
        .unwrap();
    assert_eq!(hex::encode(&wire), hex::encode(h(VECTOR)));
    // The same message fed one byte at a time.
    let pt = vector_plaintext();
    let mut out = BytesMut::new();
    let enc = GcmEncrypter::new(&spark_keys());
    let mut msg = enc.start(vector_nonce(), 40, &mut out).unwrap();
    for b in &pt {
        msg.write(std::slice::from_ref(b), &mut out).unwrap();
    }
    msg.finish().unwrap();
    assert_eq!(&out[..], &h(VECTOR)[..]);
}

#[test]
fn decrypts_the_spark_frame_vector() {
    assert_eq!(
        decrypt_all(&spark_keys(), &h(VECTOR)).unwrap(),
        vector_plaintext()
    );
    // Byte by byte, twice in a row on one decrypter.
    let mut dec = GcmDecrypter::new(&spark_keys());
    let mut out = BytesMut::new();
    let wire = [h(VECTOR), h(VECTOR)].concat();
    for b in &wire {
        dec.decrypt(std::slice::from_ref(b), &mut out).unwrap();
    }
    dec.finish().unwrap();
    assert_eq!(
        out.to_vec(),
        [vector_plaintext(), vector_plaintext()].concat()
    );
}

#[test]
fn message_len_is_exact_at_segment_boundaries() {
    // Spark's `testEncryptedCountBoundary` sizes, plus the neighbours.
    for (pt, len) in [
        (0u64, 32u64),
        (1, 49),
        (32728, 32 + 32744),
        (32729, 32 + 32745),
        (32740, 32 + 32756),
        (32752, 32 + 32768),
        (32753, 32 + 32768 + 17),
        (70000, 32 + 2 * 32768 + (70000 - 2 * 32752) + 16),
    ] {
        assert_eq!(
            message_len(KeySize::Aes128, pt),
            Some(len),
            "plaintext {pt}"
        );
        let data = vec![0xabu8; pt as usize];
        let wire = encrypt(&spark_keys(), 1, &data);
        assert_eq!(wire.len() as u64, len);
        assert_eq!(&wire[..8], &len.to_be_bytes());
        assert_eq!(decrypt_all(&spark_keys(), &wire).unwrap(), data);
    }
    assert_eq!(message_len(KeySize::Aes256, 0), Some(48));
    assert_eq!(message_len(KeySize::Aes128, u64::MAX), None);
    assert!(message_len(KeySize::Aes256, MAX_PLAINTEXT_LEN).is_some());
    assert_eq!(message_len(KeySize::Aes128, MAX_PLAINTEXT_LEN + 1), None);
    let err = GcmEncrypter::new(&spark_keys())
        .start(vector_nonce(), MAX_PLAINTEXT_LEN + 1, &mut BytesMut::new())
        .err();
    assert_eq!(
        err,
        Some(CipherError::PlaintextTooLong {
            len: MAX_PLAINTEXT_LEN + 1,
            max: MAX_PLAINTEXT_LEN
        })
    );
}

#[test]
fn aes256_session_key_uses_a_40_byte_header() {
    let keys = CipherKeys::new(&[0x31; 32], [0; 16], [0; 16]).unwrap();
    let data: Vec<u8> = (0..40000u32).map(|i| i as u8).collect();
    let wire = encrypt(&keys, 9, &data);
    assert_eq!(wire[8], 40);
    assert_eq!(
        wire.len() as u64,
        message_len(KeySize::Aes256, 40000).unwrap()
    );
    assert_eq!(decrypt_all(&keys, &wire).unwrap(), data);
    assert!(decrypt_all(&spark_keys(), &wire).is_err());
}

/// Tink's own writer shortens the first segment by the header length (32728 plaintext bytes
/// instead of 32752). Spark does not, and a Spark receiver refuses Tink's layout.
#[test]
fn refuses_a_stock_tink_first_segment() {
    let keys = spark_keys();
    let pt: Vec<u8> = (0..40000u32).map(|i| (i * 13) as u8).collect();
    let first = SEGMENT_PLAINTEXT_LEN - header_len(KeySize::Aes128); // 32728
    let len = (LENGTH_PREFIX_LEN + header_len(KeySize::Aes128) + pt.len() + 2 * TAG_LEN) as u64;
    let salt = [0x11u8; 16];
    let prefix = [0x22u8; 7];
    let mut wire = Vec::new();
    wire.extend_from_slice(&len.to_be_bytes());
    wire.push(24);
    wire.extend_from_slice(&salt);
    wire.extend_from_slice(&prefix);
    let cipher = SegmentCipher::derive(&keys, &salt, len);
    for (i, (chunk, last)) in [(&pt[..first], false), (&pt[first..], true)]
        .into_iter()
        .enumerate()
    {
        let mut seg = chunk.to_vec();
        let tag = cipher.seal(&prefix, i as u32, last, &mut seg);
        wire.extend_from_slice(&seg);
        wire.extend_from_slice(&tag);
    }
    assert_eq!(wire.len() as u64, len);
    let mut dec = GcmDecrypter::new(&keys);
    let mut out = BytesMut::new();
    assert_eq!(
        dec.decrypt(&wire, &mut out),
        Err(CipherError::Authentication { segment: 0 })
    );
    assert!(out.is_empty());
}

#[test]
fn refuses_reordered_segments() {
    let data = vec![0x5au8; 3 * SEGMENT_PLAINTEXT_LEN];
    let mut wire = encrypt(&spark_keys(), 2, &data).to_vec();
    let start = 32;
    let (a, b) = wire[start..start + 2 * SEGMENT_LEN].split_at_mut(SEGMENT_LEN);
    a.swap_with_slice(b);
    assert_eq!(
        decrypt_all(&spark_keys(), &wire),
        Err(CipherError::Authentication { segment: 0 })
    );
}

#[test]
fn refuses_invalid_lengths_and_headers() {
    let keys = spark_keys();
    let with_len = |len: i64| {
        let mut w = h(VECTOR);
        w[..8].copy_from_slice(&len.to_be_bytes());
        w
    };
    let first_err = |w: &[u8]| {
        GcmDecrypter::new(&keys)
            .decrypt(w, &mut BytesMut::new())
            .unwrap_err()
    };
    assert_eq!(
        first_err(&with_len(31)),
        CipherError::InvalidLength { len: 31 }
    );
    assert_eq!(
        first_err(&with_len(-1)),
        CipherError::InvalidLength { len: -1 }
    );
    assert_eq!(
        first_err(&with_len(i64::MIN)),
        CipherError::InvalidLength { len: i64::MIN }
    );
    // A last segment of 1..=16 bytes cannot hold a tag.
    assert_eq!(
        first_err(&with_len(32 + 16)),
        CipherError::InvalidLength { len: 48 }
    );
    assert_eq!(
        first_err(&with_len(32 + SEGMENT_LEN as i64 + 1)),
        CipherError::InvalidLength { len: 32 + 32769 }
    );
    // Larger than an int (Spark's `testCiphertextLengthLargerThanMaxInt`) is fine by default,
    // refused under a limit.
    let big = i64::from(i32::MAX) + 1000;
    let mut dec = GcmDecrypter::new(&keys);
    dec.decrypt(&with_len(big)[..32], &mut BytesMut::new())
        .unwrap();
    assert_eq!(dec.finish(), Err(CipherError::Truncated));
    let mut dec = GcmDecrypter::new(&keys).with_max_message_len(1 << 20);
    assert_eq!(
        dec.decrypt(&with_len(big), &mut BytesMut::new()),
        Err(CipherError::MessageTooLong {
            len: big as u64,
            max: 1 << 20
        })
    );
    let mut w = h(VECTOR);
    w[8] = 40;
    assert_eq!(
        first_err(&w),
        CipherError::InvalidHeader {
            found: 40,
            expected: 24
        }
    );
}

#[test]
fn refuses_everything_after_an_error() {
    let mut w = h(VECTOR);
    w[40] ^= 1;
    let mut dec = GcmDecrypter::new(&spark_keys());
    let mut out = BytesMut::new();
    assert_eq!(
        dec.decrypt(&w, &mut out),
        Err(CipherError::Authentication { segment: 0 })
    );
    assert_eq!(dec.decrypt(&h(VECTOR), &mut out), Err(CipherError::Failed));
    assert_eq!(dec.finish(), Err(CipherError::Failed));
    assert!(out.is_empty());
}

#[test]
fn zero_length_message_is_just_a_header() {
    let wire = encrypt(&spark_keys(), 3, &[]);
    assert_eq!(wire.len(), 32);
    assert_eq!(
        decrypt_all(&spark_keys(), &[&wire[..], &h(VECTOR)].concat()).unwrap(),
        vector_plaintext()
    );
}

#[test]
fn encrypter_enforces_the_declared_length() {
    let enc = GcmEncrypter::new(&spark_keys());
    let mut out = BytesMut::new();
    let mut msg = enc.start(vector_nonce(), 4, &mut out).unwrap();
    msg.write(b"abc", &mut out).unwrap();
    assert_eq!(msg.remaining(), 1);
    assert_eq!(
        msg.write(b"de", &mut out),
        Err(CipherError::LengthMismatch {
            declared: 4,
            written: 5
        })
    );
    assert_eq!(
        msg.finish(),
        Err(CipherError::LengthMismatch {
            declared: 4,
            written: 3
        })
    );
}

#[test]
fn truncated_stream_ends_with_a_typed_error() {
    let wire = [encrypt(&spark_keys(), 4, &[1; 70000]).to_vec(), h(VECTOR)].concat();
    for cut in [
        1,
        7,
        8,
        20,
        32,
        33,
        32 + SEGMENT_LEN,
        wire.len() - 88 - 1,
        wire.len() - 1,
    ] {
        let mut dec = GcmDecrypter::new(&spark_keys());
        dec.decrypt(&wire[..cut], &mut BytesMut::new()).unwrap();
        assert_eq!(dec.finish(), Err(CipherError::Truncated), "cut at {cut}");
    }
}

fn split_points(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn encrypt_split_anywhere_decrypt_is_identity(
        sizes in proptest::collection::vec(
            prop_oneof![0usize..100, 32700usize..32800, 60000usize..70000],
            1..4,
        ),
        write_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        read_cuts in proptest::collection::vec(any::<usize>(), 0..12),
        wide in any::<bool>(),
    ) {
        let keys = CipherKeys::new(&if wide { vec![8u8; 32] } else { vec![8u8; 16] }, [0; 16], [0; 16]).unwrap();
        let enc = GcmEncrypter::new(&keys);
        let mut wire = BytesMut::new();
        let mut plain = Vec::new();
        for (m, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|i| (i * 31 + m) as u8).collect();
            let nonce = MessageNonce::new_256([m as u8; 32], [m as u8; 7]);
            let before = wire.len() as u64;
            let mut msg = enc.start(nonce, data.len() as u64, &mut wire).unwrap();
            for w in split_points(data.len(), &write_cuts).windows(2) {
                msg.write(&data[w[0]..w[1]], &mut wire).unwrap();
            }
            msg.finish().unwrap();
            prop_assert_eq!(wire.len() as u64 - before, message_len(keys.key_size(), *size as u64).unwrap());
            plain.extend_from_slice(&data);
        }
        let mut dec = GcmDecrypter::new(&keys);
        let mut out = BytesMut::new();
        for w in split_points(wire.len(), &read_cuts).windows(2) {
            dec.decrypt(&wire[w[0]..w[1]], &mut out).unwrap();
        }
        dec.finish().unwrap();
        prop_assert_eq!(out.to_vec(), plain);
    }

    #[test]
    fn any_single_corrupted_byte_is_detected(
        size in prop_oneof![1usize..200, 32740usize..32800, 65000usize..66000],
        pos in any::<usize>(),
        flip in 1u8..=255,
        read_cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let keys = spark_keys();
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let mut wire = encrypt(&keys, 5, &data).to_vec();
        let pos = pos % wire.len();
        wire[pos] ^= flip;
        let mut dec = GcmDecrypter::new(&keys);
        let mut out = BytesMut::new();
        let mut result = Ok(());
        for w in split_points(wire.len(), &read_cuts).windows(2) {
            result = dec.decrypt(&wire[w[0]..w[1]], &mut out);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| dec.finish());
        prop_assert!(result.is_err(), "corruption at {} undetected", pos);
        // Only verified plaintext is released: a prefix of the original.
        prop_assert!(data.starts_with(&out));
    }

    #[test]
    fn decrypter_never_panics_on_garbage(
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut dec = GcmDecrypter::new(&spark_keys());
        let mut out = BytesMut::new();
        let _ = dec.decrypt(&garbage, &mut out);
        let _ = dec.finish();
        prop_assert!(out.is_empty());
    }
}

/// Spark's `testLargeMessageBatchedFlush`: a message over 1 MiB. (Java batches the plaintext
/// it hands on per ~1 MiB; here every verified segment is released at once.)
#[test]
fn message_over_a_mebibyte_round_trips_in_reads_of_any_size() {
    let keys = spark_keys();
    let data: Vec<u8> = (0..(1 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
    let wire = encrypt(&keys, 6, &data);
    assert_eq!(
        wire.len() as u64,
        message_len(KeySize::Aes128, data.len() as u64).unwrap()
    );
    let mut dec = GcmDecrypter::new(&keys);
    let mut out = BytesMut::new();
    for piece in wire.chunks(65536 + 7) {
        dec.decrypt(piece, &mut out).unwrap();
    }
    dec.finish().unwrap();
    assert!(out[..] == data[..]);
}

#[test]
fn ctr_and_gcm_keys_from_the_auth_engine_vectors_talk_across_sides() {
    // Research note §4: v2 key and the client's IVs; GCM ignores the IVs.
    let key = h("2d6e7a9048c8265c33a8f3747bfcc84c");
    let input_iv: [u8; 16] = h("fc6a5dc8b90a9dad8f54f08b51a59ed2").try_into().unwrap();
    let output_iv: [u8; 16] = h("a72709baf00785cad6329ce09f631f71").try_into().unwrap();
    let client = CipherKeys::client(&key, input_iv, output_iv).unwrap();
    let server = CipherKeys::server(&key, input_iv, output_iv).unwrap();
    let mut buf = b"a frame from the client".to_vec();
    crate::cipher::CtrEncrypter::new(&client).encrypt_in_place(&mut buf);
    crate::cipher::CtrDecrypter::new(&server).decrypt_in_place(&mut buf);
    assert_eq!(buf, b"a frame from the client");
    let mut wire = BytesMut::new();
    GcmEncrypter::new(&server)
        .encrypt_message(vector_nonce(), &vector_plaintext(), &mut wire)
        .unwrap();
    assert_eq!(&wire[..], &h(VECTOR)[..]);
    assert_eq!(decrypt_all(&client, &wire).unwrap(), vector_plaintext());
    assert_eq!(format!("{client:?}"), "CipherKeys { size: Aes128, .. }");
}
