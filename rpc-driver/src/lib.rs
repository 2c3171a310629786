//! Runtime-neutral glue between [`rpc_proto`] and an async runtime, written once.
//!
//! The driver moves bytes between sockets and [`rpc_proto::Connection`]s, and time into them.
//! It is generic over [`Runtime`], the few things it needs from an executor: spawning tasks
//! and timers. `rpc-tokio` and `rpc-async-std` implement it and re-export the same API.
//!
//! This crate is the foundation only: the runtime abstraction. The driver loop, the transport
//! layer and the `RpcEnv` are built on it next.
//!
//! ```
//! use std::future::Future;
//! use std::pin::Pin;
//! use std::time::Instant;
//! use rpc_driver::{AsyncTimer, Runtime};
//!
//! /// A runtime is a small value: this one only counts what it is asked to do.
//! #[derive(Debug)]
//! struct Counting;
//!
//! fn uses_a_runtime(rt: &dyn Runtime) -> Instant {
//!     rt.now()
//! }
//! # impl Runtime for Counting {
//! #     fn spawn(&self, _: Pin<Box<dyn Future<Output = ()> + Send>>) {}
//! #     fn new_timer(&self, _: Instant) -> Pin<Box<dyn AsyncTimer>> { unimplemented!() }
//! # }
//! # let _ = uses_a_runtime(&Counting);
//! ```

#![forbid(unsafe_code)]

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

pub use rpc_proto;

/// What the driver needs from an async runtime.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>);

    /// A timer that fires at `deadline`.
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>>;

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
