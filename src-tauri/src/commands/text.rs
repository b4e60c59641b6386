use atelier_engine::JobEvent;
use atelier_engine::text::TextRequest;
use atelier_engine::text::service::TextJob;
use tauri::State;
use tauri::ipc::Channel;

use super::jobs::channel_sink;
use crate::error::CmdResult;
use crate::state::AppState;

/// Queues a generation; its text streams through `on_event` as `Token` events. Returns the job
/// id (`cancel_job` stops it; the partial text is kept in History).
#[tauri::command]
pub async fn generate_text(
    state: State<'_, AppState>,
    project_id: i64,
    request: TextRequest,
    on_event: Channel<JobEvent>,
) -> CmdResult<i64> {
    Ok(state.engine()?.generate_text(
        TextJob {
            project_id,
            request,
            purpose: None,
        },
        Some(channel_sink(on_event)),
    )?)
}
