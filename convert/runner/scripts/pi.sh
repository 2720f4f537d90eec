# Shell functions shared by benchmark.sh and run.sh (sourced, not run): the LCE release asset for
# this machine, the glibc check of a binary, and the measured-vs-expected latency report.
# shellcheck shell=bash

# LCE's release assets (.github/workflows/release.yml of larq/compute-engine): its bazel config
# `aarch64` for 64-bit ARM and `rpi3` (-march=armv7-a -mfpu=neon-vfpv4) for 32-bit ARM.
# usage: lce_asset          prints the asset for `uname -m`, or fails with one line on stderr
lce_asset() {
  local machine
  machine="$(uname -m)"
  case "$machine" in
    aarch64 | arm64) echo "lce_benchmark_model_aarch64" ;;
    # armv8l: a 32-bit OS on a 64-bit CPU (Raspberry Pi OS 32-bit on a Pi 3/4) runs ARMv7 code.
    armv7l | armv7 | armhf | armv8l) echo "lce_benchmark_model_aarch32" ;;
    *)
      echo "error: LCE publishes lce_benchmark_model for aarch64 and armv7l only, this machine is" \
        "'$machine' (uname -m); set LCE_BENCHMARK_MODEL to a binary built for it" >&2
      return 2
      ;;
  esac
}

# usage: binary_glibc BINARY   prints the highest GLIBC_x.y[.z] symbol version BINARY needs
# (nothing for a static or non-glibc binary). The version names sit in the ELF's dynamic string
# table, so reading them needs no objdump for a foreign architecture.
binary_glibc() {
  { grep -aoE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' "$1" || true; } | sed 's/^GLIBC_//' | sort -uV |
    tail -n 1
}

# usage: device_glibc          prints this system's glibc version (nothing when it is not glibc)
device_glibc() {
  local line
  if line="$(getconf GNU_LIBC_VERSION 2>/dev/null)" && [[ "$line" == glibc\ * ]]; then
    echo "${line#glibc }"
  elif line="$(ldd --version 2>/dev/null | head -n 1)" && [[ "$line" == *GLIBC* || "$line" == *"GNU libc"* ]]; then
    echo "${line##* }"
  fi
}

# usage: version_ge A B        true when version A >= version B
version_ge() {
  [[ "$(printf '%s\n' "$1" "$2" | sort -V | head -n 1)" == "$2" ]]
}

# usage: check_glibc BINARY    fails with one line on stderr when this system's glibc is older than
# what BINARY needs (LCE's release binaries need up to 2.34; Raspberry Pi OS 10 has 2.28).
check_glibc() {
  local needs has
  needs="$(binary_glibc "$1")"
  has="$(device_glibc)"
  if [[ -n "$needs" && -n "$has" ]] && ! version_ge "$has" "$needs"; then
    echo "error: $(basename "$1") needs glibc $needs but this system has $has; build the runner on" \
      "this device with ./build.sh and measure with ./run.sh --threads=N --runs=N instead" >&2
    return 2
  fi
}

# usage: board_model           the board name from the device tree ($BNN_DEVICE_MODEL overrides)
board_model() {
  if [[ -n "${BNN_DEVICE_MODEL:-}" ]]; then
    echo "$BNN_DEVICE_MODEL"
  elif [[ -r /proc/device-tree/model ]]; then
    tr -d '\0' </proc/device-tree/model
  fi
}

# usage: report_latency BUNDLE_DIR MEASURED_MS THREADS
# Prints the measured latency beside the bundle's expected one for this board (expected_latency.txt,
# written by bnn: LCE's published Raspberry Pi 4B figures, and a Pi 3B+ estimate scaled from them),
# and a warning when it is warn_factor times slower or more on a Pi 3, 4 or 5.
report_latency() {
  local file="$1/expected_latency.txt" measured="$2" threads="$3" reference expected factor floor
  local board ratio key="pi4" label="Raspberry Pi 4B" held=""
  [[ -f "$file" && -n "$measured" ]] || return 0
  # LCE publishes 1- and 4-thread figures; 2 or 3 threads are held to the 1-thread one.
  if ((threads >= 4)); then reference=4; else reference=1; fi
  board="$(board_model)"
  if [[ "$board" =~ (Raspberry\ Pi\ 3|Compute\ Module\ 3) ]] &&
    grep -q "^pi3_threads${reference}_ms=" "$file"; then
    key="pi3" label="Raspberry Pi 3B+" held=1
  elif [[ "$board" =~ (Raspberry\ Pi\ (4|5|400|500)|Compute\ Module\ (4|5)) ]]; then
    # A Pi 5 is faster than a Pi 4: held to the Pi 4 figure, it is never warned about wrongly.
    held=1
  fi
  expected="$(sed -n "s/^${key}_threads${reference}_ms=//p" "$file")"
  factor="$(sed -n 's/^warn_factor=//p' "$file")"
  floor="$(sed -n 's/^warn_floor_ms=//p' "$file")"
  [[ -n "$expected" && -n "$factor" && -n "$floor" ]] || return 0
  echo "latency: measured $measured ms, expected about $expected ms on a $label" \
    "(64-bit OS, LCE release build, $reference thread(s)); this board: ${board:-unknown}"
  if awk -v e="$expected" -v fl="$floor" 'BEGIN { exit !(e < fl) }'; then
    echo "note: the expected $expected ms is under the $floor ms floor, where the interpreter's" \
      "per-invoke overhead, which MACs do not predict, dominates: only a measured latency of" \
      "$floor ms or more is compared with it"
  fi
  # Other boards (or a Pi 3 bundle without a pi3 figure) are not held to an estimate, and
  # latencies under the floor are per-invoke overhead that MACs do not predict.
  if [[ -n "$held" ]] &&
    awk -v m="$measured" -v e="$expected" -v f="$factor" -v fl="$floor" \
      'BEGIN { exit !(m >= fl && m >= f * e) }'; then
    ratio="$(awk -v m="$measured" -v e="$expected" 'BEGIN { printf "%.1f", m / e }')"
    if [[ "$(uname -m)" == "aarch64" ]]; then
      echo "warning: ${ratio}x slower than expected, which usually means a build without LCE's" \
        "release flags (rebuild with ./build.sh; compare with ./benchmark.sh, LCE's release" \
        "binary) or a throttled CPU (vcgencmd get_throttled)" >&2
    else
      echo "warning: ${ratio}x slower than expected on $(uname -m): LCE's optimized binary" \
        "kernels are for 64-bit ARM, so a 64-bit OS (uname -m = aarch64) is expected to be faster" >&2
    fi
  fi
}
