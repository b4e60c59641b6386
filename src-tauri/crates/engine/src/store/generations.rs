//! Generations: one row per model run (text, image or script) with every parameter, and the
//! History queries over them (filters, full-text search, keyset pagination).

use rusqlite::types::ToSql;
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{FTS_MIN_CHARS, Store, bigrams, fts_phrase, like_pattern, now_ms, search_terms};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GenerationKind {
    Text,
    Image,
    Script,
}

impl GenerationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationKind::Text => "text",
            GenerationKind::Image => "image",
            GenerationKind::Script => "script",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(GenerationKind::Text),
            "image" => Ok(GenerationKind::Image),
            "script" => Ok(GenerationKind::Script),
            other => Err(Error::invalid(format!(
                "unknown generation kind “{other}” (text, image or script)"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GenerationStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl GenerationStatus {
    fn as_str(self) -> &'static str {
        match self {
            GenerationStatus::Running => "running",
            GenerationStatus::Succeeded => "succeeded",
            GenerationStatus::Failed => "failed",
            GenerationStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "succeeded" => GenerationStatus::Succeeded,
            "failed" => GenerationStatus::Failed,
            "cancelled" => GenerationStatus::Cancelled,
            _ => GenerationStatus::Running,
        }
    }
}

/// What is known when a generation starts.
#[derive(Debug, Clone)]
pub struct NewGeneration {
    pub project_id: i64,
    pub job_id: Option<i64>,
    pub kind: GenerationKind,
    pub model_id: String,
    pub prompt: String,
    /// Every parameter, as given, so the run can be reproduced.
    pub params: serde_json::Value,
    pub seed: Option<i64>,
}

/// What is known when it ends.
#[derive(Debug, Clone, Default)]
pub struct GenerationOutcome {
    pub cancelled: bool,
    pub error: Option<(String, String)>,
    pub output_text: Option<String>,
    pub asset_id: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub first_token_ms: Option<i64>,
    pub tokens_per_s: Option<f64>,
    pub stop_reason: Option<String>,
    /// Other figures of the run (load time, prefill speed, device...).
    pub metrics: Option<serde_json::Value>,
}

/// A History row: enough to list, not the full parameters.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub id: i64,
    pub project_id: i64,
    pub project_name: String,
    pub kind: GenerationKind,
    pub model_id: String,
    pub status: GenerationStatus,
    /// The first 200 characters of the prompt and of the output.
    pub prompt_preview: String,
    pub output_preview: String,
    pub rating: i64,
    pub starred: bool,
    pub created_at: i64,
}

/// The full record, for the detail view and for "use these settings again".
#[derive(Debug, Clone, Serialize)]
pub struct GenerationRecord {
    pub id: i64,
    pub project_id: i64,
    pub project_name: String,
    pub job_id: Option<i64>,
    pub kind: GenerationKind,
    pub model_id: String,
    pub prompt: String,
    pub params: serde_json::Value,
    pub seed: Option<i64>,
    pub status: GenerationStatus,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub output_text: Option<String>,
    pub asset: Option<super::Asset>,
    pub prompt_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub first_token_ms: Option<i64>,
    pub tokens_per_s: Option<f64>,
    pub stop_reason: Option<String>,
    pub metrics: Option<serde_json::Value>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub rating: i64,
    pub starred: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    /// Words to find in prompts and outputs (all must occur); empty = everything.
    pub text: String,
    pub kind: Option<GenerationKind>,
    pub project_id: Option<i64>,
    pub starred_only: bool,
    /// Keyset cursor: return rows with `id < before`. `None` = the newest page.
    pub before: Option<i64>,
    /// Page size, 1..=500; 0 means the default of 50.
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryPage {
    pub items: Vec<GenerationSummary>,
    /// Pass as `before` to get the next (older) page; `None` when this was the last.
    pub next_before: Option<i64>,
}

const PREVIEW_CHARS: i64 = 200;

impl Store {
    /// Records a generation as running and returns its id.
    pub fn begin_generation(&self, g: &NewGeneration) -> Result<i64> {
        if g.model_id.trim().is_empty() {
            return Err(Error::invalid("a generation needs a model id"));
        }
        self.ensure_live_project(g.project_id)?;
        let now = now_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO generations (project_id, job_id, kind, model_id, prompt, params, seed, status,
                                      started_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?8)",
            params![
                g.project_id,
                g.job_id,
                g.kind.as_str(),
                g.model_id,
                g.prompt,
                serde_json::to_string(&g.params)?,
                g.seed,
                now
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Closes a running generation with its result.
    pub fn finish_generation(&self, id: i64, o: &GenerationOutcome) -> Result<()> {
        let status = if o.cancelled {
            GenerationStatus::Cancelled
        } else if o.error.is_some() {
            GenerationStatus::Failed
        } else {
            GenerationStatus::Succeeded
        };
        let now = now_ms();
        let n = self.conn().execute(
            "UPDATE generations SET status = ?2, output_text = ?3, asset_id = ?4, prompt_tokens = ?5,
                 output_tokens = ?6, error_kind = ?7, error_message = ?8, finished_at = ?9,
                 duration_ms = ?9 - coalesce(started_at, ?9), first_token_ms = ?10, tokens_per_s = ?11,
                 stop_reason = ?12, metrics = ?13
             WHERE id = ?1",
            params![
                id,
                status.as_str(),
                o.output_text,
                o.asset_id,
                o.prompt_tokens,
                o.output_tokens,
                o.error.as_ref().map(|e| &e.0),
                o.error.as_ref().map(|e| &e.1),
                now,
                o.first_token_ms,
                o.tokens_per_s,
                o.stop_reason,
                o.metrics.as_ref().map(|m| m.to_string()),
            ],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "generation",
                id,
            });
        }
        Ok(())
    }

    pub fn generation(&self, id: i64) -> Result<GenerationRecord> {
        let rec = self
            .conn()
            .query_row(
                "SELECT g.id, g.project_id, p.name, g.job_id, g.kind, g.model_id, g.prompt, g.params, g.seed,
                        g.status, g.error_kind, g.error_message, g.output_text, g.asset_id, g.prompt_tokens,
                        g.output_tokens, g.started_at, g.finished_at, g.duration_ms, g.rating, g.starred,
                        g.created_at, g.first_token_ms, g.tokens_per_s, g.stop_reason, g.metrics
                 FROM generations g JOIN projects p ON p.id = g.project_id WHERE g.id = ?1",
                [id],
                |r| {
                    let params: String = r.get(7)?;
                    let kind: String = r.get(4)?;
                    let status: String = r.get(9)?;
                    Ok((
                        GenerationRecord {
                            id: r.get(0)?,
                            project_id: r.get(1)?,
                            project_name: r.get(2)?,
                            job_id: r.get(3)?,
                            kind: GenerationKind::parse(&kind).unwrap_or(GenerationKind::Text),
                            model_id: r.get(5)?,
                            prompt: r.get(6)?,
                            // The column is CHECKed json_valid; a hand-edited file still must not panic.
                            params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
                            seed: r.get(8)?,
                            status: GenerationStatus::parse(&status),
                            error_kind: r.get(10)?,
                            error_message: r.get(11)?,
                            output_text: r.get(12)?,
                            asset: None,
                            prompt_tokens: r.get(14)?,
                            output_tokens: r.get(15)?,
                            first_token_ms: r.get(22)?,
                            tokens_per_s: r.get(23)?,
                            stop_reason: r.get(24)?,
                            metrics: r.get::<_, Option<String>>(25)?.and_then(|m| serde_json::from_str(&m).ok()),
                            started_at: r.get(16)?,
                            finished_at: r.get(17)?,
                            duration_ms: r.get(18)?,
                            rating: r.get(19)?,
                            starred: r.get(20)?,
                            created_at: r.get(21)?,
                        },
                        r.get::<_, Option<i64>>(13)?,
                    ))
                },
            )
            .optional()?;
        let (mut rec, asset_id) = rec.ok_or(Error::NotFound {
            what: "generation",
            id,
        })?;
        if let Some(asset_id) = asset_id {
            rec.asset = Some(self.asset(asset_id)?);
        }
        Ok(rec)
    }

    pub fn set_generation_starred(&self, id: i64, starred: bool) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE generations SET starred = ?2 WHERE id = ?1",
            params![id, starred],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "generation",
                id,
            });
        }
        Ok(())
    }

    /// -1 (thumbs down), 0 (none) or 1 (thumbs up).
    pub fn rate_generation(&self, id: i64, rating: i64) -> Result<()> {
        if !(-1..=1).contains(&rating) {
            return Err(Error::invalid("a rating is -1, 0 or 1"));
        }
        let n = self.conn().execute(
            "UPDATE generations SET rating = ?2 WHERE id = ?1",
            params![id, rating],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "generation",
                id,
            });
        }
        Ok(())
    }

    /// One page of History, newest first. Generations of trashed projects are hidden.
    pub fn history(&self, q: &HistoryQuery) -> Result<HistoryPage> {
        let limit = match q.limit {
            0 => 50,
            n @ 1..=500 => n,
            n => {
                return Err(Error::invalid(format!(
                    "page size {n} is over the limit of 500"
                )));
            }
        } as i64;
        let terms = search_terms(&q.text)?;
        let (long, short): (Vec<_>, Vec<_>) = terms
            .iter()
            .partition(|t| t.chars().count() >= FTS_MIN_CHARS);

        // One full-text index drives the query, newest match first (`ORDER BY rowid DESC` walks
        // FTS5's doclists backwards), so a page of a common word stops after `limit` matches
        // instead of collecting every match first: the trigram index when a word has 3+
        // characters, else the bigram index when a word is 1-2 Chinese characters (see
        // bigrams.rs). Every other word is checked with LIKE on the rows the driver yields.
        let driver = if !long.is_empty() {
            Some((
                "generations_fts",
                long.iter()
                    .map(|t| fts_phrase(t))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            ))
        } else if short.iter().any(|t| bigrams::answers(t)) {
            let exprs: Vec<_> = short
                .iter()
                .filter(|t| bigrams::answers(t))
                .map(|t| bigrams::match_expr(t))
                .collect();
            Some(("generations_bigrams", exprs.join(" AND ")))
        } else {
            None
        };
        let like_terms: Vec<&String> = match &driver {
            Some(("generations_bigrams", _)) => short
                .iter()
                .copied()
                .filter(|t| !bigrams::answers(t))
                .collect(),
            _ => short.clone(),
        };
        let (from, id_col) = match &driver {
            Some((table, _)) => (
                format!(
                    "{table} f CROSS JOIN generations g ON g.id = f.rowid JOIN projects p ON p.id = g.project_id"
                ),
                "f.rowid",
            ),
            None => (
                "generations g JOIN projects p ON p.id = g.project_id".to_owned(),
                "g.id",
            ),
        };
        let mut sql = format!(
            "SELECT g.id, g.project_id, p.name, g.kind, g.model_id, g.status,
                    substr(g.prompt, 1, {PREVIEW_CHARS}), substr(coalesce(g.output_text, ''), 1, {PREVIEW_CHARS}),
                    g.rating, g.starred, g.created_at
             FROM {from}"
        );
        let mut args: Vec<Box<dyn ToSql>> = Vec::new();
        let mut conds = vec!["p.trashed_at IS NULL".to_owned()];
        if let Some((table, expr)) = driver {
            conds.push(format!("{table} MATCH ?"));
            args.push(Box::new(expr));
        }
        for t in &like_terms {
            conds.push("(g.prompt LIKE ? ESCAPE '\\' OR g.output_text LIKE ? ESCAPE '\\')".into());
            let pat = like_pattern(t);
            args.push(Box::new(pat.clone()));
            args.push(Box::new(pat));
        }
        if let Some(kind) = q.kind {
            conds.push("g.kind = ?".into());
            args.push(Box::new(kind.as_str()));
        }
        if let Some(pid) = q.project_id {
            conds.push("g.project_id = ?".into());
            args.push(Box::new(pid));
        }
        if q.starred_only {
            conds.push("g.starred = 1".into());
        }
        if let Some(before) = q.before {
            conds.push(format!("{id_col} < ?"));
            args.push(Box::new(before));
        }
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
        sql.push_str(&format!(" ORDER BY {id_col} DESC LIMIT ?"));
        args.push(Box::new(limit + 1)); // one extra row tells whether another page exists

        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let arg_refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
        let mut items = stmt
            .query_map(arg_refs.as_slice(), summary_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next_before = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|s| s.id)
        } else {
            None
        };
        Ok(HistoryPage { items, next_before })
    }
}

fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<GenerationSummary> {
    let kind: String = r.get(3)?;
    let status: String = r.get(5)?;
    Ok(GenerationSummary {
        id: r.get(0)?,
        project_id: r.get(1)?,
        project_name: r.get(2)?,
        kind: GenerationKind::parse(&kind).unwrap_or(GenerationKind::Text),
        model_id: r.get(4)?,
        status: GenerationStatus::parse(&status),
        prompt_preview: r.get(6)?,
        output_preview: r.get(7)?,
        rating: r.get(8)?,
        starred: r.get(9)?,
        created_at: r.get(10)?,
    })
}
