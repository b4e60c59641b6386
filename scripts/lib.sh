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
TEST_PACKAGES=(webkit2gtk-driver xvfb xauth chromium)

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
