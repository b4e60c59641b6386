//! Commands for the live-script studio: products, script jobs, script versions, exports and
//! the teleprompter window.

use std::sync::Arc;

use atelier_engine::script::document::Script;
use atelier_engine::script::export::ScriptFormat;
use atelier_engine::script::generate::{ScriptRequest, SegmentRequest};
use atelier_engine::script::product::{Product, ShowSettings};
use atelier_engine::store::{Document, DocumentKind, ProductRecord, ProductSummary};
use atelier_engine::{ImportReport, JobEvent, ScriptView};
use serde::Serialize;
use tauri::ipc::{Channel, Request};
use tauri::{AppHandle, Manager, Runtime, State, WebviewUrl, WebviewWindowBuilder};

use super::jobs::channel_sink;
use super::{blocking, project_header, raw_body};
use crate::error::{CmdResult, UiError};
use crate::state::AppState;

pub const TELEPROMPTER: &str = "teleprompter";

#[tauri::command]
pub async fn list_products(
    state: State<'_, AppState>,
    project_id: i64,
    query: Option<String>,
) -> CmdResult<Vec<ProductSummary>> {
    Ok(state
        .engine()?
        .store()
        .list_products(project_id, query.as_deref().unwrap_or(""))?)
}

#[tauri::command]
pub async fn get_product(state: State<'_, AppState>, id: i64) -> CmdResult<ProductRecord> {
    Ok(state.engine()?.store().product(id)?)
}

/// Saves a product form (new without `id`); returns it as stored (normalised).
#[tauri::command]
pub async fn save_product(
    state: State<'_, AppState>,
    project_id: i64,
    id: Option<i64>,
    product: Product,
) -> CmdResult<ProductRecord> {
    Ok(state
        .engine()?
        .store()
        .save_product(project_id, id, &product)?)
}

#[tauri::command]
pub async fn delete_product(state: State<'_, AppState>, id: i64) -> CmdResult<()> {
    Ok(state.engine()?.store().delete_product(id)?)
}

/// Imports a products CSV. The file's bytes are the raw request body (no JSON round trip for a
/// 10,000-row file); the project comes in the `project-id` header.
#[tauri::command]
pub async fn import_products_csv(
    state: State<'_, AppState>,
    request: Request<'_>,
) -> CmdResult<ImportReport> {
    let bytes = raw_body(&request, "CSV file")?.to_vec();
    let project_id = project_header(&request)?;
    let engine = state.engine()?;
    // Parsing and one big insert: off the async runtime.
    blocking(move || engine.import_products_csv(project_id, &bytes)).await
}

/// Queues a product's or a whole show's script; segment text streams through `on_event`,
/// progress counts segments.
#[tauri::command]
pub async fn generate_script(
    state: State<'_, AppState>,
    request: ScriptRequest,
    on_event: Channel<JobEvent>,
) -> CmdResult<i64> {
    Ok(state
        .engine()?
        .generate_script(&request, Some(channel_sink(on_event)))?)
}

/// A new script with the skeleton only, for the user to write (no model).
#[tauri::command]
pub async fn create_blank_script(
    state: State<'_, AppState>,
    request: ScriptRequest,
) -> CmdResult<ScriptView> {
    Ok(state.engine()?.blank_script(&request)?)
}

/// Queues writing one segment (or one host line) again.
#[tauri::command]
pub async fn regenerate_segment(
    state: State<'_, AppState>,
    request: SegmentRequest,
    on_event: Channel<JobEvent>,
) -> CmdResult<i64> {
    Ok(state
        .engine()?
        .regenerate_segment(&request, Some(channel_sink(on_event)))?)
}

/// One product's job event in a batch.
#[derive(Clone, Serialize)]
pub struct BatchEvent {
    pub product_id: i64,
    pub event: JobEvent,
}

/// Queues one product script per saved product; every job's events come through `on_event`,
/// tagged with the product. Returns the job ids in the order given.
#[tauri::command]
pub async fn generate_scripts_batch(
    state: State<'_, AppState>,
    project_id: i64,
    product_ids: Vec<i64>,
    show: ShowSettings,
    model: String,
    seed: Option<u64>,
    on_event: Channel<BatchEvent>,
) -> CmdResult<Vec<i64>> {
    let on_event = Arc::new(on_event);
    Ok(state.engine()?.generate_scripts_for_products(
        project_id,
        &product_ids,
        &show,
        &model,
        seed,
        |product_id| {
            let ch = on_event.clone();
            Some(Arc::new(move |event| {
                if let Err(e) = ch.send(BatchEvent { product_id, event }) {
                    tracing::debug!(error = %e, "batch channel closed");
                }
            }))
        },
    )?)
}

#[tauri::command]
pub async fn list_scripts(state: State<'_, AppState>, project_id: i64) -> CmdResult<Vec<Document>> {
    Ok(state
        .engine()?
        .store()
        .list_documents(project_id, DocumentKind::Script)?)
}

#[tauri::command]
pub async fn get_script(
    state: State<'_, AppState>,
    document_id: i64,
    version_id: Option<i64>,
) -> CmdResult<ScriptView> {
    Ok(state.engine()?.script(document_id, version_id)?)
}

/// Saves the user's edit as a new version (every line checked again).
#[tauri::command]
pub async fn save_script(
    state: State<'_, AppState>,
    document_id: i64,
    script: Script,
    note: Option<String>,
) -> CmdResult<ScriptView> {
    Ok(state
        .engine()?
        .save_script(document_id, &script, note.as_deref().unwrap_or(""))?)
}

/// Writes a labelled MD, TXT, SRT, JSON or CSV file into the exports folder; returns its path.
#[tauri::command]
pub async fn export_script(
    state: State<'_, AppState>,
    document_id: i64,
    version_id: Option<i64>,
    format: ScriptFormat,
) -> CmdResult<String> {
    Ok(state
        .engine()?
        .export_script(document_id, version_id, format)?
        .display()
        .to_string())
}

/// Opens (or points) the teleprompter window at a script. The window's page can read only
/// this script (`teleprompter_script`).
#[tauri::command]
pub async fn open_teleprompter<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, AppState>,
    document_id: i64,
) -> CmdResult<()> {
    // Fail here, not in the new window, when the script cannot be read.
    state.engine()?.script(document_id, None)?;
    state.set_teleprompter(document_id);
    if let Some(w) = app.get_webview_window(TELEPROMPTER) {
        let _ = w.close();
    }
    WebviewWindowBuilder::new(
        &app,
        TELEPROMPTER,
        WebviewUrl::App("teleprompter.html".into()),
    )
    .title("提词器 Teleprompter")
    .inner_size(1280.0, 800.0)
    .min_inner_size(640.0, 400.0)
    .build()
    .map_err(|e| UiError::new("internal", format!("cannot open the teleprompter: {e}")))?;
    Ok(())
}

/// The script the teleprompter shows (its latest version).
#[tauri::command]
pub async fn teleprompter_script(state: State<'_, AppState>) -> CmdResult<ScriptView> {
    let id = state
        .teleprompter()
        .ok_or_else(|| UiError::new("not_found", "no script was sent to the teleprompter"))?;
    Ok(state.engine()?.script(id, None)?)
}

/// Full screen on or off for the window that asks (the teleprompter's F key).
#[tauri::command]
pub async fn set_fullscreen<R: Runtime>(
    window: tauri::WebviewWindow<R>,
    on: bool,
) -> CmdResult<()> {
    window
        .set_fullscreen(on)
        .map_err(|e| UiError::new("internal", format!("cannot change full screen: {e}")))
}
