//! `rpc-bench security`: W1, W2 and W4 with each connection security (plain, AES-GCM, TLS,
//! optionally AES-CTR), for our contenders and Spark's own transport, in one run, interleaved
//! (every repetition runs every contender in every mode, in turn). Writes `security.md` and
//! `security.json`: the medians, each as a ratio to the same contender in plain, and the
//! ratios issue 12 targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, Crypto, SecurityMode, Sizes};
use crate::harness::{free_ports, median, number, run_commands};
use crate::spark::{self, Spark};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The workloads the matrix runs.
pub(crate) const WORKLOADS: [&str; 3] = ["W1", "W2", "W4"];
/// The contenders it can run.
pub(crate) const CONTENDERS: [&str; 4] = ["rpc-tokio", "rpc-async-std", "rpc-smol", "spark"];
/// The modes run unless `--security` says otherwise.
pub(crate) const DEFAULT_MODES: [&str; 3] = ["plain", "aes-gcm", "tls"];

/// What `security` runs.
pub(crate) struct Plan {
    pub(crate) workloads: Vec<String>,
    pub(crate) contenders: Vec<String>,
    pub(crate) modes: Vec<SecurityMode>,
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) out: PathBuf,
}

/// (workload, metric, contender, mode) -> the figure of each repetition.
type Figures = BTreeMap<(String, String, String, &'static str), Vec<f64>>;
type Medians = BTreeMap<(String, String, String, &'static str), f64>;

/// Removes the run's certificate directory however the run ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

#[allow(clippy::too_many_arguments)]
fn run_pair(
    plan: &Plan,
    sizes: &Sizes,
    spark: Option<&Spark>,
    contender: &str,
    workload: &str,
    crypto: &Crypto,
    logs: &Path,
    rep: usize,
) -> Result<Vec<(String, f64)>, Error> {
    let port = free_ports()?;
    let block = if workload == "W4" { sizes.block } else { 0 };
    let limit = Duration::from_secs(if plan.quick { 60 } else { 600 });
    let what = format!("{contender} {workload} {}", crypto.mode.name());
    if contender == "spark" {
        let spark = spark.ok_or("no Spark")?;
        let name = format!("{workload}-{}-rep{}", crypto.mode.name(), rep + 1);
        let server = spark.server(
            port,
            block,
            crypto,
            plan.quick,
            &logs.join(format!("{name}-server.log")),
        )?;
        let client_log = logs.join(format!("{name}-client.log"));
        let mut made = None;
        let figures = run_commands(
            server,
            |pid| match spark.client(port, workload, plan.quick, pid, crypto, &client_log) {
                Ok(c) => c,
                Err(e) => {
                    made = Some(e);
                    Command::new("false")
                }
            },
            limit,
            &what,
        );
        if let Some(e) = made {
            return Err(e.into());
        }
        return figures.map_err(|e| format!("{e} (logs: {})", client_log.display()).into());
    }
    let exe = std::env::current_exe()?;
    let port = port.to_string();
    let security_args = |c: &mut Command| {
        c.args(["--security", crypto.mode.name()]);
        if let Some(dir) = &crypto.tls_dir {
            c.arg("--tls-dir").arg(dir);
        }
        if plan.quick {
            c.arg("--quick");
        }
    };
    let mut server = Command::new(&exe);
    server.args(["server", "--port", &port, "--contender", contender]);
    server.args(["--block-bytes", &block.to_string(), "--file", "none"]);
    security_args(&mut server);
    let client = |pid: u32| {
        let mut c = Command::new(&exe);
        c.args(["client", "--port", &port, "--contender", contender]);
        c.args(["--workload", workload, "--server-pid", &pid.to_string()]);
        security_args(&mut c);
        c
    };
    run_commands(server, client, limit, &what)
}

/// Runs the matrix and writes the report.
pub(crate) fn run(plan: &Plan) -> Result<(), Error> {
    let sizes = Sizes::new(plan.quick);
    let mut contenders = plan.contenders.clone();
    let mut spark_version = None;
    let spark = if contenders.iter().any(|c| c == "spark") {
        match spark::locate() {
            Ok(spark) => {
                println!(
                    "spark contender: Spark {} (bench/java/SparkBench.java)",
                    spark.version
                );
                spark_version = Some(spark.version.clone());
                Some(spark)
            }
            Err(why) => {
                println!("SKIPPED: the spark contender: {why}");
                contenders.retain(|c| c != "spark");
                None
            }
        }
    } else {
        None
    };
    std::fs::create_dir_all(&plan.out)?;
    let logs = plan.out.join("security-logs");
    std::fs::create_dir_all(&logs)?;
    let tls_dir =
        TempDir(std::env::temp_dir().join(format!("rpc-bench-tls-{}", std::process::id())));
    if plan.modes.contains(&SecurityMode::Tls) {
        common::write_tls_identity(&tls_dir.0)?;
    }
    let load_before = load_average();
    let started = Instant::now();
    let mut figures = Figures::new();
    let mut failures = Vec::new();
    for workload in &plan.workloads {
        for rep in 0..plan.reps {
            for contender in &contenders {
                for &mode in &plan.modes {
                    let crypto = Crypto {
                        mode,
                        tls_dir: (mode == SecurityMode::Tls).then(|| tls_dir.0.clone()),
                    };
                    let start = Instant::now();
                    let label = format!("{workload} rep {} {contender} {}", rep + 1, mode.name());
                    match run_pair(
                        plan,
                        &sizes,
                        spark.as_ref(),
                        contender,
                        workload,
                        &crypto,
                        &logs,
                        rep,
                    ) {
                        Ok(got) => {
                            let shown: Vec<String> =
                                got.iter().map(|(m, v)| format!("{m}={v:.2}")).collect();
                            println!(
                                "{label}: {} ({:.1}s)",
                                shown.join(" "),
                                start.elapsed().as_secs_f64()
                            );
                            for (metric, value) in got {
                                figures
                                    .entry((
                                        workload.clone(),
                                        metric,
                                        contender.clone(),
                                        mode.name(),
                                    ))
                                    .or_default()
                                    .push(value);
                            }
                        }
                        Err(e) => {
                            println!("{label}: FAILED: {e}");
                            failures.push(format!("{workload} {contender} {}: {e}", mode.name()));
                        }
                    }
                }
            }
        }
    }
    let medians: Medians = figures
        .iter()
        .map(|(k, v)| (k.clone(), median(v)))
        .collect();
    let context = Context {
        reps: plan.reps,
        quick: plan.quick,
        load_before,
        load_after: load_average(),
        minutes: started.elapsed().as_secs_f64() / 60.0,
        spark_version,
        contenders: &contenders,
        modes: &plan.modes,
    };
    let table = markdown(&context, &medians, &failures);
    std::fs::write(plan.out.join("security.md"), &table)?;
    let list: Vec<_> = figures
        .iter()
        .map(|((w, m, c, s), runs)| {
            json!({
                "workload": w, "metric": m, "contender": c, "security": s,
                "value": medians[&(w.clone(), m.clone(), c.clone(), *s)],
                "runs": runs,
            })
        })
        .collect();
    let targets: Vec<_> = targets(&medians, &contenders)
        .into_iter()
        .map(|t| json!({"what": t.what, "target": t.target, "value": t.value, "met": t.met()}))
        .collect();
    std::fs::write(
        plan.out.join("security.json"),
        serde_json::to_string_pretty(&json!({
            "quick": plan.quick,
            "repetitions": plan.reps,
            "figures": list,
            "targets": targets,
            "failures": failures,
        }))?,
    )?;
    println!("\n{table}");
    println!("written to {}", plan.out.join("security.md").display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} pair(s) failed: {}", failures.len(), failures.join("; ")).into())
    }
}

struct Context<'a> {
    reps: usize,
    quick: bool,
    load_before: String,
    load_after: String,
    minutes: f64,
    spark_version: Option<String>,
    contenders: &'a [String],
    modes: &'a [SecurityMode],
}

/// One of the ratios the issue targets.
struct Target {
    what: String,
    /// `>= x` or `<= x`.
    target: String,
    value: Option<f64>,
}

impl Target {
    fn met(&self) -> Option<bool> {
        let v = self.value?;
        let (op, x) = self.target.split_once(' ')?;
        let x: f64 = x.trim_end_matches('x').parse().ok()?;
        Some(if op == ">=" { v >= x } else { v <= x })
    }
}

fn get(m: &Medians, w: &str, metric: &str, c: &str, s: &'static str) -> Option<f64> {
    m.get(&(w.to_owned(), metric.to_owned(), c.to_owned(), s))
        .copied()
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Issue 12's targets, for each of our contenders present.
fn targets(m: &Medians, contenders: &[String]) -> Vec<Target> {
    let mut out = Vec::new();
    for c in contenders.iter().filter(|c| *c != "spark") {
        out.push(Target {
            what: format!("W4 GiB/s: {c} aes-gcm ÷ spark aes-gcm"),
            target: ">= 3x".into(),
            value: div(
                get(m, "W4", "gib_per_s", c, "aes-gcm"),
                get(m, "W4", "gib_per_s", "spark", "aes-gcm"),
            ),
        });
        out.push(Target {
            what: format!("W4 GiB/s: {c} tls ÷ {c} plain"),
            target: ">= 0.5x".into(),
            value: div(
                get(m, "W4", "gib_per_s", c, "tls"),
                get(m, "W4", "gib_per_s", c, "plain"),
            ),
        });
        out.push(Target {
            what: format!("W1 p50: {c} aes-gcm ÷ {c} plain"),
            target: "<= 1.2x".into(),
            value: div(
                get(m, "W1", "p50_us", c, "aes-gcm"),
                get(m, "W1", "p50_us", c, "plain"),
            ),
        });
    }
    out
}

fn markdown(cx: &Context<'_>, m: &Medians, failures: &[String]) -> String {
    let mut s = format!(
        "# W1, W2, W4 with connection security\n\n\
         `rpc-bench security`: medians of {} repetition(s){}, interleaved (each repetition \
         runs every contender in every mode, in turn), client and server in separate processes \
         on 127.0.0.1. Each cell: the median (its ratio to the same contender in plain). \
         Ratios above 1 are faster for rates and slower for latencies and RSS.\n\n\
         - plain: no authentication, no encryption;\n\
         - aes-gcm: Spark's AES authentication v2, then AES-GCM on every byte \
         (`Security::secret`; Spark: `spark.network.crypto.enabled`, `authEngineVersion=2`, \
         `cipher=AES/GCM/NoPadding`);\n\
         - aes-ctr: v1 and AES-CTR (`AuthMechanism::spark_aes_default`; Spark's defaults);\n\
         - tls: TLS with a self-signed ECDSA P-256 certificate made for the run (rustls here; \
         Spark's `spark.ssl.rpc.*` PEM configuration, on the JDK's provider).\n\n\
         Spark: {} through `bench/java/SparkBench.java` (TransportServer / TransportClient, \
         NIO, 2 threads a side); W1 is `sendRpcSync`, W2 `sendRpc` with 64 in flight, W4 a \
         stream of a block held in a direct buffer. Machine: {} cores, shared with other \
         work; load average {} at the start, {} at the end; {:.1} minutes.\n\n",
        cx.reps,
        if cx.quick { ", --quick sizes" } else { "" },
        cx.spark_version
            .as_deref()
            .map_or("not run".to_owned(), |v| format!("Spark {v}")),
        std::thread::available_parallelism().map_or(0, usize::from),
        cx.load_before,
        cx.load_after,
        cx.minutes,
    );
    if cx.quick {
        s += "**A --quick run**: small sizes, one repetition, and Spark's JVMs start fast (C1 \
              only, serial GC) rather than run fast: it checks the pairs work; its figures and \
              targets mean nothing.\n\n";
    }
    s += "## Targets (issue 12)\n\n| ratio | target | value | met |\n|---|---|---|---|\n";
    for t in targets(m, cx.contenders) {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            t.what,
            t.target,
            t.value.map_or("-".to_owned(), |v| format!("{v:.2}x")),
            match t.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        );
    }
    s += "\n## Medians\n\n| workload | metric | contender |";
    for mode in cx.modes {
        s += &format!(" {} |", mode.name());
    }
    s += "\n|---|---|---|";
    for _ in cx.modes {
        s += "---|";
    }
    s += "\n";
    let mut rows: Vec<(String, String)> = m
        .keys()
        .map(|(w, metric, _, _)| (w.clone(), metric.clone()))
        .collect();
    rows.dedup();
    for (w, metric) in rows {
        for c in cx.contenders {
            if !cx
                .modes
                .iter()
                .any(|mode| get(m, &w, &metric, c, mode.name()).is_some())
            {
                continue;
            }
            s += &format!("| {w} | {metric} | {c} |");
            let plain = get(m, &w, &metric, c, "plain");
            for mode in cx.modes {
                match get(m, &w, &metric, c, mode.name()) {
                    Some(v) => match div(Some(v), plain) {
                        Some(r) if *mode != SecurityMode::Plain => {
                            s += &format!(" {} ({r:.2}) |", number(v))
                        }
                        _ => s += &format!(" {} |", number(v)),
                    },
                    None => s += " - |",
                }
            }
            s += "\n";
        }
    }
    if !failures.is_empty() {
        s += "\n## Failures\n\n";
        for f in failures {
            s += &format!("- {f}\n");
        }
    }
    s
}
