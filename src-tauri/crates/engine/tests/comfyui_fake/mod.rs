//! A loopback server that speaks ComfyUI's HTTP API and WebSocket: `/prompt` (with ComfyUI's
//! validation errors), `/ws` (status, progress, preview frames, errors), `/history`, `/view`,
//! `/upload/image`, `/queue`, `/interrupt`, `/object_info`, `/system_stats`, over plain HTTP or
//! TLS. It paints each picture from the graph it was sent (the seed's colour, or the uploaded
//! source inverted), so a test can tell that the right request went out and the right pixels
//! came back. Also: an engine pointed at it, and a run of one job to its end.
#![allow(dead_code)] // each test crate uses part of it

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier_engine::image::service::ImageJob;
use atelier_engine::image::{ImageParams, Scheduler};
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

use crate::common;

#[derive(Default)]
pub struct Fake {
    /// Serve `/ws` (else 404, like a proxy that drops upgrades).
    pub websocket: bool,
    pub sockets: HashMap<String, mpsc::UnboundedSender<Message>>,
    /// Graphs queued, in order.
    pub prompts: Vec<Value>,
    pub uploads: HashMap<String, Vec<u8>>,
    pub images: HashMap<String, Vec<u8>>,
    pub history: HashMap<String, Value>,
    pub running: Option<String>,
    pub interrupted: Vec<String>,
    pub deleted: Vec<String>,
    /// Like a proxy in front: every request (the WebSocket too) needs `Bearer <token>`.
    pub token: Option<String>,
    pub refused: usize,
}

pub type Shared = Arc<Mutex<Fake>>;

pub const CHECKPOINTS: [&str; 2] = ["sd15.safetensors", "sub/inpaint.safetensors"];

pub async fn serve(websocket: bool) -> (String, Shared) {
    serve_with(websocket, None).await
}

pub async fn serve_with(websocket: bool, token: Option<&str>) -> (String, Shared) {
    start(websocket, token, None).await
}

/// The same server over TLS (`https://127.0.0.1:…`, the WebSocket over `wss://`).
pub async fn serve_tls(websocket: bool, tls: tokio_rustls::TlsAcceptor) -> (String, Shared) {
    start(websocket, None, Some(tls)).await
}

async fn start(
    websocket: bool,
    token: Option<&str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Shared) {
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
    match tls {
        None => {
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("http://{addr}"), state)
        }
        Some(acceptor) => {
            let listener = TlsListener {
                tcp: listener,
                acceptor,
            };
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("https://{addr}"), state)
        }
    }
}

/// Connections that completed a TLS handshake; a client that refuses the certificate is
/// dropped and the next one served.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A certificate authority made for a test, and server certificates it signs.
pub struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Authority {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// The authority's certificate, as a file of trusted authorities holds it.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A TLS acceptor whose certificate (for 127.0.0.1 and localhost) this authority signed.
    pub fn server(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), self.issuer.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

pub async fn authorize(
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

pub async fn system_stats() -> Json<Value> {
    Json(
        json!({"system": {"comfyui_version": "0.3.99", "os": "posix"},
        "devices": [{"name": "cuda:0 Loopback GPU : cudaMallocAsync", "type": "cuda"}]}),
    )
}

pub async fn object_info(Path(node): Path<String>) -> Response {
    if node != "CheckpointLoaderSimple" {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({"CheckpointLoaderSimple": {"input": {"required": {
        "ckpt_name": ["COMBO", {"options": CHECKPOINTS}]}}}}))
    .into_response()
}

pub async fn upload(State(s): State<Shared>, mut form: Multipart) -> Json<Value> {
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

pub fn broadcast(s: &Shared, msg: Message) {
    for tx in s.lock().unwrap().sockets.values() {
        let _ = tx.send(msg.clone());
    }
}

pub fn event(s: &Shared, kind: &str, data: Value) {
    broadcast(
        s,
        Message::Text(json!({"type": kind, "data": data}).to_string().into()),
    );
}

pub fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// What the fake paints for a txt2img seed.
pub fn seed_colour(seed: u64) -> [u8; 3] {
    [(seed % 256) as u8, 40, 200]
}

/// ComfyUI checks the graph before queueing it: every link must name a node, the checkpoint
/// must exist, an image to load must have been uploaded.
pub fn validate(s: &Fake, g: &Value) -> Result<(), Value> {
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

pub async fn prompt(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
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
pub async fn execute(s: Shared, id: String, g: Value) {
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

pub async fn history(State(s): State<Shared>, Path(id): Path<String>) -> Json<Value> {
    let fake = s.lock().unwrap();
    Json(match fake.history.get(&id) {
        Some(h) => json!({id: h}),
        None => json!({}),
    })
}

pub async fn view(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q.get("type").map(String::as_str), Some("temp"));
    match s.lock().unwrap().images.get(&q["filename"]) {
        Some(b) => ([("content-type", "image/png")], b.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn queue(State(s): State<Shared>) -> Json<Value> {
    let running: Vec<Value> = s
        .lock()
        .unwrap()
        .running
        .iter()
        .map(|id| json!([0, id, {}, {}, ["7"]]))
        .collect();
    Json(json!({"queue_running": running, "queue_pending": []}))
}

pub async fn queue_delete(State(s): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    for id in body["delete"].as_array().into_iter().flatten() {
        s.lock()
            .unwrap()
            .deleted
            .push(id.as_str().unwrap().to_owned());
    }
    StatusCode::OK
}

pub async fn interrupt(State(s): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    let id = body["prompt_id"].as_str().expect("a targeted interrupt");
    s.lock().unwrap().interrupted.push(id.to_owned());
    StatusCode::OK
}

pub async fn ws(
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

pub fn params(seed: u64) -> ImageParams {
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

pub fn engine(dir: &std::path::Path, url: &str) -> Engine {
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

pub struct Ran {
    pub result: Result<Vec<i64>, (String, String)>,
    pub previews: usize,
    pub last_progress: Option<(u64, u64)>,
    /// The queue sizes the server reported before the runs started.
    pub waiting: Vec<u64>,
}

/// Runs a job to its end; `cancel_after_progress`: cancel it once that many steps were seen.
pub async fn run(
    engine: &Engine,
    project_id: i64,
    p: ImageParams,
    cancel_after: Option<u64>,
) -> Ran {
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
                break Ok(common::generation_ids(&result));
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

pub fn rgb(engine: &Engine, generation_id: i64) -> (Vec<u8>, image::RgbImage) {
    let img = engine.store().gallery_image(generation_id).unwrap();
    let png = engine.asset_bytes(img.asset_id).unwrap();
    let rgb = image::load_from_memory(&png).unwrap().to_rgb8();
    (png, rgb)
}
