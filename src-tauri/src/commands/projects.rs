use atelier_engine::store::Project;
use tauri::State;

use crate::error::CmdResult;
use crate::state::AppState;

#[tauri::command]
pub async fn list_projects(state: State<'_, AppState>) -> CmdResult<Vec<Project>> {
    Ok(state.engine()?.store().list_projects()?)
}

#[tauri::command]
pub async fn list_trash(state: State<'_, AppState>) -> CmdResult<Vec<Project>> {
    Ok(state.engine()?.store().list_trash()?)
}

#[tauri::command]
pub async fn create_project(state: State<'_, AppState>, name: String) -> CmdResult<Project> {
    Ok(state.engine()?.store().create_project(&name)?)
}

#[tauri::command]
pub async fn rename_project(
    state: State<'_, AppState>,
    id: i64,
    name: String,
) -> CmdResult<Project> {
    Ok(state.engine()?.store().rename_project(id, &name)?)
}

#[tauri::command]
pub async fn trash_project(state: State<'_, AppState>, id: i64) -> CmdResult<Project> {
    Ok(state.engine()?.store().trash_project(id)?)
}

#[tauri::command]
pub async fn restore_project(state: State<'_, AppState>, id: i64) -> CmdResult<Project> {
    Ok(state.engine()?.store().restore_project(id)?)
}

/// Deletes a project in the trash forever (rows and files). Returns how many files went.
#[tauri::command]
pub async fn purge_project(state: State<'_, AppState>, id: i64) -> CmdResult<usize> {
    Ok(state.engine()?.purge_project(id)?)
}
