//! One image from a loaded model: prompt windows through CLIP (emphasis applied), latents from
//! the seeded host RNG, the sampler walking the noise levels with classifier-free guidance,
//! a cheap preview at every step, and the VAE decode.

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{self, LoadedModel};
use super::params::ImageParams;
use super::prompt::{WINDOW, Windows};
use super::sampler::{self, Prediction};
use crate::error::{Error, Result};

/// The RNG recorded with each image: noise is drawn from ChaCha8 seeded with the seed, turned
/// into normal values by Box–Muller, in latent order.
pub const RNG_NAME: &str = "chacha8-box-muller";

/// Standard-normal noise from a seeded ChaCha8 stream, identical on every machine.
pub struct HostNoise {
    rng: ChaCha8Rng,
    spare: Option<f32>,
}

impl HostNoise {
    pub fn new(seed: u64) -> HostNoise {
        HostNoise {
            rng: ChaCha8Rng::seed_from_u64(seed),
            spare: None,
        }
    }

    fn next(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        // u1 in (0, 1] so the log is finite.
        let u1: f64 = 1.0 - self.rng.random::<f64>();
        let u2: f64 = self.rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }

    pub fn tensor(&mut self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next()).collect();
        Tensor::from_vec(v, shape, device)
    }
}

/// Spherical interpolation between two noise tensors: the blend keeps the norm a Gaussian
/// sample has, which a straight lerp would shrink (and wash the image out).
pub fn slerp(a: &Tensor, b: &Tensor, t: f64) -> candle_core::Result<Tensor> {
    if t <= 0.0 {
        return Ok(a.clone());
    }
    let norm = |x: &Tensor| -> candle_core::Result<f64> {
        Ok(x.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
    };
    let dot = (a * b)?.sum_all()?.to_scalar::<f32>()? as f64 / (norm(a)? * norm(b)?);
    let omega = dot.clamp(-1.0, 1.0).acos();
    if omega.sin().abs() < 1e-6 {
        return a.affine(1.0 - t, 0.0)? + b.affine(t, 0.0)?;
    }
    let ka = ((1.0 - t) * omega).sin() / omega.sin();
    let kb = (t * omega).sin() / omega.sin();
    a.affine(ka, 0.0)? + b.affine(kb, 0.0)?
}

/// A small RGB picture (for previews), row-major, 3 bytes a pixel.
#[derive(Debug, Clone)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Linear map from SD's 4 latent channels to RGB: close enough to see composition and colour
/// while denoising, at no cost (A1111 calls it "Approx cheap").
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

pub fn latent_preview(latent: &Tensor) -> candle_core::Result<Option<Rgb>> {
    let l = latent.i(0)?.to_dtype(DType::F32)?;
    let (c, h, w) = l.dims3()?;
    if c != 4 {
        return Ok(None);
    }
    let v = l.flatten_all()?.to_vec1::<f32>()?;
    let mut pixels = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for (k, _) in LATENT_RGB[0].iter().enumerate() {
                let s: f32 = (0..4)
                    .map(|ch| v[ch * h * w + y * w + x] * LATENT_RGB[ch][k])
                    .sum();
                pixels.push((((s + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8);
            }
        }
    }
    Ok(Some(Rgb {
        width: w as u32,
        height: h as u32,
        pixels,
    }))
}

/// What an image run needs in memory: the model's weights, resident once loaded, and one
/// image's working set on top of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeed {
    pub weights: u64,
    pub working: u64,
}

impl MemoryNeed {
    pub fn peak(&self) -> u64 {
        self.weights + self.working
    }
}

/// Loading leaves this share more resident than the tensors themselves (1/16; measured 5.6 %
/// for SD 1.5 and 5.8 % for SDXL after `memory::release`).
const LOAD_SLACK_DIVISOR: u64 = 16;
/// The CPU UNet's working set per latent pixel of the batch (measured 56 KiB for SD 1.5 at
/// 512², 49 KiB at 1536², 33 KiB for SDXL, whose top level has no attention).
const UNET_BYTES_PER_LATENT: u64 = 56 << 10;
/// The VAE decoder's working set per decoded pixel of a tile, and what it needs at any size
/// (fitted to the decode's peaks over the loaded model: 0.97 GiB at 512², 3.33 GiB at 1024²).
const VAE_BYTES_PER_PIXEL: u64 = 3 << 10;
const VAE_FIXED: u64 = 192 << 20;
/// The process around the model: the binary, tokenizers, previews.
const PROCESS: u64 = 256 << 20;

/// Estimates the peak memory of one `width × height` image (`cfg`: the UNet runs a batch of
/// two) with this model on `device`, so a run that
/// cannot fit is refused with a suggestion instead of being killed. On the CPU (f32, our
/// kernels: attention a block of queries at a time) the constants are fitted to
/// `atelier-cli bench image` peaks (docs/benchmarks.md); elsewhere candle materialises the
/// attention scores (batch × heads × L², L = latent pixels; one head of 512 channels in the VAE).
pub fn memory_need(
    info: &model::ImageModelInfo,
    device: &Device,
    width: u32,
    height: u32,
    cfg: bool,
) -> MemoryNeed {
    let cpu = device.is_cpu();
    let tensors: u64 = info
        .pieces
        .iter()
        .map(|pc| {
            // On the CPU everything is f32 but text encoders from a half-precision file, which
            // stay half (`model::text_weights`); on GPUs CLIP is f32 and the rest f16.
            let half_file = matches!(pc.dtype.as_str(), "F16" | "BF16");
            let per = match (cpu, pc.role.starts_with("text_encoder")) {
                (true, true) if half_file => 2,
                (true, _) | (false, true) => 4,
                (false, false) => 2,
            };
            pc.parameters * per
        })
        .sum();
    let pixels = width as u64 * height as u64;
    let l = pixels / 64;
    let batch = if cfg { 2 } else { 1 };
    // The VAE decodes at most a tile of TILE² latent pixels at once (`decode_tiles`).
    let tile_pixels = pixels.min((TILE * SCALE * TILE * SCALE) as u64);
    let working = if cpu {
        let unet = batch * l * UNET_BYTES_PER_LATENT;
        let vae = tile_pixels * VAE_BYTES_PER_PIXEL + VAE_FIXED;
        // Added, not the larger of the two: the allocator keeps the UNet's freed pages through
        // the decode (decision #20) and cannot always reuse them for the decoder's larger
        // tensors; the decode's measured peak rose with the UNet's working set.
        unet + vae
    } else {
        let heads = 8u64;
        let unet_attention = batch * heads * l * l * 4 * 2; // scores and softmax
        let vae_l = tile_pixels / 64;
        unet_attention.max(128 * tile_pixels * 4 * 6 + vae_l * vae_l * 4 * 2)
    };
    MemoryNeed {
        weights: tensors + tensors / LOAD_SLACK_DIVISOR,
        working: working + PROCESS,
    }
}

/// `MemAvailable` from /proc/meminfo (Linux); `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Refuses a CPU run that would not fit in the memory this machine has free. `resident`: the
/// model is loaded already, so its weights are no longer part of the free memory.
pub fn check_memory(
    info: &model::ImageModelInfo,
    device: &Device,
    p: &ImageParams,
    resident: bool,
) -> Result<()> {
    if !device.is_cpu() {
        return Ok(()); // GPU memory errors come back from the driver as errors, not kills
    }
    match available_memory() {
        Some(free) => fits(
            info,
            device,
            p.width,
            p.height,
            p.uses_cfg(),
            resident,
            free,
        ),
        None => Ok(()),
    }
}

/// [`check_memory`] against `free` bytes: the refusal says what would fit, a smaller size
/// when there is one (the same shape, sides in steps of 64), else that memory must be freed.
fn fits(
    info: &model::ImageModelInfo,
    device: &Device,
    width: u32,
    height: u32,
    cfg: bool,
    resident: bool,
    free: u64,
) -> Result<()> {
    let to_find = |n: MemoryNeed| n.working + if resident { 0 } else { n.weights };
    let asked = memory_need(info, device, width, height, cfg);
    let need = to_find(asked);
    if need <= free {
        return Ok(());
    }
    let smaller = (1..8u32).rev().find_map(|eighths| {
        let side = |s: u32| (s * eighths / 8) / 64 * 64;
        let (w, h) = (side(width), side(height));
        (w >= 256 && h >= 256 && to_find(memory_need(info, device, w, h, cfg)) <= free)
            .then_some((w, h))
    });
    let what = if resident {
        format!("{width}×{height} needs about {} more", gib(need))
    } else {
        format!(
            "{} and a {width}×{height} image need about {} ({} of it the model)",
            info.id,
            gib(need),
            gib(asked.weights)
        )
    };
    Err(Error::invalid(match smaller {
        Some((w, h)) => format!(
            "{what} and {} of memory is free; choose a smaller size such as {w}×{h}, or close other programs",
            gib(free)
        ),
        None => format!(
            "{what} and {} of memory is free; close other programs (or use a smaller model)",
            gib(free)
        ),
    }))
}

/// What the UNet is conditioned on, `[uncond?, cond]` along the batch: the text states and
/// (SDXL) the pooled embedding of the second encoder.
struct Conditioning {
    context: Tensor,
    pooled: Option<Tensor>,
}

/// A prompt's token windows for each text encoder (one for SD 1.x/2.x, two for SDXL: the same
/// tokens, padded differently), padded with empty windows to `count`.
fn windows_of(model: &LoadedModel, text: &str) -> Result<(Windows, Option<Windows>)> {
    let first = model.tokenizer.windows(text)?;
    let second = match &model.sdxl {
        Some(x) => Some(x.tokenizer.windows(text)?),
        None => None,
    };
    Ok((first, second))
}

fn pad_windows(model: &LoadedModel, w: &mut (Windows, Option<Windows>), count: usize) {
    model.tokenizer.pad_to(&mut w.0, count);
    if let (Some(x), Some(second)) = (&model.sdxl, &mut w.1) {
        x.tokenizer.pad_to(second, count);
    }
}

/// The text conditioning `[uncond?, cond]` for the UNet.
fn encode_prompts(model: &LoadedModel, p: &ImageParams) -> Result<(Conditioning, usize)> {
    let prompt = p.translated_prompt.as_deref().unwrap_or(&p.prompt);
    let mut cond = windows_of(model, prompt)?;
    let mut uncond = windows_of(model, &p.negative_prompt)?;
    // Both sides need the same length; pad the shorter with empty windows.
    let windows = cond.0.ids.len().max(uncond.0.ids.len());
    pad_windows(model, &mut cond, windows);
    pad_windows(model, &mut uncond, windows);
    let bad = |e: candle_core::Error| Error::Internal(format!("text encoder: {e}"));
    let ids_of = |w: &Windows| {
        Tensor::from_vec(w.ids.concat(), (w.ids.len(), WINDOW), &model.device).map_err(bad)
    };
    let embed = |(w, second): &(Windows, Option<Windows>)| -> Result<(Tensor, Option<Tensor>)> {
        let first = model.text.forward(&ids_of(w)?).map_err(bad)?;
        let (z, pooled) = match (&model.sdxl, second) {
            // SDXL: both encoders' penultimate states side by side; the second encoder's
            // pooled embedding of the first window.
            (Some(x), Some(second)) => {
                let out = x.text.forward(&ids_of(second)?).map_err(bad)?;
                let z = Tensor::cat(&[&first.penultimate, &out.penultimate], 2).map_err(bad)?;
                let pooled = match out.pooled {
                    Some(p) => Some(p.i(0..1).map_err(bad)?),
                    None => {
                        return Err(Error::Internal(
                            "SDXL's second encoder gave no pooled embedding".into(),
                        ));
                    }
                };
                (z, pooled)
            }
            _ => (first.last, None),
        }; // z: (windows, 77, dim)
        let weights: Vec<f32> = w.weights.concat();
        let weighted = if weights.iter().any(|&x| x != 1.0) {
            // A1111's emphasis: scale each token's vector, then restore the overall mean.
            let wt =
                Tensor::from_vec(weights, (w.ids.len(), WINDOW, 1), &model.device).map_err(bad)?;
            let before = z.mean_all().map_err(bad)?.to_scalar::<f32>().map_err(bad)?;
            let scaled = z.broadcast_mul(&wt).map_err(bad)?;
            let after = scaled
                .mean_all()
                .map_err(bad)?
                .to_scalar::<f32>()
                .map_err(bad)?;
            if after.abs() > f32::EPSILON {
                scaled.affine((before / after) as f64, 0.0).map_err(bad)?
            } else {
                scaled
            }
        } else {
            z
        };
        let (n, t, d) = weighted.dims3().map_err(bad)?;
        Ok((weighted.reshape((1, n * t, d)).map_err(bad)?, pooled))
    };
    let (c, c_pooled) = embed(&cond)?;
    let (context, pooled) = if p.uses_cfg() {
        let zero_negative = model
            .sdxl
            .as_ref()
            .is_some_and(|x| x.zero_empty_negative && p.negative_prompt.trim().is_empty());
        let (u, u_pooled) = if zero_negative {
            // SDXL's `force_zeros_for_empty_prompt`: no negative prompt is zeros, not "".
            let zeros = |t: &Tensor| t.zeros_like().map_err(bad);
            (zeros(&c)?, c_pooled.as_ref().map(zeros).transpose()?)
        } else {
            embed(&uncond)?
        };
        let pooled = match (u_pooled, c_pooled) {
            (Some(u), Some(c)) => Some(Tensor::cat(&[u, c], 0).map_err(bad)?),
            _ => None,
        };
        (Tensor::cat(&[u, c], 0).map_err(bad)?, pooled)
    } else {
        (c, c_pooled)
    };
    let to_model = |t: Tensor| t.to_dtype(model.dtype).map_err(bad);
    Ok((
        Conditioning {
            context: to_model(context)?,
            pooled: pooled.map(to_model).transpose()?,
        },
        cond.0.token_count,
    ))
}

/// A source image as latents (the distribution's mean: reproducible, as diffusers' "argmax").
pub fn encode_image(model: &LoadedModel, img: &image::RgbImage) -> Result<Tensor> {
    let bad = |e: candle_core::Error| Error::Internal(format!("encoding the source image: {e}"));
    encode_pixels(model, &pixels_tensor(img, &model.device).map_err(bad)?)
}

/// An image as a `(1, 3, h, w)` f32 tensor in [-1, 1].
fn pixels_tensor(img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&b| b as f32 / 127.5 - 1.0)
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)
}

/// Pixels in [-1, 1] as scaled latents.
fn encode_pixels(model: &LoadedModel, x: &Tensor) -> Result<Tensor> {
    let bad = |e: candle_core::Error| Error::Internal(format!("encoding the source image: {e}"));
    let x = x.to_dtype(model.dtype).map_err(bad)?;
    // The distribution's mean: reproducible, as diffusers' img2img does it.
    let latent = model.vae.encode(&x).map_err(bad)?;
    (latent.to_dtype(DType::F32).map_err(bad)? * model.vae_scale).map_err(bad)
}

/// What an inpainting UNet (9 input channels) reads beside the latents: the mask at latent
/// size (1 = repaint; nearest, after rounding to 0 or 1) and the latents of the source with
/// the repainted part made grey. With no mask the whole picture is repainted, and with no
/// source (txt2img) the masked image is all grey, which is how A1111 runs these models.
pub fn inpaint_conditioning(
    model: &LoadedModel,
    width: u32,
    height: u32,
    source: Option<&image::RgbImage>,
    mask: Option<&image::GrayImage>,
) -> Result<Tensor> {
    let bad = |e: candle_core::Error| Error::Internal(format!("inpainting conditioning: {e}"));
    let dev = &model.device;
    let (w, h) = (width as usize, height as usize);
    let full_mask = match mask {
        Some(m) => {
            let v: Vec<f32> = m
                .as_raw()
                .iter()
                .map(|&b| if b >= 128 { 1.0 } else { 0.0 })
                .collect();
            Tensor::from_vec(v, (1, 1, h, w), dev).map_err(bad)?
        }
        None => Tensor::ones((1, 1, h, w), DType::F32, dev).map_err(bad)?,
    };
    let masked = match source {
        Some(img) => pixels_tensor(img, dev)
            .and_then(|x| x.broadcast_mul(&full_mask.affine(-1.0, 1.0)?))
            .map_err(bad)?,
        None => Tensor::zeros((1, 3, h, w), DType::F32, dev).map_err(bad)?,
    };
    let latents = encode_pixels(model, &masked)?;
    // Nearest at latent size: the pixel at the top-left of each 8×8 cell, as
    // `interpolate(mode="nearest")` picks it.
    let small = full_mask
        .reshape((1, 1, h / 8, 8, w / 8, 8))
        .and_then(|m| m.narrow(3, 0, 1))
        .and_then(|m| m.narrow(5, 0, 1))
        .and_then(|m| m.reshape((1, 1, h / 8, w / 8)))
        .map_err(bad)?;
    Tensor::cat(&[small, latents], 1)
        .and_then(|c| c.to_dtype(model.dtype))
        .map_err(bad)
}

/// What a step reports: its index, the step count and a preview.
pub type StepFn<'a> = dyn FnMut(usize, usize, Option<Rgb>) + 'a;

/// Makes one image. `init` (already resized to the output size) turns this into img2img.
/// `cancelled` is polled before every step.
pub fn generate(
    model: &LoadedModel,
    p: &ImageParams,
    seed: u64,
    init: Option<&image::RgbImage>,
    mask: Option<&image::GrayImage>,
    cancelled: &dyn Fn() -> bool,
    on_step: &mut StepFn<'_>,
) -> Result<image::RgbImage> {
    let bad = |e: candle_core::Error| Error::Internal(format!("image model: {e}"));
    let (conditioning, _) = encode_prompts(model, p)?;
    // SDXL's size and crop ids: made at this size, uncropped, for this size.
    let (h, w) = (p.height as f64, p.width as f64);
    let time_ids = [[h, w, 0.0, 0.0, h, w]; 2];
    let mut noise = HostNoise::new(seed);
    let shape = [
        1,
        model.latent_channels,
        p.height as usize / 8,
        p.width as usize / 8,
    ];
    let full = model.schedule.sigmas(p.scheduler, p.steps as usize);
    let mut first = noise.tensor(&shape, &model.device).map_err(bad)?;
    if let Some(v) = &p.variation {
        let other = HostNoise::new(v.seed)
            .tensor(&shape, &model.device)
            .map_err(bad)?;
        first = slerp(&first, &other, v.strength).map_err(bad)?;
    }
    // An inpainting UNet sees the mask and the masked source beside the latents. An ordinary
    // one is steered instead: outside the mask the denoised estimate is replaced by the
    // source's latents at every step, so every sampler converges to the source there.
    let concat = if model.info.unet_in_channels == model::INPAINT_IN_CHANNELS {
        let c = inpaint_conditioning(model, p.width, p.height, init, mask)?;
        Some(if p.uses_cfg() {
            Tensor::cat(&[&c, &c], 0).map_err(bad)?
        } else {
            c
        })
    } else {
        None
    };
    let mut keep: Option<(Tensor, Tensor)> = None;
    let (sigmas, x) = match (init, &p.init_image) {
        (Some(img), Some(i)) => {
            let sigmas = sampler::img2img_sigmas(&full, i.strength);
            let latent = encode_image(model, img)?;
            if let (Some(m), None) = (mask, &concat) {
                keep = Some((latent_mask(m, &model.device).map_err(bad)?, latent.clone()));
            }
            let x = (latent + first.affine(sigmas[0], 0.0).map_err(bad)?).map_err(bad)?;
            (sigmas, x)
        }
        _ => (full.clone(), first.affine(full[0], 0.0).map_err(bad)?),
    };
    let total = sigmas.len() - 1;
    let cfg = p.uses_cfg();
    let guidance = p.cfg_scale;
    let prediction = model.schedule.prediction;
    let mut denoise = |x: &Tensor, sigma: f64, _i: usize| -> candle_core::Result<Tensor> {
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let t = model.schedule.sigma_to_t(sigma);
        let input = x.affine(c_in, 0.0)?.to_dtype(model.dtype)?;
        let input = if cfg {
            Tensor::cat(&[&input, &input], 0)?
        } else {
            input
        };
        let input = match &concat {
            Some(c) => Tensor::cat(&[&input, c], 1)?,
            None => input,
        };
        let added = conditioning
            .pooled
            .as_ref()
            .map(|pooled| super::unet::Added {
                text_embeds: pooled,
                time_ids: &time_ids[..pooled.dims()[0].min(2)],
            });
        let out = model
            .unet
            .forward_added(&input, t, &conditioning.context, added.as_ref())?
            .to_dtype(DType::F32)?;
        let out = if cfg {
            let (u, c) = (out.i(0..1)?, out.i(1..2)?);
            (&u + (c - &u)?.affine(guidance, 0.0)?)?
        } else {
            out
        };
        let denoised = match prediction {
            Prediction::Epsilon => (x - out.affine(sigma, 0.0)?)?,
            Prediction::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                (x.affine(1.0 / s2, 0.0)? - out.affine(sigma / s2.sqrt(), 0.0)?)?
            }
        };
        match &keep {
            Some((m, source)) => {
                m.broadcast_mul(&denoised)? + m.affine(-1.0, 1.0)?.broadcast_mul(source)?
            }
            None => Ok(denoised),
        }
    };
    let mut draw = || noise.tensor(&shape, &model.device);
    let mut step = |i: usize, denoised: &Tensor| -> candle_core::Result<()> {
        if cancelled() {
            return Err(candle_core::Error::Msg("cancelled".into()));
        }
        on_step(i + 1, total, latent_preview(denoised)?);
        Ok(())
    };
    if cancelled() {
        return Err(Error::Cancelled);
    }
    let latents = match sampler::sample(p.scheduler, &sigmas, x, &mut denoise, &mut draw, &mut step)
    {
        Ok(l) => l,
        Err(_) if cancelled() => return Err(Error::Cancelled),
        Err(e) => return Err(bad(e)),
    };
    let mut out = decode(model, &latents)?;
    if let (Some(src), Some(m)) = (init, mask) {
        composite(&mut out, src, m);
    }
    Ok(out)
}

/// The mask at latent size (area-averaged), 1 where the image is repainted.
fn latent_mask(mask: &image::GrayImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (mask.width() / 8, mask.height() / 8);
    let small = image::imageops::resize(mask, w, h, image::imageops::FilterType::Triangle);
    let v: Vec<f32> = small.as_raw().iter().map(|&b| b as f32 / 255.0).collect();
    Tensor::from_vec(v, (1, 1, h as usize, w as usize), device)
}

/// Puts the source's pixels back where the mask keeps them (blending where it is grey): the
/// VAE's round trip would otherwise soften the untouched part of the picture.
pub(crate) fn composite(out: &mut image::RgbImage, src: &image::RgbImage, mask: &image::GrayImage) {
    for ((o, s), m) in out.pixels_mut().zip(src.pixels()).zip(mask.pixels()) {
        let a = m.0[0] as f32 / 255.0;
        for c in 0..3 {
            o.0[c] = (o.0[c] as f32 * a + s.0[c] as f32 * (1.0 - a)).round() as u8;
        }
    }
}

/// The VAE's output (f32, values around [−1, 1]) for `latents` decoded in `dtype`; tiled
/// ([`decode_tiles`]) when a side is over [`TILE`] latent pixels.
fn decode_with(
    vae: &super::vae::Vae,
    dtype: DType,
    scale: f64,
    latents: &Tensor,
) -> candle_core::Result<Tensor> {
    decode_tiles(latents, &|tile: &Tensor| {
        let z = (tile / scale)?.to_dtype(dtype)?;
        vae.decode(&z)?.to_dtype(DType::F32)
    })
}

/// The largest latent side decoded whole (1024 image pixels): SD's and SDXL's own sizes decode
/// in one piece; larger pictures in overlapping tiles of this size, so the VAE's
/// full-resolution activations (128 channels × every pixel, several at once) stay bounded.
pub const TILE: usize = 128;
/// Latent pixels two neighbouring tiles share; the overlap is blended linearly.
const OVERLAP: usize = 32;
/// Image pixels per latent pixel.
const SCALE: usize = 8;

/// `decode` applied to `latents` (`[batch, c, h, w]`) whole, or tile by tile when a side is
/// over [`TILE`]: tiles start every `TILE − OVERLAP` latent pixels (the last flush with the
/// edge), and each output pixel is the weighted mean of the tiles that cover it, the weights
/// ramping linearly across an overlap. The VAE's group norms and mid-block attention then see
/// a tile instead of the whole picture, as in diffusers' and A1111's tiled decodes.
fn decode_tiles(
    latents: &Tensor,
    decode: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (batch, _, h, w) = latents.dims4()?;
    if h <= TILE && w <= TILE {
        return decode(latents);
    }
    let starts = |n: usize| -> Vec<usize> {
        if n <= TILE {
            return vec![0];
        }
        let mut v: Vec<usize> = (0..n - TILE).step_by(TILE - OVERLAP).collect();
        v.push(n - TILE);
        v
    };
    // Weight of image pixel i of a tile spanning [a, a + len) of a side of n: rising over the
    // overlap where a neighbour precedes, falling where one follows.
    let ramp = |i: usize, a: usize, len: usize, n: usize| -> f32 {
        let ov = (OVERLAP * SCALE) as f32;
        let mut wgt = 1.0f32;
        if a > 0 {
            wgt = wgt.min((i as f32 + 0.5) / ov);
        }
        if a + len < n {
            wgt = wgt.min((len as f32 - i as f32 - 0.5) / ov);
        }
        wgt.clamp(0.0, 1.0)
    };
    let (oh, ow) = (h * SCALE, w * SCALE);
    let mut sum = vec![0f32; batch * 3 * oh * ow];
    let mut weight = vec![0f32; oh * ow];
    for &y0 in &starts(h) {
        for &x0 in &starts(w) {
            let (th, tw) = (TILE.min(h), TILE.min(w));
            let tile = latents.narrow(2, y0, th)?.narrow(3, x0, tw)?;
            let out = decode(&tile)?;
            let (_, _, ph, pw) = out.dims4()?;
            if (ph, pw) != (th * SCALE, tw * SCALE) {
                candle_core::bail!("the VAE gave a {ph}×{pw} tile for {th}×{tw} latents");
            }
            let px = out.flatten_all()?.to_vec1::<f32>()?;
            let (py0, px0) = (y0 * SCALE, x0 * SCALE);
            for y in 0..ph {
                let wy = ramp(y, py0, ph, oh);
                for x in 0..pw {
                    let wgt = wy * ramp(x, px0, pw, ow);
                    weight[(py0 + y) * ow + px0 + x] += wgt;
                    for plane in 0..batch * 3 {
                        sum[(plane * oh + py0 + y) * ow + px0 + x] +=
                            wgt * px[(plane * ph + y) * pw + x];
                    }
                }
            }
        }
    }
    for plane in sum.chunks_exact_mut(oh * ow) {
        for (v, wgt) in plane.iter_mut().zip(&weight) {
            *v /= *wgt;
        }
    }
    Tensor::from_vec(sum, (batch, 3, oh, ow), latents.device())
}

/// Whether every value is finite (no NaN, no infinity).
fn all_finite(x: &Tensor) -> candle_core::Result<bool> {
    // |x| ≤ f32::MAX is false for ±∞ and for NaN (which compares false with everything).
    let finite = x.abs()?.le(f64::from(f32::MAX))?;
    let count = finite.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
    Ok(count as usize == x.elem_count())
}

/// Latents to pixels. An f16 decode that overflows (NaN or infinities: SD 1.x and SDXL VAEs
/// are known to) is decoded again with the VAE in f32; NaN from that too is an error, never a
/// black picture saved as if it were the result.
pub fn decode(model: &LoadedModel, latents: &Tensor) -> Result<image::RgbImage> {
    let bad = |e: candle_core::Error| Error::Internal(format!("VAE decode: {e}"));
    let mut img = decode_with(&model.vae, model.dtype, model.vae_scale, latents).map_err(bad)?;
    let mut finite = all_finite(&img).map_err(bad)?;
    if !finite && model.dtype != DType::F32 {
        tracing::warn!(
            "the {:?} VAE overflowed; decoding again in f32",
            model.dtype
        );
        let vae = model.vae_in_f32()?;
        img = decode_with(vae, DType::F32, model.vae_scale, latents).map_err(bad)?;
        finite = all_finite(&img).map_err(bad)?;
    }
    if !finite {
        return Err(Error::Internal(
            "the VAE produced invalid values (NaN or infinity); nothing was saved. Try again with another VAE or on the CPU".into(),
        ));
    }
    let img = ((img / 2.0)
        .and_then(|x| x + 0.5)
        .and_then(|x| x.clamp(0f32, 1f32))
        .and_then(|x| x * 255.0))
    .and_then(|x| x.round())
    .and_then(|x| x.to_dtype(DType::U8))
    .and_then(|x| x.i(0))
    .and_then(|x| x.permute((1, 2, 0)))
    .map_err(bad)?;
    let (h, w, _) = img.dims3().map_err(bad)?;
    let data = img
        .flatten_all()
        .and_then(|x| x.to_vec1::<u8>())
        .map_err(bad)?;
    image::RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| Error::Internal("VAE output has the wrong size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = (1u64 << 30) as f64;

    /// A model described as `describe` would: SD 1.5's or SDXL base's parameter counts.
    fn described(sdxl: bool) -> model::ImageModelInfo {
        let piece = |role: &str, parameters: u64| model::Piece {
            role: role.into(),
            file: std::path::PathBuf::new(),
            bytes: parameters * 4,
            parameters,
            dtype: "F32".into(),
        };
        let mut pieces = vec![piece("vae", 83_653_863), piece("text_encoder", 123_060_480)];
        if sdxl {
            pieces.push(piece("unet", 2_567_463_684));
            pieces.push(piece("text_encoder_2", 694_659_840));
        } else {
            pieces.push(piece("unet", 859_520_964));
        }
        model::ImageModelInfo {
            id: if sdxl { "sdxl-base" } else { "sd15" }.into(),
            path: std::path::PathBuf::new(),
            family: if sdxl {
                model::Family::Sdxl
            } else {
                model::Family::Sd15
            },
            prediction: sampler::Prediction::Epsilon,
            unet_in_channels: 4,
            default_size: if sdxl { 1024 } else { 512 },
            pieces,
            size_bytes: 0,
            recommended_steps: 25,
            recommended_cfg: 7.0,
            converted_from: None,
            cpu_memory_bytes: 0,
        }
    }

    /// The peaks `atelier-cli bench image` measured on the 2-thread CPU (docs/benchmarks.md,
    /// "memory planner"): the estimate must cover each, by no more than a fifth.
    #[test]
    fn the_memory_estimate_covers_the_measured_peaks() {
        let cpu = Device::Cpu;
        for (sdxl, side, cfg, measured_gib) in [
            (false, 512, true, 5.17),
            (true, 1024, true, 17.70),
            (false, 1536, false, 8.44),
        ] {
            let need = memory_need(&described(sdxl), &cpu, side, side, cfg);
            let estimate = need.peak() as f64 / GIB;
            assert!(
                (measured_gib..measured_gib * 1.2).contains(&estimate),
                "{side}² sdxl={sdxl}: estimate {estimate:.2} GiB, measured {measured_gib} GiB"
            );
        }
    }

    #[test]
    fn the_memory_check_counts_the_weights_once_and_suggests_a_size_that_fits() {
        let cpu = Device::Cpu;
        let xl = described(true);
        let need = memory_need(&xl, &cpu, 1024, 1024, true);
        // SDXL loaded on a 24 GB machine leaves ~9 GiB free: enough for a 1024² image, since
        // the weights are already in.
        let nine = 9 << 30;
        fits(&xl, &cpu, 1024, 1024, true, true, nine).unwrap();
        // Not loaded yet, the same 9 GiB cannot take the weights: said with the model's share
        // and no size to try, since no size would do.
        let e = fits(&xl, &cpu, 1024, 1024, true, false, nine)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sdxl-base") && e.contains("of it the model"),
            "{e}"
        );
        assert!(
            e.contains("close other programs") && !e.contains("such as"),
            "{e}"
        );
        fits(&xl, &cpu, 1024, 1024, true, false, need.peak()).unwrap();
        // Loaded, with just enough free for 640²: that size is the one suggested.
        let at_640 = memory_need(&xl, &cpu, 640, 640, true).working;
        let e = fits(&xl, &cpu, 1024, 1024, true, true, at_640)
            .unwrap_err()
            .to_string();
        assert!(e.contains("such as 640×640"), "{e}");
        fits(&xl, &cpu, 640, 640, true, true, at_640).unwrap();
        // Other shapes keep their proportions, in sides of 64.
        let e = fits(&xl, &cpu, 1024, 768, true, true, at_640)
            .unwrap_err()
            .to_string();
        assert!(e.contains("such as 640×448"), "{e}");
    }

    #[test]
    fn slerp_keeps_a_gaussian_norm_and_its_ends() {
        let d = Device::Cpu;
        let a = HostNoise::new(1).tensor(&[1, 4, 16, 16], &d).unwrap();
        let b = HostNoise::new(2).tensor(&[1, 4, 16, 16], &d).unwrap();
        let norm = |x: &Tensor| {
            x.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        let diff = |x: &Tensor, y: &Tensor| super::super::ops::testing::max_diff(x, y).0;
        assert_eq!(diff(&slerp(&a, &b, 0.0).unwrap(), &a), 0.0);
        assert!(diff(&slerp(&a, &b, 1.0).unwrap(), &b) < 1e-4);
        let mid = slerp(&a, &b, 0.5).unwrap();
        let lerp = ((&a + &b).unwrap() * 0.5).unwrap();
        // Two independent Gaussian vectors are nearly orthogonal: a lerp loses ~30 % of the
        // norm, the slerp keeps it.
        assert!((norm(&mid) / norm(&a) - 1.0).abs() < 0.05);
        assert!(norm(&lerp) / norm(&a) < 0.8);
    }

    /// An f16 VAE that overflows is decoded again in f32: the picture is the f32 model's, not
    /// an error and not black. Huge latents make the tiny VAE's f16 overflow on any device, so
    /// this runs on the CPU (f16 there goes through candle's operations).
    #[test]
    fn an_overflowing_f16_decode_is_redone_in_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny");
        super::super::random::write_random_model(&path, super::super::random::Arch::Tiny).unwrap();
        let info = super::super::model::describe(&path).unwrap();
        let half = super::super::model::load_as(info.clone(), &Device::Cpu, DType::F16).unwrap();
        let full = super::super::model::load(info, &Device::Cpu).unwrap();
        // 3·10⁴ / 0.18215 is past f16's largest value (65504).
        let latents = (HostNoise::new(5)
            .tensor(&[1, 4, 8, 8], &Device::Cpu)
            .unwrap()
            * 3e4)
            .unwrap();
        let raw = decode_with(&half.vae, DType::F16, half.vae_scale, &latents).unwrap();
        assert!(
            !all_finite(&raw).unwrap(),
            "the f16 decode did not overflow: the test tests nothing"
        );
        assert!(half.vae_f32.get().is_none());
        let redone = decode(&half, &latents).unwrap();
        assert!(half.vae_f32.get().is_some(), "the f32 VAE was not loaded");
        assert_eq!(
            redone,
            decode(&full, &latents).unwrap(),
            "not the f32 model's picture"
        );
        // A picture wider than a tile decodes in tiles through the real VAE.
        let wide = HostNoise::new(7)
            .tensor(&[1, 4, 8, TILE + 8], &Device::Cpu)
            .unwrap();
        let img = decode(&full, &wide).unwrap();
        assert_eq!(img.dimensions(), (8 * (TILE as u32 + 8), 64));
        // Ordinary latents stay on the f16 path.
        let small = HostNoise::new(6)
            .tensor(&[1, 4, 8, 8], &Device::Cpu)
            .unwrap();
        let out = decode_with(&half.vae, DType::F16, half.vae_scale, &small).unwrap();
        assert!(all_finite(&out).unwrap());
    }

    /// Tiling is exact for a decoder that looks at each pixel alone: here an 8× nearest
    /// upscale of the first three channels. Every pixel's weights sum to one, tiles land where
    /// they belong, odd sides and the last flush tile included.
    #[test]
    fn tiles_blend_back_into_the_whole_picture() {
        let local = |z: &Tensor| -> candle_core::Result<Tensor> {
            z.narrow(1, 0, 3)?
                .upsample_nearest2d(z.dim(2)? * 8, z.dim(3)? * 8)
        };
        for (h, w) in [(TILE + 37, 40), (40, 2 * TILE + 3), (TILE + 1, TILE + 97)] {
            let z = HostNoise::new(h as u64)
                .tensor(&[2, 4, h, w], &Device::Cpu)
                .unwrap();
            let whole = local(&z).unwrap();
            let tiled = decode_tiles(&z, &local).unwrap();
            let diff = super::super::ops::testing::max_diff(&whole, &tiled).0;
            assert!(
                diff < 1e-5,
                "{h}×{w}: tiles differ from the whole by {diff}"
            );
        }
        // Within one tile nothing is split.
        let z = HostNoise::new(3)
            .tensor(&[1, 4, TILE, 16], &Device::Cpu)
            .unwrap();
        let calls = std::cell::Cell::new(0);
        let counting = |t: &Tensor| {
            calls.set(calls.get() + 1);
            local(t)
        };
        decode_tiles(&z, &counting).unwrap();
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn host_noise_is_standard_normal_and_reproducible() {
        let mut a = HostNoise::new(42);
        let mut b = HostNoise::new(42);
        let va: Vec<f32> = (0..20_000).map(|_| a.next()).collect();
        let vb: Vec<f32> = (0..20_000).map(|_| b.next()).collect();
        assert_eq!(va, vb);
        let mean = va.iter().sum::<f32>() / va.len() as f32;
        let var = va.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / va.len() as f32;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
        let mut c = HostNoise::new(43);
        assert_ne!(va[..8], (0..8).map(|_| c.next()).collect::<Vec<_>>()[..]);
    }
}
