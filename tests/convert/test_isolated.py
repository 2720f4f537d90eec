"""convert.isolated: LCE's interpreter in a child process; damaged flatbuffers become BnnErrors."""

import collections

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from convert.converter import convert_model
from convert.flatbuffer import InvalidFlatbufferError
from convert.isolated import _CHILD_CODE, isolated_benchmark, isolated_predict
from convert.runtime import Latency, LceRuntime
from tests.conftest import tiny_lce_model

FUZZ_CASES = 200


@pytest.fixture(scope="module")
def model_and_flatbuffer():
    model = tiny_lce_model()
    return model, convert_model(model)


@pytest.fixture(scope="module")
def flatbuffer(model_and_flatbuffer) -> bytes:
    return model_and_flatbuffer[1]


def _assert_one_line(error: BnnError) -> None:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, message


def test_predict_matches_in_process_lce(flatbuffer):
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    isolated = isolated_predict(flatbuffer, x)
    # Same interpreter, same kernels, same inputs: identical outputs, only the process differs.
    np.testing.assert_array_equal(isolated, LceRuntime(flatbuffer).predict(x))
    assert isolated.shape == (3, 4)


def test_predict_from_path_matches_keras(model_and_flatbuffer, tmp_path):
    model, data = model_and_flatbuffer
    path = tmp_path / "tiny.tflite"
    path.write_bytes(data)
    x = np.random.default_rng(1).standard_normal((5, 8, 8, 1)).astype(np.float32)
    out = isolated_predict(str(path), x)
    # Softmax outputs in [0, 1]; float reordering in TFLite and BN folding give ~1e-6 differences.
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-4)


def test_predict_rejects_wrong_shape(flatbuffer):
    with pytest.raises(BnnError, match=r"Expected inputs of shape \(N, 8, 8, 1\)"):
        isolated_predict(flatbuffer, np.zeros((2, 8, 8, 3), np.float32))


def test_benchmark_returns_latency(flatbuffer):
    latency = isolated_benchmark(flatbuffer, threads=2, runs=4, warmup=1)
    assert isinstance(latency, Latency)
    assert (latency.runs, latency.threads) == (4, 2)
    assert 0 < latency.min_ms <= latency.median_ms <= latency.p90_ms


def test_benchmark_validates_options(flatbuffer):
    with pytest.raises(BnnError, match="runs >= 1"):
        isolated_benchmark(flatbuffer, threads=1, runs=0, warmup=0)


def test_not_a_flatbuffer_is_rejected_before_the_child(tmp_path):
    path = tmp_path / "notes.tflite"
    path.write_text("hello")
    with pytest.raises(InvalidFlatbufferError, match="no 'TFL3' identifier"):
        isolated_benchmark(str(path), threads=1, runs=1, warmup=0)
    with pytest.raises(BnnError, match="No such .tflite file"):
        isolated_benchmark(str(tmp_path / "missing.tflite"), threads=1, runs=1, warmup=0)


def test_child_signal_becomes_one_line_error(flatbuffer, monkeypatch):
    # A child killed by a signal is what a native crash looks like from the parent.
    import convert.isolated as isolated

    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(isolated, "_CHILD_CODE", crash)
    with pytest.raises(BnnError, match=r"crashed \(SIGSEGV\)") as info:
        isolated_benchmark(flatbuffer, threads=1, runs=1, warmup=0)
    _assert_one_line(info.value)


def test_child_timeout_becomes_one_line_error(flatbuffer, monkeypatch):
    import convert.isolated as isolated

    monkeypatch.setattr(isolated, "_CHILD_CODE", "import time; time.sleep(30)")
    with pytest.raises(BnnError, match="did not finish within 0.5 s") as info:
        isolated_benchmark(flatbuffer, threads=1, runs=1, warmup=0, timeout=0.5)
    _assert_one_line(info.value)


def test_child_code_does_not_import_tensorflow(flatbuffer, monkeypatch):
    # The child must stay light (no TensorFlow import): make importing it fail loudly.
    import convert.isolated as isolated

    guard = "import sys; sys.modules['tensorflow'] = None\n"
    monkeypatch.setattr(isolated, "_CHILD_CODE", guard + _CHILD_CODE)
    out = isolated_predict(flatbuffer, np.zeros((1, 8, 8, 1), np.float32))
    assert out.shape == (1, 4)


def _mutate(data: bytes, rng: np.random.Generator, case: int) -> bytes:
    mutated = bytearray(data)
    if case % 4 == 0:  # truncation
        return bytes(mutated[: int(rng.integers(0, len(mutated)))])
    for _ in range(int(rng.integers(1, 9))):  # 1..8 random byte overwrites
        mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
    return bytes(mutated)


def test_fuzzed_flatbuffers_through_bnn_benchmark_never_crash(flatbuffer, tmp_path):
    """200 seeded truncations/byte mutations through `bnn benchmark`: each run either succeeds
    or exits 2 with one line on stderr; the CLI process itself never crashes or tracebacks."""
    from tests.conftest import invoke

    rng = np.random.default_rng(1234)
    outcomes = collections.Counter()
    path = tmp_path / "fuzzed.tflite"
    for case in range(FUZZ_CASES):
        path.write_bytes(_mutate(flatbuffer, rng, case))
        result = invoke(["benchmark", path, "--runs", "1", "--warmup", "0"])
        assert "Traceback" not in result.output, result.output
        if result.exit_code == 0:
            assert "1 runs, 1 thread(s): median" in result.stdout
            outcomes["ran"] += 1
            continue
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        if "TFLite flatbuffer" in lines[0]:
            outcomes["rejected by validation"] += 1
        else:
            outcomes["child crashed" if "crashed" in lines[0] else "child failed"] += 1
    assert sum(outcomes.values()) == FUZZ_CASES
    # Truncations alone are 50 cases and are all caught by validation, never by the child.
    assert outcomes["rejected by validation"] >= FUZZ_CASES // 4
    # Some mutations reach the child (e.g. changed weights still run): the child path is exercised.
    assert outcomes["ran"] + outcomes["child failed"] + outcomes["child crashed"] > 0
