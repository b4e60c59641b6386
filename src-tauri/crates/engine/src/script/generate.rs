//! Writing a script as a heavy job: the skeleton comes from code, then the model writes one
//! segment at a time (each a recorded generation). Output that does not parse is retried once
//! with the next seed, then kept as a visible placeholder; a segment is never dropped. The
//! result is a new version of a `script` document. A failure or cancel part-way still saves
//! what was written, with the rest as placeholders, so nothing the model produced is lost.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::document::{MAX_SHOW_PRODUCTS, SCHEMA_VERSION, Script, ScriptKind, ShowProduct};
use super::product::ShowSettings;
use super::skeleton::{self, Planned};
use super::{Annotator, PromptScope, Segment, SegmentStatus, parse, placeholder, segment_prompt};
use crate::compliance::Checker;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::jobs::JobContext;
use crate::store::{DocumentKind, DocumentVersion, NewVersion, Store, VersionSource};
use crate::text::chat::{ChatMessage, Role};
use crate::text::params::StopReason;
use crate::text::service::{TextService, generate_recorded};
use crate::text::{SamplingParams, TextRequest};

pub const JOB_KIND: &str = "script.generate";

/// A whole script (a product's, or a show's) to write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptRequest {
    pub project_id: i64,
    pub kind: ScriptKind,
    #[serde(default)]
    pub title: String,
    pub products: Vec<ShowProduct>,
    #[serde(default)]
    pub show: ShowSettings,
    pub model: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Add the script as a new version of this document (locked segments of its latest
    /// version are kept); otherwise a new document is made.
    #[serde(default)]
    pub document_id: Option<i64>,
}

/// One segment (or one host line of it) of a saved script to write again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRequest {
    pub document_id: i64,
    /// The version it starts from (the latest when absent).
    #[serde(default)]
    pub version_id: Option<i64>,
    pub segment: usize,
    /// Only this host line of the segment.
    #[serde(default)]
    pub line: Option<usize>,
    pub model: String,
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The job's payload (enough to run it again).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ScriptJob {
    Script(ScriptRequest),
    Segment(SegmentRequest),
}

impl ScriptJob {
    pub fn model(&self) -> &str {
        match self {
            ScriptJob::Script(r) => &r.model,
            ScriptJob::Segment(r) => &r.model,
        }
    }
}

/// What a finished job returns.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptOutcome {
    pub document_id: i64,
    pub version_id: i64,
    pub version_number: i64,
    pub segments: usize,
    pub placeholders: usize,
}

/// Everything a script job works with.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<Store>,
    pub home: Home,
    pub service: Arc<TextService>,
    pub checker: Arc<Checker>,
}

/// Checks a request before it is queued (so a bad form never becomes a failed job).
pub fn prepare(req: &ScriptRequest) -> Result<ScriptRequest> {
    let mut req = req.clone();
    req.show.validate()?;
    if req.products.is_empty() {
        return Err(Error::invalid("choose at least one product"));
    }
    if req.products.len() > MAX_SHOW_PRODUCTS {
        return Err(Error::invalid(format!(
            "a show may have at most {MAX_SHOW_PRODUCTS} products"
        )));
    }
    if req.kind == ScriptKind::Product && req.products.len() != 1 {
        return Err(Error::invalid(
            "a product script is written for exactly one product",
        ));
    }
    for (i, p) in req.products.iter_mut().enumerate() {
        p.product = p
            .product
            .normalized()
            .map_err(|e| Error::invalid(format!("product {} ({}): {e}", i + 1, p.product.name)))?;
    }
    req.title = req.title.trim().to_owned();
    if req.title.is_empty() {
        req.title = match req.kind {
            ScriptKind::Product => req.products[0].product.name.clone(),
            ScriptKind::Show => format!(
                "整场 · {}",
                req.products
                    .iter()
                    .map(|p| p.product.name.as_str())
                    .collect::<Vec<_>>()
                    .join("、")
            ),
        };
        req.title = req.title.chars().take(200).collect();
    }
    if req.title.chars().count() > 200 {
        return Err(Error::invalid(
            "a script title may be at most 200 characters",
        ));
    }
    Ok(req)
}

/// The skeleton of a request: each segment with the product it belongs to.
fn plan(req: &ScriptRequest) -> Vec<(Option<usize>, Planned)> {
    match req.kind {
        ScriptKind::Product => skeleton::plan(&req.products[0].product, &req.show)
            .into_iter()
            .map(|p| (Some(0), p))
            .collect(),
        ScriptKind::Show => {
            let products: Vec<_> = req.products.iter().map(|p| &p.product).collect();
            skeleton::plan_show(&products, &req.show)
        }
    }
}

/// A script with the skeleton only (timed segments and cues, no lines yet) for a user who
/// writes the lines themselves.
pub fn skeleton_script(req: &ScriptRequest) -> Result<Script> {
    let req = prepare(req)?;
    let segments = plan(&req)
        .iter()
        .map(|(product, planned)| Segment {
            product: *product,
            ..placeholder(planned, "")
        })
        .collect();
    Ok(Script {
        schema_version: SCHEMA_VERSION,
        kind: req.kind,
        title: req.title,
        show: req.show,
        products: req.products,
        segments,
        model: String::new(),
        seed: 0,
    })
}

/// A base seed with room above it for the segments' seeds (base + 2 × segment + attempt).
fn random_seed() -> u64 {
    crate::text::service::random_seed() / 2
}

/// The latest version of a script document, read as a script.
pub fn latest(store: &Store, document_id: i64) -> Result<(DocumentVersion, Script)> {
    let doc = store.document(document_id)?;
    if doc.kind != DocumentKind::Script {
        return Err(Error::invalid(format!(
            "document {document_id} is not a live script"
        )));
    }
    let v = store
        .list_versions(document_id)?
        .into_iter()
        .next()
        .ok_or(Error::NotFound {
            what: "script version",
            id: document_id,
        })?;
    let s = read(&v.body)?;
    Ok((v, s))
}

/// Version `version_id` of a script document (checked to belong to it), or its latest.
pub fn load(
    store: &Store,
    document_id: i64,
    version_id: Option<i64>,
) -> Result<(DocumentVersion, Script)> {
    match version_id {
        Some(v) => {
            let v = store.version(v)?;
            if v.document_id != document_id {
                return Err(Error::invalid("that version belongs to another document"));
            }
            let s = read(&v.body)?;
            Ok((v, s))
        }
        None => latest(store, document_id),
    }
}

/// A version body as a script (a clear error for a body this version cannot read).
pub fn read(body: &str) -> Result<Script> {
    serde_json::from_str(body)
        .map_err(|e| Error::invalid(format!("this script cannot be read: {e}")))
}

pub(crate) async fn run(ctx: JobContext, deps: Deps, job: ScriptJob) -> Result<serde_json::Value> {
    let outcome = match job {
        ScriptJob::Script(req) => write_script(&ctx, &deps, req).await?,
        ScriptJob::Segment(req) => write_one(&ctx, &deps, req).await?,
    };
    Ok(serde_json::to_value(outcome)?)
}

async fn write_script(ctx: &JobContext, deps: &Deps, req: ScriptRequest) -> Result<ScriptOutcome> {
    let req = prepare(&req)?;
    let base = match req.document_id {
        Some(id) => Some(latest(&deps.store, id)?.1),
        None => None,
    };
    let plan = plan(&req);
    let seed = req.seed.unwrap_or_else(random_seed);
    let mut script = Script {
        schema_version: SCHEMA_VERSION,
        kind: req.kind,
        title: req.title.clone(),
        show: req.show.clone(),
        products: req.products.clone(),
        segments: Vec::with_capacity(plan.len()),
        model: req.model.clone(),
        seed,
    };
    let total = plan.len() as u64;
    let mut failure = None;
    let mut last_generation = None;
    for (i, (product, planned)) in plan.iter().enumerate() {
        ctx.progress(i as u64, total);
        // A locked segment of the version being replaced stays as the user left it.
        if let Some(kept) = base
            .as_ref()
            .and_then(|b| b.segments.get(i))
            .filter(|s| s.locked && s.kind == planned.kind && s.product == *product)
        {
            script.segments.push(kept.clone());
            continue;
        }
        if failure.is_some() {
            script.segments.push(Segment {
                product: *product,
                ..placeholder(planned, "not written: the run stopped before this segment")
            });
            continue;
        }
        let written = match ctx.check() {
            Ok(()) => {
                write_segment(
                    ctx,
                    deps,
                    &script,
                    *product,
                    planned,
                    None,
                    seed + 2 * i as u64,
                    req.project_id,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match written {
            Ok((seg, gen_id)) => {
                last_generation = gen_id.or(last_generation);
                script.segments.push(seg);
            }
            Err(e) => {
                script.segments.push(Segment {
                    product: *product,
                    ..placeholder(planned, "not written: the run stopped before this segment")
                });
                failure = Some(e);
            }
        }
    }
    ctx.progress(total, total);
    script.retime();
    let written = script
        .segments
        .iter()
        .filter(|s| s.status == SegmentStatus::Written)
        .count();
    let note = match &failure {
        None => format!("written by {} (seed {seed})", req.model),
        Some(Error::Cancelled) => format!("cancelled after {written} of {total} segments"),
        Some(e) => format!("stopped after {written} of {total} segments: {e}"),
    };
    // Nothing written and nothing kept: there is nothing worth a version.
    if failure.is_some() && written == 0 {
        return Err(failure.unwrap_or(Error::Cancelled));
    }
    let document_id = match req.document_id {
        Some(id) => id,
        None => {
            deps.store
                .create_document(req.project_id, DocumentKind::Script, &req.title, None)?
                .id
        }
    };
    let body = serde_json::to_string(&script)?;
    let v = deps.store.add_version(
        document_id,
        &NewVersion {
            body: &body,
            source: VersionSource::Generation,
            generation_id: last_generation,
            note: &note,
        },
    )?;
    if let Some(e) = failure {
        tracing::warn!(
            document = document_id,
            version = v.number,
            "script saved part-written: {e}"
        );
        return Err(e);
    }
    Ok(ScriptOutcome {
        document_id,
        version_id: v.id,
        version_number: v.number,
        segments: script.segments.len(),
        placeholders: script.placeholders(),
    })
}

async fn write_one(ctx: &JobContext, deps: &Deps, req: SegmentRequest) -> Result<ScriptOutcome> {
    let (base_version, mut script) = load(&deps.store, req.document_id, req.version_id)?;
    let doc = deps.store.document(req.document_id)?;
    let Some(old) = script.segments.get(req.segment).cloned() else {
        return Err(Error::invalid(format!(
            "the script has no segment {}",
            req.segment + 1
        )));
    };
    if old.locked {
        return Err(Error::Conflict(
            "this segment is locked: unlock it to write it again".into(),
        ));
    }
    if let Some(l) = req.line
        && l >= old.host.len()
    {
        return Err(Error::invalid(format!(
            "segment {} has no host line {}",
            req.segment + 1,
            l + 1
        )));
    }
    let planned = Planned {
        kind: old.kind,
        start_secs: old.start_secs,
        target_secs: old.target_secs,
        cues: old.cues.clone(),
    };
    let seed = req.seed.unwrap_or_else(random_seed);
    script.model = req.model.clone();
    ctx.progress(0, 1);
    let (mut seg, gen_id) = write_segment(
        ctx,
        deps,
        &script,
        old.product,
        &planned,
        req.line.map(|l| old.host[l].text.as_str()),
        seed,
        doc.project_id,
    )
    .await?;
    seg.cues = old.cues.clone();
    let note = match req.line {
        Some(l) => {
            // Only that line changes (when the model wrote one); the rest stays.
            let mut kept = old.clone();
            if seg.status == SegmentStatus::Written {
                kept.host[l] = seg.host.swap_remove(0);
                kept.est_secs = kept.host.iter().map(|l| l.est_secs).sum();
            }
            seg = kept;
            format!(
                "segment {} line {} written again (from version {})",
                req.segment + 1,
                l + 1,
                base_version.number
            )
        }
        None => format!(
            "segment {} written again (from version {})",
            req.segment + 1,
            base_version.number
        ),
    };
    script.segments[req.segment] = seg;
    script.retime();
    ctx.progress(1, 1);
    let body = serde_json::to_string(&script)?;
    let v = deps.store.add_version(
        req.document_id,
        &NewVersion {
            body: &body,
            source: VersionSource::Generation,
            generation_id: gen_id,
            note: &note,
        },
    )?;
    Ok(ScriptOutcome {
        document_id: req.document_id,
        version_id: v.id,
        version_number: v.number,
        segments: script.segments.len(),
        placeholders: script.placeholders(),
    })
}

/// Writes one segment: the prompt from its scope, up to two tries (the second with the next
/// seed), annotated lines, or a placeholder that says why. `Err` only for a failure of the run
/// itself (the model missing, the server down, a cancel).
#[allow(clippy::too_many_arguments)]
async fn write_segment(
    ctx: &JobContext,
    deps: &Deps,
    script: &Script,
    product: Option<usize>,
    planned: &Planned,
    replace_line: Option<&str>,
    seed: u64,
    project_id: i64,
) -> Result<(Segment, Option<i64>)> {
    let en = script.show.language == "en";
    let sp = product.and_then(|i| script.products.get(i));
    let previous = match (planned.kind, product) {
        (skeleton::SegmentKind::Transition, Some(i)) if i > 0 => script.products.get(i - 1),
        _ => None,
    };
    let scope = PromptScope {
        show: &script.show,
        product: sp,
        previous,
        lineup: &script.products,
    };
    let mut prompt = segment_prompt(&scope, planned, &deps.checker)?;
    if let Some(old) = replace_line {
        prompt.push_str(&if en {
            format!("\nWrite only ONE host line (with its alternates) to replace this one: {old}\n")
        } else {
            format!("\n只写一句主播台词（附备选）来替换这一句：{old}\n")
        });
    }
    let system = if en {
        "You write live-stream shopping scripts. Follow the format exactly and use only the facts given."
    } else {
        "你是直播带货脚本撰稿人。严格按格式输出，只使用给出的事实。"
    };
    let annotator = match sp {
        Some(sp) => Annotator::new(&deps.checker, &sp.product, &script.show),
        None => Annotator::for_lineup(&deps.checker, &script.products, &script.show),
    };
    // Tokens for the segment's length: Chinese runs about 1–2.5 tokens a character on small
    // vocabularies; labels and alternates add the rest.
    // English: about 1.3 tokens a word (a word is 1.5 "characters" of the rate).
    let chars = f64::from(planned.target_secs) * script.show.rate() / 60.0;
    let max_tokens = if en {
        (chars as u32 + 64).clamp(64, 1024)
    } else {
        ((chars * 2.5) as u32 + 96).clamp(96, 1536)
    };
    let mut last_generation = None;
    let mut why = String::new();
    for attempt in 0..2u64 {
        let request = TextRequest {
            model: script.model.clone(),
            messages: vec![
                ChatMessage::new(Role::System, system),
                ChatMessage::new(Role::User, &prompt),
            ],
            params: SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                max_tokens,
                seed: Some(seed + attempt),
                ..SamplingParams::default()
            },
        };
        let purpose = serde_json::json!({ "script": { "kind": planned.kind, "product": product, "attempt": attempt + 1, "title": script.title } });
        let (gen_id, o) = generate_recorded(
            ctx,
            &deps.store,
            &deps.home,
            &deps.service,
            project_id,
            request,
            Some(purpose),
            Arc::new(|_, _| {}),
        )
        .await?;
        last_generation = Some(gen_id);
        if o.stop_reason == StopReason::Cancelled {
            return Err(Error::Cancelled);
        }
        match parse::segment(&o.text).and_then(super::scrub) {
            Ok(text) => {
                let mut seg = annotator.written(planned, text)?;
                seg.product = product;
                return Ok((seg, last_generation));
            }
            Err(e) => {
                tracing::info!(kind = ?planned.kind, attempt, "segment output unusable: {e}");
                why = e.to_string();
            }
        }
    }
    let note = format!("{why} (tried twice): regenerate this segment or write it yourself");
    Ok((
        Segment {
            product,
            ..placeholder(planned, &note)
        },
        last_generation,
    ))
}
