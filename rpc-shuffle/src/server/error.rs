//! Why the shuffle service refused a request, or could not start.

use std::io;
use std::path::PathBuf;

use rpc_proto::shuffle::{FetchShapeError, IndexError, ShuffleDecodeError};
use thiserror::Error;

/// Why the shuffle service refused a request: the text is what the client receives as its
/// `RpcFailure` (or chunk failure).
///
/// Messages are lowercase, except two that keep Spark's exact text because Spark's own
/// service sends it and people search logs for it: [`NotRegistered`](Self::NotRegistered)
/// and [`Unauthorized`](Self::Unauthorized).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ShuffleServiceError {
    /// The request's body is not a `BlockTransferMessage`.
    #[error("malformed block transfer message: {0}")]
    Malformed(#[from] ShuffleDecodeError),
    /// The executor never registered (or its application was removed).
    #[error("Executor is not registered (appId={app_id}, execId={exec_id})")]
    NotRegistered {
        /// The application.
        app_id: String,
        /// The executor.
        exec_id: String,
    },
    /// An authenticated connection named another application (Spark's `checkAuth`).
    #[error("Client for {client_id} not authorized for application {app_id}.")]
    Unauthorized {
        /// The application the connection authenticated as.
        client_id: String,
        /// The application the message named.
        app_id: String,
    },
    /// A registration that cannot locate any file: no local dirs, no sub-dirs, a relative
    /// dir.
    #[error("invalid registration of executor {exec_id}: {reason}")]
    InvalidRegistration {
        /// The executor.
        exec_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local dir of a registering executor is not under any of the service's local dirs
    /// (Spark 4.3's `LocalDirValidator`).
    #[error(
        "local dir {dir} of executor {exec_id} is not within the shuffle service's local dirs"
    )]
    LocalDirOutsideRoots {
        /// The executor.
        exec_id: String,
        /// The dir, as the executor sent it.
        dir: String,
    },
    /// A local dir of a registering executor cannot be resolved (it does not exist).
    #[error("local dir {dir} of executor {exec_id} cannot be resolved: {source}")]
    LocalDirUnresolvable {
        /// The executor.
        exec_id: String,
        /// The dir, as the executor sent it.
        dir: String,
        /// Why.
        source: io::Error,
    },
    /// A block id or file name that could escape its directory (Spark 4.3's
    /// `validateBlockId`).
    #[error("block id {0:?} must not be empty, '.' or '..', nor contain a path separator or nul")]
    InvalidBlockId(String),
    /// A block id of a kind this request cannot serve.
    #[error("unexpected block id {0:?}")]
    UnexpectedBlockId(String),
    /// An `rdd_R_P` block while serving RDD blocks is off
    /// ([`ShuffleServiceBuilder::with_fetch_rdd`](super::ShuffleServiceBuilder::with_fetch_rdd)).
    #[error("fetching rdd block {0} is disabled on this shuffle service")]
    RddFetchDisabled(String),
    /// A `FetchShuffleBlocks` whose lists do not fit together (map ids and reduce id lists
    /// differ in number, or a batch range is not exactly `[start, end)`).
    #[error("malformed fetch: {0}")]
    FetchShape(#[from] FetchShapeError),
    /// More blocks than a stream can count.
    #[error("too many blocks in one request: {0}")]
    TooManyBlocks(usize),
    /// The connection has as many streams open as it may.
    #[error("too many open streams on this connection: {open} (limit {limit})")]
    TooManyStreams {
        /// Streams open.
        open: usize,
        /// The limit.
        limit: usize,
    },
    /// A block file that resolves (through links) outside the executor's registered local
    /// dirs (Spark 4.3's `spark.shuffle.service.verifyBlockPathsAtRead`).
    #[error("block file {0} resolves outside the executor's registered local dirs")]
    OutsideLocalDirs(PathBuf),
    /// A block file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An index file that cannot be used for the range asked for.
    #[error("index file {path}: {source}")]
    Index {
        /// The file.
        path: PathBuf,
        /// Why.
        source: IndexError,
    },
    /// A message this service does not serve (push-based shuffle, uploads, corruption
    /// diagnosis).
    #[error("{0} is not supported by this shuffle service")]
    Unsupported(&'static str),
    /// A reply sent as a request.
    #[error("unexpected message {0}: it is a reply, not a request")]
    Unexpected(&'static str),
    /// The registration store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the registration store failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (open, read, write, commit).
    #[error("registration store {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
    },
    /// A stored registration is not one this service wrote.
    #[error("registration store {path}: corrupt entry: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Why a [`ShuffleService`](super::ShuffleService) could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ShuffleServiceConfigError {
    /// One of the service's local dirs cannot be resolved.
    #[error("local dir {path}: {source}")]
    LocalDir {
        /// The dir.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A limit set to zero.
    #[error("{0} must not be zero")]
    Zero(&'static str),
    /// The registration store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
}
