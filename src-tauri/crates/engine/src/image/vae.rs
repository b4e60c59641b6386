//! The Stable Diffusion VAE (diffusers' `AutoencoderKL`), on [`super::ops`] like the UNet: the
//! decoder turns latents into pixels after denoising, the encoder turns a source image into
//! latents for img2img and inpainting. It reads the diffusers weight names, including the
//! older attention names (`query`/`key`/`value`/`proj_attn`) and 1×1-convolution-shaped
//! attention weights that converted checkpoints carry; candle's own VAE is the tests'
//! reference.
//!
//! The encoder returns the latent distribution's mean: sampling it would need noise that a
//! seed must reproduce, and diffusers' img2img pipelines use the mean ("argmax") too.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::ops::{Conv2d, GroupNorm, attention};
use super::unet::Resnet;

/// diffusers' VAE uses this epsilon in every norm.
const EPS: f64 = 1e-6;

/// Single-head self-attention over the pixels of the innermost level, plus its input.
struct PixelAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

/// A `channels × channels` linear layer stored as `[c, c]` or as a 1×1 convolution `[c, c, 1, 1]`.
fn square_linear(vb: VarBuilder, channels: usize) -> Result<Linear> {
    let weight = match vb.get((channels, channels), "weight") {
        Ok(w) => w,
        Err(_) => vb
            .get((channels, channels, 1, 1), "weight")?
            .reshape((channels, channels))?,
    };
    Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
}

impl PixelAttention {
    fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        let [q, k, v, out] = names.map(|n| square_linear(vb.pp(n), channels));
        Ok(PixelAttention {
            norm: GroupNorm::load(&vb.pp("group_norm"), channels, groups, EPS, false)?,
            q: q?,
            k: k?,
            v: v?,
            out: out?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .norm
            .forward(x)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let y = attention(
            &self.q.forward(&tokens)?,
            &self.k.forward(&tokens)?,
            &self.v.forward(&tokens)?,
            1,
        )?;
        let y = self
            .out
            .forward(&y)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        y + x
    }
}

/// ResNet, attention, ResNet at the innermost level.
struct Middle {
    first: Resnet,
    attention: PixelAttention,
    second: Resnet,
}

impl Middle {
    fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let resnet = |i: usize| {
            Resnet::load(
                vb.pp("resnets").pp(i),
                channels,
                channels,
                None,
                groups,
                EPS,
            )
        };
        Ok(Middle {
            first: resnet(0)?,
            attention: PixelAttention::load(vb.pp("attentions").pp("0"), channels, groups)?,
            second: resnet(1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.first.forward(x, None)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, None)
    }
}

/// The ResNets of one level and its resampling convolution.
struct Level {
    resnets: Vec<Resnet>,
    resample: Option<Conv2d>,
}

struct Encoder {
    conv_in: Conv2d,
    levels: Vec<Level>,
    middle: Middle,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

struct Decoder {
    conv_in: Conv2d,
    middle: Middle,
    levels: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// The VAE, ready to run.
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl Vae {
    /// Loads a VAE for RGB images; a missing or mis-shaped tensor is an error naming it.
    pub fn load(vb: VarBuilder, config: &AutoEncoderKLConfig) -> Result<Vae> {
        let ch = &config.block_out_channels;
        let n = ch.len();
        if n == 0 {
            candle_core::bail!("the VAE config has no blocks");
        }
        let (groups, layers, latent) = (
            config.norm_num_groups,
            config.layers_per_block,
            config.latent_channels,
        );
        let resnet = |vb: VarBuilder, c_in, c_out| Resnet::load(vb, c_in, c_out, None, groups, EPS);

        let e = vb.pp("encoder");
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let vb = e.pp("down_blocks").pp(i);
            let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
            let resnets = (0..layers)
                .map(|j| {
                    resnet(
                        vb.pp("resnets").pp(j),
                        if j == 0 { c_in } else { ch[i] },
                        ch[i],
                    )
                })
                .collect::<Result<_>>()?;
            // Stride 2 without padding: the input is padded on the right and bottom only.
            let resample = (i + 1 < n)
                .then(|| {
                    Conv2d::load(
                        &vb.pp("downsamplers").pp("0").pp("conv"),
                        ch[i],
                        ch[i],
                        3,
                        2,
                        0,
                    )
                })
                .transpose()?;
            down.push(Level { resnets, resample });
        }
        let encoder = Encoder {
            conv_in: Conv2d::load(&e.pp("conv_in"), 3, ch[0], 3, 1, 1)?,
            levels: down,
            middle: Middle::load(e.pp("mid_block"), ch[n - 1], groups)?,
            norm_out: GroupNorm::load(&e.pp("conv_norm_out"), ch[n - 1], groups, EPS, true)?,
            conv_out: Conv2d::load(&e.pp("conv_out"), ch[n - 1], 2 * latent, 3, 1, 1)?,
        };

        let d = vb.pp("decoder");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let vb = d.pp("up_blocks").pp(i);
            let c_out = ch[n - 1 - i];
            let prev = ch[(n - i).min(n - 1)];
            let resnets = (0..=layers)
                .map(|j| {
                    resnet(
                        vb.pp("resnets").pp(j),
                        if j == 0 { prev } else { c_out },
                        c_out,
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < n)
                .then(|| Conv2d::load_upsampler(&vb, c_out))
                .transpose()?;
            up.push(Level { resnets, resample });
        }
        let decoder = Decoder {
            conv_in: Conv2d::load(&d.pp("conv_in"), latent, ch[n - 1], 3, 1, 1)?,
            middle: Middle::load(d.pp("mid_block"), ch[n - 1], groups)?,
            levels: up,
            norm_out: GroupNorm::load(&d.pp("conv_norm_out"), ch[0], groups, EPS, true)?,
            conv_out: Conv2d::load(&d.pp("conv_out"), ch[0], 3, 3, 1, 1)?,
        };
        Ok(Vae {
            encoder,
            decoder,
            quant_conv: config
                .use_quant_conv
                .then(|| Conv2d::load(&vb.pp("quant_conv"), 2 * latent, 2 * latent, 1, 1, 0))
                .transpose()?,
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::load(&vb.pp("post_quant_conv"), latent, latent, 1, 1, 0))
                .transpose()?,
            latent_channels: latent,
        })
    }

    /// Pixels `[batch, 3, h, w]` in [−1, 1] to the mean of their latent distribution
    /// `[batch, latent, h/8, w/8]` (unscaled).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(x)?;
        for level in &e.levels {
            for r in &level.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(conv) = &level.resample {
                x = conv.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        x = e.middle.forward(&x)?;
        x = e.conv_out.forward(&e.norm_out.forward(&x)?)?;
        if let Some(q) = &self.quant_conv {
            x = q.forward(&x)?;
        }
        x.narrow(1, 0, self.latent_channels)
    }

    /// Unscaled latents `[batch, latent, h, w]` to pixels `[batch, 3, 8h, 8w]`, about [−1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let d = &self.decoder;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        let mut x = d.middle.forward(&d.conv_in.forward(&z)?)?;
        for level in &d.levels {
            for r in &level.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(conv) = &level.resample {
                let (h, w) = (x.dim(2)?, x.dim(3)?);
                x = conv.forward_upsampled(&x, 2 * h, 2 * w)?;
            }
        }
        d.conv_out.forward(&d.norm_out.forward(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};

    use super::super::ops::testing::{load_file, max_diff, save_with_varied_norms, values};
    use super::Vae;

    /// Our VAE against candle's on the same weights file: decode, and encode's mean (candle's
    /// distribution's first half), with odd latent sides and non-trivial norms.
    #[test]
    fn matches_candles_vae_on_the_same_weights() {
        let dev = Device::Cpu;
        let cfg = AutoEncoderKLConfig {
            block_out_channels: vec![32, 64, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            use_quant_conv: true,
            use_post_quant_conv: true,
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vae.safetensors");
        {
            let vm = VarMap::new();
            AutoEncoderKL::new(
                VarBuilder::from_varmap(&vm, DType::F32, &dev),
                3,
                3,
                cfg.clone(),
            )
            .unwrap();
            // The log-variance half far negative: candle's sample is then its mean.
            let bias: Vec<f32> = (0..8)
                .map(|c| if c < 4 { 0.1 * c as f32 } else { -30000.0 })
                .collect();
            vm.data().lock().unwrap()["quant_conv.bias"]
                .set(&Tensor::from_vec(bias, 8, &dev).unwrap())
                .unwrap();
            save_with_varied_norms(&vm, 50, &file);
        }
        let vb = || load_file(&file);
        let reference = AutoEncoderKL::new(vb(), 3, 3, cfg.clone()).unwrap();
        let ours = Vae::load(vb(), &cfg).unwrap();

        let z = Tensor::from_vec(values(2 * 4 * 5 * 7, 1, 1.0), (2, 4, 5, 7), &dev).unwrap();
        let (diff, scale) = max_diff(&ours.decode(&z).unwrap(), &reference.decode(&z).unwrap());
        assert!(
            scale > 0.1 && diff <= 1e-4 * scale,
            "decode: {diff} against {scale}"
        );

        let x = Tensor::from_vec(values(3 * 36 * 28, 2, 1.0), (1, 3, 36, 28), &dev).unwrap();
        let want = reference.encode(&x).unwrap().sample().unwrap();
        let got = ours.encode(&x).unwrap();
        assert_eq!(got.dims(), &[1, 4, 9, 7]);
        let (diff, scale) = max_diff(&got, &want);
        assert!(
            scale > 0.01 && diff <= 1e-4 * scale,
            "encode: {diff} against {scale}"
        );
    }
}
