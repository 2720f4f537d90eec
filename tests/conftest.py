"""Shared fixtures: one tiny BinaryDenseNet28 trained on digits and its LCE flatbuffer.

Training and converting even a few steps of BinaryDenseNet28 costs about a minute each on the
2-core CI machine, so the run and its conversion are made once per test session, through the
`bnn` CLI exactly as a user would, and shared by the training, CLI, conversion and end-to-end
tests.
"""

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any, Dict

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import bnn_keras  # noqa: E402,F401

# The repository, and the files that earlier versions of bnn wrote (tests/fixtures/vX.Y).
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

DIGITS_IMAGE_SIZE = 16
TRAIN_ARGS = [
    "train", "binary-densenet28", "--dataset", "digits", "--image-size", str(DIGITS_IMAGE_SIZE),
    "--epochs", "2", "--steps-per-epoch", "12", "--batch-size", "32", "--lr", "2e-3",
    "--seed", "0", "--verbose", "0",
]


@dataclasses.dataclass
class TrainedRun:
    run_dir: Path
    model: Any
    metrics: Dict[str, Any]
    config: Dict[str, Any]
    cli_output: str


def tiny_lce_model(channels: int = 1):
    """A float conv + BN + one binary conv + GAP + softmax dense on 8x8 inputs: the smallest
    model that LCE turns into a real LceBconv2d (a conversion takes seconds)."""
    import larq as lq
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, channels))
    x = lq.layers.QuantConv2D(8, 3, kernel_quantizer="ste_sign", use_bias=False, name="conv1")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn1")(x)
    x = lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", use_bias=False, name="conv2")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(4, activation="softmax", name="head")(x)
    return tf.keras.Model(inputs, outputs)


def invoke(args, **kwargs):
    """Runs the `bnn` CLI in-process and returns click's Result."""
    import cli

    return CliRunner().invoke(cli.main, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> TrainedRun:
    """`bnn train binary-densenet28` on digits, 2 epochs x 12 steps (mixed precision where the
    CPU has bf16, so conversion exercises the float32 rebuild)."""
    import tensorflow as tf

    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    result = invoke([*TRAIN_ARGS, "--output", run_dir])
    assert result.exit_code == 0, result.output
    return TrainedRun(
        run_dir=run_dir,
        model=tf.keras.models.load_model(run_dir / "model.keras"),
        metrics=json.loads((run_dir / "metrics.json").read_text()),
        config=json.loads((run_dir / "config.json").read_text()),
        cli_output=result.output,
    )


@pytest.fixture(scope="session")
def digits_convert(digits_run, tmp_path_factory):
    """`bnn convert RUN --target arm64 -o digits.tflite --bundle pi`: (path, click Result)."""
    folder = tmp_path_factory.mktemp("tflite")
    path = folder / "digits.tflite"
    result = invoke(["convert", digits_run.run_dir, "--target", "arm64", "-o", path,
                     "--bundle", folder / "pi"])
    assert result.exit_code == 0, result.output
    return path, result


@pytest.fixture(scope="session")
def digits_tflite(digits_convert) -> Path:
    return digits_convert[0]


@pytest.fixture(scope="session")
def digits_flatbuffer(digits_tflite) -> bytes:
    return digits_tflite.read_bytes()


# `bnn train` options of a tiny run: 8x8 digits, 1 epoch of 2 steps, float32.
TINY_TRAIN_OPTIONS = ("--dataset", "digits", "--image-size", "8", "--epochs", "1",
                      "--steps-per-epoch", "2", "--batch-size", "16", "--precision", "float32",
                      "--verbose", "0")


@pytest.fixture(scope="session")
def float_binarynet_run(tmp_path_factory) -> Path:
    """`bnn train binarynet --float` with `TINY_TRAIN_OPTIONS`: a teacher for distillation."""
    run_dir = tmp_path_factory.mktemp("float") / "binarynet"
    result = invoke(["train", "binarynet", "--float", *TINY_TRAIN_OPTIONS, "-o", run_dir])
    assert result.exit_code == 0, result.output
    return run_dir


def tiny_bnn(input_shape, num_classes):
    """A stem conv and one binary conv: a BNN that trains a few steps in a second."""
    import larq as lq
    import tensorflow as tf

    inputs = tf.keras.Input(input_shape)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
    x = lq.layers.QuantConv2D(16, 3, padding="same", pad_values=1.0, use_bias=False,
                              input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              kernel_constraint="weight_clip", name="bconv")(x)
    x = tf.keras.layers.BatchNormalization(name="bconv_bn")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(num_classes, name="dense")(x)
    outputs = tf.keras.layers.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs)


def tiny_config(**overrides):
    """A TrainConfig for `tiny_bnn` on 8x8 digits: 3 epochs of 4 steps."""
    options = dict(model="tiny", dataset="digits", image_size=8, epochs=3, steps_per_epoch=4,
                   batch_size=16, learning_rate=1e-2, precision="float32", seed=0)
    options.update(overrides)
    from bnn_keras import training

    return training.TrainConfig(**options)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_raises_keyboard_interrupt():
    """Tests press Ctrl-C by sending SIGINT to this process (or to a `bnn` child process). A
    shell starts a background job (`make test &`, nohup) with SIGINT ignored, and Python then
    never installs its handler: the interrupt would be lost and those tests fail for it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_graph_per_module():
    """Frees what a test module's models leave in Keras's global graph: without this the
    functional models that ~650 tests build (several at 224x224) grow one pytest process past
    24 GB. A session fixture's models keep working: they hold their own variables."""
    yield
    import gc

    import tensorflow as tf

    tf.keras.backend.clear_session()
    gc.collect()
