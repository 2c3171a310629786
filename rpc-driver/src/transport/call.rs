//! Calls in flight that resolve to one answer: [`RpcCall`] (RPCs, uploads, chunk fetches)
//! and [`MergedBlockMetaCall`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use rpc_proto::{Call, CallError, ConnectionError, RequestError, RequestId};

use super::merged::MergedBlockMeta;
use super::state::{ConnInner, MetaResult, RpcResult};
use crate::completion::Waiter;
use crate::sync::Arc;

/// A call in flight, waiting for a `T`: what [`RpcCall`] and [`MergedBlockMetaCall`] share.
/// Dropping it forgets the call.
pub(super) struct Pending<T> {
    client: Option<Arc<ConnInner>>,
    call: Option<Call>,
    waiter: Option<Waiter<Result<T, RequestError>>>,
    refused: Option<CallError>,
}

impl<T> Pending<T> {
    pub(super) fn started(
        inner: &Arc<ConnInner>,
        call: Call,
        waiter: Waiter<Result<T, RequestError>>,
    ) -> Self {
        Self {
            client: Some(inner.clone()),
            call: Some(call),
            waiter: Some(waiter),
            refused: None,
        }
    }

    pub(super) fn refused(error: CallError) -> Self {
        Self {
            client: None,
            call: None,
            waiter: None,
            refused: Some(error),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<Result<T, RequestError>> {
        if let Some(error) = self.refused.take() {
            return Poll::Ready(Err(RequestError::NotSent(error)));
        }
        let Some(waiter) = self.waiter.as_mut() else {
            panic!("{what} polled after it completed");
        };
        match Pin::new(waiter).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.waiter = None;
                let unauthenticated = self.client.take().is_some_and(|c| c.client_id.is_none());
                Poll::Ready(match result {
                    // A server that wants authentication this connection did not do.
                    Some(Err(RequestError::Remote(text)))
                        if unauthenticated && rpc_proto::handshake::is_refusal(&text) =>
                    {
                        Err(RequestError::AuthenticationRequired(text))
                    }
                    Some(result) => result,
                    None => Err(RequestError::Disconnected(ConnectionError::Transport(
                        "connection driver stopped".into(),
                    ))),
                })
            }
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let (Some(inner), Some(call)) = (self.client.take(), self.call) {
            // Drop the waiter first so a completion racing this drop is handed back, not kept.
            self.waiter = None;
            inner.with_state(|st, _| st.abandon(call));
        }
    }
}

/// An RPC in flight: resolves to the reply body or the reason there is none.
///
/// Dropping it forgets the call (the late reply, if any, is discarded).
#[must_use = "an RPC's reply is only seen by awaiting it"]
pub struct RpcCall(Pending<Bytes>);

impl RpcCall {
    pub(super) fn started(inner: &Arc<ConnInner>, call: Call, waiter: Waiter<RpcResult>) -> Self {
        Self(Pending::started(inner, call, waiter))
    }

    pub(crate) fn refused(error: CallError) -> Self {
        Self(Pending::refused(error))
    }

    /// The request id an RPC went out with, unless it was refused before being sent (or is a
    /// chunk fetch, which has none).
    pub fn request_id(&self) -> Option<RequestId> {
        match self.0.call {
            Some(Call::Rpc(id) | Call::Upload(id)) => Some(id),
            _ => None,
        }
    }
}

impl Future for RpcCall {
    type Output = RpcResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RpcResult> {
        self.0.poll(cx, "RpcCall")
    }
}

impl fmt::Debug for RpcCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcCall")
            .field("call", &self.0.call)
            .finish_non_exhaustive()
    }
}

/// A merged-block-meta request in flight, from
/// [`TransportClient::send_merged_block_meta_req`](super::client::TransportClient::send_merged_block_meta_req):
/// resolves to the metadata or the reason there is none.
///
/// Dropping it forgets the call (the late reply, if any, is discarded).
#[must_use = "the metadata is only seen by awaiting it"]
pub struct MergedBlockMetaCall(pub(super) Pending<MergedBlockMeta>);

impl MergedBlockMetaCall {
    /// The request id the request went out with, unless it was refused before being sent.
    pub fn request_id(&self) -> Option<RequestId> {
        match self.0.call {
            Some(Call::MergedBlockMeta(id)) => Some(id),
            _ => None,
        }
    }
}

impl Future for MergedBlockMetaCall {
    type Output = MetaResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<MetaResult> {
        self.0.poll(cx, "MergedBlockMetaCall")
    }
}

impl fmt::Debug for MergedBlockMetaCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedBlockMetaCall")
            .field("call", &self.0.call)
            .finish_non_exhaustive()
    }
}
