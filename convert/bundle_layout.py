"""The layout of a Raspberry Pi deployment bundle: its file names, its format versions and the
files each version held, and the text of runner_args.txt.

`convert.bundle` writes this layout and `convert.bundle_check` audits it, so both read it from
here. Layout of a bundle folder:

    model.tflite            the LCE flatbuffer
    labels.txt              one class name per line, in output order
    model.json              input shape/dtype, normalization, class names, LCE version, test files
    test_input.bin          one normalized input, raw little-endian float32 (shape in model.json)
    expected_output.bin     the Keras model's output for it, raw little-endian float32
    runner_args.txt         bnn_runner's arguments for the self-check, one per line
    expected_latency.txt    latency expected on a Raspberry Pi 4B and 3B+, for run.sh/benchmark.sh
                            (only when the Keras model was given: it is scaled by its MACs)
    runner/                 bnn_runner.cc + CMakeLists.txt (compiled on the device)
    build.sh run.sh benchmark.sh pi.sh (the functions the scripts share)
    README.md               steps on the device
    manifest.json           sha256 and size of each file above, written last (format 3 on)

Any other file in the folder is the user's (notes) or the scripts' on the device (`build/`).
"""

from typing import Mapping, Sequence

import numpy as np

BUNDLE_FORMAT = "bnn-raspberry-pi-bundle"
# 2: adds pi.sh (asset choice by `uname -m`, glibc check, latency report) and expected_latency.txt.
# 3: adds manifest.json.
BUNDLE_VERSION = 3
TFLITE_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
MODEL_JSON = "model.json"
TEST_INPUT_FILE = "test_input.bin"
EXPECTED_OUTPUT_FILE = "expected_output.bin"
RUNNER_ARGS_FILE = "runner_args.txt"
EXPECTED_LATENCY_FILE = "expected_latency.txt"
README_FILE = "README.md"
RUNNER_DIR = "runner"
RUNNER_SOURCES = (f"{RUNNER_DIR}/bnn_runner.cc", f"{RUNNER_DIR}/CMakeLists.txt")
SCRIPTS = ("build.sh", "run.sh", "benchmark.sh")
# Sourced by run.sh and benchmark.sh since bundle format 2.
SHELL_LIBRARY = "pi.sh"
REQUIRED_FILES = (TFLITE_FILE, LABELS_FILE, MODEL_JSON, TEST_INPUT_FILE, EXPECTED_OUTPUT_FILE)
MANIFEST_FILE = "manifest.json"
_FORMAT_1_FILES = (TFLITE_FILE, LABELS_FILE, MODEL_JSON, TEST_INPUT_FILE, EXPECTED_OUTPUT_FILE,
                   RUNNER_ARGS_FILE, README_FILE, *SCRIPTS, *RUNNER_SOURCES)
# Every file bnn wrote into a bundle of format 1 and 2, before manifest.json: what `overwrite` may
# replace in such a bundle. Frozen: later bundles list their files in manifest.json.
PRE_MANIFEST_FILES = {
    1: _FORMAT_1_FILES,
    2: (*_FORMAT_1_FILES, EXPECTED_LATENCY_FILE, SHELL_LIBRARY),
}
# Every file bnn writes into a bundle now.
BUNDLE_FILES = (*PRE_MANIFEST_FILES[2], MANIFEST_FILE)
# What the scripts leave in the bundle on the device: build.sh's build/ and the LCE checkout it
# clones, benchmark.sh's downloaded lce_benchmark_model_* (bnn 0.1.0's: lce_benchmark_model).
# Expected there: neither bnn's files nor the user's notes.
DEVICE_FOLDERS = ("build", "compute-engine")
DEVICE_FILE_PREFIX = "lce_benchmark_model"
# LCE's lce_benchmark_model release assets by ELF machine (e_machine): the name benchmark.sh
# looks for beside itself on that architecture (pi.sh's `lce_asset`, by `uname -m`).
BENCHMARK_ASSETS = {0xB7: "lce_benchmark_model_aarch64", 0x28: "lce_benchmark_model_aarch32"}
# Raw files are little-endian float32 so that C++ on aarch64 (little-endian) reads them directly.
RAW_DTYPE = np.dtype("<f4")


def runner_args(atol: float, normalization: Mapping[str, Sequence[float]], pixel_max: float) -> str:
    """runner_args.txt: bnn_runner's arguments for the self-check, one per line, as `run.sh`
    passes them (the files above, the tolerance, the training normalization, the pixel range)."""

    def floats(values):
        return ",".join(repr(float(v)) for v in values)

    return "\n".join([
        f"--model={TFLITE_FILE}",
        f"--input={TEST_INPUT_FILE}",
        f"--expected={EXPECTED_OUTPUT_FILE}",
        f"--atol={atol!r}",
        f"--labels={LABELS_FILE}",
        f"--mean={floats(normalization['mean'])}",
        f"--std={floats(normalization['std'])}",
        f"--pixel_max={pixel_max!r}",
    ]) + "\n"
