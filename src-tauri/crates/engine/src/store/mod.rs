//! SQLite persistence: one file, WAL, foreign keys, versioned migrations, full-text search.
//!
//! One connection behind a mutex: Atelier's writes are small and the UI is one user, so a
//! single writer keeps SQLite's locking out of the picture. Files (images, exports) live on
//! disk, written atomically; rows point to them.

mod assets;
pub mod bigrams;
mod documents;
mod generations;
mod images;
mod jobs;
pub mod migrations;
mod products;
mod projects;
mod settings;

pub use assets::Asset;
pub use documents::{Document, DocumentKind, DocumentVersion, NewVersion, VersionSource};
pub use generations::{
    GenerationKind, GenerationOutcome, GenerationRecord, GenerationStatus, GenerationSummary,
    HistoryPage, HistoryQuery, NewGeneration,
};
pub use images::{
    Board, FinishedImage, GalleryImage, GalleryPage, GalleryQuery, MAX_TAGS, TagCount,
};
pub use jobs::{JobRecord, JobStatus};
pub use products::{ProductRecord, ProductSummary};
pub use projects::{MAX_PROJECT_NAME_CHARS, Project};
pub use settings::{DevicePreference, Settings, SettingsPatch, Theme};

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Set when opening migrated an older file: where the pre-migration copy was written.
    backup: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// Before migrating a file that already has a schema, a consistent copy is written next to
    /// it (`atelier.db.bak-v<N>-<time>`), so a failed or unwanted upgrade loses nothing.
    pub fn open(path: &Path) -> Result<Store> {
        let with_path = |e: Error| match e {
            Error::CorruptDatabase { detail, .. } => Error::CorruptDatabase {
                path: path.to_path_buf(),
                detail,
            },
            Error::ReadOnly { detail, .. } => Error::ReadOnly {
                path: path.to_path_buf(),
                detail,
            },
            other => other,
        };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| with_path(e.into()))?;
        // The first statement that touches the file is where a damaged or foreign file shows.
        configure(&conn).map_err(with_path)?;

        let migrations = migrations::migrations();
        let found: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(|e| with_path(e.into()))?
            .try_into()
            .unwrap_or(usize::MAX);
        if found > migrations::LATEST_VERSION {
            return Err(Error::DatabaseTooNew {
                path: path.to_path_buf(),
                found,
                supported: migrations::LATEST_VERSION,
            });
        }
        let mut backup = None;
        if found > 0 && found < migrations::LATEST_VERSION {
            let target = backup_path(path, found);
            conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])
                .map_err(|e| with_path(e.into()))?;
            tracing::info!(from = found, to = migrations::LATEST_VERSION, backup = %target.display(), "migrating database");
            backup = Some(target);
        }
        migrations.to_latest(&mut conn).map_err(|e| match e {
            rusqlite_migration::Error::RusqliteError { err, .. } => with_path(err.into()),
            other => Error::Database(format!("migration failed: {other}")),
        })?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            backup,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pre-migration copy written by this open, if any.
    pub fn migration_backup(&self) -> Option<&Path> {
        self.backup.as_deref()
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// The connection. A panic while it was held leaves SQLite consistent (transactions roll
    /// back on drop), so a poisoned lock is taken over rather than bricking the store.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `PRAGMA quick_check`: `Ok(())` or the first problems SQLite reports.
    pub fn quick_check(&self) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(Error::CorruptDatabase {
                path: self.path.clone(),
                detail: rows.join("; "),
            })
        }
    }

    /// Merges FTS segments, refreshes planner statistics and truncates the WAL.
    pub fn optimize(&self) -> Result<()> {
        let conn = self.conn();
        conn.execute_batch(
            "INSERT INTO generations_fts(generations_fts) VALUES ('optimize');
             INSERT INTO documents_fts(documents_fts) VALUES ('optimize');
             INSERT INTO generations_bigrams(generations_bigrams) VALUES ('optimize');
             PRAGMA optimize;",
        )?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Test and benchmark hook: caps the file size (in pages) so "disk full" can be exercised
    /// for real without filling a disk.
    pub fn set_max_page_count(&self, pages: u64) -> Result<()> {
        self.conn()
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    bigrams::register(conn)?;
    // journal_mode returns a row; reading it is also the first real read of the file header.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode");
    }
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    if fk != 1 {
        return Err(Error::Database(
            "SQLite build without foreign key support".into(),
        ));
    }
    Ok(())
}

fn backup_path(db: &Path, version: usize) -> PathBuf {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "atelier.db".into());
    db.with_file_name(format!("{name}.bak-v{version}-{}", file_stamp()))
}

/// `20261122-063100`, for file names.
pub fn file_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[year][month][day]-[hour][minute][second]"
    ))
    .unwrap_or_else(|_| now_ms().to_string())
}

/// Milliseconds since the Unix epoch; every timestamp column uses this.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `f` in a transaction that commits only if `f` succeeds.
pub(crate) fn in_tx<T>(
    conn: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let tx = conn.transaction()?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Escapes `%`, `_` and `\` for `LIKE ... ESCAPE '\'`.
pub(crate) fn like_pattern(term: &str) -> String {
    let mut s = String::with_capacity(term.len() + 2);
    s.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

/// An FTS5 phrase that matches `term` literally (double quotes doubled).
pub(crate) fn fts_phrase(term: &str) -> String {
    format!("\"{}\"", term.replace('"', "\"\""))
}

/// Splits a search box's text into terms: whitespace separates, empties dropped, at most 8.
pub(crate) fn search_terms(query: &str) -> Result<Vec<String>> {
    let terms: Vec<String> = query.split_whitespace().map(str::to_owned).collect();
    if terms.len() > 8 {
        return Err(Error::invalid("a search may have at most 8 words"));
    }
    if query.chars().count() > 200 {
        return Err(Error::invalid("a search may be at most 200 characters"));
    }
    Ok(terms)
}

/// The trigram tokenizer can only match terms of 3 or more characters.
pub(crate) const FTS_MIN_CHARS: usize = 3;

/// Reads one setting straight from a database file, read-only, without migrating or locking:
/// for decisions made before the app has opened its engine (the thread count). `None` when
/// the file, table or key is missing or unreadable.
pub fn peek_setting(db: &std::path::Path, key: &str) -> Option<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
        r.get::<_, String>(0)
    })
    .ok()
}
