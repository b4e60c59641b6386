//! The Stable Diffusion UNet (diffusers' `UNet2DConditionModel`: SD 1.x, SD 2.x, SD-Turbo),
//! written for Atelier so that its convolutions, group norms and attention run on
//! [`super::ops`] — `atelier_cpu`'s kernels on the CPU — instead of candle's generic ones.
//! It reads the same diffusers weight names and config as candle's own UNet, which the tests
//! run beside it as the reference.
//!
//! Shape, in diffusers' terms: `conv_in`, a timestep embedding, down blocks (ResNet blocks,
//! with a spatial transformer after each when the block has cross-attention, then a stride-2
//! convolution), a middle block (ResNet, transformer, ResNet), up blocks (each ResNet takes
//! the matching down activation concatenated on the channels; nearest ×2 then a convolution)
//! and `conv_out`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm, linear, linear_no_bias};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};

use super::ops::{Conv2d, GroupNorm, attention, geglu};

/// The transformer's group norm uses diffusers' fixed epsilon, not the config's.
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
const LAYER_NORM_EPS: f64 = 1e-5;

/// One ResNet block: (norm, SiLU, 3×3 conv) twice, with the timestep embedding added in
/// between in the UNet (the VAE has none), plus the input (through a 1×1 conv when the
/// channel count changes). Shared with [`super::vae`].
pub(super) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    pub(super) fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let norm = |vb, c| GroupNorm::load(&vb, c, groups, eps, true);
        Ok(Resnet {
            norm1: norm(vb.pp("norm1"), c_in)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: temb
                .map(|t| linear(t, c_out, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: norm(vb.pp("norm2"), c_out)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            shortcut: (c_in != c_out)
                .then(|| Conv2d::load(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0))
                .transpose()?,
        })
    }

    /// `temb` is the timestep embedding after its SiLU, `[batch, temb]` (UNet only).
    pub(super) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward(x)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(temb)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Attention with `heads` heads; keys and values from `context` when given (cross-attention).
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Attention {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out.forward(&attention(&q, &k, &v, self.heads)?)
    }
}

/// Self-attention, cross-attention and a GEGLU feed-forward, each after a layer norm and
/// added to its input.
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn load(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(TransformerBlock {
            norm1: layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm1"))?,
            attn1: Attention::load(vb.pp("attn1"), dim, dim, heads)?,
            norm2: layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm2"))?,
            attn2: Attention::load(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: layer_norm(dim, LAYER_NORM_EPS, vb.pp("norm3"))?,
            ff_in: linear(dim, 2 * inner, vb.pp("ff").pp("net").pp("0").pp("proj"))?,
            ff_out: linear(inner, dim, vb.pp("ff").pp("net").pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        let h = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        // GEGLU with the exact (erf) GELU, as diffusers computes it.
        self.ff_out.forward(&geglu(&h)?)? + x
    }
}

/// Into and out of the transformer: a 1×1 convolution on the image (SD 1.x) or a linear
/// layer on the token sequence (SD 2.x, `use_linear_projection`).
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel`: group norm, projection to tokens, transformer blocks,
/// projection back, plus the input.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    fn load(
        vb: VarBuilder,
        channels: usize,
        depth: usize,
        heads: usize,
        cfg: &Settings,
    ) -> Result<Self> {
        let projection = |vb: VarBuilder| -> Result<Projection> {
            Ok(if cfg.linear_projection {
                Projection::Linear(linear(channels, channels, vb)?)
            } else {
                Projection::Conv(Conv2d::load(&vb, channels, channels, 1, 1, 0)?)
            })
        };
        let blocks = (0..depth)
            .map(|i| {
                TransformerBlock::load(
                    vb.pp("transformer_blocks").pp(i),
                    channels,
                    cfg.context_dim,
                    heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(SpatialTransformer {
            norm: GroupNorm::load(
                &vb.pp("norm"),
                channels,
                cfg.groups,
                TRANSFORMER_NORM_EPS,
                false,
            )?,
            proj_in: projection(vb.pp("proj_in"))?,
            blocks,
            proj_out: projection(vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let y = self.norm.forward(x)?;
        let mut y = match &self.proj_in {
            Projection::Conv(conv) => conv.image_to_tokens(&y)?,
            Projection::Linear(l) => {
                l.forward(&y.flatten_from(2)?.transpose(1, 2)?.contiguous()?)?
            }
        };
        for block in &self.blocks {
            y = block.forward(&y, context)?;
        }
        let y = match &self.proj_out {
            Projection::Conv(conv) => conv.tokens_to_image(&y, h, w)?,
            Projection::Linear(l) => l.forward(&y)?.transpose(1, 2)?.reshape((b, c, h, w))?,
        };
        y + x
    }
}

/// A down or up block: ResNets, each followed by a transformer when the block has
/// cross-attention, then the resampling convolution (absent on the innermost level).
struct Block {
    resnets: Vec<Resnet>,
    transformers: Vec<SpatialTransformer>,
    resample: Option<Conv2d>,
}

impl Block {
    fn resnet_then_attention(
        &self,
        i: usize,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let x = self.resnets[i].forward(x, Some(temb))?;
        match self.transformers.get(i) {
            Some(t) => t.forward(&x, context),
            None => Ok(x),
        }
    }
}

/// The config values the blocks need.
struct Settings {
    groups: usize,
    eps: f64,
    context_dim: usize,
    linear_projection: bool,
    /// Width of the timestep embedding every ResNet receives.
    temb: usize,
}

impl Settings {
    fn resnet(&self, vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Resnet> {
        Resnet::load(vb, c_in, c_out, Some(self.temb), self.groups, self.eps)
    }

    /// The `count` transformers of a block (`attentions.0..count`), none without cross-attention.
    fn transformers(
        &self,
        vb: VarBuilder,
        count: usize,
        channels: usize,
        block: &BlockConfig,
    ) -> Result<Vec<SpatialTransformer>> {
        let Some(depth) = block.use_cross_attn else {
            return Ok(Vec::new());
        };
        (0..count)
            .map(|j| {
                SpatialTransformer::load(
                    vb.pp("attentions").pp(j),
                    channels,
                    depth,
                    block.attention_head_dim,
                    self,
                )
            })
            .collect()
    }
}

/// The UNet, ready to run.
pub struct UNet {
    conv_in: Conv2d,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input: bool,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<Block>,
    mid: Block,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    add_embedding: Option<AddEmbedding>,
}

/// The sinusoidal embedding of each of `values` in `channels` values: `[values, channels]`, f32
/// (diffusers' `Timesteps`, used for the timestep and for SDXL's size and crop ids).
fn sinusoidal_embedding(
    channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    values: &[f64],
    device: &candle_core::Device,
) -> Result<Tensor> {
    let half = channels / 2;
    let frequencies: Vec<f64> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - freq_shift)).exp())
        .collect();
    let mut rows = Vec::with_capacity(values.len() * 2 * half);
    for &value in values {
        let (sin, cos): (Vec<f32>, Vec<f32>) = frequencies
            .iter()
            .map(|f| {
                let a = (value * f) as f32;
                (a.sin(), a.cos())
            })
            .unzip();
        if flip_sin_to_cos {
            rows.extend(cos.into_iter().chain(sin));
        } else {
            rows.extend(sin.into_iter().chain(cos));
        }
    }
    Tensor::from_vec(rows, (values.len(), 2 * half), device)
}

/// SDXL's extra conditioning (`addition_embed_type: "text_time"`): the pooled text embedding
/// and six size and crop ids, embedded and added to the timestep embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// Channels of each id's sinusoidal embedding (`addition_time_embed_dim`, 256).
    pub time_dim: usize,
    /// The embedding MLP's input: pooled size + 6 × `time_dim`
    /// (`projection_class_embeddings_input_dim`, 2816).
    pub input_dim: usize,
}

/// What an SDXL UNet reads beside the latents and the text states: `text_embeds`
/// `[batch, pooled]` and `time_ids` `[batch, 6]` (original height and width, crop top and left,
/// target height and width).
pub struct Added<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a [[f64; 6]],
}

struct AddEmbedding {
    spec: TextTime,
    linear_1: Linear,
    linear_2: Linear,
}

impl AddEmbedding {
    fn forward(&self, added: &Added, flip: bool, shift: f64) -> Result<Tensor> {
        let batch = added.time_ids.len();
        let (b, pooled) = added.text_embeds.dims2()?;
        if b != batch || pooled + 6 * self.spec.time_dim != self.spec.input_dim {
            candle_core::bail!(
                "SDXL conditioning: {b} pooled embeddings of {pooled} and {batch} sets of ids do not fit an input of {}",
                self.spec.input_dim
            );
        }
        let ids: Vec<f64> = added.time_ids.iter().flatten().copied().collect();
        let device = added.text_embeds.device();
        let times = sinusoidal_embedding(self.spec.time_dim, flip, shift, &ids, device)?
            .reshape((batch, 6 * self.spec.time_dim))?
            .to_dtype(added.text_embeds.dtype())?;
        let input = Tensor::cat(&[added.text_embeds, &times], 1)?;
        self.linear_2
            .forward(&self.linear_1.forward(&input)?.silu()?)
    }
}

impl UNet {
    /// Loads a UNet's weights (diffusers names) for `config`; a missing or mis-shaped tensor is
    /// an error naming it.
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &UNet2DConditionModelConfig,
        text_time: Option<TextTime>,
    ) -> Result<UNet> {
        let blocks = &config.blocks;
        let n = blocks.len();
        if n == 0 {
            candle_core::bail!("the UNet config has no blocks");
        }
        let channels: Vec<usize> = blocks.iter().map(|b| b.out_channels).collect();
        let temb = 4 * channels[0];
        let cfg = Settings {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            context_dim: config.cross_attention_dim,
            linear_projection: config.use_linear_projection,
            temb,
        };
        let layers = config.layers_per_block;

        let mut down = Vec::with_capacity(n);
        for (i, block) in blocks.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let c_out = channels[i];
            let c_in = if i == 0 { channels[0] } else { channels[i - 1] };
            let resnets = (0..layers)
                .map(|j| {
                    cfg.resnet(
                        vb.pp("resnets").pp(j),
                        if j == 0 { c_in } else { c_out },
                        c_out,
                    )
                })
                .collect::<Result<_>>()?;
            let transformers = cfg.transformers(vb.clone(), layers, c_out, block)?;
            let resample = (i + 1 < n)
                .then(|| {
                    Conv2d::load(
                        &vb.pp("downsamplers").pp("0").pp("conv"),
                        c_out,
                        c_out,
                        3,
                        2,
                        config.downsample_padding,
                    )
                })
                .transpose()?;
            down.push(Block {
                resnets,
                transformers,
                resample,
            });
        }

        let last = &blocks[n - 1];
        let c_mid = channels[n - 1];
        let vb_mid = vb.pp("mid_block");
        let mid = Block {
            resnets: (0..2)
                .map(|j| cfg.resnet(vb_mid.pp("resnets").pp(j), c_mid, c_mid))
                .collect::<Result<_>>()?,
            transformers: vec![SpatialTransformer::load(
                vb_mid.pp("attentions").pp("0"),
                c_mid,
                last.use_cross_attn.unwrap_or(1),
                last.attention_head_dim,
                &cfg,
            )?],
            resample: None,
        };

        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("up_blocks").pp(i);
            let level = n - 1 - i;
            let block = &blocks[level];
            let c_out = channels[level];
            let prev = channels[(level + 1).min(n - 1)];
            let skip_last = channels[level.saturating_sub(1)];
            let resnets = (0..=layers)
                .map(|j| {
                    let from_below = if j == 0 { prev } else { c_out };
                    let skip = if j == layers { skip_last } else { c_out };
                    cfg.resnet(vb.pp("resnets").pp(j), from_below + skip, c_out)
                })
                .collect::<Result<_>>()?;
            let transformers = cfg.transformers(vb.clone(), layers + 1, c_out, block)?;
            let resample = (i + 1 < n)
                .then(|| Conv2d::load_upsampler(&vb, c_out))
                .transpose()?;
            up.push(Block {
                resnets,
                transformers,
                resample,
            });
        }

        Ok(UNet {
            conv_in: Conv2d::load(&vb.pp("conv_in"), in_channels, channels[0], 3, 1, 1)?,
            time_channels: channels[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            center_input: config.center_input_sample,
            time_linear_1: linear(channels[0], temb, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: linear(temb, temb, vb.pp("time_embedding").pp("linear_2"))?,
            down,
            mid,
            up,
            norm_out: GroupNorm::load(
                &vb.pp("conv_norm_out"),
                channels[0],
                cfg.groups,
                cfg.eps,
                true,
            )?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), channels[0], out_channels, 3, 1, 1)?,
            add_embedding: text_time
                .map(|spec| -> Result<AddEmbedding> {
                    let vb = vb.pp("add_embedding");
                    Ok(AddEmbedding {
                        spec,
                        linear_1: linear(spec.input_dim, temb, vb.pp("linear_1"))?,
                        linear_2: linear(temb, temb, vb.pp("linear_2"))?,
                    })
                })
                .transpose()?,
        })
    }

    /// The noise (or v) prediction for latents `x` `[batch, in, h, w]` at `timestep`, given
    /// the text encoder's states `context` `[batch, tokens, context_dim]`.
    pub fn forward(&self, x: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_added(x, timestep, context, None)
    }

    /// Whether the UNet needs [`Added`] conditioning (SDXL).
    pub fn needs_added(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// [`UNet::forward`] with SDXL's extra conditioning, which an SDXL UNet requires and
    /// others ignore.
    pub fn forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&Added>,
    ) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let x = if self.center_input {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };
        let temb = sinusoidal_embedding(
            self.time_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
            &vec![timestep; batch],
            x.device(),
        )?
        .to_dtype(x.dtype())?;
        let mut temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        if let Some(add) = &self.add_embedding {
            let Some(added) = added else {
                candle_core::bail!("an SDXL UNet needs the pooled text embedding and size ids");
            };
            temb = (temb + add.forward(added, self.flip_sin_to_cos, self.freq_shift)?)?;
        }
        // Every ResNet applies SiLU to the embedding before its projection: do it once.
        let temb = temb.silu()?;

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for i in 0..block.resnets.len() {
                x = block.resnet_then_attention(i, &x, &temb, context)?;
                skips.push(x.clone());
            }
            if let Some(conv) = &block.resample {
                x = conv.forward(&x)?;
                skips.push(x.clone());
            }
        }
        x = self.mid.resnets[0].forward(&x, Some(&temb))?;
        x = self.mid.transformers[0].forward(&x, context)?;
        x = self.mid.resnets[1].forward(&x, Some(&temb))?;
        for block in &self.up {
            for i in 0..block.resnets.len() {
                let Some(skip) = skips.pop() else {
                    candle_core::bail!(
                        "the UNet's up blocks need more skip connections than its down blocks made"
                    );
                };
                x = Tensor::cat(&[&x, &skip], 1)?;
                x = block.resnet_then_attention(i, &x, &temb, context)?;
            }
            if let Some(conv) = &block.resample {
                // To the size of the level above: 2× for sides divisible by 8 latents, one
                // less where a stride-2 convolution rounded an odd side up.
                let (h, w) = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (2 * x.dim(2)?, 2 * x.dim(3)?),
                };
                x = conv.forward_upsampled(&x, h, w)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::stable_diffusion::unet_2d::{
        BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig,
    };

    use super::super::ops::testing::{load_file, max_diff, save_with_varied_norms, values};
    use super::UNet;

    fn config(linear_projection: bool, heads: [usize; 3]) -> UNet2DConditionModelConfig {
        let block = |out_channels, cross: Option<usize>, h| BlockConfig {
            out_channels,
            use_cross_attn: cross,
            attention_head_dim: h,
        };
        UNet2DConditionModelConfig {
            blocks: vec![
                block(32, Some(1), heads[0]),
                block(64, Some(2), heads[1]),
                block(64, None, heads[2]),
            ],
            layers_per_block: 2,
            // 32, as in every released SD model: candle's plain down blocks ignore this value
            // and always use 32 groups, so the reference is only right for 32.
            norm_num_groups: 32,
            cross_attention_dim: 24,
            use_linear_projection: linear_projection,
            ..Default::default()
        }
    }

    /// candle's UNet for `cfg` with seeded norms, saved in `dir`: the weights file the tests
    /// load both UNets from.
    fn candles_weights(
        cfg: &UNet2DConditionModelConfig,
        seed: u64,
        dir: &std::path::Path,
    ) -> std::path::PathBuf {
        let file = dir.join("unet.safetensors");
        let vm = VarMap::new();
        UNet2DConditionModel::new(
            VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu),
            4,
            4,
            false,
            cfg.clone(),
        )
        .unwrap();
        save_with_varied_norms(&vm, seed, &file);
        file
    }

    /// Our UNet against candle's on the same weights file: SD 1.x-style (1×1 projections) and
    /// SD 2.x-style (linear projections), three levels, an odd latent size (the up path must
    /// meet the down path's rounded sizes), norms with non-trivial scales and shifts.
    #[test]
    fn matches_candles_unet_on_the_same_weights() {
        let dev = Device::Cpu;
        for (linear, heads, (b, h, w)) in [
            (false, [2, 4, 4], (2, 12, 10)),
            (true, [1, 2, 8], (1, 9, 7)),
        ] {
            let cfg = config(linear, heads);
            let dir = tempfile::tempdir().unwrap();
            let file = candles_weights(&cfg, 1000, dir.path());
            let vb = || load_file(&file);
            let reference = UNet2DConditionModel::new(vb(), 4, 4, false, cfg.clone()).unwrap();
            let ours = UNet::load(vb(), 4, 4, &cfg, None).unwrap();
            let x = Tensor::from_vec(values(b * 4 * h * w, 1, 1.0), (b, 4, h, w), &dev).unwrap();
            let context = Tensor::from_vec(values(b * 5 * 24, 2, 1.0), (b, 5, 24), &dev).unwrap();
            let want = reference.forward(&x, 311.0, &context).unwrap();
            let got = ours.forward(&x, 311.0, &context).unwrap();
            assert_eq!(got.dims(), want.dims());
            let (diff, scale) = max_diff(&got, &want);
            // candle's GEGLU uses the tanh form of GELU, ours the exact one (as diffusers):
            // they differ by up to ~1e-3 per element. A wiring mistake differs by O(1).
            assert!(scale > 0.1, "a degenerate output ({scale})");
            assert!(
                diff <= 5e-3 * scale,
                "linear projection {linear}: max difference {diff} against a scale of {scale}"
            );
            eprintln!("linear projection {linear}: max difference {diff:e}, output scale {scale}");
        }
    }

    /// Same seed and settings give the same bytes whatever the thread count: the kernels split
    /// work differently (bands across threads, or one product's columns across threads, by
    /// the number of bands) but never split a sum.
    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        let dev = Device::Cpu;
        let cfg = config(false, [2, 4, 4]);
        let dir = tempfile::tempdir().unwrap();
        let file = candles_weights(&cfg, 2000, dir.path());
        let unet = UNet::load(load_file(&file), 4, 4, &cfg, None).unwrap();
        // 64² latents: eight bands per image at the top level (spread across threads), two at
        // the next (one product spread across threads).
        let x = Tensor::from_vec(values(2 * 4 * 64 * 64, 3, 1.0), (2, 4, 64, 64), &dev).unwrap();
        let context = Tensor::from_vec(values(2 * 5 * 24, 4, 1.0), (2, 5, 24), &dev).unwrap();
        let run = |threads: usize| -> Vec<f32> {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| unet.forward(&x, 311.0, &context))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            let same = one
                .iter()
                .zip(&other)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{threads} threads give other values than 1 thread");
        }
    }

    /// SDXL's UNet: the pooled text embedding and the size ids go through `add_embedding`
    /// into the timestep embedding; without them it refuses to run.
    #[test]
    fn sdxl_unets_read_the_pooled_embedding_and_size_ids() {
        let dev = Device::Cpu;
        let cfg = config(true, [1, 2, 8]);
        let spec = super::TextTime {
            time_dim: 8,
            input_dim: 12 + 6 * 8,
        };
        // Our loader asks for the convolutions without an initialiser, so a VarMap starts
        // them at zero: give every weight seeded values, then load what was saved.
        let vm = VarMap::new();
        UNet::load(
            VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev),
            4,
            4,
            &cfg,
            Some(spec),
        )
        .unwrap();
        for (i, (_, var)) in vm.data().lock().unwrap().iter().enumerate() {
            let v = values(var.elem_count(), 50 + i as u64, 0.3);
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unet.safetensors");
        save_with_varied_norms(&vm, 4000, &file);
        let unet = UNet::load(load_file(&file), 4, 4, &cfg, Some(spec)).unwrap();
        assert!(unet.needs_added());
        let x = Tensor::from_vec(values(2 * 4 * 8 * 8, 5, 1.0), (2, 4, 8, 8), &dev).unwrap();
        let context = Tensor::from_vec(values(2 * 5 * 24, 6, 1.0), (2, 5, 24), &dev).unwrap();
        assert!(
            unet.forward(&x, 500.0, &context).is_err(),
            "SDXL needs its conditioning"
        );
        let pooled = Tensor::from_vec(values(2 * 12, 7, 1.0), (2, 12), &dev).unwrap();
        let ids = [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]; 2];
        let run = |pooled: &Tensor, ids: &[[f64; 6]]| {
            let added = super::Added {
                text_embeds: pooled,
                time_ids: ids,
            };
            unet.forward_added(&x, 500.0, &context, Some(&added))
        };
        let a = run(&pooled, &ids).unwrap();
        assert_eq!(a.dims(), &[2, 4, 8, 8]);
        assert!(
            max_diff(&a, &a.zeros_like().unwrap()).0 > 1e-3,
            "a degenerate output"
        );
        assert_eq!(max_diff(&run(&pooled, &ids).unwrap(), &a).0, 0.0);
        let cropped = [[64.0, 64.0, 8.0, 0.0, 64.0, 64.0]; 2];
        assert!(
            max_diff(&run(&pooled, &cropped).unwrap(), &a).0 > 1e-6,
            "ids matter"
        );
        let other = (&pooled * 2.0).unwrap();
        assert!(
            max_diff(&run(&other, &ids).unwrap(), &a).0 > 1e-6,
            "pooled matters"
        );
        assert!(run(&pooled, &ids[..1]).is_err(), "one set of ids per image");
        let wide = Tensor::zeros((2, 13), candle_core::DType::F32, &dev).unwrap();
        assert!(run(&wide, &ids).is_err(), "the pooled size must fit");
    }
}
