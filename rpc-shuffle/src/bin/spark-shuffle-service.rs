//! `spark-shuffle-service`: Spark's external shuffle service, in Rust, on tokio.
//!
//! ```text
//! spark-shuffle-service --port 7337 --host 0.0.0.0 --local-dir /var/spark/local \
//!     --db /var/lib/spark/shuffle.redb --auth-secret-file /etc/spark/secret \
//!     [--config service.toml] [--metrics-port 7338] [--exit-on-stdin-close]
//! ```
//!
//! Prints `listening on <addr>` on stdout once bound; logs go to stderr (`RUST_LOG`, default
//! `info`). Stops on SIGTERM, ctrl-c, or (with `--exit-on-stdin-close`) when stdin closes.
//! See the crate's README, "Serving Spark's shuffle".

use std::fs;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rpc_proto::auth::AuthVersion;
use rpc_proto::cipher::CipherMode;
use rpc_shuffle::server::{ShuffleService, DEFAULT_INDEX_CACHE_BYTES};
use rpc_tokio::{AuthMechanism, Security, TransportConfig, TransportServer};
use serde::Deserialize;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// The environment variable that may hold the shared secret instead of a file.
const SECRET_ENV: &str = "SPARK_SHUFFLE_SECRET";

/// Spark's external shuffle service: serves the shuffle files of Spark executors that
/// register with it (spark.shuffle.service.enabled=true).
#[derive(Debug, Parser)]
#[command(name = "spark-shuffle-service", version)]
struct Cli {
    /// Port to listen on (spark.shuffle.service.port) [default: 7337; 0 picks a free port].
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long)]
    host: Option<String>,
    /// A directory executors' local dirs must lie under (their spark.local.dir); repeatable.
    #[arg(long = "local-dir", value_name = "DIR")]
    local_dirs: Vec<PathBuf>,
    /// A database file (created if missing) keeping registrations across restarts.
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// A file holding the shared secret (spark.authenticate.secret); enables authentication
    /// (SASL DIGEST-MD5 and Spark's AES protocol). Or set SPARK_SHUFFLE_SECRET.
    #[arg(long, value_name = "FILE")]
    auth_secret_file: Option<PathBuf>,
    /// The AES protocol version clients use (spark.network.crypto.authEngineVersion) [default: 1].
    #[arg(long, value_parser = ["1", "2"])]
    aes_version: Option<String>,
    /// The AES cipher clients use (spark.network.crypto.cipher: ctr = AES/CTR/NoPadding,
    /// gcm = AES/GCM/NoPadding) [default: ctr].
    #[arg(long, value_parser = ["ctr", "gcm"])]
    aes_cipher: Option<String>,
    /// Serve disk-persisted RDD blocks (spark.shuffle.service.fetch.rdd.enabled).
    #[arg(long)]
    fetch_rdd: bool,
    /// Index cache capacity in bytes (spark.shuffle.service.index.cache.size) [default: 100 MiB].
    #[arg(long, value_name = "BYTES")]
    index_cache_bytes: Option<u64>,
    /// Serve Prometheus-style metrics at http://HOST:PORT/metrics (HOST is --host).
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Exit when stdin closes (for harnesses that start the service as a child).
    #[arg(long)]
    exit_on_stdin_close: bool,
    /// A TOML file with the same keys as the long options (`port = 7337`,
    /// `local-dir = ["/a", "/b"]`, ...); options on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    port: Option<u16>,
    host: Option<String>,
    #[serde(default)]
    local_dir: Vec<PathBuf>,
    db: Option<PathBuf>,
    auth_secret_file: Option<PathBuf>,
    aes_version: Option<u8>,
    aes_cipher: Option<String>,
    fetch_rdd: Option<bool>,
    index_cache_bytes: Option<u64>,
    metrics_port: Option<u16>,
    exit_on_stdin_close: Option<bool>,
}

/// The settings, command line over file over defaults.
#[derive(Debug)]
struct Settings {
    addr: SocketAddr,
    host: String,
    local_dirs: Vec<PathBuf>,
    db: Option<PathBuf>,
    secret: Option<String>,
    mechanism: AuthMechanism,
    fetch_rdd: bool,
    index_cache_bytes: u64,
    metrics_port: Option<u16>,
    exit_on_stdin_close: bool,
}

fn settings(cli: Cli) -> Result<Settings, String> {
    let file = match &cli.config {
        Some(path) => {
            let text =
                fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| format!("config {}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let host = cli.host.or(file.host).unwrap_or_else(|| "0.0.0.0".into());
    let port = cli.port.or(file.port).unwrap_or(7337);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("address {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("address {host}:{port} resolves to nothing"))?;
    let local_dirs = if cli.local_dirs.is_empty() {
        file.local_dir
    } else {
        cli.local_dirs
    };
    let secret_file = cli.auth_secret_file.or(file.auth_secret_file);
    let secret = match secret_file {
        Some(path) => Some(read_secret(&path)?),
        None => std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
    };
    let version = match cli
        .aes_version
        .as_deref()
        .map(str::to_owned)
        .or(file.aes_version.map(|v| v.to_string()))
        .as_deref()
    {
        None | Some("1") => AuthVersion::V1,
        Some("2") => AuthVersion::V2,
        Some(other) => return Err(format!("aes-version {other}: expected 1 or 2")),
    };
    let cipher = match cli.aes_cipher.or(file.aes_cipher).as_deref() {
        None | Some("ctr") => CipherMode::Ctr,
        Some("gcm") => CipherMode::Gcm,
        Some(other) => return Err(format!("aes-cipher {other}: expected ctr or gcm")),
    };
    Ok(Settings {
        addr,
        host,
        local_dirs,
        db: cli.db.or(file.db),
        secret,
        mechanism: AuthMechanism::Aes { version, cipher },
        fetch_rdd: cli.fetch_rdd || file.fetch_rdd.unwrap_or(false),
        index_cache_bytes: cli
            .index_cache_bytes
            .or(file.index_cache_bytes)
            .unwrap_or(DEFAULT_INDEX_CACHE_BYTES),
        metrics_port: cli.metrics_port.or(file.metrics_port),
        exit_on_stdin_close: cli.exit_on_stdin_close || file.exit_on_stdin_close.unwrap_or(false),
    })
}

/// The secret in `path`, without its trailing line break.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("auth secret file {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(format!("auth secret file {} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let settings = match settings(Cli::parse()) {
        Ok(settings) => settings,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    if settings.local_dirs.is_empty() {
        warn!("no --local-dir: executors may register any directory; set --local-dir to their spark.local.dir");
    }
    let mut builder = ShuffleService::builder()
        .with_fetch_rdd(settings.fetch_rdd)
        .with_index_cache_bytes(settings.index_cache_bytes);
    for dir in &settings.local_dirs {
        builder = builder.with_local_dir(dir);
    }
    if let Some(db) = &settings.db {
        builder = builder.with_db(db);
    }
    let service = Arc::new(builder.build().map_err(|e| e.to_string())?);
    let security = match &settings.secret {
        // Never logged: only whether there is one.
        Some(secret) => Security::secret(secret.clone())
            .with_mechanism(settings.mechanism)
            .with_sasl_fallback(true),
        None => Security::none(),
    };
    info!(
        authentication = settings.secret.is_some(),
        mechanism = ?security.mechanism(),
        local_dirs = ?settings.local_dirs,
        db = ?settings.db,
        "starting the shuffle service"
    );
    let config = TransportConfig::builder()
        .with_security(security)
        .build()
        .map_err(|e| e.to_string())?;
    let server =
        TransportServer::bind(rpc_tokio::runtime(), settings.addr, service.clone(), config)
            .map_err(|e| format!("cannot listen on {}: {e}", settings.addr))?;
    if let Some(port) = settings.metrics_port {
        serve_metrics(&settings.host, port, service.clone())?;
    }
    // Watch for SIGTERM and ctrl-c before saying we are up: a harness that reads the line and
    // at once sends SIGTERM must find the handler in place, not the default (which kills).
    let mut signals = Signals::install()?;
    {
        let mut out = io::stdout().lock();
        #[allow(clippy::print_stdout)]
        let _ = writeln!(out, "listening on {}", server.local_addr());
        let _ = out.flush();
    }
    info!(addr = %server.local_addr(), "listening");

    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    if settings.exit_on_stdin_close {
        let tx = stop_tx.clone();
        // A plain thread: a read blocked on stdin must not hold up the runtime's shutdown.
        std::thread::spawn(move || {
            let mut sink = [0u8; 1024];
            let mut stdin = io::stdin().lock();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.blocking_send("stdin closed");
        });
    }
    let reason = tokio::select! {
        reason = signals.recv() => reason,
        Some(reason) = stop_rx.recv() => reason,
    };
    info!(reason, "stopping");
    server.close();
    let m = service.metrics();
    info!(
        executors = m.registered_executors,
        blocks_served = m.blocks_served,
        bytes_served = m.bytes_served,
        "stopped"
    );
    Ok(())
}

/// The signals that stop the service, watched from before it says it is listening.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind, name| signal(kind).map_err(|e| format!("cannot watch {name}: {e}"));
        Ok(Self {
            terminate: watch(SignalKind::terminate(), "SIGTERM")?,
            interrupt: watch(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> Result<Self, String> {
        Ok(Self {})
    }

    /// Waits for one of them; returns why the service stops.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "terminated",
                _ = self.interrupt.recv() => "interrupted",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

/// Serves `GET /metrics` (Prometheus text format) on a plain thread: one request per
/// connection, bounded reads, nothing else.
fn serve_metrics(host: &str, port: u16, service: Arc<ShuffleService>) -> Result<(), String> {
    let listener = TcpListener::bind((host, port))
        .map_err(|e| format!("cannot listen for metrics on {host}:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(%addr, "metrics at http://{addr}/metrics");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Err(e) = answer_metrics(stream, &service) {
                tracing::debug!("metrics request: {e}");
            }
        }
    });
    Ok(())
}

fn answer_metrics(stream: TcpStream, service: &ShuffleService) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // The request line, then headers up to the blank line; at most 8 KiB in all.
    let mut reader = io::BufReader::new(stream.try_clone()?.take(8192));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", service.metrics().to_prometheus()),
        _ => ("404 Not Found", "not found: try GET /metrics\n".to_owned()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
