//! Text generation as jobs: resolves the model (local file or the remote server), runs it off
//! the async runtime, streams text to the job's sink and records the run in `generations`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::local::{LoadOptions, LocalEngine, LocalModel, default_threads};
use super::params::{StopReason, TextOutcome, TextRequest};
use super::remote::{self, RemoteConfig};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::jobs::{EventSink, JobContext, JobRequest, JobRunner, Resource};
use crate::models::registry::{self, ModelEntry, ModelInfo};
use crate::store::{GenerationKind, GenerationOutcome, NewGeneration, Settings, Store};

pub const JOB_KIND: &str = "text.generate";
/// Model ids that name the configured remote server: `remote` or `remote:<model>`.
pub const REMOTE_PREFIX: &str = "remote";
pub const DEFAULT_ZH: &str = "qwen2.5-coder-0.5b-instruct";
pub const DEFAULT_EN: &str = "smollm2-135m-instruct";
/// Largest seed: seeds travel through JavaScript numbers in the UI.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// The job's payload: enough to run it again.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TextJob {
    pub project_id: i64,
    pub request: TextRequest,
    /// What the text is for (a template and its form, a variant number…), recorded with the
    /// generation so History and "recall settings" can show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<serde_json::Value>,
}

/// What a finished text job returns to the UI.
#[derive(Debug, Clone, Serialize)]
pub struct TextResult {
    pub generation_id: i64,
    #[serde(flatten)]
    pub outcome: TextOutcome,
}

/// A loaded model as the Models screen shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ResidentModel {
    pub id: String,
    pub report: super::local::LoadReport,
    pub context_length: usize,
}

#[derive(Default)]
pub struct TextService {
    local: LocalEngine,
    pools: Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>,
}

impl TextService {
    fn pool(&self, threads: usize) -> Result<Arc<rayon::ThreadPool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(&threads) {
            return Ok(p.clone());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("atelier-model-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start model threads: {e}")))?;
        let pool = Arc::new(pool);
        pools.insert(threads, pool.clone());
        Ok(pool)
    }

    pub fn resident(&self) -> Vec<String> {
        self.local.resident()
    }

    /// Loaded models with what loading them did (device, repacking, memory).
    pub fn resident_models(&self) -> Vec<ResidentModel> {
        self.local
            .models()
            .into_iter()
            .map(|m| ResidentModel {
                id: m.id.clone(),
                report: m.report.clone(),
                context_length: m.context_length,
            })
            .collect()
    }

    pub fn unload(&self, id: &str) {
        self.local.unload(id)
    }

    /// The model `id`, loaded (or resident), with the settings' device, cache and budget.
    pub fn load(
        &self,
        home: &Home,
        settings: &Settings,
        id: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(Arc<LocalModel>, bool)> {
        let info = find_model(home, id)?;
        let opts = LoadOptions {
            device: settings.device,
            cache_dir: settings
                .cache_repacked_models
                .then(|| home.repacked_models_dir()),
            repack: true,
            native: true,
        };
        let pool = self.pool_for(settings)?;
        let budget = settings.model_memory_mb as u64 * 1024 * 1024;
        pool.install(|| {
            self.local
                .get(&info.id, &info.file, &opts, budget, progress)
        })
    }

    pub fn threads_for(&self, settings: &Settings) -> usize {
        if settings.threads == 0 {
            default_threads()
        } else {
            settings.threads as usize
        }
    }

    pub fn pool_for(&self, settings: &Settings) -> Result<Arc<rayon::ThreadPool>> {
        self.pool(self.threads_for(settings))
    }
}

/// The installed model `id`, readable and supported.
pub fn find_model(home: &Home, id: &str) -> Result<ModelInfo> {
    let entries = registry::list(&home.models_dir())?;
    for e in entries {
        match e {
            ModelEntry::Ok(info) if info.id == id => {
                if let Some(why) = &info.unsupported {
                    return Err(Error::invalid(format!("{id}: {why}")));
                }
                return Ok(info);
            }
            ModelEntry::Broken { file, error } if registry::model_id(&file) == id => {
                return Err(Error::invalid(format!(
                    "the model file of {id} is damaged: {error}"
                )));
            }
            _ => {}
        }
    }
    Err(Error::invalid(format!(
        "no model “{id}” is installed in {}; install the default models with ./scripts/run.sh or import a GGUF file",
        home.models_dir().display()
    )))
}

/// The text model to use when none is named: the setting, else by language among those
/// installed (Qwen writes Chinese; SmolLM2 is English-only but small and fast).
pub fn default_model(home: &Home, settings: &Settings) -> Result<Option<String>> {
    if let Some(m) = &settings.text_model {
        return Ok(Some(m.clone()));
    }
    let ids: Vec<String> = registry::list(&home.models_dir())?
        .into_iter()
        .filter_map(|e| match e {
            ModelEntry::Ok(i) if i.unsupported.is_none() => Some(i.id),
            _ => None,
        })
        .collect();
    let order = if settings.language == "zh-CN" {
        [DEFAULT_ZH, DEFAULT_EN]
    } else {
        [DEFAULT_EN, DEFAULT_ZH]
    };
    Ok(order
        .iter()
        .find(|p| ids.iter().any(|i| i == *p))
        .map(|s| s.to_string())
        .or_else(|| ids.first().cloned()))
}

/// Whether a model id names the remote server (`remote`, `remote:<model>`).
pub fn is_remote(id: &str) -> bool {
    remote_model(id).is_some()
}

fn remote_model(id: &str) -> Option<Option<&str>> {
    if id == REMOTE_PREFIX {
        Some(None)
    } else {
        id.strip_prefix("remote:")
            .map(|m| Some(m).filter(|m| !m.is_empty()))
    }
}

pub(crate) fn random_seed() -> u64 {
    use rand::Rng;
    rand::rng().random_range(0..=MAX_SEED)
}

/// Queues a text generation. Returns the job id; text streams as `Token` events.
pub fn submit(
    jobs: &JobRunner,
    store: Arc<Store>,
    home: Home,
    service: Arc<TextService>,
    job: TextJob,
    sink: Option<EventSink>,
    retry_of: Option<i64>,
) -> Result<i64> {
    job.request.validate()?;
    if job.request.params.seed.is_some_and(|s| s > MAX_SEED) {
        return Err(Error::invalid(format!(
            "the seed must be between 0 and {MAX_SEED}"
        )));
    }
    store.ensure_live_project(job.project_id)?;
    let is_remote = remote_model(&job.request.model).is_some();
    if !is_remote {
        find_model(&home, &job.request.model)?; // fail now, not in the queue
    }
    let payload = serde_json::to_value(&job)?;
    jobs.submit(
        JobRequest {
            kind: JOB_KIND.into(),
            // A remote run costs this machine nothing: it does not wait for the model slot.
            resource: if is_remote {
                Resource::Light
            } else {
                Resource::Heavy
            },
            project_id: Some(job.project_id),
            payload,
            retry_of,
            stops_itself: true,
        },
        sink,
        move |ctx| Box::pin(run(ctx, store, home, service, job)),
    )
}

async fn run(
    ctx: JobContext,
    store: Arc<Store>,
    home: Home,
    service: Arc<TextService>,
    job: TextJob,
) -> Result<serde_json::Value> {
    let c = ctx.clone();
    let progress = move |done, total| c.progress(done, total);
    let (generation_id, outcome) = generate_recorded(
        &ctx,
        &store,
        &home,
        &service,
        job.project_id,
        job.request,
        job.purpose,
        Arc::new(progress),
    )
    .await?;
    if outcome.stop_reason == StopReason::Cancelled {
        return Err(Error::Cancelled);
    }
    Ok(serde_json::to_value(TextResult {
        generation_id,
        outcome,
    })?)
}

/// Runs one text request inside a running job and records it in `generations`: the local
/// model off the async runtime (a panic becomes an error) or the remote server. Text streams
/// as the job's `Token` events; `load_progress` hears about a model being loaded. A cancelled
/// run returns its outcome with `StopReason::Cancelled` (the partial text is recorded).
/// Other work (a live script's segments) calls this once per piece of text.
#[allow(clippy::too_many_arguments)]
pub async fn generate_recorded(
    ctx: &JobContext,
    store: &Arc<Store>,
    home: &Home,
    service: &Arc<TextService>,
    project_id: i64,
    mut req: TextRequest,
    purpose: Option<serde_json::Value>,
    load_progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<(i64, TextOutcome)> {
    let seed = req.params.seed.unwrap_or_else(random_seed);
    req.params.seed = Some(seed);
    let settings = store.settings()?;
    let remote_name = remote_model(&req.model);
    let model_label = match remote_name {
        Some(name) => format!("remote:{}", name.unwrap_or(&settings.remote_model)),
        None => req.model.clone(),
    };
    let gen_id = store.begin_generation(&NewGeneration {
        project_id,
        job_id: Some(ctx.id()),
        kind: GenerationKind::Text,
        model_id: model_label,
        prompt: req.prompt_text(),
        params: serde_json::json!({ "messages": req.messages, "sampling": req.params, "purpose": purpose }),
        seed: Some(seed as i64),
    })?;
    // What was shown so far: kept when the run fails or is cancelled.
    let partial = Arc::new(Mutex::new(String::new()));

    let result: Result<(TextOutcome, serde_json::Value)> = match remote_name {
        Some(name) => {
            let config = RemoteConfig {
                base_url: settings.remote_base_url.clone(),
                model: name.unwrap_or(&settings.remote_model).to_owned(),
                api_key: store.remote_api_key()?,
                timeout_s: settings.remote_timeout_s,
                extra_sampling: settings.remote_extra_sampling,
            };
            if config.base_url.trim().is_empty() {
                Err(Error::invalid(
                    "no remote server is set up: add its address in Settings → Models",
                ))
            } else {
                let partial = partial.clone();
                let c = ctx.clone();
                let mut on_text = move |t: &str| {
                    partial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(t);
                    c.token(t);
                };
                remote::generate(&config, &req, seed, ctx.cancellation(), &mut on_text)
                    .await
                    .map(|o| {
                        (
                            o,
                            serde_json::json!({ "engine": "remote", "base_url": config.base_url }),
                        )
                    })
            }
        }
        None => {
            let partial = partial.clone();
            let c = ctx.clone();
            let req = req.clone();
            let (home, service) = (home.clone(), service.clone());
            tokio::task::spawn_blocking(move || {
                // A panic inside candle becomes this job's error, not the app's end.
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_local(
                        &c,
                        &home,
                        &service,
                        &settings,
                        &req,
                        seed,
                        &partial,
                        &*load_progress,
                    )
                }))
                .unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(panic = %msg, "the model crashed");
                    Err(Error::Internal(format!("the model crashed: {msg}")))
                })
            })
            .await
            .map_err(|e| Error::Internal(format!("the model task ended abnormally: {e}")))?
        }
    };

    match result {
        Ok((o, extra)) => {
            let cancelled = o.stop_reason == StopReason::Cancelled;
            let mut metrics = serde_json::to_value(&o)?;
            if let (Some(m), serde_json::Value::Object(extra)) = (metrics.as_object_mut(), extra) {
                m.remove("text");
                m.extend(extra);
            }
            store.finish_generation(
                gen_id,
                &GenerationOutcome {
                    cancelled,
                    output_text: Some(o.text.clone()),
                    prompt_tokens: Some(o.prompt_tokens as i64),
                    output_tokens: Some(o.completion_tokens as i64),
                    first_token_ms: (o.completion_tokens > 0).then_some(o.first_token_ms as i64),
                    tokens_per_s: (o.decode_tokens_per_s > 0.0).then_some(o.decode_tokens_per_s),
                    stop_reason: Some(
                        serde_json::to_value(o.stop_reason)?
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    metrics: Some(metrics),
                    ..Default::default()
                },
            )?;
            Ok((gen_id, o))
        }
        Err(e) => {
            let text = partial.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let cancelled = matches!(e, Error::Cancelled);
            let outcome = GenerationOutcome {
                cancelled,
                error: (!cancelled).then(|| (e.kind().to_owned(), e.to_string())),
                output_text: (!text.is_empty()).then_some(text),
                ..Default::default()
            };
            if let Err(db) = store.finish_generation(gen_id, &outcome) {
                tracing::error!(generation = gen_id, error = %db, "could not record the end of a generation");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_local(
    ctx: &JobContext,
    home: &Home,
    service: &TextService,
    settings: &Settings,
    req: &TextRequest,
    seed: u64,
    partial: &Mutex<String>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(TextOutcome, serde_json::Value)> {
    let load_started = std::time::Instant::now();
    let (model, loaded_now) = service.load(home, settings, &req.model, &|d, t| progress(d, t))?;
    let load_ms = if loaded_now {
        load_started.elapsed().as_millis() as u64
    } else {
        0
    };
    ctx.check()?;
    let pool = service.pool_for(settings)?;
    let cancelled = || ctx.is_cancelled();
    let mut on_text = |t: &str| {
        partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(t);
        ctx.token(t);
    };
    let mut o = pool.install(|| model.generate(req, seed, &cancelled, &mut on_text))?;
    o.load_ms = load_ms;
    let extra = serde_json::json!({
        "engine": "local",
        "device": model.report.device,
        "threads": service.threads_for(settings),
        "repacked": model.report.repacked,
    });
    Ok((o, extra))
}
