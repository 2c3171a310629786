//! The client: Spark's `ExternalBlockStoreClient`, and a reducer's bounded reader of shuffle
//! blocks (Spark's `ShuffleBlockFetcherIterator`, simplified).
//!
//! ```text
//!   ShuffleClient ─ register_executor ── RegisterExecutor ─────────► shuffle service
//!     (app id,      (own connection,  ◄─ empty reply ───────────────   (Spark's ESS on 7337,
//!      security,     5 s, 3 attempts)                                   ours, or an executor's
//!      settings)  ─ fetch_blocks ─────── FetchShuffleBlocks ────────►   block server)
//!                   (retrying)        ◄─ StreamHandle, chunks ──────
//!                 ─ get_host_local_dirs ─ GetLocalDirsForExecutors ─►
//!                                     ◄─ LocalDirsForExecutors ─────
//!                 ─ remove_blocks ─────── RemoveBlocks ─────────────►
//!                                     ◄─ BlocksRemoved ─────────────
//!                 ─ reader(blocks) ─► ShuffleReader: fetches of many (address, executor)s,
//!                                     at most max_bytes_in_flight outstanding
//! ```
//!
//! Every message is Spark 4.3.0's [`BlockTransferMessage`], so the client talks to Spark's
//! own external shuffle service as well as to ours. With a
//! [`Security`] that authenticates, connections present the application's id, as Spark's
//! `AuthClientBootstrap` does: the service looks the secret up by it (YARN keeps one per
//! application) and checks that every message names that application.
//!
//! Every wait is bounded: connects by the transport's connect timeout and the handshake
//! timeout, registration by [`registration_timeout`](ShuffleClientConfig::registration_timeout)
//! per attempt, the other RPCs by [`rpc_timeout`](ShuffleClientConfig::rpc_timeout), fetches
//! by the [`BlockFetchConfig`]'s timeouts.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(rt: std::sync::Arc<dyn rpc_driver::Runtime>) -> Result<(), Box<dyn std::error::Error>> {
//! use rpc_driver::security::{AuthMechanism, Security};
//! use rpc_shuffle::client::{RemoteBlocks, ShuffleClient, ShuffleClientConfig};
//! use rpc_shuffle::protocol::ExecutorShuffleInfo;
//!
//! let config = ShuffleClientConfig::builder()
//!     .with_security(Security::secret("s3cret").with_mechanism(AuthMechanism::spark_default()))
//!     .build()?;
//! let client = ShuffleClient::new(rt, "app-20260101-0001", config)?;
//! let service = "10.0.0.5:7337".parse()?;
//!
//! // An executor registers its shuffle files with its host's service...
//! let info = ExecutorShuffleInfo {
//!     local_dirs: vec!["/tmp/blockmgr-1".into()],
//!     sub_dirs_per_local_dir: 64,
//!     shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
//! };
//! client.register_executor(service, "1", info).await?;
//!
//! // ...and a reducer reads map outputs, at most 48 MiB outstanding.
//! let blocks = vec![RemoteBlocks {
//!     addr: service,
//!     exec_id: "1".into(),
//!     blocks: vec![("shuffle_0_5_3".into(), 1024), ("shuffle_0_6_3".into(), 2048)],
//! }];
//! let mut reader = client.reader(blocks);
//! while let Some(block) = reader.next_block().await {
//!     let bytes = block.result?;
//!     println!("{}: {} bytes", block.block_id, bytes.len());
//! }
//! # Ok(()) }
//! ```

mod reader;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_driver::block::{BlockFetchConfig, RetryingBlockFetcher};
use rpc_driver::security::Security;
use rpc_driver::transport::{
    ConnectError, NoopRpcHandler, TransportClient, TransportClientFactory, TransportConfig,
};
use rpc_driver::{sleep_until, Runtime};
use rpc_proto::{ConfigError, RequestError};
use tracing::{debug, info};

use crate::protocol::{
    BlockTransferMessage, ExecutorShuffleInfo, GetLocalDirsForExecutors, RegisterExecutor,
    RemoveBlocks,
};

pub use reader::{FetchedBlock, RemoteBlocks, ShuffleReader};

/// Spark's `spark.reducer.maxSizeInFlight`: 48 MiB.
pub const DEFAULT_MAX_BYTES_IN_FLIGHT: u64 = 48 << 20;

/// Why a call of a [`ShuffleClient`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShuffleClientError {
    /// No connection to the service: the connect failed or timed out, or its handshake failed
    /// ([`ConnectError::Security`]: a wrong secret, another mechanism).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The service failed the request (its text in [`RequestError::Remote`]), or the call
    /// timed out or lost its connection.
    #[error("{request} failed: {error}")]
    Request {
        /// The message sent.
        request: &'static str,
        /// Why it failed.
        error: RequestError,
    },
    /// The service answered with something other than the reply the request expects.
    #[error("unexpected answer to {request}: {reason}")]
    InvalidResponse {
        /// The message sent.
        request: &'static str,
        /// What was wrong with the answer.
        reason: String,
    },
    /// Every attempt to register failed; the last failure is `last`.
    #[error("registering executor {exec_id} failed after {attempts} attempts: {last}")]
    RegistrationFailed {
        /// The executor.
        exec_id: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: Box<Self>,
    },
}

impl ShuffleClientError {
    /// Whether the failure, or the last failure of a registration, is a refused
    /// authentication (a wrong secret, an app id the service does not know, another
    /// mechanism).
    pub fn is_authentication_failure(&self) -> bool {
        use rpc_driver::security::SecurityError;
        match self {
            Self::Connect(ConnectError::Security(
                SecurityError::AuthenticationFailed { .. }
                | SecurityError::AuthenticationRequired { .. },
            )) => true,
            Self::RegistrationFailed { last, .. } => last.is_authentication_failure(),
            _ => false,
        }
    }
}

/// Settings of a [`ShuffleClient`], validated when built. The defaults are Spark's.
///
/// ```
/// use std::time::Duration;
/// use rpc_shuffle::client::ShuffleClientConfig;
///
/// let config = ShuffleClientConfig::builder()
///     .with_max_bytes_in_flight(8 << 20)
///     .with_registration_wait(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// assert_eq!(config.max_bytes_in_flight(), 8 << 20);
/// assert_eq!(config.registration_attempts(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct ShuffleClientConfig {
    transport: TransportConfig,
    security: Security,
    fetch: BlockFetchConfig,
    registration_timeout: Duration,
    registration_attempts: u32,
    registration_wait: Duration,
    rpc_timeout: Duration,
    max_bytes_in_flight: u64,
    max_reqs_in_flight: usize,
}

impl Default for ShuffleClientConfig {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            security: Security::none(),
            fetch: BlockFetchConfig::default(),
            registration_timeout: Duration::from_secs(5),
            registration_attempts: 3,
            registration_wait: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(120),
            max_bytes_in_flight: DEFAULT_MAX_BYTES_IN_FLIGHT,
            max_reqs_in_flight: usize::MAX,
        }
    }
}

impl ShuffleClientConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ShuffleClientConfigBuilder {
        ShuffleClientConfigBuilder {
            config: Self::default(),
        }
    }

    /// A builder starting from this config's settings.
    pub fn to_builder(&self) -> ShuffleClientConfigBuilder {
        ShuffleClientConfigBuilder {
            config: self.clone(),
        }
    }

    /// The transport's settings (Spark's `spark.shuffle.io.*`); its security is replaced by
    /// [`security`](Self::security).
    pub fn transport(&self) -> &TransportConfig {
        &self.transport
    }

    /// How connections authenticate (`spark.authenticate`, `spark.network.crypto.*`); the
    /// client presents the application's id. Default none.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Fetch settings: chunks in flight, timeouts, retries (`spark.shuffle.io.maxRetries`,
    /// `spark.shuffle.io.retryWait`), `spark.shuffle.useOldFetchProtocol`.
    pub fn fetch(&self) -> &BlockFetchConfig {
        &self.fetch
    }

    /// How long one registration attempt may take (`spark.shuffle.registration.timeout`,
    /// 5 s).
    pub fn registration_timeout(&self) -> Duration {
        self.registration_timeout
    }

    /// Registration attempts (`spark.shuffle.registration.maxAttempts`, 3).
    pub fn registration_attempts(&self) -> u32 {
        self.registration_attempts
    }

    /// The wait between registration attempts (Spark's `BlockManager` sleeps 5 s).
    pub fn registration_wait(&self) -> Duration {
        self.registration_wait
    }

    /// How long the other RPCs may take (`spark.network.timeout`, 120 s).
    pub fn rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }

    /// A [`ShuffleReader`]'s bound on bytes requested and not yet taken by its consumer
    /// (`spark.reducer.maxSizeInFlight`, 48 MiB).
    pub fn max_bytes_in_flight(&self) -> u64 {
        self.max_bytes_in_flight
    }

    /// A [`ShuffleReader`]'s bound on fetch requests outstanding
    /// (`spark.reducer.maxReqsInFlight`, unbounded).
    pub fn max_reqs_in_flight(&self) -> usize {
        self.max_reqs_in_flight
    }
}

/// Builds a validated [`ShuffleClientConfig`], from [`ShuffleClientConfig::builder`].
#[derive(Debug, Clone)]
pub struct ShuffleClientConfigBuilder {
    config: ShuffleClientConfig,
}

impl ShuffleClientConfigBuilder {
    /// Sets [`ShuffleClientConfig::transport`].
    pub fn with_transport(mut self, transport: TransportConfig) -> Self {
        self.config.transport = transport;
        self
    }

    /// Sets [`ShuffleClientConfig::security`].
    pub fn with_security(mut self, security: Security) -> Self {
        self.config.security = security;
        self
    }

    /// Sets [`ShuffleClientConfig::fetch`].
    pub fn with_fetch(mut self, fetch: BlockFetchConfig) -> Self {
        self.config.fetch = fetch;
        self
    }

    /// Sets [`ShuffleClientConfig::registration_timeout`]; above zero.
    pub fn with_registration_timeout(mut self, timeout: Duration) -> Self {
        self.config.registration_timeout = timeout;
        self
    }

    /// Sets [`ShuffleClientConfig::registration_attempts`]; at least 1.
    pub fn with_registration_attempts(mut self, attempts: u32) -> Self {
        self.config.registration_attempts = attempts;
        self
    }

    /// Sets [`ShuffleClientConfig::registration_wait`].
    pub fn with_registration_wait(mut self, wait: Duration) -> Self {
        self.config.registration_wait = wait;
        self
    }

    /// Sets [`ShuffleClientConfig::rpc_timeout`]; above zero.
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.config.rpc_timeout = timeout;
        self
    }

    /// Sets [`ShuffleClientConfig::max_bytes_in_flight`]; at least 1.
    pub fn with_max_bytes_in_flight(mut self, bytes: u64) -> Self {
        self.config.max_bytes_in_flight = bytes;
        self
    }

    /// Sets [`ShuffleClientConfig::max_reqs_in_flight`]; at least 1.
    pub fn with_max_reqs_in_flight(mut self, requests: usize) -> Self {
        self.config.max_reqs_in_flight = requests;
        self
    }

    /// Validates and returns the configuration: a zero where zero makes no sense is an
    /// error naming the setting.
    pub fn build(self) -> Result<ShuffleClientConfig, ConfigError> {
        let c = self.config;
        if c.registration_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("registration timeout"));
        }
        if c.rpc_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("rpc timeout"));
        }
        if c.registration_attempts == 0 {
            return Err(ConfigError::ZeroLimit("registration attempts"));
        }
        if c.max_bytes_in_flight == 0 {
            return Err(ConfigError::ZeroLimit("max bytes in flight"));
        }
        if c.max_reqs_in_flight == 0 {
            return Err(ConfigError::ZeroLimit("max requests in flight"));
        }
        Ok(c)
    }
}

/// A client of Spark's external shuffle service: Spark's `ExternalBlockStoreClient`, for
/// one application. Cheap to clone; clones share its connections.
///
/// Fetches go over pooled connections (one per service, as Spark's); registration opens a
/// connection of its own each attempt and closes it after the reply, as Spark's
/// `BlockManager` does. See the [module docs](self) for an example.
#[derive(Clone)]
pub struct ShuffleClient {
    rt: Arc<dyn Runtime>,
    app_id: Arc<str>,
    factory: TransportClientFactory,
    config: ShuffleClientConfig,
}

impl ShuffleClient {
    /// A client of application `app_id`, on `rt`. Its connections use `config`'s transport
    /// settings with `config`'s [`Security`], presenting `app_id` when authenticating.
    /// Fails only if the transport settings with that security do not validate.
    pub fn new(
        rt: Arc<dyn Runtime>,
        app_id: impl Into<String>,
        config: ShuffleClientConfig,
    ) -> Result<Self, ConfigError> {
        let app_id: String = app_id.into();
        let security = config.security.clone().with_app_id(app_id.clone());
        let transport = config
            .transport
            .to_builder()
            .with_security(security)
            .build()?;
        let factory = TransportClientFactory::new(rt.clone(), Arc::new(NoopRpcHandler), transport);
        Ok(Self {
            rt,
            app_id: app_id.into(),
            factory,
            config,
        })
    }

    /// The application's id.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The settings.
    pub fn config(&self) -> &ShuffleClientConfig {
        &self.config
    }

    /// Registers executor `exec_id`'s shuffle files with the service at `addr`
    /// (`RegisterExecutor`, answered with an empty reply), as Spark's `BlockManager` does:
    /// each attempt on a connection of its own, closed after the reply, within
    /// [`registration_timeout`](ShuffleClientConfig::registration_timeout); after a failure
    /// of any kind, another attempt after
    /// [`registration_wait`](ShuffleClientConfig::registration_wait), up to
    /// [`registration_attempts`](ShuffleClientConfig::registration_attempts) in all.
    pub async fn register_executor(
        &self,
        addr: SocketAddr,
        exec_id: &str,
        info: ExecutorShuffleInfo,
    ) -> Result<(), ShuffleClientError> {
        let message = BlockTransferMessage::RegisterExecutor(RegisterExecutor {
            app_id: self.app_id.to_string(),
            exec_id: exec_id.to_owned(),
            executor_info: info,
        })
        .encode();
        let attempts = self.config.registration_attempts;
        let mut attempt = 1;
        loop {
            let error = match self.register_once(addr, message.clone()).await {
                Ok(()) => {
                    debug!(%addr, exec_id, attempt, "registered with the shuffle service");
                    return Ok(());
                }
                Err(error) => error,
            };
            if attempt >= attempts {
                return Err(ShuffleClientError::RegistrationFailed {
                    exec_id: exec_id.to_owned(),
                    attempts,
                    last: Box::new(error),
                });
            }
            info!(%addr, exec_id, attempt, attempts, %error, "registration with the shuffle service failed; retrying");
            self.sleep(self.config.registration_wait).await;
            attempt += 1;
        }
    }

    async fn register_once(
        &self,
        addr: SocketAddr,
        message: Bytes,
    ) -> Result<(), ShuffleClientError> {
        const REQUEST: &str = "RegisterExecutor";
        // The connect and handshake are bounded by the transport's own timeouts; the
        // attempt as a whole by the registration timeout too.
        let timeout = self.config.registration_timeout;
        let attempt = async {
            let client = self.factory.create_unmanaged_client(addr).await?;
            let reply = client
                .send_rpc(message, Some(timeout))
                .await
                .map_err(|error| ShuffleClientError::Request {
                    request: REQUEST,
                    error,
                })?;
            // `client` drops here, closing the connection.
            if reply.is_empty() {
                Ok(())
            } else {
                Err(ShuffleClientError::InvalidResponse {
                    request: REQUEST,
                    reason: format!("expected an empty reply, got {} bytes", reply.len()),
                })
            }
        };
        let expired = async {
            self.sleep(timeout).await;
            Err(ShuffleClientError::Request {
                request: REQUEST,
                error: RequestError::TimedOut { after: timeout },
            })
        };
        futures_lite::future::or(attempt, expired).await
    }

    /// Fetches `block_ids` of executor `exec_id` from the service at `addr`: Spark's
    /// `fetchBlocks`, a [`RetryingBlockFetcher`] over
    /// [`fetch_blocks`](rpc_driver::block::fetch_blocks) with the client's
    /// [fetch settings](ShuffleClientConfig::fetch). Shuffle blocks go as
    /// `FetchShuffleBlocks` (or `FetchShuffleBlockChunks`, or `OpenBlocks`, as Spark's
    /// fetcher chooses); a stream of `(block_id, result)`, one per block, as they arrive.
    pub fn fetch_blocks(
        &self,
        addr: SocketAddr,
        exec_id: &str,
        block_ids: Vec<String>,
    ) -> RetryingBlockFetcher {
        RetryingBlockFetcher::one_for_one(
            self.rt.clone(),
            &self.factory,
            addr,
            &self.app_id,
            exec_id,
            block_ids,
            &self.config.fetch,
        )
    }

    /// The local directories of executors `exec_ids` registered with the service at `addr`
    /// (`GetLocalDirsForExecutors`), for reading host-local blocks from disk: Spark's
    /// `getHostLocalDirs`. The service fails the request if any executor is unknown.
    pub async fn get_host_local_dirs(
        &self,
        addr: SocketAddr,
        exec_ids: &[String],
    ) -> Result<HashMap<String, Vec<String>>, ShuffleClientError> {
        const REQUEST: &str = "GetLocalDirsForExecutors";
        let message = BlockTransferMessage::GetLocalDirsForExecutors(GetLocalDirsForExecutors {
            app_id: self.app_id.to_string(),
            exec_ids: exec_ids.to_vec(),
        });
        match self.call(addr, REQUEST, message).await? {
            BlockTransferMessage::LocalDirsForExecutors(dirs) => {
                Ok(dirs.dirs.into_iter().collect())
            }
            other => Err(unexpected(REQUEST, &other)),
        }
    }

    /// Removes files `block_ids` (`shuffle_S_M_0.data`, `rdd_R_P`…) of executor `exec_id`
    /// from the service at `addr` (`RemoveBlocks`): how many it removed. (Spark's
    /// `removeBlocks` turns failures into 0; this returns them.)
    pub async fn remove_blocks(
        &self,
        addr: SocketAddr,
        exec_id: &str,
        block_ids: Vec<String>,
    ) -> Result<usize, ShuffleClientError> {
        const REQUEST: &str = "RemoveBlocks";
        let message = BlockTransferMessage::RemoveBlocks(RemoveBlocks {
            app_id: self.app_id.to_string(),
            exec_id: exec_id.to_owned(),
            block_ids,
        });
        match self.call(addr, REQUEST, message).await? {
            BlockTransferMessage::BlocksRemoved(removed) => {
                usize::try_from(removed.num_removed_blocks).map_err(|_| {
                    ShuffleClientError::InvalidResponse {
                        request: REQUEST,
                        reason: format!("{} blocks removed", removed.num_removed_blocks),
                    }
                })
            }
            other => Err(unexpected(REQUEST, &other)),
        }
    }

    /// A reader of `blocks` with the client's in-flight bounds: see [`ShuffleReader`].
    pub fn reader(&self, blocks: Vec<RemoteBlocks>) -> ShuffleReader {
        ShuffleReader::new(self.clone(), blocks)
    }

    /// Closes every pooled connection and refuses new ones.
    pub fn close(&self) {
        self.factory.close();
    }

    /// Sends `message` on the pooled connection to `addr` and decodes the reply, within the
    /// RPC timeout.
    async fn call(
        &self,
        addr: SocketAddr,
        request: &'static str,
        message: BlockTransferMessage,
    ) -> Result<BlockTransferMessage, ShuffleClientError> {
        let client: TransportClient = self.factory.create_client(addr).await?;
        let reply = client
            .send_rpc(message.encode(), Some(self.config.rpc_timeout))
            .await
            .map_err(|error| ShuffleClientError::Request { request, error })?;
        BlockTransferMessage::decode(&reply).map_err(|error| ShuffleClientError::InvalidResponse {
            request,
            reason: error.to_string(),
        })
    }

    async fn sleep(&self, duration: Duration) {
        // A wait too long to represent is as good as forever; cap it at a year.
        let duration = duration.min(Duration::from_secs(365 * 24 * 3600));
        let deadline = self.rt.now() + duration;
        sleep_until(&*self.rt, deadline).await
    }
}

fn unexpected(request: &'static str, reply: &BlockTransferMessage) -> ShuffleClientError {
    ShuffleClientError::InvalidResponse {
        request,
        reason: format!("got {}", reply.name()),
    }
}

impl fmt::Debug for ShuffleClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShuffleClient")
            .field("app_id", &self.app_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
