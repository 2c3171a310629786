//! `FileDownload` is tokio's `AsyncRead` with rpc-tokio alone (which turns on rpc-driver's
//! `tokio` feature): checked by this compiling. Reading a download through it is in the
//! conformance suite (`tests/tests/conformance/file_server.rs`).

/// Compiles only if `T` implements tokio's `AsyncRead`.
fn tokio_async_read<T: tokio::io::AsyncRead + Unpin>() {}

#[test]
fn a_file_download_is_tokio_async_read() {
    tokio_async_read::<rpc_tokio::FileDownload>();
}
