"""`bnn summary`/`bnn inspect` predictions (bnn_keras.model_stats) against real LCE conversions.

The fold rule (`lce_kernel_folds`) is checked at its boundary on single 1x1 layers and on the
registry models' fc6 at ImageNet size. Every registry model's predicted LceBconv2d count and
flatbuffer size at 32x32 is checked in tests/models/test_models.py, on the build and the
conversion that module makes anyway.
"""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import pytest
import tensorflow as tf

import models
from bnn_keras import model_stats
from bnn_keras.layers import ScaledQuantConv2D
from convert.converter import convert_to_flatbuffer
from convert.lint import inspect_model

# 2**25 weights: 2**30 bits at float32, TensorFlow's constant-folding limit.
LIMIT = 2**25


def _one_layer(in_channels: int, filters: int, kernel_quantizer) -> tf.keras.Model:
    inputs = tf.keras.Input((1, 1, in_channels))
    if kernel_quantizer == "magnitude_aware":
        kernel_quantizer = _magnitude_aware()
    if kernel_quantizer in ("per_channel", "per_layer"):  # a BNN+ scale: alpha * sign(W)
        layer = ScaledQuantConv2D(filters, 1, scale=kernel_quantizer, input_quantizer="ste_sign",
                                  kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                                  use_bias=False, name="big")
    else:
        layer = lq.layers.QuantConv2D(
            filters, 1, input_quantizer="ste_sign", kernel_quantizer=kernel_quantizer,
            kernel_constraint="weight_clip", use_bias=False, name="big",
        )
    return tf.keras.Model(inputs, layer(inputs))


def _magnitude_aware():
    return lq.quantizers.MagnitudeAwareSign(clip_value=1.0)


FOLD_CASES = [
    (8191, 4096, "ste_sign", True),          # 2**25 - 4096 weights
    (8192, 4096, "ste_sign", False),         # 2**25 weights
    (4095, 8193, "ste_sign", True),          # weights < 2**25 < weights + filters
    (4095, 8193, "magnitude_aware", False),  # the scale's filters push it over
    (8191, 4096, "magnitude_aware", True),   # weights + filters == 2**25
    (9216, 4096, "ste_sign", True),          # a plain sign folds above 2**25 (AlexNet's fc6)
    (9216, 4096, "magnitude_aware", False),  # a scaled one does not (XNOR-Net's fc6)
    # BNN+ scales count as MagnitudeAwareSign's: weights + scales <= 2**25.
    (8191, 4096, "per_channel", True),       # weights + filters == 2**25
    (4095, 8193, "per_channel", False),
    (9216, 4096, "per_layer", False),        # one scale, but weights > 2**25 (BNN+ AlexNet's fc6)
]


@pytest.mark.usefixtures("frees_keras_memory")  # 2**25 weights each
@pytest.mark.parametrize("in_channels, filters, quantizer, folds", FOLD_CASES)
def test_fold_rule_at_its_boundary(in_channels, filters, quantizer, folds):
    """The rule's prediction, and what `summary` and `inspect` make of it, on each case."""
    model = _one_layer(in_channels, filters, quantizer)
    assert model_stats.lce_kernel_folds(model.get_layer("big")) is folds
    assert model_stats.model_summary(model).lce_bconvs == (1 if folds else 0)
    codes = {f.code for f in inspect_model(model)}
    assert ("kernel-too-large" in codes) is (not folds)


# Each conversion of a 2**25-weight layer takes 6-15 s: the pair on either side of the plain
# sign's limit runs in `make test`, every other case of the rule in `make test-all`.
_BOUNDARY_PAIR = FOLD_CASES[:2]


@pytest.mark.usefixtures("frees_keras_memory")
@pytest.mark.parametrize("in_channels, filters, quantizer, folds", [
    case if case in _BOUNDARY_PAIR else pytest.param(*case, marks=pytest.mark.slow)
    for case in FOLD_CASES
])
def test_fold_rule_agrees_with_lce_converter(in_channels, filters, quantizer, folds):
    """The rule agrees with LCE's converter itself."""
    model = _one_layer(in_channels, filters, quantizer)
    assert convert_to_flatbuffer(model).ops.get("LceBconv2d", 0) == (1 if folds else 0)


def test_unfolded_magnitude_aware_kernel_is_predicted_twice():
    """`summary` and `inspect` count 2**25 MagnitudeAwareSign weights as two float32 tensors
    (the conversion that shows it is the slow test below)."""
    model = _one_layer(8192, 4096, _magnitude_aware())
    stats = model_stats.model_summary(model)
    assert stats.lce_bconvs == 0
    assert 8 * LIMIT < stats.lce_size_bytes < 8 * LIMIT * 1.01
    finding = next(f for f in inspect_model(model) if f.code == "kernel-too-large")
    assert "two float32 copies" in finding.message
    assert "2 layers of 2048 filters" in finding.fix


@pytest.mark.slow
@pytest.mark.usefixtures("frees_keras_memory")
def test_unfolded_magnitude_aware_kernel_is_stored_twice():
    """Measured: 2**25 MagnitudeAwareSign weights stay as two float32 tensors, no LceBconv2d
    (a 268 MB flatbuffer)."""
    model = _one_layer(8192, 4096, _magnitude_aware())
    stats = model_stats.model_summary(model)
    flatbuffer = convert_to_flatbuffer(model)
    assert flatbuffer.ops.get("LceBconv2d", 0) == stats.lce_bconvs == 0
    assert 8 * LIMIT < len(flatbuffer.data) < 8 * LIMIT * 1.01
    assert abs(stats.lce_size_bytes / len(flatbuffer.data) - 1) < 0.01
    finding = next(f for f in inspect_model(model) if f.code == "kernel-too-large")
    assert "two float32 copies" in finding.message
    assert "2 layers of 2048 filters" in finding.fix


def test_split_layer_folds_into_bconvs_and_shrinks():
    """The fix `inspect` proposes: the same layer as two halves, concatenated."""
    inputs = tf.keras.Input((1, 1, 8192))
    halves = [lq.layers.QuantConv2D(2048, 1, input_quantizer="ste_sign",
                                    kernel_quantizer=_magnitude_aware(), use_bias=False)(inputs)
              for _ in range(2)]
    model = tf.keras.Model(inputs, tf.keras.layers.Concatenate()(halves))
    stats = model_stats.model_summary(model)
    flatbuffer = convert_to_flatbuffer(model)
    assert flatbuffer.ops.get("LceBconv2d", 0) == stats.lce_bconvs == 2
    assert len(flatbuffer.data) < LIMIT // 7  # 1 bit per weight plus per-channel constants
    assert abs(stats.lce_size_bytes / len(flatbuffer.data) - 1) < 0.05
    assert inspect_model(model) == []


@pytest.mark.slow
@pytest.mark.usefixtures("frees_keras_memory")
@pytest.mark.parametrize("name", ["xnornet", "dorefanet", "binary-alexnet", "bnn-plus-alexnet",
                                  "compact-bnn"])
def test_fc6_is_folded_at_imagenet_size(name):
    """At 224 px LCE folds fc6: split in two for XNOR-Net, DoReFa-Net and BNN+ AlexNet
    (per-channel scales; into 2 LceBconv2d where the input is binary too), whole for
    BinaryAlexNet and CompactBNN (a plain sign)."""
    model = models.create_model(name, input_shape=(224, 224, 3), num_classes=1000)
    stats = model_stats.model_summary(model)
    flatbuffer = convert_to_flatbuffer(model)
    assert stats.lce_bconvs == flatbuffer.ops.get("LceBconv2d", 0)
    assert abs(stats.lce_size_bytes / len(flatbuffer.data) - 1) <= 0.05
    # xnornet: at most larq-zoo's xnornet (170,185,552 bytes). dorefanet's 2-bit activations
    # keep every conv float, but fc6 is stored once instead of twice (400,572,728 bytes).
    # binary-alexnet: 7,875,140 bytes measured; compact-bnn 7,894,380; bnn-plus-alexnet
    # 23,780,824, of which its float fc8 (4096x1000) is 16.4 MB (fc6 unfolded alone: 151 MB).
    limit = {"xnornet": 170_185_552, "dorefanet": 260_000_000, "binary-alexnet": 8_000_000,
             "bnn-plus-alexnet": 24_000_000, "compact-bnn": 8_000_000}[name]
    assert len(flatbuffer.data) <= limit


@pytest.mark.parametrize("name", ["xnornet", "dorefanet"])
def test_split_fc6_is_the_same_function_and_parameters(name):
    import numpy as np

    from bnn_keras.errors import BnnError

    whole = models.create_model(name, input_shape=(32, 32, 3), num_classes=10, fc6_parts=1)
    split = models.create_model(name, input_shape=(32, 32, 3), num_classes=10, fc6_parts=2)
    assert split.count_params() == whole.count_params()
    kernel = whole.get_layer("fc6").kernel.numpy()
    for layer in whole.layers:
        if layer.name != "fc6":
            split.get_layer(layer.name).set_weights(layer.get_weights())
    split.get_layer("fc6_1").set_weights([kernel[..., :2048]])
    split.get_layer("fc6_2").set_weights([kernel[..., 2048:]])
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(split(x, training=False), whole(x, training=False),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(BnnError, match="Expected `fc6_parts` to divide 4096, got 3"):
        models.create_model(name, input_shape=(32, 32, 3), num_classes=10, fc6_parts=3)
