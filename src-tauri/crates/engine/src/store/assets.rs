//! Files on disk (images, exports) with their checksum and, for images, dimensions. Files are
//! content-addressed (`assets/<sha256>.<ext>`), written atomically before the row that points to
//! them, so a crash leaves at worst an unreferenced file, never a row without its file.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Store, now_ms};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Asset {
    pub id: i64,
    pub project_id: Option<i64>,
    /// Relative to the data folder.
    pub path: String,
    pub sha256: String,
    pub mime: String,
    pub size_bytes: i64,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub created_at: i64,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Asset> {
    Ok(Asset {
        id: r.get(0)?,
        project_id: r.get(1)?,
        path: r.get(2)?,
        sha256: r.get(3)?,
        mime: r.get(4)?,
        size_bytes: r.get(5)?,
        width: r.get(6)?,
        height: r.get(7)?,
        created_at: r.get(8)?,
    })
}

const COLUMNS: &str = "id, project_id, path, sha256, mime, size_bytes, width, height, created_at";

fn extension_for(mime: &str) -> Result<&'static str> {
    Ok(match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "text/markdown" => "md",
        "text/plain" => "txt",
        "application/json" => "json",
        "text/csv" => "csv",
        "application/x-subrip" => "srt",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        other => return Err(Error::invalid(format!("unsupported file type {other}"))),
    })
}

impl Store {
    /// Saves `bytes` under `<home>/assets/` and records it. Images are decoded just far enough
    /// to read their size; bytes that claim to be an image but are not are refused.
    pub fn add_asset(
        &self,
        home_root: &Path,
        project_id: Option<i64>,
        mime: &str,
        bytes: &[u8],
    ) -> Result<Asset> {
        let ext = extension_for(mime)?;
        let (width, height) = if mime.starts_with("image/") {
            let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| Error::invalid(format!("unreadable image: {e}")))?;
            let (w, h) = reader
                .into_dimensions()
                .map_err(|e| Error::invalid(format!("unreadable image: {e}")))?;
            (Some(w as i64), Some(h as i64))
        } else {
            (None, None)
        };
        let sha = hex(&Sha256::digest(bytes));
        let rel = format!("assets/{}/{sha}.{ext}", &sha[..2]);
        let abs: PathBuf = home_root.join(&rel);
        if !abs.exists() {
            write_atomic(&abs, bytes)?;
        }
        let conn = self.conn();
        conn.execute(
            "INSERT INTO assets (project_id, path, sha256, mime, size_bytes, width, height, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(path) DO NOTHING",
            params![project_id, rel, sha, mime, bytes.len() as i64, width, height, now_ms()],
        )?;
        let asset = conn.query_row(
            &format!("SELECT {COLUMNS} FROM assets WHERE path = ?1"),
            [&rel],
            from_row,
        )?;
        Ok(asset)
    }

    pub fn asset(&self, id: i64) -> Result<Asset> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM assets WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?
            .ok_or(Error::NotFound { what: "asset", id })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
