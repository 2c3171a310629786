//! [`TransportConfig`], the settings of the transport layer, and its builder.

use std::time::Duration;

use rpc_proto::{Config, ConfigError};

use crate::security::Security;

#[cfg(doc)]
use rpc_proto::ConnectionError;

/// The default of [`TransportConfig::max_connections`]: half the usual per-process limit of
/// 1,024 file descriptors, leaving the rest to files, outgoing connections and the runtime.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default [`TransportConfig::max_partial_frame_bytes`]: 256 MiB.
pub const DEFAULT_MAX_PARTIAL_FRAME_BYTES: u64 = 256 * 1024 * 1024;

/// Default [`TransportConfig::connect_timeout`]: 30 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the transport layer, validated when built. Cheap to clone.
///
/// Built with [`TransportConfig::builder`]; [`TransportConfig::default`] is what the builder
/// starts from.
///
/// ```
/// use std::time::Duration;
/// use rpc_driver::transport::TransportConfig;
///
/// # fn main() -> Result<(), rpc_proto::ConfigError> {
/// let connection = rpc_proto::Config::builder()
///     .with_idle_timeout(Some(Duration::from_secs(30)))
///     .build()?;
/// let config = TransportConfig::builder()
///     .with_connection(connection)
///     .with_connections_per_peer(2)
///     .build()?;
/// assert_eq!(config.connections_per_peer(), 2);
///
/// // A zero where zero makes no sense is an error naming the setting.
/// let error = TransportConfig::builder().with_max_connections(0).build().unwrap_err();
/// assert_eq!(error.to_string(), "max connections must be greater than zero");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TransportConfig {
    connection: Config,
    connect_timeout: Duration,
    connections_per_peer: usize,
    fast_fail_window: Duration,
    max_connections: usize,
    max_partial_frame_bytes: u64,
    security: Security,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connection: Config::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connections_per_peer: 1,
            fast_fail_window: Duration::ZERO,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_partial_frame_bytes: DEFAULT_MAX_PARTIAL_FRAME_BYTES,
            security: Security::none(),
        }
    }
}

impl TransportConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> TransportConfigBuilder {
        TransportConfigBuilder {
            config: Self::default(),
        }
    }

    /// A builder starting from this config's settings.
    pub fn to_builder(&self) -> TransportConfigBuilder {
        TransportConfigBuilder {
            config: self.clone(),
        }
    }

    /// The protocol settings of every connection.
    pub fn connection(&self) -> &Config {
        &self.connection
    }

    /// How long opening a connection may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Connections kept per peer address by a
    /// [`TransportClientFactory`](super::factory::TransportClientFactory); requests are spread
    /// over them.
    pub fn connections_per_peer(&self) -> usize {
        self.connections_per_peer
    }

    /// After a failed connect, further connects to the same address fail at once with the
    /// same error for this long (Spark's fast-fail). Zero disables it.
    pub fn fast_fail_window(&self) -> Duration {
        self.fast_fail_window
    }

    /// Connections a [`TransportServer`](super::server::TransportServer) keeps open at once;
    /// beyond it, new connections are accepted and closed at once (counted in
    /// [`ServerStats::refused`](super::server::ServerStats::refused)), so one peer cannot
    /// take every file descriptor of the process. The default, [`DEFAULT_MAX_CONNECTIONS`],
    /// suits a small machine with the usual limit of 1,024 descriptors per process; raise it
    /// (and the process's descriptor limit) for a server with more peers.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Bytes of partial frames (frames begun but not whole) a server holds across all its
    /// connections; the connection whose bytes would take the total past it is closed with
    /// [`ConnectionError::OverBudget`]. Each connection's own partial frame is bounded by
    /// [`Config::max_frame_size`] and, in time, by [`Config::frame_timeout`]. Default
    /// [`DEFAULT_MAX_PARTIAL_FRAME_BYTES`] (256 MiB, the default frame limit, so any one
    /// frame fits); a frame larger than this cannot be received by a server.
    pub fn max_partial_frame_bytes(&self) -> u64 {
        self.max_partial_frame_bytes
    }

    /// Authentication and encryption of every connection: none by default. See
    /// [`security`](crate::security).
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// This config with [`security`](TransportConfig::security) replaced (which cannot make
    /// it invalid).
    pub(crate) fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }
}

/// Builds a validated [`TransportConfig`]: from [`TransportConfig::builder`] or
/// [`TransportConfig::to_builder`].
#[derive(Debug, Clone)]
pub struct TransportConfigBuilder {
    config: TransportConfig,
}

impl TransportConfigBuilder {
    /// Sets [`TransportConfig::connection`], an already validated [`Config`].
    pub fn with_connection(mut self, config: Config) -> Self {
        self.config.connection = config;
        self
    }

    /// Sets [`TransportConfig::connect_timeout`]; above zero.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets [`TransportConfig::connections_per_peer`]; at least 1.
    pub fn with_connections_per_peer(mut self, connections: usize) -> Self {
        self.config.connections_per_peer = connections;
        self
    }

    /// Sets [`TransportConfig::fast_fail_window`]; zero disables fast-fail.
    pub fn with_fast_fail_window(mut self, window: Duration) -> Self {
        self.config.fast_fail_window = window;
        self
    }

    /// Sets [`TransportConfig::max_connections`]; at least 1.
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// Sets [`TransportConfig::max_partial_frame_bytes`]; at least 1.
    pub fn with_max_partial_frame_bytes(mut self, bytes: u64) -> Self {
        self.config.max_partial_frame_bytes = bytes;
        self
    }

    /// Sets [`TransportConfig::security`].
    pub fn with_security(mut self, security: Security) -> Self {
        self.config.security = security;
        self
    }

    /// Validates and returns the configuration: a zero where zero makes no sense is an
    /// error naming the setting.
    pub fn build(self) -> Result<TransportConfig, ConfigError> {
        let c = self.config;
        if c.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("connect timeout"));
        }
        if c.connections_per_peer == 0 {
            return Err(ConfigError::ZeroLimit("connections per peer"));
        }
        if c.max_connections == 0 {
            return Err(ConfigError::ZeroLimit("max connections"));
        }
        if c.max_partial_frame_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max partial frame bytes"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        let built = TransportConfig::builder().build().unwrap();
        let default = TransportConfig::default();
        assert_eq!(built.connect_timeout(), default.connect_timeout());
        assert_eq!(built.connections_per_peer(), 1);
        assert_eq!(built.max_connections(), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            built.max_partial_frame_bytes(),
            DEFAULT_MAX_PARTIAL_FRAME_BYTES
        );
        assert_eq!(built.fast_fail_window(), Duration::ZERO);
        assert!(!built.security().is_enabled());
    }

    #[test]
    fn rejects_zero_settings_naming_them() {
        let b = TransportConfig::builder;
        assert_eq!(
            b().with_connect_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            ConfigError::ZeroTimeout("connect timeout")
        );
        assert_eq!(
            b().with_connections_per_peer(0).build().unwrap_err(),
            ConfigError::ZeroLimit("connections per peer")
        );
        assert_eq!(
            b().with_max_connections(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max connections")
        );
        assert_eq!(
            b().with_max_partial_frame_bytes(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max partial frame bytes")
        );
        assert_eq!(
            b().with_max_partial_frame_bytes(0)
                .build()
                .unwrap_err()
                .to_string(),
            "max partial frame bytes must be greater than zero"
        );
        // Zero disables fast-fail: it is allowed.
        assert!(b().with_fast_fail_window(Duration::ZERO).build().is_ok());
    }

    #[test]
    fn to_builder_keeps_settings() {
        let config = TransportConfig::builder()
            .with_connections_per_peer(3)
            .with_max_connections(7)
            .build()
            .unwrap();
        let again = config.to_builder().with_max_connections(9).build().unwrap();
        assert_eq!(again.connections_per_peer(), 3);
        assert_eq!(again.max_connections(), 9);
    }
}
