//! Spark 4.3's own shuffle client (`ExternalBlockStoreClient`, what every executor runs, in
//! a JVM: `tests/interop/ShuffleClientPeer.java`) against our service: registration, fetches
//! to memory (chunks) and to disk (streams), host-local dirs, corruption diagnosis and block
//! removal; without authentication, with SASL DIGEST-MD5, and with AES.
//!
//! Needs Spark's jars (`.ci/spark-jars.sh`, at `$SPARK_JARS_CACHE`, default
//! `~/.cache/spark-rpc-rs/spark-jars`, including `spark-network-shuffle`) and a JDK (`javac`
//! and `java` from `$JAVA_HOME/bin`, else `PATH`). Without them each test prints a `SKIPPED`
//! line and passes, unless `RPC_REQUIRE_SPARK=1`: then they fail.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::spark::{self, Spark};
use common::*;
use rpc_shuffle::server::ShuffleService;
use rpc_tokio::{AuthMechanism, Security, TransportConfig, TransportServer};

const APP: &str = "app-20261202113000-0042";
const SECRET: &str = "the-cluster-secret";

/// Spark's classes in a JVM, running `ShuffleClientPeer.java`.
fn spark() -> Option<&'static Spark> {
    spark::spark(
        "tests/interop/ShuffleClientPeer.java",
        "spark shuffle client test",
    )
}

/// Runs Spark's client against a service with `security`, the client authenticating with
/// `client_mode` (`sasl` or `aes`, with the secret) or not at all (`none`).
async fn spark_client_against_our_service(security: Security, client_mode: &str) {
    let Some(spark) = spark() else { return };
    let disk = Disk::new(1);
    for map in [5i64, 3_000_000_000] {
        let blocks: Vec<_> = (0..4).map(|r| block(map, r)).collect();
        disk.write_map_output(0, map, &blocks);
    }
    // The writer's checksums of map 5, for the diagnosis.
    let sums: Vec<u8> = (0..4)
        .flat_map(|r| adler32(&block(5, r)).to_be_bytes())
        .collect();
    write(&disk.path("shuffle_0_5_0.checksum.ADLER32"), &sums);
    let service = Arc::new(
        ShuffleService::builder()
            .with_local_dir(disk.root.path())
            .build()
            .unwrap(),
    );
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
    let out = tempfile::tempdir().unwrap();
    let ids = [
        "shuffle_0_5_0",
        "shuffle_0_5_1", // empty
        "shuffle_0_5_2",
        "shuffle_0_3000000000_3",
    ];
    let mut command = Command::new(&spark.java);
    command
        .arg("-cp")
        .arg(format!(
            "{}:{}",
            spark.classes.display(),
            spark.jars.join("*").display()
        ))
        .arg("ShuffleClientPeer")
        .args([
            "127.0.0.1".to_owned(),
            server.local_addr().port().to_string(),
            APP.to_owned(),
            "7".to_owned(),
            disk.dirs[0].clone(),
            disk.sub_dirs.to_string(),
            if client_mode == "none" { "-" } else { SECRET }.to_owned(),
            client_mode.to_owned(),
            out.path().display().to_string(),
            "shuffle_0_3000000000_0.data,shuffle_0_3000000000_0.index,../escape".to_owned(),
        ])
        .args(ids)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || command.output().unwrap()),
    )
    .await
    .expect("the spark client hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let context = || {
        format!(
            "stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    };
    assert!(lines.contains(&"registered"), "{}", context());
    for mode in ["mem", "disk"] {
        for id in ids {
            let (map, reduce) = match id {
                "shuffle_0_3000000000_3" => (3_000_000_000, 3),
                other => (5, other[12..].parse().unwrap()),
            };
            let expected = block(map, reduce);
            let line = format!("fetched {mode} {id} {}", expected.len());
            assert!(lines.contains(&line.as_str()), "no {line:?}\n{}", context());
            assert_eq!(
                fs::read(out.path().join(format!("{mode}-{id}"))).unwrap(),
                expected,
                "{mode} {id}"
            );
        }
    }
    let dirs = format!("dirs 7 {}", disk.dirs[0]);
    assert!(lines.contains(&dirs.as_str()), "{}", context());
    // The reader's checksum (0) differs from the writer's, which matches the disk.
    assert!(lines.contains(&"cause NETWORK_ISSUE"), "{}", context());
    assert!(lines.contains(&"removed 2"), "{}", context());
    assert_eq!(lines.last(), Some(&"done"), "{}", context());
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("error") || l.starts_with("failed")),
        "{}",
        context()
    );
    assert!(!disk.path("shuffle_0_3000000000_0.data").exists());
    assert_eq!(service.metrics().registered_executors, 1);
    server.close();
}

fn adler32(bytes: &[u8]) -> i64 {
    let (mut a, mut b) = (1u64, 0u64);
    for &x in bytes {
        a = (a + u64::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    ((b << 16) | a) as i64
}

/// The security the binary configures with a secret: AES (Spark's defaults) and SASL.
fn with_secret() -> Security {
    Security::secret(SECRET)
        .with_mechanism(AuthMechanism::spark_aes_default())
        .with_sasl_fallback(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_executors_register_fetch_diagnose_and_remove_without_authentication() {
    spark_client_against_our_service(Security::none(), "none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_executors_authenticate_with_sasl_digest_md5() {
    spark_client_against_our_service(with_secret(), "sasl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_executors_authenticate_with_aes() {
    spark_client_against_our_service(with_secret(), "aes").await;
}
