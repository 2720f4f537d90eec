#!/usr/bin/env bash
# Builds bnn_runner on the device against Larq Compute Engine, with the release flags of LCE's own
# ARM builds (runner/CMakeLists.txt): its `aarch64` flags on a 64-bit OS (uname -m aarch64), its
# `rpi3` flags (-march=armv7-a -mfpu=neon-vfpv4) on a 32-bit one (armv7l), both -O3 -DNDEBUG.
#
# usage: ./build.sh [LCE_SOURCE_DIR]
# Without an argument, LCE (tag $LCE_VERSION, default v0.16.0) is cloned next to this script with
# its TensorFlow submodule. Set JOBS to limit parallel compiles (TFLite needs ~1 GB per job).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lce_version="${LCE_VERSION:-v0.16.0}"
lce_dir="${1:-${LCE_SOURCE_DIR:-$here/compute-engine}}"
jobs="${JOBS:-$(nproc)}"

case "$(uname -m)" in
  aarch64 | arm64) echo "Building for 64-bit ARM (LCE's aarch64 release flags)" ;;
  armv7l | armv7 | armhf | armv8l) echo "Building for 32-bit ARM (LCE's rpi3 release flags)" ;;
  *) echo "warning: $(uname -m) is not ARM; building without LCE's ARM flags" >&2 ;;
esac

for tool in git cmake c++ make; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is missing; run: sudo apt-get install -y build-essential cmake git" >&2
    exit 2
  fi
done

if [[ ! -d "$lce_dir/larq_compute_engine" ]]; then
  echo "Cloning Larq Compute Engine $lce_version into $lce_dir"
  git clone --branch "$lce_version" --depth 1 --recurse-submodules --shallow-submodules \
    https://github.com/larq/compute-engine.git "$lce_dir"
elif [[ -d "$lce_dir/.git" ]]; then
  git -C "$lce_dir" submodule update --init --depth 1
fi

cmake -S "$here/runner" -B "$here/build" -DLCE_SOURCE_DIR="$lce_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$here/build" --target bnn_runner -j "$jobs"
echo "Built $here/build/bnn_runner; run ./run.sh for the self-check."
