//! [`RpcEnvConfig`], the settings of an [`RpcEnv`](super::rpc_env::RpcEnv), and its builder.

use std::time::Duration;

use rpc_proto::{ConfigError, OutboxConfig, RpcAddress};

use crate::security::Security;
use crate::transport::TransportConfig;

/// Default [`RpcEnvConfig::ask_timeout`] and [`RpcEnvConfig::lookup_timeout`], Spark's
/// `spark.rpc.askTimeout` and `spark.rpc.lookupTimeout`: 120 seconds.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Default [`RpcEnvConfig::inbox_capacity`]: 10,000.
pub const DEFAULT_INBOX_CAPACITY: usize = 10_000;

/// Default [`RpcEnvConfig::max_pending_asks`]: 65,536.
pub const DEFAULT_MAX_PENDING_ASKS: usize = 65_536;

/// Settings of an [`RpcEnv`](super::rpc_env::RpcEnv), validated when built. Cheap to clone.
///
/// Built from [`RpcEnvConfig::server`] or [`RpcEnvConfig::client`], which return a
/// builder with the defaults.
///
/// ```
/// use std::time::Duration;
/// use rpc_driver::env::RpcEnvConfig;
///
/// # fn main() -> Result<(), rpc_proto::ConfigError> {
/// let config = RpcEnvConfig::server("driver", "127.0.0.1", 0)
///     .with_ask_timeout(Duration::from_secs(10))
///     .with_port_retries(4)
///     .build()?;
/// assert_eq!(config.ask_timeout(), Duration::from_secs(10));
/// assert_eq!(config.bind(), Some(("127.0.0.1", 0)));
///
/// // A zero where zero makes no sense is an error naming the setting.
/// let error = RpcEnvConfig::client("executor").with_inbox_capacity(0).build().unwrap_err();
/// assert_eq!(error.to_string(), "inbox capacity must be greater than zero");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RpcEnvConfig {
    name: String,
    bind: Option<(String, u16)>,
    advertise: Option<RpcAddress>,
    port_retries: u16,
    ask_timeout: Duration,
    lookup_timeout: Duration,
    transport: TransportConfig,
    outbox: OutboxConfig,
    inbox_capacity: usize,
    max_pending_asks: usize,
}

impl RpcEnvConfig {
    /// A builder of a server-mode env listening on `host:port` (port 0 picks a free port).
    pub fn server(name: &str, host: &str, port: u16) -> RpcEnvConfigBuilder {
        let mut builder = Self::client(name);
        builder.config.bind = Some((host.to_owned(), port));
        builder
    }

    /// A builder of a client-mode env: it accepts no connections.
    pub fn client(name: &str) -> RpcEnvConfigBuilder {
        RpcEnvConfigBuilder {
            config: Self {
                name: name.to_owned(),
                bind: None,
                advertise: None,
                port_retries: 0,
                ask_timeout: DEFAULT_ASK_TIMEOUT,
                lookup_timeout: DEFAULT_ASK_TIMEOUT,
                transport: env_transport(),
                outbox: OutboxConfig::default(),
                inbox_capacity: DEFAULT_INBOX_CAPACITY,
                max_pending_asks: DEFAULT_MAX_PENDING_ASKS,
            },
        }
    }

    /// A builder starting from this config's settings.
    pub fn to_builder(&self) -> RpcEnvConfigBuilder {
        RpcEnvConfigBuilder {
            config: self.clone(),
        }
    }

    /// A name for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where to listen: `None` for a client-mode env, which accepts no connections (its
    /// endpoints are reachable only over connections it opened).
    pub fn bind(&self) -> Option<(&str, u16)> {
        self.bind
            .as_ref()
            .map(|(host, port)| (host.as_str(), *port))
    }

    /// The address other envs are told to use, when it differs from the bound one (NAT,
    /// containers). Refs to this env's endpoints carry it.
    pub fn advertise(&self) -> Option<&RpcAddress> {
        self.advertise.as_ref()
    }

    /// When the port is taken, try the next ones, this many times (Spark's
    /// `spark.port.maxRetries`); 0 fails at once. Port 0 (any free port) never retries.
    pub fn port_retries(&self) -> u16 {
        self.port_retries
    }

    /// The default timeout of [`RpcEndpointRef::ask`](super::reference::RpcEndpointRef::ask)
    /// (Spark's `spark.rpc.askTimeout`).
    pub fn ask_timeout(&self) -> Duration {
        self.ask_timeout
    }

    /// How long a lookup of a remote endpoint may take (Spark's `spark.rpc.lookupTimeout`).
    pub fn lookup_timeout(&self) -> Duration {
        self.lookup_timeout
    }

    /// The transport layer's settings. The env's default differs from
    /// [`TransportConfig::default`] in one way: connections the env accepted stay open while
    /// idle ([`Config::close_idle_accepted`](rpc_proto::Config::close_idle_accepted) off), as
    /// in Spark's `NettyRpcEnv`, because a client-mode env's endpoints are reached only over
    /// the connection it opened. Keep that when replacing the transport settings, or
    /// client-mode peers are cut off after the idle timeout.
    pub fn transport(&self) -> &TransportConfig {
        &self.transport
    }

    /// Each remote env's outbox: queue bounds and connect retries.
    pub fn outbox(&self) -> &OutboxConfig {
        &self.outbox
    }

    /// How many messages each endpoint's inbox holds, queued or being handled, before
    /// refusing more (see "Limits" in the [module docs](super)); an endpoint may set its own
    /// with [`RpcEndpoint::inbox_capacity`](super::endpoint::RpcEndpoint::inbox_capacity).
    /// Default [`DEFAULT_INBOX_CAPACITY`] (Spark's inbox is unbounded).
    pub fn inbox_capacity(&self) -> usize {
        self.inbox_capacity
    }

    /// How many asks from other envs the env handles at once, across its endpoints: from
    /// arrival until answered (or their call context is dropped). Beyond it, asks fail with
    /// [`RpcError::EndpointBusy`](super::error::RpcError::EndpointBusy). Default
    /// [`DEFAULT_MAX_PENDING_ASKS`].
    pub fn max_pending_asks(&self) -> usize {
        self.max_pending_asks
    }

    pub(super) fn outbox_seed(&self) -> u64 {
        // Different envs jitter differently; the same config jitters the same way.
        self.name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }
}

/// Builds a validated [`RpcEnvConfig`]: from [`RpcEnvConfig::server`],
/// [`RpcEnvConfig::client`] or [`RpcEnvConfig::to_builder`].
#[derive(Debug, Clone)]
pub struct RpcEnvConfigBuilder {
    config: RpcEnvConfig,
}

impl RpcEnvConfigBuilder {
    /// Sets [`RpcEnvConfig::inbox_capacity`]; at least 1.
    pub fn with_inbox_capacity(mut self, capacity: usize) -> Self {
        self.config.inbox_capacity = capacity;
        self
    }

    /// Sets [`RpcEnvConfig::max_pending_asks`]; at least 1.
    pub fn with_max_pending_asks(mut self, asks: usize) -> Self {
        self.config.max_pending_asks = asks;
        self
    }

    /// Sets [`RpcEnvConfig::advertise`].
    pub fn with_advertise(mut self, address: RpcAddress) -> Self {
        self.config.advertise = Some(address);
        self
    }

    /// Sets [`RpcEnvConfig::port_retries`]; zero fails at once when the port is taken.
    pub fn with_port_retries(mut self, retries: u16) -> Self {
        self.config.port_retries = retries;
        self
    }

    /// Sets [`RpcEnvConfig::ask_timeout`]; above zero.
    pub fn with_ask_timeout(mut self, timeout: Duration) -> Self {
        self.config.ask_timeout = timeout;
        self
    }

    /// Sets [`RpcEnvConfig::lookup_timeout`]; above zero.
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.config.lookup_timeout = timeout;
        self
    }

    /// Sets [`RpcEnvConfig::outbox`], an already validated [`OutboxConfig`].
    pub fn with_outbox(mut self, outbox: OutboxConfig) -> Self {
        self.config.outbox = outbox;
        self
    }

    /// Sets [`RpcEnvConfig::transport`], an already validated [`TransportConfig`] (see there
    /// for the env's default).
    pub fn with_transport(mut self, transport: TransportConfig) -> Self {
        self.config.transport = transport;
        self
    }

    /// Sets the security of every connection the env opens or accepts
    /// ([`TransportConfig::security`]), keeping the other transport settings: with a secret,
    /// a peer env must hold the same secret to reach any endpoint, and (with AES)
    /// everything between them is encrypted.
    ///
    /// ```
    /// # use rpc_driver::env::RpcEnvConfig;
    /// use rpc_driver::security::Security;
    /// let config = RpcEnvConfig::server("driver", "127.0.0.1", 0)
    ///     .with_security(Security::secret("s3cret"))
    ///     .build()
    ///     .unwrap();
    /// assert!(config.transport().security().is_enabled());
    /// ```
    pub fn with_security(mut self, security: Security) -> Self {
        self.config.transport = self.config.transport.with_security(security);
        self
    }

    /// Validates and returns the configuration: a zero where zero makes no sense is an
    /// error naming the setting.
    pub fn build(self) -> Result<RpcEnvConfig, ConfigError> {
        let c = self.config;
        if c.ask_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("ask timeout"));
        }
        if c.lookup_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("lookup timeout"));
        }
        if c.inbox_capacity == 0 {
            return Err(ConfigError::ZeroLimit("inbox capacity"));
        }
        if c.max_pending_asks == 0 {
            return Err(ConfigError::ZeroLimit("max pending asks"));
        }
        Ok(c)
    }
}

/// The transport settings of an env: [`TransportConfig::default`], keeping idle accepted
/// connections (see [`RpcEnvConfig::transport`]).
fn env_transport() -> TransportConfig {
    let connection = rpc_proto::Config::builder()
        .with_close_idle_accepted(false)
        .build()
        .expect("the default connection settings are valid");
    TransportConfig::builder()
        .with_connection(connection)
        .build()
        .expect("the default transport settings are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        let server = RpcEnvConfig::server("s", "127.0.0.1", 7).build().unwrap();
        assert_eq!(server.name(), "s");
        assert_eq!(server.bind(), Some(("127.0.0.1", 7)));
        assert_eq!(server.ask_timeout(), DEFAULT_ASK_TIMEOUT);
        assert_eq!(server.inbox_capacity(), DEFAULT_INBOX_CAPACITY);
        assert_eq!(server.max_pending_asks(), DEFAULT_MAX_PENDING_ASKS);
        assert!(!server.transport().connection().close_idle_accepted());
        let client = RpcEnvConfig::client("c").build().unwrap();
        assert_eq!(client.bind(), None);
        assert_eq!(client.advertise(), None);
    }

    #[test]
    fn rejects_zero_settings_naming_them() {
        let b = || RpcEnvConfig::client("c");
        assert_eq!(
            b().with_ask_timeout(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroTimeout("ask timeout")
        );
        assert_eq!(
            b().with_lookup_timeout(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroTimeout("lookup timeout")
        );
        assert_eq!(
            b().with_inbox_capacity(0).build().unwrap_err(),
            ConfigError::ZeroLimit("inbox capacity")
        );
        assert_eq!(
            b().with_max_pending_asks(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max pending asks")
        );
        // Zero port retries makes sense: fail at once.
        assert!(b().with_port_retries(0).build().is_ok());
    }

    #[test]
    fn with_security_keeps_the_other_transport_settings() {
        let transport = TransportConfig::builder()
            .with_max_connections(3)
            .build()
            .unwrap();
        let config = RpcEnvConfig::client("c")
            .with_transport(transport)
            .with_security(Security::secret("s3cret"))
            .build()
            .unwrap();
        assert_eq!(config.transport().max_connections(), 3);
        assert!(config.transport().security().is_enabled());
    }
}
