//! What an image file says about itself. Atelier's PNGs carry:
//! - `parameters`: A1111's infotext (tEXt, or iTXt when the text is not Latin-1), which
//!   Civitai, A1111, Forge, sd.cpp and Fooocus read;
//! - `atelier`: the full request as JSON (iTXt), for an exact recall;
//! - `XML:com.adobe.xmp`: an XMP packet with the TC260 `AIGC` label and IPTC's
//!   `trainedAlgorithmicMedia` source type (iTXt, uncompressed as XMP requires);
//! - `AIGC`: the label JSON again as plain text, the form some detectors read first.
//!
//! Reading goes the other way and also understands ComfyUI's and InvokeAI's chunks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::params::{ImageParams, Scheduler, Variation};
use crate::compliance::labels::ImplicitLabel;
use crate::error::{Error, Result};

pub const ATELIER_KEY: &str = "atelier";
pub const XMP_KEY: &str = "XML:com.adobe.xmp";
pub const DIGITAL_SOURCE_TYPE: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// Atelier's own record, written into the `atelier` chunk and kept with the gallery row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub version: u32,
    /// The request, with the seed this image actually used and `batch_count` 1.
    pub params: ImageParams,
    pub model_family: String,
    /// A1111's short hash: the first 10 hex digits of the UNet file's sha256.
    pub model_hash: String,
    pub rng: String,
    pub app: String,
}

impl ImageRecord {
    /// The record of an image made now by this version of Atelier.
    pub fn new(params: ImageParams, model_family: &str, model_hash: &str, rng: &str) -> Self {
        ImageRecord {
            version: 1,
            params,
            model_family: model_family.into(),
            model_hash: model_hash.into(),
            rng: rng.into(),
            app: format!("Atelier {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A1111's quoting: values with `,`, `:` or a line break become JSON strings.
fn quote(v: &str) -> String {
    if v.contains([',', ':', '\n']) {
        serde_json::to_string(v).unwrap_or_else(|_| v.to_owned())
    } else {
        v.to_owned()
    }
}

/// The infotext A1111 writes for these settings.
pub fn a1111_parameters(r: &ImageRecord) -> String {
    let p = &r.params;
    let prompt = p.translated_prompt.as_deref().unwrap_or(&p.prompt);
    let mut out = String::from(prompt);
    if !p.negative_prompt.is_empty() {
        out.push_str("\nNegative prompt: ");
        out.push_str(&p.negative_prompt);
    }
    let (sampler, schedule) = p.scheduler.a1111();
    let mut items: Vec<(&str, String)> =
        vec![("Steps", p.steps.to_string()), ("Sampler", sampler.into())];
    if let Some(s) = schedule {
        items.push(("Schedule type", s.into()));
    }
    items.push(("CFG scale", trim_float(p.cfg_scale)));
    items.push(("Seed", p.seed.unwrap_or(0).to_string()));
    if let Some(v) = &p.variation {
        items.push(("Variation seed", v.seed.to_string()));
        items.push(("Variation seed strength", trim_float(v.strength)));
    }
    items.push(("Size", format!("{}x{}", p.width, p.height)));
    // A checkpoint on a ComfyUI server has no hash Atelier could compute.
    if !r.model_hash.is_empty() {
        items.push(("Model hash", r.model_hash.clone()));
    }
    items.push(("Model", p.model.clone()));
    if let Some(init) = &p.init_image {
        items.push(("Denoising strength", trim_float(init.strength)));
    }
    if p.translated_prompt.is_some() {
        items.push(("Original prompt", p.prompt.clone()));
    }
    items.push(("Version", r.app.clone()));
    out.push('\n');
    out.push_str(
        &items
            .into_iter()
            .map(|(k, v)| format!("{k}: {}", quote(&v)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// A1111's infotext, taken apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: String,
    pub settings: BTreeMap<String, String>,
}

/// Parses an infotext the way A1111's `parse_generation_parameters` does: the last line holds
/// `key: value` pairs when it has at least three; earlier lines are the prompt, and a line
/// starting `Negative prompt:` begins the negative prompt.
pub fn parse_a1111(text: &str) -> Infotext {
    let re = regex::Regex::new(r#"\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
        .expect("static regex");
    let mut lines: Vec<&str> = text.trim().lines().collect();
    let mut settings = BTreeMap::new();
    if let Some(last) = lines.last() {
        let pairs: Vec<(String, String)> = re
            .captures_iter(last)
            .map(|c| {
                let v = c[2].trim().to_owned();
                let v = if v.starts_with('"') {
                    serde_json::from_str::<String>(&v).unwrap_or(v)
                } else {
                    v
                };
                (c[1].trim().to_owned(), v)
            })
            .collect();
        if pairs.len() >= 3 {
            settings.extend(pairs);
            lines.pop();
        }
    }
    let (mut prompt, mut negative, mut in_negative) = (Vec::new(), Vec::new(), false);
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    Infotext {
        prompt: prompt.join("\n"),
        negative_prompt: negative.join("\n"),
        settings,
    }
}

/// The XMP packet carrying the implicit label.
pub fn xmp_packet(label: &ImplicitLabel) -> String {
    let json = label
        .json()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    format!(
        r#"<?xpacket begin="﻿" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:TC260="http://www.tc260.org.cn/ns/AIGC/1.0/"
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">
   <TC260:AIGC>{json}</TC260:AIGC>
   <Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"#
    )
}

/// The label read back from an XMP packet.
pub fn label_from_xmp(xmp: &str) -> Option<ImplicitLabel> {
    let start = xmp.find("<TC260:AIGC>")? + "<TC260:AIGC>".len();
    let end = start + xmp[start..].find("</TC260:AIGC>")?;
    let json = xmp[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).ok()
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256)
}

/// Encodes `img` as a PNG with the chunks above.
pub fn encode_png(
    img: &image::RgbImage,
    record: &ImageRecord,
    label: &ImplicitLabel,
) -> Result<Vec<u8>> {
    let bad = |e: png::EncodingError| Error::Internal(format!("PNG encoding: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let parameters = a1111_parameters(record);
        // PIL (and so A1111) writes tEXt when the text is Latin-1 and iTXt otherwise.
        if is_latin1(&parameters) {
            enc.add_text_chunk("parameters".into(), parameters)
                .map_err(bad)?;
        } else {
            enc.add_itxt_chunk("parameters".into(), parameters)
                .map_err(bad)?;
        }
        enc.add_itxt_chunk(ATELIER_KEY.into(), serde_json::to_string(record)?)
            .map_err(bad)?;
        enc.add_itxt_chunk(XMP_KEY.into(), xmp_packet(label))
            .map_err(bad)?;
        enc.add_text_chunk("AIGC".into(), label.json())
            .map_err(bad)?;
        let mut writer = enc.write_header().map_err(bad)?;
        writer.write_image_data(img.as_raw()).map_err(bad)?;
        writer.finish().map_err(bad)?;
    }
    Ok(out)
}

/// The file type of an export. All carry the XMP label and the A1111 parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    #[default]
    Png,
    Jpeg,
    /// Lossless WebP (the encoder the image crate has).
    Webp,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Png => "png",
            ExportFormat::Jpeg => "jpg",
            ExportFormat::Webp => "webp",
        }
    }

    /// `img` as a file of this type with the record and the label in it.
    pub fn encode(
        self,
        img: &image::RgbImage,
        record: &ImageRecord,
        label: &ImplicitLabel,
    ) -> Result<Vec<u8>> {
        match self {
            ExportFormat::Png => encode_png(img, record, label),
            ExportFormat::Jpeg => encode_jpeg(img, record, label),
            ExportFormat::Webp => encode_webp(img, record, label),
        }
    }

    /// Whether a file of this type read back still carries what [`encode`](Self::encode) put
    /// in it: the whole record (PNG) and the AI label (both).
    pub fn carries(self, bytes: &[u8], record: &ImageRecord) -> Result<bool> {
        Ok(match self {
            ExportFormat::Png => {
                let recalled = recall(bytes)?;
                recalled.record.as_ref() == Some(record) && recalled.label.is_some()
            }
            ExportFormat::Jpeg => jpeg_text(bytes)?
                .0
                .as_deref()
                .and_then(label_from_xmp)
                .is_some(),
            ExportFormat::Webp => webp_chunks(bytes)?
                .iter()
                .find(|(id, _)| id == b"XMP ")
                .and_then(|(_, xmp)| std::str::from_utf8(xmp).ok())
                .and_then(label_from_xmp)
                .is_some(),
        })
    }
}

/// An EXIF block (big-endian TIFF) holding one field, UserComment, with `text` as A1111
/// writes its parameters into JPEG and WebP files: the `UNICODE\0` prefix, then UTF-16BE.
/// A1111's PNG Info, Civitai and exiftool read the parameters from there.
pub fn exif_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    for unit in text.encode_utf16() {
        comment.extend_from_slice(&unit.to_be_bytes());
    }
    // TIFF header (8), IFD0 with one entry pointing at the EXIF IFD (2 + 12 + 4), the EXIF IFD
    // with one entry (2 + 12 + 4), then the comment's bytes.
    const EXIF_IFD: u32 = 8 + 18;
    const DATA: u32 = EXIF_IFD + 18;
    let mut out = Vec::with_capacity(DATA as usize + comment.len());
    out.extend_from_slice(b"MM\0\x2a");
    out.extend_from_slice(&8u32.to_be_bytes());
    let mut ifd = |tag: u16, kind: u16, count: u32, value: u32| {
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    };
    ifd(0x8769, 4, 1, EXIF_IFD); // ExifIFDPointer, LONG
    ifd(0x9286, 7, comment.len() as u32, DATA); // UserComment, UNDEFINED
    out.extend_from_slice(&comment);
    out
}

/// A lossless WebP of `img` in the extended format, carrying what the JPEG carries: the A1111
/// parameters in an `EXIF` chunk and the XMP packet (the AI label) in an `XMP ` chunk.
pub fn encode_webp(
    img: &image::RgbImage,
    record: &ImageRecord,
    label: &ImplicitLabel,
) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut plain)
        .encode(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Internal(format!("WebP encoding: {e}")))?;
    let chunks = webp_chunks(&plain)?;
    let bitstream = chunks
        .iter()
        .find(|(id, _)| id == b"VP8L" || id == b"VP8 ")
        .ok_or_else(|| Error::Internal("the WebP encoder wrote no image chunk".into()))?;
    let (w, h) = (img.width() - 1, img.height() - 1);
    // VP8X: flags (EXIF 0x08, XMP 0x04), 3 reserved bytes, canvas size - 1 as 24-bit LE.
    let mut vp8x = vec![0x08 | 0x04, 0, 0, 0];
    vp8x.extend_from_slice(&w.to_le_bytes()[..3]);
    vp8x.extend_from_slice(&h.to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    let mut chunk = |id: &[u8; 4], data: &[u8]| -> Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| Error::Internal("a WebP chunk over 4 GiB".into()))?;
        body.extend_from_slice(id);
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
        Ok(())
    };
    chunk(b"VP8X", &vp8x)?;
    chunk(&bitstream.0, bitstream.1)?;
    chunk(b"EXIF", &exif_user_comment(&a1111_parameters(record)))?;
    chunk(b"XMP ", xmp_packet(label).as_bytes())?;
    let size =
        u32::try_from(body.len()).map_err(|_| Error::Internal("a WebP file over 4 GiB".into()))?;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The chunks of a WebP file (RIFF), each as its id and payload.
pub fn webp_chunks(bytes: &[u8]) -> Result<Vec<([u8; 4], &[u8])>> {
    let bad = || Error::invalid("the file is not a readable WebP");
    if bytes.get(..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WEBP") {
        return Err(bad());
    }
    let mut out = Vec::new();
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id: [u8; 4] = bytes[at..at + 4].try_into().map_err(|_| bad())?;
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().map_err(|_| bad())?) as usize;
        let start = at + 8;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(bad)?;
        out.push((id, &bytes[start..end]));
        at = end + (len % 2);
    }
    Ok(out)
}

/// A JPEG of `img` carrying the same facts as the PNG: the A1111 parameters as an EXIF
/// UserComment (where A1111 puts them) and as the JPEG comment, and the XMP packet (the AI
/// label) in an APP1 segment. The parameters are left out in the rare case they exceed a
/// segment's 64 KiB; the label never is.
pub fn encode_jpeg(
    img: &image::RgbImage,
    record: &ImageRecord,
    label: &ImplicitLabel,
) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 92)
        .encode_image(img)
        .map_err(|e| Error::Internal(format!("JPEG encoding: {e}")))?;
    if plain.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return Err(Error::Internal(
            "the JPEG encoder wrote no SOI marker".into(),
        ));
    }
    // JFIF wants its APP0 right after SOI; ours go after it.
    let head = if plain.get(2..4) == Some(&[0xFF, 0xE0][..]) && plain.len() > 6 {
        4 + u16::from_be_bytes([plain[4], plain[5]]) as usize
    } else {
        2
    };
    let head = head.min(plain.len());
    let mut out = Vec::with_capacity(plain.len() + 4096);
    out.extend_from_slice(&plain[..head]);
    let mut segment = |marker: u8, body: &[u8]| -> bool {
        let Ok(len) = u16::try_from(body.len() + 2) else {
            return false;
        };
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        true
    };
    let parameters = a1111_parameters(record);
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(&exif_user_comment(&parameters));
    segment(0xE1, &exif);
    let mut xmp = JPEG_XMP_ID.to_vec();
    xmp.extend_from_slice(xmp_packet(label).as_bytes());
    if !segment(0xE1, &xmp) {
        return Err(Error::Internal(
            "the XMP packet does not fit a JPEG segment".into(),
        ));
    }
    segment(0xFE, parameters.as_bytes());
    out.extend_from_slice(&plain[head..]);
    Ok(out)
}

const JPEG_XMP_ID: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// The metadata segments of a JPEG (those before the image data), each as its marker and
/// body.
pub fn jpeg_segments(bytes: &[u8]) -> Result<Vec<(u8, &[u8])>> {
    let bad = || Error::invalid("the file is not a readable JPEG");
    if bytes.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return Err(bad());
    }
    let mut out = Vec::new();
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA {
            break; // start of scan: no more metadata segments
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let body = bytes.get(i + 4..i + 2 + len).ok_or_else(bad)?;
        out.push((marker, body));
        i += 2 + len;
    }
    Ok(out)
}

/// The XMP packet and the comment of a JPEG.
pub fn jpeg_text(bytes: &[u8]) -> Result<(Option<String>, Option<String>)> {
    let (mut xmp, mut comment) = (None, None);
    for (marker, body) in jpeg_segments(bytes)? {
        if marker == 0xE1 && body.starts_with(JPEG_XMP_ID) {
            xmp = Some(String::from_utf8_lossy(&body[JPEG_XMP_ID.len()..]).into_owned());
        } else if marker == 0xFE {
            comment = Some(String::from_utf8_lossy(body).into_owned());
        }
    }
    Ok((xmp, comment))
}

/// Every text chunk of a PNG (tEXt, zTXt, iTXt), in file order; not a PNG is an error.
pub fn png_text(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let reader = decoder
        .read_info()
        .map_err(|e| Error::invalid(format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.uncompressed_latin1_text {
        out.push((t.keyword.clone(), t.text.clone()));
    }
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    Ok(out)
}

/// Settings recovered from an image file, and which program wrote them.
#[derive(Debug, Clone, Serialize)]
pub struct Recalled {
    pub source: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub scheduler: Option<Scheduler>,
    pub model: Option<String>,
    pub strength: Option<f64>,
    pub variation: Option<Variation>,
    /// Atelier's own record when the file has one (an exact recall).
    pub record: Option<ImageRecord>,
    pub label: Option<ImplicitLabel>,
}

impl Recalled {
    fn empty(source: &str) -> Recalled {
        Recalled {
            source: source.into(),
            prompt: String::new(),
            negative_prompt: String::new(),
            width: None,
            height: None,
            steps: None,
            cfg_scale: None,
            seed: None,
            scheduler: None,
            model: None,
            strength: None,
            variation: None,
            record: None,
            label: None,
        }
    }
}

/// Reads the generation settings of a picture: a PNG made by Atelier, A1111 (and Forge,
/// sd.cpp, Civitai), InvokeAI or ComfyUI, or a JPEG or WebP carrying A1111's parameters (EXIF
/// UserComment, or the JPEG comment) as A1111 and Atelier write them. A file with none of
/// these is an error that says so.
pub fn recall(bytes: &[u8]) -> Result<Recalled> {
    if bytes.starts_with(&[0xFF, 0xD8]) || bytes.starts_with(b"RIFF") {
        return recall_exif_file(bytes);
    }
    let chunks = png_text(bytes)?;
    let get = |k: &str| {
        chunks
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let label = get(XMP_KEY)
        .and_then(label_from_xmp)
        .or_else(|| get("AIGC").and_then(|j| serde_json::from_str(j).ok()));
    let mut r = if let Some(rec) =
        get(ATELIER_KEY).and_then(|j| serde_json::from_str::<ImageRecord>(j).ok())
    {
        let p = &rec.params;
        let mut r = Recalled::empty("atelier");
        r.prompt = p.prompt.clone();
        r.negative_prompt = p.negative_prompt.clone();
        r.width = Some(p.width);
        r.height = Some(p.height);
        r.steps = Some(p.steps);
        r.cfg_scale = Some(p.cfg_scale);
        r.seed = p.seed;
        r.scheduler = Some(p.scheduler);
        r.model = Some(p.model.clone());
        r.strength = p.init_image.as_ref().map(|i| i.strength);
        r.variation = p.variation;
        r.record = Some(rec);
        r
    } else if let Some(text) = get("parameters") {
        from_infotext("a1111", &parse_a1111(text))
    } else if let Some(json) = get("invokeai_metadata") {
        from_invokeai(json)?
    } else if let Some(json) = get("prompt") {
        from_comfyui(json)?
    } else {
        return Err(Error::invalid(
            "this PNG carries no generation settings (no A1111, ComfyUI, InvokeAI or Atelier metadata)",
        ));
    };
    r.label = label;
    Ok(r)
}

/// JPEG and WebP: the parameters from the EXIF UserComment (or a JPEG's comment), the label
/// from the XMP packet.
fn recall_exif_file(bytes: &[u8]) -> Result<Recalled> {
    let (exif, xmp, comment) = if bytes.starts_with(b"RIFF") {
        let chunks = webp_chunks(bytes)?;
        let find = |id: &[u8; 4]| chunks.iter().find(|(i, _)| i == id).map(|(_, d)| *d);
        // Some writers keep JPEG's "Exif\0\0" prefix inside the WebP chunk.
        let exif = find(b"EXIF").map(|e| e.strip_prefix(b"Exif\0\0").unwrap_or(e));
        let xmp = find(b"XMP ").map(|x| String::from_utf8_lossy(x).into_owned());
        (exif.map(<[u8]>::to_vec), xmp, None)
    } else {
        let segments = jpeg_segments(bytes)?;
        let exif = segments.iter().find_map(|(m, body)| {
            (*m == 0xE1)
                .then(|| body.strip_prefix(b"Exif\0\0"))
                .flatten()
        });
        let xmp = segments.iter().find_map(|(m, body)| {
            (*m == 0xE1)
                .then(|| body.strip_prefix(JPEG_XMP_ID))
                .flatten()
                .map(|x| String::from_utf8_lossy(x).into_owned())
        });
        let comment = segments
            .iter()
            .find(|(m, _)| *m == 0xFE)
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned());
        (exif.map(<[u8]>::to_vec), xmp, comment)
    };
    let parameters = exif
        .as_deref()
        .and_then(exif_user_comment_text)
        .filter(|t| !t.trim().is_empty())
        .or(comment.filter(|c| c.contains("Steps:")))
        .ok_or_else(|| {
            Error::invalid(
                "this picture carries no generation settings (no A1111 parameters in its EXIF UserComment or comment)",
            )
        })?;
    let mut r = from_infotext("a1111", &parse_a1111(&parameters));
    r.label = xmp.as_deref().and_then(label_from_xmp);
    Ok(r)
}

/// The UserComment of an EXIF block (a TIFF structure, either byte order), decoded by its
/// 8-byte character-code prefix: `UNICODE` (UTF-16 in the block's byte order unless a BOM
/// says otherwise), `ASCII`, or undefined (read as UTF-8). Bounds are checked at every step;
/// a malformed block yields `None`.
pub fn exif_user_comment_text(tiff: &[u8]) -> Option<String> {
    let big = match tiff.get(..4)? {
        b"MM\0\x2a" => true,
        b"II\x2a\0" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    // (type, count, value-or-offset position) of `tag` in the IFD at `ifd`.
    let find = |ifd: usize, tag: u16| -> Option<(u16, u32, usize)> {
        let n = u16_at(ifd)? as usize;
        (0..n).find_map(|k| {
            let e = ifd + 2 + 12 * k;
            (u16_at(e)? == tag).then(|| Some((u16_at(e + 2)?, u32_at(e + 4)?, e + 8)))?
        })
    };
    let ifd0 = u32_at(4)? as usize;
    let (_, _, at) = find(ifd0, 0x8769)?;
    let exif_ifd = u32_at(at)? as usize;
    let (_, count, at) = find(exif_ifd, 0x9286)?;
    let count = count as usize;
    let start = if count <= 4 { at } else { u32_at(at)? as usize };
    let raw = tiff.get(start..start.checked_add(count)?)?;
    let (code, text) = (raw.get(..8)?, &raw[8..]);
    Some(
        match code {
            b"UNICODE\0" => {
                let (big, text) = match text {
                    [0xFE, 0xFF, rest @ ..] => (true, rest),
                    [0xFF, 0xFE, rest @ ..] => (false, rest),
                    _ => (big, text),
                };
                let units: Vec<u16> = text
                    .chunks_exact(2)
                    .map(|c| {
                        if big {
                            u16::from_be_bytes([c[0], c[1]])
                        } else {
                            u16::from_le_bytes([c[0], c[1]])
                        }
                    })
                    .collect();
                String::from_utf16_lossy(&units)
            }
            _ => String::from_utf8_lossy(text).into_owned(),
        }
        .trim_end_matches('\0')
        .to_owned(),
    )
}

fn from_infotext(source: &str, info: &Infotext) -> Recalled {
    let s = &info.settings;
    let mut r = Recalled::empty(source);
    r.prompt = info.prompt.clone();
    r.negative_prompt = info.negative_prompt.clone();
    if let Some((w, h)) = s.get("Size").and_then(|v| v.split_once('x')) {
        r.width = w.trim().parse().ok();
        r.height = h.trim().parse().ok();
    }
    r.steps = s.get("Steps").and_then(|v| v.parse().ok());
    r.cfg_scale = s.get("CFG scale").and_then(|v| v.parse().ok());
    r.seed = s.get("Seed").and_then(|v| v.parse().ok());
    r.scheduler = s
        .get("Sampler")
        .and_then(|v| Scheduler::from_a1111(v, s.get("Schedule type").map(String::as_str)));
    r.model = s.get("Model").cloned();
    r.strength = s.get("Denoising strength").and_then(|v| v.parse().ok());
    r.variation = match (
        s.get("Variation seed").and_then(|v| v.parse().ok()),
        s.get("Variation seed strength")
            .and_then(|v| v.parse().ok()),
    ) {
        (Some(seed), Some(strength)) => Some(Variation { seed, strength }),
        _ => None,
    };
    r
}

fn from_invokeai(json: &str) -> Result<Recalled> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("InvokeAI metadata is not JSON: {e}")))?;
    let mut r = Recalled::empty("invokeai");
    r.prompt = v["positive_prompt"].as_str().unwrap_or("").to_owned();
    r.negative_prompt = v["negative_prompt"].as_str().unwrap_or("").to_owned();
    r.width = v["width"].as_u64().map(|x| x as u32);
    r.height = v["height"].as_u64().map(|x| x as u32);
    r.steps = v["steps"].as_u64().map(|x| x as u32);
    r.cfg_scale = v["cfg_scale"].as_f64();
    r.seed = v["seed"].as_u64();
    r.scheduler = match v["scheduler"].as_str() {
        Some("euler") => Some(Scheduler::Euler),
        Some("euler_a") => Some(Scheduler::EulerAncestral),
        Some("ddim") => Some(Scheduler::Ddim),
        Some("dpmpp_2m") => Some(Scheduler::DpmPp2m),
        Some("dpmpp_2m_k") => Some(Scheduler::DpmPp2mKarras),
        Some("unipc") => Some(Scheduler::UniPc),
        Some("lcm") => Some(Scheduler::Lcm),
        _ => None,
    };
    r.model = v["model"]["name"].as_str().map(str::to_owned);
    r.strength = v["strength"].as_f64();
    Ok(r)
}

/// ComfyUI's `prompt` chunk is its API graph: the sampler node holds seed, steps, CFG and
/// sampler; its `positive`/`negative` inputs point at text-encode nodes.
fn from_comfyui(json: &str) -> Result<Recalled> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("ComfyUI metadata is not JSON: {e}")))?;
    let nodes = v
        .as_object()
        .ok_or_else(|| Error::invalid("ComfyUI metadata is not a node graph"))?;
    let sampler = nodes
        .values()
        .find(|n| {
            n["class_type"]
                .as_str()
                .is_some_and(|c| c.starts_with("KSampler"))
        })
        .ok_or_else(|| Error::invalid("the ComfyUI graph has no KSampler node"))?;
    let inputs = &sampler["inputs"];
    let text_of = |link: &serde_json::Value| -> String {
        link.get(0)
            .and_then(|id| id.as_str())
            .and_then(|id| nodes.get(id))
            .and_then(|n| n["inputs"]["text"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    let mut r = Recalled::empty("comfyui");
    r.prompt = text_of(&inputs["positive"]);
    r.negative_prompt = text_of(&inputs["negative"]);
    r.seed = inputs["seed"]
        .as_u64()
        .or_else(|| inputs["noise_seed"].as_u64());
    r.steps = inputs["steps"].as_u64().map(|x| x as u32);
    r.cfg_scale = inputs["cfg"].as_f64();
    let karras = inputs["scheduler"].as_str() == Some("karras");
    r.scheduler = match inputs["sampler_name"].as_str() {
        Some("euler") => Some(Scheduler::Euler),
        Some("euler_ancestral") => Some(Scheduler::EulerAncestral),
        Some("ddim") => Some(Scheduler::Ddim),
        Some("dpmpp_2m") if karras => Some(Scheduler::DpmPp2mKarras),
        Some("dpmpp_2m") => Some(Scheduler::DpmPp2m),
        Some("uni_pc" | "uni_pc_bh2") => Some(Scheduler::UniPc),
        Some("lcm") => Some(Scheduler::Lcm),
        _ => None,
    };
    if let Some(latent) = nodes
        .values()
        .find(|n| n["class_type"].as_str() == Some("EmptyLatentImage"))
    {
        r.width = latent["inputs"]["width"].as_u64().map(|x| x as u32);
        r.height = latent["inputs"]["height"].as_u64().map(|x| x as u32);
    }
    r.model = nodes
        .values()
        .find(|n| n["class_type"].as_str() == Some("CheckpointLoaderSimple"))
        .and_then(|n| n["inputs"]["ckpt_name"].as_str())
        .map(str::to_owned);
    r.strength = inputs["denoise"].as_f64().filter(|d| *d < 1.0);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::params::sample_params;

    fn record() -> ImageRecord {
        let mut p = sample_params();
        p.prompt = "红色的苹果, (studio light:1.2)".into();
        p.negative_prompt = "blurry, lowres".into();
        p.scheduler = Scheduler::DpmPp2mKarras;
        p.seed = Some(1234);
        ImageRecord {
            version: 1,
            params: p,
            model_family: "custom".into(),
            model_hash: "0123456789".into(),
            rng: "chacha8-box-muller".into(),
            app: "Atelier 0.1.0".into(),
        }
    }

    #[test]
    fn infotext_round_trips() {
        let r = record();
        let text = a1111_parameters(&r);
        assert!(text.contains("\nNegative prompt: blurry, lowres\n"));
        assert!(text.ends_with(
            "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, Model hash: 0123456789, Model: tiny, Version: Atelier 0.1.0"
        ));
        let back = parse_a1111(&text);
        assert_eq!(back.prompt, r.params.prompt);
        assert_eq!(back.negative_prompt, "blurry, lowres");
        let rec = from_infotext("a1111", &back);
        assert_eq!(rec.scheduler, Some(Scheduler::DpmPp2mKarras));
        assert_eq!(
            (rec.width, rec.height, rec.steps, rec.seed),
            (Some(64), Some(64), Some(4), Some(1234))
        );
        assert_eq!(rec.cfg_scale, Some(7.0));
    }

    #[test]
    fn quoted_values_and_prompt_only_text() {
        let t = parse_a1111(
            "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 512x768, Model: \"my, model: v2\", Lora hashes: \"x: 1234\"",
        );
        assert_eq!(t.settings["Model"], "my, model: v2");
        assert_eq!(t.settings["Lora hashes"], "x: 1234");
        assert_eq!(t.settings["Sampler"], "Euler a");
        let only = parse_a1111("just a prompt, with commas");
        assert_eq!(only.prompt, "just a prompt, with commas");
        assert!(only.settings.is_empty());
    }

    #[test]
    fn png_chunks_carry_parameters_record_and_label() {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let label = ImplicitLabel::new(Some("ATELIER-TEST"));
        let png = encode_png(&img, &record(), &label).unwrap();
        let chunks = png_text(&png).unwrap();
        let keys: Vec<&str> = chunks.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["parameters", "AIGC", ATELIER_KEY, XMP_KEY] {
            assert!(keys.contains(&k), "{keys:?}");
        }
        let back = recall(&png).unwrap();
        assert_eq!(back.source, "atelier");
        assert_eq!(back.record.unwrap(), record());
        assert_eq!(back.label.unwrap(), label);
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded, img);
        assert!(recall(b"not a png").is_err());
    }

    #[test]
    fn peers_files_are_understood() {
        let comfy = r#"{"3":{"class_type":"KSampler","inputs":{"seed":42,"steps":20,"cfg":8,"sampler_name":"dpmpp_2m","scheduler":"karras","denoise":1,"positive":["6",0],"negative":["7",0],"model":["4",0],"latent_image":["5",0]}},"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"v1-5-pruned-emaonly.safetensors"}},"5":{"class_type":"EmptyLatentImage","inputs":{"width":512,"height":640,"batch_size":1}},"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a castle","clip":["4",1]}},"7":{"class_type":"CLIPTextEncode","inputs":{"text":"fog","clip":["4",1]}}}"#;
        let r = from_comfyui(comfy).unwrap();
        assert_eq!(
            (r.prompt.as_str(), r.negative_prompt.as_str()),
            ("a castle", "fog")
        );
        assert_eq!(
            (r.seed, r.steps, r.width, r.height),
            (Some(42), Some(20), Some(512), Some(640))
        );
        assert_eq!(r.scheduler, Some(Scheduler::DpmPp2mKarras));
        assert_eq!(r.strength, None);
        let invoke = r#"{"positive_prompt":"a lighthouse","negative_prompt":"","width":768,"height":512,"seed":7,"steps":30,"cfg_scale":6.5,"scheduler":"euler_a","model":{"name":"sd-1.5"}}"#;
        let r = from_invokeai(invoke).unwrap();
        assert_eq!(r.prompt, "a lighthouse");
        assert_eq!(r.scheduler, Some(Scheduler::EulerAncestral));
        assert_eq!(r.model.as_deref(), Some("sd-1.5"));
    }
}
