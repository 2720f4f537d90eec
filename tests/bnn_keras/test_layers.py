"""Layers: oracle tests against tf.nn.conv2d on sign(x)/sign(W), scale init, losses, LCE, save/load."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import layers as bl
from bnn_keras import quantizers as bq
from bnn_keras import regularizers as br
from convert.flatbuffer import op_histogram

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 5, 3)).astype(np.float32)


def _sign(a):
    return np.where(np.asarray(a) >= 0, 1.0, -1.0).astype(np.float32)


def _conv(x, w, padding="VALID"):
    return tf.nn.conv2d(x, w, strides=1, padding=padding).numpy()


def _latent(layer):
    return layer.kernel.latent_variable.numpy()


@pytest.mark.parametrize("quantizer", [bq.SteSign, bq.ApproxSign, bq.SignSwish])
def test_larq_quant_conv_with_our_quantizers_equals_conv_on_signs(quantizer):
    layer = lq.layers.QuantConv2D(4, 3, input_quantizer=quantizer(), kernel_quantizer=quantizer(), use_bias=False)
    y = layer(X).numpy()
    np.testing.assert_array_equal(y, _conv(_sign(X), _sign(_latent(layer))))
    # Plain Keras Conv2D fed sign(x) with sign(W) as its kernel: the same numbers.
    plain = tf.keras.layers.Conv2D(4, 3, use_bias=False)
    plain.build(X.shape)
    plain.set_weights([_sign(_latent(layer))])
    np.testing.assert_array_equal(y, plain(_sign(X)).numpy())


@pytest.mark.parametrize("scale", ["per_channel", "per_layer"])
def test_scaled_conv_alpha_init_and_oracle(scale):
    layer = bl.ScaledQuantConv2D(4, 3, scale=scale, input_quantizer="ste_sign", use_bias=False)
    y = layer(X).numpy()
    w = _latent(layer)
    expected_alpha = np.abs(w).mean(axis=(0, 1, 2)) if scale == "per_channel" else np.abs(w).mean()
    np.testing.assert_allclose(layer.scale_weight.numpy(), expected_alpha, rtol=1e-6)
    assert type(layer.kernel_quantizer) is bq.SteSign
    # A trained (non-initial) alpha must be what the forward uses.
    alpha = np.array([0.5, 1.0, 2.0, 3.0], np.float32) if scale == "per_channel" else np.float32(1.7)
    layer.scale_weight.assign(alpha)
    y = layer(X).numpy()
    np.testing.assert_allclose(y, _conv(_sign(X), alpha * _sign(w)), rtol=1e-6, atol=1e-5)
    assert {v.name.split("/")[-1] for v in layer.trainable_weights} == {"kernel:0", "scale:0"}


def test_scaled_conv_same_padding_with_ones():
    layer = bl.ScaledQuantConv2D(2, 3, padding="same", pad_values=1.0, input_quantizer=bq.ApproxSign(), use_bias=False)
    y = layer(X).numpy()
    padded = np.pad(_sign(X), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
    w = layer.scale_weight.numpy() * _sign(_latent(layer))
    np.testing.assert_allclose(y, _conv(padded, w), rtol=1e-6, atol=1e-5)


def test_scaled_conv_without_scale_is_plain_binary_conv():
    layer = bl.ScaledQuantConv2D(3, 3, scale=None, input_quantizer="ste_sign", use_bias=False)
    y = layer(X).numpy()
    assert layer.scale_weight is None and len(layer.trainable_weights) == 1
    np.testing.assert_array_equal(y, _conv(_sign(X), _sign(_latent(layer))))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_scaled_conv_regularizer_in_model_losses(kind):
    x = tf.keras.Input(X.shape[1:])
    layer = bl.ScaledQuantConv2D(4, 3, scale_regularizer=f"bnn+-{kind}", regularization_factor=0.01, use_bias=False)
    model = tf.keras.Model(x, layer(x))

    def expected():
        diff = layer.scale_weight.numpy() - np.abs(_latent(layer))
        return 0.01 * (np.abs(diff).sum() if kind == "l1" else (diff**2).sum())

    assert len(model.losses) == 1
    # At initialisation alpha = mean|w|: the l1 term is the mean absolute deviation, not 0.
    assert float(model.losses[0]) == pytest.approx(expected(), rel=1e-5)
    layer.scale_weight.assign([0.1, 0.2, 0.3, 0.4])  # the term follows the current weights
    assert float(model.losses[0]) == pytest.approx(expected(), rel=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses)
    grad_alpha = tape.gradient(loss, layer.scale_weight).numpy()
    diff = layer.scale_weight.numpy() - np.abs(_latent(layer))
    expected_grad = 0.01 * (np.sign(diff).sum(axis=(0, 1, 2)) if kind == "l1" else 2 * diff.sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(grad_alpha, expected_grad, rtol=1e-5)


def test_scaled_conv_argument_errors():
    with pytest.raises(ValueError, match="per_channel"):
        bl.ScaledQuantConv2D(4, 3, scale="per_pixel")
    with pytest.raises(ValueError, match="scale=None"):
        bl.ScaledQuantConv2D(4, 3, scale=None, scale_regularizer="bnn+-l1")
    with pytest.raises(ValueError, match="BnnPlusRegularizer"):
        bl.ScaledQuantConv2D(4, 3, scale_regularizer="bipolar")


def test_multi_base_one_base_is_plain_binary_conv():
    layer = bl.MultiBaseQuantConv2D(4, 3, bases=1, use_bias=False)
    y = layer(X).numpy()
    assert layer.betas == []
    np.testing.assert_array_equal(y, _conv(_sign(X), _sign(_latent(layer.convs[0]))))


def test_multi_base_residual_binarization_oracle():
    layer = bl.MultiBaseQuantConv2D(4, 3, bases=3, use_bias=False, beta_initial=0.8)
    layer(X)
    np.testing.assert_allclose([b.numpy() for b in layer.betas], [0.8, 0.4])
    layer.betas[0].assign(0.9)
    layer.betas[1].assign(0.35)
    y = layer(X).numpy()
    kernels = [_latent(conv) for conv in layer.convs]
    assert not np.array_equal(kernels[0], kernels[1])  # each base has its own kernel
    r, expected = X, 0.0
    for k, beta in enumerate([0.9, 0.35, None]):
        a = _sign(r)
        expected = expected + _conv(a, _sign(kernels[k]))
        if beta is not None:
            r = r - beta * a
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-5)


def test_multi_base_betas_get_gradients():
    layer = bl.MultiBaseQuantConv2D(2, 3, bases=2, use_bias=False)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(X) ** 2)
    grad = tape.gradient(loss, layer.betas[0])
    assert grad is not None and np.isfinite(grad.numpy()) and grad.numpy() != 0.0


def test_learnable_scale():
    scalar = bl.LearnableScale()
    per_unit = bl.LearnableScale(per_unit=True)
    data = RNG.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_array_equal(scalar(data).numpy(), data)  # identity at init
    scalar.scale.assign(2.5)
    per_unit(data)
    per_unit.scale.assign([1.0, -2.0, 0.5])
    np.testing.assert_allclose(scalar(data).numpy(), 2.5 * data, rtol=1e-6)
    np.testing.assert_allclose(per_unit(data).numpy(), data * [1.0, -2.0, 0.5], rtol=1e-6)
    assert scalar.scale.shape == () and per_unit.scale.shape == (3,)


def test_activation_helper():
    assert isinstance(bl.activation("relu"), tf.keras.layers.ReLU)
    prelu = bl.activation("prelu", layer_name="block1_prelu")
    assert isinstance(prelu, tf.keras.layers.PReLU) and prelu.name == "block1_prelu"
    prelu.build((None, 5, 5, 6))
    assert prelu.alpha.shape == (1, 1, 6)  # one slope per channel
    prelu.alpha.assign(np.full((1, 1, 6), 0.25, np.float32))
    feats = RNG.normal(size=(1, 5, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(prelu(feats).numpy(), np.where(feats > 0, feats, 0.25 * feats), rtol=1e-6)
    with pytest.raises(ValueError, match="prelu"):
        bl.activation("gelu")


def test_layers_under_mixed_bfloat16():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        scaled = bl.ScaledQuantConv2D(4, 3, input_quantizer="approx_sign", use_bias=False)
        multi = bl.MultiBaseQuantConv2D(4, 3, bases=2, use_bias=False)
        y1, y2 = scaled(X), multi(X)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert y1.dtype == tf.bfloat16 and y2.dtype == tf.bfloat16
    assert scaled.scale_weight.dtype == tf.float32
    w = scaled.scale_weight.numpy() * _sign(_latent(scaled))
    # bfloat16 keeps 8 significant bits: relative error up to ~2^-8 per product and sum.
    np.testing.assert_allclose(y1.numpy().astype(np.float32), _conv(_sign(X), w), rtol=2e-2, atol=2e-2)


def _all_layers_model():
    x = tf.keras.Input((4, 4, 32))
    h = bl.ScaledQuantConv2D(8, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                             kernel_quantizer=bq.SignSwish(trainable_beta=True), scale_regularizer="bnn+-l1",
                             kernel_constraint="weight_clip", use_bias=False, name="scaled")(x)
    h = tf.keras.layers.BatchNormalization(name="bn")(h)
    h = bl.MultiBaseQuantConv2D(8, 3, bases=3, padding="same", pad_values=1.0, use_bias=False,
                                kernel_regularizer=br.Bipolar(1e-4), name="multi")(h)
    h = bl.activation("prelu", layer_name="prelu")(h)
    h = tf.keras.layers.GlobalAveragePooling2D()(h)
    h = bl.LearnableScale(per_unit=True, name="scale")(h)
    return tf.keras.Model(x, h)


def test_converts_to_binary_convolutions():
    model = _all_layers_model()
    ops = op_histogram(lce.convert_keras_model(model, target="arm"))
    # 1 scaled conv (alpha folded into the post-multiplier) + 3 bases.
    assert ops["LceBconv2d"] == 4
    assert ops["CONV_2D"] == 0
    assert ops["ADD"] == 2  # summing 3 bases


def test_save_load_round_trip(tmp_path):
    model = _all_layers_model()
    model.get_layer("scaled").scale_weight.assign(np.linspace(0.1, 0.8, 8))
    model.get_layer("multi").betas[1].assign(0.3)
    model.get_layer("scale").scale.assign(np.linspace(-1, 1, 8))
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras")
    data = RNG.normal(size=(2, 4, 4, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded(data).numpy(), model(data).numpy())
    np.testing.assert_allclose([float(v) for v in loaded.losses], [float(v) for v in model.losses], rtol=1e-6)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    assert type(loaded.get_layer("scaled")) is bl.ScaledQuantConv2D
    assert type(loaded.get_layer("multi")) is bl.MultiBaseQuantConv2D


@pytest.mark.parametrize(
    "layer",
    [
        bl.ScaledQuantConv2D(4, 3, scale="per_layer", scale_regularizer="bnn+-l2", regularization_factor=0.3,
                             input_quantizer=bq.SignSwish(2.0)),
        bl.ScaledQuantConv2D(4, 3, scale=None),
        bl.MultiBaseQuantConv2D(4, (3, 3), bases=2, padding="same", pad_values=1.0,
                                kernel_regularizer="bipolar", kernel_constraint="weight_clip", beta_initial=0.7),
        bl.LearnableScale(per_unit=True, scale_initializer="zeros"),
    ],
    ids=["scaled", "scaled-none", "multi", "learnable-scale"],
)
def test_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def _outputs_and_gradients(layer, x, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return [np.asarray(tf.cast(t, tf.float32)) for t in (y, *grads)]


@pytest.mark.parametrize("size, kernel, strides, dilation", [
    (8, 3, 1, 1), (7, 3, 2, 1), (8, 3, 2, 1), (9, 5, 1, 2), (6, (1, 3), 1, 1)])
@pytest.mark.parametrize("cls", [bl.QuantConv2D, bl.ScaledQuantConv2D])
def test_training_pads_by_a_sum_with_larqs_outputs_and_gradients(cls, size, kernel, strides,
                                                                  dilation):
    """In training, the padding of +1 is added as the conv of the border map: larq's outputs
    and gradients (input, latent kernel, bias, scale), without its copy of the input."""
    x = RNG.normal(size=(3, size, size, 5)).astype(np.float32)
    options = dict(padding="same", pad_values=1.0, strides=strides, dilation_rate=dilation,
                   input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=True,
                   bias_initializer="ones", kernel_constraint="weight_clip")
    ours = cls(6, kernel, **options)
    ours.build(x.shape)
    reference = (lq.layers.QuantConv2D if cls is bl.QuantConv2D else _LarqPaddedScaled)(
        6, kernel, **options)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    expected = _outputs_and_gradients(reference, x, training=True)
    for got, want in zip(_outputs_and_gradients(ours, x, training=True), expected):
        # Sums in another order: float32 rounding of the largest values (a missing border
        # term would be off by a whole kernel's sum).
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # Outside training the layer is larq's: the same numbers by the padded input.
    np.testing.assert_array_equal(ours(x, training=False).numpy(),
                                  reference(x, training=False).numpy())


def _training_gradient_ops(layer, x):
    """The op types of `layer`'s traced training-step gradient graph (of its input too, as
    in a layer that is not the first)."""

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    return [op.type for op in step.get_concrete_function(x).graph.get_operations()]


def test_training_computes_larqs_ste_signs_with_fused_gradients_and_keeps_the_layer():
    """larq's SteSign input and kernel quantizers train through `bq.ste_sign`: one fused
    gradient op each (the kernel quantized once for both convs of the padding by a sum). The
    layer keeps its quantizers, sublayers and weights; a quantizer with a flip-ratio metric is
    larq's and keeps its metric."""
    x = tf.constant(RNG.normal(size=(2, 8, 8, 3)).astype(np.float32))
    layer = bl.QuantConv2D(4, 3, padding="same", pad_values=1.0,
                           input_quantizer=lq.quantizers.SteSign(clip_value=1.3),
                           kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25))
    layer.build(x.shape)
    quantizer, tracked = layer.input_quantizer, list(layer._self_tracked_trackables)
    ops = _training_gradient_ops(layer, x)
    assert ops.count("FakeQuantWithMinMaxArgsGradient") == 2
    assert ops.count("Sign") == 4 and not {"Abs", "SelectV2"} & set(ops)
    assert layer.input_quantizer is quantizer and layer._self_tracked_trackables == tracked
    assert [w.name for w in layer.weights] == ["kernel:0", "bias:0"]

    watched = bl.QuantConv2D(4, 3, padding="same", pad_values=1.0,
                             input_quantizer=lq.quantizers.SteSign(),
                             kernel_quantizer=lq.quantizers.SteSign(metrics=["flip_ratio"]))
    watched.build(x.shape)
    ops = _training_gradient_ops(watched, x)
    assert ops.count("FakeQuantWithMinMaxArgsGradient") == 1 and "SelectV2" in ops
    watched(x, training=True)
    assert [m.name for m in watched.metrics] == [f"flip_ratio/{watched.kernel_quantizer.name}"]


class _LarqPaddedScaled(bl.ScaledQuantConv2D):
    """ScaledQuantConv2D computed as larq computes it: the padded input, always."""

    def call(self, inputs, training=None):
        return lq.layers.QuantConv2D.call(self, inputs)


@pytest.mark.parametrize("clip, masked", [(1.3, True), (1.31, False)])
def test_training_padding_by_a_sum_is_float32_only_and_keeps_the_converted_graph(clip, masked):
    """Under mixed_bfloat16 the layer trains as larq's, bit for bit, outputs and gradients (the
    sum costs more than the copy there); larq's SteSign input quantizer gets the mask-product
    gradient where its bfloat16 window is ours (1.3), and stays larq's where bfloat16 rounds
    the clip value up (1.31 -> 1.3125). The converter still sees larq's padding (one
    LceBconv2d, no PAD)."""
    x = RNG.normal(size=(2, 8, 8, 32)).astype(np.float32)
    # Inputs on the window's edges: larq's rounded clip value and the bfloat16 values beside it.
    edge = float(np.array(clip, tf.bfloat16.as_numpy_dtype))
    x[0, 0, 0, :3] = [edge, np.nextafter(edge, 2 * edge), -edge]
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        ours = bl.QuantConv2D(8, 3, padding="same", pad_values=1.0,
                              input_quantizer=lq.quantizers.SteSign(clip_value=clip),
                              kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                              use_bias=False)
        reference = lq.layers.QuantConv2D.from_config(
            {**ours.get_config(), "dtype": "mixed_bfloat16"})
        reference.build(x.shape)
        ours.build(x.shape)
        reference.set_weights(ours.get_weights())
        got, want = (_outputs_and_gradients(layer, x, training=True)
                     for layer in (ours, reference))
        ops = _training_gradient_ops(ours, tf.cast(x, tf.bfloat16))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    for got_one, want_one in zip(got, want):
        np.testing.assert_array_equal(got_one, want_one)
    # One select for the kernel's quantizer (larq's in bfloat16), one for the input's unless
    # it is masked.
    assert ops.count("SelectV2") == (1 if masked else 2)
    assert ("Mul" in ops) is masked and "FakeQuantWithMinMaxArgsGradient" not in ops
    inputs = tf.keras.Input((8, 8, 32))
    model = tf.keras.Model(inputs, bl.QuantConv2D(
        32, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)(inputs))
    ops = op_histogram(lce.convert_keras_model(model, target="arm"))
    assert ops["LceBconv2d"] == 1 and ops.get("PAD", 0) == 0

