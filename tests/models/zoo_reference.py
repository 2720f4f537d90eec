"""larq-zoo-shaped reference models, for parity tests and benchmarks of the larq-zoo variants.

larq-zoo cannot be installed beside bnn (its protobuf pin), so each builder below is transcribed
from larq-zoo 2.4.0's public definition (larq_zoo/literature/densenet.py, resnet_e.py,
birealnet.py, binary_alex_net.py, dorefanet.py, xnornet.py; larq_zoo/sota/quicknet.py): the
same layers, created in the same order, with Keras's automatic names as in the zoo's files.
`_zoo_file` gives one random weights and BatchNorm statistics and saves them with
`save_weights(".h5")`, as the zoo's release files are saved.
"""

import contextlib
from unittest import mock

import larq as lq
import numpy as np
import tensorflow as tf

L = tf.keras.layers


@contextlib.contextmanager
def zero_initializers():
    """Keras's variance-scaling initializers (glorot_*, he_*, lecun_*: the random kernels of every
    model here) give zeros of the requested shape and dtype instead of random numbers.

    For builds whose weights are only counted, or all replaced afterwards (loaded from a file,
    set by `_randomize`): TensorFlow's truncated normal is a third to two thirds of such a build
    (0.8 s for XNOR-Net's 62M weights). Shapes, names and layers are those of a normal build; a
    weight a loader failed to replace stays 0 where the file holds random values, so a
    comparison of outputs still fails for it."""
    from tf_keras.src.initializers.initializers import VarianceScaling

    def zeros(self, shape, dtype, nonce):
        return tf.zeros(shape, dtype)

    with mock.patch.object(VarianceScaling, "_generate_init_val", zeros):
        yield


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


def zoo_binary_alexnet(input_shape, num_classes, hidden_units=4096):
    """larq-zoo BinaryAlexNetFactory.build (inflation_ratio 1): 11x11/4 stem, QuantDense head.
    `hidden_units` as for `zoo_xnornet`."""
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
    out = dense_block(out, hidden_units)
    out = dense_block(out, hidden_units)
    out = dense_block(out, num_classes)
    out = L.Activation("softmax", dtype="float32")(out)
    return tf.keras.Model(inp, out, name="binary_alexnet")


def zoo_binary_densenet37(input_shape, num_classes):
    """larq-zoo BinaryDenseNet37Factory."""
    return zoo_binary_densenet(input_shape, num_classes, reduction=(3.3, 3.3, 4),
                               dilation=(1, 1, 1, 1), blocks=(6, 8, 12, 6))


def zoo_binary_densenet45(input_shape, num_classes):
    """larq-zoo BinaryDenseNet45Factory."""
    return zoo_binary_densenet(input_shape, num_classes, reduction=(2.7, 3.3, 4),
                               dilation=(1, 1, 1, 1), blocks=(6, 12, 14, 8))


@lq.utils.set_precision(1)
def zoo_magnitude_aware_sign_unclipped(x):
    """larq-zoo dorefanet.py magnitude_aware_sign_unclipped: one mean|W| for the whole layer."""
    scale_factor = tf.stop_gradient(tf.reduce_mean(tf.abs(x)))

    @tf.custom_gradient
    def _magnitude_aware_sign(x):
        return lq.math.sign(x) * scale_factor, lambda dy: dy

    return _magnitude_aware_sign(x)


def zoo_dorefanet(input_shape, num_classes, hidden_units=4096):
    """larq-zoo DoReFaNetFactory.build (activations_k_bit 2): the 12x12/4 stem at every size.
    `hidden_units` as for `zoo_xnornet`."""
    quant = dict(input_quantizer=lq.quantizers.DoReFaQuantizer(k_bit=2),
                 kernel_quantizer=zoo_magnitude_aware_sign_unclipped, kernel_constraint=None,
                 use_bias=False)

    def conv_block(x, filters, kernel_size, pool=False, pool_padding="same"):
        x = lq.layers.QuantConv2D(filters, kernel_size=kernel_size, padding="same", **quant)(x)
        x = L.BatchNormalization(scale=False, momentum=0.9, epsilon=1e-4)(x)
        if pool:
            x = L.MaxPool2D(pool_size=3, strides=2, padding=pool_padding)(x)
        return x

    def fully_connected_block(x, units):
        x = lq.layers.QuantDense(units, **quant)(x)
        return L.BatchNormalization(scale=False, momentum=0.9, epsilon=1e-4)(x)

    inp = L.Input(shape=input_shape)
    out = L.Conv2D(96, kernel_size=12, strides=4, padding="valid", use_bias=True)(inp)
    out = conv_block(out, 256, 5, pool=True)
    out = conv_block(out, 384, 3, pool=True)
    out = conv_block(out, 384, 3)
    out = conv_block(out, 256, 3, pool=True, pool_padding="valid")
    out = L.Flatten()(out)
    out = fully_connected_block(out, hidden_units)
    out = fully_connected_block(out, hidden_units)
    # The zoo's registered `clip_by_value_activation`.
    out = L.Activation(lambda x: tf.clip_by_value(x, 0, 1))(out)
    out = L.Dense(num_classes, use_bias=True)(out)
    out = L.Activation("softmax", dtype="float32")(out)
    return tf.keras.Model(inp, out, name="dorefanet")


@lq.utils.set_precision(1)
def zoo_xnor_weight_scale(x):
    """larq-zoo xnornet.py xnor_weight_scale: clip to [-1, 1], then mean|W| per output channel."""
    x = tf.clip_by_value(x, -1, 1)
    alpha = tf.reduce_mean(tf.abs(x), axis=[0, 1, 2], keepdims=True)
    return alpha * lq.quantizers.ste_sign(x)


def zoo_xnornet(input_shape, num_classes, hidden_units=4096):
    """larq-zoo XNORNetFactory.build: the 11x11/4 stem at every size. `hidden_units` are fc6's
    and fc7's (larq-zoo's 4096; fewer give the same layers at a fraction of the weights)."""
    regularizer = lambda: tf.keras.regularizers.l2(5e-7)  # noqa: E731
    quant = dict(kernel_quantizer=zoo_xnor_weight_scale, input_quantizer="ste_sign",
                 kernel_constraint="weight_clip", use_bias=False)

    def bn(epsilon=1e-4):
        return L.BatchNormalization(momentum=0.9, scale=False, epsilon=epsilon)

    def conv(filters, kernel_size, padding="same"):
        return lq.layers.QuantConv2D(filters, kernel_size, padding=padding,
                                     kernel_regularizer=regularizer(), **quant)

    inp = L.Input(shape=input_shape)
    x = L.Conv2D(96, (11, 11), strides=(4, 4), padding="same", use_bias=False,
                 kernel_regularizer=regularizer())(inp)
    x = bn(1e-5)(x)
    x = L.Activation("relu")(x)
    x = L.MaxPool2D(pool_size=(3, 3), strides=(2, 2))(x)
    x = bn()(x)
    x = conv(256, (5, 5))(x)
    x = L.MaxPool2D(pool_size=(3, 3), strides=(2, 2))(x)
    x = bn()(x)
    x = conv(384, (3, 3))(x)
    x = bn()(x)
    x = conv(384, (3, 3))(x)
    x = bn()(x)
    x = conv(256, (3, 3))(x)
    x = L.MaxPool2D(pool_size=(3, 3), strides=(2, 2))(x)
    x = bn()(x)
    # A 6x6 kernel at every size: the whole map from 217 to 248 px; under 217 px the map is
    # smaller than the kernel, so the zoo's XNOR-Net takes no smaller input.
    x = conv(hidden_units, (6, 6), padding="valid")(x)
    x = bn()(x)
    x = conv(hidden_units, (1, 1), padding="valid")(x)
    x = bn(1e-3)(x)
    x = L.Activation("relu")(x)
    x = L.Flatten()(x)
    x = L.Dense(num_classes, use_bias=False, kernel_regularizer=regularizer())(x)
    x = L.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inp, x, name="xnornet")


def zoo_blurpool_initializer(shape, dtype=None):
    """larq-zoo quicknet.py blurpool_initializer (3x3: the binomial [1, 2, 1] blur)."""
    ksize, filters = shape[0], shape[2]
    k = {2: np.array([1, 1]), 3: np.array([1, 2, 1]), 5: np.array([1, 4, 6, 4, 1])}[ksize]
    k = np.outer(k, k)
    k = k / np.sum(k)
    k = np.expand_dims(k, axis=-1)
    k = np.repeat(k, filters, axis=-1)
    return np.reshape(k, shape)


def zoo_quicknet(input_shape, num_classes, *, section_blocks=(4, 4, 4, 4),
                 section_filters=(64, 128, 256, 512), name="quicknet"):
    """larq-zoo QuickNetFactory.build: stem, then per section a transition where the width
    changes and residual blocks `binary conv (ReLU) -> BN -> + x`; the stem at every size."""
    quant = dict(input_quantizer=lq.quantizers.SteSign(clip_value=1.25),
                 kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25),
                 kernel_constraint=lq.constraints.WeightClip(clip_value=1.25))

    def stem_module(filters, x):
        x = lq.layers.QuantConv2D(filters // 4, (3, 3), kernel_initializer="he_normal",
                                  padding="same", strides=2, use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = lq.layers.QuantDepthwiseConv2D((3, 3), padding="same", strides=2, use_bias=False)(x)
        x = L.BatchNormalization(scale=False, center=False)(x)
        x = lq.layers.QuantConv2D(filters, 1, kernel_initializer="he_normal", use_bias=False)(x)
        return L.BatchNormalization()(x)

    def residual_block(x):
        residual = x
        x = lq.layers.QuantConv2D(int(x.shape[-1]), (3, 3), activation="relu",
                                  kernel_initializer="glorot_normal", padding="same",
                                  pad_values=1.0, use_bias=False, **quant)(x)
        x = L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        return x + residual

    def transition_block(x, filters, strides):
        x = L.Activation("relu")(x)
        x = L.MaxPool2D(pool_size=strides, strides=1)(x)
        x = L.DepthwiseConv2D((3, 3), depthwise_initializer=zoo_blurpool_initializer,
                              padding="same", strides=strides, trainable=False,
                              use_bias=False)(x)
        x = lq.layers.QuantConv2D(filters, (1, 1), kernel_initializer="glorot_normal",
                                  use_bias=False)(x)
        return L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    inp = L.Input(shape=input_shape)
    x = stem_module(section_filters[0], inp)
    for layers, filters in zip(section_blocks, section_filters):
        for _ in range(layers):
            if filters != x.shape[-1]:
                x = transition_block(x, filters, strides=2)
            x = residual_block(x)
    x = L.Activation("relu")(x)
    x = _global_pool(x)
    x = lq.layers.QuantDense(num_classes, kernel_initializer="glorot_normal")(x)
    x = L.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inp, x, name=name)


def zoo_quicknet_small(input_shape, num_classes):
    """larq-zoo QuickNetSmallFactory."""
    return zoo_quicknet(input_shape, num_classes, section_filters=(32, 64, 256, 512),
                        name="quicknet_small")


def zoo_quicknet_large(input_shape, num_classes):
    """larq-zoo QuickNetLargeFactory."""
    return zoo_quicknet(input_shape, num_classes, section_blocks=(6, 8, 12, 6),
                        name="quicknet_large")


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
        elif layer.weights and all(_weight_name(w).startswith("scale_") for w in layer.weights):
            # Real-to-Binary's learned rescaling (scale_h, scale_w, scale_c): positive scales
            # whose product (0.03-0.2) brings a binary conv's outputs (sums of +-1 over 9 x C
            # inputs) towards unit size, as trained ones do; a product of three N(0, 1) would
            # swamp the logits.
            layer.set_weights([rng.uniform(0.3, 0.6, size=w.shape) for w in layer.weights])
        elif layer.weights:
            # 1/sqrt(fan-in) keeps the logits near 1-100, where float32 rounding is under 1e-4.
            layer.set_weights([_normal(rng, 1 / np.sqrt(np.prod(w.shape[:-1]) or 1), w.shape)
                               for w in layer.weights])


def _normal(rng, scale, shape):
    """N(0, scale^2) drawn in float32, the weights' type: XNOR-Net's 55M weights drawn in
    float64 and converted took 4 s more (and twice the memory)."""
    values = rng.standard_normal(tuple(shape), dtype=np.float32)
    values *= scale
    return values


def _weight_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def _logits(model, x):
    # The input of the final softmax.
    return tf.keras.Model(model.inputs, model.layers[-2].output)(x, training=False).numpy()


def _calibrate_batch_norm(model, x, seed=0):
    """Moving statistics near those of each BatchNorm's input on `x`, set in layer order (each
    BatchNorm sees the calibrated ones before it). DoReFa-Net's 2-bit activations round values
    under 1/6 to 0: with random statistics they are all 0 after a few layers, and the logits
    no longer depend on the input."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, L.BatchNormalization):
            continue
        inputs = tf.keras.Model(model.inputs, layer.input)(x, training=False).numpy()
        axes = tuple(range(inputs.ndim - 1))
        mean, var = inputs.mean(axis=axes), np.maximum(inputs.var(axis=axes), 1e-3)
        values = {"moving_mean": mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var),
                  "moving_variance": var * rng.uniform(0.8, 1.2, var.shape)}
        layer.set_weights([values.get(w.name.split("/")[-1].split(":")[0], w.numpy())
                           for w in layer.weights])


def _zoo_file(tmp_path, builder, input_shape, num_classes, name="zoo.h5", calibrate=None):
    """A reference with random weights (and BatchNorm statistics calibrated on the images
    `calibrate`, if given), saved with `save_weights` to `tmp_path / name`."""
    with zero_initializers():  # `_randomize` sets every weight
        reference = builder(input_shape, num_classes)
    _randomize(reference)
    if calibrate is not None:
        _calibrate_batch_norm(reference, calibrate)
    path = str(tmp_path / name)
    reference.save_weights(path)
    return reference, path
