//! Sort-shuffle index files: `(numPartitions + 1)` big-endian `i64` offsets into the data file.

use thiserror::Error;

/// Why an index file, or a range of it, cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The file's size is not a positive multiple of 8.
    #[error("index file of {0} bytes is not a list of offsets")]
    Size(usize),
    /// The range asked for is outside the index, or backwards.
    #[error("reduce range [{start}, {end}) is outside an index of {partitions} partitions")]
    OutOfRange {
        /// The first reduce partition.
        start: i32,
        /// One past the last.
        end: i32,
        /// The partitions the index has.
        partitions: usize,
    },
    /// The offsets of the range are negative or decreasing: the file is corrupt.
    #[error("corrupt index: offsets {start_offset} and {end_offset}")]
    Corrupt {
        /// The range's first offset.
        start_offset: i64,
        /// Its last.
        end_offset: i64,
    },
}

/// A parsed sort-shuffle index file (Spark's `ShuffleIndexInformation`).
///
/// ```
/// use rpc_proto::shuffle::ShuffleIndex;
///
/// let mut file = Vec::new();
/// for offset in [0i64, 10, 10, 25] {
///     file.extend_from_slice(&offset.to_be_bytes());
/// }
/// let index = ShuffleIndex::parse(&file).unwrap();
/// assert_eq!(index.partitions(), 3);
/// assert_eq!(index.range(0, 1).unwrap(), (0, 10));
/// assert_eq!(index.range(1, 2).unwrap(), (10, 0)); // empty blocks are legal
/// assert_eq!(index.range(0, 3).unwrap(), (0, 25)); // a batch of reduce partitions
/// assert!(index.range(2, 4).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShuffleIndex {
    offsets: Vec<i64>,
}

impl ShuffleIndex {
    /// Reads an index file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        if bytes.is_empty() || bytes.len() % 8 != 0 {
            return Err(IndexError::Size(bytes.len()));
        }
        let offsets = bytes
            .chunks_exact(8)
            .map(|c| i64::from_be_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        Ok(Self { offsets })
    }

    /// How many reduce partitions the index has.
    pub fn partitions(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The bytes an index of this many partitions weighs in a cache (Spark's weigher:
    /// `8 × entries + 176`).
    pub fn weight(&self) -> usize {
        8 * self.offsets.len() + 176
    }

    /// The `(offset, length)` in the data file of reduce partitions `[start, end)`.
    pub fn range(&self, start: i32, end: i32) -> Result<(u64, u64), IndexError> {
        let out_of_range = || IndexError::OutOfRange {
            start,
            end,
            partitions: self.partitions(),
        };
        let s = usize::try_from(start).map_err(|_| out_of_range())?;
        let e = usize::try_from(end).map_err(|_| out_of_range())?;
        if s > e || e >= self.offsets.len() {
            return Err(out_of_range());
        }
        let (start_offset, end_offset) = (self.offsets[s], self.offsets[e]);
        match (u64::try_from(start_offset), u64::try_from(end_offset)) {
            (Ok(a), Ok(b)) if a <= b => Ok((a, b - a)),
            _ => Err(IndexError::Corrupt {
                start_offset,
                end_offset,
            }),
        }
    }
}
