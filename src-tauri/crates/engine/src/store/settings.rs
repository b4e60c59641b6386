//! App settings, one row per key (JSON values). Only known keys with valid values are written,
//! so the UI cannot store something the app would later fail to read. The remote server's API
//! key is a setting row too, but never part of [`Settings`]: it goes to the server and nowhere
//! else (not to the UI, not to logs).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Store, in_tx, now_ms};
use crate::compliance::labels::{self, NoticePosition};
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

/// Where local models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DevicePreference {
    /// A GPU when this build has one and it opens; otherwise the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    /// "zh-CN" (default) or "en".
    pub language: String,
    pub theme: Theme,
    /// How many heavy (model) jobs may run at once; applies from the next start.
    pub heavy_job_slots: u32,
    /// The text model studios use; `None`: by language (Qwen for zh-CN, SmolLM2 for en).
    pub text_model: Option<String>,
    /// Loaded models stay in memory up to this many MiB (least recently used leave first).
    pub model_memory_mb: u32,
    /// CPU threads for local models; 0 = the number of physical cores.
    pub threads: u32,
    pub device: DevicePreference,
    /// Keep repacked copies of slow-to-run model files, so the next load is instant.
    pub cache_repacked_models: bool,
    /// OpenAI-compatible server, e.g. `http://127.0.0.1:8080/v1`; empty = none.
    pub remote_base_url: String,
    pub remote_model: String,
    pub remote_timeout_s: u32,
    pub remote_extra_sampling: bool,
    /// Whether an API key is stored (the key itself is never sent to the UI).
    pub remote_api_key_set: bool,
    /// A ComfyUI server for image runs, e.g. `http://192.168.1.20:8188`; empty = none. Its
    /// checkpoints join the image model list as `comfyui:<name>`.
    #[serde(default)]
    pub comfyui_url: String,
    /// Whether a key for the ComfyUI server is stored (sent as `Authorization: Bearer`, for
    /// servers behind an authenticating proxy; never sent to the UI).
    #[serde(default)]
    pub comfyui_api_key_set: bool,
    /// The explicit AI-content notice on exports and copies (validated: it must keep
    /// 人工智能/AI and 生成/合成).
    pub label_notice_zh: String,
    pub label_notice_en: String,
    pub label_position: NoticePosition,
    /// `false` only after an acknowledgement, which is logged (`label_events`).
    pub label_explicit: bool,
    /// The registered provider code for `ContentProducer`; empty = “Atelier”.
    pub label_producer: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            language: "zh-CN".into(),
            theme: Theme::Light,
            heavy_job_slots: 1,
            text_model: None,
            model_memory_mb: 4096,
            threads: 0,
            device: DevicePreference::Auto,
            cache_repacked_models: true,
            remote_base_url: String::new(),
            comfyui_url: String::new(),
            remote_model: String::new(),
            remote_timeout_s: 120,
            remote_extra_sampling: true,
            remote_api_key_set: false,
            comfyui_api_key_set: false,
            label_notice_zh: labels::DEFAULT_NOTICE_ZH.into(),
            label_notice_en: labels::DEFAULT_NOTICE_EN.into(),
            label_position: NoticePosition::End,
            label_explicit: true,
            label_producer: String::new(),
        }
    }
}

/// A partial update; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theme: Option<Theme>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heavy_job_slots: Option<u32>,
    /// `Some(None)` clears the choice (back to the language's default).
    #[serde(skip_serializing_if = "Option::is_none", with = "double_option")]
    pub text_model: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_memory_mb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DevicePreference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_repacked_models: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_timeout_s: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_extra_sampling: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comfyui_url: Option<String>,
    /// `Some("")` removes the key. Written to its own row; never read back by the UI.
    #[serde(skip_serializing)]
    pub remote_api_key: Option<String>,
    /// The ComfyUI server's key, like `remote_api_key`.
    #[serde(skip_serializing)]
    pub comfyui_api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_notice_zh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_notice_en: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_position: Option<NoticePosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_explicit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_producer: Option<String>,
    /// Must be `true` to turn the explicit notice off: the user has read what that means.
    #[serde(skip_serializing)]
    pub acknowledge_unlabelled: Option<bool>,
}

/// `null` in JSON means "clear", absence means "leave".
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

pub const LANGUAGES: [&str; 2] = ["zh-CN", "en"];
const API_KEY: &str = "remote_api_key";
const COMFYUI_KEY: &str = "comfyui_api_key";

impl Settings {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid(m));
        if !LANGUAGES.contains(&self.language.as_str()) {
            return Err(Error::invalid(format!(
                "unsupported language “{}” (zh-CN or en)",
                self.language
            )));
        }
        if !(1..=4).contains(&self.heavy_job_slots) {
            return bad("heavy job slots must be between 1 and 4");
        }
        if !(256..=1_048_576).contains(&self.model_memory_mb) {
            return bad("the model memory budget must be between 256 MiB and 1 TiB");
        }
        if self.threads > 256 {
            return bad("threads must be between 0 (automatic) and 256");
        }
        if !(1..=3600).contains(&self.remote_timeout_s) {
            return bad("the remote timeout must be between 1 and 3600 seconds");
        }
        if self
            .text_model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return bad("the text model cannot be an empty name");
        }
        labels::validate_notice(&self.label_notice_zh)?;
        labels::validate_notice(&self.label_notice_en)?;
        if !self.label_producer.trim().is_empty() {
            labels::validate_producer(&self.label_producer)?;
        }
        for (what, url) in [
            ("server address", &self.remote_base_url),
            ("ComfyUI address", &self.comfyui_url),
        ] {
            let url = url.trim();
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::invalid(format!(
                    "the {what} must start with http:// or https://"
                )));
            }
        }
        Ok(())
    }
}

impl Store {
    /// Current settings; missing or unreadable keys take their defaults.
    pub fn settings(&self) -> Result<Settings> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, value FROM settings")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let defaults = Settings::default();
        let mut obj = match serde_json::to_value(&defaults)? {
            serde_json::Value::Object(m) => m,
            _ => return Err(Error::Internal("settings are not an object".into())),
        };
        let (mut key_set, mut comfyui_key_set) = (false, false);
        for row in rows {
            let (key, value) = row?;
            let stored = !value.is_empty() && value != "\"\"";
            if key == API_KEY {
                key_set = stored;
                continue;
            }
            if key == COMFYUI_KEY {
                comfyui_key_set = stored;
                continue;
            }
            if !obj.contains_key(&key) {
                continue; // keys of a newer version: kept, ignored
            }
            // A value is taken only if the whole still reads and validates: one bad row
            // falls back to its default instead of breaking every setting.
            let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&value) else {
                tracing::warn!(key, value, "unreadable setting, using the default");
                continue;
            };
            let mut trial = obj.clone();
            trial.insert(key.clone(), parsed);
            match serde_json::from_value::<Settings>(serde_json::Value::Object(trial.clone())) {
                Ok(s) if s.validate().is_ok() => obj = trial,
                _ => tracing::warn!(key, value, "invalid setting, using the default"),
            }
        }
        let mut s: Settings = serde_json::from_value(serde_json::Value::Object(obj))?;
        s.remote_api_key_set = key_set;
        s.comfyui_api_key_set = comfyui_key_set;
        Ok(s)
    }

    pub fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings> {
        let current = self.settings()?;
        let mut merged = match serde_json::to_value(&current)? {
            serde_json::Value::Object(m) => m,
            _ => return Err(Error::Internal("settings are not an object".into())),
        };
        let changes = match serde_json::to_value(patch)? {
            serde_json::Value::Object(m) => m,
            _ => return Err(Error::Internal("settings patch is not an object".into())),
        };
        for (k, v) in &changes {
            merged.insert(k.clone(), v.clone());
        }
        let next: Settings = serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| Error::invalid(format!("invalid settings: {e}")))?;
        next.validate()?;
        let turning_off = current.label_explicit && !next.label_explicit;
        if turning_off && patch.acknowledge_unlabelled != Some(true) {
            return Err(Error::invalid(
                "turning the AI-content notice off needs your acknowledgement that you will label the content yourself where it is published",
            ));
        }
        let now = now_ms();
        let mut conn = self.conn();
        in_tx(&mut conn, |tx| {
            let put = |key: &str, value: String| -> Result<()> {
                tx.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![key, value, now],
                )?;
                Ok(())
            };
            for (k, v) in &changes {
                put(k, v.to_string())?;
            }
            if turning_off {
                tx.execute(
                    "INSERT INTO label_events (at, event, detail) VALUES (?1, 'explicit_off', 'acknowledged in Settings')",
                    [now],
                )?;
            } else if !current.label_explicit && next.label_explicit {
                tx.execute(
                    "INSERT INTO label_events (at, event, detail) VALUES (?1, 'explicit_on', '')",
                    [now],
                )?;
            }
            for (row, key) in [
                (API_KEY, &patch.remote_api_key),
                (COMFYUI_KEY, &patch.comfyui_api_key),
            ] {
                match key.as_deref().map(str::trim) {
                    None => {}
                    Some("") => {
                        tx.execute("DELETE FROM settings WHERE key = ?1", [row])?;
                    }
                    Some(key) => put(row, serde_json::json!(key).to_string())?,
                }
            }
            Ok(())
        })?;
        drop(conn);
        self.settings()
    }

    /// Records an export made without the explicit notice (what and where), kept locally.
    pub fn log_unlabelled_export(&self, detail: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO label_events (at, event, detail) VALUES (?1, 'export_unlabelled', ?2)",
            params![now_ms(), detail],
        )?;
        Ok(())
    }

    /// The label log, newest first: (at ms, event, detail).
    pub fn label_events(&self, limit: usize) -> Result<Vec<(i64, String, String)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT at, event, detail FROM label_events ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The stored API key for the remote server, for the request only.
    pub fn remote_api_key(&self) -> Result<Option<String>> {
        self.secret(API_KEY)
    }

    /// The stored key for the ComfyUI server, for the request only.
    pub fn comfyui_api_key(&self) -> Result<Option<String>> {
        self.secret(COMFYUI_KEY)
    }

    fn secret(&self, row: &str) -> Result<Option<String>> {
        let v: Option<String> = self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [row], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|v| serde_json::from_str::<String>(&v).ok())
            .filter(|k| !k.is_empty()))
    }
}
