//! A server process for the conformance suite's hostile-peer tests (`hostile_accept.rs`),
//! which attack it with raw sockets and read its counters.
//!
//! ```text
//! rpc-hostile-server <tokio|async-std> <open-file-limit> <max-connections>
//! ```
//!
//! Lowers its open-file limit (`RLIMIT_NOFILE`) to `<open-file-limit>` before anything else,
//! so the tests can exhaust its descriptors cheaply, counts what it logs at `INFO` and above
//! (what a default log filter prints), then starts on the named adapter:
//!
//! - a `TransportServer` on `127.0.0.1:0` answering every RPC with its own body, and
//! - a server-mode `RpcEnv` on `127.0.0.1:0` with no endpoints,
//!
//! both with `max_connections` set to `<max-connections>`, and prints
//! `ports <transport> <env>` on stdout. Each line `stats` on stdin is answered with a line
//! `stats key=value ...`: the transport server's `ServerStats`, the env's `EnvStats::failed`,
//! failed accepts and open connections of the env's server, and the lines and bytes logged so
//! far. The process exits when its stdin closes, so it
//! never outlives the test that started it.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rpc_tokio::{
    RpcEnv, RpcEnvConfig, RpcHandler, RpcResponder, Runtime, TransportClient, TransportConfig,
    TransportServer,
};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// Counts the events a default filter (`INFO`) would print, and their size as a line.
#[derive(Default)]
struct LogCounter {
    lines: AtomicU64,
    bytes: AtomicU64,
}

/// Renders an event's fields as `name=value` pairs.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for &'static LogCounter {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && *metadata.level() <= Level::INFO
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        // A formatted line: timestamp and level (about 32 bytes), target, fields.
        let mut line = Line(String::new());
        event.record(&mut line);
        let bytes = 32 + event.metadata().target().len() + line.0.len() + 1;
        self.lines.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// Answers every RPC with its own body.
struct Echo;

impl RpcHandler for Echo {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = responder.reply(message);
    }
}

/// Prints a line on stdout at once (the suite reads them as they come).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .expect("stdout");
}

/// Starts both servers, then answers `stats` lines until stdin closes.
fn serve(runtime: Arc<dyn Runtime>, max_connections: usize, logs: &'static LogCounter) {
    let config = TransportConfig::builder()
        .with_max_connections(max_connections)
        .build()
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = TransportServer::bind(runtime.clone(), any, Arc::new(Echo), config.clone())
        .expect("binding the transport server");
    let env = RpcEnv::create(
        runtime,
        RpcEnvConfig::server("hostile", "127.0.0.1", 0)
            .with_transport(config)
            .build()
            .unwrap(),
    )
    .expect("starting the env");
    let env_port = env.address().expect("a server-mode env").port;
    say(&format!("ports {} {env_port}", server.local_addr().port()));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "stats" {
            let s = server.stats();
            let env_server = env.server_stats().expect("a server-mode env");
            say(&format!(
                "stats accepted={} refused={} accept_errors={} open={} protocol_errors={} \
                 failed={} unmatched_replies={} env_failed={} env_accept_errors={} env_open={} \
                 log_lines={} log_bytes={}",
                s.accepted,
                s.refused,
                s.accept_errors,
                s.open,
                s.protocol_errors,
                s.failed,
                s.unmatched_replies,
                env.stats().failed,
                env_server.accept_errors,
                env_server.open,
                logs.lines.load(Ordering::Relaxed),
                logs.bytes.load(Ordering::Relaxed),
            ));
        }
    }
    std::process::exit(0);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rpc-hostile-server <tokio|async-std> <open-file-limit> <max-connections>";
    let adapter = args.next().expect(usage);
    let limit: u64 = args.next().expect(usage).parse().expect(usage);
    let max_connections: usize = args.next().expect(usage).parse().expect(usage);

    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: hard,
        },
    )
    .expect("lowering the open-file limit");

    let logs: &'static LogCounter = Box::leak(Box::default());
    tracing::subscriber::set_global_default(logs).expect("the only subscriber");

    match adapter.as_str() {
        "tokio" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let runtime = rt.block_on(async { rpc_tokio::runtime() });
            // The runtime's workers run the servers; this thread reads stdin.
            serve(runtime, max_connections, logs);
        }
        "async-std" => serve(rpc_async_std::runtime(), max_connections, logs),
        other => panic!("unknown adapter {other:?}; {usage}"),
    }
}
