//! Spark's `Encoders` (network-common's `protocol/Encoders.java`): the field encodings of a
//! `BlockTransferMessage`, big-endian, with the bounds checks Spark 4.3.0 makes on decoding.

use bytes::{BufMut, BytesMut};

use super::bitmap::Bitmap;
use thiserror::Error;

/// Why a `BlockTransferMessage` (or one of its fields) could not be read.
///
/// Every count and length a peer sends is checked against the bytes that are left before
/// anything is allocated, so a message cannot make the reader allocate more than its own size.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ShuffleDecodeError {
    /// The message is empty: it has not even a type byte.
    #[error("empty block transfer message")]
    Empty,
    /// The type byte names no message Spark 4.3 decodes.
    #[error("unknown block transfer message type: {0}")]
    UnknownType(u8),
    /// The type byte names a message Spark removed (4 `RegisterDriver` and 5
    /// `ShuffleServiceHeartbeat`, Mesos' messages, gone in Spark 4.0); Spark's decoder
    /// refuses them as unknown too.
    #[error("retired block transfer message type: {0} (removed in spark 4.0)")]
    RetiredType(u8),
    /// The message ended inside a field.
    #[error("truncated {what}: needs {needed} bytes, {remaining} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// The bytes the field needs.
        needed: usize,
        /// The bytes left in the message.
        remaining: usize,
    },
    /// A length or count is negative.
    #[error("negative {what}: {value}")]
    Negative {
        /// The field.
        what: &'static str,
        /// Its value.
        value: i32,
    },
    /// A count of elements is larger than the bytes left could hold (Spark 4.3.0's check).
    #[error("{what} count {count} exceeds what {remaining} remaining bytes can hold")]
    CountTooLarge {
        /// The array.
        what: &'static str,
        /// The count the peer sent.
        count: i32,
        /// The bytes left in the message.
        remaining: usize,
    },
    /// A string is not UTF-8. Java would substitute U+FFFD; we refuse it, so no two ids that
    /// differ on the wire become the same id here.
    #[error("{what} is not valid utf-8")]
    InvalidUtf8 {
        /// The field.
        what: &'static str,
    },
    /// A RoaringBitmap in portable serialization is malformed.
    #[error("malformed roaring bitmap: {0}")]
    Bitmap(String),
    /// A boolean byte other than 0 or 1.
    #[error("invalid boolean byte {0:#04x}")]
    Boolean(u8),
    /// An enum byte with no meaning.
    #[error("invalid {what}: {value}")]
    InvalidEnum {
        /// The enum.
        what: &'static str,
        /// The byte.
        value: u8,
    },
    /// The fields do not agree with each other (for example `LocalDirsForExecutors`'s counts
    /// of directories do not add up to the directories sent).
    #[error("inconsistent {0}")]
    Inconsistent(&'static str),
}

/// Reads fields off a message, front to back.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ShuffleDecodeError> {
        if self.buf.len() < n {
            return Err(ShuffleDecodeError::Truncated {
                what,
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ShuffleDecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, ShuffleDecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ShuffleDecodeError::Boolean(other)),
        }
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, ShuffleDecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, ShuffleDecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// A length that must not be negative.
    fn len(&mut self, what: &'static str) -> Result<usize, ShuffleDecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| ShuffleDecodeError::Negative { what, value })
    }

    /// An element count, bounded by the bytes left (each element takes at least `min` bytes).
    fn count(&mut self, what: &'static str, min: usize) -> Result<usize, ShuffleDecodeError> {
        let value = self.i32(what)?;
        let count =
            usize::try_from(value).map_err(|_| ShuffleDecodeError::Negative { what, value })?;
        if count > self.buf.len() / min {
            return Err(ShuffleDecodeError::CountTooLarge {
                what,
                count: value,
                remaining: self.buf.len(),
            });
        }
        Ok(count)
    }

    /// `Encoders.Strings`: `i32` length and UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, ShuffleDecodeError> {
        let len = self.len(what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ShuffleDecodeError::InvalidUtf8 { what })
    }

    /// `Encoders.ByteArrays`: `i32` length and bytes.
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, ShuffleDecodeError> {
        let len = self.len(what)?;
        Ok(self.take(len, what)?.to_vec())
    }

    /// `Encoders.StringArrays`: `i32` count and that many strings (count at most remaining / 4).
    pub(crate) fn strings(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<String>, ShuffleDecodeError> {
        let count = self.count(what, 4)?;
        (0..count).map(|_| self.string(what)).collect()
    }

    /// `Encoders.IntArrays`: `i32` count and that many `i32`s.
    pub(crate) fn ints(&mut self, what: &'static str) -> Result<Vec<i32>, ShuffleDecodeError> {
        let count = self.count(what, 4)?;
        (0..count).map(|_| self.i32(what)).collect()
    }

    /// `Encoders.LongArrays`: `i32` count and that many `i64`s.
    pub(crate) fn longs(&mut self, what: &'static str) -> Result<Vec<i64>, ShuffleDecodeError> {
        let count = self.count(what, 8)?;
        (0..count).map(|_| self.i64(what)).collect()
    }

    /// An `i32` count of `IntArrays` (`FetchShuffleBlocks`' reduce ids): each takes at least
    /// its own 4-byte count.
    pub(crate) fn int_arrays(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<Vec<i32>>, ShuffleDecodeError> {
        let count = self.count(what, 4)?;
        (0..count).map(|_| self.ints(what)).collect()
    }

    /// `Encoders.Bitmaps`: a RoaringBitmap in portable serialization (little-endian), with
    /// no length prefix: its size comes from the bitmap itself.
    pub(crate) fn bitmap(&mut self) -> Result<Bitmap, ShuffleDecodeError> {
        let (bitmap, taken) = Bitmap::read(self.buf)?;
        self.buf = &self.buf[taken..];
        Ok(bitmap)
    }

    /// `Encoders.BitmapArrays`: `i32` count and that many bitmaps (each at least 8 bytes).
    pub(crate) fn bitmaps(&mut self) -> Result<Vec<Bitmap>, ShuffleDecodeError> {
        let count = self.count("bitmaps", 8)?;
        (0..count).map(|_| self.bitmap()).collect()
    }
}

/// The `i32` Spark writes for a length or count.
///
/// # Panics
///
/// If `n` exceeds `i32::MAX`: no frame can carry such a message (frames are at most
/// `Config::max_frame_size`, far below 2 GiB), so this is a caller's bug.
fn java_len(n: usize) -> i32 {
    i32::try_from(n).expect("a block transfer message field longer than i32::MAX")
}

/// Writes fields, the inverse of [`Reader`].
pub(crate) trait Writer {
    fn put_string(&mut self, s: &str);
    fn put_bytes_field(&mut self, b: &[u8]);
    fn put_strings(&mut self, v: &[String]);
    fn put_ints(&mut self, v: &[i32]);
    fn put_longs(&mut self, v: &[i64]);
    fn put_bitmap(&mut self, b: &Bitmap);
}

impl Writer for BytesMut {
    fn put_string(&mut self, s: &str) {
        self.put_bytes_field(s.as_bytes());
    }

    fn put_bytes_field(&mut self, b: &[u8]) {
        self.put_i32(java_len(b.len()));
        self.put_slice(b);
    }

    fn put_strings(&mut self, v: &[String]) {
        self.put_i32(java_len(v.len()));
        for s in v {
            self.put_string(s);
        }
    }

    fn put_ints(&mut self, v: &[i32]) {
        self.put_i32(java_len(v.len()));
        for &i in v {
            self.put_i32(i);
        }
    }

    fn put_longs(&mut self, v: &[i64]) {
        self.put_i32(java_len(v.len()));
        for &l in v {
            self.put_i64(l);
        }
    }

    fn put_bitmap(&mut self, b: &Bitmap) {
        self.put_slice(b.as_bytes());
    }
}
