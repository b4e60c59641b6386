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
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn projects_round_trip_with_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let p = json(&cli(home, &["--json", "projects", "create", "直播 618"]));
    let id = p["id"].as_i64().unwrap().to_string();
    assert_eq!(p["name"], "直播 618");
    assert_eq!(json(&cli(home, &["--json", "projects", "rename", &id, "直播 双十一"]))["name"], "直播 双十一");
    json(&cli(home, &["--json", "projects", "delete", &id]));
    assert_eq!(json(&cli(home, &["--json", "projects", "list"])), serde_json::json!([]));
    assert_eq!(json(&cli(home, &["--json", "projects", "list", "--trash"]))[0]["id"].as_i64().unwrap().to_string(), id);
    json(&cli(home, &["--json", "projects", "restore", &id]));
    assert_eq!(json(&cli(home, &["--json", "projects", "list"])).as_array().unwrap().len(), 1);
    assert_eq!(json(&cli(home, &["--json", "history", "search", "口红"])), serde_json::json!([]));
    assert_eq!(json(&cli(home, &["--json", "jobs", "list"])), serde_json::json!([]));
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
    assert!(std::fs::read(&db).unwrap().starts_with(b"definitely not sqlite"));
}
