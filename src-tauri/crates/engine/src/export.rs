//! Text exports: TXT, Markdown and DOCX, each carrying both AI-content labels
//! ([`crate::compliance::labels`]). Files are written atomically by the caller.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::compliance::labels::{self, ImplicitLabel, NoticePosition};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Txt,
    Md,
    Docx,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Md => "md",
            Format::Docx => "docx",
        }
    }
}

/// `title` as part of a file name: no characters file systems refuse, at most 60 characters,
/// no leading or trailing dots or spaces (may be empty).
pub fn safe_title(title: &str) -> String {
    let clean: String = title
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
        })
        .take(60)
        .collect();
    clean.trim().trim_matches('.').to_owned()
}

/// A file name for an export: the title without characters file systems refuse, a timestamp
/// so exports never overwrite each other, and the extension.
pub fn file_name(title: &str, extension: &str) -> String {
    let clean = safe_title(title);
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]-[subsecond digits:3]"
        ))
        .unwrap_or_default();
    let base = if clean.is_empty() {
        "export"
    } else {
        clean.as_str()
    };
    format!("{base}-{stamp}.{extension}")
}

/// What goes on an export besides the text.
#[derive(Debug, Clone)]
pub struct Labelling {
    /// The explicit notice, or `None` when the user turned it off (after acknowledging it).
    pub notice: Option<(String, NoticePosition)>,
    pub label: ImplicitLabel,
}

/// The bytes of `body` exported as `format`, labelled.
pub fn render(body: &str, title: &str, format: Format, labelling: &Labelling) -> Result<Vec<u8>> {
    if let Some((n, _)) = &labelling.notice {
        labels::validate_notice(n)?;
    }
    let notice = labelling.notice.as_ref().map(|(n, p)| (n.as_str(), *p));
    Ok(match format {
        Format::Txt => match notice {
            Some((n, p)) => labels::with_notice(body, n, p).into_bytes(),
            None => format!("{}\n", body.trim_end_matches('\n')).into_bytes(),
        },
        Format::Md => labels::markdown(body, notice, &labelling.label).into_bytes(),
        Format::Docx => docx(body, title, notice, &labelling.label)?,
    })
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0; drop them.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn paragraph(text: &str, style: Option<&str>) -> String {
    let ppr = style
        .map(|s| format!("<w:pPr><w:pStyle w:val=\"{s}\"/></w:pPr>"))
        .unwrap_or_default();
    format!(
        "<w:p>{ppr}<w:r><w:t xml:space=\"preserve\">{}</w:t></w:r></w:p>",
        xml_escape(text)
    )
}

/// A minimal WordprocessingML package: one paragraph per line (Markdown `#` lines become
/// headings), the notice as its own paragraph, the label as custom property `AIGC`.
fn docx(
    body: &str,
    title: &str,
    notice: Option<(&str, NoticePosition)>,
    label: &ImplicitLabel,
) -> Result<Vec<u8>> {
    let mut paras = String::new();
    let notice_para = notice.map(|(n, _)| paragraph(&format!("（{n}）"), None));
    if let Some((_, NoticePosition::Start)) = notice {
        paras.push_str(notice_para.as_deref().unwrap_or_default());
    }
    for line in body.lines() {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=3).contains(&hashes) && line[hashes..].starts_with(' ') {
            paras.push_str(&paragraph(
                line[hashes..].trim(),
                Some(&format!("Heading{hashes}")),
            ));
        } else {
            paras.push_str(&paragraph(line, None));
        }
    }
    if let Some((_, NoticePosition::End)) = notice {
        paras.push_str(notice_para.as_deref().unwrap_or_default());
    }
    let document = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body>{paras}<w:sectPr><w:pgSz w:w=\"11906\" w:h=\"16838\"/><w:pgMar w:top=\"1440\" w:right=\"1440\" w:bottom=\"1440\" w:left=\"1440\" w:header=\"720\" w:footer=\"720\" w:gutter=\"0\"/></w:sectPr></w:body></w:document>"
    );
    let styles = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<w:styles xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:style w:type=\"paragraph\" w:default=\"1\" w:styleId=\"Normal\"><w:name w:val=\"Normal\"/><w:rPr><w:rFonts w:eastAsia=\"SimSun\"/><w:sz w:val=\"22\"/></w:rPr></w:style><w:style w:type=\"paragraph\" w:styleId=\"Heading1\"><w:name w:val=\"heading 1\"/><w:basedOn w:val=\"Normal\"/><w:rPr><w:b/><w:sz w:val=\"32\"/></w:rPr></w:style><w:style w:type=\"paragraph\" w:styleId=\"Heading2\"><w:name w:val=\"heading 2\"/><w:basedOn w:val=\"Normal\"/><w:rPr><w:b/><w:sz w:val=\"28\"/></w:rPr></w:style><w:style w:type=\"paragraph\" w:styleId=\"Heading3\"><w:name w:val=\"heading 3\"/><w:basedOn w:val=\"Normal\"/><w:rPr><w:b/><w:sz w:val=\"24\"/></w:rPr></w:style></w:styles>";
    let content_types = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"><Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/><Default Extension=\"xml\" ContentType=\"application/xml\"/><Override PartName=\"/word/document.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml\"/><Override PartName=\"/word/styles.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml\"/><Override PartName=\"/docProps/core.xml\" ContentType=\"application/vnd.openxmlformats-package.core-properties+xml\"/><Override PartName=\"/docProps/custom.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.custom-properties+xml\"/></Types>";
    let rels = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"word/document.xml\"/><Relationship Id=\"rId2\" Type=\"http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties\" Target=\"docProps/core.xml\"/><Relationship Id=\"rId3\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/custom-properties\" Target=\"docProps/custom.xml\"/></Relationships>";
    let doc_rels = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles\" Target=\"styles.xml\"/></Relationships>";
    let core = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<cp:coreProperties xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><dc:title>{}</dc:title><dc:creator>Atelier</dc:creator></cp:coreProperties>",
        xml_escape(title)
    );
    let custom = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Properties xmlns=\"http://schemas.openxmlformats.org/officeDocument/2006/custom-properties\" xmlns:vt=\"http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes\"><property fmtid=\"{{D5CDD505-2E9C-101B-9397-08002B2CF9AE}}\" pid=\"2\" name=\"AIGC\"><vt:lpwstr>{}</vt:lpwstr></property></Properties>",
        xml_escape(&label.json())
    );

    let zip_err =
        |e: zip::result::ZipError| Error::Internal(format!("writing the DOCX package: {e}"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in [
        ("[Content_Types].xml", content_types),
        ("_rels/.rels", rels),
        ("word/document.xml", document.as_str()),
        ("word/_rels/document.xml.rels", doc_rels),
        ("word/styles.xml", styles),
        ("docProps/core.xml", core.as_str()),
        ("docProps/custom.xml", custom.as_str()),
    ] {
        zip.start_file(name, opts).map_err(zip_err)?;
        zip.write_all(data.as_bytes())
            .map_err(|e| Error::Internal(format!("writing the DOCX package: {e}")))?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}
