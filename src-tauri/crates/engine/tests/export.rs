//! Text exports carry both AI-content labels; a DOCX export is a valid package (unzipped and
//! every part parsed as XML) with the `AIGC` custom property.

use std::io::Read;

use atelier_engine::compliance::labels::{self, DEFAULT_NOTICE_ZH, ImplicitLabel, NoticePosition};
use atelier_engine::export::{Format, Labelling, render};

fn labelling(position: NoticePosition) -> Labelling {
    Labelling { notice: Some((DEFAULT_NOTICE_ZH.to_owned(), position)), label: ImplicitLabel::new(None) }
}

const BODY: &str = "# 春季新品 <限定>\n这款面霜质地清爽 & 不黏腻。\n\n## 使用方法\n早晚各一次。";

#[test]
fn markdown_and_txt_carry_the_labels() {
    let l = labelling(NoticePosition::End);
    let md = String::from_utf8(render(BODY, "春季新品", Format::Md, &l).unwrap()).unwrap();
    assert_eq!(labels::read_markdown_label(&md), Some(l.label.clone()));
    assert!(md.contains(DEFAULT_NOTICE_ZH) && md.contains("这款面霜质地清爽 & 不黏腻。"));
    let txt = String::from_utf8(render(BODY, "春季新品", Format::Txt, &labelling(NoticePosition::Start)).unwrap()).unwrap();
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
    for required in ["[Content_Types].xml", "_rels/.rels", "word/document.xml", "docProps/custom.xml"] {
        assert!(parts.contains_key(required), "missing {required}");
    }
    // The AIGC property holds the label's JSON (XML-escaped in the file).
    let custom = &parts["docProps/custom.xml"];
    let mut reader = quick_xml::Reader::from_str(custom);
    let (mut in_aigc, mut value) = (false, None);
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Start(e) if e.name().as_ref() == b"property" => {
                in_aigc = e.attributes().flatten().any(|a| a.key.as_ref() == b"name" && a.value.as_ref() == b"AIGC");
            }
            quick_xml::events::Event::Text(t) if in_aigc => value = Some(t.unescape().unwrap().into_owned()),
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
