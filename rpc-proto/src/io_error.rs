//! `From` conversions of the call errors into [`std::io::Error`], for callers that use them
//! in I/O code and `?` them there.
//!
//! The [`io::Error`] keeps the typed error as its inner error
//! ([`get_ref`](io::Error::get_ref) / [`into_inner`](io::Error::into_inner) and a downcast
//! give it back), and its [`ErrorKind`] says what I/O code branches on:
//!
//! | error | kind |
//! |---|---|
//! | [`RequestError::TimedOut`] | [`TimedOut`](ErrorKind::TimedOut) |
//! | [`RequestError::Disconnected`], [`CallError::Closed`] | [`ConnectionAborted`](ErrorKind::ConnectionAborted), [`NotConnected`](ErrorKind::NotConnected) |
//! | [`RequestError::AuthenticationRequired`] | [`PermissionDenied`](ErrorKind::PermissionDenied) |
//! | [`RequestError::UnexpectedReply`] | [`InvalidData`](ErrorKind::InvalidData) |
//! | [`CallError::SendBufferFull`] | [`ResourceBusy`](ErrorKind::ResourceBusy) (back off, send again) |
//! | [`CallError::FrameTooLarge`], [`CallError::ByteCountTooLarge`] | [`InvalidInput`](ErrorKind::InvalidInput) |
//! | [`RequestError::Remote`] and the rest | [`Other`](ErrorKind::Other) |

use std::io::{self, ErrorKind};

use crate::error::{CallError, RequestError};

impl CallError {
    /// The [`ErrorKind`] of this error as an [`io::Error`].
    fn io_kind(&self) -> ErrorKind {
        match self {
            Self::Closed => ErrorKind::NotConnected,
            Self::SendBufferFull { .. } => ErrorKind::ResourceBusy,
            Self::FrameTooLarge { .. } | Self::ByteCountTooLarge(_) => ErrorKind::InvalidInput,
            _ => ErrorKind::Other,
        }
    }
}

impl From<CallError> for io::Error {
    fn from(error: CallError) -> Self {
        Self::new(error.io_kind(), error)
    }
}

impl From<RequestError> for io::Error {
    fn from(error: RequestError) -> Self {
        let kind = match &error {
            RequestError::TimedOut { .. } => ErrorKind::TimedOut,
            RequestError::Disconnected(_) => ErrorKind::ConnectionAborted,
            RequestError::NotSent(call) => call.io_kind(),
            RequestError::AuthenticationRequired(_) => ErrorKind::PermissionDenied,
            RequestError::UnexpectedReply { .. } => ErrorKind::InvalidData,
            _ => ErrorKind::Other,
        };
        Self::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ConnectionError;
    use crate::frame::MessageType;

    fn kind_and_back(error: RequestError) -> ErrorKind {
        let io = io::Error::from(error.clone());
        let kind = io.kind();
        let inner = io.into_inner().expect("the rpc error is kept");
        assert_eq!(
            *inner.downcast::<RequestError>().expect("an RequestError"),
            error
        );
        kind
    }

    #[test]
    fn rpc_errors_become_io_errors_of_the_fitting_kind_keeping_the_error() {
        let cases = [
            (
                RequestError::TimedOut {
                    after: Duration::from_secs(1),
                },
                ErrorKind::TimedOut,
            ),
            (
                RequestError::Disconnected(ConnectionError::PeerClosed),
                ErrorKind::ConnectionAborted,
            ),
            (
                RequestError::NotSent(CallError::SendBufferFull {
                    buffered: 10,
                    max: 5,
                }),
                ErrorKind::ResourceBusy,
            ),
            (
                RequestError::NotSent(CallError::Closed),
                ErrorKind::NotConnected,
            ),
            (
                RequestError::NotSent(CallError::FrameTooLarge { size: 10, max: 5 }),
                ErrorKind::InvalidInput,
            ),
            (
                RequestError::AuthenticationRequired("no".into()),
                ErrorKind::PermissionDenied,
            ),
            (
                RequestError::UnexpectedReply {
                    expected: "rpc",
                    got: MessageType::OneWayMessage,
                },
                ErrorKind::InvalidData,
            ),
            (RequestError::Remote("boom".into()), ErrorKind::Other),
        ];
        for (error, kind) in cases {
            let text = error.to_string();
            assert_eq!(io::Error::from(error.clone()).to_string(), text);
            assert_eq!(kind_and_back(error), kind, "{text}");
        }
    }

    #[test]
    fn a_full_send_buffer_is_a_busy_resource_in_io_code() {
        fn send() -> Result<(), CallError> {
            Err(CallError::SendBufferFull {
                buffered: 2,
                max: 1,
            })
        }
        fn io_code() -> io::Result<()> {
            send()?;
            Ok(())
        }
        let error = io_code().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ResourceBusy);
        assert!(matches!(
            error.get_ref().and_then(|e| e.downcast_ref::<CallError>()),
            Some(CallError::SendBufferFull { .. })
        ));
    }
}
