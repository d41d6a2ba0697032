//! What sled's flush leaves out, for [`super::SledStore`]: making its files durable against a
//! power cut, and noticing that the data directory is no longer the one opened.
//!
//! sled 0.34.7 flushes its log with `sync_file_range`, which writes the file's pages out but
//! neither the file's size nor new directory entries, and does not flush the device's write
//! cache; it writes large values as files of their own (`blobs/`) without syncing them at all.
//! After sled's flush, [`DataDir::sync`] syncs the log file (`fdatasync`), every blob file
//! not synced before, and the directories whose entries changed.
//!
//! Each sync first checks that the directory and the log file at its paths are still the ones
//! opened: a data directory deleted, replaced or unmounted under a running broker otherwise
//! takes writes into files nobody will read again.

use super::StoreError;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// How far a flush makes the store's writes durable. Written `os` or `device` in settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Written to the operating system: confirmed messages survive the broker's crash, but
    /// not a power cut or a kernel crash.
    Os,
    /// Synced to the device (`fdatasync`/`fsync` of the files and directories written):
    /// confirmed messages survive a power cut. The default.
    #[default]
    Device,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "device" => Ok(SyncMode::Device),
            "os" => Ok(SyncMode::Os),
            _ => Err(format!("{s:?} is not a sync mode (device or os)")),
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Os => "os",
            SyncMode::Device => "device",
        })
    }
}

/// The identity of a file: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

impl FileId {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId(meta.dev(), meta.ino())
    }

    /// Elsewhere only a missing directory or log file is noticed.
    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> Self {
        FileId(0, 0)
    }
}

/// The data directory of an open sled store.
#[derive(Debug)]
pub(super) struct DataDir {
    path: PathBuf,
    mode: SyncMode,
    /// Free bytes the store keeps in reserve on its file system.
    min_free: u64,
    dir: FileId,
    log: File,
    log_id: FileId,
    /// Names in the directory and in `blobs/` when they were last synced.
    entries: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// Names of the entries of `dir` (none when it does not exist).
fn names(dir: &Path) -> Result<BTreeSet<String>, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|e| io_error("list", dir, &e))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_error("list", dir, &e)),
    }
}

fn sync_path(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("sync", path, &e))
}

impl DataDir {
    /// Takes note of the store sled has opened in `path`, and syncs it whole once.
    pub(super) fn open(path: &Path, mode: SyncMode, min_free: u64) -> Result<Self, StoreError> {
        let dir = std::fs::metadata(path).map_err(|e| io_error("read", path, &e))?;
        let log_path = path.join("db");
        let log = File::open(&log_path).map_err(|e| io_error("open", &log_path, &e))?;
        let log_id = FileId::of(
            &log.metadata()
                .map_err(|e| io_error("read", &log_path, &e))?,
        );
        let mut data_dir = Self {
            path: path.to_path_buf(),
            mode,
            min_free,
            dir: FileId::of(&dir),
            log,
            log_id,
            entries: BTreeSet::new(),
            blobs: BTreeSet::new(),
        };
        if mode == SyncMode::Device {
            for name in names(path)? {
                let file = path.join(&name);
                if file.is_file() {
                    sync_path(&file)?;
                }
            }
        }
        // Not the space check: a broker on a nearly full disk starts, and delivers.
        data_dir.check_identity()?;
        data_dir.sync_files()?;
        Ok(data_dir)
    }

    /// Fails unless the directory and the log file at their paths are the ones opened and
    /// the file system keeps its reserve of free space.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        self.check_identity()?;
        self.check_space()
    }

    /// Fails unless the directory and the log file at their paths are the ones opened.
    fn check_identity(&self) -> Result<(), StoreError> {
        let gone = |what: &str| {
            StoreError::Io(format!(
                "the data directory {} is no longer the one the store opened ({what}): \
                 it was deleted, replaced or unmounted; what the store takes now would be lost",
                self.path.display()
            ))
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) if FileId::of(&meta) == self.dir => {}
            Ok(_) => return Err(gone("another directory is at its path")),
            Err(e) => return Err(gone(&e.to_string())),
        }
        match std::fs::metadata(self.path.join("db")) {
            Ok(meta) if FileId::of(&meta) == self.log_id => Ok(()),
            Ok(_) => Err(gone("another log file is at its path")),
            Err(e) => Err(gone(&format!("its log file: {e}"))),
        }
    }

    /// Fails when the file system has less free space than the store keeps in reserve: the
    /// store stops taking messages before the disk is full, so that acknowledgements can
    /// still be written.
    fn check_space(&self) -> Result<(), StoreError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free =
            fs2::available_space(&self.path).map_err(|e| io_error("measure", &self.path, &e))?;
        if free < self.min_free {
            return Err(StoreError::Io(format!(
                "the file system of {} has {} MiB free, less than the {} MiB the store keeps in reserve",
                self.path.display(),
                free >> 20,
                self.min_free >> 20
            )));
        }
        Ok(())
    }

    /// Makes what sled has flushed durable as the mode asks, after checking the directory.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        self.check()?;
        self.sync_files()
    }

    /// Syncs the log, new blob files and changed directories, as the mode asks.
    fn sync_files(&mut self) -> Result<(), StoreError> {
        if self.mode == SyncMode::Os {
            return Ok(());
        }
        self.log
            .sync_data()
            .map_err(|e| io_error("sync", &self.path.join("db"), &e))?;
        let blob_dir = self.path.join("blobs");
        let blobs = names(&blob_dir)?;
        if blobs != self.blobs {
            for name in blobs.difference(&self.blobs) {
                match File::open(blob_dir.join(name)) {
                    Ok(f) => f.sync_all().map_err(|e| io_error("sync", &blob_dir, &e))?,
                    // Collected by sled since it was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("open", &blob_dir.join(name), &e)),
                }
            }
            if blob_dir.exists() {
                sync_path(&blob_dir)?;
            }
            self.blobs = blobs;
        }
        let entries = names(&self.path)?;
        if entries != self.entries {
            sync_path(&self.path)?;
            self.entries = entries;
        }
        Ok(())
    }
}
