//! The sans-IO core of a Spark-compatible RPC transport.
//!
//! `rpc-proto` is the protocol without the I/O: Spark's network-common frame format, byte for
//! byte, and the state machine of one connection (request/response correlation, stream
//! ordering, out-of-frame bodies, call timeouts, the idle policy). It opens no sockets, spawns
//! no tasks, reads no clock and has no `unsafe`. A driver (`rpc-driver`, run by `rpc-tokio` or
//! `rpc-async-std`) moves bytes between a socket and a [`Connection`], and time into it.
//!
//! It is not an RPC framework by itself. For the control plane (Spark's `RpcEnv` model) it
//! holds only pure state: addresses ([`RpcEndpointAddress`]), our versioned [`Envelope`],
//! the ordering rules of an endpoint's [`Inbox`] and the queue and connect policy of an
//! [`Outbox`]; endpoints, dispatch and connection pooling live in the layers above.
//! What our peers put inside Spark's frames beyond the envelope (failure kinds, the lookup,
//! message identities, the block messages) is specified in [`wire`], with golden vectors.
//!
//! For security it holds Spark's AES authentication handshake ([`auth`]): the messages, both
//! key schedules and the client and server roles, taking the secret and randomness as inputs
//! and giving the [`TransportKeys`] a transport cipher needs. [`sasl`] holds Spark's default
//! authentication, SASL DIGEST-MD5 as the JDK runs it (client, server and the `auth-conf`
//! confidentiality layer with Spark's framing), likewise pure.
//!
//! ```text
//!   bytes read, now ──► handle_data / handle_bytes ─┐
//!   deadline passed ──► handle_timeout ─────────────┤      ┌──► poll_transmit: bytes to write
//!   EOF / I/O error ──► handle_closed / _error ─────┼─► Connection ─► poll_event: requests, replies
//!   commands, now ───► rpc, stream, respond_*, … ───┘      └──► poll_timeout: next deadline
//! ```
//!
//! # The run loop
//!
//! A driver owns one [`Connection`] per socket and loops: feed what happened (bytes read, a
//! deadline passed, a command from a user), then drain every `poll_*` output until it returns
//! `None`: write what [`Connection::poll_transmit`] gives, dispatch what
//! [`Connection::poll_event`] gives, and sleep until [`Connection::poll_timeout`].
//!
//! # Time
//!
//! Every input that can change timing takes `now: Instant`. The crate never calls
//! `Instant::now()` (clippy enforces it), so tests run on virtual time and are repeatable.
//! Randomness (the first request id) comes from [`Config::seed`].
//!
//! # Example
//!
//! Two connections wired back to back, one fetching a stream from the other:
//!
//! ```
//! use std::time::Instant;
//! use rpc_proto::{Config, Connection, Event};
//!
//! let now = Instant::now();
//! let mut client = Connection::new(Config::default(), now);
//! let mut server = Connection::new(Config::default(), now);
//!
//! let call = client.stream(now, "jars/app.jar", None).unwrap();
//! while let Some(b) = client.poll_transmit() { server.handle_bytes(now, &b); }
//!
//! let Some(Event::StreamRequested { request, stream_id }) = server.poll_event() else { panic!() };
//! let body = server.respond_stream(now, request, &stream_id, 11).unwrap();
//! server.send_body(now, body, "hello ".into()).unwrap();
//! server.send_body(now, body, "world".into()).unwrap();
//! while let Some(b) = server.poll_transmit() { client.handle_bytes(now, &b); }
//!
//! assert_eq!(client.poll_event(), Some(Event::StreamOpened { stream: call, byte_count: 11 }));
//! let mut got = Vec::new();
//! while let Some(Event::StreamData { data, .. }) = client.poll_event() {
//!     got.extend_from_slice(&data);
//! }
//! assert_eq!(got, b"hello world");
//! ```
//!
//! (The last `poll_event` in the loop above returned [`Event::StreamFinished`].)
//!
//! # Encryption
//!
//! [`cipher`] holds Spark's transport ciphers (AES-GCM segmented framing and AES-CTR) as pure
//! byte transforms over keys given as [`CipherKeys`]; they sit between the socket bytes and a
//! [`Connection`].

#![forbid(unsafe_code)]

mod address;
pub mod auth;
pub mod cipher;
mod config;
mod connection;
mod envelope;
mod error;
mod frame;
pub mod handshake;
mod id;
mod inbox;
mod io_error;
mod outbox;
pub mod sasl;
mod serde_probe;
pub mod shuffle;
pub mod wire;

pub use address::{AddressError, RpcAddress, RpcEndpointAddress, RPC_CLIENT_SCHEME, RPC_SCHEME};
pub use auth::{AuthClient, AuthError, AuthServer, AuthVersion, TransportKeys};
pub use cipher::{CipherError, CipherKeys};
pub use config::{
    Config, ConfigBuilder, DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ERROR_LEN,
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_ID_LEN, DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_MAX_PENDING_STREAMS, DEFAULT_MAX_SEND_BUFFER, MIN_MAX_FRAME_SIZE,
    SPARK_MAX_FRAME_LENGTH,
};
pub use connection::{Connection, ConnectionStats, Event};
pub use envelope::{
    decode_payload, encode_payload, Envelope, EnvelopeCache, EnvelopeError, EnvelopeKind,
    EnvelopePrefix, EnvelopeView, PayloadError, ENVELOPE_VERSION,
};
pub use error::{CallError, ConfigError, ConnectionError, DecodeError, RequestError};
pub use frame::{Decoded, Frame, FrameDecoder, MessageType, FRAME_PREFIX_LEN};
pub use id::{BodyId, Call, InboundStreamId, RequestId, StreamCallId, StreamChunkId};
pub use inbox::{Inbox, InboxError, InboxItem};
pub use outbox::{
    Outbox, OutboxAction, OutboxConfig, OutboxConfigBuilder, OutboxError, OutboxFailure,
    OutboxState, DEFAULT_BACKOFF_JITTER, DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_CONNECT_ATTEMPTS, DEFAULT_OUTBOX_MAX_BYTES, DEFAULT_OUTBOX_MAX_MESSAGES,
};
pub use wire::{LookupReply, RemoteFailure, TooManyStreams};
