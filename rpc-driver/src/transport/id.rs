//! The connection id: [`ConnectionId`], a number naming one connection, unique in the
//! process.

use crate::sync::atomic::Ordering;
use std::fmt;

// A static, created outside any loom model: loom cannot model it.
use crate::sync::unmodeled::atomic::AtomicU64;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A number naming one connection in logs and stats, unique in the process:
/// [`TransportClient::id`](super::client::TransportClient::id). Displayed as the bare number.
///
/// Ids are handed out in the order connections open, from 1; two handles on one connection
/// have the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// A fresh id, never handed out before in this process.
    /// Connection `n`, for unit tests that need ids without connections.
    #[cfg(test)]
    pub(crate) fn for_test(n: u64) -> Self {
        Self(n)
    }

    pub(super) fn next() -> Self {
        Self(NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
