//! Rule packs: data files (`assets/compliance/*.toml`) describing what to flag, why, and what to
//! write instead. The packs shipped with the app are compiled in; a folder of packs can add to
//! them or replace one by id, so the word lists can be updated without a release.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The packs shipped with Atelier, by file name.
pub const BUILTIN: [(&str, &str); 10] = [
    (
        "base.toml",
        include_str!("../../../../../assets/compliance/base.toml"),
    ),
    (
        "cosmetics.toml",
        include_str!("../../../../../assets/compliance/cosmetics.toml"),
    ),
    (
        "food.toml",
        include_str!("../../../../../assets/compliance/food.toml"),
    ),
    (
        "finance.toml",
        include_str!("../../../../../assets/compliance/finance.toml"),
    ),
    (
        "education.toml",
        include_str!("../../../../../assets/compliance/education.toml"),
    ),
    (
        "platform.toml",
        include_str!("../../../../../assets/compliance/platform.toml"),
    ),
    (
        "douyin.toml",
        include_str!("../../../../../assets/compliance/douyin.toml"),
    ),
    (
        "xiaohongshu.toml",
        include_str!("../../../../../assets/compliance/xiaohongshu.toml"),
    ),
    (
        "taobao.toml",
        include_str!("../../../../../assets/compliance/taobao.toml"),
    ),
    (
        "virtual_host.toml",
        include_str!("../../../../../assets/compliance/virtual_host.toml"),
    ),
];

/// Product categories a pack can be scoped to (the product form's choices).
pub const CATEGORIES: [&str; 9] = [
    "general",
    "cosmetics",
    "food",
    "health_food",
    "finance",
    "education",
    "apparel",
    "electronics",
    "home",
];
/// Platforms a pack can be scoped to.
pub const PLATFORMS: [&str; 5] = ["douyin", "xiaohongshu", "taobao", "kuaishou", "wechat"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// Platform style risk, advisory.
    #[serde(rename = "L", alias = "low")]
    Low,
    /// Illegal unless verifiable, or a platform penalty.
    #[serde(rename = "M", alias = "medium")]
    Medium,
    /// Likely illegal for any product.
    #[serde(rename = "H", alias = "high")]
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// When a pack applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default)]
    pub always: bool,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default)]
    pub virtual_host: bool,
}

/// A sentence pattern that turns a finding into "needs evidence" (the SAMR 2023 carve-outs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionDef {
    pub id: String,
    pub note_zh: String,
    pub note_en: String,
    pub regex: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub severity: Severity,
    /// Literal phrases (matched with aho-corasick on normalised text).
    #[serde(default)]
    pub words: Vec<String>,
    /// Regular expressions on normalised text.
    #[serde(default)]
    pub regex: Vec<String>,
    /// Everyday compounds that contain a pattern but are not the claim (`最近` for `最`).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Like `stop`, as regular expressions (`限时` followed by an actual time).
    #[serde(default)]
    pub stop_regex: Vec<String>,
    pub basis_zh: String,
    pub basis_en: String,
    pub reason_zh: String,
    pub reason_en: String,
    #[serde(default)]
    pub suggestions: Vec<String>,
    /// Ids of exceptions that downgrade a finding to "needs evidence".
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// The claim is lawful when the seller can prove it (sales rankings, prices, stock).
    #[serde(default)]
    pub evidence_can_clear: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub id: String,
    pub name_zh: String,
    pub name_en: String,
    pub version: String,
    pub last_reviewed: String,
    pub scope: Scope,
    #[serde(default)]
    pub exceptions: Vec<ExceptionDef>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Pack {
    /// Parses and checks one pack file; `name` is used in errors.
    pub fn parse(name: &str, text: &str) -> Result<Pack> {
        let pack: Pack = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("rule pack {name}: {}", e.message().trim())))?;
        pack.check(name)?;
        Ok(pack)
    }

    fn check(&self, name: &str) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("rule pack {name}: {what}")));
        if self.id.trim().is_empty() {
            return bad("the pack has no id".into());
        }
        let s = &self.scope;
        if !s.always && s.categories.is_empty() && s.platforms.is_empty() && !s.virtual_host {
            return bad(
                "[scope] says nowhere: set always, categories, platforms or virtual_host".into(),
            );
        }
        for c in &s.categories {
            if !CATEGORIES.contains(&c.as_str()) {
                return bad(format!(
                    "unknown category “{c}” (known: {})",
                    CATEGORIES.join(", ")
                ));
            }
        }
        for p in &s.platforms {
            if !PLATFORMS.contains(&p.as_str()) {
                return bad(format!(
                    "unknown platform “{p}” (known: {})",
                    PLATFORMS.join(", ")
                ));
            }
        }
        for e in &self.exceptions {
            if let Err(err) = regex::Regex::new(&e.regex) {
                return bad(format!("exception {}: invalid regex: {err}", e.id));
            }
        }
        for r in &self.rules {
            if r.words.is_empty() && r.regex.is_empty() {
                return bad(format!("rule {} has no words and no regex", r.id));
            }
            if r.words.iter().chain(&r.stop).any(|w| w.trim().is_empty()) {
                return bad(format!("rule {} has an empty word", r.id));
            }
            for re in r.regex.iter().chain(&r.stop_regex) {
                if let Err(err) = regex::Regex::new(re) {
                    return bad(format!("rule {}: invalid regex {re:?}: {err}", r.id));
                }
            }
        }
        Ok(())
    }
}

/// A pack file that could not be used, and why (the other packs still load).
pub type PackProblem = crate::fsutil::FileProblem;

/// The shipped packs, then `*.toml` in `dir` (when given and present): a pack whose id is already
/// loaded replaces it. Broken files are reported and skipped.
pub fn load(dir: Option<&Path>) -> (Vec<Pack>, Vec<PackProblem>) {
    let mut packs: Vec<Pack> = Vec::new();
    let mut problems = Vec::new();
    let builtin = BUILTIN
        .iter()
        .map(|&(name, text)| Ok((name.to_owned(), text.to_owned())));
    let user = dir
        .map(|d| crate::fsutil::read_toml_files(d, 4 << 20, "a rule pack"))
        .unwrap_or_default();
    for file in builtin.chain(user) {
        match file.and_then(|(name, text)| {
            Pack::parse(&name, &text).map_err(|e| PackProblem {
                file: name.clone(),
                message: e.to_string(),
            })
        }) {
            Ok(p) => {
                packs.retain(|q| q.id != p.id);
                packs.push(p);
            }
            Err(problem) => problems.push(problem),
        }
    }
    (packs, problems)
}
