//! Documents (a piece of copy, a live script) and their versions. Every save and every
//! generation that lands in a document appends a version; nothing is overwritten, and
//! restoring an old version appends a copy of it.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{FTS_MIN_CHARS, Store, fts_phrase, in_tx, like_pattern, now_ms, search_terms};
use crate::error::{Error, Result};

/// Longest document body accepted, in characters (a long script is ~20k).
pub const MAX_BODY_CHARS: usize = 1_000_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    Copy,
    Script,
}

impl DocumentKind {
    fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Copy => "copy",
            DocumentKind::Script => "script",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionSource {
    Save,
    Generation,
    Restore,
}

impl VersionSource {
    fn as_str(self) -> &'static str {
        match self {
            VersionSource::Save => "save",
            VersionSource::Generation => "generation",
            VersionSource::Restore => "restore",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "generation" => VersionSource::Generation,
            "restore" => VersionSource::Restore,
            _ => VersionSource::Save,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub id: i64,
    pub project_id: i64,
    pub kind: DocumentKind,
    pub title: String,
    pub template_id: Option<String>,
    pub starred: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version_count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocumentVersion {
    pub id: i64,
    pub document_id: i64,
    pub number: i64,
    pub body: String,
    pub source: VersionSource,
    pub generation_id: Option<i64>,
    pub note: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub body: &'a str,
    pub source: VersionSource,
    pub generation_id: Option<i64>,
    pub note: &'a str,
}

const DOC_COLUMNS: &str =
    "d.id, d.project_id, d.kind, d.title, d.template_id, d.starred, d.created_at,
    d.updated_at, (SELECT count(*) FROM document_versions v WHERE v.document_id = d.id)";

fn doc_from_row(r: &Row<'_>) -> rusqlite::Result<Document> {
    let kind: String = r.get(2)?;
    Ok(Document {
        id: r.get(0)?,
        project_id: r.get(1)?,
        kind: if kind == "script" {
            DocumentKind::Script
        } else {
            DocumentKind::Copy
        },
        title: r.get(3)?,
        template_id: r.get(4)?,
        starred: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        version_count: r.get(8)?,
    })
}

fn version_from_row(r: &Row<'_>) -> rusqlite::Result<DocumentVersion> {
    let source: String = r.get(4)?;
    Ok(DocumentVersion {
        id: r.get(0)?,
        document_id: r.get(1)?,
        number: r.get(2)?,
        body: r.get(3)?,
        source: VersionSource::parse(&source),
        generation_id: r.get(5)?,
        note: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const VERSION_COLUMNS: &str =
    "id, document_id, number, body, source, generation_id, note, created_at";

impl Store {
    pub fn create_document(
        &self,
        project_id: i64,
        kind: DocumentKind,
        title: &str,
        template_id: Option<&str>,
    ) -> Result<Document> {
        self.ensure_live_project(project_id)?;
        let title = title.trim();
        if title.chars().count() > 200 {
            return Err(Error::invalid(
                "a document title may be at most 200 characters",
            ));
        }
        let now = now_ms();
        let id = {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO documents (project_id, kind, title, template_id, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![project_id, kind.as_str(), title, template_id, now],
            )?;
            conn.last_insert_rowid()
        };
        self.document(id)
    }

    pub fn document(&self, id: i64) -> Result<Document> {
        self.conn()
            .query_row(
                &format!("SELECT {DOC_COLUMNS} FROM documents d WHERE d.id = ?1"),
                [id],
                doc_from_row,
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "document",
                id,
            })
    }

    /// A project's documents of one kind, starred first, then most recently changed.
    pub fn list_documents(&self, project_id: i64, kind: DocumentKind) -> Result<Vec<Document>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DOC_COLUMNS} FROM documents d WHERE d.project_id = ?1 AND d.kind = ?2
             ORDER BY d.starred DESC, d.updated_at DESC, d.id DESC"
        ))?;
        let rows = stmt
            .query_map(params![project_id, kind.as_str()], doc_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Stars or unstars a document (starred ones list first).
    pub fn set_document_starred(&self, id: i64, starred: bool) -> Result<Document> {
        let n = self.conn().execute(
            "UPDATE documents SET starred = ?2 WHERE id = ?1",
            params![id, starred],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "document",
                id,
            });
        }
        self.document(id)
    }

    /// Renames a document (the title is what lists and exports show).
    pub fn rename_document(&self, id: i64, title: &str) -> Result<Document> {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(Error::invalid(
                "a document title must have 1 to 200 characters",
            ));
        }
        let n = self.conn().execute(
            "UPDATE documents SET title = ?2 WHERE id = ?1",
            params![id, title],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "document",
                id,
            });
        }
        self.document(id)
    }

    /// Appends a version (numbered 1, 2, ...) and returns it.
    pub fn add_version(&self, document_id: i64, v: &NewVersion<'_>) -> Result<DocumentVersion> {
        let chars = v.body.chars().count();
        if chars > MAX_BODY_CHARS {
            return Err(Error::invalid(format!(
                "a document may be at most {MAX_BODY_CHARS} characters (this one has {chars})"
            )));
        }
        let now = now_ms();
        let mut conn = self.conn();
        let id = in_tx(&mut conn, |tx| {
            let number: Option<i64> = tx
                .query_row(
                    "SELECT (SELECT coalesce(max(number), 0) + 1 FROM document_versions WHERE document_id = d.id)
                     FROM documents d WHERE d.id = ?1",
                    [document_id],
                    |r| r.get(0),
                )
                .optional()?;
            let number = number.ok_or(Error::NotFound {
                what: "document",
                id: document_id,
            })?;
            tx.execute(
                "INSERT INTO document_versions (document_id, number, body, source, generation_id, note, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![document_id, number, v.body, v.source.as_str(), v.generation_id, v.note, now],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "UPDATE documents SET updated_at = ?2 WHERE id = ?1",
                params![document_id, now],
            )?;
            Ok(id)
        })?;
        drop(conn);
        self.version(id)
    }

    pub fn version(&self, id: i64) -> Result<DocumentVersion> {
        self.conn()
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM document_versions WHERE id = ?1"),
                [id],
                version_from_row,
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "document version",
                id,
            })
    }

    /// All versions, newest first.
    pub fn list_versions(&self, document_id: i64) -> Result<Vec<DocumentVersion>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {VERSION_COLUMNS} FROM document_versions WHERE document_id = ?1 ORDER BY number DESC"
        ))?;
        let rows = stmt
            .query_map([document_id], version_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Makes an old version current again by appending a copy of it.
    pub fn restore_version(&self, version_id: i64) -> Result<DocumentVersion> {
        let old = self.version(version_id)?;
        let note = format!("restored from version {}", old.number);
        self.add_version(
            old.document_id,
            &NewVersion {
                body: &old.body,
                source: VersionSource::Restore,
                generation_id: None,
                note: &note,
            },
        )
    }

    /// Documents whose title or latest text contains every word of `query`.
    pub fn search_documents(&self, query: &str, project_id: Option<i64>) -> Result<Vec<Document>> {
        let terms = search_terms(query)?;
        if terms.is_empty() {
            return Err(Error::invalid("type something to search for"));
        }
        let mut conds = vec!["p.trashed_at IS NULL".to_owned()];
        let mut args: Vec<Box<dyn rusqlite::types::ToSql>> = Vec::new();
        let long: Vec<_> = terms
            .iter()
            .filter(|t| t.chars().count() >= FTS_MIN_CHARS)
            .collect();
        if !long.is_empty() {
            conds.push(
                "d.id IN (SELECT rowid FROM documents_fts WHERE documents_fts MATCH ?)".into(),
            );
            args.push(Box::new(
                long.iter()
                    .map(|t| fts_phrase(t))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            ));
        }
        for t in terms.iter().filter(|t| t.chars().count() < FTS_MIN_CHARS) {
            conds.push(
                "d.id IN (SELECT rowid FROM documents_fts WHERE title LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\')"
                    .into(),
            );
            args.push(Box::new(like_pattern(t)));
            args.push(Box::new(like_pattern(t)));
        }
        if let Some(pid) = project_id {
            conds.push("d.project_id = ?".into());
            args.push(Box::new(pid));
        }
        let sql = format!(
            "SELECT {DOC_COLUMNS} FROM documents d JOIN projects p ON p.id = d.project_id
             WHERE {} ORDER BY d.updated_at DESC LIMIT 200",
            conds.join(" AND ")
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let refs: Vec<&dyn rusqlite::types::ToSql> = args.iter().map(|a| a.as_ref()).collect();
        let rows = stmt
            .query_map(refs.as_slice(), doc_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
