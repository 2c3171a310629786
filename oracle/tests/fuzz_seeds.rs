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

/// Valid encodings of every message the `wire` oracle decodes, made by the real encoders: the
/// seeds of `fuzz/seeds/wire/` (see `wire_seeds_are_the_encoders_output`), by file name.
fn wire_samples() -> Vec<(&'static str, Vec<u8>)> {
    use rpc_proto::shuffle::{BlockTransferMessage, FetchShuffleBlocks, OpenBlocks, StreamHandle};
    use rpc_proto::wire::{lookup_request, TypeIdentity};
    use rpc_proto::{
        encode_payload, Envelope, EnvelopeKind, EnvelopePrefix, LookupReply, RemoteFailure,
        RpcAddress, TooManyStreams,
    };

    let ask = Envelope {
        sender: Some(RpcAddress::new("10.0.0.1", 7077)),
        receiver: "Master".into(),
        message_type: "Hello -> String".into(),
        deadline_ms: Some(120_000),
        kind: EnvelopeKind::Ask,
    };
    let send = Envelope {
        sender: None,
        deadline_ms: None,
        kind: EnvelopeKind::Send,
        ..ask.clone()
    };
    let cancel = Envelope {
        kind: EnvelopeKind::Cancel {
            request: RequestId(1 << 40),
        },
        ..send.clone()
    };
    let payload = encode_payload(&("worker-1", 8u32)).expect("a payload");
    let prefix = EnvelopePrefix::new(None, "Master", "Hello -> String");
    let text = |s: &str| s.as_bytes().to_vec();
    let identity = |s: &str| {
        let parsed = TypeIdentity::parse(s).expect("a valid identity");
        text(&parsed.to_string())
    };
    vec![
        ("envelope_ask.bin", ask.encode(&payload).to_vec()),
        ("envelope_send.bin", send.encode(b"").to_vec()),
        ("envelope_cancel.bin", cancel.encode(b"").to_vec()),
        ("envelope_lookup.bin", lookup_request(&prefix).to_vec()),
        ("payload_tuple.bin", payload.clone()),
        ("lookup_found.bin", LookupReply::Found.encode().to_vec()),
        (
            "lookup_not_found.bin",
            LookupReply::NotFound.encode().to_vec(),
        ),
        (
            "lookup_type_mismatch.bin",
            LookupReply::TypeMismatch("A -> B".into()).encode().to_vec(),
        ),
        (
            "block_open_blocks.bin",
            BlockTransferMessage::OpenBlocks(OpenBlocks {
                app_id: "app".into(),
                exec_id: "e1".into(),
                block_ids: vec!["b0".into(), "rdd_1".into()],
            })
            .encode()
            .to_vec(),
        ),
        (
            "block_fetch_shuffle_blocks.bin",
            BlockTransferMessage::FetchShuffleBlocks(FetchShuffleBlocks {
                app_id: "app".into(),
                exec_id: "e1".into(),
                shuffle_id: 0,
                map_ids: vec![0, 1],
                reduce_ids: vec![vec![0, 1], vec![0, 1, 2]],
                batch_fetch_enabled: false,
            })
            .encode()
            .to_vec(),
        ),
        (
            "block_stream_handle.bin",
            BlockTransferMessage::StreamHandle(StreamHandle {
                stream_id: 7,
                num_chunks: 2,
            })
            .encode()
            .to_vec(),
        ),
        (
            "failure_not_found.txt",
            text(&RemoteFailure::EndpointNotFound("Master".into()).to_string()),
        ),
        (
            "failure_type_mismatch.txt",
            text(
                &RemoteFailure::TypeMismatch {
                    expected: "A -> B".into(),
                    found: Some("C -> D".into()),
                }
                .to_string(),
            ),
        ),
        (
            "failure_busy.txt",
            text(
                &RemoteFailure::EndpointBusy("its inbox is full (10 messages)".into()).to_string(),
            ),
        ),
        (
            "failure_too_many_streams.txt",
            text(&TooManyStreams { open: 2, limit: 2 }.to_string()),
        ),
        (
            "identity_generic.txt",
            identity("Result<Vec<String>, String>"),
        ),
        ("identity_tuple.txt", identity("(u32,)")),
        ("identity_array.txt", identity("[u8; 16]")),
        (
            "identity_endpoint.txt",
            text(&rpc_proto::wire::endpoint_identity(
                |o| o.push_str("Hello"),
                |o| {
                    rpc_proto::wire::write_tuple(
                        o,
                        &[|o| o.push_str("u64"), |o| o.push_str("String")],
                    )
                },
            )),
        ),
    ]
}

#[test]
fn wire_seeds_hold_the_invariants() {
    for (path, data) in seeds("wire") {
        eprintln!("replaying {}", path.display());
        rpc_oracle::wire(&data);
    }
}

/// Every encoder sample is a committed seed, byte for byte. To regenerate the seeds after a
/// deliberate wire change: `RPC_WRITE_WIRE_SEEDS=1 cargo test -p rpc-oracle --test fuzz_seeds`.
#[test]
fn wire_seeds_are_the_encoders_output() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wire");
    let write = std::env::var_os("RPC_WRITE_WIRE_SEEDS").is_some();
    for (name, data) in wire_samples() {
        let path = dir.join(name);
        if write {
            fs::create_dir_all(&dir).expect("the seed directory");
            fs::write(&path, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let seed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            seed,
            data,
            "{} is not what the encoder writes",
            path.display()
        );
    }
}

#[test]
fn generated_wire_inputs_hold_the_invariants() {
    let samples = wire_samples();
    let mut rng = XorShift(0x3c6e_f372_fe94_f82b);
    for i in 0..400 {
        let data = if i % 2 == 0 {
            // A valid encoding, damaged: a byte changed, cut short, or with bytes appended.
            let mut data = samples[rng.below(samples.len() as u64) as usize].1.clone();
            match rng.below(4) {
                0 if !data.is_empty() => {
                    let at = rng.below(data.len() as u64) as usize;
                    data[at] = rng.next() as u8;
                }
                1 => data.truncate(rng.below(data.len() as u64 + 1) as usize),
                2 => {
                    let n = rng.below(8) as usize;
                    data.extend(rng.bytes(n));
                }
                _ => {}
            }
            data
        } else {
            let n = rng.below(64) as usize;
            rng.bytes(n)
        };
        rpc_oracle::wire(&data);
    }
}

#[test]
fn shuffle_seeds_hold_the_invariants() {
    for (path, data) in seeds("shuffle") {
        eprintln!("{}", path.display());
        rpc_oracle::shuffle(&data);
    }
}

/// The shuffle seeds are Spark 4.3.0's encodings (golden vectors) and block id lists: each
/// binary seed decodes, so the fuzzer starts from every message shape Spark sends.
#[test]
fn shuffle_binary_seeds_decode() {
    for (path, data) in seeds("shuffle") {
        if path.extension().is_some_and(|e| e == "bin") {
            rpc_proto::shuffle::BlockTransferMessage::decode(&data)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

#[test]
fn generated_shuffle_inputs_hold_the_invariants() {
    let mut rng = XorShift(0x5eed_5a0f_f1e5_0001);
    let seeds = seeds("shuffle");
    for _ in 0..500 {
        // Mutations of the seeds reach deeper than random bytes.
        let (_, seed) = &seeds[rng.below(seeds.len() as u64) as usize];
        let mut data = seed.clone();
        for _ in 0..=rng.below(4) {
            match rng.below(3) {
                0 if !data.is_empty() => {
                    let at = rng.below(data.len() as u64) as usize;
                    data[at] = rng.next() as u8;
                }
                1 => data.truncate(rng.below(data.len() as u64 + 1) as usize),
                _ => {
                    let n = rng.below(8) as usize;
                    data.extend(rng.bytes(n));
                }
            }
        }
        rpc_oracle::shuffle(&data);
    }
}
