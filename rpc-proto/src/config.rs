//! Connection configuration, validated when built.

use std::time::Duration;

use crate::error::ConfigError;

/// The largest frame length Spark's decoder accepts: it requires `length - 8 < i32::MAX`.
pub const SPARK_MAX_FRAME_LENGTH: u64 = i32::MAX as u64 + 7;

/// The smallest maximum frame size a [`Config`] accepts. Every header fits in it, so only
/// bodies and strings are limited by the setting.
pub const MIN_MAX_FRAME_SIZE: u64 = 1024;

/// Default maximum frame length: 256 MiB.
///
/// Spark itself allows frames up to 2 GiB. Spark fetches blocks below
/// `spark.network.maxRemoteBlockSizeFetchToMem` (200 MiB by default) as in-frame chunks and
/// streams larger ones out of frame, so 256 MiB interoperates with a default Spark while
/// bounding what one peer can make us buffer. Raise it for larger in-frame chunks.
pub const DEFAULT_MAX_FRAME_SIZE: u64 = 256 * 1024 * 1024;

/// Default idle timeout, Spark's `spark.network.timeout`: 120 seconds.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Default limit on bytes buffered for sending before new calls are refused: 64 MiB.
pub const DEFAULT_MAX_SEND_BUFFER: u64 = 64 * 1024 * 1024;

/// Settings of one [`Connection`](crate::Connection). Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use rpc_proto::Config;
///
/// let config = Config::builder()
///     .with_max_frame_size(16 * 1024 * 1024)
///     .with_idle_timeout(Some(Duration::from_secs(30)))
///     .with_seed(7)
///     .build()
///     .unwrap();
/// assert_eq!(config.max_frame_size(), 16 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    max_frame_size: u64,
    idle_timeout: Option<Duration>,
    close_idle_connections: bool,
    max_send_buffer: u64,
    seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            close_idle_connections: false,
            max_send_buffer: DEFAULT_MAX_SEND_BUFFER,
            seed: 0,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// The largest frame length accepted from the peer and sent to it, in bytes, counting the
    /// 8-byte length field, the type byte, the header and any in-frame body. Out-of-frame
    /// stream bodies are not frames and are not limited by it.
    pub fn max_frame_size(&self) -> u64 {
        self.max_frame_size
    }

    /// How long a connection may see no traffic before the idle policy acts; `None` disables
    /// the policy (calls still honour their own timeouts).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// Whether a connection with nothing outstanding is closed once idle for the timeout.
    /// With `false` (Spark's server default), only connections with outstanding requests are.
    pub fn close_idle_connections(&self) -> bool {
        self.close_idle_connections
    }

    /// Bytes buffered for sending (not yet handed out by `poll_transmit`) past which new
    /// calls and one-way messages are refused with
    /// [`CallError::SendBufferFull`](crate::CallError::SendBufferFull): a peer that stops
    /// reading cannot make us buffer without bound. Answers to the peer's requests and body
    /// bytes are not refused (the peer asked for them, and bodies are throttled by the driver
    /// with [`Connection::queued_bytes`](crate::Connection::queued_bytes)). A call is accepted
    /// while the buffer is below the limit, so it may end up to one frame above it.
    pub fn max_send_buffer(&self) -> u64 {
        self.max_send_buffer
    }

    /// Seed of the connection's random number generator (the first request id).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// This config with [`seed`](Config::seed) set: what a driver does for each connection
    /// it opens, so that no two connections start their request ids at the same value.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Builds a validated [`Config`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Sets [`Config::max_frame_size`]: from [`MIN_MAX_FRAME_SIZE`] to
    /// [`SPARK_MAX_FRAME_LENGTH`].
    pub fn with_max_frame_size(mut self, bytes: u64) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Sets [`Config::idle_timeout`]; `None` disables the idle policy.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Sets [`Config::close_idle_connections`].
    pub fn with_close_idle_connections(mut self, close: bool) -> Self {
        self.config.close_idle_connections = close;
        self
    }

    /// Sets [`Config::max_send_buffer`] (at least 1).
    pub fn with_max_send_buffer(mut self, bytes: u64) -> Self {
        self.config.max_send_buffer = bytes;
        self
    }

    /// Sets [`Config::seed`]. Drivers seed from the OS; tests use fixed seeds.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.config;
        if !(MIN_MAX_FRAME_SIZE..=SPARK_MAX_FRAME_LENGTH).contains(&c.max_frame_size) {
            return Err(ConfigError::MaxFrameSize {
                value: c.max_frame_size,
                min: MIN_MAX_FRAME_SIZE,
                max: SPARK_MAX_FRAME_LENGTH,
            });
        }
        if c.max_send_buffer == 0 {
            return Err(ConfigError::ZeroLimit("max send buffer"));
        }
        if c.idle_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout("idle timeout"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_frame_sizes() {
        for bad in [
            0,
            MIN_MAX_FRAME_SIZE - 1,
            SPARK_MAX_FRAME_LENGTH + 1,
            u64::MAX,
        ] {
            let err = Config::builder()
                .with_max_frame_size(bad)
                .build()
                .unwrap_err();
            assert!(matches!(err, ConfigError::MaxFrameSize { value, .. } if value == bad));
        }
        for good in [
            MIN_MAX_FRAME_SIZE,
            DEFAULT_MAX_FRAME_SIZE,
            SPARK_MAX_FRAME_LENGTH,
        ] {
            let c = Config::builder().with_max_frame_size(good).build().unwrap();
            assert_eq!(c.max_frame_size(), good);
        }
    }

    #[test]
    fn rejects_zero_idle_timeout() {
        let err = Config::builder()
            .with_idle_timeout(Some(Duration::ZERO))
            .build();
        assert_eq!(err.unwrap_err(), ConfigError::ZeroTimeout("idle timeout"));
        assert!(Config::builder().with_idle_timeout(None).build().is_ok());
    }
}
