//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`), and a few hundred generated
//! inputs, through the functions the fuzz targets call, so the corpus and the invariants are
//! checked by every `cargo test`, where libFuzzer is not built.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rpc_proto::{Frame, RequestId, StreamChunkId};

/// The origin of the connection scripts' virtual time. `rpc-proto` never reads the clock;
/// its callers do, once.
#[allow(clippy::disallowed_methods)]
fn base() -> Instant {
    Instant::now()
}

/// The seed files of one target, sorted by name; panics if there are none.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

/// Marsaglia's xorshift64, so the generated inputs are the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn string(&mut self) -> String {
        let n = self.below(12);
        (0..n)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

/// A random valid frame, and the out-of-frame body bytes that follow it.
fn frame(rng: &mut XorShift) -> (Frame, Vec<u8>) {
    let len = rng.below(40) as usize;
    let body = Bytes::from(rng.bytes(len));
    let request = RequestId(rng.below(1 << 62));
    let chunk = StreamChunkId::new(rng.below(8), rng.below(8) as u32);
    let byte_count = rng.below(40);
    let frame = match rng.below(13) {
        0 => Frame::ChunkFetchRequest { chunk },
        1 => Frame::ChunkFetchSuccess { chunk, body },
        2 => Frame::ChunkFetchFailure {
            chunk,
            error: rng.string(),
        },
        3 => Frame::RpcRequest { request, body },
        4 => Frame::RpcResponse { request, body },
        5 => Frame::RpcFailure {
            request,
            error: rng.string(),
        },
        6 => Frame::StreamRequest {
            stream_id: rng.string(),
        },
        7 => Frame::StreamResponse {
            stream_id: rng.string(),
            byte_count,
        },
        8 => Frame::StreamFailure {
            stream_id: rng.string(),
            error: rng.string(),
        },
        9 => Frame::OneWayMessage { body },
        10 => Frame::UploadStream {
            request,
            meta: body,
            byte_count,
        },
        11 => Frame::MergedBlockMetaRequest {
            request,
            app_id: rng.string(),
            shuffle_id: rng.next() as i32,
            shuffle_merge_id: rng.next() as i32,
            reduce_id: rng.next() as i32,
        },
        _ => Frame::MergedBlockMetaSuccess {
            request,
            chunk_count: rng.next() as i32,
            body,
        },
    };
    let trailing = rng.bytes(frame.out_of_frame_len() as usize);
    (frame, trailing)
}

/// A stream of valid frames, sometimes damaged: a byte changed, or cut short.
fn frames(rng: &mut XorShift) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for _ in 0..rng.below(8) {
        let (frame, trailing) = frame(rng);
        frame.encode(&mut wire);
        wire.extend_from_slice(&trailing);
    }
    let mut wire = wire.to_vec();
    if !wire.is_empty() {
        match rng.below(4) {
            0 => {
                let at = rng.below(wire.len() as u64) as usize;
                wire[at] = rng.next() as u8;
            }
            1 => wire.truncate(rng.below(wire.len() as u64) as usize),
            _ => {}
        }
    }
    wire
}

#[test]
fn frame_decoder_seeds_hold_the_invariants() {
    for (path, data) in seeds("frame_decoder") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::decode_frames(&data);
    }
}

#[test]
fn connection_seeds_hold_the_invariants() {
    let base = base();
    for (path, data) in seeds("connection") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::connection(base, &data);
    }
}

#[test]
fn generated_byte_streams_hold_the_decoder_invariants() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..300 {
        let data = if i % 2 == 0 {
            frames(&mut rng)
        } else {
            let n = rng.below(512) as usize;
            rng.bytes(n)
        };
        rpc_oracle::decode_frames(&data);
    }
}

#[test]
fn generated_scripts_hold_the_connection_invariants() {
    let base = base();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..300 {
        let n = rng.below(1024) as usize;
        let script = rng.bytes(n);
        rpc_oracle::connection(base, &script);
    }
}

#[test]
fn auth_seeds_hold_the_invariants() {
    for (path, data) in seeds("auth") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::auth(&data);
    }
}

#[test]
fn generated_auth_inputs_hold_the_invariants() {
    let mut rng = XorShift(0x6a09_e667_f3bc_c908);
    for _ in 0..100 {
        let n = rng.below(300) as usize;
        rpc_oracle::auth(&rng.bytes(n));
    }
}

#[test]
fn gcm_seeds_hold_the_invariants() {
    for (path, data) in seeds("gcm") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::gcm(&data);
    }
}

#[test]
fn generated_inputs_hold_the_gcm_invariants() {
    let mut rng = XorShift(0x5851_f42d_4c95_7f2d);
    for _ in 0..200 {
        let len = rng.below(120) as usize;
        let mut data = rng.bytes(len);
        // Mostly even first bytes: odd ones stretch the plaintext past two segments.
        if let Some(b) = data.first_mut() {
            if rng.below(8) != 0 {
                *b &= 0xfe;
            }
        }
        rpc_oracle::gcm(&data);
    }
}

#[test]
fn sasl_seeds_hold_the_invariants() {
    for (path, data) in seeds("sasl") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::sasl(&data);
    }
}

#[test]
fn generated_sasl_inputs_hold_the_invariants() {
    let mut rng = XorShift(0x005a_51d1_6e57);
    for _ in 0..100 {
        let len = rng.below(300) as usize;
        rpc_oracle::sasl(&rng.bytes(len));
    }
}

#[test]
fn handshake_seeds_hold_the_invariants() {
    for (path, data) in seeds("handshake") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::handshake(&data);
    }
}

#[test]
fn generated_inputs_hold_the_handshake_invariants() {
    let mut rng = XorShift(0x1f83_d9ab_fb41_bd6b);
    for _ in 0..100 {
        let n = rng.below(200) as usize;
        rpc_oracle::handshake(&rng.bytes(n));
    }
}
