#!/usr/bin/env bash
# Installs whatever is missing and runs every test: Rust (engine, CLI, Tauri mock runtime), the
# UI's component tests, the browser flows (Chromium) and the end-to-end run of the real app
# (WebKitWebDriver under Xvfb). Prints one summary line at the end.
source "$(dirname "$0")/lib.sh"

ensure_apt "${APP_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
ensure_toolchains
ensure_npm
if ! command -v tauri-driver >/dev/null; then
  say "installing tauri-driver"
  cargo install tauri-driver --locked --quiet
fi

passed=0; failed=0; failures=()
step() {
  local name=$1; shift
  say "$name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
}

cd "$ROOT"
build_ui
step "Rust tests (engine, CLI, Tauri IPC through capabilities)" cargo test --workspace --all-targets --quiet
step "UI component tests (Vitest)" npm test --workspace ui --silent
step "UI flows in Chromium (playwright-core, mocked IPC)" bash -c 'cd ui && npx vite build --mode flows --logLevel error && node --test tests/flows/'
step "build the release app for end-to-end tests" cargo build --release --features custom-protocol --bin atelier --quiet
step "end to end: the real app under Xvfb (tauri-driver + WebKitWebDriver)" xvfb-run -a -s "-screen 0 1280x900x24" node --test tests/e2e/

echo
if [ "$failed" -gt 0 ]; then
  printf 'failed suites: %s\n' "${failures[@]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
