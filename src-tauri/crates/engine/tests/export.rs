//! Text exports carry both AI-content labels; a DOCX export is a valid package (unzipped and
//! every part parsed as XML) with the `AIGC` custom property.

use std::io::Read;

use atelier_engine::compliance::labels::{self, DEFAULT_NOTICE_ZH, ImplicitLabel, NoticePosition};
use atelier_engine::export::{Format, Labelling, render};

fn labelling(position: NoticePosition) -> Labelling {
    Labelling {
        notice: Some((DEFAULT_NOTICE_ZH.to_owned(), position)),
        label: ImplicitLabel::new(None),
    }
}

const BODY: &str = "# 春季新品 <限定>\n这款面霜质地清爽 & 不黏腻。\n\n## 使用方法\n早晚各一次。";

#[test]
fn markdown_and_txt_carry_the_labels() {
    let l = labelling(NoticePosition::End);
    let md = String::from_utf8(render(BODY, "春季新品", Format::Md, &l).unwrap()).unwrap();
    assert_eq!(labels::read_markdown_label(&md), Some(l.label.clone()));
    assert!(md.contains(DEFAULT_NOTICE_ZH) && md.contains("这款面霜质地清爽 & 不黏腻。"));
    let txt = String::from_utf8(
        render(
            BODY,
            "春季新品",
            Format::Txt,
            &labelling(NoticePosition::Start),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(txt.starts_with(&format!("（{DEFAULT_NOTICE_ZH}）")));
}

#[test]
fn an_edited_notice_that_drops_the_required_words_is_refused() {
    let mut l = labelling(NoticePosition::End);
    l.notice = Some(("仅供参考".into(), NoticePosition::End));
    let err = render(BODY, "t", Format::Md, &l).unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
}

#[test]
fn docx_is_a_valid_package_with_the_aigc_property() {
    let l = labelling(NoticePosition::End);
    let bytes = render(BODY, "春季新品 & <秋>", Format::Docx, &l).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip archive");
    let mut parts = std::collections::BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        // Every part is well-formed XML.
        let mut reader = quick_xml::Reader::from_str(&s);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{} is not well-formed: {e}", f.name()),
            }
        }
        parts.insert(f.name().to_owned(), s);
    }
    for required in [
        "[Content_Types].xml",
        "_rels/.rels",
        "word/document.xml",
        "docProps/custom.xml",
    ] {
        assert!(parts.contains_key(required), "missing {required}");
    }
    // The AIGC property holds the label's JSON (XML-escaped in the file).
    let custom = &parts["docProps/custom.xml"];
    let mut reader = quick_xml::Reader::from_str(custom);
    let (mut in_aigc, mut value) = (false, None);
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Start(e) if e.name().as_ref() == b"property" => {
                in_aigc = e
                    .attributes()
                    .flatten()
                    .any(|a| a.key.as_ref() == b"name" && a.value.as_ref() == b"AIGC");
            }
            quick_xml::events::Event::Text(t) if in_aigc => {
                value = Some(t.unescape().unwrap().into_owned())
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    let label: ImplicitLabel = serde_json::from_str(&value.expect("an AIGC property")).unwrap();
    assert_eq!(label, l.label);
    let doc = &parts["word/document.xml"];
    assert!(doc.contains(DEFAULT_NOTICE_ZH));
    assert!(doc.contains("这款面霜质地清爽 &amp; 不黏腻。"));
    assert!(doc.contains("<w:pStyle w:val=\"Heading1\"/>"));
}

#[test]
fn the_engine_exports_into_the_data_folder_with_the_settings_labels() {
    use atelier_engine::store::SettingsPatch;
    use atelier_engine::{Access, Engine, Home};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine =
        Engine::open(Home::at(dir.path()), Access::Exclusive, rt.handle().clone()).unwrap();
    let producer = "001191110102MAD55U9H0F10002";
    engine
        .store()
        .update_settings(&SettingsPatch {
            label_producer: Some(producer.into()),
            ..Default::default()
        })
        .unwrap();
    let path = engine
        .export_text(BODY, "春季/新品:<限定>", Format::Md)
        .unwrap();
    assert!(path.starts_with(engine.home().exports_dir()));
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("春季新品限定-") && name.ends_with(".md"),
        "{name}"
    );
    let md = std::fs::read_to_string(&path).unwrap();
    let label = labels::read_markdown_label(&md).unwrap();
    assert_eq!(label.content_producer, producer);
    assert!(md.contains(DEFAULT_NOTICE_ZH));
    assert!(engine.store().label_events(5).unwrap().is_empty());

    // Without the explicit notice (acknowledged): the implicit label stays, the export is logged.
    engine
        .store()
        .update_settings(&SettingsPatch {
            label_explicit: Some(false),
            acknowledge_unlabelled: Some(true),
            ..Default::default()
        })
        .unwrap();
    let path = engine.export_text(BODY, "t", Format::Docx).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 500);
    let events = engine.store().label_events(5).unwrap();
    assert_eq!(events[0].1, "export_unlabelled");
    assert!(
        events[0]
            .2
            .contains(path.file_name().unwrap().to_str().unwrap())
    );
    assert_eq!(
        engine
            .export_text("  \n", "t", Format::Txt)
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
    let leftovers = std::fs::read_dir(engine.home().exports_dir())
        .unwrap()
        .count();
    assert_eq!(leftovers, 2, "no temporary files left behind");
}
