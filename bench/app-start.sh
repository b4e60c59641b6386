#!/usr/bin/env bash
# Cold start and idle memory of the release app, under Xvfb, with a fresh data folder.
#   bench/app-start.sh [runs]      (build first: cargo build --release --features custom-protocol)
# Prints, per run, the ms from main() to the UI's first request (logged by the app right after
# its first paint) and the RSS after 5 s idle (the app plus WebKit's processes); then medians.
set -euo pipefail
runs=${1:-5}
app=${ATELIER_APP:-${CARGO_TARGET_DIR:-$HOME/.cache/atelier/target}/release/atelier}
[ -x "$app" ] || { echo "build the app first: $app" >&2; exit 1; }
starts=(); rss=(); app_rss=()
for i in $(seq "$runs"); do
  home=$(mktemp -d); log=$(mktemp)
  # Drop the page cache's advantage as far as an unprivileged run can: a new data folder each time.
  ATELIER_HOME=$home RUST_LOG=info xvfb-run -a -s "-screen 0 1280x900x24" "$app" 2>"$log" &
  wrapper=$!
  ms=""
  for _ in $(seq 300); do
    ms=$(grep -oP 'first UI request.*?\bms=\K[0-9]+|ms=\K[0-9]+(?= .*first UI request)' "$log" 2>/dev/null | head -1 || true)
    [ -n "$ms" ] && break
    sleep 0.1
  done
  sleep 5
  pid=$(pgrep -n -f "^$app" || true)
  # The app and WebKit's web and network processes (its children) together.
  kib=0; app_kib=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  for p in "$pid" $(pgrep -P "$pid" || true); do
    kib=$((kib + $(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  kill "$pid" 2>/dev/null || true; wait "$wrapper" 2>/dev/null || true
  echo "run $i: first paint ${ms:-?} ms, idle RSS $((kib / 1024)) MiB (app process $((app_kib / 1024)) MiB + WebKit)"
  starts+=("${ms:-0}"); rss+=("$kib"); app_rss+=("$app_kib")
  rm -rf "$home" "$log"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: first paint $(median "${starts[@]}") ms, idle RSS $(( $(median "${rss[@]}") / 1024 )) MiB in all ($(( $(median "${app_rss[@]}") / 1024 )) MiB the app process)"
