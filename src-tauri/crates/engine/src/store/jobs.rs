//! The `jobs` table: the persisted side of the job runner (`crate::jobs`).

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, now_ms};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Was queued or running when the app stopped (crash, kill, power loss).
    Interrupted,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => JobStatus::Interrupted,
        }
    }
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub kind: String,
    pub resource: String,
    pub project_id: Option<i64>,
    pub payload: serde_json::Value,
    pub status: JobStatus,
    pub progress_done: i64,
    pub progress_total: i64,
    pub result: Option<serde_json::Value>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub retry_of: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str =
    "id, kind, resource, project_id, payload, status, progress_done, progress_total, result,
    error_kind, error_message, retry_of, created_at, started_at, finished_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let payload: String = r.get(4)?;
    let status: String = r.get(5)?;
    let result: Option<String> = r.get(8)?;
    Ok(JobRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        resource: r.get(2)?,
        project_id: r.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        status: JobStatus::parse(&status),
        progress_done: r.get(6)?,
        progress_total: r.get(7)?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
        error_kind: r.get(9)?,
        error_message: r.get(10)?,
        retry_of: r.get(11)?,
        created_at: r.get(12)?,
        started_at: r.get(13)?,
        finished_at: r.get(14)?,
    })
}

impl Store {
    pub(crate) fn insert_job(
        &self,
        kind: &str,
        resource: &str,
        project_id: Option<i64>,
        payload: &serde_json::Value,
        retry_of: Option<i64>,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO jobs (kind, resource, project_id, payload, status, retry_of, created_at)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6)",
            params![
                kind,
                resource,
                project_id,
                serde_json::to_string(payload)?,
                retry_of,
                now_ms()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub(crate) fn mark_job_running(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    pub(crate) fn set_job_progress(&self, id: i64, done: u64, total: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET progress_done = ?2, progress_total = ?3 WHERE id = ?1",
            params![id, done as i64, total as i64],
        )?;
        Ok(())
    }

    pub(crate) fn finish_job(
        &self,
        id: i64,
        status: JobStatus,
        result: Option<&serde_json::Value>,
        error: Option<(&str, &str)>,
    ) -> Result<()> {
        let result = result.map(serde_json::to_string).transpose()?;
        self.conn().execute(
            "UPDATE jobs SET status = ?2, result = ?3, error_kind = ?4, error_message = ?5, finished_at = ?6
             WHERE id = ?1",
            params![id, status.as_str(), result, error.map(|e| e.0), error.map(|e| e.1), now_ms()],
        )?;
        Ok(())
    }

    pub fn job(&self, id: i64) -> Result<JobRecord> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?
            .ok_or(Error::NotFound { what: "job", id })
    }

    /// Active jobs first (in queue order), then the most recent finished ones.
    pub fn list_jobs(&self, recent: u32) -> Result<Vec<JobRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM (
                 SELECT * FROM jobs WHERE status IN ('queued', 'running')
                 UNION ALL
                 SELECT * FROM (SELECT * FROM jobs WHERE status NOT IN ('queued', 'running')
                                ORDER BY id DESC LIMIT ?1))
             ORDER BY status NOT IN ('queued', 'running'),
                      CASE WHEN status IN ('queued', 'running') THEN id ELSE -id END"
        ))?;
        let rows = stmt
            .query_map([recent], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// At start-up: jobs the last process left queued or running can never finish now, so they
    /// become `interrupted` (the UI offers to retry them), and generations it left running become
    /// failed with kind `interrupted` (their partial output is kept). Returns how many jobs were
    /// marked.
    pub(crate) fn mark_stale_jobs_interrupted(&self) -> Result<usize> {
        let now = now_ms();
        let mut conn = self.conn();
        super::in_tx(&mut conn, |tx| {
            let n = tx.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?1,
                     error_kind = 'interrupted', error_message = 'Atelier stopped while this job was unfinished'
                 WHERE status IN ('queued', 'running')",
                [now],
            )?;
            tx.execute(
                "UPDATE generations SET status = 'failed', finished_at = ?1,
                     duration_ms = ?1 - coalesce(started_at, ?1), error_kind = 'interrupted',
                     error_message = 'Atelier stopped before this generation finished'
                 WHERE status = 'running'",
                [now],
            )?;
            Ok(n)
        })
    }
}
