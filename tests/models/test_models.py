"""Tests for the model family (models/*): parameter parity with larq-zoo, small and ImageNet inputs,
deterministic layer names, LCE-friendly layers, LCE conversion and save/load."""

import models  # noqa: F401  (must come before tensorflow)

import dataclasses
import functools
import re
from typing import Tuple

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import model_stats
from bnn_keras.binary import is_binary_conv
from bnn_keras.errors import BnnError
from tests.conftest import SMALL_REGISTRY_INPUT, free_keras_memory
from tests.models.zoo_reference import zero_initializers

ALL_MODELS = models.list_models()

# larq-zoo's published parameter counts at 224x224x3 and 1000 classes (larq-zoo's
# documentation and `lq.models.summary`).
ZOO_PARAMS = {
    "binary-densenet28": 5_150_504,
    "binary-densenet37": 8_734_120,
    # Dilation adds no weights: same count as BinaryDenseNet37.
    "binary-densenet37-dilated": 8_734_120,
    "binary-densenet45": 13_939_240,
    "binary-resnet-e18": 11_699_368,
    "birealnet18": 11_699_112,
    "xnornet": 62_396_768,
    "binary-alexnet": 61_859_192,
    "dorefanet": 62_403_912,
}

# larq-zoo's QuickNet tables come from larq's model summary, which folds BatchNormalization's
# moving statistics into its scale and offset: 2 weights per channel where Keras counts 4.
# larq's summary count (BatchNorm moving statistics left out), as larq-zoo's tables give it.
ZOO_SUMMARY_PARAMS = {
    "quicknet-small": 12_655_688,
    "quicknet": 13_234_088,
    "quicknet-large": 23_342_248,
    "meliusnet22": 6_944_584,
}

# Layer names Keras generates when a layer is created without a name.
AUTO_NAME = re.compile(
    r"^(conv2d|quant_conv2d|batch_normalization|activation|add|concatenate|max_pooling2d|"
    r"average_pooling2d|reshape|dense|flatten|re_lu|p_re_lu|global_average_pooling2d)(_\d+)?$"
)


@pytest.fixture
def _zero_initializers():
    """`zero_initializers()` for the test: its models are read for their layers, shapes,
    statistics and regularization terms, never for an initial weight's value."""
    with zero_initializers():
        yield


def _batch(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, *shape)).astype("float32")


@pytest.mark.usefixtures("frees_keras_memory")
@pytest.mark.parametrize("name,expected", sorted(ZOO_PARAMS.items()))
def test_parameter_count_matches_larq_zoo(name, expected):
    with zero_initializers():  # only the weights' shapes are read
        model = models.create_model(name, input_shape=(224, 224, 3), num_classes=1000)
    assert model.count_params() == expected


# Keras's count_params of the same models (what `bnn models` shows): BatchNorm's moving
# statistics included.
KERAS_PARAMS = {
    "quicknet-small": 12_664_344,
    "quicknet": 13_243_720,
    "quicknet-large": 23_359_304,
    "meliusnet22": 6_969_672,
}


@pytest.mark.usefixtures("frees_keras_memory")
@pytest.mark.parametrize("name,expected", sorted(ZOO_SUMMARY_PARAMS.items()))
def test_parameter_count_matches_larq_zoo_summary(name, expected):
    with zero_initializers():  # only the weights' shapes are read
        model = models.create_model(name, input_shape=(224, 224, 3), num_classes=1000)
    assert lq.models.ModelProfile(model).weight_count() == expected
    assert model.count_params() == KERAS_PARAMS[name]
    # The entry's docstring gives both counts and says which is which.
    doc = " ".join(models.get_model_fn(name).__doc__.split())
    assert f"{KERAS_PARAMS[name]:,}" in doc and f"{expected:,}" in doc
    assert "count_params" in doc and "larq's model summary" in doc
    # The Keras count adds 2 moving statistics per channel of every BN with scale and offset.
    folded = sum(
        2 * layer.gamma.shape[0] for layer in model.layers
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.scale
    )
    assert model.count_params() == expected + folded


@pytest.mark.parametrize("name,expected", sorted(ZOO_PARAMS.items()))
def test_docstring_parameter_counts_are_keras_counts(name, expected):
    """An entry's docstring that gives a parameter count gives the one `bnn models` shows
    (Keras's count_params, which `test_parameter_count_matches_larq_zoo` checks)."""
    doc = " ".join(models.get_model_fn(name).__doc__.split())
    counts = re.findall(r"([\d,]{7,}) parameters", doc)
    assert counts in ([], [f"{expected:,}"]), (name, counts)


# Deeper or wider siblings of models whose builder the fast tests convert, save and build without
# the top anyway (the dilated DenseNet only adds dilation, which the slow run checks; QuickNet-
# Small and -Large are `quicknet` with other section filters or blocks); each conversion takes
# 7-80 s on the shared 2 cores and each build 1-2 s, which would push the fast suite past its
# budget.
DEEPER_SIBLINGS = {
    "binary-densenet37",
    "binary-densenet37-dilated",
    "binary-densenet45",
    "binary-resnet-e34",
    "birealnet34",
    "quicknet-small",
    "quicknet-large",
}


def _fast_unless_deeper_sibling(names, fast=()):
    """`names` with the deeper siblings (but those in `fast`) marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in DEEPER_SIBLINGS - set(fast) else n
            for n in names]


# Options that give a registry model the same layers with fewer units or filters. Converting,
# saving and building the AlexNet family at 32 px with fc6 and fc7 at 4096 units (29-30M
# weights) takes 8-10 s per model on the shared 2 cores, QuickNet 6 s; these builds take 2-3 s.
# The fast tests check each of these models on its narrow build ("NAME:narrow") and the slow
# ones at its published widths. (Not ReActNet-A: narrowed, its size prediction is 7.6-8.6% above
# LCE's file, outside the 5% that `test_prediction_matches_conversion_at_small_input` holds.)
NARROW_OPTIONS = {
    "binary-alexnet": dict(hidden_units=64),
    "bnn-plus-alexnet": dict(hidden_units=64),
    "compact-bnn": dict(hidden_units=64),
    "dorefanet": dict(hidden_units=64),
    "xnornet": dict(hidden_units=64),
    "quicknet": dict(section_filters=(16, 32, 64, 128)),
}
NARROW = ":narrow"


def _registry_builds(names):
    """The `small_model` parameters of `names`: a model of `NARROW_OPTIONS` twice, narrow and
    at its widths (slow); the deeper siblings slow."""
    builds = []
    for name in names:
        if name in NARROW_OPTIONS:
            builds += [name + NARROW, pytest.param(name, marks=pytest.mark.slow)]
        else:
            builds += _fast_unless_deeper_sibling([name])
    return builds


@dataclasses.dataclass
class RegistryBuild:
    """A registry model built once and shared by the tests of one module: they only read it
    (no fit, no weight assignment, no compile)."""

    name: str  # the registry name
    model: tf.keras.Model
    # The parameter: `name`, or `name + NARROW` for its build with `NARROW_OPTIONS[name]`.
    key: str = ""
    # What larq logged while the model was built (its "starved weights" warning, for one).
    larq_log: Tuple[str, ...] = ()

    @functools.cached_property
    def outputs(self) -> np.ndarray:
        """`model(_batch(input shape), training=False)`, computed once for the tests that read
        it (each eager call of a deep model takes a fraction of a second)."""
        return self.model(_batch(self.model.input_shape[1:]), training=False).numpy()


# A build takes 1-10 s on the shared 2 cores: each model is built once at SMALL_REGISTRY_INPUT
# for all the tests below that take `small_model` (pytest runs a module-scoped parameter's
# tests together, then frees it).
@pytest.fixture(scope="module")
def small_model(request) -> RegistryBuild:
    """The registry model `request.param` at `SMALL_REGISTRY_INPUT` (parametrize indirectly),
    with `NARROW_OPTIONS` for a parameter "NAME:narrow"."""
    import logging

    name = request.param.removesuffix(NARROW)
    options = NARROW_OPTIONS[name] if request.param.endswith(NARROW) else {}
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    larq_logger = logging.getLogger("larq")
    larq_logger.addHandler(handler)
    try:
        model = models.create_model(name, **SMALL_REGISTRY_INPUT, **options)
    finally:
        larq_logger.removeHandler(handler)
    yield RegistryBuild(name, model, request.param, tuple(r.getMessage() for r in records))
    free_keras_memory()  # after the last test of this model


# The feature extractors' input: 1 channel, as grayscale data sets (MNIST's 28x28).
FEATURE_INPUT = (28, 28, 1)


@pytest.fixture(scope="module")
def feature_extractor(request) -> RegistryBuild:
    """The registry model `request.param` with `include_top=False` on `FEATURE_INPUT`
    (parametrize indirectly): built once for the tests that read it."""
    return RegistryBuild(
        request.param, models.create_model(request.param, input_shape=FEATURE_INPUT,
                                           include_top=False))


@pytest.mark.parametrize("small_model", _registry_builds(ALL_MODELS), indirect=True)
def test_small_input_model_is_complete_named_and_lce_friendly(small_model):
    name, model = small_model.name, small_model.model
    assert model.input_shape == (None, 32, 32, 3)
    y = small_model.outputs  # on _batch((32, 32, 3))
    assert y.shape == (2, 10)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)  # softmax rows, float32 rounding
    stem = model.layers[1]
    assert (stem.kernel_size, stem.strides) == ((3, 3), (1, 1))
    # Every binary layer has a latent weight constraint (larq's advice) or says on purpose that
    # it needs none (`bnn_keras.constraints.NoClip`): larq warns about none of them.
    assert small_model.larq_log == ()
    # Explicit, unique names: weights load by name and a converted graph can be read.
    names = [layer.name for layer in model.layers]
    assert [n for n in names if AUTO_NAME.match(n)] == []
    assert len(set(names)) == len(names)
    # LCE-friendly: no binary Dense, +1 padding on every binary "same" conv.
    assert [l.name for l in model.layers if isinstance(l, lq.layers.QuantDense)] == []
    for layer in model.layers:
        if is_binary_conv(layer) and layer.padding == "same":
            assert layer.pad_values == 1.0, layer.name
    if name != "dorefanet":
        assert model_stats.count_binary_convs(model) > 0


# The dilated DenseNet's feature extractor is built anyway, for its own test below; the
# 34-layer ResNetE and Bi-Real Net and QuickNet-Small (~1 s each) stay fast too, so that
# `make test` keeps one feature extractor per family and depth it had before.
@pytest.mark.parametrize("feature_extractor", _fast_unless_deeper_sibling(
    ALL_MODELS, fast={"binary-densenet37-dilated", "binary-resnet-e34", "birealnet34",
                      "quicknet-small"}), indirect=True)
def test_include_top_false_gives_the_feature_extractor_on_1_channel_inputs(feature_extractor):
    model = feature_extractor.model
    assert model.input_shape == (None, 28, 28, 1)
    assert "predictions" not in [layer.name for layer in model.layers]
    assert len(model.output_shape) == 4  # (batch, height, width, channels)
    features = feature_extractor.outputs  # on _batch((28, 28, 1))
    assert features.shape[0] == 2 and np.isfinite(features).all()


@pytest.mark.slow
@pytest.mark.usefixtures("frees_keras_memory")
@pytest.mark.parametrize("name", ALL_MODELS)
def test_imagenet_input_gives_probabilities_with_the_large_stem(name):
    model = models.create_model(name, input_shape=(224, 224, 3), num_classes=1000)
    y = model(_batch((224, 224, 3), n=1), training=False).numpy()
    assert y.shape == (1, 1000)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)
    stem = model.layers[1]
    if name.startswith("quicknet"):  # 3x3/2 conv, then a 3x3/2 depthwise conv: 224 -> 56
        assert stem.strides == (2, 2)
        assert model.get_layer("section1_block1_conv").input_shape[1:3] == (56, 56)
    elif name == "reactnet-a":  # 3x3/2 conv + BN: 224 -> 112, the first block keeps it
        assert stem.strides == (2, 2)
        assert model.get_layer("block1_conv3x3").input_shape[1:3] == (112, 112)
    elif name == "meliusnet22":  # 3x3/2 conv, grouped 3x3 convs, then a 2x2 max-pool: 224 -> 56
        assert stem.strides == (2, 2)
        assert model.get_layer("section1_block1_dense_bn").input_shape[1:3] == (56, 56)
    else:
        assert stem.kernel_size[0] >= 7 and stem.strides[0] >= 2


# The shared build at SMALL_REGISTRY_INPUT: 32x32x3, 10 classes.
@pytest.mark.parametrize("small_model", ["binary-alexnet" + NARROW], indirect=True)
def test_binary_fully_connected_layers_are_1x1_convs_after_a_reshape(small_model):
    model = small_model.model
    assert model.input_shape == (None, 32, 32, 3)
    flatten, fc6 = model.get_layer("fc_reshape"), model.get_layer("fc6")
    assert isinstance(flatten, tf.keras.layers.Reshape)
    assert flatten.output_shape == (None, 1, 1, 3 * 3 * 256)
    # The quantizer sits inside the conv, after the reshape: LCE sees quantize -> bconv.
    assert fc6.input is flatten.output
    assert fc6.kernel_size == (1, 1) and is_binary_conv(fc6)
    assert fc6.kernel.shape == (1, 1, 2304, 64)  # 64 hidden units (NARROW_OPTIONS)


@pytest.mark.parametrize("small_model", ["birealnet18"], indirect=True)
def test_birealnet_uses_approx_sign_and_magnitude_aware_weights(small_model):
    model = small_model.model
    assert model.input_shape == (None, 32, 32, 3)
    conv = model.get_layer("block2_layer1_conv")
    assert isinstance(conv.input_quantizer, lq.quantizers.ApproxSign)
    assert isinstance(conv.kernel_quantizer, lq.quantizers.MagnitudeAwareSign)
    assert conv.strides == (2, 2)
    # ResNetE's extra stem BN and head ReLU are absent (the 256-parameter difference at 224).
    assert "head_relu" not in [l.name for l in model.layers]


@pytest.mark.usefixtures("_zero_initializers")
def test_stride_2_stem_halves_every_feature_map_with_the_same_parameters():
    options = dict(input_shape=(28, 28, 1), num_classes=10, stage_filters=[32, 64, 128, 256])
    full = models.create_model("binary-resnet-e18", **options)
    strided = models.create_model("binary-resnet-e18", stem_strides=2, **options)
    assert full.get_layer("block1_layer1_conv").output_shape[1:3] == (28, 28)
    assert strided.get_layer("block1_layer1_conv").output_shape[1:3] == (14, 14)
    assert strided.get_layer("block4_layer4_conv").output_shape[1:3] == (2, 2)
    assert strided.count_params() == full.count_params()
    # Binary MACs per output position of each stage's four 3x3 convs (the first one widens),
    # times the stage's positions: 28, 14, 7, 4 -> 14, 7, 4, 2 ("same" strides round 7/2 up).
    per_position = [9 * 4 * 32 * 32, 9 * (32 * 64 + 3 * 64 * 64),
                    9 * (64 * 128 + 3 * 128 * 128), 9 * (128 * 256 + 3 * 256 * 256)]
    for model, sides in ((full, (28, 14, 7, 4)), (strided, (14, 7, 4, 2))):
        expected = sum(m * side * side for m, side in zip(per_position, sides))
        assert model_stats.model_summary(model).binary_macs == expected
    with pytest.raises(BnnError, match="Expected stem_strides 1 or 2, got 3"):
        models.create_model("binary-resnet-e18", stem_strides=3, **options)


# The blur kernel is QuickNet's own fixed initializer, which `zero_initializers` leaves alone.
@pytest.mark.usefixtures("_zero_initializers")
def test_quicknet_blocks_keep_their_shape_and_transitions_blur_pool_in_float():
    filters = [16, 32, 64, 128]
    model = models.create_model(
        "quicknet", input_shape=(28, 28, 1), num_classes=10, section_filters=filters
    )
    binary = [l for l in model.layers if is_binary_conv(l)]
    assert len(binary) == 16
    for layer in binary:  # every binary conv is 3x3, stride 1, as many channels out as in
        assert layer.kernel_size == (3, 3) and layer.strides == (1, 1)
        assert layer.input_shape[-1] == layer.filters
    # conv -> ReLU -> BN -> add: the ReLU sits on the binary path, before BN (LCE fuses both).
    assert model.get_layer("section2_block3_relu").input is model.get_layer(
        "section2_block3_conv").output
    assert model.get_layer("section2_block3_bn").input is model.get_layer(
        "section2_block3_relu").output
    # Transitions: max-pool 2 with stride 1, then a fixed binomial blur with stride 2.
    blur = model.get_layer("section3_transition_blurpool")
    assert not blur.trainable and blur.strides == (2, 2)
    kernel = blur.depthwise_kernel.numpy()
    np.testing.assert_allclose(kernel[:, :, 5, 0], np.outer([1, 2, 1], [1, 2, 1]) / 16.0)
    assert model.get_layer("section3_transition_conv").kernel_size == (1, 1)
    # Sections at 28, 14, 7, 3 pixels (28 -> pool 27 -> stride 2 "same" 14 -> 13 -> 7 -> 6 -> 3).
    sides = [model.get_layer(f"section{s}_block1_conv").output_shape[1] for s in (1, 2, 3, 4)]
    assert sides == [28, 14, 7, 3]
    expected = sum(4 * 9 * f * f * side * side for f, side in zip(filters, sides))
    stats = model_stats.model_summary(model)
    assert stats.binary_macs == expected
    assert stats.binary_mac_fraction > 0.95
    with pytest.raises(BnnError, match="one entry per section"):
        models.create_model("quicknet", input_shape=(28, 28, 1), section_blocks=[1, 1])


# Three sections of two blocks, a stride-2 stem: QuickNet's options at their smallest.
QUICKNET_STRIDE_TWO = dict(input_shape=(28, 28, 1), num_classes=10, section_filters=[32, 64, 128],
                           section_blocks=[2, 2, 2], stem_strides=2)


@pytest.fixture(scope="module")
def quicknet_stride_two() -> tf.keras.Model:
    """QuickNet with `QUICKNET_STRIDE_TWO`, built once for the tests that read its layers and
    statistics (zero kernels: `zero_initializers`)."""
    with zero_initializers():
        return models.create_model("quicknet", **QUICKNET_STRIDE_TWO)


def test_quicknet_stride_two_stem_halves_every_section(quicknet_stride_two):
    filters = QUICKNET_STRIDE_TWO["section_filters"]
    model = quicknet_stride_two
    assert model.get_layer("stem_conv").strides == (2, 2)
    # 28 -> 14 in the stem, then 14 -> pool 13 -> 7 -> 6 -> 3 in the transitions.
    sides = [model.get_layer(f"section{s}_block1_conv").output_shape[1] for s in (1, 2, 3)]
    assert sides == [14, 7, 3]
    expected = sum(2 * 9 * f * f * side * side for f, side in zip(filters, sides))
    assert model_stats.model_summary(model).binary_macs == expected
    with pytest.raises(BnnError, match="Expected stem_strides 1 or 2, got 4"):
        models.create_model("quicknet", input_shape=(28, 28, 1), stem_strides=4)


@pytest.mark.usefixtures("_zero_initializers")
def test_quicknet_full_resolution_conv_before_a_stride_two_stem(quicknet_stride_two):
    plain = quicknet_stride_two
    model = models.create_model("quicknet", stem_input_filters=16, **QUICKNET_STRIDE_TWO)
    assert model.get_layer("stem_input_conv").output_shape == (None, 28, 28, 16)
    assert model.get_layer("stem_conv").output_shape == (None, 14, 14, 32)
    assert [l.name for l in model.layers[1:5]] == [
        "stem_input_conv", "stem_input_bn", "stem_input_relu", "stem_conv"]
    stats, plain_stats = model_stats.model_summary(model), model_stats.model_summary(plain)
    assert stats.binary_macs == plain_stats.binary_macs
    # A 3x3 conv 1 -> 16 at 28x28, and the stem's 3x3/2 conv now reads 16 channels, not 1.
    added = 28 * 28 * 9 * 16 + 14 * 14 * 9 * 32 * (16 - 1)
    assert stats.total_macs - plain_stats.total_macs == added
    # The conv, its BN (scale, offset and the two moving statistics), the wider stem conv.
    assert stats.total_params - plain_stats.total_params == 9 * 16 + 4 * 16 + 9 * 32 * 15
    with pytest.raises(BnnError, match="Expected stem_input_filters >= 0, got -1"):
        models.create_model("quicknet", input_shape=(28, 28, 1), stem_input_filters=-1)


# The feature extractor's build at FEATURE_INPUT (28x28x1).
@pytest.mark.parametrize("feature_extractor", ["binary-densenet37-dilated"], indirect=True)
def test_dilated_densenet_keeps_resolution_in_the_dilated_blocks(feature_extractor):
    model = feature_extractor.model
    assert model.input_shape == (None, 28, 28, 1)
    assert model.get_layer("block4_layer1_conv").dilation_rate == (4, 4)
    # Only the first transition pools: 28 -> 14, then blocks 3 and 4 dilate instead.
    assert model.output_shape == (None, 14, 14, 640)


@pytest.mark.usefixtures("_zero_initializers")
def test_bnn_plus_alexnet_has_scaled_sign_swish_layers_with_regularizer():
    from bnn_keras import layers as bnn_layers
    from bnn_keras import quantizers as bnn_quantizers

    model = models.create_model(
        "bnn-plus-alexnet", input_shape=(32, 32, 3), num_classes=10, trainable_beta=True
    )
    scaled = [l for l in model.layers if isinstance(l, bnn_layers.ScaledQuantConv2D)]
    assert [l.name for l in scaled] == ["conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert all(isinstance(l.input_quantizer, bnn_quantizers.SignSwish) for l in scaled)
    # One BNN+ regularization term per scaled layer.
    assert len(model.losses) == 6
    # First and last layers full precision.
    assert type(model.get_layer("conv1")) is tf.keras.layers.Conv2D
    assert type(model.get_layer("fc8")) is tf.keras.layers.Dense
    # One trainable beta per quantizer (input and kernel of each of the 6 layers).
    betas = [w for w in model.trainable_weights if "sign_swish" in w.name and w.shape == ()]
    assert len(betas) == 12


# bases=1 is the default: the shared narrow build at SMALL_REGISTRY_INPUT (32x32x3, 10 classes).
@pytest.mark.parametrize("small_model, bases", [
    pytest.param("compact-bnn" + NARROW, 1, id="1"),
    pytest.param("compact-bnn" + NARROW, 3, id="3"),
], indirect=["small_model"], scope="module")  # module: grouped with compact-bnn's other tests
def test_compact_bnn_options(small_model, bases):
    from bnn_keras import layers as bnn_layers

    if bases == 1:
        model = small_model.model
        assert model.input_shape == (None, 32, 32, 3)
    else:
        with zero_initializers():  # only layers and regularization terms are counted
            model = models.create_model(
                "compact-bnn", input_shape=(32, 32, 3), num_classes=10, bases=bases,
                **NARROW_OPTIONS["compact-bnn"])
    assert isinstance(model.get_layer("conv2_act"), tf.keras.layers.PReLU)
    assert isinstance(model.get_layer("logits_scale"), bnn_layers.LearnableScale)
    # conv2..conv5 and fc6..fc8 are binary, each with `bases` binary convolutions.
    assert model_stats.count_binary_convs(model) == 7 * bases
    # One bipolar term per binary kernel.
    assert len(model.losses) == 7 * bases


@pytest.mark.usefixtures("_zero_initializers")
def test_compact_bnn_relu_option_without_bipolar_regularizer():
    relu = models.create_model(
        "compact-bnn", input_shape=(32, 32, 3), num_classes=10, activation="relu",
        bipolar_factor=0.0,
    )
    assert isinstance(relu.get_layer("conv2_act"), tf.keras.layers.ReLU)
    assert relu.losses == []


def _lce_op_histogram(model):
    """LCE's ops for `model` (bnn's conversion: LCE's own bytes, tests/convert checks that)."""
    from convert.converter import convert_to_flatbuffer

    return convert_to_flatbuffer(model, target="arm64").ops


@pytest.mark.parametrize("small_model", _registry_builds(ALL_MODELS), indirect=True)
def test_lce_conversion_has_one_bconv_per_binary_conv(small_model, small_registry_flatbuffer):
    name, model = small_model.name, small_model.model
    expected = model_stats.count_binary_convs(model)
    if name == "dorefanet":
        assert expected == 0
        pytest.skip("DoReFa-Net's 2-bit activations are not accelerated by LCE: no LceBconv2d")
    # LCE's converter for target "arm", once per suite (the size predictions below read it too).
    ops = small_registry_flatbuffer(small_model.key, model).ops
    assert ops["LceBconv2d"] == expected
    assert ops["LceBconv2d"] > 0


@pytest.mark.parametrize("small_model", _registry_builds(ALL_MODELS), indirect=True)
def test_prediction_matches_conversion_at_small_input(small_model, small_registry_flatbuffer):
    """`bnn summary`'s prediction (`model_stats.model_summary`) of the LceBconv2d count and the
    flatbuffer size, against LCE's conversion of the same build (shared with the test above)."""
    stats = model_stats.model_summary(small_model.model)
    flatbuffer = small_registry_flatbuffer(small_model.key, small_model.model)
    assert stats.lce_bconvs == flatbuffer.ops.get("LceBconv2d", 0)
    assert abs(stats.lce_size_bytes / len(flatbuffer.data) - 1) <= 0.05


def test_lce_conversion_of_multiple_bases_gives_one_bconv_per_base():
    # 64 hidden units instead of 4096: fc6 and fc7 stay binary 1x1 convs of 2 bases each, and
    # LCE converts 6.7M weights in 1.5 s where it took 8 s for 59M.
    model = models.create_model("compact-bnn", input_shape=(32, 32, 3), num_classes=10, bases=2,
                                hidden_units=64)
    ops = _lce_op_histogram(model)
    assert ops["LceBconv2d"] == model_stats.count_binary_convs(model) == 14


@pytest.mark.parametrize("small_model", _registry_builds(ALL_MODELS), indirect=True)
def test_save_and_load_reproduces_outputs(small_model, tmp_path):
    name, model = small_model.name, small_model.model
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    # The saved model has random kernels: one the file failed to restore would stay 0 here.
    with zero_initializers():
        loaded = tf.keras.models.load_model(path)
    x = _batch((32, 32, 3))
    np.testing.assert_allclose(
        loaded(x, training=False).numpy(), small_model.outputs, rtol=1e-6, atol=1e-7
    )


def test_saved_quicknet_loads_with_only_bnn_keras_imported(tmp_path):
    """`bnn convert` loads a run's model.keras without importing `models`: QuickNet's blur
    initializer must be a bnn_keras object that Keras finds by its registered name."""
    import subprocess
    import sys

    model = models.create_model("quicknet", input_shape=(16, 16, 1), num_classes=10,
                                section_filters=[8, 16, 16, 16], section_blocks=[1, 1, 1, 1])
    path = tmp_path / "quicknet.keras"
    model.save(path)
    script = (
        "import sys, bnn_keras, tensorflow as tf\n"
        "assert 'models' not in sys.modules\n"
        f"model = tf.keras.models.load_model({str(path)!r})\n"
        "print(float(model.get_layer('section2_transition_blurpool').depthwise_kernel[1, 1, 0, 0]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == 0.25  # the centre of the 3x3 binomial kernel
