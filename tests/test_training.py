"""Training writes a complete, self-describing and reloadable run folder."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from bnn_keras import training
from bnn_keras.errors import BnnError
from tests.conftest import DIGITS_IMAGE_SIZE


def test_run_folder_holds_model_config_history_metrics(digits_run):
    run_dir = digits_run.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json", "history.csv", "metrics.json", "model.keras",
    ]
    config = digits_run.config
    assert config["model"] == "binary-densenet28" and config["dataset"] == "digits"
    assert config["input_shape"] == [DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, 1]
    assert config["class_names"] == [str(d) for d in range(10)]
    assert config["epochs"] == 2 and config["steps_per_epoch"] == 12 and config["seed"] == 0
    assert config["precision_resolved"] in ("mixed_bfloat16", "float32")
    assert set(config["versions"]) == {"tensorflow", "tf_keras", "larq", "larq_compute_engine"}
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    metrics = digits_run.metrics
    assert metrics["train_accuracy"] == pytest.approx(float(rows[-1]["accuracy"]))
    assert metrics["test_accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]), abs=1e-6)
    assert metrics["params"] == digits_run.model.count_params()
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in digits_run.cli_output
    # 2 epochs x 12 steps x 32 images in the measured wall time.
    assert metrics["images_per_s"] == pytest.approx(768 / metrics["wall_time_s"], rel=0.01)


def test_model_reloads_with_plain_load_model_after_import(digits_run, tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 16, 16, 1)).astype(np.float32)
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


def test_existing_run_folder_is_refused(digits_run):
    config = training.TrainConfig(dataset="digits", epochs=1)
    with pytest.raises(BnnError, match="already exists and is not empty"):
        training.train(config, lambda s, n: None, digits_run.run_dir)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0)])
def test_bad_options_name_the_option(field, value):
    config = training.TrainConfig(**{field: value})
    with pytest.raises(BnnError, match=f"Expected a positive {field}"):
        config.validate()


def test_bad_precision_is_refused():
    with pytest.raises(BnnError, match="Expected precision one of auto, mixed_bfloat16, float32"):
        training.TrainConfig(precision="float16").validate()
