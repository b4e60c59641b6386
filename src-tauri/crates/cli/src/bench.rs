//! `atelier-cli bench store`: fills a temporary store with realistic generations and prints
//! latency percentiles for the operations the History screen performs. A benchmark, not a test:
//! it asserts nothing; docs/benchmarks.md records its figures.

use std::time::{Duration, Instant};

use atelier_engine::store::{GenerationKind, GenerationOutcome, HistoryQuery, NewGeneration};
use atelier_engine::{Result, Store};
use serde_json::json;

/// A small deterministic PRNG (SplitMix64): the same data on every run, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const PRODUCTS: &[&str] = &[
    "保湿面霜",
    "玻尿酸精华",
    "氨基酸洗面奶",
    "防晒喷雾",
    "蓝牙耳机",
    "空气炸锅",
    "羊毛大衣",
    "运动跑鞋",
    "坚果礼盒",
    "有机绿茶",
    "儿童绘本",
    "猫粮",
    "电动牙刷",
    "真丝枕套",
    "露营帐篷",
    "咖啡豆",
];
const PHRASES: &[&str] = &[
    "温和不刺激，敏感肌也能放心用",
    "一抹化水，清爽不黏腻",
    "家人们今天给大家带来",
    "限时福利，库存有限",
    "这个价格真的很难再有了",
    "点击下方小黄车",
    "成分表干净，孕妈也能用",
    "通勤党必备",
    "质地轻薄好推开",
    "支持七天无理由退换",
    "上班族的早餐神器",
    "颜值超高，送礼有面子",
    "姐妹们冲！",
    "实测续航一整天",
    "写一段小红书种草笔记",
    "突出产品卖点和使用场景",
    "语气亲切自然，适当使用表情",
];
const ENGLISH: &[&str] = &[
    "a cozy living room with warm light",
    "product photo on a marble table",
    "write a short slogan",
    "highlight the key benefits",
    "studio lighting, soft shadows",
    "minimalist packaging design",
    "for busy professionals",
    "limited time offer",
    "cinematic, 35mm, shallow depth of field",
];
const MODELS: &[&str] = &[
    "qwen2.5-coder-0.5b-instruct",
    "smollm2-135m-instruct",
    "sd15",
    "sd-turbo",
];

fn text(rng: &mut Rng, min_chars: usize, max_chars: usize) -> String {
    let target = min_chars + rng.below(max_chars - min_chars + 1);
    let mut s = String::new();
    while s.chars().count() < target {
        match rng.below(5) {
            0 => s.push_str(rng.pick(PRODUCTS)),
            1 => s.push_str(rng.pick(ENGLISH)),
            _ => s.push_str(rng.pick(PHRASES)),
        }
        s.push(if rng.below(4) == 0 { '\n' } else { '，' });
    }
    s
}

struct Stats {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Stats {
    fn new(name: &'static str) -> Self {
        Stats {
            name,
            samples: Vec::new(),
        }
    }
    fn time<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f()?;
        self.samples.push(t.elapsed());
        Ok(out)
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.samples.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    }
}

pub fn store(
    rows: usize,
    samples: usize,
    reuse: Option<std::path::PathBuf>,
    json_out: bool,
) -> Result<()> {
    let dir = tempfile::tempdir()
        .map_err(|e| atelier_engine::Error::io("cannot make a temp folder", e))?;
    let path = reuse
        .clone()
        .unwrap_or_else(|| dir.path().join("atelier.db"));
    let existed = reuse.is_some() && path.exists();
    let store = Store::open(&path)?;
    let projects: Vec<i64> = if existed {
        store.list_projects()?.iter().map(|p| p.id).collect()
    } else {
        (0..20)
            .map(|i| store.create_project(&format!("项目 {i}")).map(|p| p.id))
            .collect::<Result<_>>()?
    };
    let rows = if existed {
        store
            .history(&HistoryQuery {
                limit: 1,
                ..Default::default()
            })?
            .items
            .first()
            .map_or(0, |g| g.id as usize)
    } else {
        rows
    };
    let mut rng = Rng(20261122);
    let mut insert = Stats::new("insert");
    let fill = Instant::now();
    for i in 0..if existed { 0 } else { rows } {
        let kind = match rng.below(10) {
            0..=5 => GenerationKind::Text,
            6..=7 => GenerationKind::Script,
            _ => GenerationKind::Image,
        };
        let prompt = text(&mut rng, 20, 200);
        let output = if kind == GenerationKind::Image {
            String::new()
        } else {
            text(&mut rng, 100, 1500)
        };
        let g = NewGeneration {
            project_id: projects[rng.below(projects.len())],
            job_id: None,
            kind,
            model_id: rng.pick(MODELS).into(),
            prompt,
            params: json!({"temperature": 0.7, "top_p": 0.9, "top_k": 40, "max_tokens": 512, "repeat_penalty": 1.1, "template": "xiaohongshu-note"}),
            seed: Some(rng.next() as i64 & 0xffff_ffff),
        };
        // An insert is what a finished generation costs: the row, then its result.
        insert.time(|| {
            let id = store.begin_generation(&g)?;
            store.finish_generation(
                id,
                &GenerationOutcome {
                    output_text: Some(output),
                    prompt_tokens: Some(80),
                    output_tokens: Some(300),
                    ..Default::default()
                },
            )?;
            if i % 50 == 0 {
                store.set_generation_starred(id, true)?;
            }
            Ok(())
        })?;
    }
    let fill_s = fill.elapsed().as_secs_f64();
    store.optimize()?;

    let mut search = Stats::new("search (3+ chars)");
    let mut search_short = Stats::new("search (1-2 Chinese chars)");
    let mut miss_long = Stats::new("search, no match (3+ chars)");
    let mut miss_short = Stats::new("search, no match (1-2 chars)");
    let mut page = Stats::new("history page of 100");
    let mut open = Stats::new("open a record");
    let max_id = rows as i64;
    for _ in 0..samples {
        let q = match rng.below(4) {
            0 => rng.pick(PRODUCTS).to_owned(),
            1 => rng.pick(PHRASES).chars().take(4 + rng.below(4)).collect(),
            2 => rng
                .pick(ENGLISH)
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            _ => format!(
                "{} {}",
                rng.pick(PRODUCTS),
                &rng.pick(PHRASES).chars().take(3).collect::<String>()
            ),
        };
        search.time(|| {
            store.history(&HistoryQuery {
                text: q,
                limit: 100,
                ..Default::default()
            })
        })?;
        let short: String = rng.pick(PRODUCTS).chars().take(2).collect();
        search_short.time(|| {
            store.history(&HistoryQuery {
                text: short,
                limit: 100,
                ..Default::default()
            })
        })?;
        // Worst cases: a word that occurs nowhere reads the whole index (FTS) or table (LIKE).
        miss_long.time(|| {
            store.history(&HistoryQuery {
                text: "不存在的词".into(),
                limit: 100,
                ..Default::default()
            })
        })?;
        miss_short.time(|| {
            store.history(&HistoryQuery {
                text: "鲸鱼".into(),
                limit: 100,
                ..Default::default()
            })
        })?;
        let mut hq = HistoryQuery {
            limit: 100,
            before: Some(1 + rng.below(rows) as i64),
            ..Default::default()
        };
        match rng.below(4) {
            0 => hq.kind = Some(GenerationKind::Script),
            1 => hq.project_id = Some(projects[rng.below(projects.len())]),
            2 => hq.starred_only = true,
            _ => {}
        }
        page.time(|| store.history(&hq))?;
        let id = 1 + rng.below(max_id as usize) as i64;
        open.time(|| store.generation(id))?;
    }
    let db_bytes = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    let all = [
        &insert,
        &search,
        &search_short,
        &miss_long,
        &miss_short,
        &page,
        &open,
    ];
    if json_out {
        let ops: Vec<_> = all.iter().map(|s| json!({"op": s.name, "n": s.samples.len(), "p50_ms": s.pct(0.5), "p95_ms": s.pct(0.95)})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"rows": rows, "fill_s": fill_s, "db_bytes": db_bytes, "peak_rss_kib": peak_rss_kib(), "ops": ops})
            )?
        );
    } else {
        println!(
            "store benchmark: {rows} generations, {:.1} MB database, filled in {fill_s:.1} s, peak RSS {} MiB",
            db_bytes as f64 / 1e6,
            peak_rss_kib().unwrap_or(0) / 1024
        );
        println!(
            "{:<28} {:>7} {:>9} {:>9}",
            "operation", "n", "p50 ms", "p95 ms"
        );
        for s in all {
            println!(
                "{:<28} {:>7} {:>9.3} {:>9.3}",
                s.name,
                s.samples.len(),
                s.pct(0.5),
                s.pct(0.95)
            );
        }
    }
    Ok(())
}

/// `atelier-cli bench gallery`: one project with `images` pictures (boards, tags, stars and a
/// trash as people use them), filled through the real store API, then the gallery's queries:
/// the first page, a page after a random cursor, every page from top to bottom (what scrolling
/// to the end asks for), and the filters and search.
pub fn gallery(
    images: usize,
    samples: usize,
    into: Option<atelier_engine::Home>,
    json_out: bool,
) -> Result<()> {
    use atelier_engine::store::{FinishedImage, GalleryQuery};
    let dir = tempfile::tempdir()
        .map_err(|e| atelier_engine::Error::io("cannot make a temp folder", e))?;
    // In a data folder: the app must not be running on it (the lock says so).
    let _lock = into
        .as_ref()
        .map(|h| h.ensure().and_then(|_| h.lock()))
        .transpose()?;
    let root = into
        .as_ref()
        .map_or(dir.path().to_owned(), |h| h.root().to_owned());
    let db = into
        .as_ref()
        .map_or(dir.path().join("atelier.db"), |h| h.db_path());
    let store = Store::open(&db)?;
    let project = store.create_project(&format!("图库 {images} 张"))?.id;
    // One small real PNG for every row: the gallery's queries never read the files.
    let mut png = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 120, 40]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| atelier_engine::Error::Internal(format!("PNG: {e}")))?;
    let asset = store.add_asset(&root, Some(project), "image/png", &png)?;
    let boards: Vec<i64> = (0..12)
        .map(|i| {
            store
                .create_board(project, &format!("看板 {i}"))
                .map(|b| b.id)
        })
        .collect::<Result<_>>()?;
    const TAGS: [&str; 8] = [
        "产品图",
        "海报",
        "小红书",
        "主图",
        "banner",
        "测试",
        "夏季",
        "新品",
    ];
    let mut rng = Rng(20261206);
    let fill = Instant::now();
    let mut trashed = Vec::new();
    for i in 0..images {
        let id = store.begin_generation(&NewGeneration {
            project_id: project,
            job_id: None,
            kind: GenerationKind::Image,
            model_id: "sd15".into(),
            prompt: text(&mut rng, 20, 200),
            params: json!({"steps": 25, "cfg_scale": 7.0, "width": 512, "height": 512, "scheduler": "dpmpp_2m_karras"}),
            seed: Some(rng.next() as i64 & 0xffff_ffff),
        })?;
        store.finish_image(&FinishedImage {
            generation_id: id,
            asset_id: asset.id,
            thumb_asset_id: Some(asset.id),
            width: 512,
            height: 512,
            metrics: json!({}),
        })?;
        if i % 4 == 0 {
            store.set_image_board(id, Some(boards[rng.below(boards.len())]))?;
        }
        if i % 5 == 0 {
            store.set_image_tags(id, &[rng.pick(&TAGS).to_string()])?;
        }
        if i % 40 == 0 {
            store.set_generation_starred(id, true)?;
        }
        if i % 100 == 0 {
            trashed.push(id);
        }
    }
    store.set_images_trashed(&trashed, true)?;
    let fill_s = fill.elapsed().as_secs_f64();
    store.optimize()?;

    let page = |before: Option<i64>| GalleryQuery {
        project_id: project,
        before,
        limit: 100,
        ..Default::default()
    };
    let mut first = Stats::new("first page of 100");
    let mut deep = Stats::new("page after a random cursor");
    let mut walk = Stats::new("every page, top to bottom");
    let mut starred = Stats::new("starred only");
    let mut tagged = Stats::new("one tag");
    let mut board = Stats::new("one board");
    let mut search = Stats::new("search a word");
    let mut miss = Stats::new("search, no match");
    let mut shown = 0usize;
    let walk_start = Instant::now();
    let mut cursor = None;
    loop {
        let p = walk.time(|| store.gallery(&page(cursor)))?;
        shown += p.items.len();
        match p.next_before {
            Some(b) => cursor = Some(b),
            None => break,
        }
    }
    let walk_s = walk_start.elapsed().as_secs_f64();
    for _ in 0..samples {
        first.time(|| store.gallery(&page(None)))?;
        deep.time(|| store.gallery(&page(Some(1 + rng.below(images.max(1)) as i64))))?;
        starred.time(|| {
            store.gallery(&GalleryQuery {
                starred_only: true,
                ..page(None)
            })
        })?;
        tagged.time(|| {
            store.gallery(&GalleryQuery {
                tag: Some(rng.pick(&TAGS).to_string()),
                ..page(None)
            })
        })?;
        board.time(|| {
            store.gallery(&GalleryQuery {
                board_id: Some(boards[rng.below(boards.len())]),
                ..page(None)
            })
        })?;
        search.time(|| {
            store.gallery(&GalleryQuery {
                text: rng.pick(PRODUCTS).to_string(),
                ..page(None)
            })
        })?;
        miss.time(|| {
            store.gallery(&GalleryQuery {
                text: "不存在的词".into(),
                ..page(None)
            })
        })?;
    }
    let all = [
        &first, &deep, &walk, &starred, &tagged, &board, &search, &miss,
    ];
    if json_out {
        let ops: Vec<_> = all.iter().map(|s| json!({"op": s.name, "n": s.samples.len(), "p50_ms": s.pct(0.5), "p95_ms": s.pct(0.95), "max_ms": s.pct(1.0)})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "images": images, "fill_s": fill_s, "shown_by_scrolling": shown,
                "scroll_to_end_s": walk_s, "ops": ops
            }))?
        );
    } else {
        println!(
            "gallery benchmark: {images} images in one project (filled in {fill_s:.1} s); scrolling to the end read {shown} in {} pages, {walk_s:.2} s",
            walk.samples.len()
        );
        println!(
            "{:<28} {:>7} {:>9} {:>9} {:>9}",
            "operation", "n", "p50 ms", "p95 ms", "max ms"
        );
        for s in all {
            println!(
                "{:<28} {:>7} {:>9.2} {:>9.2} {:>9.2}",
                s.name,
                s.samples.len(),
                s.pct(0.5),
                s.pct(0.95),
                s.pct(1.0)
            );
        }
    }
    Ok(())
}

fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Starts a new high-water mark at the current resident set (Linux: `5` to `clear_refs`), so
/// the peak of one phase can be told from another's; false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The resident set now.
fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `atelier-cli bench text`: prefill and decode speed of a local model.
pub struct TextBench {
    pub model: Option<String>,
    pub file: Option<std::path::PathBuf>,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub threads: Option<usize>,
    pub runs: usize,
    pub repack: bool,
    pub native: bool,
}

pub fn text_model(engine: &atelier_engine::Engine, a: TextBench, as_json: bool) -> Result<()> {
    use atelier_engine::text::local::{LoadOptions, LocalModel, default_threads};
    let (id, file) = match (&a.file, &a.model) {
        (Some(f), _) => (
            f.file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .unwrap_or_default(),
            f.clone(),
        ),
        (None, Some(m)) => (
            m.clone(),
            atelier_engine::text::service::find_model(engine.home(), m)?.file,
        ),
        (None, None) => {
            let m = engine.default_text_model()?.ok_or_else(|| {
                atelier_engine::Error::invalid("no model installed; pass --file PATH")
            })?;
            (
                m.clone(),
                atelier_engine::text::service::find_model(engine.home(), &m)?.file,
            )
        }
    };
    let threads = a.threads.unwrap_or_else(default_threads).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| atelier_engine::Error::Internal(format!("thread pool: {e}")))?;
    let settings = engine.store().settings()?;
    let opts = LoadOptions {
        device: settings.device,
        cache_dir: Some(engine.home().repacked_models_dir()),
        repack: a.repack,
        native: a.native,
    };
    let t0 = Instant::now();
    let model = pool.install(|| LocalModel::load(&id, &file, &opts, &|_, _| {}))?;
    let load_s = t0.elapsed().as_secs_f64();
    pool.install(|| model.bench(a.prompt_tokens, a.gen_tokens))?; // warm-up
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..a.runs.max(1) {
        let (p, d) = pool.install(|| model.bench(a.prompt_tokens, a.gen_tokens))?;
        prefill.push(p);
        decode.push(d);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let (p, d) = (median(&mut prefill), median(&mut decode));
    let result = json!({
        "model": id,
        "file": file,
        "device": model.report.device,
        "threads": threads,
        "engine": model.report.engine,
        "repacked": model.report.repacked,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "runs": a.runs.max(1),
        "load_s": load_s,
        "prefill_tokens_per_s": a.prompt_tokens as f64 / p,
        "decode_tokens_per_s": a.gen_tokens as f64 / d,
        "time_to_first_token_ms": p * 1000.0,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{id} on {} ({} engine, {threads} threads{}), median of {} runs:\n  prefill {} tokens: {:.1} tok/s\n  decode {} tokens:  {:.1} tok/s\n  time to first token: {:.0} ms\n  load: {:.2} s",
            model.report.device,
            model.report.engine,
            if model.report.repacked.is_empty() {
                String::new()
            } else {
                format!(", repacked {:?}", model.report.repacked)
            },
            a.runs.max(1),
            a.prompt_tokens,
            a.prompt_tokens as f64 / p,
            a.gen_tokens,
            a.gen_tokens as f64 / d,
            p * 1000.0,
            load_s
        );
    }
    Ok(())
}

/// Risky sentences mixed into the checker benchmark's copy (about one in six pieces).
const RISKY: &[&str] = &[
    "全网最低价，错过再等一年",
    "销量第一的爆款",
    "蕞佳选择",
    "顶级面料",
    "100%有效",
    "加微信领券",
    "最后3件",
    "本店最轻的一款",
    "据 2025 年第三方报告，回购率 90%",
    "最近很多用户反馈",
    "第一步先洗脸",
    "積極面對",
];

/// `atelier-cli bench check`: the checker's throughput on `mb` MB of mixed copy, one thread.
pub fn check(mb: usize, runs: usize, as_json: bool) -> Result<()> {
    use atelier_engine::compliance::{CheckOptions, Checker};
    let mut rng = Rng(7);
    let target = mb.max(1) << 20;
    let mut text = String::with_capacity(target + 256);
    while text.len() < target {
        match rng.below(6) {
            0 => text.push_str(rng.pick(RISKY)),
            1 => text.push_str(rng.pick(PRODUCTS)),
            2 => text.push_str(rng.pick(ENGLISH)),
            _ => text.push_str(rng.pick(PHRASES)),
        }
        text.push_str(if rng.below(4) == 0 { "。\n" } else { "，" });
    }
    let t = Instant::now();
    let checker = Checker::builtin()?;
    let build_ms = t.elapsed().as_secs_f64() * 1000.0;
    let opts = CheckOptions {
        platform: Some("douyin".into()),
        category: Some("cosmetics".into()),
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut findings = 0;
    for _ in 0..runs.max(1) + 1 {
        let t = Instant::now();
        findings = checker.check(&text, &opts)?.findings.len();
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0); // warm-up
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mbps = text.len() as f64 / (1 << 20) as f64 / median;
    if as_json {
        println!(
            "{}",
            json!({"bytes": text.len(), "findings": findings, "median_s": median, "mb_per_s": mbps, "build_ms": build_ms})
        );
    } else {
        println!(
            "checked {:.2} MB of mixed copy (all packs for cosmetics on douyin), {findings} findings",
            text.len() as f64 / (1 << 20) as f64
        );
        println!(
            "median of {} runs: {:.1} ms = {mbps:.1} MB/s on one thread (rule packs compiled in {build_ms:.0} ms)",
            times.len(),
            median * 1000.0
        );
    }
    Ok(())
}

/// `atelier-cli bench image`: the real pipeline (prompt encoding, sampler, UNet with or
/// without CFG, VAE decode) on a random-weight model of SD 1.5's or SDXL's shapes.
pub struct ImageBench {
    /// `sd15`, `sdxl` or `tiny`.
    pub arch: String,
    pub size: u32,
    pub cfg: bool,
    pub steps: u32,
    pub runs: usize,
    pub model_dir: Option<std::path::PathBuf>,
}

pub fn image(a: ImageBench, as_json: bool) -> Result<()> {
    use atelier_engine::image::random::{Arch, write_random_model};
    use atelier_engine::image::{ImageParams, Scheduler, model, pipeline};
    let (arch, shapes) = match a.arch.as_str() {
        "sd15" => ("sd15", Arch::Sd15),
        "sdxl" => ("sdxl", Arch::Sdxl),
        _ => ("tiny", Arch::Tiny),
    };
    let dir = a.model_dir.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!(".cache/atelier/bench/image-{arch}-random"))
    });
    if !dir.join("model_index.json").is_file() {
        eprintln!("writing a random {arch} model to {} (once)…", dir.display());
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        write_random_model(&tmp, shapes)?;
        std::fs::rename(&tmp, &dir).map_err(|e| {
            atelier_engine::Error::io(format!("cannot create {}", dir.display()), e)
        })?;
    }
    let rss_before = peak_rss_kib();
    let t0 = Instant::now();
    let info = model::describe(&dir)?;
    // A GPU when this build has one (f16 there), else the CPU (f32).
    let (device, why) = atelier_engine::text::local::choose_device(Default::default());
    if let Some(why) = why {
        eprintln!("{why}");
    }
    let loaded = model::load(info, &device)?;
    let device_name = atelier_engine::text::local::device_name(&device);
    let dtype = format!("{:?}", loaded.dtype).to_lowercase();
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = rss_kib();
    let mut peak_kib = peak_rss_kib();
    let p = ImageParams {
        model: loaded.info.id.clone(),
        prompt: "a cup of jasmine tea on a wooden table, soft window light".into(),
        negative_prompt: "blurry".into(),
        width: a.size,
        height: a.size,
        steps: a.steps.max(2),
        cfg_scale: if a.cfg { 7.0 } else { 1.0 },
        scheduler: Scheduler::Euler,
        seed: Some(1),
        batch_count: 1,
        init_image: None,
        variation: None,
        translated_prompt: None,
    };
    p.validate()?;
    let estimate =
        pipeline::memory_need(&loaded.info, &device, p.width, p.height, p.uses_cfg()).peak();
    let mut step_s = Vec::new();
    let mut vae_s = Vec::new();
    let mut total_s = Vec::new();
    // The peak of each phase (prompt encoding and denoising; the decode), for the memory
    // planner's estimate: the largest over the runs.
    let (mut denoise_peak, mut decode_peak) = (None, None);
    let phases = reset_peak_rss();
    for _ in 0..a.runs.max(1) {
        let start = Instant::now();
        let mut marks: Vec<Instant> = Vec::new();
        let mut on_step = |done: usize, total: usize, _: Option<pipeline::Rgb>| {
            marks.push(Instant::now());
            if phases && done == total {
                denoise_peak = denoise_peak.max(peak_rss_kib());
                reset_peak_rss();
            }
        };
        pipeline::generate(&loaded, &p, 1, None, None, &|| false, &mut on_step)?;
        let end = Instant::now();
        if phases {
            decode_peak = decode_peak.max(peak_rss_kib());
            reset_peak_rss();
        }
        // Steps after the first: the first also encodes the prompt.
        for w in marks.windows(2) {
            step_s.push((w[1] - w[0]).as_secs_f64());
        }
        if let Some(last) = marks.last() {
            vae_s.push((end - *last).as_secs_f64());
        }
        total_s.push((end - start).as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (step, vae) = (median(&mut step_s), median(&mut vae_s));
    peak_kib = peak_kib
        .max(peak_rss_kib())
        .max(denoise_peak)
        .max(decode_peak);
    let peak_gib = peak_kib.map(|k| k as f64 / (1024.0 * 1024.0));
    // What a job's end does in the app: freed pages go back, the model stays loaded.
    atelier_engine::memory::release();
    let gib = |k: Option<u64>| k.map(|k| k as f64 / (1024.0 * 1024.0));
    let shown = |g: Option<f64>| {
        g.map(|g| format!("{g:.2} GiB"))
            .unwrap_or_else(|| "unknown".into())
    };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let result = json!({
        "arch": arch,
        "size": a.size,
        "cfg": a.cfg,
        "unet_batch": if a.cfg { 2 } else { 1 },
        "dtype": dtype,
        "device": device_name,
        "threads": threads,
        "steps_per_run": p.steps,
        "runs": a.runs.max(1),
        "load_s": load_s,
        "s_per_step": step,
        "vae_decode_s": vae,
        "run_s": median(&mut total_s),
        "image_25_steps_s": step * 25.0 + vae,
        "peak_rss_gib": peak_gib,
        "peak_rss_denoise_gib": gib(denoise_peak),
        "peak_rss_decode_gib": gib(decode_peak),
        "estimate_gib": estimate as f64 / (1u64 << 30) as f64,
        "rss_before_load_gib": gib(rss_before),
        "rss_loaded_gib": gib(rss_loaded),
        "rss_after_release_gib": gib(rss_kib()),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{arch} {0}×{0}, {dtype} on {device_name} ({threads} threads), UNet batch {1}, median of {2} runs × {3} steps:\n  UNet step:  {step:.2} s\n  VAE decode: {vae:.2} s\n  25-step image: {4:.0} s\n  load: {load_s:.2} s\n  peak RSS: {5} (denoising {6}, decode {7}; the planner's estimate {8:.2} GiB)",
            a.size,
            if a.cfg { 2 } else { 1 },
            a.runs.max(1),
            p.steps,
            step * 25.0 + vae,
            shown(peak_gib),
            shown(gib(denoise_peak)),
            shown(gib(decode_peak)),
            estimate as f64 / (1u64 << 30) as f64,
        );
    }
    Ok(())
}
