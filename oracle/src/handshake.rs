//! The connection handshake's oracle.

use bytes::{Bytes, BytesMut};
use rpc_proto::auth::{AuthVersion, Secret};
use rpc_proto::cipher::CipherMode;
use rpc_proto::handshake::{ClientHandshake, ClientMechanism, ServerHandshake, ServerMechanisms};
use rpc_proto::sasl::QopOffer;
use rpc_proto::{Decoded, Frame, FrameDecoder};

use crate::rng::{cut_points, fnv1a, XorShift};

/// A deterministic generator standing in for the secure one the handshake asks for, so a
/// fuzz input replays exactly. (Never do this outside tests.)
struct FuzzRng(XorShift);

impl rand::RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            chunk.copy_from_slice(&self.0.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

impl rand::CryptoRng for FuzzRng {}

/// What a server handshake sent and how it ended, for `data` fed between `points`.
fn server_handshake(
    mechanisms: ServerMechanisms,
    data: &[u8],
    points: &[usize],
) -> (Vec<Bytes>, Option<String>) {
    let secrets = |app: &str| (app == "app").then(|| Secret::new("secret"));
    let mut rng = FuzzRng(XorShift::new(7));
    let mut server = ServerHandshake::new(mechanisms);
    let mut sent = Vec::new();
    for w in points.windows(2) {
        server.handle_bytes(&data[w[0]..w[1]], &secrets, &mut rng);
        sent.extend(std::iter::from_fn(|| server.poll_transmit()));
    }
    server.handle_closed();
    sent.extend(std::iter::from_fn(|| server.poll_transmit()));
    let outcome = match server.poll_outcome() {
        Some(Ok(_)) => panic!("a stranger's bytes authenticated"),
        Some(Err(e)) => Some(e.to_string()),
        None => None,
    };
    assert!(server.is_done(), "a closed handshake is over");
    (sent, outcome)
}

/// The connection handshake ([`rpc_proto::handshake`]): whatever a stranger sends, split
/// anywhere, a server never authenticates it, answers every request at most once with
/// nothing but handshake replies (never more than the rounds of the protocol), and behaves
/// the same however the input is split; a client fed a stranger's bytes never completes; and
/// honest peers, with the exchange split at points read from the input, always do.
pub fn handshake(data: &[u8]) {
    let choice = data.first().copied().unwrap_or(0);
    let input = data.get(1..).unwrap_or_default();
    let aes = ServerMechanisms::aes(AuthVersion::V2, CipherMode::Gcm);
    let mechanisms = match choice % 3 {
        0 => aes,
        1 => ServerMechanisms::sasl(QopOffer::AuthConfOrAuth),
        _ => aes.with_sasl(QopOffer::AuthConfOrAuth),
    };
    let mut rng = XorShift::new(fnv1a(data));

    // A stranger against the server.
    let whole = server_handshake(mechanisms, input, &[0, input.len()]);
    let split = server_handshake(mechanisms, input, &cut_points(&mut rng, input.len()));
    assert_eq!(whole, split, "split invariance");
    // One refused AES challenge plus the SASL rounds, at most.
    assert!(whole.0.len() <= 4, "{} answers", whole.0.len());
    for bytes in &whole.0 {
        let mut buf = BytesMut::from(&bytes[..]);
        match FrameDecoder::new(1 << 20).decode(&mut buf) {
            Ok(Some(Decoded::Frame(Frame::RpcResponse { .. } | Frame::RpcFailure { .. }))) => {}
            other => panic!("the server sent {other:?} during the handshake"),
        }
        assert!(buf.is_empty(), "one frame per transmit");
    }

    // A stranger against a client.
    let mechanism = match choice % 2 {
        0 => ClientMechanism::Aes {
            version: AuthVersion::V2,
            cipher: CipherMode::Gcm,
        },
        _ => ClientMechanism::Sasl {
            encrypt: choice & 4 != 0,
        },
    };
    let mut crng = FuzzRng(XorShift::new(11));
    let mut client = ClientHandshake::new(
        "app",
        Secret::new("secret"),
        mechanism,
        choice & 8 != 0,
        &mut crng,
    )
    .expect("a short app id");
    for w in cut_points(&mut rng, input.len()).windows(2) {
        client.handle_bytes(&input[w[0]..w[1]], &mut crng);
    }
    client.handle_closed();
    assert!(
        !matches!(client.poll_outcome(), Some(Ok(_))),
        "a stranger's bytes authenticated the server"
    );

    // Honest peers, every transmit cut at points from the input.
    let mut client =
        ClientHandshake::new("app", Secret::new("secret"), mechanism, false, &mut crng).unwrap();
    let mut server = ServerHandshake::new(aes.with_sasl(QopOffer::AuthConfOrAuth));
    let secrets = |app: &str| (app == "app").then(|| Secret::new("secret"));
    for _ in 0..4 {
        while let Some(bytes) = client.poll_transmit() {
            for w in cut_points(&mut rng, bytes.len()).windows(2) {
                server.handle_bytes(&bytes[w[0]..w[1]], &secrets, &mut crng);
            }
        }
        while let Some(bytes) = server.poll_transmit() {
            for w in cut_points(&mut rng, bytes.len()).windows(2) {
                client.handle_bytes(&bytes[w[0]..w[1]], &mut crng);
            }
        }
    }
    let c = client.poll_outcome().expect("the client finished");
    let s = server.poll_outcome().expect("the server finished");
    assert_eq!(c.expect("client").app_id, "app");
    assert_eq!(s.expect("server").app_id, "app");
}
