"""What earlier versions wrote still works: resume, extend, convert and evaluate their files.

The folders under tests/fixtures/ were written by bnn 0.1.0 and 0.2.0 (each has a README.md
with the commands).
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, invoke


def private_copy(tmp_path, version):
    """A copy of the fixtures of bnn `version` (commands must not write into the repository)."""
    folder = tmp_path / version
    shutil.copytree(FIXTURES / version, folder)
    return folder


@pytest.fixture
def old(tmp_path):
    return private_copy(tmp_path, "v0.1")


@pytest.fixture
def v02(tmp_path):
    return private_copy(tmp_path, "v0.2")


def _resumed_interrupted_run(request, tmp_path, version):
    """bnn `version`'s interrupted run after `bnn train --resume RUN`: (the run folder, the
    command's output). v0.2's resume (an epoch of 150 steps) is the session's shared one, which
    tests/training/test_run_record.py reads too."""
    if version == "v0.2":
        resumed = request.getfixturevalue("resumed_v02_interrupted_run")
        return resumed.run_dir, resumed.output.output
    run = private_copy(tmp_path, version) / "interrupted_run"
    result = invoke(["train", "--resume", run])
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.mark.parametrize("version, done", [("v0.1", 1), ("v0.2", 2)])
def test_interrupted_old_runs_resume_to_their_recorded_epochs(request, tmp_path, version, done):
    run, output = _resumed_interrupted_run(request, tmp_path, version)
    assert f"{done} of 3 epochs done" in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 3 - done


@pytest.fixture(scope="module")
def v02_converted(tmp_path_factory):
    """The fixtures of bnn 0.2 after `bnn convert finished_run -o new.tflite`, and the command's
    click Result: two tests read this one conversion (each from its own copy)."""
    folder = private_copy(tmp_path_factory.mktemp("converted"), "v0.2")
    result = invoke(["convert", folder / "finished_run", "-o", folder / "new.tflite"])
    return folder, result


def _converted(request, tmp_path, version):
    """A private copy of bnn `version`'s fixtures after `bnn convert finished_run -o new.tflite`,
    and the command's click Result (v0.2's conversion is made once for the module)."""
    if version != "v0.2":
        old = private_copy(tmp_path, version)
        return old, invoke(["convert", old / "finished_run", "-o", old / "new.tflite"])
    shared, result = request.getfixturevalue("v02_converted")
    return Path(shutil.copytree(shared, tmp_path / version)), result


@pytest.mark.parametrize("version", ["v0.1", "v0.2"])
def test_finished_old_runs_convert_and_their_old_tflite_evaluates(request, tmp_path, version):
    old, result = _converted(request, tmp_path, version)
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%" in result.output
    result = invoke(["evaluate", old / "finished_run.tflite"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "digits" in result.output


def test_finished_0_1_run_is_finished_and_cannot_be_extended(old):
    run = old / "finished_run"
    result = invoke(["train", "--resume", run])
    assert result.exit_code == 2 and "already finished all its 2 epochs" in result.output
    result = invoke(["train", "--resume", run, "--epochs", "3"])
    assert result.exit_code == 2, result.output
    assert "finished without keeping its training state" in result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_finished_0_2_run_extends_from_its_backup(v02):
    run = v02 / "finished_run"
    result = invoke(["train", "--resume", run, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["epochs_changes"][-1]["to"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 1
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3


def _float32_buffer_spans(data: bytes):
    """(start, end) byte offsets of the data of every float32 tensor's buffer in `data`."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema_fb

    model = schema_fb.Model.GetRootAs(data, 0)
    base = np.frombuffer(data, np.uint8).ctypes.data
    spans = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            if tensor.Type() == schema_fb.TensorType.FLOAT32 and buffer.DataLength():
                start = buffer.DataAsNumpy().ctypes.data - base  # a view into `data`
                spans.append((start, start + buffer.DataLength()))
    return spans


def assert_same_but_float_rounding(old: bytes, new: bytes, skip: range, max_ulp: int = 2):
    """`new` has the bytes of `old` outside `skip`, except float32 weights that differ in their
    last bits.

    TensorFlow folds constants (BatchNormalization into LceBconv2d's multiplier and bias) with
    the CPU's vector unit: an AVX-512/AMX Xeon and an AVX2 EPYC round some products 1 ulp apart,
    so a flatbuffer written on one differs from the other's in those words only.
    """
    import numpy as np

    assert len(old) == len(new)
    spans = _float32_buffer_spans(old)
    assert spans == _float32_buffer_spans(new)  # the same tensors at the same offsets
    for position in (i for i, (a, b) in enumerate(zip(old, new)) if a != b and i not in skip):
        span = next((s for s in spans if s[0] <= position < s[1]), None)
        assert span is not None, f"byte {position} differs outside the float32 weights"
    for start, end in spans:
        np.testing.assert_array_max_ulp(np.frombuffer(old[start:end], "<f4"),
                                        np.frombuffer(new[start:end], "<f4"), maxulp=max_ulp)


def test_0_2_run_converts_to_the_bytes_0_2_wrote_but_for_version_and_hash(request, tmp_path):
    """Same model, same flatbuffer: only the metadata's bnn_version and content hash differ
    (and, on another kind of CPU than the one that wrote the file, the rounding of folded
    float32 constants)."""
    v02, result = _converted(request, tmp_path, "v0.2")
    assert result.exit_code == 0, result.output
    old, new = (v02 / "finished_run.tflite").read_bytes(), (v02 / "new.tflite").read_bytes()
    assert len(old) == len(new)
    start = old.index(b'{"bnn_version"')
    end = old.index(b"}", old.index(b'"content_sha256"'))
    assert start == new.index(b'{"bnn_version"')
    assert old[:start] == new[:start]
    assert_same_but_float_rounding(old, new, skip=range(start, end))
    from convert import Flatbuffer

    old_meta, new_meta = (Flatbuffer.from_file(v02 / name).metadata
                          for name in ("finished_run.tflite", "new.tflite"))
    for meta in (old_meta, new_meta):
        meta.pop("bnn_version"), meta.pop("content_sha256", None)
    assert old_meta == new_meta
