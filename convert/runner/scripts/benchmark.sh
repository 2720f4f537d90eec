#!/usr/bin/env bash
# Benchmarks the bundle's model with LCE's lce_benchmark_model (Linux aarch64 release binary).
#
# usage: ./benchmark.sh [THREADS] [RUNS]
# The binary is taken from $LCE_BENCHMARK_MODEL, else ./lce_benchmark_model, else downloaded from
# the Larq Compute Engine GitHub release $LCE_VERSION (default v0.16.0).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
threads="${1:-1}"
runs="${2:-50}"
lce_version="${LCE_VERSION:-v0.16.0}"
# The asset name LCE's release workflow (.github/workflows/release.yml) uploads.
asset="${LCE_BENCHMARK_ASSET:-lce_benchmark_model_aarch64}"
binary="${LCE_BENCHMARK_MODEL:-$here/lce_benchmark_model}"

if [[ "$(uname -m)" != "aarch64" ]]; then
  echo "warning: $(uname -m) is not aarch64; the release binary runs on 64-bit ARM only" >&2
fi

if [[ ! -x "$binary" ]]; then
  url="https://github.com/larq/compute-engine/releases/download/$lce_version/$asset"
  echo "Downloading $url"
  if ! curl -fL --retry 3 -o "$binary.partial" "$url"; then
    rm -f "$binary.partial"
    echo "error: download failed; pick the aarch64 lce_benchmark_model asset on" \
      "https://github.com/larq/compute-engine/releases/tag/$lce_version and set LCE_BENCHMARK_MODEL" >&2
    exit 2
  fi
  chmod +x "$binary.partial"
  mv "$binary.partial" "$binary"
fi

exec "$binary" --graph="$here/model.tflite" --num_threads="$threads" --num_runs="$runs" --warmup_runs=5
