"""Training writes a complete, self-describing and reloadable run folder."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bnn_keras import training
from bnn_keras.errors import BnnError
from tests.conftest import DIGITS_SHAPE, tiny_bnn, tiny_config


def test_run_folder_holds_model_config_history_metrics(digits_run):
    run_dir = digits_run.run_dir
    # backup/ and best/ stay (the finished run can be extended); the lock went with the
    # process; best.keras holds the best epoch when it is not the last.
    best_is_last = digits_run.metrics["best_epoch"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "backup", "best", *([] if best_is_last else ["best.keras"]), "config.json",
        "flips.csv", "flips.png", "history.csv", "metrics.json", "model.keras", "status.json",
    ]
    config = digits_run.config
    assert config["model"] == "binary-densenet28" and config["dataset"] == "digits"
    assert config["input_shape"] == list(DIGITS_SHAPE)
    assert config["class_names"] == [str(d) for d in range(10)]
    assert config["epochs"] == 2 and config["steps_per_epoch"] == 18 and config["seed"] == 0
    assert config["precision_resolved"] in ("mixed_bfloat16", "float32")
    assert set(config["versions"]) == {"tensorflow", "tf_keras", "larq", "larq_compute_engine"}
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    metrics = digits_run.metrics
    assert metrics["train_accuracy"] == pytest.approx(float(rows[-1]["accuracy"]))
    training_precision_accuracy = (
        metrics["test_accuracy"] if config["precision_resolved"] == "float32"
        else metrics["test_accuracy_mixed_precision"])
    assert training_precision_accuracy == pytest.approx(float(rows[-1]["val_accuracy"]), abs=1e-6)
    assert metrics["params"] == digits_run.model.count_params()
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in digits_run.cli_output
    # Steady state: the 2 x 18 training steps of 32 images but the first (it traces and
    # compiles the step), without validation (`test_epoch_timer_counts_...` checks which
    # seconds count): faster than the session's images over its wall time. Epoch 2's wall time
    # was the bound at 16x16, where validation took a larger share; at 8x8 the other test
    # process's load moved the rates by more than validation's share.
    assert metrics["images_per_s_steps"] == 35
    assert metrics["images_per_s"] >= 2 * 18 * 32 / metrics["wall_time_s"]
    assert metrics["epoch_seconds"] == [round(float(row["epoch_time_s"]), 3) for row in rows]
    assert metrics["wall_time_s"] >= sum(metrics["epoch_seconds"]) * 0.99


def test_epoch_timer_counts_steps_but_the_first_and_epochs_with_their_validation(monkeypatch):
    from bnn_keras.training import run_callbacks

    clock = iter([
        100.0,  # fit starts
        101.0,  # epoch 1 begins
        102.0,  # step 1 begins: it traces the step, and its end is not read
        112.0, 114.0,  # step 2: 2 s
        117.5,  # epoch 1 ends, after 3.5 s of validation
        118.0,  # epoch 2 begins
        118.0, 121.0,  # step 3: 3 s
        121.0, 122.0,  # step 4: 1 s
        130.0,  # epoch 2 ends, after 8 s of validation
    ])
    monkeypatch.setattr(run_callbacks.time, "perf_counter", lambda: next(clock))
    timer = run_callbacks.EpochTimer(start_seconds=50.0)
    timer.on_train_begin()
    logs = []
    for epoch, steps in ((0, (0, 1)), (1, (0, 1))):
        timer.on_epoch_begin(epoch)
        for step in steps:
            timer.on_train_batch_begin(step)
            timer.on_train_batch_end(step)
        logs.append({})
        timer.on_epoch_end(epoch, logs[-1])
    assert timer.step_seconds == [2.0, 3.0, 1.0]  # the first step left out, validation too
    assert timer.seconds == [16.5, 12.0]  # each epoch's wall time, validation included
    assert [log[run_callbacks.EPOCH_TIME_KEY] for log in logs] == [16.5, 12.0]
    assert [log[run_callbacks.RUN_TIME_KEY] for log in logs] == [67.5, 80.0]  # from fit's start


def test_model_reloads_with_plain_load_model_after_import(digits_run, tmp_path):
    x = np.random.default_rng(1).standard_normal((4, *DIGITS_SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import bnn_keras, numpy as np, tensorflow as tf, sys\n"
        f"m = tf.keras.models.load_model({str(digits_run.run_dir / 'model.keras')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = digits_run.model.predict(x, verbose=0)  # loaded in this process
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


def test_existing_run_folder_is_refused(digits_run, tmp_path):
    run_dir = Path(shutil.copytree(digits_run.run_dir, tmp_path / "run"))  # others read it
    config = training.TrainConfig(dataset="digits", epochs=1)
    with pytest.raises(BnnError, match="already exists and is not empty"):
        training.train(config, lambda s, n: None, run_dir)


@pytest.mark.parametrize("field, value, bound", [
    ("epochs", 0, ">= 1"), ("batch_size", -1, ">= 1"), ("learning_rate", 0.0, "> 0"),
    ("image_size", 3, ">= 4"), ("steps_per_epoch", 0, ">= 1"), ("label_smoothing", -0.1, ">= 0"),
])
def test_bad_options_name_the_option(field, value, bound):
    config = training.TrainConfig(**{field: value})
    with pytest.raises(BnnError) as info:
        config.validate()
    # Each message names its own field and bound (not another field's, as it once did).
    assert str(info.value) == f"Expected `{field}` {bound}, got {value!r}."


def test_a_bad_config_names_the_field_and_bnn_train_the_option(tmp_path):
    from tests.conftest import invoke

    with pytest.raises(BnnError) as info:
        training.train(tiny_config(learning_rate=0.0), tiny_bnn, tmp_path / "run", verbose=0)
    assert str(info.value) == "Expected `learning_rate` > 0, got 0.0."
    result = invoke(["train", "binary-densenet28", "--dataset", "digits", "--lr", "0",
                     "--output", tmp_path / "run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: Expected --learning-rate > 0, got 0.0."
    # A used folder: the library names `run_dir`, the CLI its --output.
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(BnnError, match="choose another `run_dir`, or continue its run with "
                                       f"`bnn train --resume {tmp_path / 'used'}`"):
        training.train(tiny_config(), tiny_bnn, tmp_path / "used", verbose=0)
    result = invoke(["train", "binary-densenet28", "--dataset", "digits",
                     "--output", tmp_path / "used"])
    assert result.exit_code == 2
    assert "is not empty; choose another --output, or continue its run" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "used" / ".bnn.lock").exists()


def test_augment_on_a_data_set_without_a_standard_augmentation_is_refused(tmp_path):
    """digits has none: --augment would otherwise train on the images as they are."""
    run_dir = tmp_path / "runs" / "augmented"
    with pytest.raises(BnnError) as err:
        training.train(tiny_config(augment=True), tiny_bnn, run_dir, verbose=0)
    assert str(err.value) == ("digits has no standard augmentation in bnn (its images are "
                              "trained as they are); drop `augment`.")
    assert not run_dir.parent.exists()


def test_bad_precision_is_refused():
    with pytest.raises(BnnError, match="Expected precision one of auto, mixed_bfloat16, float32"):
        training.TrainConfig(precision="float16").validate()


# --------------------------------------------------------------------------------------------
# Runs that lose nothing: interrupts, resume, NaN, seeds (a tiny model keeps these fast).
# --------------------------------------------------------------------------------------------


class SignalAt(__import__("tensorflow").keras.callbacks.Callback):
    """Sends `signum` to this process at (epoch, batch), as a user's Ctrl-C or a scheduler would."""

    def __init__(self, signum, epoch, batch):
        super().__init__()
        self.signum, self.epoch, self.batch, self.current = signum, epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            import os

            os.kill(os.getpid(), self.signum)


def _history_rows(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def _uninterrupted_run(tmp_path_factory):
    """`tiny_config()` trained without interruption: its folder and final weights."""
    result = training.train(tiny_config(), tiny_bnn, tmp_path_factory.mktemp("whole") / "run",
                            verbose=0)
    return result.run_dir, [w.copy() for w in result.model.get_weights()]


@pytest.fixture
def uninterrupted(_uninterrupted_run, tmp_path):
    """A private copy of the uninterrupted run of `tiny_config()` (`run_dir`) and its final
    `weights`: what an interrupted and resumed run must end at, and what the same seed
    trains again. Trained once for the module."""
    run_dir, weights = _uninterrupted_run
    return SimpleNamespace(run_dir=Path(shutil.copytree(run_dir, tmp_path / "whole")),
                           weights=weights)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_keeps_last_epoch_and_resume_finishes(tmp_path, signame,
                                                                uninterrupted):
    import signal

    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError) as info:
        training.train(tiny_config(), tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(getattr(signal, signame), epoch=1, batch=2)])
    assert info.value.exit_code == 130
    assert f"after 1 complete epoch(s) of 3; continue with: bnn train --resume {run_dir}" in str(
        info.value)
    assert training.read_status(run_dir) == {"state": "interrupted", "epochs_completed": 1,
                                             "epochs": 3}
    assert [r["epoch"] for r in _history_rows(run_dir)] == ["1"]
    assert (run_dir / "backup").is_dir() and not (run_dir / "model.keras").exists()

    result = training.resume_training(run_dir, tiny_bnn, verbose=0)
    assert training.read_status(run_dir)["state"] == "finished"
    assert [r["epoch"] for r in _history_rows(run_dir)] == ["1", "2", "3"]
    assert result.metrics["epochs"] == 3 and result.metrics["epochs_this_session"] == 2
    # metrics.json covers the whole run: the first session's epoch too.
    assert len(result.metrics["epoch_seconds"]) == len(result.metrics["run_time_s"]) == 3
    assert None not in result.metrics["epoch_seconds"]
    with open(run_dir / "flips.csv") as f:  # numbered as history.csv and Keras number them
        assert [r["epoch"] for r in csv.DictReader(f) if r["kind"] == "epoch"] == ["1", "2", "3"]
    assert (run_dir / "model.keras").is_file()
    with pytest.raises(BnnError, match="already finished all its 3 epochs; nothing to resume"):
        training.resume_training(run_dir, tiny_bnn, verbose=0)

    # Same batches, same optimizer state: the resumed run ends where an uninterrupted one does.
    assert [r["loss"] for r in _history_rows(run_dir)] == [
        r["loss"] for r in _history_rows(uninterrupted.run_dir)]
    for resumed, whole in zip(result.model.get_weights(), uninterrupted.weights):
        np.testing.assert_allclose(resumed, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["bop", "adam-sgd"])
def test_split_optimizer_run_resumes_with_its_optimizer_state(tmp_path, optimizer):
    """Bop's per-weight momentum, Adam's moments and SGD's velocity (larq's CaseOptimizer)
    survive a resume."""
    import signal

    config = dict(optimizer=optimizer, track_flips=False)
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError):
        training.train(tiny_config(**config), tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(signal.SIGINT, epoch=1, batch=1)])
    resumed = training.resume_training(run_dir, tiny_bnn, verbose=0)
    whole = training.train(tiny_config(**config), tiny_bnn, tmp_path / "whole", verbose=0)
    assert [r["loss"] for r in _history_rows(run_dir)] == [
        r["loss"] for r in _history_rows(whole.run_dir)]
    for a, b in zip(resumed.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class PoisonWeightsAt(__import__("tensorflow").keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            layer = self.model.get_layer("dense")
            layer.kernel.assign(layer.kernel * float("nan"))


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_epoch(tmp_path):
    import tensorflow as tf

    run_dir = tmp_path / "run"
    with pytest.raises(training.NonFiniteLossError) as info:
        training.train(tiny_config(), tiny_bnn, run_dir, verbose=0,
                       callbacks=[PoisonWeightsAt(epoch=1)])
    message = str(info.value)
    assert message.startswith("The loss became nan at epoch 2, step 1; stopped with the last "
                              "good epoch (1) kept in")
    status = training.read_status(run_dir)
    assert status["state"] == "failed" and status["epochs_completed"] == 1
    # The newest checkpoint is epoch 1's, with finite weights.
    checkpoint = tf.train.latest_checkpoint(str(run_dir / "backup" / "chief"))
    reader = tf.train.load_checkpoint(checkpoint)
    weights = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
               if k.startswith("model/layer_with_weights-")]
    assert len(weights) == 12  # stem, 2 BN x 4, bconv, dense kernel + bias
    assert all(np.isfinite(w).all() for w in weights)
    assert int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 0


def test_same_seed_gives_the_same_history(tmp_path, uninterrupted):
    # The first of the two runs is the module's uninterrupted run of the same config.
    again = training.train(tiny_config(), tiny_bnn, tmp_path / "run1", verbose=0)
    a, b = _history_rows(uninterrupted.run_dir), _history_rows(again.run_dir)
    assert [row["loss"] for row in a] == [row["loss"] for row in b]
    for wa, wb in zip(uninterrupted.weights, again.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_validation_epochs_are_every_nth_and_the_last():
    assert training.validation_epochs(7, 3) == [3, 6, 7]
    assert training.validation_epochs(6, 3) == [3, 6]
    assert training.validation_epochs(3, 1) == [1, 2, 3]
    assert training.validation_epochs(3, 10) == [3]


def test_validation_freq_holds_across_a_resume(tmp_path):
    """Epoch numbers are absolute: a resumed run validates after the same epochs."""
    import signal

    run_dir = tmp_path / "run"
    config = dict(epochs=4, validation_freq=3, track_flips=False)
    with pytest.raises(training.TrainingInterruptedError):
        training.train(tiny_config(**config), tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(signal.SIGINT, epoch=1, batch=1)])
    training.resume_training(run_dir, tiny_bnn, verbose=0)
    validated = [row["epoch"] for row in _history_rows(run_dir) if row.get("val_accuracy")]
    assert validated == ["3", "4"]
    with pytest.raises(BnnError, match="validation_freq"):
        training.resolve_recipe(tiny_config(validation_freq=0))
