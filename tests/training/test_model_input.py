"""`ModelInput`: one description of a model's input, read from every file that holds one."""

import dataclasses
import json
import subprocess
import sys

import pytest

from bnn_keras.errors import BnnError
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.preprocessing import (
    DEFAULT_PIXEL_MAX,
    INPUT_VERSION,
    ModelInput,
    pixel_max_for,
)
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures"
DIGITS_NORMALIZATION = Normalization(mean=(4.5,), std=(6.0,))


def _digits(**changes) -> ModelInput:
    values = dict(input_shape=(8, 8, 1), normalization=DIGITS_NORMALIZATION,
                  class_names=[str(d) for d in range(10)], dataset="digits")
    return ModelInput(**{**values, **changes})


def test_the_pixel_maximum_is_the_data_sets():
    assert pixel_max_for("digits") == 16.0
    assert pixel_max_for("cifar10") == pixel_max_for("folder:/x") == DEFAULT_PIXEL_MAX == 255.0
    assert pixel_max_for(None) == 255.0
    assert _digits().pixel_max == 16.0 and _digits(dataset=None).pixel_max == 255.0
    assert _digits(pixel_max=1).pixel_max == 1.0  # a recorded value wins over the rule


def test_fields_are_normalised_and_frozen():
    model_input = _digits(input_shape=[8, 8, 1])
    assert model_input.input_shape == (8, 8, 1) and model_input.image_size == (8, 8)
    assert model_input.class_names == tuple("0123456789") and model_input.num_classes == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_input.pixel_max = 255.0
    with pytest.raises(BnnError, match=r"Expected an input shape \(height, width, channels\), "
                                       r"got \(8, 8\)"):
        _digits(input_shape=(8, 8))
    with pytest.raises(BnnError, match=r"Expected `pixel_max` > 0, got -1"):
        _digits(pixel_max=-1)


@pytest.mark.parametrize("fixture", ["v0.1/finished_run/config.json",
                                     "v0.2/finished_run/config.json",
                                     "bundles/format1/model.json", "bundles/format2/model.json"])
def test_every_existing_file_reads_as_the_same_input(fixture):
    """Old config.json files and bundles' model.json (shape as `input.shape`, (1, H, W, C))."""
    values = json.loads((FIXTURES / fixture).read_text())
    model_input = ModelInput.from_mapping(values)
    assert model_input.input_shape == (8, 8, 1) and model_input.dataset == "digits"
    assert model_input.num_classes == 10 and model_input.pixel_max == 16.0
    assert model_input.normalization == Normalization.from_dict(values["normalization"])


def test_a_file_without_pixel_max_takes_the_data_sets():
    values = _digits().to_metadata()
    del values["pixel_max"]
    assert ModelInput.from_mapping(values).pixel_max == 16.0
    assert ModelInput.from_mapping({**values, "dataset": "mnist"}).pixel_max == 255.0


def test_to_metadata_round_trips_with_every_key():
    model_input = _digits(data_dir="/data")
    meta = model_input.to_metadata()
    assert meta == {"dataset": "digits", "data_dir": "/data", "input_shape": [8, 8, 1],
                    "num_classes": 10, "class_names": list("0123456789"),
                    "normalization": {"mean": [4.5], "std": [6.0]}, "pixel_max": 16.0}
    assert json.loads(json.dumps(meta)) == meta
    assert ModelInput.from_mapping(meta) == model_input
    assert ModelInput.from_mapping(ModelInput((8, 8, 1), DIGITS_NORMALIZATION).to_metadata()) \
        == ModelInput((8, 8, 1), DIGITS_NORMALIZATION)


def test_a_mapping_missing_facts_or_newer_is_refused_in_one_line():
    meta = _digits().to_metadata()
    with pytest.raises(BnnError, match=r"^x.json has no normalization; convert the model from a "
                                       r"run folder"):
        ModelInput.from_mapping({**meta, "normalization": None}, source="x.json")
    with pytest.raises(BnnError, match="has no input_shape or normalization"):
        ModelInput.from_mapping({"dataset": "digits"})
    newer = INPUT_VERSION + 1
    with pytest.raises(BnnError, match=rf"x.json describes its input in layout {newer}, newer "
                                       rf"than this bnn reads \(up to {INPUT_VERSION}\); upgrade"):
        ModelInput.from_mapping({**meta, "input_version": newer}, source="x.json")
    with pytest.raises(BnnError, match=r"x.json describes the model's input in an unreadable "
                                       r"form \(KeyError"):
        ModelInput.from_mapping({**meta, "normalization": {"mean": [1.0]}}, source="x.json")


def test_from_options_broadcasts_and_checks_the_statistics():
    model_input = ModelInput.from_options((4, 4, 3), class_names=["a", "b"], mean=[0.5],
                                          std=[0.1, 0.2, 0.3], dataset="", data_dir=None)
    assert model_input.normalization == Normalization((0.5, 0.5, 0.5), (0.1, 0.2, 0.3))
    assert model_input.dataset is None and model_input.pixel_max == 255.0
    assert ModelInput.from_options((8, 8, 1), class_names=["a"], mean=[0], std=[1],
                                   dataset="digits").pixel_max == 16.0
    with pytest.raises(BnnError, match=r"Expected `mean` with 1 or 3 values \(one per input "
                                       r"channel\), got 2"):
        ModelInput.from_options((4, 4, 3), class_names=["a"], mean=[0, 1], std=[1])
    with pytest.raises(BnnError, match=r"Expected `std` > 0, got 1, 0, 1"):
        ModelInput.from_options((4, 4, 3), class_names=["a"], mean=[0], std=[1, 0, 1])
    with pytest.raises(BnnError, match=r"Expected `pixel_max` > 0, got 0"):
        ModelInput.from_options((4, 4, 3), class_names=["a"], mean=[0], std=[1], pixel_max=0)


def test_a_run_record_gives_what_its_config_json_gives():
    from bnn_keras.training.config import RunRecord

    run = FIXTURES / "v0.2" / "finished_run"
    record = RunRecord.read(run)
    assert record.model_input == ModelInput.from_record(record)
    assert record.model_input == ModelInput.from_mapping(
        json.loads((run / "config.json").read_text()))


def test_reading_a_model_input_loads_no_data_set_or_training_code():
    """No TensorFlow Datasets, data pipeline, or module of the training application."""
    config = str(FIXTURES / "v0.2" / "finished_run" / "config.json")
    code = ("import json, sys; from bnn_keras.training.data.preprocessing import ModelInput; "
            f"ModelInput.from_mapping(json.load(open({config!r}))); "
            "print(sorted(m for m in sys.modules if m.startswith(('tensorflow_datasets', "
            "'bnn_keras.training.')) and not m.endswith(('.data', '.normalization', "
            "'.preprocessing'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_lazy_data_package_still_reaches_its_modules_and_names():
    from bnn_keras.training import data

    assert data.tfds.load_tfds is data.load_tfds and data.preprocessing.ModelInput is ModelInput
    assert data.DEFAULT_PIXEL_MAX == DEFAULT_PIXEL_MAX and "load_dataset" in dir(data)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        data.nothing_here  # noqa: B018
