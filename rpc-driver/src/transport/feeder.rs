//! The upload feeder: the task that feeds an upload's body to the connection no faster than
//! the socket takes it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use tracing::warn;

use super::state::ConnInner;
use crate::sync::{lock, Arc};
use crate::wait_list::WaitKey;

/// Feeds an upload's body from `body`, waiting for the socket to take what is queued.
pub(super) async fn feed_body<S>(
    inner: Arc<ConnInner>,
    id: rpc_proto::BodyId,
    byte_count: u64,
    body: S,
) where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut fed = 0u64;
    let outcome = loop {
        let Some(piece) = body.next().await else {
            break if fed == byte_count {
                Ok(())
            } else {
                Err(format!("the body ended after {fed} of {byte_count} bytes"))
            };
        };
        if fed + piece.len() as u64 > byte_count {
            break Err(format!("the body runs past its {byte_count} bytes"));
        }
        // Wait until the socket has taken most of what is queued.
        BodyRoom {
            inner: &inner,
            key: WaitKey::default(),
        }
        .await;
        fed += piece.len() as u64;
        if piece.is_empty() {
            continue;
        }
        if inner
            .with_state(|st, now| st.conn.send_body(now, id, piece))
            .is_err()
        {
            return; // the connection ended; the upload's call has failed with it
        }
    };
    if let Err(reason) = outcome {
        warn!(%reason, "upload body aborted; closing the connection");
        inner.with_state(|st, now| st.conn.abort_body(now, id, &reason));
    }
}

/// Resolves when an upload's feeder may queue more body bytes; one waker stored however
/// often it is polled, none once it is dropped.
struct BodyRoom<'a> {
    inner: &'a Arc<ConnInner>,
    key: WaitKey,
}

impl Future for BodyRoom<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.body_has_room() {
            st.feeders.remove(&mut this.key);
            Poll::Ready(())
        } else {
            st.feeders.register(&mut this.key, cx.waker());
            Poll::Pending
        }
    }
}

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        lock(&self.inner.state).feeders.remove(&mut self.key);
    }
}
