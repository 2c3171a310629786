//! The Spark contender of `rpc-bench all` (W1-W8, plain) and `rpc-bench security`:
//! `bench/java/SparkBench.java`, Spark's own network-common transport, compiled with `javac` against the jar cache that
//! `.ci/spark-jars.sh` fills (`$SPARK_JARS_CACHE`, default `~/.cache/spark-rpc-rs/spark-jars`),
//! as the interop tests compile `SparkPeer.java`; and, for W9 (`rpc-bench shuffle`),
//! `tests/interop/ShufflePeer.java`, Spark's own external shuffle service.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{self, Crypto, SecurityMode, Sizes};
use crate::harness::run_commands;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The program's source, built into the binary so it runs from anywhere.
const SOURCE: &str = include_str!("../java/SparkBench.java");

/// W9's Spark shuffle service (and the interop tests' Spark shuffle peer), built in too.
const SHUFFLE_SOURCE: &str = include_str!("../../tests/interop/ShufflePeer.java");

/// A compiled SparkBench and the JVM to run it.
pub(crate) struct Spark {
    java: PathBuf,
    classpath: OsString,
    /// Spark's version, from the jar cache's marker.
    pub(crate) version: String,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let java_home = std::env::var_os("JAVA_HOME").map(|home| PathBuf::from(home).join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    java_home
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Finds java, javac and the jars and compiles SparkBench (once per source and jar set, into
/// the temp directory); why not, if something is missing.
pub(crate) fn locate() -> Result<Spark, String> {
    compile("SparkBench", SOURCE)
}

/// [`locate`], once per process: the compiled SparkBench, or why there is none.
fn located() -> &'static Result<Spark, String> {
    static SPARK: OnceLock<Result<Spark, String>> = OnceLock::new();
    SPARK.get_or_init(locate)
}

/// For `rpc-bench all`: keeps `spark` in `contenders` only if SparkBench can run (compiling it
/// now), printing which Spark it is, or `SKIPPED: the spark contender: <why>` and dropping it.
pub(crate) fn keep_if_available(contenders: &mut Vec<String>) {
    if !contenders.iter().any(|c| c == "spark") {
        return;
    }
    match located() {
        Ok(spark) => println!(
            "spark contender: Spark {} (bench/java/SparkBench.java)",
            spark.version
        ),
        Err(why) => {
            println!("SKIPPED: the spark contender: {why}");
            contenders.retain(|c| c != "spark");
        }
    }
}

/// One Spark pair of `rpc-bench all` (plain, as the other contenders): the server serves the
/// block when `workload` needs it and, for W7, the page-cached file the harness prepared;
/// the client runs `workload` and prints its `RESULT` lines. The JVMs' stderr goes to
/// `<out>/spark-logs/<workload>-{server,client}.log` (the last repetition's).
pub(crate) fn run_all_pair(
    sizes: &Sizes,
    quick: bool,
    workload: &str,
    out: &Path,
    limit: Duration,
) -> Result<Vec<(String, f64)>, Error> {
    let spark = located().as_ref().map_err(|why| why.clone())?;
    let logs = out.join("spark-logs");
    std::fs::create_dir_all(&logs)?;
    let name = workload;
    let crypto = Crypto::default();
    let port = crate::harness::free_ports()?;
    let block = if common::needs_block(workload) {
        sizes.block
    } else {
        0
    };
    let mut server = spark.server(
        port,
        block,
        &crypto,
        quick,
        &logs.join(format!("{name}-server.log")),
    )?;
    if workload == "W7" {
        server.arg("--file").arg(common::default_file(sizes.file));
    }
    let client_log = logs.join(format!("{name}-client.log"));
    let mut made = None;
    let figures = run_commands(
        server,
        |pid| match spark.client(port, workload, quick, pid, &crypto, &client_log) {
            Ok(c) => c,
            Err(e) => {
                made = Some(e);
                Command::new("false")
            }
        },
        limit,
        &format!("spark {workload}"),
    );
    if let Some(e) = made {
        return Err(e.into());
    }
    figures.map_err(|e| format!("{e} (logs: {})", client_log.display()).into())
}

/// As [`locate`], for `ShufflePeer` (needs `spark-network-shuffle` in the jar cache).
pub(crate) fn locate_shuffle_peer() -> Result<Spark, String> {
    compile("ShufflePeer", SHUFFLE_SOURCE)
}

/// Finds java, javac and the jars and compiles class `name` from `source` (once per source
/// and jar set, into the temp directory).
fn compile(name: &str, source_text: &str) -> Result<Spark, String> {
    let jars = match std::env::var_os("SPARK_JARS_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(&std::env::var_os("HOME").ok_or("HOME is not set")?)
            .join(".cache/spark-rpc-rs/spark-jars"),
    };
    let marker = jars.join("spark-jars.complete");
    let marker_text = std::fs::read_to_string(&marker).map_err(|_| {
        format!(
            "no Spark jars at {} (no {}); run .ci/spark-jars.sh",
            jars.display(),
            marker.display()
        )
    })?;
    if name == "ShufflePeer" && !marker_text.contains("spark-network-shuffle") {
        return Err(format!(
            "no spark-network-shuffle jar at {}; run .ci/spark-jars.sh",
            jars.display()
        ));
    }
    let javac = find_tool("javac").ok_or("no javac (a JDK 17+) in $JAVA_HOME/bin or PATH")?;
    let java = find_tool("java").ok_or("no java in $JAVA_HOME/bin or PATH")?;
    let mut hasher = DefaultHasher::new();
    (source_text, &marker_text, &jars).hash(&mut hasher);
    let classes = std::env::temp_dir().join(format!(
        "rpc-bench-{}-{:016x}",
        name.to_lowercase(),
        hasher.finish()
    ));
    if !classes.join(format!("{name}.class")).is_file() {
        let staging = std::env::temp_dir().join(format!(
            "rpc-bench-{}-staging-{}",
            name.to_lowercase(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        let source = staging.join(format!("{name}.java"));
        std::fs::write(&source, source_text).map_err(|e| e.to_string())?;
        let output = Command::new(&javac)
            .arg("-d")
            .arg(&staging)
            .arg("-cp")
            .arg(jars.join("*"))
            .arg(&source)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", javac.display()))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(format!(
                "javac failed on {name}.java against {}:\n{}{}",
                jars.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if std::fs::rename(&staging, &classes).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    let classpath = std::env::join_paths([classes, jars.join("*")]).map_err(|e| e.to_string())?;
    Ok(Spark {
        java,
        classpath,
        version: marker_text.lines().next().unwrap_or("unknown").to_owned(),
    })
}

impl Spark {
    /// W9's server: Spark's external shuffle service (`ShufflePeer server --root ROOT --port
    /// PORT`, from [`locate_shuffle_peer`]), which prints `PORT <n>` and serves until its stdin
    /// closes; its stderr goes to `log`. With `quick` the JVM starts fast (C1 only, serial
    /// GC); otherwise the JIT runs in full, with the heap of Spark's daemons (1 GiB).
    pub(crate) fn shuffle_server(
        &self,
        port: u16,
        root: &Path,
        quick: bool,
        log: &Path,
    ) -> Result<Command, String> {
        let mut c = Command::new(&self.java);
        if quick {
            c.args(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]);
        }
        c.arg("-Xmx1g")
            .arg("-cp")
            .arg(&self.classpath)
            .args([
                "ShufflePeer",
                "server",
                "--port",
                &port.to_string(),
                "--root",
            ])
            .arg(root)
            .stderr(std::fs::File::create(log).map_err(|e| e.to_string())?);
        Ok(c)
    }

    fn command(
        &self,
        mode: &str,
        port: u16,
        crypto: &Crypto,
        quick: bool,
    ) -> Result<Command, String> {
        let mut c = Command::new(&self.java);
        if quick {
            // A smoke run checks that the pair works: start fast, as the interop tests do.
            c.args(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]);
        }
        // The server holds the 256 MiB block in a direct buffer; in a full run C2 is on.
        c.args([
            "-Xmx1g",
            "-Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=NONE",
        ])
        .arg("-cp")
        .arg(&self.classpath)
        .args(["SparkBench", mode, "--port", &port.to_string()])
        .args(["--security", crypto.mode.name()]);
        if crypto.mode == SecurityMode::Tls {
            // Spark's PEM configuration: both sides get the key and the certificate, and
            // trust exactly that certificate.
            let dir = crypto.tls_dir.as_ref().ok_or("tls needs a certificate")?;
            c.arg("--tls-key")
                .arg(dir.join("key.pem"))
                .arg("--tls-cert")
                .arg(dir.join("cert.pem"));
        }
        Ok(c)
    }

    /// The server of a pair, serving `block`-byte streams; its stderr goes to `log`. With
    /// `quick`, the JVMs start fast (C1 only, serial GC) rather than run fast.
    pub(crate) fn server(
        &self,
        port: u16,
        block: usize,
        crypto: &Crypto,
        quick: bool,
        log: &Path,
    ) -> Result<Command, String> {
        let mut c = self.command("server", port, crypto, quick)?;
        c.args(["--block-bytes", &block.to_string()]);
        c.stderr(std::fs::File::create(log).map_err(|e| e.to_string())?);
        Ok(c)
    }

    /// The client of a pair; its stderr goes to `log`.
    pub(crate) fn client(
        &self,
        port: u16,
        workload: &str,
        quick: bool,
        server_pid: u32,
        crypto: &Crypto,
        log: &Path,
    ) -> Result<Command, String> {
        let mut c = self.command("client", port, crypto, quick)?;
        c.args([
            "--workload",
            workload,
            "--server-pid",
            &server_pid.to_string(),
        ]);
        if quick {
            c.arg("--quick");
        }
        c.stderr(std::fs::File::create(log).map_err(|e| e.to_string())?);
        Ok(c)
    }
}
