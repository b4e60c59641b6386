//! Thin adapters: parse arguments, call the engine, map errors to `{kind, message}`.
//! No domain logic lives here.

pub mod app;
pub mod history;
pub mod images;
pub mod jobs;
pub mod models;
pub mod projects;
pub mod scripts;
pub mod settings;
pub mod text;
pub mod writing;

use tauri::ipc::{InvokeBody, Request};

use crate::error::{CmdResult, UiError};

/// Runs engine work that blocks (copying files, parsing, encoding images) off the async
/// runtime, so other commands keep answering meanwhile.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> atelier_engine::Result<T> + Send + 'static,
) -> CmdResult<T> {
    Ok(tauri::async_runtime::spawn_blocking(work)
        .await
        .map_err(|e| atelier_engine::Error::Internal(e.to_string()))??)
}

/// The bytes of a file the UI sends as the raw request body (never decoded on the way).
pub(crate) fn raw_body<'a>(request: &'a Request<'_>, what: &str) -> CmdResult<&'a [u8]> {
    match request.body() {
        InvokeBody::Raw(bytes) => Ok(bytes),
        _ => Err(UiError::new(
            "invalid_input",
            format!("send the {what}'s bytes as the request body"),
        )),
    }
}

/// The project a raw-body request is for, from its `project-id` header.
pub(crate) fn project_header(request: &Request<'_>) -> CmdResult<i64> {
    request
        .headers()
        .get("project-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| UiError::new("invalid_input", "the project-id header is missing"))
}
