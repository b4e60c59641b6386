use std::path::PathBuf;

use atelier_engine::models::{ModelEntry, ModelInfo, registry};
use atelier_engine::text::service::ResidentModel;
use serde::Serialize;
use tauri::State;

use super::blocking;
use crate::error::CmdResult;
use crate::state::AppState;

#[derive(Serialize)]
pub struct ModelsOverview {
    pub models: Vec<ModelEntry>,
    /// Loaded models, most recently used last.
    pub resident: Vec<ResidentModel>,
    /// What studios use when no model is picked.
    pub default_model: Option<String>,
    pub models_dir: String,
    pub default_threads: usize,
    /// GPU back-ends compiled into this build.
    pub gpu_backends: Vec<&'static str>,
}

#[tauri::command]
pub async fn list_models(state: State<'_, AppState>) -> CmdResult<ModelsOverview> {
    let engine = state.engine()?;
    let dir = engine.home().models_dir();
    let mut gpu_backends = Vec::new();
    if cfg!(feature = "cuda") {
        gpu_backends.push("cuda");
    }
    if cfg!(feature = "metal") {
        gpu_backends.push("metal");
    }
    Ok(ModelsOverview {
        models: registry::list(&dir)?,
        resident: engine.text().resident_models(),
        default_model: engine.default_text_model()?,
        models_dir: dir.display().to_string(),
        default_threads: atelier_engine::text::local::default_threads(),
        gpu_backends,
    })
}

/// Validates and copies a GGUF file the user named into the models folder.
#[tauri::command]
pub async fn import_model(state: State<'_, AppState>, path: String) -> CmdResult<ModelInfo> {
    let engine = state.engine()?;
    let dir = engine.home().models_dir();
    // Copying hundreds of MB must not hold up the async runtime.
    blocking(move || registry::import(&dir, &PathBuf::from(path.trim()))).await
}

/// Deletes a model's file (the UI has asked first) and unloads it.
#[tauri::command]
pub async fn remove_model(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    let engine = state.engine()?;
    registry::remove(&engine.home().models_dir(), &id)?;
    engine.text().unload(&id);
    Ok(())
}

#[tauri::command]
pub async fn unload_model(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    state.engine()?.text().unload(&id);
    Ok(())
}
