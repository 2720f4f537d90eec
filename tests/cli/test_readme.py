"""README's "From Python" example runs as written.

`make test` runs it in this process on the suite's digits run: every line as written, but
`training.train`, which is checked for the arguments the example gives it (and its model
builder for the network the run holds) and replaced by a copy of that run. `make test-all`
runs the whole example in a scratch folder in a child process, training included, for 1 epoch
of 6 steps instead of 3 whole epochs: what it shows (train, read the record, convert, verify,
read the file) is the same, and a full epoch of BinaryDenseNet28 costs ~25 s of the test's
~50 s."""

import inspect
import re
import subprocess
import sys

import pytest

from tests.artefacts import copy_of
from tests.conftest import DIGITS_SHAPE, REPO_ROOT, TRAIN_ARGS


def _example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code.count("epochs=3") == 1, "the example's epochs changed: update this test"
    return code


def test_from_python_example_runs_on_the_digits_run(_digits_run_artefact, tmp_path, monkeypatch,
                                                    capsys):
    import bnn_keras.training
    from bnn_keras.training import TrainConfig, train

    trained = []

    def train_by_copy(config, build_model, run_dir, **kwargs):
        inspect.signature(train).bind(config, build_model, run_dir, **kwargs)
        assert config == TrainConfig(model="binary-densenet28", dataset="digits", epochs=3)
        copy_of(_digits_run_artefact / "digits", tmp_path / run_dir)
        trained.append(build_model((16, 16, 1), 10).count_params())

    monkeypatch.setattr(bnn_keras.training, "train", train_by_copy)
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(), "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    epochs = TRAIN_ARGS[TRAIN_ARGS.index("--epochs") + 1]
    # The run's record (the copied run's epochs and input shape: the suite trains digits at 8x8,
    # where the example's defaults would train at 16x16, as the slow test below checks), with
    # the parameters the example's builder gives; the report's agreement line; the Flatbuffer's
    # own reading of the written file.
    assert f"{epochs} {DIGITS_SHAPE} {trained[0]}\n" in out, out
    agreement = re.search(r"top-1 agreement ([\d.]+)%", out)
    assert agreement and float(agreement.group(1)) >= 99.0, out  # as tests/cli/test_cli.py
    assert "23 ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']" in out
    assert (tmp_path / "model.tflite").is_file()


@pytest.mark.slow
def test_from_python_example_runs(tmp_path):
    code = _example().replace("epochs=3", "epochs=1, steps_per_epoch=6")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900, env={"PYTHONPATH": str(REPO_ROOT),
                                                         **_environment()})
    assert result.returncode == 0, result.stderr[-3000:]
    # The report's agreement line, then the Flatbuffer's own reading of the written file.
    assert "1 (16, 16, 1) " in result.stdout  # the run's record: epochs, input shape, params
    assert "top-1 agreement 100.00%" in result.stdout
    assert "23 ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']" in result.stdout
    assert (tmp_path / "model.tflite").is_file() and (tmp_path / "runs" / "digits").is_dir()


def _environment():
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
