//! The visible AI-content label drawn onto exported images (the explicit label of the 2025
//! labelling measures; the implicit one is the PNG's XMP). The text must say both "AI" (or
//! 人工智能) and 生成/合成, and its ink is at least 5% of the image's shorter side tall.
//!
//! Glyphs come from a CJK font already on the system (Debian's `fonts-wqy-microhei`, which the
//! set-up installs; Noto CJK, PingFang or Microsoft YaHei elsewhere), or `ATELIER_LABEL_FONT`.

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The default text: short, and the wording the measures' examples use.
pub const DEFAULT_TEXT: &str = "AI生成";
/// The ink of the text is at least this share of the image's shorter side.
pub const MIN_HEIGHT_RATIO: f32 = 0.05;
const MAX_CHARS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corner {
    TopLeft,
    TopRight,
    BottomLeft,
    #[default]
    BottomRight,
}

/// Where the label went, in pixels (for tests and the export report).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabelBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// The drawn text's ink height.
    pub text_height: u32,
}

/// Checks the wording: it must name AI and say the image was generated or synthesised.
pub fn validate_text(text: &str) -> Result<&str> {
    let t = text.trim();
    if t.is_empty() {
        return Err(Error::invalid("the label text is empty"));
    }
    if t.chars().count() > MAX_CHARS {
        return Err(Error::invalid(format!(
            "the label text is longer than {MAX_CHARS} characters"
        )));
    }
    let names_ai = t.to_uppercase().contains("AI") || t.contains("人工智能");
    let says_made = t.contains("生成") || t.contains("合成");
    if !(names_ai && says_made) {
        return Err(Error::invalid(
            "the label must keep \"AI\" or \"人工智能\" and \"生成\" or \"合成\" (e.g. AI生成)",
        ));
    }
    Ok(t)
}

fn font_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ATELIER_LABEL_FONT") {
        out.push(PathBuf::from(p));
    }
    for p in [
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
        "/System/Library/Fonts/PingFang.ttc",
        "/System/Library/Fonts/STHeiti Medium.ttc",
        "C:\\Windows\\Fonts\\msyh.ttc",
        "C:\\Windows\\Fonts\\simhei.ttf",
    ] {
        out.push(PathBuf::from(p));
    }
    out
}

fn load_font(path: &Path, text: &str) -> Option<FontVec> {
    let bytes = std::fs::read(path).ok()?;
    let font = FontVec::try_from_vec_and_index(bytes, 0).ok()?;
    text.chars()
        .filter(|c| !c.is_whitespace())
        .all(|c| font.glyph_id(c).0 != 0)
        .then_some(font)
}

/// The first installed font that has every character of `text`.
pub fn find_font(text: &str) -> Result<FontVec> {
    font_candidates()
        .iter()
        .find_map(|p| load_font(p, text))
        .ok_or_else(|| {
            Error::invalid(
                "no font with Chinese characters was found for the visible label; install \
                 fonts-wqy-microhei (Debian) or set ATELIER_LABEL_FONT to a .ttf/.ttc file",
            )
        })
}

/// Lays `text` out at `scale`; returns each glyph's outline and the ink's bounds.
fn layout(
    font: &FontVec,
    text: &str,
    scale: PxScale,
) -> (Vec<ab_glyph::OutlinedGlyph>, ab_glyph::Rect) {
    let sf = font.as_scaled(scale);
    let mut x = 0.0f32;
    let mut prev = None;
    let mut glyphs = Vec::new();
    for c in text.chars() {
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            x += sf.kern(p, id);
        }
        let g = id.with_scale_and_position(scale, point(x, sf.ascent()));
        x += sf.h_advance(id);
        prev = Some(id);
        if let Some(o) = font.outline_glyph(g) {
            glyphs.push(o);
        }
    }
    let mut bounds = ab_glyph::Rect {
        min: point(f32::MAX, f32::MAX),
        max: point(f32::MIN, f32::MIN),
    };
    for g in &glyphs {
        let b = g.px_bounds();
        bounds.min.x = bounds.min.x.min(b.min.x);
        bounds.min.y = bounds.min.y.min(b.min.y);
        bounds.max.x = bounds.max.x.max(b.max.x);
        bounds.max.y = bounds.max.y.max(b.max.y);
    }
    (glyphs, bounds)
}

/// Draws white `text` on a dark box in `corner`. The text is sized so that its ink is at least
/// [`MIN_HEIGHT_RATIO`] of the shorter side; it is refused when it would not fit the width.
pub fn draw(
    img: &mut image::RgbImage,
    text: &str,
    corner: Corner,
    font: &FontVec,
) -> Result<LabelBox> {
    let text = validate_text(text)?;
    let (w, h) = img.dimensions();
    let short = w.min(h) as f32;
    let want = (short * MIN_HEIGHT_RATIO).ceil().max(8.0);
    // The ink of CJK glyphs is a little shorter than the em; measure, then scale up to fit.
    // Pixel bounds are whole pixels, so grow in a few rounds rather than in one ratio.
    let mut px = want;
    let (glyphs, b) = loop {
        let (glyphs, b) = layout(font, text, PxScale::from(px));
        let ink = b.height();
        if ink <= 0.0 {
            return Err(Error::invalid("the label text has nothing to draw"));
        }
        if ink >= want {
            break (glyphs, b);
        }
        px = (px * want / ink).max(px + 1.0);
    };
    let text_w = b.width().ceil() as u32;
    let text_h = b.height().ceil() as u32;
    let pad = ((text_h as f32) * 0.35).ceil() as u32;
    let margin = ((short * 0.02).ceil() as u32).max(2);
    let box_w = text_w + 2 * pad;
    let box_h = text_h + 2 * pad;
    if box_w + 2 * margin > w || box_h + 2 * margin > h {
        return Err(Error::invalid(format!(
            "the label \"{text}\" does not fit a {w}×{h} image at the required size; shorten it"
        )));
    }
    let x0 = match corner {
        Corner::TopLeft | Corner::BottomLeft => margin,
        Corner::TopRight | Corner::BottomRight => w - margin - box_w,
    };
    let y0 = match corner {
        Corner::TopLeft | Corner::TopRight => margin,
        Corner::BottomLeft | Corner::BottomRight => h - margin - box_h,
    };
    // A translucent dark box keeps white text legible on any picture.
    for y in y0..y0 + box_h {
        for x in x0..x0 + box_w {
            let p = img.get_pixel_mut(x, y);
            for c in p.0.iter_mut() {
                *c = ((*c as f32) * 0.4) as u8;
            }
        }
    }
    let ox = x0 as f32 + pad as f32 - b.min.x;
    let oy = y0 as f32 + pad as f32 - b.min.y;
    for g in &glyphs {
        let gb = g.px_bounds();
        g.draw(|gx, gy, coverage| {
            let x = (gb.min.x + ox) as i64 + gx as i64;
            let y = (gb.min.y + oy) as i64 + gy as i64;
            if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                return;
            }
            let a = coverage.clamp(0.0, 1.0);
            let p = img.get_pixel_mut(x as u32, y as u32);
            for c in p.0.iter_mut() {
                *c = ((*c as f32) * (1.0 - a) + 255.0 * a).round() as u8;
            }
        });
    }
    Ok(LabelBox {
        x: x0,
        y: y0,
        width: box_w,
        height: box_h,
        text_height: text_h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording_must_name_ai_and_generation() {
        assert!(validate_text("AI生成").is_ok());
        assert!(validate_text("由人工智能合成").is_ok());
        assert!(validate_text(" ai 生成 ").is_ok());
        assert!(validate_text("生成").is_err());
        assert!(validate_text("AI").is_err());
        assert!(validate_text("   ").is_err());
        assert!(validate_text(&"AI生成".repeat(10)).is_err());
    }

    #[test]
    fn label_is_tall_enough_and_in_its_corner() {
        let Ok(font) = find_font(DEFAULT_TEXT) else {
            panic!("tests need a CJK font (fonts-wqy-microhei); the set-up installs it");
        };
        for (w, h) in [(512u32, 512u32), (768, 320), (128, 128)] {
            for corner in [Corner::TopLeft, Corner::BottomRight] {
                let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 30, 30]));
                let b = draw(&mut img, DEFAULT_TEXT, corner, &font).unwrap();
                let short = w.min(h) as f32;
                assert!(
                    b.text_height as f32 >= short * MIN_HEIGHT_RATIO,
                    "{b:?} on {w}x{h}"
                );
                // Light ink (the background is red, darkened in the box) landed inside the box, and nothing changed outside it.
                let inside = (b.y..b.y + b.height)
                    .flat_map(|y| (b.x..b.x + b.width).map(move |x| (x, y)))
                    .filter(|&(x, y)| img.get_pixel(x, y).0[1] > 160)
                    .count();
                assert!(inside > 10, "no white text drawn: {b:?}");
                let changed_outside = img
                    .enumerate_pixels()
                    .filter(|(x, y, p)| {
                        let outside =
                            *x < b.x || *x >= b.x + b.width || *y < b.y || *y >= b.y + b.height;
                        outside && p.0 != [200, 30, 30]
                    })
                    .count();
                assert_eq!(changed_outside, 0);
                match corner {
                    Corner::TopLeft => assert!(b.x < w / 4 && b.y < h / 4),
                    _ => assert!(b.x + b.width > w * 3 / 4 && b.y + b.height > h * 3 / 4),
                }
            }
        }
    }

    #[test]
    fn a_label_too_wide_for_the_image_is_refused() {
        let font = find_font("AI生成人工智能合成内容").unwrap();
        let mut img = image::RgbImage::new(64, 64);
        let before = img.clone();
        assert!(
            draw(
                &mut img,
                "本图片由人工智能合成生成内容AI",
                Corner::TopLeft,
                &font
            )
            .is_err()
        );
        assert_eq!(img, before);
    }
}
