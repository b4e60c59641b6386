#!/usr/bin/env bash
# Atelier's local text engine against llama.cpp on the same model file, thread count and
# token counts; prints both and our ÷ llama.cpp. A benchmark, not a test: run it by hand.
#
#   bench/text-vs-llama.cpp.sh [MODEL_ID...]     (default: both default models)
#   THREADS=2 PROMPT_TOKENS=128 GEN_TOKENS=64 RUNS=3 bench/text-vs-llama.cpp.sh
#
# The peer is built from source by `pip install llama-cpp-python==0.3.36` in a virtualenv under
# ~/.cache/atelier/bench-venv (10-20 minutes on 2 cores, once; ATELIER_BENCH_VENV picks another).
# Its default build is -march=native. Where that build crashes (it did with a general protection
# fault in libggml-cpu on a Sapphire Rapids VM), name the instruction sets instead; on a CPU with
# AVX-512 give the peer those too, since our kernels use them:
#   ATELIER_BENCH_VENV=~/.cache/atelier/bench-venv-avx512 CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON \
#     -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON \
#     -DGGML_AVX512_VNNI=ON" bench/text-vs-llama.cpp.sh
source "$(dirname "$0")/../scripts/lib.sh"

THREADS=${THREADS:-$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
GEN_TOKENS=${GEN_TOKENS:-64}
RUNS=${RUNS:-3}
VENV=${ATELIER_BENCH_VENV:-$HOME/.cache/atelier/bench-venv}
[ $# -gt 0 ] && MODELS=("$@") || MODELS=("$SMOLLM2_ID" "$QWEN_ID")

ensure_model_smollm2
ensure_model_qwen
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  say "building llama.cpp through llama-cpp-python (10-20 minutes on 2 cores)"
  python3 -m venv "$VENV"
  CMAKE_BUILD_PARALLEL_LEVEL=$THREADS "$VENV/bin/pip" install -q llama-cpp-python==0.3.36
fi
say "building atelier-cli (release)"
(cd "$ROOT" && cargo build --release -p atelier-cli --quiet)
CLI=$CARGO_TARGET_DIR/release/atelier-cli
BENCH_HOME=$(mktemp -d)
trap 'rm -rf "$BENCH_HOME"' EXIT

printf '\n%-30s %-9s %8s %10s %10s %8s\n' model engine threads "prefill/s" "decode/s" ""
for id in "${MODELS[@]}"; do
  file="$MODEL_CACHE/$id.gguf"
  ours=$("$CLI" --home "$BENCH_HOME" --json bench text --file "$file" --threads "$THREADS" \
    --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS" --runs "$RUNS")
  # candle's quantised model (tensors repacked to Q8_0), the engine before the native one.
  cndl=$("$CLI" --home "$BENCH_HOME" --json bench text --file "$file" --threads "$THREADS" \
    --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS" --runs "$RUNS" --candle)
  peer=$("$VENV/bin/python" "$ROOT/bench/llama_cpp_peer.py" "$file" "$THREADS" "$PROMPT_TOKENS" "$GEN_TOKENS" "$RUNS")
  python3 - "$id" "$THREADS" "$ours" "$cndl" "$peer" <<'PY'
import json, sys
mid, threads, ours, cndl, peer = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:6])
row = lambda name, r: print(f"{mid:<30} {name:<9} {threads:>8} {r['prefill_tokens_per_s']:>10.1f} {r['decode_tokens_per_s']:>10.1f}")
row("llama.cpp", peer)
row("atelier", ours)
row("candle", cndl)
ratio = lambda r, k: r[k] / peer[k]
for name, r in (("atelier", ours), ("candle", cndl)):
    print(f"{'':<30} {name + ' ÷':<9} {'':>8} {ratio(r, 'prefill_tokens_per_s'):>9.2f}x {ratio(r, 'decode_tokens_per_s'):>9.2f}x   ({r['engine']} engine)")
PY
done
