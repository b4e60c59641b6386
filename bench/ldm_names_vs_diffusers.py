"""Checks the LDM single-file layout Atelier's test writes against diffusers' own converter.

The engine test `a_single_file_checkpoint_converts_to_the_same_model` writes a tiny checkpoint
with LDM names and checks that Atelier's import draws the same pixels as the diffusers folder it
came from. That proves the import inverts the test's writer; this script proves the writer is
the layout real checkpoints use, by converting the same file with diffusers' from-single-file
functions and comparing every tensor with the diffusers folder.

    ATELIER_KEEP_CHECKPOINT=/tmp/ldm cargo test -p atelier-engine --test image single_file

(`single_file` runs both tests: SD 1.x's layout and SDXL's, with OpenCLIP's fused q/k/v.)
    ~/.cache/atelier/bench-venv-torch/bin/python bench/ldm_names_vs_diffusers.py /tmp/ldm
"""

import json
import sys
from pathlib import Path

import torch
from diffusers.loaders import single_file_utils as sf
from safetensors.torch import load_file


def compare(name, ours, theirs):
    # candle writes the VAE attention with the older diffusers names; diffusers' converter
    # emits the newer ones. The tensors are the same.
    rename = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    norm = {}
    for k, v in ours.items():
        for a, b in rename.items():
            k = k.replace(a, b)
        norm[k] = v
    missing = sorted(set(norm) - set(theirs))
    extra = sorted(set(theirs) - set(norm))
    bad = [k for k in norm if k in theirs and not torch.equal(norm[k].reshape(theirs[k].shape), theirs[k])]
    print(f"{name}: {len(norm)} tensors, {len(missing)} missing from diffusers' conversion, "
          f"{len(extra)} extra, {len(bad)} different")
    for k in (missing + extra + bad)[:10]:
        print("   ", k)
    return not (missing or extra or bad)


def check(root, ckpt_name, folder, xl):
    ckpt = load_file(root / ckpt_name)
    d = root / folder
    print(f"{ckpt_name} against {folder}/:")
    unet_cfg = json.loads((d / "unet/config.json").read_text())
    unet_cfg.setdefault("layers_per_block", 2)
    vae_cfg = json.loads((d / "vae/config.json").read_text())
    n = len(vae_cfg["block_out_channels"])
    vae_cfg.setdefault("down_block_types", ["DownEncoderBlock2D"] * n)
    vae_cfg.setdefault("up_block_types", ["UpDecoderBlock2D"] * n)
    ok = compare("UNet", load_file(d / "unet/diffusion_pytorch_model.safetensors"),
                 sf.convert_ldm_unet_checkpoint(ckpt, unet_cfg))
    ok &= compare("VAE", load_file(d / "vae/diffusion_pytorch_model.safetensors"),
                  sf.convert_ldm_vae_checkpoint(ckpt, vae_cfg))
    clip = sf.convert_ldm_clip_checkpoint(ckpt)
    clip = {k: v for k, v in clip.items() if not k.endswith("position_ids")}
    ok &= compare("CLIP", load_file(d / "text_encoder/model.safetensors"), clip)
    if xl:
        # With the projection in the file, diffusers reads every size from it (no model needed).
        open_clip = sf.convert_open_clip_checkpoint(None, ckpt, prefix="conditioner.embedders.1.model.")
        ok &= compare("OpenCLIP", load_file(d / "text_encoder_2/model.safetensors"), open_clip)
    return ok


def main(root):
    root = Path(root)
    ok = check(root, "tiny-ldm.safetensors", "tiny-diffusers", xl=False)
    if (root / "tiny-xl-ldm.safetensors").exists():
        ok &= check(root, "tiny-xl-ldm.safetensors", "tiny-xl-diffusers", xl=True)
    print("same layout as diffusers" if ok else "LAYOUTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
