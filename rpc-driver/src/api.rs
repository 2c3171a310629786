//! The public API, defined once.
//!
//! `rpc-tokio` and `rpc-async-std` each re-export this module whole (`pub use
//! rpc_driver::api::*;`) and add only what is theirs: their [`Runtime`] and the
//! `RpcMessage` derive naming their crate. Both adapters therefore export the same names
//! for the same items by construction, and switching runtimes is switching the crate.
//!
//! Every type that appears in a public signature of these items is here too, flat at the root
//! as quinn does with `quinn-proto`'s types, or in one of the two documented modules,
//! [`security`] and [`tls`]: a user never names `rpc_proto` or `rpc_driver`.
//!
//! The groups:
//!
//! - the control plane (Spark's `RpcEnv`): [`RpcEnv`], its endpoints, refs, messages and
//!   errors;
//! - the transport layer (Spark's network-common): [`TransportServer`],
//!   [`TransportClientFactory`], [`TransportClient`], what a handler implements, the call
//!   futures, and the protocol's own types ([`Config`], [`RequestError`], [`CallError`],
//!   [`ConnectionError`], ids, stats);
//! - blocks on the transport: [`BlockServer`], [`fetch_blocks`], [`RetryingBlockFetcher`],
//!   and Spark's block transfer messages they speak ([`BlockTransferMessage`], [`FetchPlan`],
//!   [`BlockId`]);
//! - settings: every config with its builder and the one [`ConfigError`];
//! - the runtime interface an adapter implements: [`Runtime`] and its streams and timers.

// The control plane.
pub use crate::env::message::RpcMessage;
pub use crate::env::{
    Ask, Cancelled, ConcurrentRpcEndpoint, EndpointContext, EndpointFailure, EndpointKind,
    EnvStats, FileDownload, FileServer, FileServerError, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcEnvConfig, RpcEnvConfigBuilder, RpcError, SetupError,
    DEFAULT_ASK_TIMEOUT, DEFAULT_INBOX_CAPACITY, DEFAULT_MAX_PENDING_ASKS, VERIFIER_NAME,
};
pub use crate::error::BoxError;
pub use rpc_proto::{
    AddressError, OutboxConfig, OutboxConfigBuilder, RpcAddress, RpcEndpointAddress,
    DEFAULT_BACKOFF_JITTER, DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_CONNECT_ATTEMPTS, DEFAULT_OUTBOX_MAX_BYTES, DEFAULT_OUTBOX_MAX_MESSAGES,
};

// The transport layer.
pub use crate::transport::{
    stream_not_found, ConnectError, ConnectionAddrs, ConnectionId, FileSegment, ManagedBuffer,
    MergedBlockMeta, MergedBlockMetaCall, MergedBlockMetaReqHandler, MergedBlockMetaRequest,
    MergedBlockMetaResponder, NoopRpcHandler, OneForOneStreamManager, Ready, RpcCall, RpcHandler,
    RpcResponder, ServerStats, StreamCall, StreamManager, TransportClient, TransportClientFactory,
    TransportConfig, TransportConfigBuilder, TransportServer, UnmanagedClient, UploadSink,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PARTIAL_FRAME_BYTES,
    STREAM_BUFFER_LIMIT,
};
pub use rpc_proto::{
    BodyId, CallError, Config, ConfigBuilder, ConfigError, ConnectionError, ConnectionStats,
    DecodeError, InboundStreamId, MessageType, PayloadError, RequestError, RequestId, StreamCallId,
    StreamChunkId, DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ERROR_LEN,
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_ID_LEN, DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_MAX_PENDING_STREAMS, DEFAULT_MAX_SEND_BUFFER, MIN_MAX_FRAME_SIZE,
    SPARK_MAX_FRAME_LENGTH,
};

// Blocks.
pub use crate::block::{
    fetch_blocks, BlockFetch, BlockFetchConfig, BlockFetchConfigBuilder, BlockFetchError,
    BlockFetchingListener, BlockServer, BlockServerBuilder, BlockSource, RetryingBlockFetcher,
};
// Spark's block transfer messages (the shuffle service protocol), and how a fetch is planned.
pub use rpc_proto::shuffle::{
    BlockId, BlockPushReturnCode, BlockTransferMessage, BlocksRemoved, Cause, CorruptionCause,
    DiagnoseCorruption, ExecutorShuffleInfo, FetchPlan, FetchPlanError, FetchShuffleBlockChunks,
    FetchShuffleBlocks, FinalizeShuffleMerge, GetLocalDirsForExecutors, LocalDirsForExecutors,
    MergeStatuses, OpenBlocks, PushBlockStream, RegisterExecutor, RemoveBlocks, RemoveShuffleMerge,
    ShuffleDecodeError, StreamHandle, UploadBlock, UploadBlockStream,
};

// Security, flat for the common names and whole as a module.
pub use crate::security::{self, AuthMechanism, SecretKeyHolder, Security, SecurityError};
pub use crate::tls::{self, TlsConfig};

// The runtime interface.
pub use crate::runtime::{
    sleep_until, timer_fired, AsyncListener, AsyncStream, AsyncTimer, BoxFuture, Runtime,
    TimerFired,
};
