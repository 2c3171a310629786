//! What users implement: endpoints and their lifecycle hooks.

use std::fmt;
use std::future::Future;

use rpc_proto::{ConnectionError, RpcAddress};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::call::RpcCallContext;
use super::message::RpcMessage;
use super::reference::RpcEndpointRef;
use super::rpc_env::RpcEnv;

pub use crate::error::BoxError;

/// What went wrong in a handler or hook, as [`RpcEndpoint::on_error`] receives it.
#[derive(Debug)]
#[non_exhaustive]
pub enum EndpointFailure {
    /// A handler or hook returned an error.
    Error(BoxError),
    /// A handler or hook panicked; the panic's message.
    Panic(String),
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => write!(f, "{e}"),
            Self::Panic(m) => write!(f, "panicked: {m}"),
        }
    }
}

/// How a serial endpoint's handlers are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EndpointKind {
    /// On a task of the env's runtime, one message at a time.
    #[default]
    Serial,
    /// On a thread of its own, one message at a time: an endpoint that blocks its thread
    /// cannot starve the others (Spark's `IsolatedRpcEndpoint`).
    Isolated,
}

/// What a handler can reach: its own ref, its env, its name.
pub struct EndpointContext<M, R> {
    pub(crate) self_ref: RpcEndpointRef<M, R>,
    pub(crate) env: RpcEnv,
}

impl<M, R> EndpointContext<M, R> {
    /// This endpoint's own ref (Spark's `self`): give it to others so they can reach it.
    pub fn self_ref(&self) -> &RpcEndpointRef<M, R> {
        &self.self_ref
    }

    /// The env this endpoint runs in.
    pub fn env(&self) -> &RpcEnv {
        &self.env
    }

    /// The name this endpoint is registered under.
    pub fn name(&self) -> &str {
        self.self_ref.name()
    }
}

impl<M, R> fmt::Debug for EndpointContext<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointContext")
            .field("endpoint", &self.self_ref)
            .finish()
    }
}

/// An endpoint whose messages are handled one at a time (Spark's `ThreadSafeRpcEndpoint`):
/// the next handler does not start before the previous one finished, even across `.await`s,
/// so handlers take `&mut self` and need no locks.
///
/// Lifecycle: [`on_start`](RpcEndpoint::on_start) runs before any message,
/// [`on_stop`](RpcEndpoint::on_stop) after the last. Errors and panics of handlers and hooks
/// go to [`on_error`](RpcEndpoint::on_error); a panic does not take the env down.
///
/// ```
/// use rpc_driver::env::{BoxError, EndpointContext, RpcCallContext, RpcEndpoint, RpcMessage};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, RpcMessage)]
/// enum Counter { Add(u64), Get }
///
/// #[derive(Default)]
/// struct CounterEndpoint { total: u64 }
///
/// impl RpcEndpoint for CounterEndpoint {
///     type Message = Counter;
///     type Reply = u64;
///
///     async fn receive(&mut self, _: &EndpointContext<Counter, u64>, msg: Counter) -> Result<(), BoxError> {
///         if let Counter::Add(n) = msg { self.total += n }
///         Ok(())
///     }
///
///     async fn receive_and_reply(
///         &mut self,
///         _: &EndpointContext<Counter, u64>,
///         _: Counter,
///         call: RpcCallContext<u64>,
///     ) -> Result<(), BoxError> {
///         call.reply(self.total);
///         Ok(())
///     }
/// }
/// ```
pub trait RpcEndpoint: Send + 'static {
    /// The messages it takes, by `send` and `ask`; peers check them by their
    /// [`RpcMessage`] identity.
    type Message: RpcMessage + Serialize + DeserializeOwned + Send + 'static;
    /// What it answers asks with; peers check it by its [`RpcMessage`] identity.
    type Reply: RpcMessage + Serialize + DeserializeOwned + Send + 'static;

    /// How its handlers are scheduled.
    fn kind(&self) -> EndpointKind {
        EndpointKind::Serial
    }

    /// How many messages its inbox holds, queued or being handled, before refusing more
    /// (see [`RpcEnvConfig::inbox_capacity`](crate::env::config::RpcEnvConfig::inbox_capacity));
    /// `None`, the default, takes the env's. `Some(0)` fails its setup with
    /// [`SetupError::Config`](super::error::SetupError::Config).
    fn inbox_capacity(&self) -> Option<usize> {
        None
    }

    /// Runs before any message.
    fn on_start(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles a message sent with `send`.
    fn receive(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        message: Self::Message,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (ctx, message);
        async { Err("this endpoint does not handle `send`".into()) }
    }

    /// Handles a message sent with `ask`; answer through `call`, now or later.
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        message: Self::Message,
        call: RpcCallContext<Self::Reply>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (ctx, message);
        async move {
            call.send_failure("this endpoint does not handle `ask`");
            Ok(())
        }
    }

    /// A connection with a remote process opened.
    fn on_connected(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        remote: RpcAddress,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, remote);
        async {}
    }

    /// A connection with a remote process closed.
    fn on_disconnected(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        remote: RpcAddress,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, remote);
        async {}
    }

    /// A connection with a remote process failed (before it is reported disconnected):
    /// `error` is why the connection ended, as the transport reports it (any
    /// [`ConnectionError`] but [`PeerClosed`](ConnectionError::PeerClosed) and
    /// [`LocallyClosed`](ConnectionError::LocallyClosed), which are not failures).
    fn on_network_error(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        error: ConnectionError,
        remote: RpcAddress,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, error, remote);
        async {}
    }

    /// A handler or hook failed or panicked.
    fn on_error(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        error: EndpointFailure,
    ) -> impl Future<Output = ()> + Send {
        let name = ctx.name().to_owned();
        async move { tracing::warn!(endpoint = %name, %error, "endpoint error") }
    }

    /// Runs after the last message.
    fn on_stop(
        &mut self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
    ) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// An endpoint whose messages may be handled concurrently, after `on_start` and before
/// `on_stop` (which each run alone). Handlers take `&self`: keep state behind your own
/// synchronisation.
pub trait ConcurrentRpcEndpoint: Send + Sync + 'static {
    /// The messages it takes, by `send` and `ask`; peers check them by their
    /// [`RpcMessage`] identity.
    type Message: RpcMessage + Serialize + DeserializeOwned + Send + 'static;
    /// What it answers asks with; peers check it by its [`RpcMessage`] identity.
    type Reply: RpcMessage + Serialize + DeserializeOwned + Send + 'static;

    /// How many messages it holds, queued or being handled (each handled message is a
    /// task), before refusing more (see
    /// [`RpcEnvConfig::inbox_capacity`](crate::env::config::RpcEnvConfig::inbox_capacity)); `None`, the
    /// default, takes the env's. `Some(0)` fails its setup with
    /// [`SetupError::Config`](super::error::SetupError::Config).
    fn inbox_capacity(&self) -> Option<usize> {
        None
    }

    /// Runs before any message.
    fn on_start(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles a message sent with `send`.
    fn receive(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        message: Self::Message,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (ctx, message);
        async { Err("this endpoint does not handle `send`".into()) }
    }

    /// Handles a message sent with `ask`; answer through `call`, now or later.
    fn receive_and_reply(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        message: Self::Message,
        call: RpcCallContext<Self::Reply>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (ctx, message);
        async move {
            call.send_failure("this endpoint does not handle `ask`");
            Ok(())
        }
    }

    /// A connection with a remote process opened.
    fn on_connected(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        remote: RpcAddress,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, remote);
        async {}
    }

    /// A connection with a remote process closed.
    fn on_disconnected(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        remote: RpcAddress,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, remote);
        async {}
    }

    /// A connection with a remote process failed (before it is reported disconnected):
    /// `error` is why the connection ended, as the transport reports it (any
    /// [`ConnectionError`] but [`PeerClosed`](ConnectionError::PeerClosed) and
    /// [`LocallyClosed`](ConnectionError::LocallyClosed), which are not failures).
    fn on_network_error(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        error: ConnectionError,
        remote: RpcAddress,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, error, remote);
        async {}
    }

    /// A handler or hook failed or panicked.
    fn on_error(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
        error: EndpointFailure,
    ) -> impl Future<Output = ()> + Send {
        let name = ctx.name().to_owned();
        async move { tracing::warn!(endpoint = %name, %error, "endpoint error") }
    }

    /// Runs after the last message.
    fn on_stop(
        &self,
        ctx: &EndpointContext<Self::Message, Self::Reply>,
    ) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}
