//! The advertising-law compliance checker, shared by every studio.
//!
//! Rule packs ([`pack`]) say what to flag; the text is normalised ([`normalize`]), literal
//! words are found with one aho-corasick automaton and patterns with regexes, everyday
//! compounds (`最近`, `第一次`) are dropped, and the SAMR 2023 carve-outs (self-comparison,
//! usage tips, standard grades, trademarks, sourced data) turn a violation into "needs
//! evidence". Every finding carries its span in the original text in scalar values, UTF-16
//! units (for the editor) and bytes.

pub mod labels;
pub mod normalize;
pub mod pack;

use std::collections::HashMap;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use normalize::Normalized;
pub use pack::{PackProblem, Severity};

/// The largest text one check takes (a whole show's scripts are far below it).
pub const MAX_CHECK_BYTES: usize = 16 << 20;
/// How far back a containing match may start (normalised bytes); longer matches are not merged.
const MAX_CONTAINER_BYTES: usize = 256;

/// What the text is for: decides which packs apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckOptions {
    /// Product category (`cosmetics`, `food`, `health_food`, `finance`, `education`, …).
    pub category: Option<String>,
    pub platform: Option<String>,
    /// The text is spoken by an AI (virtual) host.
    pub virtual_host: bool,
    /// Registered trademarks or product names the user owns: an absolute word inside one is
    /// "needs evidence", not a violation.
    pub trademarks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Violation,
    /// Lawful only if true and provable, or covered by an exception: check before publishing.
    NeedsEvidence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: String,
    pub pack: String,
    pub category: String,
    pub severity: Severity,
    pub verdict: Verdict,
    /// The original text that matched.
    pub matched: String,
    /// Span in Unicode scalar values.
    pub start: usize,
    pub end: usize,
    /// Span in UTF-16 code units (JavaScript string offsets).
    pub start_utf16: usize,
    pub end_utf16: usize,
    pub basis_zh: String,
    pub basis_en: String,
    pub reason_zh: String,
    pub reason_en: String,
    pub suggestions: Vec<String>,
    /// The exception that made it "needs evidence", if any.
    pub exception: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackInfo {
    pub id: String,
    pub name_zh: String,
    pub name_en: String,
    pub version: String,
    pub last_reviewed: String,
    pub rules: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The packs that were applied.
    pub packs: Vec<PackInfo>,
    pub chars: usize,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.verdict == Verdict::Violation)
            .count()
    }
}

struct CompiledRule {
    pack: usize,
    rule: pack::Rule,
    regex: Vec<Regex>,
    stop_regex: Vec<Regex>,
    exceptions: Vec<usize>,
}

/// Compiled packs. Build once ([`Checker::builtin`] or [`Checker::load`]), check many texts.
pub struct Checker {
    packs: Vec<pack::Pack>,
    rules: Vec<CompiledRule>,
    exceptions: Vec<(pack::ExceptionDef, Regex)>,
    /// Every rule's words; pattern i belongs to `word_rule[i]`.
    words: AhoCorasick,
    word_rule: Vec<usize>,
    /// Every rule's stop compounds; pattern i belongs to `stop_rule[i]`.
    stops: AhoCorasick,
    stop_rule: Vec<usize>,
    pub problems: Vec<PackProblem>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("packs", &self.packs.len())
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Checker {
    /// The packs shipped with Atelier.
    pub fn builtin() -> Result<Checker> {
        Self::from_packs(pack::load(None))
    }

    /// The shipped packs plus those in `dir` (same id replaces). Broken files are in `problems`.
    pub fn load(dir: &Path) -> Result<Checker> {
        Self::from_packs(pack::load(Some(dir)))
    }

    fn from_packs((packs, problems): (Vec<pack::Pack>, Vec<PackProblem>)) -> Result<Checker> {
        let compile = |re: &str| {
            Regex::new(re).map_err(|e| Error::Internal(format!("rule regex {re:?}: {e}")))
        };
        let mut exceptions = Vec::new();
        for p in &packs {
            for e in &p.exceptions {
                exceptions.push((e.clone(), compile(&e.regex)?));
            }
        }
        let mut rules = Vec::new();
        let (mut word_list, mut word_rule, mut stop_list, mut stop_rule) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut problems = problems;
        for (pi, p) in packs.iter().enumerate() {
            for r in &p.rules {
                let mut ex = Vec::new();
                for id in &r.exceptions {
                    match exceptions.iter().position(|(e, _)| &e.id == id) {
                        Some(i) => ex.push(i),
                        None => problems.push(PackProblem {
                            file: p.id.clone(),
                            message: format!(
                                "rule {} names an unknown exception “{id}”; ignored",
                                r.id
                            ),
                        }),
                    }
                }
                let ri = rules.len();
                for w in &r.words {
                    word_list.push(Normalized::new(w).text);
                    word_rule.push(ri);
                }
                for w in &r.stop {
                    stop_list.push(Normalized::new(w).text);
                    stop_rule.push(ri);
                }
                rules.push(CompiledRule {
                    pack: pi,
                    regex: r.regex.iter().map(|s| compile(s)).collect::<Result<_>>()?,
                    stop_regex: r
                        .stop_regex
                        .iter()
                        .map(|s| compile(s))
                        .collect::<Result<_>>()?,
                    exceptions: ex,
                    rule: r.clone(),
                });
            }
        }
        let automaton = |list: &[String]| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(list)
                .map_err(|e| Error::Internal(format!("word automaton: {e}")))
        };
        Ok(Checker {
            words: automaton(&word_list)?,
            stops: automaton(&stop_list)?,
            packs,
            rules,
            exceptions,
            word_rule,
            stop_rule,
            problems,
        })
    }

    pub fn packs(&self) -> Vec<PackInfo> {
        self.packs.iter().map(info).collect()
    }

    fn active_packs(&self, opts: &CheckOptions) -> Result<Vec<bool>> {
        if let Some(c) = &opts.category
            && !pack::CATEGORIES.contains(&c.as_str())
        {
            return Err(Error::invalid(format!(
                "unknown product category “{c}” (known: {})",
                pack::CATEGORIES.join(", ")
            )));
        }
        if let Some(p) = &opts.platform
            && !pack::PLATFORMS.contains(&p.as_str())
        {
            return Err(Error::invalid(format!(
                "unknown platform “{p}” (known: {})",
                pack::PLATFORMS.join(", ")
            )));
        }
        Ok(self
            .packs
            .iter()
            .map(|p| {
                let s = &p.scope;
                s.always
                    || opts
                        .category
                        .as_ref()
                        .is_some_and(|c| s.categories.contains(c))
                    || opts
                        .platform
                        .as_ref()
                        .is_some_and(|c| s.platforms.contains(c))
                    || (s.virtual_host && opts.virtual_host)
            })
            .collect())
    }

    /// Checks `text`. Findings are ordered by position; a finding inside a longer one is dropped
    /// (`全网最低价` is reported once, as a price claim).
    pub fn check(&self, text: &str, opts: &CheckOptions) -> Result<Report> {
        if text.len() > MAX_CHECK_BYTES {
            return Err(Error::invalid(format!(
                "the text is {} MB; the checker takes at most {} MB at a time",
                text.len() >> 20,
                MAX_CHECK_BYTES >> 20
            )));
        }
        let active = self.active_packs(opts)?;
        let rule_on: Vec<bool> = self.rules.iter().map(|r| active[r.pack]).collect();
        let norm = Normalized::new(text);
        let t = norm.text.as_str();

        // Candidate matches (rule, start, end) in normalised bytes.
        let mut cands: Vec<(usize, usize, usize)> = Vec::new();
        for m in self.words.find_overlapping_iter(t) {
            let r = self.word_rule[m.pattern().as_usize()];
            if rule_on[r] {
                cands.push((r, m.start(), m.end()));
            }
        }
        for (ri, r) in self.rules.iter().enumerate() {
            if !rule_on[ri] {
                continue;
            }
            for re in &r.regex {
                cands.extend(
                    re.find_iter(t)
                        .filter(|m| !m.is_empty())
                        .map(|m| (ri, m.start(), m.end())),
                );
            }
        }
        if cands.is_empty() {
            return Ok(Report {
                findings: Vec::new(),
                packs: self.applied(&active),
                chars: text.chars().count(),
            });
        }

        // Everyday compounds covering a candidate of their rule.
        let mut stops: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for m in self.stops.find_overlapping_iter(t) {
            stops
                .entry(self.stop_rule[m.pattern().as_usize()])
                .or_default()
                .push((m.start(), m.end()));
        }
        let trademarks: Vec<(usize, usize)> = opts
            .trademarks
            .iter()
            .map(|w| Normalized::new(w.trim()).text)
            .filter(|w| !w.is_empty())
            .flat_map(|w| {
                t.match_indices(w.as_str())
                    .map(|(i, s)| (i, i + s.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for v in stops.values_mut() {
            v.sort_unstable();
        }
        let mut trademarks = trademarks;
        trademarks.sort_unstable();
        // Spans are sorted by start and short: only those starting a little before can cover.
        let covers = |spans: &[(usize, usize)], s: usize, e: usize| {
            let from = spans.partition_point(|&(a, _)| a + MAX_CONTAINER_BYTES < s);
            let to = spans.partition_point(|&(a, _)| a <= s);
            spans[from..to].iter().any(|&(a, b)| a <= s && e <= b)
        };

        cands.retain(|&(r, s, e)| {
            if stops.get(&r).is_some_and(|v| covers(v, s, e)) {
                return false;
            }
            let rule = &self.rules[r];
            if rule.stop_regex.is_empty() {
                return true;
            }
            let (a, b) = norm.sentence(s, e);
            let sentence = &t[a..b];
            !rule.stop_regex.iter().any(|re| {
                re.find_iter(sentence)
                    .any(|m| a + m.start() <= s && e <= a + m.end())
            })
        });

        // One finding per place: drop a candidate inside another of the same rule, or inside a
        // longer one of another rule (the longer match is the more specific claim: 好评率100% is a
        // data claim, not a bare absolute).
        cands.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        cands.dedup();
        let keep: Vec<(usize, usize, usize)> = cands
            .iter()
            .enumerate()
            .filter(|&(i, &(r, s, e))| {
                // Only candidates starting a little before (patterns are short) can contain it.
                let from = cands.partition_point(|c| c.1 + MAX_CONTAINER_BYTES < s);
                let to = i + cands[i..].partition_point(|c| c.1 <= s);
                !cands[from..to].iter().any(|&(r2, s2, e2)| {
                    (r2, s2, e2) != (r, s, e)
                        && s2 <= s
                        && e <= e2
                        && (if r2 == r {
                            (s2, e2) != (s, e)
                        } else {
                            e2 - s2 > e - s
                        })
                })
            })
            .map(|(_, &c)| c)
            .collect();

        let byte_spans: Vec<(usize, usize)> = keep
            .iter()
            .map(|&(_, s, e)| norm.original_bytes(s, e))
            .collect();
        let spans = norm.spans(&byte_spans);
        let mut findings = Vec::with_capacity(keep.len());
        for ((r, s, e), span) in keep.into_iter().zip(spans) {
            let cr = &self.rules[r];
            let (a, b) = norm.sentence(s, e);
            let sentence = &t[a..b];
            let mut exception = cr
                .exceptions
                .iter()
                .map(|&i| &self.exceptions[i])
                .find(|(_, re)| re.is_match(sentence))
                .map(|(d, _)| d.id.clone());
            if exception.is_none() && covers(&trademarks, s, e) {
                exception = Some("trademark".to_owned());
            }
            let rule = &cr.rule;
            findings.push(Finding {
                rule: rule.id.clone(),
                pack: self.packs[cr.pack].id.clone(),
                category: rule.category.clone(),
                severity: rule.severity,
                verdict: if exception.is_some() {
                    Verdict::NeedsEvidence
                } else {
                    Verdict::Violation
                },
                matched: text[span.start_byte..span.end_byte].to_owned(),
                start: span.start,
                end: span.end,
                start_utf16: span.start_utf16,
                end_utf16: span.end_utf16,
                basis_zh: rule.basis_zh.clone(),
                basis_en: rule.basis_en.clone(),
                reason_zh: rule.reason_zh.clone(),
                reason_en: rule.reason_en.clone(),
                suggestions: rule.suggestions.clone(),
                exception,
            });
        }
        let chars = findings.last().map_or(0, |f| f.end)
            + text[byte_spans.last().map_or(0, |s| s.1)..].chars().count();
        Ok(Report {
            findings,
            packs: self.applied(&active),
            chars,
        })
    }

    fn applied(&self, active: &[bool]) -> Vec<PackInfo> {
        self.packs
            .iter()
            .zip(active)
            .filter(|(_, on)| **on)
            .map(|(p, _)| info(p))
            .collect()
    }

    /// A short summary of the rules that apply, for generation prompts: copy should be compliant
    /// by construction, with the checker as the second line. Kept short (a few examples per rule)
    /// because small local models have small contexts.
    pub fn prompt_summary(&self, opts: &CheckOptions, zh: bool) -> Result<String> {
        let active = self.active_packs(opts)?;
        let mut words: Vec<&str> = Vec::new();
        for r in self.rules.iter().filter(|r| active[r.pack]) {
            words.extend(r.rule.words.iter().take(3).map(String::as_str));
        }
        Ok(if zh {
            format!(
                "合规要求：不要使用这些说法及同类说法：{}。价格对比写明依据，限时限量写明具体时间和数量，数据写明来源，不宣称医疗功效。",
                words.join("、")
            )
        } else {
            format!(
                "Compliance (Chinese advertising law): avoid these and similar phrases: {}. State the basis of any price comparison, the actual time and quantity of any limit, the source of any figure; no medical claims.",
                words.join(", ")
            )
        })
    }
}

fn info(p: &pack::Pack) -> PackInfo {
    PackInfo {
        id: p.id.clone(),
        name_zh: p.name_zh.clone(),
        name_en: p.name_en.clone(),
        version: p.version.clone(),
        last_reviewed: p.last_reviewed.clone(),
        rules: p.rules.len(),
    }
}
