//! The CPU text engine: llama-family decoders (llama, qwen2, qwen3) run straight from the GGUF
//! blocks with our own kernels ([`atelier_cpu`]), threads and buffers.
//!
//! candle's quantised models spend half of a small model's decode step outside the matrix
//! products (a new tensor per op, a thread-pool wake-up per product, activations quantised per
//! call) and have no SIMD kernels for the formats the default models ship in. This engine keeps
//! the shipped blocks, quantises each activation once per layer step, fuses the
//! products that share an input (q/k/v, gate/up) into one parallel job, and reuses every buffer
//! between steps. Results match candle's models to float rounding (see the tests); the candle
//! path remains for GPUs and for types without a kernel here.

use std::io::{Read, Seek, SeekFrom};

use atelier_cpu::ops::{
    Heads, Kv, Rope, attention, matmul, push_kv, rms_norm, rms_norm_in_place, silu,
};
use atelier_cpu::pool::Pool;
use atelier_cpu::quant::{self as quant, Acts, QMatrix};
use candle_core::quantized::gguf_file;

use crate::models::gguf;
use crate::{Error, Result};

/// A tensor as read from the file: dimensions (slowest first), type and bytes.
type RawTensor = (Vec<usize>, candle_core::quantized::GgmlDType, Vec<u8>);

/// Model shape and conventions, from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ff: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub rope_dim: usize,
    /// Rotate pairs (i, i + d/2) (qwen) rather than (2i, 2i + 1) (llama's GGUF layout).
    pub rope_neox: bool,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// Keys and values of past positions, per layer: `[position][kv head × head_dim]`, in f16.
#[derive(Default)]
struct Cache {
    k: Vec<Kv>,
    v: Vec<Kv>,
}

/// Buffers reused between forward calls.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: Acts,
    logits: Vec<f32>,
}

pub struct NativeModel {
    pub config: Config,
    embd: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `None`: the output projection is the embedding matrix (tied).
    output: Option<QMatrix>,
    cache: Vec<Cache>,
    /// cos/sin per position and rotated pair, grown as positions are reached.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    scratch: Scratch,
    pool: Option<Pool>,
    /// Bytes of weights held.
    pub weight_bytes: u64,
}

impl std::fmt::Debug for NativeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeModel")
            .field("config", &self.config)
            .finish()
    }
}

/// Architectures the native engine runs.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3"];

/// Why a file cannot run on the native engine (the caller falls back to candle), from the
/// header our bounded reader validated. The model list asks the same question.
pub fn unsupported_reason(header: &gguf::Header) -> Option<String> {
    let arch = header.str("general.architecture").unwrap_or("");
    if !ARCHITECTURES.contains(&arch) {
        return Some(format!("architecture {arch}"));
    }
    if header.get(&format!("{arch}.expert_count")).is_some() {
        return Some("mixture of experts".into());
    }
    header.tensors.iter().find_map(|t| {
        let name = gguf::ggml_type(t.ggml_type).map_or("unknown", |(n, _, _)| n);
        quant::gguf_type_named(name)
            .is_none()
            .then(|| format!("tensor {} is {name}", t.name))
    })
}

impl NativeModel {
    /// Reads the weights of `content` from `reader`.
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<NativeModel> {
        // Tensor types without a kernel are refused by `QMatrix::from_gguf`, other
        // architectures by `read_config`.
        let config = read_config(content)?;
        let total = content.tensor_infos.len() as u64;
        let mut loaded = 0u64;
        // What the weights hold in memory, which is not the file's size: F16 widens to F32, and
        // grouped formats pad to whole groups of eight rows.
        let weight_bytes = std::cell::Cell::new(0u64);
        let mut tensor = |name: &str| -> Result<Option<RawTensor>> {
            let Some(info) = content.tensor_infos.get(name) else {
                return Ok(None);
            };
            let dims = info.shape.dims().to_vec();
            let n: usize = dims.iter().product();
            let bytes = quant::gguf_bytes(info.ggml_dtype, n).ok_or_else(|| {
                Error::invalid(format!(
                    "tensor {name}: {n} values do not fill whole blocks"
                ))
            })?;
            let mut buf = vec![0u8; bytes];
            reader
                .seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
                .and_then(|_| reader.read_exact(&mut buf))
                .map_err(|e| Error::invalid(format!("tensor {name}: the file ends early ({e})")))?;
            loaded += 1;
            progress(loaded, total);
            Ok(Some((dims, info.ggml_dtype, buf)))
        };
        let mut matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let (dims, t, bytes) = tensor(name)?
                .ok_or_else(|| Error::invalid(format!("the model has no tensor {name}")))?;
            // candle's reader gives dimensions slowest first (the file stores them reversed).
            if dims.as_slice() != [rows, cols] {
                return Err(Error::invalid(format!(
                    "tensor {name} is {dims:?}, [{rows}, {cols}] expected"
                )));
            }
            let m = QMatrix::from_gguf(t, rows, cols, &bytes)
                .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))?;
            weight_bytes.set(weight_bytes.get() + m.held_bytes() as u64);
            Ok(m)
        };
        let c = &config;
        let q_dim = c.n_head * c.head_dim;
        let kv_dim = c.n_kv_head * c.head_dim;
        let embd = matrix("token_embd.weight", c.vocab, c.dim)?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(matrix("output.weight", c.vocab, c.dim)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let p = format!("blk.{l}");
            layers.push(Layer {
                wq: matrix(&format!("{p}.attn_q.weight"), q_dim, c.dim)?,
                wk: matrix(&format!("{p}.attn_k.weight"), kv_dim, c.dim)?,
                wv: matrix(&format!("{p}.attn_v.weight"), kv_dim, c.dim)?,
                wo: matrix(&format!("{p}.attn_output.weight"), c.dim, q_dim)?,
                gate: matrix(&format!("{p}.ffn_gate.weight"), c.ff, c.dim)?,
                up: matrix(&format!("{p}.ffn_up.weight"), c.ff, c.dim)?,
                down: matrix(&format!("{p}.ffn_down.weight"), c.dim, c.ff)?,
                attn_norm: Vec::new(),
                ffn_norm: Vec::new(),
                bq: None,
                bk: None,
                bv: None,
                q_norm: None,
                k_norm: None,
            });
        }
        // Vectors (norms, biases) are small; read them as f32.
        let mut vector = |name: &str, len: usize, required: bool| -> Result<Option<Vec<f32>>> {
            match tensor(name)? {
                None if required => Err(Error::invalid(format!("the model has no tensor {name}"))),
                None => Ok(None),
                Some((dims, t, bytes)) => {
                    let n: usize = dims.iter().product();
                    if n != len {
                        return Err(Error::invalid(format!(
                            "tensor {name} has {n} values, {len} expected"
                        )));
                    }
                    let m = QMatrix::from_gguf(t, 1, n, &bytes)
                        .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))?;
                    let mut v = vec![0f32; n];
                    m.dequantize_row(0, &mut v);
                    weight_bytes.set(weight_bytes.get() + 4 * n as u64);
                    Ok(Some(v))
                }
            }
        };
        for (l, layer) in layers.iter_mut().enumerate() {
            let p = format!("blk.{l}");
            layer.attn_norm =
                vector(&format!("{p}.attn_norm.weight"), c.dim, true)?.unwrap_or_default();
            layer.ffn_norm =
                vector(&format!("{p}.ffn_norm.weight"), c.dim, true)?.unwrap_or_default();
            layer.bq = vector(&format!("{p}.attn_q.bias"), q_dim, false)?;
            layer.bk = vector(&format!("{p}.attn_k.bias"), kv_dim, false)?;
            layer.bv = vector(&format!("{p}.attn_v.bias"), kv_dim, false)?;
            let qk_norm = c.arch == "qwen3";
            layer.q_norm = vector(&format!("{p}.attn_q_norm.weight"), c.head_dim, qk_norm)?;
            layer.k_norm = vector(&format!("{p}.attn_k_norm.weight"), c.head_dim, qk_norm)?;
        }
        let out_norm = vector("output_norm.weight", c.dim, true)?.unwrap_or_default();
        progress(total, total);
        Ok(NativeModel {
            cache: (0..config.n_layer).map(|_| Cache::default()).collect(),
            config,
            embd,
            layers,
            out_norm,
            output,
            rope_cos: Vec::new(),
            rope_sin: Vec::new(),
            scratch: Scratch::default(),
            pool: None,
            weight_bytes: weight_bytes.get(),
        })
    }

    /// Forgets every cached position.
    pub fn clear(&mut self) {
        for c in &mut self.cache {
            c.k.clear();
            c.v.clear();
        }
    }

    /// Logits for the last of `ids`, which sit at positions `pos..pos + ids.len()`; positions
    /// from `pos` on are replaced in the cache. `threads` sizes the worker pool.
    pub fn forward(&mut self, ids: &[u32], pos: usize, threads: usize) -> Result<Vec<f32>> {
        let t = ids.len();
        if t == 0 {
            return Err(Error::invalid("no tokens to run"));
        }
        let vocab = self.config.vocab;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let kv_dim = self.config.n_kv_head * self.config.head_dim;
        if self.cache[0].k.len() < pos * kv_dim {
            return Err(Error::invalid(format!(
                "position {pos} skips past the {} cached positions",
                self.cache[0].k.len() / kv_dim.max(1)
            )));
        }
        let threads = threads.max(1);
        if self.pool.as_ref().map(Pool::threads) != Some(threads) {
            self.pool = None;
            self.pool = Some(
                Pool::new(threads)
                    .map_err(|e| Error::Internal(format!("cannot start model threads: {e}")))?,
            );
        }
        self.grow_rope(pos + t);

        let NativeModel {
            config: c,
            embd,
            layers,
            out_norm,
            output,
            cache,
            rope_cos,
            rope_sin,
            scratch: s,
            pool,
            ..
        } = self;
        let q_dim = c.n_head * c.head_dim;
        let pool = pool
            .as_ref()
            .ok_or_else(|| Error::Internal("no model threads".into()))?;
        let panicked = |_| Error::Internal("a model thread failed".into());

        s.x.resize(t * c.dim, 0.0);
        for (row, &id) in s.x.chunks_exact_mut(c.dim).zip(ids) {
            embd.dequantize_row(id as usize, row);
        }
        let rope = Rope {
            cos: rope_cos,
            sin: rope_sin,
            pairs: c.rope_dim / 2,
            neox: c.rope_neox,
            rope_dim: c.rope_dim,
        };
        for (layer, cache) in layers.iter().zip(cache.iter_mut()) {
            // Attention.
            rms_norm(&s.x, &layer.attn_norm, c.eps, &mut s.xn);
            let needs = layer.wq.needs().or(layer.wk.needs()).or(layer.wv.needs());
            s.acts.quantize(&s.xn, c.dim, needs);
            s.q.resize(t * q_dim, 0.0);
            s.k.resize(t * kv_dim, 0.0);
            s.v.resize(t * kv_dim, 0.0);
            matmul(
                pool,
                &s.acts,
                t,
                &mut [
                    (&layer.wq, &mut s.q),
                    (&layer.wk, &mut s.k),
                    (&layer.wv, &mut s.v),
                ],
            )
            .map_err(panicked)?;
            for (b, y) in [
                (&layer.bq, &mut s.q),
                (&layer.bk, &mut s.k),
                (&layer.bv, &mut s.v),
            ] {
                if let Some(b) = b {
                    for row in y.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                    }
                }
            }
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(&mut s.q, w, c.eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut s.k, w, c.eps);
            }
            for i in 0..t {
                rope.apply(&mut s.q[i * q_dim..(i + 1) * q_dim], c.head_dim, pos + i);
                rope.apply(&mut s.k[i * kv_dim..(i + 1) * kv_dim], c.head_dim, pos + i);
            }
            cache.k.truncate(pos * kv_dim);
            cache.v.truncate(pos * kv_dim);
            push_kv(&mut cache.k, &s.k);
            push_kv(&mut cache.v, &s.v);
            s.att.resize(t * q_dim, 0.0);
            let heads = Heads {
                n_head: c.n_head,
                n_kv_head: c.n_kv_head,
                head_dim: c.head_dim,
            };
            attention(pool, heads, &s.q, &cache.k, &cache.v, pos, t, &mut s.att)
                .map_err(panicked)?;
            s.acts.quantize(&s.att, q_dim, layer.wo.needs());
            s.o.resize(t * c.dim, 0.0);
            matmul(pool, &s.acts, t, &mut [(&layer.wo, &mut s.o)]).map_err(panicked)?;
            s.x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);

            // Feed-forward.
            rms_norm(&s.x, &layer.ffn_norm, c.eps, &mut s.xn);
            s.acts
                .quantize(&s.xn, c.dim, layer.gate.needs().or(layer.up.needs()));
            s.gate.resize(t * c.ff, 0.0);
            s.up.resize(t * c.ff, 0.0);
            matmul(
                pool,
                &s.acts,
                t,
                &mut [(&layer.gate, &mut s.gate), (&layer.up, &mut s.up)],
            )
            .map_err(panicked)?;
            s.gate
                .iter_mut()
                .zip(&s.up)
                .for_each(|(g, u)| *g = silu(*g) * u);
            s.acts.quantize(&s.gate, c.ff, layer.down.needs());
            matmul(pool, &s.acts, t, &mut [(&layer.down, &mut s.o)]).map_err(panicked)?;
            s.x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);
        }
        // Only the last position's logits are needed.
        let last = &s.x[(t - 1) * c.dim..];
        rms_norm(last, out_norm, c.eps, &mut s.xn);
        let out = output.as_ref().unwrap_or(embd);
        s.acts.quantize(&s.xn, c.dim, out.needs());
        s.logits.resize(c.vocab, 0.0);
        matmul(pool, &s.acts, 1, &mut [(out, &mut s.logits)]).map_err(panicked)?;
        Ok(s.logits.clone())
    }

    fn grow_rope(&mut self, positions: usize) {
        let pairs = self.config.rope_dim / 2;
        let have = self.rope_cos.len() / pairs.max(1);
        if have >= positions || pairs == 0 {
            return;
        }
        // Grow in steps so decode does not recompute the table every token.
        let target = positions.max(have * 2).max(256);
        let d = self.config.rope_dim as f32;
        let theta: Vec<f32> = (0..pairs)
            .map(|i| 1f32 / self.config.rope_base.powf((2 * i) as f32 / d))
            .collect();
        for p in have..target {
            for th in &theta {
                let a = p as f32 * th;
                self.rope_cos.push(a.cos());
                self.rope_sin.push(a.sin());
            }
        }
    }
}

fn read_config(content: &gguf_file::Content) -> Result<Config> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(Error::invalid(format!(
            "the native engine cannot run architecture “{arch}”"
        )));
    }
    let get = |key: &str| -> Option<&gguf_file::Value> { md.get(&format!("{arch}.{key}")) };
    let uint = |key: &str| -> Result<usize> {
        get(key)
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
            .map(|v| v as usize)
            .ok_or_else(|| Error::invalid(format!("the model's metadata lacks {arch}.{key}")))
    };
    let float = |key: &str| get(key).and_then(|v| v.to_f32().ok());
    let n_head = uint("attention.head_count")?;
    let dim = uint("embedding_length")?;
    let n_kv_head = uint("attention.head_count_kv").unwrap_or(n_head);
    let head_dim = uint("attention.key_length").unwrap_or(dim.checked_div(n_head).unwrap_or(0));
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .ok_or_else(|| Error::invalid("the model has no token_embd.weight"))?;
    let config = Config {
        n_layer: uint("block_count")?,
        dim,
        n_head,
        n_kv_head,
        head_dim,
        ff: uint("feed_forward_length")?,
        vocab,
        eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_base: float("rope.freq_base").unwrap_or(10_000.0),
        rope_dim: uint("rope.dimension_count").unwrap_or(head_dim),
        rope_neox: arch != "llama",
        arch,
    };
    let ok = config.n_head > 0
        && config.n_kv_head > 0
        && config.n_head.is_multiple_of(config.n_kv_head)
        && config.head_dim > 0
        && config.rope_dim <= config.head_dim
        && config.rope_dim.is_multiple_of(2)
        && config.dim.is_multiple_of(32)
        && (config.n_head * config.head_dim).is_multiple_of(32)
        && config.ff.is_multiple_of(32);
    if !ok {
        return Err(Error::invalid(format!(
            "the model's shape is inconsistent or unsupported: {config:?}"
        )));
    }
    Ok(config)
}
