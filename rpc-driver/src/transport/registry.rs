//! The open connections of a server and the partial-frame budget they share.

use std::collections::HashMap;

use super::client::TransportClient;
use super::id::ConnectionId;
use crate::sync::atomic::AtomicU64;
use crate::sync::Mutex;

/// The open connections of a server, by id (the registry derefs to them), and the budget
/// they share: bytes of partial frames across all of them.
pub(crate) struct Registry {
    open: Mutex<HashMap<ConnectionId, TransportClient>>,
    /// Bytes of partial frames held by the server's connections now.
    pub(super) partial_frame_bytes: AtomicU64,
    /// [`TransportConfig::max_partial_frame_bytes`](super::config::TransportConfig).
    pub(super) max_partial_frame_bytes: u64,
}

impl Registry {
    /// An empty registry whose connections share `max_partial_frame_bytes` of partial frames.
    pub(crate) fn new(max_partial_frame_bytes: u64) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            partial_frame_bytes: AtomicU64::new(0),
            max_partial_frame_bytes,
        }
    }
}

impl std::ops::Deref for Registry {
    type Target = Mutex<HashMap<ConnectionId, TransportClient>>;

    fn deref(&self) -> &Self::Target {
        &self.open
    }
}
