//! The local engine: GGUF models on the host's CPU (our [`native`](super::native) engine) or a
//! GPU (candle).
//!
//! Loading validates the header with our bounded reader first (a broken file is a clear error,
//! never a huge allocation) and keeps the model resident: the [`LocalEngine`] holds loaded
//! models most-recently-used first within a memory budget. On the CPU, llama/qwen2/qwen3 files
//! run on the native engine with the blocks as shipped. Anything else (a GPU, an architecture or
//! tensor type the native engine lacks) runs on candle's models; there, tensors candle has no
//! fast CPU kernel for (Q4_1, Q5_0, Q5_1) are repacked to Q8_0 into a cached GGUF.
//!
//! The KV cache lives inside the model, so a model runs one request at a time (each run starts
//! by clearing the cache); requests for different models run side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use atelier_cpu::quant;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use serde::Serialize;

use super::chat::ChatTemplate;
use super::native::{self, NativeModel};
use super::params::{StopReason, TextOutcome, TextRequest};
use super::sampler::Sampler;
use super::stream::{StopStrings, TextStream};
use super::tokenizer::TextTokenizer;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic_with;
use crate::models::gguf;
use crate::models::registry::SUPPORTED_ARCHITECTURES;
pub use crate::store::DevicePreference;

/// Prompt tokens fed per forward pass: bounds the attention scratch memory of long prompts.
const PREFILL_CHUNK: usize = 512;
/// Bump when the repacking changes, so old cache files are not reused.
const REPACK_VERSION: u32 = 1;

fn candle_err(what: &str) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// The device chosen, and why it is not the one asked for (shown to the user).
pub fn choose_device(pref: DevicePreference) -> (Device, Option<String>) {
    let try_cuda = || -> std::result::Result<Device, String> {
        if !cfg!(feature = "cuda") {
            return Err("this build of Atelier has no CUDA support".into());
        }
        Device::new_cuda(0).map_err(|e| format!("no usable CUDA GPU: {e}"))
    };
    let try_metal = || -> std::result::Result<Device, String> {
        if !cfg!(feature = "metal") {
            return Err("this build of Atelier has no Metal support".into());
        }
        Device::new_metal(0).map_err(|e| format!("no usable Metal GPU: {e}"))
    };
    match pref {
        DevicePreference::Cpu => (Device::Cpu, None),
        DevicePreference::Cuda => match try_cuda() {
            Ok(d) => (d, None),
            Err(why) => (Device::Cpu, Some(format!("running on the CPU: {why}"))),
        },
        DevicePreference::Metal => match try_metal() {
            Ok(d) => (d, None),
            Err(why) => (Device::Cpu, Some(format!("running on the CPU: {why}"))),
        },
        DevicePreference::Auto => {
            if cfg!(feature = "cuda") {
                match try_cuda() {
                    Ok(d) => return (d, None),
                    Err(why) => return (Device::Cpu, Some(format!("running on the CPU: {why}"))),
                }
            }
            if cfg!(feature = "metal")
                && let Ok(d) = try_metal()
            {
                return (d, None);
            }
            (Device::Cpu, None)
        }
    }
}

pub fn device_name(d: &Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Physical cores: hyper-threads share the SIMD units quantised matmuls saturate.
pub fn default_threads() -> usize {
    num_cpus::get_physical().max(1)
}

/// Fixes the thread count candle reads from the environment, once per process.
///
/// Candle 0.11 sizes its quantised-matmul worker pool from `CANDLE_NUM_THREADS` (else
/// `RAYON_NUM_THREADS`, else the CPU list) when first used, and for every f32 matmul asks
/// again, parsing `/proc/cpuinfo` each time unless `RAYON_NUM_THREADS` is set: that alone cost
/// about a quarter of decode speed on the 2-core machine (50 → 65 tok/s for SmolLM2). Variables
/// the user set are left alone.
///
/// # Safety
/// Call at the start of `main`, before any other thread exists (it sets environment variables).
pub unsafe fn configure_process_threads(threads: Option<usize>) {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(default_threads)
        .to_string();
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            // SAFETY: the caller guarantees no other thread is running.
            unsafe { std::env::set_var(var, &n) };
        }
    }
}

// One per loaded model, behind its mutex: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Weights {
    Native(NativeModel),
    Candle(CandleWeights),
}

/// candle's quantised models (GPUs, and files the native engine cannot run).
enum CandleWeights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
}

impl Weights {
    /// Logits for the last position of `ids`, fed at position `pos`.
    fn forward(&mut self, ids: &[u32], pos: usize, device: &Device) -> Result<Vec<f32>> {
        let w = match self {
            // Callers run inside the rayon pool sized by the Threads setting (or --threads).
            Weights::Native(m) => return m.forward(ids, pos, rayon::current_num_threads()),
            Weights::Candle(w) => w,
        };
        let x = Tensor::new(ids, device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(candle_err("input"))?;
        let logits = match w {
            CandleWeights::Llama(w) => w.forward(&x, pos),
            CandleWeights::Qwen2(w) => w.forward(&x, pos),
            CandleWeights::Qwen3(w) => w.forward(&x, pos),
        }
        .map_err(candle_err("model forward pass"))?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_dtype(DType::F32))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(candle_err("reading logits"))
    }

    /// Clears the cache and feeds `ids` from position 0 in prefill chunks; the last logits, or
    /// `None` when `cancelled` says so between chunks.
    fn prefill(
        &mut self,
        ids: &[u32],
        device: &Device,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<f32>>> {
        self.clear();
        let mut logits = Vec::new();
        for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            if cancelled() {
                return Ok(None);
            }
            logits = self.forward(chunk, i * PREFILL_CHUNK, device)?;
        }
        Ok(Some(logits))
    }

    fn clear(&mut self) {
        match self {
            Weights::Native(m) => m.clear(),
            Weights::Candle(CandleWeights::Llama(w)) => w.clear_kv_cache(),
            Weights::Candle(CandleWeights::Qwen2(w)) => w.clear_kv_cache(),
            Weights::Candle(CandleWeights::Qwen3(w)) => w.clear_kv_cache(),
        }
    }
}

/// What loading did, for the model list and the logs.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    /// "native" (our CPU engine, blocks as shipped) or "candle".
    pub engine: String,
    /// Why the CPU model runs on candle rather than the native engine.
    pub engine_note: Option<String>,
    /// Tensor counts by (from type → to type), e.g. `Q4_1→Q8_0: 210`.
    pub repacked: BTreeMap<String, usize>,
    /// The repacked file was read from the cache instead of being made again.
    pub from_cache: bool,
    pub device: String,
    /// Why the device is not the one asked for.
    pub device_note: Option<String>,
    pub load_ms: u64,
    pub resident_bytes: u64,
}

pub struct LocalModel {
    pub id: String,
    pub architecture: String,
    /// One run at a time per model: the KV cache lives inside the weights (candle's design).
    weights: Mutex<Weights>,
    pub tokenizer: TextTokenizer,
    template: ChatTemplate,
    add_bos: bool,
    pub context_length: usize,
    device: Device,
    pub report: LoadReport,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("id", &self.id)
            .field("report", &self.report)
            .finish()
    }
}

/// Options for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DevicePreference,
    /// Folder for repacked files; `None` repacks in memory every load.
    pub cache_dir: Option<PathBuf>,
    /// Repack slow tensor types on the CPU for candle (off only to measure the file as shipped).
    pub repack: bool,
    /// Run supported models on the native CPU engine (off only to compare with candle).
    pub native: bool,
}

fn needs_repack(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

impl LocalModel {
    /// Loads `path`. `progress(done, total)` is called as tensors are repacked.
    pub fn load(
        id: &str,
        path: &Path,
        opts: &LoadOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<LocalModel> {
        let started = Instant::now();
        let header = gguf::read_header(path)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let architecture = header
            .str("general.architecture")
            .unwrap_or("unknown")
            .to_owned();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(Error::invalid(format!(
                "{id}: architecture “{architecture}” is not supported by the local engine (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let tokenizer = TextTokenizer::from_gguf(&header)?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| match header.get("tokenizer.ggml.tokens") {
                Some(gguf::Value::Strings(v)) => v.get(i as usize).cloned(),
                _ => None,
            })
            .unwrap_or_default()
        };
        let template = ChatTemplate::new(
            header.str("tokenizer.chat_template"),
            &token_text(tokenizer.bos),
            &token_text(tokenizer.eos),
        )?;
        let add_bos = matches!(
            header.get("tokenizer.ggml.add_bos_token"),
            Some(gguf::Value::Bool(true))
        );
        let file_ctx = header
            .u64(&format!("{architecture}.context_length"))
            .unwrap_or(2048) as usize;

        let (device, device_note) = choose_device(opts.device);
        let native_blocker = if !device.is_cpu() {
            Some("a GPU is in use".to_owned())
        } else if !opts.native {
            Some("turned off".to_owned())
        } else {
            native::unsupported_reason(&header)
        };
        check_memory(memory_needed(&header, native_blocker.is_none()))?;
        let mut report = LoadReport {
            device: device_name(&device).into(),
            device_note,
            ..Default::default()
        };

        let mut file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            Error::invalid(format!(
                "{}: not a readable GGUF model: {e}",
                path.display()
            ))
        })?;
        let to_repack: Vec<String> = content
            .tensor_infos
            .iter()
            .filter(|(_, t)| needs_repack(t.ggml_dtype))
            .map(|(n, _)| n.clone())
            .collect();

        report.engine = if native_blocker.is_none() {
            "native"
        } else {
            "candle"
        }
        .into();
        report.engine_note = native_blocker.clone().filter(|_| device.is_cpu());
        let weights = if native_blocker.is_none() {
            Weights::Native(NativeModel::load(&content, &mut file, progress)?)
        } else if to_repack.is_empty() || !device.is_cpu() || !opts.repack {
            // GPUs have kernels for every type: repacking would only cost quality.
            progress(0, 1);
            let w = build_weights(&architecture, content, &mut file, &device)?;
            progress(1, 1);
            Weights::Candle(w)
        } else {
            for name in &to_repack {
                if let Some(t) = content.tensor_infos.get(name) {
                    *report
                        .repacked
                        .entry(format!("{:?}→Q8_0", t.ggml_dtype))
                        .or_insert(0) += 1;
                }
            }
            let cache_file = opts
                .cache_dir
                .as_ref()
                .map(|dir| repack_cache_path(dir, id, path))
                .transpose()?;
            Weights::Candle(match cache_file {
                Some(cache_file) if cache_file.is_file() => {
                    report.from_cache = true;
                    load_file(&architecture, &cache_file, &device)?
                }
                cache_file => {
                    let bytes = repack(&content, &mut file, &to_repack, progress)?;
                    if let Some(cache_file) = cache_file {
                        if let Some(dir) = cache_file.parent() {
                            std::fs::create_dir_all(dir).map_err(|e| {
                                Error::io(format!("cannot create {}", dir.display()), e)
                            })?;
                        }
                        // The cache is an optimisation: failing to write it (disk full) is
                        // logged, and the model still loads from memory.
                        if let Err(e) =
                            write_atomic_with(&cache_file, |w| std::io::Write::write_all(w, &bytes))
                        {
                            tracing::warn!(file = %cache_file.display(), error = %e, "could not cache the repacked model");
                        }
                    }
                    let mut cursor = std::io::Cursor::new(bytes);
                    let content = gguf_file::Content::read(&mut cursor)
                        .map_err(candle_err("re-reading the repacked model"))?;
                    build_weights(&architecture, content, &mut cursor, &device)?
                }
            })
        };
        report.resident_bytes = match &weights {
            Weights::Native(m) => m.weight_bytes,
            Weights::Candle(_) => header.tensors.iter().map(resident_size).sum(),
        };
        report.load_ms = started.elapsed().as_millis() as u64;
        tracing::info!(model = id, ?report, "model loaded");
        // candle's llama precomputes rotary tables for 4096 positions only; the native engine
        // grows its tables.
        let context_length = match &weights {
            Weights::Candle(_) if architecture == "llama" => {
                file_ctx.min(quantized_llama::MAX_SEQ_LEN)
            }
            _ => file_ctx,
        };
        Ok(LocalModel {
            id: id.into(),
            architecture,
            weights: Mutex::new(weights),
            tokenizer,
            template,
            add_bos,
            context_length,
            device,
            report,
        })
    }

    /// Prompt token ids for `req` (chat template applied).
    pub fn prompt_ids(&self, req: &TextRequest) -> Result<Vec<u32>> {
        let text = self.template.render(&req.messages, true)?;
        // The rendered template holds the chat markers as text; llama.cpp parses them as
        // special tokens in the whole prompt, and so do we, to match it token for token.
        let mut ids = self.tokenizer.encode(&text, true)?;
        if self.add_bos
            && let Some(bos) = self.tokenizer.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Runs `req`. `on_text` receives text as it becomes safe to show; `cancelled` is polled
    /// between tokens. A cancelled run returns its partial text with `StopReason::Cancelled`.
    pub fn generate(
        &self,
        req: &TextRequest,
        seed: u64,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<TextOutcome> {
        let started = Instant::now();
        let prompt = self.prompt_ids(req)?;
        if prompt.len() >= self.context_length {
            return Err(Error::invalid(format!(
                "the prompt is {} tokens long but {} holds {} tokens; shorten the prompt",
                prompt.len(),
                self.id,
                self.context_length
            )));
        }
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        let mut sampler = Sampler::new(&req.params, seed);
        let mut stream = TextStream::default();
        let mut stops = StopStrings::new(&req.params.stop);
        let mut text = String::new();
        let mut history = prompt.clone();
        let mut emit = |piece: &str, text: &mut String| {
            if !piece.is_empty() {
                text.push_str(piece);
                on_text(piece);
            }
        };

        let Some(mut logits) = weights.prefill(&prompt, &self.device, cancelled)? else {
            return Ok(self.outcome(
                String::new(),
                seed,
                prompt.len(),
                0,
                StopReason::Cancelled,
                started,
                None,
                None,
            ));
        };
        let prefill_done = Instant::now();
        let mut first_token_at = None;
        let mut generated = 0usize;
        let reason = loop {
            if cancelled() {
                break StopReason::Cancelled;
            }
            let next = sampler.sample(&mut logits, &history);
            generated += 1;
            first_token_at.get_or_insert_with(Instant::now);
            if self.tokenizer.stop.contains(&next) {
                break StopReason::EndOfText;
            }
            history.push(next);
            let piece = stream.push(&self.tokenizer, next)?;
            let released = stops.push(&piece);
            emit(&released.text, &mut text);
            if released.stopped {
                break StopReason::StopString;
            }
            if generated >= req.params.max_tokens as usize {
                break StopReason::MaxTokens;
            }
            if history.len() >= self.context_length {
                break StopReason::ContextFull;
            }
            logits = weights.forward(&[next], history.len() - 1, &self.device)?;
        };
        if reason != StopReason::StopString {
            let tail = stream.finish(&self.tokenizer)?;
            let released = stops.push(&tail);
            emit(&released.text, &mut text);
            if !released.stopped {
                let rest = stops.finish();
                emit(&rest, &mut text);
            }
        }
        Ok(self.outcome(
            text,
            seed,
            prompt.len(),
            generated,
            reason,
            started,
            Some(prefill_done),
            first_token_at,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &self,
        text: String,
        seed: u64,
        prompt_tokens: usize,
        generated: usize,
        stop_reason: StopReason,
        started: Instant,
        prefill_done: Option<Instant>,
        first_token_at: Option<Instant>,
    ) -> TextOutcome {
        let now = Instant::now();
        let secs = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
        let prefill_tokens_per_s =
            prefill_done.map_or(0.0, |p| prompt_tokens as f64 / secs(started, p).max(1e-9));
        let decode_tokens_per_s = match first_token_at {
            Some(f) if generated > 1 => (generated - 1) as f64 / secs(f, now).max(1e-9),
            _ => 0.0,
        };
        TextOutcome {
            text,
            seed,
            prompt_tokens: prompt_tokens as u32,
            completion_tokens: generated as u32,
            stop_reason,
            first_token_ms: first_token_at
                .map_or(0, |f| f.duration_since(started).as_millis() as u64),
            load_ms: 0,
            total_ms: now.duration_since(started).as_millis() as u64,
            prefill_tokens_per_s,
            decode_tokens_per_s,
        }
    }

    /// Greedy-free forward timing for benchmarks: prefill `n_prompt` tokens, then `n_gen`
    /// single-token steps, returning (prefill seconds, decode seconds).
    pub fn bench(&self, n_prompt: usize, n_gen: usize) -> Result<(f64, f64)> {
        if n_prompt + n_gen >= self.context_length {
            return Err(Error::invalid(format!(
                "{} + {} tokens exceed the context of {}",
                n_prompt, n_gen, self.context_length
            )));
        }
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        // Ordinary text tokens (not special), deterministic.
        let vocab = self.tokenizer.vocab_size().max(1000) as u32;
        let ids: Vec<u32> = (0..n_prompt as u32)
            .map(|i| 200 + (i * 7919) % (vocab - 400))
            .collect();
        let t0 = Instant::now();
        let mut logits = weights
            .prefill(&ids, &self.device, &|| false)?
            .unwrap_or_default();
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for step in 0..n_gen {
            let next = argmax(&logits);
            logits = weights.forward(&[next], n_prompt + step, &self.device)?;
        }
        Ok((prefill, t1.elapsed().as_secs_f64()))
    }

    /// Logits after `ids` from an empty cache (tests and diagnostics compare engines with it).
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut weights = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        Ok(weights
            .prefill(ids, &self.device, &|| false)?
            .unwrap_or_default())
    }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Bytes a tensor takes once loaded (repacked types as Q8_0: 34 bytes per 32 values).
fn resident_size(t: &gguf::TensorInfo) -> u64 {
    let n: u64 = t.dims.iter().product();
    match gguf::ggml_type(t.ggml_type).map(|x| x.0) {
        Some("Q4_1" | "Q5_0" | "Q5_1") => n / 32 * 34,
        _ => t.bytes,
    }
}

fn build_weights<R: std::io::Read + std::io::Seek>(
    arch: &str,
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
) -> Result<CandleWeights> {
    let bad = |e: candle_core::Error| {
        Error::invalid(format!("the model's weights cannot be loaded: {e}"))
    };
    Ok(match arch {
        "llama" => CandleWeights::Llama(
            quantized_llama::ModelWeights::from_gguf(content, reader, device).map_err(bad)?,
        ),
        "qwen2" => CandleWeights::Qwen2(
            quantized_qwen2::ModelWeights::from_gguf(content, reader, device).map_err(bad)?,
        ),
        "qwen3" => CandleWeights::Qwen3(
            quantized_qwen3::ModelWeights::from_gguf(content, reader, device).map_err(bad)?,
        ),
        other => {
            return Err(Error::invalid(format!(
                "architecture “{other}” is not supported"
            )));
        }
    })
}

fn load_file(arch: &str, path: &Path, device: &Device) -> Result<CandleWeights> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        Error::invalid(format!(
            "{}: the cached repacked model is unreadable ({e}); delete it",
            path.display()
        ))
    })?;
    build_weights(arch, content, &mut file, device)
}

/// `<cache>/<id>-<size>-<mtime>-r<version>.q8_0.gguf`: a changed source file gets a new name.
fn repack_cache_path(dir: &Path, id: &str, source: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(source)
        .map_err(|e| Error::io(format!("cannot read {}", source.display()), e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(dir.join(format!(
        "{id}-{}-{mtime}-r{REPACK_VERSION}.q8_0.gguf",
        meta.len()
    )))
}

/// A GGUF file (in memory) with `names` requantised to Q8_0 and everything else unchanged.
fn repack<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    names: &[String],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<u8>> {
    let total = content.tensor_infos.len() as u64;
    // Keep the file's tensor order: loaders and tools expect it.
    let mut order: Vec<(&String, u64)> = content
        .tensor_infos
        .iter()
        .map(|(n, t)| (n, t.offset))
        .collect();
    order.sort_by_key(|(_, off)| *off);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(order.len());
    for (i, (name, _)) in order.iter().enumerate() {
        let t = content
            .tensor(reader, name, &Device::Cpu)
            .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))?;
        let t = if names.contains(name) {
            let f = t
                .dequantize(&Device::Cpu)
                .map_err(candle_err("dequantizing"))?;
            QTensor::quantize(&f, GgmlDType::Q8_0).map_err(candle_err("requantizing"))?
        } else {
            t
        };
        tensors.push(((*name).clone(), t));
        progress(i as u64 + 1, total);
    }
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    metadata.sort_by_key(|(k, _)| *k);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &refs)
        .map_err(candle_err("writing the repacked model"))?;
    Ok(out.into_inner())
}

/// Memory a load needs: the weights as they will be held plus working memory. The native engine
/// holds one copy (as `atelier_cpu::quant::held_bytes` sizes it: F16 widened to F32, grouped
/// formats padded); candle's path may build a repacked second copy while loading.
fn memory_needed(header: &gguf::Header, native: bool) -> u64 {
    let working = 256 * 1024 * 1024;
    if !native {
        return header.file_size.saturating_mul(2) + working;
    }
    let held = |t: &gguf::TensorInfo| {
        // GGUF lists dimensions fastest first: a row is the first, the rest count rows.
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let rows = t.dims.iter().skip(1).product::<u64>() as usize;
        gguf::ggml_type(t.ggml_type)
            .and_then(|(name, _, _)| quant::gguf_type_named(name))
            .and_then(|ty| quant::held_bytes(ty, rows, cols))
            .map_or(t.bytes, |b| b as u64)
    };
    header.tensors.iter().map(held).sum::<u64>() + working
}

/// Refuses to load a model that cannot fit: the allocator aborts the process on failure, so
/// the check has to come first. Linux only (elsewhere the OS pages instead of failing).
fn check_memory(needed: u64) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if needed > available {
        return Err(Error::invalid(format!(
            "not enough memory to load this model: about {} MiB needed, {} MiB available. Close other programs or use a smaller model",
            needed >> 20,
            available >> 20
        )));
    }
    Ok(())
}

fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loaded models, most recently used last, within a memory budget.
pub struct LocalEngine {
    resident: Mutex<Vec<Arc<LocalModel>>>,
    /// Serialises loads so two requests for one model load it once.
    loading: Mutex<()>,
}

impl Default for LocalEngine {
    fn default() -> Self {
        LocalEngine {
            resident: Mutex::new(Vec::new()),
            loading: Mutex::new(()),
        }
    }
}

impl LocalEngine {
    /// The model `id` from `path`: resident, or loaded now (evicting the least recently used
    /// models beyond `budget_bytes`; the model just loaded always stays). Returns whether it
    /// had to be loaded.
    pub fn get(
        &self,
        id: &str,
        path: &Path,
        opts: &LoadOptions,
        budget_bytes: u64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(Arc<LocalModel>, bool)> {
        let _loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut r = self.resident.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = r.iter().position(|m| m.id == id) {
                let m = r.remove(i);
                r.push(m.clone());
                return Ok((m, false));
            }
        }
        let model = Arc::new(LocalModel::load(id, path, opts, progress)?);
        let mut r = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        r.push(model.clone());
        let mut used: u64 = r.iter().map(|m| m.report.resident_bytes).sum();
        while used > budget_bytes && r.len() > 1 {
            let old = r.remove(0);
            used -= old.report.resident_bytes;
            tracing::info!(model = old.id, "unloaded to stay within the memory budget");
        }
        Ok((model, true))
    }

    /// Ids of the resident models, most recently used last.
    pub fn resident(&self) -> Vec<String> {
        self.resident
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|m| m.id.clone())
            .collect()
    }

    pub fn models(&self) -> Vec<Arc<LocalModel>> {
        self.resident
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn unload(&self, id: &str) {
        self.resident
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| m.id != id);
    }
}
