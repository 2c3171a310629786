//! `rpc-bench shuffle`: W9, a reducer fetching its shuffle blocks from a shuffle service, from
//! Spark's own external shuffle service (`bench/java/ShuffleBench.java`: Spark's
//! `ExternalBlockHandler` on Spark's transport) and from ours (`rpc_shuffle::server`), in the
//! same run, interleaved.
//!
//! ```text
//!   data (written once, page-cached): 64 map outputs x 8 reduce partitions, sort-shuffle
//!     files (shuffle_0_M_0.data + .index) laid out as Spark's executors lay them out
//!   server process: Spark's ESS (java) | ours (rpc-bench shuffle-server)
//!   client process (ours, rpc_shuffle's reader, the same for both servers): registers the
//!     executor, then fetches every block of every reducer, reducer after reducer, with a
//!     bounded number of bytes in flight; discards the bytes after checking their length
//!   figures: GiB/s, server CPU seconds per GiB, client peak RSS
//! ```
//!
//! The client is ours for both servers, so the servers are what is compared. Run with
//! `cargo run --release -p rpc-bench -- shuffle` (about a minute), `--quick` for a smoke run.

use std::io::Write;
use std::path::PathBuf;

use rpc_shuffle::protocol::{executor_file_path, shuffle_data_file, shuffle_index_file};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The shuffle a run fetches: `maps` map outputs of `reducers` partitions of `block` bytes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The service's root (Spark's `spark.local.dir`); executors' dirs lie under it.
    pub(crate) root: PathBuf,
    pub(crate) maps: usize,
    pub(crate) reducers: usize,
    pub(crate) block: usize,
}

/// The executor the files belong to, and how many sub-directories its dirs have.
pub(crate) const APP: &str = "app-bench";
pub(crate) const EXEC: &str = "0";
pub(crate) const SUB_DIRS: i32 = 64;

impl Layout {
    pub(crate) fn new(quick: bool) -> Self {
        // 1 GiB in all: 64 x 8 blocks of 2 MiB; a smoke run moves 16 MiB.
        let (maps, reducers, block) = if quick {
            (16, 8, 128 << 10)
        } else {
            (64, 8, 2 << 20)
        };
        let root = std::env::temp_dir().join(format!("rpc-bench-shuffle-{maps}x{reducers}x{block}"));
        Self {
            root,
            maps,
            reducers,
            block,
        }
    }

    /// The executor's one local dir, as Spark names them.
    pub(crate) fn local_dir(&self) -> PathBuf {
        self.root.join("blockmgr-bench")
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        (self.maps * self.reducers * self.block) as u64
    }

    /// The size of block `(map, reduce)`: every block the same size, so each reducer moves
    /// the same bytes.
    pub(crate) fn block_len(&self) -> usize {
        self.block
    }

    fn path(&self, file: &str) -> Result<PathBuf, Error> {
        let dirs = [self.local_dir().display().to_string()];
        executor_file_path(&dirs, SUB_DIRS, file).ok_or_else(|| "no file path".into())
    }

    /// Writes the map outputs unless a complete set is there, then reads them all once so
    /// they are in the page cache.
    pub(crate) fn ensure(&self) -> Result<(), Error> {
        let marker = self.root.join("complete");
        if !marker.is_file() {
            let _ = std::fs::remove_dir_all(&self.root);
            let piece: Vec<u8> = (0..self.block).map(|i| (i % 241) as u8).collect();
            for map in 0..self.maps as i64 {
                let data = self.path(&shuffle_data_file(0, map))?;
                let index = self.path(&shuffle_index_file(0, map))?;
                for p in [&data, &index] {
                    std::fs::create_dir_all(p.parent().ok_or("a file path has a parent")?)?;
                }
                let mut out = std::io::BufWriter::new(std::fs::File::create(&data)?);
                let mut offsets = Vec::with_capacity(8 * (self.reducers + 1));
                offsets.extend_from_slice(&0i64.to_be_bytes());
                for r in 0..self.reducers {
                    out.write_all(&piece)?;
                    offsets.extend_from_slice(&(((r + 1) * self.block) as i64).to_be_bytes());
                }
                out.flush()?;
                std::fs::write(&index, offsets)?;
            }
            std::fs::write(&marker, b"")?;
        }
        for map in 0..self.maps as i64 {
            for file in [shuffle_data_file(0, map), shuffle_index_file(0, map)] {
                let _ = std::fs::read(self.path(&file)?)?;
            }
        }
        Ok(())
    }

    /// The block ids reducer `r` fetches.
    pub(crate) fn reducer_blocks(&self, r: usize) -> Vec<String> {
        (0..self.maps).map(|m| format!("shuffle_0_{m}_{r}")).collect()
    }
}
