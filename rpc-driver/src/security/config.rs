//! How connections are secured: [`Security`], its authentication and its TLS settings.

use std::fmt;
use std::time::Duration;

use rpc_proto::auth::{AuthVersion, Secret};
use rpc_proto::cipher::CipherMode;

use crate::tls::TlsConfig;

// Holders and TLS settings are handed in by users: std's `Arc`, never loom's.
use crate::sync::unmodeled::Arc;

/// The app id Spark's `RpcEnv` authenticates as (`SecurityManager.getSaslUser`); the
/// default of [`Security::with_app_id`].
pub const SPARK_RPC_APP_ID: &str = "sparkSaslUser";

/// Spark's default timeout of each handshake round trip (`spark.network.auth.rpcTimeout`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Gives the secret of an application: Spark's `SecretKeyHolder`.
///
/// A server asks it for the secret of the app id a client presents (`None` refuses the
/// client, exactly as a wrong secret would); a client asks it for its own app id's secret.
/// Called on connection tasks: it must not block.
pub trait SecretKeyHolder: Send + Sync + 'static {
    /// The secret of `app_id`, if it is known.
    fn secret(&self, app_id: &str) -> Option<Secret>;
}

/// One secret for every application (Spark's `spark.authenticate.secret`).
struct OneSecret(Secret);

impl SecretKeyHolder for OneSecret {
    fn secret(&self, _: &str) -> Option<Secret> {
        Some(self.0.clone())
    }
}

/// How connections authenticate, and the cipher that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMechanism {
    /// Spark's AES protocol (`spark.network.crypto.enabled=true`), then its transport cipher.
    /// Both sides must agree on the version and the cipher: Spark has no negotiation, and a
    /// mismatch shows only as the first message failing to decrypt.
    Aes {
        /// `spark.network.crypto.authEngineVersion`.
        version: AuthVersion,
        /// `spark.network.crypto.cipher`.
        cipher: CipherMode,
    },
    /// SASL DIGEST-MD5: what Spark uses with only `spark.authenticate=true`, and what every
    /// external shuffle service expects. Without `encrypt`, only the handshake is protected:
    /// the traffic that follows is **not encrypted** (combine with TLS).
    Sasl {
        /// Ask for (as a client) or require (as a server) SASL's `auth-conf` layer
        /// (`spark.authenticate.enableSaslEncryption`; on a server
        /// `spark.network.sasl.serverAlwaysEncrypt`): 3DES or RC4 with HMAC-MD5, the ciphers
        /// the JDK offers. A server without it accepts clients either way.
        encrypt: bool,
    },
}

impl AuthMechanism {
    /// AES authentication, key schedule version 2, AES-GCM: what new deployments should use
    /// (and the default). Spark: `spark.network.crypto.enabled=true`,
    /// `spark.network.crypto.authEngineVersion=2`,
    /// `spark.network.crypto.cipher=AES/GCM/NoPadding`.
    pub const fn aes_gcm() -> Self {
        Self::Aes {
            version: AuthVersion::V2,
            cipher: CipherMode::Gcm,
        }
    }

    /// What a Spark deployment gets from `spark.authenticate=true` alone: SASL DIGEST-MD5,
    /// with the traffic after it in clear.
    pub const fn spark_default() -> Self {
        Self::Sasl { encrypt: false }
    }

    /// What a Spark deployment gets from `spark.network.crypto.enabled=true` alone: version 1
    /// and AES-CTR. CTR keeps what is sent secret but does not detect tampering.
    pub const fn spark_aes_default() -> Self {
        Self::Aes {
            version: AuthVersion::V1,
            cipher: CipherMode::Ctr,
        }
    }
}

impl Default for AuthMechanism {
    fn default() -> Self {
        Self::aes_gcm()
    }
}

/// The shared-secret settings of [`Security`].
#[derive(Clone)]
pub(super) struct Auth {
    pub(super) app_id: String,
    pub(super) secrets: Arc<dyn SecretKeyHolder>,
    pub(super) mechanism: AuthMechanism,
    pub(super) sasl_fallback: bool,
}

/// How a transport's connections prove who they are and protect their traffic. The default
/// is none: plain TCP, as Spark without `spark.authenticate`.
///
/// The same setting serves both roles: a server requires what it names from every client,
/// and a client does it with every server. Cheap to clone.
#[derive(Clone)]
pub struct Security {
    pub(super) auth: Option<Auth>,
    pub(super) tls: Option<TlsConfig>,
    pub(super) handshake_timeout: Duration,
}

impl Default for Security {
    fn default() -> Self {
        Self::none()
    }
}

impl Security {
    /// No authentication, no encryption.
    pub fn none() -> Self {
        Self {
            auth: None,
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Authentication with one shared secret for every application (Spark's
    /// `spark.authenticate.secret`: the string's UTF-8 bytes), with
    /// [`AuthMechanism::aes_gcm`], as [`SPARK_RPC_APP_ID`].
    pub fn secret(secret: impl Into<String>) -> Self {
        Self::secret_holder(Arc::new(OneSecret(Secret::new(secret))))
    }

    /// Authentication with a secret per application: a server asks `holder` for the secret
    /// of the app id each client presents; a client for its own
    /// ([`with_app_id`](Self::with_app_id)).
    pub fn secret_holder(holder: Arc<dyn SecretKeyHolder>) -> Self {
        Self {
            auth: Some(Auth {
                app_id: SPARK_RPC_APP_ID.to_owned(),
                secrets: holder,
                mechanism: AuthMechanism::default(),
                sasl_fallback: false,
            }),
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The app id this side presents as a client (Spark's RpcEnv: [`SPARK_RPC_APP_ID`];
    /// block transfer and the shuffle service: the application's id). No effect without a
    /// secret.
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        if let Some(auth) = &mut self.auth {
            auth.app_id = app_id.into();
        }
        self
    }

    /// The authentication mechanism. No effect without a secret.
    pub fn with_mechanism(mut self, mechanism: AuthMechanism) -> Self {
        if let Some(auth) = &mut self.auth {
            auth.mechanism = mechanism;
        }
        self
    }

    /// Spark's `spark.network.crypto.saslFallback` (on by default in Spark, **off** here): with
    /// [`AuthMechanism::Aes`], a client whose challenge the server refuses retries with SASL
    /// (without encryption) on the same connection, and a server accepts SASL clients too.
    /// Needed to talk to a Spark peer configured for SASL; it lets an active attacker who
    /// breaks the AES exchange downgrade the connection to an unencrypted one.
    pub fn with_sasl_fallback(mut self, fallback: bool) -> Self {
        if let Some(auth) = &mut self.auth {
            auth.sasl_fallback = fallback;
        }
        self
    }

    /// TLS on every connection (Spark's `spark.ssl.rpc.*`), alone or under authentication:
    /// the TLS handshake comes first, then the shared-secret handshake inside it. With an
    /// AES mechanism as well, the AES cipher goes under TLS, as Spark places it (the TLS
    /// records travel encrypted twice; choose one of the two unless a Spark peer needs both).
    /// A server needs an identity and a client a trust store (or trust-any); see
    /// [`TlsConfig`].
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// TLS without authentication: [`Security::none`] [`with_tls`](Self::with_tls).
    pub fn tls(tls: TlsConfig) -> Self {
        Self::none().with_tls(tls)
    }

    /// How long a connection's handshake may take, from the connect (or accept) to its end;
    /// past it, the connection is cut off. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether connections authenticate or use TLS at all.
    pub fn is_enabled(&self) -> bool {
        self.auth.is_some() || self.tls.is_some()
    }

    /// The TLS settings, if connections use TLS.
    pub fn tls_config(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// Whether `sendfile` can carry file bodies: not when a cipher or TLS must see every
    /// byte. (SASL without its layer leaves the bytes alone.)
    pub fn allows_sendfile(&self) -> bool {
        self.tls.is_none()
            && self
                .auth
                .as_ref()
                .is_none_or(|a| matches!(a.mechanism, AuthMechanism::Sasl { encrypt: false }))
    }

    /// The mechanism, if connections authenticate.
    pub fn mechanism(&self) -> Option<AuthMechanism> {
        self.auth.as_ref().map(|a| a.mechanism)
    }

    /// The app id this side presents as a client, if connections authenticate.
    pub fn app_id(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.app_id.as_str())
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Security");
        match &self.auth {
            Some(auth) => d
                .field("app_id", &auth.app_id)
                .field("mechanism", &auth.mechanism)
                .field("sasl_fallback", &auth.sasl_fallback)
                .field("secrets", &"..."),
            None => d.field("auth", &"none"),
        };
        d.field("tls", &self.tls)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}
