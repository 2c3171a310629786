//! The AES authentication handshake's oracle.

use rpc_proto::auth::{
    AuthClient, AuthError, AuthMessage, AuthRandomness, AuthServer, AuthVersion, Secret,
    MAX_AUTH_MESSAGE_LEN,
};

/// Feeds `data` to the AES handshake: as an [`AuthMessage`] to decode, as a challenge to an
/// [`AuthServer`], as a response to an [`AuthClient`], and (cut into randomness, app id and
/// secret) to a client and server that must agree.
///
/// Invariants: a decoded message re-encodes to the same bytes and is within
/// [`MAX_AUTH_MESSAGE_LEN`]; a role accepts only input that decodes; a server's response decodes
/// and names the client's app id; keys have the version's length; a client and server with the
/// same secret and version derive the same key and mirrored IVs.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn auth(data: &[u8]) {
    let version = match data.first() {
        Some(b) if b & 1 == 1 => AuthVersion::V2,
        _ => AuthVersion::V1,
    };
    let key_len = match version {
        AuthVersion::V2 => 16,
        _ => 32,
    };
    let message = data.get(1..).unwrap_or_default();
    let decoded = AuthMessage::decode(message);
    if let Ok(m) = &decoded {
        assert_eq!(m.encode(), message, "decode then encode changed the bytes");
        assert!(message.len() <= MAX_AUTH_MESSAGE_LEN);
    }

    let server = AuthServer::new(version);
    if let Ok(accepted) = server.handle_challenge(
        message,
        |_| Some(Secret::new("secret")),
        AuthRandomness::from_bytes(&[5; AuthRandomness::LEN]),
    ) {
        let challenge = decoded
            .as_ref()
            .expect("accepted a challenge that does not decode");
        let response = AuthMessage::decode(&accepted.response).expect("response decodes");
        assert_eq!(response.app_id, challenge.app_id);
        assert_eq!(accepted.app_id, challenge.app_id);
        assert_eq!(accepted.keys.key().len(), key_len);
    }

    let client = AuthClient::new(
        version,
        "appId",
        Secret::new("secret"),
        AuthRandomness::from_bytes(&[6; AuthRandomness::LEN]),
    )
    .expect("short app id");
    if let Ok(keys) = client.handle_response(message) {
        let response = decoded
            .as_ref()
            .expect("accepted a response that does not decode");
        assert_eq!(response.app_id, "appId");
        assert_eq!(keys.key().len(), key_len);
    }

    // Two honest sides with randomness, app id and secret taken from the input.
    let mut rest = message;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        head
    };
    let mut random = [[0; AuthRandomness::LEN]; 2];
    for r in &mut random {
        let head = take(AuthRandomness::LEN);
        r[..head.len()].copy_from_slice(head);
    }
    let split = usize::from(take(1).first().copied().unwrap_or(0));
    let app_id = String::from_utf8_lossy(take(split)).into_owned();
    let secret = Secret::from_bytes(rest);
    let client = match AuthClient::new(
        version,
        app_id.clone(),
        secret.clone(),
        AuthRandomness::from_bytes(&random[0]),
    ) {
        Ok(client) => client,
        Err(AuthError::AppIdTooLong { .. }) => return,
        Err(e) => panic!("client refused honest input: {e}"),
    };
    // A clamped X25519 scalar never yields a low-order public key or shared secret, so an
    // honest exchange always succeeds, whatever the randomness.
    let accepted = server
        .handle_challenge(
            client.challenge(),
            |id| (id == app_id).then(|| secret.clone()),
            AuthRandomness::from_bytes(&random[1]),
        )
        .expect("server rejected an honest client");
    let keys = client
        .handle_response(&accepted.response)
        .expect("client rejected an honest server");
    assert_eq!(keys.key(), accepted.keys.key());
    assert_eq!(keys.key().len(), key_len);
    assert_eq!(keys.inbound_iv(), accepted.keys.outbound_iv());
    assert_eq!(keys.outbound_iv(), accepted.keys.inbound_iv());
}
