"""`bnn models` builds each model once per bnn source and input, then reads its figures back
(`models.figures`): the listing answers in seconds, with the same figures."""

import json
import re

import pytest

import models
from models import figures
from tests.conftest import invoke

ARGS = ["models", "binarynet", "--input-shape", "32,32,3", "--num-classes", "10"]


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """The models `bnn models` builds, in a cache folder of the test's own."""
    monkeypatch.setenv(figures.CACHE_ENV, str(tmp_path / "cache"))
    built = []
    describe = models.describe

    def counted(name, **kwargs):
        built.append(name)
        return describe(name, **kwargs)

    monkeypatch.setattr(models, "describe", counted)
    return built


def test_the_second_listing_reads_the_figures_the_first_computed(builds, tmp_path):
    first = invoke(ARGS)
    assert first.exit_code == 0, first.output
    assert builds == ["binarynet"]
    second = invoke(ARGS)
    assert second.exit_code == 0 and second.output == first.output
    assert builds == ["binarynet"]  # nothing built again
    model = models.create_model("binarynet", input_shape=(32, 32, 3), num_classes=10)
    assert re.search(rf"^binarynet +{model.count_params():,} ", first.output, re.M)
    (kept,) = (tmp_path / "cache").iterdir()
    assert kept.name == f"models-{figures.source_key()}-32x32x3-10.json"
    assert json.loads(kept.read_text())["binarynet"]["params"] == model.count_params()

    rebuilt = invoke([*ARGS, "--rebuild"])
    assert rebuilt.output == first.output and builds == ["binarynet", "binarynet"]
    # Another input size is another file; a damaged file is computed again.
    kept.write_text("{not json")
    assert invoke(ARGS).output == first.output and len(builds) == 3


def test_figures_are_kept_per_version_and_an_unwritable_cache_costs_only_time(
        builds, tmp_path, monkeypatch):
    import bnn_keras

    key = figures.source_key()
    monkeypatch.setattr(bnn_keras, "__version__", "9.9.9")
    assert figures.source_key() != key  # an upgrade never reads an earlier version's figures
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(figures.CACHE_ENV, str(tmp_path / "file" / "cache"))
    result = invoke(ARGS)
    assert result.exit_code == 0, result.output
    assert "binarynet" in result.output and builds == ["binarynet"]
