use tauri::State;

use crate::error::CmdResult;
use crate::state::{AppState, AppStatus};

/// Where the data lives and whether it opened; the UI's first call.
#[tauri::command]
pub async fn app_status(state: State<'_, AppState>) -> CmdResult<AppStatus> {
    // The UI asks this from its first mount, right after its first paint: a start-up mark that
    // bench/app-start.sh reads from the log.
    if let Some(ms) = crate::first_request_ms() {
        tracing::info!(target: "atelier::startup", ms = ms as u64, "first UI request");
    }
    Ok(state.status())
}

/// Tries to open the data folder again (another instance closed, disk freed...).
#[tauri::command]
pub async fn retry_open(state: State<'_, AppState>) -> CmdResult<AppStatus> {
    Ok(state.reopen())
}

/// The database is damaged: keep it under a new name and start an empty one. Returns the path
/// the old file was moved to.
#[tauri::command]
pub async fn start_new_database(state: State<'_, AppState>) -> CmdResult<String> {
    state.start_new_database()
}
