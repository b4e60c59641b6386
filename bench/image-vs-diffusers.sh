#!/usr/bin/env bash
# Atelier's image pipeline against PyTorch + diffusers on SD 1.5's (or SDXL's) architecture with random
# weights, the same size, CFG batch and thread count; prints both and our ÷ theirs (time ratio
# inverted, so > 1.0 means we are faster). A benchmark, not a test: run it by hand.
#
#   bench/image-vs-diffusers.sh                  (512², CFG on, 2 threads, 3 runs)
#   SIZE=512 CFG=0 THREADS=2 RUNS=3 bench/image-vs-diffusers.sh
#   ARCH=sdxl SIZE=512 RUNS=2 bench/image-vs-diffusers.sh   (SDXL base's shapes: a 14 GB random
#                                                           model; 14.6 GiB peak ours, 11.9 theirs)
#   ARCH=sdxl SIZE=1024 RUNS=2 bench/image-vs-diffusers.sh  (SDXL's own size: ~17 GiB peak ours,
#                                                           14.8 theirs; ~25 min for both sides)
#
# The peer is `pip install torch diffusers` in a virtualenv under ~/.cache/atelier/bench-venv-torch
# (several GB from PyPI, once). Our side writes a 4.3 GB random model once under
# ~/.cache/atelier/bench/ and needs ~6 GB of memory; theirs ~4.5 GB. Run them one at a time.
source "$(dirname "$0")/../scripts/lib.sh"

ARCH=${ARCH:-sd15}
SIZE=${SIZE:-512}
CFG=${CFG:-1}
THREADS=${THREADS:-$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')}
RUNS=${RUNS:-3}
VENV=${ATELIER_TORCH_VENV:-$HOME/.cache/atelier/bench-venv-torch}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, diffusers' 2>/dev/null; then
  say "installing PyTorch and diffusers into $VENV (once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch diffusers
fi
say "building atelier-cli (release)"
(cd "$ROOT" && cargo build --release -p atelier-cli --quiet)
CLI=$CARGO_TARGET_DIR/release/atelier-cli
BENCH_HOME=$(mktemp -d)
trap 'rm -rf "$BENCH_HOME"' EXIT

cfg_flag=(); [ "$CFG" = 1 ] && cfg_flag=(--cfg)
ours=$("$CLI" --home "$BENCH_HOME" --json bench image --arch "$ARCH" --size "$SIZE" "${cfg_flag[@]}" \
  --threads "$THREADS" --steps $((RUNS + 1)))
peer=$("$VENV/bin/python" "$ROOT/bench/diffusers_peer.py" "$SIZE" "$THREADS" "$CFG" "$RUNS" "$ARCH")
python3 - "$ours" "$peer" <<'PY'
import json, sys
ours, peer = map(json.loads, sys.argv[1:3])
print(f"\n{'engine':<22} {'UNet s/step':>12} {'VAE s':>8} {'peak GiB':>9}")
for name, r in (("diffusers " + peer["engine"], peer), ("atelier", ours)):
    print(f"{name:<22} {r['s_per_step']:>12.2f} {r['vae_decode_s']:>8.2f} {r['peak_rss_gib']:>9.2f}")
print(f"{'speed ÷ diffusers':<22} {peer['s_per_step'] / ours['s_per_step']:>11.2f}x {peer['vae_decode_s'] / ours['vae_decode_s']:>7.2f}x"
      f"   ({ours['size']}², UNet batch {ours['unet_batch']}, {ours['threads']} threads)")
PY
