//! The store on real SQLite files in temp folders.

use atelier_engine::store::migrations::{LATEST_VERSION, migrations};
use atelier_engine::store::{
    DocumentKind, GenerationKind, GenerationOutcome, HistoryQuery, NewGeneration, NewVersion,
    SettingsPatch, Theme, VersionSource,
};
use atelier_engine::{Home, Store};
use rusqlite::Connection;
use serde_json::json;

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("atelier.db")).unwrap();
    (dir, store)
}

fn record(store: &Store, project: i64, kind: GenerationKind, prompt: &str, output: &str) -> i64 {
    let id = store
        .begin_generation(&NewGeneration {
            project_id: project,
            job_id: None,
            kind,
            model_id: "smollm2-135m-instruct".into(),
            prompt: prompt.into(),
            params: json!({"temperature": 0.7, "top_p": 0.9, "max_tokens": 256}),
            seed: Some(42),
        })
        .unwrap();
    store
        .finish_generation(
            id,
            &GenerationOutcome {
                output_text: Some(output.into()),
                ..Default::default()
            },
        )
        .unwrap();
    id
}

#[test]
fn a_new_file_gets_the_latest_schema_with_wal_and_foreign_keys() {
    let (dir, store) = temp_store();
    assert_eq!(store.schema_version().unwrap(), LATEST_VERSION as i64);
    assert!(
        store.migration_backup().is_none(),
        "a fresh file needs no backup"
    );
    let conn = Connection::open(dir.path().join("atelier.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Foreign keys are on for the store's connection: a generation in a missing project fails.
    let err = store
        .begin_generation(&NewGeneration {
            project_id: 999,
            job_id: None,
            kind: GenerationKind::Text,
            model_id: "m".into(),
            prompt: "p".into(),
            params: json!({}),
            seed: None,
        })
        .unwrap_err();
    assert_eq!(err.kind(), "not_found");
}

#[test]
fn migrating_from_every_older_version_keeps_data_makes_a_backup_and_indexes_old_rows() {
    for from in 1..LATEST_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("atelier.db");
        {
            // A file as that version of Atelier left it.
            let mut conn = Connection::open(&path).unwrap();
            atelier_engine::store::bigrams::register(&conn).unwrap(); // as every version did
            migrations().to_version(&mut conn, from).unwrap();
            conn.execute(
                "INSERT INTO projects (name, created_at, updated_at) VALUES ('旧项目', 1, 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO generations (project_id, kind, model_id, prompt, status, output_text, created_at)
                 VALUES (1, 'text', 'm', '写一段保湿面霜的文案', 'succeeded', '这款面霜温和不刺激', 1)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), LATEST_VERSION as i64);
        let backup = store
            .migration_backup()
            .expect("a backup before upgrading an existing schema")
            .to_path_buf();
        assert!(
            backup
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("atelier.db.bak-v{from}-"))
        );
        let old = Connection::open(&backup).unwrap();
        let v: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, from as i64, "the backup is the file as it was");
        let n: i64 = old
            .query_row("SELECT count(*) FROM generations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);

        assert_eq!(store.list_projects().unwrap()[0].name, "旧项目");
        for text in ["保湿面霜", "面霜", "刺", "温和 面霜"] {
            let page = store
                .history(&HistoryQuery {
                    text: text.into(),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(
                page.items.len(),
                1,
                "rows from before the migration are found by {text:?} (from v{from})"
            );
        }
        // Opening again migrates nothing and writes no second backup.
        drop(store);
        let again = Store::open(&path).unwrap();
        assert!(again.migration_backup().is_none());
    }
}

#[test]
fn a_file_from_a_newer_atelier_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atelier.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert_eq!(err.kind(), "database_too_new");
    assert!(err.to_string().contains("99"), "{err}");
    let conn = Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
    drop(conn);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before.len() as u64);
}

#[test]
fn a_corrupt_file_is_reported_as_such_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atelier.db");
    std::fs::write(
        &path,
        b"this is not an sqlite database, it is a text file pretending".repeat(200),
    )
    .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert_eq!(err.kind(), "corrupt_database", "{err}");
    assert!(err.to_string().contains("atelier.db"), "{err}");
}

#[test]
fn chinese_substrings_are_found_including_short_queries() {
    let (_dir, store) = temp_store();
    let p = store.create_project("春季上新").unwrap();
    let a = record(
        &store,
        p.id,
        GenerationKind::Text,
        "为保湿面霜写一段小红书笔记",
        "姐妹们！这款面霜真的好用，干皮救星～",
    );
    let b = record(
        &store,
        p.id,
        GenerationKind::Script,
        "口红直播话术",
        "家人们看过来，这支口红显白又持久",
    );
    let c = record(
        &store,
        p.id,
        GenerationKind::Image,
        "a cat wearing a red scarf, studio light",
        "",
    );

    let ids = |text: &str| -> Vec<i64> {
        store
            .history(&HistoryQuery {
                text: text.into(),
                ..Default::default()
            })
            .unwrap()
            .items
            .iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(
        ids("干皮救星"),
        vec![a],
        "substring of the output, mid-sentence"
    );
    assert_eq!(
        ids("小红书"),
        vec![a],
        "3-character Chinese word in the prompt"
    );
    assert_eq!(ids("口红"), vec![b], "2-character query uses the fallback");
    assert_eq!(ids("持"), vec![b], "1-character query");
    assert_eq!(ids("红"), vec![b, a], "小红书 and 口红 both contain 红");
    assert_eq!(ids("RED SCARF"), vec![c], "Latin text, case-insensitive");
    assert_eq!(ids("面霜 好用"), vec![a], "all words must occur");
    assert_eq!(ids("面霜 口红"), Vec::<i64>::new());
    assert_eq!(
        ids("小红书 姐妹"),
        vec![a],
        "trigram-driven with a short word"
    );
    assert_eq!(ids("红 持久"), vec![b], "bigram prefix with a pair");
    assert_eq!(ids("！"), vec![a], "punctuation falls back to LIKE");
    assert_eq!(ids("鲸鱼"), Vec::<i64>::new(), "a rare short word");
    assert_eq!(ids("100%"), Vec::<i64>::new(), "LIKE wildcards are literal");
    assert_eq!(
        ids("\"quoted\" OR x"),
        Vec::<i64>::new(),
        "FTS syntax is literal, not an error"
    );
    assert_eq!(ids("").len(), 3, "empty search lists everything");
}

#[test]
fn history_filters_and_pages_newest_first() {
    let (_dir, store) = temp_store();
    let p1 = store.create_project("一").unwrap();
    let p2 = store.create_project("二").unwrap();
    let mut all = Vec::new();
    for i in 0..25 {
        let (p, k) = if i % 2 == 0 {
            (p1.id, GenerationKind::Text)
        } else {
            (p2.id, GenerationKind::Image)
        };
        all.push(record(&store, p, k, &format!("提示词 {i}"), "输出"));
    }
    store.set_generation_starred(all[3], true).unwrap();
    store.rate_generation(all[3], 1).unwrap();

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .history(&HistoryQuery {
                before,
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        seen.extend(page.items.iter().map(|s| s.id));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let mut expected = all.clone();
    expected.reverse();
    assert_eq!(seen, expected, "pages cover every row once, newest first");

    let q = |kind, project, starred_only| HistoryQuery {
        kind,
        project_id: project,
        starred_only,
        ..Default::default()
    };
    assert_eq!(
        store
            .history(&q(Some(GenerationKind::Image), None, false))
            .unwrap()
            .items
            .len(),
        12
    );
    assert_eq!(
        store
            .history(&q(None, Some(p1.id), false))
            .unwrap()
            .items
            .len(),
        13
    );
    let starred = store.history(&q(None, None, true)).unwrap().items;
    assert_eq!(
        starred.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![all[3]]
    );
    assert_eq!(starred[0].rating, 1);

    assert_eq!(
        store.rate_generation(all[0], 5).unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(
        store
            .history(&HistoryQuery {
                limit: 10_000,
                ..Default::default()
            })
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
}

#[test]
fn a_record_keeps_every_parameter() {
    let (_dir, store) = temp_store();
    let p = store.create_project("p").unwrap();
    let id = record(&store, p.id, GenerationKind::Text, "写标语", "一口入魂");
    let rec = store.generation(id).unwrap();
    assert_eq!(
        rec.params,
        json!({"temperature": 0.7, "top_p": 0.9, "max_tokens": 256})
    );
    assert_eq!(rec.seed, Some(42));
    assert_eq!(rec.output_text.as_deref(), Some("一口入魂"));
    assert_eq!(
        rec.status,
        atelier_engine::store::GenerationStatus::Succeeded
    );
    assert!(rec.duration_ms.is_some());
    assert_eq!(store.generation(9999).unwrap_err().kind(), "not_found");
}

#[test]
fn trash_hides_and_restore_brings_back_without_losing_anything() {
    let (_dir, store) = temp_store();
    let p = store.create_project("双十一").unwrap();
    record(
        &store,
        p.id,
        GenerationKind::Text,
        "双十一预热文案",
        "好物提前抢",
    );
    let doc = store
        .create_document(p.id, DocumentKind::Copy, "预热", None)
        .unwrap();
    store
        .add_version(
            doc.id,
            &NewVersion {
                body: "第一稿",
                source: VersionSource::Save,
                generation_id: None,
                note: "",
            },
        )
        .unwrap();

    store.trash_project(p.id).unwrap();
    assert!(store.list_projects().unwrap().is_empty());
    assert_eq!(store.list_trash().unwrap()[0].id, p.id);
    assert!(
        store
            .history(&HistoryQuery::default())
            .unwrap()
            .items
            .is_empty(),
        "trashed history is hidden"
    );
    assert_eq!(
        store.rename_project(p.id, "x").unwrap_err().kind(),
        "conflict"
    );
    assert_eq!(
        store
            .create_document(p.id, DocumentKind::Copy, "x", None)
            .unwrap_err()
            .kind(),
        "conflict"
    );

    let back = store.restore_project(p.id).unwrap();
    assert!(back.trashed_at.is_none());
    assert_eq!(back.generation_count, 1);
    assert_eq!(back.document_count, 1);
    assert_eq!(
        store.history(&HistoryQuery::default()).unwrap().items.len(),
        1
    );
    assert_eq!(store.restore_project(p.id).unwrap_err().kind(), "conflict");

    // Deleting forever only from the trash.
    assert_eq!(store.purge_project(p.id).unwrap_err().kind(), "conflict");
    store.trash_project(p.id).unwrap();
    store.purge_project(p.id).unwrap();
    assert_eq!(store.project(p.id).unwrap_err().kind(), "not_found");
    assert!(store.list_trash().unwrap().is_empty());
}

#[test]
fn project_names_are_validated() {
    let (_dir, store) = temp_store();
    assert_eq!(
        store.create_project("").unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(
        store.create_project("   ").unwrap_err().kind(),
        "invalid_input"
    );
    let long = "长".repeat(500);
    let err = store.create_project(&long).unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert!(
        store.list_projects().unwrap().is_empty(),
        "nothing half-created"
    );
    let p = store.create_project("  品牌 A  ").unwrap();
    assert_eq!(p.name, "品牌 A");
    assert_eq!(
        store.rename_project(p.id, &long).unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(store.project(p.id).unwrap().name, "品牌 A");
    assert_eq!(
        store.rename_project(424242, "x").unwrap_err().kind(),
        "not_found"
    );
}

#[test]
fn documents_keep_every_version_and_restore_appends() {
    let (_dir, store) = temp_store();
    let p = store.create_project("p").unwrap();
    let d = store
        .create_document(
            p.id,
            DocumentKind::Copy,
            "面霜详情页",
            Some("product-description"),
        )
        .unwrap();
    let v1 = store
        .add_version(
            d.id,
            &NewVersion {
                body: "初稿：水润",
                source: VersionSource::Generation,
                generation_id: None,
                note: "",
            },
        )
        .unwrap();
    let v2 = store
        .add_version(
            d.id,
            &NewVersion {
                body: "二稿：水润不黏",
                source: VersionSource::Save,
                generation_id: None,
                note: "",
            },
        )
        .unwrap();
    assert_eq!((v1.number, v2.number), (1, 2));
    let v3 = store.restore_version(v1.id).unwrap();
    assert_eq!(
        (v3.number, v3.body.as_str(), v3.source),
        (3, "初稿：水润", VersionSource::Restore)
    );
    let versions = store.list_versions(d.id).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.number).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(store.document(d.id).unwrap().version_count, 3);

    // Search sees the title and the latest text only.
    assert_eq!(store.search_documents("详情页", None).unwrap().len(), 1);
    assert_eq!(store.search_documents("水润", Some(p.id)).unwrap().len(), 1);
    assert_eq!(
        store.search_documents("不黏", None).unwrap().len(),
        0,
        "v2 is no longer the latest"
    );
    assert_eq!(
        store
            .add_version(
                777,
                &NewVersion {
                    body: "x",
                    source: VersionSource::Save,
                    generation_id: None,
                    note: ""
                }
            )
            .unwrap_err()
            .kind(),
        "not_found"
    );
}

#[test]
fn starred_documents_list_first_and_titles_can_change() {
    let (_dir, store) = temp_store();
    let p = store.create_project("p").unwrap();
    let a = store
        .create_document(p.id, DocumentKind::Copy, "旧的", None)
        .unwrap();
    let b = store
        .create_document(p.id, DocumentKind::Copy, "新的", None)
        .unwrap();
    store
        .add_version(
            b.id,
            &NewVersion {
                body: "b",
                source: VersionSource::Save,
                generation_id: None,
                note: "",
            },
        )
        .unwrap();
    let order = |s: &Store| {
        s.list_documents(p.id, DocumentKind::Copy)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>()
    };
    store
        .create_document(p.id, DocumentKind::Script, "脚本", None)
        .unwrap();
    assert_eq!(
        order(&store),
        vec![b.id, a.id],
        "most recently updated first, copy only"
    );
    assert!(store.set_document_starred(a.id, true).unwrap().starred);
    assert_eq!(order(&store), vec![a.id, b.id], "starred first");
    assert!(!store.set_document_starred(a.id, false).unwrap().starred);
    assert_eq!(order(&store), vec![b.id, a.id]);
    assert_eq!(
        store.rename_document(a.id, "  面霜  ").unwrap().title,
        "面霜"
    );
    assert_eq!(
        store.search_documents("面霜", None).unwrap().len(),
        1,
        "the search index follows the title"
    );
    assert_eq!(
        store.rename_document(a.id, " ").unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(
        store.set_document_starred(999, true).unwrap_err().kind(),
        "not_found"
    );
    assert_eq!(
        store.rename_document(999, "x").unwrap_err().kind(),
        "not_found"
    );
}

#[test]
fn a_full_disk_fails_the_write_cleanly_and_keeps_what_was_there() {
    let (_dir, store) = temp_store();
    let p = store.create_project("满盘").unwrap();
    let d = store
        .create_document(p.id, DocumentKind::Copy, "t", None)
        .unwrap();
    store
        .add_version(
            d.id,
            &NewVersion {
                body: "保存好的",
                source: VersionSource::Save,
                generation_id: None,
                note: "",
            },
        )
        .unwrap();
    // Cap the file at its current size: the next large write has nowhere to go.
    let pages: i64 = {
        let c = Connection::open(store.path()).unwrap();
        c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
    };
    store.set_max_page_count(pages as u64 + 1).unwrap();
    let big = "满".repeat(300_000);
    let err = store
        .add_version(
            d.id,
            &NewVersion {
                body: &big,
                source: VersionSource::Save,
                generation_id: None,
                note: "",
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), "disk_full", "{err}");
    let versions = store.list_versions(d.id).unwrap();
    assert_eq!(versions.len(), 1, "no half-written version");
    assert_eq!(versions[0].body, "保存好的");
    assert_eq!(store.document(d.id).unwrap().version_count, 1);
}

#[test]
fn assets_are_content_addressed_with_image_dimensions() {
    let (dir, store) = temp_store();
    let p = store.create_project("图").unwrap();
    let mut png = Vec::new();
    let img = image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8, y as u8, 7]));
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let a = store
        .add_asset(dir.path(), Some(p.id), "image/png", &png)
        .unwrap();
    assert_eq!((a.width, a.height), (Some(48), Some(32)));
    assert_eq!(a.size_bytes, png.len() as i64);
    assert_eq!(std::fs::read(dir.path().join(&a.path)).unwrap(), png);
    let again = store
        .add_asset(dir.path(), Some(p.id), "image/png", &png)
        .unwrap();
    assert_eq!(again.id, a.id, "same bytes, same asset");
    let err = store
        .add_asset(dir.path(), Some(p.id), "image/png", b"not a png at all")
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert_eq!(
        store
            .add_asset(dir.path(), None, "application/x-msdownload", b"MZ")
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
}

#[test]
fn settings_default_validate_and_persist() {
    let (dir, store) = temp_store();
    let s = store.settings().unwrap();
    assert_eq!(
        (s.language.as_str(), s.theme, s.heavy_job_slots),
        ("zh-CN", Theme::Light, 1)
    );
    store
        .update_settings(&SettingsPatch {
            language: Some("en".into()),
            theme: Some(Theme::Dark),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        store
            .update_settings(&SettingsPatch {
                language: Some("fr".into()),
                ..Default::default()
            })
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
    assert_eq!(
        store
            .update_settings(&SettingsPatch {
                heavy_job_slots: Some(0),
                ..Default::default()
            })
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
    drop(store);
    let s = Store::open(&dir.path().join("atelier.db"))
        .unwrap()
        .settings()
        .unwrap();
    assert_eq!((s.language.as_str(), s.theme), ("en", Theme::Dark));
}

#[test]
fn a_data_folder_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let err = Home::at(file.join("atelier")).ensure().unwrap_err();
    assert_eq!(err.kind(), "read_only");
    assert!(err.to_string().contains("not-a-folder"), "{err}");
}

#[test]
fn a_second_instance_on_the_same_folder_is_refused_with_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    home.ensure().unwrap();
    let first = home.lock().unwrap();
    // File locks belong to the open file description, so a second open in this process
    // conflicts exactly as a second process would.
    let err = home.lock().unwrap_err();
    assert_eq!(err.kind(), "already_running");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(first);
    // Another test in this binary may be spawning a process (chattr) right now: between fork and
    // exec the child holds a copy of every descriptor, our lock's too, for a moment.
    let mut again = home.lock();
    for _ in 0..100 {
        if again.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        again = home.lock();
    }
    again.expect("free again once the first instance ends");
}

#[test]
fn searching_pages_through_every_match_newest_first() {
    let (_dir, store) = temp_store();
    let p = store.create_project("翻页").unwrap();
    let mut hits = Vec::new();
    for i in 0..30 {
        let id = if i % 3 == 0 {
            record(
                &store,
                p.id,
                GenerationKind::Text,
                &format!("第{i}条：保湿面霜文案"),
                "水润",
            )
        } else {
            record(
                &store,
                p.id,
                GenerationKind::Text,
                &format!("第{i}条：口红话术"),
                "显白",
            )
        };
        if i % 3 == 0 {
            hits.push(id);
        }
    }
    hits.reverse();
    // FTS alone, FTS + a short word, short words alone.
    for text in ["保湿面霜", "保湿面霜 润", "面霜 水润"] {
        let (mut seen, mut before) = (Vec::new(), None);
        loop {
            let page = store
                .history(&HistoryQuery {
                    text: text.into(),
                    before,
                    limit: 4,
                    ..Default::default()
                })
                .unwrap();
            assert!(page.items.len() <= 4);
            seen.extend(page.items.iter().map(|s| s.id));
            match page.next_before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        assert_eq!(seen, hits, "query {text:?}");
    }
}

/// Makes `dir` read-only for real: `chattr +i` (which stops root too), else `chmod 555` (which
/// stops other users). Undone on drop. `None` where neither works on this machine.
struct ReadOnlyDir(std::path::PathBuf);

impl ReadOnlyDir {
    fn make(dir: &std::path::Path) -> Option<ReadOnlyDir> {
        use std::os::unix::fs::PermissionsExt;
        let chattr = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !chattr {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).ok()?;
        }
        let guard = ReadOnlyDir(dir.to_path_buf());
        // Prove it: a folder we can still write into would make the test meaningless.
        if std::fs::write(dir.join(".probe"), b"x").is_ok() {
            let _ = std::fs::remove_file(dir.join(".probe"));
            return None;
        }
        Some(guard)
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn a_read_only_data_folder_is_a_clear_error_and_its_data_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    {
        let store = {
            Home::at(&home).ensure().unwrap();
            Store::open(&Home::at(&home).db_path()).unwrap()
        };
        store.create_project("只读前的项目").unwrap();
        store.optimize().unwrap(); // checkpoint the WAL into the main file
    }
    let before = std::fs::read(home.join("atelier.db")).unwrap();
    let Some(_ro) = ReadOnlyDir::make(&home) else {
        eprintln!(
            "skipped: this machine cannot make a folder read-only (neither chattr nor chmod applies)"
        );
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = atelier_engine::Engine::open(
        Home::at(&home),
        atelier_engine::Access::Exclusive,
        rt.handle().clone(),
    )
    .err()
    .expect("opening a read-only folder must fail");
    assert_eq!(err.kind(), "read_only", "{err}");
    assert!(
        err.to_string().contains(&home.display().to_string()),
        "{err}"
    );
    drop(_ro);
    assert_eq!(
        std::fs::read(home.join("atelier.db")).unwrap(),
        before,
        "nothing was written"
    );
    let store = Store::open(&Home::at(&home).db_path()).unwrap();
    assert_eq!(store.list_projects().unwrap()[0].name, "只读前的项目");
}

#[test]
fn ai_labels_cannot_be_turned_off_without_an_acknowledgement_and_the_choice_is_logged() {
    use atelier_engine::compliance::labels::DEFAULT_NOTICE_ZH;
    let (_dir, store) = temp_store();
    let s = store.settings().unwrap();
    assert!(s.label_explicit);
    assert_eq!(s.label_notice_zh, DEFAULT_NOTICE_ZH);

    let off = SettingsPatch {
        label_explicit: Some(false),
        ..Default::default()
    };
    let err = store.update_settings(&off).unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    assert!(store.settings().unwrap().label_explicit, "nothing changed");
    assert!(store.label_events(10).unwrap().is_empty());

    let ack = SettingsPatch {
        label_explicit: Some(false),
        acknowledge_unlabelled: Some(true),
        ..Default::default()
    };
    assert!(!store.update_settings(&ack).unwrap().label_explicit);
    store.log_unlabelled_export("md 春季新品.md").unwrap();
    store
        .update_settings(&SettingsPatch {
            label_explicit: Some(true),
            ..Default::default()
        })
        .unwrap();
    let events: Vec<String> = store
        .label_events(10)
        .unwrap()
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(events, ["explicit_on", "export_unlabelled", "explicit_off"]);

    // An edited notice must still say it is AI-generated; a producer code must be ASCII.
    let bad = SettingsPatch {
        label_notice_zh: Some("仅供参考".into()),
        ..Default::default()
    };
    assert_eq!(
        store.update_settings(&bad).unwrap_err().kind(),
        "invalid_input"
    );
    let ok = SettingsPatch {
        label_notice_zh: Some("本文由 AI 合成".into()),
        label_producer: Some("001191110102MAD55U9H0F10002".into()),
        ..Default::default()
    };
    assert_eq!(
        store.update_settings(&ok).unwrap().label_notice_zh,
        "本文由 AI 合成"
    );
    let bad = SettingsPatch {
        label_producer: Some("创作工坊".into()),
        ..Default::default()
    };
    assert_eq!(
        store.update_settings(&bad).unwrap_err().kind(),
        "invalid_input"
    );
}
