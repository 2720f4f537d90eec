#!/usr/bin/env bash
# Runs the bundle's model with bnn_runner (build it first with ./build.sh).
#
# usage: ./run.sh [--threads=N] [--runs=N]          self-check: test input -> expected output
#        ./run.sh IMAGE.ppm|IMAGE.pgm [--top_k=N]   classify a binary PPM/PGM image
# Exit code 0 when the self-check passes, 1 on an output mismatch, 2 on a usage or file error.
# The latency is printed beside the one expected on a Raspberry Pi 4B, with a warning when it is
# several times slower (see expected_latency.txt).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/pi.sh
source "$here/pi.sh"
runner="${BNN_RUNNER:-$here/build/bnn_runner}"
if [[ ! -x "$runner" ]]; then
  echo "error: $runner not found; run ./build.sh first" >&2
  exit 2
fi
# A runner built on another device (or OS image) may need a newer glibc than this one has.
check_glibc "$runner" || exit 2

mapfile -t args < <(grep -v '^[[:space:]]*$' "$here/runner_args.txt")
if [[ $# -gt 0 && "$1" != --* ]]; then
  image="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  shift
  kept=()
  for arg in "${args[@]}"; do
    case "$arg" in
      --input=* | --expected=*) ;;
      *) kept+=("$arg") ;;
    esac
  done
  args=("${kept[@]}" "--input=$image")
fi

cd "$here"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
"$runner" "${args[@]}" "$@" | tee "$log" || status="${PIPESTATUS[0]}"
# bnn_runner prints "latency over R runs, T thread(s): min A ms, median B ms, mean C ms".
line="$(grep -m 1 '^latency over ' "$log" || true)"
if [[ -n "$line" ]]; then
  threads="$(sed -n 's/^latency over [0-9]* runs, \([0-9]*\) thread(s).*/\1/p' <<<"$line")"
  median="$(sed -n 's/.* median \([0-9.]*\) ms.*/\1/p' <<<"$line")"
  report_latency "$here" "$median" "${threads:-1}"
fi
exit "$status"
