//! Single-file checkpoints: the one `.safetensors` file per model that A1111, ComfyUI and model
//! sites use, with the original latent-diffusion (LDM) tensor names — `model.diffusion_model.*`
//! (UNet), `first_stage_model.*` (VAE) and the text encoders: `cond_stage_model.*` (CLIP ViT-L
//! for SD 1.x, OpenCLIP ViT-H for SD 2.x) or, for SDXL, `conditioner.embedders.0.transformer.*`
//! (CLIP ViT-L) and `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG with its projection).
//!
//! Import converts such a file into a diffusers folder, once: tensors are renamed, OpenCLIP's
//! fused q/k/v projection is split into three and the VAE's 1×1 attention convolutions are
//! declared as the matrices they are. Every one of those is a byte range of the original, so the
//! conversion copies bytes straight from the mapped file and never holds the model in memory;
//! the one exception is OpenCLIP's text projection (a few MB), which is stored transposed.
//! After import there is one model layout and one loader.
//!
//! A single file carries no configs, so they are read off the tensor shapes. Two things shapes
//! cannot tell are taken from the file's ModelSpec metadata, an A1111-style `.yaml` beside it,
//! and failing those the family's convention: the UNet's attention heads (SD 1.x: 8 per block;
//! SD 2.x: 64 channels per head) and the prediction type (SD 1.x: epsilon; SD 2.x: v, as the
//! 768-pixel models that most SD 2 files are; turbo files: epsilon with trailing timesteps).
//! SDXL's size conditioning is read off shapes too: the pooled width and six embedded ids make
//! up `label_emb`'s input.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Value, json};

use super::model::{check_safetensors, is_pickle, pickle_refusal};
use super::prompt::clip_vocab_from_bpe;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP_L: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";
const XL_CLIP_L: &str = "conditioner.embedders.0.transformer.";
const XL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";
/// What SDXL's refiner keeps where the base model keeps CLIP ViT-L.
const REFINER_OPEN_CLIP: &str = "conditioner.embedders.0.model.";

/// The A1111 `.yaml` beside a checkpoint is small; more than this is not one.
const MAX_YAML_BYTES: u64 = 256 << 10;

/// Where a CLIP vocabulary for single-file imports comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// A diffusers `tokenizer/` folder (`vocab.json` + `merges.txt`).
    Folder(PathBuf),
    /// CLIP's released BPE merges file (`bpe_simple_vocab_16e6.txt`), from which the
    /// vocabulary is built as CLIP builds it.
    BpeFile(PathBuf),
}

/// One tensor of the output: its diffusers name, shape and bytes (a range of the input, or
/// for a transposed tensor its own copy).
struct Out<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "{} is not a Stable Diffusion (1.x, 2.x or XL) checkpoint Atelier can read: {why}",
        path.display()
    ))
}

/// The `[cols, rows]` transpose of a row-major `[rows, cols]` matrix of `elem`-byte values.
fn transposed(data: &[u8], rows: usize, cols: usize, elem: usize) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (from, to) = ((r * cols + c) * elem, (c * rows + r) * elem);
            out[to..to + elem].copy_from_slice(&data[from..from + elem]);
        }
    }
    out
}

/// `"12.rest"` → `(12, "rest")`.
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

fn unet_resnet(x: &str) -> Option<String> {
    let map = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    map.iter()
        .find_map(|(from, to)| x.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// The diffusers name of a UNet tensor (`rest` is the name after `model.diffusion_model.`).
/// `lpb` is the number of ResNet layers per down block.
fn unet_name(rest: &str, lpb: usize) -> Option<String> {
    let simple = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        // SDXL's pooled text and size ids (`infer` refuses it in any other model).
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(n) = simple
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
    {
        return Some(n);
    }
    if let Some(r) = rest.strip_prefix("input_blocks.") {
        let (i, r) = index(r)?;
        let (j, x) = index(r)?;
        let (b, l) = ((i.checked_sub(1)?) / (lpb + 1), (i - 1) % (lpb + 1));
        return match (l < lpb, j) {
            (true, 0) => Some(format!("down_blocks.{b}.resnets.{l}.{}", unet_resnet(x)?)),
            (true, 1) => Some(format!("down_blocks.{b}.attentions.{l}.{x}")),
            (false, 0) => Some(format!(
                "down_blocks.{b}.downsamplers.0.conv.{}",
                x.strip_prefix("op.")?
            )),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix("middle_block.") {
        let (j, x) = index(r)?;
        return match j {
            0 => Some(format!("mid_block.resnets.0.{}", unet_resnet(x)?)),
            1 => Some(format!("mid_block.attentions.0.{x}")),
            2 => Some(format!("mid_block.resnets.1.{}", unet_resnet(x)?)),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix("output_blocks.") {
        let (i, r) = index(r)?;
        let (j, x) = index(r)?;
        let (b, l) = (i / (lpb + 1), i % (lpb + 1));
        // The upsampler follows the ResNet (index 1) or the attention (index 2).
        return match (j, x.strip_prefix("conv.")) {
            (0, _) => Some(format!("up_blocks.{b}.resnets.{l}.{}", unet_resnet(x)?)),
            (1 | 2, Some(c)) => Some(format!("up_blocks.{b}.upsamplers.0.conv.{c}")),
            (1, None) => Some(format!("up_blocks.{b}.attentions.{l}.{x}")),
            _ => None,
        };
    }
    None
}

fn vae_resnet(x: &str) -> Option<String> {
    for p in ["norm1.", "conv1.", "norm2.", "conv2."] {
        if x.starts_with(p) {
            return Some(x.to_owned());
        }
    }
    x.strip_prefix("nin_shortcut.")
        .map(|r| format!("conv_shortcut.{r}"))
}

/// The diffusers name of a VAE tensor (after `first_stage_model.`), and whether it is a 1×1
/// attention convolution to be declared as a matrix. `up_blocks` is the decoder's block count:
/// LDM numbers the decoder's blocks from the full-size end, diffusers from the small end.
fn vae_name(rest: &str, up_blocks: usize) -> Option<(String, bool)> {
    for keep in ["quant_conv.", "post_quant_conv."] {
        if rest.starts_with(keep) {
            return Some((rest.to_owned(), false));
        }
    }
    let (part, x) = rest.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let plain = |x: &str| Some((format!("{part}.{x}"), false));
    if x.starts_with("conv_in.") || x.starts_with("conv_out.") {
        return plain(x);
    }
    if let Some(r) = x.strip_prefix("norm_out.") {
        return plain(&format!("conv_norm_out.{r}"));
    }
    if let Some(r) = x.strip_prefix("mid.") {
        if let Some(r) = r.strip_prefix("block_1.") {
            return plain(&format!("mid_block.resnets.0.{}", vae_resnet(r)?));
        }
        if let Some(r) = r.strip_prefix("block_2.") {
            return plain(&format!("mid_block.resnets.1.{}", vae_resnet(r)?));
        }
        let r = r.strip_prefix("attn_1.")?;
        let (layer, p) = r.split_once('.')?;
        let to = match layer {
            "norm" => return plain(&format!("mid_block.attentions.0.group_norm.{p}")),
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        return Some((
            format!("{part}.mid_block.attentions.0.{to}.{p}"),
            p == "weight",
        ));
    }
    let (blocks, sample, sampler) = if part == "encoder" {
        ("down.", "downsample.", "downsamplers")
    } else {
        ("up.", "upsample.", "upsamplers")
    };
    let (i, r) = index(x.strip_prefix(blocks)?)?;
    let i = if part == "decoder" {
        up_blocks.checked_sub(i + 1)?
    } else {
        i
    };
    let kind = if part == "encoder" {
        "down_blocks"
    } else {
        "up_blocks"
    };
    if let Some(r) = r.strip_prefix("block.") {
        let (j, x) = index(r)?;
        return plain(&format!("{kind}.{i}.resnets.{j}.{}", vae_resnet(x)?));
    }
    let c = r.strip_prefix(sample)?.strip_prefix("conv.")?;
    plain(&format!("{kind}.{i}.{sampler}.0.conv.{c}"))
}

/// How much of an OpenCLIP text tower a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenClip {
    /// Transformer blocks kept: SD 2 drops the last (it reads the penultimate output), SDXL
    /// keeps them all (its pooled embedding comes from the last).
    layers: usize,
    /// Whether `text_projection` is kept (SDXL's pooled embedding).
    projection: bool,
}

/// The diffusers name of an OpenCLIP tensor (after `cond_stage_model.model.` or
/// `conditioner.embedders.1.model.`). `Ok(None)`: a tensor the model does not use (a dropped
/// last block, an unused projection, the logit scale).
fn open_clip_name(rest: &str, oc: OpenClip) -> std::result::Result<Option<String>, ()> {
    let t = "text_model.";
    match rest {
        "token_embedding.weight" => {
            return Ok(Some(format!("{t}embeddings.token_embedding.weight")));
        }
        "positional_embedding" => {
            return Ok(Some(format!("{t}embeddings.position_embedding.weight")));
        }
        // OpenCLIP multiplies by it (`x @ proj`); stored transposed as a Linear weight.
        "text_projection" if oc.projection => return Ok(Some("text_projection.weight".into())),
        "text_projection" | "logit_scale" => return Ok(None),
        _ => {}
    }
    if let Some(p) = rest.strip_prefix("ln_final.") {
        return Ok(Some(format!("{t}final_layer_norm.{p}")));
    }
    let r = rest.strip_prefix("transformer.resblocks.").ok_or(())?;
    let (i, x) = index(r).ok_or(())?;
    if i >= oc.layers {
        return Ok(None);
    }
    let map = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
        // Split later into q/k/v; the name keeps the fused form until then.
        ("attn.in_proj_", "self_attn.in_proj_"),
    ];
    map.iter()
        .find_map(|(from, to)| {
            x.strip_prefix(from)
                .map(|p| format!("{t}encoder.layers.{i}.{to}{p}"))
        })
        .map(Some)
        .ok_or(())
}

/// What the checkpoint says about itself beyond its shapes.
#[derive(Debug, Default)]
struct Hints {
    /// `Some(true)`: v-prediction.
    v_prediction: Option<bool>,
    turbo: bool,
    /// Attention heads per block, or channels per head (from the `.yaml`).
    num_heads: Option<usize>,
    head_channels: Option<usize>,
    resolution: Option<u32>,
}

/// Reads the few keys of an LDM `.yaml` that shapes cannot give. A full YAML parser is not
/// needed: these are plain `key: value` lines in every released config.
fn yaml_hints(text: &str, h: &mut Hints) {
    let mut saw_parameterization = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        let v = v.trim().trim_matches(['"', '\'']);
        match k.trim() {
            "parameterization" => {
                saw_parameterization = true;
                h.v_prediction = Some(v == "v");
            }
            "num_heads" => h.num_heads = v.parse().ok().filter(|&n: &usize| n > 0),
            "num_head_channels" => h.head_channels = v.parse().ok().filter(|&n: &usize| n > 0),
            _ => {}
        }
    }
    // A config without `parameterization` is an epsilon model (LDM's default).
    if !saw_parameterization {
        h.v_prediction = Some(false);
    }
}

/// ModelSpec (`modelspec.*` in the safetensors metadata), which Stability's files carry.
fn modelspec_hints(meta: &HashMap<String, String>, h: &mut Hints) {
    if let Some(p) = meta.get("modelspec.prediction_type") {
        h.v_prediction = Some(p == "v");
    }
    if let Some(a) = meta.get("modelspec.architecture") {
        h.turbo |= a.contains("turbo");
    }
    if let Some(r) = meta.get("modelspec.resolution") {
        h.resolution = r.split('x').next().and_then(|w| w.trim().parse().ok());
    }
}

struct Shapes<'a> {
    map: HashMap<&'a str, Vec<usize>>,
    /// The checkpoint, for errors.
    path: &'a Path,
}

impl Shapes<'_> {
    fn get(&self, name: &str) -> Option<&[usize]> {
        self.map.get(name).map(|v| v.as_slice())
    }
    fn dim(&self, name: &str, d: usize) -> Option<usize> {
        self.get(name)?.get(d).copied()
    }
    /// Dimension `d` of tensor `name`, which the layout requires.
    fn need(&self, name: &str, d: usize) -> Result<usize> {
        self.dim(name, d)
            .ok_or_else(|| bad(self.path, format!("it has no {name}")))
    }
    /// The largest `N + 1` such that a tensor starts with `prefix` followed by `N.`.
    fn count(&self, prefix: &str) -> usize {
        self.map
            .keys()
            .filter_map(|k| index(k.strip_prefix(prefix)?).map(|(i, _)| i + 1))
            .max()
            .unwrap_or(0)
    }
}

/// A text encoder of the checkpoint: where its tensors are, where they go, how they are named.
#[derive(Clone, Copy)]
struct TextSource {
    prefix: &'static str,
    part: Part,
    /// OpenCLIP's names (`None`: transformers' CLIP names).
    open_clip: Option<OpenClip>,
}

/// The configs a diffusers folder would carry, read off the shapes.
struct Configs {
    unet: Value,
    vae: Value,
    /// One (SD 1.x/2.x) or two (SDXL) text encoders with their configs.
    texts: Vec<(TextSource, Value)>,
    scheduler: Value,
    lpb: usize,
    up_blocks: usize,
    xl: bool,
}

/// The config of a text encoder stored with transformers' CLIP names under `prefix`.
fn clip_config(path: &Path, s: &Shapes, prefix: &str) -> Result<Value> {
    let emb = [
        format!("{prefix}text_model.embeddings.token_embedding.weight"),
        format!("{prefix}embeddings.token_embedding.weight"),
    ];
    let (prefix, shape) = emb
        .iter()
        .find_map(|n| {
            s.get(n)
                .map(|sh| (n.replace("embeddings.token_embedding.weight", ""), sh))
        })
        .ok_or_else(|| bad(path, format!("it has no text encoder ({prefix}*)")))?;
    let hidden = shape.get(1).copied().unwrap_or(0);
    if hidden == 0 || hidden % 64 != 0 {
        return Err(bad(
            path,
            format!("its text encoder is {hidden} wide, not a multiple of CLIP's 64-channel heads"),
        ));
    }
    Ok(json!({
        "architectures": ["CLIPTextModel"],
        "hidden_act": "quick_gelu",
        "hidden_size": hidden,
        "intermediate_size": s.need(&format!("{prefix}encoder.layers.0.mlp.fc1.weight"), 0)?,
        "num_hidden_layers": s.count(&format!("{prefix}encoder.layers.")),
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": s.need(&format!("{prefix}embeddings.position_embedding.weight"), 0)?,
        "vocab_size": shape.first().copied().unwrap_or(0),
        "projection_dim": hidden,
    }))
}

/// The config of an OpenCLIP text tower under `prefix`: without its last block for SD 2
/// (`pooled: false`), whole and with its projection for SDXL (`pooled: true`).
fn open_clip_config(
    path: &Path,
    s: &Shapes,
    prefix: &str,
    pooled: bool,
) -> Result<(Value, OpenClip)> {
    let vocab = s.need(&format!("{prefix}token_embedding.weight"), 0)?;
    let hidden = s.need(&format!("{prefix}token_embedding.weight"), 1)?;
    if hidden == 0 || hidden % 64 != 0 {
        return Err(bad(
            path,
            format!(
                "its OpenCLIP text encoder is {hidden} wide, not a multiple of its 64-channel heads"
            ),
        ));
    }
    let blocks = s.count(&format!("{prefix}transformer.resblocks."));
    let layers = if pooled {
        blocks
    } else {
        blocks.saturating_sub(1)
    };
    if layers == 0 {
        return Err(bad(
            path,
            "its OpenCLIP text encoder has no transformer blocks",
        ));
    }
    // OpenCLIP's projection is `[width, embed]`, used as `x @ proj`.
    let projection = if pooled {
        let p = format!("{prefix}text_projection");
        if s.need(&p, 0)? != hidden {
            return Err(bad(
                path,
                format!("its {p} does not fit the encoder's width {hidden}"),
            ));
        }
        Some(s.need(&p, 1)?)
    } else {
        None
    };
    let config = json!({
        "architectures": [if pooled { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "intermediate_size": s.need(&format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"), 0)?,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": s.need(&format!("{prefix}positional_embedding"), 0)?,
        "vocab_size": vocab,
        "projection_dim": projection.unwrap_or(hidden),
    });
    Ok((
        config,
        OpenClip {
            layers,
            projection: pooled,
        },
    ))
}

fn infer(path: &Path, s: &Shapes, h: &Hints) -> Result<Configs> {
    // The text encoders first: SDXL's shape the UNet's conditioning.
    let xl = s
        .map
        .keys()
        .any(|k| k.starts_with("conditioner.embedders."));
    let texts = if xl {
        if s.map.keys().any(|k| k.starts_with(REFINER_OPEN_CLIP)) {
            return Err(bad(
                path,
                "it is an SDXL refiner (one OpenCLIP text encoder, aesthetic-score conditioning), which Atelier does not run; import an SDXL base or SDXL-Turbo checkpoint",
            ));
        }
        let (text_2, oc) = open_clip_config(path, s, XL_OPEN_CLIP, true)?;
        vec![
            (
                TextSource {
                    prefix: XL_CLIP_L,
                    part: Part::Text,
                    open_clip: None,
                },
                clip_config(path, s, XL_CLIP_L)?,
            ),
            (
                TextSource {
                    prefix: XL_OPEN_CLIP,
                    part: Part::Text2,
                    open_clip: Some(oc),
                },
                text_2,
            ),
        ]
    } else if s
        .get(&format!("{OPEN_CLIP}token_embedding.weight"))
        .is_some()
    {
        let (text, oc) = open_clip_config(path, s, OPEN_CLIP, false)?;
        vec![(
            TextSource {
                prefix: OPEN_CLIP,
                part: Part::Text,
                open_clip: Some(oc),
            },
            text,
        )]
    } else {
        vec![(
            TextSource {
                prefix: CLIP_L,
                part: Part::Text,
                open_clip: None,
            },
            clip_config(path, s, CLIP_L)?,
        )]
    };

    // UNet
    let model_channels = s.need(&format!("{UNET}input_blocks.0.0.weight"), 0)?;
    let in_channels = s.need(&format!("{UNET}input_blocks.0.0.weight"), 1)?;
    let out_channels = s.need(&format!("{UNET}out.2.weight"), 0)?;
    let inputs = s.count(&format!("{UNET}input_blocks."));
    let first_down = (1..inputs)
        .find(|i| {
            s.get(&format!("{UNET}input_blocks.{i}.0.op.weight"))
                .is_some()
        })
        .ok_or_else(|| bad(path, "its UNet has no downsampling layer"))?;
    let lpb = first_down - 1;
    if lpb == 0 || inputs < 2 {
        return Err(bad(path, "its UNet has no ResNet layers"));
    }
    let blocks = (inputs - 2) / (lpb + 1) + 1;
    let mut channels = Vec::new();
    let mut cross = Vec::new();
    let mut depth = Vec::new();
    let mut context_dim = None;
    let mut linear = false;
    for b in 0..blocks {
        let i = 1 + b * (lpb + 1);
        channels.push(s.need(&format!("{UNET}input_blocks.{i}.0.out_layers.3.weight"), 0)?);
        let attn = format!("{UNET}input_blocks.{i}.1.");
        let n = s.count(&format!("{attn}transformer_blocks."));
        cross.push(n > 0);
        depth.push(n.max(1));
        if n > 0 {
            context_dim =
                Some(s.need(&format!("{attn}transformer_blocks.0.attn2.to_k.weight"), 1)?);
            linear = s
                .get(&format!("{attn}proj_in.weight"))
                .is_some_and(|sh| sh.len() == 2);
        }
    }
    if channels.first() != Some(&model_channels) {
        return Err(bad(path, "its UNet's first block does not match conv_in"));
    }
    let context_dim =
        context_dim.ok_or_else(|| bad(path, "its UNet has no cross-attention layers"))?;
    let heads: Vec<usize> = match (h.num_heads, h.head_channels, context_dim) {
        (Some(n), _, _) => vec![n; blocks],
        (None, Some(c), _) => channels.iter().map(|ch| ch / c).collect(),
        (None, None, 768) => vec![8; blocks],
        // SD 2.x and SDXL: 64-channel heads.
        (None, None, 1024 | 2048) => channels.iter().map(|ch| ch / 64).collect(),
        (None, None, d) => {
            return Err(bad(
                path,
                format!(
                    "its UNet attends to {d}-wide text features, which no known family does, so its attention heads are unknown; put its LDM .yaml config (with num_heads or num_head_channels) beside it with the same name"
                ),
            ));
        }
    };
    if heads.contains(&0) {
        return Err(bad(path, "its attention heads do not divide its channels"));
    }
    let down_types: Vec<&str> = cross
        .iter()
        .map(|&c| {
            if c {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up_types: Vec<&str> = cross
        .iter()
        .rev()
        .map(|&c| if c { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let sd2 = context_dim == 1024;
    let v_prediction = h.v_prediction.unwrap_or(sd2 && !h.turbo);
    let size = h.resolution.unwrap_or(match (xl, h.turbo, v_prediction) {
        (true, false, _) => 1024,
        (false, _, true) => 768,
        _ => 512,
    });
    let mut unet = json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": channels,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "layers_per_block": lpb,
        "attention_head_dim": heads,
        "transformer_layers_per_block": depth,
        "cross_attention_dim": context_dim,
        "use_linear_projection": linear,
        "norm_num_groups": 32,
        "sample_size": size / 8,
    });
    let label_emb = s.get(&format!("{UNET}label_emb.0.0.weight"));
    match (xl, label_emb) {
        (true, Some(&[_, input])) => {
            // The pooled embedding beside six sinusoidally embedded size ids.
            let pooled = texts
                .iter()
                .find_map(|(t, c)| (t.part == Part::Text2).then(|| c["projection_dim"].as_u64()))
                .flatten()
                .unwrap_or(0) as usize;
            let ids = input.checked_sub(pooled).filter(|n| n % 6 == 0 && *n > 0);
            let Some(ids) = ids else {
                return Err(bad(
                    path,
                    format!(
                        "its UNet's size conditioning ({input} wide) does not fit the pooled text embedding ({pooled}) and six size ids"
                    ),
                ));
            };
            unet["addition_embed_type"] = json!("text_time");
            unet["addition_time_embed_dim"] = json!(ids / 6);
            unet["projection_class_embeddings_input_dim"] = json!(input);
        }
        (true, _) => {
            return Err(bad(
                path,
                "its SDXL UNet has no label_emb (size conditioning)",
            ));
        }
        (false, Some(_)) => {
            return Err(bad(
                path,
                "its UNet is class-conditioned (label_emb: an unCLIP or upscaler model), which Atelier does not run",
            ));
        }
        (false, None) => {}
    }

    // VAE
    let enc_blocks = s.count(&format!("{VAE}encoder.down."));
    let up_blocks = s.count(&format!("{VAE}decoder.up."));
    if enc_blocks == 0 || up_blocks != enc_blocks {
        return Err(bad(path, "its VAE is missing or incomplete"));
    }
    let vae_channels = (0..enc_blocks)
        .map(|i| s.need(&format!("{VAE}encoder.down.{i}.block.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>>>()?;
    let latent2 = s.need(&format!("{VAE}encoder.conv_out.weight"), 0)?;
    let vae = json!({
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": vae_channels,
        "layers_per_block": s.count(&format!("{VAE}encoder.down.0.block.")),
        "latent_channels": latent2 / 2,
        "norm_num_groups": 32,
        "use_quant_conv": s.get(&format!("{VAE}quant_conv.weight")).is_some(),
        "use_post_quant_conv": s.get(&format!("{VAE}post_quant_conv.weight")).is_some(),
        "scaling_factor": if xl { 0.13025 } else { 0.18215 },
    });

    let scheduler = json!({
        "_class_name": if h.turbo || xl { "EulerDiscreteScheduler" } else { "DDIMScheduler" },
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": if v_prediction { "v_prediction" } else { "epsilon" },
        "timestep_spacing": if h.turbo { "trailing" } else { "leading" },
        "steps_offset": 1, "set_alpha_to_one": false,
    });
    Ok(Configs {
        unet,
        vae,
        texts,
        scheduler,
        lpb,
        up_blocks,
        xl,
    })
}

/// Which output file a tensor goes to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Unet,
    Vae,
    Text,
    /// SDXL's second text encoder.
    Text2,
}

/// What a tensor's shape or bytes need on the way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reshape {
    Keep,
    /// A 1×1 convolution kernel declared as the matrix it is.
    Matrix,
    /// OpenCLIP's `[width, embed]` projection as a `[embed, width]` Linear weight.
    Transpose,
}

/// Maps every tensor of the checkpoint; an unknown tensor under a model prefix is an error
/// (a layout this code does not understand must not load half-right).
fn plan<'a>(
    path: &Path,
    st: &SafeTensors<'a>,
    c: &Configs,
) -> Result<BTreeMap<Part, Vec<Out<'a>>>> {
    let mut out: BTreeMap<Part, Vec<Out<'a>>> = BTreeMap::new();
    let unknown = |name: &str| {
        bad(
            path,
            format!("its tensor {name} has no place in a Stable Diffusion model"),
        )
    };
    for (name, view) in st.iter() {
        let text = c
            .texts
            .iter()
            .find_map(|(t, _)| name.strip_prefix(t.prefix).map(|rest| (t, rest)));
        let (part, mapped, reshape) = if let Some(rest) = name.strip_prefix(UNET) {
            (
                Part::Unet,
                unet_name(rest, c.lpb).ok_or_else(|| unknown(name))?,
                Reshape::Keep,
            )
        } else if let Some(rest) = name.strip_prefix(VAE) {
            if rest.starts_with("loss.") {
                continue; // the discriminator some training checkpoints keep
            }
            let (n, m) = vae_name(rest, c.up_blocks).ok_or_else(|| unknown(name))?;
            (
                Part::Vae,
                n,
                if m { Reshape::Matrix } else { Reshape::Keep },
            )
        } else if let Some((t, rest)) = text {
            match t.open_clip {
                Some(oc) => match open_clip_name(rest, oc).map_err(|_| unknown(name))? {
                    Some(n) if n == "text_projection.weight" => (t.part, n, Reshape::Transpose),
                    Some(n) => (t.part, n, Reshape::Keep),
                    None => continue,
                },
                None => {
                    if rest.ends_with("position_ids") {
                        continue; // an integer buffer, rebuilt by the encoder
                    }
                    let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
                    (t.part, format!("text_model.{rest}"), Reshape::Keep)
                }
            }
        } else if c.xl && name.starts_with("conditioner.") {
            // SDXL keeps its encoders nowhere else; anything more is a layout not understood.
            return Err(unknown(name));
        } else {
            // EMA copies, schedule buffers and other training state.
            continue;
        };
        let shape = view.shape().to_vec();
        let data = view.data();
        let dtype = view.dtype();
        let list = out.entry(part).or_default();
        if let Some(stem) = mapped
            .strip_suffix("in_proj_weight")
            .or_else(|| mapped.strip_suffix("in_proj_bias"))
        {
            // OpenCLIP's fused [3C, …] projection: q, k and v are consecutive thirds.
            let is_weight = mapped.ends_with("weight");
            let rows = shape.first().copied().unwrap_or(0);
            if rows % 3 != 0 {
                return Err(unknown(name));
            }
            let third = data.len() / 3;
            for (k, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let mut sh = shape.clone();
                sh[0] = rows / 3;
                list.push(Out {
                    name: format!("{stem}{p}.{}", if is_weight { "weight" } else { "bias" }),
                    dtype,
                    shape: sh,
                    data: Cow::Borrowed(&data[k * third..(k + 1) * third]),
                });
            }
            continue;
        }
        let (shape, data) = match (reshape, shape.as_slice()) {
            (Reshape::Matrix, &[o, i, 1, 1]) => (vec![o, i], Cow::Borrowed(data)),
            (Reshape::Transpose, &[rows, cols]) => {
                let elem = match dtype {
                    Dtype::F32 => 4,
                    Dtype::F16 | Dtype::BF16 => 2,
                    _ => {
                        return Err(bad(
                            path,
                            format!("its {name} is {dtype:?}, not a float type"),
                        ));
                    }
                };
                if data.len() != rows * cols * elem {
                    return Err(unknown(name));
                }
                (
                    vec![cols, rows],
                    Cow::Owned(transposed(data, rows, cols, elem)),
                )
            }
            (Reshape::Transpose, _) => return Err(unknown(name)),
            _ => (shape, Cow::Borrowed(data)),
        };
        list.push(Out {
            name: mapped,
            dtype,
            shape,
            data,
        });
    }
    let second = c.xl.then_some((Part::Text2, "second text encoder"));
    for (part, what) in [
        (Part::Unet, "UNet"),
        (Part::Vae, "VAE"),
        (Part::Text, "text encoder"),
    ]
    .into_iter()
    .chain(second)
    {
        if out.get(&part).is_none_or(|v| v.is_empty()) {
            return Err(bad(path, format!("it has no {what} tensors")));
        }
    }
    Ok(out)
}

fn write_part(path: &Path, tensors: &[Out]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::invalid(format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = views.iter().find(|(n, _)| !seen.insert(n.clone())) {
        return Err(Error::invalid(format!(
            "two tensors of the checkpoint map to {dup}"
        )));
    }
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| Error::invalid(format!("cannot write {}: {e}", path.display())))
}

/// Writes the CLIP vocabulary into `dir` (`tokenizer/`, and for SDXL `tokenizer_2/`: both
/// of SDXL's encoders use CLIP's vocabulary; the second pads with "!", which the loader knows).
fn write_tokenizer(dir: &Path, source: &TokenizerSource, vocab_size: usize) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            Error::io(
                format!("cannot read the CLIP vocabulary {}", p.display()),
                e,
            )
        })
    };
    let (vocab, merges) = match source {
        TokenizerSource::Folder(d) => (read(&d.join("vocab.json"))?, read(&d.join("merges.txt"))?),
        TokenizerSource::BpeFile(f) => clip_vocab_from_bpe(&read(f)?)?,
    };
    let entries = serde_json::from_str::<serde_json::Map<String, Value>>(&vocab)
        .map_err(|e| Error::invalid(format!("the CLIP vocabulary is not valid: {e}")))?
        .len();
    if entries > vocab_size {
        return Err(Error::invalid(format!(
            "the CLIP vocabulary has {entries} tokens but this checkpoint's text encoder knows only {vocab_size}"
        )));
    }
    write_atomic(&dir.join("vocab.json"), vocab.as_bytes())?;
    write_atomic(&dir.join("merges.txt"), merges.as_bytes())
}

/// Refuses, by its name, a file that is not a safetensors checkpoint (pickles with the reason).
pub fn check_file_kind(src: &Path) -> Result<()> {
    if is_pickle(src) {
        return Err(pickle_refusal(src));
    }
    let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !ext.eq_ignore_ascii_case("safetensors") {
        return Err(Error::invalid(format!(
            "{} is neither a diffusers folder nor a .safetensors checkpoint",
            src.display()
        )));
    }
    Ok(())
}

/// Converts the checkpoint `src` into a diffusers folder at `out` (which must not exist; the
/// caller renames it into place). Returns nothing on failure but a clear error; `out` is then
/// the caller's to remove.
pub fn convert(src: &Path, out: &Path, tokenizer: &TokenizerSource) -> Result<()> {
    check_file_kind(src)?;
    check_safetensors(src)?;
    let file = std::fs::File::open(src)
        .map_err(|e| Error::io(format!("cannot open {}", src.display()), e))?;
    // SAFETY: the header and every byte range were checked just above; the map is read-only
    // and dropped before this function returns.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("cannot map {}", src.display()), e))?;
    let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| bad(src, e))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(src, e))?;
    let names = st.names();
    if !names.iter().any(|n| n.starts_with(UNET)) {
        return Err(bad(
            src,
            "it has no model.diffusion_model.* tensors (a LoRA, a VAE or an embedding alone cannot be imported as a model)",
        ));
    }
    let shapes = Shapes {
        map: st.iter().map(|(n, v)| (n, v.shape().to_vec())).collect(),
        path: src,
    };
    let mut hints = Hints::default();
    if let Some(m) = meta.metadata() {
        modelspec_hints(m, &mut hints);
    }
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    hints.turbo |= stem.contains("turbo");
    let yaml = src.with_extension("yaml");
    if let Ok(m) = std::fs::metadata(&yaml) {
        if m.len() > MAX_YAML_BYTES {
            return Err(Error::invalid(format!(
                "{} is too large to be a model config",
                yaml.display()
            )));
        }
        let text = std::fs::read_to_string(&yaml)
            .map_err(|e| Error::io(format!("cannot read {}", yaml.display()), e))?;
        yaml_hints(&text, &mut hints);
    }
    let configs = infer(src, &shapes, &hints)?;
    let parts = plan(src, &st, &configs)?;

    let texts = configs.texts.iter().map(|(t, config)| {
        let (sub, file) = match t.part {
            Part::Text2 => ("text_encoder_2", "model.safetensors"),
            _ => ("text_encoder", "model.safetensors"),
        };
        (t.part, sub, file, config)
    });
    for (part, sub, file, config) in [
        (
            Part::Unet,
            "unet",
            "diffusion_pytorch_model.safetensors",
            &configs.unet,
        ),
        (
            Part::Vae,
            "vae",
            "diffusion_pytorch_model.safetensors",
            &configs.vae,
        ),
    ]
    .into_iter()
    .chain(texts)
    {
        let dir = out.join(sub);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        write_part(
            &dir.join(file),
            parts.get(&part).map(|v| v.as_slice()).unwrap_or(&[]),
        )?;
        write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(config)?.as_bytes(),
        )?;
    }
    let sched = out.join("scheduler");
    std::fs::create_dir_all(&sched)
        .map_err(|e| Error::io(format!("cannot create {}", sched.display()), e))?;
    write_atomic(
        &sched.join("scheduler_config.json"),
        serde_json::to_string_pretty(&configs.scheduler)?.as_bytes(),
    )?;
    for (t, config) in &configs.texts {
        let sub = if t.part == Part::Text2 {
            "tokenizer_2"
        } else {
            "tokenizer"
        };
        let vocab_size = config["vocab_size"].as_u64().unwrap_or(0) as usize;
        write_tokenizer(&out.join(sub), tokenizer, vocab_size)?;
    }
    drop(st);
    drop(map);
    let index = json!({
        "_class_name": if configs.xl { "StableDiffusionXLPipeline" } else { "StableDiffusionPipeline" },
        // SDXL's own pipelines: an empty negative prompt is zeros, not the encoding of "".
        "force_zeros_for_empty_prompt": configs.xl,
        "_atelier_converted_from": {
            "file": src.file_name().map(|f| f.to_string_lossy().into_owned()),
            "sha256": crate::fsutil::sha256_file(src)?,
            "layout": "ldm-single-file",
        },
    });
    write_atomic(
        &out.join("model_index.json"),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_names_follow_the_block_arithmetic() {
        // SD 1.5: 2 ResNets per block, so input block 3 is block 0's downsampler.
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.emb_layers.1.weight",
                "down_blocks.3.resnets.1.time_emb_proj.weight",
            ),
            (
                "middle_block.2.out_layers.3.weight",
                "mid_block.resnets.1.conv2.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn1.to_q.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.9.0.out_layers.0.bias",
                "up_blocks.3.resnets.0.norm2.bias",
            ),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("out.0.weight", "conv_norm_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(unet_name(ldm, 2).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(unet_name("input_blocks.3.1.proj_in.weight", 2), None);
        assert_eq!(
            unet_name("label_emb.0.2.bias", 2).as_deref(),
            Some("add_embedding.linear_2.bias")
        );
        assert_eq!(unet_name("label_emb.0.1.weight", 2), None);
    }

    #[test]
    fn vae_decoder_blocks_are_numbered_from_the_other_end() {
        let n = |s| vae_name(s, 4);
        assert_eq!(
            n("decoder.up.3.block.0.conv1.weight"),
            Some(("decoder.up_blocks.0.resnets.0.conv1.weight".into(), false))
        );
        assert_eq!(
            n("decoder.up.0.block.2.nin_shortcut.bias"),
            Some((
                "decoder.up_blocks.3.resnets.2.conv_shortcut.bias".into(),
                false
            ))
        );
        assert_eq!(
            n("decoder.up.1.upsample.conv.weight"),
            Some(("decoder.up_blocks.2.upsamplers.0.conv.weight".into(), false))
        );
        assert_eq!(
            n("encoder.down.1.downsample.conv.weight"),
            Some((
                "encoder.down_blocks.1.downsamplers.0.conv.weight".into(),
                false
            ))
        );
        assert_eq!(
            n("encoder.mid.attn_1.q.weight"),
            Some(("encoder.mid_block.attentions.0.to_q.weight".into(), true))
        );
        assert_eq!(
            n("encoder.mid.attn_1.q.bias"),
            Some(("encoder.mid_block.attentions.0.to_q.bias".into(), false))
        );
        assert_eq!(
            n("decoder.mid.attn_1.norm.weight"),
            Some((
                "decoder.mid_block.attentions.0.group_norm.weight".into(),
                false
            ))
        );
        assert_eq!(
            n("decoder.norm_out.bias"),
            Some(("decoder.conv_norm_out.bias".into(), false))
        );
        assert_eq!(n("decoder.up.4.block.0.conv1.weight"), None);
    }

    #[test]
    fn open_clip_keeps_the_penultimate_layer() {
        const SD2: OpenClip = OpenClip {
            layers: 23,
            projection: false,
        };
        assert_eq!(
            open_clip_name("transformer.resblocks.22.mlp.c_fc.weight", SD2),
            Ok(Some("text_model.encoder.layers.22.mlp.fc1.weight".into()))
        );
        assert_eq!(
            open_clip_name("transformer.resblocks.23.ln_1.weight", SD2),
            Ok(None)
        );
        assert_eq!(open_clip_name("text_projection", SD2), Ok(None));
        assert_eq!(open_clip_name("visual.proj", SD2), Err(()));
        // SDXL's bigG keeps every block and its projection (for the pooled embedding).
        let xl = OpenClip {
            layers: 32,
            projection: true,
        };
        assert_eq!(
            open_clip_name("transformer.resblocks.31.attn.in_proj_weight", xl),
            Ok(Some(
                "text_model.encoder.layers.31.self_attn.in_proj_weight".into()
            ))
        );
        assert_eq!(
            open_clip_name("text_projection", xl),
            Ok(Some("text_projection.weight".into()))
        );
        assert_eq!(open_clip_name("logit_scale", xl), Ok(None));
    }

    #[test]
    fn transposing_swaps_rows_and_columns_of_any_width() {
        // [[1, 2, 3], [4, 5, 6]] as 2-byte values.
        let m: Vec<u8> = [1u16, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t: Vec<u16> = transposed(&m, 2, 3, 2)
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(t, [1, 4, 2, 5, 3, 6]);
    }

    #[test]
    fn yaml_and_modelspec_hints() {
        let mut h = Hints::default();
        yaml_hints(
            "model:\n  params:\n    parameterization: \"v\"\n    unet_config:\n      params:\n        num_head_channels: 64 # need to fix for flash-attn\n",
            &mut h,
        );
        assert_eq!(
            (h.v_prediction, h.head_channels, h.num_heads),
            (Some(true), Some(64), None)
        );
        let mut h = Hints::default();
        yaml_hints("    num_heads: 8\n", &mut h);
        assert_eq!((h.v_prediction, h.num_heads), (Some(false), Some(8)));
        let mut h = Hints::default();
        let meta = HashMap::from([
            (
                "modelspec.architecture".to_owned(),
                "stable-diffusion-v2-turbo".to_owned(),
            ),
            ("modelspec.resolution".to_owned(), "512x512".to_owned()),
        ]);
        modelspec_hints(&meta, &mut h);
        assert!(h.turbo);
        assert_eq!(h.resolution, Some(512));
    }
}
