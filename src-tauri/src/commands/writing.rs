//! Commands for copy: the compliance checker, the template catalogue and labelled exports.

use std::sync::Arc;

use atelier_engine::JobEvent;
use atelier_engine::compliance::{CheckOptions, PackInfo, PackProblem, Report};
use atelier_engine::export::Format;
use atelier_engine::store::{Document, DocumentKind, DocumentVersion, NewVersion, VersionSource};
use atelier_engine::writing::compose::CopyRequest;
use atelier_engine::writing::templates::{BrandVoice, Template, TemplateProblem};
use atelier_engine::writing::user_templates::TemplateSource;
use serde::Serialize;
use tauri::State;
use tauri::ipc::Channel;

use super::blocking;
use crate::error::CmdResult;
use crate::state::AppState;

/// Checks text for advertising-law and platform risks. Offsets come in UTF-16 units too, so
/// the editor can underline them directly.
#[tauri::command]
pub async fn check_text(
    state: State<'_, AppState>,
    text: String,
    options: Option<CheckOptions>,
) -> CmdResult<Report> {
    let checker = state.engine()?.checker()?;
    let options = options.unwrap_or_default();
    // Up to 16 MB of text: off the async runtime.
    blocking(move || checker.check(&text, &options)).await
}

#[derive(Serialize)]
pub struct PacksOverview {
    pub packs: Vec<PackInfo>,
    /// Pack files in the data folder that could not be used, and why.
    pub problems: Vec<PackProblem>,
    pub folder: String,
}

#[tauri::command]
pub async fn compliance_packs(state: State<'_, AppState>) -> CmdResult<PacksOverview> {
    let engine = state.engine()?;
    let checker = engine.checker()?;
    Ok(PacksOverview {
        packs: checker.packs(),
        problems: checker.problems.clone(),
        folder: engine.home().compliance_dir().display().to_string(),
    })
}

#[derive(Serialize)]
pub struct TemplatesOverview {
    pub templates: Vec<Template>,
    pub problems: Vec<TemplateProblem>,
    pub folder: String,
}

#[tauri::command]
pub async fn list_templates(state: State<'_, AppState>) -> CmdResult<TemplatesOverview> {
    let engine = state.engine()?;
    let (templates, problems) = engine.templates();
    Ok(TemplatesOverview {
        templates,
        problems,
        folder: engine.home().templates_dir().display().to_string(),
    })
}

/// Writes a labelled TXT, Markdown or DOCX file into the exports folder; returns its path.
#[tauri::command]
pub async fn export_text(
    state: State<'_, AppState>,
    body: String,
    title: String,
    format: Format,
) -> CmdResult<String> {
    let path = state.engine()?.export_text(&body, &title, format)?;
    Ok(path.display().to_string())
}

/// One variant's job event.
#[derive(Clone, Serialize)]
pub struct VariantEvent {
    /// 0-based.
    pub variant: u32,
    pub event: JobEvent,
}

/// Queues 1–4 variants of a template's copy; every variant's events come through `on_event`,
/// tagged with its index. Returns the job ids in variant order.
#[tauri::command]
pub async fn generate_copy(
    state: State<'_, AppState>,
    request: CopyRequest,
    on_event: Channel<VariantEvent>,
) -> CmdResult<Vec<i64>> {
    let on_event = Arc::new(on_event);
    let ids = state.engine()?.generate_copy(&request, |variant| {
        let ch = on_event.clone();
        Some(Arc::new(move |event| {
            if let Err(e) = ch.send(VariantEvent { variant, event }) {
                tracing::debug!(error = %e, "copy channel closed");
            }
        }))
    })?;
    Ok(ids)
}

#[tauri::command]
pub async fn get_brand_voice(state: State<'_, AppState>, project_id: i64) -> CmdResult<BrandVoice> {
    Ok(state.engine()?.brand_voice(project_id)?)
}

/// Saves the project's brand voice (used in every prompt of the project); returns it cleaned.
#[tauri::command]
pub async fn set_brand_voice(
    state: State<'_, AppState>,
    project_id: i64,
    voice: BrandVoice,
) -> CmdResult<BrandVoice> {
    Ok(state.engine()?.set_brand_voice(project_id, &voice)?)
}

/// Appends the editor's text as a new version of a copy document (created on the first save)
/// and returns the version. `generation_id` links a version taken from a variant.
#[tauri::command]
pub async fn save_copy_version(
    state: State<'_, AppState>,
    project_id: i64,
    document_id: Option<i64>,
    title: String,
    template_id: Option<String>,
    body: String,
    generation_id: Option<i64>,
) -> CmdResult<DocumentVersion> {
    let engine = state.engine()?;
    let store = engine.store();
    let document_id = match document_id {
        Some(id) => id,
        None => {
            store
                .create_document(
                    project_id,
                    DocumentKind::Copy,
                    &title,
                    template_id.as_deref(),
                )?
                .id
        }
    };
    let source = if generation_id.is_some() {
        VersionSource::Generation
    } else {
        VersionSource::Save
    };
    Ok(store.add_version(
        document_id,
        &NewVersion {
            body: &body,
            source,
            generation_id,
            note: "",
        },
    )?)
}

/// A document's versions, newest first.
#[tauri::command]
pub async fn list_versions(
    state: State<'_, AppState>,
    document_id: i64,
) -> CmdResult<Vec<DocumentVersion>> {
    Ok(state.engine()?.store().list_versions(document_id)?)
}

/// Makes an old version current by appending a copy of it (nothing is overwritten).
#[tauri::command]
pub async fn restore_version(
    state: State<'_, AppState>,
    version_id: i64,
) -> CmdResult<DocumentVersion> {
    Ok(state.engine()?.store().restore_version(version_id)?)
}

/// The project's copy documents, starred first, then most recently changed.
#[tauri::command]
pub async fn list_copy_documents(
    state: State<'_, AppState>,
    project_id: i64,
) -> CmdResult<Vec<Document>> {
    Ok(state
        .engine()?
        .store()
        .list_documents(project_id, DocumentKind::Copy)?)
}

#[derive(Serialize)]
pub struct OpenedDocument {
    pub document: Document,
    /// Newest first; the first is the current text.
    pub versions: Vec<DocumentVersion>,
}

/// A document with its versions, to open in the editor.
#[tauri::command]
pub async fn open_document(
    state: State<'_, AppState>,
    document_id: i64,
) -> CmdResult<OpenedDocument> {
    let engine = state.engine()?;
    let store = engine.store();
    Ok(OpenedDocument {
        document: store.document(document_id)?,
        versions: store.list_versions(document_id)?,
    })
}

#[tauri::command]
pub async fn star_document(
    state: State<'_, AppState>,
    document_id: i64,
    starred: bool,
) -> CmdResult<Document> {
    Ok(state
        .engine()?
        .store()
        .set_document_starred(document_id, starred)?)
}

#[tauri::command]
pub async fn rename_document(
    state: State<'_, AppState>,
    document_id: i64,
    title: String,
) -> CmdResult<Document> {
    Ok(state
        .engine()?
        .store()
        .rename_document(document_id, &title)?)
}

/// The text to put on the clipboard: labelled as Settings say (the UI writes it).
#[tauri::command]
pub async fn clipboard_text(state: State<'_, AppState>, body: String) -> CmdResult<String> {
    Ok(state.engine()?.clipboard_text(&body)?)
}

/// The TOML of a template, for viewing or editing.
#[tauri::command]
pub async fn template_source(state: State<'_, AppState>, id: String) -> CmdResult<TemplateSource> {
    Ok(state.engine()?.template_source(&id)?)
}

/// A copy of a template with a free id, ready to edit (not saved until `save_template`).
#[tauri::command]
pub async fn duplicate_template(
    state: State<'_, AppState>,
    id: String,
) -> CmdResult<TemplateSource> {
    Ok(state.engine()?.duplicate_template(&id)?)
}

/// Validates and saves one of the user's templates; `previous_id` when editing an existing one.
#[tauri::command]
pub async fn save_template(
    state: State<'_, AppState>,
    text: String,
    previous_id: Option<String>,
) -> CmdResult<Template> {
    Ok(state
        .engine()?
        .save_template(&text, previous_id.as_deref())?)
}

#[tauri::command]
pub async fn delete_template(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    Ok(state.engine()?.delete_template(&id)?)
}

/// The prompt a template's text renders with its sample values (shown while editing).
#[tauri::command]
pub async fn preview_template(text: String) -> CmdResult<String> {
    Ok(atelier_engine::writing::user_templates::preview(&text)?)
}
