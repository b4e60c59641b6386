//! Single-file checkpoints: the one `.safetensors` file per model that A1111, ComfyUI and model
//! sites use, with the original latent-diffusion (LDM) tensor names — `model.diffusion_model.*`
//! (UNet), `first_stage_model.*` (VAE) and `cond_stage_model.*` (CLIP ViT-L for SD 1.x,
//! OpenCLIP ViT-H for SD 2.x).
//!
//! Import converts such a file into a diffusers folder, once: tensors are renamed, OpenCLIP's
//! fused q/k/v projection is split into three and the VAE's 1×1 attention convolutions are
//! declared as the matrices they are. Every one of those is a byte range of the original, so the
//! conversion copies bytes straight from the mapped file and never holds the model in memory.
//! After import there is one model layout and one loader.
//!
//! A single file carries no configs, so they are read off the tensor shapes. Two things shapes
//! cannot tell are taken from the file's ModelSpec metadata, an A1111-style `.yaml` beside it,
//! and failing those the family's convention: the UNet's attention heads (SD 1.x: 8 per block;
//! SD 2.x: 64 channels per head) and the prediction type (SD 1.x: epsilon; SD 2.x: v, as the
//! 768-pixel models that most SD 2 files are; turbo files: epsilon with trailing timesteps).

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

/// One tensor of the output: its diffusers name, shape and a byte range of the input.
struct Out<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "{} is not a Stable Diffusion 1.x/2.x checkpoint Atelier can read: {why}",
        path.display()
    ))
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

/// The diffusers name of an OpenCLIP tensor (after `cond_stage_model.model.`) for a text
/// encoder that keeps `layers` of the transformer's blocks. `Ok(None)`: a tensor SD 2 does not
/// use (the last block, the projection, the logit scale).
fn open_clip_name(rest: &str, layers: usize) -> std::result::Result<Option<String>, ()> {
    let t = "text_model.";
    match rest {
        "token_embedding.weight" => {
            return Ok(Some(format!("{t}embeddings.token_embedding.weight")));
        }
        "positional_embedding" => {
            return Ok(Some(format!("{t}embeddings.position_embedding.weight")));
        }
        "text_projection" | "logit_scale" => return Ok(None),
        _ => {}
    }
    if let Some(p) = rest.strip_prefix("ln_final.") {
        return Ok(Some(format!("{t}final_layer_norm.{p}")));
    }
    let r = rest.strip_prefix("transformer.resblocks.").ok_or(())?;
    let (i, x) = index(r).ok_or(())?;
    if i >= layers {
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
}

impl Shapes<'_> {
    fn get(&self, name: &str) -> Option<&[usize]> {
        self.map.get(name).map(|v| v.as_slice())
    }
    fn dim(&self, name: &str, d: usize) -> Option<usize> {
        self.get(name)?.get(d).copied()
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

/// The configs a diffusers folder would carry, read off the shapes.
struct Configs {
    unet: Value,
    vae: Value,
    text: Value,
    scheduler: Value,
    lpb: usize,
    up_blocks: usize,
    /// OpenCLIP blocks kept (SD 2 uses the penultimate block's output).
    open_clip_layers: Option<usize>,
}

fn infer(path: &Path, s: &Shapes, h: &Hints) -> Result<Configs> {
    let need = |name: &str, d: usize| {
        s.dim(name, d)
            .ok_or_else(|| bad(path, format!("it has no {name}")))
    };
    // UNet
    let model_channels = need(&format!("{UNET}input_blocks.0.0.weight"), 0)?;
    let in_channels = need(&format!("{UNET}input_blocks.0.0.weight"), 1)?;
    let out_channels = need(&format!("{UNET}out.2.weight"), 0)?;
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
        channels.push(need(
            &format!("{UNET}input_blocks.{i}.0.out_layers.3.weight"),
            0,
        )?);
        let attn = format!("{UNET}input_blocks.{i}.1.");
        let n = s.count(&format!("{attn}transformer_blocks."));
        cross.push(n > 0);
        depth.push(n.max(1));
        if n > 0 {
            context_dim = Some(need(
                &format!("{attn}transformer_blocks.0.attn2.to_k.weight"),
                1,
            )?);
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
        (None, None, 1024) => channels.iter().map(|ch| ch / 64).collect(),
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
    let size = h.resolution.unwrap_or(if v_prediction { 768 } else { 512 });
    let unet = json!({
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

    // VAE
    let enc_blocks = s.count(&format!("{VAE}encoder.down."));
    let up_blocks = s.count(&format!("{VAE}decoder.up."));
    if enc_blocks == 0 || up_blocks != enc_blocks {
        return Err(bad(path, "its VAE is missing or incomplete"));
    }
    let vae_channels = (0..enc_blocks)
        .map(|i| need(&format!("{VAE}encoder.down.{i}.block.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>>>()?;
    let latent2 = need(&format!("{VAE}encoder.conv_out.weight"), 0)?;
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
        "scaling_factor": 0.18215,
    });

    // Text encoder
    let (text, open_clip_layers) = if let Some(shape) =
        s.get(&format!("{OPEN_CLIP}token_embedding.weight"))
    {
        let hidden = shape.get(1).copied().unwrap_or(0);
        let blocks = s.count(&format!("{OPEN_CLIP}transformer.resblocks."));
        let layers = blocks.saturating_sub(1);
        (
            json!({
                "architectures": ["CLIPTextModel"],
                "hidden_act": "gelu",
                "hidden_size": hidden,
                "intermediate_size": need(&format!("{OPEN_CLIP}transformer.resblocks.0.mlp.c_fc.weight"), 0)?,
                "num_hidden_layers": layers,
                "num_attention_heads": hidden / 64,
                "max_position_embeddings": need(&format!("{OPEN_CLIP}positional_embedding"), 0)?,
                "vocab_size": shape.first().copied().unwrap_or(0),
                "projection_dim": hidden,
            }),
            Some(layers),
        )
    } else {
        let emb = [
            format!("{CLIP_L}text_model.embeddings.token_embedding.weight"),
            format!("{CLIP_L}embeddings.token_embedding.weight"),
        ];
        let (prefix, shape) = emb
            .iter()
            .find_map(|n| {
                s.get(n)
                    .map(|sh| (n.replace("embeddings.token_embedding.weight", ""), sh))
            })
            .ok_or_else(|| bad(path, "it has no text encoder (cond_stage_model)"))?;
        let hidden = shape.get(1).copied().unwrap_or(0);
        if hidden == 0 || hidden % 64 != 0 {
            return Err(bad(
                path,
                format!(
                    "its text encoder is {hidden} wide, not a multiple of CLIP's 64-channel heads"
                ),
            ));
        }
        (
            json!({
                "architectures": ["CLIPTextModel"],
                "hidden_act": "quick_gelu",
                "hidden_size": hidden,
                "intermediate_size": need(&format!("{prefix}encoder.layers.0.mlp.fc1.weight"), 0)?,
                "num_hidden_layers": s.count(&format!("{prefix}encoder.layers.")),
                "num_attention_heads": hidden / 64,
                "max_position_embeddings": need(&format!("{prefix}embeddings.position_embedding.weight"), 0)?,
                "vocab_size": shape.first().copied().unwrap_or(0),
                "projection_dim": hidden,
            }),
            None,
        )
    };
    let scheduler = json!({
        "_class_name": if h.turbo { "EulerDiscreteScheduler" } else { "DDIMScheduler" },
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": if v_prediction { "v_prediction" } else { "epsilon" },
        "timestep_spacing": if h.turbo { "trailing" } else { "leading" },
        "steps_offset": 1, "set_alpha_to_one": false,
    });
    Ok(Configs {
        unet,
        vae,
        text,
        scheduler,
        lpb,
        up_blocks,
        open_clip_layers,
    })
}

/// Which output file a tensor goes to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Unet,
    Vae,
    Text,
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
            format!("its tensor {name} has no place in an SD 1.x/2.x model"),
        )
    };
    for (name, view) in st.iter() {
        let (part, mapped, matrix) = if let Some(rest) = name.strip_prefix(UNET) {
            (
                Part::Unet,
                unet_name(rest, c.lpb).ok_or_else(|| unknown(name))?,
                false,
            )
        } else if let Some(rest) = name.strip_prefix(VAE) {
            if rest.starts_with("loss.") {
                continue; // the discriminator some training checkpoints keep
            }
            let (n, m) = vae_name(rest, c.up_blocks).ok_or_else(|| unknown(name))?;
            (Part::Vae, n, m)
        } else if let Some(rest) = name.strip_prefix(OPEN_CLIP) {
            let layers = c.open_clip_layers.unwrap_or(0);
            match open_clip_name(rest, layers).map_err(|_| unknown(name))? {
                Some(n) => (Part::Text, n, false),
                None => continue,
            }
        } else if let Some(rest) = name.strip_prefix(CLIP_L) {
            if rest.ends_with("position_ids") {
                continue; // an integer buffer, rebuilt by the encoder
            }
            let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
            (Part::Text, format!("text_model.{rest}"), false)
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
                    data: &data[k * third..(k + 1) * third],
                });
            }
            continue;
        }
        let shape = if matrix && shape.len() == 4 && shape[2] == 1 && shape[3] == 1 {
            shape[..2].to_vec()
        } else {
            shape
        };
        list.push(Out {
            name: mapped,
            dtype,
            shape,
            data,
        });
    }
    for (part, what) in [
        (Part::Unet, "UNet"),
        (Part::Vae, "VAE"),
        (Part::Text, "text encoder"),
    ] {
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
            TensorView::new(t.dtype, t.shape.clone(), t.data)
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

fn write_tokenizer(out: &Path, source: &TokenizerSource, vocab_size: usize) -> Result<()> {
    let dir = out.join("tokenizer");
    std::fs::create_dir_all(&dir)
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
    if names.iter().any(|n| {
        n.starts_with("conditioner.embedders.") || n.starts_with("model.diffusion_model.label_emb.")
    }) {
        return Err(Error::invalid(format!(
            "{} is a single-file SDXL checkpoint, which Atelier cannot convert yet (single-file SD 1.x and 2.x can); import the model's diffusers folder instead (unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/)",
            src.display()
        )));
    }
    if !names.iter().any(|n| n.starts_with(UNET)) {
        return Err(bad(
            src,
            "it has no model.diffusion_model.* tensors (a LoRA, a VAE or an embedding alone cannot be imported as a model)",
        ));
    }
    let shapes = Shapes {
        map: st.iter().map(|(n, v)| (n, v.shape().to_vec())).collect(),
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

    for (part, sub, file, config, config_name) in [
        (
            Part::Unet,
            "unet",
            "diffusion_pytorch_model.safetensors",
            &configs.unet,
            "config.json",
        ),
        (
            Part::Vae,
            "vae",
            "diffusion_pytorch_model.safetensors",
            &configs.vae,
            "config.json",
        ),
        (
            Part::Text,
            "text_encoder",
            "model.safetensors",
            &configs.text,
            "config.json",
        ),
    ] {
        let dir = out.join(sub);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        write_part(
            &dir.join(file),
            parts.get(&part).map(|v| v.as_slice()).unwrap_or(&[]),
        )?;
        write_atomic(
            &dir.join(config_name),
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
    let vocab_size = configs.text["vocab_size"].as_u64().unwrap_or(0) as usize;
    write_tokenizer(out, tokenizer, vocab_size)?;
    drop(st);
    drop(map);
    let index = json!({
        "_class_name": "StableDiffusionPipeline",
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
        assert_eq!(unet_name("label_emb.0.0.weight", 2), None);
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
        assert_eq!(
            open_clip_name("transformer.resblocks.22.mlp.c_fc.weight", 23),
            Ok(Some("text_model.encoder.layers.22.mlp.fc1.weight".into()))
        );
        assert_eq!(
            open_clip_name("transformer.resblocks.23.ln_1.weight", 23),
            Ok(None)
        );
        assert_eq!(open_clip_name("text_projection", 23), Ok(None));
        assert_eq!(open_clip_name("visual.proj", 23), Err(()));
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
