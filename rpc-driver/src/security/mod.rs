//! Authentication and encryption of connections: Spark's shared-secret authentication and
//! transport ciphers.
//!
//! A [`Security`] on [`TransportConfig`](crate::transport::TransportConfig) (or
//! [`RpcEnvConfig`](crate::env::RpcEnvConfig)) turns it on for every connection a server
//! accepts and every connection a factory opens. Before anything else crosses a connection,
//! the two sides run the handshake; a server serves **nothing** to a connection that has not
//! finished it (no RPC, one-way message, chunk, stream, upload or metadata request: the
//! connection's state machine does not even exist until then), and cuts off a handshake that
//! fails, stalls past [`Security::with_handshake_timeout`], or sends anything a handshake does
//! not contain. Then, with AES, every byte in both directions goes through the cipher.
//!
//! ```text
//!   socket ── CipherStream (AES-GCM / AES-CTR) ── frames ── Connection (rpc-proto)
//!              ▲ installed after the handshake (rpc_proto::handshake), with its keys
//! ```
//!
//! | mechanism | Spark's settings | protects |
//! |---|---|---|
//! | [`AuthMechanism::aes_gcm`] (default) | `spark.network.crypto.enabled=true`, `authEngineVersion=2`, `cipher=AES/GCM/NoPadding` | authenticity and confidentiality of every byte |
//! | [`AuthMechanism::spark_aes_default`] | `spark.network.crypto.enabled=true` (v1, `AES/CTR/NoPadding`) | confidentiality only: CTR does not detect tampering |
//!
//! Secrets are [`Secret`]s: compared in constant time, never printed by `Debug`, wiped on
//! drop. A server looks a client's secret up by the app id it presents
//! ([`SecretKeyHolder`], Spark's), so one server can serve several applications; a
//! connection then knows whom it speaks for ([`TransportClient::client_id`]), and a
//! [`OneForOneStreamManager`] serves a stream only to its application.
//!
//! The cost: with a cipher, file bodies cannot go out with `sendfile` (their bytes must be
//! encrypted), so they are read into memory in pieces and written, as on a platform without
//! `sendfile`; and every byte is encrypted and, with GCM, authenticated (AES-NI makes both
//! cheap next to the network on current machines; `rpc-bench` measures it).
//!
//! ```
//! use rpc_driver::security::{AuthMechanism, Security};
//! use std::time::Duration;
//!
//! let security = Security::secret("s3cret")
//!     .with_mechanism(AuthMechanism::aes_gcm())
//!     .with_handshake_timeout(Duration::from_secs(10));
//! assert!(security.is_enabled());
//! // The secret never shows.
//! assert!(!format!("{security:?}").contains("s3cret"));
//! ```
//!
//! [`TransportClient::client_id`]: crate::transport::TransportClient::client_id
//! [`OneForOneStreamManager`]: crate::transport::OneForOneStreamManager

mod config;
mod error;
mod handshake;
mod stream;

pub use config::{
    AuthMechanism, SecretKeyHolder, Security, DEFAULT_HANDSHAKE_TIMEOUT, SPARK_RPC_APP_ID,
};
pub use error::SecurityError;
pub(crate) use handshake::{secure_client, secure_server};

pub use rpc_proto::auth::{AuthVersion, Secret};
pub use rpc_proto::cipher::CipherMode;

pub use crate::tls::{TlsConfig, TlsConfigError, TlsError, TlsVersion};
