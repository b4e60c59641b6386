use std::sync::Arc;

use atelier_engine::store::JobRecord;
use atelier_engine::{EventSink, JobEvent, JobUpdate};
use tauri::State;
use tauri::ipc::Channel;
use tokio::sync::broadcast::error::RecvError;

use crate::error::CmdResult;
use crate::state::AppState;

/// Adapts a job's event stream to a Tauri channel.
pub fn channel_sink(channel: Channel<JobEvent>) -> EventSink {
    Arc::new(move |event| {
        if let Err(e) = channel.send(event) {
            tracing::debug!(error = %e, "job channel closed");
        }
    })
}

#[tauri::command]
pub async fn list_jobs(state: State<'_, AppState>) -> CmdResult<Vec<JobRecord>> {
    Ok(state.engine()?.store().list_jobs(50)?)
}

/// Returns whether the job was still queued or running.
#[tauri::command]
pub async fn cancel_job(state: State<'_, AppState>, id: i64) -> CmdResult<bool> {
    Ok(state.engine()?.jobs().cancel(id)?)
}

#[tauri::command]
pub async fn retry_job(
    state: State<'_, AppState>,
    id: i64,
    on_event: Channel<JobEvent>,
) -> CmdResult<i64> {
    Ok(state
        .engine()?
        .retry_job(id, Some(channel_sink(on_event)))?)
}

/// Streams every job's events to the job panel until the page goes away.
#[tauri::command]
pub async fn watch_jobs(
    state: State<'_, AppState>,
    on_update: Channel<JobUpdate>,
) -> CmdResult<()> {
    let mut rx = state.engine()?.jobs().subscribe();
    tauri::async_runtime::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(update) => {
                    if on_update.send(update).is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::debug!(skipped = n, "job panel lagged"),
                Err(RecvError::Closed) => break,
            }
        }
    });
    Ok(())
}

#[tauri::command]
pub async fn start_maintenance(
    state: State<'_, AppState>,
    on_event: Channel<JobEvent>,
) -> CmdResult<i64> {
    Ok(state
        .engine()?
        .start_maintenance(Some(channel_sink(on_event)), None)?)
}
