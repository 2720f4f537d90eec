"""Tests for models/registry.py: names, lookup errors, keyword forwarding, weights, describe."""

import models  # noqa: F401  (must come before tensorflow)

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from models import registry

EXPECTED_NAMES = {
    "binary-densenet28",
    "binary-densenet37",
    "binary-densenet37-dilated",
    "binary-densenet45",
    "binary-resnet-e18",
    "binary-resnet-e34",
    "birealnet18",
    "birealnet34",
    "xnornet",
    "binary-alexnet",
    "dorefanet",
    "meliusnet22",
    "reactnet-a",
    "real-to-binary-net",
    "strong-baseline-net",
    "binarynet",
    "bnn-plus-alexnet",
    "compact-bnn",
    "quicknet-small",
    "quicknet",
    "quicknet-large",
}


def test_every_model_of_the_issue_is_registered_and_sorted():
    names = models.list_models()
    assert set(names) == EXPECTED_NAMES
    assert names == sorted(names)


def test_list_models_filters_with_a_shell_pattern():
    assert models.list_models("binary-densenet*") == [
        "binary-densenet28",
        "binary-densenet37",
        "binary-densenet37-dilated",
        "binary-densenet45",
    ]
    assert models.list_models("*realnet*") == ["birealnet18", "birealnet34"]
    assert models.list_models("nothing-like-this*") == []


def test_unknown_name_lists_close_matches():
    with pytest.raises(models.UnknownModelError) as info:
        models.create_model("binary-densnet28")
    message = str(info.value)
    assert message.startswith("Unknown model 'binary-densnet28'; did you mean binary-densenet28")
    # Only close matches are suggested, not the whole registry.
    assert "xnornet" not in message
    assert isinstance(info.value, BnnError) and isinstance(info.value, KeyError)


def test_unknown_name_without_close_match_lists_all_models():
    with pytest.raises(models.UnknownModelError, match="known models: binary-alexnet, "):
        models.get_model_fn("qqqqqq")


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="'xnornet' is registered twice"):
        models.register_model("xnornet")(lambda **kwargs: None)


def test_register_model_tags_the_entry_function():
    @models.register_model("test-only-tiny")
    def tiny(*, input_shape, num_classes, include_top):
        inputs = tf.keras.Input(input_shape)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes)(inputs))

    try:
        assert tiny.model_name == "test-only-tiny"
        model = models.create_model("test-only-tiny", input_shape=[4, 4, 2], num_classes=3)
        assert model.output_shape == (None, 4, 4, 3)
    finally:
        del registry._REGISTRY["test-only-tiny"]
    assert "test-only-tiny" not in models.list_models()


def test_create_model_forwards_family_overrides():
    import larq as lq

    model = models.create_model(
        "binary-resnet-e18",
        input_shape=(32, 32, 3),
        num_classes=10,
        input_quantizer=lq.quantizers.ApproxSign(),
    )
    assert isinstance(model.get_layer("block1_layer1_conv").input_quantizer, lq.quantizers.ApproxSign)
    # The default of the family is kept for what is not overridden.
    assert model.get_layer("block1_layer1_conv").kernel_quantizer.clip_value == 1.25


def test_create_model_loads_weights_by_path(tmp_path):
    kwargs = dict(input_shape=(28, 28, 1), num_classes=10)
    model = models.create_model("binary-densenet28", **kwargs)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    again = models.create_model("binary-densenet28", weights=path, **kwargs)
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())


def test_describe_returns_the_stats_of_the_built_model():
    stats = models.describe("binarynet", input_shape=(32, 32, 3), num_classes=10)
    model = models.create_model("binarynet", input_shape=(32, 32, 3), num_classes=10)
    assert stats.name == "binarynet"
    assert stats.total_params == model.count_params()
    # conv2..conv6 and the three fully-connected layers have binary inputs and weights;
    # conv1 sees the image.
    assert stats.lce_bconvs == 8


def test_import_models_loads_the_plugin_but_no_training_code():
    import json
    import subprocess
    import sys

    # models/ sits below the training application (larq-zoo's layout): it may import the
    # plugin, never `bnn_keras.training` (recipes, tricks, data, ...) or what that loads.
    app = ("bnn_keras.training", "tensorflow_datasets", "sklearn", "convert")
    code = (
        "import json, sys; import models; "
        f"print(json.dumps(sorted(k for k in sys.modules if any("
        f"k == m or k.startswith(m + '.') for m in {app!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_entries_carry_their_paper_recipe_as_plain_values():
    entry = models.get_entry("binary-densenet37")
    assert entry.name == "binary-densenet37" and entry.fn is models.get_model_fn(entry.name)
    assert entry.recipe.source.endswith("TrainBinaryDenseNet37")
    # A sibling's recipe: BinaryDenseNet28's values with its own batch size.
    assert dict(entry.recipe.values) == {
        **models.get_entry("binary-densenet28").recipe.values, "batch_size": 192}
    assert entry.bop_recipe is None
    assert models.get_entry("binarynet").bop_recipe.values["optimizer"] == "bop"
    assert models.get_entry("compact-bnn").recipe is None
    with pytest.raises(TypeError):  # a published fact is read-only
        entry.recipe.values["batch_size"] = 1
    with pytest.raises(models.UnknownModelError, match="did you mean binary-densenet28"):
        models.get_entry("binary-densnet28")


def test_register_model_stores_the_recipes_it_is_given():
    recipe = models.PaperRecipe(source="a test", values={"learning_rate": 0.5, "epochs": 3})

    @models.register_model("test-only-recipe", recipe=recipe)
    def tiny(**kwargs):
        raise AssertionError("not built")

    try:
        assert models.get_entry("test-only-recipe") == models.ModelEntry(
            "test-only-recipe", tiny, recipe, None)
    finally:
        del registry._REGISTRY["test-only-recipe"]


def test_create_model_builds_the_papers_model_and_the_cli_applies_tricks_after_it():
    import cli
    from bnn_keras import model_stats

    kwargs = dict(input_shape=(16, 16, 1), num_classes=10)
    plain = models.create_model("binary-densenet28", **kwargs)
    assert model_stats.count_binary_convs(plain) == 23
    # Tricks are the training application's, not a create_model option.
    with pytest.raises(BnnError, match="binary-densenet28 has no option 'tricks'"):
        models.create_model("binary-densenet28", tricks={"bases": 2}, **kwargs)
    tricked = cli._build_registered("binary-densenet28", {"bases": 2}, {}, kwargs["input_shape"],
                                    kwargs["num_classes"])
    assert model_stats.count_binary_convs(tricked) == 46
    untricked = cli._build_registered("binary-densenet28", {}, {}, kwargs["input_shape"],
                                      kwargs["num_classes"])
    assert untricked.count_params() == plain.count_params()
