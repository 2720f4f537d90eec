"""`bnn train MODEL --float` and `bnn train STUDENT --teacher RUN_DIR|MODEL_FILE`: the teacher is
checked before the run folder exists, recorded in config.json, needed unchanged by --resume,
and the run folder's model.keras is the student; the time to the best accuracy is printed."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.binary import quantized_kernel_layers
from models.registry import create_model
from tests.conftest import TINY_REACTNET, invoke
from tests.conftest import TINY_TRAIN_OPTIONS as SMALL

# The smallest registry student that trains at 8x8: a few seconds a run (binarynet: ~6M weights).
# The teacher (`float_teacher_run`) is its float copy.
TINY_STUDENT = TINY_REACTNET

# Its layers, from models/reactnet.py with widths (8, 16, 16) at 8x8 (a stride-1 stem, and no
# stride-2 block: block 1 goes 8 -> 16, the stem's width to the next, block 2 keeps 16): the
# stem, two residual blocks (block 1 doubles the width, so its second shortcut concatenates),
# the classifier head. In Keras's order, deepest first: a shortcut comes before the BN beside
# it (the Add's first input), after the conv that feeds that BN.
TINY_STUDENT_LAYERS = [
    "input", "stem_conv", "stem_bn",
    "block1_conv3x3", "block1_bn1", "block1_add1", "block1_rprelu1",
    "block1_conv1x1", "block1_shortcut", "block1_bn2", "block1_add2", "block1_rprelu2",
    "block2_conv3x3", "block2_bn1", "block2_add1", "block2_rprelu1",
    "block2_conv1x1", "block2_bn2", "block2_add2", "block2_rprelu2",
    "head_pool", "head_dense", "predictions"]
# Its binary layers: the 3x3 and the 1x1 convolution of each block.
TINY_STUDENT_BINARY = ["block1_conv3x3", "block1_conv1x1", "block2_conv3x3", "block2_conv1x1"]

# The student of the tests whose property is the teacher's (how it is read, what it outputs):
# ReActNet-A cut to a stem and one block, the registry model with the fewest layers, without
# flip tracking. A run of it took 2.3 s of CPU on the AVX2 machine, one of TINY_STUDENT with
# its flips tracked 4.1 s (`fit` traces the step layer by layer).
LIGHT_STUDENT = ("reactnet-a", "--model-option", "widths=[8,8]", "--no-track-flips")


def _registry_student():
    """The student as the registry builds it for an 8x8 digits run."""
    return create_model("reactnet-a", widths=[8, 16, 16], input_shape=(8, 8, 1), num_classes=10)


def _hashes(folder: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def float_run(float_teacher_run) -> Path:
    return float_teacher_run


def test_float_run(float_run):
    config = json.loads((float_run / "config.json").read_text())
    assert config["float_copy"] is True and config["input_activation"] == "relu"
    assert config["format_version"] == 4
    model = tf.keras.models.load_model(float_run / "model.keras")
    assert [layer.name for layer in model.layers] == TINY_STUDENT_LAYERS
    assert quantized_kernel_layers(model) == []
    # No binary kernel, so no sign to track: no flips.csv or flips.png, no flip_ratio column
    # (track_flips stays recorded as given).
    assert config["track_flips"] is True
    assert not (float_run / "flips.csv").exists() and not (float_run / "flips.png").exists()
    header = (float_run / "history.csv").read_text().splitlines()[0]
    assert "flip_ratio" not in header and header.startswith("epoch,")


def test_a_student_of_a_teacher_run(float_run, tmp_path):
    run_dir = tmp_path / "student"
    result = invoke(["train", *TINY_STUDENT, "--teacher", float_run, "--distill-weight", "0.8",
                     *SMALL[:4], "--epochs", "2", *SMALL[6:], "-o", run_dir])
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher"] == str(float_run) and config["format_version"] == 4
    assert config["teacher_sha256"] == hashlib.sha256(
        (float_run / "model.keras").read_bytes()).hexdigest()
    assert (config["distill_loss"], config["distill_weight"], config["distill_temperature"]) == (
        "kl", 0.8, 4.0)
    assert "float_copy" not in config
    # model.keras is the binary student, as the registry builds it.
    model = tf.keras.models.load_model(run_dir / "model.keras")
    assert [layer.name for layer in model.layers] == TINY_STUDENT_LAYERS
    registry = _registry_student()
    assert [layer.name for layer in registry.layers] == TINY_STUDENT_LAYERS
    assert model.count_params() == registry.count_params()
    binary = [layer.name for layer in quantized_kernel_layers(model)]
    assert binary == TINY_STUDENT_BINARY
    with open(run_dir / "flips.csv") as f:
        header = f.readline().strip().split(",")
    assert [c[len("flip_ratio/"):] for c in header if c.startswith("flip_ratio/")] == [
        "total", *binary]
    # The time to the best test accuracy, as metrics.json has it.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Before the first epoch: the plan as resolved, where each part comes from.
    lines = result.output.strip().splitlines()
    assert lines[:4] == [
        "Data: digits (scikit-learn's bundled 8x8 digits): 1,437 training and 360 test images "
        "at 8x8x1, 10 classes",
        f"Model: reactnet-a, {model.count_params():,} parameters, distilled from {float_run}",
        "Recipe: adam at 0.001; constant schedule; 2 epochs, batch 16 (from bnn default); 2 "
        "steps per epoch",
        "Precision: float32"]
    # (float32 training: the best epoch is compared with the last on the deployed basis)
    model_files = ("model.keras: epoch 2 (the last and best)" if metrics["best_epoch"] == 2
                   else "model.keras: epoch 2 (the last); best.keras: epoch 1 (the best, no "
                        "optimizer state)")
    assert lines[-6:] == [
        f"Run folder: {run_dir}",
        f"test accuracy {metrics['test_accuracy']:.4f} (float32 model, as deployed)",
        f"train accuracy {metrics['train_accuracy']:.4f} (running mean over the last epoch's "
        "steps, in training precision)",
        f"best test accuracy {metrics['best_test_accuracy']:.4f} at epoch "
        f"{metrics['best_epoch']} of 2 (last epoch {metrics['last_epoch_test_accuracy']:.4f}), "
        f"{metrics['time_to_best_s']:.1f} s into the run",
        model_files,
        f"2 epochs in {metrics['wall_time_s']:.1f} s; {metrics['images_per_s']:.1f} training "
        f"images/s (steady state: {metrics['images_per_s_steps']} steps after the first)"]
    assert len(metrics["run_time_s"]) == 2 and 0 < metrics["run_time_s"][0] < \
        metrics["run_time_s"][1]

    # Extended with the same teacher; another --teacher is refused.
    other = invoke(["train", "--resume", run_dir, "--teacher", tmp_path, "--epochs", "3"])
    assert other.exit_code == 2
    assert f"--teacher {tmp_path} (the run has {float_run})" in other.stderr
    extended = invoke(["train", "--resume", run_dir, "--teacher", float_run, "--epochs", "3",
                       "--verbose", "0"])
    assert extended.exit_code == 0, extended.output
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3
    assert re.search(r"best test accuracy \d\.\d{4} at epoch [123] of 3 \(last epoch "
                     r"\d\.\d{4}\), [\d.]+ s into the run", extended.output)
    assert "\n1 epoch in " in extended.output  # this session's


def test_a_student_of_cached_teacher_logits(float_run, tmp_path):
    run_dir = tmp_path / "student"
    result = invoke(["train", *LIGHT_STUDENT, "--teacher", float_run, "--distill-cache",
                     *SMALL[:-1], "1", "-o", run_dir])
    assert result.exit_code == 0, result.output
    # Only the images the run draws: 1 epoch of 2 batches of 16.
    assert ("The teacher's logits on the 32 of 1,437 training images that epoch 1 draw, "
            "once:") in result.output
    assert "1/Unknown" not in result.output and "2/2" in result.output  # the pass's progress
    config = json.loads((run_dir / "config.json").read_text())
    assert config["distill_cache"] is True and config["format_version"] == 4

    refused = invoke(["train", *LIGHT_STUDENT, "--teacher", float_run, "--distill-cache",
                      "--augment", *SMALL, "-o", tmp_path / "augmented"])
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        "Error: --distill-cache computes the teacher's logits once, on the un-augmented "
        "images; train without --augment, or drop --distill-cache.")
    assert not (tmp_path / "augmented").exists()


def _five_class_model(path: Path) -> Path:
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Flatten()(inputs)
    outputs = tf.keras.layers.Dense(5, activation="softmax")(x)
    tf.keras.Model(inputs, outputs).save(path)
    return path


def test_a_teacher_that_does_not_fit_is_refused_before_the_folder_exists(float_run, tmp_path):
    run_dir = tmp_path / "runs" / "student"

    def refused(teacher, *extra, args=SMALL):
        result = invoke(["train", *LIGHT_STUDENT, "--teacher", teacher, *extra, *args, "-o",
                         run_dir])
        assert result.exit_code == 2, result.output
        assert not run_dir.parent.exists()
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    assert refused(float_run, args=(*SMALL[:2], "--image-size", "16", *SMALL[4:])) == (
        f"Error: --teacher {float_run} does not fit this run: its input shape is (8, 8, 1), "
        "the student's is (16, 16, 1); give a teacher trained on the same data set, "
        "--image-size and classes.")
    # A run on other classes: the same folder with other class names.
    renamed = Path(shutil.copytree(float_run, tmp_path / "renamed"))
    config = json.loads((renamed / "config.json").read_text())
    config["class_names"] = list("abcdefghij")
    (renamed / "config.json").write_text(json.dumps(config))
    assert refused(renamed) == (
        f"Error: --teacher {renamed} does not fit this run: its class names is "
        '["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], the student\'s is '
        '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]; give a teacher trained on the '
        "same data set, --image-size and classes.")
    five = _five_class_model(tmp_path / "five.keras")
    assert refused(five) == ("Error: The teacher has 5 classes, the student 10; distil from a "
                             "teacher trained on the same classes.")
    missing = tmp_path / "nope.keras"
    assert refused(missing) == (f"Error: --teacher {missing} does not exist; give a run folder "
                                "of bnn train or a Keras model file (.keras, .h5).")
    garbage = tmp_path / "garbage.keras"
    garbage.write_text("not a model")
    assert refused(garbage) == (
        f"Error: Could not load --teacher {garbage} as a Keras model (its bytes are neither a "
        ".keras zip nor HDF5); give a .keras or .h5 model file or a SavedModel folder.")
    assert refused(float_run, "--distill-loss", "distribution", "--distill-weight", "0.5") == (
        "Error: The distribution loss is KL(teacher || student) at temperature 1 with weight 1 "
        "(ReActNet); drop --distill-weight and --distill-temperature, or use --distill-loss kl.")
    result = invoke(["train", *LIGHT_STUDENT, "--distill-temperature", "2", *SMALL, "-o",
                     run_dir])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: --distill-temperature applies to distillation; "
                                     "give a --teacher too, or drop --distill-temperature.")
    # An existing empty folder is left as it was.
    run_dir.mkdir(parents=True)
    before = _hashes(run_dir.parent)
    result = invoke(["train", *LIGHT_STUDENT, "--teacher", five, *SMALL, "-o", run_dir])
    assert result.exit_code == 2
    assert _hashes(run_dir.parent) == before and list(run_dir.iterdir()) == []


def _digits_teacher(path: Path, head: str) -> Path:
    """A float 8x8 digits classifier whose logits layer is Dense(10), saved to `path`, with
    `head` "logits" (nothing after it) or "softmax" (an Activation("softmax") after it)."""
    tf.keras.utils.set_random_seed(3)
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(10, kernel_initializer=tf.keras.initializers.RandomNormal(
        stddev=2.0), name="z")(x)
    if head == "softmax":
        x = tf.keras.layers.Activation("softmax")(x)
    elif head == "sigmoid":
        x = tf.keras.layers.Activation("sigmoid", name="sigmoid")(x)
    tf.keras.Model(inputs, x, name="digits_teacher").save(path)
    return path


def test_a_teacher_that_outputs_logits_teaches_as_its_softmax_would(tmp_path):
    """A teacher without a final softmax used to give a NaN loss at step 1 (its logits were
    taken for probabilities); its logits now give the very run that its softmax'd twin gives."""
    losses = {}
    for head in ("logits", "softmax"):
        teacher = _digits_teacher(tmp_path / f"{head}.keras", head)
        run_dir = tmp_path / head
        result = invoke(["train", *LIGHT_STUDENT, "--teacher", teacher, *SMALL, "-o", run_dir])
        assert result.exit_code == 0, result.output
        with open(run_dir / "history.csv") as f:
            header, row = f.readline().strip().split(","), f.readline().strip().split(",")
        losses[head] = float(row[header.index("loss")])
    assert losses["logits"] == pytest.approx(losses["softmax"], rel=1e-5)
    assert 0 < losses["logits"] < float("inf")


def test_a_teacher_whose_outputs_are_neither_is_refused_before_the_folder_exists(tmp_path):
    teacher = _digits_teacher(tmp_path / "sigmoid.keras", "sigmoid")
    run_dir = tmp_path / "runs" / "student"
    result = invoke(["train", *LIGHT_STUDENT, "--teacher", teacher, *SMALL, "-o", run_dir])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "Error: The teacher 'digits_teacher' ends in layer 'sigmoid' with the 'sigmoid' "
        "activation, which outputs neither logits nor softmax probabilities; distil from a "
        "classifier whose last layer is linear (logits) or a softmax.\n")
    assert not run_dir.parent.exists()


@pytest.mark.parametrize("option, value, message", [
    ("--distill-temperature", "inf", "Expected --distill-temperature > 0 and finite, got inf."),
    ("--distill-temperature", "nan", "Expected --distill-temperature > 0 and finite, got nan."),
    ("--distill-temperature", "-1", "Expected --distill-temperature > 0 and finite, got -1.0."),
    ("--distill-temperature", "0", "Expected --distill-temperature > 0 and finite, got 0.0."),
    ("--distill-weight", "0", "Expected --distill-weight in (0, 1], got 0.0."),
    ("--distill-weight", "1.5", "Expected --distill-weight in (0, 1], got 1.5."),
    ("--distill-weight", "nan", "Expected --distill-weight in (0, 1], got nan."),
    ("--distill-weight", "inf", "Expected --distill-weight in (0, 1], got inf."),
    ("--distill-attention-weight", "inf",
     "Expected --distill-attention-weight >= 0 and finite, got inf."),
    ("--distill-attention-weight", "nan",
     "Expected --distill-attention-weight >= 0 and finite, got nan."),
])
def test_out_of_range_distillation_values_are_refused_before_the_folder_exists(
        tmp_path, option, value, message):
    teacher = _digits_teacher(tmp_path / "teacher.keras", "softmax")
    before = _hashes(tmp_path)
    run_dir = tmp_path / "runs" / "student"
    result = invoke(["train", *TINY_STUDENT, "--teacher", teacher, option, value,
                     "--distill-attention-layers", "block1_bn2", *SMALL, "-o", run_dir])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {message}\n"
    assert not run_dir.parent.exists() and _hashes(tmp_path) == before


def _op_teacher(path: Path, broken: bool = False) -> Path:
    """Dense(10) logits z, then tf.nn.softmax(z): a last layer that shows nothing; `broken`:
    a NaN kernel."""
    tf.keras.utils.set_random_seed(3)
    inputs = tf.keras.Input((8, 8, 1))
    dense = tf.keras.layers.Dense(10, name="z")
    model = tf.keras.Model(inputs, tf.nn.softmax(dense(tf.keras.layers.Flatten()(inputs))),
                           name="op_teacher")
    if broken:
        kernel, bias = dense.get_weights()
        dense.set_weights([np.full_like(kernel, np.nan), bias])
    model.save(path)
    return path


@pytest.mark.parametrize("cache", [False, True])
def test_a_teacher_whose_last_layer_shows_nothing_is_read_on_a_batch(tmp_path, cache):
    extra = ["--distill-cache"] if cache else []
    result = invoke(["train", *LIGHT_STUDENT, "--teacher", _op_teacher(tmp_path / "t.keras"),
                     *extra, *SMALL, "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output


def test_a_teacher_with_non_finite_outputs_is_refused_before_the_folder_exists(tmp_path):
    broken = _op_teacher(tmp_path / "nan.keras", broken=True)
    run_dir = tmp_path / "runs" / "nan"
    result = invoke(["train", *LIGHT_STUDENT, "--teacher", broken, *SMALL, "-o", run_dir])
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: The teacher 'op_teacher' outputs nan or inf on a batch of the images it is to "
        "label; distil from a teacher whose outputs are finite (evaluate it alone first).\n")
    assert not run_dir.parent.exists()


def test_a_teacher_file_that_carries_code_is_refused_unless_trusted(tmp_path):
    """A legacy .h5 teacher with a Lambda: `bnn train --teacher` never runs its code unless
    --trust-model-code says to."""
    from tests.lambda_models import marker_writing_lambda

    marker = tmp_path / "MARKER"
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(inputs))
    x = tf.keras.layers.Lambda(marker_writing_lambda(marker), name="evil")(x)
    teacher = tmp_path / "teacher.h5"
    tf.keras.Model(inputs, tf.keras.layers.Activation("softmax")(x)).save(teacher)
    marker.unlink(missing_ok=True)  # building and saving ran the lambda
    run_dir = tmp_path / "runs" / "student"
    refused = invoke(["train", *LIGHT_STUDENT, "--teacher", teacher, *SMALL, "-o", run_dir])
    assert refused.exit_code == 2, refused.output
    line = refused.stderr.strip()
    assert "\n" not in line and "'evil'" in line and "--trust-model-code" in line, line
    assert not marker.exists() and not run_dir.parent.exists()
    trusted = invoke(["train", *LIGHT_STUDENT, "--teacher", teacher, "--trust-model-code",
                      *SMALL, "-o", run_dir])
    assert trusted.exit_code == 0, trusted.output
    assert marker.exists()
