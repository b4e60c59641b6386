//! `atelier-cli image …`: list and import image models, generate through the same queued job
//! the app runs (progress on stderr, Ctrl-C cancels), read the settings out of any PNG, and
//! write random-weight models for tests and benchmarks.

use std::path::PathBuf;

use atelier_engine::image::label::Corner;
use atelier_engine::image::metadata;
use atelier_engine::image::metadata::ExportFormat;
use atelier_engine::image::random::{Arch, write_random_model};
use atelier_engine::image::service::ImageJob;
use atelier_engine::image::{ImageParams, InitImage, Scheduler, Variation};
use atelier_engine::{Engine, Error, JobEvent, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Installed image models (diffusers folders in the data folder's models/image/).
    Models,
    /// Install an image model: a diffusers folder (unet/, vae/, text_encoder/, tokenizer/) or a
    /// single-file .safetensors checkpoint, converted to one.
    Import {
        /// A diffusers folder, or a single-file .safetensors checkpoint (SD 1.x/2.x/XL).
        path: PathBuf,
        /// For a single file: the CLIP vocabulary (a tokenizer folder or CLIP's
        /// bpe_simple_vocab_16e6.txt), when not the one the set-up installed.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Generate images into the gallery (and copy the first to --out).
    Generate(GenerateArgs),
    /// Print the generation settings stored in a picture: a PNG (Atelier, A1111, ComfyUI,
    /// InvokeAI) or a JPEG/WebP with A1111 parameters in its EXIF.
    Recall { file: PathBuf },
    /// Write a random-weight model in the diffusers layout (for tests and benchmarks: it draws noise).
    RandomModel {
        #[arg(long, value_parser = ["tiny", "tiny-inpaint", "tiny-xl", "sd15"], default_value = "tiny")]
        arch: String,
        /// Folder to create; install it with `image import`.
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    /// Default: a random seed (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Default: the model's recommendation (25, or 1 for turbo models).
    #[arg(long)]
    steps: Option<u32>,
    /// Default: the model's recommendation (7, or 0 for turbo models).
    #[arg(long)]
    cfg: Option<f64>,
    /// WIDTHxHEIGHT; default: the model's native size.
    #[arg(long)]
    size: Option<String>,
    #[arg(long, default_value = "dpmpp_2m_karras")]
    scheduler: String,
    /// img2img source image.
    #[arg(long)]
    init: Option<PathBuf>,
    #[arg(long, default_value_t = 0.75)]
    strength: f64,
    /// Inpainting: a mask the size of --init (white: repaint, black: keep).
    #[arg(long, requires = "init")]
    mask: Option<PathBuf>,
    /// Images; each uses the next seed (or, with --variation-seed, the next variation seed).
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Make variations of --seed's image: the starting noise is blended towards this seed's.
    #[arg(long, requires = "seed")]
    variation_seed: Option<u64>,
    /// How far the variations move (0: the same image, 1: another image).
    #[arg(long, default_value_t = 0.15)]
    variation_strength: f64,
    #[arg(long)]
    project: Option<i64>,
    /// Export the first image here as well: with the visible AI label (unless Settings turned
    /// it off) and all its metadata; PNG, or JPEG / lossless WebP by a .jpg / .webp name.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The visible label's text for --out (must keep AI/人工智能 and 生成/合成).
    #[arg(long, default_value = atelier_engine::image::label::DEFAULT_TEXT)]
    label: String,
    /// The label's corner: top-left, top-right, bottom-left or bottom-right.
    #[arg(long, default_value = "bottom-right", value_parser = corner)]
    corner: Corner,
}

fn corner(s: &str) -> Result<Corner> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_"))).map_err(|_| {
        Error::invalid(format!(
            "{s} is not a corner (top-left, top-right, bottom-left, bottom-right)"
        ))
    })
}

fn size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| Error::invalid(format!("size “{s}” is not WIDTHxHEIGHT")))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| Error::invalid(format!("size “{s}” is not WIDTHxHEIGHT")))
    };
    Ok((parse(w)?, parse(h)?))
}

pub async fn run(engine: &Engine, cmd: ImageCmd, json: bool) -> Result<()> {
    match cmd {
        ImageCmd::Models => {
            let list = engine.image_models()?;
            if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|m| match m {
                        Ok(i) => serde_json::to_value(i).unwrap_or_default(),
                        Err((id, e)) => serde_json::json!({"id": id, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for m in list {
                    match m {
                        Ok(i) => println!(
                            "{}  {}  {:.2} GB  {}×{} (~{:.1} GiB of memory on the CPU)  {}",
                            i.id,
                            i.family.label(),
                            i.size_bytes as f64 / 1e9,
                            i.default_size,
                            i.default_size,
                            i.cpu_memory_bytes as f64 / (1u64 << 30) as f64,
                            i.pieces
                                .iter()
                                .map(|p| format!("{} {}", p.role, p.dtype))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Err((id, e)) => println!("{id}  [broken: {e}]"),
                    }
                }
            }
            Ok(())
        }
        ImageCmd::Import { path, tokenizer } => {
            let info = engine.import_image_model(&path, tokenizer.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("installed {} ({})", info.id, info.family.label());
            }
            Ok(())
        }
        ImageCmd::RandomModel { arch, out } => {
            // clap has checked the name against the list above.
            let arch = match arch.as_str() {
                "sd15" => Arch::Sd15,
                "tiny-inpaint" => Arch::TinyInpaint,
                "tiny-xl" => Arch::TinyXl,
                _ => Arch::Tiny,
            };
            write_random_model(&out, arch)?;
            println!("{}", out.display());
            Ok(())
        }
        ImageCmd::Recall { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
            let r = metadata::recall(&bytes)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("source: {}", r.source);
                println!("prompt: {}", r.prompt);
                if !r.negative_prompt.is_empty() {
                    println!("negative: {}", r.negative_prompt);
                }
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "seed {}, steps {}, cfg {}, scheduler {}, size {}",
                    opt(r.seed.map(|s| s.to_string())),
                    opt(r.steps.map(|s| s.to_string())),
                    opt(r.cfg_scale.map(|s| s.to_string())),
                    opt(r.scheduler.map(|s| s.id().to_string())),
                    opt(r.width.zip(r.height).map(|(w, h)| format!("{w}x{h}")))
                );
                if let Some(l) = r.label {
                    println!("AI label: {} (ProduceID {})", l.label, l.produce_id);
                }
            }
            Ok(())
        }
        ImageCmd::Generate(a) => generate(engine, a, json).await,
    }
}

async fn generate(engine: &Engine, a: GenerateArgs, json: bool) -> Result<()> {
    if a.out.is_some() {
        // Refuse a bad label before spending minutes on the images.
        atelier_engine::image::label::validate_text(&a.label)?;
    }
    let info = engine
        .image_models()?
        .into_iter()
        .find_map(|m| m.ok().filter(|i| i.id == a.model))
        .ok_or_else(|| {
            Error::invalid(format!(
                "no image model “{}” is installed (see `atelier-cli image models`)",
                a.model
            ))
        })?;
    let (width, height) = match &a.size {
        Some(s) => size(s)?,
        None => (info.default_size, info.default_size),
    };
    let project_id = crate::project_or_default(engine.store(), a.project)?;
    let keep = |path: &PathBuf| -> Result<i64> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Ok(engine.add_image_asset(project_id, &bytes)?.id)
    };
    let init_image = match &a.init {
        Some(path) => Some(InitImage {
            asset_id: keep(path)?,
            strength: a.strength,
            mask_asset_id: a.mask.as_ref().map(keep).transpose()?,
        }),
        None => None,
    };
    let params = ImageParams {
        model: a.model.clone(),
        prompt: a.prompt,
        negative_prompt: a.negative,
        width,
        height,
        steps: a.steps.unwrap_or(info.recommended_steps),
        cfg_scale: a.cfg.unwrap_or(info.recommended_cfg),
        scheduler: Scheduler::parse(&a.scheduler)?,
        seed: a.seed,
        batch_count: a.batch,
        init_image,
        variation: a.variation_seed.map(|seed| Variation {
            seed,
            strength: a.variation_strength,
        }),
        translated_prompt: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let job = engine.generate_image(
        ImageJob { project_id, params },
        Some(std::sync::Arc::new(move |e| {
            let _ = tx.send(e);
        })),
    )?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ncancelling…");
                engine.jobs().cancel(job)?;
                continue;
            }
        };
        let Some(event) = event else {
            return Err(Error::Internal("the job ended without a result".into()));
        };
        match event {
            JobEvent::Progress { done, total } if !json && tty => {
                eprint!("\rstep {done}/{total}");
            }
            JobEvent::Waiting { queued } if !json && tty => {
                eprint!("\rwaiting in the server's queue ({queued} queued)");
            }
            JobEvent::Finished { result } => {
                if !json && tty {
                    eprintln!();
                }
                let images = result["images"].as_array().cloned().unwrap_or_default();
                let mut written = Vec::new();
                for img in &images {
                    let id = img["generation_id"].as_i64().unwrap_or_default();
                    let asset = img["asset_id"].as_i64().unwrap_or_default();
                    let path = engine.home().root().join(engine.store().asset(asset)?.path);
                    written.push(path);
                    let rec = engine.image_record(id)?;
                    if !json {
                        println!(
                            "image {id}: seed {} → {}",
                            rec.params.seed.unwrap_or_default(),
                            written
                                .last()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        );
                    }
                }
                let first = images.first().and_then(|i| i["generation_id"].as_i64());
                if let (Some(out), Some(first)) = (&a.out, first) {
                    // The file name decides the type: .jpg/.jpeg, .webp, else PNG.
                    let ext = out
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    let format = match ext.as_str() {
                        "jpg" | "jpeg" => ExportFormat::Jpeg,
                        "webp" => ExportFormat::Webp,
                        _ => ExportFormat::Png,
                    };
                    let export = engine.export_image(first, Some(&a.label), a.corner, format)?;
                    let bytes = std::fs::read(&export.path).map_err(|e| {
                        Error::io(format!("cannot read {}", export.path.display()), e)
                    })?;
                    atelier_engine::fsutil::write_atomic(out, &bytes)?;
                    if !json {
                        let label = if export.visible_label.is_some() {
                            "with the visible label"
                        } else {
                            "without the visible label (turned off in Settings)"
                        };
                        println!("exported to {} {label}", out.display());
                    }
                }
                if json {
                    println!("{}", serde_json::json!({"job_id": job, "images": images}));
                }
                return Ok(());
            }
            JobEvent::Failed { kind, message } => {
                return Err(match kind.as_str() {
                    "invalid_input" => Error::invalid(message),
                    _ => Error::Internal(format!("[{kind}] {message}")),
                });
            }
            JobEvent::Cancelled => return Err(Error::Cancelled),
            _ => {}
        }
    }
}
