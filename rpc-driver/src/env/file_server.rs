//! Serving files, jars and directories to other envs: Spark's `RpcEnvFileServer` (served by
//! `NettyStreamManager`) and the download side of `NettyRpcEnv.openChannel`.
//!
//! ```text
//!   env A: file_server().add_file(p) ──> "rpc://a:7077/files/<name>"
//!                                                 │ (any other env)
//!   env B: open_channel(uri) ── own bulk connection to a:7077 ── StreamRequest "/files/<name>"
//!          <── FileDownload (AsyncRead, bounded memory) <── StreamResponse + body
//! ```
//!
//! Downloads use connections of their own (a second [`TransportClientFactory`] held by the
//! env), never the connection control messages travel on, so an ask never waits behind a large
//! download to the same peer (Spark keeps a separate transport context for file downloads).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, Stream, StreamExt};
use rpc_proto::{RpcAddress, StreamChunkId, RPC_SCHEME};
use tracing::debug;

use crate::sync::{lock, Arc, Mutex};
use crate::transport::{
    stream_not_found, BoxError, ConnectError, FileSegment, ManagedBuffer, RpcHandler, RpcResponder,
    StreamCall, StreamManager, TransportClient, TransportClientFactory,
};

/// The URI path prefix of files added with [`FileServer::add_file`].
const FILES: &str = "files";
/// The URI path prefix of jars added with [`FileServer::add_jar`].
const JARS: &str = "jars";

/// Adding a file, jar or directory to a [`FileServer`], or downloading one with
/// [`RpcEnv::open_channel`](crate::env::rpc_env::RpcEnv::open_channel), failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileServerError {
    /// A client-mode env has no address, so it cannot serve files.
    #[error("a client-mode env has no address and serves no files")]
    NoAddress,
    /// The path could not be canonicalised (it does not exist, or is unreadable).
    #[error("cannot use {path}: {source}")]
    Io {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// [`add_file`](FileServer::add_file) or [`add_jar`](FileServer::add_jar) was given
    /// something that is not a regular file.
    #[error("{0} is not a file")]
    NotAFile(PathBuf),
    /// [`add_directory`](FileServer::add_directory) was given something that is not a
    /// directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The file's name is not valid UTF-8, so it cannot be part of a URI.
    #[error("the name of {0} is not valid utf-8")]
    InvalidName(PathBuf),
    /// Another file is already registered under this name (registering the same file again
    /// is fine).
    #[error("{name} was already registered with a different path (old path = {existing}, new path = {new})")]
    DuplicateName {
        /// The name, as it appears in URIs (decoded).
        name: String,
        /// The path registered first.
        existing: PathBuf,
        /// The path refused.
        new: PathBuf,
    },
    /// A directory's base URI must be `/<name>`, with a name other than `files` and `jars`.
    #[error("invalid directory uri {0}: expected /<name>, not /files nor /jars")]
    InvalidBaseUri(String),
    /// A different directory is already registered at this base URI.
    #[error("uri {0} is already registered")]
    DuplicateBaseUri(String),
    /// A download URI is not `rpc://host:port/<path>`.
    #[error("invalid file uri {0}: expected rpc://host:port/<path>")]
    InvalidUri(String),
    /// Connecting to the serving env failed.
    #[error("cannot download {uri}: {source}")]
    Connect {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The serving env refused the download (not found, a path escaping its directory), or
    /// the stream failed before its first byte.
    #[error("downloading {uri} failed: {source}")]
    Download {
        /// The URI.
        uri: String,
        /// Why; the serving env's message is in [`rpc_proto::RequestError::Remote`].
        #[source]
        source: rpc_proto::RequestError,
    },
}

/// The files, jars and directories an env serves to other envs (Spark's `RpcEnvFileServer`),
/// from [`RpcEnv::file_server`](crate::env::rpc_env::RpcEnv::file_server). Cheap to clone.
///
/// Each `add_*` returns the URI to hand to other envs, which download with
/// [`RpcEnv::open_channel`](crate::env::rpc_env::RpcEnv::open_channel):
///
/// - [`add_file`](FileServer::add_file): `rpc://host:port/files/<name>`
/// - [`add_jar`](FileServer::add_jar): `rpc://host:port/jars/<name>`
/// - [`add_directory`](FileServer::add_directory)`("/classes", dir)`: `rpc://host:port/classes`;
///   every regular file below `dir` is served at `rpc://host:port/classes/<relative path>`.
///
/// Names are unique per kind: adding a different file under a name already taken is an
/// error, adding the same file again returns the same URI. Paths are canonicalised when
/// added. A request for a path that leaves a registered directory (`..`, an absolute path,
/// a symlink pointing outside) is refused. Names are percent-encoded in URIs as Spark does
/// (a space becomes `%20`); [`RpcEnv::open_channel`](crate::env::rpc_env::RpcEnv::open_channel) decodes
/// them.
///
/// A file is opened when a peer asks for it and sent as a [`FileSegment`]: from the page
/// cache to the socket with `sendfile` where the adapter supports it, read and written in
/// pieces otherwise, never held whole in memory. The file is opened on the connection's task
/// (a short blocking call). Its size is taken when it is opened: do not change a file while it
/// is being served.
///
/// ```no_run
/// # async fn demo(a: rpc_driver::env::RpcEnv, b: rpc_driver::env::RpcEnv)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use futures_lite::AsyncReadExt;
///
/// // Env `a` serves a file…
/// let uri = a.file_server().add_file("/tmp/app.conf")?;
/// assert!(uri.ends_with("/files/app.conf"));
///
/// // …and env `b` downloads it, on a connection of its own.
/// let mut download = b.open_channel(&uri).await?;
/// let mut contents = Vec::new();
/// download.read_to_end(&mut contents).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct FileServer {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    address: Mutex<Option<RpcAddress>>,
    files: Mutex<HashMap<String, PathBuf>>,
    jars: Mutex<HashMap<String, PathBuf>>,
    dirs: Mutex<HashMap<String, PathBuf>>,
}

impl FileServer {
    /// A file server with no address yet (a client-mode env's stays so: nothing can be added).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets the address URIs are built from, once the env has bound.
    pub(crate) fn set_address(&self, address: Option<RpcAddress>) {
        *lock(&self.inner.address) = address;
    }

    fn base_url(&self) -> Result<String, FileServerError> {
        lock(&self.inner.address)
            .as_ref()
            .map(RpcAddress::to_url)
            .ok_or(FileServerError::NoAddress)
    }

    /// Serves the file at `path` as `rpc://host:port/files/<file name>` and returns that URI.
    pub fn add_file(&self, path: impl AsRef<Path>) -> Result<String, FileServerError> {
        self.add_named(FILES, &self.inner.files, path.as_ref())
    }

    /// Serves the jar at `path` as `rpc://host:port/jars/<file name>` and returns that URI.
    pub fn add_jar(&self, path: impl AsRef<Path>) -> Result<String, FileServerError> {
        self.add_named(JARS, &self.inner.jars, path.as_ref())
    }

    /// Serves the files below directory `dir` under `base_uri` (`/classes`, or `classes`;
    /// a trailing `/` is ignored; `/files` and `/jars` are reserved) and returns
    /// `rpc://host:port/<base>`. Files are reached by their path relative to `dir`.
    pub fn add_directory(
        &self,
        base_uri: &str,
        dir: impl AsRef<Path>,
    ) -> Result<String, FileServerError> {
        let base_url = self.base_url()?;
        let base = base_uri.trim_start_matches('/').trim_end_matches('/');
        if base.is_empty() || base.contains('/') || base == FILES || base == JARS {
            return Err(FileServerError::InvalidBaseUri(base_uri.to_owned()));
        }
        let dir = canonical(dir.as_ref())?;
        if !dir.is_dir() {
            return Err(FileServerError::NotADirectory(dir));
        }
        let mut dirs = lock(&self.inner.dirs);
        match dirs.get(base) {
            Some(existing) if *existing != dir => {
                return Err(FileServerError::DuplicateBaseUri(format!("/{base}")))
            }
            Some(_) => {}
            None => {
                dirs.insert(base.to_owned(), dir.clone());
            }
        }
        debug!(uri = %base, dir = %dir.display(), "serving a directory");
        Ok(format!("{base_url}/{}", encode(base)))
    }

    fn add_named(
        &self,
        kind: &str,
        registry: &Mutex<HashMap<String, PathBuf>>,
        path: &Path,
    ) -> Result<String, FileServerError> {
        let base_url = self.base_url()?;
        let file = canonical(path)?;
        if !file.is_file() {
            return Err(FileServerError::NotAFile(file));
        }
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FileServerError::InvalidName(file.clone()))?
            .to_owned();
        let mut registry = lock(registry);
        match registry.get(&name) {
            Some(existing) if *existing != file => {
                return Err(FileServerError::DuplicateName {
                    name,
                    existing: existing.clone(),
                    new: file,
                })
            }
            Some(_) => {}
            None => {
                registry.insert(name.clone(), file.clone());
            }
        }
        debug!(%kind, %name, path = %file.display(), "serving a file");
        Ok(format!("{base_url}/{kind}/{}", encode(&name)))
    }

    /// The file a stream id (a decoded URI path, `/files/<name>`, `/<dir>/<relative path>`)
    /// names, or why there is none: for a file that is not there, Spark's exact text
    /// ([`stream_not_found`]), which Spark's `ExecutorClassLoader` turns into a
    /// `ClassNotFoundException`; for an unknown directory, the message of Spark's
    /// `NettyStreamManager`.
    fn resolve(&self, stream_id: &str) -> Result<PathBuf, String> {
        let not_found = || stream_not_found(stream_id);
        let path = stream_id.strip_prefix('/').unwrap_or(stream_id);
        let (kind, name) = path
            .split_once('/')
            .ok_or_else(|| format!("invalid stream uri {stream_id}"))?;
        let named = |registry: &Mutex<HashMap<String, PathBuf>>| {
            lock(registry).get(name).cloned().ok_or_else(not_found)
        };
        match kind {
            FILES => named(&self.inner.files),
            JARS => named(&self.inner.jars),
            dir => {
                let base = lock(&self.inner.dirs).get(dir).cloned().ok_or_else(|| {
                    format!("requirement failed: Invalid stream URI: {dir} not found.")
                })?;
                let escapes = || format!("{stream_id} escapes the directory registered at /{dir}");
                let relative = Path::new(name);
                if relative
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
                {
                    return Err(escapes());
                }
                // Canonicalising resolves symlinks: one pointing outside `base` is refused.
                let file = std::fs::canonicalize(base.join(relative)).map_err(|_| not_found())?;
                if !file.starts_with(&base) {
                    return Err(escapes());
                }
                if !file.is_file() {
                    return Err(not_found());
                }
                Ok(file)
            }
        }
    }
}

impl StreamManager for FileServer {
    fn chunk(&self, _: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        Err(format!("an rpc env serves no chunks (asked for {chunk})").into())
    }

    /// The whole file, read into memory (for callers that want bytes; the transport uses
    /// [`open_stream_buffer`](StreamManager::open_stream_buffer)).
    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, BoxError> {
        self.open_stream_buffer(client, stream_id)?
            .to_bytes()
            .map_err(|e| format!("cannot read {stream_id}: {e}").into())
    }

    /// The file as a [`FileSegment`], sent without copying.
    fn open_stream_buffer(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, BoxError> {
        let file = self.resolve(stream_id)?;
        debug!(peer = %client.peer_addr(), %stream_id, "serving a file");
        FileSegment::open(&file)
            .map(ManagedBuffer::File)
            .map_err(|e| format!("cannot read {stream_id}: {e}").into())
    }
}

impl fmt::Debug for FileServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileServer")
            .field("files", &lock(&self.inner.files).len())
            .field("jars", &lock(&self.inner.jars).len())
            .field("dirs", &lock(&self.inner.dirs).len())
            .finish()
    }
}

fn canonical(path: &Path) -> Result<PathBuf, FileServerError> {
    std::fs::canonicalize(path).map_err(|source| FileServerError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Percent-encodes a name for a URI path, as Spark's `encodeFileNameToURIRawPath` (Java's
/// `URI` quoting): everything but unreserved characters and `!$&'()*+,;=:@` is escaped.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits `rpc://host:port/path` into the address and the decoded path.
fn parse_uri(uri: &str) -> Option<(RpcAddress, String)> {
    let rest = uri.strip_prefix(RPC_SCHEME)?.strip_prefix("://")?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    if path.contains(['?', '#']) || path.len() < 2 {
        return None;
    }
    Some((authority.parse().ok()?, decode(path)?))
}

/// Opens a download of `uri` on a connection of `factory`.
pub(crate) async fn open_channel(
    factory: &TransportClientFactory,
    uri: &str,
) -> Result<FileDownload, FileServerError> {
    let invalid = || FileServerError::InvalidUri(uri.to_owned());
    let (address, path) = parse_uri(uri).ok_or_else(invalid)?;
    // An IP literal at once, a host name on the runtime's blocking pool.
    let addr: SocketAddr =
        crate::runtime::resolve(&**factory.runtime(), &address.host, address.port)
            .await
            .map_err(|_| invalid())?;
    let client = factory
        .create_client(addr)
        .await
        .map_err(|source| FileServerError::Connect {
            uri: uri.to_owned(),
            source,
        })?;
    let mut call = client.stream(&path, None);
    // Wait for the first piece (or the end), so a refusal is the caller's error here.
    let first = match call.next().await {
        Some(Ok(piece)) => Some(piece),
        Some(Err(source)) => {
            return Err(FileServerError::Download {
                uri: uri.to_owned(),
                source,
            })
        }
        None => None,
    };
    // A stream that ended before any piece is empty (its slot, with the size, is gone).
    let byte_count = if first.is_some() {
        call.byte_count()
    } else {
        Some(0)
    };
    Ok(FileDownload {
        uri: uri.to_owned(),
        byte_count,
        call: first.is_some().then_some(call),
        piece: first.unwrap_or_default(),
    })
}

/// A file being downloaded, from [`RpcEnv::open_channel`](crate::env::rpc_env::RpcEnv::open_channel): an
/// [`AsyncRead`] of its bytes, with bounded memory (the connection stops reading while the
/// reader lags, see [`StreamCall`]).
///
/// It implements futures-io's [`AsyncRead`] (read it with `futures_lite::AsyncReadExt` or
/// `futures::AsyncReadExt`) on every runtime, and, with the `tokio` feature of `rpc-driver`
/// (which `rpc-tokio` enables), tokio's `AsyncRead` too (read it with
/// `tokio::io::AsyncReadExt`, copy it with `tokio::io::copy`).
///
/// A failure after the first byte (the connection ended) is an [`io::Error`] naming the URI.
/// Dropping it before the end discards the rest of the file.
pub struct FileDownload {
    uri: String,
    byte_count: Option<u64>,
    call: Option<StreamCall>,
    piece: Bytes,
}

impl FileDownload {
    /// The file's size, as the serving env announced it.
    pub fn byte_count(&self) -> Option<u64> {
        self.byte_count
    }

    /// The URI being downloaded.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl FileDownload {
    /// Makes the next piece of the file ready in `self.piece`; an empty piece when it is
    /// ready is the end of the file.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.piece.is_empty() {
            let Some(call) = self.call.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match Pin::new(call).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(piece))) => self.piece = piece,
                Poll::Ready(Some(Err(e))) => {
                    self.call = None;
                    return Poll::Ready(Err(io::Error::other(format!(
                        "downloading {} failed: {e}",
                        self.uri
                    ))));
                }
                Poll::Ready(None) => self.call = None,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for FileDownload {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_piece(cx))?;
        let n = buf.len().min(this.piece.len());
        buf[..n].copy_from_slice(&this.piece[..n]);
        this.piece.advance(n);
        Poll::Ready(Ok(n))
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for FileDownload {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_piece(cx))?;
        let n = buf.remaining().min(this.piece.len());
        buf.put_slice(&this.piece[..n]);
        this.piece.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDownload")
            .field("uri", &self.uri)
            .field("byte_count", &self.byte_count)
            .finish_non_exhaustive()
    }
}

/// The handler of download connections: they carry streams this side asked for, nothing
/// else, so requests the peer sends on them are refused.
pub(crate) struct BulkHandler;

impl RpcHandler for BulkHandler {
    fn receive(&self, _: &TransportClient, _: Bytes, responder: RpcResponder) {
        let _ = responder.fail("this connection carries file downloads only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_can_move_between_tasks() {
        fn movable<T: Send + Unpin + 'static>() {}
        movable::<FileDownload>();
        movable::<FileServer>();
    }

    #[test]
    fn names_round_trip_through_percent_encoding() {
        for name in ["a b.txt", "plain", "100%.txt", "ü.jar", "a+b=c@d"] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name));
        }
        assert_eq!(encode("my file.txt"), "my%20file.txt");
    }

    #[test]
    fn download_uris_parse_into_an_address_and_a_decoded_path() {
        let (address, path) = parse_uri("rpc://h:7077/files/my%20file.txt").unwrap();
        assert_eq!(address, RpcAddress::new("h", 7077));
        assert_eq!(path, "/files/my file.txt");
        assert!(parse_uri("spark://h:1/files/a").is_none());
        assert!(parse_uri("rpc://h:1").is_none());
        assert!(parse_uri("rpc://h:1/").is_none());
        assert!(parse_uri("rpc://h:1/a%zz").is_none());
    }
}
