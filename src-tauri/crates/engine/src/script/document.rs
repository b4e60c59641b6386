//! The live-script document: what a `script` document's versions hold (as JSON) and what the
//! JSON export writes. The schema is `docs/schemas/live-script.schema.json`; `SCHEMA_VERSION`
//! changes when a field changes meaning.

use serde::{Deserialize, Serialize};

use super::product::{Product, ShowSettings};
use super::skeleton::SegmentKind;
use super::{Annotator, Line, Segment, SegmentStatus};
use crate::compliance::Checker;
use crate::error::{Error, Result};

pub const SCHEMA_VERSION: u32 = 1;

/// Most segments a script may hold (a 30-product show has 30 × 8 + 2).
pub const MAX_SEGMENTS: usize = 400;
/// Most products in one whole-show script.
pub const MAX_SHOW_PRODUCTS: usize = 30;
/// Longest line a user may type (characters).
pub const MAX_LINE_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    /// 单品脚本 / 手卡: one product's slot.
    Product,
    /// 整场: opening, the products in order with transitions, closing.
    Show,
}

/// A product's part in a whole show (排品).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductRole {
    /// 引流款: below cost, holds viewers.
    Traffic,
    /// 福利款: about cost, lifts interaction.
    Welfare,
    /// 利润款: full price.
    Profit,
}

/// A product as the script used it: a copy of the facts (later edits of the saved product do
/// not rewrite an old script), the saved product it came from, and its role in the show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShowProduct {
    #[serde(default)]
    pub product_id: Option<i64>,
    #[serde(default)]
    pub role: Option<ProductRole>,
    pub product: Product,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub schema_version: u32,
    pub kind: ScriptKind,
    pub title: String,
    pub show: ShowSettings,
    pub products: Vec<ShowProduct>,
    pub segments: Vec<Segment>,
    /// The model that wrote it and the seed its segments' seeds derive from.
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub seed: u64,
}

impl Script {
    /// Sum of the segments' targets (seconds).
    pub fn target_secs(&self) -> u32 {
        self.segments.iter().map(|s| s.target_secs).sum()
    }

    /// Sum of the estimated durations (seconds).
    pub fn est_secs(&self) -> f64 {
        self.segments.iter().map(|s| s.est_secs).sum()
    }

    /// Segments waiting to be regenerated.
    pub fn placeholders(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.status == SegmentStatus::Placeholder)
            .count()
    }

    /// Sets every segment's start from the targets before it (after a reorder or delete).
    pub fn retime(&mut self) {
        let mut start = 0;
        for s in &mut self.segments {
            s.start_secs = start;
            start += s.target_secs;
        }
    }

    /// Checks what a user (or a file) handed in: sizes, product references, settings. Never
    /// panics on any input.
    pub fn validate(&self) -> Result<()> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::invalid(format!(
                "this script has schema version {}; this Atelier reads version {SCHEMA_VERSION}",
                self.schema_version
            )));
        }
        self.show.validate()?;
        if self.products.is_empty() || self.products.len() > MAX_SHOW_PRODUCTS {
            return Err(Error::invalid(format!(
                "a script needs 1 to {MAX_SHOW_PRODUCTS} products"
            )));
        }
        if self.kind == ScriptKind::Product && self.products.len() != 1 {
            return Err(Error::invalid("a product script has exactly one product"));
        }
        if self.segments.len() > MAX_SEGMENTS {
            return Err(Error::invalid(format!(
                "a script may have at most {MAX_SEGMENTS} segments"
            )));
        }
        if self.title.chars().count() > 200 {
            return Err(Error::invalid(
                "a script title may be at most 200 characters",
            ));
        }
        for (i, s) in self.segments.iter().enumerate() {
            if s.product.is_some_and(|p| p >= self.products.len()) {
                return Err(Error::invalid(format!(
                    "segment {} names a product the script does not have",
                    i + 1
                )));
            }
            if !(1..=3600).contains(&s.target_secs) {
                return Err(Error::invalid(format!(
                    "segment {}: the target must be 1 to 3600 seconds",
                    i + 1
                )));
            }
            let texts = s
                .host
                .iter()
                .chain(&s.assistant)
                .flat_map(|l| std::iter::once(&l.text).chain(&l.alts))
                .chain(&s.screen);
            for t in texts {
                if t.chars().count() > MAX_LINE_CHARS {
                    return Err(Error::invalid(format!(
                        "segment {}: a line may be at most {MAX_LINE_CHARS} characters",
                        i + 1
                    )));
                }
            }
        }
        Ok(())
    }

    /// Re-checks every line after an edit: durations, invented numbers, compliance findings;
    /// empty lines are dropped and a placeholder that now has host lines counts as written.
    pub fn refresh(&mut self, checker: &Checker) -> Result<()> {
        for p in &mut self.products {
            p.product = p.product.normalized()?;
        }
        let per_product: Vec<Annotator<'_>> = self
            .products
            .iter()
            .map(|p| Annotator::new(checker, &p.product, &self.show))
            .collect();
        let lineup = Annotator::for_lineup(checker, &self.products, &self.show);
        for seg in &mut self.segments {
            let a = seg
                .product
                .and_then(|i| per_product.get(i))
                .unwrap_or(&lineup);
            let recheck = |lines: &[Line]| -> Result<Vec<Line>> {
                lines
                    .iter()
                    .filter(|l| !l.text.trim().is_empty())
                    .map(|l| {
                        a.line(
                            l.text.trim(),
                            l.alts
                                .iter()
                                .map(|s| s.trim().to_owned())
                                .filter(|s| !s.is_empty())
                                .collect(),
                        )
                    })
                    .collect()
            };
            seg.host = recheck(&seg.host)?;
            seg.assistant = recheck(&seg.assistant)?;
            seg.screen.retain(|s| !s.trim().is_empty());
            seg.est_secs = seg.host.iter().map(|l| l.est_secs).sum();
            if seg.status == SegmentStatus::Placeholder && !seg.host.is_empty() {
                seg.status = SegmentStatus::Written;
                seg.note.clear();
            }
        }
        self.retime();
        Ok(())
    }

    /// The script's name for a segment: "价格福利" or "保温杯 · 价格福利".
    pub fn segment_heading(&self, i: usize) -> String {
        let Some(seg) = self.segments.get(i) else {
            return String::new();
        };
        let en = self.show.language == "en";
        let name = if en {
            seg.kind.name_en()
        } else {
            seg.kind.name_zh()
        };
        match (self.kind, seg.product.and_then(|p| self.products.get(p))) {
            (ScriptKind::Show, Some(p)) if seg.kind != SegmentKind::Transition => {
                format!("{} · {name}", p.product.name)
            }
            (ScriptKind::Show, Some(p)) => format!("{name} → {}", p.product.name),
            _ => name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{placeholder, product, skeleton};

    pub(crate) fn script() -> Script {
        let p = product::sample().normalized().unwrap();
        let show = ShowSettings::default();
        let segments = skeleton::plan(&p, &show)
            .iter()
            .map(|pl| Segment {
                product: Some(0),
                ..placeholder(pl, "not written")
            })
            .collect();
        Script {
            schema_version: SCHEMA_VERSION,
            kind: ScriptKind::Product,
            title: p.name.clone(),
            show,
            products: vec![ShowProduct {
                product_id: None,
                role: None,
                product: p,
            }],
            segments,
            model: "m".into(),
            seed: 1,
        }
    }

    #[test]
    fn an_edited_line_is_checked_again_and_a_filled_placeholder_counts_as_written() {
        let checker = Checker::builtin().unwrap();
        let mut s = script();
        s.segments[4].host = vec![Line {
            text: "全网最低价，只要 99 元！".into(),
            alts: vec![" ".into()],
            est_secs: 0.0,
            findings: vec![],
            unknown_numbers: vec![],
        }];
        s.segments[4].host.push(Line {
            text: "   ".into(),
            alts: vec![],
            est_secs: 0.0,
            findings: vec![],
            unknown_numbers: vec![],
        });
        s.refresh(&checker).unwrap();
        let seg = &s.segments[4];
        assert_eq!(seg.status, SegmentStatus::Written);
        assert_eq!(seg.host.len(), 1, "the empty line is dropped");
        assert!(seg.host[0].alts.is_empty());
        assert!(seg.est_secs > 2.0);
        assert!(
            seg.host[0]
                .findings
                .iter()
                .any(|f| f.matched.contains("最低价"))
        );
        assert_eq!(
            seg.host[0]
                .unknown_numbers
                .iter()
                .map(|u| u.text.as_str())
                .collect::<Vec<_>>(),
            ["99 元"]
        );
        assert_eq!(s.placeholders(), 6);
    }

    #[test]
    fn a_script_reads_back_exactly_from_its_json() {
        let checker = Checker::builtin().unwrap();
        let mut s = script();
        s.segments[0].assistant = vec![Line {
            text: "That is what I am saying today".into(),
            alts: vec![],
            est_secs: 0.0,
            findings: vec![],
            unknown_numbers: vec![],
        }];
        s.refresh(&checker).unwrap();
        assert_eq!(
            s.segments[0].assistant[0].est_secs.to_string(),
            "2.8636363636363638"
        );
        let back: Script = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn reordering_retimes_and_bad_input_is_refused() {
        let mut s = script();
        s.segments.swap(0, 2);
        s.retime();
        assert_eq!(s.segments[0].start_secs, 0);
        assert_eq!(s.segments[1].start_secs, 90);
        assert_eq!(s.target_secs(), 300);
        s.validate().unwrap();
        let mut bad = s.clone();
        bad.segments[0].product = Some(7);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("segment 1")
        );
        let mut bad = s.clone();
        bad.schema_version = 99;
        assert_eq!(bad.validate().unwrap_err().kind(), "invalid_input");
        let mut bad = s.clone();
        bad.products.push(bad.products[0].clone());
        assert!(bad.validate().is_err(), "a product script has one product");
        let mut bad = s;
        bad.segments[1].screen.push("x".repeat(MAX_LINE_CHARS + 1));
        assert!(bad.validate().is_err());
    }
}
