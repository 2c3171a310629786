//! From (application, executor, file name) to a file: Spark's `ExternalShuffleBlockResolver`
//! with the path checks of Spark 4.3 — the registration table, the checks on every name and
//! path, and the index cache.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use rpc_proto::shuffle::{executor_file_path, ExecutorShuffleInfo, ShuffleIndex};

use super::error::ShuffleServiceError;

/// A registered executor: what it sent, and its local dirs resolved.
#[derive(Debug)]
pub(crate) struct Executor {
    pub(crate) info: ExecutorShuffleInfo,
    /// `info.local_dirs`, canonicalised: every file served must lie under one.
    canonical_dirs: Vec<PathBuf>,
}

impl Executor {
    /// Checks a registration (Spark 4.3's `LocalDirValidator`): at least one dir, at least
    /// one sub-dir, every dir absolute, resolvable and — when the service has `roots` — under
    /// one of them (after resolving links).
    pub(crate) fn new(
        exec_id: &str,
        info: ExecutorShuffleInfo,
        roots: &[PathBuf],
    ) -> Result<Self, ShuffleServiceError> {
        let invalid = |reason: &str| ShuffleServiceError::InvalidRegistration {
            exec_id: exec_id.to_owned(),
            reason: reason.to_owned(),
        };
        if info.local_dirs.is_empty() {
            return Err(invalid("no local dirs"));
        }
        if info.sub_dirs_per_local_dir <= 0 {
            return Err(invalid("sub-dirs per local dir must be positive"));
        }
        let mut canonical_dirs = Vec::with_capacity(info.local_dirs.len());
        for dir in &info.local_dirs {
            if dir.contains('\0') || !Path::new(dir).is_absolute() {
                return Err(invalid(&format!(
                    "local dir {dir:?} is not an absolute path"
                )));
            }
            let canonical = fs::canonicalize(dir).map_err(|source| {
                ShuffleServiceError::LocalDirUnresolvable {
                    exec_id: exec_id.to_owned(),
                    dir: dir.clone(),
                    source,
                }
            })?;
            if !roots.is_empty() && !roots.iter().any(|root| canonical.starts_with(root)) {
                return Err(ShuffleServiceError::LocalDirOutsideRoots {
                    exec_id: exec_id.to_owned(),
                    dir: dir.clone(),
                });
            }
            canonical_dirs.push(canonical);
        }
        Ok(Self {
            info,
            canonical_dirs,
        })
    }

    /// The file `name` of this executor (Spark's `ExecutorDiskUtils.getFilePath`), resolved
    /// and checked: the name is a single path component, and the file, links resolved,
    /// lies under one of the executor's local dirs.
    pub(crate) fn file(&self, name: &str) -> Result<PathBuf, ShuffleServiceError> {
        validate_file_name(name)?;
        let path = executor_file_path(
            &self.info.local_dirs,
            self.info.sub_dirs_per_local_dir,
            name,
        )
        .ok_or_else(|| ShuffleServiceError::InvalidBlockId(name.to_owned()))?;
        let canonical =
            fs::canonicalize(&path).map_err(|source| ShuffleServiceError::Io { path, source })?;
        if !self.canonical_dirs.iter().any(|d| canonical.starts_with(d)) {
            return Err(ShuffleServiceError::OutsideLocalDirs(canonical));
        }
        Ok(canonical)
    }
}

/// Spark 4.3's `validateBlockId`: a name used as a file name must not be empty, `.` or
/// `..`, nor contain `/`, `\` or NUL.
pub(crate) fn validate_file_name(name: &str) -> Result<(), ShuffleServiceError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(ShuffleServiceError::InvalidBlockId(name.to_owned()));
    }
    Ok(())
}

/// The registered executors, by application and executor id.
#[derive(Debug, Default)]
pub(crate) struct Executors {
    table: RwLock<HashMap<String, HashMap<String, Arc<Executor>>>>,
}

impl Executors {
    pub(crate) fn insert(&self, app_id: &str, exec_id: &str, executor: Executor) {
        write(&self.table)
            .entry(app_id.to_owned())
            .or_default()
            .insert(exec_id.to_owned(), Arc::new(executor));
    }

    pub(crate) fn get(
        &self,
        app_id: &str,
        exec_id: &str,
    ) -> Result<Arc<Executor>, ShuffleServiceError> {
        read(&self.table)
            .get(app_id)
            .and_then(|execs| execs.get(exec_id))
            .cloned()
            .ok_or_else(|| ShuffleServiceError::NotRegistered {
                app_id: app_id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }

    /// Forgets an application; returns how many executors it had.
    pub(crate) fn remove_app(&self, app_id: &str) -> usize {
        write(&self.table).remove(app_id).map_or(0, |e| e.len())
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.table).values().map(HashMap::len).sum()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Parsed index files, least recently used evicted first once their weight (Spark's:
/// `8 × entries + 176` bytes each) passes the capacity. An index heavier than the whole
/// capacity is used but not kept.
#[derive(Debug)]
pub(crate) struct IndexCache {
    capacity: u64,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<PathBuf, CacheEntry>,
    /// Last use → path: the eviction order.
    by_use: BTreeMap<u64, PathBuf>,
    weight: u64,
    clock: u64,
}

#[derive(Debug)]
struct CacheEntry {
    index: Arc<ShuffleIndex>,
    weight: u64,
    used: u64,
}

impl IndexCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
        }
    }

    /// The index file at `path` (canonical), from the cache or read now.
    pub(crate) fn get(&self, path: &Path) -> Result<Arc<ShuffleIndex>, ShuffleServiceError> {
        {
            let mut s = lock(&self.state);
            s.clock += 1;
            let now = s.clock;
            if let Some(entry) = s.entries.get_mut(path) {
                let old = std::mem::replace(&mut entry.used, now);
                let index = entry.index.clone();
                s.by_use.remove(&old);
                s.by_use.insert(now, path.to_owned());
                return Ok(index);
            }
        }
        // Read outside the lock: other lookups go on meanwhile.
        let bytes = fs::read(path).map_err(|source| ShuffleServiceError::Io {
            path: path.to_owned(),
            source,
        })?;
        let index =
            Arc::new(
                ShuffleIndex::parse(&bytes).map_err(|source| ShuffleServiceError::Index {
                    path: path.to_owned(),
                    source,
                })?,
            );
        let weight = index.weight() as u64;
        if weight > self.capacity {
            return Ok(index);
        }
        let mut s = lock(&self.state);
        s.clock += 1;
        let now = s.clock;
        if let Some(old) = s.entries.insert(
            path.to_owned(),
            CacheEntry {
                index: index.clone(),
                weight,
                used: now,
            },
        ) {
            // Another lookup read it meanwhile.
            s.by_use.remove(&old.used);
            s.weight -= old.weight;
        }
        s.by_use.insert(now, path.to_owned());
        s.weight += weight;
        while s.weight > self.capacity {
            let Some((_, victim)) = s.by_use.pop_first() else {
                break;
            };
            if let Some(entry) = s.entries.remove(&victim) {
                s.weight -= entry.weight;
            }
        }
        Ok(index)
    }

    /// Forgets the index at `path` (its file was deleted).
    pub(crate) fn invalidate(&self, path: &Path) {
        let mut s = lock(&self.state);
        if let Some(entry) = s.entries.remove(path) {
            s.by_use.remove(&entry.used);
            s.weight -= entry.weight;
        }
    }

    /// `(entries, weight in bytes)`.
    pub(crate) fn usage(&self) -> (usize, u64) {
        let s = lock(&self.state);
        (s.entries.len(), s.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_could_leave_their_dir_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            "shuffle_0_../../etc/passwd",
        ] {
            assert!(
                matches!(
                    validate_file_name(bad),
                    Err(ShuffleServiceError::InvalidBlockId(_))
                ),
                "{bad:?}"
            );
        }
        for good in ["shuffle_0_1_0.data", "rdd_2_5", "..data", "a.b"] {
            validate_file_name(good).unwrap();
        }
    }

    fn info(dirs: &[&Path]) -> ExecutorShuffleInfo {
        ExecutorShuffleInfo {
            local_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
            sub_dirs_per_local_dir: 4,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        }
    }

    #[test]
    fn registrations_must_lie_under_the_roots_after_resolving_links() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let roots = [fs::canonicalize(root.path()).unwrap()];
        let inside = root.path().join("blockmgr-1");
        fs::create_dir(&inside).unwrap();
        Executor::new("0", info(&[&inside]), &roots).unwrap();
        // Outside, directly, through `..`, or through a link.
        let err = Executor::new("0", info(&[elsewhere.path()]), &roots).unwrap_err();
        assert!(
            matches!(err, ShuffleServiceError::LocalDirOutsideRoots { .. }),
            "{err}"
        );
        let dotdot = inside.join("..").join("..");
        let err = Executor::new("0", info(&[&dotdot]), &roots).unwrap_err();
        assert!(matches!(
            err,
            ShuffleServiceError::LocalDirOutsideRoots { .. }
        ));
        #[cfg(unix)]
        {
            let link = root.path().join("link");
            std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
            let err = Executor::new("0", info(&[&link]), &roots).unwrap_err();
            assert!(matches!(
                err,
                ShuffleServiceError::LocalDirOutsideRoots { .. }
            ));
        }
        // Missing, relative, or empty registrations.
        let err = Executor::new("0", info(&[&root.path().join("nope")]), &roots).unwrap_err();
        assert!(matches!(
            err,
            ShuffleServiceError::LocalDirUnresolvable { .. }
        ));
        let err = Executor::new("0", info(&[Path::new("rel/dir")]), &roots).unwrap_err();
        assert!(matches!(
            err,
            ShuffleServiceError::InvalidRegistration { .. }
        ));
        let err = Executor::new("0", info(&[]), &roots).unwrap_err();
        assert!(matches!(
            err,
            ShuffleServiceError::InvalidRegistration { .. }
        ));
        // Without roots, any existing absolute dir is accepted.
        Executor::new("0", info(&[elsewhere.path()]), &[]).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn block_files_linking_outside_the_executor_dirs_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let secret = tempfile::tempdir().unwrap();
        fs::write(secret.path().join("secret"), b"x").unwrap();
        let exec = Executor::new("0", info(&[root.path()]), &[]).unwrap();
        let name = "shuffle_0_0_0.data";
        let path = executor_file_path(&exec.info.local_dirs, 4, name).unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(secret.path().join("secret"), &path).unwrap();
        let err = exec.file(name).unwrap_err();
        assert!(
            matches!(err, ShuffleServiceError::OutsideLocalDirs(_)),
            "{err}"
        );
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"data").unwrap();
        assert_eq!(exec.file(name).unwrap(), fs::canonicalize(&path).unwrap());
        assert!(matches!(
            exec.file("../secret"),
            Err(ShuffleServiceError::InvalidBlockId(_))
        ));
    }

    fn write_index(dir: &Path, name: &str, partitions: usize) -> PathBuf {
        let path = dir.join(name);
        let bytes: Vec<u8> = (0..=partitions as i64)
            .flat_map(|o| (o * 10).to_be_bytes())
            .collect();
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn the_index_cache_stays_within_its_weight_and_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        // Each index of 3 partitions weighs 8 * 4 + 176 = 208 bytes: 3 fit in 700.
        let cache = IndexCache::new(700);
        let paths: Vec<_> = (0..4)
            .map(|i| write_index(dir.path(), &format!("i{i}"), 3))
            .collect();
        for p in &paths[..3] {
            cache.get(p).unwrap();
        }
        assert_eq!(cache.usage(), (3, 624));
        // Touch 0, so 1 is the least recently used, then add 3.
        cache.get(&paths[0]).unwrap();
        cache.get(&paths[3]).unwrap();
        assert_eq!(cache.usage(), (3, 624));
        // 1 was evicted: rewriting it on disk shows on the next lookup; 0 is still cached.
        write_index(dir.path(), "i1", 5);
        write_index(dir.path(), "i0", 5);
        assert_eq!(cache.get(&paths[1]).unwrap().partitions(), 5);
        assert_eq!(cache.get(&paths[3]).unwrap().partitions(), 3);
        assert!(cache.usage().1 <= 700);
        // An index heavier than the whole cache is served, not kept.
        let big = write_index(dir.path(), "big", 100);
        assert_eq!(cache.get(&big).unwrap().partitions(), 100);
        assert!(cache.usage().1 <= 700);
        cache.invalidate(&paths[3]);
        assert_eq!(cache.usage().0, 2);
        // A corrupt index is an error, not a panic.
        fs::write(dir.path().join("bad"), b"12345").unwrap();
        assert!(matches!(
            cache.get(&dir.path().join("bad")),
            Err(ShuffleServiceError::Index { .. })
        ));
    }
}
