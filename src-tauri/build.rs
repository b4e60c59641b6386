// Generates the ACL for our own commands (allow-<command>) and validates the capabilities in
// src-tauri/capabilities against it. A command missing here cannot be granted to any window.
const COMMANDS: &[&str] = &[
    "app_status",
    "retry_open",
    "start_new_database",
    "list_projects",
    "list_trash",
    "create_project",
    "rename_project",
    "trash_project",
    "restore_project",
    "purge_project",
    "search_history",
    "get_generation",
    "star_generation",
    "rate_generation",
    "list_jobs",
    "cancel_job",
    "retry_job",
    "watch_jobs",
    "start_maintenance",
    "get_settings",
    "update_settings",
    "list_models",
    "import_model",
    "remove_model",
    "unload_model",
    "generate_text",
    "check_text",
    "compliance_packs",
    "list_templates",
    "export_text",
    "generate_copy",
    "get_brand_voice",
    "set_brand_voice",
    "save_copy_version",
    "list_versions",
    "restore_version",
    "list_copy_documents",
    "open_document",
    "star_document",
    "rename_document",
    "clipboard_text",
    "template_source",
    "duplicate_template",
    "save_template",
    "delete_template",
    "preview_template",
];

fn main() {
    println!("cargo:rerun-if-changed=src-tauri/capabilities");
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .capabilities_path_pattern("./src-tauri/capabilities/**/*")
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri-build failed");
}
