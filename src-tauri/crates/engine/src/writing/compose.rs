//! From a template and its filled form to text-generation jobs: the rendered prompt (with tone,
//! brand voice and the rules in scope), a system message for the output language, and one job
//! per variant with its own seed.

use serde::{Deserialize, Serialize};

use super::templates::{BrandVoice, PromptContext, Template, Values};
use crate::compliance::{CheckOptions, Checker};
use crate::error::{Error, Result};
use crate::text::chat::{ChatMessage, Role};
use crate::text::service::{MAX_SEED, TextJob};
use crate::text::{SamplingParams, TextRequest};

/// The most variants one request makes (they are compared side by side).
pub const MAX_VARIANTS: u32 = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRequest {
    pub project_id: i64,
    pub template_id: String,
    pub values: Values,
    #[serde(default)]
    pub tone: Option<String>,
    #[serde(default)]
    pub brand: Option<BrandVoice>,
    pub model: String,
    #[serde(default)]
    pub params: SamplingParams,
    /// 1–4.
    pub variants: u32,
}

/// The compliance scope a template's output is checked (and prompted) with.
pub fn check_options(t: &Template, values: &Values) -> CheckOptions {
    let has = |s: &str| t.compliance.iter().any(|c| c == s);
    CheckOptions {
        category: if has("category") {
            values
                .get("category")
                .filter(|c| !c.is_empty() && *c != "general")
                .cloned()
        } else {
            None
        },
        platform: if has("platform") {
            t.platform.clone()
        } else {
            None
        },
        virtual_host: has("virtual_host")
            && values.get("virtual_host").is_some_and(|v| v == "true"),
        trademarks: Vec::new(),
    }
}

/// Whether the copy is written in Chinese.
pub fn writes_chinese(t: &Template, values: &Values) -> bool {
    match t.output_language.as_str() {
        "en" => false,
        "input" => values.get("language").is_none_or(|l| l != "en"),
        _ => true,
    }
}

/// One job per variant. Variant `i` uses `seed + i` when a seed is given, so a set of variants
/// is reproducible; otherwise each draws its own (recorded with the generation).
pub fn jobs(req: &CopyRequest, t: &Template, checker: &Checker) -> Result<Vec<TextJob>> {
    if !(1..=MAX_VARIANTS).contains(&req.variants) {
        return Err(Error::invalid(format!(
            "variants must be between 1 and {MAX_VARIANTS}"
        )));
    }
    if let Some(seed) = req.params.seed
        && seed + u64::from(req.variants) > MAX_SEED
    {
        return Err(Error::invalid(format!(
            "the seed must be at most {}",
            MAX_SEED - u64::from(req.variants)
        )));
    }
    let zh = writes_chinese(t, &req.values);
    let mut opts = check_options(t, &req.values);
    // The brand's own trademarks are exceptions wherever its copy is checked.
    opts.trademarks = req
        .brand
        .as_ref()
        .map(|b| b.trademarks.clone())
        .unwrap_or_default();
    let ctx = PromptContext {
        tone: req.tone.clone(),
        brand: req.brand.clone(),
        rules: Some(checker.prompt_summary(&opts, zh)?),
    };
    let prompt = t.render(&req.values, &ctx)?;
    let system = if zh {
        "你是资深的中文电商与新媒体文案。按要求直接输出文案正文，不要解释，不要重复要求。"
    } else {
        "You are an experienced e-commerce copywriter. Output only the copy that was asked for, with no explanations."
    };
    let messages = vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, prompt),
    ];
    (0..req.variants)
        .map(|i| {
            let mut params = req.params.clone();
            params.seed = req.params.seed.map(|s| s + u64::from(i));
            let request = TextRequest {
                model: req.model.clone(),
                messages: messages.clone(),
                params,
            };
            request.validate()?;
            Ok(TextJob {
                project_id: req.project_id,
                request,
                purpose: Some(serde_json::json!({
                    "kind": "copy",
                    "template": t.id,
                    "values": req.values,
                    "tone": req.tone,
                    "variant": i + 1,
                    "variants": req.variants,
                    "check": opts,
                })),
            })
        })
        .collect()
}
