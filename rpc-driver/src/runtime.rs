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

    /// Runs `f` on a thread where blocking is allowed (the runtime's blocking pool), never on
    /// a thread that runs tasks: the driver hands it what may stall, name resolution and file
    /// reads, so that one slow DNS server or disk does not stall every connection of the
    /// worker. `f` must run even if nobody waits for its result any more; a runtime that is
    /// shutting down may drop it unrun.
    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send>);

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

    /// Writes out whatever this stream buffered of what [`poll_write_vectored`] accepted.
    ///
    /// A plain socket buffers nothing (the default returns ready at once). A stream that
    /// transforms bytes on their way out (a cipher, TLS) may accept bytes before the socket
    /// takes them; the driver calls this until it is ready before it considers a write
    /// finished, so nothing accepted is left behind.
    ///
    /// [`poll_write_vectored`]: Self::poll_write_vectored
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
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

/// Runs `f` with [`Runtime::spawn_blocking`] and resolves to its result. A panic in `f`, or
/// a runtime that drops `f` unrun, is an error of kind [`io::ErrorKind::Other`].
pub(crate) fn unblock<T, F>(rt: &dyn Runtime, f: F) -> Unblock<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let (completer, waiter) = crate::completion::pair();
    rt.spawn_blocking(Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(io::Error::other("a blocking task panicked")));
        // Nobody may be waiting any more; then the result is dropped here.
        let _ = completer.complete(result);
    }));
    Unblock { waiter }
}

/// The future returned by [`unblock`].
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Unblock<T> {
    waiter: crate::completion::Waiter<io::Result<T>>,
}

impl<T> Future for Unblock<T> {
    type Output = io::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        Pin::new(&mut self.waiter).poll(cx).map(|result| {
            result.unwrap_or_else(|| Err(io::Error::other("the runtime dropped a blocking task")))
        })
    }
}

impl<T> Debug for Unblock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unblock").finish_non_exhaustive()
    }
}

/// `host` as an address if it is an IP literal (`127.0.0.1`, `::1`): no resolver involved.
// Used by `env`, which loom builds leave out.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn ip_literal(host: &str, port: u16) -> Option<SocketAddr> {
    host.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// The first address of `host`: an IP literal at once, a name with the system resolver on the
/// runtime's blocking pool ([`Runtime::spawn_blocking`]), so a slow DNS server stalls only
/// the task that waits for it.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) async fn resolve(rt: &dyn Runtime, host: &str, port: u16) -> io::Result<SocketAddr> {
    if let Some(addr) = ip_literal(host, port) {
        return Ok(addr);
    }
    let name = host.to_owned();
    unblock(rt, move || {
        use std::net::ToSocketAddrs;
        (name.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} resolved to no address"),
                )
            })
    })
    .await
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

    /// Runs blocking work on a thread of its own, or drops it unrun.
    #[derive(Debug)]
    struct Threads {
        run: bool,
    }

    impl Runtime for Threads {
        fn spawn(&self, _: BoxFuture<()>) {
            unreachable!()
        }

        fn spawn_isolated(&self, _: BoxFuture<()>) {
            unreachable!()
        }

        fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send>) {
            if self.run {
                std::thread::spawn(f);
            }
        }

        fn new_timer(&self, _: Instant) -> Pin<Box<dyn AsyncTimer>> {
            unreachable!()
        }

        fn connect(&self, _: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
            unreachable!()
        }

        fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
            unreachable!()
        }
    }

    #[test]
    fn unblock_hands_back_the_result_a_panic_or_a_dropped_job_as_an_error() {
        use futures_lite::future::block_on;
        let rt = Threads { run: true };
        let caller = std::thread::current().id();
        let ran_on = block_on(unblock(&rt, || Ok(std::thread::current().id()))).unwrap();
        assert_ne!(ran_on, caller, "the work ran on another thread");
        let failed = block_on(unblock::<(), _>(&rt, || Err(io::Error::other("no"))));
        assert_eq!(failed.unwrap_err().to_string(), "no");
        let panicked = block_on(unblock::<(), _>(&rt, || panic!("boom")));
        assert_eq!(
            panicked.unwrap_err().to_string(),
            "a blocking task panicked"
        );
        let dropped = block_on(unblock(&Threads { run: false }, || Ok(1)));
        assert_eq!(
            dropped.unwrap_err().to_string(),
            "the runtime dropped a blocking task"
        );
    }

    #[test]
    fn ip_literals_resolve_without_the_resolver() {
        // A runtime that drops blocking work: only literals can resolve on it.
        let rt = Threads { run: false };
        for (host, expected) in [("127.0.0.1", "127.0.0.1:7"), ("::1", "[::1]:7")] {
            let addr = futures_lite::future::block_on(resolve(&rt, host, 7)).unwrap();
            assert_eq!(addr.to_string(), expected);
        }
        assert!(futures_lite::future::block_on(resolve(&rt, "localhost", 7)).is_err());
        assert_eq!(ip_literal("example.invalid", 7), None);
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
