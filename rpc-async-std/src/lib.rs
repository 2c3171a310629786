//! Spark-compatible RPC on async-std's foundations.
//!
//! Built on [async-io](https://docs.rs/async-io) (the reactor and timers async-std and smol
//! share), so it runs under async-std's executor and under smol alike. async-std itself is no
//! longer developed; its foundations are.
//!
//! The async-io implementation of [`rpc_driver::Runtime`], and the public API re-exported
//! under the same names as `rpc-tokio` (only the runtime type differs: [`AsyncIoRuntime`]
//! here, `TokioRuntime` there): switching runtimes is switching the crate.
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
//! Start envs and transports with [`runtime()`], from anywhere: no executor has to be
//! running. Its tasks run on the thread pool of
//! [async-global-executor](https://docs.rs/async-global-executor) (version 3: its own
//! threads, not those of async-std's or smol's executor), and its sockets and timers on
//! async-io's reactor, which async-std and smol share. So code that awaits our futures may run
//! under `async_std::task::block_on`, `smol::block_on` or any other executor. To run the
//! tasks on an executor of yours instead, use [`AsyncIoRuntime::with_executor`].
//!
//! # Example: hello
//!
//! Spark's `HelloEndpoint` under async-std (`examples/hello.rs`, run it with
//! `cargo run -p rpc-async-std --example hello`):
//!
//! ```no_run
#![doc = include_str!("../examples/hello.rs")]
//! ```
//!
//! # Example: heartbeats
//!
//! A driver endpoint receiving periodic heartbeats from executor envs and noticing one that
//! dies (`examples/heartbeat.rs`, run it with `cargo run -p rpc-async-std --example
//! heartbeat`):
//!
//! ```no_run
#![doc = include_str!("../examples/heartbeat.rs")]
//! ```
//!
//! # Example: under smol
//!
//! The same env code under `smol::block_on`, with the tasks on the global pool and then on
//! a smol executor of our own (`examples/hello_smol.rs`, run it with
//! `cargo run -p rpc-async-std --example hello_smol`):
//!
//! ```no_run
#![doc = include_str!("../examples/hello_smol.rs")]
//! ```

#![deny(unsafe_code)]

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Async;
use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};

/// Derives [`RpcMessage`](trait@RpcMessage): the name is the type's identifier, or the one set
/// with `#[rpc(name = "...")]`. Its code names `::rpc_async_std` (`#[rpc(crate = "...")]` for a
/// renamed dependency).
pub use rpc_derive::AsyncStdRpcMessage as RpcMessage;
pub use rpc_driver::api::*;

/// The crates underneath, for what the API above does not cover (the sans-IO protocol core,
/// the driver's internals): not part of this crate's API, and not stable.
#[doc(hidden)]
pub use rpc_driver::{self, rpc_proto};

/// The runtime to start envs and transports on: async-io's reactor and timers, tasks on
/// async-global-executor's thread pool. Callable from anywhere, inside an executor or not.
///
/// ```no_run
/// # fn main() -> Result<(), rpc_async_std::SetupError> {
/// use rpc_async_std::{RpcEnv, RpcEnvConfig};
///
/// let env = RpcEnv::create(rpc_async_std::runtime(), RpcEnvConfig::server("driver", "127.0.0.1", 0).build()?)?;
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
        Self {
            executor: Some(executor),
        }
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

    /// On the thread pool of the [`blocking`](https://docs.rs/blocking) crate, smol's (and
    /// async-std's) pool for blocking work, whichever executor runs the tasks.
    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send>) {
        blocking::unblock(f).detach();
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(AsyncIoTimer {
            timer: async_io::Timer::at(deadline),
            fired: false,
        })
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

    /// Reads straight into the spare capacity of `buf` with `recv`, so none of it is zeroed
    /// first; waits for readability as async-io's own `poll_read` does.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        buf.reserve(max);
        loop {
            let spare = &mut buf.spare_capacity_mut()[..max];
            match rustix::net::recv(self.0.get_ref(), spare, rustix::net::RecvFlags::empty()) {
                Ok(((read, _), _)) => {
                    let n = read.len();
                    // SAFETY: rustix hands back, as `read`, the part of `spare` that `recv`
                    // wrote: its first `n` bytes, `n <= max` (no `TRUNC` flag). `spare` starts
                    // at `buf.len()` and lies within the capacity (`reserve(max)`), so the `n`
                    // bytes after the current length are initialised and within the capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    std::task::ready!(self.0.poll_readable(cx))?;
                }
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
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
            let mut at = offset;
            match rustix::fs::sendfile(self.0.get_ref(), file, Some(&mut at), len) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    std::task::ready!(self.0.poll_writable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // async-io's `poll_close` only flushes (a no-op for TCP) and sends no FIN; writes are
        // unbuffered, so shutting the write half down now is "after everything written".
        Poll::Ready(self.0.get_ref().shutdown(Shutdown::Write))
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

/// async-io's timer is ready once, then pending (with no waker kept) until it is reset;
/// `fired` keeps it ready, as [`AsyncTimer`] asks and tokio's `Sleep` does.
#[derive(Debug)]
struct AsyncIoTimer {
    timer: async_io::Timer,
    fired: bool,
}

impl AsyncTimer for AsyncIoTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.fired = false;
        self.timer.set_at(deadline);
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.fired && self.timer.poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.fired = true;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Runs `f` on this thread, failing the test if it takes more than five seconds.
    fn block_on_within<T>(f: impl std::future::Future<Output = T>) -> T {
        async_io::block_on(f.or(async {
            async_io::Timer::after(Duration::from_secs(5)).await;
            panic!("hung")
        }))
    }

    #[test]
    fn timer_fires_after_its_deadline_stays_fired_and_can_be_reset() {
        let rt = runtime();
        block_on_within(async {
            let start = rt.now();
            let mut timer = rt.new_timer(start + Duration::from_millis(20));
            timer_fired(timer.as_mut()).await;
            assert!(rt.now() >= start + Duration::from_millis(20));
            // Still ready until reset, like tokio's `Sleep` (async-io's own timer is not).
            timer_fired(timer.as_mut()).await;
            let reset_at = rt.now();
            timer.as_mut().reset(reset_at + Duration::from_millis(10));
            timer_fired(timer.as_mut()).await;
            assert!(rt.now() >= reset_at + Duration::from_millis(10));
        });
    }

    #[test]
    fn spawn_runs_the_future_on_the_given_executor_only() {
        let executor = Arc::new(async_executor::Executor::new());
        let rt = AsyncIoRuntime::with_executor(executor.clone());
        let (tx, rx) = mpsc::channel();
        rt.spawn(Box::pin(async move { tx.send(42).unwrap() }));
        assert!(rx.try_recv().is_err(), "nothing has run the executor yet");
        assert!(executor.try_tick());
        assert_eq!(rx.try_recv(), Ok(42));
    }

    #[test]
    fn spawn_runs_the_future_on_the_global_pool() {
        let (tx, rx) = mpsc::channel();
        runtime().spawn(Box::pin(async move { tx.send(42).unwrap() }));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(42));
    }

    /// `poll_read_buf` reads into spare capacity without zeroing it (the `unsafe` in it):
    /// every read appends exactly the bytes sent, never more than `max`, and end of file
    /// leaves the buffer as it was.
    #[test]
    fn poll_read_buf_appends_exactly_the_bytes_read() {
        use std::io::Write;

        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        block_on_within(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = AsyncIoStream(Async::<TcpStream>::connect(addr).await.unwrap());
            let (mut peer, _) = listener.accept().unwrap();
            // Waits until at least `n` bytes are buffered on the client's side, so a read
            // of `n` fills it exactly.
            let buffered = |client: &AsyncIoStream, n: usize| {
                let mut peek = vec![0; n];
                let started = Instant::now();
                while client.0.get_ref().peek(&mut peek).unwrap_or(0) < n {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "{n} bytes never came"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            let mut buf = BytesMut::from(&b"prefix"[..]);
            let mut expected = b"prefix".to_vec();
            let (mut sent, mut consumed) = (0, 0);
            // Each read fills `max` exactly, from 1 byte to more than a page; one after a
            // `split` (as the driver does) and one into a buffer with no capacity at all.
            for max in [1, 7, 4096, 5000, 32 * 1024] {
                peer.write_all(&data[sent..sent + max + 3]).unwrap();
                sent += max + 3;
                buffered(&client, max);
                if max == 4096 {
                    drop(buf.split());
                    expected.clear();
                }
                if max == 5000 {
                    buf = BytesMut::new();
                    expected.clear();
                }
                let n = poll_fn(|cx| client.poll_read_buf(cx, &mut buf, max))
                    .await
                    .unwrap();
                assert_eq!(n, max);
                expected.extend_from_slice(&data[consumed..consumed + n]);
                consumed += n;
                assert_eq!(&buf[..], &expected[..]);
                // The 3 bytes left over, read with room to spare.
                buffered(&client, 3);
                let n = poll_fn(|cx| client.poll_read_buf(cx, &mut buf, 1000))
                    .await
                    .unwrap();
                assert_eq!(n, 3);
                expected.extend_from_slice(&data[consumed..consumed + n]);
                consumed += n;
                assert_eq!(&buf[..], &expected[..]);
            }
            assert_eq!(consumed, sent);
            // A read that has to wait for the bytes, then end of file.
            let tail = data[sent..sent + 10].to_vec();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                peer.write_all(&tail).unwrap();
                peer.shutdown(Shutdown::Write).unwrap();
                peer
            });
            let mut got = 0;
            while got < 10 {
                let n = poll_fn(|cx| client.poll_read_buf(cx, &mut buf, 64))
                    .await
                    .unwrap();
                assert!(n > 0 && got + n <= 10, "read {n} after {got}");
                got += n;
            }
            expected.extend_from_slice(&data[sent..sent + 10]);
            assert_eq!(&buf[..], &expected[..]);
            let n = poll_fn(|cx| client.poll_read_buf(cx, &mut buf, 64))
                .await
                .unwrap();
            assert_eq!(n, 0, "end of file");
            assert_eq!(&buf[..], &expected[..]);
            drop(writer.join().unwrap());
        });
    }

    #[test]
    fn shutdown_sends_end_of_file_to_the_peer() {
        let rt = runtime();
        block_on_within(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let listener = rt.listen(listener).unwrap();
            let mut client = rt.connect(listener.local_addr().unwrap()).await.unwrap();
            let (mut server, _) = poll_fn(|cx| listener.poll_accept(cx)).await.unwrap();
            poll_fn(|cx| client.poll_shutdown(cx)).await.unwrap();
            let mut buf = [0; 8];
            let read = poll_fn(|cx| server.poll_read(cx, &mut buf)).await.unwrap();
            assert_eq!(
                read, 0,
                "the peer sees end of file while the stream is alive"
            );
        });
    }
}
