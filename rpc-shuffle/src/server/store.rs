//! The registrations, kept on disk so a restarted service still serves the executors that
//! registered before (Spark's `spark.shuffle.service.db.enabled`).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rpc_proto::shuffle::ExecutorShuffleInfo;
use serde::{Deserialize, Serialize};

use super::error::StoreError;

/// `(app id, exec id)` → the registration as JSON (Spark keeps JSON too).
const EXECUTORS: TableDefinition<'_, (&str, &str), &str> = TableDefinition::new("executors");

/// The JSON of a registration, with Spark's field names.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredInfo {
    local_dirs: Vec<String>,
    sub_dirs_per_local_dir: i32,
    shuffle_manager: String,
}

/// A redb database of registrations.
pub(crate) struct RegistrationStore {
    db: Database,
    path: PathBuf,
}

impl RegistrationStore {
    /// Opens (or creates) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: Database::create(path).map_err(|e| db_error(path, e))?,
            path: path.to_owned(),
        };
        // Create the table, so reads of a new database find it.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn error(&self, error: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, error)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, (&str, &str), &str>) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(EXECUTORS).map_err(|e| self.error(e))?;
            f(&mut table).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Every stored registration.
    pub(crate) fn load(&self) -> Result<Vec<(String, String, ExecutorShuffleInfo)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(EXECUTORS).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let (app_id, exec_id) = key.value();
            let info: StoredInfo =
                serde_json::from_str(value.value()).map_err(|source| StoreError::Corrupt {
                    path: self.path.clone(),
                    source,
                })?;
            out.push((
                app_id.to_owned(),
                exec_id.to_owned(),
                ExecutorShuffleInfo {
                    local_dirs: info.local_dirs,
                    sub_dirs_per_local_dir: info.sub_dirs_per_local_dir,
                    shuffle_manager: info.shuffle_manager,
                },
            ));
        }
        Ok(out)
    }

    /// Stores (or replaces) a registration, durably.
    pub(crate) fn put(
        &self,
        app_id: &str,
        exec_id: &str,
        info: &ExecutorShuffleInfo,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(&StoredInfo {
            local_dirs: info.local_dirs.clone(),
            sub_dirs_per_local_dir: info.sub_dirs_per_local_dir,
            shuffle_manager: info.shuffle_manager.clone(),
        })
        .map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        self.write(|table| {
            table.insert((app_id, exec_id), json.as_str())?;
            Ok(())
        })
    }

    /// Deletes every registration of `app_id`; returns how many there were.
    pub(crate) fn remove_app(&self, app_id: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        self.write(|table| {
            let mut execs = Vec::new();
            for entry in table.range((app_id, "")..)? {
                let (key, _) = entry?;
                let (app, exec) = key.value();
                if app != app_id {
                    break;
                }
                execs.push(exec.to_owned());
            }
            for exec_id in &execs {
                table.remove((app_id, exec_id.as_str()))?;
            }
            removed = execs.len();
            Ok(())
        })?;
        Ok(removed)
    }
}

fn db_error(path: &Path, error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        source: Box::new(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dir: &str) -> ExecutorShuffleInfo {
        ExecutorShuffleInfo {
            local_dirs: vec![dir.to_owned()],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".to_owned(),
        }
    }

    #[test]
    fn registrations_survive_reopening_and_removal_deletes_only_that_app() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrations.redb");
        {
            let store = RegistrationStore::open(&path).unwrap();
            store.put("app-1", "0", &info("/a")).unwrap();
            store.put("app-1", "1", &info("/b")).unwrap();
            store.put("app-10", "0", &info("/c")).unwrap();
            store.put("app-2", "0", &info("/d")).unwrap();
            // Re-registration replaces.
            store.put("app-1", "1", &info("/e")).unwrap();
        }
        let store = RegistrationStore::open(&path).unwrap();
        let mut all = store.load().unwrap();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let dirs: Vec<_> = all
            .iter()
            .map(|(a, e, i)| (a.as_str(), e.as_str(), i.local_dirs[0].as_str()))
            .collect();
        assert_eq!(
            dirs,
            [
                ("app-1", "0", "/a"),
                ("app-1", "1", "/e"),
                ("app-10", "0", "/c"),
                ("app-2", "0", "/d")
            ]
        );
        assert_eq!(all[0].2, info("/a"));
        assert_eq!(store.remove_app("app-1").unwrap(), 2);
        assert_eq!(store.remove_app("app-1").unwrap(), 0);
        let left: Vec<_> = store.load().unwrap().into_iter().map(|r| r.0).collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&"app-10".to_owned()) && left.contains(&"app-2".to_owned()));
    }
}
