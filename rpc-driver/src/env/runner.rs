//! The tasks that run endpoints: take items from a [`Mailbox`], decode them, call the
//! endpoint's hooks with panics caught, and report failures.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt;
use rpc_proto::{decode_payload, ConnectionError, InboxItem, RemoteFailure, RpcAddress};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use super::binding::{with_binding, BoundEnv};
use super::call::RpcCallContext;
use super::endpoint::{
    BoxError, ConcurrentRpcEndpoint, EndpointContext, EndpointFailure, RpcEndpoint,
};
use super::lifecycle::StopFlag;
use super::mailbox::{Mailbox, Payload, Posted};
use crate::sync::Arc;

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// What a running endpoint needs of its env to turn posted items into work: whom refs in
/// its messages bind to, and the stop flag its call contexts check.
#[derive(Clone)]
pub(crate) struct RunnerEnv {
    /// The env refs deserialized from messages bind to.
    pub(crate) binding: BoundEnv,
    /// The env's stop flag, for call contexts.
    pub(crate) stopped: Weak<StopFlag>,
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(s) => *s,
        Err(panic) => match panic.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a non-string panic payload".to_owned(),
        },
    }
}

/// Runs `f`, turning a panic into a failure.
async fn guarded<T>(f: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(panic_message)
}

/// Decodes a message for an endpoint taking `M`.
fn decode<M: DeserializeOwned + 'static>(payload: Payload, env: &BoundEnv) -> Result<M, String> {
    match payload {
        Payload::Local(value) => value
            .downcast::<M>()
            .map(|b| *b)
            .map_err(|_| format!("a local message is not a {}", std::any::type_name::<M>())),
        Payload::Remote { bytes, client } => {
            with_binding(env, client, || decode_payload::<M>(&bytes)).map_err(|e| e.to_string())
        }
    }
}

/// What one message turned into, for the endpoint's hooks.
enum Work<M, R> {
    Send(M),
    Ask(M, RpcCallContext<R>, Option<rpc_proto::RequestId>),
    Connected(RpcAddress),
    Disconnected(RpcAddress),
    NetworkError(ConnectionError, RpcAddress),
    /// The message could not be decoded; already reported to its sender.
    Undecodable(String),
}

fn prepare<M, R>(posted: Posted, name: &str, env: &RunnerEnv) -> Work<M, R>
where
    M: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    match posted {
        Posted::Message {
            payload,
            request,
            reply,
            sender,
            deadline,
            cancel,
        } => match (decode::<M>(payload, &env.binding), reply) {
            (Ok(m), None) => Work::Send(m),
            (Ok(m), Some(reply)) => Work::Ask(
                m,
                RpcCallContext::new(reply, sender, deadline, cancel, name, &env.stopped),
                request,
            ),
            (Err(e), reply) => {
                let call = reply.map(|r| {
                    RpcCallContext::<R>::new(r, sender, deadline, cancel, name, &env.stopped)
                });
                if let Some(call) = call {
                    call.send_failure(
                        RemoteFailure::BadMessage(format!("the message could not be decoded: {e}"))
                            .to_string(),
                    );
                }
                Work::Undecodable(e)
            }
        },
        Posted::Connected(a) => Work::Connected(a),
        Posted::Disconnected(a) => Work::Disconnected(a),
        Posted::NetworkError(e, a) => Work::NetworkError(e, a),
    }
}

/// Reports a handler's outcome: errors and panics go to the caller (if any) and `on_error`.
fn failure(
    outcome: Result<Result<(), BoxError>, String>,
    call: Option<&dyn Fn(String)>,
) -> Option<EndpointFailure> {
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            if let Some(fail) = call {
                fail(e.to_string());
            }
            Some(EndpointFailure::Error(e))
        }
        Err(panic) => {
            if let Some(fail) = call {
                fail(format!("the endpoint panicked: {panic}"));
            }
            Some(EndpointFailure::Panic(panic))
        }
    }
}

/// Runs the hook a piece of work calls for, on `$endpoint` (`&mut E` or `&E`), with panics
/// caught; evaluates to what `on_error` must hear, if anything. Asks run in a span naming the
/// endpoint and the request.
macro_rules! handle_work {
    ($endpoint:expr, $ctx:expr, $name:expr, $work:expr) => {
        match $work {
            Work::Send(m) => failure(guarded($endpoint.receive($ctx, m)).await, None),
            Work::Ask(m, call, request) => {
                let keep = call.clone();
                let span = tracing::debug_span!("call", endpoint = %$name, request = ?request);
                let outcome = guarded($endpoint.receive_and_reply($ctx, m, call))
                    .instrument(span)
                    .await;
                failure(
                    outcome,
                    Some(&|e| {
                        keep.send_failure(e);
                    }),
                )
            }
            Work::Connected(a) => guarded($endpoint.on_connected($ctx, a))
                .await
                .err()
                .map(EndpointFailure::Panic),
            Work::Disconnected(a) => guarded($endpoint.on_disconnected($ctx, a))
                .await
                .err()
                .map(EndpointFailure::Panic),
            Work::NetworkError(e, a) => guarded($endpoint.on_network_error($ctx, e, a))
                .await
                .err()
                .map(EndpointFailure::Panic),
            Work::Undecodable(e) => Some(EndpointFailure::Error(e.into())),
        }
    };
}

/// The task of a serial endpoint: one item at a time, in order.
pub(crate) async fn run_serial<E: RpcEndpoint>(
    mut endpoint: E,
    mailbox: Arc<Mailbox>,
    ctx: EndpointContext<E::Message, E::Reply>,
    env: RunnerEnv,
    finished: impl FnOnce(&Mailbox),
) {
    loop {
        let item = mailbox.next().await;
        let outcome = match item {
            InboxItem::Start => failure(guarded(endpoint.on_start(&ctx)).await, None),
            InboxItem::Message(posted) => {
                let work = prepare::<E::Message, E::Reply>(posted, &mailbox.name, &env);
                handle_work!(endpoint, &ctx, mailbox.name, work)
            }
            InboxItem::Stop => {
                if let Err(panic) = guarded(endpoint.on_stop(&ctx)).await {
                    let _ = guarded(endpoint.on_error(&ctx, EndpointFailure::Panic(panic))).await;
                }
                mailbox.done();
                break;
            }
        };
        if let Some(error) = outcome {
            if guarded(endpoint.on_error(&ctx, error)).await.is_err() {
                tracing::error!(endpoint = %mailbox.name, "on_error panicked");
            }
        }
        mailbox.done();
    }
    finished(&mailbox);
}

/// The task of a concurrent endpoint: `on_start` alone, then messages each on a task of
/// their own, then `on_stop` alone once they have all finished.
pub(crate) async fn run_concurrent<E: ConcurrentRpcEndpoint>(
    endpoint: Arc<E>,
    mailbox: Arc<Mailbox>,
    ctx: Arc<EndpointContext<E::Message, E::Reply>>,
    env: RunnerEnv,
    finished: impl FnOnce(&Mailbox),
    spawn: impl Fn(crate::runtime::BoxFuture<()>),
) {
    loop {
        match mailbox.next().await {
            InboxItem::Start => {
                if let Some(error) = failure(guarded(endpoint.on_start(&ctx)).await, None) {
                    let _ = guarded(endpoint.on_error(&ctx, error)).await;
                }
                mailbox.done();
            }
            InboxItem::Message(posted) => {
                let (endpoint, mailbox2, ctx, env) =
                    (endpoint.clone(), mailbox.clone(), ctx.clone(), env.clone());
                spawn(Box::pin(async move {
                    let work = prepare::<E::Message, E::Reply>(posted, &mailbox2.name, &env);
                    let outcome = handle_work!(endpoint, &ctx, mailbox2.name, work);
                    if let Some(error) = outcome {
                        let _ = guarded(endpoint.on_error(&ctx, error)).await;
                    }
                    mailbox2.done();
                }));
            }
            InboxItem::Stop => {
                if let Err(panic) = guarded(endpoint.on_stop(&ctx)).await {
                    let _ = guarded(endpoint.on_error(&ctx, EndpointFailure::Panic(panic))).await;
                }
                mailbox.done();
                break;
            }
        }
    }
    finished(&mailbox);
}
