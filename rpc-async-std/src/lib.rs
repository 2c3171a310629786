//! Spark-compatible RPC on async-std's foundations.
//!
//! Built on [async-io](https://docs.rs/async-io) (the reactor and timers async-std and smol
//! share), so it runs under async-std's executor and under smol alike. async-std itself is no
//! longer developed; its foundations are.
//!
//! The async-io implementation of [`rpc_driver::Runtime`], and the public API re-exported
//! under the same names as `rpc-tokio`: switching runtimes is switching the crate.
//!
//! Start envs and transports with [`runtime()`]. Its tasks run on
//! [async-global-executor](https://docs.rs/async-global-executor), the executor async-std
//! itself runs on, and its sockets and timers on async-io's reactor, which smol shares: code
//! that awaits our futures may run under `async_std::task::block_on`, `smol::block_on` or
//! any other executor.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Async;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};

pub use rpc_driver::env::{
    Ask, BoxError, Cancelled, ConcurrentRpcEndpoint, EndpointContext, EndpointFailure,
    EndpointKind, EnvStats, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcEnvConfig,
    RpcError, SetupError,
};
pub use rpc_driver::rpc_proto::{OutboxConfig, RpcAddress, RpcEndpointAddress};
pub use rpc_driver::transport::{
    ConnectError, RpcCall, RpcHandler, RpcResponder, TransportClient, TransportClientFactory,
    TransportConfig, TransportServer,
};
pub use rpc_driver::{self, rpc_proto, AsyncListener, AsyncStream, AsyncTimer, BoxFuture, Runtime};

/// The runtime to start envs and transports on: async-io's reactor and timers, tasks on
/// the global executor async-std uses.
///
/// ```no_run
/// # fn main() -> Result<(), rpc_async_std::SetupError> {
/// use rpc_async_std::{RpcEnv, RpcEnvConfig};
///
/// let env = RpcEnv::create(rpc_async_std::runtime(), RpcEnvConfig::server("driver", "127.0.0.1", 0))?;
/// println!("listening at {:?}", env.address());
/// env.shutdown();
/// async_io::block_on(env.await_termination());
/// # Ok(())
/// # }
/// ```
pub fn runtime() -> Arc<dyn Runtime> {
    Arc::new(AsyncIoRuntime { executor: None })
}

/// The async-io [`Runtime`]: timers and sockets from async-io's reactor, tasks on an
/// executor (the global one, or one of yours).
#[derive(Clone)]
pub struct AsyncIoRuntime {
    executor: Option<Arc<async_executor::Executor<'static>>>,
}

impl fmt::Debug for AsyncIoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIoRuntime").finish_non_exhaustive()
    }
}

impl AsyncIoRuntime {
    /// Spawns tasks on `executor`; the caller runs it (smol's `Executor::run`, or any thread
    /// that drives it).
    pub fn with_executor(executor: Arc<async_executor::Executor<'static>>) -> Self {
        Self { executor: Some(executor) }
    }
}

impl Runtime for AsyncIoRuntime {
    fn spawn(&self, future: BoxFuture<()>) {
        match &self.executor {
            Some(executor) => executor.spawn(future).detach(),
            None => async_global_executor::spawn(future).detach(),
        }
    }

    fn spawn_isolated(&self, future: BoxFuture<()>) {
        std::thread::Builder::new()
            .name("rpc-isolated".into())
            .spawn(move || async_io::block_on(future))
            .expect("spawning a thread for an isolated endpoint");
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(AsyncIoTimer(async_io::Timer::at(deadline)))
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
        Box::pin(async move {
            let stream = Async::<TcpStream>::connect(addr).await?;
            stream.get_ref().set_nodelay(true)?;
            Ok(Box::new(AsyncIoStream(stream)) as Box<dyn AsyncStream>)
        })
    }

    fn listen(&self, listener: TcpListener) -> io::Result<Box<dyn AsyncListener>> {
        Ok(Box::new(AsyncIoListener(Async::new(listener)?)))
    }
}

struct AsyncIoStream(Async<TcpStream>);

impl AsyncStream for AsyncIoStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

struct AsyncIoListener(Async<TcpListener>);

impl AsyncListener for AsyncIoListener {
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Box<dyn AsyncStream>, SocketAddr)>> {
        loop {
            match self.0.get_ref().accept() {
                Ok((stream, addr)) => {
                    stream.set_nodelay(true)?;
                    let stream = Async::new(stream)?;
                    return Poll::Ready(Ok((Box::new(AsyncIoStream(stream)), addr)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.0.poll_readable(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

#[derive(Debug)]
struct AsyncIoTimer(async_io::Timer);

impl AsyncTimer for AsyncIoTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.0.set_at(deadline);
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::*;

    #[test]
    fn timer_fires_after_its_deadline_and_can_be_reset() {
        let rt = AsyncIoRuntime::with_executor(Arc::new(async_executor::Executor::new()));
        async_io::block_on(async {
            let start = rt.now();
            let mut timer = rt.new_timer(start + Duration::from_millis(20));
            rpc_driver::timer_fired(timer.as_mut()).await;
            assert!(rt.now() >= start + Duration::from_millis(20));
            let reset_at = rt.now();
            timer.as_mut().reset(reset_at + Duration::from_millis(10));
            rpc_driver::timer_fired(timer.as_mut()).await;
            assert!(rt.now() >= reset_at + Duration::from_millis(10));
        });
    }

    #[test]
    fn spawn_runs_the_future_on_the_executor() {
        let executor = Arc::new(async_executor::Executor::new());
        let rt = AsyncIoRuntime::with_executor(executor.clone());
        let (tx, rx) = async_channel_like();
        rt.spawn(Box::pin(async move {
            tx.set(42);
        }));
        let got = async_io::block_on(executor.run(rx));
        assert_eq!(got, 42);
    }

    /// A one-shot slot made of std parts, to keep dev-dependencies small.
    fn async_channel_like() -> (Slot, SlotFuture) {
        let inner = Arc::new(std::sync::Mutex::new((None, None::<std::task::Waker>)));
        (Slot(inner.clone()), SlotFuture(inner))
    }

    type Shared = Arc<std::sync::Mutex<(Option<u32>, Option<std::task::Waker>)>>;
    struct Slot(Shared);
    struct SlotFuture(Shared);

    impl Slot {
        fn set(self, v: u32) {
            let mut g = self.0.lock().unwrap();
            g.0 = Some(v);
            if let Some(w) = g.1.take() {
                w.wake();
            }
        }
    }

    impl Future for SlotFuture {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut g = self.0.lock().unwrap();
            match g.0.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    g.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}
