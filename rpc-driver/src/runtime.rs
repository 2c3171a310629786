//! The few things the driver needs from an async runtime.

use std::fmt::Debug;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the driver needs from an async runtime: tasks, timers and TCP.
///
/// Object safe: the driver holds an `Arc<dyn Runtime>`, so every public type of the framework
/// is the same whichever runtime runs it, and endpoint code does not change with the runtime.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<()>);

    /// Runs `future` to completion on a thread of its own, so that it cannot block the
    /// runtime's other tasks (isolated endpoints). Timers and sockets must still work there.
    fn spawn_isolated(&self, future: BoxFuture<()>);

    /// A timer that fires at `deadline`.
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>>;

    /// Opens a TCP connection, with `TCP_NODELAY` set.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>>;

    /// Registers a bound, listening std socket with the runtime.
    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>>;

    /// The current time, the only clock the protocol core sees.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A resettable one-shot timer.
pub trait AsyncTimer: Send + Debug + 'static {
    /// Moves the deadline; a fired timer fires again at the new one.
    fn reset(self: Pin<&mut Self>, deadline: Instant);

    /// Ready once the deadline has passed.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}

/// A connected TCP stream, as the driver uses it.
pub trait AsyncStream: Send + Unpin + 'static {
    /// Reads into `buf`; `Ok(0)` is end of file.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Writes from `bufs`, in order, returning how many bytes were written.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Writes up to `len` bytes of `file` from `offset` straight from the file to the socket
    /// (`sendfile`), returning how many were written. Adapters that cannot return
    /// [`io::ErrorKind::Unsupported`] (the default), and the driver reads and writes instead.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, file, offset, len);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }

    /// Shuts the write half down after everything written is flushed.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The remote address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// The local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A listening TCP socket.
pub trait AsyncListener: Send + Sync + 'static {
    /// Accepts the next connection, with `TCP_NODELAY` set.
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Box<dyn AsyncStream>, SocketAddr)>>;

    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Waits for a timer to fire: `timer_fired(timer.as_mut()).await`.
pub fn timer_fired(timer: Pin<&mut dyn AsyncTimer>) -> TimerFired<'_> {
    TimerFired { timer }
}

/// The future returned by [`timer_fired`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct TimerFired<'a> {
    timer: Pin<&'a mut dyn AsyncTimer>,
}

impl Future for TimerFired<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.as_mut().poll(cx)
    }
}

/// Sleeps until `deadline` on `runtime`.
pub async fn sleep_until(runtime: &dyn Runtime, deadline: Instant) {
    let mut timer = runtime.new_timer(deadline);
    timer_fired(timer.as_mut()).await
}
