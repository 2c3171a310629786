//! The few things the driver needs from an async runtime.

use std::fmt::Debug;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;

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

    /// Reads up to `max` bytes and appends them to `buf`, after what it already holds,
    /// returning how many were read; `Ok(0)` is end of file. On `Pending` or an error `buf` is
    /// left as it was (its capacity may have grown). `max` must not be 0 (a read of nothing
    /// would look like end of file).
    ///
    /// This is how the driver reads: into the spare capacity of a buffer it then splits off,
    /// so the bytes read become the connection's without a copy. The default implementation
    /// zero-fills `max` bytes past the end of `buf`, calls [`poll_read`](Self::poll_read) on
    /// them and truncates to what was read; adapters should override it to read straight into
    /// the spare capacity (`buf.spare_capacity_mut()`), with no zeroing.
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let start = buf.len();
        buf.resize(start + max, 0);
        let result = self.poll_read(cx, &mut buf[start..]);
        let read = match &result {
            Poll::Ready(Ok(n)) => (*n).min(max),
            _ => 0,
        };
        buf.truncate(start + read);
        result.map_ok(|_| read)
    }

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

/// The instant `timeout` after `now`, or `None` (never) when that lies past the clock's
/// range: any `Duration` a user passes, up to `Duration::MAX`, is a valid timeout.
pub(crate) fn deadline_after(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_add(timeout)
}

/// Sleeps for `duration` on `runtime`; a duration past the clock's range sleeps forever.
pub(crate) async fn sleep_for(runtime: &dyn Runtime, duration: Duration) {
    match deadline_after(runtime.now(), duration) {
        Some(deadline) => sleep_until(runtime, deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// Hands out `data` in pieces of at most `piece` bytes, then end of file.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl AsyncStream for Pieces {
        fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.piece).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            &mut self,
            _: &mut Context<'_>,
            _: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            unreachable!()
        }

        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            unreachable!()
        }

        fn peer_addr(&self) -> io::Result<SocketAddr> {
            unreachable!()
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            unreachable!()
        }
    }

    #[test]
    fn default_poll_read_buf_appends_what_was_read_and_nothing_else() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut stream = Pieces {
            data: data.clone(),
            at: 0,
            piece: 30,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = BytesMut::from(&b"ab"[..]);
        let mut expected = b"ab".to_vec();
        // Less than `max` available, exactly `max`, then the rest, then end of file.
        for (max, want) in [(64, 30), (30, 30), (10, 10), (64, 30), (64, 0)] {
            let read = stream.poll_read_buf(&mut cx, &mut buf, max);
            assert!(matches!(read, Poll::Ready(Ok(n)) if n == want), "{read:?}");
            expected.extend_from_slice(&data[expected.len() - 2..][..want]);
            assert_eq!(&buf[..], &expected[..]);
        }
        assert_eq!(expected.len(), 102);
    }
}
