"""Tests for models/registry.py: names, lookup errors, keyword forwarding, weights, describe."""

import models  # noqa: F401  (must come before tensorflow)

import re

import h5py
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from models import registry
from tests.conftest import invoke

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

    # 8 filters in every stage (another family override) build the same layers in half the
    # time of the 11M-parameter default.
    model = models.create_model(
        "binary-resnet-e18",
        input_shape=(32, 32, 3),
        num_classes=10,
        input_quantizer=lq.quantizers.ApproxSign(),
        stage_filters=[8, 8, 8, 8],
    )
    assert isinstance(model.get_layer("block1_layer1_conv").input_quantizer, lq.quantizers.ApproxSign)
    # The default of the family is kept for what is not overridden.
    assert model.get_layer("block1_layer1_conv").kernel_quantizer.clip_value == 1.25
    assert model.get_layer("block4_layer1_conv").filters == 8


def test_create_model_loads_weights_by_path(tmp_path):
    # ReActNet-A cut to a stem and one block: any registry model shows the loading.
    kwargs = dict(input_shape=(8, 8, 1), num_classes=10, widths=[8, 8])
    model = models.create_model("reactnet-a", **kwargs)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    again = models.create_model("reactnet-a", weights=path, **kwargs)
    fresh = models.create_model("reactnet-a", **kwargs)
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype("float32")
    # Not vacuous: another build starts from other weights.
    assert not np.array_equal(fresh(x).numpy(), model(x).numpy())
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
    from bnn_keras import model_stats, training
    from bnn_keras.training.starting_point import registry_model

    # binarynet (25 layers) rebuilds in a fraction of binary-densenet28's time (88 layers).
    kwargs = dict(input_shape=(16, 16, 1), num_classes=10)
    plain = models.create_model("binarynet", **kwargs)
    # conv2..conv6 and fc7..fc9 (conv1 sees the image): the paper's 8 binary layers.
    assert model_stats.count_binary_convs(plain) == 8
    # Tricks are the training application's, not a create_model option.
    with pytest.raises(BnnError, match="binarynet has no option 'tricks'"):
        models.create_model("binarynet", tricks={"bases": 2}, **kwargs)
    def built_by_bnn_train(tricks):
        config = training.TrainConfig(model="binarynet", tricks=tricks)
        return registry_model(config, kwargs["input_shape"], kwargs["num_classes"])[0]

    tricked = built_by_bnn_train({"bases": 2})
    assert model_stats.count_binary_convs(tricked) == 16  # two bases per binary layer
    untricked = built_by_bnn_train({})
    assert untricked.count_params() == plain.count_params()


# ----------------------------------------------------------------------------------------------
# Weights files: one line naming the file and the first layer that does not fit; never code
# ----------------------------------------------------------------------------------------------

TINY = dict(input_shape=(8, 8, 1), num_classes=10)
# The weights files' model: ReActNet-A cut to a stem and one block (962 parameters), which
# builds and loads in a fraction of binarynet's time (6M parameters at 8x8).
SMALL = "reactnet-a"
SMALL_OPTIONS = dict(TINY, widths=[8, 8])
# quicknet-small with one block per section, and narrow (8 filters in the stem): the zoo
# variant's ImageNet stem (/4) and the transitions' pools (/2 before each wider section) still
# leave an 8x8 input no pixel, as for the 12M-parameter default.
QUICKNET_SMALL_OPTIONS = dict(TINY, section_blocks=[1, 1, 1, 1], section_filters=[8, 16, 32, 64])


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """`SMALL`'s weights in both tf-keras formats, random bytes, truncated and empty files,
    and another model's weights."""
    folder = tmp_path_factory.mktemp("weights_files")
    model = models.create_model(SMALL, **SMALL_OPTIONS)
    model.save_weights(folder / "small.h5")
    model.save(folder / "small.keras")
    rng = np.random.default_rng(0)
    for name in ("random.h5", "random.weights.h5", "random.keras", "random"):
        (folder / name).write_bytes(rng.bytes(4096))
    (folder / "empty.h5").write_bytes(b"")
    for name in ("small.h5", "small.keras"):
        data = (folder / name).read_bytes()
        (folder / f"truncated_{name}").write_bytes(data[: len(data) // 2])
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(4, 3, name="c")(inputs)
    x = tf.keras.layers.MaxPooling2D()(x)
    other = tf.keras.Model(inputs, tf.keras.layers.Dense(3)(tf.keras.layers.Flatten()(x)))
    other.save_weights(folder / "other.weights.h5")  # tf-keras's newer layout
    other.save_weights(folder / "other.h5")  # the layout `weights_file` reads by layer order
    return folder


def test_weights_files_that_are_no_weights_are_named(weights_files):
    f = weights_files
    fix = ("give the .h5 file of a model's save_weights, a larq-zoo release .h5, or a .keras "
           "model of this model.")
    expected = {
        "random.h5": "is not a Keras weights file: its bytes are neither HDF5 nor a .keras "
                     f"archive; {fix}",
        "random.weights.h5": "is not a Keras weights file: its bytes are neither HDF5 nor a "
                             f".keras archive; {fix}",
        "random.keras": "is not a Keras weights file: its bytes are neither HDF5 nor a .keras "
                        f"archive; {fix}",
        "random": f"is not a Keras weights file: its bytes are neither HDF5 nor a .keras "
                  f"archive; {fix}",
        "empty.h5": f"is empty; {fix}",
        "truncated_small.keras": "is a damaged zip archive (truncated, or not completely "
                                     f"downloaded); {fix}",
    }
    for name, rest in expected.items():
        with pytest.raises(BnnError) as info:
            models.create_model(SMALL, weights=str(f / name), **SMALL_OPTIONS)
        assert str(info.value) == f"Weights file {f / name} {rest}", name
    with pytest.raises(BnnError) as info:
        models.create_model(SMALL, weights=str(f / "truncated_small.h5"), **SMALL_OPTIONS)
    assert str(info.value).startswith(f"Weights file {f / 'truncated_small.h5'} is damaged "
                                      "(truncated file: eof = ")
    assert str(info.value).endswith("); save or download it again.")
    # The intact files load (the .keras model's weights, not its config).
    want = models.create_model(SMALL, weights=str(f / "small.h5"), **SMALL_OPTIONS)
    got = models.create_model(SMALL, weights=str(f / "small.keras"), **SMALL_OPTIONS)
    for a, b in zip(want.get_weights(), got.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_foreign_weights_file_names_the_first_layer_that_does_not_fit(weights_files):
    f = weights_files
    fix = ("build the model with the input_shape, num_classes, include_top and options the "
           "file was saved with, or give a weights file of this model.")
    # tf-keras's newer layout addresses layers by class and order: Keras said "Layer 'conv1'
    # expected 1 variables, but received 0".
    with pytest.raises(BnnError) as info:
        models.create_model("binarynet", weights=str(f / "other.weights.h5"), **TINY)
    assert str(info.value) == (
        f"{f / 'other.weights.h5'} does not fit binarynet: layer 2 'conv1' (QuantConv2D, "
        f"'layers/quant_conv2d' in the file) has (3, 3, 1, 128) in the model and nothing in the "
        f"file; {fix}")
    # A file without the model's layer names selects the larq-zoo variant, which an 8x8 input
    # is too small for: Keras said "Exception encountered when calling layer
    # "section3_transition_pool" (type MaxPooling2D)".
    with pytest.raises(BnnError) as info:
        models.create_model("quicknet-small", weights=str(f / "other.h5"),
                            **QUICKNET_SMALL_OPTIONS)
    assert str(info.value) == (
        f"{f / 'other.h5'} does not fit quicknet-small: weighted layer 1 is 'c' with "
        "(3, 3, 1, 4), (4,) in the file and 'stem_conv' with (3, 3, 1, 8) in the model; "
        f"{fix[:-1]} (a file without quicknet-small's layer names selects the larq-zoo "
        "variant, which `input_shape` 8,8,1 is too small for).")


def test_a_zoo_file_that_fits_but_whose_variant_cannot_be_built_asks_for_a_larger_input(
        tmp_path):
    from models import weights_file

    default = models.create_model("quicknet-small", **QUICKNET_SMALL_OPTIONS)
    path = tmp_path / "renamed.h5"
    with h5py.File(path, "w") as f:  # the default variant's weights under larq-zoo-like names
        names = []
        for index, layer in enumerate(weights_file.model_layers(default)):
            group = f.create_group(f"zoo_{index}")
            weight_names = [f"zoo_{index}/w{j}:0" for j in range(len(layer.weights))]
            for weight_name, weight in zip(weight_names, layer.weights):
                group.create_dataset(weight_name, data=weight.numpy())
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            names.append(f"zoo_{index}".encode())
        f.attrs["layer_names"] = names
    with pytest.raises(BnnError) as info:
        models.create_model("quicknet-small", weights=str(path), **QUICKNET_SMALL_OPTIONS)
    assert str(info.value) == (
        f"Weights file {path} has none of quicknet-small's layer names (a larq-zoo file?): a "
        "file without quicknet-small's layer names selects the larq-zoo variant, which "
        "`input_shape` 8,8,1 is too small for; give a larger `input_shape` (larq-zoo's models "
        "take 224,224,3), or a weights file saved from quicknet-small itself.")


def test_weights_from_a_model_file_with_a_lambda_never_run_its_code(tmp_path):
    """Weights are read from a full-model .h5 without deserializing its config: the Lambda
    that the file carries never runs (by layer order here, and in Keras's own load_weights)."""
    from tests.lambda_models import lambda_model, marker_writing_lambda

    marker = tmp_path / "MARKER"
    source = models.create_model(SMALL, **SMALL_OPTIONS)
    source.set_weights([np.full(w.shape, 0.5, "float32") for w in source.get_weights()])
    tail = tf.keras.layers.Lambda(marker_writing_lambda(marker), name="evil")(source.output)
    tf.keras.Model(source.input, tail).save(tmp_path / "full.h5")
    small = lambda_model(marker)
    small.save(tmp_path / "small.h5")
    small.save(tmp_path / "small.keras")
    marker.unlink()
    loaded = models.create_model(SMALL, weights=str(tmp_path / "full.h5"), **SMALL_OPTIONS)
    for a, b in zip(loaded.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    same = lambda_model(tmp_path / "other_marker")  # builds (and runs) its own lambda
    for name in ("small.h5", "small.keras"):
        same.load_weights(tmp_path / name)
    np.testing.assert_array_equal(same.get_layer("dense").kernel.numpy(),
                                  small.get_layer("dense").kernel.numpy())
    assert not marker.exists()


def test_cli_train_names_a_weights_file_that_is_no_weights(weights_files, tmp_path):
    from tests.conftest import TINY_TRAIN_OPTIONS, invoke

    for name, what in (("random.h5", "is not a Keras weights file"),
                       ("truncated_small.h5", "is damaged (truncated file: eof = ")):
        run = tmp_path / name
        result = invoke(["train", SMALL, "--weights", weights_files / name, "-o", run,
                         *TINY_TRAIN_OPTIONS, "--model-option", "widths=[8,8]"])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Internal error" not in result.output, result.output
        assert lines[0].startswith(f"Error: Weights file {weights_files / name} {what}")
        assert not run.exists()


def test_model_options_are_what_the_entry_lets_the_user_set_with_its_defaults():
    """Read from the builder an entry calls, without building: an argument the entry sets
    itself is no option, and a default the entry chooses is shown as the entry's."""
    import larq as lq

    from models.registry import model_options, options_text

    birealnet = model_options("birealnet18")
    assert "bn_momentum" not in birealnet and "stem_relu" not in birealnet  # Bi-Real Net's own
    assert "stage_blocks" not in birealnet and "zoo" not in birealnet
    assert isinstance(birealnet["input_quantizer"], lq.quantizers.ApproxSign)
    resnet_e = model_options("binary-resnet-e18")
    assert resnet_e["bn_momentum"] == 0.9 and resnet_e["kernel_quantizer"].clip_value == 1.25
    assert list(model_options("real-to-binary-net")) == ["stage", "variant"]
    assert model_options("real-to-binary-net")["stage"] == "bnn"
    assert options_text("binarynet") == ('input_quantizer="ste_sign", kernel_quantizer='
                                         '"ste_sign", kernel_constraint="weight_clip", '
                                         "hidden_units=1024")
    # Every option of every entry is one create_model takes (an unknown one is refused).
    for name in models.list_models():
        for key in model_options(name):
            from models.common import BuilderCall, probing_builders

            with probing_builders(), pytest.raises(BuilderCall):
                models.get_entry(name).fn(**{key: model_options(name)[key]})


def test_every_none_default_says_what_it_stands_for():
    """A None default is the builder's own choice: its docstring says which, and `bnn models
    NAME` shows it, for every option of every entry."""
    from models.registry import model_options, none_default_meanings

    for name in models.list_models():
        meanings = none_default_meanings(name)
        unexplained = [key for key, value in model_options(name).items()
                       if value is None and not meanings.get(key)]
        assert not unexplained, f"{name}: {unexplained}"
    assert none_default_meanings("dorefanet")["fc6_parts"] == (
        "as few as LCE's converter folds, i.e. 2 at 224 px with 4096 units, else 1; 1 in variant "
        "\"larq-zoo\"")
    assert none_default_meanings("binary-densenet28")["dilation_rate"] == "1 in every block"


def test_bnn_models_name_shows_options_recipe_and_zoo_differences_at_80_columns():
    result = invoke(["models", "quicknet"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    at = lines.index("quicknet options (--model-option KEY=VALUE, with their defaults):")
    assert lines[at + 1:at + 6] == ["  section_blocks = (4, 4, 4, 4)",
                                    "  section_filters = (64, 128, 256, 512)",
                                    "  input_quantizer = None: `SteSign(clip_value=1.25)`",
                                    "  kernel_quantizer = None: `SteSign(clip_value=1.25)`",
                                    "  kernel_constraint = None: `WeightClip(1.25)`"]
    assert "paper recipe (--recipe paper):" in lines
    assert " ".join(lines).count("5 warm-up epochs, then cosine schedule; 600 epochs") == 1
    assert "vs larq-zoo (larq-zoo 2.4.0 larq_zoo/sota/quicknet.py QuickNet):" in lines
    staged = invoke(["models", "reactnet-a", "--input-shape", "32,32,3", "--num-classes", "10",
                     "--model-option", "widths=[8,16,16]"])
    assert staged.exit_code == 0, staged.output
    assert re.search(r"^reactnet-a +4,122 ", staged.stdout, re.M)  # the option applied
    assert "  stage step1: adam at 0.0005" in staged.stdout
    refused = invoke(["models", "*net*", "--model-option", "variant=larq-zoo"])
    assert refused.exit_code == 2
    assert "--model-option applies to one model: give its name as PATTERN." in refused.output
