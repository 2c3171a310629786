//! Spark-compatible RPC on [tokio](https://tokio.rs).
//!
//! The tokio implementation of [`rpc_driver::Runtime`] and, as the layers above land, the
//! public API re-exported under the same names as `rpc-async-std`.

#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

pub use rpc_driver::{self, rpc_proto, AsyncTimer, Runtime};

/// The tokio [`Runtime`]: spawns on the current tokio runtime.
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
}

impl Runtime for TokioRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.handle.spawn(future);
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(TokioTimer {
            sleep: tokio::time::sleep_until(deadline.into()),
        })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn timer_fires_after_its_deadline_and_can_be_reset() {
        let rt = TokioRuntime::current();
        let start = rt.now();
        let mut timer = rt.new_timer(start + Duration::from_millis(20));
        rpc_driver::timer_fired(timer.as_mut()).await;
        assert!(rt.now() >= start + Duration::from_millis(20));
        timer.as_mut().reset(rt.now() + Duration::from_millis(10));
        let reset_at = rt.now();
        rpc_driver::timer_fired(timer.as_mut()).await;
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
