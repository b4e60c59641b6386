//! Stable Diffusion models on disk: a diffusers folder (`unet/`, `vae/`, `text_encoder/`,
//! `tokenizer/`, `scheduler/`), described from its config files and safetensors headers alone
//! (bounded reads, nothing loaded), and loaded into our UNet, VAE and CLIP text model.
//!
//! Pickled weights (`.ckpt`, `.bin`, `.pt`) are refused: unpickling runs code from the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clip::{Activation, ClipConfig, ClipText};
use super::ldm;
use super::prompt::ClipTokenizer;
use super::sampler::{NoiseSchedule, Prediction, Spacing};
use crate::error::{Error, Result};

/// A safetensors header may not claim more than this (real ones are well under 1 MiB).
const MAX_HEADER_BYTES: u64 = 64 << 20;
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The model family, from the UNet's shape and the scheduler's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Sd15,
    Sd21,
    SdTurbo,
    Sdxl,
    SdxlTurbo,
    /// Another shape (test models, small distilled UNets): runs, with no size defaults.
    Custom,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::Sd15 => "SD 1.5",
            Family::Sd21 => "SD 2.1",
            Family::SdTurbo => "SD-Turbo",
            Family::Sdxl => "SDXL",
            Family::SdxlTurbo => "SDXL-Turbo",
            Family::Custom => "custom",
        }
    }
    /// Its training size: the default width and height.
    pub fn native_size(self) -> u32 {
        match self {
            Family::Sd21 => 768,
            Family::Sdxl => 1024,
            _ => 512,
        }
    }
}

/// One weights file of a model.
#[derive(Debug, Clone, Serialize)]
pub struct Piece {
    /// `unet`, `vae`, `text_encoder` or (SDXL) `text_encoder_2`.
    pub role: String,
    pub file: PathBuf,
    pub bytes: u64,
    pub parameters: u64,
    /// The tensors' type in the file (`F32`, `F16`, `BF16`).
    pub dtype: String,
}

/// What the model list shows, read without loading any weights.
#[derive(Debug, Clone, Serialize)]
pub struct ImageModelInfo {
    pub id: String,
    pub path: PathBuf,
    pub family: Family,
    pub prediction: Prediction,
    /// 9 for inpainting UNets, 4 otherwise.
    pub unet_in_channels: usize,
    pub default_size: u32,
    pub pieces: Vec<Piece>,
    pub size_bytes: u64,
    /// Defaults the form takes when the model is picked (turbo models: 1 step, no CFG).
    pub recommended_steps: u32,
    pub recommended_cfg: f64,
    /// The single-file checkpoint this folder was converted from, if it was.
    pub converted_from: Option<ConvertedFrom>,
    /// The memory check's estimate for one image at the default size and CFG on the CPU
    /// (`pipeline::memory_need`), so the list can say what a model asks of this machine.
    pub cpu_memory_bytes: u64,
}

/// The original of a model imported from a single `.safetensors` checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertedFrom {
    pub file: String,
    /// Of the whole original file: A1111's "Model hash" is its first 10 hex digits.
    pub sha256: String,
}

/// Parsed headers of a safetensors file.
#[derive(Debug, Clone)]
pub struct SafetensorsSummary {
    pub tensors: usize,
    pub parameters: u64,
    pub dtype: String,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// One tensor of a safetensors file, as its header describes it.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    /// Byte range from the start of the file.
    start: u64,
    len: u64,
}

/// Reads and checks a safetensors file's header against its size with bounded reads: the
/// header length, each tensor's type, shape and byte range. A truncated file or an absurd
/// header is refused before any tensor is read.
fn read_header(path: &Path) -> Result<(std::fs::File, Vec<(String, TensorEntry)>)> {
    let bad = |why: String| {
        Error::invalid(format!(
            "{} is not a usable safetensors file: {why}",
            path.display()
        ))
    };
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let file_len = f
        .metadata()
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?
        .len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes)
        .map_err(|_| bad("it is shorter than a header".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len + 8 > file_len {
        return Err(bad(format!(
            "its header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read its header: {e}")))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("its header is not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or("");
        let size = dtype_size(dtype)
            .ok_or_else(|| bad(format!("tensor {name} has an unknown type \"{dtype}\"")))?;
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| bad(format!("tensor {name} has no shape")))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| bad(format!("tensor {name} has a bad shape")))
            })
            .collect::<Result<_>>()?;
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("tensor {name} claims an absurd shape")))?;
        let offsets = info["data_offsets"]
            .as_array()
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad(format!("tensor {name} has no byte range")))?;
        let expected = count
            .checked_mul(size)
            .ok_or_else(|| bad(format!("tensor {name} claims an absurd size")))?;
        if offsets.0 > offsets.1 || offsets.1 > data_len || offsets.1 - offsets.0 != expected {
            return Err(bad(format!(
                "tensor {name} lies outside the file (the file may be truncated)"
            )));
        }
        entries.push((
            name.clone(),
            TensorEntry {
                dtype: dtype.to_owned(),
                shape,
                start: data_start + offsets.0,
                len: expected,
            },
        ));
    }
    Ok((f, entries))
}

/// Checks a safetensors file (see [`read_header`]) and sums up its tensors.
pub fn check_safetensors(path: &Path) -> Result<SafetensorsSummary> {
    let (_, entries) = read_header(path)?;
    if entries.is_empty() {
        return Err(Error::invalid(format!(
            "{} is not a usable safetensors file: it holds no tensors",
            path.display()
        )));
    }
    let mut parameters = 0u64;
    let mut dtype_counts: Vec<(String, u64)> = Vec::new();
    for (_, t) in &entries {
        let count = t.shape.iter().map(|&d| d as u64).product::<u64>();
        parameters += count;
        match dtype_counts.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, n)) => *n += count,
            None => dtype_counts.push((t.dtype.clone(), count)),
        }
    }
    dtype_counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Ok(SafetensorsSummary {
        tensors: entries.len(),
        parameters,
        dtype: dtype_counts[0].0.clone(),
    })
}

/// A safetensors file read one tensor at a time into memory of its own (no mapping): a
/// loaded model then holds its weights once, where a mapped file would also keep every
/// page it was copied from resident until the load ends (twice the model at the peak).
struct FileTensors {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
    entries: std::collections::HashMap<String, TensorEntry>,
    /// f16 and bf16 tensors stay in their type whatever is asked for (see [`text_weights`]).
    keep_half: bool,
}

impl FileTensors {
    fn open(path: &Path) -> Result<FileTensors> {
        let (file, entries) = read_header(path)?;
        Ok(FileTensors {
            path: path.to_owned(),
            file: std::sync::Mutex::new(file),
            entries: entries.into_iter().collect(),
            keep_half: false,
        })
    }

    /// Tensor `name`'s bytes read into `buf`, which must be exactly as long.
    fn read_into(&self, name: &str, t: &TensorEntry, buf: &mut [u8]) -> candle_core::Result<()> {
        use std::io::{Seek, SeekFrom};
        if buf.len() as u64 != t.len {
            candle_core::bail!(
                "tensor {name} in {} has the wrong size",
                self.path.display()
            )
        }
        let mut f = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("a weights read panicked".into()))?;
        f.seek(SeekFrom::Start(t.start))
            .and_then(|_| f.read_exact(buf))
            .map_err(|e| {
                candle_core::Error::Msg(format!(
                    "cannot read {name} from {}: {e}",
                    self.path.display()
                ))
            })
    }

    fn entry(&self, name: &str) -> candle_core::Result<&TensorEntry> {
        match self.entries.get(name) {
            Some(t) => Ok(t),
            None => candle_core::bail!("{} has no tensor {name}", self.path.display()),
        }
    }

    /// An f32 tensor read straight into the memory the tensor keeps (safetensors is
    /// little-endian, as are the machines this runs on): no byte buffer, no copy.
    #[cfg(target_endian = "little")]
    fn read_f32(&self, name: &str, t: &TensorEntry) -> candle_core::Result<candle_core::Tensor> {
        let n: usize = t.shape.iter().product();
        if n as u64 * 4 != t.len {
            candle_core::bail!(
                "tensor {name} in {} has the wrong size",
                self.path.display()
            )
        }
        let mut values = vec![0f32; n];
        // SAFETY: the f32s' memory viewed as bytes, within the vector; every bit pattern is a
        // valid f32.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), n * 4) };
        self.read_into(name, t, bytes)?;
        candle_core::Tensor::from_vec(values, t.shape.as_slice(), &Device::Cpu)
    }
}

impl candle_nn::var_builder::SimpleBackend for FileTensors {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        // Checked against the header before reading: a loader that tries two shapes (the VAE's
        // attention weights) then reads the tensor once.
        if let Some(t) = self.entries.get(name)
            && t.shape != shape.dims()
        {
            candle_core::bail!(
                "tensor {name} is {:?} in {}, expected {:?}",
                t.shape,
                self.path.display(),
                shape.dims()
            );
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let t = self.entry(name)?;
        let file_dtype = match t.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => candle_core::bail!("tensor {name} is {other}, not a float type"),
        };
        #[cfg(target_endian = "little")]
        if file_dtype == DType::F32 {
            return self.read_f32(name, t)?.to_dtype(dtype)?.to_device(dev);
        }
        let mut bytes = vec![0u8; t.len as usize];
        self.read_into(name, t, &mut bytes)?;
        let dtype = if self.keep_half { file_dtype } else { dtype };
        candle_core::Tensor::from_raw_buffer(&bytes, file_dtype, &t.shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!(
            "{} is {} bytes; a config file is far smaller",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{} is not valid JSON: {e}", path.display())))
}

const PICKLE_EXTENSIONS: [&str; 4] = ["ckpt", "bin", "pt", "pth"];

pub(super) fn is_pickle(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

pub fn pickle_refusal(path: &Path) -> Error {
    Error::invalid(format!(
        "{} is a pickled PyTorch file: loading it can run code hidden in the file, so Atelier refuses it. Use the model's .safetensors download instead",
        path.display()
    ))
}

/// The weights file of a component folder: the full-precision safetensors, else the fp16 one.
fn weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if is_pickle(&e.path()) {
                return Err(pickle_refusal(&e.path()));
            }
        }
    }
    Err(Error::invalid(format!(
        "{} has no {stem}.safetensors: the model folder is incomplete",
        dir.display()
    )))
}

fn get_usize(v: &Value, key: &str, default: Option<usize>) -> Result<usize> {
    match v.get(key) {
        Some(x) => x
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| Error::invalid(format!("config value {key} is not a whole number"))),
        None => default.ok_or_else(|| Error::invalid(format!("the config has no {key}"))),
    }
}

fn usize_list(v: &Value, key: &str, n: usize, default: usize) -> Result<Vec<usize>> {
    match v.get(key) {
        None => Ok(vec![default; n]),
        Some(Value::Number(x)) => Ok(vec![x.as_u64().unwrap_or(default as u64) as usize; n]),
        Some(Value::Array(a)) if a.len() == n => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| Error::invalid(format!("config list {key} is not numbers")))
            })
            .collect(),
        Some(_) => Err(Error::invalid(format!(
            "config value {key} does not match the {n} UNet blocks"
        ))),
    }
}

/// SDXL's extra conditioning from a UNet config (`addition_embed_type: "text_time"`); `None`
/// for UNets without one, an error for other kinds.
pub fn text_time_config(v: &Value) -> Result<Option<super::unet::TextTime>> {
    match v.get("addition_embed_type").and_then(|x| x.as_str()) {
        None => Ok(None),
        Some("text_time") => Ok(Some(super::unet::TextTime {
            time_dim: get_usize(v, "addition_time_embed_dim", None)?,
            input_dim: get_usize(v, "projection_class_embeddings_input_dim", None)?,
        })),
        Some(other) => Err(Error::invalid(format!(
            "the UNet's extra conditioning \"{other}\" is not supported (SDXL's text_time is)"
        ))),
    }
}

/// The UNet config (diffusers `unet/config.json`) in candle's terms, with its input channels.
pub fn unet_config(v: &Value) -> Result<(UNet2DConditionModelConfig, usize, usize)> {
    text_time_config(v)?;
    let channels: Vec<usize> = v["block_out_channels"]
        .as_array()
        .ok_or_else(|| Error::invalid("the UNet config has no block_out_channels"))?
        .iter()
        .map(|x| x.as_u64().map(|x| x as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::invalid("block_out_channels is not a list of numbers"))?;
    let n = channels.len();
    if n == 0 || n > 6 {
        return Err(Error::invalid(
            "the UNet config has an unusable number of blocks",
        ));
    }
    let down: Vec<String> = v["down_block_types"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    if down.len() != n {
        return Err(Error::invalid(
            "down_block_types does not match block_out_channels",
        ));
    }
    let heads = usize_list(v, "attention_head_dim", n, 8)?;
    let depth = usize_list(v, "transformer_layers_per_block", n, 1)?;
    let blocks = (0..n)
        .map(|i| BlockConfig {
            out_channels: channels[i],
            use_cross_attn: down[i].starts_with("CrossAttn").then_some(depth[i]),
            attention_head_dim: heads[i],
        })
        .collect();
    let cfg = UNet2DConditionModelConfig {
        center_input_sample: v["center_input_sample"].as_bool().unwrap_or(false),
        flip_sin_to_cos: v["flip_sin_to_cos"].as_bool().unwrap_or(true),
        freq_shift: v["freq_shift"].as_f64().unwrap_or(0.0),
        blocks,
        layers_per_block: get_usize(v, "layers_per_block", Some(2))?,
        downsample_padding: get_usize(v, "downsample_padding", Some(1))?,
        mid_block_scale_factor: v["mid_block_scale_factor"].as_f64().unwrap_or(1.0),
        norm_num_groups: get_usize(v, "norm_num_groups", Some(32))?,
        norm_eps: v["norm_eps"].as_f64().unwrap_or(1e-5),
        cross_attention_dim: get_usize(v, "cross_attention_dim", None)?,
        sliced_attention_size: None,
        use_linear_projection: v["use_linear_projection"].as_bool().unwrap_or(false),
    };
    Ok((
        cfg,
        get_usize(v, "in_channels", Some(4))?,
        get_usize(v, "out_channels", Some(4))?,
    ))
}

pub fn vae_config(v: &Value) -> Result<(AutoEncoderKLConfig, f64)> {
    let channels: Vec<usize> = v["block_out_channels"]
        .as_array()
        .ok_or_else(|| Error::invalid("the VAE config has no block_out_channels"))?
        .iter()
        .map(|x| x.as_u64().map(|x| x as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::invalid("the VAE's block_out_channels is not a list of numbers"))?;
    if channels.is_empty() {
        return Err(Error::invalid("the VAE config has no blocks"));
    }
    Ok((
        AutoEncoderKLConfig {
            block_out_channels: channels,
            layers_per_block: get_usize(v, "layers_per_block", Some(2))?,
            latent_channels: get_usize(v, "latent_channels", Some(4))?,
            norm_num_groups: get_usize(v, "norm_num_groups", Some(32))?,
            use_quant_conv: v["use_quant_conv"].as_bool().unwrap_or(true),
            use_post_quant_conv: v["use_post_quant_conv"].as_bool().unwrap_or(true),
        },
        v["scaling_factor"].as_f64().unwrap_or(0.18215),
    ))
}

/// The text encoder's config (transformers' `CLIPTextConfig`): CLIP ViT-L (SD 1.x, quick GELU)
/// or OpenCLIP ViT-H (SD 2.x, exact GELU), of any size.
pub fn text_config(v: &Value) -> Result<ClipConfig> {
    let hidden = get_usize(v, "hidden_size", None)?;
    let activation = match v["hidden_act"].as_str().unwrap_or("quick_gelu") {
        "quick_gelu" => Activation::QuickGelu,
        "gelu" => Activation::Gelu,
        other => {
            return Err(Error::invalid(format!(
                "the text encoder's activation ({other}) is not one Atelier can run (quick_gelu and gelu are)"
            )));
        }
    };
    Ok(ClipConfig {
        vocab_size: get_usize(v, "vocab_size", Some(49408))?,
        hidden_size: hidden,
        intermediate_size: get_usize(v, "intermediate_size", None)?,
        layers: get_usize(v, "num_hidden_layers", None)?,
        heads: get_usize(v, "num_attention_heads", None)?,
        max_positions: get_usize(v, "max_position_embeddings", Some(77))?,
        activation,
        // SDXL's second encoder is a CLIPTextModelWithProjection (the pooled embedding).
        projection: v["architectures"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "CLIPTextModelWithProjection"))
            .then(|| get_usize(v, "projection_dim", Some(hidden)))
            .transpose()?,
    })
}

pub fn noise_schedule(v: &Value) -> Result<NoiseSchedule> {
    let prediction = match v["prediction_type"].as_str().unwrap_or("epsilon") {
        "epsilon" => Prediction::Epsilon,
        "v_prediction" => Prediction::VPrediction,
        other => {
            return Err(Error::invalid(format!(
                "prediction type \"{other}\" is not supported"
            )));
        }
    };
    let spacing = match v["timestep_spacing"].as_str().unwrap_or("leading") {
        "trailing" => Spacing::Trailing,
        "linspace" => Spacing::Linspace,
        _ => Spacing::Leading,
    };
    let schedule = v["beta_schedule"].as_str().unwrap_or("scaled_linear");
    if schedule != "scaled_linear" {
        return Err(Error::invalid(format!(
            "beta schedule \"{schedule}\" is not supported (scaled_linear is)"
        )));
    }
    let mut s = NoiseSchedule::scaled_linear(
        v["beta_start"].as_f64().unwrap_or(0.00085),
        v["beta_end"].as_f64().unwrap_or(0.012),
        get_usize(v, "num_train_timesteps", Some(1000))?,
        prediction,
        spacing,
    );
    s.steps_offset = get_usize(v, "steps_offset", Some(1))?;
    s.set_alpha_to_one = v["set_alpha_to_one"].as_bool().unwrap_or(false);
    Ok(s)
}

fn check_tokenizer(tok: &Path) -> Result<()> {
    if !tok.join("tokenizer.json").is_file()
        && !(tok.join("vocab.json").is_file() && tok.join("merges.txt").is_file())
    {
        return Err(Error::invalid(format!(
            "{} has no CLIP tokenizer (vocab.json and merges.txt)",
            tok.display()
        )));
    }
    Ok(())
}

/// SDXL's second text encoder (`text_encoder_2/`, OpenCLIP bigG with its projection).
fn sdxl_second_encoder(dir: &Path) -> Result<ClipConfig> {
    let path = dir.join("text_encoder_2").join("config.json");
    if !path.is_file() {
        return Err(Error::invalid(format!(
            "{} has an SDXL UNet but no text_encoder_2/: the model folder is incomplete",
            dir.display()
        )));
    }
    text_config(&read_json(&path)?)
}

/// An SDXL UNet reads both encoders' states side by side and the second's pooled embedding
/// with six embedded ids: the three configs must agree.
fn check_sdxl_shapes(
    unet: &UNet2DConditionModelConfig,
    text_time: super::unet::TextTime,
    text: &ClipConfig,
    text_2: &ClipConfig,
) -> Result<()> {
    let Some(pooled) = text_2.projection else {
        return Err(Error::invalid(
            "SDXL's text_encoder_2 must be a CLIPTextModelWithProjection (it gives the pooled embedding)",
        ));
    };
    if text.hidden_size + text_2.hidden_size != unet.cross_attention_dim
        || pooled + 6 * text_time.time_dim != text_time.input_dim
    {
        return Err(Error::invalid(format!(
            "the SDXL components do not fit together: text encoders of {} and {} (pooled {pooled}) for a UNet reading {} and {}",
            text.hidden_size, text_2.hidden_size, unet.cross_attention_dim, text_time.input_dim
        )));
    }
    Ok(())
}

/// Reads a model folder's configs and weight headers (no weights) and describes it.
pub fn describe(dir: &Path) -> Result<ImageModelInfo> {
    if is_pickle(dir) {
        return Err(pickle_refusal(dir));
    }
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a model folder (a diffusers folder with unet/, vae/, text_encoder/ and tokenizer/) or a .safetensors checkpoint",
            dir.display()
        )));
    }
    let unet_json = read_json(&dir.join("unet").join("config.json"))?;
    let (unet_cfg, in_channels, _) = unet_config(&unet_json)?;
    let (_, _) = vae_config(&read_json(&dir.join("vae").join("config.json"))?)?;
    let text = text_config(&read_json(&dir.join("text_encoder").join("config.json"))?)?;
    let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
    let schedule = if scheduler_path.is_file() {
        noise_schedule(&read_json(&scheduler_path)?)?
    } else {
        NoiseSchedule::stable_diffusion(Prediction::Epsilon)
    };
    check_tokenizer(&dir.join("tokenizer"))?;
    let text_time = text_time_config(&unet_json)?;
    let mut roles = vec![
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ];
    if let Some(tt) = text_time {
        let text_2 = sdxl_second_encoder(dir)?;
        check_sdxl_shapes(&unet_cfg, tt, &text, &text_2)?;
        check_tokenizer(&dir.join("tokenizer_2"))?;
        roles.push(("text_encoder_2", "model"));
    }
    let mut pieces = Vec::new();
    for (role, stem) in roles {
        let file = weights_file(&dir.join(role), stem)?;
        let summary = check_safetensors(&file)?;
        let bytes = std::fs::metadata(&file)
            .map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?
            .len();
        pieces.push(Piece {
            role: role.into(),
            file,
            bytes,
            parameters: summary.parameters,
            dtype: summary.dtype,
        });
    }
    let family = match (
        if text_time.is_some() {
            0 // SDXL: told apart below
        } else {
            unet_cfg.cross_attention_dim
        },
        &text,
        schedule.prediction,
        schedule.spacing,
    ) {
        (768, c, _, _) if c.hidden_size == 768 && c.activation == Activation::QuickGelu => {
            Family::Sd15
        }
        (1024, c, _, Spacing::Trailing)
            if c.hidden_size == 1024 && c.activation == Activation::Gelu =>
        {
            Family::SdTurbo
        }
        (1024, c, _, _) if c.hidden_size == 1024 && c.activation == Activation::Gelu => {
            Family::Sd21
        }
        _ => Family::Custom,
    };
    let family = match (text_time, schedule.spacing) {
        (Some(_), Spacing::Trailing) if unet_cfg.cross_attention_dim == 2048 => Family::SdxlTurbo,
        (Some(_), _) if unet_cfg.cross_attention_dim == 2048 => Family::Sdxl,
        _ => family,
    };
    let (recommended_steps, recommended_cfg) = match family {
        Family::SdTurbo | Family::SdxlTurbo => (1, 0.0),
        Family::Sdxl => (25, 5.0),
        _ => (25, 7.0),
    };
    let index = dir.join("model_index.json");
    let converted_from = if index.is_file() {
        serde_json::from_value(read_json(&index)?["_atelier_converted_from"].clone()).ok()
    } else {
        None
    };
    let mut info = ImageModelInfo {
        id: model_id(dir),
        path: dir.to_owned(),
        family,
        prediction: schedule.prediction,
        unet_in_channels: in_channels,
        // The UNet's `sample_size` is its training size in latents (64 for SD 1.5).
        default_size: unet_json["sample_size"]
            .as_u64()
            .map(|s| (s as u32 * 8).clamp(64, 2048))
            .unwrap_or_else(|| family.native_size()),
        size_bytes: pieces.iter().map(|p| p.bytes).sum(),
        pieces,
        recommended_steps,
        recommended_cfg,
        converted_from,
        cpu_memory_bytes: 0,
    };
    info.cpu_memory_bytes = super::pipeline::memory_need(
        &info,
        &Device::Cpu,
        info.default_size,
        info.default_size,
        super::params::cfg_applies(recommended_cfg),
    )
    .peak();
    Ok(info)
}

pub fn model_id(dir: &Path) -> String {
    dir.file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Input channels of an inpainting UNet: 4 latent, 1 mask, 4 masked-image latent.
pub const INPAINT_IN_CHANNELS: usize = 9;

/// SDXL's second text encoder (OpenCLIP bigG: penultimate states beside the first encoder's,
/// and the pooled embedding), its tokenizer (padding with "!"), and whether an empty negative
/// prompt is zeros rather than the encoding of "" (`force_zeros_for_empty_prompt`).
pub struct SdxlText {
    pub text: ClipText,
    pub tokenizer: ClipTokenizer,
    pub zero_empty_negative: bool,
}

/// A model ready to run.
pub struct LoadedModel {
    pub info: ImageModelInfo,
    pub unet: super::unet::UNet,
    pub vae: super::vae::Vae,
    pub text: ClipText,
    pub tokenizer: ClipTokenizer,
    /// SDXL's second text encoder and what goes with it; `None` for SD 1.x and 2.x.
    pub sdxl: Option<SdxlText>,
    pub schedule: NoiseSchedule,
    pub vae_scale: f64,
    pub latent_channels: usize,
    pub device: Device,
    pub dtype: DType,
    /// The VAE again in f32, loaded the first time an f16 decode overflows (see
    /// `pipeline::decode`); `None` inside until then.
    pub vae_f32: std::sync::OnceLock<super::vae::Vae>,
    vae_source: (PathBuf, AutoEncoderKLConfig),
}

impl LoadedModel {
    /// The VAE in f32 on the model's device (itself when the model is f32), loaded once.
    pub fn vae_in_f32(&self) -> Result<&super::vae::Vae> {
        if self.dtype == DType::F32 {
            return Ok(&self.vae);
        }
        if let Some(v) = self.vae_f32.get() {
            return Ok(v);
        }
        let (file, cfg) = &self.vae_source;
        let vae =
            super::vae::Vae::load(weights(file, DType::F32, &self.device)?, cfg).map_err(|e| {
                Error::invalid(format!(
                    "the VAE weights in {} do not load in f32: {e}",
                    file.display()
                ))
            })?;
        // Two decodes racing here both load it; the second copy is dropped.
        Ok(self.vae_f32.get_or_init(|| vae))
    }
}

/// The weights in `file` as `dtype` on `device`, read tensor by tensor as the model asks.
pub(super) fn weights(file: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
        Box::new(FileTensors::open(file)?);
    Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
}

/// A text encoder's weights. On the CPU, tensors the file holds in f16 or bf16 stay in that
/// type (f32 ones stay f32): `ClipText` computes in f32 and widens each matrix as it uses it,
/// once per prompt, so the results are those of widening at load (the conversion is exact)
/// while the encoders hold half the memory (1.6 GB less for SDXL's two from an f16 file).
/// Elsewhere they are loaded in f32, as before.
pub(super) fn text_weights(file: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    if !device.is_cpu() {
        return weights(file, DType::F32, device);
    }
    let mut tensors = FileTensors::open(file)?;
    tensors.keep_half = true;
    Ok(VarBuilder::from_backend(
        Box::new(tensors),
        DType::F32,
        device.clone(),
    ))
}

/// Loads a described model onto `device` (f16 on GPUs, f32 on the CPU).
pub fn load(info: ImageModelInfo, device: &Device) -> Result<LoadedModel> {
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    };
    load_as(info, device, dtype)
}

/// Loads a described model onto `device` with its UNet and VAE in `dtype` (CLIP computes in f32).
pub fn load_as(info: ImageModelInfo, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let dir = info.path.clone();
    let mismatch = |what: &str| {
        let dir = dir.clone();
        let what = what.to_owned();
        move |e: candle_core::Error| {
            Error::invalid(format!(
                "the {what} weights in {} do not match its config: {e}",
                dir.display()
            ))
        }
    };
    let file = |role: &str| {
        info.pieces
            .iter()
            .find(|p| p.role == role)
            .map(|p| p.file.clone())
            .ok_or_else(|| Error::invalid(format!("the model has no {role}")))
    };
    let unet_json = read_json(&dir.join("unet").join("config.json"))?;
    let (unet_cfg, in_channels, out_channels) = unet_config(&unet_json)?;
    let text_time = text_time_config(&unet_json)?;
    let unet = super::unet::UNet::load(
        weights(&file("unet")?, dtype, device)?,
        in_channels,
        out_channels,
        &unet_cfg,
        text_time,
    )
    .map_err(mismatch("UNet"))?;
    let (vae_cfg, vae_scale) = vae_config(&read_json(&dir.join("vae").join("config.json"))?)?;
    let latent_channels = vae_cfg.latent_channels;
    let vae_file = file("vae")?;
    let vae = super::vae::Vae::load(weights(&vae_file, dtype, device)?, &vae_cfg)
        .map_err(mismatch("VAE"))?;
    // CLIP computes in f32 everywhere (f16 CLIP drifts); on the CPU a half-precision file's
    // matrices are held as they are and widened as they are used.
    let text_vb = text_weights(&file("text_encoder")?, device)?;
    let text_cfg = text_config(&read_json(&dir.join("text_encoder").join("config.json"))?)?;
    let text = ClipText::load(text_vb, &text_cfg).map_err(mismatch("text encoder"))?;
    // OpenCLIP's tokenizers pad with "!", OpenAI's with the end-of-text token.
    let pad_with = (text_cfg.activation == Activation::Gelu).then_some("!");
    let tokenizer = ClipTokenizer::load(&dir.join("tokenizer"), pad_with)?;
    let sdxl = match text_time {
        None => None,
        Some(_) => {
            let cfg = sdxl_second_encoder(&dir)?;
            let vb = text_weights(&file("text_encoder_2")?, device)?;
            let index = dir.join("model_index.json");
            let index = if index.is_file() {
                read_json(&index)?
            } else {
                Value::Null
            };
            Some(SdxlText {
                text: ClipText::load(vb, &cfg).map_err(mismatch("second text encoder"))?,
                tokenizer: ClipTokenizer::load(&dir.join("tokenizer_2"), Some("!"))?,
                zero_empty_negative: index["force_zeros_for_empty_prompt"]
                    .as_bool()
                    .unwrap_or(true),
            })
        }
    };
    let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
    let schedule = if scheduler_path.is_file() {
        noise_schedule(&read_json(&scheduler_path)?)?
    } else {
        NoiseSchedule::stable_diffusion(Prediction::Epsilon)
    };
    Ok(LoadedModel {
        info,
        unet,
        vae,
        text,
        tokenizer,
        sdxl,
        schedule,
        vae_scale,
        latent_channels,
        device: device.clone(),
        dtype,
        vae_f32: std::sync::OnceLock::new(),
        vae_source: (vae_file, vae_cfg),
    })
}

/// Every model folder in `dir` (broken ones with their error), sorted by id.
pub fn list(dir: &Path) -> Result<Vec<std::result::Result<ImageModelInfo, (String, String)>>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in read.flatten() {
        let path = entry.path();
        let name = model_id(&path);
        if !path.is_dir() || name.starts_with('.') {
            continue;
        }
        out.push(describe(&path).map_err(|e| (name, e.to_string())));
    }
    out.sort_by(|a, b| {
        let key = |x: &std::result::Result<ImageModelInfo, (String, String)>| match x {
            Ok(i) => i.id.clone(),
            Err((id, _)) => id.clone(),
        };
        key(a).cmp(&key(b))
    });
    Ok(out)
}

/// The files of a diffusers folder that Atelier reads (and so copies on import).
const MODEL_FILES: [&str; 11] = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/tokenizer.json",
];

/// CLIP's released BPE file, where the set-up puts it for single-file imports.
pub const CLIP_BPE: &str = ".clip/bpe_simple_vocab_16e6.txt";

/// The CLIP vocabulary a single-file checkpoint gets: `explicit` (a tokenizer folder or CLIP's
/// BPE file), else the one the set-up installed, else an installed model's full CLIP tokenizer.
fn clip_tokenizer(dir: &Path, explicit: Option<&Path>) -> Result<ldm::TokenizerSource> {
    if let Some(p) = explicit {
        return if p.is_dir() {
            Ok(ldm::TokenizerSource::Folder(p.to_owned()))
        } else if p.is_file() {
            Ok(ldm::TokenizerSource::BpeFile(p.to_owned()))
        } else {
            Err(Error::invalid(format!(
                "the tokenizer {} does not exist",
                p.display()
            )))
        };
    }
    let bpe = dir.join(CLIP_BPE);
    if bpe.is_file() {
        return Ok(ldm::TokenizerSource::BpeFile(bpe));
    }
    for info in list(dir)?.into_iter().flatten() {
        let tok = info.path.join("tokenizer");
        let full = std::fs::read_to_string(tok.join("vocab.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Map<String, Value>>(&t).ok())
            .is_some_and(|v| v.len() == 49408);
        if full && tok.join("merges.txt").is_file() {
            return Ok(ldm::TokenizerSource::Folder(tok));
        }
    }
    Err(Error::invalid(format!(
        "a single-file checkpoint carries no tokenizer, and CLIP's vocabulary is not installed: run ./scripts/run.sh once (it installs it into {}), or import a diffusers model first",
        dir.join(CLIP_BPE).display()
    )))
}

/// Where a model's UNet hash is kept, so a multi-gigabyte file is hashed once, not per load.
pub const HASH_CACHE: &str = ".atelier-hash.json";

/// The cached hash, valid while the UNet file keeps its name, size and modification time.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct HashCache {
    file: String,
    size: u64,
    modified_ns: u128,
    sha256: String,
}

/// A1111's "Model hash" of a model: the first 10 hex digits of the sha256 of the file users
/// know (a converted checkpoint's original, else the UNet file). The UNet's is cached in
/// [`HASH_CACHE`] beside the model; a replaced file (another size or time) is hashed again. A
/// cache that cannot be written costs only the next load's time.
pub fn model_hash(info: &ImageModelInfo) -> Result<String> {
    if let Some(c) = info
        .converted_from
        .as_ref()
        .filter(|c| c.sha256.len() >= 10)
    {
        return Ok(c.sha256[..10].to_owned());
    }
    let (unet, key) = unet_hash_key(info)?;
    let cache = info.path.join(HASH_CACHE);
    let cached = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|t| serde_json::from_str::<HashCache>(&t).ok())
        .filter(|c| {
            c.file == key.file
                && c.size == key.size
                && c.modified_ns == key.modified_ns
                && c.sha256.len() == 64
                && c.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        });
    let sha256 = match cached {
        Some(c) => c.sha256,
        None => remember_unet_hash(info, key, crate::fsutil::sha256_file(&unet)?),
    };
    Ok(sha256[..10].to_owned())
}

/// The UNet file of a model and the cache entry its hash would be kept under (no hash yet).
fn unet_hash_key(info: &ImageModelInfo) -> Result<(PathBuf, HashCache)> {
    let unet = info
        .pieces
        .iter()
        .find(|p| p.role == "unet")
        .map(|p| p.file.clone())
        .ok_or_else(|| Error::invalid("the model has no UNet"))?;
    let meta = std::fs::metadata(&unet)
        .map_err(|e| Error::io(format!("cannot read {}", unet.display()), e))?;
    let key = HashCache {
        file: unet
            .strip_prefix(&info.path)
            .unwrap_or(&unet)
            .to_string_lossy()
            .into_owned(),
        size: meta.len(),
        modified_ns: meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos()),
        sha256: String::new(),
    };
    Ok((unet, key))
}

/// Writes the UNet's hash into the cache beside the model and returns it.
fn remember_unet_hash(info: &ImageModelInfo, key: HashCache, sha256: String) -> String {
    let fresh = HashCache { sha256, ..key };
    if let Err(e) = serde_json::to_vec_pretty(&fresh)
        .map_err(Error::from)
        .and_then(|b| crate::fsutil::write_atomic(&info.path.join(HASH_CACHE), &b))
    {
        tracing::warn!(error = %e, "the model hash could not be cached");
    }
    fresh.sha256
}

/// Imports a single-file checkpoint: converted into a hidden temporary folder that is renamed
/// into place at the end, so a failure or an interruption leaves nothing behind.
fn import_single_file(dir: &Path, src: &Path, tokenizer: Option<&Path>) -> Result<ImageModelInfo> {
    ldm::check_file_kind(src)?;
    let id = src
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    install(dir, &id, |tmp| {
        let source = clip_tokenizer(dir, tokenizer)?;
        ldm::convert(src, tmp, &source)?;
        describe(tmp).map(drop) // the converted folder must be one Atelier can load
    })
}

/// Installs model `id` into `dir`: `fill` writes it into a hidden temporary folder beside the
/// models, which is renamed into place only when `fill` succeeded, so a failure or an
/// interruption leaves no half model. An installed model of the same name is a conflict.
fn install(dir: &Path, id: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<ImageModelInfo> {
    let target = dir.join(id);
    if target.exists() {
        return Err(Error::Conflict(format!(
            "an image model named {id} is already installed"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(dir)
        .map_err(|e| Error::io(format!("cannot write in {}", dir.display()), e))?;
    fill(tmp.path())?;
    let kept = tmp.keep();
    std::fs::rename(&kept, &target).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        Error::io(format!("cannot install {}", target.display()), e)
    })?;
    describe(&target)
}

/// Imports a model into `dir/<name>`: a diffusers folder (validated, then what Atelier needs
/// copied) or a single-file `.safetensors` checkpoint (converted; `tokenizer` optionally names
/// the CLIP vocabulary to give it). Either way through a hidden temporary folder renamed at the
/// end: an interrupted import leaves no half model.
pub fn import(dir: &Path, src: &Path, tokenizer: Option<&Path>) -> Result<ImageModelInfo> {
    if src.is_file() {
        return import_single_file(dir, src, tokenizer);
    }
    let info = describe(src)?;
    install(dir, &info.id, |tmp| {
        let mut files: Vec<PathBuf> = MODEL_FILES.iter().map(PathBuf::from).collect();
        files.push(PathBuf::from("tokenizer/tokenizer.json"));
        for p in &info.pieces {
            if let Ok(rel) = p.file.strip_prefix(src) {
                files.push(rel.to_owned());
            }
        }
        let unet = info
            .pieces
            .iter()
            .find(|p| p.role == "unet")
            .and_then(|p| p.file.strip_prefix(src).ok())
            .map(Path::to_owned);
        let mut unet_sha256 = None;
        for rel in files {
            let from = src.join(&rel);
            if !from.is_file() {
                continue;
            }
            let to = tmp.join(&rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
            }
            if unet.as_deref() == Some(rel.as_path()) {
                // Hashed as it is copied, so the first run does not read it again for its hash.
                unet_sha256 = Some(crate::fsutil::copy_hashing(&from, &to)?);
            } else {
                std::fs::copy(&from, &to)
                    .map_err(|e| Error::io(format!("cannot copy {}", from.display()), e))?;
            }
        }
        let installed = describe(tmp)?;
        match unet_sha256 {
            Some(sha256) => {
                let (_, key) = unet_hash_key(&installed)?;
                remember_unet_hash(&installed, key, sha256);
                Ok(())
            }
            None => model_hash(&installed).map(drop),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::random::{Arch, write_random_model};

    /// f32 tensors are read straight into their own memory, f16 and bf16 through a byte
    /// buffer and a conversion: all three give the file's values, at the asked dtype.
    #[test]
    fn file_tensors_read_every_float_type_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
        let base = candle_core::Tensor::from_vec(values.clone(), (2, 3, 4), &Device::Cpu).unwrap();
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = [
            ("a32", base.clone()),
            ("a16", base.to_dtype(DType::F16).unwrap()),
            ("abf16", base.to_dtype(DType::BF16).unwrap()),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t))
        .collect();
        candle_core::safetensors::save(&tensors, &file).unwrap();
        let vb = weights(&file, DType::F32, &Device::Cpu).unwrap();
        for name in ["a32", "a16", "abf16"] {
            let t = vb.get((2, 3, 4), name).unwrap();
            assert_eq!(t.dtype(), DType::F32);
            let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            // Quarter steps up to 3 are exact in all three types.
            assert_eq!(got, values, "{name}");
            assert!(
                vb.get((3, 2, 4), name).is_err(),
                "{name}: a wrong shape is refused"
            );
        }
        let as16 = weights(&file, DType::F16, &Device::Cpu).unwrap();
        assert_eq!(as16.get((2, 3, 4), "a32").unwrap().dtype(), DType::F16);
    }

    /// Rewrites a safetensors file with every float tensor in `dtype`.
    fn rewrite_as(file: &Path, dtype: DType) {
        let tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
        let converted: std::collections::HashMap<String, candle_core::Tensor> = tensors
            .into_iter()
            .map(|(n, t)| {
                let t = if t.dtype().is_float() {
                    t.to_dtype(dtype).unwrap()
                } else {
                    t
                };
                (n, t)
            })
            .collect();
        candle_core::safetensors::save(&converted, file).unwrap();
    }

    /// A text encoder from an f16 file stays f16 on the CPU and gives the same bits as the same
    /// values held in f32: the same prompt states, and the same picture for a seed.
    #[test]
    fn half_precision_text_encoders_stay_half_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (half_dir, full_dir) = (dir.path().join("half"), dir.path().join("full"));
        write_random_model(&half_dir, Arch::Tiny).unwrap();
        let text = half_dir.join("text_encoder").join("model.safetensors");
        rewrite_as(&text, DType::F16);
        // The same values, widened, in an f32 file.
        write_random_model(&full_dir, Arch::Tiny).unwrap();
        for sub in ["unet", "vae", "text_encoder"] {
            for e in std::fs::read_dir(half_dir.join(sub)).unwrap().flatten() {
                std::fs::copy(e.path(), full_dir.join(sub).join(e.file_name())).unwrap();
            }
        }
        rewrite_as(
            &full_dir.join("text_encoder").join("model.safetensors"),
            DType::F32,
        );

        let cpu = Device::Cpu;
        let half = load(describe(&half_dir).unwrap(), &cpu).unwrap();
        let full = load(describe(&full_dir).unwrap(), &cpu).unwrap();
        assert_eq!(half.text.weight_dtype(), DType::F16);
        assert_eq!(full.text.weight_dtype(), DType::F32);
        // The list's memory figure is the check's estimate, which counts the half encoder at
        // two bytes a value.
        let tensors: u64 = full.info.pieces.iter().map(|p| p.parameters * 4).sum();
        assert!(full.info.cpu_memory_bytes > tensors);
        let text_params = half
            .info
            .pieces
            .iter()
            .find(|p| p.role == "text_encoder")
            .unwrap()
            .parameters;
        let saved = full.info.cpu_memory_bytes - half.info.cpu_memory_bytes;
        let expected = text_params * 2 + text_params * 2 / 16; // and the load slack on it
        assert!(
            saved.abs_diff(expected) <= 1,
            "{saved} saved, {expected} expected"
        );
        let ids = candle_core::Tensor::new(&[[998u32, 320, 125, 999, 999]], &cpu).unwrap();
        let (a, b) = (
            half.text.forward(&ids).unwrap(),
            full.text.forward(&ids).unwrap(),
        );
        let bits = |t: &candle_core::Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        assert_eq!(bits(&a.last), bits(&b.last));
        assert_eq!(bits(&a.penultimate), bits(&b.penultimate));

        let p = crate::image::ImageParams {
            prompt: "a red apple, (studio light:1.2)".into(),
            negative_prompt: "blurry".into(),
            steps: 2,
            cfg_scale: 5.0,
            seed: Some(7),
            ..super::super::params::sample_params()
        };
        let mut quiet = |_: usize, _: usize, _: Option<super::super::pipeline::Rgb>| {};
        let draw =
            |m: &LoadedModel,
             quiet: &mut dyn FnMut(usize, usize, Option<super::super::pipeline::Rgb>)| {
                super::super::pipeline::generate(m, &p, 7, None, None, &|| false, quiet).unwrap()
            };
        assert_eq!(
            draw(&half, &mut quiet).as_raw(),
            draw(&full, &mut quiet).as_raw()
        );
    }

    #[test]
    fn the_unet_hash_is_computed_at_import_and_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src").join("tiny-sd");
        write_random_model(&src, Arch::Tiny).unwrap();
        let models = dir.path().join("models");
        let info = import(&models, &src, None).unwrap();
        let unet = info.pieces.iter().find(|p| p.role == "unet").unwrap();
        let expected = crate::fsutil::sha256_file(&unet.file).unwrap();
        let cache = info.path.join(HASH_CACHE);
        assert!(cache.is_file(), "import hashes the UNet");
        // Hashed while it was copied: the right value, under the installed file's key, so the
        // first load takes it as it is instead of reading the file again.
        let written = std::fs::read_to_string(&cache).unwrap();
        assert!(written.contains(&expected), "{written}");
        assert_eq!(model_hash(&info).unwrap(), expected[..10]);
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), written);

        // The cache is what a load reads: a planted value with the same key comes back.
        let mut c: HashCache =
            serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
        c.sha256 = "ab".repeat(32);
        std::fs::write(&cache, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(model_hash(&info).unwrap(), "ababababab");

        // A replaced UNet (another size) is hashed again; a damaged cache is ignored.
        let mut bytes = std::fs::read(&unet.file).unwrap();
        bytes.extend_from_slice(&[0; 16]);
        std::fs::write(&unet.file, &bytes).unwrap();
        let fresh = crate::fsutil::sha256_file(&unet.file).unwrap();
        assert_eq!(model_hash(&info).unwrap(), fresh[..10]);
        std::fs::write(&cache, b"{not json").unwrap();
        assert_eq!(model_hash(&info).unwrap(), fresh[..10]);
        assert!(std::fs::read_to_string(&cache).unwrap().contains(&fresh));
    }
}
