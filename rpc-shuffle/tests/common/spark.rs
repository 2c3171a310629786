//! Spark's jars and a JDK for the tests that run Spark's own classes, and the Java program
//! they run, compiled once per source and jar set.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A compiled Java program and what runs it.
pub struct Spark {
    /// The jar cache (`.ci/spark-jars.sh`).
    pub jars: PathBuf,
    /// The `java` to run.
    pub java: PathBuf,
    /// Where the program's classes are.
    pub classes: PathBuf,
}

fn required() -> bool {
    std::env::var("RPC_REQUIRE_SPARK").is_ok_and(|v| !v.is_empty() && v != "0")
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

/// Finds the jars (with `spark-network-shuffle`), `javac` and `java`, and compiles `source`
/// (relative to this package) into the test's temporary directory.
fn locate(source: &str) -> Result<Spark, String> {
    let jars = match std::env::var_os("SPARK_JARS_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(&std::env::var_os("HOME").ok_or("HOME is not set")?)
            .join(".cache/spark-rpc-rs/spark-jars"),
    };
    let marker = fs::read_to_string(jars.join("spark-jars.complete"))
        .map_err(|_| format!("no jars at {}; run .ci/spark-jars.sh", jars.display()))?;
    if !marker.contains("spark-network-shuffle") {
        return Err(format!(
            "no spark-network-shuffle jar at {}; run .ci/spark-jars.sh",
            jars.display()
        ));
    }
    let javac = find_tool("javac").ok_or("no javac in $JAVA_HOME/bin or PATH")?;
    let java = find_tool("java").ok_or("no java in $JAVA_HOME/bin or PATH")?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let class = source
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("a java source has a name")?
        .to_owned();
    let code = fs::read(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    let mut hasher = DefaultHasher::new();
    (&code, &marker).hash(&mut hasher);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let classes = tmp.join(format!("{class}-{:016x}", hasher.finish()));
    if !classes.join(format!("{class}.class")).is_file() {
        let staging = tmp.join(format!("{class}-staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).unwrap();
        let out = Command::new(javac)
            .arg("-d")
            .arg(&staging)
            .arg("-cp")
            .arg(jars.join("*"))
            .arg(&source)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "javac failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test process may have won the race; its classes are the same.
        if fs::rename(&staging, &classes).is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
    }
    Ok(Spark {
        jars,
        java,
        classes,
    })
}

/// The test binary's Java program (`source`, relative to this package), compiled once; or
/// `None` after a `SKIPPED` line naming `what` when the jars or a JDK are missing, unless
/// `RPC_REQUIRE_SPARK=1`, which makes that a failure.
pub fn spark(source: &str, what: &str) -> Option<&'static Spark> {
    static SPARK: OnceLock<Result<Spark, String>> = OnceLock::new();
    match SPARK.get_or_init(|| locate(source)) {
        Ok(spark) => Some(spark),
        Err(why) if required() => panic!("spark interop is required but {why}"),
        Err(why) => {
            let _ = std::io::stderr().write_all(
                format!("\nSKIPPED: {what}: {why} (RPC_REQUIRE_SPARK=1 makes this a failure)\n")
                    .as_bytes(),
            );
            None
        }
    }
}
