//! `atelier-engine`: everything Atelier does, without a window.
//!
//! The desktop app (`src-tauri/src`) and the CLI (`atelier-cli`) are thin shells over
//! [`Engine`]. Modules are organised by domain:
//!
//! - [`home`] — the data folder and its instance lock
//! - [`store`] — SQLite (projects, documents, generations, assets, jobs, settings, search)
//! - [`jobs`] — the queue that runs long work with progress and cancellation
//! - [`fsutil`] — atomic file writes, file hashes
//! - [`http`] — server addresses and the HTTP client the remote back ends share
//! - [`models`], [`text`] — GGUF model registry, local and remote text generation
//! - [`compliance`] — the advertising-law checker and AI-content labels
//! - [`image`] — Stable Diffusion in candle, image metadata and the gallery

pub mod compliance;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod home;
pub mod http;
pub mod image;
pub mod jobs;
pub mod maintenance;
/// The process allocator's policy (it lives with the kernels; see there).
pub use atelier_cpu::memory;
pub mod models;
pub mod script;
pub mod store;
pub mod text;
pub mod writing;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Error, Result};
pub use home::{Home, InstanceLock};
pub use jobs::{EventSink, JobContext, JobEvent, JobRequest, JobRunner, JobUpdate, Resource};
pub use store::Store;

/// An open Atelier data folder: its store, its job runner and (for the app) its instance lock.
pub struct Engine {
    home: Home,
    store: Arc<Store>,
    jobs: JobRunner,
    text: Arc<text::service::TextService>,
    images: Arc<image::service::ImageService>,
    /// The compliance checker, compiled on first use from the shipped and the user's packs.
    checker: std::sync::OnceLock<Arc<compliance::Checker>>,
    /// Jobs the previous process left unfinished, found when this one opened.
    interrupted_at_open: usize,
    _lock: Option<InstanceLock>,
}

/// How to open a data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The desktop app: takes the folder's instance lock (a second app on the same folder gets
    /// [`Error::AlreadyRunning`]) and marks jobs left unfinished as interrupted.
    Exclusive,
    /// The CLI: works beside a running app (SQLite's WAL and busy timeout arbitrate). Marks
    /// stale jobs interrupted only if no app holds the folder.
    Shared,
}

impl Engine {
    /// Opens (creating on first use) the data folder and its database.
    pub fn open(home: Home, access: Access, runtime: tokio::runtime::Handle) -> Result<Engine> {
        home.ensure()?;
        let lock = match access {
            Access::Exclusive => Some(home.lock()?),
            Access::Shared => home.lock().ok(),
        };
        let store = Arc::new(Store::open(&home.db_path())?);
        // Only the holder of the lock may decide that running jobs are dead: with it, no other
        // process of ours can be running them.
        let interrupted_at_open = if lock.is_some() {
            store.mark_stale_jobs_interrupted()?
        } else {
            0
        };
        if interrupted_at_open > 0 {
            tracing::warn!(
                count = interrupted_at_open,
                "jobs left unfinished by the last run marked interrupted"
            );
        }
        let slots = store.settings()?.heavy_job_slots as usize;
        let jobs = JobRunner::new(store.clone(), runtime, slots);
        Ok(Engine {
            home,
            store,
            jobs,
            text: Arc::default(),
            images: Arc::default(),
            checker: std::sync::OnceLock::new(),
            interrupted_at_open,
            _lock: lock,
        })
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The compliance checker over the shipped packs and `$ATELIER_HOME/compliance/*.toml`.
    pub fn checker(&self) -> Result<Arc<compliance::Checker>> {
        if let Some(c) = self.checker.get() {
            return Ok(c.clone());
        }
        let c = Arc::new(compliance::Checker::load(&self.home.compliance_dir())?);
        for p in &c.problems {
            tracing::warn!(file = %p.file, "rule pack skipped: {}", p.message);
        }
        Ok(self.checker.get_or_init(|| c).clone())
    }

    /// The template catalogue (shipped and `$ATELIER_HOME/templates/*.toml`), read afresh so
    /// an edited copy shows at once.
    pub fn templates(
        &self,
    ) -> (
        Vec<writing::templates::Template>,
        Vec<writing::templates::TemplateProblem>,
    ) {
        writing::templates::load(Some(&self.home.templates_dir()))
    }

    /// The labels Settings ask for: the explicit notice (unless turned off after acknowledging)
    /// and a fresh implicit label.
    fn labelling(&self) -> Result<export::Labelling> {
        let s = self.store.settings()?;
        let notice = if s.language == "en" {
            s.label_notice_en
        } else {
            s.label_notice_zh
        };
        Ok(export::Labelling {
            notice: s.label_explicit.then_some((notice, s.label_position)),
            label: compliance::labels::ImplicitLabel::new(Some(&s.label_producer)),
        })
    }

    /// Exports `body` as a labelled file in the exports folder (written atomically) and returns
    /// its path. The labels follow Settings; an export without the explicit notice is logged.
    pub fn export_text(&self, body: &str, title: &str, format: export::Format) -> Result<PathBuf> {
        if body.trim().is_empty() {
            return Err(Error::invalid(
                "there is nothing to export: the text is empty",
            ));
        }
        let labelling = self.labelling()?;
        let bytes = export::render(body, title, format, &labelling)?;
        let path = self.write_export(title, format.extension(), &bytes)?;
        if labelling.notice.is_none() {
            self.store.log_unlabelled_export(&format!(
                "{} ({})",
                path.display(),
                labelling.label.produce_id
            ))?;
        }
        Ok(path)
    }

    /// Writes an export's bytes atomically into the exports folder under a timestamped name.
    fn write_export(&self, title: &str, extension: &str, bytes: &[u8]) -> Result<PathBuf> {
        let dir = self.home.exports_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(export::file_name(title, extension));
        fsutil::write_atomic(&path, bytes)?;
        Ok(path)
    }

    /// `body` as it goes to the clipboard: with the explicit notice where Settings put it (plain
    /// text has nowhere to carry the implicit label). A copy without the notice is logged.
    pub fn clipboard_text(&self, body: &str) -> Result<String> {
        if body.trim().is_empty() {
            return Err(Error::invalid(
                "there is nothing to copy: the text is empty",
            ));
        }
        let labelling = self.labelling()?;
        let bytes = export::render(body, "", export::Format::Txt, &labelling)?;
        if labelling.notice.is_none() {
            self.store
                .log_unlabelled_export(&format!("clipboard ({})", labelling.label.produce_id))?;
        }
        String::from_utf8(bytes).map_err(|e| Error::Internal(e.to_string()))
    }

    /// The TOML of template `id` (the user's copy when there is one).
    pub fn template_source(&self, id: &str) -> Result<writing::user_templates::TemplateSource> {
        writing::user_templates::source(&self.home.templates_dir(), id)
    }

    /// A copy of template `id` to edit (not saved yet).
    pub fn duplicate_template(&self, id: &str) -> Result<writing::user_templates::TemplateSource> {
        writing::user_templates::duplicate(&self.home.templates_dir(), id)
    }

    /// Validates and saves the user's template (replacing `previous_id` when editing one).
    pub fn save_template(
        &self,
        text: &str,
        previous_id: Option<&str>,
    ) -> Result<writing::templates::Template> {
        writing::user_templates::save(&self.home.templates_dir(), text, previous_id)
    }

    pub fn delete_template(&self, id: &str) -> Result<()> {
        writing::user_templates::delete(&self.home.templates_dir(), id)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
    pub fn jobs(&self) -> &JobRunner {
        &self.jobs
    }
    pub fn text(&self) -> &Arc<text::service::TextService> {
        &self.text
    }
    pub fn interrupted_at_open(&self) -> usize {
        self.interrupted_at_open
    }

    /// Moves a project in the trash out of existence: rows first (one transaction), then its
    /// files. A file that cannot be removed is logged, not fatal: the rows are already gone.
    pub fn purge_project(&self, id: i64) -> Result<usize> {
        let paths = self.store.purge_project(id)?;
        let mut removed = 0;
        for rel in &paths {
            match std::fs::remove_file(self.home.root().join(rel)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = rel, error = %e, "could not remove an asset file"),
            }
        }
        Ok(removed)
    }

    /// Queues a database check-and-optimise job.
    pub fn start_maintenance(&self, sink: Option<EventSink>, retry_of: Option<i64>) -> Result<i64> {
        let store = self.store.clone();
        self.jobs.submit(
            JobRequest {
                kind: maintenance::KIND.into(),
                resource: Resource::Light,
                project_id: None,
                payload: serde_json::json!({}),
                retry_of,
                stops_itself: false,
            },
            sink,
            move |ctx| Box::pin(maintenance::run(store, ctx)),
        )
    }

    /// Queues a text generation (local model or remote server); text streams to `sink`.
    pub fn generate_text(
        &self,
        job: text::service::TextJob,
        sink: Option<EventSink>,
    ) -> Result<i64> {
        text::service::submit(
            &self.jobs,
            self.store.clone(),
            self.home.clone(),
            self.text.clone(),
            job,
            sink,
            None,
        )
    }

    /// Queues one text job per variant of a template's copy; `sink(i)` receives variant i's
    /// events (0-based). Returns the job ids in variant order.
    pub fn generate_copy(
        &self,
        req: &writing::compose::CopyRequest,
        sink: impl Fn(u32) -> Option<EventSink>,
    ) -> Result<Vec<i64>> {
        let (templates, _) = self.templates();
        let t = templates
            .iter()
            .find(|t| t.id == req.template_id)
            .ok_or_else(|| Error::invalid(format!("there is no template “{}”", req.template_id)))?;
        self.store.ensure_live_project(req.project_id)?;
        // The project's brand voice goes into every prompt of the project unless the request
        // brings its own.
        let mut req = req.clone();
        if req.brand.is_none() {
            req.brand = Some(self.brand_voice(req.project_id)?).filter(|b| !b.is_empty());
        }
        let checker = self.checker()?;
        let jobs = writing::compose::jobs(&req, t, &checker)?;
        jobs.into_iter()
            .enumerate()
            .map(|(i, job)| self.generate_text(job, sink(i as u32)))
            .collect()
    }

    /// A project's brand voice (empty when none was set).
    pub fn brand_voice(&self, project_id: i64) -> Result<writing::templates::BrandVoice> {
        Ok(self
            .store
            .project_setting(project_id, "brand_voice")?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default())
    }

    /// Saves a project's brand voice (trimmed and size-checked); returns what was stored.
    pub fn set_brand_voice(
        &self,
        project_id: i64,
        voice: &writing::templates::BrandVoice,
    ) -> Result<writing::templates::BrandVoice> {
        let voice = voice.normalized()?;
        self.store.set_project_setting(
            project_id,
            "brand_voice",
            &serde_json::to_value(&voice)?,
        )?;
        Ok(voice)
    }

    /// Installed image models (broken folders as `Err((id, reason))`).
    pub fn image_models(
        &self,
    ) -> Result<Vec<std::result::Result<image::model::ImageModelInfo, (String, String)>>> {
        image::model::list(&self.home.image_models_dir())
    }

    /// The configured ComfyUI server's version, devices and checkpoints (asked now).
    pub async fn comfyui_server(&self) -> Result<image::comfyui::ServerInfo> {
        let cfg = image::service::comfy_config(&self.store, &self.store.settings()?)?;
        image::comfyui::server_info(&cfg).await
    }

    /// Imports an image model: a diffusers folder (validated and copied) or a single-file
    /// `.safetensors` checkpoint (converted). `tokenizer`: the CLIP vocabulary for a single
    /// file, when not the installed one.
    pub fn import_image_model(
        &self,
        src: &std::path::Path,
        tokenizer: Option<&std::path::Path>,
    ) -> Result<image::model::ImageModelInfo> {
        image::model::import(&self.home.image_models_dir(), src, tokenizer)
    }

    /// Queues an image run (a batch, one image after another); returns the job id.
    pub fn generate_image(
        &self,
        job: image::service::ImageJob,
        sink: Option<EventSink>,
    ) -> Result<i64> {
        image::service::submit(
            &self.jobs,
            self.store.clone(),
            self.home.clone(),
            self.images.clone(),
            job,
            sink,
            None,
        )
    }

    /// The bytes of an asset file (gallery images and thumbnails), checked against its hash.
    pub fn asset_bytes(&self, asset_id: i64) -> Result<Vec<u8>> {
        let asset = self.store.asset(asset_id)?;
        let path = self.home.root().join(&asset.path);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if fsutil::sha256_hex(&bytes) != asset.sha256 {
            return Err(Error::Internal(format!(
                "{} has changed on disk since it was saved",
                asset.path
            )));
        }
        Ok(bytes)
    }

    /// Everything an image was made with, from the gallery row's record.
    pub fn image_record(&self, generation_id: i64) -> Result<image::metadata::ImageRecord> {
        let g = self.store.generation(generation_id)?;
        serde_json::from_value(g.params).map_err(|e| {
            Error::Internal(format!("image {generation_id} has no usable record: {e}"))
        })
    }

    /// Keeps an image the user brings (img2img source, or a peer's PNG to read): the bytes
    /// become an asset of the project.
    pub fn add_image_asset(&self, project_id: i64, bytes: &[u8]) -> Result<store::Asset> {
        self.store.ensure_live_project(project_id)?;
        let format = ::image::guess_format(bytes)
            .map_err(|_| Error::invalid("the file is not an image (PNG, JPEG or WebP)"))?;
        let mime = match format {
            ::image::ImageFormat::Png => "image/png",
            ::image::ImageFormat::Jpeg => "image/jpeg",
            ::image::ImageFormat::WebP => "image/webp",
            other => {
                return Err(Error::invalid(format!(
                    "{other:?} images are not supported; use PNG, JPEG or WebP"
                )));
            }
        };
        ::image::load_from_memory(bytes)
            .map_err(|e| Error::invalid(format!("the image cannot be read: {e}")))?;
        self.store
            .add_asset(self.home.root(), Some(project_id), mime, bytes)
    }

    /// Exports a gallery image as a PNG or JPEG in the exports folder: the visible label drawn
    /// in `corner` (unless Settings turned labels off after an acknowledgement, which is logged
    /// here too), the A1111 parameters, Atelier's record (PNG) and a fresh XMP AIGC label. The
    /// file is written atomically and read back.
    pub fn export_image(
        &self,
        generation_id: i64,
        label_text: Option<&str>,
        corner: image::label::Corner,
        format: image::metadata::ExportFormat,
    ) -> Result<ImageExport> {
        let record = self.image_record(generation_id)?;
        let asset = self.store.generation(generation_id)?.asset.ok_or_else(|| {
            Error::invalid(format!("generation {generation_id} has no image to export"))
        })?;
        let bytes = self.asset_bytes(asset.id)?;
        let mut img = ::image::load_from_memory(&bytes)
            .map_err(|e| Error::Internal(format!("{} cannot be decoded: {e}", asset.path)))?
            .to_rgb8();
        let labelling = self.labelling()?;
        let visible = if labelling.notice.is_some() {
            let text =
                image::label::validate_text(label_text.unwrap_or(image::label::DEFAULT_TEXT))?;
            let font = image::label::find_font(text)?;
            Some(image::label::draw(&mut img, text, corner, &font)?)
        } else {
            None
        };
        let bytes = format.encode(&img, &record, &labelling.label)?;
        let path = self.write_export(&record.params.prompt, format.extension(), &bytes)?;
        let back = std::fs::read(&path)
            .map_err(|e| Error::io(format!("cannot read back {}", path.display()), e))?;
        let intact = back == bytes && format.carries(&back, &record)?;
        if !intact {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Internal(format!(
                "{} did not read back as written",
                path.display()
            )));
        }
        if visible.is_none() {
            self.store.log_unlabelled_export(&format!(
                "{} ({})",
                path.display(),
                labelling.label.produce_id
            ))?;
        }
        Ok(ImageExport {
            path,
            visible_label: visible,
        })
    }

    pub fn default_text_model(&self) -> Result<Option<String>> {
        text::service::default_model(&self.home, &self.store.settings()?)
    }

    /// Queues a live script (a product's or a whole show's), written one segment at a time;
    /// each segment's text streams to `sink` and progress counts segments.
    pub fn generate_script(
        &self,
        req: &script::generate::ScriptRequest,
        sink: Option<EventSink>,
    ) -> Result<i64> {
        let req = script::generate::prepare(req)?;
        self.store.ensure_live_project(req.project_id)?;
        if let Some(id) = req.document_id {
            let doc = self.store.document(id)?;
            if doc.project_id != req.project_id || doc.kind != store::DocumentKind::Script {
                return Err(Error::invalid(format!(
                    "document {id} is not a live script of this project"
                )));
            }
        }
        self.submit_script(
            req.project_id,
            script::generate::ScriptJob::Script(req),
            sink,
            None,
        )
    }

    /// A new script document holding the skeleton only (timed segments with their cues), for
    /// lines the user writes; no model runs.
    pub fn blank_script(&self, req: &script::generate::ScriptRequest) -> Result<ScriptView> {
        let s = script::generate::skeleton_script(req)?;
        let doc = self.store.create_document(
            req.project_id,
            store::DocumentKind::Script,
            &s.title,
            None,
        )?;
        let body = serde_json::to_string(&s)?;
        let v = self.store.add_version(
            doc.id,
            &store::NewVersion {
                body: &body,
                source: store::VersionSource::Save,
                generation_id: None,
                note: "skeleton",
            },
        )?;
        Ok(ScriptView {
            document: self.store.document(doc.id)?,
            version_id: v.id,
            version_number: v.number,
            script: s,
        })
    }

    /// Queues writing one segment (or one host line) of a saved script again.
    pub fn regenerate_segment(
        &self,
        req: &script::generate::SegmentRequest,
        sink: Option<EventSink>,
    ) -> Result<i64> {
        let doc = self.store.document(req.document_id)?;
        let (_, s) = script::generate::latest(&self.store, req.document_id)?;
        let seg = s.segments.get(req.segment).ok_or_else(|| {
            Error::invalid(format!("the script has no segment {}", req.segment + 1))
        })?;
        if seg.locked {
            return Err(Error::Conflict(
                "this segment is locked: unlock it to write it again".into(),
            ));
        }
        self.submit_script(
            doc.project_id,
            script::generate::ScriptJob::Segment(req.clone()),
            sink,
            None,
        )
    }

    /// One product script per saved product (a batch), each its own queued job.
    pub fn generate_scripts_for_products(
        &self,
        project_id: i64,
        product_ids: &[i64],
        show: &script::product::ShowSettings,
        model: &str,
        seed: Option<u64>,
        sink: impl Fn(i64) -> Option<EventSink>,
    ) -> Result<Vec<i64>> {
        if product_ids.is_empty() {
            return Err(Error::invalid("choose at least one product"));
        }
        // Every request is checked before any is queued: a bad one queues nothing.
        let reqs = product_ids
            .iter()
            .map(|&id| {
                let rec = self.store.product(id)?;
                if rec.summary.project_id != project_id {
                    return Err(Error::invalid(format!(
                        "product {id} belongs to another project"
                    )));
                }
                script::generate::prepare(&script::generate::ScriptRequest {
                    project_id,
                    kind: script::document::ScriptKind::Product,
                    title: String::new(),
                    products: vec![script::document::ShowProduct {
                        product_id: Some(id),
                        role: None,
                        product: rec.product,
                    }],
                    show: show.clone(),
                    model: model.to_owned(),
                    seed,
                    document_id: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        reqs.into_iter()
            .zip(product_ids)
            .map(|(r, &id)| {
                self.submit_script(
                    project_id,
                    script::generate::ScriptJob::Script(r),
                    sink(id),
                    None,
                )
            })
            .collect()
    }

    fn submit_script(
        &self,
        project_id: i64,
        job: script::generate::ScriptJob,
        sink: Option<EventSink>,
        retry_of: Option<i64>,
    ) -> Result<i64> {
        let remote = text::service::is_remote(job.model());
        if !remote {
            text::service::find_model(&self.home, job.model())?;
        }
        let deps = script::generate::Deps {
            store: self.store.clone(),
            home: self.home.clone(),
            service: self.text.clone(),
            checker: self.checker()?,
        };
        self.jobs.submit(
            JobRequest {
                kind: script::generate::JOB_KIND.into(),
                resource: if remote {
                    Resource::Light
                } else {
                    Resource::Heavy
                },
                project_id: Some(project_id),
                payload: serde_json::to_value(&job)?,
                retry_of,
                stops_itself: true,
            },
            sink,
            move |ctx| Box::pin(script::generate::run(ctx, deps, job)),
        )
    }

    /// A script document's latest version (or `version_id`) with the script it holds.
    pub fn script(&self, document_id: i64, version_id: Option<i64>) -> Result<ScriptView> {
        let document = self.store.document(document_id)?;
        let (version, script) = script::generate::load(&self.store, document_id, version_id)?;
        Ok(ScriptView {
            document,
            version_id: version.id,
            version_number: version.number,
            script,
        })
    }

    /// Saves the user's edit of a script as a new version: validated, every line checked again
    /// (time, numbers, compliance), the timeline recomputed.
    pub fn save_script(
        &self,
        document_id: i64,
        script: &script::document::Script,
        note: &str,
    ) -> Result<ScriptView> {
        let doc = self.store.document(document_id)?;
        if doc.kind != store::DocumentKind::Script {
            return Err(Error::invalid(format!(
                "document {document_id} is not a live script"
            )));
        }
        script.validate()?;
        let mut s = script.clone();
        let checker = self.checker()?;
        s.refresh(&checker)?;
        let body = serde_json::to_string(&s)?;
        let note = if note.trim().is_empty() {
            "edited"
        } else {
            note.trim()
        };
        let v = self.store.add_version(
            document_id,
            &store::NewVersion {
                body: &body,
                source: store::VersionSource::Save,
                generation_id: None,
                note,
            },
        )?;
        Ok(ScriptView {
            document: self.store.document(document_id)?,
            version_id: v.id,
            version_number: v.number,
            script: s,
        })
    }

    /// Exports a script version as a labelled file in the exports folder (atomically).
    pub fn export_script(
        &self,
        document_id: i64,
        version_id: Option<i64>,
        format: script::export::ScriptFormat,
    ) -> Result<PathBuf> {
        let (view, bytes) = self.render_script(document_id, version_id, format)?;
        self.write_export(&view.document.title, format.extension(), &bytes)
    }

    /// A script version's export bytes, labelled as Settings ask (an export without the notice
    /// is logged); the caller writes them where it wants (the CLI's `--out`).
    pub fn render_script(
        &self,
        document_id: i64,
        version_id: Option<i64>,
        format: script::export::ScriptFormat,
    ) -> Result<(ScriptView, Vec<u8>)> {
        let view = self.script(document_id, version_id)?;
        let labelling = self.labelling()?;
        let bytes = script::export::render(&view.script, format, &labelling)?;
        if labelling.notice.is_none() {
            self.store.log_unlabelled_export(&format!(
                "script {document_id} as {} ({})",
                format.extension(),
                labelling.label.produce_id
            ))?;
        }
        Ok((view, bytes))
    }

    /// Reads a products CSV and saves the good rows (one transaction); row errors come back.
    pub fn import_products_csv(&self, project_id: i64, bytes: &[u8]) -> Result<ImportReport> {
        self.store.ensure_live_project(project_id)?;
        let parsed = script::csv_import::parse(bytes)?;
        let ids = self.store.import_products(project_id, &parsed.products)?;
        Ok(ImportReport {
            imported: ids.len(),
            errors: parsed.errors,
            encoding: parsed.encoding,
            ignored_columns: parsed.ignored_columns,
        })
    }

    /// Runs a failed, cancelled or interrupted job again as a new job (linked by `retry_of`).
    pub fn retry_job(&self, id: i64, sink: Option<EventSink>) -> Result<i64> {
        let job = self.store.job(id)?;
        if job.status.is_active() || job.status == store::JobStatus::Succeeded {
            return Err(Error::Conflict(format!(
                "job {id} is {}; only failed, cancelled or interrupted jobs can be retried",
                job.status.as_str()
            )));
        }
        match job.kind.as_str() {
            maintenance::KIND => self.start_maintenance(sink, Some(id)),
            text::service::JOB_KIND => {
                let job: text::service::TextJob =
                    serde_json::from_value(job.payload).map_err(|e| {
                        Error::Conflict(format!(
                            "job {id} cannot be retried: its request is unreadable ({e})"
                        ))
                    })?;
                text::service::submit(
                    &self.jobs,
                    self.store.clone(),
                    self.home.clone(),
                    self.text.clone(),
                    job,
                    sink,
                    Some(id),
                )
            }
            script::generate::JOB_KIND => {
                let payload: script::generate::ScriptJob = serde_json::from_value(job.payload)
                    .map_err(|e| {
                        Error::Conflict(format!(
                            "job {id} cannot be retried: its request is unreadable ({e})"
                        ))
                    })?;
                let project = job
                    .project_id
                    .ok_or_else(|| Error::Conflict(format!("job {id} has no project")))?;
                self.submit_script(project, payload, sink, Some(id))
            }
            image::service::JOB_KIND => {
                let job: image::service::ImageJob =
                    serde_json::from_value(job.payload).map_err(|e| {
                        Error::Conflict(format!(
                            "job {id} cannot be retried: its request is unreadable ({e})"
                        ))
                    })?;
                image::service::submit(
                    &self.jobs,
                    self.store.clone(),
                    self.home.clone(),
                    self.images.clone(),
                    job,
                    sink,
                    Some(id),
                )
            }
            other => Err(Error::Conflict(format!(
                "jobs of kind “{other}” cannot be retried by this version of Atelier"
            ))),
        }
    }
}

/// A script version as the studio shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptView {
    pub document: store::Document,
    pub version_id: i64,
    pub version_number: i64,
    pub script: script::document::Script,
}

/// What a products CSV import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub imported: usize,
    pub errors: Vec<script::csv_import::RowError>,
    pub encoding: &'static str,
    pub ignored_columns: Vec<String>,
}

/// The damaged database is renamed (with its WAL and SHM files) to
/// `atelier.db.damaged-<time>` so the app can start on a new, empty file. Nothing is deleted:
/// the returned path is shown to the user for recovery.
pub fn set_aside_database(home: &Home) -> Result<PathBuf> {
    let db = home.db_path();
    let stamp = store::file_stamp();
    let target = db.with_file_name(format!("atelier.db.damaged-{stamp}"));
    std::fs::rename(&db, &target)
        .map_err(|e| Error::io(format!("cannot move {} aside", db.display()), e))?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", db.display()));
        if side.exists() {
            let to = PathBuf::from(format!("{}{suffix}", target.display()));
            std::fs::rename(&side, &to)
                .map_err(|e| Error::io(format!("cannot move {} aside", side.display()), e))?;
        }
    }
    tracing::warn!(from = %db.display(), to = %target.display(), "damaged database set aside");
    Ok(target)
}

/// Where an exported image went and the visible label on it (`None`: labels are off).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageExport {
    pub path: PathBuf,
    pub visible_label: Option<image::label::LabelBox>,
}
