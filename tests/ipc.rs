//! Every command through the real capabilities, on the mock runtime, against a real data folder.
//! The request URL is the one the Linux webview uses for the bundled UI.

use atelier_engine::Home;
use serde_json::{Value, json};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{INVOKE_KEY, MockRuntime, mock_builder};
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow, WebviewWindowBuilder};

const APP_URL: &str = "tauri://localhost";

struct Harness {
    _dir: tempfile::TempDir,
    _app: App<MockRuntime>,
    main: WebviewWindow<MockRuntime>,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let app = atelier_lib::builder(mock_builder(), Ok(Home::at(dir.path().join("home"))))
        .build(atelier_lib::context())
        .expect("app builds with the real context");
    let main = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    Harness {
        _dir: dir,
        _app: app,
        main,
    }
}

fn request(
    w: &WebviewWindow<MockRuntime>,
    url: &str,
    cmd: &str,
    body: InvokeBody,
    headers: tauri::http::HeaderMap,
) -> Result<Value, Value> {
    tauri::test::get_ipc_response(
        w,
        InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: url.parse().unwrap(),
            body,
            headers,
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| body.deserialize::<Value>().unwrap())
}

fn invoke_at(
    w: &WebviewWindow<MockRuntime>,
    url: &str,
    cmd: &str,
    args: Value,
) -> Result<Value, Value> {
    request(w, url, cmd, InvokeBody::Json(args), Default::default())
}

fn invoke(h: &Harness, cmd: &str, args: Value) -> Result<Value, Value> {
    invoke_at(&h.main, APP_URL, cmd, args)
}

fn kind(err: Value) -> String {
    err["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("not a {{kind, message}} error: {err}"))
        .to_owned()
}

#[test]
fn project_lifecycle_through_the_main_window() {
    let h = harness();
    let status = invoke(&h, "app_status", json!({})).unwrap();
    assert!(status["error"].is_null(), "{status}");
    assert!(status["data_dir"].as_str().unwrap().ends_with("home"));

    let p = invoke(&h, "create_project", json!({"name": "  直播专场  "})).unwrap();
    assert_eq!(p["name"], "直播专场");
    let id = p["id"].as_i64().unwrap();
    assert_eq!(
        invoke(&h, "list_projects", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        invoke(&h, "rename_project", json!({"id": id, "name": "618 专场"})).unwrap()["name"],
        "618 专场"
    );

    assert_eq!(
        kind(invoke(&h, "create_project", json!({"name": ""})).unwrap_err()),
        "invalid_input"
    );
    assert_eq!(
        kind(invoke(&h, "create_project", json!({"name": "名".repeat(500)})).unwrap_err()),
        "invalid_input"
    );
    assert_eq!(
        kind(invoke(&h, "purge_project", json!({"id": id})).unwrap_err()),
        "conflict",
        "purge only from trash"
    );

    invoke(&h, "trash_project", json!({"id": id})).unwrap();
    assert!(
        invoke(&h, "list_projects", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(invoke(&h, "list_trash", json!({})).unwrap()[0]["id"], id);
    invoke(&h, "restore_project", json!({"id": id})).unwrap();
    invoke(&h, "trash_project", json!({"id": id})).unwrap();
    assert_eq!(
        invoke(&h, "purge_project", json!({"id": id})).unwrap(),
        json!(0)
    );
    assert!(
        invoke(&h, "list_trash", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn history_jobs_and_settings_commands() {
    let h = harness();
    let page = invoke(
        &h,
        "search_history",
        json!({"query": {"text": "口红", "limit": 20}}),
    )
    .unwrap();
    assert_eq!(page["items"], json!([]));
    assert!(page["next_before"].is_null());
    assert_eq!(
        kind(invoke(&h, "search_history", json!({"query": {"limit": 9999}})).unwrap_err()),
        "invalid_input"
    );
    assert_eq!(
        kind(invoke(&h, "get_generation", json!({"id": 1})).unwrap_err()),
        "not_found"
    );
    assert_eq!(
        kind(invoke(&h, "star_generation", json!({"id": 1, "starred": true})).unwrap_err()),
        "not_found"
    );
    assert_eq!(
        kind(invoke(&h, "rate_generation", json!({"id": 1, "rating": 1})).unwrap_err()),
        "not_found"
    );

    let settings = invoke(&h, "get_settings", json!({})).unwrap();
    assert_eq!(settings["language"], "zh-CN");
    let s = invoke(
        &h,
        "update_settings",
        json!({"patch": {"language": "en", "theme": "dark"}}),
    )
    .unwrap();
    assert_eq!(
        (s["language"].as_str(), s["theme"].as_str()),
        (Some("en"), Some("dark"))
    );
    assert_eq!(
        kind(invoke(&h, "update_settings", json!({"patch": {"language": "xx"}})).unwrap_err()),
        "invalid_input"
    );

    // A job through a channel argument; its end is visible in the job list.
    let job = invoke(&h, "start_maintenance", json!({"onEvent": "__CHANNEL__:7"})).unwrap();
    let job_id = job.as_i64().unwrap();
    let mut status = String::new();
    for _ in 0..200 {
        let jobs = invoke(&h, "list_jobs", json!({})).unwrap();
        status = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job_id)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "succeeded" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status, "succeeded");
    assert_eq!(
        invoke(&h, "cancel_job", json!({"id": job_id})).unwrap(),
        json!(false),
        "already finished"
    );
    assert_eq!(
        kind(invoke(&h, "cancel_job", json!({"id": 999})).unwrap_err()),
        "not_found"
    );
    assert_eq!(
        kind(
            invoke(
                &h,
                "retry_job",
                json!({"id": job_id, "onEvent": "__CHANNEL__:8"})
            )
            .unwrap_err()
        ),
        "conflict"
    );
    invoke(&h, "watch_jobs", json!({"onUpdate": "__CHANNEL__:9"})).unwrap();
    assert_eq!(
        kind(invoke(&h, "start_new_database", json!({})).unwrap_err()),
        "conflict",
        "only for a damaged file"
    );
    assert!(invoke(&h, "retry_open", json!({})).unwrap()["error"].is_null());
}

#[test]
fn a_window_without_a_capability_is_refused() {
    let h = harness();
    let other = WebviewWindowBuilder::new(&h._app, "other", Default::default())
        .build()
        .unwrap();
    let err = invoke_at(&other, APP_URL, "list_projects", json!({})).unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    let err = invoke_at(&other, APP_URL, "create_project", json!({"name": "x"})).unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    // Nothing was created by the refused call.
    assert!(
        invoke(&h, "list_projects", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_remote_page_in_the_main_window_is_refused() {
    let h = harness();
    let err = invoke_at(&h.main, "https://evil.example", "list_projects", json!({})).unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
}

#[test]
fn core_plugins_are_not_granted() {
    let h = harness();
    // The capability lists only our commands: even harmless core commands are refused.
    let err = invoke(&h, "plugin:app|version", json!({})).unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
}

#[test]
fn a_corrupt_database_opens_in_a_recoverable_error_state() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("atelier.db"), b"garbage, not sqlite ".repeat(100)).unwrap();
    let app = atelier_lib::builder(mock_builder(), Ok(Home::at(&home)))
        .build(atelier_lib::context())
        .unwrap();
    let w = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let status = invoke_at(&w, APP_URL, "app_status", json!({})).unwrap();
    assert_eq!(status["error"]["kind"], "corrupt_database");
    assert_eq!(
        kind(invoke_at(&w, APP_URL, "list_projects", json!({})).unwrap_err()),
        "not_ready"
    );

    let kept = invoke_at(&w, APP_URL, "start_new_database", json!({})).unwrap();
    let kept = std::path::PathBuf::from(kept.as_str().unwrap());
    assert!(
        kept.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("atelier.db.damaged-")
    );
    assert!(
        std::fs::read(&kept).unwrap().starts_with(b"garbage"),
        "the old file is kept as it was"
    );
    assert!(invoke_at(&w, APP_URL, "app_status", json!({})).unwrap()["error"].is_null());
    invoke_at(&w, APP_URL, "create_project", json!({"name": "重新开始"})).unwrap();
}

#[test]
fn a_second_instance_on_the_same_folder_reports_already_running() {
    let first = harness();
    let home = first._dir.path().join("home");
    let app = atelier_lib::builder(mock_builder(), Ok(Home::at(&home)))
        .build(atelier_lib::context())
        .unwrap();
    let w = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let status = invoke_at(&w, APP_URL, "app_status", json!({})).unwrap();
    assert_eq!(status["error"]["kind"], "already_running");
    // The first instance is unaffected.
    invoke(&first, "create_project", json!({"name": "仍可用"})).unwrap();
}

#[test]
fn an_unwritable_data_folder_is_reported_and_retry_recovers_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    // The data folder's parent is a file: the folder cannot be created.
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, b"a file where a folder should be").unwrap();
    let home = blocker.join("atelier");
    let app = atelier_lib::builder(mock_builder(), Ok(Home::at(&home)))
        .build(atelier_lib::context())
        .unwrap();
    let w = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let status = invoke_at(&w, APP_URL, "app_status", json!({})).unwrap();
    assert_eq!(status["error"]["kind"], "read_only");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked"),
        "{status}"
    );
    assert_eq!(
        kind(invoke_at(&w, APP_URL, "create_project", json!({"name": "x"})).unwrap_err()),
        "not_ready"
    );
    assert_eq!(
        invoke_at(&w, APP_URL, "retry_open", json!({})).unwrap()["error"]["kind"],
        "read_only"
    );

    // The user fixes it; retry opens the folder without restarting the app.
    std::fs::remove_file(&blocker).unwrap();
    assert!(invoke_at(&w, APP_URL, "retry_open", json!({})).unwrap()["error"].is_null());
    invoke_at(&w, APP_URL, "create_project", json!({"name": "修好了"})).unwrap();
}

#[test]
fn models_and_remote_settings_through_the_main_window() {
    let h = harness();
    let overview = invoke(&h, "list_models", json!({})).unwrap();
    assert_eq!(overview["models"].as_array().unwrap().len(), 0);
    assert!(overview["models_dir"].as_str().unwrap().ends_with("models"));
    assert!(overview["default_threads"].as_u64().unwrap() >= 1);
    // The API key is stored but never comes back to the webview.
    let s = invoke(&h, "update_settings", json!({"patch": {"remote_base_url": "http://127.0.0.1:9/v1", "remote_api_key": "sk-hidden"}})).unwrap();
    assert_eq!(s["remote_api_key_set"], true);
    assert!(!s.to_string().contains("sk-hidden"));
    let err = invoke(&h, "update_settings", json!({"patch": {"threads": 9999}})).unwrap_err();
    assert_eq!(kind(err), "invalid_input");
    let err = invoke(
        &h,
        "import_model",
        json!({"path": "/nonexistent/model.gguf"}),
    )
    .unwrap_err();
    assert_eq!(kind(err), "invalid_input");
    let err = invoke(&h, "remove_model", json!({"id": "nothing"})).unwrap_err();
    assert_eq!(kind(err), "invalid_input");
    // ComfyUI: none set up is a clear error; a server that is down says it cannot be reached.
    let err = invoke(&h, "comfyui_server", json!({})).unwrap_err();
    assert_eq!(kind(err), "invalid_input");
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", down.local_addr().unwrap());
    drop(down);
    let s = invoke(
        &h,
        "update_settings",
        json!({"patch": {"comfyui_url": url}}),
    )
    .unwrap();
    assert_eq!(s["comfyui_url"], url);
    let err = invoke(&h, "comfyui_server", json!({})).unwrap_err();
    assert_eq!(kind(err), "remote_unreachable");
    let err = invoke(
        &h,
        "update_settings",
        json!({"patch": {"comfyui_url": "ftp://x"}}),
    )
    .unwrap_err();
    assert_eq!(kind(err), "invalid_input");
}

#[test]
fn copy_commands_check_list_templates_and_export_labelled_files() {
    let h = harness();
    let report = invoke(
        &h,
        "check_text",
        json!({"text": "🎉全网最低价！加微信", "options": {"platform": "douyin"}}),
    )
    .unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2);
    // UTF-16 offsets for the editor: the emoji is two units.
    assert_eq!(
        (
            findings[0]["start"].as_u64(),
            findings[0]["start_utf16"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(findings[1]["rule"], "H1");
    assert_eq!(
        kind(
            invoke(
                &h,
                "check_text",
                json!({"text": "x", "options": {"platform": "myspace"}})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );

    let packs = invoke(&h, "compliance_packs", json!({})).unwrap();
    assert!(
        packs["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "base" && p["last_reviewed"].is_string())
    );

    let t = invoke(&h, "list_templates", json!({})).unwrap();
    assert!(t["templates"].as_array().unwrap().len() >= 24);
    assert_eq!(t["problems"], json!([]));

    let path = invoke(
        &h,
        "export_text",
        json!({"body": "# 标题\n正文", "title": "新品", "format": "md"}),
    )
    .unwrap();
    let md = std::fs::read_to_string(path.as_str().unwrap()).unwrap();
    assert!(md.starts_with("---\nAIGC: {\"Label\":\"1\""), "{md}");
    assert!(md.contains("人工智能生成"));
    assert_eq!(
        kind(
            invoke(
                &h,
                "export_text",
                json!({"body": "", "title": "t", "format": "md"})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );
    assert!(
        invoke(
            &h,
            "export_text",
            json!({"body": "x", "title": "t", "format": "exe"})
        )
        .is_err()
    );

    // Copy requests are validated before anything is queued (no model is installed here).
    let p = invoke(&h, "create_project", json!({"name": "文案"})).unwrap();
    let req = json!({"project_id": p["id"], "template_id": "slogan", "values": {"product": "保温杯"}, "model": "none", "variants": 9});
    assert_eq!(
        kind(
            invoke(
                &h,
                "generate_copy",
                json!({"request": req, "onEvent": "__CHANNEL__:9"})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );

    // The project's brand voice round-trips, cleaned; an oversized one is refused.
    let v = invoke(&h, "set_brand_voice", json!({"projectId": p["id"], "voice": {"tone_words": [" 温柔 ", ""], "must_mention": ["水润"]}})).unwrap();
    assert_eq!(v["tone_words"], json!(["温柔"]));
    assert_eq!(
        invoke(&h, "get_brand_voice", json!({"projectId": p["id"]})).unwrap(),
        v
    );
    let big = json!({"projectId": p["id"], "voice": {"examples": ["a", "b", "c", "d"]}});
    assert_eq!(
        kind(invoke(&h, "set_brand_voice", big).unwrap_err()),
        "invalid_input"
    );

    // The editor's text is saved as versions of a copy document; restoring appends a copy.
    let v1 = invoke(&h, "save_copy_version", json!({"projectId": p["id"], "documentId": null, "title": "保温杯", "templateId": "slogan", "body": "第一版", "generationId": null})).unwrap();
    let doc = v1["document_id"].clone();
    let v2 = invoke(&h, "save_copy_version", json!({"projectId": p["id"], "documentId": doc, "title": "保温杯", "templateId": "slogan", "body": "第二版", "generationId": null})).unwrap();
    assert_eq!(
        (v1["number"].as_i64(), v2["number"].as_i64()),
        (Some(1), Some(2))
    );
    let v3 = invoke(&h, "restore_version", json!({"versionId": v1["id"]})).unwrap();
    assert_eq!(
        (
            v3["number"].as_i64(),
            v3["body"].as_str(),
            v3["source"].as_str()
        ),
        (Some(3), Some("第一版"), Some("restore"))
    );
    let all = invoke(&h, "list_versions", json!({"documentId": doc})).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);

    // Documents list, star and rename; opening one brings its versions.
    let docs = invoke(&h, "list_copy_documents", json!({"projectId": p["id"]})).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 1);
    let starred = invoke(
        &h,
        "star_document",
        json!({"documentId": doc, "starred": true}),
    )
    .unwrap();
    assert_eq!(starred["starred"], true);
    assert_eq!(
        invoke(
            &h,
            "rename_document",
            json!({"documentId": doc, "title": "保温杯 · 定稿"})
        )
        .unwrap()["title"],
        "保温杯 · 定稿"
    );
    let opened = invoke(&h, "open_document", json!({"documentId": doc})).unwrap();
    assert_eq!(opened["versions"][0]["body"], "第一版");
    assert_eq!(opened["document"]["starred"], true);
    assert_eq!(
        kind(invoke(&h, "open_document", json!({"documentId": 4242})).unwrap_err()),
        "not_found"
    );

    // The clipboard gets the text with the notice.
    let clip = invoke(
        &h,
        "clipboard_text",
        json!({"body": "保温杯，12 小时保温。"}),
    )
    .unwrap();
    assert!(
        clip.as_str().unwrap().contains("人工智能生成")
            && clip.as_str().unwrap().contains("12 小时保温"),
        "{clip}"
    );
    assert_eq!(
        kind(invoke(&h, "clipboard_text", json!({"body": "  "})).unwrap_err()),
        "invalid_input"
    );

    // A template is duplicated, edited and saved as the user's own; a broken edit is refused.
    let copy = invoke(&h, "duplicate_template", json!({"id": "slogan"})).unwrap();
    assert_eq!(copy["id"], "slogan-copy");
    let text = copy["text"]
        .as_str()
        .unwrap()
        .replace("（副本）", "（我的）");
    let saved = invoke(
        &h,
        "save_template",
        json!({"text": text, "previousId": null}),
    )
    .unwrap();
    assert!(saved["name_zh"].as_str().unwrap().ends_with("（我的）"));
    let listed = invoke(&h, "list_templates", json!({})).unwrap();
    assert!(
        listed["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "slogan-copy")
    );
    assert_eq!(
        invoke(&h, "template_source", json!({"id": "slogan-copy"})).unwrap()["user"],
        true
    );
    let broken = text.replace("group = \"", "group = \"zz");
    assert_eq!(
        kind(
            invoke(
                &h,
                "save_template",
                json!({"text": broken, "previousId": "slogan-copy"})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );
    assert!(
        invoke(&h, "preview_template", json!({"text": text}))
            .unwrap()
            .as_str()
            .unwrap()
            .len()
            > 20
    );
    invoke(&h, "delete_template", json!({"id": "slogan-copy"})).unwrap();
    assert_eq!(
        kind(invoke(&h, "delete_template", json!({"id": "slogan"})).unwrap_err()),
        "invalid_input"
    );

    // Turning the explicit label off needs the acknowledgement.
    assert_eq!(
        kind(
            invoke(
                &h,
                "update_settings",
                json!({"patch": {"label_explicit": false}})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );
    let s = invoke(
        &h,
        "update_settings",
        json!({"patch": {"label_explicit": false, "acknowledge_unlabelled": true}}),
    )
    .unwrap();
    assert_eq!(s["label_explicit"], false);
}

fn invoke_raw(
    w: &WebviewWindow<MockRuntime>,
    cmd: &str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Result<Value, Value> {
    let mut map = tauri::http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, v.parse().unwrap());
    }
    request(w, APP_URL, cmd, InvokeBody::Raw(body), map)
}

fn flask() -> Value {
    json!({
        "name": "  真空保温杯 500ml ",
        "category": "food",
        "selling_points": [{"feature": "316 不锈钢内胆", "benefit": "泡茶不串味"}],
        "daily_price": 199.0, "live_price": 129.0, "price_basis": "前 30 日最低成交价",
        "stock": 500, "link_no": 3
    })
}

#[test]
fn live_script_commands_products_scripts_exports_and_the_teleprompter_window() {
    let h = harness();
    let project = invoke(&h, "create_project", json!({"name": "直播"})).unwrap()["id"]
        .as_i64()
        .unwrap();

    // Products: saved normalised, listed, refused with the reason, deleted.
    let p = invoke(
        &h,
        "save_product",
        json!({"projectId": project, "product": flask()}),
    )
    .unwrap();
    assert_eq!(p["name"], "真空保温杯 500ml");
    let pid = p["id"].as_i64().unwrap();
    assert_eq!(
        invoke(&h, "get_product", json!({"id": pid})).unwrap()["product"]["link_no"],
        3
    );
    let mut no_basis = flask();
    no_basis["price_basis"] = json!("");
    assert_eq!(
        kind(
            invoke(
                &h,
                "save_product",
                json!({"projectId": project, "product": no_basis})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );

    // CSV import: the raw bytes (GB18030 here) with the project in a header; bad rows listed.
    let csv = "name,selling_points,live_price\n羊毛围巾,柔软>不扎,89\n,x,1\n";
    let (gb, _, _) = encoding_rs::GB18030.encode(csv);
    let report = invoke_raw(
        &h.main,
        "import_products_csv",
        gb.into_owned(),
        &[("project-id", project.to_string())],
    )
    .unwrap();
    assert_eq!(
        (report["imported"].as_u64(), report["encoding"].as_str()),
        (Some(1), Some("gb18030"))
    );
    assert_eq!(report["errors"][0]["row"], 3);
    assert_eq!(report["errors"][0]["column"], "name");
    assert_eq!(
        kind(invoke_raw(&h.main, "import_products_csv", b"name\n".to_vec(), &[]).unwrap_err()),
        "invalid_input"
    );
    let listed = invoke(
        &h,
        "list_products",
        json!({"projectId": project, "query": "围巾"}),
    )
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Generation needs an installed model: refused before anything is queued.
    let request = json!({"project_id": project, "kind": "product", "products": [{"product": flask()}], "model": "smollm2-135m-instruct"});
    let err = invoke(
        &h,
        "generate_script",
        json!({"request": request, "onEvent": "__CHANNEL__:3"}),
    )
    .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("no model"),
        "{err}"
    );
    let bad = json!({"project_id": project, "kind": "product", "products": [], "model": "x"});
    assert_eq!(
        kind(
            invoke(
                &h,
                "generate_script",
                json!({"request": bad, "onEvent": "__CHANNEL__:4"})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );

    // A blank script: the skeleton's segments and cues, no lines, no model.
    let blank = invoke(&h, "create_blank_script", json!({"request": {"project_id": project, "kind": "product", "products": [{"product": flask()}], "model": ""}})).unwrap();
    let segs = blank["script"]["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 7);
    assert!(
        segs.iter()
            .all(|s| s["status"] == "placeholder" && s["host"].as_array().unwrap().is_empty())
    );
    assert_eq!(blank["document"]["title"], "真空保温杯 500ml");

    // A script typed by hand: saved as a version, lines checked, exported with labels.
    let state = h._app.state::<atelier_lib::AppState>();
    let engine = state.engine().unwrap();
    let doc = engine
        .store()
        .create_document(
            project,
            atelier_engine::store::DocumentKind::Script,
            "手写脚本",
            None,
        )
        .unwrap()
        .id;
    let script = json!({
        "schema_version": 1, "kind": "product", "title": "手写脚本",
        "show": {"slot_min": 1, "virtual_host": true, "tempo": "standard", "language": "zh"},
        "products": [{"product": flask()}],
        "segments": [{"kind": "offer", "product": 0, "start_secs": 0, "target_secs": 30, "est_secs": 0,
            "host": [{"text": "全网最低价，只要 99 元！", "est_secs": 0}], "cues": [], "status": "placeholder"}]
    });
    let view = invoke(
        &h,
        "save_script",
        json!({"documentId": doc, "script": script}),
    )
    .unwrap();
    let line = &view["script"]["segments"][0]["host"][0];
    assert_eq!(view["script"]["segments"][0]["status"], "written");
    assert_eq!(line["unknown_numbers"][0]["text"], "99 元");
    assert!(
        line["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["matched"].as_str().unwrap().contains("最低价"))
    );
    assert_eq!(
        invoke(&h, "list_scripts", json!({"projectId": project})).unwrap()[0]["id"],
        doc
    );
    assert_eq!(
        invoke(&h, "get_script", json!({"documentId": doc})).unwrap()["version_number"],
        1
    );
    let path = invoke(
        &h,
        "export_script",
        json!({"documentId": doc, "format": "srt"}),
    )
    .unwrap();
    let srt = std::fs::read_to_string(path.as_str().unwrap()).unwrap();
    assert!(
        srt.contains("人工智能") && srt.contains("虚拟主播"),
        "{srt}"
    );
    let mut huge = script.clone();
    huge["segments"][0]["host"][0]["text"] = json!("长".repeat(5000));
    assert_eq!(
        kind(
            invoke(
                &h,
                "save_script",
                json!({"documentId": doc, "script": huge})
            )
            .unwrap_err()
        ),
        "invalid_input"
    );
    assert_eq!(
        invoke(&h, "regenerate_segment", json!({"request": {"document_id": doc, "segment": 5, "model": "x"}, "onEvent": "__CHANNEL__:5"}))
            .map_err(kind)
            .unwrap_err(),
        "invalid_input"
    );

    // The teleprompter window reads the one script it was opened for, and nothing else.
    invoke(&h, "open_teleprompter", json!({"documentId": doc})).unwrap();
    let tp = h
        ._app
        .get_webview_window("teleprompter")
        .expect("the window opened");
    let shown = invoke_at(&tp, APP_URL, "teleprompter_script", json!({})).unwrap();
    assert_eq!(shown["document"]["id"], doc);
    for (cmd, args) in [
        ("list_projects", json!({})),
        ("get_script", json!({"documentId": doc})),
        ("save_script", json!({"documentId": doc, "script": script})),
        ("export_script", json!({"documentId": doc, "format": "txt"})),
    ] {
        let err = invoke_at(&tp, APP_URL, cmd, args).unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{cmd}: {err}");
    }
    // …and the main window cannot use the teleprompter's own command.
    assert!(
        invoke(&h, "teleprompter_script", json!({}))
            .unwrap_err()
            .to_string()
            .contains("not allowed")
    );
    assert_eq!(
        kind(invoke(&h, "open_teleprompter", json!({"documentId": 9999})).unwrap_err()),
        "not_found"
    );
}

/// A command's raw (non-JSON) response body, e.g. an image file.
fn invoke_bytes(h: &Harness, cmd: &str, args: Value) -> Result<Vec<u8>, Value> {
    tauri::test::get_ipc_response(
        &h.main,
        InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: APP_URL.parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| match body {
        tauri::ipc::InvokeResponseBody::Raw(bytes) => bytes,
        tauri::ipc::InvokeResponseBody::Json(json) => json.into_bytes(),
    })
}

fn wait_for_job(h: &Harness, job_id: i64) -> Value {
    for _ in 0..1500 {
        let jobs = invoke(h, "list_jobs", json!({})).unwrap();
        let job = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job_id)
            .cloned()
            .unwrap();
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("job {job_id} did not finish");
}

#[test]
fn image_commands_models_generation_gallery_recall_and_export() {
    let h = harness();
    let project = invoke(&h, "create_project", json!({"name": "图像"})).unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        invoke(&h, "list_image_models", json!({})).unwrap(),
        json!([])
    );
    let src = h._dir.path().join("incoming").join("tiny-sd");
    atelier_engine::image::random::write_random_model(
        &src,
        atelier_engine::image::random::Arch::Tiny,
    )
    .unwrap();
    let info = invoke(&h, "import_image_model", json!({"path": src})).unwrap();
    assert_eq!(
        (info["id"].as_str(), info["family"].as_str()),
        (Some("tiny-sd"), Some("custom"))
    );
    let listed = invoke(&h, "list_image_models", json!({})).unwrap();
    assert_eq!(listed[0]["status"], "ok");
    assert_eq!(listed[0]["pieces"].as_array().unwrap().len(), 3);
    assert_eq!(
        kind(invoke(&h, "import_image_model", json!({"path": "/nowhere/at/all"})).unwrap_err()),
        "invalid_input"
    );

    let params = json!({
        "model": "tiny-sd", "prompt": "一只红苹果", "negative_prompt": "", "width": 64, "height": 64,
        "steps": 3, "cfg_scale": 5.0, "scheduler": "euler_ancestral", "seed": 5, "batch_count": 2
    });
    let job = invoke(
        &h,
        "generate_image",
        json!({"projectId": project, "params": params, "onEvent": "__CHANNEL__:11"}),
    )
    .unwrap();
    assert_eq!(
        wait_for_job(&h, job.as_i64().unwrap())["status"],
        "succeeded"
    );
    let mut bad = params.clone();
    bad["width"] = json!(100);
    let err = invoke(
        &h,
        "generate_image",
        json!({"projectId": project, "params": bad, "onEvent": "__CHANNEL__:12"}),
    )
    .unwrap_err();
    assert_eq!(kind(err.clone()), "invalid_input");
    assert!(
        err["message"].as_str().unwrap().contains("multiple of 8"),
        "{err}"
    );

    let page = invoke(&h, "gallery", json!({"query": {"project_id": project}})).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let newest = &items[0];
    let gen_id = newest["generation_id"].as_i64().unwrap();
    assert_eq!(newest["seed"], 6);
    let png = invoke_bytes(&h, "image_file", json!({"assetId": newest["asset_id"]})).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // The record recalls every setting; the PNG's own chunks say the same when dropped back in.
    let record = invoke(&h, "image_record", json!({"generationId": gen_id})).unwrap();
    assert_eq!(record["params"]["scheduler"], "euler_ancestral");
    assert_eq!(record["params"]["seed"], 6);
    let read = invoke_raw(&h.main, "read_image_settings", png.clone(), &[]).unwrap();
    assert_eq!(
        (read["source"].as_str(), read["seed"].as_u64()),
        (Some("atelier"), Some(6))
    );
    assert_eq!(
        kind(invoke_raw(&h.main, "read_image_settings", b"not a png".to_vec(), &[]).unwrap_err()),
        "invalid_input"
    );

    // A source image for img2img: kept as an asset; a non-image or a missing project is refused.
    let asset = invoke_raw(
        &h.main,
        "add_source_image",
        png.clone(),
        &[("project-id", project.to_string())],
    )
    .unwrap();
    assert_eq!(asset["mime"], "image/png");
    assert_eq!(
        kind(
            invoke_raw(
                &h.main,
                "add_source_image",
                b"plain text".to_vec(),
                &[("project-id", project.to_string())]
            )
            .unwrap_err()
        ),
        "invalid_input"
    );
    assert_eq!(
        kind(invoke_raw(&h.main, "add_source_image", png, &[]).unwrap_err()),
        "invalid_input"
    );

    // Boards, trash and the labelled export.
    let board = invoke(
        &h,
        "create_board",
        json!({"projectId": project, "name": "主图"}),
    )
    .unwrap();
    invoke(
        &h,
        "set_image_board",
        json!({"generationId": gen_id, "boardId": board["id"]}),
    )
    .unwrap();
    let boards = invoke(&h, "list_boards", json!({"projectId": project})).unwrap();
    assert_eq!(boards[0]["image_count"], 1);
    let tagged = invoke(
        &h,
        "set_image_tags",
        json!({"generationId": gen_id, "tags": ["主图", " 双十一  首页 "]}),
    )
    .unwrap();
    assert_eq!(tagged["tags"], json!(["主图", "双十一 首页"]));
    let tags = invoke(&h, "list_image_tags", json!({"projectId": project})).unwrap();
    assert_eq!(tags[0]["image_count"], 1);
    let page = invoke(
        &h,
        "gallery",
        json!({"query": {"project_id": project, "tag": "主图"}}),
    )
    .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let out = invoke(
        &h,
        "export_image",
        json!({"generationId": gen_id, "labelText": "AI生成", "corner": "top_right"}),
    )
    .unwrap();
    assert!(out["visible_label"]["text_height"].as_u64().unwrap() >= 4);
    assert!(std::path::Path::new(out["path"].as_str().unwrap()).is_file());
    // An unknown corner never reaches the engine: Tauri refuses the argument, naming it.
    let err = invoke(
        &h,
        "export_image",
        json!({"generationId": gen_id, "labelText": "AI生成", "corner": "middle"}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("corner"), "{err}");
    assert_eq!(
        invoke(
            &h,
            "trash_images",
            json!({"ids": [gen_id], "trashed": true})
        )
        .unwrap(),
        1
    );
    let trash = invoke(
        &h,
        "gallery",
        json!({"query": {"project_id": project, "trash": true}}),
    )
    .unwrap();
    assert_eq!(trash["items"].as_array().unwrap().len(), 1);
}
