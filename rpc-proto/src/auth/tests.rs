//! Spark's `AuthEngineSuite` / `CtrAuthEngineSuite` vectors, round trips and hostile input.

use super::*;

// Inputs and outputs of Spark's AuthEngineSuite and CtrAuthEngineSuite (verbatim).
const APP_ID: &str = "appId";
const SECRET: &str = "secret";
const CLIENT_PRIVATE: &str = "efe6b68b3fce92158e3637f6ef9d937e75558928dd4b401de04b43d300a73186";
const CLIENT_CHALLENGE_HEX: &str = "fb00000005617070496400000010890b6e960f48e998777267a7e4e623220000003c48ad7dc7ec9466da93bda9f11488dc9404050e02c661d87d67c782444944c6e369b27e0a416c30845a2d9e64271511ca98b41d65f8c426e18ff380f6";
const SERVER_RESPONSE_HEX: &str = "fb00000005617070496400000010708451c9dd2792c97c1ca66e6df449ef0000003c64fe899ecdaf458d4e25e9d5c5a380b8e6d1a184692fac065ed84f8592c18e9629f9c636809dca2ffc041f20346eb53db7873808ecad08b46b5ee3ff";
const DERIVED_KEY_ID: &str = "de04fd52d71040ed9d260579dacfdf4f5695f991ce8ddb1dde05a7335880906e";
const UNSAFE_DERIVED_KEY: &str = "31963f15a320d5c90333f7ecf5cf3a31c7eaf151de07fef8494663a9f47cfd31";
const INPUT_IV: &str = "fc6a5dc8b90a9dad8f54f08b51a59ed2";
const OUTPUT_IV: &str = "a72709baf00785cad6329ce09f631f71";
// Re-derived in the research note (not in Spark's suites).
const V2_DERIVED_KEY: &str = "2d6e7a9048c8265c33a8f3747bfcc84c";
const V1_KEY_ID: &str = "759e309e7e7389c0b7be46f4b988177733ea47c822a7145ecc4e4dfba94f23e7";

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// The client randomness that reproduces Spark's fixed challenge: its private key, salt and IV.
fn spark_client_randomness() -> AuthRandomness {
    let challenge = AuthMessage::decode(&hex::decode(CLIENT_CHALLENGE_HEX).unwrap()).unwrap();
    AuthRandomness::new(
        unhex(CLIENT_PRIVATE),
        challenge.salt.try_into().unwrap(),
        challenge.ciphertext[..12].try_into().unwrap(),
    )
}

fn spark_client(version: AuthVersion) -> AuthClient {
    AuthClient::new(
        version,
        APP_ID,
        Secret::new(SECRET),
        spark_client_randomness(),
    )
    .unwrap()
}

fn rnd(seed: u8) -> AuthRandomness {
    let mut bytes = [0; AuthRandomness::LEN];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    AuthRandomness::from_bytes(&bytes)
}

#[test]
fn client_reproduces_sparks_fixed_challenge() {
    let client = spark_client(AuthVersion::V2);
    assert_eq!(hex::encode(client.challenge()), CLIENT_CHALLENGE_HEX);
}

#[test]
fn fixed_challenge_response_gives_sparks_v2_key_id_and_ivs() {
    // AuthEngineSuite.testFixedChallengeResponse + CtrAuthEngineSuite.testCtrFixedChallengeIvResponse
    let keys = spark_client(AuthVersion::V2)
        .handle_response(&hex::decode(SERVER_RESPONSE_HEX).unwrap())
        .unwrap();
    assert_eq!(keys.version(), AuthVersion::V2);
    assert_eq!(hex::encode(keys.key_id()), DERIVED_KEY_ID);
    assert_eq!(hex::encode(keys.key()), V2_DERIVED_KEY);
    assert_eq!(hex::encode(keys.inbound_iv()), INPUT_IV);
    assert_eq!(hex::encode(keys.outbound_iv()), OUTPUT_IV);
}

#[test]
fn fixed_challenge_response_gives_sparks_v1_key_and_ivs() {
    // AuthEngineSuite.testFixedChallengeResponseUnsafeVersion
    let keys = spark_client(AuthVersion::V1)
        .handle_response(&hex::decode(SERVER_RESPONSE_HEX).unwrap())
        .unwrap();
    assert_eq!(hex::encode(keys.key()), UNSAFE_DERIVED_KEY);
    assert_eq!(hex::encode(keys.key_id()), V1_KEY_ID);
    assert_eq!(hex::encode(keys.inbound_iv()), INPUT_IV);
    assert_eq!(hex::encode(keys.outbound_iv()), OUTPUT_IV);
}

#[test]
fn server_accepts_sparks_fixed_challenge() {
    // AuthEngineSuite.testFixedChallenge
    for version in [AuthVersion::V1, AuthVersion::V2] {
        let accepted = AuthServer::new(version)
            .handle_challenge(
                &hex::decode(CLIENT_CHALLENGE_HEX).unwrap(),
                |app| (app == APP_ID).then(|| Secret::new(SECRET)),
                rnd(1),
            )
            .unwrap();
        assert_eq!(accepted.app_id, APP_ID);
        // The client holding the private key agrees with this fresh response.
        let keys = spark_client(version)
            .handle_response(&accepted.response)
            .unwrap();
        assert_eq!(keys.key(), accepted.keys.key());
    }
}

#[test]
fn round_trip_agrees_on_keys_for_both_versions() {
    for (version, key_len) in [(AuthVersion::V1, 32), (AuthVersion::V2, 16)] {
        let client = AuthClient::new(version, "sparkSaslUser", Secret::new("s"), rnd(2)).unwrap();
        let accepted = AuthServer::new(version)
            .handle_challenge(client.challenge(), |_| Some(Secret::new("s")), rnd(3))
            .unwrap();
        let keys = client.handle_response(&accepted.response).unwrap();
        assert_eq!(keys.key().len(), key_len);
        assert_eq!(keys.key(), accepted.keys.key());
        assert_eq!(keys.key_id(), accepted.keys.key_id());
        assert_eq!(keys.outbound_iv(), accepted.keys.inbound_iv());
        assert_eq!(keys.inbound_iv(), accepted.keys.outbound_iv());
        assert_ne!(keys.inbound_iv(), keys.outbound_iv());
    }
}

#[test]
fn version_mismatch_completes_with_different_keys() {
    let client = AuthClient::new(AuthVersion::V1, "a", Secret::new("s"), rnd(4)).unwrap();
    let accepted = AuthServer::new(AuthVersion::V2)
        .handle_challenge(client.challenge(), |_| Some(Secret::new("s")), rnd(5))
        .unwrap();
    let keys = client.handle_response(&accepted.response).unwrap();
    assert_ne!(keys.key(), accepted.keys.key());
}

#[test]
fn wrong_secret_fails_on_both_sides_with_the_same_error() {
    for version in [AuthVersion::V1, AuthVersion::V2] {
        // Server side: the client used another secret (AuthEngineSuite.testMismatchedSecret).
        let client = AuthClient::new(version, APP_ID, Secret::new("one"), rnd(6)).unwrap();
        let server_err = AuthServer::new(version)
            .handle_challenge(client.challenge(), |_| Some(Secret::new("two")), rnd(7))
            .unwrap_err();
        assert_eq!(server_err, AuthError::Failed);

        // Client side: a server holding another secret answers the real challenge (Spark's
        // server would have failed first; a forged answer must fail too).
        let client = AuthClient::new(version, APP_ID, Secret::new("one"), rnd(6)).unwrap();
        let response = engine::seal(APP_ID, &Secret::new("two"), &rnd(8), client.challenge());
        let client_err = client.handle_response(&response.encode()).unwrap_err();
        assert_eq!(client_err, AuthError::Failed);
        assert_eq!(client_err, server_err);
        assert_eq!(client_err.to_string(), "authentication failed");
    }
}

#[test]
fn unknown_app_fails_like_a_wrong_secret() {
    let client = AuthClient::new(AuthVersion::V2, APP_ID, Secret::new("s"), rnd(9)).unwrap();
    let err = AuthServer::new(AuthVersion::V2)
        .handle_challenge(client.challenge(), |_| None, rnd(10))
        .unwrap_err();
    assert_eq!(err, AuthError::Failed);
}

#[test]
fn corrupted_challenge_fields_fail() {
    // AuthEngineSuite.testCorruptChallengeAppId / Salt / Ciphertext.
    let good = AuthMessage::decode(&hex::decode(CLIENT_CHALLENGE_HEX).unwrap()).unwrap();
    let mut corrupt = Vec::new();
    let mut m = good.clone();
    m.app_id = "appIe".into();
    corrupt.push(m);
    let mut m = good.clone();
    m.salt[0] ^= 1;
    corrupt.push(m);
    let mut m = good.clone();
    m.ciphertext[20] ^= 1;
    corrupt.push(m);
    let mut m = good.clone();
    m.ciphertext.pop();
    corrupt.push(m);
    for m in corrupt {
        let err = AuthServer::new(AuthVersion::V2)
            .handle_challenge(&m.encode(), |_| Some(Secret::new(SECRET)), rnd(11))
            .unwrap_err();
        assert_eq!(err, AuthError::Failed);
    }
}

#[test]
fn corrupted_response_fields_fail_on_the_client() {
    let good = AuthMessage::decode(&hex::decode(SERVER_RESPONSE_HEX).unwrap()).unwrap();
    let mut corrupt = Vec::new();
    let mut m = good.clone();
    m.app_id = "other".into();
    corrupt.push(m);
    let mut m = good.clone();
    m.salt[3] ^= 0x80;
    corrupt.push(m);
    let mut m = good.clone();
    m.ciphertext[0] ^= 1;
    corrupt.push(m);
    let mut m = good;
    *m.ciphertext.last_mut().unwrap() ^= 1;
    corrupt.push(m);
    for m in corrupt {
        let err = spark_client(AuthVersion::V1)
            .handle_response(&m.encode())
            .unwrap_err();
        assert_eq!(err, AuthError::Failed);
    }
}

#[test]
fn low_order_public_key_fails() {
    // A peer that encrypts a low-order point (here 0) under the right secret still fails.
    let secret = Secret::new("s");
    let client = AuthClient::new(AuthVersion::V2, "a", secret.clone(), rnd(12)).unwrap();
    let challenge = AuthMessage::decode(client.challenge()).unwrap();
    let transcript = challenge.encode();
    let salt = [1u8; 16];
    let aad = [b"a".as_slice(), &salt, &transcript].concat();
    let mut kek = [0u8; 16];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), secret.expose())
        .expand(&aad, &mut kek)
        .unwrap();
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let iv = [2u8; 12];
    let sealed = aes_gcm::Aes128Gcm::new((&kek).into())
        .encrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: &[0u8; 32],
                aad: &aad,
            },
        )
        .unwrap();
    let response = AuthMessage {
        app_id: "a".into(),
        salt: salt.to_vec(),
        ciphertext: [iv.as_slice(), &sealed].concat(),
    };
    assert_eq!(
        client.handle_response(&response.encode()).unwrap_err(),
        AuthError::Failed
    );
}

#[test]
fn secrets_and_keys_are_not_in_debug_output() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret:?}"), "Secret(..)");
    let client = AuthClient::new(AuthVersion::V2, "a", secret.clone(), rnd(13)).unwrap();
    assert!(!format!("{client:?}").contains("hunter2"));
    let accepted = AuthServer::new(AuthVersion::V2)
        .handle_challenge(client.challenge(), |_| Some(secret.clone()), rnd(14))
        .unwrap();
    let dbg = format!("{accepted:?}");
    assert!(!dbg.contains(&format!("{:?}", accepted.keys.key())));
    assert_eq!(format!("{:?}", rnd(1)), "AuthRandomness(..)");
    assert_eq!(secret, Secret::new("hunter2"));
    assert_ne!(secret, Secret::new("hunter3"));
    assert_ne!(secret, Secret::new("hunter"));
}

#[test]
fn app_id_over_the_limit_is_refused() {
    let err = AuthClient::new(
        AuthVersion::V1,
        "x".repeat(MAX_APP_ID_LEN + 1),
        Secret::new("s"),
        rnd(15),
    )
    .unwrap_err();
    assert!(matches!(err, AuthError::AppIdTooLong { .. }));
}

#[test]
fn decode_rejects_hostile_input_with_typed_errors() {
    let good = hex::decode(CLIENT_CHALLENGE_HEX).unwrap();
    assert_eq!(AuthMessage::decode(&[]), Err(AuthMessageError::Empty));
    assert_eq!(
        AuthMessage::decode(&[0xEA, 0, 0, 0, 0]),
        Err(AuthMessageError::UnknownTag(0xEA))
    );
    // Every truncation of a valid message is a typed error.
    for len in 1..good.len() {
        let err = AuthMessage::decode(&good[..len]).unwrap_err();
        assert!(
            matches!(err, AuthMessageError::Truncated(_)),
            "{len}: {err:?}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        AuthMessage::decode(&long),
        Err(AuthMessageError::TrailingBytes(1))
    );
    assert_eq!(
        AuthMessage::decode(&[0xFB, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(AuthMessageError::NegativeLength {
            field: AuthField::AppId,
            len: -1
        })
    );
    // A huge claimed length is refused before allocation, even with no bytes behind it.
    assert_eq!(
        AuthMessage::decode(&[0xFB, 0x7F, 0xFF, 0xFF, 0xFF]),
        Err(AuthMessageError::FieldTooLong {
            field: AuthField::AppId,
            len: i32::MAX as usize,
            max: MAX_APP_ID_LEN
        })
    );
    let oversized = |salt: usize, ct: usize| {
        AuthMessage {
            app_id: "a".into(),
            salt: vec![0; salt],
            ciphertext: vec![0; ct],
        }
        .encode()
    };
    assert!(matches!(
        AuthMessage::decode(&oversized(MAX_SALT_LEN + 1, 0)),
        Err(AuthMessageError::FieldTooLong {
            field: AuthField::Salt,
            ..
        })
    ));
    assert!(matches!(
        AuthMessage::decode(&oversized(0, MAX_CIPHERTEXT_LEN + 1)),
        Err(AuthMessageError::FieldTooLong {
            field: AuthField::Ciphertext,
            ..
        })
    ));
    let max = oversized(MAX_SALT_LEN, MAX_CIPHERTEXT_LEN);
    assert!(AuthMessage::decode(&max).is_ok());
    assert!(max.len() <= MAX_AUTH_MESSAGE_LEN);
    let mut bad_utf8 = good;
    bad_utf8[5] = 0xFF;
    assert_eq!(
        AuthMessage::decode(&bad_utf8),
        Err(AuthMessageError::InvalidUtf8)
    );
    // The roles report malformed input as such.
    assert_eq!(
        AuthServer::new(AuthVersion::V1)
            .handle_challenge(&[0xEA], |_| Some(Secret::new("s")), rnd(16))
            .unwrap_err(),
        AuthError::Malformed(AuthMessageError::UnknownTag(0xEA))
    );
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = AuthMessage::decode(&bytes) {
                prop_assert_eq!(m.encode(), bytes);
            }
        }

        #[test]
        fn tagged_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut input = vec![AUTH_MESSAGE_TAG];
            input.extend_from_slice(&bytes);
            if let Ok(m) = AuthMessage::decode(&input) {
                prop_assert_eq!(m.encode(), input);
            }
        }

        #[test]
        fn encode_decode_round_trips(
            app_id in ".{0,40}",
            salt in proptest::collection::vec(any::<u8>(), 0..64),
            ciphertext in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let m = AuthMessage { app_id, salt, ciphertext };
            let bytes = m.encode();
            prop_assert_eq!(bytes.len(), m.encoded_len());
            prop_assert_eq!(AuthMessage::decode(&bytes), Ok(m));
        }

        #[test]
        fn roles_reject_corrupted_messages_without_panicking(
            flip in any::<usize>(),
            bit in 0u8..8,
            garbage in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let challenge = hex::decode(CLIENT_CHALLENGE_HEX).unwrap();
            let mut corrupt = challenge.clone();
            let i = flip % corrupt.len();
            corrupt[i] ^= 1 << bit;
            let server = AuthServer::new(AuthVersion::V2);
            prop_assert!(server.handle_challenge(&corrupt, |_| Some(Secret::new(SECRET)), rnd(1)).is_err());
            let _ = server.handle_challenge(&garbage, |_| Some(Secret::new(SECRET)), rnd(1));

            let mut response = hex::decode(SERVER_RESPONSE_HEX).unwrap();
            let i = flip % response.len();
            response[i] ^= 1 << bit;
            prop_assert!(spark_client(AuthVersion::V2).handle_response(&response).is_err());
            prop_assert!(spark_client(AuthVersion::V1).handle_response(&garbage).is_err());
        }
    }
}
