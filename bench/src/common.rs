//! What every contender shares: workload sizes, the measurements, and the result lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The payload of every small request and reply (W1, W2, W3, W5, W6).
pub(crate) const PAYLOAD: usize = 32;
/// A small request's payload: [`PAYLOAD`] bytes, as `Bytes` for every contender (serde
/// writes it as one byte string; a `Vec<u8>` would go byte by byte, measuring serde's
/// per-element loop instead of the frameworks).
pub(crate) fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![7; PAYLOAD])
}

/// In-flight requests in W2.
pub(crate) const PIPELINE: usize = 64;
/// Client connections in W5.
pub(crate) const FAN_IN: usize = 64;
/// Repetitions of the W4 fetch.
pub(crate) const W4_REPS: usize = 5;

/// The sizes of one run: full (as WORKLOADS.md defines them) or `--quick`.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) warmup: usize,
    pub(crate) latency: usize,
    pub(crate) pipelined: usize,
    pub(crate) one_way: usize,
    pub(crate) fan_in_asks: usize,
    /// W8: client connections, and sequential asks on each.
    pub(crate) many_connections: usize,
    pub(crate) many_asks: usize,
    pub(crate) block: usize,
    pub(crate) file: u64,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: 20,
                latency: 200,
                pipelined: 2_000,
                one_way: 10_000,
                fan_in_asks: 20,
                many_connections: 50,
                many_asks: 20,
                block: 16 << 20,
                file: 16 << 20,
            }
        } else {
            Self {
                warmup: 2_000,
                latency: 20_000,
                pipelined: 200_000,
                one_way: 1_000_000,
                fan_in_asks: 2_000,
                many_connections: 1_000,
                many_asks: 200,
                block: 256 << 20,
                file: 1 << 30,
            }
        }
    }
}

/// The workloads W1..W8.
pub(crate) const WORKLOADS: [&str; 8] = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8"];

/// The contenders, in the order they run. `iperf3` is a reference for W4 and W7 only, run
/// when the `iperf3` program is on the PATH.
pub(crate) const CONTENDERS: [&str; 7] = [
    "rpc-tokio",
    "rpc-async-std",
    "rpc-smol",
    "tarpc",
    "spark",
    "raw",
    "iperf3",
];

/// Whether `contender` runs `workload`. Spark's transport (`bench/java/SparkBench.java`) has
/// every operation: RPCs, one-way messages, streams of a buffer and of a file.
pub(crate) fn supports(contender: &str, workload: &str) -> bool {
    match contender {
        "tarpc" => matches!(workload, "W1" | "W2" | "W3" | "W5" | "W6" | "W8"),
        "iperf3" => matches!(workload, "W4" | "W7"),
        "spark" => matches!(
            workload,
            "W1" | "W2" | "W3" | "W4" | "W5" | "W6" | "W7" | "W8"
        ),
        _ => true,
    }
}

/// Whether the server of `workload` needs the in-memory block.
pub(crate) fn needs_block(workload: &str) -> bool {
    matches!(workload, "W4" | "W6")
}

/// The server's options.
#[derive(Debug, Clone)]
pub(crate) struct ServerOpts {
    pub(crate) port: u16,
    pub(crate) block: usize,
    pub(crate) file: Option<PathBuf>,
    pub(crate) crypto: Crypto,
}

/// The connection security of a pair (`--security`, `--tls-dir`): plain unless given.
#[derive(Debug, Clone, Default)]
pub(crate) struct Crypto {
    pub(crate) mode: SecurityMode,
    /// Holds `cert.pem` and `key.pem` (the certificate is its own trust root) for TLS.
    pub(crate) tls_dir: Option<PathBuf>,
}

/// What `--security` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum SecurityMode {
    /// No authentication, no encryption: exactly the pairs of `rpc-bench all`.
    #[default]
    Plain,
    /// Spark's AES authentication v2 and AES-GCM (`Security::secret`).
    AesGcm,
    /// Spark's AES authentication v1 and AES-CTR (`AuthMechanism::spark_aes_default`).
    AesCtr,
    /// TLS (rustls here, the JDK's for Spark), no authentication.
    Tls,
}

/// Every `--security` mode, in table order.
pub(crate) const SECURITY_MODES: [&str; 4] = ["plain", "aes-gcm", "aes-ctr", "tls"];

/// The shared secret of the AES modes.
pub(crate) const SECRET: &str = "rpc-bench-secret";

impl SecurityMode {
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "plain" => Self::Plain,
            "aes-gcm" => Self::AesGcm,
            "aes-ctr" => Self::AesCtr,
            "tls" => Self::Tls,
            other => {
                return Err(format!(
                    "unknown --security {other} (one of {})",
                    SECURITY_MODES.join(", ")
                ))
            }
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::AesGcm => "aes-gcm",
            Self::AesCtr => "aes-ctr",
            Self::Tls => "tls",
        }
    }
}

impl Crypto {
    fn tls_files(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let dir = self
            .tls_dir
            .as_ref()
            .ok_or("--security tls needs --tls-dir (holding cert.pem and key.pem)")?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        Ok((read("cert.pem")?, read("key.pem")?))
    }

    /// Our `Security` for a server (`server`) or a client.
    pub(crate) fn security(&self, server: bool) -> Result<rpc_tokio::Security, String> {
        use rpc_tokio::{AuthMechanism, Security, TlsConfig};
        Ok(match self.mode {
            SecurityMode::Plain => Security::none(),
            SecurityMode::AesGcm => {
                Security::secret(SECRET).with_mechanism(AuthMechanism::aes_gcm())
            }
            SecurityMode::AesCtr => {
                Security::secret(SECRET).with_mechanism(AuthMechanism::spark_aes_default())
            }
            SecurityMode::Tls => {
                let (cert, key) = self.tls_files()?;
                let tls = if server {
                    TlsConfig::new().with_identity_pem(&cert, &key)
                } else {
                    TlsConfig::new().with_trust_pem(&cert)
                };
                Security::tls(tls.map_err(|e| e.to_string())?)
            }
        })
    }
}

/// Writes a self-signed certificate (for `localhost` and 127.0.0.1, ECDSA P-256) and its
/// PKCS#8 key as `cert.pem` and `key.pem` in `dir`.
pub(crate) fn write_tls_identity(
    dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rpc-bench");
    let cert = params.self_signed(&key)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(())
}

/// The client's options.
#[derive(Debug, Clone)]
pub(crate) struct ClientOpts {
    pub(crate) port: u16,
    pub(crate) contender: String,
    pub(crate) workload: String,
    pub(crate) sizes: Sizes,
    pub(crate) server_pid: Option<u32>,
    pub(crate) crypto: Crypto,
}

impl ClientOpts {
    pub(crate) fn control(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub(crate) fn data(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port + 1).into()
    }
}

/// Prints one figure as a machine-readable line.
#[allow(clippy::print_stdout)]
pub(crate) fn result(opts: &ClientOpts, metric: &str, value: f64) {
    let line = serde_json::json!({
        "contender": opts.contender,
        "workload": opts.workload,
        "metric": metric,
        "value": value,
    });
    println!("RESULT {line}");
}

/// The file descriptors W8 needs in one process: its connections and some to spare.
pub(crate) fn check_nofile(connections: usize) -> Result<(), String> {
    let need = connections as u64 + 64;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    match soft {
        Some(soft) if soft < need => Err(format!(
            "W8 needs {need} open files but RLIMIT_NOFILE is {soft}: raise it (ulimit -n {need})"
        )),
        _ => Ok(()),
    }
}

/// Counts the bytes W6's bulk load receives, so the latency run can report the bulk rate it
/// left the load (`bulk_gib_per_s`): each arrival is logged with its time, and the rate is
/// taken between the first and the last arrival inside the measured window. Arrivals are
/// pieces of a block for ours and raw and whole blocks for tarpc (whose call returns the
/// block at once), so tarpc's figure needs at least two blocks inside the window.
#[derive(Debug, Default)]
pub(crate) struct BulkMeter {
    log: std::sync::Mutex<Vec<(Instant, u64)>>,
}

impl BulkMeter {
    /// Logs `n` bytes arriving now.
    pub(crate) fn add(&self, n: u64) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let total = log.last().map_or(0, |(_, t)| *t) + n;
        log.push((Instant::now(), total));
    }

    /// Reports `bulk_gib_per_s` over the window `from..to` (and `bulk_bytes`, the bytes
    /// counted in it); nothing if fewer than two arrivals fell inside it.
    pub(crate) fn report(&self, opts: &ClientOpts, from: Instant, to: Instant) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let inside: Vec<&(Instant, u64)> =
            log.iter().filter(|(t, _)| *t >= from && *t <= to).collect();
        if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
            if inside.len() >= 2 && last.0 > first.0 {
                let bytes = last.1 - first.1;
                let secs = (last.0 - first.0).as_secs_f64();
                result(
                    opts,
                    "bulk_gib_per_s",
                    bytes as f64 / (1u64 << 30) as f64 / secs,
                );
                result(opts, "bulk_mib_in_window", bytes as f64 / (1 << 20) as f64);
            }
        }
    }
}

/// Latency figures of a set of round trips (µs).
pub(crate) fn latency(opts: &ClientOpts, mut samples: Vec<Duration>, with_mean: bool) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]);
    result(opts, "p50_us", at(0.50));
    result(opts, "p99_us", at(0.99));
    if with_mean {
        let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
        result(opts, "mean_us", mean);
    }
}

/// A rate figure: `count` things in `elapsed`.
pub(crate) fn rate(opts: &ClientOpts, metric: &str, count: usize, elapsed: Duration) {
    result(opts, metric, count as f64 / elapsed.as_secs_f64());
}

/// Runs `clients` (each a client's sequential round trips) all at once and reports
/// `asks_per_s`: `asks` in the time until the last one finished (W5, W8).
pub(crate) async fn concurrent_asks<F, T, E>(
    opts: &ClientOpts,
    clients: impl IntoIterator<Item = F>,
    asks: usize,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let results = futures::future::join_all(clients).await;
    let elapsed = start.elapsed();
    for r in results {
        r?;
    }
    rate(opts, "asks_per_s", asks, elapsed);
    Ok(())
}

/// Bulk figures: GiB/s of each repetition (median reported) and both processes' peak RSS.
pub(crate) fn bulk(opts: &ClientOpts, bytes: u64, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    result(
        opts,
        "gib_per_s",
        bytes as f64 / (1u64 << 30) as f64 / median.as_secs_f64(),
    );
    peak_rss(opts);
}

/// Peak RSS (VmHWM) of the client and, when known, of the server.
pub(crate) fn peak_rss(opts: &ClientOpts) {
    if let Some(kib) = vm_hwm_kib("self") {
        result(opts, "client_peak_rss_mib", kib as f64 / 1024.0);
    }
    if let Some(kib) = opts.server_pid.and_then(|p| vm_hwm_kib(&p.to_string())) {
        result(opts, "server_peak_rss_mib", kib as f64 / 1024.0);
    }
}

/// VmHWM of `/proc/<pid>/status`, in KiB.
pub(crate) fn vm_hwm_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU seconds of a process so far (`/proc/<pid>/stat`, 100 ticks a second).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Times W7's transfers and reports GiB/s and the server's CPU seconds per GiB.
pub(crate) struct FileTimer {
    cpu: Option<f64>,
    start: Instant,
}

impl FileTimer {
    pub(crate) fn start(opts: &ClientOpts) -> Self {
        Self {
            cpu: opts.server_pid.and_then(cpu_seconds),
            start: Instant::now(),
        }
    }

    pub(crate) fn finish(self, opts: &ClientOpts, bytes: u64) {
        let elapsed = self.start.elapsed();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        result(opts, "gib_per_s", gib / elapsed.as_secs_f64());
        if let (Some(before), Some(after)) = (self.cpu, opts.server_pid.and_then(cpu_seconds)) {
            result(opts, "server_cpu_s_per_gib", (after - before) / gib);
        }
        peak_rss(opts);
    }
}

/// A block of `n` pattern bytes (touched, so it is resident like a real cached block).
pub(crate) fn block(n: usize) -> bytes::Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// Makes sure `path` is a file of `n` bytes, writing it if not (writing leaves it in the page
/// cache), then reads it once so it is cached.
pub(crate) fn ensure_file(path: &std::path::Path, n: u64) -> std::io::Result<()> {
    use std::io::{Read, Write};
    if std::fs::metadata(path).map(|m| m.len()).ok() != Some(n) {
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let piece: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let mut left = n;
        while left > 0 {
            let k = left.min(piece.len() as u64) as usize;
            f.write_all(&piece[..k])?;
            left -= k as u64;
        }
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
    }
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// The default W7 file for a size.
pub(crate) fn default_file(n: u64) -> PathBuf {
    std::env::temp_dir().join(format!("rpc-bench-{n}.bin"))
}
