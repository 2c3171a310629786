//! Spark-compatible RPC on [tokio](https://tokio.rs).
//!
//! The tokio implementation of [`rpc_driver::Runtime`], and the public API re-exported under
//! the same names as `rpc-async-std`: switching runtimes is switching the crate.
//!
//! - The control plane: [`RpcEnv`] hosts named endpoints ([`RpcEndpoint`],
//!   [`ConcurrentRpcEndpoint`]); an [`RpcEndpointRef`] reaches one, here or in another
//!   process, with [`send`](RpcEndpointRef::send) and [`ask`](RpcEndpointRef::ask). Messages
//!   and replies are known to peers by the stable name of their [`RpcMessage`](trait@RpcMessage)
//!   (derive it).
//! - The transport layer under it: [`TransportServer`], [`TransportClientFactory`],
//!   [`TransportClient`], [`RpcHandler`], speaking Spark's network-common wire format.
//! - Blocks on the transport layer: a [`BlockServer`] serves them from a [`BlockSource`];
//!   [`fetch_blocks`] and [`RetryingBlockFetcher`] fetch them over chunk streams (Spark's
//!   `OneForOneBlockFetcher` and `RetryingBlockTransferor`).
//!
//! Start envs and transports with [`runtime()`], from inside a tokio runtime.
//!
//! # Example: hello
//!
//! Spark's `HelloEndpoint` (`examples/hello.rs`, run it with
//! `cargo run -p rpc-tokio --example hello`):
//!
//! ```no_run
#![doc = include_str!("../examples/hello.rs")]
//! ```
//!
//! # Example: fetching blocks
//!
//! A [`BlockServer`] serving files read from a directory, and a [`RetryingBlockFetcher`]
//! fetching them (`examples/fetch_blocks.rs`, run it with
//! `cargo run -p rpc-tokio --example fetch_blocks`):
//!
//! ```no_run
#![doc = include_str!("../examples/fetch_blocks.rs")]
//! ```
//!
//! # Example: heartbeats
//!
//! A driver endpoint receiving periodic heartbeats from executor envs and noticing one that
//! dies (`examples/heartbeat.rs`, run it with `cargo run -p rpc-tokio --example heartbeat`):
//!
//! ```no_run
#![doc = include_str!("../examples/heartbeat.rs")]
//! ```

#![forbid(unsafe_code)]

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Derives [`RpcMessage`](trait@RpcMessage): the name is the type's identifier, or the one set
/// with `#[rpc(name = "...")]`. Its code names `::rpc_tokio` (`#[rpc(crate = "...")]` for a
/// renamed dependency).
pub use rpc_derive::TokioRpcMessage as RpcMessage;
pub use rpc_driver::api::*;

/// The crates underneath, for what the API above does not cover (the sans-IO protocol core,
/// the driver's internals): not part of this crate's API, and not stable.
#[doc(hidden)]
pub use rpc_driver::{self, rpc_proto};

/// The runtime to start envs and transports on: the tokio runtime this is called from.
///
/// ```no_run
/// # async fn demo() -> Result<(), rpc_tokio::SetupError> {
/// use rpc_tokio::{RpcEnv, RpcEnvConfig};
///
/// let env = RpcEnv::create(rpc_tokio::runtime(), RpcEnvConfig::server("driver", "127.0.0.1", 0).build()?)?;
/// println!("listening at {:?}", env.address());
/// env.shutdown();
/// env.await_termination().await;
/// # Ok(())
/// # }
/// ```
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn runtime() -> Arc<dyn Runtime> {
    TokioRuntime::shared()
}

/// The tokio [`Runtime`]: tasks, timers and sockets of the tokio runtime it was made in.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// Uses the tokio runtime this is called from.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn current() -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// The runtime as the driver takes it.
    pub fn shared() -> Arc<dyn Runtime> {
        Arc::new(Self::current())
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        self.handle.spawn(future);
    }

    fn spawn_isolated(&self, future: BoxFuture<()>) {
        let handle = self.handle.clone();
        std::thread::Builder::new()
            .name("rpc-isolated".into())
            .spawn(move || handle.block_on(future))
            .expect("spawning a thread for an isolated endpoint");
    }

    /// On tokio's blocking pool (`spawn_blocking`).
    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send>) {
        drop(self.handle.spawn_blocking(f));
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        // Timers belong to a runtime: enter ours, so an ask awaited on another executor works.
        let _entered = self.handle.enter();
        Box::pin(TokioTimer {
            sleep: tokio::time::sleep_until(deadline.into()),
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            // Connect on our runtime's reactor even when called from another executor.
            let stream = handle
                .spawn(TcpStream::connect(addr))
                .await
                .map_err(io::Error::other)??;
            stream.set_nodelay(true)?;
            Ok(Box::new(TokioStream(stream)) as Box<dyn AsyncStream>)
        })
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
        let _guard = self.handle.enter();
        Ok(Box::new(TokioListener(TcpListener::from_std(listener)?)))
    }
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    struct TokioTimer {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl AsyncTimer for TokioTimer {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.project().sleep.reset(deadline.into());
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Future::poll(self.project().sleep, cx)
    }
}

struct TokioStream(TcpStream);

impl AsyncStream for TokioStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        // Room for `max` bytes, read into the spare capacity without zeroing it first.
        buf.reserve(max);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, &mut (&mut *buf).limit(max))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    #[cfg(target_os = "linux")]
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            let sent = self.0.try_io(tokio::io::Interest::WRITABLE, || {
                let mut at = offset;
                rustix::fs::sendfile(&self.0, file, Some(&mut at), len).map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

struct TokioListener(TcpListener);

impl AsyncListener for TokioListener {
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Box<dyn AsyncStream>, SocketAddr)>> {
        match self.0.poll_accept(cx) {
            Poll::Ready(Ok((stream, addr))) => {
                stream.set_nodelay(true)?;
                Poll::Ready(Ok((Box::new(TokioStream(stream)), addr)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn timer_fires_after_its_deadline_and_can_be_reset() {
        let rt = TokioRuntime::current();
        let start = rt.now();
        let mut timer = rt.new_timer(start + Duration::from_millis(20));
        timer_fired(timer.as_mut()).await;
        assert!(rt.now() >= start + Duration::from_millis(20));
        timer.as_mut().reset(rt.now() + Duration::from_millis(10));
        let reset_at = rt.now();
        timer_fired(timer.as_mut()).await;
        assert!(rt.now() >= reset_at + Duration::from_millis(10));
    }

    #[tokio::test]
    async fn spawn_runs_the_future() {
        let rt = TokioRuntime::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(Box::pin(async move {
            tx.send(42).unwrap();
        }));
        assert_eq!(rx.await.unwrap(), 42);
    }
}
