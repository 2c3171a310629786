//! [`BlockFetchConfig`], the settings of a block fetch and its retries, and its builder.

use std::time::Duration;

use rpc_proto::ConfigError;

/// Settings of a block fetch, and of its retries, validated when built.
///
/// The defaults are Spark's where Spark has one: `spark.shuffle.io.maxRetries` (3),
/// `spark.shuffle.io.retryWait` (5 s), `spark.network.timeout` (120 s),
/// `spark.shuffle.useOldFetchProtocol` (false); chunks are fetched with `ChunkFetchRequest`s
/// unless [`fetch_as_streams`](BlockFetchConfig::fetch_as_streams) is set.
///
/// ```
/// use std::time::Duration;
/// use rpc_driver::block::BlockFetchConfig;
///
/// # fn main() -> Result<(), rpc_proto::ConfigError> {
/// let config = BlockFetchConfig::builder()
///     .with_max_chunks_in_flight(4)
///     .with_retry_wait(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(config.max_chunks_in_flight(), 4);
///
/// // A zero where zero makes no sense is an error naming the setting.
/// let error = BlockFetchConfig::builder().with_max_chunks_in_flight(0).build().unwrap_err();
/// assert_eq!(error.to_string(), "max chunks in flight must be greater than zero");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFetchConfig {
    max_chunks_in_flight: usize,
    open_timeout: Option<Duration>,
    chunk_timeout: Option<Duration>,
    max_retries: u32,
    retry_wait: Duration,
    use_old_fetch_protocol: bool,
    fetch_as_streams: bool,
}

impl Default for BlockFetchConfig {
    fn default() -> Self {
        Self {
            max_chunks_in_flight: 16,
            open_timeout: Some(Duration::from_secs(120)),
            chunk_timeout: Some(Duration::from_secs(120)),
            max_retries: 3,
            retry_wait: Duration::from_secs(5),
            use_old_fetch_protocol: false,
            fetch_as_streams: false,
        }
    }
}

impl BlockFetchConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> BlockFetchConfigBuilder {
        BlockFetchConfigBuilder {
            config: Self::default(),
        }
    }

    /// A builder starting from this config's settings.
    pub fn to_builder(&self) -> BlockFetchConfigBuilder {
        BlockFetchConfigBuilder {
            config: self.clone(),
        }
    }

    /// Chunk fetches a fetch keeps outstanding at once. Spark asks for every chunk at once
    /// and bounds requests a level up, in `ShuffleBlockFetcherIterator`.
    pub fn max_chunks_in_flight(&self) -> usize {
        self.max_chunks_in_flight
    }

    /// How long the `OpenBlocks` RPC may take; `None` waits for the connection's idle timeout.
    pub fn open_timeout(&self) -> Option<Duration> {
        self.open_timeout
    }

    /// How long each chunk fetch may take; `None` waits for the connection's idle timeout.
    pub fn chunk_timeout(&self) -> Option<Duration> {
        self.chunk_timeout
    }

    /// Further attempts a [`RetryingBlockFetcher`](super::retry::RetryingBlockFetcher) makes
    /// after I/O failures: it makes at most `1 + max_retries` attempts in all.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// How long a [`RetryingBlockFetcher`](super::retry::RetryingBlockFetcher) waits before
    /// each further attempt.
    pub fn retry_wait(&self) -> Duration {
        self.retry_wait
    }

    /// Spark's `spark.shuffle.useOldFetchProtocol`: open every fetch with an `OpenBlocks`,
    /// even of shuffle blocks (which otherwise go as `FetchShuffleBlocks` or
    /// `FetchShuffleBlockChunks`; see [`FetchPlan`](rpc_proto::shuffle::FetchPlan)). Needed
    /// only with shuffle services older than Spark 3.0. Default false.
    pub fn use_old_fetch_protocol(&self) -> bool {
        self.use_old_fetch_protocol
    }

    /// Fetch each block with a `StreamRequest` for `"<stream id>_<chunk index>"` instead of a
    /// `ChunkFetchRequest`, as Spark's fetch-to-disk does: the block's bytes travel outside
    /// a frame, so a block may exceed the frame size limit. The block is still collected in
    /// memory. Default false.
    pub fn fetch_as_streams(&self) -> bool {
        self.fetch_as_streams
    }
}

/// Builds a validated [`BlockFetchConfig`]: from [`BlockFetchConfig::builder`] or
/// [`BlockFetchConfig::to_builder`].
#[derive(Debug, Clone)]
pub struct BlockFetchConfigBuilder {
    config: BlockFetchConfig,
}

impl BlockFetchConfigBuilder {
    /// Sets [`BlockFetchConfig::max_chunks_in_flight`]; at least 1.
    pub fn with_max_chunks_in_flight(mut self, chunks: usize) -> Self {
        self.config.max_chunks_in_flight = chunks;
        self
    }

    /// Sets [`BlockFetchConfig::open_timeout`]; `None` or above zero.
    pub fn with_open_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.open_timeout = timeout;
        self
    }

    /// Sets [`BlockFetchConfig::chunk_timeout`]; `None` or above zero.
    pub fn with_chunk_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.chunk_timeout = timeout;
        self
    }

    /// Sets [`BlockFetchConfig::max_retries`]; zero means no retry.
    pub fn with_max_retries(mut self, retries: u32) -> Self {
        self.config.max_retries = retries;
        self
    }

    /// Sets [`BlockFetchConfig::retry_wait`]; zero retries at once.
    pub fn with_retry_wait(mut self, wait: Duration) -> Self {
        self.config.retry_wait = wait;
        self
    }

    /// Sets [`BlockFetchConfig::use_old_fetch_protocol`].
    pub fn with_use_old_fetch_protocol(mut self, old: bool) -> Self {
        self.config.use_old_fetch_protocol = old;
        self
    }

    /// Sets [`BlockFetchConfig::fetch_as_streams`].
    pub fn with_fetch_as_streams(mut self, streams: bool) -> Self {
        self.config.fetch_as_streams = streams;
        self
    }

    /// Validates and returns the configuration: a zero where zero makes no sense is an
    /// error naming the setting.
    pub fn build(self) -> Result<BlockFetchConfig, ConfigError> {
        let c = self.config;
        if c.max_chunks_in_flight == 0 {
            return Err(ConfigError::ZeroLimit("max chunks in flight"));
        }
        if c.open_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout("open timeout"));
        }
        if c.chunk_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout("chunk timeout"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_server_rejects_zero_streams_per_connection() {
        let source =
            |_: &str, _: &str, _: &str| Ok::<_, crate::error::BoxError>(bytes::Bytes::new());
        let error = super::super::BlockServer::builder(source)
            .with_max_streams_per_connection(0)
            .build()
            .unwrap_err();
        assert_eq!(error, ConfigError::ZeroLimit("max streams per connection"));
        let server = super::super::BlockServer::builder(source)
            .with_max_streams_per_connection(1)
            .build()
            .unwrap();
        assert_eq!(server.max_streams_per_connection(), 1);
        assert_eq!(
            super::super::BlockServer::new(source).max_streams_per_connection(),
            256
        );
    }

    #[test]
    fn defaults_build() {
        assert_eq!(
            BlockFetchConfig::builder().build().unwrap(),
            BlockFetchConfig::default()
        );
    }

    #[test]
    fn rejects_zero_settings_naming_them() {
        let b = BlockFetchConfig::builder;
        assert_eq!(
            b().with_max_chunks_in_flight(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max chunks in flight")
        );
        assert_eq!(
            b().with_open_timeout(Some(Duration::ZERO))
                .build()
                .unwrap_err(),
            ConfigError::ZeroTimeout("open timeout")
        );
        assert_eq!(
            b().with_chunk_timeout(Some(Duration::ZERO))
                .build()
                .unwrap_err(),
            ConfigError::ZeroTimeout("chunk timeout")
        );
        // Zeros that make sense: no retry, no wait, no timeout.
        let c = b()
            .with_max_retries(0)
            .with_retry_wait(Duration::ZERO)
            .with_open_timeout(None)
            .with_chunk_timeout(None)
            .build()
            .unwrap();
        assert_eq!(c.max_retries(), 0);
        assert_eq!(c.retry_wait(), Duration::ZERO);
    }
}
