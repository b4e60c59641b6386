//! App settings, one row per key (JSON values). Only known keys with valid values are written,
//! so the UI cannot store something the app would later fail to read.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, in_tx, now_ms};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    #[default]
    Light,
    Dark,
    /// Follow the desktop.
    System,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// "zh-CN" (default) or "en".
    pub language: String,
    pub theme: Theme,
    /// How many heavy (model) jobs may run at once; applies from the next start.
    pub heavy_job_slots: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { language: "zh-CN".into(), theme: Theme::Light, heavy_job_slots: 1 }
    }
}

/// A partial update; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsPatch {
    pub language: Option<String>,
    pub theme: Option<Theme>,
    pub heavy_job_slots: Option<u32>,
}

pub const LANGUAGES: [&str; 2] = ["zh-CN", "en"];

impl Store {
    /// Current settings; missing or unreadable keys take their defaults.
    pub fn settings(&self) -> Result<Settings> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, value FROM settings")?;
        let mut s = Settings::default();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (key, value) = row?;
            let ok = match key.as_str() {
                "language" => serde_json::from_str(&value).map(|v: String| s.language = v).is_ok(),
                "theme" => serde_json::from_str(&value).map(|v| s.theme = v).is_ok(),
                "heavy_job_slots" => serde_json::from_str(&value).map(|v| s.heavy_job_slots = v).is_ok(),
                _ => true, // keys of a newer version: kept, ignored
            };
            if !ok {
                tracing::warn!(key, value, "unreadable setting, using the default");
            }
        }
        if !LANGUAGES.contains(&s.language.as_str()) {
            s.language = Settings::default().language;
        }
        Ok(s)
    }

    pub fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings> {
        if let Some(lang) = &patch.language {
            if !LANGUAGES.contains(&lang.as_str()) {
                return Err(Error::invalid(format!("unsupported language “{lang}” (zh-CN or en)")));
            }
        }
        if let Some(n) = patch.heavy_job_slots {
            if !(1..=4).contains(&n) {
                return Err(Error::invalid("heavy job slots must be between 1 and 4"));
            }
        }
        let now = now_ms();
        let mut conn = self.conn();
        in_tx(&mut conn, |tx| {
            let put = |key: &str, value: serde_json::Value| -> Result<()> {
                tx.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![key, value.to_string(), now],
                )?;
                Ok(())
            };
            if let Some(v) = &patch.language {
                put("language", serde_json::json!(v))?;
            }
            if let Some(v) = patch.theme {
                put("theme", serde_json::to_value(v)?)?;
            }
            if let Some(v) = patch.heavy_job_slots {
                put("heavy_job_slots", serde_json::json!(v))?;
            }
            Ok(())
        })?;
        drop(conn);
        self.settings()
    }
}
