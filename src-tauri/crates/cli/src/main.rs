//! `atelier-cli`: the engine from a terminal. Every command takes `--home DIR` (else
//! `$ATELIER_HOME`, else the XDG data dir) and `--json` for machine-readable output. On failure
//! it prints one line, `error[<kind>]: <message>`, and exits non-zero.

mod bench;
mod check;
mod generate;
mod image;
mod script;

use std::path::PathBuf;
use std::process::ExitCode;

use atelier_engine::models::ModelEntry;
use atelier_engine::store::{GenerationKind, HistoryQuery};
use atelier_engine::{Access, Engine, Error, Home, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "atelier-cli",
    version,
    about = "Atelier (创作工坊) from the command line"
)]
struct Cli {
    /// Data folder (overrides ATELIER_HOME).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, rename and delete projects.
    Projects {
        #[command(subcommand)]
        action: ProjectsCmd,
    },
    /// Search the generation history.
    History {
        #[command(subcommand)]
        action: HistoryCmd,
    },
    /// Queued, running and recent jobs.
    Jobs {
        #[command(subcommand)]
        action: JobsCmd,
    },
    /// Installed models (GGUF files in the data folder's models/).
    Models {
        #[command(subcommand)]
        action: ModelsCmd,
    },
    /// Generate text with a local model (or `remote`), streaming it to stdout.
    Generate(GenerateArgs),
    /// Write live-stream scripts for products (a CSV of many, or one JSON product form) into a folder.
    Script(ScriptArgs),
    /// Image models, generation, and the settings stored in PNGs.
    Image {
        #[command(subcommand)]
        action: image::ImageCmd,
    },
    /// Check copy against advertising-law and platform rules (exit 1 when a violation is found).
    Check(CheckArgs),
    /// Benchmarks (not tests): print timings of the engine on this machine.
    Bench {
        #[command(subcommand)]
        action: BenchCmd,
    },
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Product category: adds its pack (cosmetics, food, health_food, finance, education, …).
    #[arg(long)]
    category: Option<String>,
    /// Platform: adds the platform packs (douyin, xiaohongshu, taobao, kuaishou, wechat).
    #[arg(long)]
    platform: Option<String>,
    /// The text is spoken by an AI (virtual) host: adds the honesty pack.
    #[arg(long)]
    virtual_host: bool,
    /// A registered trademark of yours that contains a flagged word (repeatable).
    #[arg(long = "trademark", value_name = "NAME")]
    trademarks: Vec<String>,
    /// English reasons instead of Chinese.
    #[arg(long)]
    en: bool,
    /// The file to check; `-` or nothing reads standard input.
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ProjectsCmd {
    /// Live projects (add --trash for the trash).
    List {
        #[arg(long)]
        trash: bool,
    },
    Create {
        name: String,
    },
    Rename {
        id: i64,
        name: String,
    },
    /// Move a project to the trash (restorable).
    Delete {
        id: i64,
    },
    /// Bring a project back from the trash.
    Restore {
        id: i64,
    },
}

#[derive(Subcommand)]
enum HistoryCmd {
    /// Full-text search over prompts and outputs (Chinese substrings work).
    Search {
        query: String,
        #[arg(long, value_parser = ["text", "image", "script"])]
        kind: Option<String>,
        #[arg(long)]
        project: Option<i64>,
        #[arg(long)]
        starred: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One record with every parameter.
    Show { id: i64 },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Each model with architecture, size, quantisation, context and licence.
    List,
    /// Validate a GGUF file and copy it into the models folder.
    Import { path: PathBuf },
    /// Delete an installed model's file (asks for --yes).
    Remove {
        id: String,
        /// Really delete it.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Model id (see `models list`), or `remote` / `remote:NAME` for the configured server.
    /// Default: the model the settings choose.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long)]
    repeat_penalty: Option<f32>,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Project to record the generation in (default: the most recent one, or a new “CLI”).
    #[arg(long)]
    project: Option<i64>,
}

#[derive(clap::Args)]
struct ScriptArgs {
    /// Products CSV (header and list syntax: see the README); bad rows are reported and skipped.
    #[arg(long, value_name = "FILE.csv", conflicts_with = "product")]
    products: Option<PathBuf>,
    /// One product form as JSON (the fields of the app's product form).
    #[arg(long, value_name = "FILE.json")]
    product: Option<PathBuf>,
    /// Folder for the exports (created when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Minutes per product (1–15).
    #[arg(long, default_value_t = 5)]
    slot_min: u32,
    /// douyin, taobao, xiaohongshu, kuaishou… (its rule pack applies).
    #[arg(long)]
    platform: Option<String>,
    /// The host is an AI virtual host (honesty rules, AI statement in the exports).
    #[arg(long)]
    virtual_host: bool,
    /// Model id (default: the one Settings choose).
    #[arg(long)]
    model: Option<String>,
    /// zh or en.
    #[arg(long, default_value = "zh")]
    language: String,
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated export formats: md, txt, srt, json, csv.
    #[arg(long, default_value = "md,json,srt")]
    formats: String,
    /// Project to save the products and scripts in (default: the most recent one).
    #[arg(long)]
    project: Option<i64>,
}

#[derive(Subcommand)]
enum JobsCmd {
    List {
        #[arg(long, default_value_t = 20)]
        recent: u32,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Fill a temporary store and time inserts, searches, History pages and record reads.
    Store {
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Keep the filled database at PATH and reuse it on the next run (skips the fill).
        #[arg(long, value_name = "PATH")]
        reuse: Option<PathBuf>,
    },
    /// Fill one project's gallery and time its pages, scrolling to the end, filters and search.
    Gallery {
        #[arg(long, default_value_t = 20_000)]
        images: usize,
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Fill a new project in the data folder (`--home`) instead of a temporary store, for
        /// scrolling it in the app (bench/gallery-scroll.mjs).
        #[arg(long)]
        into_home: bool,
    },
    /// Compliance checker throughput (MB/s on one thread) on generated mixed copy.
    Check {
        /// Megabytes of copy to check.
        #[arg(long, default_value_t = 1)]
        mb: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Prefill and decode speed of a local model (no sampling; fixed token ids).
    Text {
        /// An installed model id.
        #[arg(long, conflicts_with = "file")]
        model: Option<String>,
        /// Or a GGUF file anywhere.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Default: the number of physical cores.
        #[arg(long)]
        threads: Option<usize>,
        /// Measured runs after one warm-up; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// With --candle: load as shipped, without repacking slow tensor types.
        #[arg(long)]
        no_repack: bool,
        /// Run on candle's models instead of the native CPU engine (for comparison).
        #[arg(long)]
        candle: bool,
    },
    /// Stable Diffusion on random weights: seconds per UNet step, VAE decode, peak memory
    Image {
        /// `sd15`: SD 1.5's shapes (writes a 4.3 GB random model once); `sdxl`: SDXL base's
        /// (14 GB); `tiny`: a smoke run.
        #[arg(long, value_parser = ["sd15", "sdxl", "tiny"], default_value = "sd15")]
        arch: String,
        #[arg(long, default_value_t = 512)]
        size: u32,
        /// Classifier-free guidance: the UNet runs on a batch of 2, as in a real image.
        #[arg(long)]
        cfg: bool,
        /// Denoising steps per run (the first is not counted: it includes text encoding).
        #[arg(long, default_value_t = 3)]
        steps: u32,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Default: the number of physical cores.
        #[arg(long)]
        threads: Option<usize>,
        /// Where the random model is kept between runs.
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
}

/// The project a CLI run records into: the one named, else the most recent, else a new “CLI”.
fn project_or_default(store: &atelier_engine::Store, project: Option<i64>) -> Result<i64> {
    match project {
        Some(id) => Ok(id),
        None => match store.list_projects()?.first() {
            Some(p) => Ok(p.id),
            None => Ok(store.create_project("CLI")?.id),
        },
    }
}

#[global_allocator]
static ALLOC: atelier_engine::memory::Allocator = atelier_engine::memory::Allocator;

fn main() -> ExitCode {
    atelier_engine::memory::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATELIER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    // Model threads: `bench text --threads`, else the Settings value (0 or unset: physical cores).
    let threads = match &cli.command {
        Command::Bench {
            action: BenchCmd::Text { threads, .. } | BenchCmd::Image { threads, .. },
        } => *threads,
        _ => None,
    }
    .or_else(|| {
        let home = Home::resolve(cli.home.clone()).ok()?;
        atelier_engine::store::peek_setting(&home.db_path(), "threads")?
            .parse()
            .ok()
    });
    // SAFETY: no thread has been started yet (the async runtime is built in `run`).
    unsafe { atelier_engine::text::local::configure_process_threads(threads) };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let body =
                    serde_json::json!({"error": {"kind": e.kind(), "message": e.to_string()}});
                eprintln!("{body}");
            } else {
                eprintln!("error[{}]: {e}", e.kind());
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    if let Command::Bench {
        action:
            BenchCmd::Store {
                rows,
                samples,
                reuse,
            },
    } = cli.command
    {
        return bench::store(rows, samples, reuse, cli.json);
    }
    if let Command::Bench {
        action:
            BenchCmd::Gallery {
                images,
                samples,
                into_home,
            },
    } = cli.command
    {
        let home = if into_home {
            Some(Home::resolve(cli.home.clone())?)
        } else {
            None
        };
        return bench::gallery(images, samples, home, cli.json);
    }
    if let Command::Bench {
        action: BenchCmd::Check { mb, runs },
    } = cli.command
    {
        return bench::check(mb, runs, cli.json);
    }
    if let Command::Bench {
        action:
            BenchCmd::Image {
                arch,
                size,
                cfg,
                steps,
                runs,
                model_dir,
                ..
            },
    } = cli.command
    {
        let args = bench::ImageBench {
            arch,
            size,
            cfg,
            steps,
            runs,
            model_dir,
        };
        return bench::image(args, cli.json);
    }
    if let Command::Check(args) = cli.command {
        let home = Home::resolve(cli.home)?;
        return check::run(&home, args, cli.json);
    }
    let engine = Engine::open(
        Home::resolve(cli.home)?,
        Access::Shared,
        runtime.handle().clone(),
    )?;
    if let Command::Bench {
        action:
            BenchCmd::Text {
                model,
                file,
                prompt_tokens,
                gen_tokens,
                threads,
                runs,
                no_repack,
                candle,
            },
    } = cli.command
    {
        let args = bench::TextBench {
            model,
            file,
            prompt_tokens,
            gen_tokens,
            threads,
            runs,
            repack: !no_repack,
            native: !candle,
        };
        return bench::text_model(&engine, args, cli.json);
    }
    if let Command::Generate(args) = cli.command {
        return runtime.block_on(generate::run(&engine, args, cli.json));
    }
    if let Command::Image { action } = cli.command {
        return runtime.block_on(image::run(&engine, action, cli.json));
    }
    if let Command::Script(args) = cli.command {
        return runtime.block_on(script::run(&engine, args, cli.json));
    }
    let store = engine.store();
    let out = Output { json: cli.json };
    match cli.command {
        Command::Projects { action } => match action {
            ProjectsCmd::List { trash } => {
                let list = if trash { store.list_trash()? } else { store.list_projects()? };
                out.list(&list, |p| format!("{:>5}  {}  ({} generations, {} documents)", p.id, p.name, p.generation_count, p.document_count))
            }
            ProjectsCmd::Create { name } => out.one(&store.create_project(&name)?, |p| format!("created project {} “{}”", p.id, p.name)),
            ProjectsCmd::Rename { id, name } => out.one(&store.rename_project(id, &name)?, |p| format!("renamed project {} to “{}”", p.id, p.name)),
            ProjectsCmd::Delete { id } => out.one(&store.trash_project(id)?, |p| {
                format!("moved project {} “{}” to the trash (atelier-cli projects restore {} brings it back)", p.id, p.name, p.id)
            }),
            ProjectsCmd::Restore { id } => out.one(&store.restore_project(id)?, |p| format!("restored project {} “{}”", p.id, p.name)),
        },
        Command::History { action } => match action {
            HistoryCmd::Search { query, kind, project, starred, limit } => {
                let q = HistoryQuery {
                    text: query,
                    kind: kind.as_deref().map(GenerationKind::parse).transpose()?,
                    project_id: project,
                    starred_only: starred,
                    before: None,
                    limit,
                };
                let page = store.history(&q)?;
                out.list(&page.items, |g| {
                    format!(
                        "{:>7}  {:<6} {:<10} {}  {}",
                        g.id,
                        g.kind.as_str(),
                        truncate(&g.project_name, 10),
                        if g.starred { "★" } else { " " },
                        truncate(&g.prompt_preview.replace('\n', " "), 60)
                    )
                })
            }
            HistoryCmd::Show { id } => out.one(&store.generation(id)?, |g| {
                format!(
                    "#{} {} in “{}” with {}\nstatus: {:?}\nseed: {}\nparams: {}\nprompt:\n{}\noutput:\n{}",
                    g.id,
                    g.kind.as_str(),
                    g.project_name,
                    g.model_id,
                    g.status,
                    g.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    g.params,
                    g.prompt,
                    g.output_text.as_deref().unwrap_or("")
                )
            }),
        },
        Command::Jobs { action: JobsCmd::List { recent } } => out.list(&store.list_jobs(recent)?, |j| {
            let progress = if j.progress_total > 0 { format!(" {}/{}", j.progress_done, j.progress_total) } else { String::new() };
            let err = j.error_message.as_deref().map(|m| format!("  ({m})")).unwrap_or_default();
            format!("{:>5}  {:<12} {:<11}{progress}{err}", j.id, j.kind, j.status.as_str())
        }),
        Command::Models { action } => match action {
            ModelsCmd::List => out.list(&atelier_engine::models::registry::list(&engine.home().models_dir())?, |e| match e {
                ModelEntry::Ok(m) => format!(
                    "{:<32} {:<6} {:>6.0}M params  {:<5} ctx {:<6} {:>7.1} MB  {}{}",
                    m.id,
                    m.architecture,
                    m.parameters as f64 / 1e6,
                    m.quantization,
                    m.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    m.file_bytes as f64 / 1e6,
                    m.license.as_deref().unwrap_or("licence unknown"),
                    m.unsupported.as_deref().map(|u| format!("  [not runnable: {u}]")).unwrap_or_default()
                ) + &if m.repacked_on_cpu.is_empty() { String::new() } else { format!("  ({} repacked to Q8_0 on CPU)", m.repacked_on_cpu.join(", ")) },
                ModelEntry::Broken { file, error } => format!("{}  [broken: {error}]", file.display()),
            }),
            ModelsCmd::Remove { id, yes } => {
                if !yes {
                    return Err(Error::invalid(format!("this deletes the model file of {id}; run again with --yes to do it")));
                }
                let file = atelier_engine::models::registry::remove(&engine.home().models_dir(), &id)?;
                engine.text().unload(&id);
                out.one(&file, |f| format!("removed {}", f.display()))
            }
            ModelsCmd::Import { path } => out.one(&atelier_engine::models::registry::import(&engine.home().models_dir(), &path)?, |m| {
                format!("imported {} ({}, {:.0}M parameters, {})", m.id, m.architecture, m.parameters as f64 / 1e6, m.quantization)
            }),
        },
        Command::Bench { .. } | Command::Generate(_) | Command::Script(_) | Command::Image { .. } | Command::Check(_) => unreachable!("handled above"),
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn one<T: Serialize>(&self, value: &T, text: impl Fn(&T) -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            println!("{}", text(value));
        }
        Ok(())
    }

    fn list<T: Serialize>(&self, items: &[T], text: impl Fn(&T) -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(items)?);
        } else if items.is_empty() {
            println!("(none)");
        } else {
            for item in items {
                println!("{}", text(item));
            }
        }
        Ok(())
    }
}

fn truncate(s: &str, chars: usize) -> String {
    if s.chars().count() <= chars {
        s.to_owned()
    } else {
        s.chars().take(chars - 1).chain(['…']).collect()
    }
}
