//! Where an executor keeps a block's file: Spark's `ExecutorDiskUtils.getFilePath`.

use std::path::PathBuf;

/// Java's `String.hashCode()`: `h = 31 * h + c` over the string's UTF-16 code units, with
/// wrapping `int` arithmetic.
///
/// ```
/// assert_eq!(rpc_proto::shuffle::java_string_hash("shuffle_0_0_0.data"), 581811660);
/// ```
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Spark's `JavaUtils.nonNegativeHash`: the absolute value of [`java_string_hash`], with
/// `i32::MIN` mapped to 0.
pub fn non_negative_hash(s: &str) -> i32 {
    match java_string_hash(s) {
        i32::MIN => 0,
        h => h.abs(),
    }
}

/// The path of file `file_name` among an executor's `local_dirs` with `sub_dirs_per_local_dir`
/// sub-directories each: `<dir>/<sub-dir as two hex digits>/<file_name>`, where the hash of
/// the name picks the dir and sub-dir as Spark's `ExecutorDiskUtils.getFilePath` does (so
/// the `.data` and `.index` files of one map output usually live in different sub-dirs).
///
/// `None` when there are no dirs or no sub-dirs (a registration Spark would not send). The
/// name is not checked: a server joining names from the wire must validate them first.
///
/// ```
/// use std::path::Path;
/// use rpc_proto::shuffle::executor_file_path;
///
/// let dirs = ["/d0/blockmgr-a", "/d1/blockmgr-b"];
/// assert_eq!(
///     executor_file_path(&dirs, 64, "shuffle_3_17_0.index").unwrap(),
///     Path::new("/d1/blockmgr-b/06/shuffle_3_17_0.index"),
/// );
/// ```
pub fn executor_file_path<S: AsRef<str>>(
    local_dirs: &[S],
    sub_dirs_per_local_dir: i32,
    file_name: &str,
) -> Option<PathBuf> {
    let dirs = i32::try_from(local_dirs.len()).ok().filter(|&n| n > 0)?;
    if sub_dirs_per_local_dir <= 0 {
        return None;
    }
    let hash = non_negative_hash(file_name);
    let dir = local_dirs[(hash % dirs) as usize].as_ref();
    let sub_dir = (hash / dirs) % sub_dirs_per_local_dir;
    // Spark joins strings (`dir + "/" + subDir + "/" + fileName`) and normalises them with
    // Java's `new File(path).getPath()`, which on Unix collapses repeated separators and
    // drops a trailing one. Joining strings (not `PathBuf::join`) keeps an absolute
    // `file_name` under the dir, as in Spark.
    let joined = format!("{dir}/{sub_dir:02x}/{file_name}");
    let mut path = String::with_capacity(joined.len());
    for c in joined.chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    if path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    Some(PathBuf::from(path))
}
