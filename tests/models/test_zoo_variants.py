"""The larq-zoo variants: a zoo-shaped weights file loads by layer order into the zoo's function.

larq-zoo cannot be installed beside bnn (its protobuf pin), so each reference below is
transcribed from larq-zoo 2.4.0's public definition (larq_zoo/literature/densenet.py,
resnet_e.py, birealnet.py, binary_alex_net.py): the same layers, created in the same order, with
Keras's automatic names as in the zoo's files. Its weights are random, its BatchNorm statistics
too, and saved with `save_weights(".h5")` as the zoo's release files are.
"""

import re

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import models
from bnn_keras.errors import BnnError
from tests.conftest import invoke

L = tf.keras.layers


def _global_pool(x):
    # larq_zoo.core.utils.global_pool: AveragePooling2D over the whole map, then Flatten.
    x = L.AveragePooling2D(pool_size=x.shape[1:3])(x)
    return L.Flatten()(x)


def zoo_binary_densenet(input_shape, num_classes, *, reduction, dilation, blocks):
    """larq-zoo BinaryDenseNetFactory.build."""
    inp = L.Input(shape=input_shape)
    if input_shape[0] < 50:
        x = L.Conv2D(64, 3, padding="same", kernel_initializer="he_normal", use_bias=False)(inp)
    else:
        x = L.Conv2D(64, 7, strides=2, padding="same", use_bias=False)(inp)
        x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        x = L.Activation("relu")(x)
        x = L.MaxPool2D(3, strides=2, padding="same")(x)
    for block, n in enumerate(blocks):
        for _ in range(n):
            y = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
            y = lq.layers.QuantConv2D(
                64, 3, dilation_rate=dilation[block],
                input_quantizer=lq.quantizers.SteSign(clip_value=1.3),
                kernel_quantizer=lq.quantizers.SteSign(clip_value=1.3),
                kernel_constraint=lq.constraints.WeightClip(clip_value=1.3),
                padding="same", use_bias=False,
            )(y)
            x = L.concatenate([x, y])
        if block < len(blocks) - 1:
            x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
            if dilation[block + 1] == 1:
                x = L.MaxPooling2D(2, strides=2)(x)
            x = L.Activation("relu")(x)
            x = L.Conv2D(round(x.shape[-1] // reduction[block] / 32) * 32, 1, use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    x = L.Activation("relu")(x)
    x = L.Dense(num_classes)(_global_pool(x))
    x = L.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inp, x, name="binary_densenet")


def zoo_binary_densenet28(input_shape, num_classes):
    """larq-zoo BinaryDenseNet28Factory."""
    return zoo_binary_densenet(input_shape, num_classes, reduction=(2.7, 2.7, 2.2),
                               dilation=(1, 1, 1, 1), blocks=(6, 6, 6, 5))


def zoo_binary_densenet37_dilated(input_shape, num_classes):
    """larq-zoo BinaryDenseNet37DilatedFactory: no pooling before the dilated blocks."""
    return zoo_binary_densenet(input_shape, num_classes, reduction=(3.3, 3.3, 4),
                               dilation=(1, 1, 2, 4), blocks=(6, 8, 12, 6))


def zoo_binary_resnet_e18(input_shape, num_classes):
    """larq-zoo BinaryResNetE18Factory.build (num_layers 18)."""
    quant = dict(
        input_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_constraint=lq.constraints.WeightClip(clip_value=1.25),
    )

    def residual_block(x, filters, strides):
        if x.shape[-1] != filters:
            residual = L.AvgPool2D(pool_size=2, strides=2)(x)
            residual = L.Conv2D(filters, 1, use_bias=False)(residual)
            residual = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(residual)
        else:
            residual = x
        x = lq.layers.QuantConv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                  **quant)(x)
        x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        return L.add([x, residual])

    inp = L.Input(shape=input_shape)
    if input_shape[0] < 50:
        x = L.Conv2D(64, 3, padding="same", use_bias=False)(inp)
    else:
        x = L.Conv2D(64, 7, strides=2, padding="same", use_bias=False)(inp)
        x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        x = L.Activation("relu")(x)
        x = L.MaxPool2D(3, strides=2, padding="same")(x)
        x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    for block, (layers, filters) in enumerate(zip([2, 2, 2, 2], [64, 128, 256, 512])):
        for layer in range(layers * 2):
            x = residual_block(x, filters, strides=1 if block == 0 or layer != 0 else 2)
    x = L.Activation("relu")(x)
    x = L.Dense(num_classes)(_global_pool(x))
    x = L.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inp, x, name="binary_resnet_e_18")


def zoo_birealnet(input_shape, num_classes):
    """larq-zoo BiRealNetFactory.build: the 7x7/2 stem at every input size."""
    quant = dict(input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_sign",
                 kernel_constraint="weight_clip")

    def residual_block(x, double_filters=False, filters=None):
        in_filters = x.shape[-1]
        out_filters = filters or in_filters if not double_filters else 2 * in_filters
        shortcut = x
        if in_filters != out_filters:
            shortcut = L.AvgPool2D(2, strides=2, padding="same")(shortcut)
            shortcut = L.Conv2D(out_filters, (1, 1), use_bias=False)(shortcut)
            shortcut = L.BatchNormalization(momentum=0.8)(shortcut)
        x = lq.layers.QuantConv2D(out_filters, (3, 3),
                                  strides=1 if out_filters == in_filters else 2,
                                  padding="same", use_bias=False, **quant)(x)
        x = L.BatchNormalization(momentum=0.8)(x)
        return L.add([x, shortcut])

    inp = L.Input(shape=input_shape)
    out = L.Conv2D(64, (7, 7), strides=2, padding="same", use_bias=False)(inp)
    out = L.BatchNormalization(momentum=0.8)(out)
    out = L.MaxPool2D((3, 3), strides=2, padding="same")(out)
    out = residual_block(out, filters=64)
    for _ in range(3):
        out = residual_block(out)
    for _ in range(3):
        out = residual_block(out, double_filters=True)
        for _ in range(3):
            out = residual_block(out)
    out = L.Dense(num_classes)(_global_pool(out))
    out = L.Activation("softmax", dtype="float32")(out)
    return tf.keras.Model(inp, out, name="birealnet18")


def zoo_binary_alexnet(input_shape, num_classes):
    """larq-zoo BinaryAlexNetFactory.build (inflation_ratio 1): 11x11/4 stem, QuantDense head."""
    quant = dict(kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)

    def conv_block(x, features, kernel_size, strides=1, pool=False, first_layer=False):
        x = lq.layers.QuantConv2D(features, kernel_size=kernel_size, strides=strides,
                                  padding="same",
                                  input_quantizer=None if first_layer else "ste_sign", **quant)(x)
        if pool:
            x = L.MaxPool2D(pool_size=3, strides=2)(x)
        return L.BatchNormalization(scale=False, momentum=0.9)(x)

    def dense_block(x, units):
        x = lq.layers.QuantDense(units, input_quantizer="ste_sign", **quant)(x)
        return L.BatchNormalization(scale=False, momentum=0.9)(x)

    inp = L.Input(shape=input_shape)
    out = conv_block(inp, 64, 11, strides=4, pool=True, first_layer=True)
    out = conv_block(out, 192, 5, pool=True)
    out = conv_block(out, 384, 3)
    out = conv_block(out, 384, 3)
    out = conv_block(out, 256, 3, pool=True)
    out = L.Flatten()(out)
    out = dense_block(out, 4096)
    out = dense_block(out, 4096)
    out = dense_block(out, num_classes)
    out = L.Activation("softmax", dtype="float32")(out)
    return tf.keras.Model(inp, out, name="binary_alexnet")


def _randomize(model, seed=0):
    """Random weights and BatchNorm statistics, so that every loaded value matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            values = {"gamma": rng.uniform(0.5, 1.5), "beta": rng.normal(0, 0.2),
                      "moving_mean": rng.normal(0, 0.2), "moving_variance": rng.uniform(0.5, 2)}
            layer.set_weights([
                np.broadcast_to(values[w.name.split("/")[-1].split(":")[0]], w.shape)
                * rng.uniform(0.8, 1.2, size=w.shape)
                for w in layer.weights
            ])
        elif layer.weights:
            # 1/sqrt(fan-in) keeps the logits near 1-100, where float32 rounding is under 1e-4.
            layer.set_weights([rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1]) or 1), w.shape)
                               for w in layer.weights])


def _logits(model, x):
    # The input of the final softmax.
    return tf.keras.Model(model.inputs, model.layers[-2].output)(x, training=False).numpy()


def _zoo_file(tmp_path, builder, input_shape, num_classes, name="zoo.h5"):
    reference = builder(input_shape, num_classes)
    _randomize(reference)
    path = str(tmp_path / name)
    reference.save_weights(path)
    return reference, path


CASES = {
    "binary-densenet28": (zoo_binary_densenet28, (32, 32, 3)),
    "binary-densenet37-dilated": (zoo_binary_densenet37_dilated, (16, 16, 3)),
    "binary-resnet-e18": (zoo_binary_resnet_e18, (32, 32, 3)),
    # 32 px: the zoo keeps its 7x7/2 stem where bnn's default uses a 3x3 stem.
    "birealnet18": (zoo_birealnet, (32, 32, 3)),
    # The zoo's AlexNet needs 57 px or more (three valid 3/2 max-pools after an 11x11/4 stem).
    "binary-alexnet": (zoo_binary_alexnet, (64, 64, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_zoo_weights_file_gives_the_zoos_outputs(tmp_path, name):
    builder, shape = CASES[name]
    reference, path = _zoo_file(tmp_path, builder, shape, 10)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    expected = _logits(reference, x)

    model = models.create_model(name, input_shape=shape, num_classes=10, weights=path)
    got = _logits(model, x)
    assert np.abs(expected).max() > 1.0  # logits large enough for the comparison to mean much
    assert np.abs(got - expected).max() < 1e-4
    # The variant was chosen from the file: the zoo's zero padding in every binary 3x3 conv.
    binary = [layer for layer in model.layers if isinstance(layer, lq.layers.QuantConv2D)
              and layer.input_quantizer is not None and layer.kernel_size != (1, 1)]
    assert binary and all(layer.pad_values == 0.0 for layer in binary)

    # The same file in the LCE-friendly default loads by layer order but computes another
    # function (BiReal and AlexNet at these sizes have other stems or shapes, hence only the
    # two models whose default has the zoo's layers).
    if name in ("binary-densenet28", "binary-resnet-e18"):
        default = models.create_model(name, input_shape=shape, num_classes=10, weights=path,
                                      variant="bnn")
        assert all(layer.pad_values == 1.0 for layer in default.layers
                   if isinstance(layer, lq.layers.QuantConv2D) and layer.kernel_size == (3, 3))
        assert np.abs(_logits(default, x) - expected).max() > 0.1


def test_a_zoo_full_model_h5_loads_too(tmp_path):
    # `model.save("x.h5")` keeps the weights under `model_weights`.
    reference = zoo_binary_resnet_e18((32, 32, 3), 10)
    _randomize(reference, seed=3)
    path = str(tmp_path / "zoo_model.h5")
    reference.save(path)
    model = models.create_model("binary-resnet-e18", input_shape=(32, 32, 3), num_classes=10,
                                weights=path)
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    assert np.abs(_logits(model, x) - _logits(reference, x)).max() < 1e-4


def test_default_variant_pads_with_one_and_zoo_variant_with_zero():
    kwargs = dict(input_shape=(32, 32, 3), num_classes=10)
    default = models.create_model("binary-densenet28", **kwargs)
    zoo = models.create_model("binary-densenet28", variant="larq-zoo", **kwargs)
    assert default.get_layer("block1_layer1_conv").pad_values == 1.0
    assert zoo.get_layer("block1_layer1_conv").pad_values == 0.0
    with pytest.raises(BnnError, match=r"Unknown `variant` 'zoo'; expected one of: bnn, larq-zoo"):
        models.create_model("binary-densenet28", variant="zoo", **kwargs)


def test_bnn_saved_weights_keep_the_default_variant(tmp_path):
    kwargs = dict(input_shape=(16, 16, 1), num_classes=3)
    model = models.create_model("binary-resnet-e18", **kwargs)
    _randomize(model)
    path = str(tmp_path / "ours.h5")
    model.save_weights(path)
    again = models.create_model("binary-resnet-e18", weights=path, **kwargs)
    assert again.get_layer("block1_layer1_conv").pad_values == 1.0
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(_logits(again, x), _logits(model, x))


def test_a_file_that_does_not_fit_names_the_first_differing_layer(tmp_path):
    _, path = _zoo_file(tmp_path, zoo_binary_densenet28, (32, 32, 3), 10)
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
                 "xnornet"):
        zoo = models.get_entry(name).zoo
        assert zoo is not None and zoo.source.startswith("larq-zoo 2.4.0 larq_zoo/")
        assert "pad" in zoo.differences[0]
    assert models.get_entry("binarynet").zoo is None


def test_bnn_models_says_which_models_differ_from_the_zoo():
    # binary-densenet28, binary-resnet-e18/e34, birealnet18/34.
    result = invoke(["models", "bi*[48]", "--input-shape", "32,32,3", "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["binary-densenet28"].endswith("pad_values 1 (zoo: 0)")
    assert rows["birealnet18"].endswith("pad_values 1 (zoo: 0); small-input stem")
    assert rows["binary-resnet-e34"].endswith(" -")  # larq-zoo publishes only ResNetE18
    assert "--model-option variant=larq-zoo builds the zoo's function" in result.stdout
