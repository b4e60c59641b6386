#!/usr/bin/env bash
# Installs whatever is missing and runs every test: Rust (engine, CLI, Tauri mock runtime), the
# UI's component tests, the browser flows (Chromium) and the end-to-end run of the real app
# (WebKitWebDriver under Xvfb). Prints one summary line at the end.
source "$(dirname "$0")/lib.sh"

ensure_apt "${APP_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
ensure_toolchains
ensure_npm
ensure_vocab_fixtures
ensure_model_smollm2
ensure_clip_bpe
if ! command -v tauri-driver >/dev/null; then
  say "installing tauri-driver"
  cargo install tauri-driver --locked --quiet
fi

passed=0; failed=0; failures=(); tests_passed=0; tests_failed=0
# Adds up the per-test counts the runners print (cargo test, Vitest, node --test).
count_tests() {
  local clean
  clean=$(sed 's/\x1b\[[0-9;]*m//g' "$1")
  local p f
  p=$(printf '%s\n' "$clean" | awk '
    /^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) s += $i }
    /^ *Tests +[0-9]+ passed/ { s += $2 }
    /^# pass [0-9]+/ { s += $3 }
    END { print s + 0 }')
  f=$(printf '%s\n' "$clean" | awk '
    /^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i }
    /^ *Tests +.*[0-9]+ failed/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i }
    /^# fail [0-9]+/ { s += $3 }
    END { print s + 0 }')
  tests_passed=$((tests_passed + p)); tests_failed=$((tests_failed + f))
}
step() {
  local name=$1; shift
  local log; log=$(mktemp)
  say "$name"
  if "$@" 2>&1 | tee "$log"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
  count_tests "$log"; rm -f "$log"
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
echo "tests: $tests_passed passed, $tests_failed failed"
[ "$failed" -eq 0 ]
