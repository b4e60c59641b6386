use atelier_engine::store::{Settings, SettingsPatch};
use tauri::State;

use crate::error::CmdResult;
use crate::state::AppState;

#[tauri::command]
pub async fn get_settings(state: State<'_, AppState>) -> CmdResult<Settings> {
    Ok(state.engine()?.store().settings()?)
}

#[tauri::command]
pub async fn update_settings(
    state: State<'_, AppState>,
    patch: SettingsPatch,
) -> CmdResult<Settings> {
    Ok(state.engine()?.store().update_settings(&patch)?)
}
