//! Answering a request received by a handler: [`RpcResponder`] and
//! [`MergedBlockMetaResponder`].

use std::fmt;

use bytes::Bytes;
use rpc_proto::{CallError, RequestId};

use super::merged::MergedBlockMeta;
use super::state::ConnInner;
use crate::sync::Arc;

/// Answers one RPC received by an [`RpcHandler`](super::handler::RpcHandler): Spark's
/// `RpcResponseCallback`.
///
/// `Send + 'static`: keep it and answer later from any task. Dropping it unanswered fails the
/// caller at once rather than letting it time out.
pub struct RpcResponder {
    conn: Option<Arc<ConnInner>>,
    request: RequestId,
}

impl RpcResponder {
    pub(crate) fn new(conn: Arc<ConnInner>, request: RequestId) -> Self {
        Self {
            conn: Some(conn),
            request,
        }
    }

    /// Sends the reply. A reply larger than the connection's frame limit is refused with
    /// [`CallError::FrameTooLarge`], and the caller receives a failure saying so.
    pub fn reply(mut self, body: Bytes) -> Result<(), CallError> {
        let conn = self.conn.take().expect("answered once");
        let request = self.request;
        conn.with_state(|st, now| match st.conn.respond_rpc(now, request, body) {
            Err(error @ CallError::FrameTooLarge { .. }) => {
                let _ = st
                    .conn
                    .respond_rpc_failure(now, request, &error.to_string());
                Err(error)
            }
            other => other,
        })
    }

    /// Answers a merged-block-meta request (for [`MergedBlockMetaResponder`]), with the same
    /// care for metadata too large for a frame as [`reply`](RpcResponder::reply).
    pub(crate) fn reply_merged_block_meta(
        mut self,
        meta: MergedBlockMeta,
    ) -> Result<(), CallError> {
        let conn = self.conn.take().expect("answered once");
        let request = self.request;
        conn.with_state(|st, now| {
            match st
                .conn
                .respond_merged_block_meta(now, request, meta.chunk_count, meta.body)
            {
                Err(error @ CallError::FrameTooLarge { .. }) => {
                    let _ = st
                        .conn
                        .respond_rpc_failure(now, request, &error.to_string());
                    Err(error)
                }
                other => other,
            }
        })
    }

    /// Fails the call; the caller receives `error` as
    /// [`RequestError::Remote`](rpc_proto::RequestError::Remote).
    pub fn fail(mut self, error: &str) -> Result<(), CallError> {
        let conn = self.conn.take().expect("answered once");
        let request = self.request;
        conn.with_state(|st, now| st.conn.respond_rpc_failure(now, request, error))
    }

    /// The address of the peer that sent the request.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.conn.as_ref().expect("not yet answered").addrs.peer
    }

    /// The request id the peer chose.
    pub fn request_id(&self) -> RequestId {
        self.request
    }
}

thread_local! {
    /// Set while the driver runs a handler: responders dropped by that handler's panic are
    /// kept here, so the driver can fail their calls with the panic's message.
    pub(super) static IN_HANDLER: std::cell::RefCell<Option<Vec<RpcResponder>>> =
        const { std::cell::RefCell::new(None) };
}

impl Drop for RpcResponder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = IN_HANDLER.with(|h| match h.try_borrow_mut() {
                Ok(mut slot) => match slot.as_mut() {
                    Some(list) => {
                        list.push(Self {
                            conn: self.conn.take(),
                            request: self.request,
                        });
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            });
            if kept {
                return;
            }
        }
        if let Some(conn) = self.conn.take() {
            let request = self.request;
            let _ = conn.with_state(|st, now| {
                st.conn
                    .respond_rpc_failure(now, request, "the request was dropped without a reply")
            });
        }
    }
}

impl fmt::Debug for RpcResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcResponder")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// Answers one merged-block-meta request: Spark's `MergedBlockMetaResponseCallback`.
///
/// `Send + 'static`: keep it and answer later from any task. Dropping it unanswered fails the
/// caller at once rather than letting it time out. A handler that panics fails the request
/// with the panic's message.
pub struct MergedBlockMetaResponder {
    inner: RpcResponder,
}

impl MergedBlockMetaResponder {
    pub(crate) fn new(inner: RpcResponder) -> Self {
        Self { inner }
    }

    /// Sends the metadata (a `MergedBlockMetaSuccess`). Metadata larger than the connection's
    /// frame limit is refused with [`CallError::FrameTooLarge`], and the caller receives a
    /// failure saying so.
    pub fn reply(self, meta: MergedBlockMeta) -> Result<(), CallError> {
        self.inner.reply_merged_block_meta(meta)
    }

    /// Fails the call (an `RpcFailure`); the caller receives `error` as
    /// [`RequestError::Remote`](rpc_proto::RequestError::Remote).
    pub fn fail(self, error: &str) -> Result<(), CallError> {
        self.inner.fail(error)
    }

    /// The address of the peer that sent the request.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.inner.peer_addr()
    }

    /// The request id the peer chose.
    pub fn request_id(&self) -> RequestId {
        self.inner.request_id()
    }
}

impl fmt::Debug for MergedBlockMetaResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedBlockMetaResponder")
            .field("request", &self.inner.request_id())
            .finish_non_exhaustive()
    }
}
