"""SignFlipTracker: exact flip ratios, Keras logs/History/CSVLogger, files, warning, config."""

import csv
import warnings

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import layers as bl
from bnn_keras.binary import quantized_kernel_layers
from bnn_keras.callbacks import SignFlipTracker


def _model():
    x = tf.keras.Input((4, 4, 2))
    h = lq.layers.QuantConv2D(4, 3, kernel_quantizer="ste_sign", input_quantizer="ste_sign",
                              kernel_constraint="weight_clip", use_bias=False, name="qconv")(x)  # 72 weights
    h = bl.ScaledQuantConv2D(2, 1, kernel_constraint="weight_clip", use_bias=False, name="scaled")(h)  # 8 weights
    h = bl.MultiBaseQuantConv2D(2, 1, bases=2, use_bias=False, name="multi")(h)  # 2 x 4 weights
    h = tf.keras.layers.Flatten()(h)
    h = tf.keras.layers.Dense(3, name="dense")(h)  # full precision: not tracked
    return tf.keras.Model(x, h)


def _set_latent(layer, values):
    getattr(layer.kernel, "latent_variable", layer.kernel).assign(values)


def test_finds_every_binarized_kernel_including_nested():
    names = [layer.name for layer in quantized_kernel_layers(_model())]
    assert names == ["qconv", "scaled", "multi_base0", "multi_base1"]


def test_exact_flip_ratio_with_hand_set_weights():
    model = _model()
    qconv, scaled = model.get_layer("qconv"), model.get_layer("scaled")
    base0 = model.get_layer("multi").convs[0]
    w_q = np.linspace(0.1, 0.9, 72).reshape(3, 3, 2, 4).astype(np.float32)
    w_s = np.array([0.0, 0.5, -0.5, 0.2, -0.2, 0.3, -0.3, 0.4], np.float32).reshape(1, 1, 4, 2)
    _set_latent(qconv, w_q)
    _set_latent(scaled, w_s)
    tracker = SignFlipTracker(warn_threshold=None)
    tracker.set_model(model)
    tracker.on_train_begin()
    tracker.on_epoch_begin(0)
    flat = w_q.reshape(-1).copy()
    flat[[0, 7, 30, 50, 71]] *= -1  # 5 of 72 flip
    _set_latent(qconv, flat.reshape(w_q.shape))
    new_s = w_s.reshape(-1).copy()
    new_s[0] = 0.7   # 0 -> +: zero counts as +1, no flip
    new_s[1] = 0.0   # + -> 0: no flip
    new_s[2] = 0.0   # - -> 0: flip
    new_s[3] = -0.1  # + -> -: flip
    new_s[4] = -0.9  # - -> -: no flip
    _set_latent(scaled, new_s.reshape(w_s.shape))
    logs = {"loss": 1.0}
    tracker.on_epoch_end(0, logs)
    assert logs["flip_ratio/qconv"] == 5 / 72
    assert logs["flip_ratio/scaled"] == 2 / 8
    assert logs["flip_ratio/multi_base0"] == 0.0
    assert logs["flip_ratio/total"] == 7 / (72 + 8 + 4 + 4)
    assert tracker.history[0]["flip_ratio/total"] == 7 / 88 and tracker.history[0]["kind"] == "epoch"
    # The next epoch compares against the end of this one, not the start of training.
    _set_latent(base0, -getattr(base0.kernel, "latent_variable").numpy() - 1e-3)
    logs = {}
    tracker.on_epoch_end(1, logs)
    assert logs["flip_ratio/multi_base0"] == 1.0 and logs["flip_ratio/qconv"] == 0.0
    assert logs["flip_ratio/total"] == 4 / 88


def test_fit_outputs_logs_history_csvlogger_files(tmp_path):
    model = _model()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4, 4, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    tracker = SignFlipTracker(tmp_path / "run", log_dir=tmp_path / "tb", every_n_steps=2, warn_threshold=None)
    keras_csv = tmp_path / "keras.csv"
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                        callbacks=[tracker, tf.keras.callbacks.CSVLogger(str(keras_csv))])
    epoch_rows = [r for r in tracker.history if r["kind"] == "epoch"]
    step_rows = [r for r in tracker.history if r["kind"] == "step"]
    assert len(epoch_rows) == 2 and len(step_rows) == 4  # 4 steps per epoch, every 2nd step
    assert [r["step"] for r in step_rows] == [2, 4, 6, 8]
    # Epochs count from 1, as Keras prints them; a step record names the epoch it falls in.
    assert [r["epoch"] for r in epoch_rows] == [1, 2] and [r["epoch"] for r in step_rows] == [
        1, 1, 2, 2]
    assert history.history["flip_ratio/total"] == [r["flip_ratio/total"] for r in epoch_rows]
    assert max(history.history["flip_ratio/total"]) > 0  # lr 0.05 on weights ~0.1 flips signs
    with open(keras_csv) as fh:
        keras_rows = list(csv.DictReader(fh))
    assert [float(r["flip_ratio/qconv"]) for r in keras_rows] == pytest.approx(
        [r["flip_ratio/qconv"] for r in epoch_rows])
    with open(tmp_path / "run" / "flips.csv") as fh:
        ours = list(csv.DictReader(fh))
    assert len(ours) == 6 and ours[0]["kind"] == "step"
    assert [float(r["flip_ratio/total"]) for r in ours] == pytest.approx([r["flip_ratio/total"] for r in tracker.history])
    png = (tmp_path / "run" / "flips.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "run").glob(".*partial*"))  # atomic writes leave no temp files


def test_a_flips_csv_numbered_from_0_is_read_from_1(tmp_path):
    """bnn 0.3.0 numbered flips.csv's epochs from 0: a run of it resumes with its records
    renumbered, so that the file continues as history.csv counts."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "flips.csv").write_text(
        "kind,epoch,step,flip_ratio/total,flip_ratio/qconv\n"
        "step,0,2,0.5,0.5\nepoch,0,4,0.25,0.25\nepoch,1,8,0.125,0.125\n")
    model = _model()
    tracker = SignFlipTracker(run, warn_threshold=None, resume=True)
    tracker.set_model(model)
    tracker.on_train_begin()
    assert [(r["kind"], r["epoch"], r["step"]) for r in tracker.history] == [
        ("step", 1, 2), ("epoch", 1, 4), ("epoch", 2, 8)]
    tracker.on_epoch_begin(2)  # Keras's third epoch
    tracker.on_epoch_end(2, {})
    assert [r["epoch"] for r in tracker.history if r["kind"] == "epoch"] == [1, 2, 3]
    written = (run / "flips.csv").read_text().splitlines()
    assert written[1].startswith("step,1,2,0.5,0.5,") and written[2].startswith("epoch,1,4,")


def _drive(tracker, model, flips_per_epoch, planned_epochs):
    """Runs the epoch hooks, flipping all of qconv's signs in the epochs listed as True."""
    layer = model.get_layer("qconv")
    _set_latent(layer, np.full(layer.kernel.shape, 0.5, np.float32))
    tracker.set_model(model)
    tracker.set_params({"epochs": planned_epochs})
    tracker.on_train_begin()
    for epoch, flip in enumerate(flips_per_epoch):
        tracker.on_epoch_begin(epoch)
        if flip:
            _set_latent(layer, -layer.kernel.latent_variable.numpy())
        tracker.on_epoch_end(epoch, {})


def test_warns_when_late_flip_ratio_stays_high():
    model = _model()
    tracker = SignFlipTracker(warn_threshold=0.5, warn_patience=2, warn_after=0.5)
    # 72 of 88 weights flip each epoch: 0.82 > 0.5. Epochs 3 and 4 are the late part of 4.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _drive(tracker, model, [True, True, True], planned_epochs=4)
        assert not [w for w in caught if "learning rate" in str(w.message)]  # only epoch 3 is late
        tracker.on_epoch_begin(3)
        layer = model.get_layer("qconv")
        _set_latent(layer, -layer.kernel.latent_variable.numpy())
        tracker.on_epoch_end(3, {})
    assert len([w for w in caught if "learning rate" in str(w.message)]) == 1


def test_no_warning_when_flips_calm_down():
    model = _model()
    tracker = SignFlipTracker(warn_threshold=0.5, warn_patience=2, warn_after=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _drive(tracker, model, [True, True, True, False], planned_epochs=4)
    assert not [w for w in caught if "learning rate" in str(w.message)]


def test_config_round_trip(tmp_path):
    tracker = SignFlipTracker(tmp_path, log_dir=tmp_path / "tb", every_n_steps=10, warn_threshold=0.02,
                              warn_patience=4, warn_after=0.75)
    config = tracker.get_config()
    assert config["csv_path"] == str(tmp_path / "flips.csv")
    assert SignFlipTracker.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="every_n_steps"):
        SignFlipTracker(every_n_steps=0)
