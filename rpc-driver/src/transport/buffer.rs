//! Buffers a server hands out: in memory, or a segment of a file sent without copying.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

// The open file the clones of a segment share: nothing for loom to model.
use crate::sync::unmodeled::Arc;

/// Data to send: Spark's `ManagedBuffer`.
///
/// A [`FileSegment`] sent as a stream body or a chunk goes from the page cache to the socket with
/// `sendfile` where the adapter supports it (plain TCP on Linux), and is read and written in
/// pieces otherwise, each piece read on the runtime's blocking pool
/// ([`Runtime::spawn_blocking`](crate::Runtime::spawn_blocking)); the sender never holds the
/// whole file.
#[derive(Clone)]
#[non_exhaustive]
pub enum ManagedBuffer {
    /// Bytes in memory.
    Memory(Bytes),
    /// A segment of a file.
    File(FileSegment),
}

impl ManagedBuffer {
    /// The buffer's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Memory(b) => b.len() as u64,
            Self::File(f) => f.len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole buffer in memory (reads a file segment).
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            Self::Memory(b) => Ok(b.clone()),
            Self::File(f) => f.read(0, usize::try_from(f.len).map_err(io::Error::other)?),
        }
    }
}

impl From<Bytes> for ManagedBuffer {
    fn from(bytes: Bytes) -> Self {
        Self::Memory(bytes)
    }
}

impl fmt::Debug for ManagedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(b) => write!(f, "Memory({} bytes)", b.len()),
            Self::File(s) => fmt::Debug::fmt(s, f),
        }
    }
}

/// `len` bytes of an open file from `offset` (Spark's `FileSegmentManagedBuffer`).
#[derive(Clone)]
pub struct FileSegment {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl FileSegment {
    /// The whole file at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file: Arc::new(file),
            path: path.to_owned(),
            offset: 0,
            len,
        })
    }

    /// `len` bytes of the file at `path` from `offset`; the segment must lie within the file.
    pub fn open_range(path: impl AsRef<Path>, offset: u64, len: u64) -> io::Result<Self> {
        let whole = Self::open(path)?;
        if offset.checked_add(len).is_none_or(|end| end > whole.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "segment {offset}+{len} lies outside {} ({} bytes)",
                    whole.path.display(),
                    whole.len
                ),
            ));
        }
        Ok(Self {
            offset,
            len,
            ..whole
        })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the segment starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The segment's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `len` bytes from `at` (relative to the segment's start).
    pub fn read(&self, at: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0; len];
        read_exact_at(&self.file, &mut buf, self.offset + at)?;
        Ok(buf.into())
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, at)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(buf)
}

impl fmt::Debug for FileSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FileSegment({} at {}+{})",
            self.path.display(),
            self.offset,
            self.len
        )
    }
}
