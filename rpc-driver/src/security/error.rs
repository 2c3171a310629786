//! Why a connection was not secured.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a connection was not secured: what [`ConnectError::Security`] carries, and what a
/// server counts in [`ServerStats::auth_failures`].
///
/// [`ConnectError::Security`]: crate::transport::ConnectError::Security
/// [`ServerStats::auth_failures`]: crate::transport::ServerStats::auth_failures
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The peer did not prove it holds the secret, or refused ours (a wrong secret, an app
    /// id the server does not know, another mechanism). `remote` is the server's refusal, on
    /// a client.
    #[error("authentication with {peer} failed{}", remote.as_ref().map(|r| format!(" (the peer said: {r})")).unwrap_or_default())]
    AuthenticationFailed {
        /// The peer.
        peer: SocketAddr,
        /// The server's refusal text, on a client.
        remote: Option<String>,
    },
    /// The peer requires authentication that this side is not configured for: it refused a
    /// request on a connection without any. `remote` is its refusal.
    #[error("the peer requires authentication (configure a matching Security): {remote}")]
    AuthenticationRequired {
        /// The peer's refusal text.
        remote: String,
    },
    /// The handshake did not finish within [`Security::handshake_timeout`](super::config::Security::handshake_timeout).
    #[error("the handshake with {peer} did not finish within {after:?}")]
    TimedOut {
        /// The peer.
        peer: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The peer broke the handshake's protocol: another request before authenticating,
    /// garbage, an oversized frame.
    #[error("the handshake with {peer} failed: {reason}")]
    Protocol {
        /// The peer.
        peer: SocketAddr,
        /// What it did.
        reason: String,
    },
    /// TLS failed: the reason is rustls' (a certificate refused, an alert from the peer, a
    /// peer that does not speak TLS, no common version).
    #[error("tls with {peer} failed: {reason}")]
    Tls {
        /// The peer.
        peer: SocketAddr,
        /// Why, in rustls' words.
        reason: String,
    },
    /// The connection closed, or failed, during the handshake.
    #[error("the connection to {peer} ended during the handshake: {reason}")]
    Closed {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
}
