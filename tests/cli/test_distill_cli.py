"""`bnn train MODEL --float` and `bnn train STUDENT --teacher RUN_DIR|MODEL_FILE`: the teacher is
checked before the run folder exists, recorded in config.json, needed unchanged by --resume,
and the run folder's model.keras is the student; the time to the best accuracy is printed."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from bnn_keras.binary import quantized_kernel_layers
from tests.conftest import TINY_TRAIN_OPTIONS as SMALL
from tests.conftest import invoke

BINARYNET_LAYERS = [
    "input", "conv1", "conv1_bn", "conv2", "conv2_pool", "conv2_bn", "conv3", "conv3_bn",
    "conv4", "conv4_pool", "conv4_bn", "conv5", "conv5_bn", "conv6", "conv6_pool", "conv6_bn",
    "fc_reshape", "fc7", "fc7_bn", "fc8", "fc8_bn", "fc9", "fc9_bn", "logits", "predictions"]


def _hashes(folder: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def float_run(float_binarynet_run) -> Path:
    return float_binarynet_run


def test_float_run(float_run):
    config = json.loads((float_run / "config.json").read_text())
    assert config["float_copy"] is True and config["input_activation"] == "relu"
    assert config["format_version"] == 4
    model = tf.keras.models.load_model(float_run / "model.keras")
    assert [layer.name for layer in model.layers] == BINARYNET_LAYERS
    assert quantized_kernel_layers(model) == []


def test_a_student_of_a_teacher_run(float_run, tmp_path):
    run_dir = tmp_path / "student"
    result = invoke(["train", "binarynet", "--teacher", float_run, "--distill-weight", "0.8",
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
    assert [layer.name for layer in model.layers] == BINARYNET_LAYERS
    binary = [layer.name for layer in quantized_kernel_layers(model)]
    assert binary == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc7", "fc8", "fc9"]
    with open(run_dir / "flips.csv") as f:
        header = f.readline().strip().split(",")
    assert [c[len("flip_ratio/"):] for c in header if c.startswith("flip_ratio/")] == [
        "total", *binary]
    # The time to the best test accuracy, as metrics.json has it.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    line = result.output.strip().splitlines()[-1]
    assert line == (f"best test accuracy {metrics['best_test_accuracy']:.4f} at epoch "
                    f"{metrics['best_epoch']}, {metrics['time_to_best_s']:.1f} s into the run")
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
    assert re.search(r"best test accuracy \d\.\d{4} at epoch [123], [\d.]+ s into the run",
                     extended.output)


def test_a_student_of_cached_teacher_logits(float_run, tmp_path):
    run_dir = tmp_path / "student"
    result = invoke(["train", "binarynet", "--teacher", float_run, "--distill-cache",
                     *SMALL[:-1], "1", "-o", run_dir])
    assert result.exit_code == 0, result.output
    assert "The teacher's logits on the 1,437 training images, once:" in result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["distill_cache"] is True and config["format_version"] == 4

    refused = invoke(["train", "binarynet", "--teacher", float_run, "--distill-cache",
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
        result = invoke(["train", "binarynet", "--teacher", teacher, *extra, *args, "-o",
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
    line = refused(garbage)
    assert line.startswith(f"Error: --teacher {garbage} cannot be loaded as a Keras model: ")
    assert line.endswith("; give a .keras or .h5 model file whose custom layers are registered.")
    assert refused(float_run, "--distill-loss", "distribution", "--distill-weight", "0.5") == (
        "Error: The distribution loss is KL(teacher || student) at temperature 1 with weight 1 "
        "(ReActNet); drop --distill-weight and --distill-temperature, or use --distill-loss kl.")
    result = invoke(["train", "binarynet", "--distill-temperature", "2", *SMALL, "-o", run_dir])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: --distill-temperature applies to distillation; "
                                     "give a --teacher too, or drop --distill-temperature.")
    # An existing empty folder is left as it was.
    run_dir.mkdir(parents=True)
    before = _hashes(run_dir.parent)
    assert invoke(["train", "binarynet", "--teacher", five, *SMALL, "-o", run_dir]).exit_code == 2
    assert _hashes(run_dir.parent) == before and list(run_dir.iterdir()) == []
