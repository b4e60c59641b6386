//! The desktop shell: Tauri wiring only. Domain logic is in `atelier-engine`.

mod commands;
mod error;
mod state;

pub use error::UiError;
pub use state::{AppState, AppStatus};

use atelier_engine::Home;
use tauri::Runtime;

/// Registers state and commands on a builder; shared by `run` and the mock-runtime tests.
pub fn builder<R: Runtime>(
    builder: tauri::Builder<R>,
    home: Result<Home, atelier_engine::Error>,
) -> tauri::Builder<R> {
    let tauri::async_runtime::RuntimeHandle::Tokio(runtime) = tauri::async_runtime::handle();
    builder
        .manage(AppState::open(home, runtime))
        .invoke_handler(tauri::generate_handler![
            commands::app::app_status,
            commands::app::retry_open,
            commands::app::start_new_database,
            commands::projects::list_projects,
            commands::projects::list_trash,
            commands::projects::create_project,
            commands::projects::rename_project,
            commands::projects::trash_project,
            commands::projects::restore_project,
            commands::projects::purge_project,
            commands::history::search_history,
            commands::history::get_generation,
            commands::history::star_generation,
            commands::history::rate_generation,
            commands::jobs::list_jobs,
            commands::jobs::cancel_job,
            commands::jobs::retry_job,
            commands::jobs::watch_jobs,
            commands::jobs::start_maintenance,
            commands::settings::get_settings,
            commands::settings::update_settings,
            commands::models::list_models,
            commands::models::import_model,
            commands::models::remove_model,
            commands::models::unload_model,
            commands::text::generate_text,
            commands::writing::check_text,
            commands::writing::compliance_packs,
            commands::writing::list_templates,
            commands::writing::export_text,
            commands::writing::generate_copy,
            commands::writing::get_brand_voice,
            commands::writing::set_brand_voice,
            commands::writing::save_copy_version,
            commands::writing::list_versions,
            commands::writing::restore_version,
            commands::writing::list_copy_documents,
            commands::writing::open_document,
            commands::writing::star_document,
            commands::writing::rename_document,
            commands::writing::clipboard_text,
            commands::writing::template_source,
            commands::writing::duplicate_template,
            commands::writing::save_template,
            commands::writing::delete_template,
            commands::writing::preview_template,
            commands::images::list_image_models,
            commands::images::import_image_model,
            commands::images::generate_image,
            commands::images::gallery,
            commands::images::image_file,
            commands::images::image_record,
            commands::images::read_image_settings,
            commands::images::add_source_image,
            commands::images::trash_images,
            commands::images::list_boards,
            commands::images::create_board,
            commands::images::set_image_board,
            commands::images::set_image_tags,
            commands::images::list_image_tags,
            commands::images::comfyui_server,
            commands::images::export_image,
            commands::scripts::list_products,
            commands::scripts::get_product,
            commands::scripts::save_product,
            commands::scripts::delete_product,
            commands::scripts::import_products_csv,
            commands::scripts::generate_script,
            commands::scripts::create_blank_script,
            commands::scripts::regenerate_segment,
            commands::scripts::generate_scripts_batch,
            commands::scripts::list_scripts,
            commands::scripts::get_script,
            commands::scripts::save_script,
            commands::scripts::export_script,
            commands::scripts::open_teleprompter,
            commands::scripts::teleprompter_script,
            commands::scripts::set_fullscreen,
        ])
}

/// The app's compiled-in configuration and capabilities.
pub fn context<R: Runtime>() -> tauri::Context<R> {
    tauri::generate_context!()
}

/// Logs go to stderr and, when the data folder is usable, to `logs/atelier.log` (the previous
/// file is kept as `atelier.log.1` once it passes 10 MB), so a user can attach it to a report.
fn init_logging(home: Option<&Home>) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,atelier=debug".into())
    };
    let file = home.and_then(|h| {
        let dir = h.logs_dir();
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join("atelier.log");
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 10 * 1024 * 1024) {
            let _ = std::fs::rename(&path, dir.join("atelier.log.1"));
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    match file {
        Some(f) => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// When `main` started, for the start-up time logged at the UI's first request.
static LAUNCHED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Milliseconds since `main` started, the first time it is asked (later calls: `None`).
pub(crate) fn first_request_ms() -> Option<u128> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut out = None;
    ONCE.call_once(|| out = LAUNCHED.get().map(|t| t.elapsed().as_millis()));
    out
}

pub fn run() {
    let _ = LAUNCHED.set(std::time::Instant::now());
    // WebKitGTK's DMA-BUF renderer shows a blank window on some desktops (NVIDIA, some VMs).
    if std::env::var_os("WEBKIT_DISABLE_DMABUF_RENDERER").is_none() {
        // SAFETY: first thing in main, before any thread exists.
        unsafe { std::env::set_var("WEBKIT_DISABLE_DMABUF_RENDERER", "1") };
    }
    let home = Home::resolve(None);
    // Before any thread starts: the model thread count from Settings (0 or unset: physical cores).
    let threads = home
        .as_ref()
        .ok()
        .and_then(|h| atelier_engine::store::peek_setting(&h.db_path(), "threads"))
        .and_then(|v| v.parse::<usize>().ok());
    // SAFETY: still single-threaded (only environment reads and one read-only SQLite query so far).
    unsafe { atelier_engine::text::local::configure_process_threads(threads) };
    init_logging(home.as_ref().ok());
    let app = builder(tauri::Builder::default(), home).build(context());
    match app {
        Ok(app) => app.run(|_, _| {}),
        Err(e) => {
            eprintln!("Atelier could not start: {e}");
            if std::env::var_os("DISPLAY").is_none()
                && std::env::var_os("WAYLAND_DISPLAY").is_none()
            {
                eprintln!(
                    "No display found. On a machine without a desktop, run it under a virtual one:\n  xvfb-run -a atelier"
                );
            }
            std::process::exit(1);
        }
    }
}
