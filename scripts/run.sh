#!/usr/bin/env bash
# Installs whatever is missing, builds Atelier and starts it.
#   ./scripts/run.sh            the app, data in ~/.local/share/atelier (or $ATELIER_HOME)
source "$(dirname "$0")/lib.sh"

ensure_apt "${APP_PACKAGES[@]}"
ensure_toolchains
ensure_npm
ensure_model_smollm2
ensure_model_qwen
ensure_clip_bpe
APP_HOME=${ATELIER_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/atelier}
install_models "$APP_HOME/models" "$SMOLLM2_ID" "$QWEN_ID"
install_clip_bpe "$APP_HOME/models"
build_ui
say "building the app (the first build takes 15-25 minutes on 2 cores)"
(cd "$ROOT" && cargo build --release --features custom-protocol --bin atelier)

if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo
  echo "Atelier is built, but this session has no display to show its window."
  echo "On a machine without a desktop, start it under a virtual display:"
  echo "  xvfb-run -a $CARGO_TARGET_DIR/release/atelier"
  echo "(install it with: sudo apt-get install xvfb xauth)"
  exit 2
fi
say "starting Atelier"
exec "$CARGO_TARGET_DIR/release/atelier"
