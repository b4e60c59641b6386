//! The data folder (`$ATELIER_HOME`, else the XDG data dir) and the per-folder instance lock.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where one Atelier installation keeps its database, models and files.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `explicit` (a `--home` flag) wins, then `$ATELIER_HOME`, then `~/.local/share/atelier`.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home> {
        let root = explicit
            .or_else(|| {
                std::env::var_os("ATELIER_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| dirs::data_dir().map(|d| d.join("atelier")))
            .ok_or_else(|| Error::invalid("cannot find a data folder: set ATELIER_HOME or HOME"))?;
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("atelier.db")
    }
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }
    /// Image models: one diffusers-layout folder each.
    pub fn image_models_dir(&self) -> PathBuf {
        self.models_dir().join("image")
    }
    pub fn assets_dir(&self) -> PathBuf {
        self.root.join("assets")
    }
    pub fn exports_dir(&self) -> PathBuf {
        self.root.join("exports")
    }
    /// Model files repacked for fast CPU kernels (see `text::local`); safe to delete.
    pub fn repacked_models_dir(&self) -> PathBuf {
        self.root.join("cache").join("repacked")
    }
    /// Copy templates the user made or edited (same id replaces a shipped one).
    pub fn templates_dir(&self) -> PathBuf {
        self.root.join("templates")
    }
    /// Rule packs that add to or replace the shipped ones (same id replaces).
    pub fn compliance_dir(&self) -> PathBuf {
        self.root.join("compliance")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates the folder tree and proves it is writable, so a read-only or missing volume is
    /// reported up front with the folder's name rather than as an SQLite error later.
    pub fn ensure(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.models_dir(),
            self.assets_dir(),
            self.exports_dir(),
            self.logs_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(|e| self.unwritable(&dir, e))?;
        }
        let probe = self.root.join(".write-probe");
        let written =
            File::create(&probe).and_then(|mut f| f.write_all(b"ok").and_then(|_| f.sync_all()));
        let _ = fs::remove_file(&probe);
        written.map_err(|e| self.unwritable(&self.root, e))
    }

    fn unwritable(&self, dir: &Path, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return Error::DiskFull(format!("cannot write in {}", dir.display()));
        }
        Error::ReadOnly {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        }
    }

    /// Takes the instance lock of this data folder. A second app on the same folder gets
    /// [`Error::AlreadyRunning`]; the lock is released when the returned guard drops (or the
    /// process dies, since it is an OS file lock).
    pub fn lock(&self) -> Result<InstanceLock> {
        let path = self.root.join("atelier.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| self.unwritable(&self.root, e))?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = write!(file, "{}", std::process::id());
                let _ = file.sync_all();
                Ok(InstanceLock { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.seek(SeekFrom::Start(0));
                let _ = file.read_to_string(&mut pid);
                Err(Error::AlreadyRunning {
                    path: self.root.clone(),
                    pid: pid.trim().parse().ok(),
                })
            }
            Err(fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}", path.display()), e))
            }
        }
    }
}

/// Held for the life of the app; see [`Home::lock`].
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}
