"""`bnn binarize`: a float Keras CNN (a model file, or a `--float` run) into a trained,
resumable, convertible BNN run."""

import hashlib
import json
import shutil
import signal
from pathlib import Path

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import training
from bnn_keras.training import binarized, stages
from tests.conftest import invoke
from tests.training.test_run import SignalAt

L = tf.keras.layers
# 1 epoch of 2 batches of 16 per step, float32: the mechanics, not the accuracy.
TINY = ("--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--precision",
        "float32", "--verbose", "0")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def float_file(tmp_path_factory) -> Path:
    """A float CNN for 8x8 digits, trained on pixels / 16, saved as a Keras file."""
    from sklearn.datasets import load_digits

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", activation="relu"),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(10, activation="softmax")], name="float_cnn")
    digits = load_digits()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.images[..., None] / 16.0, digits.target, epochs=3, verbose=0)
    path = tmp_path_factory.mktemp("float") / "float.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def _binarized_run(float_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("binarized") / "run"
    result = invoke(["binarize", float_file, "--dataset", "digits", "--mean", "0", "--std",
                     "16", *TINY, "-o", run_dir])
    assert result.exit_code == 0, result.output
    return run_dir, result.stdout


@pytest.fixture
def binarized_run(_binarized_run, tmp_path):
    run_dir, stdout = _binarized_run
    return Path(shutil.copytree(run_dir, tmp_path / "run")), stdout


def test_binarize_prints_the_float_accuracy_and_the_rewrite_then_trains_two_steps(
        binarized_run, float_file):
    run_dir, stdout = binarized_run
    lines = stdout.splitlines()
    assert lines[0].startswith(f"Float model {float_file}: test accuracy ")
    assert lines[0].endswith(" on digits's 360 test images (normalized with mean 0, std 16 on "
                             "raw pixels)")
    accuracy = float(lines[0].split("test accuracy ")[1].split()[0])
    assert accuracy > 0.5  # the normalization given is the one it was trained with
    assert sum(line.endswith("(Conv2D): binary") for line in lines) == 2  # the report
    assert any(line.startswith("2 binary layers (2 convolutions)") for line in lines)
    # ReActNet's two steps, both distilled from the float model's copy.
    plan = json.loads((run_dir / "stages.json").read_text())
    assert [(s["name"], s["status"]) for s in plan["stages"]] == [
        ("step1", "finished"), ("step2", "finished")]
    step1 = json.loads((run_dir / "stages/1-step1/config.json").read_text())
    step2 = json.loads((run_dir / "stages/2-step2/config.json").read_text())
    assert step1["model"] == step2["model"] == binarized.BINARIZED
    assert step1["model_options"]["kernel_quantizer"] is None  # real weights in step 1
    assert "kernel_quantizer" not in step2["model_options"]  # binary ones in step 2
    assert step1["distill_loss"] == step2["distill_loss"] == "distribution"
    assert step2["weights"].endswith("stages/1-step1/model.keras")
    # config.json records the source's sha256, the rewrite options and the normalization.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher_sha256"] == _sha(float_file)
    assert config["model_options"]["relu"] == "remove"
    assert (config["normalize_mean"], config["normalize_std"], config["format_version"]) == (
        [0.0], [16.0], 6)
    assert config["normalization"] == {"mean": [0.0], "std": [16.0]}
    assert _sha(run_dir / "inputs" / "teacher.keras") == _sha(float_file)
    model = tf.keras.models.load_model(run_dir / "model.keras")
    binary = [layer for layer in model.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert len(binary) == 2
    assert all(isinstance(layer.kernel_quantizer, lq.quantizers.SteSign) for layer in binary)
    assert stdout.splitlines()[-1].startswith("1 epoch in ")


def test_a_binarized_run_converts_with_every_binary_conv_an_lce_bconv2d(binarized_run,
                                                                        tmp_path):
    from convert import Flatbuffer

    run_dir, _ = binarized_run
    result = invoke(["convert", run_dir, "-o", tmp_path / "bnn.tflite"])
    assert result.exit_code == 0, result.output
    flatbuffer = Flatbuffer.from_file(tmp_path / "bnn.tflite")
    assert flatbuffer.ops["LceBconv2d"] == 2
    assert flatbuffer.metadata["normalization"] == {"mean": [0.0], "std": [16.0]}


def _config(float_file: Path, **changes) -> training.TrainConfig:
    """The TrainConfig `bnn binarize FLOAT --dataset digits --mean 0 --std 16` trains."""
    options = dict(model=binarized.BINARIZED, teacher=str(float_file), recipe="paper",
                   image_size=8, dataset="digits", normalize_mean=[0.0], normalize_std=[16.0],
                   model_options={"relu": "remove"}, epochs=1, steps_per_epoch=2,
                   batch_size=16, precision="float32")
    options.update(changes)
    return training.TrainConfig(**options)


def test_an_interrupted_binarized_run_resumes_to_the_same_weights(float_file, _binarized_run,
                                                                   tmp_path):
    # The uninterrupted run is the module's `bnn binarize` of the same config (read only): its
    # two steps trained again here cost two runs (~5 s) and ended at the same weights, bit for bit.
    whole_dir, _ = _binarized_run
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError):
        stages.train_staged(_config(float_file), run_dir, verbose=0,
                            callbacks={"step2": [SignalAt(signal.SIGINT, epoch=0, batch=1)]})
    shutil.move(str(float_file), str(tmp_path / "moved.keras"))  # the run needs its own copy
    try:
        result = invoke(["train", "--resume", run_dir, "--verbose", "0"])
    finally:
        shutil.move(str(tmp_path / "moved.keras"), str(float_file))
    assert result.exit_code == 0, result.output
    resumed = tf.keras.models.load_model(run_dir / "model.keras").get_weights()
    expected = tf.keras.models.load_model(whole_dir / "model.keras").get_weights()
    for a, b in zip(resumed, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_float_run_binarizes_with_its_own_data_and_normalization(float_teacher_run, tmp_path):
    result = invoke(["binarize", float_teacher_run, *TINY, "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Float model {float_teacher_run}: test accuracy ")
    source = json.loads((float_teacher_run / "config.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == source["dataset"] == "digits"
    for key in ("mean", "std"):
        np.testing.assert_allclose(config["normalization"][key],
                                   source["normalization"][key], rtol=1e-6)


def test_bad_sources_are_refused_in_one_line(float_file, float_teacher_run, tmp_path):
    result = invoke(["binarize", float_file, "--dataset", "digits", *TINY,
                     "-o", tmp_path / "run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: {float_file} is a model file: give --mean, --std (the data set and the "
        "normalization it was trained with), or binarize the run folder of a `bnn train "
        "MODEL --float` run.")
    result = invoke(["binarize", float_teacher_run, "--mean", "0", "--std", "1", *TINY,
                     "-o", tmp_path / "run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: --mean, --std: for a model file only; the run folder {float_teacher_run} "
        "records its normalization.")
    assert not (tmp_path / "run").exists()


def test_a_model_of_other_data_is_refused_before_training(tmp_path):
    rgb = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.Conv2D(4, 3),
                               L.Flatten(), L.Dense(5, activation="softmax")])
    rgb.save(tmp_path / "rgb.keras")
    result = invoke(["binarize", tmp_path / "rgb.keras", "--dataset", "digits", "--mean", "0",
                     "--std", "16", *TINY, "-o", tmp_path / "run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: {tmp_path / 'rgb.keras'} takes 3-channel images and gives 5 classes; digits "
        "has 1-channel images of 10 classes: give the data set it was trained on.")
    assert not (tmp_path / "run").exists()
