"""A run keeps its own copy of what it depends on (`bnn_keras.training.run_inputs`): a student
resumes from its copy of the teacher wherever the run folder, the teacher or the shell is.

Copies of the weights file are checked in test_train_weights.py, and a staged run's in
test_stages.py.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from bnn_keras import training
from bnn_keras.errors import BnnError
from bnn_keras.training.config import TrainConfig
from tests.conftest import invoke

# ReActNet-A cut to a stem and one block: the registry model with the fewest layers, as teacher
# (--float) and as student (each training traces a step, which costs by the layer).
SMALL = dict(model="reactnet-a", model_options={"widths": [8, 8]}, dataset="digits",
             image_size=8, epochs=1, steps_per_epoch=2, batch_size=8, precision="float32",
             track_flips=False)
CLI_SMALL = ["--dataset", "digits", "--image-size", "8", "--epochs", "1", "--steps-per-epoch",
             "2", "--batch-size", "8", "--precision", "float32", "--no-track-flips",
             "--verbose", "0", "--model-option", "widths=[8,8]"]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _InterruptFirstBatch(tf.keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        raise KeyboardInterrupt


def _teacher_file(path: Path) -> Path:
    """A softmax classifier of 8x8x1 digits saved as `path`."""
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(inputs))
    tf.keras.Model(inputs, tf.keras.layers.Activation("softmax")(x)).save(path)
    return path


def _interrupted_student(run_dir: str, teacher: str) -> None:
    with pytest.raises(training.TrainingInterruptedError):
        training.train(TrainConfig(**SMALL, teacher=teacher), None, Path(run_dir), verbose=0,
                       callbacks=[_InterruptFirstBatch()])


def test_a_student_resumes_from_its_copy_of_the_teacher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = invoke(["train", "reactnet-a", "--float", *CLI_SMALL, "-o", "runs/teacher"])
    assert teacher.exit_code == 0, teacher.output
    teacher_sha = _sha(tmp_path / "runs/teacher/model.keras")
    # Two students of the teacher run, given by a path relative to the shell's folder.
    for name in ("a", "b"):
        _interrupted_student(f"runs/{name}", "runs/teacher")
        copy = tmp_path / "runs" / name / "inputs" / "teacher"
        assert sorted(p.name for p in copy.iterdir()) == ["config.json", "model.keras"]
        assert _sha(copy / "model.keras") == teacher_sha
        assert json.loads((tmp_path / "runs" / name / "config.json").read_text())[
            "teacher"] == "runs/teacher"  # as given: where it came from

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # Another teacher is a difference; the same one by another path (here its model file) is
    # not.
    other = tmp_path / "other.keras"
    shutil.copy(tmp_path / "runs/teacher/model.keras", other)
    with open(other, "ab") as f:
        f.write(b"\0")
    refused = invoke(["train", "--resume", "../runs/b", "--teacher", str(other)])
    assert refused.exit_code == 2
    assert f"--teacher {other} (the run has runs/teacher)" in refused.output
    same = invoke(["train", "--resume", "../runs/b", "--verbose", "0",
                   "--teacher", str(tmp_path / "runs/teacher/model.keras")])
    assert same.exit_code == 0, same.output

    # The teacher run extended (its model.keras rewritten), then deleted: student a resumes
    # from its own copy, with the teacher it started with.
    extended = invoke(["train", "--resume", str(tmp_path / "runs/teacher"), "--epochs", "2",
                       "--verbose", "0"])
    assert extended.exit_code == 0, extended.output
    assert _sha(tmp_path / "runs/teacher/model.keras") != teacher_sha
    shutil.rmtree(tmp_path / "runs/teacher")
    resumed = invoke(["train", "--resume", "../runs/a", "--verbose", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "runs/a/config.json").read_text())[
        "teacher_sha256"] == teacher_sha


def test_a_student_moved_to_another_folder_resumes(tmp_path, monkeypatch):
    teacher_file = _teacher_file(tmp_path / "teacher.keras")
    monkeypatch.chdir(tmp_path)
    _interrupted_student("first/run", "teacher.keras")
    assert _sha(tmp_path / "first/run/inputs/teacher.keras") == _sha(teacher_file)
    shutil.copytree(tmp_path / "first/run", tmp_path / "copy")
    shutil.rmtree(tmp_path / "first")
    teacher_file.unlink()
    resumed = invoke(["train", "--resume", "copy", "--verbose", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "copy/metrics.json").read_text())["epochs"] == 1


def test_a_new_run_refused_after_its_folder_was_made_leaves_no_copies(tmp_path, monkeypatch):
    """A teacher file changed between the checks and the copy is refused, and the new run's
    folder is left as it was before the run (here: not there)."""
    from bnn_keras.training import run_inputs

    teacher_file = _teacher_file(tmp_path / "teacher.keras")
    real_freeze = run_inputs.freeze

    def changed_first(run_dir, role, source, sha256, what):
        with open(teacher_file, "ab") as f:
            f.write(b"\0")
        return real_freeze(run_dir, role, source, sha256, what)

    monkeypatch.setattr(run_inputs, "freeze", changed_first)
    run_dir = tmp_path / "run"
    with pytest.raises(BnnError, match=(
            f"`teacher` {teacher_file} changed while the run was starting")):
        training.train(TrainConfig(**SMALL, teacher=str(teacher_file)), None, run_dir, verbose=0)
    assert not run_dir.exists()


def test_a_student_of_an_earlier_bnn_resumes_with_its_teacher_given_by_any_path(
        tmp_path, monkeypatch):
    """A run without inputs/ (an earlier bnn's) recorded its teacher by the relative path it
    was given: from another folder, the same file given again by any path resumes it, and the
    run keeps a copy from then on."""
    teacher_file = _teacher_file(tmp_path / "teacher.keras")
    monkeypatch.chdir(tmp_path)
    _interrupted_student("run", "teacher.keras")
    shutil.rmtree(tmp_path / "run/inputs")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    lost = invoke(["train", "--resume", "../run"])
    assert lost.exit_code == 2
    assert lost.stderr.strip() == (
        "Error: Run ../run distils from --teacher teacher.keras, whose model file is not there "
        "or has changed since the run started (sha256); give the same teacher with --teacher "
        "PATH to resume the run, or start a new run.")
    assert not (tmp_path / "run/inputs").exists()
    given = invoke(["train", "--resume", "../run", "--teacher", str(teacher_file),
                    "--verbose", "0"])
    assert given.exit_code == 0, given.output
    assert _sha(tmp_path / "run/inputs/teacher.keras") == _sha(teacher_file)
