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

/// Default limit on the length of an id in a received frame (stream id, app id): 4 KiB.
pub const DEFAULT_MAX_ID_LEN: u32 = 4 * 1024;

/// Default limit on the length of an error text, received or sent: 4 KiB.
pub const DEFAULT_MAX_ERROR_LEN: u32 = 4 * 1024;

/// Default time a frame may take to arrive, from its first byte to its last: 120 seconds.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(120);

/// Default limit on the peer's requests this side has not answered yet: 16384.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 16 * 1024;

/// Default limit on the peer's stream requests being answered at once: 64.
pub const DEFAULT_MAX_PENDING_STREAMS: usize = 64;

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
    max_id_len: u32,
    max_error_len: u32,
    frame_timeout: Option<Duration>,
    max_pending_requests: usize,
    max_pending_streams: usize,
    close_idle_accepted: bool,
    seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            close_idle_connections: false,
            max_send_buffer: DEFAULT_MAX_SEND_BUFFER,
            max_id_len: DEFAULT_MAX_ID_LEN,
            max_error_len: DEFAULT_MAX_ERROR_LEN,
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            max_pending_streams: DEFAULT_MAX_PENDING_STREAMS,
            close_idle_accepted: true,
            seed: 0,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Self::default(),
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

    /// The longest id (stream id, app id) accepted in a frame from the peer, in bytes. A
    /// longer one is [`DecodeError::StringTooLong`](crate::DecodeError::StringTooLong) and
    /// closes the connection before the id is copied; ids echoed back in failures are cut to
    /// it.
    pub fn max_id_len(&self) -> u32 {
        self.max_id_len
    }

    /// The longest error text kept, in bytes: a longer failure text from the peer is cut to it
    /// (at a character boundary) before it is copied, and failure texts this side sends are
    /// cut to it (and always to what fits the frame limit), so that a failure never echoes
    /// unbounded peer input.
    pub fn max_error_len(&self) -> u32 {
        self.max_error_len
    }

    /// The longest a frame may take to arrive, from its first byte to its last; `None`
    /// disables the limit. A peer that stalls mid-frame (or sends one byte a second) is cut
    /// with [`ConnectionError::FrameTimedOut`](crate::ConnectionError::FrameTimedOut), so a
    /// partial frame pins its memory for at most this long.
    pub fn frame_timeout(&self) -> Option<Duration> {
        self.frame_timeout
    }

    /// The most requests of the peer (RPCs, uploads, merged-block-meta requests, chunk
    /// fetches) this side may owe an answer to at once; beyond it, requests are refused at
    /// once with a failure (`RpcFailure`, `ChunkFetchFailure`) and never reach the handler.
    pub fn max_pending_requests(&self) -> usize {
        self.max_pending_requests
    }

    /// The most stream requests of the peer being answered at once (not yet answered, or
    /// with a body still being sent, each of which may hold an open file); beyond it, stream
    /// requests are refused at once with a `StreamFailure`, in order.
    pub fn max_pending_streams(&self) -> usize {
        self.max_pending_streams
    }

    /// Whether connections a server accepted close once idle with nothing outstanding on
    /// either side, whatever [`close_idle_connections`](Config::close_idle_connections) says
    /// (read by drivers through [`Config::accepted`]). `true` by default: a server does not
    /// keep idle peers forever.
    pub fn close_idle_accepted(&self) -> bool {
        self.close_idle_accepted
    }

    /// This config as a driver uses it for a connection a server accepted: with
    /// [`close_idle_accepted`](Config::close_idle_accepted), idle connections are closed.
    pub fn accepted(mut self) -> Self {
        self.close_idle_connections |= self.close_idle_accepted;
        self
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

    /// Sets [`Config::max_id_len`] (at least 1).
    pub fn with_max_id_len(mut self, bytes: u32) -> Self {
        self.config.max_id_len = bytes;
        self
    }

    /// Sets [`Config::max_error_len`] (at least 1).
    pub fn with_max_error_len(mut self, bytes: u32) -> Self {
        self.config.max_error_len = bytes;
        self
    }

    /// Sets [`Config::frame_timeout`]; `None` disables it.
    pub fn with_frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.frame_timeout = timeout;
        self
    }

    /// Sets [`Config::max_pending_requests`] (at least 1).
    pub fn with_max_pending_requests(mut self, requests: usize) -> Self {
        self.config.max_pending_requests = requests;
        self
    }

    /// Sets [`Config::max_pending_streams`] (at least 1).
    pub fn with_max_pending_streams(mut self, streams: usize) -> Self {
        self.config.max_pending_streams = streams;
        self
    }

    /// Sets [`Config::close_idle_accepted`].
    pub fn with_close_idle_accepted(mut self, close: bool) -> Self {
        self.config.close_idle_accepted = close;
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
        if c.frame_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout("frame timeout"));
        }
        if c.max_id_len == 0 {
            return Err(ConfigError::ZeroLimit("max id length"));
        }
        if c.max_error_len == 0 {
            return Err(ConfigError::ZeroLimit("max error length"));
        }
        if c.max_pending_requests == 0 {
            return Err(ConfigError::ZeroLimit("max pending requests"));
        }
        if c.max_pending_streams == 0 {
            return Err(ConfigError::ZeroLimit("max pending streams"));
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

    #[test]
    fn rejects_zero_limits_naming_the_setting() {
        let b = Config::builder;
        assert_eq!(
            b().with_frame_timeout(Some(Duration::ZERO))
                .build()
                .unwrap_err(),
            ConfigError::ZeroTimeout("frame timeout")
        );
        assert_eq!(
            b().with_max_id_len(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max id length")
        );
        assert_eq!(
            b().with_max_error_len(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max error length")
        );
        assert_eq!(
            b().with_max_pending_requests(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max pending requests")
        );
        assert_eq!(
            b().with_max_pending_streams(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max pending streams")
        );
        assert!(b().with_frame_timeout(None).build().is_ok());
    }

    #[test]
    fn accepted_connections_close_when_idle_unless_told_not_to() {
        assert!(!Config::default().close_idle_connections());
        assert!(Config::default().accepted().close_idle_connections());
        let keep = b_keep();
        assert!(!keep.accepted().close_idle_connections());
    }

    fn b_keep() -> Config {
        Config::builder()
            .with_close_idle_accepted(false)
            .build()
            .unwrap()
    }
}
