"""`bnn train MODEL --weights FILE` (`TrainConfig.weights`): a run that starts from a weights
file, checked before its folder exists, recorded in config.json (layout 3) and resumable
without the file.

The larq-zoo file is written here the way larq-zoo's `save_weights` lays it out: Keras HDF5
with layer names of its own (none of ours), so the registry picks the zoo variant.
"""

import hashlib
import json
import shutil
from pathlib import Path
from typing import Tuple

import h5py
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import training
from bnn_keras.errors import BnnError
from bnn_keras.training.config import RunRecord
from tests.conftest import invoke, tiny_config

# The start-weights model: ReActNet-A cut to a stem and one block (25 weights, 962 parameters),
# which has no variants (binary-densenet28 has a larq-zoo one) and trains a step in a fraction
# of binarynet's time (6M parameters, 71 MB per save at 8x8).
MODEL = "reactnet-a"
WIDTHS = [8, 8]
SMALL = ("--dataset", "digits", "--image-size", "8", "--epochs", "1", "--steps-per-epoch", "1",
         "--batch-size", "8", "--precision", "float32", "--no-track-flips", "--verbose", "0",
         f"--model-option=widths={json.dumps(WIDTHS)}")


def _small_config(**overrides):
    """A one-step run of `MODEL` on 8x8 digits."""
    options = dict(model=MODEL, model_options={"widths": WIDTHS}, epochs=1, steps_per_epoch=1,
                   batch_size=8, track_flips=False)
    return tiny_config(**{**options, **overrides})


def _weights_of(model):
    return [w.numpy().copy() for layer in model.layers for w in layer.weights]


def _randomised(model, seed: int):
    """`model` with weights no initializer gives (BatchNorm variances positive)."""
    rng = np.random.default_rng(seed)
    model.set_weights([np.abs(rng.normal(size=w.shape)).astype("float32") + 0.5
                       if "variance" in w.name else rng.normal(size=w.shape).astype("float32")
                       for w in model.weights])
    return model


def _foreign_h5(model, path: Path) -> Path:
    """`model`'s weights as a Keras HDF5 weights file whose layers carry other names (as
    larq-zoo's automatic `quant_conv2d_3`): the layout `models.weights_file` reads."""
    with h5py.File(path, "w") as f:
        names = []
        for index, layer in enumerate(l for l in model.layers if l.weights):
            name = f"zoo_layer_{index}"
            group = f.create_group(name)
            weight_names = [f"{name}/weight_{j}:0" for j in range(len(layer.weights))]
            for weight_name, weight in zip(weight_names, layer.weights):
                group.create_dataset(weight_name, data=weight.numpy())
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            names.append(name.encode())
        f.attrs["layer_names"] = names
    return path


class _FirstWeights(tf.keras.callbacks.Callback):
    """Keeps the model's weights when training begins (after the run folder's callbacks, the
    epoch backup's restore included)."""

    weights = None

    def on_train_begin(self, logs=None):
        self.weights = _weights_of(self.model)


def _hashes(folder: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def start_file(tmp_path_factory):
    """`MODEL` at 8x8x1, 10 classes, random weights, saved with save_weights(.h5)."""
    import models

    folder = tmp_path_factory.mktemp("weights")
    model = _randomised(models.create_model(MODEL, input_shape=(8, 8, 1), num_classes=10,
                                            widths=WIDTHS), seed=1)
    path = folder / "start.h5"
    model.save_weights(path)
    return path, _weights_of(model)


def test_a_run_starts_from_the_file_and_records_it(start_file, tmp_path):
    path = Path(shutil.copy(start_file[0], tmp_path / "start.h5"))
    expected = start_file[1]
    keep = _FirstWeights()
    config = _small_config(weights=str(path))
    result = training.train(config, None, tmp_path / "run", verbose=0, callbacks=[keep])
    # The weights fit starts from are the file's, layer by layer.
    assert len(keep.weights) == len(expected)
    for got, want in zip(keep.weights, expected):
        np.testing.assert_array_equal(got, want)
    written = json.loads((result.run_dir / "config.json").read_text())
    assert written["weights"] == str(path) and written["format_version"] == 3
    assert written["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "model_variant" not in written  # reactnet-a has no variants
    record = RunRecord.read(result.run_dir)
    assert record.config.weights == str(path) and record.to_dict() == written
    # `bnn train --resume` extends it from its own backup, without the file.
    path.unlink()
    result = invoke(["train", "--resume", result.run_dir, "--epochs", "2", "--verbose", "0"])
    assert result.exit_code == 0, result.output
    assert "1 of 2 epochs done (extended from 1)" in result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


class _Interrupt(tf.keras.callbacks.Callback):
    """Presses Ctrl-C before the first training step."""

    def on_train_batch_begin(self, batch, logs=None):
        raise KeyboardInterrupt


def _interrupted_run_from_a_copy_of(path: Path, tmp_path: Path) -> Tuple[Path, Path]:
    """A run from a private copy of the weights file `path`, stopped before its first epoch
    completed: (the copy, the run folder)."""
    private = Path(shutil.copy(path, tmp_path / "start.h5"))
    run = tmp_path / "run"
    config = _small_config(weights=str(private))
    with pytest.raises(training.TrainingInterruptedError, match="after 0 complete epoch"):
        training.train(config, None, run, verbose=0, callbacks=[_Interrupt()])
    return private, run


def test_a_run_without_a_complete_epoch_resumes_from_its_copy_of_the_file(start_file,
                                                                           tmp_path):
    path, expected = start_file
    private, run = _interrupted_run_from_a_copy_of(path, tmp_path)
    # No epoch backup to restore: the start is the run's copy of the file (RUN/inputs),
    # checked against the recorded sha256.
    copy = run / "inputs" / "weights.h5"
    assert copy.read_bytes() == private.read_bytes()
    with copy.open("ab") as f:
        f.write(b"\0")
    before = _hashes(run)
    result = invoke(["train", "--resume", run, "--verbose", "0"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"Error: Run {run} keeps its --weights in {copy}, which has changed since the run "
        "started (sha256); restore the run folder from a copy, or start a new run.")
    assert _hashes(run) == before
    shutil.copy(path, copy)
    private.unlink()  # the original is not needed
    keep = _FirstWeights()
    training.resume_training(run, None, verbose=0, callbacks=[keep])
    for got, want in zip(keep.weights, expected):
        np.testing.assert_array_equal(got, want)


def test_a_run_of_an_earlier_bnn_resumes_from_the_recorded_file_and_keeps_a_copy(
        start_file, tmp_path):
    """A run folder without inputs/ (an earlier bnn's): the recorded file, if it is still the
    same (sha256), then copied into the run."""
    path, expected = start_file
    private, run = _interrupted_run_from_a_copy_of(path, tmp_path)
    shutil.rmtree(run / "inputs")
    with private.open("ab") as f:
        f.write(b"\0")
    before = _hashes(run)
    result = invoke(["train", "--resume", run, "--verbose", "0"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"Error: Run {run} has no complete epoch to continue from and started from --weights "
        f"{private}, which has changed since (sha256); start a new run.")
    assert _hashes(run) == before
    shutil.copy(path, private)
    keep = _FirstWeights()
    with pytest.raises(training.TrainingInterruptedError, match="after 0 complete epoch"):
        training.resume_training(run, None, verbose=0, callbacks=[keep, _Interrupt()])
    for got, want in zip(keep.weights, expected):
        np.testing.assert_array_equal(got, want)
    assert (run / "inputs" / "weights.h5").read_bytes() == private.read_bytes()


def test_the_same_run_without_the_file_starts_elsewhere(start_file, tmp_path):
    """The check above is not vacuous: a run from scratch does not start at the file's weights."""
    _, expected = start_file
    keep = _FirstWeights()
    # Only the start is compared: Ctrl-C at the first step spares tracing and training it.
    with pytest.raises(training.TrainingInterruptedError, match="after 0 complete epoch"):
        training.train(_small_config(), None, tmp_path / "run", verbose=0,
                       callbacks=[keep, _Interrupt()])
    assert not all(np.array_equal(a, b) for a, b in zip(keep.weights, expected))


def test_a_file_that_does_not_fit_is_refused_before_the_folder_exists(start_file, tmp_path):
    path, _ = start_file
    run = tmp_path / "runs" / "wrong"
    # widths [8, 16]: block1's 1x1 conv doubles the width to 16 where the file's keeps 8 (the
    # 6th weighted layer after stem_conv, stem_bn, block1_conv3x3, block1_bn1, block1_rprelu1;
    # its RSign threshold has one value per input channel, 8 in both).
    wider = [*SMALL[:-1], "--model-option=widths=[8,16]"]
    result = invoke(["train", MODEL, "--weights", path, "-o", run, *wider])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: {path} does not fit {MODEL}: weighted layer 6 is 'block1_conv1x1' with "
        "(1, 1, 8, 8), (8,) in the file and 'block1_conv1x1' with (1, 1, 8, 16), (8,) in the "
        "model; build the model with the input_shape, num_classes, include_top and options "
        "the file was saved with, or give a weights file of this model."]
    assert not run.exists() and not run.parent.exists()
    missing = tmp_path / "nope.h5"
    result = invoke(["train", MODEL, "--weights", missing, "-o", run, *SMALL])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"Error: --weights {missing} does not exist; give the "
                                     "path of a weights file (.h5).")
    assert not run.parent.exists()
    # An existing folder is left as it was.
    run.mkdir(parents=True)
    before = _hashes(run.parent)
    assert invoke(["train", MODEL, "--weights", path, "-o", run, *wider]).exit_code == 2
    assert _hashes(run.parent) == before and list(run.iterdir()) == []


def test_tricks_keep_the_loaded_weights_or_are_refused(start_file, tmp_path):
    path, expected = start_file
    keep = _FirstWeights()
    # A trick that rebuilds the binary convolutions with the same weights (a weight quantizer
    # has none; an input quantizer would drop their RSign thresholds): they are kept (and the
    # run trains its step with them).
    config = _small_config(weights=str(path), tricks={"kernel_quantizer": "ste_sign"})
    training.train(config, None, tmp_path / "run", verbose=0, callbacks=[keep])
    for got, want in zip(keep.weights, expected):
        np.testing.assert_array_equal(got, want)
    # Multiple bases replace each binary kernel by K of them: refused, nothing created.
    run = tmp_path / "bases"
    result = invoke(["train", MODEL, "--weights", path, "--bases", "2", "-o", run, *SMALL])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"Error: --weights {path} cannot be combined with --bases 2: the tricks rebuild layer "
        "'block1_conv3x3' with other weights than the file's, which would be lost; drop those "
        "tricks (or --weights).")
    assert not run.exists()


def test_a_custom_build_model_does_not_take_weights(start_file, tmp_path):
    from tests.conftest import tiny_bnn

    with pytest.raises(BnnError, match=r"^`weights` is loaded into the registry model"):
        training.train(tiny_config(weights=str(start_file[0])), tiny_bnn, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# A model with a larq-zoo variant (its binary convs pad with 0), made small by its options:
# binary-resnet-e18 with 8 filters in every stage keeps its 16 binary convs (shortcuts
# without convolutions, as no stage widens) and builds in half binary-densenet28's time.
ZOO_MODEL = "binary-resnet-e18"
SMALL_ZOO_MODEL = {"stage_filters": [8, 8, 8, 8]}


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    """`ZOO_MODEL`'s larq-zoo variant at 8x8x1 (narrowed by `SMALL_ZOO_MODEL`) as larq-zoo
    files: 10 and 1000 classes."""
    import models

    folder = tmp_path_factory.mktemp("zoo")
    files = {}
    for classes in (10, 1000):
        model = _randomised(models.create_model(
            ZOO_MODEL, input_shape=(8, 8, 1), num_classes=classes, variant="larq-zoo",
            **SMALL_ZOO_MODEL), seed=classes)
        files[classes] = (_foreign_h5(model, folder / f"zoo_{classes}.h5"), _weights_of(model))
    return files


def test_a_zoo_file_builds_the_zoo_variant_and_resumes_without_the_file(zoo_files, tmp_path):
    path, expected = zoo_files[10]
    private = Path(shutil.copy(path, tmp_path / "zoo.h5"))
    run = tmp_path / "run"
    keep = _FirstWeights()
    config = tiny_config(model=ZOO_MODEL, epochs=1, steps_per_epoch=1, batch_size=32,
                         track_flips=False, weights=str(private), model_options=SMALL_ZOO_MODEL)
    first = training.train(config, None, run, verbose=0, callbacks=[keep])
    assert len(keep.weights) == len(expected)
    for got, want in zip(keep.weights, expected):
        np.testing.assert_array_equal(got, want)
    record = RunRecord.read(run)
    assert record.model_variant == "larq-zoo" and record.format_version == 3
    assert record.weights_sha256 == hashlib.sha256(private.read_bytes()).hexdigest()

    # Extended by one epoch with the file gone: the zoo variant again (its binary convs pad
    # with 0), continued from the run's own epoch backup.
    private.unlink()
    trained = _weights_of(first.model)
    keep = _FirstWeights()
    result = training.resume_training(run, None, epochs=2, verbose=0, callbacks=[keep])
    for got, want in zip(keep.weights, trained):
        np.testing.assert_array_equal(got, want)
    pads = {layer.pad_values for layer in result.model.layers
            if getattr(layer, "padding", None) == "same" and hasattr(layer, "pad_values")}
    assert pads == {0.0}
    assert result.metrics["epochs"] == 2
    assert RunRecord.read(run).model_variant == "larq-zoo"


def test_a_zoo_imagenet_head_on_a_10_class_data_set_is_one_line(zoo_files, tmp_path):
    path, _ = zoo_files[1000]
    run = tmp_path / "run"
    result = invoke(["train", ZOO_MODEL, "--weights", path, "-o", run, *SMALL[:-1],
                     *[f"--model-option={k}={json.dumps(v)}" for k, v in SMALL_ZOO_MODEL.items()]])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {path} does not fit {ZOO_MODEL} (variant "
                               "larq-zoo): weighted layer ")
    assert "(1000,)" in lines[0] and "(10,)" in lines[0]
    assert not run.exists()


def test_config_json_round_trips_and_is_checked(tmp_path):
    from tests.conftest import FIXTURES

    record = RunRecord.read(FIXTURES / "v0.2" / "finished_run")
    values = record.to_dict()
    assert values["format_version"] == 2 and "weights" not in values
    digest = "ab" * 32
    values.update(weights="zoo.h5", weights_sha256=digest, model_variant="larq-zoo")
    again = RunRecord.from_dict(values)
    assert again.config.weights == "zoo.h5" and again.weights_sha256 == digest
    assert again.model_variant == "larq-zoo"
    assert again.to_dict() == {**values, "format_version": 3}
    with pytest.raises(BnnError, match=r"expected field 'weights_sha256' to be 64 lowercase "
                                       r"hexadecimal digits \(a sha256\), got \"xyz\""):
        RunRecord.from_dict({**values, "weights_sha256": "xyz"})
    with pytest.raises(BnnError, match=r"field 'weights' without 'weights_sha256'"):
        RunRecord.from_dict({**values, "weights_sha256": None})
