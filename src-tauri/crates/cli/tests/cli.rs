//! The real `atelier-cli` binary against a temp data folder.

use std::process::{Command, Output};

fn cli(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atelier-cli"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("ATELIER_HOME")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn projects_round_trip_with_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let p = json(&cli(home, &["--json", "projects", "create", "直播 618"]));
    let id = p["id"].as_i64().unwrap().to_string();
    assert_eq!(p["name"], "直播 618");
    assert_eq!(
        json(&cli(
            home,
            &["--json", "projects", "rename", &id, "直播 双十一"]
        ))["name"],
        "直播 双十一"
    );
    json(&cli(home, &["--json", "projects", "delete", &id]));
    assert_eq!(
        json(&cli(home, &["--json", "projects", "list"])),
        serde_json::json!([])
    );
    assert_eq!(
        json(&cli(home, &["--json", "projects", "list", "--trash"]))[0]["id"]
            .as_i64()
            .unwrap()
            .to_string(),
        id
    );
    json(&cli(home, &["--json", "projects", "restore", &id]));
    assert_eq!(
        json(&cli(home, &["--json", "projects", "list"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        json(&cli(home, &["--json", "history", "search", "口红"])),
        serde_json::json!([])
    );
    assert_eq!(
        json(&cli(home, &["--json", "jobs", "list"])),
        serde_json::json!([])
    );
}

#[test]
fn failures_print_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["projects", "create", "   "]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error[invalid_input]: "), "{err}");

    let out = cli(dir.path(), &["--json", "projects", "rename", "42", "x"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"]["kind"], "not_found");

    let long = "名".repeat(500);
    let out = cli(dir.path(), &["projects", "create", &long]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("500"));
}

#[test]
fn a_corrupt_database_is_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("atelier.db");
    std::fs::write(&db, b"definitely not sqlite".repeat(100)).unwrap();
    let out = cli(dir.path(), &["projects", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error[corrupt_database]: "), "{err}");
    assert!(
        std::fs::read(&db)
            .unwrap()
            .starts_with(b"definitely not sqlite")
    );
}

#[test]
fn a_process_killed_mid_write_leaves_a_consistent_file_and_recovery_marks_what_it_left() {
    use atelier_engine::store::{GenerationStatus, HistoryQuery};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("atelier.db");
    // The benchmark writes generations as fast as it can through the real store; SIGKILL it
    // part-way, as a crash or `kill -9` would.
    let mut child = Command::new(env!("CARGO_BIN_EXE_atelier-cli"))
        .args(["bench", "store", "--rows", "1000000", "--reuse"])
        .arg(&db)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Wait until rows are being written, then kill without warning.
    while std::fs::metadata(dir.path().join("atelier.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0)
        < 512 * 1024
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never got going"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = atelier_engine::Store::open(&db).unwrap();
    store
        .quick_check()
        .expect("the file is intact after a kill");
    let page = store
        .history(&HistoryQuery {
            limit: 500,
            ..Default::default()
        })
        .unwrap();
    assert!(!page.items.is_empty(), "committed rows survived");
    assert!(page.items.iter().all(|g| matches!(
        g.status,
        GenerationStatus::Succeeded | GenerationStatus::Running
    )));
    drop(store);

    // Opening as the app does (with the folder lock) closes what the dead process left open.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = atelier_engine::Engine::open(
        atelier_engine::Home::at(dir.path()),
        atelier_engine::Access::Exclusive,
        rt.handle().clone(),
    )
    .unwrap();
    let page = engine
        .store()
        .history(&HistoryQuery {
            limit: 500,
            ..Default::default()
        })
        .unwrap();
    assert!(
        page.items
            .iter()
            .all(|g| g.status != GenerationStatus::Running),
        "nothing stays 'running' forever"
    );
    if let Some(g) = page
        .items
        .iter()
        .find(|g| g.status == GenerationStatus::Failed)
    {
        assert_eq!(
            engine
                .store()
                .generation(g.id)
                .unwrap()
                .error_kind
                .as_deref(),
            Some("interrupted")
        );
    }
}

#[test]
fn check_reports_findings_with_exit_codes_like_a_linter() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("copy.txt");
    std::fs::write(&file, "第一行很普通。\n这是全网最低价的面霜，加微信领券！").unwrap();
    let f = file.to_str().unwrap();

    let out = cli(home.path(), &["check", "--platform", "douyin", f]);
    assert_eq!(out.status.code(), Some(1), "violations found: exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("copy.txt:2:3: F1 violation"), "{text}");
    assert!(
        text.contains("H1 violation") && text.contains("2 violation(s)"),
        "{text}"
    );

    let out = cli(home.path(), &["--json", "check", f]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "no platform: the diversion rule is off");
    assert_eq!(findings[0]["matched"], "全网最低价");
    assert_eq!(
        (
            findings[0]["start"].as_u64(),
            findings[0]["start_utf16"].as_u64()
        ),
        (Some(10), Some(10))
    );

    std::fs::write(&file, "很受欢迎的一款，性价比高。").unwrap();
    assert_eq!(cli(home.path(), &["check", f]).status.code(), Some(0));
    let out = cli(home.path(), &["check", "--category", "weapons", f]);
    assert_eq!(out.status.code(), Some(2), "errors exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown product category"));
    std::fs::write(&file, [0xff, 0xfe, 0x00]).unwrap();
    let out = cli(home.path(), &["check", f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not UTF-8"));
}

#[test]
fn image_commands_make_import_generate_export_and_recall() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let src = dir.path().join("tiny-sd");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let out = cli(
        &home,
        &["image", "random-model", "--arch", "tiny", &s(&src)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&home, &["image", "import", &s(&src)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let png = dir.path().join("out.png");
    let args = [
        "image",
        "generate",
        "--model",
        "tiny-sd",
        "--prompt",
        "一只红苹果",
        "--seed",
        "9",
        "--steps",
        "3",
        "--size",
        "128x96",
        "--batch",
        "2",
        "--corner",
        "top-left",
        "--out",
    ];
    let v = json(&cli(&home, &[&["--json"], &args[..], &[&s(&png)]].concat()));
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[1]["seed"], 10);
    // The exported file: labelled in the top-left corner, settings readable by `recall`.
    let exported = image::open(&png).unwrap().to_rgb8();
    let recalled = json(&cli(&home, &["--json", "image", "recall", &s(&png)]));
    assert_eq!(recalled["seed"], 9);
    assert_eq!(recalled["prompt"], "一只红苹果");
    assert_eq!(recalled["label"]["Label"], "1");
    // Inside the label's box (darkened to at most 40% of the picture), only the label's text
    // is bright.
    let corner_light = (4..13)
        .flat_map(|y| (4..28).map(move |x| (x, y)))
        .filter(|&(x, y)| exported.get_pixel(x, y).0.iter().all(|&c| c > 160))
        .count();
    assert!(corner_light > 5, "no label text in the top-left corner");

    let out = cli(
        &home,
        &[
            "image", "generate", "--model", "tiny-sd", "--prompt", "x", "--corner", "middle",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a corner"));
    let out = cli(
        &home,
        &[
            "image",
            "generate",
            "--model",
            "tiny-sd",
            "--prompt",
            "x",
            "--steps",
            "2",
            "--size",
            "64x64",
            "--label",
            "仅供参考",
            "--out",
            &s(&png),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("人工智能"));
}
