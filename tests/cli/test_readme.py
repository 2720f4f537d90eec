"""README's "From Python" example runs as written (in a scratch folder), for 1 epoch of 6 steps
instead of 3 whole epochs: what it shows (train, read the record, convert, verify, read the
file) is the same, and a full epoch of BinaryDenseNet28 costs ~25 s of the test's ~45 s."""

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_from_python_example_runs(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code.count("epochs=3") == 1, "the example's epochs changed: update this test"
    code = code.replace("epochs=3", "epochs=1, steps_per_epoch=6")
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
