//! Shared by the Java interop test files (`spark_interop.rs`, `spark_security.rs`,
//! `sasl_jdk.rs`): finding
//! Spark's jars and a JDK (skipping loudly, or failing under `RPC_REQUIRE_SPARK=1`), compiling
//! `tests/interop/SparkPeer.java`, running it as a child process, and the test data both sides
//! agree on.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The longest any single step waits for the other side (a JVM starting, a reply, a line).
pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) const MIB: usize = 1024 * 1024;

// -------------------------------------------------------------------------------------------
// Finding Spark and Java; skipping loudly

/// A usable Spark peer: the jar cache, a JDK and the compiled SparkPeer class.
pub(crate) struct Spark {
    jars: PathBuf,
    /// First line of the cache's marker, e.g. "pyspark 4.3.0".
    version: String,
    java: PathBuf,
    classes: PathBuf,
}

pub(crate) fn spark_required() -> bool {
    std::env::var("RPC_REQUIRE_SPARK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Written straight to the process's stderr, so it shows even for a passing test (the test
/// harness only captures `print!`/`eprint!` output).
pub(crate) fn loud(message: &str) {
    let _ = std::io::stderr().write_all(format!("\n{message}\n").as_bytes());
}

/// Spark, or `None` after a loud skip message. Panics instead of skipping when
/// `RPC_REQUIRE_SPARK` is set, and when the pieces are there but SparkPeer does not compile.
pub(crate) fn spark() -> Option<&'static Spark> {
    static SPARK: OnceLock<Result<Spark, String>> = OnceLock::new();
    // The test harness names each test's thread after the test.
    let test = thread::current().name().unwrap_or("(unnamed)").to_owned();
    match SPARK.get_or_init(locate_spark) {
        Ok(spark) => Some(spark),
        Err(why) if spark_required() => {
            panic!("spark interop is required (RPC_REQUIRE_SPARK is set) but {why}")
        }
        Err(why) => {
            loud(&format!(
                "SKIPPED: spark interop test {test}: {why} (set RPC_REQUIRE_SPARK=1 to make this a failure)"
            ));
            None
        }
    }
}

/// Binds `let spark = ...;` or returns from the test after the skip message.
#[allow(unused_macros)] // sasl_jdk.rs has its own skips
macro_rules! spark_or_skip {
    () => {
        match spark() {
            Some(spark) => spark,
            None => return,
        }
    };
}

pub(crate) fn locate_spark() -> Result<Spark, String> {
    let jars = jar_cache_dir()?;
    let marker = jars.join("spark-jars.complete");
    let marker_text = std::fs::read_to_string(&marker).map_err(|_| {
        format!(
            "no jars at {} (no {}); run .ci/spark-jars.sh",
            jars.display(),
            marker.display()
        )
    })?;
    let version = marker_text.lines().next().unwrap_or("unknown").to_owned();
    let javac = find_tool("javac").ok_or("no javac (a JDK 17+) in $JAVA_HOME/bin or PATH")?;
    let java = find_tool("java").ok_or("no java in $JAVA_HOME/bin or PATH")?;
    let classes = compile_spark_peer(&javac, &jars, &marker_text);
    Ok(Spark {
        jars,
        version,
        java,
        classes,
    })
}

pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let java_home = std::env::var_os("JAVA_HOME").map(|home| PathBuf::from(home).join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    java_home
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Compiles SparkPeer.java once per source and jar set, into the target's temp dir.
pub(crate) fn compile_spark_peer(javac: &Path, jars: &Path, marker_text: &str) -> PathBuf {
    compile_java(javac, "SparkPeer", Some(jars), marker_text)
}

/// Compiles `tests/interop/<class>.java` (against the jars in `jars`, if given) into a
/// directory of the target's temp dir named after the source, the jars and `key`, once: a
/// later call (or test process) finds the classes there. Panics if javac fails.
pub(crate) fn compile_java(javac: &Path, class: &str, jars: Option<&Path>, key: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("interop/{class}.java"));
    let code = std::fs::read(&source).unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
    let mut hasher = DefaultHasher::new();
    (&code, key, jars).hash(&mut hasher);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let classes = tmp.join(format!("{class}-{:016x}", hasher.finish()));
    if classes.join(format!("{class}.class")).is_file() {
        return classes;
    }
    let staging = tmp.join(format!("{class}-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("create the javac output dir");
    let mut javac = Command::new(javac);
    javac.arg("-d").arg(&staging);
    if let Some(jars) = jars {
        javac.arg("-cp").arg(jars.join("*"));
    }
    let output = javac
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .expect("run javac");
    assert!(
        output.status.success(),
        "javac failed on {} (jars: {jars:?}):\n{}{}",
        source.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Another test process may have won the race; its classes are the same.
    if std::fs::rename(&staging, &classes).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    classes
}

/// Where `.ci/spark-jars.sh` caches Spark's jars: `SPARK_JARS_CACHE`, or its default.
pub(crate) fn jar_cache_dir() -> Result<PathBuf, String> {
    match std::env::var_os("SPARK_JARS_CACHE") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => {
            let home = std::env::var_os("HOME")
                .ok_or("HOME is not set and SPARK_JARS_CACHE is not set")?;
            Ok(Path::new(&home).join(".cache/spark-rpc-rs/spark-jars"))
        }
    }
}

// -------------------------------------------------------------------------------------------
// The Java child

/// A running SparkPeer: commands on its stdin, result lines from its stdout. Killed on drop.
pub(crate) struct JavaPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    version: String,
}

impl JavaPeer {
    pub(crate) fn spawn(spark: &Spark, args: &[&str]) -> Self {
        Self::spawn_with(spark, &[], args)
    }

    /// Like [`JavaPeer::spawn`], with extra JVM options before the class name, e.g. a system
    /// property: `-Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=HTTPS` (SparkPeer
    /// sets it to `NONE` itself when it is not given, as Spark's launcher does).
    pub(crate) fn spawn_with(spark: &Spark, jvm: &[&str], args: &[&str]) -> Self {
        let classpath =
            std::env::join_paths([spark.classes.clone(), spark.jars.join("*")]).expect("classpath");
        let mut child = Command::new(&spark.java)
            // Start fast on small machines; the peer needs neither much heap nor the C2 JIT.
            .args(["-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .args(jvm)
            .arg("-cp")
            .arg(classpath)
            .arg("SparkPeer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start java");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut child_stderr = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = child_stderr.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            version: spark.version.clone(),
        }
    }

    /// Spark's side of the story, for failure messages.
    pub(crate) fn diagnostics(&self) -> String {
        let stderr = self.stderr.lock().unwrap();
        let text = String::from_utf8_lossy(&stderr);
        let tail: String = text
            .chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("SparkPeer ({}) stderr (tail):\n{tail}", self.version)
    }

    /// The next stdout line.
    pub(crate) fn line(&self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no line from SparkPeer within {WAIT:?}\n{}",
                    self.diagnostics()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "SparkPeer closed its stdout (exited?)\n{}",
                    self.diagnostics()
                )
            }
        }
    }

    /// The next stdout line starting with `prefix`, without it; other lines are skipped.
    pub(crate) fn line_starting(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = self.line();
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no line starting with {prefix:?} from SparkPeer within {WAIT:?}\n{}",
                self.diagnostics()
            );
        }
    }

    /// Writes one command line (client mode) without waiting for its result.
    pub(crate) fn write(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        let ok = stdin
            .write_all(command.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush());
        if let Err(e) = ok {
            panic!("cannot write to SparkPeer: {e}\n{}", self.diagnostics());
        }
    }

    /// Runs one command (client mode) and returns its result line.
    pub(crate) fn command(&mut self, command: &str) -> String {
        self.write(command);
        self.line()
    }

    /// Closes stdin (the peer's signal to exit) and waits, bounded, for a clean exit.
    pub(crate) fn finish(self) {
        self.finish_lines();
    }

    /// Like [`finish`](Self::finish), and returns the lines the peer printed that were not
    /// read yet (e.g. a server's `SERVED` lines).
    pub(crate) fn finish_lines(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            match self.child.try_wait().expect("wait for java") {
                Some(status) => {
                    assert!(
                        status.success(),
                        "SparkPeer exited with {status}\n{}",
                        self.diagnostics()
                    );
                    break;
                }
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                None => panic!(
                    "SparkPeer did not exit within {WAIT:?}\n{}",
                    self.diagnostics()
                ),
            }
        }
        // The reader thread ends at the end of stdout, which the exit has closed.
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => rest.push(line),
                Err(RecvTimeoutError::Disconnected) => return rest,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "SparkPeer's stdout did not end after its exit\n{}",
                    self.diagnostics()
                ),
            }
        }
    }
}

impl Drop for JavaPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Spark `TransportServer` and the address it listens on.
pub(crate) fn spark_server(spark: &Spark) -> (JavaPeer, SocketAddr) {
    spark_server_with(spark, &[])
}

/// A Spark `TransportServer` started with SparkPeer's flags (`--auth aes --cipher gcm`, `--tls
/// ...`; see the header of SparkPeer.java), and the address it listens on.
pub(crate) fn spark_server_with(spark: &Spark, flags: &[&str]) -> (JavaPeer, SocketAddr) {
    let args: Vec<&str> = ["server"]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let peer = JavaPeer::spawn(spark, &args);
    let port: u16 = peer
        .line_starting("PORT ")
        .parse()
        .expect("SparkPeer prints PORT <n>");
    (peer, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A Spark `TransportClient` connected to `addr`.
pub(crate) fn spark_client(spark: &Spark, addr: SocketAddr) -> JavaPeer {
    match spark_client_with(spark, addr, &[]) {
        Ok(peer) => peer,
        Err((peer, line)) => panic!("SparkPeer: {line}\n{}", peer.diagnostics()),
    }
}

/// A Spark `TransportClient` started with SparkPeer's flags: the peer once it printed
/// `CONNECTED`, or the peer and the whole line it printed instead (`CONNECT_FAILED <exception
/// chain>`; the peer then answers every command with `FAILED not connected` and exits when its
/// stdin closes).
pub(crate) fn spark_client_with(
    spark: &Spark,
    addr: SocketAddr,
    flags: &[&str],
) -> Result<JavaPeer, (JavaPeer, String)> {
    let port = addr.port().to_string();
    let args: Vec<&str> = ["client", port.as_str()]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let peer = JavaPeer::spawn(spark, &args);
    let line = peer.line();
    if line == "CONNECTED" {
        Ok(peer)
    } else {
        Err((peer, line))
    }
}

/// A multi-threaded tokio runtime: our transport runs on its workers while the test thread
/// blocks on the Java child.
pub(crate) fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// SparkPeer's test data: byte k is (k + seed) mod 251.
pub(crate) fn pattern(len: usize, seed: u64) -> Bytes {
    (0..len as u64).map(|k| ((k + seed) % 251) as u8).collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Vec<u8> {
    assert!(
        text.len() % 2 == 0,
        "odd-length hex from SparkPeer: {text:.80}"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from SparkPeer"))
        .collect()
}

/// Short text for a possibly huge body in assertion messages.
pub(crate) fn summary(bytes: &[u8]) -> String {
    if bytes.len() <= 64 {
        format!("{} bytes: {}", bytes.len(), hex(bytes))
    } else {
        format!("{} bytes: {}...", bytes.len(), hex(&bytes[..64]))
    }
}
