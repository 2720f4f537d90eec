"""The larq-zoo variants: a zoo-shaped weights file loads by layer order into the zoo's function.

larq-zoo cannot be installed beside bnn (its protobuf pin), so the references
(`tests.models.zoo_reference`) are transcribed from larq-zoo 2.4.0's public definitions: the
same layers, created in the same order, with Keras's automatic names as in the zoo's files.
Their weights are random, their BatchNorm statistics too, and saved with `save_weights(".h5")`
as the zoo's release files are.
"""

import dataclasses
import functools
import re
from typing import Any, Dict, Tuple

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import models
from bnn_keras.errors import BnnError
from bnn_keras.quantizers import LayerScaledSign
from tests.conftest import invoke
from tests.models.zoo_reference import (
    _logits,
    _zoo_file,
    zero_initializers,
    zoo_binary_alexnet,
    zoo_binary_densenet28,
    zoo_binary_densenet37,
    zoo_binary_densenet37_dilated,
    zoo_binary_densenet45,
    zoo_binary_resnet_e18,
    zoo_birealnet,
    zoo_dorefanet,
    zoo_quicknet,
    zoo_quicknet_large,
    zoo_quicknet_small,
    zoo_xnornet,
)

CASES = {
    "binary-densenet28": (zoo_binary_densenet28, (32, 32, 3)),
    "binary-densenet37": (zoo_binary_densenet37, (16, 16, 3)),
    "binary-densenet37-dilated": (zoo_binary_densenet37_dilated, (16, 16, 3)),
    "binary-densenet45": (zoo_binary_densenet45, (16, 16, 3)),
    "binary-resnet-e18": (zoo_binary_resnet_e18, (32, 32, 3)),
    # 32 px: the zoo keeps its 7x7/2 stem where bnn's default uses a 3x3 stem.
    "birealnet18": (zoo_birealnet, (32, 32, 3)),
    # The zoo's AlexNet needs 57 px or more (three valid 3/2 max-pools after an 11x11/4 stem).
    "binary-alexnet": (zoo_binary_alexnet, (64, 64, 3)),
}


@dataclasses.dataclass
class ZooCase:
    """A zoo reference of `CASES` with random weights, its weights file, and the registry models
    loaded from that file: made once for the tests of one model, which only read them."""

    name: str
    shape: Tuple[int, int, int]
    reference: tf.keras.Model
    path: str  # the reference's `save_weights`, "zoo.h5"
    x: np.ndarray  # 4 images
    expected: np.ndarray  # the reference's logits on `x`
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # of both builders

    @functools.cached_property
    def model(self) -> tf.keras.Model:
        """`create_model(name, weights=path)`: the variant the file selects."""
        with zero_initializers():  # every weight is loaded from the file
            return models.create_model(self.name, input_shape=self.shape, num_classes=10,
                                       weights=self.path, **self.options)

    @functools.cached_property
    def default(self) -> tf.keras.Model:
        """The LCE-friendly default (`variant="bnn"`) with the same file loaded by layer order."""
        with zero_initializers():  # every weight is loaded from the file
            return models.create_model(self.name, input_shape=self.shape, num_classes=10,
                                       weights=self.path, variant="bnn", **self.options)


@pytest.fixture
def _zero_initializers():
    """`zero_initializers()` for the test: its models are only read for their layers and
    shapes, or refused."""
    with zero_initializers():
        yield


# Options of both builders (the zoo's and bnn's) for the case "NAME:narrow": BinaryAlexNet's
# fc6 and fc7 with 64 units instead of larq-zoo's 4096 (38M weights at 64 px, 5 s to build, save
# and load), the same layers. The case at 4096 units is slow.
NARROW_OPTIONS = {"binary-alexnet": dict(hidden_units=64)}
NARROW = ":narrow"


@pytest.fixture(scope="module")
def zoo_case(request, tmp_path_factory) -> ZooCase:
    """The `ZooCase` of `CASES[request.param]`, with `NARROW_OPTIONS` for "NAME:narrow"
    (parametrize indirectly)."""
    name = request.param.removesuffix(NARROW)
    options = NARROW_OPTIONS[name] if request.param.endswith(NARROW) else {}
    builder, shape = CASES[name]
    reference, path = _zoo_file(tmp_path_factory.mktemp("zoo"),
                                functools.partial(builder, **options), shape, 10)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    return ZooCase(name, shape, reference, path, x, _logits(reference, x), options)


# Slow siblings (4-10 s each): BinaryDenseNet45 is BinaryDenseNet37 (checked at the same 16 px)
# and QuickNet-Large is QuickNet, with more blocks, from the same builders (ours and the zoo's).
DEEPER_SIBLINGS = {"binary-densenet45", "quicknet-large"}


def _fast_unless_deeper_sibling(names):
    """`names` with the deeper siblings slow, and those of `NARROW_OPTIONS` narrow (the
    published width slow)."""
    params = []
    for name in names:
        if name in NARROW_OPTIONS:
            params += [name + NARROW, pytest.param(name, marks=pytest.mark.slow)]
        else:
            params.append(pytest.param(name, marks=pytest.mark.slow) if name in DEEPER_SIBLINGS
                          else name)
    return params


@pytest.mark.parametrize("zoo_case", _fast_unless_deeper_sibling(sorted(CASES)), indirect=True)
def test_zoo_weights_file_gives_the_zoos_outputs(zoo_case):
    name, shape, reference, x, expected = (
        zoo_case.name, zoo_case.shape, zoo_case.reference, zoo_case.x, zoo_case.expected)
    model = zoo_case.model
    got = _logits(model, x)
    assert np.abs(expected).max() > 1.0  # logits large enough for the comparison to mean much
    assert np.abs(expected - expected[:1]).max() > 0.1  # and depend on the input
    assert np.abs(got - expected).max() < 1e-4
    assert model.count_params() == reference.count_params()
    # The variant was chosen from the file: the zoo's zero padding in every binary 3x3 conv.
    binary = [layer for layer in model.layers if isinstance(layer, lq.layers.QuantConv2D)
              and layer.input_quantizer is not None and layer.kernel_size != (1, 1)]
    assert binary and all(layer.pad_values == 0.0 for layer in binary)

    # The same file in the LCE-friendly default loads by layer order but computes another
    # function (BiReal and AlexNet at these sizes have other stems or shapes, hence only the
    # two models whose default has the zoo's layers).
    if name in ("binary-densenet28", "binary-resnet-e18"):
        default = zoo_case.default
        assert default.input_shape == (None, *shape)
        assert all(layer.pad_values == 1.0 for layer in default.layers
                   if isinstance(layer, lq.layers.QuantConv2D) and layer.kernel_size == (3, 3))
        assert np.abs(_logits(default, x) - expected).max() > 0.1


# As XNOR-Net's below: larq-zoo's 4096 units in fc6 and fc7 are slow, 64 give the same layers.
@pytest.mark.parametrize("hidden_units", [64, pytest.param(4096, marks=pytest.mark.slow)])
def test_dorefanet_zoo_variant_scales_the_weights_per_layer(tmp_path, hidden_units):
    # 64 px: the zoo keeps its 12x12/4 stem at every size (bnn's default has a 3x3 one under
    # 50 px), and its three max-pools need 48 px or more.
    shape = (64, 64, 3)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    reference, path = _zoo_file(
        tmp_path, functools.partial(zoo_dorefanet, hidden_units=hidden_units), shape, 10,
        calibrate=x)
    expected = _logits(reference, x)

    with zero_initializers():  # every weight is loaded from the file
        model = models.create_model("dorefanet", input_shape=shape, num_classes=10, weights=path,
                                    hidden_units=hidden_units)
    assert np.abs(expected).max() > 1.0
    # The logits depend on the input: the 2-bit activations are not all rounded to 0.
    assert np.abs(expected - expected[:1]).max() > 0.1
    assert np.abs(_logits(model, x) - expected).max() < 1e-4
    assert model.count_params() == reference.count_params()
    assert isinstance(model.get_layer("fc6").kernel_quantizer, LayerScaledSign)
    # The quantizer is a registered Keras object: a saved zoo-variant model loads again.
    again = lq.layers.QuantConv2D.from_config(model.get_layer("fc7").get_config())
    assert isinstance(again.kernel_quantizer, LayerScaledSign)

    # The default's per-channel scales load the same file and give other outputs: the zoo's
    # BatchNorm statistics hold only for its per-layer scale.
    with zero_initializers():
        default = models.create_model("dorefanet", input_shape=shape, num_classes=10,
                                      weights=path, variant="bnn", hidden_units=hidden_units)
    assert isinstance(default.get_layer("fc7").kernel_quantizer,
                      lq.quantizers.MagnitudeAwareSign)
    assert np.abs(_logits(default, x) - expected).max() > 0.1


def test_layer_scaled_sign_is_one_mean_for_the_whole_kernel():
    kernel = tf.constant([[0.5, -2.0], [0.0, 1.5]])
    np.testing.assert_allclose(LayerScaledSign()(kernel).numpy(), [[1.0, -1.0], [1.0, 1.0]])
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        out = LayerScaledSign()(kernel)
    # The identity as pseudo-gradient, the scale held constant (larq-zoo's DoReFaNet).
    np.testing.assert_array_equal(tape.gradient(out, kernel).numpy(), np.ones((2, 2)))


# XNOR-Net with larq-zoo's 4096 units in fc6 and fc7 (62M weights: 17 s to build, save, load
# and run) is slow; with 64 units it has the same layers, 6x6 fc6 kernel included (3-4 s).
@pytest.mark.parametrize("hidden_units", [64, pytest.param(4096, marks=pytest.mark.slow)])
def test_xnornet_zoo_variant_gives_the_zoos_outputs(tmp_path, hidden_units):
    # The zoo's fc6 has a 6x6 kernel at every size, so its XNOR-Net takes 217 px or more.
    shape = (224, 224, 3)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    # Random statistics would make conv2's input all positive (ReLU -> max-pool -> BN): one
    # sign everywhere, and logits that do not depend on the input.
    reference, path = _zoo_file(tmp_path, functools.partial(zoo_xnornet, hidden_units=hidden_units),
                                shape, 10, calibrate=x)
    expected = _logits(reference, x)

    with zero_initializers():  # every weight is loaded from the file
        model = models.create_model("xnornet", input_shape=shape, num_classes=10, weights=path,
                                    hidden_units=hidden_units)
    assert np.abs(expected).max() > 1.0
    assert np.abs(expected - expected[:1]).max() > 0.1  # and depend on the input
    assert np.abs(_logits(model, x) - expected).max() < 1e-4
    assert model.count_params() == reference.count_params()
    assert model.get_layer("fc6").kernel_size == (6, 6)
    assert {layer.pad_values for layer in model.layers
            if isinstance(layer, lq.layers.QuantConv2D) and layer.padding == "same"} == {0.0}
    # larq-zoo's xnor_weight_scale clips the kernel to [-1, 1] before its sign and per-channel
    # mean; WeightClip(1) keeps every trained kernel there, where MagnitudeAwareSign is equal.
    kernel = model.get_layer("conv3").kernel.latent_variable
    assert float(tf.reduce_max(tf.abs(kernel))) <= 1.0
    zoo_conv3 = [layer for layer in reference.layers
                 if isinstance(layer, lq.layers.QuantConv2D)][1]
    np.testing.assert_allclose(model.get_layer("conv3").kernel_quantizer(kernel).numpy(),
                               zoo_conv3.kernel_quantizer(kernel).numpy(), rtol=1e-6)


@pytest.mark.usefixtures("_zero_initializers")  # only shapes are read
def test_xnornet_zoo_variant_keeps_the_zoo_stem_at_every_size():
    small = models.create_model("xnornet", input_shape=(40, 40, 3), num_classes=10)
    assert small.get_layer("conv1").kernel_size == (3, 3)
    # As the zoo's: 11x11/4 stem, three 3/2 max-pools and a 6x6 fc6 need 217 px.
    for side in (40, 128):
        with pytest.raises(ValueError):
            models.create_model("xnornet", input_shape=(side, side, 3), num_classes=10,
                                variant="larq-zoo")


QUICKNETS = {"quicknet-small": zoo_quicknet_small, "quicknet": zoo_quicknet,
             "quicknet-large": zoo_quicknet_large}


@pytest.mark.parametrize("name", _fast_unless_deeper_sibling(sorted(QUICKNETS)))
def test_quicknet_zoo_weights_give_the_zoos_outputs(tmp_path, name):
    # 32 px: the zoo keeps QuickNet's stem at every size, bnn's default has a 3x3 one under 50.
    shape = (32, 32, 3)
    reference, path = _zoo_file(tmp_path, QUICKNETS[name], shape, 10)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    expected = _logits(reference, x)

    with zero_initializers():  # every weight is loaded from the file
        model = models.create_model(name, input_shape=shape, num_classes=10, weights=path)
    assert np.abs(expected).max() > 1.0
    assert np.abs(expected - expected[:1]).max() > 0.1  # and depend on the input
    assert np.abs(_logits(model, x) - expected).max() < 1e-4
    assert model.count_params() == reference.count_params()
    assert model.get_layer("stem_depthwise") is not None
    # Binary convolutions pad with +1 in larq-zoo's QuickNet too.
    assert {layer.pad_values for layer in model.layers
            if isinstance(layer, lq.layers.QuantConv2D) and layer.input_quantizer} == {1.0}


def test_quicknet_default_is_the_zoos_function_from_50_px(tmp_path):
    shape = (64, 64, 3)
    reference, path = _zoo_file(tmp_path, zoo_quicknet_small, shape, 10)
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
    expected = _logits(reference, x)
    with zero_initializers():  # every weight is loaded from the file
        default = models.create_model("quicknet-small", input_shape=shape, num_classes=10,
                                      weights=path, variant="bnn")
    assert np.abs(expected).max() > 1.0
    assert np.abs(expected - expected[:1]).max() > 0.1  # and depend on the input
    assert np.abs(_logits(default, x) - expected).max() < 1e-4


# The reference of test_zoo_weights_file_gives_the_zoos_outputs, at 32x32x3 and 10 classes.
@pytest.mark.parametrize("zoo_case", ["binary-resnet-e18"], indirect=True)
def test_a_zoo_full_model_h5_loads_too(tmp_path, zoo_case):
    # `model.save("x.h5")` keeps the weights under `model_weights`.
    reference = zoo_case.reference
    assert reference.input_shape == (None, 32, 32, 3)
    path = str(tmp_path / "zoo_model.h5")
    reference.save(path)
    with zero_initializers():  # every weight is loaded from the file
        model = models.create_model("binary-resnet-e18", input_shape=(32, 32, 3),
                                    num_classes=10, weights=path)
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    assert np.abs(_logits(model, x) - _logits(reference, x)).max() < 1e-4


@pytest.mark.usefixtures("_zero_initializers")  # only the layers' configs are read
def test_default_variant_pads_with_one_and_zoo_variant_with_zero():
    kwargs = dict(input_shape=(32, 32, 3), num_classes=10)
    default = models.create_model("binary-densenet28", **kwargs)
    zoo = models.create_model("binary-densenet28", variant="larq-zoo", **kwargs)
    assert default.get_layer("block1_layer1_conv").pad_values == 1.0
    assert zoo.get_layer("block1_layer1_conv").pad_values == 0.0
    with pytest.raises(BnnError, match=r"Unknown `variant` 'zoo'; expected one of: bnn, larq-zoo"):
        models.create_model("binary-densenet28", variant="zoo", **kwargs)


@pytest.mark.parametrize("zoo_case", ["binary-resnet-e18"], indirect=True)
def test_bnn_saved_weights_keep_the_default_variant(tmp_path, zoo_case):
    # The default variant with random weights: those of the zoo file, loaded by layer order.
    model = zoo_case.default
    kwargs = dict(input_shape=(32, 32, 3), num_classes=10)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    path = str(tmp_path / "ours.h5")
    model.save_weights(path)
    with zero_initializers():  # every weight is loaded from the file
        again = models.create_model("binary-resnet-e18", weights=path, **kwargs)
    assert again.get_layer("block1_layer1_conv").pad_values == 1.0
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(_logits(again, x), _logits(model, x))


# The zoo file of test_zoo_weights_file_gives_the_zoos_outputs: 32x32x3, 10 classes.
@pytest.mark.parametrize("zoo_case", ["binary-densenet28"], indirect=True)
@pytest.mark.usefixtures("_zero_initializers")  # the models are built to be refused
def test_a_file_that_does_not_fit_names_the_first_differing_layer(zoo_case):
    path = zoo_case.path
    assert zoo_case.shape == (32, 32, 3)
    before = open(path, "rb").read()
    kwargs = dict(input_shape=(32, 32, 3), weights=path)
    # Other classes: only the classifier differs.
    with pytest.raises(BnnError) as err:
        models.create_model("binary-densenet28", num_classes=5, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(
        r"zoo.h5 does not fit binary-densenet28 \(variant larq-zoo\): weighted layer 55 is "
        r"'dense(_\d+)?' with \(576, 10\), \(10,\) in the file and 'head_dense' with "
        r"\(576, 5\), \(5,\) in the model; build the model with the input_shape, num_classes",
        message,
    ), message

    # Another architecture: the first layer whose shape differs.
    with pytest.raises(BnnError) as err:
        models.create_model("binary-densenet37", num_classes=10, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"weighted layer 15 is 'conv2d(_\d+)?' with \(1, 1, 448, 160\) in the file "
                     r"and 'transition1_conv' with \(1, 1, 448, 128\) in the model", message)

    # Fewer layers in the model (no classifier): the count, and the first layer left over.
    with pytest.raises(BnnError) as err:
        models.create_model("binary-densenet28", include_top=False, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"55 weighted layers in the file, 54 in the model; the file's layer 55 "
                     r"'dense(_\d+)?' with \(576, 10\), \(10,\) has no counterpart", message)
    assert open(path, "rb").read() == before


def test_a_missing_weights_file_is_a_bnn_error(tmp_path):
    with pytest.raises(BnnError, match="does not exist"):
        models.create_model("binary-densenet28", input_shape=(32, 32, 3), num_classes=10,
                            weights=str(tmp_path / "nope.h5"))


def test_registry_entries_say_how_they_differ_from_the_zoo():
    for name in ("binary-densenet28", "binary-densenet37", "binary-densenet37-dilated",
                 "binary-densenet45", "binary-resnet-e18", "birealnet18", "binary-alexnet",
                 "xnornet", "meliusnet22"):
        zoo = models.get_entry(name).zoo
        assert zoo is not None and zoo.source.startswith("larq-zoo 2.4.0 larq_zoo/")
        assert "pad" in zoo.differences[0]
    assert models.get_entry("binarynet").zoo is None
    dorefa = models.get_entry("dorefanet").zoo
    assert dorefa.source == "larq-zoo 2.4.0 larq_zoo/literature/dorefanet.py DoReFaNet"
    assert "per output channel" in dorefa.differences[0]
    assert "one mean|W| per layer" in dorefa.differences[0]
    for name, function in (("quicknet-small", "QuickNetSmall"), ("quicknet", "QuickNet"),
                           ("quicknet-large", "QuickNetLarge")):
        zoo = models.get_entry(name).zoo
        assert zoo.source == f"larq-zoo 2.4.0 larq_zoo/sota/quicknet.py {function}"
        assert zoo.summary == "small-input stem" and len(zoo.differences) == 1


def test_variant_rules_decide_the_stem_and_padding_for_every_family():
    """Builders read a variant's rules (`ZooVariant.rules_for`): the default's for "bnn", the
    entry's larq-zoo rules for "larq-zoo"; what an entry says in words matches its rules."""
    from models.common import (BNN_RULES, NEVER, SHORT_HEIGHT, SMALL_SIDE, VariantRules,
                               variant_rules)

    short, narrow, large = (40, 60, 3), (60, 40, 3), (64, 64, 3)
    side, height, never = (VariantRules(small_stem=rule) for rule in
                           (SMALL_SIDE, SHORT_HEIGHT, NEVER))
    assert [side.uses_small_stem(s) for s in (short, narrow, large)] == [True, True, False]
    assert [height.uses_small_stem(s) for s in (short, narrow, large)] == [True, False, False]
    assert [never.uses_small_stem(s) for s in (short, narrow, large)] == [False] * 3
    assert BNN_RULES == VariantRules(pad_value=1.0, small_stem=SMALL_SIDE, family={})
    assert variant_rules("larq-zoo", never) is never and variant_rules("bnn", never) is BNN_RULES
    with pytest.raises(BnnError, match=r"Unknown `variant` 'zoo'; expected one of: bnn, larq-zoo"):
        variant_rules("zoo", never)
    with pytest.raises(ValueError, match="small_stem must be one of"):
        VariantRules(small_stem="sometimes")
    xnor = models.get_entry("xnornet").zoo.rules
    assert dict(xnor.family) == {"fc6_kernel": (6, 6), "fc6_parts": 1}
    with pytest.raises(TypeError):
        xnor.family["fc6_parts"] = 2  # an entry's rules are facts, not defaults to edit
    for name in models.list_models():
        zoo = models.get_entry(name).zoo
        if zoo is None:
            continue
        assert zoo.rules_for("bnn") is BNN_RULES and zoo.rules_for("larq-zoo") is zoo.rules
        # "small-input stem" in the summary: larq-zoo keeps its ImageNet stem at every size.
        assert ("small-input stem" in zoo.summary) == (zoo.rules.small_stem == NEVER), name
        assert ("pad_values 1 (zoo: 0)" in zoo.summary) <= (zoo.rules.pad_value == 0.0), name


@pytest.mark.usefixtures("_zero_initializers")  # `bnn models` reads only shapes
def test_bnn_models_says_which_models_differ_from_the_zoo():
    # binary-densenet28, binary-resnet-e18/e34, birealnet18/34.
    result = invoke(["models", "bi*[48]", "--input-shape", "32,32,3", "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["binary-densenet28"].endswith("pad_values 1 (zoo: 0)")
    assert rows["birealnet18"].endswith("pad_values 1 (zoo: 0); small-input stem")
    assert rows["binary-resnet-e34"].endswith(" -")  # larq-zoo publishes only ResNetE18
    assert "--model-option variant=larq-zoo builds the zoo's function" in result.stdout

    result = invoke(["models", "quicknet*", "--input-shape", "32,32,3", "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in ("quicknet-small", "quicknet", "quicknet-large"):
        assert rows[name].endswith(" small-input stem"), rows[name]
