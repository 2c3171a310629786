//! Settings of the transport layer: [`TransportConfig`] and its defaults.

use std::time::Duration;

use rpc_proto::Config;

use crate::security::Security;

/// Settings of the transport layer.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The protocol settings of every connection.
    pub connection: Config,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Connections kept per peer address by a
    /// [`TransportClientFactory`](super::factory::TransportClientFactory); requests are
    /// spread over them.
    pub connections_per_peer: usize,
    /// After a failed connect, further connects to the same address fail at once with the
    /// same error for this long (Spark's fast-fail). Zero disables it.
    pub fast_fail_window: Duration,
    /// Connections a [`TransportServer`](super::server::TransportServer) keeps open at
    /// once; beyond it, new connections are accepted and closed at once (counted in
    /// [`ServerStats::refused`](super::server::ServerStats::refused)), so one peer cannot
    /// take every file descriptor of the process. The default, [`DEFAULT_MAX_CONNECTIONS`],
    /// suits a small machine with the usual limit of 1,024 descriptors per process; raise
    /// it (and the process's descriptor limit) for a server with more peers.
    pub max_connections: usize,
    /// Bytes of partial frames (frames begun but not whole) a server holds across all its
    /// connections; the connection whose bytes would take the total past it is closed with
    /// [`ConnectionError::OverBudget`](rpc_proto::ConnectionError::OverBudget). Each
    /// connection's own partial frame is bounded by
    /// [`Config::max_frame_size`](rpc_proto::Config::max_frame_size) and, in time, by
    /// [`Config::frame_timeout`](rpc_proto::Config::frame_timeout). Default
    /// [`DEFAULT_MAX_PARTIAL_FRAME_BYTES`] (256 MiB, the default frame limit, so any one
    /// frame fits); a frame larger than this cannot be received by a server.
    pub max_partial_frame_bytes: u64,
    /// Authentication and encryption of every connection: none by default. See
    /// [`security`](crate::security).
    pub security: Security,
}

/// The default of [`TransportConfig::max_connections`]: half the usual per-process limit of
/// 1,024 file descriptors, leaving the rest to files, outgoing connections and the runtime.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default [`TransportConfig::max_partial_frame_bytes`]: 256 MiB.
pub const DEFAULT_MAX_PARTIAL_FRAME_BYTES: u64 = 256 * 1024 * 1024;

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connection: Config::default(),
            connect_timeout: Duration::from_secs(30),
            connections_per_peer: 1,
            fast_fail_window: Duration::ZERO,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_partial_frame_bytes: DEFAULT_MAX_PARTIAL_FRAME_BYTES,
            security: Security::none(),
        }
    }
}

impl TransportConfig {
    /// Sets [`connection`](TransportConfig::connection).
    pub fn with_connection(mut self, config: Config) -> Self {
        self.connection = config;
        self
    }

    /// Sets [`connect_timeout`](TransportConfig::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`connections_per_peer`](TransportConfig::connections_per_peer).
    pub fn with_connections_per_peer(mut self, connections: usize) -> Self {
        self.connections_per_peer = connections;
        self
    }

    /// Sets [`max_partial_frame_bytes`](TransportConfig::max_partial_frame_bytes) (at least 1).
    pub fn with_max_partial_frame_bytes(mut self, bytes: u64) -> Self {
        self.max_partial_frame_bytes = bytes;
        self
    }

    /// Checks the settings a server uses: a zero budget is an error naming it.
    pub fn validate(&self) -> Result<(), rpc_proto::ConfigError> {
        if self.max_partial_frame_bytes == 0 {
            return Err(rpc_proto::ConfigError::ZeroLimit("max partial frame bytes"));
        }
        if self.max_connections == 0 {
            return Err(rpc_proto::ConfigError::ZeroLimit("max connections"));
        }
        Ok(())
    }

    /// Sets [`fast_fail_window`](TransportConfig::fast_fail_window).
    pub fn with_fast_fail_window(mut self, window: Duration) -> Self {
        self.fast_fail_window = window;
        self
    }

    /// Sets [`security`](TransportConfig::security).
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Sets [`max_connections`](TransportConfig::max_connections).
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }
}
