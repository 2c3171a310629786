//! The SASL DIGEST-MD5 oracle.

use bytes::BytesMut;
use rpc_proto::auth::Secret;
use rpc_proto::sasl::{
    Qop, QopOffer, SaslClient, SaslError, SaslLayer, SaslMessage, SaslServer, MAX_RESPONSE_LEN,
    MAX_SASL_TOKEN_LEN,
};

use crate::rng::{cut_points, fnv1a, XorShift};

/// Feeds `data` to SASL DIGEST-MD5: as a [`SaslMessage`](rpc_proto::sasl::SaslMessage) to decode,
/// as tokens to a server and a client, as wrapped frames to a layer, and (cut into secret,
/// QOP and randomness) to an honest client and server whose layers then carry the data.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn sasl(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or_default();
    let offer = match flags % 3 {
        0 => QopOffer::Auth,
        1 => QopOffer::AuthConfOrAuth,
        _ => QopOffer::AuthConf,
    };
    let qop = if flags & 4 == 0 {
        Qop::Auth
    } else {
        Qop::AuthConf
    };

    // The codec.
    if let Ok(m) = SaslMessage::decode(rest) {
        assert_eq!(m.encode(), rest, "decode then encode changed the bytes");
        assert!(m.token.len() <= MAX_SASL_TOKEN_LEN);
    }

    // Hostile tokens: a server given garbage as the digest-response never completes (it would
    // take the secret), and every error is final.
    let secret = Secret::new("secret");
    let cut = rest.len() / 2;
    let (first, second) = rest.split_at(cut);
    let mut server = SaslServer::new("app", &secret, offer, [3; 30]);
    match server.handle_message(first) {
        Ok(challenge) => assert!(challenge.len() < 256, "a challenge of our own making"),
        Err(e) => assert!(matches!(e, SaslError::TokenTooLong { .. }), "{e}"),
    }
    let verdict = server.handle_message(second);
    if verdict.is_ok() {
        panic!("a server accepted a digest-response no client computed");
    }
    assert!(!server.is_complete());
    assert_eq!(server.handle_message(second), Err(SaslError::Finished));

    // A client given the data as a challenge answers within the limits, or fails for good.
    let mut client = SaslClient::new("app", &secret, qop, [4; 30]);
    match client.handle_response(rest) {
        Ok(Some(request)) => {
            let m = SaslMessage::decode(&request).expect("our request decodes");
            assert_eq!(m.app_id, "app");
            assert!(m.token.len() <= MAX_RESPONSE_LEN);
            // And the data as the rspauth: a forgery, unless it is an unlikely exact guess.
            assert!(client.handle_response(second).is_err());
            assert!(!client.is_complete());
        }
        Ok(None) => panic!("a client completed on its first challenge"),
        Err(_) => {
            assert_eq!(client.handle_response(rest), Err(SaslError::Finished));
        }
    }

    // Honest peers with the data's secret always complete; their layers carry the data.
    let split = usize::from(flags) % (rest.len() + 1);
    let secret = Secret::from_bytes(&rest[..split]);
    let mut random = [0u8; 30];
    for (r, b) in random.iter_mut().zip(rest.iter().rev()) {
        *r = *b;
    }
    let qop = if offer == QopOffer::AuthConf {
        Qop::AuthConf
    } else if offer == QopOffer::Auth {
        Qop::Auth
    } else {
        qop
    };
    let mut client = SaslClient::new("app", &secret, qop, random);
    let mut server = SaslServer::new("app", &secret, offer, [random[0]; 30]);
    let mut reply = server
        .handle_message(
            &SaslMessage::decode(&client.first_message())
                .expect("decodes")
                .token,
        )
        .expect("first step");
    while let Some(request) = client
        .handle_response(&reply)
        .expect("client refused an honest server")
    {
        let token = SaslMessage::decode(&request).expect("decodes").token;
        reply = server
            .handle_message(&token)
            .expect("server refused an honest client");
    }
    assert!(client.is_complete() && server.is_complete());
    assert_eq!(server.qop(), Some(qop));
    let (c, s) = (client.into_layer(), server.into_layer());
    assert_eq!(c.is_some(), qop == Qop::AuthConf);
    let (Some(mut c), Some(mut s)) = (c, s) else {
        return;
    };
    let mut rng = XorShift::new(fnv1a(data));
    let mut wire = BytesMut::new();
    c.encrypt(rest, &mut wire);
    let (plain, err) = sasl_decrypt(&mut s, &wire, &cut_points(&mut rng, wire.len()));
    assert_eq!(err, None, "round trip failed");
    assert!(plain == rest, "round trip changed the plaintext");

    // Peer bytes into a fresh layer (the server's twin): the same result however split.
    let twin = || {
        let mut client = SaslClient::new("app", &Secret::new("k"), Qop::AuthConf, [1; 30]);
        let mut server = SaslServer::new("app", &Secret::new("k"), QopOffer::AuthConf, [2; 30]);
        let mut reply = server.handle_message(b"").expect("challenge");
        while let Some(r) = client.handle_response(&reply).expect("honest") {
            reply = server
                .handle_message(&SaslMessage::decode(&r).expect("decodes").token)
                .expect("honest");
        }
        server.into_layer().expect("auth-conf")
    };
    let whole = sasl_decrypt(&mut twin(), rest, &[0, rest.len()]);
    let split = sasl_decrypt(&mut twin(), rest, &cut_points(&mut rng, rest.len()));
    assert_eq!(whole, split, "split invariance");
    assert!(whole.0.len() <= rest.len(), "more plaintext than input");

    // One flipped byte of a real frame is detected.
    if !rest.is_empty() {
        let mut wire = BytesMut::new();
        c.encrypt(rest, &mut wire);
        let pos = (rng.next() % wire.len() as u64) as usize;
        wire[pos] ^= (rng.next() % 255 + 1) as u8;
        let (out, err) = sasl_decrypt(&mut s, &wire, &cut_points(&mut rng, wire.len()));
        // A flip in a length field may leave the layer waiting for bytes that never come.
        assert!(
            err.is_some() || !s.is_idle(),
            "corrupted byte {pos} undetected"
        );
        assert!(rest.starts_with(&out), "unverified plaintext released");
    }
}

/// Decrypts `data` fed between consecutive `points`; the plaintext and the first error.
fn sasl_decrypt(
    layer: &mut SaslLayer,
    data: &[u8],
    points: &[usize],
) -> (Vec<u8>, Option<SaslError>) {
    let mut out = BytesMut::new();
    for w in points.windows(2) {
        if let Err(e) = layer.decrypt(&data[w[0]..w[1]], &mut out) {
            return (out.to_vec(), Some(e));
        }
    }
    (out.to_vec(), None)
}
