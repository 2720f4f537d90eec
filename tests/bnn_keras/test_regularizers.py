"""Regularizers: penalty values and gradients against NumPy, aliases, config, save/load."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import regularizers as br

W = np.array([[-1.5, -1.0, -0.5], [0.0, 0.3, 2.0]], dtype=np.float32)


def test_bipolar_paper_form_value_and_gradient():
    reg = br.Bipolar(factor=0.1)
    w = tf.Variable(W)
    with tf.GradientTape() as tape:
        value = reg(w)
    clipped = np.clip(W, -1, 1)
    assert value.numpy() == pytest.approx(0.1 * np.sum(1 - clipped**2), rel=1e-6)
    # Gradient -2w inside [-1, 1] pushes weights away from 0 towards +/-1; zero outside.
    # (At exactly |w| = 1 TF's clip passes the gradient through.)
    expected = np.where(np.abs(W) <= 1, -0.2 * W, 0.0)
    np.testing.assert_allclose(tape.gradient(value, w).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_bipolar_smooth_form_value_and_minima():
    reg = br.Bipolar(factor=0.5, smooth=True)
    assert reg(tf.constant(W)).numpy() == pytest.approx(0.5 * np.sum((1 - W**2) ** 2), rel=1e-6)
    assert reg(tf.constant([1.0, -1.0])).numpy() == 0.0
    w = tf.Variable([0.5, -0.5, 1.5])
    with tf.GradientTape() as tape:
        value = reg(w)
    # d/dw (1-w^2)^2 = -4w(1-w^2)
    np.testing.assert_allclose(tape.gradient(value, w).numpy(),
                               0.5 * -4 * np.array([0.5, -0.5, 1.5]) * (1 - np.array([0.5, -0.5, 1.5]) ** 2),
                               rtol=1e-6)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_bnn_plus_penalty_per_channel_and_per_layer(kind):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    alpha = np.array([0.1, 0.5, 1.0, 2.0], dtype=np.float32)
    diff = alpha - np.abs(kernel)
    expected = np.sum(np.abs(diff)) if kind == "l1" else np.sum(diff**2)
    assert br.bnn_plus_penalty(alpha, kernel, kind=kind).numpy() == pytest.approx(expected, rel=1e-5)
    reg = br.BnnPlusRegularizer(factor=0.01, kind=kind)
    assert reg(alpha, kernel).numpy() == pytest.approx(0.01 * expected, rel=1e-5)
    diff_layer = 0.7 - np.abs(kernel)
    expected_layer = np.sum(np.abs(diff_layer)) if kind == "l1" else np.sum(diff_layer**2)
    assert reg(tf.constant(0.7), kernel).numpy() == pytest.approx(0.01 * expected_layer, rel=1e-5)


def test_bnn_plus_rejects_unknown_kind():
    with pytest.raises(ValueError, match="l1"):
        br.BnnPlusRegularizer(kind="l3")


def test_get_aliases():
    bipolar = br.get("bipolar", factor=0.2)
    assert isinstance(bipolar, br.Bipolar) and not bipolar.smooth and bipolar.factor == 0.2
    assert br.get("bipolar-smooth").smooth is True
    l1 = br.get("bnn+-l1", factor=1e-3)
    assert isinstance(l1, br.BnnPlusRegularizer) and l1.kind == "l1" and l1.factor == 1e-3
    assert br.get("bnn+-l2").kind == "l2"
    assert isinstance(br.get("l2"), tf.keras.regularizers.L2)
    instance = br.Bipolar()
    assert br.get(instance) is instance and br.get(None) is None
    with pytest.raises(ValueError, match="bipolar.*bnn\\+-l1"):
        br.get("bipolarr")


@pytest.mark.parametrize("reg", [br.Bipolar(3e-4, smooth=True), br.Bipolar(), br.BnnPlusRegularizer(2e-3, "l2")])
def test_config_round_trip(reg):
    config = reg.get_config()
    assert type(reg).from_config(config).get_config() == config
    clone = br.get(tf.keras.utils.serialize_keras_object(reg))
    assert type(clone) is type(reg) and clone.get_config() == config


def test_bipolar_kernel_regularizer_in_a_model_saves_and_loads(tmp_path):
    x = tf.keras.Input((4, 4, 2))
    y = lq.layers.QuantConv2D(3, 3, kernel_quantizer="ste_sign", input_quantizer="ste_sign",
                              kernel_regularizer=br.Bipolar(0.01), kernel_constraint="weight_clip")(x)
    model = tf.keras.Model(x, y)
    kernel = model.layers[1].kernel.latent_variable.numpy()
    assert float(sum(model.losses)) == pytest.approx(0.01 * np.sum(1 - np.clip(kernel, -1, 1) ** 2), rel=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[1].kernel_regularizer, br.Bipolar)
    assert float(sum(loaded.losses)) == pytest.approx(float(sum(model.losses)), rel=1e-6)
    data = np.random.default_rng(2).normal(size=(2, 4, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded(data).numpy(), model(data).numpy())
