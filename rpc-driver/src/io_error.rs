//! `From` conversions of the driver's errors into [`std::io::Error`].
//!
//! The driver's errors convert into [`io::Error`] for callers that `?` them in I/O code. The
//! [`io::Error`] keeps the typed error as its inner error (a downcast of
//! [`get_ref`](io::Error::get_ref) gives it back) and has the same text; its
//! [`ErrorKind`] says what I/O code branches on: [`TimedOut`](ErrorKind::TimedOut) for
//! timeouts, [`NotFound`](ErrorKind::NotFound) for an endpoint or file that does not exist,
//! [`PermissionDenied`](ErrorKind::PermissionDenied) for failed authentication,
//! [`ConnectionAborted`](ErrorKind::ConnectionAborted) for a connection that ended,
//! [`ResourceBusy`](ErrorKind::ResourceBusy) for a refusal that calls for backing off
//! (a full send buffer, outbox or inbox), [`Other`](ErrorKind::Other) for a failure the peer
//! reported.

use std::io::{self, ErrorKind};

use crate::block::BlockFetchError;
use crate::security::SecurityError;
use crate::transport::ConnectError;

/// The [`ErrorKind`] of an error of the transport's calls.
fn rpc_kind(error: &rpc_proto::RequestError) -> ErrorKind {
    io::Error::from(error.clone()).kind()
}

impl SecurityError {
    fn io_kind(&self) -> ErrorKind {
        match self {
            Self::AuthenticationFailed { .. } | Self::AuthenticationRequired { .. } => {
                ErrorKind::PermissionDenied
            }
            Self::TimedOut { .. } => ErrorKind::TimedOut,
            Self::Protocol { .. } | Self::Tls { .. } => ErrorKind::InvalidData,
            Self::Closed { .. } => ErrorKind::ConnectionAborted,
        }
    }
}

impl From<SecurityError> for io::Error {
    fn from(error: SecurityError) -> Self {
        Self::new(error.io_kind(), error)
    }
}

impl ConnectError {
    fn io_kind(&self) -> ErrorKind {
        match self {
            Self::Io { kind, .. } => *kind,
            Self::TimedOut { .. } => ErrorKind::TimedOut,
            Self::Closed => ErrorKind::NotConnected,
            Self::Security(error) => error.io_kind(),
        }
    }
}

/// The connect's own [`ErrorKind`] for [`ConnectError::Io`] (a refused connection stays
/// [`ConnectionRefused`](ErrorKind::ConnectionRefused)).
impl From<ConnectError> for io::Error {
    fn from(error: ConnectError) -> Self {
        Self::new(error.io_kind(), error)
    }
}

impl From<BlockFetchError> for io::Error {
    fn from(error: BlockFetchError) -> Self {
        let kind = match &error {
            BlockFetchError::Connect(error) => error.io_kind(),
            BlockFetchError::Open(error) | BlockFetchError::Chunk { error, .. } => rpc_kind(error),
            BlockFetchError::Plan(_) => ErrorKind::InvalidInput,
            BlockFetchError::InvalidResponse(_) => ErrorKind::InvalidData,
            BlockFetchError::TooManyStreams(_) => ErrorKind::ResourceBusy,
            BlockFetchError::Unanswered => ErrorKind::Other,
        };
        Self::new(kind, error)
    }
}

#[cfg(not(loom))]
mod env {
    use std::io::{self, ErrorKind};

    use super::rpc_kind;
    use crate::env::{FileServerError, RpcError};

    /// A refused download whose message is Spark's text for a stream that does not exist
    /// ([`stream_not_found`](crate::transport::stream_not_found)).
    fn is_not_found(error: &rpc_proto::RequestError) -> bool {
        matches!(error, rpc_proto::RequestError::Remote(message)
            if message.starts_with("Stream '") && message.ends_with("' was not found."))
    }

    impl From<RpcError> for io::Error {
        fn from(error: RpcError) -> Self {
            let kind = match &error {
                RpcError::TimedOut { .. } => ErrorKind::TimedOut,
                RpcError::EndpointNotFound(_) => ErrorKind::NotFound,
                RpcError::TypeMismatch { .. } => ErrorKind::InvalidInput,
                RpcError::EndpointStopped(_) => ErrorKind::ConnectionAborted,
                RpcError::EndpointBusy { .. } | RpcError::OutboxFull { .. } => {
                    ErrorKind::ResourceBusy
                }
                RpcError::EnvStopped | RpcError::Unbound(_) => ErrorKind::NotConnected,
                RpcError::Disconnected { .. } => ErrorKind::ConnectionAborted,
                RpcError::Unreachable { .. } => ErrorKind::ConnectionRefused,
                RpcError::Security { cause, .. } => cause.io_kind(),
                RpcError::Remote(_) => ErrorKind::Other,
                RpcError::NotSent(call) => Self::from(call.clone()).kind(),
                RpcError::Serialization(_) => ErrorKind::InvalidData,
            };
            Self::new(kind, error)
        }
    }

    /// [`Download`](FileServerError::Download) of a file the serving env does not have is
    /// [`NotFound`](ErrorKind::NotFound).
    impl From<FileServerError> for io::Error {
        fn from(error: FileServerError) -> Self {
            let kind = match &error {
                FileServerError::NoAddress => ErrorKind::Unsupported,
                FileServerError::Io { source, .. } => source.kind(),
                FileServerError::NotAFile(_)
                | FileServerError::InvalidName(_)
                | FileServerError::InvalidBaseUri(_)
                | FileServerError::InvalidUri(_) => ErrorKind::InvalidInput,
                FileServerError::NotADirectory(_) => ErrorKind::NotADirectory,
                FileServerError::DuplicateName { .. } | FileServerError::DuplicateBaseUri(_) => {
                    ErrorKind::AlreadyExists
                }
                FileServerError::Connect { source, .. } => source.io_kind(),
                FileServerError::Download { source, .. } if is_not_found(source) => {
                    ErrorKind::NotFound
                }
                FileServerError::Download { source, .. } => rpc_kind(source),
            };
            Self::new(kind, error)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rpc_proto::{CallError, ConnectionError, StreamChunkId};

    use super::*;
    use crate::env::{FileServerError, RpcError};
    use crate::transport::stream_not_found;

    fn peer() -> SocketAddr {
        "127.0.0.1:7077".parse().unwrap()
    }

    /// The kind of `error` as an `io::Error`, checking that the text is the same and the typed
    /// error comes back.
    fn kind<E>(error: E) -> ErrorKind
    where
        E: std::error::Error + Clone + PartialEq + Send + Sync + 'static,
        io::Error: From<E>,
    {
        let text = error.to_string();
        let io = io::Error::from(error.clone());
        assert_eq!(io.to_string(), text);
        let kind = io.kind();
        let inner = io.into_inner().expect("the typed error is kept");
        assert!(*inner.downcast::<E>().expect("the same type") == error);
        kind
    }

    #[test]
    fn env_errors_become_io_errors_of_the_fitting_kind() {
        let ep = "rpc://x@h:1".to_owned();
        assert_eq!(
            kind(RpcError::TimedOut {
                after: Duration::from_secs(1),
                endpoint: ep.clone()
            }),
            ErrorKind::TimedOut
        );
        assert_eq!(
            kind(RpcError::EndpointNotFound(ep.clone())),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(RpcError::NotSent(CallError::SendBufferFull {
                buffered: 2,
                max: 1
            })),
            ErrorKind::ResourceBusy
        );
        assert_eq!(
            kind(RpcError::OutboxFull {
                peer: ep.clone(),
                queued_messages: 1,
                queued_bytes: 2
            }),
            ErrorKind::ResourceBusy
        );
        assert_eq!(
            kind(RpcError::Disconnected {
                peer: ep.clone(),
                cause: ConnectionError::PeerClosed
            }),
            ErrorKind::ConnectionAborted
        );
        assert_eq!(
            kind(RpcError::Security {
                endpoint: ep.clone(),
                cause: SecurityError::AuthenticationFailed {
                    peer: peer(),
                    remote: None
                }
            }),
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind(RpcError::Remote("boom".into())), ErrorKind::Other);
        assert_eq!(kind(RpcError::EnvStopped), ErrorKind::NotConnected);
    }

    #[test]
    fn connect_errors_keep_the_kind_of_the_failed_connect() {
        assert_eq!(
            kind(ConnectError::Io {
                addr: peer(),
                kind: ErrorKind::ConnectionRefused,
                message: "refused".into()
            }),
            ErrorKind::ConnectionRefused
        );
        assert_eq!(
            kind(ConnectError::TimedOut {
                addr: peer(),
                after: Duration::from_secs(1)
            }),
            ErrorKind::TimedOut
        );
        assert_eq!(
            kind(ConnectError::Security(
                SecurityError::AuthenticationRequired {
                    remote: "no".into()
                }
            )),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind(SecurityError::TimedOut {
                peer: peer(),
                after: Duration::from_secs(1)
            }),
            ErrorKind::TimedOut
        );
        assert_eq!(
            kind(SecurityError::Tls {
                peer: peer(),
                reason: "bad certificate".into()
            }),
            ErrorKind::InvalidData
        );
    }

    #[test]
    fn block_fetch_errors_take_the_kind_of_their_cause() {
        let chunk = StreamChunkId::new(1, 0);
        assert_eq!(
            kind(BlockFetchError::Chunk {
                chunk,
                error: rpc_proto::RequestError::TimedOut {
                    after: Duration::from_secs(1)
                }
            }),
            ErrorKind::TimedOut
        );
        assert_eq!(
            kind(BlockFetchError::Open(rpc_proto::RequestError::Remote(
                "no block".into()
            ))),
            ErrorKind::Other
        );
        assert_eq!(
            kind(BlockFetchError::TooManyStreams("256 open".into())),
            ErrorKind::ResourceBusy
        );
        assert_eq!(
            kind(BlockFetchError::Connect(ConnectError::Closed)),
            ErrorKind::NotConnected
        );
    }

    #[test]
    fn a_file_the_server_does_not_have_is_not_found() {
        let missing = FileServerError::Download {
            uri: "rpc://h:1/files/a".into(),
            source: rpc_proto::RequestError::Remote(stream_not_found("/files/a").into()),
        };
        let io = io::Error::from(missing);
        assert_eq!(io.kind(), ErrorKind::NotFound);
        assert!(io
            .get_ref()
            .and_then(|e| e.downcast_ref::<FileServerError>())
            .is_some());
        let refused = FileServerError::Download {
            uri: "rpc://h:1/files/a".into(),
            source: rpc_proto::RequestError::Remote("cannot read /files/a: denied".into()),
        };
        assert_eq!(io::Error::from(refused).kind(), ErrorKind::Other);
        let unreadable = FileServerError::Io {
            path: "/nope".into(),
            source: io::Error::from(ErrorKind::NotFound),
        };
        let io = io::Error::from(unreadable);
        assert_eq!(io.kind(), ErrorKind::NotFound);
        assert!(io.get_ref().and_then(|e| e.source()).is_some());
        assert_eq!(
            io::Error::from(FileServerError::InvalidUri("x".into())).kind(),
            ErrorKind::InvalidInput
        );
    }
}
