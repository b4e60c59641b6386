//! The image gallery: pages of images newest first (keyset, so 20,000 images page as fast as
//! 20), boards, trash, and the one transaction that turns a finished image run into a row.

use rusqlite::{OptionalExtension, Row, ToSql, params};
use serde::{Deserialize, Serialize};

use super::{Store, now_ms};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GalleryImage {
    pub generation_id: i64,
    pub project_id: i64,
    pub asset_id: i64,
    pub thumb_asset_id: Option<i64>,
    pub board_id: Option<i64>,
    pub width: i64,
    pub height: i64,
    pub prompt: String,
    pub model_id: String,
    pub seed: Option<i64>,
    pub starred: bool,
    pub rating: i64,
    /// Sorted, as the user typed them.
    pub tags: Vec<String>,
    pub trashed: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GalleryQuery {
    pub project_id: i64,
    /// Words that must all occur in the prompt.
    pub text: String,
    pub starred_only: bool,
    /// Only images rated up (thumbs up).
    pub rated_up_only: bool,
    /// Only images with this tag.
    pub tag: Option<String>,
    /// `Some(0)`: images on no board.
    pub board_id: Option<i64>,
    /// The trash instead of the gallery.
    pub trash: bool,
    pub before: Option<i64>,
    /// 1..=500; 0 = 100.
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct GalleryPage {
    pub items: Vec<GalleryImage>,
    pub next_before: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Board {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub image_count: i64,
    pub created_at: i64,
}

const COLUMNS: &str =
    "g.id, i.project_id, i.asset_id, i.thumb_asset_id, i.board_id, i.width, i.height,
    g.prompt, g.model_id, g.seed, g.starred, g.rating, i.trashed_at, g.created_at,
    (SELECT group_concat(t.tag, char(31)) FROM image_tags t WHERE t.generation_id = g.id)";

/// Tags are joined with the unit separator in one column; it cannot occur in a tag.
const TAG_SEPARATOR: char = '\u{1f}';

/// The most tags one image keeps.
pub const MAX_TAGS: usize = 20;

/// A tag as stored: trimmed, inner whitespace collapsed to one space, 1 to 40 characters, no
/// control characters.
pub fn normalize_tag(tag: &str) -> Result<String> {
    let t = tag.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() || t.chars().count() > 40 || t.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "\"{}\" is not a tag: a tag needs 1 to 40 characters",
            tag.trim()
        )));
    }
    Ok(t)
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<GalleryImage> {
    Ok(GalleryImage {
        generation_id: r.get(0)?,
        project_id: r.get(1)?,
        asset_id: r.get(2)?,
        thumb_asset_id: r.get(3)?,
        board_id: r.get(4)?,
        width: r.get(5)?,
        height: r.get(6)?,
        prompt: r.get(7)?,
        model_id: r.get(8)?,
        seed: r.get(9)?,
        starred: r.get(10)?,
        rating: r.get(11)?,
        trashed: r.get::<_, Option<i64>>(12)?.is_some(),
        created_at: r.get(13)?,
        tags: {
            let mut tags: Vec<String> = r
                .get::<_, Option<String>>(14)?
                .map(|s| s.split(TAG_SEPARATOR).map(str::to_owned).collect())
                .unwrap_or_default();
            tags.sort();
            tags
        },
    })
}

/// What a finished image run stores.
pub struct FinishedImage {
    pub generation_id: i64,
    pub asset_id: i64,
    pub thumb_asset_id: Option<i64>,
    pub width: u32,
    pub height: u32,
    pub metrics: serde_json::Value,
}

impl Store {
    /// Marks the generation succeeded and adds its gallery row, in one transaction: the
    /// gallery never shows an image whose generation says otherwise.
    pub fn finish_image(&self, f: &FinishedImage) -> Result<GalleryImage> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let project_id: i64 = tx
            .query_row(
                "SELECT project_id FROM generations WHERE id = ?1",
                [f.generation_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "generation",
                id: f.generation_id,
            })?;
        tx.execute(
            "UPDATE generations SET status = 'succeeded', asset_id = ?2, finished_at = ?3,
                 duration_ms = ?3 - coalesce(started_at, ?3), metrics = ?4
             WHERE id = ?1",
            params![f.generation_id, f.asset_id, now, f.metrics.to_string()],
        )?;
        tx.execute(
            "INSERT INTO images (generation_id, project_id, asset_id, thumb_asset_id, width, height)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                f.generation_id,
                project_id,
                f.asset_id,
                f.thumb_asset_id,
                f.width,
                f.height
            ],
        )?;
        tx.commit()?;
        drop(conn);
        self.gallery_image(f.generation_id)
    }

    pub fn gallery_image(&self, generation_id: i64) -> Result<GalleryImage> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM images i JOIN generations g ON g.id = i.generation_id
                     WHERE i.generation_id = ?1"
                ),
                [generation_id],
                from_row,
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "image",
                id: generation_id,
            })
    }

    /// One page of the gallery, newest first.
    pub fn gallery(&self, q: &GalleryQuery) -> Result<GalleryPage> {
        let limit = match q.limit {
            0 => 100,
            n @ 1..=500 => n,
            n => {
                return Err(Error::invalid(format!(
                    "page size {n} is over the limit of 500"
                )));
            }
        } as i64;
        let mut conds = vec![
            "i.project_id = ?".to_owned(),
            if q.trash {
                "i.trashed_at IS NOT NULL".to_owned()
            } else {
                "i.trashed_at IS NULL".to_owned()
            },
        ];
        let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(q.project_id)];
        for word in q.text.split_whitespace().take(8) {
            let escaped = word
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            conds.push("g.prompt LIKE ? ESCAPE '\\'".into());
            args.push(Box::new(format!("%{escaped}%")));
        }
        if q.starred_only {
            conds.push("g.starred = 1".into());
        }
        if q.rated_up_only {
            conds.push("g.rating = 1".into());
        }
        if let Some(tag) = &q.tag {
            conds.push(
                "EXISTS (SELECT 1 FROM image_tags t WHERE t.generation_id = i.generation_id AND t.tag = ?)"
                    .into(),
            );
            args.push(Box::new(normalize_tag(tag)?));
        }
        match q.board_id {
            Some(0) => conds.push("i.board_id IS NULL".into()),
            Some(b) => {
                conds.push("i.board_id = ?".into());
                args.push(Box::new(b));
            }
            None => {}
        }
        if let Some(before) = q.before {
            conds.push("i.generation_id < ?".into());
            args.push(Box::new(before));
        }
        args.push(Box::new(limit + 1));
        let sql = format!(
            "SELECT {COLUMNS} FROM images i JOIN generations g ON g.id = i.generation_id
             WHERE {} ORDER BY i.generation_id DESC LIMIT ?",
            conds.join(" AND ")
        );
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
        let mut items = stmt
            .query_map(refs.as_slice(), from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next_before = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|i| i.generation_id)
        } else {
            None
        };
        Ok(GalleryPage { items, next_before })
    }

    /// Moves images to the trash (or back). Files stay until the trash is emptied.
    pub fn set_images_trashed(&self, ids: &[i64], trashed: bool) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        for id in ids {
            n += tx.execute(
                "UPDATE images SET trashed_at = CASE WHEN ?2 THEN coalesce(trashed_at, ?3) END
                 WHERE generation_id = ?1",
                params![id, trashed, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    pub fn create_board(&self, project_id: i64, name: &str) -> Result<Board> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::invalid("a board name needs 1 to 100 characters"));
        }
        self.ensure_live_project(project_id)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO boards (project_id, name, created_at) VALUES (?1, ?2, ?3)",
            params![project_id, name, now_ms()],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.boards(project_id)?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or(Error::NotFound { what: "board", id })
    }

    pub fn boards(&self, project_id: i64) -> Result<Vec<Board>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT b.id, b.project_id, b.name,
                    (SELECT count(*) FROM images i WHERE i.board_id = b.id AND i.trashed_at IS NULL),
                    b.created_at
             FROM boards b WHERE b.project_id = ?1 ORDER BY b.name",
        )?;
        let rows = stmt
            .query_map([project_id], |r| {
                Ok(Board {
                    id: r.get(0)?,
                    project_id: r.get(1)?,
                    name: r.get(2)?,
                    image_count: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Puts an image on a board (`None`: on no board). The board must be in the image's project.
    pub fn set_image_board(&self, generation_id: i64, board_id: Option<i64>) -> Result<()> {
        let img = self.gallery_image(generation_id)?;
        if let Some(b) = board_id {
            let same: Option<i64> = self
                .conn()
                .query_row("SELECT project_id FROM boards WHERE id = ?1", [b], |r| {
                    r.get(0)
                })
                .optional()?;
            match same {
                None => {
                    return Err(Error::NotFound {
                        what: "board",
                        id: b,
                    });
                }
                Some(p) if p != img.project_id => {
                    return Err(Error::invalid("that board belongs to another project"));
                }
                _ => {}
            }
        }
        self.conn().execute(
            "UPDATE images SET board_id = ?2 WHERE generation_id = ?1",
            params![generation_id, board_id],
        )?;
        Ok(())
    }

    /// Replaces an image's tags (normalised, duplicates dropped) and returns the image.
    pub fn set_image_tags(&self, generation_id: i64, tags: &[String]) -> Result<GalleryImage> {
        let mut clean: Vec<String> = Vec::with_capacity(tags.len());
        for t in tags {
            let t = normalize_tag(t)?;
            if !clean.contains(&t) {
                clean.push(t);
            }
        }
        if clean.len() > MAX_TAGS {
            return Err(Error::invalid(format!(
                "{} tags is over the limit of {MAX_TAGS} per image",
                clean.len()
            )));
        }
        self.gallery_image(generation_id)?; // not found is an error, not a silent no-op
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM image_tags WHERE generation_id = ?1",
            [generation_id],
        )?;
        for t in &clean {
            tx.execute(
                "INSERT INTO image_tags (generation_id, tag) VALUES (?1, ?2)",
                params![generation_id, t],
            )?;
        }
        tx.commit()?;
        drop(conn);
        self.gallery_image(generation_id)
    }

    /// The tags used in a project's gallery (trash left out), most used first.
    pub fn image_tags(&self, project_id: i64) -> Result<Vec<TagCount>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT t.tag, count(*) AS n FROM image_tags t
             JOIN images i ON i.generation_id = t.generation_id
             WHERE i.project_id = ?1 AND i.trashed_at IS NULL
             GROUP BY t.tag ORDER BY n DESC, t.tag",
        )?;
        let rows = stmt
            .query_map([project_id], |r| {
                Ok(TagCount {
                    tag: r.get(0)?,
                    image_count: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TagCount {
    pub tag: String,
    pub image_count: i64,
}
