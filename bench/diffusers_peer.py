"""The peer for `atelier-cli bench image`: diffusers' UNet and VAE with SD 1.5's or SDXL's
shapes and random weights (built from the configs below, nothing downloaded), fp32 on the CPU.

    python bench/diffusers_peer.py SIZE THREADS CFG(0|1) RUNS [sd15|sdxl]

Prints one JSON object: seconds per UNet step (batch 2 with CFG), VAE decode seconds, peak RSS.
"""
import json
import resource
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

size, threads, cfg, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
arch = sys.argv[5] if len(sys.argv) > 5 else "sd15"
torch.set_num_threads(threads)
torch.manual_seed(0)

# The published component configs (stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0,
# unet/ and vae/ config.json).
if arch == "sdxl":
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        use_linear_projection=True, cross_attention_dim=2048, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    ).eval()
    context_dim = 2048
else:
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    context_dim = 768
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=512,
).eval()

batch = 2 if cfg else 1
latent = torch.randn(batch, 4, size // 8, size // 8)
context = torch.randn(batch, 77, context_dim)
# SDXL's pooled text embedding and six size ids.
added = {"text_embeds": torch.randn(batch, 1280), "time_ids": torch.randn(batch, 6)} if arch == "sdxl" else None
steps, decodes = [], []
with torch.inference_mode():
    unet(latent, 999, encoder_hidden_states=context, added_cond_kwargs=added)  # warm-up
    for _ in range(runs):
        t = time.perf_counter()
        unet(latent, 500, encoder_hidden_states=context, added_cond_kwargs=added)
        steps.append(time.perf_counter() - t)
    z = torch.randn(1, 4, size // 8, size // 8)
    for _ in range(runs):
        t = time.perf_counter()
        vae.decode(z)
        decodes.append(time.perf_counter() - t)

print(json.dumps({
    "engine": f"torch {torch.__version__}",
    "size": size,
    "cfg": cfg,
    "unet_batch": batch,
    "threads": threads,
    "runs": runs,
    "s_per_step": statistics.median(steps),
    "vae_decode_s": statistics.median(decodes),
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024),
}))
