//! Spark's AES authentication (`spark.network.crypto.enabled`) as a pure state machine.
//!
//! This is the handshake of Spark's `AuthEngine` (`org.apache.spark.network.crypto`), byte for
//! byte as Spark 4.3.0 sends it. It does no I/O and draws no randomness: the caller passes the
//! secret and an [`AuthRandomness`], carries the messages in an `RpcRequest`/`RpcResponse`, and
//! hands the resulting [`TransportKeys`] to a transport cipher.
//!
//! ```text
//!  client                                                 server
//!  AuthClient::new(app id, secret, rnd)
//!    challenge() ── RpcRequest body ──────────────────►  AuthServer::handle_challenge(
//!                                                          bytes, secret lookup, rnd)
//!    handle_response(bytes) ◄── RpcResponse body ────────   ServerAccepted { response, keys }
//!    ──► TransportKeys                                      (everything after is encrypted)
//! ```
//!
//! There is no key confirmation: a wrong secret fails on the server (which answers with an
//! `RpcFailure` and closes), and a version mismatch ([`AuthVersion`]) only shows as the first
//! encrypted frame failing. Every failed check is the one [`AuthError::Failed`].
//!
//! ```
//! use rpc_proto::auth::{AuthClient, AuthRandomness, AuthServer, AuthVersion, Secret};
//!
//! let client = AuthClient::new(
//!     AuthVersion::V2,
//!     "sparkSaslUser",
//!     Secret::new("s3cret"),
//!     AuthRandomness::from_bytes(&[7; AuthRandomness::LEN]),
//! )?;
//! let accepted = AuthServer::new(AuthVersion::V2).handle_challenge(
//!     client.challenge(),
//!     |_app_id| Some(Secret::new("s3cret")),
//!     AuthRandomness::from_bytes(&[9; AuthRandomness::LEN]),
//! )?;
//! let keys = client.handle_response(&accepted.response)?;
//! assert_eq!(keys.key(), accepted.keys.key());
//! assert_eq!(keys.outbound_iv(), accepted.keys.inbound_iv());
//! # Ok::<(), rpc_proto::auth::AuthError>(())
//! ```

mod engine;
mod message;

pub use engine::{
    AuthClient, AuthError, AuthRandomness, AuthServer, AuthVersion, Secret, ServerAccepted,
    TransportKeys,
};
pub use message::{
    AuthField, AuthMessage, AuthMessageError, AUTH_MESSAGE_TAG, MAX_APP_ID_LEN,
    MAX_AUTH_MESSAGE_LEN, MAX_CIPHERTEXT_LEN, MAX_SALT_LEN,
};

#[cfg(test)]
mod tests;
