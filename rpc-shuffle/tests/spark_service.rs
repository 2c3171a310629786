//! Our shuffle client against Spark 4.3's own external shuffle service
//! (`tests/interop/ShufflePeer.java server`: `ExternalBlockHandler` on Spark's transport, in
//! a JVM), over map outputs Spark's own code lays out (`ShufflePeer write-shuffle`, with
//! `ExecutorDiskUtils`): registration, fetches of single blocks, of batch ids and as streams,
//! an empty block, a missing block, an unregistered executor, host-local dirs, block removal
//! and the bounded reader; without authentication, with SASL DIGEST-MD5 and with AES; and a
//! wrong secret, which must fail as an authentication failure, not hang.
//!
//! Needs Spark's jars (`.ci/spark-jars.sh`, at `$SPARK_JARS_CACHE`, default
//! `~/.cache/spark-rpc-rs/spark-jars`, including `spark-network-shuffle`) and a JDK (`javac`
//! and `java` from `$JAVA_HOME/bin`, else `PATH`). Without them each test prints a `SKIPPED`
//! line and passes, unless `RPC_REQUIRE_SPARK=1`: then they fail.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::spark::{self, Spark};
use rpc_shuffle::client::{RemoteBlocks, ShuffleClient, ShuffleClientConfig, ShuffleClientError};
use rpc_shuffle::protocol::{executor_file_path, ExecutorShuffleInfo};
use rpc_tokio::security::{AuthMechanism, Security};
use rpc_tokio::{BlockFetchConfig, BlockFetchError};

const APP: &str = "app-20261202120000-0007";
const SECRET: &str = "the-cluster-secret";
const EXEC: &str = "e1";
const SUB_DIRS: i32 = 64;
const REDUCERS: i32 = 8;
const MANAGER: &str = "org.apache.spark.shuffle.sort.SortShuffleManager";
/// (map id, seed) of the map outputs written: a long map id too (a task attempt id).
const MAPS: [(i64, i64); 3] = [(5, 11), (6, 12), (3_000_000_000, 13)];
/// Every wait on a JVM.
const JVM_LIMIT: Duration = Duration::from_secs(90);
/// Every wait on our client.
const LIMIT: Duration = Duration::from_secs(60);

/// Spark's classes in a JVM, running `ShufflePeer.java`.
fn spark() -> Option<&'static Spark> {
    spark::spark(
        "../tests/interop/ShufflePeer.java",
        "spark shuffle service test",
    )
}

impl Spark {
    /// `java ... ShufflePeer <args>`, started fast (C1, serial GC), as the interop tests run it.
    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(&self.java);
        c.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("-cp")
            .arg(format!(
                "{}:{}",
                self.classes.display(),
                self.jars.join("*").display()
            ))
            .arg("ShufflePeer")
            .args(args);
        c
    }
}

/// Spark's shuffle service: killed when dropped (it would exit when its stdin closes too).
struct Service {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts `ShufflePeer server --root ROOT` with `flags` (`--auth S`, `--aes`) and waits
    /// for its `PORT` line.
    fn start(spark: &Spark, root: &Path, flags: &[&str]) -> Self {
        let mut args: Vec<String> = vec!["server".into(), "--root".into()];
        args.push(root.display().to_string());
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let stderr = root.join("server.stderr");
        let mut child = spark
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Self {
            child,
            addr: ([127, 0, 0, 1], 0).into(),
            stderr,
        };
        let line = rx.recv_timeout(JVM_LIMIT).unwrap_or_else(|e| {
            panic!(
                "Spark's shuffle service printed no PORT line ({e}); stderr:\n{}",
                fs::read_to_string(&service.stderr).unwrap_or_default()
            )
        });
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a PORT line: {line:?}"));
        service.addr.set_port(port);
        service
    }
}

/// SplitMix64, as ShufflePeer's header documents it.
fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Block `r` of a map output `write-shuffle` wrote with `seed` (its header's generator).
fn block(seed: i64, r: i32) -> Vec<u8> {
    let mut state = ((seed as u64) << 32) ^ (r as u64);
    let len = if r % 4 == 1 {
        0
    } else {
        1 + (split_mix(&mut state) % 100_000) as usize
    };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&split_mix(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn seed_of(map: i64) -> i64 {
    MAPS.iter()
        .find(|(m, _)| *m == map)
        .map(|(_, s)| *s)
        .unwrap()
}

/// Block `shuffle_0_<map>_<r>`'s expected bytes.
fn expected(map: i64, r: i32) -> Vec<u8> {
    block(seed_of(map), r)
}

/// A service root holding executor [`EXEC`]'s map outputs, written by Spark's own code.
struct Shuffle {
    root: tempfile::TempDir,
    dirs: Vec<String>,
}

impl Shuffle {
    fn write(spark: &Spark) -> Self {
        let root = tempfile::tempdir().unwrap();
        // Canonical, so Spark's LocalDirValidator finds the dirs under its root.
        let base = fs::canonicalize(root.path()).unwrap();
        let dirs: Vec<String> = (0..2)
            .map(|k| base.join(format!("blockmgr-{k}")).display().to_string())
            .collect();
        for (map, seed) in MAPS {
            let args: Vec<String> = vec![
                "write-shuffle".into(),
                dirs.join(","),
                SUB_DIRS.to_string(),
                "0".into(),
                map.to_string(),
                REDUCERS.to_string(),
                seed.to_string(),
            ];
            let out = run_bounded(spark.command(&args));
            assert!(
                out.status.success(),
                "write-shuffle failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Its lines give each block's length: the mirrored generator must agree.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.len(), REDUCERS as usize, "{stdout}");
            for (r, line) in lines.iter().enumerate() {
                let words: Vec<&str> = line.split(' ').collect();
                assert_eq!(words[0], "BLOCK", "{line}");
                assert_eq!(words[1], format!("shuffle_0_{map}_{r}"), "{line}");
                assert_eq!(
                    words[2].parse::<usize>().unwrap(),
                    block(seed, r as i32).len(),
                    "{line}"
                );
            }
        }
        Self { root, dirs }
    }

    fn root(&self) -> PathBuf {
        fs::canonicalize(self.root.path()).unwrap()
    }

    fn info(&self) -> ExecutorShuffleInfo {
        ExecutorShuffleInfo {
            local_dirs: self.dirs.clone(),
            sub_dirs_per_local_dir: SUB_DIRS,
            shuffle_manager: MANAGER.into(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        executor_file_path(&self.dirs, SUB_DIRS, name).unwrap()
    }
}

/// Runs a JVM to its end, within [`JVM_LIMIT`].
fn run_bounded(mut command: Command) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > JVM_LIMIT {
            let _ = child.kill();
            panic!("a JVM ran past {JVM_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bounds a future of ours.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// Our client of [`APP`]: no retries (a failure shows at once), one registration attempt.
fn new_client(security: Security, streams: bool) -> ShuffleClient {
    let fetch = BlockFetchConfig::builder()
        .with_max_retries(0)
        .with_open_timeout(Some(Duration::from_secs(30)))
        .with_chunk_timeout(Some(Duration::from_secs(30)))
        .with_fetch_as_streams(streams)
        .build()
        .unwrap();
    let config = ShuffleClientConfig::builder()
        .with_security(security)
        .with_fetch(fetch)
        .with_registration_attempts(1)
        .with_registration_timeout(Duration::from_secs(20))
        .with_rpc_timeout(Duration::from_secs(30))
        .with_max_bytes_in_flight(64 << 10)
        .build()
        .unwrap();
    ShuffleClient::new(rpc_tokio::runtime(), APP, config).unwrap()
}

/// Every outcome of one `fetch_blocks`, by block id.
async fn fetch(
    client: &ShuffleClient,
    addr: SocketAddr,
    exec: &str,
    ids: &[&str],
) -> HashMap<String, Result<Bytes, BlockFetchError>> {
    let mut fetch =
        client.fetch_blocks(addr, exec, ids.iter().map(|id| (*id).to_owned()).collect());
    let mut out = HashMap::new();
    bounded("a fetch", async {
        while let Some((id, result)) = fetch.next_block().await {
            assert!(out.insert(id.clone(), result).is_none(), "{id} twice");
        }
    })
    .await;
    assert_eq!(out.len(), ids.len(), "an outcome per block: {out:?}");
    out
}

fn ok(outcomes: &HashMap<String, Result<Bytes, BlockFetchError>>, id: &str) -> Vec<u8> {
    match &outcomes[id] {
        Ok(bytes) => bytes.to_vec(),
        Err(e) => panic!("{id}: {e}"),
    }
}

/// Everything our client does with Spark's service, with `security` and the service's
/// `flags`.
async fn against_spark_service(security: Security, flags: &[&str]) {
    let Some(spark) = spark() else { return };
    let shuffle = Shuffle::write(spark);
    let service = Service::start(spark, &shuffle.root(), flags);
    let addr = service.addr;
    let client = new_client(security.clone(), false);

    // Registration.
    bounded(
        "registration",
        client.register_executor(addr, EXEC, shuffle.info()),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "registration: {e}; service stderr:\n{}",
            fs::read_to_string(&service.stderr).unwrap_or_default()
        )
    });

    // Single blocks of several maps (one FetchShuffleBlocks), an empty one among them.
    let ids = [
        "shuffle_0_5_0",
        "shuffle_0_5_1", // empty: r % 4 == 1
        "shuffle_0_5_7",
        "shuffle_0_6_2",
        "shuffle_0_3000000000_3",
    ];
    let got = fetch(&client, addr, EXEC, &ids).await;
    for id in ids {
        let parts: Vec<&str> = id.split('_').collect();
        let (map, r) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
        assert_eq!(ok(&got, id), expected(map, r), "{id}");
    }
    assert!(ok(&got, "shuffle_0_5_1").is_empty());

    // Batch ids: one range of reducers per map, each one contiguous chunk.
    let got = fetch(&client, addr, EXEC, &["shuffle_0_5_0_3", "shuffle_0_6_2_6"]).await;
    let range = |map: i64, rs: std::ops::Range<i32>| -> Vec<u8> {
        rs.flat_map(|r| expected(map, r)).collect()
    };
    assert_eq!(ok(&got, "shuffle_0_5_0_3"), range(5, 0..3));
    assert_eq!(ok(&got, "shuffle_0_6_2_6"), range(6, 2..6));

    // As streams (Spark's fetch to disk), on a client of its own.
    let streamer = new_client(security.clone(), true);
    let got = fetch(
        &streamer,
        addr,
        EXEC,
        &["shuffle_0_6_0", "shuffle_0_6_1", "shuffle_0_6_4"],
    )
    .await;
    assert_eq!(ok(&got, "shuffle_0_6_0"), expected(6, 0));
    assert!(ok(&got, "shuffle_0_6_1").is_empty());
    assert_eq!(ok(&got, "shuffle_0_6_4"), expected(6, 4));
    streamer.close();

    // A block that was never written, after one that was: that block fails, the other not.
    let got = fetch(&client, addr, EXEC, &["shuffle_0_5_2", "shuffle_0_7_0"]).await;
    assert_eq!(ok(&got, "shuffle_0_5_2"), expected(5, 2));
    assert!(got["shuffle_0_7_0"].is_err(), "{:?}", got["shuffle_0_7_0"]);
    // The connection is still good.
    let got = fetch(&client, addr, EXEC, &["shuffle_0_5_3"]).await;
    assert_eq!(ok(&got, "shuffle_0_5_3"), expected(5, 3));

    // An executor that never registered.
    let got = fetch(&client, addr, "e9", &["shuffle_0_5_0"]).await;
    let error = got["shuffle_0_5_0"].as_ref().unwrap_err().to_string();
    assert!(error.contains("not registered"), "{error}");

    // Host-local dirs.
    let dirs = bounded(
        "get_host_local_dirs",
        client.get_host_local_dirs(addr, &[EXEC.to_owned()]),
    )
    .await
    .unwrap();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(dirs[EXEC], shuffle.dirs);
    let unknown = bounded(
        "get_host_local_dirs",
        client.get_host_local_dirs(addr, &["e9".to_owned()]),
    )
    .await;
    assert!(unknown.is_err(), "{unknown:?}");

    // The bounded reader: every block of every map (several requests, 64 KiB in flight,
    // blocks of up to 100,000 bytes).
    let blocks: Vec<(String, u64)> = MAPS
        .iter()
        .flat_map(|(map, _)| {
            (0..REDUCERS).map(move |r| {
                (
                    format!("shuffle_0_{map}_{r}"),
                    expected(*map, r).len() as u64,
                )
            })
        })
        .collect();
    let largest = blocks.iter().map(|(_, s)| *s).max().unwrap();
    let mut reader = client.reader(vec![RemoteBlocks {
        addr,
        exec_id: EXEC.to_owned(),
        blocks: blocks.clone(),
    }]);
    let mut seen = HashMap::new();
    bounded("the reader", async {
        while let Some(block) = reader.next_block().await {
            assert!(
                reader.bytes_in_flight() <= (64 << 10) + largest,
                "{} bytes in flight",
                reader.bytes_in_flight()
            );
            let bytes = block
                .result
                .unwrap_or_else(|e| panic!("{}: {e}", block.block_id));
            assert_eq!(bytes.len() as u64, block.size, "{}", block.block_id);
            seen.insert(block.block_id, bytes);
        }
    })
    .await;
    assert_eq!(seen.len(), blocks.len());
    for (map, _) in MAPS {
        for r in 0..REDUCERS {
            let id = format!("shuffle_0_{map}_{r}");
            assert_eq!(seen[&id].to_vec(), expected(map, r), "{id}");
        }
    }

    // Removal of map 6's files: both gone, and its blocks with them.
    let names = ["shuffle_0_6_0.data", "shuffle_0_6_0.index"];
    for name in names {
        assert!(shuffle.path(name).is_file(), "{name}");
    }
    let removed = bounded(
        "remove_blocks",
        client.remove_blocks(addr, EXEC, names.iter().map(|n| (*n).to_owned()).collect()),
    )
    .await
    .unwrap();
    assert_eq!(removed, 2);
    for name in names {
        assert!(!shuffle.path(name).exists(), "{name} is still there");
    }
    let got = fetch(&client, addr, EXEC, &["shuffle_0_6_0"]).await;
    assert!(got["shuffle_0_6_0"].is_err());
    client.close();
    drop(service);
}

fn sasl() -> Security {
    Security::secret(SECRET)
        .with_app_id(APP)
        .with_mechanism(AuthMechanism::spark_default())
}

fn aes() -> Security {
    Security::secret(SECRET)
        .with_app_id(APP)
        .with_mechanism(AuthMechanism::spark_aes_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_spark_service_without_authentication() {
    against_spark_service(Security::none(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_spark_service_with_sasl() {
    against_spark_service(sasl(), &["--auth", SECRET]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_spark_service_with_aes() {
    against_spark_service(aes(), &["--auth", SECRET, "--aes"]).await;
}

/// A client with the wrong secret: registration and fetches fail as refused
/// authentications, in bounded time, and the service still serves the right secret.
async fn wrong_secret(right: Security, wrong: Security, flags: &[&str]) {
    let Some(spark) = spark() else { return };
    let shuffle = Shuffle::write(spark);
    let service = Service::start(spark, &shuffle.root(), flags);
    let addr = service.addr;
    let bad = new_client(wrong, false);
    let error = bounded(
        "a registration with the wrong secret",
        bad.register_executor(addr, EXEC, shuffle.info()),
    )
    .await
    .unwrap_err();
    assert!(error.is_authentication_failure(), "{error:?}");
    assert!(
        matches!(
            error,
            ShuffleClientError::RegistrationFailed { attempts: 1, .. }
        ),
        "{error:?}"
    );
    let got = fetch(&bad, addr, EXEC, &["shuffle_0_5_0"]).await;
    assert!(
        matches!(got["shuffle_0_5_0"], Err(BlockFetchError::Connect(_))),
        "{:?}",
        got["shuffle_0_5_0"]
    );
    bad.close();
    let good = new_client(right, false);
    bounded(
        "a registration with the right secret",
        good.register_executor(addr, EXEC, shuffle.info()),
    )
    .await
    .unwrap();
    let got = fetch(&good, addr, EXEC, &["shuffle_0_5_0"]).await;
    assert_eq!(ok(&got, "shuffle_0_5_0"), expected(5, 0));
    good.close();
}

fn wrong(mechanism: AuthMechanism) -> Security {
    Security::secret("not-the-secret")
        .with_app_id(APP)
        .with_mechanism(mechanism)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_secret_is_an_authentication_failure() {
    wrong_secret(
        sasl(),
        wrong(AuthMechanism::spark_default()),
        &["--auth", SECRET],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_aes_secret_is_an_authentication_failure() {
    wrong_secret(
        aes(),
        wrong(AuthMechanism::spark_aes_default()),
        &["--auth", SECRET, "--aes"],
    )
    .await;
}
