//! The app's state: the engine once the data folder opened, or why it did not.

use std::sync::{Arc, RwLock};

use atelier_engine::{Access, Engine, Home};
use serde::Serialize;

use crate::error::{CmdResult, UiError};

pub struct AppState {
    pub home: Option<Home>,
    runtime: tokio::runtime::Handle,
    opened: RwLock<Result<Arc<Engine>, UiError>>,
    /// The script document the teleprompter window shows.
    teleprompter: std::sync::Mutex<Option<i64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub version: &'static str,
    pub data_dir: Option<String>,
    pub db_path: Option<String>,
    /// `None` when the engine is ready; otherwise why it is not (`corrupt_database`,
    /// `already_running`, `read_only`, `disk_full`, `database_too_new`...).
    pub error: Option<UiError>,
    pub interrupted_jobs: usize,
    pub migration_backup: Option<String>,
}

/// The app opens its data folder exclusively (instance lock, stale-job recovery).
fn open_engine(home: &Home, runtime: &tokio::runtime::Handle) -> Result<Arc<Engine>, UiError> {
    Engine::open(home.clone(), Access::Exclusive, runtime.clone())
        .map(Arc::new)
        .map_err(UiError::from)
}

impl AppState {
    pub fn open(
        home: Result<Home, atelier_engine::Error>,
        runtime: tokio::runtime::Handle,
    ) -> AppState {
        let (home, opened) = match home {
            Ok(home) => {
                let opened = open_engine(&home, &runtime);
                (Some(home), opened)
            }
            Err(e) => (None, Err(UiError::from(e))),
        };
        if let Err(e) = &opened {
            tracing::error!(kind = %e.kind, message = %e.message, "could not open the data folder");
        }
        AppState {
            home,
            runtime,
            opened: RwLock::new(opened),
            teleprompter: std::sync::Mutex::new(None),
        }
    }

    pub fn set_teleprompter(&self, document_id: i64) {
        *self.teleprompter.lock().unwrap_or_else(|p| p.into_inner()) = Some(document_id);
    }

    pub fn teleprompter(&self) -> Option<i64> {
        *self.teleprompter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine, or the start-up error as a `not_ready` command error.
    pub fn engine(&self) -> CmdResult<Arc<Engine>> {
        match &*self.opened.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(engine) => Ok(engine.clone()),
            Err(e) => Err(UiError::new(
                "not_ready",
                format!("Atelier could not open its data: {}", e.message),
            )),
        }
    }

    pub fn status(&self) -> AppStatus {
        let opened = self.opened.read().unwrap_or_else(|p| p.into_inner());
        let (error, interrupted_jobs, migration_backup) = match &*opened {
            Ok(engine) => (
                None,
                engine.interrupted_at_open(),
                engine
                    .store()
                    .migration_backup()
                    .map(|p| p.display().to_string()),
            ),
            Err(e) => (Some(e.clone()), 0, None),
        };
        AppStatus {
            version: env!("CARGO_PKG_VERSION"),
            data_dir: self.home.as_ref().map(|h| h.root().display().to_string()),
            db_path: self
                .home
                .as_ref()
                .map(|h| h.db_path().display().to_string()),
            error,
            interrupted_jobs,
            migration_backup,
        }
    }

    /// Tries again to open the data folder (after the user closed the other instance or freed
    /// disk space). A no-op when already open.
    pub fn reopen(&self) -> AppStatus {
        let mut opened = self.opened.write().unwrap_or_else(|p| p.into_inner());
        if opened.is_err()
            && let Some(home) = &self.home
        {
            *opened = open_engine(home, &self.runtime);
        }
        drop(opened);
        self.status()
    }

    /// Only when the database is damaged: sets the file aside (kept, renamed) and starts a new one.
    pub fn start_new_database(&self) -> CmdResult<String> {
        let home = self
            .home
            .clone()
            .ok_or_else(|| UiError::new("not_ready", "no data folder"))?;
        let mut opened = self.opened.write().unwrap_or_else(|p| p.into_inner());
        match &*opened {
            Err(e) if e.kind == "corrupt_database" => {}
            _ => {
                return Err(UiError::new(
                    "conflict",
                    "the database is not damaged; nothing was changed",
                ));
            }
        }
        let kept = atelier_engine::set_aside_database(&home)?;
        *opened = open_engine(&home, &self.runtime);
        if let Err(e) = &*opened {
            return Err(e.clone());
        }
        Ok(kept.display().to_string())
    }
}
