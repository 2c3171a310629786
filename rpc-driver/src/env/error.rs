//! Errors of the control plane.

use std::time::Duration;

use rpc_proto::{AddressError, CallError, ConnectionError, RemoteFailure, RpcEndpointAddress};

use crate::security::SecurityError;
use crate::transport::ConnectError;

// Shared error text; loom's `Arc` cannot hold `str`.
use crate::sync::unmodeled::Arc;

/// Why an `ask` (or a `send` that could be checked) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply within the timeout.
    #[error(
        "ask to {endpoint} timed out after {after:?} (the default is set by \
         RpcEnvConfig::ask_timeout; override it per call with ask_with_timeout)"
    )]
    TimedOut {
        /// The timeout.
        after: Duration,
        /// The endpoint asked.
        endpoint: String,
    },
    /// The endpoint does not exist (or no longer does).
    #[error("endpoint not found: {0}")]
    EndpointNotFound(String),
    /// The endpoint exists but takes other message or reply types.
    ///
    /// An env does not tell other envs which types its endpoints take, so `found` is known
    /// only for an endpoint in the caller's own env.
    #[error("endpoint {endpoint} {}", takes(found.as_deref(), expected))]
    TypeMismatch {
        /// The endpoint.
        endpoint: String,
        /// The types the caller uses.
        expected: String,
        /// The types the endpoint declares, when it is in the caller's env; `None` for an
        /// endpoint of another env (which says only that the types differ).
        found: Option<String>,
    },
    /// The endpoint was stopped before it handled the message.
    #[error("endpoint {0} is stopped")]
    EndpointStopped(String),
    /// The message was refused, not handled: the endpoint's inbox is full
    /// ([`RpcEnvConfig::inbox_capacity`](crate::env::config::RpcEnvConfig::inbox_capacity)), or its env
    /// is handling as many asks from other envs as it takes
    /// ([`RpcEnvConfig::max_pending_asks`](crate::env::config::RpcEnvConfig::max_pending_asks)). Sending
    /// again later may succeed.
    #[error("endpoint {endpoint} is busy: {reason}")]
    EndpointBusy {
        /// The endpoint.
        endpoint: String,
        /// Which limit was reached.
        reason: Arc<str>,
    },
    /// The env (ours) is shut down.
    #[error("the rpc env is stopped")]
    EnvStopped,
    /// The connection to the peer ended before the reply arrived.
    #[error("disconnected from {peer}: {cause}")]
    Disconnected {
        /// The peer.
        peer: String,
        /// Why the connection ended.
        cause: ConnectionError,
    },
    /// The peer could not be reached.
    #[error("could not deliver to {endpoint}: {cause}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The last connect error.
        cause: Arc<str>,
    },
    /// The peer could not be reached because the connection's handshake failed: a wrong
    /// secret, a peer that requires authentication (or another mechanism), a handshake that
    /// timed out. Retrying does not help until the configuration changes.
    #[error("could not deliver to {endpoint}: {cause}")]
    Security {
        /// The endpoint.
        endpoint: String,
        /// Why the handshake failed.
        cause: SecurityError,
    },
    /// The endpoint failed the call (`RpcCallContext::send_failure`, or its handler panicked).
    #[error("remote failure: {0}")]
    Remote(Arc<str>),
    /// The message could not be sent: the connection refused it, and says why. Match
    /// [`CallError::SendBufferFull`] to back off: the peer is not reading as fast as it is
    /// sent to, and sending again once it has read may succeed. Other causes (a frame too
    /// large) would recur.
    #[error("message not sent: {0}")]
    NotSent(CallError),
    /// The message was refused, not sent: the outbox to the peer, which holds messages while
    /// its connection is being opened, is full (see
    /// [`RpcEnvConfig::outbox`](super::RpcEnvConfig::outbox)). Sending again later may
    /// succeed.
    #[error(
        "message not sent: the outbox to {peer} is full ({queued_messages} messages, \
         {queued_bytes} bytes queued)"
    )]
    OutboxFull {
        /// The peer's address.
        peer: String,
        /// Messages queued when it was refused.
        queued_messages: usize,
        /// Bytes queued when it was refused.
        queued_bytes: u64,
    },
    /// A message or reply could not be (de)serialized.
    #[error("serialization failed: {0}")]
    Serialization(Arc<str>),
    /// The ref was not made by an env (deserialized outside one) or its env is gone.
    #[error("endpoint ref {0} is not bound to a running rpc env")]
    Unbound(RpcEndpointAddress),
}

fn takes(found: Option<&str>, expected: &str) -> String {
    match found {
        Some(found) => format!("takes {found}, not {expected}"),
        None => format!("does not take {expected}"),
    }
}

/// Setting up an env or an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The listening socket could not be bound.
    #[error("could not bind {addr}: {source}")]
    Bind {
        /// The address (the last one tried, with port retries).
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An endpoint of that name is already registered.
    #[error("an endpoint named {0:?} is already registered")]
    DuplicateName(String),
    /// The env is stopped.
    #[error("the rpc env is stopped")]
    EnvStopped,
    /// An address or URI did not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The address did not resolve.
    #[error("could not resolve {0}")]
    Resolve(String),
    /// A lookup failed.
    #[error(transparent)]
    Lookup(#[from] RpcError),
    /// A setting is out of range: an endpoint's
    /// [`inbox_capacity`](super::RpcEndpoint::inbox_capacity) of zero, or (through `?`) a
    /// config that failed to build.
    #[error(transparent)]
    Config(#[from] rpc_proto::ConfigError),
}

impl From<ConnectError> for RpcError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Security(cause) => Self::Security {
                endpoint: String::new(),
                cause,
            },
            e => Self::Unreachable {
                endpoint: String::new(),
                cause: e.to_string().into(),
            },
        }
    }
}

/// Turns a failure string from the peer back into a typed error (see
/// [`RemoteFailure`] for the kinds). A Spark peer's failures carry no kind and arrive as
/// [`RpcError::Remote`].
pub(crate) fn from_remote(message: &str, endpoint: &str) -> RpcError {
    match RemoteFailure::parse(message) {
        RemoteFailure::EndpointNotFound(_) => RpcError::EndpointNotFound(endpoint.to_owned()),
        RemoteFailure::TypeMismatch { expected, found } => RpcError::TypeMismatch {
            endpoint: endpoint.to_owned(),
            expected,
            found,
        },
        RemoteFailure::EndpointBusy(reason) => RpcError::EndpointBusy {
            endpoint: endpoint.to_owned(),
            reason: reason.into(),
        },
        RemoteFailure::EndpointStopped(_) => RpcError::EndpointStopped(endpoint.to_owned()),
        RemoteFailure::BadMessage(reason) => RpcError::Serialization(reason.into()),
        _ => RpcError::Remote(message.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_strings_of_our_peers_become_typed_errors() {
        let ep = "rpc://x@h:1";
        assert_eq!(
            from_remote("[rpc:endpoint-not-found] x", ep),
            RpcError::EndpointNotFound(ep.into())
        );
        assert_eq!(
            from_remote("[rpc:type-mismatch] A -> B | C -> D", ep),
            RpcError::TypeMismatch {
                endpoint: ep.into(),
                expected: "A -> B".into(),
                found: Some("C -> D".into())
            }
        );
        let mismatch = from_remote("[rpc:type-mismatch] A -> B", ep);
        assert_eq!(
            mismatch,
            RpcError::TypeMismatch {
                endpoint: ep.into(),
                expected: "A -> B".into(),
                found: None
            }
        );
        assert_eq!(
            mismatch.to_string(),
            "endpoint rpc://x@h:1 does not take A -> B"
        );
        assert_eq!(
            from_remote("[rpc:endpoint-busy] its inbox is full", ep),
            RpcError::EndpointBusy {
                endpoint: ep.into(),
                reason: "its inbox is full".into()
            }
        );
        assert_eq!(
            from_remote("[rpc:endpoint-stopped] x", ep),
            RpcError::EndpointStopped(ep.into())
        );
        assert_eq!(
            from_remote("[rpc:bad-message] undecodable envelope: empty body", ep),
            RpcError::Serialization("undecodable envelope: empty body".into())
        );
        // A Spark peer's failure (a Java stack trace) has no prefix.
        let java = "java.lang.IllegalStateException: boom\n\tat Foo.bar(Foo.java:1)";
        assert_eq!(from_remote(java, ep), RpcError::Remote(java.into()));
    }
}
