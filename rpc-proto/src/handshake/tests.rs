use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::cipher::MessageNonce;
use crate::id::StreamChunkId;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn secrets(app: &str) -> Option<Secret> {
    (app == "app-1").then(|| Secret::new("s3cret"))
}

fn aes(version: AuthVersion, cipher: CipherMode) -> ClientMechanism {
    ClientMechanism::Aes { version, cipher }
}

/// Runs both sides to the end, moving every transmitted byte across.
fn run(
    client: &mut ClientHandshake,
    server: &mut ServerHandshake,
    rng: &mut StdRng,
) -> (
    Result<Established, HandshakeError>,
    Result<Established, HandshakeError>,
) {
    for _ in 0..8 {
        while let Some(bytes) = client.poll_transmit() {
            server.handle_bytes(&bytes, &secrets, rng);
        }
        while let Some(bytes) = server.poll_transmit() {
            client.handle_bytes(&bytes, rng);
        }
        if server.is_done() && client.is_done() {
            break;
        }
        // A side that gave up closes the connection.
        if server.is_done() {
            client.handle_closed();
        }
        if client.is_done() {
            server.handle_closed();
        }
    }
    (
        client.poll_outcome().expect("client outcome"),
        server.poll_outcome().expect("server outcome"),
    )
}

#[test]
fn every_version_and_cipher_establishes_a_working_cipher_both_ways() {
    for version in [AuthVersion::V1, AuthVersion::V2] {
        for mode in [CipherMode::Ctr, CipherMode::Gcm] {
            let mut rng = rng(1);
            let mut client = ClientHandshake::new(
                "app-1",
                Secret::new("s3cret"),
                aes(version, mode),
                false,
                &mut rng,
            )
            .unwrap();
            let mut server = ServerHandshake::new(ServerMechanisms::aes(version, mode));
            let (c, s) = run(&mut client, &mut server, &mut rng);
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            assert_eq!((c.app_id.as_str(), s.app_id.as_str()), ("app-1", "app-1"));
            assert!(c.leftover.is_empty() && s.leftover.is_empty());
            let (cc, sc) = (c.cipher.as_mut().unwrap(), s.cipher.as_mut().unwrap());
            assert_eq!((cc.mode(), sc.mode()), (Some(mode), Some(mode)));
            for direction in 0..2 {
                let (from, to) = if direction == 0 {
                    (&mut *cc, &mut *sc)
                } else {
                    (&mut *sc, &mut *cc)
                };
                let mut wire = BytesMut::new();
                from.encrypt(&[b"ping"], MessageNonce::random(&mut rng), &mut wire)
                    .unwrap();
                assert_ne!(&wire[..], b"ping");
                let mut plain = BytesMut::new();
                to.decrypt(&wire, &mut plain).unwrap();
                assert_eq!(&plain[..], b"ping", "{version:?} {mode:?}");
            }
        }
    }
}

#[test]
fn the_client_sends_one_rpc_request_carrying_the_challenge() {
    let mut rng = rng(2);
    let mut client = ClientHandshake::new(
        "app-1",
        Secret::new("s3cret"),
        aes(AuthVersion::V1, CipherMode::Ctr),
        false,
        &mut rng,
    )
    .unwrap();
    let mut wire = BytesMut::from(&client.poll_transmit().unwrap()[..]);
    assert_eq!(client.poll_transmit(), None);
    let frame = FrameDecoder::new(1 << 20).decode(&mut wire).unwrap();
    let Some(Decoded::Frame(Frame::RpcRequest { request, body })) = frame else {
        panic!("not an RpcRequest: {frame:?}");
    };
    assert!((request.0 as i64) >= 0, "Spark's request ids are positive");
    let message = crate::auth::AuthMessage::decode(&body).unwrap();
    assert_eq!(message.app_id, "app-1");
    assert_eq!(body[0], AUTH_MESSAGE_TAG);
}

#[test]
fn a_wrong_secret_or_unknown_app_is_refused_with_sparks_text_and_nothing_more() {
    for (app, secret) in [("app-1", "wrong"), ("app-2", "s3cret")] {
        let mut rng = rng(3);
        let mut client = ClientHandshake::new(
            app,
            Secret::new(secret),
            aes(AuthVersion::V2, CipherMode::Gcm),
            false,
            &mut rng,
        )
        .unwrap();
        let mut server =
            ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
        let (c, s) = run(&mut client, &mut server, &mut rng);
        assert_eq!(
            s.unwrap_err(),
            HandshakeError::AuthenticationFailed { remote: None },
            "{app}"
        );
        assert_eq!(
            c.unwrap_err(),
            HandshakeError::AuthenticationFailed {
                remote: Some(AUTH_FAILED_TEXT.to_owned())
            }
        );
    }
}

#[test]
fn a_version_mismatch_is_not_detected_by_the_handshake_but_by_the_first_message() {
    // Spark has no key confirmation: v1 against v2 "succeeds", then nothing decrypts.
    let mut rng = rng(4);
    let mut client = ClientHandshake::new(
        "app-1",
        Secret::new("s3cret"),
        aes(AuthVersion::V1, CipherMode::Gcm),
        false,
        &mut rng,
    )
    .unwrap();
    let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
    let (c, s) = run(&mut client, &mut server, &mut rng);
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let mut wire = BytesMut::new();
    c.cipher
        .as_mut()
        .unwrap()
        .encrypt(&[b"ping"], MessageNonce::random(&mut rng), &mut wire)
        .unwrap();
    let mut plain = BytesMut::new();
    assert!(s
        .cipher
        .as_mut()
        .unwrap()
        .decrypt(&wire, &mut plain)
        .is_err());
}

fn server_after(bytes: &[u8]) -> (ServerHandshake, Vec<Bytes>) {
    let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
    server.handle_bytes(bytes, &secrets, &mut rng(5));
    let sent = std::iter::from_fn(|| server.poll_transmit()).collect();
    (server, sent)
}

#[test]
fn the_server_serves_no_other_request_before_authentication() {
    let requests = [
        Frame::ChunkFetchRequest {
            chunk: StreamChunkId {
                stream_id: 1,
                chunk_index: 0,
            },
        },
        Frame::OneWayMessage { body: "hi".into() },
        Frame::StreamRequest {
            stream_id: "s".into(),
        },
        Frame::UploadStream {
            request: RequestId(1),
            meta: "m".into(),
            byte_count: 3,
        },
        Frame::MergedBlockMetaRequest {
            request: RequestId(1),
            app_id: "a".into(),
            shuffle_id: 0,
            shuffle_merge_id: 0,
            reduce_id: 0,
        },
        Frame::RpcResponse {
            request: RequestId(1),
            body: "x".into(),
        },
    ];
    for frame in requests {
        let (mut server, sent) = server_after(&frame.to_bytes());
        assert!(sent.is_empty(), "{frame:?} was answered");
        assert!(
            matches!(
                server.poll_outcome(),
                Some(Err(HandshakeError::Protocol(_)))
            ),
            "{frame:?}"
        );
    }
    // An RPC that is not a handshake message is refused with the one failure text.
    let rpc = Frame::RpcRequest {
        request: RequestId(9),
        body: "hello endpoint".into(),
    };
    let (mut server, sent) = server_after(&rpc.to_bytes());
    let mut refusal = BytesMut::from(&sent[0][..]);
    assert_eq!(
        FrameDecoder::new(1 << 20).decode(&mut refusal).unwrap(),
        Some(Decoded::Frame(Frame::RpcFailure {
            request: RequestId(9),
            error: AUTH_FAILED_TEXT.into()
        }))
    );
    assert_eq!(
        server.poll_outcome(),
        Some(Err(HandshakeError::AuthenticationFailed { remote: None }))
    );
}

#[test]
fn oversized_and_garbage_handshakes_end_and_bytes_after_the_challenge_are_the_ciphers() {
    // A length far beyond a handshake's needs is refused from its 8 bytes alone.
    let mut huge = BytesMut::new();
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[3]);
    let (mut server, sent) = server_after(&huge);
    assert!(sent.is_empty());
    assert!(matches!(
        server.poll_outcome(),
        Some(Err(HandshakeError::Protocol(_)))
    ));

    let (mut server, _) = server_after(&[0xff; 64]);
    assert!(matches!(
        server.poll_outcome(),
        Some(Err(HandshakeError::Protocol(_)))
    ));

    // The challenge followed by more bytes before the answer: they are the encrypted
    // stream's, handed on as leftover, and a stranger's do not decrypt.
    let mut rng = rng(6);
    let mut client = ClientHandshake::new(
        "app-1",
        Secret::new("s3cret"),
        aes(AuthVersion::V2, CipherMode::Gcm),
        false,
        &mut rng,
    )
    .unwrap();
    let mut bytes = client.poll_transmit().unwrap().to_vec();
    bytes.extend_from_slice(&Frame::OneWayMessage { body: "x".into() }.to_bytes());
    let (mut server, sent) = server_after(&bytes);
    assert_eq!(sent.len(), 1, "the answer");
    let mut accepted = server.poll_outcome().unwrap().unwrap();
    let extra = Frame::OneWayMessage { body: "x".into() }.to_bytes();
    assert_eq!(accepted.leftover, extra);
    let mut plain = BytesMut::new();
    let cipher = accepted.cipher.as_mut().unwrap();
    let decrypted = cipher.decrypt(&accepted.leftover, &mut plain);
    assert!(
        plain.is_empty(),
        "a stranger's bytes decrypted: {decrypted:?}"
    );
}

#[test]
fn bytes_after_the_servers_answer_are_handed_on_as_leftover() {
    let mut rng = rng(7);
    let mut client = ClientHandshake::new(
        "app-1",
        Secret::new("s3cret"),
        aes(AuthVersion::V2, CipherMode::Gcm),
        false,
        &mut rng,
    )
    .unwrap();
    let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
    server.handle_bytes(&client.poll_transmit().unwrap(), &secrets, &mut rng);
    let mut answer = server.poll_transmit().unwrap().to_vec();
    let mut s = server.poll_outcome().unwrap().unwrap();
    // The server's first encrypted message, in the same read as its answer; split anywhere.
    let mut wire = BytesMut::new();
    s.cipher
        .as_mut()
        .unwrap()
        .encrypt(&[b"first"], MessageNonce::random(&mut rng), &mut wire)
        .unwrap();
    answer.extend_from_slice(&wire);
    // Fed in pieces until the handshake ends; what follows goes to the cipher, after the
    // leftover.
    let mut pieces = answer.chunks(7); // 7 does not divide the answer's length
    for piece in pieces.by_ref() {
        client.handle_bytes(piece, &mut rng);
        if client.is_done() {
            break;
        }
    }
    let mut c = client.poll_outcome().unwrap().unwrap();
    assert!(
        !c.leftover.is_empty(),
        "the answer's last piece carried ciphertext"
    );
    let cipher = c.cipher.as_mut().unwrap();
    let mut plain = BytesMut::new();
    cipher.decrypt(&c.leftover, &mut plain).unwrap();
    for piece in pieces {
        cipher.decrypt(piece, &mut plain).unwrap();
    }
    assert_eq!(&plain[..], b"first");
}

#[test]
fn a_close_before_the_end_is_reported_once() {
    let mut rng = rng(8);
    let mut client = ClientHandshake::new(
        "app-1",
        Secret::new("s3cret"),
        aes(AuthVersion::V2, CipherMode::Ctr),
        false,
        &mut rng,
    )
    .unwrap();
    client.handle_closed();
    assert_eq!(client.poll_outcome(), Some(Err(HandshakeError::Closed)));
    client.handle_closed();
    assert_eq!(client.poll_outcome(), None);
    let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Ctr));
    server.handle_closed();
    assert_eq!(server.poll_outcome(), Some(Err(HandshakeError::Closed)));
}

impl PartialEq for Established {
    fn eq(&self, other: &Self) -> bool {
        self.app_id == other.app_id && self.leftover == other.leftover
    }
}

proptest! {
    /// Whatever a stranger sends, in whatever pieces, the server never panics, never
    /// accepts, and answers at most once.
    #[test]
    fn a_stranger_never_gets_in(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
        let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
        let cut = cut.min(data.len());
        let mut rng = rng(9);
        server.handle_bytes(&data[..cut], &secrets, &mut rng);
        server.handle_bytes(&data[cut..], &secrets, &mut rng);
        server.handle_closed();
        prop_assert!(std::iter::from_fn(|| server.poll_transmit()).count() <= 1);
        prop_assert!(!matches!(server.poll_outcome(), Some(Ok(_))));
    }

    /// A challenge with any byte changed is refused.
    #[test]
    fn a_tampered_challenge_is_refused(at in 0usize..200, flip in 1u8..=255) {
        let mut rng = rng(10);
        let mut client = ClientHandshake::new(
            "app-1", Secret::new("s3cret"), aes(AuthVersion::V2, CipherMode::Gcm), false, &mut rng,
        ).unwrap();
        let mut bytes = client.poll_transmit().unwrap().to_vec();
        // The challenge, not the frame around it (length, type, request id, body length).
        let at = 21 + at % (bytes.len() - 21);
        bytes[at] ^= flip;
        let mut server = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
        server.handle_bytes(&bytes, &secrets, &mut rng);
        server.handle_closed();
        prop_assert!(!matches!(server.poll_outcome(), Some(Ok(_))));
    }
}

fn client(
    mechanism: ClientMechanism,
    fallback: bool,
    secret: &str,
    rng: &mut StdRng,
) -> ClientHandshake {
    ClientHandshake::new("app-1", Secret::new(secret), mechanism, fallback, rng).unwrap()
}

/// Checks that both sides' ciphers (or both sides' lack of one) agree, both ways.
fn check_layers(c: &mut Established, s: &mut Established, rng: &mut StdRng) {
    match (c.cipher.as_mut(), s.cipher.as_mut()) {
        (None, None) => {}
        (Some(cc), Some(sc)) => {
            for direction in 0..2 {
                let (from, to) = if direction == 0 {
                    (&mut *cc, &mut *sc)
                } else {
                    (&mut *sc, &mut *cc)
                };
                let mut wire = BytesMut::new();
                from.encrypt(&[b"over ", b"sasl"], MessageNonce::random(rng), &mut wire)
                    .unwrap();
                assert!(!wire.windows(4).any(|w| w == b"sasl"), "sent in clear");
                let mut plain = BytesMut::new();
                to.decrypt(&wire, &mut plain).unwrap();
                assert_eq!(&plain[..], b"over sasl");
            }
        }
        (c, s) => panic!("one side has a cipher: client {c:?}, server {s:?}"),
    }
}

#[test]
fn sasl_authenticates_with_and_without_its_layer() {
    use crate::sasl::QopOffer;
    for (encrypt, offer, layered) in [
        (false, QopOffer::AuthConfOrAuth, false),
        (true, QopOffer::AuthConfOrAuth, true),
        (true, QopOffer::AuthConf, true),
    ] {
        let mut rng = rng(11);
        let mut c = client(ClientMechanism::Sasl { encrypt }, false, "s3cret", &mut rng);
        let mut s = ServerHandshake::new(ServerMechanisms::sasl(offer));
        let (c, s) = run(&mut c, &mut s, &mut rng);
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        assert_eq!(s.app_id, "app-1");
        assert_eq!(c.cipher.is_some(), layered, "{encrypt} {offer:?}");
        check_layers(&mut c, &mut s, &mut rng);
    }
}

#[test]
fn sasl_refuses_a_wrong_secret_and_a_client_that_will_not_encrypt_when_required() {
    use crate::sasl::QopOffer;
    for (secret, encrypt, offer) in [
        ("wrong", false, QopOffer::AuthConfOrAuth),
        ("s3cret", false, QopOffer::AuthConf),
        ("s3cret", true, QopOffer::Auth),
    ] {
        let mut rng = rng(12);
        let mut c = client(ClientMechanism::Sasl { encrypt }, false, secret, &mut rng);
        let mut s = ServerHandshake::new(ServerMechanisms::sasl(offer));
        let (c, s) = run(&mut c, &mut s, &mut rng);
        assert!(c.is_err() && s.is_err(), "{secret} {encrypt} {offer:?}");
    }
}

#[test]
fn an_aes_client_falls_back_to_sasl_only_when_told_to() {
    use crate::sasl::QopOffer;
    let aes = aes(AuthVersion::V2, CipherMode::Gcm);
    // A SASL-only server refuses the AES challenge (once) and keeps the connection; with the
    // fallback the client then authenticates with SASL, unencrypted, as Spark's does.
    let mut rng = rng(13);
    let mut c = client(aes, true, "s3cret", &mut rng);
    let mut s = ServerHandshake::new(ServerMechanisms::sasl(QopOffer::AuthConfOrAuth));
    let (c, s) = run(&mut c, &mut s, &mut rng);
    let (c, s) = (c.unwrap(), s.unwrap());
    assert!(c.cipher.is_none() && s.cipher.is_none());

    // A second AES challenge ends it.
    let mut s = ServerHandshake::new(ServerMechanisms::sasl(QopOffer::AuthConfOrAuth));
    for _ in 0..2 {
        let mut c = client(aes, false, "s3cret", &mut rng);
        s.handle_bytes(&c.poll_transmit().unwrap(), &secrets, &mut rng);
    }
    assert!(matches!(s.poll_outcome(), Some(Err(_))));

    // Without the fallback the refusal is final.
    let mut c = client(aes, false, "s3cret", &mut rng);
    let mut s = ServerHandshake::new(ServerMechanisms::sasl(QopOffer::AuthConfOrAuth));
    let (c, _) = run(&mut c, &mut s, &mut rng);
    assert!(matches!(
        c,
        Err(HandshakeError::AuthenticationFailed { remote: Some(_) })
    ));
}

#[test]
fn an_aes_server_that_accepts_sasl_takes_a_sasl_client() {
    use crate::sasl::QopOffer;
    let mut rng = rng(14);
    let mut c = client(
        ClientMechanism::Sasl { encrypt: true },
        false,
        "s3cret",
        &mut rng,
    );
    let mut s = ServerHandshake::new(
        ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm).with_sasl(QopOffer::AuthConfOrAuth),
    );
    let (c, s) = run(&mut c, &mut s, &mut rng);
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert!(c.cipher.is_some());
    check_layers(&mut c, &mut s, &mut rng);
    // And one that does not, refuses it.
    let mut c = client(
        ClientMechanism::Sasl { encrypt: false },
        false,
        "s3cret",
        &mut rng,
    );
    let mut s = ServerHandshake::new(ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm));
    let (c, s) = run(&mut c, &mut s, &mut rng);
    assert!(c.is_err() && s.is_err());
}
