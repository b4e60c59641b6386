//! Projects, and their trash: deleting moves a project to the trash; only "delete forever" from
//! the trash removes rows and files.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, in_tx, now_ms};
use crate::error::{Error, Result};

pub const MAX_PROJECT_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set while the project is in the trash.
    pub trashed_at: Option<i64>,
    pub generation_count: i64,
    pub document_count: i64,
}

const COLUMNS: &str = "p.id, p.name, p.description, p.created_at, p.updated_at, p.trashed_at,
    (SELECT count(*) FROM generations g WHERE g.project_id = p.id),
    (SELECT count(*) FROM documents d WHERE d.project_id = p.id)";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        trashed_at: r.get(5)?,
        generation_count: r.get(6)?,
        document_count: r.get(7)?,
    })
}

fn in_trash(name: &str) -> Error {
    Error::Conflict(format!(
        "project “{name}” is in the trash; restore it first"
    ))
}

/// Trims and checks a project name; the message is shown to the user as is.
pub fn validate_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::invalid("a project needs a name"));
    }
    let chars = name.chars().count();
    if chars > MAX_PROJECT_NAME_CHARS {
        return Err(Error::invalid(format!(
            "a project name may be at most {MAX_PROJECT_NAME_CHARS} characters (this one has {chars})"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "a project name cannot contain control characters or line breaks",
        ));
    }
    Ok(name.to_owned())
}

impl Store {
    pub fn create_project(&self, name: &str) -> Result<Project> {
        let name = validate_name(name)?;
        let now = now_ms();
        let id = {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO projects (name, created_at, updated_at) VALUES (?1, ?2, ?2)",
                params![name, now],
            )?;
            conn.last_insert_rowid()
        };
        self.project(id)
    }

    /// Any project, trashed or not.
    pub fn project(&self, id: i64) -> Result<Project> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM projects p WHERE p.id = ?1"),
                [id],
                from_row,
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "project",
                id,
            })
    }

    /// Live projects (not in the trash), most recently changed first.
    pub fn list_projects(&self) -> Result<Vec<Project>> {
        self.query_projects("p.trashed_at IS NULL ORDER BY p.updated_at DESC, p.id DESC")
    }

    /// The trash, most recently deleted first.
    pub fn list_trash(&self) -> Result<Vec<Project>> {
        self.query_projects("p.trashed_at IS NOT NULL ORDER BY p.trashed_at DESC, p.id DESC")
    }

    fn query_projects(&self, where_order: &str) -> Result<Vec<Project>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM projects p WHERE {where_order}"
        ))?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn rename_project(&self, id: i64, name: &str) -> Result<Project> {
        let name = validate_name(name)?;
        let n = self.conn().execute(
            "UPDATE projects SET name = ?2, updated_at = ?3 WHERE id = ?1 AND trashed_at IS NULL",
            params![id, name, now_ms()],
        )?;
        if n == 0 {
            return Err(self.missing_or_trashed(id));
        }
        self.project(id)
    }

    /// Moves a project to the trash. Its documents and history stay, hidden, until it is
    /// restored or deleted forever.
    pub fn trash_project(&self, id: i64) -> Result<Project> {
        let n = self.conn().execute(
            "UPDATE projects SET trashed_at = ?2 WHERE id = ?1 AND trashed_at IS NULL",
            params![id, now_ms()],
        )?;
        if n == 0 {
            return Err(self.missing_or_trashed(id));
        }
        self.project(id)
    }

    pub fn restore_project(&self, id: i64) -> Result<Project> {
        let n = self.conn().execute(
            "UPDATE projects SET trashed_at = NULL, updated_at = ?2 WHERE id = ?1 AND trashed_at IS NOT NULL",
            params![id, now_ms()],
        )?;
        if n == 0 {
            self.project(id)?; // NotFound if it does not exist at all
            return Err(Error::Conflict(format!("project {id} is not in the trash")));
        }
        self.project(id)
    }

    /// Deletes a trashed project forever: its rows go, and the relative paths of its asset
    /// files are returned so the caller can remove them after the transaction committed.
    /// A project that is not in the trash is refused: deletion always goes through the trash.
    pub fn purge_project(&self, id: i64) -> Result<Vec<String>> {
        let mut conn = self.conn();
        in_tx(&mut conn, |tx| {
            let trashed: Option<Option<i64>> = tx
                .query_row("SELECT trashed_at FROM projects WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            match trashed {
                None => {
                    return Err(Error::NotFound {
                        what: "project",
                        id,
                    });
                }
                Some(None) => {
                    return Err(Error::Conflict(format!(
                        "project {id} is not in the trash; move it to the trash first"
                    )));
                }
                Some(Some(_)) => {}
            }
            let mut stmt = tx.prepare("SELECT path FROM assets WHERE project_id = ?1")?;
            let paths = stmt
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            tx.execute("DELETE FROM projects WHERE id = ?1", [id])?;
            Ok(paths)
        })
    }

    /// One entry of a project's settings (a JSON object per project), `None` when unset.
    pub fn project_setting(&self, id: i64, key: &str) -> Result<Option<serde_json::Value>> {
        let raw: Option<String> = self
            .conn()
            .query_row("SELECT settings FROM projects WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let raw = raw.ok_or(Error::NotFound {
            what: "project",
            id,
        })?;
        let obj: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
        Ok(obj.get(key).cloned().filter(|v| !v.is_null()))
    }

    /// Sets one entry of a live project's settings (the rest are kept).
    pub fn set_project_setting(&self, id: i64, key: &str, value: &serde_json::Value) -> Result<()> {
        self.ensure_live_project(id)?;
        let mut conn = self.conn();
        in_tx(&mut conn, |tx| {
            let raw: String =
                tx.query_row("SELECT settings FROM projects WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            let mut obj = match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            obj.insert(key.to_owned(), value.clone());
            tx.execute(
                "UPDATE projects SET settings = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, serde_json::Value::Object(obj).to_string(), now_ms()],
            )?;
            Ok(())
        })
    }

    /// `Ok(())` if the project exists and is not trashed; used before writing into it.
    pub fn ensure_live_project(&self, id: i64) -> Result<()> {
        // Called before every write into a project: a primary-key read, not `project()`, which
        // also counts the project's rows.
        let row: Option<(String, Option<i64>)> = self
            .conn()
            .query_row(
                "SELECT name, trashed_at FROM projects WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Err(Error::NotFound {
                what: "project",
                id,
            }),
            Some((name, Some(_))) => Err(in_trash(&name)),
            Some((_, None)) => Ok(()),
        }
    }

    fn missing_or_trashed(&self, id: i64) -> Error {
        match self.project(id) {
            Ok(p) => in_trash(&p.name),
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  新品上市  ").unwrap(), "新品上市");
        assert_eq!(validate_name("   ").unwrap_err().kind(), "invalid_input");
        assert!(validate_name(&"字".repeat(100)).is_ok());
        let err = validate_name(&"字".repeat(500)).unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
        assert_eq!(validate_name("a\nb").unwrap_err().kind(), "invalid_input");
    }
}
