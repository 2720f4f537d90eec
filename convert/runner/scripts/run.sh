#!/usr/bin/env bash
# Runs the bundle's model with bnn_runner (build it first with ./build.sh).
#
# usage: ./run.sh [--threads=N] [--runs=N]          self-check: test input -> expected output
#        ./run.sh IMAGE.ppm|IMAGE.pgm [--top_k=N]   classify a binary PPM/PGM image
# Exit code 0 when the self-check passes, 1 on an output mismatch, 2 on a usage or file error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
runner="${BNN_RUNNER:-$here/build/bnn_runner}"
if [[ ! -x "$runner" ]]; then
  echo "error: $runner not found; run ./build.sh first" >&2
  exit 2
fi

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
exec "$runner" "${args[@]}" "$@"
