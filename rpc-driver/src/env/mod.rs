//! The control plane: Spark's `RpcEnv` model of named endpoints, on the transport layer.
//!
//! An [`RpcEnv`] hosts named endpoints ([`RpcEndpoint`], [`ConcurrentRpcEndpoint`]); an
//! [`RpcEndpointRef`] reaches one, locally or in another env, with fire-and-forget
//! [`send`](RpcEndpointRef::send) and [`ask`](RpcEndpointRef::ask). Asks are answered
//! through an [`RpcCallContext`].
//!
//! # Message identity
//!
//! Messages and replies implement [`RpcMessage`](trait@RpcMessage) (derive it): the name peers
//! know a type by, chosen in the code and so stable across builds, compilers and module moves.
//! Lookups and every remote message are checked against the endpoint's message and reply
//! names (`"Hello -> String"`); a difference is [`RpcError::TypeMismatch`]. See the trait for
//! renaming a type without breaking peers.
//!
//! # Delivery
//!
//! At most once. Messages to one remote env go through one outbox and one connection, in the
//! order they were sent; while the connection is being opened they are queued (bounded by
//! [`RpcEnvConfig::outbox`]). A failed connect is retried with exponential backoff and
//! jitter; when the attempts run out, queued asks fail with [`RpcError::Unreachable`] and
//! queued sends are dropped (and counted in [`EnvStats::failed`]). Nothing already written
//! is retried: an ask whose connection drops fails with [`RpcError::Disconnected`] at once.
//! Retrying is the caller's choice ([`RpcEndpointRef::ask_with_retry`], for idempotent
//! messages).
//!
//! # Network events
//!
//! Endpoints hear of the processes this env is connected to through
//! [`on_connected`](RpcEndpoint::on_connected), [`on_disconnected`](RpcEndpoint::on_disconnected)
//! and [`on_network_error`](RpcEndpoint::on_network_error), as in Spark
//! (`RemoteProcessConnected`, `RemoteProcessDisconnected`, `RemoteProcessConnectionError`).
//! Each connection stands for up to two addresses:
//!
//! - the address of its socket's far end: for a connection this env opened, the address it
//!   dialled (the peer env's own address); for one it accepted, the peer's ephemeral port;
//! - the address the peer env announces as the sender of its messages (a server-mode env
//!   names its own address), once its first message arrives, when that differs.
//!
//! An address is reported connected when the first connection standing for it opens (or
//! first announces it), and disconnected when the last such connection closes. So for every
//! address, connects and disconnects alternate, starting with a connect, even when one
//! process is reached over several connections: an endpoint can keep a set of live peers by
//! adding on connect and removing on disconnect. A connection that fails reports a network
//! error for its addresses first (whether or not other connections stand for them); a clean
//! close reports none. An env that is shutting down reports nothing for its own connections.
//!
//! # Limits
//!
//! Spark's inboxes are unbounded: an endpoint slower than its senders queues messages until
//! the process runs out of memory, and stays busy long after the senders left. Here each
//! endpoint's inbox holds at most [`RpcEnvConfig::inbox_capacity`] messages, queued or being
//! handled (per endpoint with [`RpcEndpoint::inbox_capacity`]). A message that finds it full
//! is refused, not queued:
//!
//! - an ask fails at once with [`RpcError::EndpointBusy`] (the asker, local or remote, can
//!   match it and try again later);
//! - a one-way message from another env is dropped, counted in [`EnvStats::dropped`] and
//!   logged (at a bounded rate: the 1st, 2nd, 4th, 8th… drop);
//! - a local [`send`](RpcEndpointRef::send) returns [`RpcError::EndpointBusy`].
//!
//! Network events are never refused: they take room in the inbox like messages, and are
//! bounded by the connections opened and closed. A message from another env of up to 64 KiB
//! is copied out of its connection's read buffer (up to 2 MiB) when queued, so the bound in
//! messages bounds memory too (a 1,000,000-message flood of a slow endpoint grows a server by
//! about 10 MiB with the default capacity, against about 180 MiB unbounded). Asks from other
//! envs are also bounded server-wide: at most [`RpcEnvConfig::max_pending_asks`] are being
//! handled at once (from their arrival until they are answered or their call context is
//! dropped, including asks whose contexts a handler keeps to answer later); beyond it, asks
//! fail with [`RpcError::EndpointBusy`]. Per-call bookkeeping is O(1): no work scans the
//! pending calls.
//!
//! # Identity
//!
//! A connection's peer env is the address it announces in its first message that names a
//! sender (as in Spark, without authentication that first claim is taken on trust). Later
//! messages on the connection cannot change it: a different claim is ignored (and logged at
//! debug level, at a bounded rate), network events are reported for the address bound to the
//! connection, and [`RpcCallContext::sender_address`] is that address too. Lookups from
//! other envs learn whether an endpoint exists and whether the types match, never which
//! types it takes.
//!
//! # Files
//!
//! Like Spark's `RpcEnvFileServer`, a server-mode env serves files, jars and directories to
//! other envs: [`RpcEnv::file_server`] registers them and returns their URIs
//! (`rpc://host:port/files/<name>`), and [`RpcEnv::open_channel`] downloads one as a
//! [`FileDownload`] (an `AsyncRead` with bounded memory). Downloads travel on connections of
//! their own, not on the one control messages use, so asks to a peer never wait behind a
//! large download from it. See [`FileServer`] for the rules (unique names, canonical paths,
//! no escaping a directory).

mod ask;
mod binding;
mod call;
mod cancel;
mod config;
mod endpoint;
mod error;
mod file_server;
mod handler;
mod hosting;
mod hub;
mod lifecycle;
mod lookup;
mod mailbox;
pub(crate) mod message;
mod outbox;
mod reference;
mod route;
mod rpc_env;
mod runner;
mod stats;

pub use ask::Ask;
pub use call::RpcCallContext;
pub use cancel::Cancelled;
pub use config::{
    RpcEnvConfig, RpcEnvConfigBuilder, DEFAULT_ASK_TIMEOUT, DEFAULT_INBOX_CAPACITY,
    DEFAULT_MAX_PENDING_ASKS,
};
pub use endpoint::{
    BoxError, ConcurrentRpcEndpoint, EndpointContext, EndpointFailure, EndpointKind, RpcEndpoint,
};
pub use error::{RpcError, SetupError};
pub use file_server::{FileDownload, FileServer, FileServerError};
pub use lookup::VERIFIER_NAME;
pub use message::RpcMessage;
pub use reference::RpcEndpointRef;
/// Derives [`RpcMessage`](trait@RpcMessage): the name is the type's identifier, or the one set
/// with `#[rpc(name = "...")]`.
pub use rpc_derive::RpcMessage;
pub use rpc_env::RpcEnv;
pub use stats::EnvStats;
