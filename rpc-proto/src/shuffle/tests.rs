//! Golden vectors made by Spark 4.3.0's own classes (`toByteBuffer()`, research note
//! shuffle-service.md §4), Spark's path examples (§6.2), and round trips of random messages.

use proptest::prelude::*;

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).expect("hex")
}

/// Decoding Spark's bytes gives `message`, and encoding it gives Spark's bytes back.
fn golden(spark_hex: &str, message: BlockTransferMessage) {
    let bytes = unhex(spark_hex);
    assert_eq!(BlockTransferMessage::decode(&bytes).unwrap(), message);
    assert_eq!(message.encode(), bytes, "{message:?}");
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn spark_golden_vectors() {
    golden(
        "00 00000005 6170702d31 00000006 657865632d32 00000002 00000002 6231 00000002 6232",
        OpenBlocks {
            app_id: "app-1".into(),
            exec_id: "exec-2".into(),
            block_ids: s(&["b1", "b2"]),
        }
        .into(),
    );
    golden(
        "09000000056170702d3100000006657865632d32000000000000000200000000000000000000000000000001
         000000020000000200000000000000010000000300000000000000010000000200",
        FetchShuffleBlocks {
            app_id: "app-1".into(),
            exec_id: "exec-2".into(),
            shuffle_id: 0,
            map_ids: vec![0, 1],
            reduce_ids: vec![vec![0, 1], vec![0, 1, 2]],
            batch_fetch_enabled: false,
        }
        .into(),
    );
    golden(
        "09000000056170702d3100000006657865632d32000000000000000100000000000000050000000100000002
         000000000000000301",
        FetchShuffleBlocks {
            app_id: "app-1".into(),
            exec_id: "exec-2".into(),
            shuffle_id: 0,
            map_ids: vec![5],
            reduce_ids: vec![vec![0, 3]],
            batch_fetch_enabled: true,
        }
        .into(),
    );
    golden(
        "02000000056170702d3100000006657865632d3200000002000000072f6c6f63616c31000000072f6c6f6361
         6c3200000020000000104d7953687566666c654d616e61676572",
        RegisterExecutor {
            app_id: "app-1".into(),
            exec_id: "exec-2".into(),
            executor_info: ExecutorShuffleInfo {
                local_dirs: s(&["/local1", "/local2"]),
                sub_dirs_per_local_dir: 32,
                shuffle_manager: "MyShuffleManager".into(),
            },
        }
        .into(),
    );
    golden(
        "03 0000000000003039 00000010",
        StreamHandle {
            stream_id: 12345,
            num_chunks: 16,
        }
        .into(),
    );
    golden(
        "0f000000056170702d3100000006657865632d320000000000000000000000010000000000000001000000030000
         00000000000100000002",
        FetchShuffleBlockChunks {
            app_id: "app-1".into(),
            exec_id: "exec-2".into(),
            shuffle_id: 0,
            shuffle_merge_id: 0,
            reduce_ids: vec![0],
            chunk_ids: vec![vec![0, 1, 2]],
        }
        .into(),
    );
    golden(
        "0e 00000000 00000000 00000001 3a300000 01000000 0000 0300 10000000 0100 0200 0300 e803
         00000001 00000007 00000001 0000000000001000",
        MergeStatuses {
            shuffle_id: 0,
            shuffle_merge_id: 0,
            bitmaps: vec![[1u32, 2, 3, 1000].into_iter().collect()],
            reduce_ids: vec![7],
            sizes: vec![4096],
        }
        .into(),
    );
    golden(
        "12 00 00000000",
        BlockPushReturnCode {
            return_code: 0,
            failure_block_id: String::new(),
        }
        .into(),
    );
    golden(
        "11 01",
        CorruptionCause {
            cause: Cause::NetworkIssue,
        }
        .into(),
    );
}

#[test]
fn retired_and_unknown_types_are_refused() {
    assert_eq!(
        BlockTransferMessage::decode(&[4, 0, 0, 0, 0]),
        Err(ShuffleDecodeError::RetiredType(4))
    );
    assert_eq!(
        BlockTransferMessage::decode(&[5]),
        Err(ShuffleDecodeError::RetiredType(5))
    );
    for t in [20u8, 127, 128, 255] {
        assert_eq!(
            BlockTransferMessage::decode(&[t]),
            Err(ShuffleDecodeError::UnknownType(t))
        );
    }
    assert_eq!(
        BlockTransferMessage::decode(&[]),
        Err(ShuffleDecodeError::Empty)
    );
}

#[test]
fn counts_are_bounded_by_the_bytes_left() {
    // OpenBlocks claiming 2^31-1 block ids in a 20-byte message: refused before allocating.
    let mut bytes = unhex("00 00000001 61 00000001 62");
    bytes.extend_from_slice(&i32::MAX.to_be_bytes());
    bytes.extend_from_slice(&[0; 8]);
    assert!(matches!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::CountTooLarge {
            what: "blockIds",
            count: i32::MAX,
            remaining: 8
        })
    ));
    // A string longer than the message.
    let bytes = unhex("00 7fffffff 61");
    assert!(matches!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::Truncated { what: "appId", .. })
    ));
    // Negative lengths.
    let bytes = unhex("00 ffffffff");
    assert_eq!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::Negative {
            what: "appId",
            value: -1
        })
    );
    // A StreamHandle with a negative number of chunks.
    let bytes = unhex("03 0000000000000001 ffffffff");
    assert!(matches!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::Negative {
            what: "numChunks",
            ..
        })
    ));
}

#[test]
fn strings_must_be_utf8_and_booleans_0_or_1() {
    let bytes = unhex("00 00000001 ff");
    assert_eq!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::InvalidUtf8 { what: "appId" })
    );
    let mut fetch = FetchShuffleBlocks {
        app_id: "a".into(),
        exec_id: "e".into(),
        shuffle_id: 0,
        map_ids: vec![],
        reduce_ids: vec![],
        batch_fetch_enabled: true,
    };
    let mut bytes = BlockTransferMessage::from(fetch.clone()).encode().to_vec();
    *bytes.last_mut().unwrap() = 2;
    assert_eq!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::Boolean(2))
    );
    // Spark reads the trailing boolean unconditionally: a message without it is truncated.
    bytes.pop();
    assert!(matches!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::Truncated {
            what: "batchFetchEnabled",
            ..
        })
    ));
    fetch.batch_fetch_enabled = false;
    assert_eq!(BlockTransferMessage::from(fetch).encode().last(), Some(&0));
}

#[test]
fn local_dirs_counts_must_add_up() {
    let good = BlockTransferMessage::from(LocalDirsForExecutors {
        dirs: vec![
            ("1".into(), s(&["/a", "/b"])),
            ("2".into(), vec![]),
            ("3".into(), s(&["/c"])),
        ],
    });
    let bytes = good.encode();
    assert_eq!(BlockTransferMessage::decode(&bytes).unwrap(), good);
    // Counts [2, 0, 1] with two dirs: the third executor's dir is missing.
    let bad = unhex(
        "0b 00000003 00000001 31 00000001 32 00000001 33
            00000003 00000002 00000000 00000001
            00000002 00000002 2f61 00000002 2f62",
    );
    assert_eq!(
        BlockTransferMessage::decode(&bad),
        Err(ShuffleDecodeError::Inconsistent("numLocalDirsByExec"))
    );
    // Counts [1] with two dirs: one dir belongs to no executor.
    let extra =
        unhex("0b 00000001 00000001 31 00000001 00000001 00000002 00000002 2f61 00000002 2f62");
    assert_eq!(
        BlockTransferMessage::decode(&extra),
        Err(ShuffleDecodeError::Inconsistent("numLocalDirsByExec"))
    );
}

#[test]
fn malformed_bitmaps_are_errors() {
    // A MergeStatuses whose one bitmap has an unknown cookie.
    let bytes = unhex("0e 00000000 00000000 00000001 01020304 00000000");
    assert!(matches!(
        BlockTransferMessage::decode(&bytes),
        Err(ShuffleDecodeError::Bitmap(_))
    ));
}

#[test]
fn spark_file_paths() {
    // Spark 4.3.0's ExecutorDiskUtils, localDirs = [/d0/blockmgr-a, /d1/blockmgr-b], 64 sub-dirs.
    let dirs = ["/d0/blockmgr-a", "/d1/blockmgr-b"];
    for (name, hash, path) in [
        (
            "shuffle_0_0_0.data",
            581811660,
            "/d0/blockmgr-a/26/shuffle_0_0_0.data",
        ),
        (
            "shuffle_0_0_0.index",
            861282032,
            "/d0/blockmgr-a/38/shuffle_0_0_0.index",
        ),
        (
            "shuffle_3_17_0.index",
            793681805,
            "/d1/blockmgr-b/06/shuffle_3_17_0.index",
        ),
        (
            "shuffle_3_17_0.data",
            25441679,
            "/d1/blockmgr-b/07/shuffle_3_17_0.data",
        ),
        ("rdd_2_5", 1054352923, "/d1/blockmgr-b/0d/rdd_2_5"),
    ] {
        assert_eq!(java_string_hash(name), hash, "{name}");
        assert_eq!(
            executor_file_path(&dirs, 64, name).unwrap().to_str(),
            Some(path)
        );
    }
    assert_eq!(executor_file_path::<&str>(&[], 64, "x"), None);
    // Java joins strings and then normalises separators: an absolute name stays inside.
    assert_eq!(
        executor_file_path(&["/d0/"], 1, "/etc/passwd")
            .unwrap()
            .to_str(),
        Some("/d0/00/etc/passwd")
    );
    assert_eq!(
        executor_file_path(&["/d0"], 1, "x//").unwrap().to_str(),
        Some("/d0/00/x")
    );
    assert_eq!(executor_file_path(&dirs, 0, "x"), None);
}

#[test]
fn java_hash_of_non_ascii_uses_utf16_units_and_min_maps_to_zero() {
    // "é" is one UTF-16 unit (0xE9); "😀" is two (a surrogate pair: 0xD83D 0xDE00).
    assert_eq!(java_string_hash("é"), 0xE9);
    assert_eq!(java_string_hash("😀"), 0xD83D * 31 + 0xDE00);
    // Known Java strings whose hashCode is Integer.MIN_VALUE: "polygenelubricants".
    assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    assert_eq!(non_negative_hash("polygenelubricants"), 0);
    assert_eq!(non_negative_hash("hello"), java_string_hash("hello").abs());
}

#[test]
fn fetch_plans_follow_sparks_fetcher() {
    let ids = s(&["shuffle_0_5_0_3", "shuffle_0_6_1_2"]);
    let plan = FetchPlan::new("a", "e", &ids, false).unwrap();
    assert_eq!(
        plan.message,
        FetchShuffleBlocks {
            app_id: "a".into(),
            exec_id: "e".into(),
            shuffle_id: 0,
            map_ids: vec![5, 6],
            reduce_ids: vec![vec![0, 3], vec![1, 2]],
            batch_fetch_enabled: true,
        }
        .into()
    );
    let ids = s(&[
        "shuffleChunk_1_2_7_0",
        "shuffleChunk_1_2_8_0",
        "shuffleChunk_1_2_7_1",
    ]);
    let plan = FetchPlan::new("a", "e", &ids, false).unwrap();
    assert_eq!(
        plan.message,
        FetchShuffleBlockChunks {
            app_id: "a".into(),
            exec_id: "e".into(),
            shuffle_id: 1,
            shuffle_merge_id: 2,
            reduce_ids: vec![7, 8],
            chunk_ids: vec![vec![0, 1], vec![0]],
        }
        .into()
    );
    assert_eq!(
        plan.chunk_block_ids,
        s(&[
            "shuffleChunk_1_2_7_0",
            "shuffleChunk_1_2_7_1",
            "shuffleChunk_1_2_8_0"
        ])
    );
    // Other blocks, a mix, or the old protocol: OpenBlocks in the order given.
    for (ids, old) in [
        (s(&["rdd_1_2", "shuffle_0_1_2"]), false),
        (s(&["shuffle_0_1_2", "shuffle_0_0_2"]), true),
    ] {
        let plan = FetchPlan::new("a", "e", &ids, old).unwrap();
        assert!(matches!(plan.message, BlockTransferMessage::OpenBlocks(_)));
        assert_eq!(plan.chunk_block_ids, ids);
    }
    assert_eq!(
        FetchPlan::new("a", "e", &s(&["shuffle_0_1_2", "shuffle_1_1_2"]), false),
        Err(FetchPlanError::MixedShuffles {
            expected: 0,
            block_id: "shuffle_1_1_2".into()
        })
    );
    assert_eq!(
        FetchPlan::new("a", "e", &s(&["shuffle_0_1_2", "shuffle_0_1_2_3"]), false),
        Err(FetchPlanError::MixedKinds("shuffle_0_1_2_3".into()))
    );
    assert_eq!(
        FetchPlan::new("a", "e", &[], false),
        Err(FetchPlanError::Empty)
    );
    assert_eq!(
        FetchPlan::new("a", "e", &s(&["shuffle_0_1_0_2", "shuffle_0_1_2_4"]), false),
        Err(FetchPlanError::RepeatedBatchMap("shuffle_0_1_2_4".into()))
    );
}

#[test]
fn block_ids_parse_like_spark() {
    assert_eq!(
        BlockId::parse("shuffle_1_4294967296_3"),
        Some(BlockId::Shuffle {
            shuffle_id: 1,
            map_id: 1 << 32,
            reduce_id: 3
        })
    );
    for bad in [
        "shuffle_1_2",
        "shuffle_-1_2_3",
        "shuffle_1_2_3.data",
        "shuffle_99999999999_1_1",
        "shuffle__1_1",
        "rdd_1",
        "broadcast_1",
        "",
    ] {
        assert_eq!(BlockId::parse(bad), None, "{bad}");
    }
    for good in ["shuffle_0_1_2_3", "shuffleChunk_0_1_2_3", "rdd_4_5"] {
        assert_eq!(BlockId::parse(good).unwrap().to_string(), good);
    }
}

fn string() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(string(), 0..5)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..20)
}

fn bitmap() -> impl Strategy<Value = Bitmap> {
    prop_oneof![
        prop::collection::vec(any::<u32>(), 0..20).prop_map(|v| v.into_iter().collect()),
        // Long runs: bitmap containers.
        (0u32..1_000_000, 0u32..70_000).prop_map(|(a, n)| (a..a + n).collect()),
    ]
}

fn message() -> impl Strategy<Value = BlockTransferMessage> {
    prop_oneof![
        (string(), string(), strings()).prop_map(|(a, e, b)| OpenBlocks {
            app_id: a,
            exec_id: e,
            block_ids: b
        }
        .into()),
        (string(), string(), string(), bytes(), bytes()).prop_map(|(a, e, b, m, d)| {
            UploadBlock {
                app_id: a,
                exec_id: e,
                block_id: b,
                metadata: m,
                block_data: d,
            }
            .into()
        }),
        (string(), string(), strings(), any::<i32>(), string()).prop_map(|(a, e, d, n, m)| {
            RegisterExecutor {
                app_id: a,
                exec_id: e,
                executor_info: ExecutorShuffleInfo {
                    local_dirs: d,
                    sub_dirs_per_local_dir: n,
                    shuffle_manager: m,
                },
            }
            .into()
        }),
        (any::<u64>(), 0..=i32::MAX as u32).prop_map(|(s, n)| StreamHandle {
            stream_id: s,
            num_chunks: n
        }
        .into()),
        (string(), bytes()).prop_map(|(b, m)| UploadBlockStream {
            block_id: b,
            metadata: m
        }
        .into()),
        (string(), string(), strings()).prop_map(|(a, e, b)| RemoveBlocks {
            app_id: a,
            exec_id: e,
            block_ids: b
        }
        .into()),
        any::<i32>().prop_map(|n| BlocksRemoved {
            num_removed_blocks: n
        }
        .into()),
        (
            string(),
            string(),
            any::<i32>(),
            prop::collection::vec(
                (any::<i64>(), prop::collection::vec(any::<i32>(), 0..4)),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(a, e, s, maps, b)| FetchShuffleBlocks {
                app_id: a,
                exec_id: e,
                shuffle_id: s,
                map_ids: maps.iter().map(|m| m.0).collect(),
                reduce_ids: maps.into_iter().map(|m| m.1).collect(),
                batch_fetch_enabled: b,
            }
            .into()),
        (string(), strings()).prop_map(|(a, e)| GetLocalDirsForExecutors {
            app_id: a,
            exec_ids: e
        }
        .into()),
        prop::collection::vec((string(), strings()), 0..4)
            .prop_map(|dirs| LocalDirsForExecutors { dirs }.into()),
        (string(), any::<[i32; 6]>()).prop_map(|(a, n)| PushBlockStream {
            app_id: a,
            app_attempt_id: n[0],
            shuffle_id: n[1],
            shuffle_merge_id: n[2],
            map_index: n[3],
            reduce_id: n[4],
            index: n[5],
        }
        .into()),
        (string(), any::<[i32; 3]>()).prop_map(|(a, n)| FinalizeShuffleMerge {
            app_id: a,
            app_attempt_id: n[0],
            shuffle_id: n[1],
            shuffle_merge_id: n[2],
        }
        .into()),
        (
            any::<[i32; 2]>(),
            prop::collection::vec(bitmap(), 0..3),
            prop::collection::vec(any::<i32>(), 0..4),
            prop::collection::vec(any::<i64>(), 0..4)
        )
            .prop_map(|(n, b, r, z)| MergeStatuses {
                shuffle_id: n[0],
                shuffle_merge_id: n[1],
                bitmaps: b,
                reduce_ids: r,
                sizes: z,
            }
            .into()),
        (
            string(),
            string(),
            any::<[i32; 2]>(),
            prop::collection::vec(any::<i32>(), 0..4),
            prop::collection::vec(prop::collection::vec(any::<i32>(), 0..4), 0..4)
        )
            .prop_map(|(a, e, n, r, c)| FetchShuffleBlockChunks {
                app_id: a,
                exec_id: e,
                shuffle_id: n[0],
                shuffle_merge_id: n[1],
                reduce_ids: r,
                chunk_ids: c,
            }
            .into()),
        (string(), string(), any::<(i32, i64, i32, i64)>(), string()).prop_map(
            |(a, e, (s, m, r, c), alg)| DiagnoseCorruption {
                app_id: a,
                exec_id: e,
                shuffle_id: s,
                map_id: m,
                reduce_id: r,
                checksum: c,
                algorithm: alg,
            }
            .into()
        ),
        (0u8..5).prop_map(|c| CorruptionCause {
            cause: Cause::from_ordinal(c).unwrap()
        }
        .into()),
        (any::<u8>(), string()).prop_map(|(c, b)| BlockPushReturnCode {
            return_code: c,
            failure_block_id: b
        }
        .into()),
        (string(), any::<[i32; 3]>()).prop_map(|(a, n)| RemoveShuffleMerge {
            app_id: a,
            app_attempt_id: n[0],
            shuffle_id: n[1],
            shuffle_merge_id: n[2],
        }
        .into()),
    ]
}

proptest! {
    #[test]
    fn decode_inverts_encode(message in message()) {
        let bytes = message.encode();
        prop_assert_eq!(bytes[0], message.type_id());
        let decoded = BlockTransferMessage::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.encode(), bytes);
        prop_assert_eq!(decoded, message);
    }

    /// Every prefix of a valid message is refused (nothing is optional in 4.3.0), and no
    /// input panics.
    #[test]
    fn truncations_are_errors(message in message()) {
        let bytes = message.encode();
        for end in 0..bytes.len() {
            prop_assert!(BlockTransferMessage::decode(&bytes[..end]).is_err(), "{end}");
        }
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = BlockTransferMessage::decode(&bytes);
    }

    #[test]
    fn file_paths_stay_in_the_given_dirs(name in "[a-z][a-z_0-9.]{0,23}", dirs in 1usize..5, subs in 1i32..100) {
        let local: Vec<String> = (0..dirs).map(|i| format!("/d{i}")).collect();
        let path = executor_file_path(&local, subs, &name).unwrap();
        let parent = path.parent().unwrap();
        let sub = parent.file_name().unwrap().to_str().unwrap();
        prop_assert!(i32::from_str_radix(sub, 16).unwrap() < subs);
        prop_assert!(local.iter().any(|d| parent.parent().unwrap() == std::path::Path::new(d)));
    }
}
