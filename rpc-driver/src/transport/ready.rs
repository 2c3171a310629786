//! Waiting for room in a connection's send buffer: the [`Ready`] future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rpc_proto::CallError;

use super::state::ConnInner;
use crate::sync::{lock, Arc};
use crate::wait_list::WaitKey;

/// The future of [`TransportClient::ready`](super::client::TransportClient::ready). Polling
/// it again replaces the waker it stored: one waker per `Ready` however often it is polled,
/// none once it is dropped.
#[must_use = "futures do nothing unless polled"]
pub struct Ready {
    pub(super) inner: Arc<ConnInner>,
    pub(super) key: WaitKey,
}

impl Future for Ready {
    type Output = Result<(), CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.conn.is_closed() {
            st.ready.remove(&mut this.key);
            return Poll::Ready(Err(CallError::Closed));
        }
        if !st.conn.is_send_buffer_full() {
            st.ready.remove(&mut this.key);
            return Poll::Ready(Ok(()));
        }
        st.ready.register(&mut this.key, cx.waker());
        Poll::Pending
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        lock(&self.inner.state).ready.remove(&mut self.key);
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}
