//! The env's counters: what [`RpcEnv::stats`](crate::env::rpc_env::RpcEnv::stats) reports.

use crate::sync::atomic::Ordering;

// Counters read only for stats: nothing for loom to model.
use crate::sync::unmodeled::atomic::AtomicU64;

/// Counters of an env, from [`RpcEnv::stats`](crate::env::rpc_env::RpcEnv::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvStats {
    /// Messages sent with `send`.
    pub sent: u64,
    /// Asks started.
    pub asked: u64,
    /// Asks not yet resolved.
    pub in_flight: u64,
    /// Messages queued in outboxes, waiting for a connection to their env.
    pub queued: u64,
    /// Asks that failed, and sends known to be lost.
    pub failed: u64,
    /// Messages received from other envs.
    pub received: u64,
    /// Connect attempts and asks retried.
    pub retried: u64,
    /// One-way messages from other envs dropped because their endpoint's inbox was full.
    pub dropped: u64,
    /// Asks from other envs refused with [`RpcError::EndpointBusy`](crate::env::error::RpcError::EndpointBusy) (a full inbox, or
    /// [`RpcEnvConfig::max_pending_asks`](crate::env::config::RpcEnvConfig::max_pending_asks) reached).
    pub refused: u64,
    /// Asks from other envs being handled now (bounded by
    /// [`RpcEnvConfig::max_pending_asks`](crate::env::config::RpcEnvConfig::max_pending_asks)).
    pub pending_asks: u64,
    /// Messages in this env's endpoints' inboxes, queued or being handled (each inbox is
    /// bounded by its capacity).
    pub inboxed: u64,
}

/// The env's own counters, shared by everything that counts.
#[derive(Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    asked: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
    retried: AtomicU64,
    pub(crate) dropped: Tally,
    pub(crate) refused: Tally,
}

/// A counter whose events are logged at a bounded rate: [`hit`](Tally::hit) says to log the
/// 1st, 2nd, 4th, 8th… event, so a flood of `n` events logs about `log2(n)` lines. (Per-site
/// limits in time are `log_limit`'s; this one also counts, for the stats.)
#[derive(Default)]
pub(crate) struct Tally(AtomicU64);

impl Tally {
    /// Counts one event; `Some(count)` when this one should be logged.
    pub(crate) fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_power_of_two().then_some(n)
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Counters {
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn asked(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn answered(&self, ok: bool) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed();
        }
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as [`EnvStats`], with what others count: messages `queued` in
    /// outboxes, `pending_asks` from other envs, messages `inboxed`.
    pub(crate) fn snapshot(&self, queued: u64, pending_asks: u64, inboxed: u64) -> EnvStats {
        let asked = self.asked.load(Ordering::Relaxed);
        EnvStats {
            sent: self.sent.load(Ordering::Relaxed),
            asked,
            in_flight: asked.saturating_sub(self.answered.load(Ordering::Relaxed)),
            queued,
            failed: self.failed.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dropped: self.dropped.get(),
            refused: self.refused.get(),
            pending_asks,
            inboxed,
        }
    }
}
