//! Image studio commands: models, generation (previews stream through the channel), the
//! gallery, image bytes for the webview, and reading settings out of a dropped PNG.

use atelier_engine::image::ImageParams;
use atelier_engine::image::comfyui::ServerInfo as ComfyServerInfo;
use atelier_engine::image::label::Corner;
use atelier_engine::image::metadata::{self, ExportFormat, ImageRecord, Recalled};
use atelier_engine::image::model::ImageModelInfo;
use atelier_engine::image::service::ImageJob;
use atelier_engine::store::{Asset, Board, GalleryImage, GalleryPage, GalleryQuery, TagCount};
use atelier_engine::{ImageExport, JobEvent};
use serde::Serialize;
use tauri::State;
use tauri::ipc::{Channel, Request, Response};

use super::jobs::channel_sink;
use super::{blocking, project_header, raw_body};
use crate::error::CmdResult;
use crate::state::AppState;

/// An installed image model, or the reason its folder cannot be used.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ImageModelEntry {
    Ok(ImageModelInfo),
    Broken { id: String, error: String },
}

#[tauri::command]
pub async fn list_image_models(state: State<'_, AppState>) -> CmdResult<Vec<ImageModelEntry>> {
    Ok(state
        .engine()?
        .image_models()?
        .into_iter()
        .map(|m| match m {
            Ok(info) => ImageModelEntry::Ok(info),
            Err((id, error)) => ImageModelEntry::Broken { id, error },
        })
        .collect())
}

/// The ComfyUI server of the settings: version, devices and checkpoints (each becomes the
/// image model `comfyui:<name>`). Asked each time: the server's list changes.
#[tauri::command]
pub async fn comfyui_server(state: State<'_, AppState>) -> CmdResult<ComfyServerInfo> {
    Ok(state.engine()?.comfyui_server().await?)
}

/// Installs a diffusers folder the user names (validated first; copied, not moved).
#[tauri::command]
pub async fn import_image_model(
    state: State<'_, AppState>,
    path: String,
) -> CmdResult<ImageModelInfo> {
    let engine = state.engine()?;
    blocking(move || engine.import_image_model(std::path::Path::new(path.trim()), None)).await
}

/// Queues an image run; steps arrive as `Progress`, pictures as `Preview` events. Checking
/// the request reads the model's headers and decodes the source image and mask, so it runs
/// off the async runtime.
#[tauri::command]
pub async fn generate_image(
    state: State<'_, AppState>,
    project_id: i64,
    params: ImageParams,
    on_event: Channel<JobEvent>,
) -> CmdResult<i64> {
    let engine = state.engine()?;
    let sink = channel_sink(on_event);
    blocking(move || engine.generate_image(ImageJob { project_id, params }, Some(sink))).await
}

#[tauri::command]
pub async fn gallery(state: State<'_, AppState>, query: GalleryQuery) -> CmdResult<GalleryPage> {
    Ok(state.engine()?.store().gallery(&query)?)
}

/// A gallery file's bytes (the webview shows them through a blob: URL; no file access).
#[tauri::command]
pub async fn image_file(state: State<'_, AppState>, asset_id: i64) -> CmdResult<Response> {
    let engine = state.engine()?;
    Ok(Response::new(
        blocking(move || engine.asset_bytes(asset_id)).await?,
    ))
}

/// Every setting an image was made with (for "recall all").
#[tauri::command]
pub async fn image_record(
    state: State<'_, AppState>,
    generation_id: i64,
) -> CmdResult<ImageRecord> {
    Ok(state.engine()?.image_record(generation_id)?)
}

/// Reads the settings stored in a picture the user drops: a PNG (Atelier, A1111, ComfyUI,
/// InvokeAI) or a JPEG/WebP with A1111's EXIF parameters.
#[tauri::command]
pub async fn read_image_settings(request: Request<'_>) -> CmdResult<Recalled> {
    Ok(metadata::recall(raw_body(&request, "picture")?)?)
}

/// Keeps an image the user brings as an img2img source; the project is in the `project-id`
/// header.
#[tauri::command]
pub async fn add_source_image(
    state: State<'_, AppState>,
    request: Request<'_>,
) -> CmdResult<Asset> {
    let bytes = raw_body(&request, "image")?.to_vec();
    let project_id = project_header(&request)?;
    let engine = state.engine()?;
    blocking(move || engine.add_image_asset(project_id, &bytes)).await
}

#[tauri::command]
pub async fn trash_images(
    state: State<'_, AppState>,
    ids: Vec<i64>,
    trashed: bool,
) -> CmdResult<usize> {
    Ok(state.engine()?.store().set_images_trashed(&ids, trashed)?)
}

#[tauri::command]
pub async fn list_boards(state: State<'_, AppState>, project_id: i64) -> CmdResult<Vec<Board>> {
    Ok(state.engine()?.store().boards(project_id)?)
}

#[tauri::command]
pub async fn create_board(
    state: State<'_, AppState>,
    project_id: i64,
    name: String,
) -> CmdResult<Board> {
    Ok(state.engine()?.store().create_board(project_id, &name)?)
}

#[tauri::command]
pub async fn set_image_board(
    state: State<'_, AppState>,
    generation_id: i64,
    board_id: Option<i64>,
) -> CmdResult<()> {
    Ok(state
        .engine()?
        .store()
        .set_image_board(generation_id, board_id)?)
}

/// Replaces an image's tags; returns the image as the gallery shows it.
#[tauri::command]
pub async fn set_image_tags(
    state: State<'_, AppState>,
    generation_id: i64,
    tags: Vec<String>,
) -> CmdResult<GalleryImage> {
    Ok(state
        .engine()?
        .store()
        .set_image_tags(generation_id, &tags)?)
}

/// The tags used in a project's gallery, most used first.
#[tauri::command]
pub async fn list_image_tags(
    state: State<'_, AppState>,
    project_id: i64,
) -> CmdResult<Vec<TagCount>> {
    Ok(state.engine()?.store().image_tags(project_id)?)
}

/// Exports an image with the visible AI label (unless Settings turned labels off) and its
/// metadata into the exports folder; returns where it went.
#[tauri::command]
pub async fn export_image(
    state: State<'_, AppState>,
    generation_id: i64,
    label_text: Option<String>,
    corner: Corner,
    format: Option<ExportFormat>,
) -> CmdResult<ImageExport> {
    let engine = state.engine()?;
    let format = format.unwrap_or_default();
    blocking(move || engine.export_image(generation_id, label_text.as_deref(), corner, format))
        .await
}
