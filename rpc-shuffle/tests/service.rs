//! The shuffle service on real sockets (rpc-tokio), driven by a plain transport client
//! sending Spark's `BlockTransferMessage`s, over sort-shuffle files written as Spark writes
//! them.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_lite::StreamExt;
use rpc_shuffle::protocol::{
    BlockPushReturnCode, BlockTransferMessage, BlocksRemoved, DiagnoseCorruption,
    FetchShuffleBlockChunks, FetchShuffleBlocks, FinalizeShuffleMerge, GetLocalDirsForExecutors,
    LocalDirsForExecutors, OpenBlocks, PushBlockStream, RemoveBlocks, RemoveShuffleMerge,
    StreamHandle, UploadBlock,
};
use rpc_shuffle::protocol::{Cause, CorruptionCause};
use rpc_shuffle::server::ShuffleService;
use rpc_tokio::{AuthMechanism, Security, TransportClient, TransportConfig, TransportServer};

const APP: &str = "app-20261202110000-0001";
const MAPS: [i64; 3] = [0, 5, 3_000_000_000];
const REDUCES: i32 = 6;

struct Running {
    server: TransportServer,
    service: Arc<ShuffleService>,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.close();
    }
}

fn serve(service: ShuffleService, security: Security) -> Running {
    let service = Arc::new(service);
    let server = TransportServer::bind(
        rpc_tokio::runtime(),
        "127.0.0.1:0".parse().unwrap(),
        service.clone(),
        TransportConfig::builder()
            .with_security(security)
            .build()
            .unwrap(),
    )
    .unwrap();
    let addr = server.local_addr();
    Running {
        server,
        service,
        addr,
    }
}

/// A disk with three map outputs of shuffle 0 (one with a map id past `i32::MAX`), and a
/// service rooted at it.
fn fixture(dirs: usize) -> (Disk, Running) {
    let disk = Disk::new(dirs);
    for map in MAPS {
        let blocks: Vec<_> = (0..REDUCES).map(|r| block(map, r)).collect();
        disk.write_map_output(0, map, &blocks);
    }
    let service = ShuffleService::builder()
        .with_local_dir(disk.root.path())
        .build()
        .unwrap();
    (disk, serve(service, Security::none()))
}

fn fetch(maps: &[i64], reduces: Vec<Vec<i32>>, batch: bool) -> BlockTransferMessage {
    BlockTransferMessage::FetchShuffleBlocks(FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: maps.to_vec(),
        reduce_ids: reduces,
        batch_fetch_enabled: batch,
    })
}

fn open_blocks(app: &str, ids: &[&str]) -> BlockTransferMessage {
    BlockTransferMessage::OpenBlocks(OpenBlocks {
        app_id: app.into(),
        exec_id: "1".into(),
        block_ids: ids.iter().map(|s| s.to_string()).collect(),
    })
}

fn batch_bytes(map: i64, start: i32, end: i32) -> Vec<u8> {
    (start..end).flat_map(|r| block(map, r)).collect()
}

/// A fetch every test ends with: the connection still works.
async fn still_serves(client: &TransportClient) {
    let chunks = fetch_all(client, &fetch(&[5], vec![vec![1]], false)).await;
    assert_eq!(chunks, [Bytes::from(block(5, 1))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_executors_are_served_every_byte_of_every_block() {
    let (disk, running) = fixture(2);
    let client = connect(running.addr, Security::none()).await;
    assert_eq!(
        rpc(&client, &register(APP, "1", disk.info()))
            .await
            .unwrap(),
        Bytes::new()
    );

    // One block per (map, reduce), map-major; empty blocks included.
    let all: Vec<Vec<i32>> = MAPS.iter().map(|_| (0..REDUCES).collect()).collect();
    let chunks = fetch_all(&client, &fetch(&MAPS, all, false)).await;
    let expected: Vec<Bytes> = MAPS
        .iter()
        .flat_map(|&m| (0..REDUCES).map(move |r| Bytes::from(block(m, r))))
        .collect();
    assert_eq!(chunks.len(), 18);
    assert!(expected.iter().any(Bytes::is_empty) && expected.iter().any(|b| b.len() > 1000));
    assert_eq!(chunks, expected);

    // Batch: one chunk per map, the range [start, end); an empty range is an empty chunk.
    let chunks = fetch_all(
        &client,
        &fetch(&MAPS, vec![vec![1, 4], vec![0, 6], vec![2, 2]], true),
    )
    .await;
    assert_eq!(
        chunks,
        [
            Bytes::from(batch_bytes(0, 1, 4)),
            Bytes::from(batch_bytes(5, 0, 6)),
            Bytes::new()
        ]
    );

    // The legacy protocol.
    let chunks = fetch_all(
        &client,
        &open_blocks(
            APP,
            &["shuffle_0_5_3", "shuffle_0_0_2", "shuffle_0_3000000000_5"],
        ),
    )
    .await;
    assert_eq!(
        chunks,
        [
            Bytes::from(block(5, 3)),
            Bytes::from(block(0, 2)),
            Bytes::from(block(3_000_000_000, 5))
        ]
    );

    let m = running.service.metrics();
    assert_eq!(m.registered_executors, 1);
    assert_eq!(m.streams_opened, 3);
    assert_eq!(m.blocks_served, 18 + 3 + 3);
    let bytes: usize = expected.iter().map(Bytes::len).sum::<usize>()
        + batch_bytes(0, 1, 4).len()
        + batch_bytes(5, 0, 6).len()
        + block(5, 3).len()
        + block(0, 2).len()
        + block(3_000_000_000, 5).len();
    assert_eq!(m.bytes_served, bytes as u64);
    assert_eq!(m.open_streams, 0, "fully read streams are released");
    assert!(m.index_cache_entries == 3 && m.index_cache_bytes == 3 * (8 * 7 + 176));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_rpc_failures_and_the_connection_keeps_working() {
    let (disk, running) = fixture(1);
    let client = connect(running.addr, Security::none()).await;

    // Unregistered executor: Spark's text.
    assert_eq!(
        refused(&client, &fetch(&[5], vec![vec![1]], false)).await,
        format!("Executor is not registered (appId={APP}, execId=1)")
    );
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();

    // Registration with dirs outside the service's, directly or through `..`.
    let outside = tempfile::tempdir().unwrap();
    let mut info = disk.info();
    info.local_dirs = vec![outside.path().display().to_string()];
    let text = refused(&client, &register(APP, "2", info.clone())).await;
    assert!(
        text.contains("is not within the shuffle service's local dirs"),
        "{text}"
    );
    info.local_dirs = vec![format!("{}/../../..", disk.dirs[0])];
    let text = refused(&client, &register(APP, "2", info)).await;
    assert!(
        text.contains("is not within the shuffle service's local dirs"),
        "{text}"
    );

    // Path traversal in block ids.
    for id in [
        "shuffle_0_../../etc/passwd",
        "../../etc/passwd",
        "rdd_0_0/../x",
    ] {
        let text = refused(&client, &open_blocks(APP, &[id])).await;
        assert!(text.contains("unexpected block id"), "{text}");
    }
    // Bad fetches.
    let text = refused(&client, &fetch(&[5, 0], vec![vec![1]], false)).await;
    assert_eq!(text, "malformed fetch: 2 map ids but 1 lists of reduce ids");
    let text = refused(&client, &fetch(&[5], vec![vec![1, 2, 3]], true)).await;
    assert_eq!(
        text,
        "malformed fetch: a batch fetch of map 5 needs a reduce range [start, end), got 3 ids"
    );
    let text = refused(&client, &open_blocks(APP, &["rdd_1_2"])).await;
    assert!(text.contains("rdd block rdd_1_2 is disabled"), "{text}");

    // A block past the index, or of a map without files: the chunk fails, the stream
    // handle does not.
    let handle = stream_handle(
        &rpc(&client, &fetch(&[5], vec![vec![REDUCES]], false))
            .await
            .unwrap(),
    );
    let text = chunk(&client, handle.stream_id, 0).await.unwrap_err();
    assert!(text.contains("outside an index of 6 partitions"), "{text}");
    let handle = stream_handle(
        &rpc(&client, &fetch(&[77], vec![vec![0]], false))
            .await
            .unwrap(),
    );
    let text = chunk(&client, handle.stream_id, 0).await.unwrap_err();
    assert!(text.contains("shuffle_0_77_0.index"), "{text}");

    // Push-based shuffle, uploads, corruption diagnosis: refused by name.
    let unsupported = [
        BlockTransferMessage::FinalizeShuffleMerge(FinalizeShuffleMerge {
            app_id: APP.into(),
            app_attempt_id: 0,
            shuffle_id: 0,
            shuffle_merge_id: 0,
        }),
        BlockTransferMessage::FetchShuffleBlockChunks(FetchShuffleBlockChunks {
            app_id: APP.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            shuffle_merge_id: 0,
            reduce_ids: vec![0],
            chunk_ids: vec![vec![0]],
        }),
        BlockTransferMessage::UploadBlock(UploadBlock {
            app_id: APP.into(),
            exec_id: "1".into(),
            block_id: "rdd_0_0".into(),
            metadata: vec![],
            block_data: vec![1, 2, 3],
        }),
    ];
    for message in &unsupported {
        assert_eq!(
            refused(&client, message).await,
            format!(
                "{} is not supported by this shuffle service",
                message.name()
            )
        );
    }
    // Replies sent as requests, and garbage.
    let text = refused(
        &client,
        &BlockTransferMessage::StreamHandle(StreamHandle {
            stream_id: 1,
            num_chunks: 1,
        }),
    )
    .await;
    assert!(
        text.starts_with("unexpected message StreamHandle"),
        "{text}"
    );
    for garbage in [&[][..], &[4, 0], &[99], &[9, 0, 0, 0, 100]] {
        match client
            .send_rpc(Bytes::copy_from_slice(garbage), Some(WAIT))
            .await
        {
            Err(rpc_tokio::RequestError::Remote(text)) => {
                assert!(
                    text.starts_with("malformed block transfer message"),
                    "{text}"
                )
            }
            other => panic!("{garbage:?}: {other:?}"),
        }
    }
    // A one-way RemoveShuffleMerge is ignored.
    client
        .send(
            BlockTransferMessage::RemoveShuffleMerge(RemoveShuffleMerge {
                app_id: APP.into(),
                app_attempt_id: 0,
                shuffle_id: 0,
                shuffle_merge_id: 0,
            })
            .encode(),
        )
        .unwrap();

    still_serves(&client).await;
    assert!(client.is_active());
    assert!(running.service.metrics().requests_refused >= 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_blocks_are_answered_too_late_so_the_pusher_falls_back() {
    let (disk, running) = fixture(1);
    let client = connect(running.addr, Security::none()).await;
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();
    let meta = BlockTransferMessage::PushBlockStream(PushBlockStream {
        app_id: APP.into(),
        app_attempt_id: 0,
        shuffle_id: 0,
        shuffle_merge_id: 0,
        map_index: 3,
        reduce_id: 2,
        index: 0,
    });
    let body = vec![7u8; 100_000];
    let reply = client
        .upload_stream(
            meta.encode(),
            body.len() as u64,
            futures_lite::stream::iter(
                body.chunks(30_000)
                    .map(Bytes::copy_from_slice)
                    .collect::<Vec<_>>(),
            ),
            Some(WAIT),
        )
        .await
        .unwrap();
    assert_eq!(
        BlockTransferMessage::decode(&reply).unwrap(),
        BlockTransferMessage::BlockPushReturnCode(BlockPushReturnCode {
            return_code: 1,
            failure_block_id: "shufflePush_0_0_3_2".into(),
        })
    );
    // Any other upload is refused.
    let other = BlockTransferMessage::OpenBlocks(OpenBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        block_ids: vec![],
    });
    match client
        .upload_stream(
            other.encode(),
            3,
            futures_lite::stream::iter(vec![Bytes::from_static(b"abc")]),
            Some(WAIT),
        )
        .await
    {
        Err(rpc_tokio::RequestError::Remote(text)) => {
            assert_eq!(
                &*text,
                "OpenBlocks is not supported by this shuffle service"
            )
        }
        other => panic!("{other:?}"),
    }
    still_serves(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_served_only_to_the_connection_that_opened_it() {
    let (disk, running) = fixture(1);
    let owner = connect(running.addr, Security::none()).await;
    let thief = connect(running.addr, Security::none()).await;
    assert_ne!(owner.local_addr(), thief.local_addr());
    rpc(&owner, &register(APP, "1", disk.info())).await.unwrap();
    let handle = stream_handle(
        &rpc(&owner, &fetch(&[0, 5], vec![vec![1], vec![2]], false))
            .await
            .unwrap(),
    );
    let text = chunk(&thief, handle.stream_id, 0).await.unwrap_err();
    assert!(text.contains("is closed"), "{text}");
    // The owner's stream is untouched by the attempt.
    assert_eq!(
        chunk(&owner, handle.stream_id, 0).await.unwrap(),
        Bytes::from(block(0, 1))
    );
    assert_eq!(
        chunk(&owner, handle.stream_id, 1).await.unwrap(),
        Bytes::from(block(5, 2))
    );
    // Streams of a closed connection are released.
    let handle = stream_handle(
        &rpc(&owner, &fetch(&[0], vec![vec![1]], false))
            .await
            .unwrap(),
    );
    assert_eq!(running.service.metrics().open_streams, 1);
    owner.close();
    let released = async {
        while running.service.metrics().open_streams != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, released).await.unwrap();
    let text = chunk(&thief, handle.stream_id, 0).await.unwrap_err();
    assert!(text.contains("is closed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_blocks_deletes_valid_files_only_and_local_dirs_are_listed() {
    let (disk, running) = fixture(2);
    let client = connect(running.addr, Security::none()).await;
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();
    rpc(&client, &register(APP, "2", disk.info()))
        .await
        .unwrap();

    let reply = rpc(
        &client,
        &BlockTransferMessage::GetLocalDirsForExecutors(GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["2".into(), "1".into()],
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        BlockTransferMessage::decode(&reply).unwrap(),
        BlockTransferMessage::LocalDirsForExecutors(LocalDirsForExecutors {
            dirs: vec![
                ("2".into(), disk.dirs.clone()),
                ("1".into(), disk.dirs.clone())
            ],
        })
    );
    let text = refused(
        &client,
        &BlockTransferMessage::GetLocalDirsForExecutors(GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into(), "9".into()],
        }),
    )
    .await;
    assert_eq!(
        text,
        format!("Executor is not registered (appId={APP}, execId=9)")
    );

    // A file next to the executor's dirs that traversal ids aim at.
    let victim = disk.root.path().join("victim");
    fs::write(&victim, b"keep me").unwrap();
    let remove = BlockTransferMessage::RemoveBlocks(RemoveBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        block_ids: [
            "shuffle_0_5_0.data",
            "shuffle_0_5_0.index",
            "../victim",
            "..",
            "",
            "a\\b",
            "shuffle_0_99_0.data",
        ]
        .map(String::from)
        .to_vec(),
    });
    let reply = rpc(&client, &remove).await.unwrap();
    assert_eq!(
        BlockTransferMessage::decode(&reply).unwrap(),
        BlockTransferMessage::BlocksRemoved(BlocksRemoved {
            num_removed_blocks: 2
        })
    );
    assert!(victim.exists());
    assert!(!disk.path("shuffle_0_5_0.data").exists());
    assert!(!disk.path("shuffle_0_5_0.index").exists());
    assert!(disk.path("shuffle_0_0_0.data").exists());
    // The removed map is gone for fetches too (its index is not served from the cache).
    let handle = stream_handle(
        &rpc(&client, &fetch(&[5], vec![vec![1]], false))
            .await
            .unwrap(),
    );
    assert!(chunk(&client, handle.stream_id, 0).await.is_err());
    assert_eq!(running.service.metrics().blocks_removed, 2);
    // An unknown executor's blocks: refused, as Spark does.
    let remove = BlockTransferMessage::RemoveBlocks(RemoveBlocks {
        app_id: APP.into(),
        exec_id: "9".into(),
        block_ids: vec!["shuffle_0_0_0.data".into()],
    });
    assert_eq!(
        refused(&client, &remove).await,
        format!("Executor is not registered (appId={APP}, execId=9)")
    );
    assert!(disk.path("shuffle_0_0_0.data").exists());
}

fn authenticated(mechanism: AuthMechanism, app_id: &str) -> Security {
    Security::secret("cluster-secret")
        .with_mechanism(mechanism)
        .with_app_id(app_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_may_only_name_their_own_application() {
    let disk = Disk::new(1);
    let blocks: Vec<_> = (0..REDUCES).map(|r| block(5, r)).collect();
    disk.write_map_output(0, 5, &blocks);
    let service = ShuffleService::builder()
        .with_local_dir(disk.root.path())
        .build()
        .unwrap();
    // As the binary configures it: AES (Spark's default for crypto) and SASL.
    let running = serve(
        service,
        Security::secret("cluster-secret")
            .with_mechanism(AuthMechanism::spark_aes_default())
            .with_sasl_fallback(true),
    );
    // SASL DIGEST-MD5, what `spark.authenticate=true` alone uses.
    let ours = connect(
        running.addr,
        authenticated(AuthMechanism::spark_default(), APP),
    )
    .await;
    rpc(&ours, &register(APP, "1", disk.info())).await.unwrap();
    assert_eq!(
        fetch_all(&ours, &fetch(&[5], vec![vec![1]], false)).await,
        [Bytes::from(block(5, 1))]
    );

    // Another application, authenticated with AES: it may name only itself.
    let other_app = "app-other";
    let other = connect(
        running.addr,
        authenticated(AuthMechanism::spark_aes_default(), other_app),
    )
    .await;
    let text = refused(&other, &fetch(&[5], vec![vec![1]], false)).await;
    assert_eq!(
        text,
        format!("Client for {other_app} not authorized for application {APP}.")
    );
    let text = refused(&other, &register(APP, "2", disk.info())).await;
    assert_eq!(
        text,
        format!("Client for {other_app} not authorized for application {APP}.")
    );
    // Nor read a stream of ours.
    let handle = stream_handle(
        &rpc(&ours, &fetch(&[5], vec![vec![2]], false))
            .await
            .unwrap(),
    );
    assert!(chunk(&other, handle.stream_id, 0).await.is_err());
    assert_eq!(
        chunk(&ours, handle.stream_id, 0).await.unwrap(),
        Bytes::from(block(5, 2))
    );
    // Its own application is fine (and not registered).
    let text = refused(
        &other,
        &BlockTransferMessage::FetchShuffleBlocks(FetchShuffleBlocks {
            app_id: other_app.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![5],
            reduce_ids: vec![vec![1]],
            batch_fetch_enabled: false,
        }),
    )
    .await;
    assert!(text.starts_with("Executor is not registered"), "{text}");
    assert_eq!(running.service.metrics().unauthorized, 2);
    still_serves(&ours).await;
}

/// Reads the named stream `"<stream>_<chunk>"` whole: Spark's fetch to disk.
async fn stream_chunk(
    client: &TransportClient,
    stream_id: u64,
    index: u32,
) -> Result<Vec<u8>, String> {
    let mut call = client.stream(&format!("{stream_id}_{index}"), Some(WAIT));
    let mut body = Vec::new();
    while let Some(piece) = call.next().await {
        match piece {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(rpc_tokio::RequestError::Remote(text)) => return Err(text.to_string()),
            Err(other) => panic!("not a stream failure: {other}"),
        }
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_fetched_to_disk_arrive_as_named_streams() {
    let (disk, running) = fixture(1);
    // A block larger than a stream piece, so the body arrives in several.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    disk.write_map_output(0, 42, &[vec![1, 2, 3], big.clone(), vec![]]);
    let client = connect(running.addr, Security::none()).await;
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();
    let handle = stream_handle(
        &rpc(
            &client,
            &fetch(&[42, 42, 42], vec![vec![1], vec![0], vec![2]], false),
        )
        .await
        .unwrap(),
    );
    let other = connect(running.addr, Security::none()).await;
    assert!(stream_chunk(&other, handle.stream_id, 0).await.is_err());
    assert_eq!(
        stream_chunk(&client, handle.stream_id, 0).await.unwrap(),
        big
    );
    // Without security the body went from the file to the socket without copying.
    #[cfg(target_os = "linux")]
    {
        let sent: u64 = running
            .server
            .connections()
            .iter()
            .map(TransportClient::zero_copy_bytes)
            .sum();
        assert_eq!(sent, big.len() as u64);
    }
    // Chunks and named streams of one stream mix, in order.
    assert_eq!(
        chunk(&client, handle.stream_id, 1).await.unwrap(),
        Bytes::from_static(&[1, 2, 3])
    );
    assert_eq!(
        stream_chunk(&client, handle.stream_id, 2).await.unwrap(),
        Vec::<u8>::new()
    );
    let text = stream_chunk(&client, handle.stream_id, 3)
        .await
        .unwrap_err();
    assert!(text.contains("is closed"), "{text}");
    let text = stream_chunk(&client, handle.stream_id, 0)
        .await
        .unwrap_err();
    assert!(text.contains("is closed"), "{text}");
    let text = stream_chunk(&client, 0, u32::MAX).await.unwrap_err();
    assert!(text.contains("is closed"), "{text}");
    let mut named = client.stream("not-a-chunk", Some(WAIT));
    assert!(matches!(
        named.next().await,
        Some(Err(rpc_tokio::RequestError::Remote(_)))
    ));
    still_serves(&client).await;
}

fn adler32(bytes: &[u8]) -> i64 {
    let (mut a, mut b) = (1u64, 0u64);
    for &x in bytes {
        a = (a + u64::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    ((b << 16) | a) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_diagnosed_from_the_writers_checksum_file() {
    let (disk, running) = fixture(1);
    let client = connect(running.addr, Security::none()).await;
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();
    // The writer's checksums of map 5, one per reduce partition; partition 2's is wrong on
    // disk (as if the data file were damaged after writing).
    let mut sums: Vec<i64> = (0..REDUCES).map(|r| adler32(&block(5, r))).collect();
    sums[2] ^= 1;
    write(
        &disk.path("shuffle_0_5_0.checksum.ADLER32"),
        &sums
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect::<Vec<_>>(),
    );
    let diagnose = |reduce_id: i32, checksum: i64, algorithm: &str| {
        BlockTransferMessage::DiagnoseCorruption(DiagnoseCorruption {
            app_id: APP.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_id: 5,
            reduce_id,
            checksum,
            algorithm: algorithm.into(),
        })
    };
    let cause = |reply: Bytes| match BlockTransferMessage::decode(&reply).unwrap() {
        BlockTransferMessage::CorruptionCause(CorruptionCause { cause }) => cause,
        other => panic!("{other:?}"),
    };
    let good = adler32(&block(5, 1));
    assert_eq!(
        cause(rpc(&client, &diagnose(1, good, "ADLER32")).await.unwrap()),
        Cause::ChecksumVerifyPass
    );
    assert_eq!(
        cause(
            rpc(&client, &diagnose(1, good + 1, "ADLER32"))
                .await
                .unwrap()
        ),
        Cause::NetworkIssue
    );
    assert_eq!(
        cause(rpc(&client, &diagnose(2, 0, "ADLER32")).await.unwrap()),
        Cause::DiskIssue
    );
    // No checksum file for that algorithm, or past its end: unknown.
    assert_eq!(
        cause(rpc(&client, &diagnose(1, good, "CRC32")).await.unwrap()),
        Cause::UnknownIssue
    );
    assert_eq!(
        cause(
            rpc(&client, &diagnose(REDUCES, 0, "ADLER32"))
                .await
                .unwrap()
        ),
        Cause::UnknownIssue
    );
    write(&disk.path("shuffle_0_5_0.checksum.MD5"), &[0; 48]);
    assert_eq!(
        cause(rpc(&client, &diagnose(1, good, "MD5")).await.unwrap()),
        Cause::UnsupportedChecksumAlgorithm
    );
    // The algorithm is part of a file name: no traversal through it.
    let text = refused(&client, &diagnose(1, good, "ADLER32/../../../x")).await;
    assert!(text.contains("must not be empty"), "{text}");
    still_serves(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_per_connection_are_bounded_and_re_registration_replaces() {
    let disk = Disk::new(1);
    disk.write_map_output(0, 5, &[block(5, 0), block(5, 1)]);
    let service = ShuffleService::builder()
        .with_local_dir(disk.root.path())
        .with_max_streams_per_connection(2)
        .build()
        .unwrap();
    let running = serve(service, Security::none());
    let client = connect(running.addr, Security::none()).await;
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();
    let first = stream_handle(
        &rpc(&client, &fetch(&[5], vec![vec![1]], false))
            .await
            .unwrap(),
    );
    rpc(&client, &fetch(&[5], vec![vec![0]], false))
        .await
        .unwrap();
    let text = refused(&client, &fetch(&[5], vec![vec![0]], false)).await;
    assert_eq!(
        text,
        "too many open streams on this connection: 2 (limit 2)"
    );
    // Another connection has its own allowance; reading a stream frees a slot.
    let other = connect(running.addr, Security::none()).await;
    still_serves(&other).await;
    chunk(&client, first.stream_id, 0).await.unwrap();
    rpc(&client, &fetch(&[5], vec![vec![0]], false))
        .await
        .unwrap();

    // Registering again replaces the executor's dirs.
    let second = disk.root.path().join("blockmgr-new");
    fs::create_dir(&second).unwrap();
    let mut info = disk.info();
    info.local_dirs = vec![second.display().to_string()];
    rpc(&client, &register(APP, "1", info.clone()))
        .await
        .unwrap();
    assert_eq!(running.service.executor(APP, "1"), Some(info));
    assert_eq!(running.service.metrics().registered_executors, 1);
    assert_eq!(running.service.metrics().registrations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdd_blocks_are_served_whole_when_enabled() {
    let disk = Disk::new(2);
    let rdd: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
    write(&disk.path("rdd_2_5"), &rdd);
    disk.write_map_output(0, 5, &[block(5, 0), block(5, 1)]);
    let service = ShuffleService::builder()
        .with_local_dir(disk.root.path())
        .with_fetch_rdd(true)
        .build()
        .unwrap();
    let running = serve(service, Security::none());
    let client = connect(running.addr, Security::none()).await;
    rpc(&client, &register(APP, "1", disk.info()))
        .await
        .unwrap();
    let chunks = fetch_all(&client, &open_blocks(APP, &["rdd_2_5", "shuffle_0_5_1"])).await;
    assert_eq!(chunks, [Bytes::from(rdd), Bytes::from(block(5, 1))]);
    // A missing one fails its chunk only.
    let handle = stream_handle(&rpc(&client, &open_blocks(APP, &["rdd_2_6"])).await.unwrap());
    let text = chunk(&client, handle.stream_id, 0).await.unwrap_err();
    assert!(text.contains("rdd_2_6"), "{text}");
    still_serves(&client).await;
}
