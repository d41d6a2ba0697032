//! Giving disk space back: sled's log keeps the size of its high-water mark however little
//! it holds, so a store whose files are much larger than what it holds is rewritten into a
//! fresh directory when it is opened, and the directories swapped.
//!
//! The rewrite never leaves the store without a whole copy: the new directory is written and
//! synced beside the old one (`DIR.compact`) and marked complete; only then is the old one
//! moved aside (`DIR.old`) and the new one moved into place. [`recover`] finishes or undoes a
//! rewrite that a crash interrupted, before the store is opened.

use super::StoreError;
use sled::Db;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bytes of slack a store's files may have over twice what it holds before it is rewritten.
const SLACK: u64 = 64 << 20;

/// The file marking a rewritten directory as complete.
const COMPLETE: &str = "COMPACTED";

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// `DIR.suffix` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("sync", dir, &e))
}

/// The directory holding `dir`, to sync after a rename.
fn parent(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Syncs every file under `dir` (sled's large values are files in `blobs/`), then each
/// directory.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("list", dir, &e))? {
        let path = entry.map_err(|e| io_error("list", dir, &e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error("sync", &path, &e))?;
        }
    }
    sync_dir(dir)
}

/// Whether files of `on_disk` bytes holding about `held` bytes are worth rewriting.
pub(super) fn worth_it(on_disk: u64, held: u64) -> bool {
    on_disk > held.saturating_mul(2).saturating_add(SLACK)
}

/// Finishes or undoes a rewrite of `dir` that was interrupted.
pub(super) fn recover(dir: &Path) -> Result<(), StoreError> {
    if dir.file_name().is_none() {
        return Ok(());
    }
    let (new, old) = (sibling(dir, ".compact"), sibling(dir, ".old"));
    let holds_store = dir.join("db").exists();
    if new.join(COMPLETE).exists() && !holds_store {
        // Interrupted between the two renames (the broker may have made `dir` again, empty).
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| io_error("remove", dir, &e))?;
        }
        std::fs::rename(&new, dir).map_err(|e| io_error("move into place", &new, &e))?;
        sync_dir(&parent(dir))?;
    } else if new.exists() {
        // Incomplete, or complete but not yet swapped: the original is whole.
        std::fs::remove_dir_all(&new).map_err(|e| io_error("remove", &new, &e))?;
    }
    if !dir.join("db").exists() && old.join("db").exists() {
        std::fs::rename(&old, dir).map_err(|e| io_error("move back", &old, &e))?;
        sync_dir(&parent(dir))?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io_error("remove", &old, &e))?;
    }
    let marker = dir.join(COMPLETE);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| io_error("remove", &marker, &e))?;
    }
    Ok(())
}

/// Rewrites the store open as `db` in `dir` into a fresh directory (opened with `open`) and
/// swaps the two; `db` is closed. Only the keys for which `keep` says so are copied.
pub(super) fn rewrite(
    dir: &Path,
    db: Db,
    open: impl Fn(&Path) -> sled::Result<Db>,
    keep: impl Fn(&Db, &[u8]) -> sled::Result<bool>,
) -> Result<(), StoreError> {
    let sled_error = |e: sled::Error| StoreError::Io(e.to_string());
    let (new, old) = (sibling(dir, ".compact"), sibling(dir, ".old"));
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(|e| io_error("remove", &new, &e))?;
    }
    {
        let fresh = open(&new).map_err(sled_error)?;
        for item in db.iter() {
            let (key, value) = item.map_err(sled_error)?;
            if keep(&db, &key).map_err(sled_error)? {
                fresh.insert(key, value).map_err(sled_error)?;
            }
        }
        fresh.flush().map_err(sled_error)?;
        sync_tree(&new)?;
    }
    let marker = new.join(COMPLETE);
    File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("write", &marker, &e))?;
    sync_dir(&new)?;
    drop(db);
    std::fs::rename(dir, &old).map_err(|e| io_error("move aside", dir, &e))?;
    std::fs::rename(&new, dir).map_err(|e| io_error("move into place", &new, &e))?;
    sync_dir(&parent(dir))?;
    std::fs::remove_file(dir.join(COMPLETE)).map_err(|e| io_error("remove", &marker, &e))?;
    std::fs::remove_dir_all(&old).map_err(|e| io_error("remove", &old, &e))?;
    Ok(())
}
