//! ComfyUI as the image backend, against a loopback server started here that speaks ComfyUI's
//! HTTP API and WebSocket: `/prompt` (with ComfyUI's validation errors), `/ws` (status,
//! progress, preview frames, errors), `/history`, `/view`, `/upload/image`, `/queue`,
//! `/interrupt`, `/object_info`, `/system_stats`. The server paints each picture from the graph
//! it was sent (the seed's colour, or the uploaded source inverted), so the test can tell that
//! the right request went out and the right pixels came back.

mod common;

use common::{gallery_len, image_statuses};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier_engine::image::service::ImageJob;
use atelier_engine::image::{ImageParams, InitImage, Scheduler, Variation, metadata};
use atelier_engine::store::SettingsPatch;
use atelier_engine::{Access, Engine, Home, JobEvent};
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Default)]
struct Fake {
    /// Serve `/ws` (else 404, like a proxy that drops upgrades).
    websocket: bool,
    sockets: HashMap<String, mpsc::UnboundedSender<Message>>,
    /// Graphs queued, in order.
    prompts: Vec<Value>,
    uploads: HashMap<String, Vec<u8>>,
    images: HashMap<String, Vec<u8>>,
    history: HashMap<String, Value>,
    running: Option<String>,
    interrupted: Vec<String>,
    deleted: Vec<String>,
    /// Like a proxy in front: every request (the WebSocket too) needs `Bearer <token>`.
    token: Option<String>,
    refused: usize,
}

type Shared = Arc<Mutex<Fake>>;

const CHECKPOINTS: [&str; 2] = ["sd15.safetensors", "sub/inpaint.safetensors"];

async fn serve(websocket: bool) -> (String, Shared) {
    serve_with(websocket, None).await
}

async fn serve_with(websocket: bool, token: Option<&str>) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Fake {
        websocket,
        token: token.map(str::to_owned),
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route("/system_stats", get(system_stats))
        .route("/object_info/{node}", get(object_info))
        .route("/upload/image", post(upload))
        .route("/prompt", post(prompt))
        .route("/history/{id}", get(history))
        .route("/view", get(view))
        .route("/queue", get(queue).post(queue_delete))
        .route("/interrupt", post(interrupt))
        .route("/ws", get(ws))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

async fn authorize(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let wanted = s.lock().unwrap().token.clone();
    if let Some(token) = wanted {
        let sent = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            s.lock().unwrap().refused += 1;
            return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        }
    }
    next.run(req).await
}

async fn system_stats() -> Json<Value> {
    Json(
        json!({"system": {"comfyui_version": "0.3.99", "os": "posix"},
        "devices": [{"name": "cuda:0 Loopback GPU : cudaMallocAsync", "type": "cuda"}]}),
    )
}

async fn object_info(Path(node): Path<String>) -> Response {
    if node != "CheckpointLoaderSimple" {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({"CheckpointLoaderSimple": {"input": {"required": {
        "ckpt_name": ["COMBO", {"options": CHECKPOINTS}]}}}}))
    .into_response()
}

async fn upload(State(s): State<Shared>, mut form: Multipart) -> Json<Value> {
    let mut name = String::new();
    while let Some(field) = form.next_field().await.unwrap() {
        if field.name() == Some("image") {
            name = field.file_name().unwrap().to_owned();
            let bytes = field.bytes().await.unwrap().to_vec();
            s.lock().unwrap().uploads.insert(name.clone(), bytes);
        }
    }
    Json(json!({"name": name, "subfolder": "", "type": "input"}))
}

fn broadcast(s: &Shared, msg: Message) {
    for tx in s.lock().unwrap().sockets.values() {
        let _ = tx.send(msg.clone());
    }
}

fn event(s: &Shared, kind: &str, data: Value) {
    broadcast(
        s,
        Message::Text(json!({"type": kind, "data": data}).to_string().into()),
    );
}

fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// What the fake paints for a txt2img seed.
fn seed_colour(seed: u64) -> [u8; 3] {
    [(seed % 256) as u8, 40, 200]
}

/// ComfyUI checks the graph before queueing it: every link must name a node, the checkpoint
/// must exist, an image to load must have been uploaded.
fn validate(s: &Fake, g: &Value) -> Result<(), Value> {
    let nodes = g
        .as_object()
        .ok_or_else(|| json!({"error": {"message": "no graph"}}))?;
    for (id, node) in nodes {
        for (k, v) in node["inputs"].as_object().unwrap() {
            if let Some(link) = v.as_array().filter(|a| a.len() == 2 && a[1].is_u64())
                && !nodes.contains_key(link[0].as_str().unwrap())
            {
                return Err(
                    json!({"error": {"message": format!("{id}.{k} links to a missing node")}}),
                );
            }
        }
        let bad = |detail: String| {
            json!({"error": {"type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation", "details": ""},
                "node_errors": {id: {"class_type": node["class_type"], "errors": [
                    {"type": "value_not_in_list", "message": "Value not in list", "details": detail}]}}})
        };
        match node["class_type"].as_str().unwrap() {
            "CheckpointLoaderSimple" => {
                let c = node["inputs"]["ckpt_name"].as_str().unwrap();
                if !CHECKPOINTS.contains(&c) {
                    return Err(bad(format!("ckpt_name: '{c}' not in {CHECKPOINTS:?}")));
                }
            }
            "LoadImage" => {
                let i = node["inputs"]["image"].as_str().unwrap();
                if !s.uploads.contains_key(i) {
                    return Err(bad(format!("image: '{i}' not in []")));
                }
            }
            "CLIPTextEncode"
            | "EmptyLatentImage"
            | "KSampler"
            | "VAEDecode"
            | "VAEEncode"
            | "PreviewImage"
            | "InpaintModelConditioning" => {}
            other => return Err(json!({"error": {"message": format!("unknown node {other}")}})),
        }
    }
    Ok(())
}

async fn prompt(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let g = body["prompt"].clone();
    let id = {
        let mut fake = s.lock().unwrap();
        if let Err(e) = validate(&fake, &g) {
            return (StatusCode::BAD_REQUEST, Json(e)).into_response();
        }
        fake.prompts.push(g.clone());
        format!("prompt-{}", fake.prompts.len())
    };
    tokio::spawn(execute(s.clone(), id.clone(), g));
    Json(json!({"prompt_id": id, "number": 0, "node_errors": {}})).into_response()
}

/// Runs a queued graph: steps with progress, one preview frame, then the picture; the prompt
/// text can ask for a slow run (to cancel) or a crash in the sampler.
async fn execute(s: Shared, id: String, g: Value) {
    let nodes = g.as_object().unwrap();
    let find = |class: &str| nodes.values().find(|n| n["class_type"] == class).cloned();
    let sampler = find("KSampler").unwrap();
    let text = find("CLIPTextEncode").unwrap()["inputs"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let steps = sampler["inputs"]["steps"].as_u64().unwrap();
    let seed = sampler["inputs"]["seed"].as_u64().unwrap();
    let pause = if text.contains("slow") { 150 } else { 5 };
    event(
        &s,
        "status",
        json!({"status": {"exec_info": {"queue_remaining": 1}}}),
    );
    s.lock().unwrap().running = Some(id.clone());
    event(&s, "execution_start", json!({"prompt_id": id}));
    event(&s, "executing", json!({"node": "5", "prompt_id": id}));
    for step in 1..=steps {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if s.lock().unwrap().interrupted.contains(&id) {
            event(
                &s,
                "execution_interrupted",
                json!({"prompt_id": id, "node_type": "KSampler"}),
            );
            s.lock().unwrap().running = None;
            return;
        }
        if text.contains("explode") && step == 2 {
            let data = json!({"prompt_id": id, "node_id": "5", "node_type": "KSampler",
                "exception_type": "torch.OutOfMemoryError",
                "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB"});
            s.lock().unwrap().history.insert(id.clone(), json!({"prompt": [], "outputs": {},
                "status": {"status_str": "error", "completed": false,
                    "messages": [["execution_start", {"prompt_id": id}], ["execution_error", data]]}}));
            event(&s, "execution_error", data);
            s.lock().unwrap().running = None;
            return;
        }
        event(
            &s,
            "progress",
            json!({"value": step, "max": steps, "prompt_id": id, "node": "5"}),
        );
        if step == 1 {
            let mut frame = vec![0, 0, 0, 1, 0, 0, 0, 2];
            frame.extend(png(image::DynamicImage::ImageRgb8(
                image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9])),
            )));
            broadcast(&s, Message::Binary(frame.into()));
        }
    }
    let picture = match find("LoadImage") {
        Some(load) => {
            let name = load["inputs"]["image"].as_str().unwrap();
            let src = image::load_from_memory(&s.lock().unwrap().uploads[name]).unwrap();
            let mut rgb = src.to_rgb8();
            image::imageops::invert(&mut rgb);
            rgb
        }
        None => {
            let latent = find("EmptyLatentImage").unwrap();
            let (w, h) = (
                latent["inputs"]["width"].as_u64().unwrap() as u32,
                latent["inputs"]["height"].as_u64().unwrap() as u32,
            );
            image::RgbImage::from_pixel(w, h, image::Rgb(seed_colour(seed)))
        }
    };
    let filename = format!("ComfyUI_temp_{id}_00001_.png");
    let bytes = if text.contains("garbled") {
        b"<html>not a picture</html>".to_vec()
    } else {
        png(image::DynamicImage::ImageRgb8(picture))
    };
    {
        let mut fake = s.lock().unwrap();
        fake.images.insert(filename.clone(), bytes);
        fake.history.insert(
            id.clone(),
            json!({"prompt": [], "outputs": {"7": {"images": [
            {"filename": filename, "subfolder": "", "type": "temp"}]}},
            "status": {"status_str": "success", "completed": true, "messages": []}}),
        );
        fake.running = None;
    }
    event(&s, "executing", json!({"node": null, "prompt_id": id}));
    event(&s, "execution_success", json!({"prompt_id": id}));
}

async fn history(State(s): State<Shared>, Path(id): Path<String>) -> Json<Value> {
    let fake = s.lock().unwrap();
    Json(match fake.history.get(&id) {
        Some(h) => json!({id: h}),
        None => json!({}),
    })
}

async fn view(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q.get("type").map(String::as_str), Some("temp"));
    match s.lock().unwrap().images.get(&q["filename"]) {
        Some(b) => ([("content-type", "image/png")], b.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn queue(State(s): State<Shared>) -> Json<Value> {
    let running: Vec<Value> = s
        .lock()
        .unwrap()
        .running
        .iter()
        .map(|id| json!([0, id, {}, {}, ["7"]]))
        .collect();
    Json(json!({"queue_running": running, "queue_pending": []}))
}

async fn queue_delete(State(s): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    for id in body["delete"].as_array().into_iter().flatten() {
        s.lock()
            .unwrap()
            .deleted
            .push(id.as_str().unwrap().to_owned());
    }
    StatusCode::OK
}

async fn interrupt(State(s): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    let id = body["prompt_id"].as_str().expect("a targeted interrupt");
    s.lock().unwrap().interrupted.push(id.to_owned());
    StatusCode::OK
}

async fn ws(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    up: WebSocketUpgrade,
) -> Response {
    if !s.lock().unwrap().websocket {
        return StatusCode::NOT_FOUND.into_response();
    }
    let client = q["clientId"].clone();
    up.on_upgrade(move |socket: WebSocket| async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _ = tx.send(Message::Text(
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client}})
                .to_string()
                .into(),
        ));
        s.lock().unwrap().sockets.insert(client, tx);
        let mut socket = socket;
        while let Some(m) = rx.recv().await {
            if socket.send(m).await.is_err() {
                break;
            }
        }
    })
}

fn params(seed: u64) -> ImageParams {
    ImageParams {
        model: "comfyui:sd15.safetensors".into(),
        prompt: "a lighthouse at dusk, (oil painting:1.2)".into(),
        negative_prompt: "blurry".into(),
        width: 96,
        height: 64,
        steps: 6,
        cfg_scale: 6.5,
        scheduler: Scheduler::DpmPp2mKarras,
        seed: Some(seed),
        batch_count: 1,
        init_image: None,
        variation: None,
        translated_prompt: None,
    }
}

fn engine(dir: &std::path::Path, url: &str) -> Engine {
    let engine = Engine::open(
        Home::at(dir),
        Access::Exclusive,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_url: Some(url.into()),
            remote_timeout_s: Some(5),
            ..Default::default()
        })
        .unwrap();
    engine
}

struct Ran {
    result: Result<Vec<i64>, (String, String)>,
    previews: usize,
    last_progress: Option<(u64, u64)>,
    /// The queue sizes the server reported before the runs started.
    waiting: Vec<u64>,
}

/// Runs a job to its end; `cancel_after_progress`: cancel it once that many steps were seen.
async fn run(engine: &Engine, project_id: i64, p: ImageParams, cancel_after: Option<u64>) -> Ran {
    let (sink, mut rx) = common::sink();
    let job = match engine.generate_image(
        ImageJob {
            project_id,
            params: p,
        },
        Some(sink),
    ) {
        Ok(j) => j,
        Err(e) => {
            return Ran {
                result: Err((e.kind().to_owned(), e.to_string())),
                previews: 0,
                last_progress: None,
                waiting: Vec::new(),
            };
        }
    };
    let (mut previews, mut last_progress, mut waiting) = (0, None, Vec::new());
    let result = loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the job went quiet")
            .expect("the job ended without a terminal event")
        {
            JobEvent::Progress { done, total } => {
                last_progress = Some((done, total));
                if cancel_after.is_some_and(|n| done >= n) {
                    engine.jobs().cancel(job).unwrap();
                }
            }
            JobEvent::Preview { data_url, .. } => {
                assert!(data_url.starts_with("data:image/png;base64,"));
                previews += 1;
            }
            JobEvent::Waiting { queued } => waiting.push(queued),
            JobEvent::Finished { result } => {
                break Ok(result["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["generation_id"].as_i64().unwrap())
                    .collect());
            }
            JobEvent::Failed { kind, message } => break Err((kind, message)),
            JobEvent::Cancelled => break Err(("cancelled".into(), String::new())),
            _ => {}
        }
    };
    Ran {
        result,
        previews,
        last_progress,
        waiting,
    }
}

fn rgb(engine: &Engine, generation_id: i64) -> (Vec<u8>, image::RgbImage) {
    let img = engine.store().gallery_image(generation_id).unwrap();
    let png = engine.asset_bytes(img.asset_id).unwrap();
    let rgb = image::load_from_memory(&png).unwrap().to_rgb8();
    (png, rgb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_runs_land_in_the_gallery_with_atelier_metadata() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let server = engine.comfyui_server().await.unwrap();
    assert_eq!(server.checkpoints, CHECKPOINTS);
    assert_eq!(server.version.as_deref(), Some("0.3.99"));
    assert_eq!(server.devices.len(), 1);

    let project = engine.store().create_project("remote").unwrap();
    let mut p = params(40);
    p.batch_count = 2;
    let ran = run(&engine, project.id, p.clone(), None).await;
    let ids = ran.result.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ran.last_progress, Some((12, 12)), "steps of both images");
    assert!(ran.previews >= 2, "{} previews", ran.previews);
    assert!(
        ran.waiting.contains(&1),
        "the server's queue size did not reach the job: {:?}",
        ran.waiting
    );

    // What went to the server: Atelier's settings in ComfyUI's names, one prompt per image.
    let prompts = fake.lock().unwrap().prompts.clone();
    assert_eq!(prompts.len(), 2);
    let k = &prompts[0]["5"]["inputs"];
    assert_eq!(k["sampler_name"], "dpmpp_2m");
    assert_eq!(k["scheduler"], "karras");
    assert_eq!(
        (k["steps"].as_u64(), k["cfg"].as_f64()),
        (Some(6), Some(6.5))
    );
    assert_eq!(
        (
            k["seed"].as_u64(),
            prompts[1]["5"]["inputs"]["seed"].as_u64()
        ),
        (Some(40), Some(41))
    );
    assert_eq!(prompts[0]["1"]["inputs"]["ckpt_name"], "sd15.safetensors");
    assert_eq!(prompts[0]["2"]["inputs"]["text"], p.prompt);
    assert_eq!(prompts[0]["3"]["inputs"]["text"], "blurry");
    assert_eq!(prompts[0]["4"]["inputs"]["width"], 96);

    // What came back: the server's pixels, in a PNG with Atelier's record, A1111's text and
    // the AI label, like a local image.
    for (id, seed) in ids.iter().zip([40u64, 41]) {
        let (png, img) = rgb(&engine, *id);
        assert_eq!(img.dimensions(), (96, 64));
        assert!(img.pixels().all(|px| px.0 == seed_colour(seed)));
        let recalled = metadata::recall(&png).unwrap();
        let record = recalled.record.unwrap();
        assert_eq!(record.params.model, "comfyui:sd15.safetensors");
        assert_eq!(record.params.seed, Some(seed));
        assert_eq!(record.rng, "ComfyUI");
        let a1111 = metadata::a1111_parameters(&record);
        assert!(a1111.contains(&format!("Seed: {seed}")), "{a1111}");
        assert!(!a1111.contains("Model hash"), "{a1111}");
        let text = String::from_utf8_lossy(&png);
        assert!(
            text.contains("TC260:AIGC") || text.contains("AIGC"),
            "no AI label in the PNG"
        );
        let row = engine.store().generation(*id).unwrap();
        assert_eq!(row.model_id, "comfyui:sd15.safetensors");
    }

    // Same seed again: the same request, so the same picture (the server's determinism).
    let again = run(&engine, project.id, params(40), None)
        .await
        .result
        .unwrap();
    assert_eq!(rgb(&engine, again[0]).1, rgb(&engine, ids[0]).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_inpainting_sends_the_mask_as_alpha_and_keeps_the_rest_exactly() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let source = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8, y as u8, 77]));
    let src_asset = engine
        .add_image_asset(
            project.id,
            &png(image::DynamicImage::ImageRgb8(source.clone())),
        )
        .unwrap();
    let mask =
        image::GrayImage::from_fn(96, 64, |x, _| image::Luma([if x < 48 { 255 } else { 0 }]));
    let mask_asset = engine
        .add_image_asset(
            project.id,
            &png(image::DynamicImage::ImageLuma8(mask.clone())),
        )
        .unwrap();

    // img2img without a mask: the source is encoded, denoised by the strength.
    let mut p = params(3);
    p.init_image = Some(InitImage {
        asset_id: src_asset.id,
        strength: 0.55,
        mask_asset_id: None,
    });
    let plain = run(&engine, project.id, p.clone(), None)
        .await
        .result
        .unwrap();
    let g = fake.lock().unwrap().prompts.last().unwrap().clone();
    assert_eq!(g["5"]["inputs"]["denoise"], 0.55);
    assert_eq!(g["9"]["class_type"], "VAEEncode");
    let mut inverted = source.clone();
    image::imageops::invert(&mut inverted);
    assert_eq!(rgb(&engine, plain[0]).1, inverted);

    // With a mask: uploaded as the source's alpha (transparent = repaint), and outside the
    // mask the result keeps the source's pixels exactly.
    p.init_image.as_mut().unwrap().mask_asset_id = Some(mask_asset.id);
    let out = run(&engine, project.id, p, None).await.result.unwrap();
    let g = fake.lock().unwrap().prompts.last().unwrap().clone();
    assert_eq!(g["10"]["class_type"], "InpaintModelConditioning");
    let name = g["8"]["inputs"]["image"].as_str().unwrap().to_owned();
    let uploaded = image::load_from_memory(&fake.lock().unwrap().uploads[&name])
        .unwrap()
        .to_rgba8();
    for (u, (s, m)) in uploaded.pixels().zip(source.pixels().zip(mask.pixels())) {
        assert_eq!(u.0, [s.0[0], s.0[1], s.0[2], 255 - m.0[0]]);
    }
    let (_, result) = rgb(&engine, out[0]);
    for (x, y, px) in result.enumerate_pixels() {
        let expect = if x < 48 {
            inverted.get_pixel(x, y)
        } else {
            source.get_pixel(x, y)
        };
        assert_eq!(px, expect, "pixel {x},{y}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_failures_are_clear_and_leave_no_image() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let fails = |r: Ran| r.result.unwrap_err();

    let mut p = params(1);
    p.model = "comfyui:missing.safetensors".into();
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "remote_rejected");
    assert!(
        msg.contains("CheckpointLoaderSimple") && msg.contains("missing.safetensors"),
        "{msg}"
    );

    let mut p = params(1);
    p.prompt = "explode".into();
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "remote_server");
    assert!(
        msg.contains("KSampler") && msg.contains("CUDA out of memory"),
        "{msg}"
    );

    let mut p = params(1);
    p.prompt = "garbled".into();
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "remote_protocol");
    assert!(msg.contains("cannot be read"), "{msg}");

    // Refused before queueing.
    let mut p = params(1);
    p.variation = Some(Variation {
        seed: 2,
        strength: 0.1,
    });
    let (kind, msg) = fails(run(&engine, project.id, p, None).await);
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("variation"), "{msg}");
    assert_eq!(
        fake.lock().unwrap().prompts.len(),
        2,
        "the refused ones were not queued"
    );

    assert_eq!(gallery_len(&engine, project.id), 0);
    assert_eq!(image_statuses(&engine), ["failed"; 3]);

    // A server that is down, and none set up at all.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_url: Some(down),
            ..Default::default()
        })
        .unwrap();
    let (kind, msg) = fails(run(&engine, project.id, params(1), None).await);
    assert_eq!(kind, "remote_unreachable");
    assert!(msg.contains("cannot reach ComfyUI"), "{msg}");
    assert!(engine.comfyui_server().await.is_err());
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_url: Some(String::new()),
            ..Default::default()
        })
        .unwrap();
    let (kind, msg) = fails(run(&engine, project.id, params(1), None).await);
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("no ComfyUI server is set up"), "{msg}");
    assert!(
        engine
            .store()
            .update_settings(&SettingsPatch {
                comfyui_url: Some("ftp://example".into()),
                ..Default::default()
            })
            .is_err()
    );
    assert_eq!(gallery_len(&engine, project.id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_cancel_interrupts_only_our_prompt() {
    let (url, fake) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let mut p = params(8);
    p.prompt = "slow".into();
    p.steps = 40;
    let ran = run(&engine, project.id, p, Some(2)).await;
    assert_eq!(ran.result.unwrap_err().0, "cancelled");
    let (done, _) = ran.last_progress.unwrap();
    assert!(done < 10, "cancel took until step {done}");
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.interrupted, ["prompt-1"]);
        assert_eq!(f.deleted, ["prompt-1"]);
    }
    assert_eq!(gallery_len(&engine, project.id), 0);
    assert_eq!(image_statuses(&engine)[0], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_websocket_the_run_is_followed_by_polling() {
    let (url, fake) = serve(false).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("remote").unwrap();
    let ran = run(&engine, project.id, params(77), None).await;
    let ids = ran.result.unwrap();
    assert_eq!(ran.previews, 0);
    assert!(fake.lock().unwrap().sockets.is_empty());
    let (_, img) = rgb(&engine, ids[0]);
    assert!(img.pixels().all(|px| px.0 == seed_colour(77)));
}

/// A server behind an authenticating proxy: without the key, a clear refusal that says where
/// to enter it and nothing queued; with it, every request carries it (the WebSocket too: the
/// run's steps and previews arrive) and the settings never give it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_a_key_gets_it_on_every_request() {
    let (url, fake) = serve_with(true, Some("s3cret-token")).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), &url);
    let project = engine.store().create_project("keyed").unwrap();
    let ran = run(&engine, project.id, params(5), None).await;
    let (kind, msg) = ran.result.unwrap_err();
    assert_eq!(kind, "remote_auth", "{msg}");
    assert!(msg.contains("Settings"), "{msg}");
    assert!(fake.lock().unwrap().prompts.is_empty());
    assert_eq!(gallery_len(&engine, project.id), 0);

    let settings = engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_api_key: Some(" s3cret-token ".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(settings.comfyui_api_key_set);
    assert!(!serde_json::to_string(&settings).unwrap().contains("s3cret"));
    let refused = fake.lock().unwrap().refused;
    let ran = run(&engine, project.id, params(6), None).await;
    let ids = ran.result.unwrap();
    assert!(
        ran.previews > 0,
        "no previews: the WebSocket went without the key"
    );
    assert_eq!(
        fake.lock().unwrap().refused,
        refused,
        "a request went without the key"
    );
    let (_, img) = rgb(&engine, ids[0]);
    assert!(img.pixels().all(|px| px.0 == seed_colour(6)));
    // The server check sends it too.
    engine.comfyui_server().await.unwrap();

    // Removing it: refused again.
    engine
        .store()
        .update_settings(&SettingsPatch {
            comfyui_api_key: Some(String::new()),
            ..Default::default()
        })
        .unwrap();
    assert!(!engine.store().settings().unwrap().comfyui_api_key_set);
    let e = engine.comfyui_server().await.unwrap_err();
    assert_eq!(e.kind(), "remote_auth");
}
