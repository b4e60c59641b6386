//! The local engine with the real SmolLM2-135M-Instruct file (Q4_1, repacked on load).
//! scripts/test.sh downloads it (sha256-checked) into ~/.cache/atelier/models, or set
//! ATELIER_MODEL_CACHE to a folder holding `smollm2-135m-instruct.gguf`.

mod common;
use common::{ID, engine_with_model, model_file, sink};

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier_engine::store::GenerationStatus;
use atelier_engine::text::chat::{ChatMessage, Role};
use atelier_engine::text::local::{DevicePreference, LoadOptions, LocalEngine, LocalModel};
use atelier_engine::text::service::TextJob;
use atelier_engine::text::stream::TextStream;
use atelier_engine::text::{SamplingParams, StopReason, TextRequest};
use atelier_engine::{Access, Engine, Home, JobEvent};
use tokio::sync::mpsc;

/// One loaded model shared by the tests of this file (loading repacks: ~1 s).
fn model() -> Arc<LocalModel> {
    static MODEL: Mutex<Option<Arc<LocalModel>>> = Mutex::new(None);
    let mut m = MODEL.lock().unwrap_or_else(|p| p.into_inner());
    m.get_or_insert_with(|| {
        let opts = LoadOptions {
            device: DevicePreference::Cpu,
            cache_dir: None,
            repack: true,
            native: true,
        };
        Arc::new(LocalModel::load(ID, &model_file(), &opts, &|_, _| {}).unwrap())
    })
    .clone()
}

fn request(prompt: &str, params: SamplingParams) -> TextRequest {
    TextRequest {
        model: ID.into(),
        messages: vec![ChatMessage::new(Role::User, prompt)],
        params,
    }
}

fn sampled(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        max_tokens,
        ..Default::default()
    }
}

fn run(req: &TextRequest, seed: u64) -> (String, Vec<String>, atelier_engine::text::TextOutcome) {
    let mut pieces = Vec::new();
    let o = model()
        .generate(req, seed, &|| false, &mut |t| pieces.push(t.to_owned()))
        .unwrap();
    (pieces.concat(), pieces, o)
}

#[test]
fn same_seed_same_text_other_seed_other_text() {
    let req = request("Write a tagline for a coffee shop.", sampled(24));
    let (a, _, oa) = run(&req, 42);
    let (b, _, ob) = run(&req, 42);
    let (c, _, _) = run(&req, 43);
    assert!(!a.is_empty());
    assert_eq!(a, b, "same seed, same input: same text");
    assert_eq!(oa.completion_tokens, ob.completion_tokens);
    assert_ne!(a, c, "another seed should give another text");
    assert_eq!(oa.text, a, "the streamed pieces make up the whole text");
    assert!(oa.prompt_tokens > 10 && oa.decode_tokens_per_s > 0.0);
}

#[test]
fn greedy_reply_ends_on_the_end_token() {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 200,
        ..Default::default()
    };
    let (text, _, o) = run(
        &request(
            "What is the capital of France? Answer in one short sentence.",
            params,
        ),
        1,
    );
    assert_eq!(o.stop_reason, StopReason::EndOfText, "got {o:?}");
    assert!(text.contains("Paris"), "{text}");
    assert!(!text.contains("<|im_end|>") && !text.contains("<|im_start|>"));
}

#[test]
fn stop_strings_and_max_tokens_end_the_run() {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 5,
        ..Default::default()
    };
    let (_, _, o) = run(
        &request("Count from 1 to 50, separated by commas.", params),
        1,
    );
    assert_eq!(o.stop_reason, StopReason::MaxTokens);
    assert_eq!(o.completion_tokens, 5);

    // Whatever the model writes greedily, a stop string taken from the middle of it cuts the
    // text right before it, and the stop string itself is never shown.
    let greedy = SamplingParams {
        temperature: 0.0,
        max_tokens: 40,
        ..Default::default()
    };
    let (full, _, _) = run(
        &request("Count from 1 to 50, separated by commas.", greedy.clone()),
        1,
    );
    let cut = full
        .char_indices()
        .map(|(i, _)| i)
        .nth(full.chars().count() / 2)
        .unwrap();
    let stop: String = full[cut..].chars().take(3).collect();
    let before = &full[..full.find(&stop).unwrap()];
    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy
    };
    let (text, pieces, o) = run(
        &request("Count from 1 to 50, separated by commas.", params),
        1,
    );
    assert_eq!(o.stop_reason, StopReason::StopString, "{full:?} / {stop:?}");
    assert_eq!(text, before);
    assert!(pieces.iter().all(|p| !p.contains(&stop)));
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let m = model();
    let long = "apple ".repeat(m.context_length + 100);
    let err = m
        .generate(&request(&long, sampled(8)), 1, &|| false, &mut |_| {})
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
    let msg = err.to_string();
    assert!(
        msg.contains(&m.context_length.to_string()) && msg.contains("tokens long"),
        "{msg}"
    );
}

#[test]
fn chinese_and_emoji_stream_without_broken_characters() {
    let tok = &model().tokenizer;
    let text = "新款保温杯，316不锈钢🎉 keeps tea hot 12小时！";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = TextStream::default();
    let mut out = String::new();
    for id in ids {
        let piece = stream.push(tok, id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "piece {piece:?} shows a broken character"
        );
        out.push_str(&piece);
    }
    out.push_str(&stream.finish(tok).unwrap());
    assert_eq!(out, text);
}

#[test]
fn repacked_file_is_cached_and_the_second_load_uses_it() {
    let cache = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        device: DevicePreference::Cpu,
        cache_dir: Some(cache.path().to_path_buf()),
        repack: true,
        native: false,
    };
    let first = LocalModel::load(ID, &model_file(), &opts, &|_, _| {}).unwrap();
    assert!(!first.report.from_cache);
    assert!(
        first
            .report
            .repacked
            .get("Q4_1→Q8_0")
            .is_some_and(|n| *n > 100),
        "{:?}",
        first.report.repacked
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
    let second = LocalModel::load(ID, &model_file(), &opts, &|_, _| {}).unwrap();
    assert!(second.report.from_cache);
    let greedy = SamplingParams {
        temperature: 0.0,
        max_tokens: 12,
        ..Default::default()
    };
    let req = request("Name a colour.", greedy);
    let a = first.generate(&req, 1, &|| false, &mut |_| {}).unwrap();
    let b = second.generate(&req, 1, &|| false, &mut |_| {}).unwrap();
    assert_eq!(a.text, b.text);
}

#[test]
fn resident_models_leave_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        std::fs::copy(model_file(), dir.path().join(format!("{name}.gguf"))).unwrap();
    }
    let engine = LocalEngine::default();
    let opts = LoadOptions {
        device: DevicePreference::Cpu,
        cache_dir: None,
        repack: true,
        native: true,
    };
    let budget = 150 * 1024 * 1024; // one 135M model (98 MB as shipped) fits, two do not
    let (_, loaded) = engine
        .get("a", &dir.path().join("a.gguf"), &opts, budget, &|_, _| {})
        .unwrap();
    assert!(loaded);
    let (_, loaded) = engine
        .get("a", &dir.path().join("a.gguf"), &opts, budget, &|_, _| {})
        .unwrap();
    assert!(!loaded, "the second request finds it resident");
    engine
        .get("b", &dir.path().join("b.gguf"), &opts, budget, &|_, _| {})
        .unwrap();
    assert_eq!(engine.resident(), vec!["b".to_string()]);
}

#[test]
fn damaged_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        device: DevicePreference::Cpu,
        cache_dir: None,
        repack: true,
        native: true,
    };
    let bytes = std::fs::read(model_file()).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = LocalModel::load("cut", &cut, &opts, &|_, _| {}).unwrap_err();
    assert_eq!(err.kind(), "invalid_input", "{err}");
    let missing =
        LocalModel::load("none", Path::new("/nonexistent/x.gguf"), &opts, &|_, _| {}).unwrap_err();
    assert!(missing.to_string().contains("x.gguf"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_job_streams_records_and_cancels_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_model(dir.path());
    assert_eq!(engine.default_text_model().unwrap().as_deref(), Some(ID));
    let project = engine.store().create_project("Tests").unwrap();

    // A whole run: tokens stream, the generation is recorded with its figures.
    let (tx, mut rx) = sink();
    let job = TextJob {
        project_id: project.id,
        request: request("Write one sentence about tea.", sampled(16)),
        purpose: None,
    };
    let job_id = engine.generate_text(job, Some(tx)).unwrap();
    let mut streamed = String::new();
    let result = loop {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            JobEvent::Token { text } => streamed.push_str(&text),
            JobEvent::Finished { result } => break result,
            JobEvent::Failed { kind, message } => panic!("{kind}: {message}"),
            _ => {}
        }
    };
    let gen_id = result["generation_id"].as_i64().unwrap();
    let rec = engine.store().generation(gen_id).unwrap();
    assert_eq!(rec.status, GenerationStatus::Succeeded);
    assert_eq!(rec.output_text.as_deref(), Some(streamed.as_str()));
    assert_eq!(rec.job_id, Some(job_id));
    assert!(rec.seed.is_some() && rec.first_token_ms.is_some() && rec.output_tokens.unwrap() > 0);
    assert_eq!(rec.metrics.as_ref().unwrap()["engine"], "local");

    // Cancel after the first few tokens: the job ends promptly and the partial text is kept.
    let (tx, mut rx) = sink();
    let job = TextJob {
        project_id: project.id,
        request: request("Write a long story about a dragon.", sampled(2000)),
        purpose: None,
    };
    let job_id = engine.generate_text(job, Some(tx)).unwrap();
    let mut tokens = 0;
    let mut partial = String::new();
    let mut cancelled_at = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            JobEvent::Token { text } => {
                partial.push_str(&text);
                tokens += 1;
                if tokens == 3 {
                    engine.jobs().cancel(job_id).unwrap();
                    cancelled_at = Some(std::time::Instant::now());
                }
            }
            JobEvent::Cancelled => break,
            JobEvent::Finished { .. } | JobEvent::Failed { .. } => {
                panic!("expected a cancellation")
            }
            _ => {}
        }
    }
    assert!(
        cancelled_at.unwrap().elapsed() < Duration::from_secs(2),
        "cancel took too long"
    );
    let history = engine.store().history(&Default::default()).unwrap();
    let rec = engine.store().generation(history.items[0].id).unwrap();
    assert_eq!(rec.status, GenerationStatus::Cancelled);
    let kept = rec.output_text.unwrap_or_default();
    assert!(
        !kept.is_empty() && partial.starts_with(&kept),
        "kept {kept:?}, streamed {partial:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_queueing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        Home::at(dir.path()),
        Access::Exclusive,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let project = engine.store().create_project("Tests").unwrap();
    let submit = |req: TextRequest| {
        engine
            .generate_text(
                TextJob {
                    project_id: project.id,
                    request: req,
                    purpose: None,
                },
                None,
            )
            .unwrap_err()
    };
    assert_eq!(submit(request("   ", sampled(8))).kind(), "invalid_input");
    assert!(
        submit(request(
            "hi",
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
        ))
        .to_string()
        .contains("temperature")
    );
    assert!(
        submit(request(&"x".repeat(300_000), sampled(8)))
            .to_string()
            .contains("300000")
    );
    assert!(
        submit(request("hi", sampled(8)))
            .to_string()
            .contains("no model")
    );
    assert!(engine.jobs().active_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_a_template_runs_one_recorded_job_per_variant() {
    use atelier_engine::writing::compose::CopyRequest;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_model(dir.path());
    let project = engine.store().create_project("文案").unwrap();
    let (templates, _) = engine.templates();
    let slogan = templates.iter().find(|t| t.id == "slogan").unwrap();
    // The project's brand voice goes into its prompts.
    let voice = atelier_engine::writing::templates::BrandVoice {
        must_mention: vec!["真空双层".into()],
        ..Default::default()
    };
    engine.set_brand_voice(project.id, &voice).unwrap();
    let req = CopyRequest {
        project_id: project.id,
        template_id: "slogan".into(),
        values: slogan.samples(),
        tone: Some("活泼有趣".into()),
        brand: None,
        model: ID.into(),
        params: SamplingParams {
            max_tokens: 12,
            seed: Some(41),
            ..Default::default()
        },
        variants: 2,
    };
    let sinks: Arc<Mutex<Vec<mpsc::UnboundedReceiver<JobEvent>>>> = Arc::default();
    let s2 = sinks.clone();
    let ids = engine
        .generate_copy(&req, move |_| {
            let (tx, rx) = sink();
            s2.lock().unwrap().push(rx);
            Some(tx)
        })
        .unwrap();
    assert_eq!(ids.len(), 2);
    let receivers = std::mem::take(&mut *sinks.lock().unwrap());
    let mut gens = Vec::new();
    for mut rx in receivers {
        let result = loop {
            match tokio::time::timeout(Duration::from_secs(120), rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                JobEvent::Finished { result } => break result,
                JobEvent::Failed { kind, message } => panic!("{kind}: {message}"),
                _ => {}
            }
        };
        gens.push(
            engine
                .store()
                .generation(result["generation_id"].as_i64().unwrap())
                .unwrap(),
        );
    }
    // Each variant is recorded with its template, form values and variant number; seeds follow on.
    let seeds: Vec<Option<i64>> = gens.iter().map(|g| g.seed).collect();
    assert_eq!(seeds, [Some(41), Some(42)]);
    for (i, g) in gens.iter().enumerate() {
        let purpose = &g.params["purpose"];
        assert_eq!(
            (purpose["template"].as_str(), purpose["variant"].as_u64()),
            (Some("slogan"), Some(i as u64 + 1))
        );
        assert_eq!(
            purpose["values"]["product"],
            slogan.samples()["product"].as_str()
        );
        assert!(
            g.prompt.contains("合规要求")
                && g.prompt.contains("活泼有趣")
                && g.prompt.contains("真空双层"),
            "{}",
            g.prompt
        );
    }

    // Bad requests are refused before anything is queued.
    let bad = CopyRequest {
        variants: 5,
        ..req.clone()
    };
    assert_eq!(
        engine.generate_copy(&bad, |_| None).unwrap_err().kind(),
        "invalid_input"
    );
    let bad = CopyRequest {
        template_id: "nope".into(),
        ..req.clone()
    };
    assert_eq!(
        engine.generate_copy(&bad, |_| None).unwrap_err().kind(),
        "invalid_input"
    );
    let mut values = req.values.clone();
    values.remove("product");
    let bad = CopyRequest { values, ..req };
    assert!(
        engine
            .generate_copy(&bad, |_| None)
            .unwrap_err()
            .to_string()
            .contains("商品名称")
    );
    assert_eq!(
        engine.store().list_jobs(20).unwrap().len(),
        2,
        "nothing queued for the bad requests"
    );
}

/// The native CPU engine and candle's model (file as shipped, candle's own Q4_1 kernel) agree:
/// after a prompt and after a few greedy steps, logits within quantisation noise and the native
/// engine's next token one candle ranks at (or within a near-tie of) its top.
#[test]
fn native_engine_matches_candle() {
    let load = |native| {
        let opts = LoadOptions {
            device: DevicePreference::Cpu,
            cache_dir: None,
            repack: false,
            native,
        };
        LocalModel::load(ID, &model_file(), &opts, &|_, _| {}).unwrap()
    };
    let (native, candle) = (load(true), load(false));
    assert_eq!(native.report.engine, "native");
    // The model's memory is what the engine holds: the file's tensors, rearranged but not
    // widened (SmolLM2 has no F16 or Q4_K tensors to grow).
    let header = atelier_engine::models::gguf::read_header(&model_file()).unwrap();
    let tensor_bytes: u64 = header.tensors.iter().map(|t| t.bytes).sum();
    let held = native.report.resident_bytes;
    assert!(
        held >= tensor_bytes && held <= tensor_bytes + tensor_bytes / 100,
        "resident {held} for {tensor_bytes} bytes of tensors"
    );
    assert_eq!(candle.report.engine, "candle");
    assert_eq!(candle.report.engine_note.as_deref(), Some("turned off"));
    // The model list says the same before loading: native, nothing repacked.
    let info = atelier_engine::models::registry::describe(&model_file()).unwrap();
    assert_eq!(info.cpu_engine, "native");
    assert!(
        info.repacked_on_cpu.is_empty(),
        "{:?}",
        info.repacked_on_cpu
    );
    let req = request(
        "Write one sentence about green tea.",
        SamplingParams::default(),
    );
    let mut ids = native.prompt_ids(&req).unwrap();
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap()
    };
    for step in 0..6 {
        let a = native.logits(&ids).unwrap();
        let b = candle.logits(&ids).unwrap();
        assert_eq!(a.len(), b.len());
        let spread = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst < 0.05 * spread,
            "step {step}: logits differ by {worst} (largest logit {spread})"
        );
        // The engines quantise activations their own way (and the native one keeps its KV
        // cache in f16), so a near-tie may split: the native pick must be a token candle ranks
        // within 2 % of the largest logit of its own best.
        let (pa, pb) = (argmax(&a) as usize, argmax(&b) as usize);
        assert!(
            b[pb] - b[pa] <= 0.02 * spread,
            "step {step}: native picks {pa} (candle's logit {}), candle {pb} ({})",
            b[pa],
            b[pb]
        );
        ids.push(argmax(&a));
    }
}
