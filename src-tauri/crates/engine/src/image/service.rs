//! Image generation as a queued job (`image.generate`): one heavy job makes a batch, one image
//! after another, each recorded as a generation with its PNG in the gallery. The model stays
//! loaded between jobs; steps stream as progress with a preview; cancel stops between steps.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::comfyui;
use super::metadata::{self, ImageRecord};
use super::model::{self, LoadedModel};
use super::params::{ImageParams, InitImage, MAX_SEED};
use super::pipeline::{self, RNG_NAME};
use crate::compliance::labels::ImplicitLabel;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::jobs::{EventSink, JobContext, JobEvent, JobRequest, JobRunner, Resource};
use crate::store::{
    FinishedImage, GalleryImage, GenerationKind, GenerationOutcome, NewGeneration, Store,
};

pub const JOB_KIND: &str = "image.generate";
/// Thumbnails fit in this square (the gallery grid shows them at up to 200 px on 2× screens).
const THUMB_SIDE: u32 = 256;

/// A queued image run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageJob {
    pub project_id: i64,
    pub params: ImageParams,
}

/// What the job returns.
#[derive(Debug, Clone, Serialize)]
pub struct ImageJobResult {
    pub images: Vec<GalleryImage>,
}

/// The model kept in memory between runs, with its A1111 hash.
#[derive(Default)]
pub struct ImageService {
    loaded: Mutex<Option<(String, Arc<LoadedModel>, String)>>,
}

impl ImageService {
    /// The model `id`, loaded once and kept (one image model at a time: they are large).
    /// The model for `p`, loaded if it is not, once the memory check says `p` fits (before
    /// loading: the weights and the image; once loaded: the image).
    fn model(
        &self,
        home: &Home,
        p: &ImageParams,
        device: &candle_core::Device,
    ) -> Result<(Arc<LoadedModel>, String)> {
        let id = p.model.as_str();
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((loaded_id, m, hash)) = slot.as_ref()
            && loaded_id == id
        {
            pipeline::check_memory(&m.info, device, p, true)?;
            return Ok((m.clone(), hash.clone()));
        }
        *slot = None; // free the old one before loading the next,
        crate::memory::release(); // and give its pages back before the free memory is read
        let info = model::describe(&model_dir(home, id)?)?;
        pipeline::check_memory(&info, device, p, false)?;
        let hash = model::model_hash(&info)?;
        let m = Arc::new(model::load(info, device)?);
        *slot = Some((id.to_owned(), m.clone(), hash.clone()));
        Ok((m, hash))
    }
}

/// The folder of installed image model `id`.
pub fn model_dir(home: &Home, id: &str) -> Result<PathBuf> {
    let dir = home.image_models_dir().join(id);
    if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') || !dir.is_dir() {
        return Err(Error::invalid(format!(
            "no image model \"{id}\" is installed; import one on the Models screen"
        )));
    }
    Ok(dir)
}

/// Validates and queues an image run; returns the job id.
pub fn submit(
    jobs: &JobRunner,
    store: Arc<Store>,
    home: Home,
    service: Arc<ImageService>,
    job: ImageJob,
    sink: Option<EventSink>,
    retry_of: Option<i64>,
) -> Result<i64> {
    job.params.validate()?;
    store.ensure_live_project(job.project_id)?;
    let remote = comfyui::is_comfyui(&job.params.model);
    if remote {
        comfy_config(&store, &store.settings()?)?;
        if job.params.variation.is_some() {
            return Err(Error::invalid(
                "variations (a variation seed) are made by Atelier's own sampler; ComfyUI runs cannot make them. Clear the variation or choose a local model",
            ));
        }
    } else {
        let dir = model_dir(&home, &job.params.model)?;
        let info = model::describe(&dir)?; // a broken model fails now, not in the queue
        if ![4, model::INPAINT_IN_CHANNELS].contains(&info.unet_in_channels) {
            return Err(Error::invalid(format!(
                "{} has a UNet with {} input channels; Atelier runs ordinary (4) and inpainting (9) models",
                info.id, info.unet_in_channels
            )));
        }
    }
    if let Some(init) = &job.params.init_image {
        load_source(&store, &home, init, job.params.width, job.params.height)?;
    }
    let payload = serde_json::to_value(&job)?;
    jobs.submit(
        JobRequest {
            kind: JOB_KIND.into(),
            // A ComfyUI run costs this machine nothing: it does not wait for the model slot.
            resource: if remote {
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
        move |ctx| {
            Box::pin(async move {
                if remote {
                    run_comfyui(ctx, store, home, job).await
                } else {
                    run(ctx, store, home, service, job).await
                }
            })
        },
    )
}

/// The ComfyUI server of `settings` (with the key stored in `store`), or why there is none.
pub fn comfy_config(
    store: &Store,
    settings: &crate::store::Settings,
) -> Result<comfyui::ComfyConfig> {
    if settings.comfyui_url.trim().is_empty() {
        return Err(Error::invalid(
            "no ComfyUI server is set up: add its address in Settings → Models",
        ));
    }
    let cfg = comfyui::ComfyConfig {
        base_url: settings.comfyui_url.trim().to_owned(),
        timeout_s: settings.remote_timeout_s,
        api_key: store.comfyui_api_key()?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The source of an img2img run and its inpainting mask, scaled and cropped alike to fill the
/// output size. The mask must be the source's size (it was painted on it) and not empty.
fn load_source(
    store: &Store,
    home: &Home,
    init: &InitImage,
    w: u32,
    h: u32,
) -> Result<(image::RgbImage, Option<image::GrayImage>)> {
    let open = |asset_id: i64, what: &str| -> Result<image::DynamicImage> {
        let asset = store.asset(asset_id)?;
        if !asset.mime.starts_with("image/") {
            return Err(Error::invalid(format!("the {what} must be an image")));
        }
        image::open(home.root().join(&asset.path))
            .map_err(|e| Error::invalid(format!("the {what} cannot be read: {e}")))
    };
    // Same size: no resampling, so kept pixels stay exactly the source's.
    let fit = |img: image::DynamicImage| {
        if img.width() == w && img.height() == h {
            img
        } else {
            img.resize_to_fill(w, h, image::imageops::FilterType::CatmullRom)
        }
    };
    let source = open(init.asset_id, "source image for img2img")?;
    let (sw, sh) = (source.width(), source.height());
    let mask = match init.mask_asset_id {
        Some(id) => {
            let m = open(id, "inpainting mask")?;
            if (m.width(), m.height()) != (sw, sh) {
                return Err(Error::invalid(format!(
                    "the mask is {}×{} but the source image is {sw}×{sh}; paint the mask on the source image",
                    m.width(),
                    m.height()
                )));
            }
            let m = fit(m).to_luma8();
            if m.pixels().all(|p| p.0[0] == 0) {
                return Err(Error::invalid(
                    "the mask is empty: paint the area to repaint (white), or remove the mask",
                ));
            }
            Some(m)
        }
        None => None,
    };
    Ok((fit(source).to_rgb8(), mask))
}

async fn run(
    ctx: JobContext,
    store: Arc<Store>,
    home: Home,
    service: Arc<ImageService>,
    job: ImageJob,
) -> Result<serde_json::Value> {
    let c = ctx.clone();
    let result = tokio::task::spawn_blocking(move || {
        // A panic inside candle becomes this job's error, not the app's end.
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_blocking(&c, &store, &home, &service, &job)
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %msg, "the image model crashed");
            Err(Error::Internal(format!("the image model crashed: {msg}")))
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("the image task ended abnormally: {e}")))?;
    Ok(serde_json::to_value(result?)?)
}

fn run_blocking(
    ctx: &JobContext,
    store: &Store,
    home: &Home,
    service: &ImageService,
    job: &ImageJob,
) -> Result<ImageJobResult> {
    let settings = store.settings()?;
    let (device, why) = crate::text::local::choose_device(settings.device);
    if let Some(why) = why {
        tracing::info!("{why}");
    }
    let p = &job.params;
    let total = (p.steps as u64) * (p.batch_count as u64);
    ctx.progress(0, total);
    let load_started = Instant::now();
    let (model, hash) = service.model(home, p, &device)?;
    let load_ms = load_started.elapsed().as_millis() as u64;
    let init = match &p.init_image {
        Some(i) => Some(load_source(store, home, i, p.width, p.height)?),
        None => None,
    };
    let first_seed = p.seed.unwrap_or_else(crate::text::service::random_seed);
    let mut images = Vec::new();
    for n in 0..p.batch_count {
        ctx.check()?;
        let (one, seed) = nth_image(p, first_seed, n);
        let record = ImageRecord::new(one.clone(), model.info.family.label(), &hash, RNG_NAME);
        let gen_id = begin_image(ctx, store, job, &record)?;
        let started = Instant::now();
        let mut on_step = |step: usize, steps: usize, preview: Option<pipeline::Rgb>| {
            ctx.progress(batch_progress(p, n, step as u64, steps as u64), total);
            if let Some(rgb) = preview
                && let Some(img) = image::RgbImage::from_raw(rgb.width, rgb.height, rgb.pixels)
            {
                emit_preview(ctx, n, step as u64, img);
            }
        };
        let made = pipeline::generate(
            &model,
            &one,
            seed,
            init.as_ref().map(|(img, _)| img),
            init.as_ref().and_then(|(_, mask)| mask.as_ref()),
            &|| ctx.is_cancelled(),
            &mut on_step,
        );
        let outcome = made.and_then(|img| {
            save_image(
                store,
                home,
                job.project_id,
                gen_id,
                &img,
                &record,
                &settings.label_producer,
                json_metrics(load_ms, started, &device),
            )
        });
        match outcome {
            Ok(row) => images.push(row),
            Err(e) => return Err(fail_generation(store, gen_id, e)),
        }
    }
    Ok(ImageJobResult { images })
}

/// The generation row of one image, begun before it is made (its record is the params).
fn begin_image(
    ctx: &JobContext,
    store: &Store,
    job: &ImageJob,
    record: &ImageRecord,
) -> Result<i64> {
    store.begin_generation(&NewGeneration {
        project_id: job.project_id,
        job_id: Some(ctx.id()),
        kind: GenerationKind::Image,
        model_id: job.params.model.clone(),
        prompt: job.params.prompt.clone(),
        params: serde_json::to_value(record)?,
        seed: record.params.seed.map(|s| s as i64),
    })
}

/// The batch's progress after `step` of `steps` of image `n`. img2img runs fewer steps than
/// asked; the bar still ends at this image's share.
fn batch_progress(p: &ImageParams, n: u32, step: u64, steps: u64) -> u64 {
    let asked = p.steps as u64;
    n as u64 * asked + (step * asked / steps.max(1)).min(asked)
}

/// Sends a picture of the work so far to the UI.
fn emit_preview(ctx: &JobContext, image: u32, step: u64, img: image::RgbImage) {
    if let Some(url) = preview_data_url(img) {
        ctx.emit(JobEvent::Preview {
            image,
            step,
            data_url: url,
        });
    }
}

/// Image `n` of a batch: its own request (`batch_count` 1) and seed. A batch of variations
/// keeps the seed and counts the variation seed up instead.
fn nth_image(p: &ImageParams, first_seed: u64, n: u32) -> (ImageParams, u64) {
    let step = |s: u64| (s + n as u64) % (MAX_SEED + 1);
    let mut one = p.clone();
    let seed = match &mut one.variation {
        Some(v) => {
            v.seed = step(v.seed);
            first_seed
        }
        None => step(first_seed),
    };
    one.seed = Some(seed);
    one.batch_count = 1;
    (one, seed)
}

/// Records how a generation ended without an image; returns the error to report (or the
/// store's, if even that failed).
fn fail_generation(store: &Store, gen_id: i64, e: Error) -> Error {
    let cancelled = matches!(e, Error::Cancelled);
    let outcome = GenerationOutcome {
        cancelled,
        error: (!cancelled).then(|| (e.kind().to_owned(), e.to_string())),
        ..Default::default()
    };
    match store.finish_generation(gen_id, &outcome) {
        Ok(_) => e,
        Err(store_error) => store_error,
    }
}

/// A run on the ComfyUI server: each image is queued there, followed (steps, previews), fetched,
/// then labelled, written and recorded here like a local one. Inpainting keeps the source's
/// pixels outside the mask exactly, as local runs do.
async fn run_comfyui(
    ctx: JobContext,
    store: Arc<Store>,
    home: Home,
    job: ImageJob,
) -> Result<serde_json::Value> {
    let settings = store.settings()?;
    let cfg = comfy_config(&store, &settings)?;
    let p = &job.params;
    let total = (p.steps as u64) * (p.batch_count as u64);
    ctx.progress(0, total);
    let init = match &p.init_image {
        Some(i) => Some(load_source(&store, &home, i, p.width, p.height)?),
        None => None,
    };
    let first_seed = p.seed.unwrap_or_else(crate::text::service::random_seed);
    let mut images = Vec::new();
    for n in 0..p.batch_count {
        ctx.check()?;
        let (one, seed) = nth_image(p, first_seed, n);
        let record = ImageRecord::new(one.clone(), "ComfyUI", "", "ComfyUI");
        let gen_id = begin_image(&ctx, &store, &job, &record)?;
        let started = Instant::now();
        let c = &ctx;
        let mut last_step = 0u64;
        let mut on = |news: comfyui::Progress| match news {
            comfyui::Progress::Step { step, steps } => {
                last_step = step as u64;
                c.progress(batch_progress(p, n, step as u64, steps as u64), total);
            }
            comfyui::Progress::Preview(img) => emit_preview(c, n, last_step, img),
            comfyui::Progress::Queued { remaining } => {
                c.emit(JobEvent::Waiting { queued: remaining });
            }
        };
        let source = init.as_ref().map(|(rgb, mask)| comfyui::Source {
            rgb,
            mask: mask.as_ref(),
        });
        let made = comfyui::generate(&cfg, &one, seed, source, ctx.cancellation(), &mut on).await;
        let outcome = made.and_then(|mut img| {
            if let Some((src, Some(mask))) = &init {
                pipeline::composite(&mut img, src, mask);
            }
            save_image(
                &store,
                &home,
                job.project_id,
                gen_id,
                &img,
                &record,
                &settings.label_producer,
                serde_json::json!({
                    "run_ms": started.elapsed().as_millis() as u64,
                    "device": format!("ComfyUI at {}", cfg.base_url),
                }),
            )
        });
        match outcome {
            Ok(row) => images.push(row),
            Err(e) => return Err(fail_generation(&store, gen_id, e)),
        }
    }
    Ok(serde_json::to_value(ImageJobResult { images })?)
}

fn json_metrics(load_ms: u64, started: Instant, device: &candle_core::Device) -> serde_json::Value {
    serde_json::json!({
        "load_ms": load_ms,
        "run_ms": started.elapsed().as_millis() as u64,
        "device": crate::text::local::device_name(device),
    })
}

/// Encodes, writes and reads back one image, then records it. The file is written before the
/// row (a crash leaves at worst an unreferenced file) and checked after writing.
#[allow(clippy::too_many_arguments)]
fn save_image(
    store: &Store,
    home: &Home,
    project_id: i64,
    generation_id: i64,
    img: &image::RgbImage,
    record: &ImageRecord,
    producer: &str,
    metrics: serde_json::Value,
) -> Result<GalleryImage> {
    let label = ImplicitLabel::new(Some(producer));
    let png = metadata::encode_png(img, record, &label)?;
    let asset = store.add_asset(home.root(), Some(project_id), "image/png", &png)?;
    // Read back: the bytes on disk must be the ones encoded, and their metadata must parse.
    let on_disk = std::fs::read(home.root().join(&asset.path))
        .map_err(|e| Error::io(format!("cannot read back {}", asset.path), e))?;
    if on_disk != png || metadata::recall(&on_disk)?.record.as_ref() != Some(record) {
        return Err(Error::Internal(format!(
            "{} did not read back as written",
            asset.path
        )));
    }
    let thumb = image::DynamicImage::ImageRgb8(img.clone()).thumbnail(THUMB_SIDE, THUMB_SIDE);
    let mut thumb_png = Vec::new();
    thumb
        .write_to(
            &mut std::io::Cursor::new(&mut thumb_png),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Internal(format!("thumbnail: {e}")))?;
    let thumb_asset = store.add_asset(home.root(), Some(project_id), "image/png", &thumb_png)?;
    store.finish_image(&FinishedImage {
        generation_id,
        asset_id: asset.id,
        thumb_asset_id: Some(thumb_asset.id),
        width: img.width(),
        height: img.height(),
        metrics,
    })
}

/// A preview as a `data:` URL (the CSP allows data: images; no file is written).
fn preview_data_url(img: image::RgbImage) -> Option<String> {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .ok()?;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}
