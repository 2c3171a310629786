//! A named stream being received ([`StreamCall`]): its pieces as a [`Stream`], with the
//! consumer's pace pausing and resuming the connection's reads.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use rpc_proto::{CallError, RequestError, StreamCallId};

use super::state::ConnInner;
use crate::sync::{lock, Arc};

/// A stream being received: a [`Stream`] of its pieces, in order, ending after the last one
/// (or with the error that ended it). From
/// [`TransportClient::stream`](super::client::TransportClient::stream).
///
/// Dropping it before the end forgets the stream: its remaining bytes are read and discarded.
#[must_use = "streams do nothing unless polled"]
pub struct StreamCall {
    pub(super) inner: Arc<ConnInner>,
    pub(super) id: Option<StreamCallId>,
    pub(super) refused: Option<CallError>,
}

impl StreamCall {
    /// The stream's size, once the peer has announced it.
    pub fn byte_count(&self) -> Option<u64> {
        let id = self.id?;
        lock(&self.inner.state).streams.get(&id)?.byte_count
    }

    /// Collects the whole stream into one buffer.
    pub async fn read_to_end(mut self) -> Result<Bytes, RequestError> {
        let mut out = bytes::BytesMut::new();
        while let Some(piece) = self.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out.freeze())
    }
}

impl Stream for StreamCall {
    type Item = Result<Bytes, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(error) = self.refused.take() {
            return Poll::Ready(Some(Err(RequestError::NotSent(error))));
        }
        let Some(id) = self.id else {
            return Poll::Ready(None);
        };
        let (item, driver) = {
            let mut st = lock(&self.inner.state);
            let Some(slot) = st.streams.get_mut(&id) else {
                return Poll::Ready(None);
            };
            if let Some(piece) = slot.pieces.pop_front() {
                st.stream_buffered -= piece.len();
                // Resume reading once the consumer has caught up by half.
                let resume = st.resume_reading();
                (
                    Poll::Ready(Some(Ok(piece))),
                    if resume { st.take_driver() } else { None },
                )
            } else if let Some(end) = slot.end.take() {
                st.streams.remove(&id);
                (Poll::Ready(end.err().map(Err)), None)
            } else {
                slot.waker = Some(cx.waker().clone());
                (Poll::Pending, None)
            }
        };
        if let Poll::Ready(None | Some(Err(_))) = item {
            self.id = None;
        }
        if let Some(w) = driver {
            w.wake();
        }
        item
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let resume = {
                let mut st = lock(&self.inner.state);
                st.abandon_stream(id).then(|| st.take_driver()).flatten()
            };
            if let Some(w) = resume {
                w.wake();
            }
        }
    }
}

impl fmt::Debug for StreamCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCall")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
