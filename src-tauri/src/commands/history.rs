use atelier_engine::store::{GenerationRecord, HistoryPage, HistoryQuery};
use tauri::State;

use crate::error::CmdResult;
use crate::state::AppState;

#[tauri::command]
pub async fn search_history(
    state: State<'_, AppState>,
    query: HistoryQuery,
) -> CmdResult<HistoryPage> {
    Ok(state.engine()?.store().history(&query)?)
}

#[tauri::command]
pub async fn get_generation(state: State<'_, AppState>, id: i64) -> CmdResult<GenerationRecord> {
    Ok(state.engine()?.store().generation(id)?)
}

#[tauri::command]
pub async fn star_generation(state: State<'_, AppState>, id: i64, starred: bool) -> CmdResult<()> {
    Ok(state
        .engine()?
        .store()
        .set_generation_starred(id, starred)?)
}

#[tauri::command]
pub async fn rate_generation(state: State<'_, AppState>, id: i64, rating: i64) -> CmdResult<()> {
    Ok(state.engine()?.store().rate_generation(id, rating)?)
}
