//! Copy templates as data: one TOML file per template in `assets/templates/` (compiled in) and
//! the user's own copies in `$ATELIER_HOME/templates/` (same id replaces). Each declares its
//! inputs (a form is generated from them), framework, platform limits, tones, output language,
//! compliance packs and a minijinja prompt. A broken file is reported by name and skipped.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::Environment;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/builtin_templates.rs"));

pub const GROUPS: [&str; 5] = ["product", "platform", "ads", "live", "rewrite"];
pub const FRAMEWORKS: [&str; 12] = [
    "none", "AIDA", "PAS", "FAB", "FABE", "BAB", "4P", "PASTOR", "QUEST", "STAR", "4U", "PRUNE",
];
/// The longest prompt a template may render (characters): beyond it the form's inputs are too
/// long for the small local models' context.
pub const MAX_PROMPT_CHARS: usize = 12_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// One line.
    Text,
    /// Several lines.
    Textarea,
    /// One of `options`.
    Select,
    Number,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: InputKind,
    pub label_zh: String,
    pub label_en: String,
    #[serde(default)]
    pub help_zh: String,
    #[serde(default)]
    pub help_en: String,
    #[serde(default)]
    pub required: bool,
    /// Characters (text, textarea).
    #[serde(default)]
    pub max_chars: Option<usize>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub default: Option<String>,
    /// An example value: shown as the placeholder and used by the tests to render every template.
    #[serde(default)]
    pub sample: Option<String>,
}

/// What the platform allows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Body characters.
    #[serde(default)]
    pub chars: Option<usize>,
    #[serde(default)]
    pub title_chars: Option<usize>,
    #[serde(default)]
    pub hashtags: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    pub group: String,
    pub name_zh: String,
    pub name_en: String,
    #[serde(default)]
    pub description_zh: String,
    #[serde(default)]
    pub description_en: String,
    pub framework: String,
    /// `zh`, `en`, or `input` (the `language` input decides).
    pub output_language: String,
    #[serde(default)]
    pub tones: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Platform the compliance platform packs are chosen for (douyin, xiaohongshu, taobao…).
    #[serde(default)]
    pub platform: Option<String>,
    /// Extra pack scopes to run besides the base pack: `category` (from the `category` input),
    /// `platform`, `virtual_host`.
    #[serde(default)]
    pub compliance: Vec<String>,
    pub inputs: Vec<Input>,
    pub prompt: String,
    /// Where it came from: `builtin` or the user's file.
    #[serde(default, skip_deserializing)]
    pub source: String,
}

/// A template file that could not be used, and why.
pub type TemplateProblem = crate::fsutil::FileProblem;

/// Values typed into a template's form, by input id.
pub type Values = BTreeMap<String, String>;

/// What every prompt gets besides the form's values.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PromptContext {
    pub tone: Option<String>,
    /// Brand voice of the project: tone words, must-mention and banned terms, example texts.
    pub brand: Option<BrandVoice>,
    /// Short summary of the compliance rules in scope ([`crate::compliance::Checker::prompt_summary`]).
    pub rules: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrandVoice {
    #[serde(default)]
    pub tone_words: Vec<String>,
    #[serde(default)]
    pub must_mention: Vec<String>,
    #[serde(default)]
    pub banned: Vec<String>,
    #[serde(default)]
    pub examples: Vec<String>,
    /// Registered trademarks and product names the brand owns (e.g. “最牛”牌): the checker treats
    /// an absolute word inside one as “needs evidence” (the trademark certificate), not a violation.
    #[serde(default)]
    pub trademarks: Vec<String>,
}

impl BrandVoice {
    /// Trims entries, drops empty ones, and checks the sizes (a brand voice goes into every
    /// prompt of its project, so it must stay short).
    pub fn normalized(&self) -> Result<BrandVoice> {
        let clean =
            |v: &[String], what: &str, max_items: usize, max_chars: usize| -> Result<Vec<String>> {
                let items: Vec<String> = v
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if items.len() > max_items {
                    return Err(Error::invalid(format!(
                        "{what}: at most {max_items} entries"
                    )));
                }
                if let Some(long) = items.iter().find(|s| s.chars().count() > max_chars) {
                    return Err(Error::invalid(format!(
                        "{what}: “{}…” is longer than {max_chars} characters",
                        long.chars().take(12).collect::<String>()
                    )));
                }
                Ok(items)
            };
        Ok(BrandVoice {
            tone_words: clean(&self.tone_words, "tone words", 20, 20)?,
            must_mention: clean(&self.must_mention, "must-mention terms", 20, 40)?,
            banned: clean(&self.banned, "banned words", 100, 40)?,
            examples: clean(&self.examples, "example texts", 3, 500)?,
            trademarks: clean(&self.trademarks, "trademarks", 50, 40)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tone_words.is_empty()
            && self.must_mention.is_empty()
            && self.banned.is_empty()
            && self.examples.is_empty()
            && self.trademarks.is_empty()
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A block tag's own line break is not output, so optional fields leave no blank lines.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

impl Template {
    pub fn parse(name: &str, text: &str) -> Result<Template> {
        let t: Template = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("template {name}: {}", e.message().trim())))?;
        t.check(name)?;
        Ok(t)
    }

    fn check(&self, name: &str) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("template {name}: {what}")));
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if !ident(&self.id) {
            return bad(format!(
                "id “{}” must be lower-case letters, digits, - or _",
                self.id
            ));
        }
        if !GROUPS.contains(&self.group.as_str()) {
            return bad(format!(
                "group “{}” is not one of {}",
                self.group,
                GROUPS.join(", ")
            ));
        }
        if !FRAMEWORKS.contains(&self.framework.as_str()) {
            return bad(format!(
                "framework “{}” is not one of {}",
                self.framework,
                FRAMEWORKS.join(", ")
            ));
        }
        if !["zh", "en", "input"].contains(&self.output_language.as_str()) {
            return bad("output_language must be zh, en or input".into());
        }
        if self.inputs.is_empty() {
            return bad("a template needs at least one input".into());
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.inputs {
            if !ident(&i.id) || i.id.contains('-') {
                return bad(format!(
                    "input id “{}” must be lower-case letters, digits or _",
                    i.id
                ));
            }
            if !seen.insert(i.id.as_str()) {
                return bad(format!("input “{}” is declared twice", i.id));
            }
            if i.kind == InputKind::Select && i.options.is_empty() {
                return bad(format!("select input “{}” has no options", i.id));
            }
        }
        if self.output_language == "input" && !seen.contains("language") {
            return bad("output_language = input needs an input called language".into());
        }
        for c in &self.compliance {
            if !["category", "platform", "virtual_host"].contains(&c.as_str()) {
                return bad(format!(
                    "compliance scope “{c}” is not one of category, platform, virtual_host"
                ));
            }
        }
        let env = environment();
        let tmpl = env.template_from_str(&self.prompt).map_err(|e| {
            Error::invalid(format!("template {name}: the prompt does not parse: {e}"))
        })?;
        // Every variable the prompt reads must be an input or a context value: a typo would
        // otherwise silently render as nothing.
        let known = [
            "tone",
            "brand",
            "rules",
            "limits",
            "framework",
            "loop",
            "range",
            "dict",
            "namespace",
            "cycler",
            "joiner",
            "debug",
        ];
        for v in tmpl.undeclared_variables(false) {
            if !seen.contains(v.as_str()) && !known.contains(&v.as_str()) {
                return bad(format!("the prompt uses “{v}”, which is not an input"));
            }
        }
        Ok(())
    }

    /// Checks the form's values: required inputs, lengths, options, number ranges.
    pub fn validate(&self, values: &Values) -> Result<()> {
        for key in values.keys() {
            if !self.inputs.iter().any(|i| &i.id == key) {
                return Err(Error::invalid(format!(
                    "“{key}” is not an input of this template"
                )));
            }
        }
        for i in &self.inputs {
            let v = values.get(&i.id).map(|s| s.trim()).unwrap_or("");
            if v.is_empty() {
                if i.required && i.default.is_none() {
                    return Err(Error::invalid(format!("“{}” is required", i.label_zh)));
                }
                continue;
            }
            if let Some(max) = i.max_chars {
                let n = v.chars().count();
                if n > max {
                    return Err(Error::invalid(format!(
                        "“{}” is {n} characters; at most {max}",
                        i.label_zh
                    )));
                }
            }
            match i.kind {
                InputKind::Select if !i.options.iter().any(|o| o == v) => {
                    return Err(Error::invalid(format!(
                        "“{}” must be one of: {}",
                        i.label_zh,
                        i.options.join("、")
                    )));
                }
                InputKind::Number => {
                    let n: f64 = v.parse().map_err(|_| {
                        Error::invalid(format!("“{}” must be a number", i.label_zh))
                    })?;
                    if !n.is_finite()
                        || i.min.is_some_and(|m| n < m)
                        || i.max.is_some_and(|m| n > m)
                    {
                        return Err(Error::invalid(format!(
                            "“{}” must be between {} and {}",
                            i.label_zh,
                            i.min.map_or("-∞".into(), |m| m.to_string()),
                            i.max.map_or("∞".into(), |m| m.to_string())
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The prompt for `values` (validated first; defaults fill empty inputs).
    pub fn render(&self, values: &Values, ctx: &PromptContext) -> Result<String> {
        self.validate(values)?;
        let mut vars: BTreeMap<&str, minijinja::Value> = BTreeMap::new();
        for i in &self.inputs {
            let v = values
                .get(&i.id)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .or_else(|| i.default.clone());
            vars.insert(
                &i.id,
                v.map(minijinja::Value::from)
                    .unwrap_or(minijinja::Value::from("")),
            );
        }
        vars.insert("tone", minijinja::Value::from_serialize(&ctx.tone));
        vars.insert("brand", minijinja::Value::from_serialize(&ctx.brand));
        vars.insert("rules", minijinja::Value::from_serialize(&ctx.rules));
        vars.insert("limits", minijinja::Value::from_serialize(&self.limits));
        vars.insert("framework", minijinja::Value::from(self.framework.clone()));
        let env = environment();
        let prompt = env
            .render_str(&self.prompt, vars)
            .map_err(|e| Error::invalid(format!("template {}: rendering failed: {e}", self.id)))?;
        let mut prompt = prompt.trim().to_owned();
        while prompt.contains("\n\n\n") {
            prompt = prompt.replace("\n\n\n", "\n\n");
        }
        let n = prompt.chars().count();
        if n > MAX_PROMPT_CHARS {
            return Err(Error::invalid(format!(
                "this template renders a prompt of {n} characters; the limit is {MAX_PROMPT_CHARS}: shorten the inputs"
            )));
        }
        Ok(prompt)
    }

    /// Sample values for every input that has one (tests, the form's placeholders).
    pub fn samples(&self) -> Values {
        self.inputs
            .iter()
            .filter_map(|i| i.sample.clone().map(|s| (i.id.clone(), s)))
            .collect()
    }
}

/// The catalogue: shipped templates, then the user's folder (same id replaces). Broken files are
/// reported and skipped.
pub fn load(dir: Option<&Path>) -> (Vec<Template>, Vec<TemplateProblem>) {
    let mut out: Vec<Template> = Vec::new();
    let mut problems = Vec::new();
    let builtin = BUILTIN_TEMPLATES
        .iter()
        .map(|&(name, text)| Ok((name.to_owned(), text.to_owned(), "builtin".to_owned())));
    let user = dir
        .map(|d| crate::fsutil::read_toml_files(d, 1 << 20, "a template"))
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.map(|(name, text)| (name.clone(), text, name)));
    for file in builtin.chain(user) {
        match file.and_then(|(name, text, source)| {
            Template::parse(&name, &text)
                .map(|t| Template { source, ..t })
                .map_err(|e| TemplateProblem {
                    file: name.clone(),
                    message: e.to_string(),
                })
        }) {
            Ok(t) => {
                out.retain(|q| q.id != t.id);
                out.push(t);
            }
            Err(problem) => problems.push(problem),
        }
    }
    (out, problems)
}
