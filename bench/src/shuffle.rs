//! `rpc-bench shuffle`: W9, reducers fetching their shuffle blocks from a shuffle service:
//! from Spark's own external shuffle service (`tests/interop/ShufflePeer.java server`: Spark's
//! `ExternalBlockHandler` on Spark's transport, as the standalone `ExternalShuffleService`
//! builds it) and from ours (`rpc_shuffle::server::ShuffleService` on rpc-tokio), in the same
//! run, interleaved.
//!
//! ```text
//!   data (written once, page-cached): 64 map outputs x 8 reduce partitions of 2 MiB, sort-
//!     shuffle files (shuffle_0_M_0.data + .index) where an executor with one local dir and
//!     64 sub-dirs puts them (Spark's ExecutorDiskUtils layout); 1 GiB in all
//!   server process: Spark's ESS (java ShufflePeer server) | ours (rpc-bench shuffle-server)
//!   client process (ours, the same for both servers: rpc-bench shuffle-client): registers
//!     the executor, then, reducer after reducer, reads that reducer's 64 blocks with one
//!     ShuffleReader (48 MiB in flight, Spark's spark.reducer.maxSizeInFlight); checks each
//!     block's length and a few of its bytes, then drops it. One untimed pass first (page
//!     cache, the JVM's JIT), then the timed pass.
//!   figures: GiB/s, server CPU seconds per GiB (utime + stime of the server process over the
//!     timed pass), client and server peak RSS (VmHWM)
//! ```
//!
//! The client is ours for both servers, so the servers are what is compared.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_shuffle::client::{RemoteBlocks, ShuffleClient, ShuffleClientConfig};
use rpc_shuffle::protocol::{
    executor_file_path, shuffle_data_file, shuffle_index_file, BlockId, ExecutorShuffleInfo,
};
use rpc_shuffle::server::ShuffleService;
use rpc_tokio::BlockFetchConfig;
use serde_json::{json, Value};

use crate::common::{cpu_seconds, vm_hwm_kib};
use crate::harness::{free_ports, median, number, Server};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The contenders of W9.
pub(crate) const CONTENDERS: [&str; 2] = ["ours", "spark"];

/// The executor the files belong to, and how many sub-directories its dirs have.
pub(crate) const APP: &str = "app-bench";
pub(crate) const EXEC: &str = "0";
pub(crate) const SUB_DIRS: i32 = 64;
const SHUFFLE_MANAGER: &str = "org.apache.spark.shuffle.sort.SortShuffleManager";

/// Spark's `spark.reducer.maxSizeInFlight`.
const MAX_BYTES_IN_FLIGHT: u64 = 48 << 20;

/// The shuffle a run fetches: `maps` map outputs of `reducers` partitions of `block` bytes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The service's root (Spark's `spark.local.dir`); the executor's dir lies under it.
    pub(crate) root: PathBuf,
    pub(crate) maps: usize,
    pub(crate) reducers: usize,
    pub(crate) block: usize,
}

/// The byte at `offset` of block (`map`, `reduce`): a pattern shifted per block, so a block
/// served from the wrong offsets or the wrong file shows.
fn pattern(map: usize, reduce: usize, offset: usize) -> u8 {
    ((offset + 31 * map + 7 * reduce) % 241) as u8
}

impl Layout {
    pub(crate) fn new(quick: bool) -> Self {
        // 1 GiB in all: 64 x 8 blocks of 2 MiB; a smoke run moves 16 MiB.
        let (maps, reducers, block) = if quick {
            (16, 8, 128 << 10)
        } else {
            (64, 8, 2 << 20)
        };
        let root =
            std::env::temp_dir().join(format!("rpc-bench-shuffle-{maps}x{reducers}x{block}"));
        Self {
            root,
            maps,
            reducers,
            block,
        }
    }

    /// The executor's one local dir, as Spark names them.
    pub(crate) fn local_dir(&self) -> PathBuf {
        self.root.join("blockmgr-bench")
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        (self.maps * self.reducers * self.block) as u64
    }

    fn path(&self, file: &str) -> Result<PathBuf, Error> {
        let dirs = [self.local_dir().display().to_string()];
        executor_file_path(&dirs, SUB_DIRS, file).ok_or_else(|| "no file path".into())
    }

    /// Writes the map outputs unless a complete set is there, then reads them all once so
    /// they are in the page cache.
    pub(crate) fn ensure(&self) -> Result<(), Error> {
        let marker = self.root.join("complete-v2");
        if !marker.is_file() {
            let _ = std::fs::remove_dir_all(&self.root);
            // One period of the pattern more than a block: block (m, r) is a slice of it.
            let piece: Vec<u8> = (0..self.block + 241).map(|i| (i % 241) as u8).collect();
            for map in 0..self.maps {
                let data = self.path(&shuffle_data_file(0, map as i64))?;
                let index = self.path(&shuffle_index_file(0, map as i64))?;
                for p in [&data, &index] {
                    std::fs::create_dir_all(p.parent().ok_or("a file path has a parent")?)?;
                }
                let mut out = std::io::BufWriter::new(std::fs::File::create(&data)?);
                let mut offsets = Vec::with_capacity(8 * (self.reducers + 1));
                offsets.extend_from_slice(&0i64.to_be_bytes());
                for r in 0..self.reducers {
                    let shift = usize::from(pattern(map, r, 0));
                    out.write_all(&piece[shift..shift + self.block])?;
                    offsets.extend_from_slice(&(((r + 1) * self.block) as i64).to_be_bytes());
                }
                out.flush()?;
                std::fs::write(&index, offsets)?;
            }
            std::fs::write(&marker, b"")?;
        }
        for map in 0..self.maps as i64 {
            for file in [shuffle_data_file(0, map), shuffle_index_file(0, map)] {
                let _ = std::fs::read(self.path(&file)?)?;
            }
        }
        Ok(())
    }

    /// The block ids reducer `r` fetches, with their sizes (as its map statuses tell it).
    pub(crate) fn reducer_blocks(&self, r: usize) -> Vec<(String, u64)> {
        (0..self.maps)
            .map(|m| (format!("shuffle_0_{m}_{r}"), self.block as u64))
            .collect()
    }

    /// Checks a fetched block: its length, and its first, middle and last bytes.
    fn check(&self, block_id: &str, bytes: &[u8]) -> Result<(), Error> {
        let Some(BlockId::Shuffle {
            map_id, reduce_id, ..
        }) = BlockId::parse(block_id)
        else {
            return Err(format!("{block_id}: not a shuffle block id").into());
        };
        if bytes.len() != self.block {
            return Err(format!("{block_id}: {} bytes, not {}", bytes.len(), self.block).into());
        }
        let (m, r) = (map_id as usize, reduce_id as usize);
        for at in [0, bytes.len() / 2, bytes.len() - 1] {
            if bytes[at] != pattern(m, r, at) {
                return Err(format!("{block_id}: wrong byte at {at}").into());
            }
        }
        Ok(())
    }
}

/// What `rpc-bench shuffle` runs.
pub(crate) struct Plan {
    pub(crate) contenders: Vec<String>,
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) out: PathBuf,
    /// Fetch each block with a stream request (Spark's fetch to disk) instead of a chunk
    /// fetch: the path on which our service sends file bytes with `sendfile`.
    pub(crate) streams: bool,
}

// ---------------------------------------------------------------------------------------
// The processes.

/// `rpc-bench shuffle-server --port P --root DIR`: our shuffle service, rooted at DIR, on
/// rpc-tokio (a multi-threaded tokio runtime of 2 workers), until killed.
pub(crate) fn server(port: u16, root: PathBuf) -> Result<(), Error> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(async move {
        let service = Arc::new(ShuffleService::builder().with_local_dir(root).build()?);
        let _server = rpc_tokio::TransportServer::bind(
            rpc_tokio::runtime(),
            ([127, 0, 0, 1], port).into(),
            service,
            rpc_tokio::TransportConfig::default(),
        )?;
        crate::ready();
        futures::future::pending::<()>().await;
        Ok(())
    })
}

/// Prints one figure of W9 as a machine-readable line.
#[allow(clippy::print_stdout)]
fn result(contender: &str, metric: &str, value: f64) {
    let line = json!({
        "contender": contender,
        "workload": "W9",
        "metric": metric,
        "value": value,
    });
    println!("RESULT {line}");
}

/// Reads every block of every reducer, reducer after reducer, one reader per reducer (as
/// each reduce task reads its partition): the bytes read.
async fn pass(client: &ShuffleClient, addr: SocketAddr, layout: &Layout) -> Result<u64, Error> {
    let mut total = 0u64;
    for r in 0..layout.reducers {
        let mut reader = client.reader(vec![RemoteBlocks {
            addr,
            exec_id: EXEC.to_owned(),
            blocks: layout.reducer_blocks(r),
        }]);
        let mut blocks = 0;
        while let Some(block) = reader.next_block().await {
            let bytes = block
                .result
                .map_err(|e| format!("{}: {e}", block.block_id))?;
            layout.check(&block.block_id, &bytes)?;
            total += bytes.len() as u64;
            blocks += 1;
        }
        if blocks != layout.maps {
            return Err(format!("reducer {r}: {blocks} blocks, not {}", layout.maps).into());
        }
    }
    Ok(total)
}

/// `rpc-bench shuffle-client --port P --contender C [--server-pid PID] [--quick] [--streams]`:
/// registers the executor with the service at P, makes an untimed pass over every block,
/// then a timed one, and prints W9's figures. With `streams`, blocks are fetched with stream
/// requests rather than chunk fetches.
pub(crate) fn client(
    port: u16,
    contender: String,
    server_pid: Option<u32>,
    quick: bool,
    streams: bool,
) -> Result<(), Error> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(async move {
        let layout = Layout::new(quick);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let fetch = BlockFetchConfig::builder()
            .with_fetch_as_streams(streams)
            .build()?;
        let config = ShuffleClientConfig::builder()
            .with_max_bytes_in_flight(MAX_BYTES_IN_FLIGHT)
            .with_fetch(fetch)
            .build()?;
        let client = ShuffleClient::new(rpc_tokio::runtime(), APP, config)?;
        let info = ExecutorShuffleInfo {
            local_dirs: vec![layout.local_dir().display().to_string()],
            sub_dirs_per_local_dir: SUB_DIRS,
            shuffle_manager: SHUFFLE_MANAGER.into(),
        };
        client.register_executor(addr, EXEC, info).await?;
        // The warm-up: page cache, connection, the JVM's JIT.
        pass(&client, addr, &layout).await?;
        let cpu_before = server_pid.and_then(cpu_seconds);
        let own_before = cpu_seconds(std::process::id());
        let start = Instant::now();
        let bytes = pass(&client, addr, &layout).await?;
        let elapsed = start.elapsed();
        let cpu_after = server_pid.and_then(cpu_seconds);
        let own_after = cpu_seconds(std::process::id());
        let gib = bytes as f64 / (1u64 << 30) as f64;
        result(&contender, "gib_per_s", gib / elapsed.as_secs_f64());
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            result(&contender, "server_cpu_s_per_gib", (after - before) / gib);
        }
        if let (Some(before), Some(after)) = (own_before, own_after) {
            result(&contender, "client_cpu_s_per_gib", (after - before) / gib);
        }
        if let Some(kib) = vm_hwm_kib("self") {
            result(&contender, "client_peak_rss_mib", kib as f64 / 1024.0);
        }
        if let Some(kib) = server_pid.and_then(|p| vm_hwm_kib(&p.to_string())) {
            result(&contender, "server_peak_rss_mib", kib as f64 / 1024.0);
        }
        client.close();
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The harness.

/// Spawns `server` (stdin a pipe kept open: ShufflePeer serves until it closes), waits up to
/// `ready_limit` for its `READY` or `PORT n` line, runs the client `client(server pid)` makes
/// (killed past `limit`), kills the server, and returns the client's `RESULT` figures.
fn run_pair(
    mut server: Command,
    client: impl FnOnce(u32) -> Command,
    ready_limit: Duration,
    limit: Duration,
    what: &str,
) -> Result<Vec<(String, f64)>, Error> {
    let mut server = Server(
        server
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = server.0.stdout.take().ok_or("no server stdout")?;
    let (tx, rx) = mpsc::channel();
    // Reads the server's stdout to its end, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + ready_limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.trim() == "READY" || line.starts_with("PORT ") => break,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("{what}: the server was not ready in {ready_limit:?}").into())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{what}: the server exited before it was ready").into())
            }
        }
    }
    let figures = crate::harness::run_client(client(server.0.id()), limit, what);
    drop(server);
    figures
}

/// The machine's load averages (1, 5, 15 minutes), from `/proc/loadavg`.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// (metric, contender) -> the figure of each repetition.
type Figures = BTreeMap<(String, String), Vec<f64>>;

/// Runs W9 and writes `shuffle.md` and `shuffle.json` under `plan.out`.
#[allow(clippy::print_stdout)]
pub(crate) fn run(plan: &Plan) -> Result<(), Error> {
    let layout = Layout::new(plan.quick);
    let root = {
        std::fs::create_dir_all(&layout.root)?;
        // Spark's LocalDirValidator compares canonical paths: give both services the real one.
        std::fs::canonicalize(&layout.root)?
    };
    let layout = Layout { root, ..layout };
    println!(
        "preparing {} ({} maps x {} reducers x {} bytes, page cache)",
        layout.root.display(),
        layout.maps,
        layout.reducers,
        layout.block
    );
    layout.ensure()?;
    let logs = plan.out.join("shuffle-logs");
    std::fs::create_dir_all(&logs)?;
    let mut contenders = plan.contenders.clone();
    let mut spark = None;
    if contenders.iter().any(|c| c == "spark") {
        match crate::spark::locate_shuffle_peer() {
            Ok(s) => spark = Some(s),
            Err(why) => {
                println!("SKIPPED: the spark contender: {why}");
                contenders.retain(|c| c != "spark");
            }
        }
    }
    let load_before = load();
    let exe = std::env::current_exe()?;
    let mut figures = Figures::new();
    let mut failures = Vec::new();
    let limit = Duration::from_secs(if plan.quick { 60 } else { 600 });
    for rep in 0..plan.reps {
        for contender in &contenders {
            let port = free_ports()?;
            let server = match (contender.as_str(), &spark) {
                ("spark", Some(spark)) => {
                    let log = logs.join(format!("spark-server-{}.log", rep + 1));
                    spark.shuffle_server(port, &layout.root, plan.quick, &log)?
                }
                _ => {
                    let mut c = Command::new(&exe);
                    c.args(["shuffle-server", "--port", &port.to_string(), "--root"])
                        .arg(&layout.root);
                    c
                }
            };
            let client = |pid: u32| {
                let mut c = Command::new(&exe);
                c.args([
                    "shuffle-client",
                    "--port",
                    &port.to_string(),
                    "--contender",
                    contender,
                    "--server-pid",
                    &pid.to_string(),
                ])
                .stdin(Stdio::null());
                if plan.quick {
                    c.arg("--quick");
                }
                if plan.streams {
                    c.arg("--streams");
                }
                c
            };
            let start = Instant::now();
            let what = format!("W9 {contender}");
            match run_pair(server, client, Duration::from_secs(60), limit, &what) {
                Ok(got) => {
                    let shown: Vec<String> =
                        got.iter().map(|(m, v)| format!("{m}={v:.3}")).collect();
                    println!(
                        "W9 rep {} {contender}: {} ({:.1}s)",
                        rep + 1,
                        shown.join(" "),
                        start.elapsed().as_secs_f64()
                    );
                    for (metric, value) in got {
                        figures
                            .entry((metric, contender.clone()))
                            .or_default()
                            .push(value);
                    }
                }
                Err(e) => {
                    println!("W9 rep {} {contender}: FAILED: {e}", rep + 1);
                    failures.push(format!("{contender}: {e}"));
                }
            }
        }
    }
    let load_after = load();
    let medians: BTreeMap<_, _> = figures
        .iter()
        .map(|(k, v)| (k.clone(), median(v)))
        .collect();
    let context = Context {
        layout: &layout,
        contenders: &contenders,
        spark_version: spark.as_ref().map(|s| s.version.clone()),
        load: (load_before, load_after),
    };
    let table = markdown(plan, &context, &figures, &medians);
    std::fs::create_dir_all(&plan.out)?;
    std::fs::write(plan.out.join("shuffle.md"), &table)?;
    std::fs::write(
        plan.out.join("shuffle.json"),
        serde_json::to_string_pretty(&report_json(plan, &context, &figures, &medians, &failures))?,
    )?;
    println!("\n{table}");
    println!("written to {}", plan.out.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} pair(s) failed: {}", failures.len(), failures.join("; ")).into())
    }
}

/// What the report says besides the figures.
struct Context<'a> {
    layout: &'a Layout,
    contenders: &'a [String],
    spark_version: Option<String>,
    load: (String, String),
}

/// The metrics, in table order.
const METRICS: [&str; 5] = [
    "gib_per_s",
    "server_cpu_s_per_gib",
    "server_peak_rss_mib",
    "client_peak_rss_mib",
    "client_cpu_s_per_gib",
];

fn ours_over_spark(medians: &BTreeMap<(String, String), f64>, metric: &str) -> Option<f64> {
    let ours = medians.get(&(metric.to_owned(), "ours".to_owned()))?;
    let spark = medians.get(&(metric.to_owned(), "spark".to_owned()))?;
    (*spark != 0.0).then(|| ours / spark)
}

fn markdown(
    plan: &Plan,
    context: &Context<'_>,
    figures: &Figures,
    medians: &BTreeMap<(String, String), f64>,
) -> String {
    let l = context.layout;
    let mut s = format!(
        "W9: reducers fetching sort-shuffle blocks from a shuffle service, {} maps x {} \
         reducers x {} KiB ({} MiB), reducer after reducer, {} MiB in flight, blocks \
         fetched as {}; our client \
         (`rpc_shuffle::client::ShuffleReader`) against our service \
         (`rpc_shuffle::server::ShuffleService`, rpc-tokio, 2 workers) and Spark's \
         (`ExternalBlockHandler`, Spark {}). Medians of {} repetition(s){}, one untimed \
         pass first. Load average (1, 5, 15 min) before: {}; after: {}.\n\n",
        l.maps,
        l.reducers,
        l.block >> 10,
        l.total_bytes() >> 20,
        MAX_BYTES_IN_FLIGHT >> 20,
        if plan.streams {
            "stream requests (`--streams`)"
        } else {
            "chunk fetches"
        },
        context.spark_version.as_deref().unwrap_or("-"),
        plan.reps,
        if plan.quick { ", --quick sizes" } else { "" },
        context.load.0,
        context.load.1,
    );
    s += "| metric |";
    for c in context.contenders {
        s += &format!(" {c} |");
    }
    s += " ours / spark |\n|---|";
    for _ in context.contenders {
        s += "---|";
    }
    s += "---|\n";
    for metric in METRICS {
        s += &format!("| {metric} |");
        for c in context.contenders {
            match (
                medians.get(&(metric.to_owned(), c.clone())),
                figures.get(&(metric.to_owned(), c.clone())),
            ) {
                (Some(m), Some(runs)) => {
                    let runs: Vec<String> = runs.iter().map(|v| number(*v)).collect();
                    s += &format!(" {} ({}) |", number(*m), runs.join(", "));
                }
                _ => s += " - |",
            }
        }
        match ours_over_spark(medians, metric) {
            Some(r) => s += &format!(" {r:.2} |\n"),
            None => s += " - |\n",
        }
    }
    s += "\nEach cell: median (every repetition).\n";
    if let (Some(t), Some(c)) = (
        ours_over_spark(medians, "gib_per_s"),
        ours_over_spark(medians, "server_cpu_s_per_gib"),
    ) {
        s += &format!(
            "\nIssue 14's target, at least 2x Spark's throughput at no more than half its \
             server CPU per GiB: throughput {t:.2}x ({}), server CPU per GiB {c:.2}x ({}).\n",
            if t >= 2.0 { "met" } else { "not met" },
            if c <= 0.5 { "met" } else { "not met" },
        );
        if plan.quick {
            s += "(A --quick run checks that the pairs work; its figures are not measurements.)\n";
        }
    }
    s
}

fn report_json(
    plan: &Plan,
    context: &Context<'_>,
    figures: &Figures,
    medians: &BTreeMap<(String, String), f64>,
    failures: &[String],
) -> Value {
    let list: Vec<Value> = figures
        .iter()
        .map(|((m, c), runs)| {
            json!({
                "workload": "W9",
                "metric": m,
                "contender": c,
                "value": medians[&(m.clone(), c.clone())],
                "runs": runs,
                "ratio_to_spark": ours_over_spark(medians, m).filter(|_| c == "ours"),
            })
        })
        .collect();
    let l = context.layout;
    json!({
        "quick": plan.quick,
        "repetitions": plan.reps,
        "maps": l.maps,
        "reducers": l.reducers,
        "block_bytes": l.block,
        "max_bytes_in_flight": MAX_BYTES_IN_FLIGHT,
        "fetch_as_streams": plan.streams,
        "spark_version": context.spark_version,
        "load_before": context.load.0,
        "load_after": context.load.1,
        "figures": list,
        "failures": failures,
    })
}

/// The default output directory's path, for `--out`.
pub(crate) fn default_out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}
