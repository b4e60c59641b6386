//! Local image generation: Stable Diffusion (SD 1.5, SD 2.1, SD-Turbo, SDXL, SDXL-Turbo and
//! same-shaped models) on candle tensors, with Atelier's own samplers and seeded host noise,
//! A1111-compatible metadata and the AI-content label in every PNG, and a gallery in SQLite.
//!
//! - [`params`]: the request and its validation, scheduler names
//! - [`model`]: diffusers folders: describe (bounded header reads), load, import
//! - [`unet`], [`vae`]: the UNet and the VAE, on [`ops`] (convolution, group norm and
//!   attention on `atelier_cpu`'s kernels on the CPU)
//! - [`ldm`]: single-file checkpoints (LDM names), converted to a diffusers folder on import
//! - [`clip`]: the CLIP text encoders (ViT-L, OpenCLIP ViT-H and bigG), one implementation
//! - [`prompt`]: CLIP tokenizer, A1111 emphasis, prompts over 77 tokens in windows
//! - [`sampler`]: noise schedules and the samplers (sigma form)
//! - [`pipeline`]: one image: text encoding, denoising with CFG and previews, VAE decode
//! - [`label`]: the visible "AI生成" label drawn on exported images
//! - [`metadata`]: PNG chunks written and read (A1111, Atelier, XMP label; ComfyUI, InvokeAI)
//! - [`service`]: the `image.generate` job and the gallery rows it writes
//! - [`comfyui`]: a ComfyUI server as the backend of a run (same gallery, same metadata)
//! - [`random`]: random-weight models in the real layout, for tests and benchmarks

pub mod clip;
pub mod comfyui;
pub mod label;
pub mod ldm;
pub mod metadata;
pub mod model;
pub mod ops;
pub mod params;
pub mod pipeline;
pub mod prompt;
pub mod random;
pub mod sampler;
pub mod service;
pub mod unet;
pub mod vae;

pub use params::{ImageParams, InitImage, Scheduler, Variation};
