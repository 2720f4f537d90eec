#!/usr/bin/env bash
# Benchmarks the bundle's model with LCE's lce_benchmark_model release binary: the aarch64 asset on
# a 64-bit OS, the aarch32 asset on a 32-bit one (uname -m armv7l), after checking that this
# system's glibc is new enough for it; then prints the latency beside the expected one.
#
# usage: ./benchmark.sh [THREADS] [RUNS]
# The binary is taken from $LCE_BENCHMARK_MODEL, else ./<asset>, else downloaded from the Larq
# Compute Engine GitHub release $LCE_VERSION (default v0.16.0).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/pi.sh
source "$here/pi.sh"
threads="${1:-1}"
runs="${2:-50}"
lce_version="${LCE_VERSION:-v0.16.0}"

if [[ -n "${LCE_BENCHMARK_MODEL:-}" ]]; then
  binary="$LCE_BENCHMARK_MODEL"
  if [[ ! -x "$binary" ]]; then
    echo "error: LCE_BENCHMARK_MODEL=$binary is not an executable file" >&2
    exit 2
  fi
else
  asset="${LCE_BENCHMARK_ASSET:-$(lce_asset)}" || exit 2
  binary="$here/$asset"
fi

if [[ ! -x "$binary" ]]; then
  url="https://github.com/larq/compute-engine/releases/download/$lce_version/$asset"
  echo "Downloading $url"
  if ! curl -fL --retry 3 -o "$binary.partial" "$url"; then
    rm -f "$binary.partial"
    echo "error: download failed; pick the lce_benchmark_model asset for $(uname -m) on" \
      "https://github.com/larq/compute-engine/releases/tag/$lce_version and set LCE_BENCHMARK_MODEL" >&2
    exit 2
  fi
  chmod +x "$binary.partial"
  mv "$binary.partial" "$binary"
fi

check_glibc "$binary" || exit 2

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
"$binary" --graph="$here/model.tflite" --num_threads="$threads" --num_runs="$runs" \
  --warmup_runs=5 2>&1 | tee "$log" || status="${PIPESTATUS[0]}"
# TFLite's benchmark tool prints "Inference timings in us: ..., Inference (avg): <us>".
avg_us="$(sed -n 's/.*Inference (avg): \([0-9.e+]*\).*/\1/p' "$log" | tail -n 1)"
if [[ "$status" -eq 0 && -n "$avg_us" ]]; then
  report_latency "$here" "$(awk -v us="$avg_us" 'BEGIN { printf "%.3f", us / 1000 }')" "$threads"
fi
exit "$status"
