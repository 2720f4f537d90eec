"""Float baselines: same network without quantizers, equal to a plain Keras model."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import regularizers as bnn_regularizers
from bnn_keras.training.baselines import float_equivalent
from bnn_keras.layers import MultiBaseQuantConv2D
from bnn_keras.training.precision import precision_policy


def _binary_model() -> tf.keras.Model:
    inputs = tf.keras.Input((6, 6, 3), name="input")
    x = lq.layers.QuantConv2D(
        4, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
        kernel_regularizer=bnn_regularizers.Bipolar(1e-3), use_bias=False, name="conv",
    )(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = tf.keras.layers.Flatten(name="flat")(x)
    x = lq.layers.QuantDense(
        5, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", name="dense",
    )(x)
    return tf.keras.Model(inputs, x, name="tiny_bnn")


def _plain_model() -> tf.keras.Model:
    inputs = tf.keras.Input((6, 6, 3), name="input")
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = tf.keras.layers.Flatten(name="flat")(x)
    x = tf.keras.layers.Dense(5, name="dense")(x)
    return tf.keras.Model(inputs, x)


def test_float_copy_equals_plain_keras_model_with_the_same_weights():
    tf.keras.utils.set_random_seed(0)
    binary = _binary_model()
    # Latent weights beyond +/-1 show that the copy uses them unclipped and unbinarized.
    binary.get_layer("conv").set_weights([np.random.uniform(-2, 2, (3, 3, 3, 4))])
    float_model = float_equivalent(binary)
    plain = _plain_model()
    plain.set_weights(float_model.get_weights())

    assert float_model.count_params() == binary.count_params() == plain.count_params()
    np.testing.assert_array_equal(
        float_model.get_layer("conv").get_weights()[0], binary.get_layer("conv").get_weights()[0]
    )
    x = np.random.normal(size=(2, 6, 6, 3)).astype(np.float32)
    # Same ops on the same float32 values: only summation order may differ.
    np.testing.assert_allclose(float_model(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(binary(x).numpy(), plain(x).numpy(), atol=1e-2)
    conv = float_model.get_layer("conv")
    assert conv.input_quantizer is None and conv.kernel_quantizer is None
    assert conv.kernel_constraint is None and conv.kernel_regularizer is None
    assert not float_model.losses  # the bipolar penalty went with the binary weights


def test_float_copy_keeps_mixed_precision_and_fresh_init_option():
    with precision_policy("mixed_bfloat16"):
        binary = _binary_model()
    float_model = float_equivalent(binary, copy_weights=False)
    assert float_model.get_layer("conv").compute_dtype == "bfloat16"
    assert not np.array_equal(
        float_model.get_layer("dense").get_weights()[0], binary.get_layer("dense").get_weights()[0]
    )


def test_multi_base_layer_becomes_float_with_the_same_parameters():
    inputs = tf.keras.Input((5, 5, 2))
    outputs = MultiBaseQuantConv2D(3, 3, bases=2, name="mb")(inputs)
    binary = tf.keras.Model(inputs, outputs)
    float_model = float_equivalent(binary)
    assert float_model.count_params() == binary.count_params()
    layer = float_model.get_layer("mb")
    x = np.random.normal(size=(1, 5, 5, 2)).astype(np.float32)
    beta = float(layer.betas[0].numpy())
    kernels = [conv.kernel.numpy() for conv in layer.convs]
    # Pass-through quantizer: base 1 = x, base 2 = x - beta * x.
    expected = tf.nn.conv2d(x, kernels[0], 1, "VALID") + tf.nn.conv2d(
        (1 - beta) * x, kernels[1], 1, "VALID"
    ) + layer.convs[0].bias.numpy()
    np.testing.assert_allclose(float_model(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_subclassed_model_is_rejected():
    class Sub(tf.keras.Model):
        def call(self, x):
            return x

    with pytest.raises((ValueError, NotImplementedError)):
        float_equivalent(Sub())


def test_input_activation_replaces_each_input_quantizer_and_survives_saving(tmp_path):
    tf.keras.utils.set_random_seed(1)
    binary = _binary_model()
    float_model = float_equivalent(binary, input_activation="relu")
    inputs = tf.keras.Input((6, 6, 3))
    x = tf.keras.layers.ReLU()(inputs)
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = tf.keras.layers.ReLU()(tf.keras.layers.Flatten()(x))
    plain = tf.keras.Model(inputs, tf.keras.layers.Dense(5, name="dense")(x))
    plain.set_weights(float_model.get_weights())
    x = np.random.normal(size=(2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(float_model(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-5)
    float_model.save(tmp_path / "float.keras")
    restored = tf.keras.models.load_model(tmp_path / "float.keras")
    np.testing.assert_array_equal(restored(x).numpy(), float_model(x).numpy())
