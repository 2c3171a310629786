//! RoaringBitmaps as Spark's `Encoders.Bitmaps` writes them: the portable serialization
//! (little-endian, with or without run containers), with no length prefix of its own.

use std::fmt;

use bytes::Bytes;
use roaring::RoaringBitmap;

use super::codec::ShuffleDecodeError;

/// The portable format's cookie without run containers (then a `u32` container count).
const NO_RUN_COOKIE: u32 = 12346;
/// The cookie with run containers, in its low 16 bits (the high 16 bits are count - 1).
const RUN_COOKIE: u32 = 12347;
/// With run containers, offsets are only written from this many containers on.
const NO_OFFSET_THRESHOLD: usize = 4;
/// Array containers hold at most this many values; bigger ones are 8 KiB bitmaps.
const MAX_ARRAY: usize = 4096;
/// A 32-bit bitmap has at most this many containers (one per high 16 bits).
const MAX_CONTAINERS: usize = 1 << 16;

/// A RoaringBitmap in the portable serialization, kept as the bytes it travels as.
///
/// Decoding a message checks the bitmap's structure and measures it (the format has no
/// length prefix), but does not build the set: a run container of 4 bytes stands for up to
/// 65,536 values, so building every bitmap a peer sends would let a small message claim far
/// more memory. [`to_roaring`](Bitmap::to_roaring) builds it when it is wanted. Encoding
/// writes the bytes back unchanged, so a decoded message re-encodes to exactly its input.
///
/// ```
/// use rpc_proto::shuffle::Bitmap;
///
/// let bitmap: Bitmap = [1u32, 2, 3, 1000].into_iter().collect();
/// assert_eq!(bitmap.to_roaring().unwrap().len(), 4);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitmap(Bytes);

impl Bitmap {
    /// The portable serialization of `bitmap` (without run containers, which readers need
    /// not get: Spark reads both).
    pub fn from_roaring(bitmap: &RoaringBitmap) -> Self {
        let mut out = Vec::with_capacity(bitmap.serialized_size());
        // Writing into memory cannot fail.
        bitmap
            .serialize_into(&mut out)
            .expect("serializing a bitmap into memory");
        Self(out.into())
    }

    /// The set, built from the bytes. Up to 8 KiB per container of the bitmap (at most
    /// 512 MiB for a bitmap of every `u32`); call it only on bitmaps whose size you accept.
    pub fn to_roaring(&self) -> Result<RoaringBitmap, ShuffleDecodeError> {
        RoaringBitmap::deserialize_from(&self.0[..])
            .map_err(|e| ShuffleDecodeError::Bitmap(e.to_string()))
    }

    /// The serialized bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads one bitmap off the front of `buf`: checks its structure against the bytes
    /// there and returns it with the bytes it took.
    pub(crate) fn read(buf: &[u8]) -> Result<(Self, usize), ShuffleDecodeError> {
        let size = serialized_size(buf)?;
        Ok((Self(Bytes::copy_from_slice(&buf[..size])), size))
    }
}

impl From<&RoaringBitmap> for Bitmap {
    fn from(bitmap: &RoaringBitmap) -> Self {
        Self::from_roaring(bitmap)
    }
}

impl FromIterator<u32> for Bitmap {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        Self::from_roaring(&iter.into_iter().collect())
    }
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitmap({} bytes)", self.0.len())
    }
}

fn malformed(why: &str) -> ShuffleDecodeError {
    ShuffleDecodeError::Bitmap(why.to_owned())
}

/// A little-endian reader over the bitmap's bytes that reports running out as malformed.
struct Le<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Le<'_> {
    fn skip(&mut self, n: usize) -> Result<(), ShuffleDecodeError> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.at = end;
                Ok(())
            }
            _ => Err(ShuffleDecodeError::Truncated {
                what: "bitmap",
                needed: n,
                remaining: self.buf.len() - self.at,
            }),
        }
    }

    fn u16(&mut self) -> Result<u16, ShuffleDecodeError> {
        let at = self.at;
        self.skip(2)?;
        Ok(u16::from_le_bytes([self.buf[at], self.buf[at + 1]]))
    }

    fn u32(&mut self) -> Result<u32, ShuffleDecodeError> {
        let at = self.at;
        self.skip(4)?;
        let b = &self.buf[at..at + 4];
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The size of the portable serialization at the front of `buf`, as Java's
/// `RoaringArray.deserialize` reads it: a cookie, the container count, per container a key
/// and cardinality - 1, the offsets (unless run containers are present and there are fewer
/// than 4 containers), then each container: runs (`u16` count, 4 bytes each), an 8 KiB
/// bitmap (more than 4,096 values), or an array of `u16`s.
fn serialized_size(buf: &[u8]) -> Result<usize, ShuffleDecodeError> {
    let mut r = Le { buf, at: 0 };
    let cookie = r.u32()?;
    let (size, run_flags) = if cookie & 0xFFFF == RUN_COOKIE {
        let size = (cookie >> 16) as usize + 1;
        let flags_at = r.at;
        r.skip(size.div_ceil(8))?;
        (size, Some(&buf[flags_at..r.at]))
    } else if cookie == NO_RUN_COOKIE {
        (r.u32()? as usize, None)
    } else {
        return Err(malformed("unknown cookie"));
    };
    if size > MAX_CONTAINERS {
        return Err(malformed("more than 65536 containers"));
    }
    let headers_at = r.at;
    // Keys and cardinalities: checked present before anything is sized by `size`.
    r.skip(4 * size)?;
    if run_flags.is_none() || size >= NO_OFFSET_THRESHOLD {
        r.skip(4 * size)?;
    }
    for k in 0..size {
        let is_run = run_flags.is_some_and(|flags| flags[k / 8] & (1 << (k % 8)) != 0);
        let h = headers_at + 4 * k;
        let cardinality = usize::from(u16::from_le_bytes([buf[h + 2], buf[h + 3]])) + 1;
        if is_run {
            let runs = usize::from(r.u16()?);
            r.skip(4 * runs)?;
        } else if cardinality > MAX_ARRAY {
            r.skip(8192)?;
        } else {
            r.skip(2 * cardinality)?;
        }
    }
    Ok(r.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_what_roaring_writes_and_reads_it_back() {
        for set in [
            vec![],
            vec![1u32, 2, 3, 1000],
            (0..5000).collect(),
            (0..200_000).step_by(3).collect(),
            vec![u32::MAX, 0, 1 << 20],
        ] {
            let roaring: RoaringBitmap = set.iter().copied().collect();
            let bitmap = Bitmap::from_roaring(&roaring);
            let mut bytes = bitmap.as_bytes().to_vec();
            let size = bytes.len();
            bytes.extend_from_slice(b"trailing");
            let (read, taken) = Bitmap::read(&bytes).unwrap();
            assert_eq!(taken, size);
            assert_eq!(read, bitmap);
            assert_eq!(read.to_roaring().unwrap(), roaring);
        }
    }

    #[test]
    fn reads_run_containers_as_java_writes_them() {
        // Java's runOptimize()d {0..=99, 70000}: cookie 12347 | (2-1)<<16, run flags 0b01,
        // two headers (key 0, card-1 99; key 1, card-1 0), no offsets (fewer than 4
        // containers), then container 0 as 1 run (start 0, length-1 99) and container 1 as
        // an array of one value (70000 - 65536 = 4464).
        let bytes: Vec<u8> = [
            &(12347u32 | 1 << 16).to_le_bytes()[..],
            &[0b01],
            &[0, 0, 99, 0, 1, 0, 0, 0],
            &[1, 0, 0, 0, 99, 0],
            &4464u16.to_le_bytes(),
        ]
        .concat();
        let (bitmap, taken) = Bitmap::read(&bytes).unwrap();
        assert_eq!(taken, bytes.len());
        let set = bitmap.to_roaring().unwrap();
        assert_eq!(set.len(), 101);
        assert!(set.contains(99) && set.contains(70000) && !set.contains(100));
    }

    #[test]
    fn refuses_what_is_not_a_bitmap_or_is_cut_short() {
        assert!(Bitmap::read(&[1, 2, 3, 4, 0, 0, 0, 0]).is_err());
        assert!(Bitmap::read(&[0x3a, 0x30]).is_err());
        // 2^32 - 1 containers claimed in 8 bytes.
        let mut huge = 12346u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Bitmap::read(&huge),
            Err(ShuffleDecodeError::Bitmap(
                "more than 65536 containers".into()
            ))
        );
        let whole = Bitmap::from_roaring(&(0..5000).collect());
        for end in 0..whole.as_bytes().len() {
            assert!(Bitmap::read(&whole.as_bytes()[..end]).is_err(), "{end}");
        }
    }
}
