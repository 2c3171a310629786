//! The error type of user code.
//!
//! Every trait a user implements ([`RpcHandler`](crate::transport::RpcHandler),
//! [`StreamManager`](crate::transport::StreamManager),
//! [`UploadSink`](crate::transport::UploadSink),
//! [`BlockSource`](crate::block::BlockSource) and the env's endpoints) fails with a
//! [`BoxError`]: any error, or a `String` / `&str` through `.into()` or `?`. Where the failure
//! goes to a peer, its text ([`Display`](std::fmt::Display)) is what goes on the wire.
//!
//! The driver's own errors convert into [`std::io::Error`] (see `io_error`).

/// The error type of user code: handlers, stream managers, upload sinks, block sources.
/// Anything that is an error, or a `String` / `&str` through `.into()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
