"""MeliusNet22 against larq-zoo 2.4.0's definition: parameters, and the zoo's outputs from a
zoo-shaped weights file.

larq-zoo cannot be installed beside bnn (its protobuf pin), so `zoo_meliusnet22` below is
transcribed from larq-zoo 2.4.0's larq_zoo/literature/meliusnet.py (MeliusNetFactory.build):
the same layers, created in the same order, with the zoo's layer names (2.4.0 names every layer;
`names=False` gives Keras's automatic names, as the zoo's first MeliusNet code did). Its weights
and BatchNorm statistics are random and saved with `save_weights(".h5")`, as the zoo's release
files are.
"""

import models  # noqa: F401  (must come before tensorflow)

import dataclasses
import functools
from typing import Tuple

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from tests.models.zoo_reference import _logits, _randomize, zero_initializers

L = tf.keras.layers

# larq-zoo's MeliusNet22 table: 6 944 584 parameters, as larq's model summary counts them
# (BatchNorm's moving statistics folded into its scale and offset: 2 weights per channel where
# Keras's count_params counts 4).
ZOO_SUMMARY_PARAMS = 6_944_584
KERAS_PARAMS = 6_969_672


def zoo_meliusnet22(input_shape, num_classes, *, names=True):
    """larq-zoo MeliusNet22Factory.build (num_blocks (4, 5, 4, 4), transition_features
    (160, 224, 256, None)): the grouped stem at every input size, zero-padded binary convs.

    Args:
        input_shape: Input (height, width, channels).
        num_classes: Classifier size.
        names: The zoo 2.4.0's layer names; False: Keras's automatic ones.
    """

    def n(name):
        return name if names else None

    def lam(fn, name):
        # larq_zoo.core.utils.TFOpLayer: a Lambda layer around a TensorFlow op.
        return L.Lambda(fn, name=n(name))

    def norm(x, name):
        return L.BatchNormalization(momentum=0.9, epsilon=1e-5, name=n(name))(x)

    def act(x, name):
        return L.Activation("relu", name=n(name))(x)

    def pool(x, name):
        return L.MaxPool2D(2, strides=2, padding="same", name=n(name))(x)

    def quant_conv(x, filters, kernel, name):
        return lq.layers.QuantConv2D(
            filters, kernel, strides=1, padding="same", use_bias=False,
            input_quantizer=lq.quantizers.SteSign(1.3),
            kernel_quantizer=lq.quantizers.SteSign(1.3),
            kernel_constraint=lq.constraints.WeightClip(1.3),
            kernel_initializer="glorot_normal", name=n(name),
        )(x)

    def group_conv(x, filters, kernel, groups, name):
        x_split = lam(lambda x_: tf.split(x_, groups, axis=-1), f"{name}_split")(x)
        y_split = [
            L.Conv2D(filters // groups, kernel, padding="same", use_bias=False,
                     kernel_initializer="glorot_normal", name=n(f"{name}_conv{i}"))(split)
            for i, split in enumerate(x_split)
        ]
        return lam(lambda x_: tf.concat(x_, axis=-1), f"{name}_concat")(y_split)

    def group_stem(x, name):
        x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False,
                     kernel_initializer="glorot_normal", name=n(f"{name}_s0_conv"))(x)
        x = norm(x, f"{name}_s0_bn")
        x = act(x, f"{name}_s0_relu")
        x = group_conv(x, 32, 3, 4, f"{name}_s1_groupconv")
        x = norm(x, f"{name}_s1_bn")
        x = act(x, f"{name}_s1_relu")
        x = group_conv(x, 64, 3, 8, f"{name}_s2_groupconv")
        x = norm(x, f"{name}_s2_bn")
        x = act(x, f"{name}_s2_relu")
        return pool(x, f"{name}_pool")

    def dense_block(x, name):
        w = norm(x, f"{name}_bn")
        w = quant_conv(w, 64, 3, f"{name}_binconv")
        return lam(lambda x_: tf.concat(x_, axis=-1), f"{name}_concat")([x, w])

    def improvement_block(x, name):
        w = norm(x, f"{name}_bn")
        w = quant_conv(w, 64, 3, f"{name}_binconv")
        f_in = int(x.shape[-1])
        return lam(lambda x_: x_[0] + tf.pad(x_[1], [[0, 0], [0, 0], [0, 0], [f_in - 64, 0]]),
                   f"{name}_merge")([x, w])

    def transition_block(x, filters, name):
        x = norm(x, f"{name}_bn")
        x = pool(x, f"{name}_maxpool")
        x = act(x, f"{name}_relu")
        return L.Conv2D(filters, 1, use_bias=False, kernel_initializer="glorot_normal",
                        name=n(f"{name}_pw"))(x)

    inp = L.Input(shape=input_shape)
    x = group_stem(inp, "stem")
    for i, (blocks, f) in enumerate(zip((4, 5, 4, 4), (160, 224, 256, None))):
        for j in range(blocks):
            x = dense_block(x, f"section_{i}_block_{j}_dense")
            x = improvement_block(x, f"section_{i}_block_{j}_improve")
        if f:
            x = transition_block(x, f, f"section_{i}_transition")
    x = norm(x, "head_bn")
    x = act(x, "head_relu")
    # larq_zoo.core.utils.global_pool: AveragePooling2D over the whole map, then Flatten.
    x = L.AveragePooling2D(pool_size=x.shape[1:3], name=n("head_globalpool_pool"))(x)
    x = L.Flatten(name=n("head_globalpool_flatten"))(x)
    x = L.Dense(num_classes, kernel_initializer="glorot_normal", name=n("head_dense"))(x)
    x = L.Activation("softmax", dtype="float32", name=n("head_softmax"))(x)
    return tf.keras.Model(inputs=inp, outputs=x, name="meliusnet22")


def _zoo_file(tmp_path, shape, *, names=True, seed=0):
    with zero_initializers():  # `_randomize` sets every weight
        reference = zoo_meliusnet22(shape, 10, names=names)
    _randomize(reference, seed=seed)
    path = str(tmp_path / "zoo_meliusnet22.h5")
    reference.save_weights(path)
    return reference, path


def _binary_convs(model):
    return [layer for layer in model.layers if isinstance(layer, lq.layers.QuantConv2D)]


@dataclasses.dataclass
class ZooCase:
    """A zoo reference with random weights, its weights file, and the registry models loaded
    from that file: made once for the tests that read them (none changes them)."""

    shape: Tuple[int, int, int]
    path: str
    x: np.ndarray  # 4 images
    expected: np.ndarray  # the reference's logits on `x`

    @functools.cached_property
    def model(self) -> tf.keras.Model:
        """`create_model("meliusnet22", weights=path)`: the variant the file selects."""
        with zero_initializers():  # every weight is loaded from the file
            return models.create_model("meliusnet22", input_shape=self.shape, num_classes=10,
                                       weights=self.path)

    @functools.cached_property
    def default(self) -> tf.keras.Model:
        """The LCE-friendly default (`variant="bnn"`) with the same file loaded by layer order."""
        with zero_initializers():  # every weight is loaded from the file
            return models.create_model("meliusnet22", input_shape=self.shape, num_classes=10,
                                       weights=self.path, variant="bnn")


# (the zoo 2.4.0's layer names or Keras's automatic ones, input shape)
NAMED_32 = pytest.param((True, (32, 32, 3)), id="True-shape0")
NAMED_64 = pytest.param((True, (64, 64, 3)), id="True-shape2")


@pytest.fixture(scope="module")
def zoo_case(request, tmp_path_factory) -> ZooCase:
    """The `ZooCase` of `request.param`, (names, shape) (parametrize indirectly)."""
    names, shape = request.param
    reference, path = _zoo_file(tmp_path_factory.mktemp("zoo"), shape, names=names)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    return ZooCase(shape, path, x, _logits(reference, x))


@pytest.mark.parametrize("zoo_case", [
    # 32 px: the zoo keeps its grouped stem where bnn's default has a 3x3 stride-1 stem.
    NAMED_32,
    pytest.param((False, (16, 16, 3)), id="False-shape1"),
    # 64 px: both have the grouped stem; only the padding differs.
    NAMED_64,
], indirect=True)
def test_zoo_weights_file_gives_the_zoos_outputs(zoo_case):
    shape, x, expected = zoo_case.shape, zoo_case.x, zoo_case.expected
    model = zoo_case.model
    got = _logits(model, x)
    assert np.abs(expected).max() > 1.0  # logits large enough for the comparison to mean much
    assert np.abs(got - expected).max() < 1e-4
    # The variant was chosen from the file: the zoo's grouped stem and zero padding.
    assert model.get_layer("stem_conv").strides == (2, 2)
    assert model.get_layer("stem_group2_conv8").kernel.shape == (3, 3, 4, 8)
    binary = _binary_convs(model)
    assert len(binary) == 34 and all(layer.pad_values == 0.0 for layer in binary)

    if shape[0] >= 50:
        # The LCE-friendly default has the zoo's layers there: the file loads by layer order,
        # but +1 padding computes another function.
        default = zoo_case.default
        assert default.input_shape == (None, *shape)
        assert all(layer.pad_values == 1.0 for layer in _binary_convs(default))
        assert np.abs(_logits(default, x) - expected).max() > 0.1


# The zoo file of test_zoo_weights_file_gives_the_zoos_outputs: 32x32x3, 10 classes.
@pytest.mark.parametrize("zoo_case", [NAMED_32], indirect=True)
def test_a_zoo_file_with_other_classes_names_the_first_differing_layer(zoo_case):
    path = zoo_case.path
    assert zoo_case.shape == (32, 32, 3)
    before = open(path, "rb").read()
    with pytest.raises(BnnError) as err, zero_initializers():  # built to be refused
        models.create_model("meliusnet22", input_shape=(32, 32, 3), num_classes=5,
                            weights=path)
    message = str(err.value)
    assert "\n" not in message
    assert ("does not fit meliusnet22 (variant larq-zoo): weighted layer 92 is 'head_dense' "
            "with (512, 10), (10,) in the file and 'head_classifier' with (512, 5), (5,) "
            "in the model") in message
    assert open(path, "rb").read() == before


def test_parameter_count_at_224_matches_larq_zoo():
    kwargs = dict(input_shape=(224, 224, 3), num_classes=1000)
    with zero_initializers():  # only the weights' shapes are read
        model = models.create_model("meliusnet22", **kwargs)
        reference = zoo_meliusnet22((224, 224, 3), 1000)
    for m in (model, reference):
        assert lq.models.ModelProfile(m).weight_count() == ZOO_SUMMARY_PARAMS
        assert m.count_params() == KERAS_PARAMS
    assert [w.shape for w in model.weights] == [w.shape for w in reference.weights]
    assert model.output_shape == (None, 1000)


def test_small_input_stem_and_registry_entry():
    kwargs = dict(input_shape=(32, 32, 3), num_classes=10)
    with zero_initializers():  # only layers and shapes are read
        default = models.create_model("meliusnet22", **kwargs)
        zoo = models.create_model("meliusnet22", variant="larq-zoo", **kwargs)
    assert default.get_layer("stem_conv").strides == (1, 1)
    assert default.get_layer("stem_conv").kernel.shape == (3, 3, 3, 64)
    assert not any(layer.name.startswith("stem_group") for layer in default.layers)
    # Full resolution into the first section below 50 px; the zoo's stem makes it 4x smaller.
    assert default.get_layer("section1_block1_dense_bn").input_shape == (None, 32, 32, 64)
    assert zoo.get_layer("section1_block1_dense_bn").input_shape == (None, 8, 8, 64)
    entry = models.get_entry("meliusnet22")
    assert entry.zoo.source == "larq-zoo 2.4.0 larq_zoo/literature/meliusnet.py MeliusNet22"
    assert entry.zoo.summary == "pad_values 1 (zoo: 0); small-input stem"
    assert all(layer.pad_values == 1.0 for layer in _binary_convs(default))
    assert all(layer.pad_values == 0.0 for layer in _binary_convs(zoo))
    with pytest.raises(BnnError, match=r"Unknown `variant` 'zoo'; expected one of: bnn, larq-zoo"):
        models.create_model("meliusnet22", variant="zoo", **kwargs)


@pytest.mark.parametrize("zoo_case", [NAMED_64], indirect=True)
def test_grouped_stem_survives_a_keras_save_and_load(tmp_path, zoo_case):
    """The stem's channel split is a TensorFlow-op layer: it must serialize."""
    # The default at 64 px (grouped stem) with random weights: the zoo file's, by layer order.
    model = zoo_case.default
    assert model.input_shape == (None, 64, 64, 3)
    assert model.get_layer("stem_group2_conv8") is not None
    path = str(tmp_path / "melius.keras")
    model.save(path)
    with zero_initializers():  # every weight is loaded from the file
        again = tf.keras.models.load_model(path, compile=False)
    x = np.random.default_rng(5).normal(size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(_logits(again, x), _logits(model, x), rtol=0, atol=1e-5)
