"""Real-to-Binary Net and the Strong Baseline against larq-zoo 2.4.0's definitions.

larq-zoo cannot be installed beside bnn (its protobuf pin), so the references below are
transcribed from its public larq_zoo/literature/real_to_bin_nets.py: the same layers, created in
the same order, with the zoo's own layer names (its factories name every layer, with the model
name as prefix: `r2b_bnn_block_2a_conv2d`). Their weights and BatchNorm statistics are random,
saved with `save_weights(".h5")` as the zoo's release files are, and loaded into the registry
models with `models.create_model(..., weights=path)`.
"""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import models
from bnn_keras.errors import BnnError
from convert.converter import convert_to_flatbuffer
from convert.runtime import LceRuntime
from models.real_to_binary import LearnedRescale
from tests.models.zoo_reference import _logits, _randomize, zero_initializers

L = tf.keras.layers


# -- larq-zoo's definitions, transcribed -------------------------------------------------------


class ZooLearnedRescaleLayer(L.Layer):
    """larq-zoo StrongBaselineNetFactory.LearnedRescaleLayer (without its regularizer)."""

    def build(self, input_shapes):
        self.scale_h = self.add_weight(name="scale_h", shape=(input_shapes[1], 1, 1),
                                       initializer="ones", trainable=True)
        self.scale_w = self.add_weight(name="scale_w", shape=(1, input_shapes[2], 1),
                                       initializer="ones", trainable=True)
        self.scale_c = self.add_weight(name="scale_c", shape=(1, 1, input_shapes[3]),
                                       initializer="ones", trainable=True)
        super().build(input_shapes)

    def call(self, inputs, **kwargs):
        return inputs * (self.scale_h * self.scale_w * self.scale_c)


def _zoo_global_pool(x, name):
    # larq_zoo.core.utils.global_pool: AveragePooling2D over the whole map, then Flatten.
    x = L.AveragePooling2D(pool_size=x.shape[1:3], name=f"{name}_pool")(x)
    return L.Flatten(name=name)(x)


def _zoo_shared_base(input_shape, num_classes, *, model_name, block, use_prelu):
    """larq-zoo _SharedBaseFactory.build (first_block, blocks 2-9, last_block)."""
    momentum = 0.99

    def first_block(x, name):
        x = L.Conv2D(64, kernel_size=7, strides=2, kernel_initializer="glorot_normal",
                     padding="same", name=f"{name}_conv2d", use_bias=False)(x)
        x = L.BatchNormalization(momentum=momentum, name=f"{name}_batch_norm")(x)
        if use_prelu:
            x = L.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x)
        else:
            x = L.ReLU(name=f"{name}_relu")(x)
        return L.MaxPool2D(3, strides=2, padding="same", name=f"{name}_pool")(x)

    def last_block(x, name):
        x = _zoo_global_pool(x, name=f"{name}_global_pool")
        x = L.Dense(num_classes, name=f"{name}_logits")(x)
        return L.Softmax(name=f"{name}_probs", dtype=tf.float32)(x)

    image_input = L.Input(shape=input_shape)
    x = first_block(image_input, name=f"{model_name}_block_1")
    for b in range(2, 10):
        x = block(x, name=f"{model_name}_block_{b}", downsample=b % 2 == 0 and b > 3)
    x = last_block(x, name=f"{model_name}_block_10")
    return tf.keras.Model(inputs=image_input, outputs=x, name=model_name)


def _zoo_shortcut_connection(x, name, in_channels, out_channels):
    if in_channels == out_channels:
        return x
    x = L.AvgPool2D(2, strides=2, padding="same", name=f"{name}_shortcut_pool")(x)
    x = L.Conv2D(out_channels, kernel_size=1, kernel_initializer="glorot_normal",
                 use_bias=False, name=f"{name}_shortcut_conv2d")(x)
    return L.BatchNormalization(momentum=0.99, name=f"{name}_shortcut_batch_norm")(x)


def _zoo_binary_net(input_shape, num_classes, *, model_name, data_scaling, input_quantizer,
                    kernel_quantizer, kernel_constraint):
    """larq-zoo StrongBaselineNetFactory / RealToBinNetFactory (block, half_binary_block,
    _scale_binary_conv_output)."""

    def scale(conv_input, conv_output, name):
        if not data_scaling:
            return ZooLearnedRescaleLayer(name=f"{name}_rescale")(conv_output)
        in_filters = conv_input.shape[-1]
        out_filters = conv_output.shape[-1]
        z = _zoo_global_pool(conv_input, name=f"{name}_scaling_pool")
        dim_reduction = L.Dense(int(in_filters // 8), activation="relu",
                                kernel_initializer="he_normal",
                                name=f"{name}_scaling_dense_reduce", use_bias=False)(z)
        dim_expansion = L.Dense(out_filters, activation="sigmoid",
                                kernel_initializer="he_normal",
                                name=f"{name}_scaling_dense_expand", use_bias=False)(dim_reduction)
        scales = L.Reshape((1, 1, out_filters), name=f"{name}_scaling_reshape")(dim_expansion)
        return L.Multiply(name=f"{name}_scaling_multiplication")([conv_output, scales])

    def half_binary_block(x, downsample=False, name=""):
        in_channels = x.shape[-1]
        out_channels = int(in_channels * 2 if downsample else in_channels)
        shortcut_add = _zoo_shortcut_connection(x, name, in_channels, out_channels)
        conv_input = L.BatchNormalization(momentum=0.99, name=f"{name}_batch_norm")(x)
        conv_output = lq.layers.QuantConv2D(
            out_channels, kernel_size=3, strides=2 if downsample else 1, padding="same",
            input_quantizer=input_quantizer(), kernel_quantizer=kernel_quantizer,
            kernel_constraint=kernel_constraint, kernel_initializer="glorot_normal",
            use_bias=False, name=f"{name}_conv2d",
        )(conv_input)
        x = scale(conv_input, conv_output, name)
        x = L.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x)
        return L.Add(name=f"{name}_skip_add")([x, shortcut_add])

    def block(x, downsample=False, name=""):
        x = half_binary_block(x, downsample=downsample, name=f"{name}a")
        x = half_binary_block(x, downsample=False, name=f"{name}b")
        return L.Lambda(lambda x: x, name=f"{name}_out")(x)

    # isinstance(self, StrongBaselineNetFactory) holds for both families: a PReLU stem.
    return _zoo_shared_base(input_shape, num_classes, model_name=model_name, block=block,
                            use_prelu=True)


def zoo_real_to_binary_net(input_shape, num_classes):
    """larq-zoo RealToBinaryNet (RealToBinNetBNNFactory)."""
    return _zoo_binary_net(input_shape, num_classes, model_name="r2b_bnn", data_scaling=True,
                           input_quantizer=lambda: "ste_sign", kernel_quantizer="ste_sign",
                           kernel_constraint="weight_clip")


def zoo_real_to_binary_net_ban(input_shape, num_classes):
    """larq-zoo RealToBinNetBANFactory."""
    return _zoo_binary_net(input_shape, num_classes, model_name="r2b_ban", data_scaling=True,
                           input_quantizer=lambda: "ste_sign", kernel_quantizer=None,
                           kernel_constraint=None)


def zoo_real_to_binary_net_float(input_shape, num_classes):
    """larq-zoo RealToBinNetFPFactory: `Activation("tanh")` as the input quantizer."""
    return _zoo_binary_net(input_shape, num_classes, model_name="r2b_fp", data_scaling=True,
                           input_quantizer=lambda: L.Activation("tanh"),
                           kernel_quantizer=None, kernel_constraint=None)


def zoo_strong_baseline_net(input_shape, num_classes):
    """larq-zoo StrongBaselineNetBNNFactory."""
    return _zoo_binary_net(input_shape, num_classes, model_name="baseline_bnn",
                           data_scaling=False, input_quantizer=lambda: "ste_sign",
                           kernel_quantizer="ste_sign", kernel_constraint="weight_clip")


def zoo_strong_baseline_net_ban(input_shape, num_classes):
    """larq-zoo StrongBaselineNetBANFactory."""
    return _zoo_binary_net(input_shape, num_classes, model_name="baseline_ban",
                           data_scaling=False, input_quantizer=lambda: "ste_sign",
                           kernel_quantizer=None, kernel_constraint=None)


def zoo_real_to_binary_resnet18(input_shape, num_classes):
    """larq-zoo ResNet18FPFactory (ResNet18Factory.block)."""

    def block(x, downsample=False, name=""):
        in_channels = x.shape[-1]
        out_channels = int(in_channels * 2 if downsample else in_channels)
        shortcut_add = _zoo_shortcut_connection(x, name, in_channels, out_channels)
        for convolution in ["a", "b"]:
            x = L.Conv2D(filters=out_channels, kernel_size=3,
                         strides=2 if downsample and convolution == "a" else 1, padding="same",
                         name=f"{name}{convolution}_conv2d")(x)
            x = L.BatchNormalization(momentum=0.99, name=f"{name}{convolution}_batch_norm")(x)
            x = L.Activation("relu", name=f"{name}{convolution}_relu")(x)
        x = L.Add(name=f"{name}_skip_add")([x, shortcut_add])
        return L.ReLU(name=f"{name}_out")(x)

    return _zoo_shared_base(input_shape, num_classes, model_name="resnet_fp", block=block,
                            use_prelu=False)


# (registry name, `stage` option) -> the zoo's definition.
ZOO_BUILDERS = {
    ("real-to-binary-net", "bnn"): zoo_real_to_binary_net,
    ("real-to-binary-net", "ban"): zoo_real_to_binary_net_ban,
    ("real-to-binary-net", "float"): zoo_real_to_binary_net_float,
    ("real-to-binary-net", "resnet18"): zoo_real_to_binary_resnet18,
    ("strong-baseline-net", "bnn"): zoo_strong_baseline_net,
    ("strong-baseline-net", "ban"): zoo_strong_baseline_net_ban,
}


# -- helpers (the pattern of tests/models/test_zoo_variants.py) --------------------------------


def _zoo_file(tmp_path, builder, input_shape, num_classes, seed=0):
    with zero_initializers():  # `_randomize` sets every weight
        reference = builder(input_shape, num_classes)
    _randomize(reference, seed)
    path = str(tmp_path / "zoo.h5")
    reference.save_weights(path)
    return reference, path


def _inputs(shape, n=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


# -- builds shared by the tests that only read them --------------------------------------------


@pytest.fixture(scope="module")
def default_at_32() -> tf.keras.Model:
    """Real-to-Binary Net with its defaults (stage "bnn", variant "bnn") at 32x32x3, 10 classes,
    with zero kernels (`zero_initializers`): the tests that take it read its layers and shapes."""
    with zero_initializers():
        return models.create_model("real-to-binary-net", input_shape=(32, 32, 3), num_classes=10)


@pytest.fixture(scope="module")
def randomized_at_64(request) -> tf.keras.Model:
    """The registry model `request.param` with its defaults at 64x64x3, 10 classes, with
    random weights and BatchNorm statistics (`_randomize(seed=5)`), set here once: the tests
    that take it only read it (parametrize indirectly)."""
    with zero_initializers():  # `_randomize` sets every weight
        model = models.create_model(request.param, input_shape=(64, 64, 3), num_classes=10)
    _randomize(model, seed=5)
    return model


# -- tests -------------------------------------------------------------------------------------


# The zoo's file selects the larq-zoo variant (zero padding; at 32 px also the zoo's 7x7/2 stem).
# The final network at 64 px is slow (5 s): at 32 px it is the same function from the same file,
# with the zoo's stem kept where bnn's default would change it.
@pytest.mark.parametrize("name, stage, shape", [
    pytest.param("real-to-binary-net", "bnn", (64, 64, 3), marks=pytest.mark.slow),
    ("real-to-binary-net", "bnn", (32, 32, 3)),
    ("real-to-binary-net", "ban", (64, 64, 3)),
    ("real-to-binary-net", "float", (64, 64, 3)),
    ("real-to-binary-net", "resnet18", (64, 64, 3)),
    ("strong-baseline-net", "bnn", (64, 64, 3)),
    ("strong-baseline-net", "ban", (64, 64, 3)),
])
def test_zoo_weights_file_gives_the_zoos_outputs(tmp_path, name, stage, shape):
    reference, path = _zoo_file(tmp_path, ZOO_BUILDERS[name, stage], shape, 10)
    x = _inputs(shape)
    expected = _logits(reference, x)

    with zero_initializers():  # every weight is loaded from the file
        model = models.create_model(name, input_shape=shape, num_classes=10, weights=path,
                                    stage=stage)
    got = _logits(model, x)
    assert np.abs(expected).max() > 1.0  # logits large enough for the comparison to mean much
    assert np.abs(got - expected).max() < 1e-4
    # The zoo's zero padding in every binary 3x3 conv.
    binary = [layer for layer in model.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert all(layer.pad_values == 0.0 for layer in binary)


@pytest.mark.parametrize("randomized_at_64", ["real-to-binary-net"], indirect=True)
def test_default_variant_pads_with_one_and_has_a_small_input_stem(default_at_32,
                                                                   randomized_at_64):
    kwargs = dict(input_shape=(32, 32, 3), num_classes=10)
    default = default_at_32
    with zero_initializers():  # only layers and shapes are read
        zoo = models.create_model("real-to-binary-net", variant="larq-zoo", **kwargs)
        zoo_big = models.create_model("real-to-binary-net", variant="larq-zoo",
                                      input_shape=(64, 64, 3), num_classes=10)
    assert default.get_layer("block_1_conv2d").kernel_size == (3, 3)
    assert default.get_layer("block_2a_conv2d").output.shape[1:3] == (32, 32)
    assert zoo.get_layer("block_1_conv2d").kernel_size == (7, 7)
    assert zoo.get_layer("block_2a_conv2d").output.shape[1:3] == (8, 8)
    assert default.get_layer("block_2a_conv2d").pad_values == 1.0
    assert zoo.get_layer("block_2a_conv2d").pad_values == 0.0

    # 50 px and over (`zoo_big`): the same layers in both variants, but for the padding.
    def layers(model):
        return [(type(layer).__name__, layer.name, tuple(layer.output.shape))
                for layer in model.layers]

    assert randomized_at_64.input_shape == (None, 64, 64, 3)  # the default at 64 px
    assert layers(randomized_at_64) == layers(zoo_big)
    entry = models.get_entry("real-to-binary-net")
    assert entry.zoo.source.startswith("larq-zoo 2.4.0 larq_zoo/literature/real_to_bin_nets.py "
                                       "RealToBinaryNet (RealToBinNetBNNFactory")
    assert entry.zoo.summary == "pad_values 1 (zoo: 0); small-input stem"


@pytest.mark.parametrize("name, stage, zoo_params", [
    # larq-zoo's published count for RealToBinaryNet (its docstring's metrics table).
    ("real-to-binary-net", "bnn", 11_995_624),
    ("real-to-binary-net", "ban", 11_995_624),
    ("real-to-binary-net", "float", 11_995_624),
    ("real-to-binary-net", "resnet18", None),
    ("strong-baseline-net", "bnn", None),
    ("strong-baseline-net", "ban", None),
])
def test_parameters_at_224_equal_the_zoos(name, stage, zoo_params):
    with zero_initializers():  # only the weights' shapes are read
        model = models.create_model(name, stage=stage)
        reference = ZOO_BUILDERS[name, stage]((224, 224, 3), 1000)
    assert model.count_params() == reference.count_params()
    if zoo_params is not None:
        assert model.count_params() == zoo_params
    # The docstring's counts are the measured ones.
    docstring = " ".join(models.get_model_fn(name).__doc__.split())
    assert f"{model.count_params():,} parameters" in docstring


def test_stages_share_their_weighted_layers_so_each_initialises_the_next(default_at_32):
    kwargs = dict(input_shape=(32, 32, 3), num_classes=10)
    # "bnn", the last stage, is the default.
    with zero_initializers():  # only layers and shapes are read
        stages = [models.create_model("real-to-binary-net", stage=stage, **kwargs)
                  for stage in ("float", "ban")] + [default_at_32]
    shapes = [{w.name: tuple(w.shape) for w in m.weights} for m in stages]
    assert shapes[0] == shapes[1] == shapes[2]
    quantizers = [(lq.quantizers.serialize(layer.input_quantizer), layer.kernel_quantizer)
                  for layer in (m.get_layer("block_3a_conv2d") for m in stages)]
    assert quantizers[0] == (None, None)
    assert stages[0].get_layer("block_3a_tanh").activation.__name__ == "tanh"
    assert quantizers[1][1] is None and quantizers[2][1] is not None
    for m in stages:
        assert [f"block_{b}_out" for b in range(2, 10)] == [
            layer.name for layer in m.layers if layer.name.endswith("_out")]


@pytest.mark.parametrize("randomized_at_64", ["strong-baseline-net"], indirect=True)
def test_learned_rescale_config_round_trip(randomized_at_64):
    layer = LearnedRescale(name="scale")
    layer.build((None, 4, 5, 6))
    again = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(again, LearnedRescale)
    assert again.get_config() == layer.get_config()
    again.build((None, 4, 5, 6))
    assert [tuple(w.shape) for w in again.weights] == [(4, 1, 1), (1, 5, 1), (1, 1, 6)]

    # The whole model too, without custom objects (the class is registered by `import models`).
    model = randomized_at_64
    assert model.input_shape == (None, 64, 64, 3)
    rebuilt = tf.keras.models.model_from_json(model.to_json())
    rebuilt.set_weights(model.get_weights())
    x = _inputs((64, 64, 3), n=2)
    np.testing.assert_array_equal(_logits(rebuilt, x), _logits(model, x))


def test_unknown_stage_scaling_or_variant_is_a_bnn_error():
    from models.real_to_binary import real_to_binary_net

    with pytest.raises(BnnError, match=r"Unknown `stage` 'fp'; expected one of: resnet18, "
                                       r"float, ban, bnn\.$"):
        models.create_model("real-to-binary-net", input_shape=(32, 32, 3), num_classes=3,
                            stage="fp")
    with pytest.raises(BnnError, match=r"Unknown `stage` 'float'; expected one of: ban, bnn\.$"):
        models.create_model("strong-baseline-net", input_shape=(32, 32, 3), num_classes=3,
                            stage="float")
    with pytest.raises(BnnError, match=r"Unknown `scaling` 'se'; expected one of: data, learned"):
        real_to_binary_net(input_shape=(32, 32, 3), num_classes=3, scaling="se")
    with pytest.raises(BnnError, match=r"Unknown `variant` 'zoo'"):
        models.create_model("real-to-binary-net", input_shape=(32, 32, 3), num_classes=3,
                            variant="zoo")


@pytest.mark.parametrize("randomized_at_64, bconvs",
                         [("real-to-binary-net", 16), ("strong-baseline-net", 16)],
                         indirect=["randomized_at_64"], scope="module")  # grouped by model
def test_lce_binarizes_every_3x3_conv_and_agrees_with_keras(randomized_at_64, bconvs):
    """All 16 binary 3x3 convs become LceBconv2d, and the scaling stays right: LCE's logits
    equal Keras's, to float rounding, on random weights and BatchNorm statistics (64 px, the
    last stage on 2x2 maps)."""
    shape = (64, 64, 3)
    model = randomized_at_64
    assert model.input_shape == (None, *shape)
    logits = tf.keras.Model(model.inputs, model.layers[-2].output)
    flatbuffer = convert_to_flatbuffer(logits)
    assert flatbuffer.ops.get("LceBconv2d", 0) == bconvs
    x = _inputs(shape, n=3, seed=6)
    expected = logits(x, training=False).numpy()
    got = LceRuntime(flatbuffer).predict(x)
    assert np.abs(expected).max() > 1.0
    assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()


def test_final_recipe_is_the_zoos_last_stage():
    from bnn_keras.training.recipes import paper_recipe

    recipe = paper_recipe("real-to-binary-net")
    assert (recipe.optimizer, recipe.learning_rate, recipe.schedule, recipe.warmup_epochs,
            recipe.epochs, recipe.batch_size, recipe.weight_decay) == (
        "adam", 2e-4, "cosine", 10, 75, 256, 0.0)
    assert "TrainR2BBNNAlternative" in recipe.source and "2003.11535" in recipe.source
    recipe.validate()
    baseline = paper_recipe("strong-baseline-net")
    assert (baseline.learning_rate, baseline.schedule, baseline.step_boundaries,
            baseline.step_factor, baseline.warmup_epochs) == (2e-4, "step", (40, 60, 70), 0.1, 5)
    baseline.validate()
