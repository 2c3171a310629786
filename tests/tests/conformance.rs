//! One conformance suite, written once and compiled against each adapter, on real sockets:
//! what only an adapter can get wrong (partial reads and writes, slow peers, many callers,
//! drop and close races, a peer process killed mid-call), and the control plane's behaviour
//! (Spark's `RpcEnvSuite` and `NettyRpcEnvSuite`, ported).
//!
//! The suite lives in `conformance/` and reaches the framework only through `rpc::` (the
//! adapter's re-exports) and the runtime-neutral helpers of `conformance/util.rs`. Each module
//! below binds `rpc` to an adapter and `block_on` to an executor, then declares the suite's
//! files, so every test runs three times:
//!
//! ```text
//!   with_tokio::*        rpc-tokio       tests driven by a multi-thread tokio runtime
//!   with_async_std::*    rpc-async-std   tests driven by async_std::task::block_on
//!   with_smol::*         rpc-async-std   tests driven by smol::block_on
//! ```
//!
//! Run one adapter alone: `cargo test -p rpc-tests --test conformance with_smol`.

// Loading the suite's files once per adapter is the point (rustls does the same).
#![allow(clippy::duplicate_mod)]

/// The suite's files, declared in each adapter's module.
macro_rules! suite {
    () => {
        mod util;

        mod blocking;
        mod blocks;
        mod chunks;
        mod edges;
        mod env;
        mod env_network;
        mod file_server;
        mod files;
        mod hostile_accept;
        mod hostile_conn;
        mod hostile_env;
        mod merged_meta;
        mod peer_process;
        mod races;
        mod security;
        mod slow_reader;
        mod spark_transport;
        mod streams;
        mod transport;
        mod wire;
    };
}

#[path = "conformance"]
mod with_tokio {
    use rpc_tokio as rpc;

    /// The `rpc-peer` argument naming this adapter.
    const ADAPTER: &str = "tokio";

    /// Runs a test's future on a fresh multi-thread tokio runtime (two workers, as many as
    /// the machine has cores), inside which `rpc_tokio::runtime()` works.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(future)
    }

    suite!();
}

#[path = "conformance"]
mod with_async_std {
    use rpc_async_std as rpc;

    /// The `rpc-peer` argument naming this adapter.
    const ADAPTER: &str = "async-std";

    /// Runs a test's future under async-std's executor.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        async_std::task::block_on(future)
    }

    suite!();
}

#[path = "conformance"]
mod with_smol {
    use rpc_async_std as rpc;

    /// The `rpc-peer` argument naming this adapter.
    const ADAPTER: &str = "async-std";

    /// Runs a test's future under smol's executor.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        smol::block_on(future)
    }

    suite!();
}
