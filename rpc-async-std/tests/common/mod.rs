//! What the smoke tests share: bounded waits, and a macro that runs one scenario under each
//! executor the adapter supports.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use async_io::Timer;
use futures_lite::FutureExt;

/// How long any single wait may take before the test is declared hung.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, f: F) -> F::Output {
    f.or(async {
        Timer::after(WAIT).await;
        panic!("timed out after {WAIT:?} waiting for {what}")
    })
    .await
}

/// For each `scenario` (an `async fn(Arc<dyn Runtime>)`), a module of three tests:
///
/// - `under_async_std`: `#[async_std::test]`, tasks on [`rpc_async_std::runtime`]'s pool;
/// - `under_smol`: `smol::block_on`, tasks on the same pool;
/// - `on_one_smol_thread`: every task on a `smol::Executor` that only the test thread runs
///   (`AsyncIoRuntime::with_executor`), so a task that blocks its thread would hang the test.
macro_rules! on_each_executor {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use std::sync::Arc;

            #[async_std::test]
            async fn under_async_std() {
                super::$scenario(rpc_async_std::runtime()).await
            }

            #[test]
            fn under_smol() {
                smol::block_on(super::$scenario(rpc_async_std::runtime()))
            }

            #[test]
            fn on_one_smol_thread() {
                let executor = Arc::new(smol::Executor::new());
                let rt = rpc_async_std::AsyncIoRuntime::with_executor(executor.clone());
                smol::block_on(executor.run(super::$scenario(Arc::new(rt))))
            }
        }
    )*};
}
pub(crate) use on_each_executor;
