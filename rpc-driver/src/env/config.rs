//! The settings of an env.

use std::time::Duration;

use rpc_proto::{OutboxConfig, RpcAddress};

use crate::transport::TransportConfig;

/// Settings of an [`RpcEnv`](crate::env::rpc_env::RpcEnv).
#[derive(Debug, Clone)]
pub struct RpcEnvConfig {
    /// A name for logs.
    pub name: String,
    /// Where to listen: `None` for a client-mode env, which accepts no connections (its
    /// endpoints are reachable only over connections it opened).
    pub bind: Option<(String, u16)>,
    /// The address other envs are told to use, when it differs from the bound one (NAT,
    /// containers). Refs to this env's endpoints carry it.
    pub advertise: Option<RpcAddress>,
    /// When the port is taken, try the next ones, this many times (Spark's
    /// `spark.port.maxRetries`); 0 fails at once. Port 0 (any free port) never retries.
    pub port_retries: u16,
    /// The default timeout of [`RpcEndpointRef::ask`](crate::env::reference::RpcEndpointRef::ask) (Spark's `spark.rpc.askTimeout`).
    pub ask_timeout: Duration,
    /// How long a lookup of a remote endpoint may take (Spark's `spark.rpc.lookupTimeout`).
    pub lookup_timeout: Duration,
    /// The transport layer's settings. The env's default differs from
    /// [`TransportConfig::default`] in one way: connections the env accepted stay open while
    /// idle ([`Config::close_idle_accepted`](rpc_proto::Config::close_idle_accepted) off), as
    /// in Spark's `NettyRpcEnv`, because a client-mode env's endpoints are reached only over
    /// the connection it opened. Keep that when replacing the transport settings, or
    /// client-mode peers are cut off after the idle timeout.
    pub transport: TransportConfig,
    /// Each remote env's outbox: queue bounds and connect retries.
    pub outbox: OutboxConfig,
    /// How many messages each endpoint's inbox holds, queued or being handled, before
    /// refusing more (see "Limits" in the [module docs](crate::env)); an endpoint may set its own
    /// with [`RpcEndpoint::inbox_capacity`](crate::env::endpoint::RpcEndpoint::inbox_capacity). Zero is taken as one. Default 10,000 (Spark's
    /// inbox is unbounded).
    pub inbox_capacity: usize,
    /// How many asks from other envs the env handles at once, across its endpoints: from
    /// arrival until answered (or their call context is dropped). Beyond it, asks fail with
    /// [`RpcError::EndpointBusy`](crate::env::error::RpcError::EndpointBusy). Default 65,536.
    pub max_pending_asks: usize,
}

impl RpcEnvConfig {
    /// A server-mode env listening on `host:port` (port 0 picks a free port).
    pub fn server(name: &str, host: &str, port: u16) -> Self {
        Self {
            bind: Some((host.to_owned(), port)),
            ..Self::client(name)
        }
    }

    /// A client-mode env: it accepts no connections.
    pub fn client(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            bind: None,
            advertise: None,
            port_retries: 0,
            ask_timeout: Duration::from_secs(120),
            lookup_timeout: Duration::from_secs(120),
            transport: env_transport(),
            outbox: OutboxConfig::default(),
            inbox_capacity: 10_000,
            max_pending_asks: 65_536,
        }
    }

    /// Sets [`inbox_capacity`](RpcEnvConfig::inbox_capacity).
    pub fn with_inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity;
        self
    }

    /// Sets [`max_pending_asks`](RpcEnvConfig::max_pending_asks).
    pub fn with_max_pending_asks(mut self, asks: usize) -> Self {
        self.max_pending_asks = asks;
        self
    }

    /// Sets [`advertise`](RpcEnvConfig::advertise).
    pub fn with_advertise(mut self, address: RpcAddress) -> Self {
        self.advertise = Some(address);
        self
    }

    /// Sets [`port_retries`](RpcEnvConfig::port_retries).
    pub fn with_port_retries(mut self, retries: u16) -> Self {
        self.port_retries = retries;
        self
    }

    /// Sets [`ask_timeout`](RpcEnvConfig::ask_timeout).
    pub fn with_ask_timeout(mut self, timeout: Duration) -> Self {
        self.ask_timeout = timeout;
        self
    }

    /// Sets [`lookup_timeout`](RpcEnvConfig::lookup_timeout).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Sets [`outbox`](RpcEnvConfig::outbox).
    pub fn with_outbox(mut self, outbox: OutboxConfig) -> Self {
        self.outbox = outbox;
        self
    }

    /// Sets [`transport`](RpcEnvConfig::transport).
    pub fn with_transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the security of every connection the env opens or accepts
    /// ([`TransportConfig::security`]): with a secret, a peer env must hold the same secret
    /// to reach any endpoint, and (with AES) everything between them is encrypted.
    ///
    /// ```
    /// # use rpc_driver::env::RpcEnvConfig;
    /// use rpc_driver::security::Security;
    /// let config = RpcEnvConfig::server("driver", "127.0.0.1", 0)
    ///     .with_security(Security::secret("s3cret"));
    /// assert!(config.transport.security.is_enabled());
    /// ```
    pub fn with_security(mut self, security: crate::security::Security) -> Self {
        self.transport.security = security;
        self
    }
}

/// The transport settings of an env: [`TransportConfig::default`], keeping idle accepted
/// connections (see [`RpcEnvConfig::transport`]).
fn env_transport() -> TransportConfig {
    let connection = rpc_proto::Config::builder()
        .with_close_idle_accepted(false)
        .build()
        .expect("the default connection settings are valid");
    TransportConfig::default().with_connection(connection)
}

impl RpcEnvConfig {
    /// The seed of the first outbox's jitter.
    pub(crate) fn outbox_seed(&self) -> u64 {
        // Different envs jitter differently; the same config jitters the same way.
        self.name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }
}
