//! What the service has done: counters, and a snapshot of them for users.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::ShuffleServiceError;

/// The service's counters, updated as it works.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) registrations: AtomicU64,
    pub(crate) streams_opened: AtomicU64,
    pub(crate) blocks_served: AtomicU64,
    pub(crate) bytes_served: AtomicU64,
    pub(crate) block_failures: AtomicU64,
    pub(crate) requests_refused: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) blocks_removed: AtomicU64,
}

impl Counters {
    /// Counts a refused request.
    pub(crate) fn refused(&self, error: &ShuffleServiceError) {
        self.requests_refused.fetch_add(1, Ordering::Relaxed);
        if matches!(error, ShuffleServiceError::Unauthorized { .. }) {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(
        &self,
        registered_executors: u64,
        open_streams: u64,
        index_cache_entries: u64,
        index_cache_bytes: u64,
    ) -> ShuffleServiceMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShuffleServiceMetrics {
            registered_executors,
            registrations: get(&self.registrations),
            open_streams,
            streams_opened: get(&self.streams_opened),
            blocks_served: get(&self.blocks_served),
            bytes_served: get(&self.bytes_served),
            block_failures: get(&self.block_failures),
            requests_refused: get(&self.requests_refused),
            unauthorized: get(&self.unauthorized),
            blocks_removed: get(&self.blocks_removed),
            index_cache_entries,
            index_cache_bytes,
        }
    }
}

/// A snapshot of what a [`ShuffleService`](super::ShuffleService) has done since it started,
/// from [`ShuffleService::metrics`](super::ShuffleService::metrics). Counters only grow;
/// the others are current values.
///
/// ```
/// # fn demo(service: &rpc_shuffle::server::ShuffleService) {
/// let m = service.metrics();
/// println!("{} executors, {} bytes served", m.registered_executors, m.bytes_served);
/// print!("{}", m.to_prometheus()); // text exposition format, for a /metrics endpoint
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShuffleServiceMetrics {
    /// Executors registered now (including reloaded ones).
    pub registered_executors: u64,
    /// `RegisterExecutor`s accepted (counter).
    pub registrations: u64,
    /// Streams registered and not yet fully read or released by their connection's close.
    pub open_streams: u64,
    /// Streams registered by fetches (counter).
    pub streams_opened: u64,
    /// Chunks handed to the transport (a batch chunk counts once) (counter).
    pub blocks_served: u64,
    /// Bytes of those chunks (counter).
    pub bytes_served: u64,
    /// Chunks that could not be served: file missing, corrupt index… (counter).
    pub block_failures: u64,
    /// Requests and uploads refused: answered with a failure (including unauthorized
    /// ones), or pushed blocks answered `TOO_LATE_BLOCK_PUSH` (counter).
    pub requests_refused: u64,
    /// Requests refused because they named another application than the one the
    /// connection authenticated as (counter).
    pub unauthorized: u64,
    /// Files deleted by `RemoveBlocks` (counter).
    pub blocks_removed: u64,
    /// Index files in the cache.
    pub index_cache_entries: u64,
    /// Their weight in bytes, as Spark weighs them.
    pub index_cache_bytes: u64,
}

impl ShuffleServiceMetrics {
    /// The metrics in Prometheus' text exposition format, each named
    /// `spark_shuffle_service_<field>` (counters end in `_total`).
    pub fn to_prometheus(&self) -> String {
        let rows: [(&str, &str, &str, u64); 12] = [
            (
                "registered_executors",
                "gauge",
                "Executors registered now.",
                self.registered_executors,
            ),
            (
                "registrations_total",
                "counter",
                "RegisterExecutor messages accepted.",
                self.registrations,
            ),
            (
                "open_streams",
                "gauge",
                "Streams of blocks open.",
                self.open_streams,
            ),
            (
                "streams_opened_total",
                "counter",
                "Streams of blocks registered.",
                self.streams_opened,
            ),
            (
                "blocks_served_total",
                "counter",
                "Chunks handed to the transport.",
                self.blocks_served,
            ),
            (
                "bytes_served_total",
                "counter",
                "Bytes of the chunks served.",
                self.bytes_served,
            ),
            (
                "block_failures_total",
                "counter",
                "Chunks that could not be served.",
                self.block_failures,
            ),
            (
                "requests_refused_total",
                "counter",
                "Requests answered with a failure.",
                self.requests_refused,
            ),
            (
                "unauthorized_total",
                "counter",
                "Requests naming another application than the authenticated one.",
                self.unauthorized,
            ),
            (
                "blocks_removed_total",
                "counter",
                "Files deleted by RemoveBlocks.",
                self.blocks_removed,
            ),
            (
                "index_cache_entries",
                "gauge",
                "Index files cached.",
                self.index_cache_entries,
            ),
            (
                "index_cache_bytes",
                "gauge",
                "Weight of the cached index files.",
                self.index_cache_bytes,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP spark_shuffle_service_{name} {help}");
            let _ = writeln!(out, "# TYPE spark_shuffle_service_{name} {kind}");
            let _ = writeln!(out, "spark_shuffle_service_{name} {value}");
        }
        out
    }
}
