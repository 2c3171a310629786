//! Spark's shuffle checksums (`spark.shuffle.checksum.algorithm`) and its corruption
//! diagnosis (`ShuffleChecksumHelper.diagnoseCorruption`).

use std::io;
use std::path::Path;

use rpc_driver::transport::FileSegment;
use rpc_proto::shuffle::Cause;

/// The checksum algorithms Spark writes, as `java.util.zip` computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Adler32,
    Crc32,
    Crc32c,
}

impl Algorithm {
    /// Spark's names: `ADLER32` (the default), `CRC32`, `CRC32C`.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "ADLER32" => Some(Self::Adler32),
            "CRC32" => Some(Self::Crc32),
            "CRC32C" => Some(Self::Crc32c),
            _ => None,
        }
    }

    fn start(self) -> u32 {
        match self {
            Self::Adler32 => 1,
            Self::Crc32 | Self::Crc32c => 0,
        }
    }

    fn update(self, state: u32, bytes: &[u8]) -> u32 {
        match self {
            Self::Adler32 => adler32(state, bytes),
            Self::Crc32 => crc(&CRC32, state, bytes),
            Self::Crc32c => crc(&CRC32C, state, bytes),
        }
    }

    /// The checksum of `bytes`, as Java's `Checksum.getValue()`.
    #[cfg(test)]
    fn of(self, bytes: &[u8]) -> i64 {
        i64::from(self.update(self.start(), bytes))
    }
}

const fn crc_table(polynomial: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                polynomial ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32: [u32; 256] = crc_table(0xEDB8_8320);
static CRC32C: [u32; 256] = crc_table(0x82F6_3B78);

fn crc(table: &[u32; 256], state: u32, bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!state, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn adler32(state: u32, bytes: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (state & 0xffff, state >> 16);
    // 5552 bytes keep the sums within u32 between reductions.
    for chunk in bytes.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// Spark's `diagnoseCorruption`: compares the checksum the writer stored for `reduce_id`
/// in `checksum_file` with the block's bytes now on disk and with the reader's.
pub(crate) fn diagnose(
    algorithm: &str,
    checksum_file: Option<&Path>,
    reduce_id: i32,
    block: impl FnOnce() -> io::Result<FileSegment>,
    checksum_by_reader: i64,
) -> Cause {
    let Some(checksum_file) = checksum_file else {
        // No checksum file (checksums off, or the write failed): Spark cannot tell either.
        return Cause::UnknownIssue;
    };
    let Some(algorithm) = Algorithm::from_name(algorithm) else {
        return Cause::UnsupportedChecksumAlgorithm;
    };
    let by_writer = || -> io::Result<i64> {
        let offset =
            u64::try_from(reduce_id).map_err(|_| io::Error::other("negative reduce id"))? * 8;
        let segment = FileSegment::open_range(checksum_file, offset, 8)?;
        let bytes = segment.read(0, 8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes);
        Ok(i64::from_be_bytes(word))
    };
    let on_disk = || -> io::Result<i64> {
        let segment = block()?;
        let mut state = algorithm.start();
        let mut at = 0;
        while at < segment.len() {
            let n = (segment.len() - at).min(64 * 1024);
            state = algorithm.update(state, &segment.read(at, n as usize)?);
            at += n;
        }
        Ok(i64::from(state))
    };
    match (by_writer(), on_disk()) {
        (Ok(by_writer), Ok(now)) if by_writer != now => Cause::DiskIssue,
        (Ok(by_writer), Ok(_)) if by_writer != checksum_by_reader => Cause::NetworkIssue,
        (Ok(_), Ok(_)) => Cause::ChecksumVerifyPass,
        _ => Cause::UnknownIssue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_java_util_zip() {
        let check = b"123456789";
        assert_eq!(Algorithm::Crc32.of(check), 0xCBF4_3926, "crc32");
        assert_eq!(Algorithm::Crc32c.of(check), 0xE306_9283);
        assert_eq!(Algorithm::Adler32.of(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(Algorithm::Adler32.of(b""), 1);
        // Long inputs exercise Adler-32's reductions: a million 0xff bytes.
        assert_eq!(
            Algorithm::Adler32.of(&[0xffu8; 1_000_000]),
            i64::from(reference_adler(&vec![0xffu8; 1_000_000]))
        );
        assert_eq!(Algorithm::from_name("MD5"), None);
    }

    fn reference_adler(bytes: &[u8]) -> u32 {
        let (mut a, mut b) = (1u64, 0u64);
        for &x in bytes {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        ((b << 16) | a) as u32
    }
}
