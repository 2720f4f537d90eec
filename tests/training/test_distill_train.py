"""Training runs with a teacher (`TrainConfig.teacher`), float-copy runs (`float_copy`) and the
run time each epoch records (history.csv, metrics.json).

The teacher here is the float copy of `tiny_bnn` trained two epochs on 8x8 digits: a run folder
whose layer names are the student's own (the frozen teacher lives inside the distillation
layer, so they do not clash).
"""

import csv
import dataclasses
import hashlib
import json
import re
import shutil
import signal
import warnings
from pathlib import Path

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import training
from bnn_keras.binary import binary_kernels
from bnn_keras.errors import BnnError
from bnn_keras.layers import FloatActivation
from bnn_keras.training.config import RunRecord
from tests.conftest import tiny_bnn, tiny_config
from tests.training.test_run import SignalAt

def _rows(run_dir: Path):
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(folder: Path):
    return {str(p): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """The float copy of tiny_bnn, 2 epochs of 4 steps on 8x8 digits."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    training.train(tiny_config(epochs=2, float_copy=True), tiny_bnn, run_dir, verbose=0)
    return run_dir


def test_a_float_copy_run_records_it_and_has_no_quantizers(teacher_run):
    record = RunRecord.read(teacher_run)
    assert record.config.float_copy and record.config.input_activation == "relu"
    assert record.format_version == 4 and record.teacher_sha256 is None
    written = json.loads((teacher_run / "config.json").read_text())
    assert written["float_copy"] is True and "teacher" not in written
    model = tf.keras.models.load_model(teacher_run / "model.keras")
    bconv = model.get_layer("bconv")
    assert bconv.kernel_quantizer is None and bconv.kernel_constraint is None
    assert isinstance(bconv.input_quantizer, FloatActivation)  # relu where sign was
    assert binary_kernels(model) == []
    assert all(getattr(layer, "kernel_quantizer", None) is None for layer in model.layers)


def test_float_copy_options_are_checked():
    with pytest.raises(BnnError, match=r"^`input_activation` applies to the float copy"):
        tiny_config(input_activation="tanh").validate()
    with pytest.raises(BnnError, match=r"^Unknown `input_activation` 'bogus'"):
        tiny_config(float_copy=True, input_activation="bogus").validate()
    with pytest.raises(BnnError, match=r"^`distill_weight` applies to distillation; give a "
                                       r"`teacher` too"):
        tiny_config(distill_weight=0.3).validate()
    resolved, _ = training.resolve_recipe(tiny_config(float_copy=True, input_activation="none"))
    assert resolved.input_activation == "none"


class _FirstBatch(tf.keras.callbacks.Callback):
    """The student's weights when training begins, and the first batch's loss."""

    weights = loss = None

    def on_train_begin(self, logs=None):
        self.weights = [layer.get_weights() for layer in self.model.layers
                        if layer.weights and layer.name != "distillation"]

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and self.loss is None:
            self.loss = float(logs["loss"])


def _first_batch(config):
    from bnn_keras.training.run import _load_data

    resolved, _ = training.resolve_recipe(config)
    images, labels = next(iter(_load_data(resolved, None, 0).train))
    return images, labels.numpy()


def _student_probabilities(weights, images):
    student = tiny_bnn((8, 8, 1), 10)
    for layer, values in zip([l for l in student.layers if l.weights], weights):
        layer.set_weights(values)
    # As in fit: BatchNorm on the batch's statistics.
    return student(images, training=True).numpy().astype("float64")


def test_the_distillation_loss_is_trained_and_equals_its_formula(teacher_run, tmp_path):
    config = tiny_config(epochs=1, steps_per_epoch=1, teacher=str(teacher_run),
                         distill_loss="distribution", track_flips=False)
    first = _FirstBatch()
    result = training.train(config, tiny_bnn, tmp_path / "taught", verbose=0, callbacks=[first])
    images, labels = _first_batch(config)
    p_student = _student_probabilities(first.weights, images)
    teacher = tf.keras.models.load_model(teacher_run / "model.keras")
    p_teacher = teacher(images, training=False).numpy().astype("float64")
    # ReActNet's loss: KL(teacher || student), labels weighted 0.
    expected = np.mean(np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student)), axis=-1))
    assert first.loss == pytest.approx(expected, rel=1e-4)

    # The same run without the teacher starts from the same weights and trains on the labels.
    plain = _FirstBatch()
    training.train(tiny_config(epochs=1, steps_per_epoch=1, track_flips=False), tiny_bnn,
                   tmp_path / "plain", verbose=0, callbacks=[plain])
    for a, b in zip(plain.weights, first.weights):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    cross_entropy = -np.mean(np.log(p_student[np.arange(len(labels)), labels]))
    assert plain.loss == pytest.approx(cross_entropy, rel=1e-4)
    assert abs(plain.loss - first.loss) > 0.05

    record = RunRecord.read(result.run_dir)
    assert record.config.teacher == str(teacher_run)
    assert record.teacher_sha256 == _sha256(teacher_run / "model.keras")
    assert (record.config.distill_loss, record.config.distill_weight,
            record.config.distill_temperature) == ("distribution", 1.0, 1.0)
    # model.keras is the student alone, as tiny_bnn builds it.
    saved = tf.keras.models.load_model(result.run_dir / "model.keras")
    assert [layer.name for layer in saved.layers] == [l.name for l in result.model.layers]
    assert "distillation" not in [layer.name for layer in saved.layers]
    assert saved.count_params() == tiny_bnn((8, 8, 1), 10).count_params()
    # The test loss is the student's cross-entropy, not the labels' loss weighted by 0; the
    # history logs that cross-entropy beside the weighted loss (0 here).
    assert result.metrics["test_loss"] > 0.1
    row = _rows(result.run_dir)[-1]
    assert float(row["val_loss"]) == 0.0
    assert float(row["val_crossentropy"]) == pytest.approx(result.metrics["test_loss"], rel=1e-4)


def _binary_teacher_file(folder: Path) -> Path:
    """A BNN classifier file whose binary layer is named teacher_bconv."""
    inputs = tf.keras.Input((8, 8, 1))
    x = lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", use_bias=False,
                              name="teacher_bconv")(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax", name="teacher_head")(x)
    path = folder / "teacher.keras"
    tf.keras.Model(inputs, outputs).save(path)
    return path


def test_flips_time_and_resume_of_a_distilled_run(tmp_path):
    """A binary teacher file: the flip tracker sees only the student's binary layer; an
    interrupted run resumes with its own copy of the teacher (RUN_DIR/inputs), whatever
    became of the original, and ends where an uninterrupted one does; a changed copy is
    refused, and history.csv's run time carries on."""
    teacher = _binary_teacher_file(tmp_path)
    config = tiny_config(teacher=str(teacher), distill_weight=0.7, distill_temperature=2.0)
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError):
        training.train(config, tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(signal.SIGINT, epoch=1, batch=2)])
    first_rows = _rows(run_dir)
    assert [r["epoch"] for r in first_rows] == ["1"]

    original = teacher.read_bytes()
    copy = run_dir / "inputs" / teacher.name
    assert copy.read_bytes() == original
    copy.write_bytes(original + b"\0")  # the run's own copy damaged: refused
    before = _hashes(run_dir)
    with pytest.raises(BnnError) as err:
        training.resume_training(run_dir, tiny_bnn, verbose=0)
    assert str(err.value) == (
        f"Run {run_dir} keeps its `teacher` in {copy}, which has changed since the run started "
        "(sha256); restore the run folder from a copy, or start a new run.")
    assert _hashes(run_dir) == before
    copy.write_bytes(original)
    teacher.write_bytes(original + b"\0")  # the original changed: the run uses its copy

    resumed = training.resume_training(run_dir, tiny_bnn, verbose=0)
    teacher.write_bytes(original)
    whole = training.train(config, tiny_bnn, tmp_path / "whole", verbose=0)
    rows, whole_rows = _rows(run_dir), _rows(whole.run_dir)
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]
    for a, b in zip(resumed.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(resumed.model.get_weights()) == len(tiny_bnn((8, 8, 1), 10).get_weights())

    with open(run_dir / "flips.csv", newline="") as f:
        columns = csv.DictReader(f).fieldnames
    assert [c for c in columns if c.startswith("flip_ratio/")] == [
        "flip_ratio/total", "flip_ratio/bconv"]

    # Run time: the first session's row is kept, the resumed epochs continue from it.
    assert rows[0]["run_time_s"] == first_rows[0]["run_time_s"]
    times = [float(r["run_time_s"]) for r in rows]
    epoch_times = [float(r["epoch_time_s"]) for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert all(times[i] - times[i - 1] >= epoch_times[i] for i in range(1, 3))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run_time_s"] == [round(t, 3) for t in times]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = int(np.argmax(accuracies))
    assert metrics["best_test_accuracy"] == accuracies[best]
    assert metrics["best_epoch"] == best + 1
    assert metrics["time_to_best_s"] == round(times[best], 3)

    # The student's model.keras carries the optimizer that trained it, with its state: no
    # "Skipping variable loading" of a fresh RMSprop, one Adam slot pair per trainable weight.
    with _captured_log("absl") as records:
        loaded = tf.keras.models.load_model(run_dir / "model.keras")
    assert not [r for r in records if "Skipping variable loading" in r.getMessage()]
    optimizer = loaded.optimizer
    assert type(optimizer).__name__ == "Adam"  # the recipe's optimizer
    assert int(optimizer.iterations.numpy()) == 3 * config.steps_per_epoch
    weights = loaded.trainable_variables
    assert [m.shape for m in optimizer._momentums] == [w.shape for w in weights]
    assert [v.shape for v in optimizer._velocities] == [w.shape for w in weights]
    assert max(float(np.abs(v.numpy()).max()) for v in optimizer._velocities) > 0  # trained


class _captured_log:
    """The records a logger emits inside the block."""

    def __init__(self, name: str):
        import logging

        self.logger = logging.getLogger(name)
        self.records = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def test_a_teacher_run_on_other_data_is_refused_before_the_folder_exists(teacher_run,
                                                                        tmp_path):
    run_dir = tmp_path / "runs" / "student"
    with pytest.raises(BnnError) as err:
        training.train(tiny_config(image_size=10, teacher=str(teacher_run)), tiny_bnn,
                       run_dir, verbose=0)
    assert str(err.value) == (
        f"`teacher` {teacher_run} does not fit this run: its input shape is (8, 8, 1), the "
        "student's is (10, 10, 1); give a teacher trained on the same data set, `image_size` "
        "and classes.")
    assert not run_dir.parent.exists()


def test_a_distilled_run_in_mixed_precision(teacher_run, tmp_path):
    config = tiny_config(epochs=1, steps_per_epoch=1, teacher=str(teacher_run),
                         precision="mixed_bfloat16", track_flips=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bfloat16 on this CPU
        result = training.train(config, tiny_bnn, tmp_path / "bf16", verbose=0)
    metrics = result.metrics
    assert metrics["test_accuracy_mixed_precision"] is not None
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["test_loss"])
    saved = tf.keras.models.load_model(result.run_dir / "model.keras")
    assert "distillation" not in [layer.name for layer in saved.layers]


def test_a_run_folder_of_an_older_bnn_resumes_without_a_run_time(tmp_path):
    """history.csv without run_time_s (bnn before this change): the resumed epochs record
    their epoch time but no run time, which would be wrong."""
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError):
        training.train(tiny_config(track_flips=False), tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(signal.SIGINT, epoch=1, batch=1)])
    rows = _rows(run_dir)
    with open(run_dir / "history.csv", "w", newline="") as f:
        columns = [c for c in rows[0] if c != "run_time_s"]
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    result = training.resume_training(run_dir, tiny_bnn, verbose=0)
    rows = _rows(run_dir)
    assert [r.get("run_time_s") or None for r in rows] == [None, None, None]
    assert all(float(r["epoch_time_s"]) > 0 for r in rows[1:])
    assert result.metrics["run_time_s"] == [None, None, None]
    assert result.metrics["time_to_best_s"] is None
    assert result.metrics["best_epoch"] in (1, 2, 3)
    shutil.rmtree(run_dir)


def test_a_teacher_h5_file(tmp_path):
    """A Keras HDF5 model file of any classifier (a Dense softmax head: its log-probabilities
    stand for its logits)."""
    path = tmp_path / "teacher.h5"
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="softmax")(x)).save(path)
    config = tiny_config(epochs=1, steps_per_epoch=1, teacher=str(path), track_flips=False)
    result = training.train(config, tiny_bnn, tmp_path / "run", verbose=0)
    record = RunRecord.read(result.run_dir)
    assert record.config.teacher == str(path) and record.teacher_sha256 == _sha256(path)
    assert record.config.distill_loss == "kl" and record.config.distill_weight == 0.5



def _every_step_config(teacher_run: Path) -> training.TrainConfig:
    """Distillation from `teacher_run` whose teacher runs at every step (3 epochs of 4 steps)."""
    return tiny_config(teacher=str(teacher_run), distill_weight=0.7, track_flips=False)


@pytest.fixture(scope="module")
def _interrupted_cached_run(teacher_run, tmp_path_factory) -> Path:
    """`_every_step_config` with `distill_cache`, interrupted (SIGINT) at epoch 2's third batch."""
    run_dir = tmp_path_factory.mktemp("cached") / "run"
    with pytest.raises(training.TrainingInterruptedError):
        training.train(dataclasses.replace(_every_step_config(teacher_run), distill_cache=True),
                       tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(signal.SIGINT, epoch=1, batch=2)])
    return run_dir


@pytest.fixture
def interrupted_cached_run(_interrupted_cached_run, tmp_path) -> Path:
    """A private copy of a run with cached teacher logits, interrupted after 1 complete epoch of
    3 (trained once for the module)."""
    return Path(shutil.copytree(_interrupted_cached_run, tmp_path / "cached"))


def test_cached_teacher_logits_train_as_the_teacher_run_at_every_step(
        teacher_run, interrupted_cached_run, tmp_path):
    """`distill_cache`: the teacher's logits, computed once and shuffled with their images,
    give the losses and weights of the run whose teacher runs at every step, also when the
    cached run is interrupted and resumed (the logits are computed again)."""
    config = _every_step_config(teacher_run)
    every_step = training.train(config, tiny_bnn, tmp_path / "every-step", verbose=0)
    run_dir = interrupted_cached_run  # `config` with distill_cache, interrupted at epoch 2
    cached = training.resume_training(run_dir, tiny_bnn, verbose=0)

    rows, expected = _rows(run_dir), _rows(every_step.run_dir)
    assert len(rows) == 3
    for column in ("loss", "accuracy", "val_accuracy", "val_crossentropy"):
        np.testing.assert_allclose([float(r[column]) for r in rows],
                                   [float(r[column]) for r in expected], rtol=1e-5)
    for a, b in zip(cached.model.get_weights(), every_step.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    record = RunRecord.read(run_dir)
    assert record.config.distill_cache is True and record.format_version == 4
    assert json.loads((every_step.run_dir / "config.json").read_text()).get(
        "distill_cache") is None  # unused: left out, as the other layout-4 fields
    saved = tf.keras.models.load_model(run_dir / "model.keras")  # the student alone
    assert [layer.name for layer in saved.layers] == [l.name for l in cached.model.layers]
    assert len(saved.inputs) == 1 and "distillation" not in [l.name for l in saved.layers]


def test_cached_teacher_logits_cover_only_the_images_the_epochs_draw(teacher_run, tmp_path,
                                                                      monkeypatch, capsys):
    """With `steps_per_epoch`, the teacher runs on the images the epochs draw, not the split."""
    from bnn_keras import distillation

    seen = []
    real = distillation.teacher_logits_of

    def counting(teacher, images, **options):
        logits = real(teacher, images, **options)
        seen.append(len(logits))
        return logits

    monkeypatch.setattr(distillation, "teacher_logits_of", counting)
    config = dataclasses.replace(_every_step_config(teacher_run), distill_cache=True, epochs=1,
                                 steps_per_epoch=2)
    result = training.train(config, tiny_bnn, tmp_path / "run", verbose=2)
    assert seen == [2 * 16]
    num_train = RunRecord.read(result.run_dir).num_train
    assert (f"The teacher's logits on the 32 of {num_train:,} training images that epoch 1 "
            "draw, once:") in capsys.readouterr().out


def _signal_during_the_teacher_pass(monkeypatch, signum):
    """Sends `signum` to this process while the teacher computes its logits, as a user's
    Ctrl-C or a scheduler's SIGTERM would during that pass (it can take minutes)."""
    import os
    import time

    from bnn_keras import distillation

    def interrupted(teacher, images, verbose=1, **options):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError(f"{signal.Signals(signum).name} did not interrupt the pass")

    monkeypatch.setattr(distillation, "teacher_logits_of", interrupted)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_teacher_pass_leaves_the_run_folder_as_it_was(
        teacher_run, interrupted_cached_run, tmp_path, monkeypatch, signum):
    """Ctrl-C or SIGTERM while the teacher's logits are computed: a new run's folder is not
    created, a resumed run's files stay byte-identical, and each says so in one error; the
    resumed run then continues."""
    config = dataclasses.replace(_every_step_config(teacher_run), distill_cache=True)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _signal_during_the_teacher_pass(patch, signum)
        with pytest.raises(training.TrainingInterruptedError) as err:
            training.train(config, tiny_bnn, run_dir, verbose=0)
    assert str(err.value) == (
        f"Interrupted before training started; nothing was written to {run_dir}.")
    assert err.value.exit_code == 130 and not run_dir.exists()

    run_dir = interrupted_cached_run  # `config` interrupted (SIGINT) at epoch 2
    before, handler = _hashes(run_dir), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        _signal_during_the_teacher_pass(patch, signum)
        with pytest.raises(training.TrainingInterruptedError) as err:
            training.resume_training(run_dir, tiny_bnn, verbose=0)
    assert str(err.value) == (
        f"Interrupted before training resumed; {run_dir} is as it was (1 complete epoch(s) "
        f"of 3); continue with: bnn train --resume {run_dir}")
    assert _hashes(run_dir) == before
    assert signal.getsignal(signal.SIGTERM) is handler  # put back after the interrupt

    resumed = training.resume_training(run_dir, tiny_bnn, verbose=0)
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2", "3"]
    assert resumed.metrics["epochs"] == 3


def test_cached_teacher_logits_are_refused_where_they_would_be_wrong(teacher_run, tmp_path):
    with pytest.raises(BnnError, match=r"^`distill_cache` applies to distillation; give a "
                                       r"`teacher` too"):
        tiny_config(distill_cache=True).validate()
    with pytest.raises(BnnError) as err:
        tiny_config(teacher=str(teacher_run), distill_cache=True, augment=True).validate()
    assert str(err.value) == (
        "`distill_cache` computes the teacher's logits once, on the un-augmented images; train "
        "without `augment`, or drop `distill_cache`.")
    with pytest.raises(BnnError, match=r"^Attention matching needs the teacher's feature maps "
                                       r"at every step; drop `distill_cache`"):
        tiny_config(teacher=str(teacher_run), distill_cache=True,
                    distill_attention_layers="bconv").validate()
    run_dir = tmp_path / "runs" / "cached"
    with pytest.raises(BnnError, match=r"^`distill_cache` computes"):
        training.train(tiny_config(teacher=str(teacher_run), distill_cache=True, augment=True),
                       tiny_bnn, run_dir, verbose=0)
    assert not run_dir.parent.exists()


# Real-to-Binary's attention matching from `bnn train`: a registry student and its float copy.

from tests.conftest import TINY_REACTNET as CLI_STUDENT  # noqa: E402
from tests.conftest import TINY_TRAIN_OPTIONS as CLI_SMALL  # noqa: E402

# `float_teacher_run` is CLI_STUDENT's float copy: the same layer names. The layers matched:
# each residual block's second BN (models/reactnet.py's `{prefix}_bn2`), 8x8x16 feature maps in
# both; tiny_bnn (`teacher_run`) has neither.


@pytest.fixture(scope="module")
def float_teacher(float_teacher_run) -> Path:
    return float_teacher_run


def test_attention_matching_run_records_its_layers(float_teacher, tmp_path):
    from models.registry import create_model
    from tests.conftest import invoke

    run_dir = tmp_path / "student"
    # Without flip tracking, which this run's records do not involve (~0.7 s of its ~4 s).
    result = invoke(["train", *CLI_STUDENT, "--teacher", float_teacher,
                     "--distill-attention-weight", "30", "--distill-attention-layer",
                     "block1_bn2, block2_bn2", *CLI_SMALL, "--no-track-flips", "-o", run_dir])
    assert result.exit_code == 0, result.output
    written = json.loads((run_dir / "config.json").read_text())
    assert written["format_version"] == 4
    assert (written["distill_attention_weight"], written["distill_attention_layers"]) == (
        30.0, "block1_bn2,block2_bn2")
    settings = RunRecord.read(run_dir).config.distill_settings()
    assert (settings.loss, settings.attention_weight, settings.attention_layers) == (
        "kl", 30.0, ("block1_bn2", "block2_bn2"))
    # model.keras is the student alone.
    saved = tf.keras.models.load_model(run_dir / "model.keras")
    teacher = tf.keras.models.load_model(float_teacher / "model.keras")
    assert [layer.name for layer in saved.layers] == [layer.name for layer in teacher.layers]
    assert saved.count_params() == create_model(
        "reactnet-a", widths=[8, 16, 16], input_shape=(8, 8, 1), num_classes=10).count_params()
    # The float copy has a parameter-free ReLU where the student has an RSign, whose threshold
    # is one weight per input channel: 8 + 8 into block 1's convs, 16 + 16 into block 2's.
    assert saved.count_params() == teacher.count_params() + 8 + 8 + 16 + 16
    # --resume keeps the recorded layers: other ones are refused.
    other = invoke(["train", "--resume", run_dir, "--distill-attention-layers", "block1_bn2",
                    "--epochs", "2"])
    assert other.exit_code == 2
    assert ("--distill-attention-layers block1_bn2 (the run has block1_bn2,block2_bn2)"
            in other.stderr)


def test_attention_matching_options_are_refused_before_the_folder_exists(
        float_teacher, teacher_run, tmp_path):
    from tests.conftest import invoke

    run_dir = tmp_path / "runs" / "student"

    def refused(*args):
        result = invoke(["train", *CLI_STUDENT, *args, *CLI_SMALL, "-o", run_dir])
        assert result.exit_code == 2, result.output
        assert not run_dir.parent.exists()
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    assert refused("--distill-attention-layer", "block1_bn2") == (
        "Error: --distill-attention-layers applies to distillation; give a --teacher too, or "
        "drop --distill-attention-layers.")
    assert refused("--teacher", float_teacher, "--distill-attention-weight", "0") == (
        "Error: Expected --distill-attention-weight > 0, got 0.0.")
    assert refused("--teacher", float_teacher, "--distill-attention-weight", "5") == (
        "Error: Attention matching needs the layers whose feature maps it matches; give "
        "--distill-attention-layers too (e.g. block_2_out,block_3_out), or drop "
        "--distill-attention-weight.")
    assert refused("--teacher", float_teacher, "--distill-attention-layer", "block1_bn2n") == (
        "Error: The student 'reactnet_a' has no layer 'block1_bn2n' to match attention at; give "
        "--distill-attention-layers that both the student and the teacher have (`bnn summary` "
        "lists a model's layers).")
    # A teacher (tiny_bnn's float copy) without the student's layer.
    line = refused("--teacher", teacher_run, "--distill-attention-layer", "block1_bn2")
    assert re.fullmatch(r"Error: The teacher '\w+' has no layer 'block1_bn2' to match attention "
                        r"at; give --distill-attention-layers that both .*", line), line
    # head_dense: the classifier's Dense(10), models/common.py's `classifier_head`.
    assert refused("--teacher", float_teacher, "--distill-attention-layer",
                   "block1_bn2,head_dense") == (
        "Error: Layer 'head_dense' of the student outputs shape (10,), not feature maps "
        "(height, width, channels); give --distill-attention-layers of convolutional blocks.")


def test_attention_options_resolve_to_what_config_json_records():
    # A Python caller's list is the CLI's comma-separated string; the weight defaults to the
    # zoo's 30 with layers, and is recorded resolved.
    config = tiny_config(teacher="teacher.keras",
                         distill_attention_layers=["block_2_out", "block_3_out"])
    assert config.distill_attention_layers == "block_2_out,block_3_out"
    assert tiny_config(distill_attention_layers=" a, b").distill_attention_layers == "a,b"
    resolved, _ = training.resolve_recipe(config)
    assert (resolved.distill_attention_weight, resolved.distill_attention_layers) == (
        30.0, "block_2_out,block_3_out")
    plain, _ = training.resolve_recipe(tiny_config(teacher="teacher.keras"))
    assert (plain.distill_attention_weight, plain.distill_attention_layers) == (None, None)
    assert plain.distill_settings().attention_weight == 0.0
    with pytest.raises(BnnError, match=r"^`distill_attention_layers` applies to distillation"):
        tiny_config(distill_attention_layers="block_2_out").validate()
