//! Random-weight Stable Diffusion folders in the real diffusers layout: what the tests, the
//! end-to-end run and the speed benchmark load through the same loader as a downloaded model.
//! The pictures are noise; the code path (configs, safetensors, tokenizer, UNet, VAE, CLIP) is
//! the real one. Weights go through a file, never straight from the `VarMap`: trainable vars
//! would make candle keep every intermediate for gradients.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use serde_json::{Value, json};

use super::clip::ClipText;
use super::model::{text_config, text_time_config, unet_config, vae_config};
use super::prompt::byte_chars;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Which shape to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// A few hundred thousand weights; 64×64 in a fraction of a second on a CPU.
    Tiny,
    /// Tiny, with an inpainting UNet (9 input channels: latents, mask, masked-image latents).
    TinyInpaint,
    /// Tiny, SDXL-shaped: two text encoders (the second OpenCLIP-style with a projection),
    /// the pooled embedding and size ids through `add_embedding`, two transformer layers deep.
    TinyXl,
    /// SD 1.5's exact shapes (UNet 860M, VAE 84M, CLIP ViT-L 123M parameters): for benchmarks.
    Sd15,
    /// SDXL base's exact shapes (UNet 2.6B, VAE 84M, CLIP ViT-L 123M and OpenCLIP bigG 695M
    /// parameters; 14 GB in f32): for benchmarks.
    Sdxl,
}

impl Arch {
    /// Whether it has SDXL's second text encoder and size conditioning.
    fn is_xl(self) -> bool {
        matches!(self, Arch::TinyXl | Arch::Sdxl)
    }
}

/// The second text encoder's config (OpenCLIP-style) of the SDXL shapes.
fn second_encoder(arch: Arch) -> Option<Value> {
    match arch {
        // Exact GELU, 64-channel heads as every OpenCLIP text tower has (a single-file
        // checkpoint does not record the head count), a projection for the pooled embedding
        // that is not square (so a projection read the wrong way round cannot pass).
        Arch::TinyXl => Some(json!({
            "architectures": ["CLIPTextModelWithProjection"],
            "hidden_act": "gelu",
            "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 77, "vocab_size": 1000, "projection_dim": 48
        })),
        // OpenCLIP ViT-bigG/14's text tower, as SDXL's text_encoder_2/config.json has it.
        Arch::Sdxl => Some(json!({
            "architectures": ["CLIPTextModelWithProjection"],
            "hidden_act": "gelu",
            "hidden_size": 1280, "intermediate_size": 5120,
            "num_hidden_layers": 32, "num_attention_heads": 20,
            "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280
        })),
        _ => None,
    }
}

fn configs(arch: Arch) -> (Value, Value, Value) {
    match arch {
        Arch::Sdxl => {
            let (_, mut vae, text) = configs(Arch::Sd15);
            vae["scaling_factor"] = json!(0.13025);
            (
                // stable-diffusion-xl-base-1.0's unet/config.json, in the keys the loader reads.
                json!({
                    "_class_name": "UNet2DConditionModel",
                    "in_channels": 4, "out_channels": 4,
                    "block_out_channels": [320, 640, 1280],
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                    "layers_per_block": 2,
                    "transformer_layers_per_block": [1, 2, 10],
                    "attention_head_dim": [5, 10, 20],
                    "use_linear_projection": true,
                    "cross_attention_dim": 2048,
                    "addition_embed_type": "text_time",
                    "addition_time_embed_dim": 256,
                    "projection_class_embeddings_input_dim": 2816,
                    "norm_num_groups": 32,
                    "sample_size": 128
                }),
                vae,
                text,
            )
        }
        Arch::TinyXl => {
            let (_, mut vae, text) = configs(Arch::Tiny);
            // SDXL's VAE scales its latents by 0.13025, not SD's 0.18215.
            vae["scaling_factor"] = json!(0.13025);
            (
                json!({
                    "_class_name": "UNet2DConditionModel",
                    "in_channels": 4, "out_channels": 4,
                    "block_out_channels": [32, 64],
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                    "layers_per_block": 1,
                    "transformer_layers_per_block": [1, 2],
                    "attention_head_dim": [4, 4],
                    "use_linear_projection": true,
                    // The two encoders' states side by side: 64 + 128.
                    "cross_attention_dim": 192,
                    "addition_embed_type": "text_time",
                    "addition_time_embed_dim": 8,
                    // Pooled (48) + 6 ids × 8.
                    "projection_class_embeddings_input_dim": 96,
                    "norm_num_groups": 32,
                    "sample_size": 8
                }),
                vae,
                text,
            )
        }
        Arch::Tiny | Arch::TinyInpaint => (
            json!({
                "_class_name": "UNet2DConditionModel",
                "in_channels": if arch == Arch::TinyInpaint { 9 } else { 4 },
                "out_channels": 4,
                "block_out_channels": [32, 64],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                "layers_per_block": 1,
                "attention_head_dim": [4, 4],
                "cross_attention_dim": 64,
                "norm_num_groups": 32,
                "sample_size": 8
            }),
            json!({
                "_class_name": "AutoencoderKL",
                "in_channels": 3, "out_channels": 3,
                "block_out_channels": [32, 32, 32, 32],
                "layers_per_block": 1,
                "latent_channels": 4,
                "norm_num_groups": 32,
                "scaling_factor": 0.18215
            }),
            json!({
                "architectures": ["CLIPTextModel"],
                "hidden_act": "quick_gelu",
                "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 1,
                "max_position_embeddings": 77, "vocab_size": 1000, "projection_dim": 64
            }),
        ),
        Arch::Sd15 => (
            json!({
                "_class_name": "UNet2DConditionModel",
                "in_channels": 4, "out_channels": 4,
                "block_out_channels": [320, 640, 1280, 1280],
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "layers_per_block": 2,
                "attention_head_dim": 8,
                "cross_attention_dim": 768,
                "norm_num_groups": 32,
                "sample_size": 64
            }),
            json!({
                "_class_name": "AutoencoderKL",
                "in_channels": 3, "out_channels": 3,
                "block_out_channels": [128, 256, 512, 512],
                "layers_per_block": 2,
                "latent_channels": 4,
                "norm_num_groups": 32,
                "scaling_factor": 0.18215
            }),
            json!({
                "architectures": ["CLIPTextModel"],
                "hidden_act": "quick_gelu",
                "hidden_size": 768, "intermediate_size": 3072,
                "num_hidden_layers": 12, "num_attention_heads": 12,
                "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768
            }),
        ),
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

fn candle(what: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::Internal(format!("building the random {what}: {e}"))
}

/// A CLIP-format vocabulary: every byte alone and as a word end, a few common merges, and
/// the start and end tokens at the top, as in CLIP's own file.
fn write_tokenizer(dir: &Path) -> Result<()> {
    let mut vocab = serde_json::Map::new();
    let chars = byte_chars();
    for (_, c) in &chars {
        vocab.insert(c.to_string(), json!(vocab.len()));
    }
    for (_, c) in &chars {
        vocab.insert(format!("{c}</w>"), json!(vocab.len()));
    }
    let merges = [
        ("t", "h"),
        ("th", "e</w>"),
        ("a", "n"),
        ("an", "d</w>"),
        ("o", "n</w>"),
    ];
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in merges {
        vocab.insert(format!("{a}{b}"), json!(vocab.len()));
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    vocab.insert("<|startoftext|>".into(), json!(vocab.len()));
    vocab.insert("<|endoftext|>".into(), json!(vocab.len()));
    write_json(&dir.join("vocab.json"), &Value::Object(vocab))?;
    write_atomic(&dir.join("merges.txt"), merges_txt.as_bytes())
}

/// Writes a random-weight model folder at `dir` (which must not exist yet).
pub fn write_random_model(dir: &Path, arch: Arch) -> Result<()> {
    if dir.exists() {
        return Err(Error::Conflict(format!("{} already exists", dir.display())));
    }
    let (unet_json, vae_json, text_json) = configs(arch);
    let dev = Device::Cpu;
    let mut subs = vec!["unet", "vae", "text_encoder", "tokenizer", "scheduler"];
    if arch.is_xl() {
        subs.extend(["text_encoder_2", "tokenizer_2"]);
    }
    for sub in subs {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": match arch {
                Arch::TinyInpaint => "StableDiffusionInpaintPipeline",
                Arch::TinyXl | Arch::Sdxl => "StableDiffusionXLPipeline",
                _ => "StableDiffusionPipeline",
            },
            "force_zeros_for_empty_prompt": arch.is_xl(),
            "_atelier_random_weights": true
        }),
    )?;
    write_json(
        &dir.join("scheduler").join("scheduler_config.json"),
        &json!({
            "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "timestep_spacing": "leading",
            "steps_offset": 1, "set_alpha_to_one": false
        }),
    )?;
    write_tokenizer(&dir.join("tokenizer"))?;

    {
        let (cfg, inc, outc) = unet_config(&unet_json)?;
        let vm = VarMap::new();
        UNet2DConditionModel::new(
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
            inc,
            outc,
            false,
            cfg.clone(),
        )
        .map_err(candle("UNet"))?;
        // candle's UNet has no SDXL add_embedding: its two layers go into the same file.
        if let Some(tt) = text_time_config(&unet_json)? {
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("add_embedding");
            let temb = 4 * cfg.blocks[0].out_channels;
            candle_nn::linear(tt.input_dim, temb, vb.pp("linear_1")).map_err(candle("UNet"))?;
            candle_nn::linear(temb, temb, vb.pp("linear_2")).map_err(candle("UNet"))?;
        }
        write_json(&dir.join("unet").join("config.json"), &unet_json)?;
        vm.save(dir.join("unet").join("diffusion_pytorch_model.safetensors"))
            .map_err(candle("UNet"))?;
    }
    {
        let (cfg, _) = vae_config(&vae_json)?;
        let vm = VarMap::new();
        AutoEncoderKL::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 3, 3, cfg)
            .map_err(candle("VAE"))?;
        write_json(&dir.join("vae").join("config.json"), &vae_json)?;
        vm.save(dir.join("vae").join("diffusion_pytorch_model.safetensors"))
            .map_err(candle("VAE"))?;
    }
    {
        let cfg = text_config(&text_json)?;
        let vm = VarMap::new();
        ClipText::load(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg)
            .map_err(candle("text encoder"))?;
        write_json(&dir.join("text_encoder").join("config.json"), &text_json)?;
        vm.save(dir.join("text_encoder").join("model.safetensors"))
            .map_err(candle("text encoder"))?;
    }
    if let Some(text_2) = second_encoder(arch) {
        write_tokenizer(&dir.join("tokenizer_2"))?;
        let vm = VarMap::new();
        ClipText::load(
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
            &text_config(&text_2)?,
        )
        .map_err(candle("second text encoder"))?;
        write_json(&dir.join("text_encoder_2").join("config.json"), &text_2)?;
        vm.save(dir.join("text_encoder_2").join("model.safetensors"))
            .map_err(candle("second text encoder"))?;
    }
    Ok(())
}
