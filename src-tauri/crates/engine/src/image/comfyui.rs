//! A ComfyUI server as a remote image backend, for teams whose GPUs sit on servers.
//!
//! The request becomes a ComfyUI API graph (checkpoint, two prompts, empty or encoded latent,
//! KSampler, decode, preview output) queued with `POST /prompt`. The WebSocket (`/ws`) reports
//! the queue, each sampler step and preview frames; `GET /history/{id}` says how the run ended
//! and names the output, fetched with `GET /view`. The picture is then labelled, written and
//! recorded by Atelier exactly like a local one, so the gallery and the metadata are the same.
//!
//! An `https://` server is followed over `wss://`, trusting the same certificates as the
//! HTTP client (the system's store, or the PEM file `SSL_CERT_FILE` names instead). Without a
//! WebSocket (a proxy that drops upgrades, a handshake that fails) the run is followed by
//! polling the history: it still finishes, only without step progress and previews.
//! A queued run is never retried automatically: it may already be running on the server.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::params::{ImageParams, Scheduler};
use crate::error::{Error, RemoteFailure, Result};

/// Image model ids that name a checkpoint on the configured server: `comfyui:<ckpt_name>`.
pub const MODEL_PREFIX: &str = "comfyui:";

/// The checkpoint a model id names on the server, if it is a ComfyUI id.
pub fn checkpoint_of(model_id: &str) -> Option<&str> {
    model_id.strip_prefix(MODEL_PREFIX)
}

pub fn is_comfyui(model_id: &str) -> bool {
    checkpoint_of(model_id).is_some()
}

/// Where the server is.
#[derive(Clone, PartialEq)]
pub struct ComfyConfig {
    /// e.g. `http://192.168.1.20:8188`
    pub base_url: String,
    /// Seconds to wait for a connection and for each reply (not for the queue: a run may wait
    /// behind others for as long as it takes).
    pub timeout_s: u32,
    /// Sent as `Authorization: Bearer …` on every request and the WebSocket, for servers
    /// behind an authenticating proxy.
    pub api_key: Option<String>,
}

/// Debug output without the key.
impl std::fmt::Debug for ComfyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComfyConfig")
            .field("base_url", &self.base_url)
            .field("timeout_s", &self.timeout_s)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ComfyConfig {
    pub fn validate(&self) -> Result<()> {
        crate::http::check_url(&self.base_url, "ComfyUI address").map(drop)
    }

    fn base(&self) -> &str {
        self.base_url.trim().trim_end_matches('/')
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// The WebSocket address: `ws://` for an `http://` server, `wss://` for `https://`.
    fn ws_url(&self, client_id: &str) -> Option<String> {
        let base = self.base();
        let (scheme, rest) = if let Some(rest) = base.strip_prefix("http://") {
            ("ws", rest)
        } else {
            ("wss", base.strip_prefix("https://")?)
        };
        Some(format!("{scheme}://{rest}/ws?clientId={client_id}"))
    }
}

/// The WebSocket upgrade request, with the key if any.
fn ws_request(
    cfg: &ComfyConfig,
    client_id: &str,
) -> Result<Option<tokio_tungstenite::tungstenite::handshake::client::Request>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let Some(url) = cfg.ws_url(client_id) else {
        return Ok(None);
    };
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::invalid(format!("ComfyUI address: {e}")))?;
    if let Some(key) = &cfg.api_key {
        let value = crate::http::bearer(key)?;
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
            value,
        );
    }
    Ok(Some(request))
}

/// What the server offers, for the model picker and the Settings check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerInfo {
    pub base_url: String,
    /// ComfyUI's version, when `/system_stats` says it.
    pub version: Option<String>,
    /// The server's devices (e.g. `cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync`).
    pub devices: Vec<String>,
    /// Checkpoint file names `CheckpointLoaderSimple` accepts.
    pub checkpoints: Vec<String>,
}

/// How far a run is.
#[derive(Debug)]
pub enum Progress {
    /// Waiting in the server's queue; `remaining` counts every queued and running prompt.
    Queued { remaining: u64 },
    /// A sampler step finished.
    Step { step: u32, steps: u32 },
    /// The server's preview of the picture so far.
    Preview(image::RgbImage),
}

/// The img2img source, already fitted to the output size, and its mask (white: repaint).
pub struct Source<'a> {
    pub rgb: &'a image::RgbImage,
    pub mask: Option<&'a image::GrayImage>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the run's WebSocket, or says why not and returns `None` (the run is then polled).
async fn connect_ws(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Option<Socket> {
    let connector = match crate::http::tls_config() {
        Ok(config) => tokio_tungstenite::Connector::Rustls(config),
        Err(e) => {
            tracing::warn!(error = %e, "no TLS for the ComfyUI WebSocket; following the run by polling");
            return None;
        }
    };
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((stream, _))) => Some(stream),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no ComfyUI WebSocket; following the run by polling");
            None
        }
        Err(_) => {
            tracing::warn!(
                "the ComfyUI WebSocket did not open in 10 s; following the run by polling"
            );
            None
        }
    }
}

fn client(cfg: &ComfyConfig) -> Result<reqwest::Client> {
    cfg.validate()?;
    crate::http::client_with_bearer(cfg.timeout_s, cfg.api_key.as_deref())
}

fn send_error(cfg: &ComfyConfig, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::remote(
            RemoteFailure::Timeout,
            format!(
                "ComfyUI at {} did not answer within {} s",
                cfg.base(),
                cfg.timeout_s
            ),
        )
    } else if let Some(problem) = crate::http::certificate_problem(&e) {
        Error::remote(
            RemoteFailure::Unreachable,
            format!("cannot connect to ComfyUI at {}: {problem}", cfg.base()),
        )
    } else {
        Error::remote(
            RemoteFailure::Unreachable,
            format!(
                "cannot reach ComfyUI at {}: is it running and the address right? ({e})",
                cfg.base()
            ),
        )
    }
}

/// A failed reply, with ComfyUI's own reason: `{"error": {"message", "details"}, "node_errors":
/// {id: {"class_type", "errors": [{"message", "details"}]}}}` for a refused graph.
fn status_error(status: u16, body: &str) -> Error {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut reason = match &v["error"] {
        Value::String(s) => s.clone(),
        e => [e["message"].as_str(), e["details"].as_str()]
            .into_iter()
            .flatten()
            .filter(|s| !s.trim().is_empty())
            .collect::<Vec<_>>()
            .join(": "),
    };
    if let Some(nodes) = v["node_errors"].as_object() {
        for node in nodes.values() {
            for err in node["errors"].as_array().into_iter().flatten() {
                let class = node["class_type"].as_str().unwrap_or("a node");
                let msg = err["message"].as_str().unwrap_or("");
                let details = err["details"].as_str().unwrap_or("");
                reason.push_str(&format!("; {class}: {msg} {details}"));
            }
        }
    }
    if reason.trim().is_empty() {
        reason = body.chars().take(300).collect();
    }
    let reason: String = reason.trim().chars().take(600).collect();
    match status {
        401 | 403 => Error::remote(
            RemoteFailure::Auth,
            format!(
                "ComfyUI refused access (HTTP {status}): {reason}. If the server needs a key, enter it under Settings → Models → ComfyUI"
            ),
        ),
        400..=499 => Error::remote(
            RemoteFailure::Rejected,
            format!("ComfyUI refused the request (HTTP {status}): {reason}"),
        ),
        _ => Error::remote(
            RemoteFailure::Server,
            format!("ComfyUI failed (HTTP {status}): {reason}"),
        ),
    }
}

async fn get_json(client: &reqwest::Client, cfg: &ComfyConfig, path: &str) -> Result<Value> {
    let r = client
        .get(cfg.url(path))
        .send()
        .await
        .map_err(|e| send_error(cfg, e))?;
    read_json(cfg, r).await
}

async fn post_json(
    client: &reqwest::Client,
    cfg: &ComfyConfig,
    path: &str,
    body: &Value,
) -> Result<Value> {
    let r = client
        .post(cfg.url(path))
        .json(body)
        .send()
        .await
        .map_err(|e| send_error(cfg, e))?;
    read_json(cfg, r).await
}

async fn read_json(cfg: &ComfyConfig, r: reqwest::Response) -> Result<Value> {
    let status = r.status();
    let body = r.text().await.map_err(|e| send_error(cfg, e))?;
    if !status.is_success() {
        return Err(status_error(status.as_u16(), &body));
    }
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).map_err(|e| {
        Error::remote(
            RemoteFailure::Protocol,
            format!(
                "{} answered with something that is not ComfyUI's JSON ({e}); is this a ComfyUI server?",
                cfg.base()
            ),
        )
    })
}

/// The checkpoint names in `/object_info/CheckpointLoaderSimple`: the combo's list, as
/// `[[names...], {..}]` (older servers) or `["COMBO", {"options": [names...]}]` (newer).
pub fn parse_checkpoints(object_info: &Value) -> Result<Vec<String>> {
    let spec = &object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"];
    let list = spec[0]
        .as_array()
        .or_else(|| spec[1]["options"].as_array())
        .ok_or_else(|| {
            Error::remote(
                RemoteFailure::Protocol,
                "the server's node list has no CheckpointLoaderSimple with checkpoint names; is this a ComfyUI server?",
            )
        })?;
    Ok(list
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect())
}

/// The server's version, devices and checkpoints. An old server without `/system_stats` is
/// still usable; one without checkpoints is not.
pub async fn server_info(cfg: &ComfyConfig) -> Result<ServerInfo> {
    let client = client(cfg)?;
    let stats = match get_json(&client, cfg, "/system_stats").await {
        Ok(v) => v,
        Err(Error::Remote {
            failure: RemoteFailure::Rejected,
            ..
        }) => Value::Null,
        Err(e) => return Err(e),
    };
    let info = get_json(&client, cfg, "/object_info/CheckpointLoaderSimple").await?;
    Ok(ServerInfo {
        base_url: cfg.base().to_owned(),
        version: stats["system"]["comfyui_version"]
            .as_str()
            .map(str::to_owned),
        devices: stats["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect(),
        checkpoints: parse_checkpoints(&info)?,
    })
}

/// ComfyUI's `(sampler_name, scheduler)` for each of Atelier's schedulers.
pub fn sampler_names(s: Scheduler) -> (&'static str, &'static str) {
    match s {
        Scheduler::Ddim => ("ddim", "ddim_uniform"),
        Scheduler::Euler => ("euler", "normal"),
        Scheduler::EulerAncestral => ("euler_ancestral", "normal"),
        Scheduler::DpmPp2mKarras => ("dpmpp_2m", "karras"),
        Scheduler::DpmPp2m => ("dpmpp_2m", "normal"),
        Scheduler::UniPc => ("uni_pc", "normal"),
        Scheduler::Lcm => ("lcm", "sgm_uniform"),
    }
}

// Node ids of the graph (ComfyUI's API format keys nodes by string ids).
const CHECKPOINT: &str = "1";
const POSITIVE: &str = "2";
const NEGATIVE: &str = "3";
const EMPTY_LATENT: &str = "4";
pub const SAMPLER: &str = "5";
const DECODE: &str = "6";
pub const OUTPUT: &str = "7";
const LOAD_SOURCE: &str = "8";
const ENCODE_SOURCE: &str = "9";
const INPAINT: &str = "10";

/// The API-format graph for one image. `source`: the uploaded source's name for `LoadImage`
/// and whether its alpha carries an inpainting mask.
pub fn graph(p: &ImageParams, checkpoint: &str, seed: u64, source: Option<(&str, bool)>) -> Value {
    let (sampler_name, scheduler) = sampler_names(p.scheduler);
    let text = p.translated_prompt.as_deref().unwrap_or(&p.prompt);
    let mut g = json!({
        CHECKPOINT: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        POSITIVE: {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [CHECKPOINT, 1]}},
        NEGATIVE: {"class_type": "CLIPTextEncode", "inputs": {"text": p.negative_prompt, "clip": [CHECKPOINT, 1]}},
        DECODE: {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": [CHECKPOINT, 2]}},
        // A preview output lands in the server's temp folder, not its gallery: the labelled copy
        // is the one Atelier writes.
        OUTPUT: {"class_type": "PreviewImage", "inputs": {"images": [DECODE, 0]}},
    });
    let (positive, negative, latent, denoise) = match source {
        None => {
            g[EMPTY_LATENT] = json!({"class_type": "EmptyLatentImage",
                "inputs": {"width": p.width, "height": p.height, "batch_size": 1}});
            (
                json!([POSITIVE, 0]),
                json!([NEGATIVE, 0]),
                json!([EMPTY_LATENT, 0]),
                1.0,
            )
        }
        Some((name, masked)) => {
            let strength = p.init_image.as_ref().map_or(1.0, |i| i.strength);
            // LoadImage's second output is the mask read from the alpha channel (transparent
            // = repaint).
            g[LOAD_SOURCE] = json!({"class_type": "LoadImage", "inputs": {"image": name}});
            if masked {
                // Works for inpainting checkpoints (mask and masked image as conditioning) and
                // ordinary ones (a noise mask on the latents) alike.
                g[INPAINT] = json!({"class_type": "InpaintModelConditioning", "inputs": {
                    "positive": [POSITIVE, 0], "negative": [NEGATIVE, 0], "vae": [CHECKPOINT, 2],
                    "pixels": [LOAD_SOURCE, 0], "mask": [LOAD_SOURCE, 1], "noise_mask": true}});
                (
                    json!([INPAINT, 0]),
                    json!([INPAINT, 1]),
                    json!([INPAINT, 2]),
                    strength,
                )
            } else {
                g[ENCODE_SOURCE] = json!({"class_type": "VAEEncode",
                    "inputs": {"pixels": [LOAD_SOURCE, 0], "vae": [CHECKPOINT, 2]}});
                (
                    json!([POSITIVE, 0]),
                    json!([NEGATIVE, 0]),
                    json!([ENCODE_SOURCE, 0]),
                    strength,
                )
            }
        }
    };
    g[SAMPLER] = json!({"class_type": "KSampler", "inputs": {
        "seed": seed, "steps": p.steps, "cfg": p.cfg_scale,
        "sampler_name": sampler_name, "scheduler": scheduler, "denoise": denoise,
        "model": [CHECKPOINT, 0], "positive": positive, "negative": negative, "latent_image": latent}});
    g
}

/// The source as the PNG `LoadImage` reads: RGB, or RGBA whose alpha is the inverted mask.
pub fn source_png(source: &Source<'_>) -> Result<Vec<u8>> {
    let img = match source.mask {
        None => image::DynamicImage::ImageRgb8(source.rgb.clone()),
        Some(mask) => {
            let mut rgba = image::RgbaImage::new(source.rgb.width(), source.rgb.height());
            for ((o, s), m) in rgba
                .pixels_mut()
                .zip(source.rgb.pixels())
                .zip(mask.pixels())
            {
                *o = image::Rgba([s.0[0], s.0[1], s.0[2], 255 - m.0[0]]);
            }
            image::DynamicImage::ImageRgba8(rgba)
        }
    };
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Internal(format!("encoding the source image: {e}")))?;
    Ok(png)
}

/// Uploads the source into the server's input folder under a name made from its content (the
/// same picture is stored once); returns the name `LoadImage` takes.
async fn upload(client: &reqwest::Client, cfg: &ComfyConfig, png: Vec<u8>) -> Result<String> {
    let hex = crate::fsutil::sha256_hex(&png);
    let part = reqwest::multipart::Part::bytes(png)
        .file_name(format!("atelier-{}.png", &hex[..16]))
        .mime_str("image/png")
        .map_err(|e| Error::Internal(format!("upload form: {e}")))?;
    let form = reqwest::multipart::Form::new()
        .part("image", part)
        .text("type", "input")
        .text("overwrite", "true");
    let r = client
        .post(cfg.url("/upload/image"))
        .multipart(form)
        .send()
        .await
        .map_err(|e| send_error(cfg, e))?;
    let v = read_json(cfg, r).await?;
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::remote(
                RemoteFailure::Protocol,
                "ComfyUI did not say the uploaded image's name",
            )
        })?;
    Ok(match v["subfolder"].as_str().filter(|s| !s.is_empty()) {
        Some(sub) => format!("{sub}/{name}"),
        None => name.to_owned(),
    })
}

/// Removes a queued prompt, or interrupts it if it is already running. Best effort: the
/// caller reports the cancellation whatever the server says.
async fn cancel_prompt(client: &reqwest::Client, cfg: &ComfyConfig, prompt_id: &str) {
    let _ = post_json(client, cfg, "/queue", &json!({"delete": [prompt_id]})).await;
    // Only interrupt when it is ours that runs: a bare interrupt stops whatever runs.
    if let Ok(q) = get_json(client, cfg, "/queue").await {
        let running = q["queue_running"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e[1].as_str() == Some(prompt_id));
        if running {
            let _ = post_json(client, cfg, "/interrupt", &json!({"prompt_id": prompt_id})).await;
        }
    }
}

/// A preview frame: a 4-byte event type (1: image; 4: image after a JSON header with the
/// prompt id), a 4-byte format (1 JPEG, 2 PNG), the picture.
fn preview_frame(bytes: &[u8], prompt_id: &str) -> Option<image::RgbImage> {
    let event = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let picture = match event {
        1 => bytes.get(8..)?,
        4 => {
            let len = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
            let meta: Value = serde_json::from_slice(bytes.get(8..8 + len)?).ok()?;
            if meta["prompt_id"].as_str().is_some_and(|p| p != prompt_id) {
                return None;
            }
            bytes.get(8 + len..)?
        }
        _ => return None,
    };
    image::load_from_memory(picture).ok().map(|i| i.to_rgb8())
}

/// How the WebSocket says the run went on.
enum WsNews {
    Nothing,
    Done,
    Failed(Error),
}

fn ws_message(
    v: &Value,
    prompt_id: &str,
    started: &mut bool,
    on: &mut (dyn FnMut(Progress) + Send),
) -> WsNews {
    let data = &v["data"];
    let ours = data["prompt_id"].as_str().is_none_or(|p| p == prompt_id);
    match v["type"].as_str().unwrap_or("") {
        "status" if !*started => {
            if let Some(n) = data["status"]["exec_info"]["queue_remaining"].as_u64() {
                on(Progress::Queued { remaining: n });
            }
        }
        "execution_start" if ours => *started = true,
        "executing" if ours && data["prompt_id"].is_string() => {
            *started = true;
            if data["node"].is_null() {
                return WsNews::Done;
            }
        }
        "progress" if ours && data["node"].as_str().is_none_or(|n| n == SAMPLER) => {
            *started = true;
            if let (Some(step), Some(steps)) = (data["value"].as_u64(), data["max"].as_u64()) {
                on(Progress::Step {
                    step: step as u32,
                    steps: steps as u32,
                });
            }
        }
        "execution_success" if ours => return WsNews::Done,
        "execution_error" if ours => return WsNews::Failed(execution_error(data)),
        "execution_interrupted" if ours => {
            return WsNews::Failed(Error::remote(
                RemoteFailure::Server,
                "the run was interrupted on the ComfyUI server",
            ));
        }
        _ => {}
    }
    WsNews::Nothing
}

fn execution_error(data: &Value) -> Error {
    let node = data["node_type"].as_str().unwrap_or("a node");
    let kind = data["exception_type"].as_str().unwrap_or("");
    let msg = data["exception_message"].as_str().unwrap_or("").trim();
    let msg: String = msg.chars().take(600).collect();
    Error::remote(
        RemoteFailure::Server,
        format!("ComfyUI failed in {node}: {kind} {msg}").replace("  ", " "),
    )
}

/// The finished history entry, or `None` while the run is not finished.
fn finished_entry(history: &Value, prompt_id: &str) -> Option<Result<Value>> {
    let entry = history.get(prompt_id)?;
    let status = &entry["status"];
    if status["status_str"].as_str() == Some("error") {
        let data = status["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m[0].as_str() == Some("execution_error"))
            .map(|m| m[1].clone())
            .unwrap_or(Value::Null);
        return Some(Err(if data.is_null() {
            Error::remote(RemoteFailure::Server, "ComfyUI says the run failed")
        } else {
            execution_error(&data)
        }));
    }
    if status["completed"].as_bool() == Some(false) {
        return None;
    }
    Some(Ok(entry.clone()))
}

/// Queues one image, follows it and fetches the picture. Cancelling removes or interrupts
/// the prompt on the server and returns `Error::Cancelled`.
pub async fn generate(
    cfg: &ComfyConfig,
    p: &ImageParams,
    seed: u64,
    source: Option<Source<'_>>,
    cancel: &CancellationToken,
    on: &mut (dyn FnMut(Progress) + Send),
) -> Result<image::RgbImage> {
    let checkpoint = checkpoint_of(&p.model)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| Error::invalid("choose a checkpoint on the ComfyUI server"))?;
    let client = client(cfg)?;
    let client_id = uuid::Uuid::new_v4().to_string();
    // Connected before queueing, so no message of this run is missed.
    let mut ws = match ws_request(cfg, &client_id)? {
        Some(request) => connect_ws(request).await,
        None => None,
    };
    let uploaded = match &source {
        Some(s) => Some((
            upload(&client, cfg, source_png(s)?).await?,
            s.mask.is_some(),
        )),
        None => None,
    };
    let g = graph(
        p,
        checkpoint,
        seed,
        uploaded.as_ref().map(|(n, m)| (n.as_str(), *m)),
    );
    let body = json!({"prompt": g, "client_id": client_id});
    let queued = tokio::select! {
        r = post_json(&client, cfg, "/prompt", &body) => r?,
        _ = cancel.cancelled() => return Err(Error::Cancelled),
    };
    let prompt_id = queued["prompt_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::remote(
                RemoteFailure::Protocol,
                "ComfyUI queued the prompt without saying its id",
            )
        })?;
    if let Some(n) = queued["number"].as_u64() {
        tracing::info!(prompt_id, number = n, "queued on ComfyUI");
    }

    let mut started = false;
    let mut ws_done = false;
    let mut last_contact = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u64;
    let entry = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                cancel_prompt(&client, cfg, &prompt_id).await;
                return Err(Error::Cancelled);
            }
            msg = async {
                match ws.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => {
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        match ws_message(&v, &prompt_id, &mut started, on) {
                            WsNews::Nothing => {}
                            WsNews::Done => ws_done = true,
                            WsNews::Failed(e) => return Err(e),
                        }
                    }
                    Some(Ok(Message::Binary(b))) if started && !ws_done => {
                        if let Some(img) = preview_frame(&b, &prompt_id) {
                            on(Progress::Preview(img));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the ComfyUI WebSocket broke; polling instead");
                        ws = None;
                    }
                    None => ws = None,
                }
            }
            _ = poll.tick() => {
                polls += 1;
                // With a WebSocket the history is read once it says the run ended (and now
                // and then in case a message was lost); without one, four times a second.
                if ws.is_some() && !ws_done && !polls.is_multiple_of(20) {
                    continue;
                }
                match get_json(&client, cfg, &format!("/history/{prompt_id}")).await {
                    Ok(h) => {
                        last_contact = Instant::now();
                        if let Some(done) = finished_entry(&h, &prompt_id) {
                            break done?;
                        }
                    }
                    Err(e @ Error::Remote { failure: RemoteFailure::Unreachable | RemoteFailure::Timeout, .. }) => {
                        if last_contact.elapsed() > Duration::from_secs(cfg.timeout_s.max(1) as u64) {
                            return Err(Error::remote(RemoteFailure::Unreachable, format!(
                                "lost contact with ComfyUI during the run: {e}")));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };

    let picture = entry["outputs"][OUTPUT]["images"][0].clone();
    let filename = picture["filename"].as_str().ok_or_else(|| {
        Error::remote(
            RemoteFailure::Protocol,
            "ComfyUI finished the run without an output image",
        )
    })?;
    let mut view = reqwest::Url::parse(&cfg.url("/view"))
        .map_err(|e| Error::invalid(format!("the ComfyUI address is not a URL: {e}")))?;
    view.query_pairs_mut()
        .append_pair("filename", filename)
        .append_pair("subfolder", picture["subfolder"].as_str().unwrap_or(""))
        .append_pair("type", picture["type"].as_str().unwrap_or("temp"));
    let r = client
        .get(view)
        .send()
        .await
        .map_err(|e| send_error(cfg, e))?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| send_error(cfg, e))?;
    if !status.is_success() {
        return Err(status_error(
            status.as_u16(),
            &String::from_utf8_lossy(&bytes),
        ));
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| {
            Error::remote(
                RemoteFailure::Protocol,
                format!("the image ComfyUI sent cannot be read: {e}"),
            )
        })?
        .to_rgb8();
    if (img.width(), img.height()) != (p.width, p.height) {
        return Err(Error::remote(
            RemoteFailure::Protocol,
            format!(
                "ComfyUI sent a {}×{} image for a {}×{} request",
                img.width(),
                img.height(),
                p.width,
                p.height
            ),
        ));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_follows_the_servers_scheme() {
        let at = |base: &str| ComfyConfig {
            base_url: base.into(),
            timeout_s: 5,
            api_key: None,
        };
        assert_eq!(
            at("http://10.0.0.2:8188/").ws_url("c1").as_deref(),
            Some("ws://10.0.0.2:8188/ws?clientId=c1")
        );
        assert_eq!(
            at(" https://gpu.example.com/comfy ")
                .ws_url("c2")
                .as_deref(),
            Some("wss://gpu.example.com/comfy/ws?clientId=c2")
        );
        assert_eq!(at("ftp://x").ws_url("c3"), None);
    }

    #[test]
    fn checkpoint_lists_of_old_and_new_servers_read() {
        let old = json!({"CheckpointLoaderSimple": {"input": {"required": {
            "ckpt_name": [["sd15.safetensors", "sub/xl.safetensors"], {}]}}}});
        let new = json!({"CheckpointLoaderSimple": {"input": {"required": {
            "ckpt_name": ["COMBO", {"options": ["a.safetensors"]}]}}}});
        assert_eq!(
            parse_checkpoints(&old).unwrap(),
            ["sd15.safetensors", "sub/xl.safetensors"]
        );
        assert_eq!(parse_checkpoints(&new).unwrap(), ["a.safetensors"]);
        assert!(parse_checkpoints(&json!({"error": "nope"})).is_err());
    }

    #[test]
    fn refused_graphs_say_which_node_and_why() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation", "details": ""},
            "node_errors": {"1": {"class_type": "CheckpointLoaderSimple", "errors": [
                {"message": "Value not in list", "details": "ckpt_name: 'x.safetensors' not in []"}]}}})
        .to_string();
        let e = status_error(400, &body).to_string();
        assert!(e.contains("Prompt outputs failed validation"), "{e}");
        assert!(
            e.contains("CheckpointLoaderSimple: Value not in list"),
            "{e}"
        );
        assert!(e.contains("x.safetensors"), "{e}");
    }

    #[test]
    fn graphs_link_only_to_nodes_they_have() {
        let mut p = super::super::params::sample_params();
        p.model = "comfyui:sd15.safetensors".into();
        let source = Some(("atelier-1.png", true));
        for (src, strength) in [
            (None, 1.0),
            (Some(("atelier-1.png", false)), 0.6),
            (source, 0.6),
        ] {
            if src.is_some() {
                p.init_image = Some(super::super::params::InitImage {
                    asset_id: 1,
                    strength: 0.6,
                    mask_asset_id: None,
                });
            }
            let g = graph(&p, "sd15.safetensors", 7, src);
            let nodes = g.as_object().unwrap();
            for node in nodes.values() {
                for input in node["inputs"].as_object().unwrap().values() {
                    if let Some(link) = input.as_array().filter(|a| a.len() == 2 && a[1].is_u64()) {
                        let to = link[0].as_str().unwrap();
                        assert!(nodes.contains_key(to), "a link to missing node {to}");
                    }
                }
            }
            assert_eq!(g[SAMPLER]["inputs"]["denoise"], json!(strength));
            assert_eq!(g[SAMPLER]["inputs"]["seed"], json!(7));
            assert_eq!(g[OUTPUT]["class_type"], "PreviewImage");
        }
    }

    #[test]
    fn preview_frames_are_read_and_others_ignored() {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let mut plain = vec![0, 0, 0, 1, 0, 0, 0, 2];
        plain.extend_from_slice(&png);
        assert_eq!(preview_frame(&plain, "p").unwrap().dimensions(), (8, 8));
        let meta = json!({"prompt_id": "other"}).to_string();
        let mut tagged = vec![0, 0, 0, 4];
        tagged.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        tagged.extend_from_slice(meta.as_bytes());
        tagged.extend_from_slice(&png);
        assert!(
            preview_frame(&tagged, "p").is_none(),
            "another prompt's preview"
        );
        assert!(preview_frame(&tagged, "other").is_some());
        assert!(preview_frame(&[0, 0, 0, 1, 0], "p").is_none());
        assert!(preview_frame(&[], "p").is_none());
    }
}
