"""Quantizers: forward sign, pseudo-gradients against NumPy oracles, larq parity, LCE, config."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import quantizers as bq
from convert.flatbuffer import op_histogram

# Window edges (+/-1, +/-1.3), zero, points just inside/outside, and the tails.
GRID = np.array(
    [-3.0, -1.5, -1.3, -1.0001, -1.0, -0.999, -0.5, -1e-3, 0.0, 1e-3, 0.5, 0.999, 1.0, 1.0001,
     1.3, 1.5, 3.0],
    dtype=np.float32,
)
# A non-constant upstream gradient proves the pseudo-gradient multiplies dy (not replaces it).
DY = np.linspace(0.5, 2.0, GRID.size).astype(np.float32)


def _grad(fn, x=GRID, dy=DY):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(y * tf.cast(dy, y.dtype))
    return y.numpy(), tape.gradient(loss, x).numpy()


def _np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def _np_swish_dx(x, beta):
    z = beta * x
    return beta * (2 - z * np.tanh(z / 2)) / (1 + np.cosh(z))


def _np_signswish(x, beta):
    s = 1 / (1 + np.exp(-beta * x))
    return 2 * s * (1 + beta * x * (1 - s)) - 1


@pytest.mark.parametrize(
    "quantizer", [bq.SteSign(), bq.SteSign(1.3), bq.ApproxSign(), bq.SignSwish(), bq.SignSwish(2.0, trainable_beta=True)],
    ids=["ste", "ste1.3", "approx", "swish", "swish-trainable"],
)
def test_forward_is_sign_with_zero_to_plus_one(quantizer):
    y = quantizer(tf.constant(GRID)).numpy()
    np.testing.assert_array_equal(y, _np_sign(GRID))
    assert y[GRID == 0.0][0] == 1.0


@pytest.mark.parametrize("clip", [1.0, 1.3, 0.5])
def test_ste_sign_gradient(clip):
    _, g = _grad(bq.SteSign(clip_value=clip))
    np.testing.assert_allclose(g, DY * (np.abs(GRID) <= clip), rtol=0, atol=0)


def _gradient_op_types(fn, dtype):
    """The op types of `fn`'s traced gradient graph for an input of `dtype`."""

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return tape.gradient(y, x, output_gradients=tf.ones_like(y))

    graph = gradient.get_concrete_function(tf.TensorSpec((4, 5), dtype)).graph
    return [op.type for op in graph.get_operations()]


def test_ste_sign_backward_is_one_fused_op_in_float32_and_a_mask_product_in_bfloat16():
    """float32: TensorFlow's FakeQuantWithMinMaxArgsGradient (one pass); bfloat16: dy times
    the mask, no select; float16: the where/abs form."""
    fused = _gradient_op_types(lambda x: bq.ste_sign(x, clip_value=1.3), tf.float32)
    assert fused.count("FakeQuantWithMinMaxArgsGradient") == 1
    assert not {"Abs", "LessEqual", "SelectV2"} & set(fused)
    masked = _gradient_op_types(lambda x: bq.ste_sign(x, clip_value=1.3), tf.bfloat16)
    assert {"Abs", "LessEqual", "Mul"} <= set(masked) and "SelectV2" not in masked
    general = _gradient_op_types(lambda x: bq.ste_sign(x, clip_value=1.3), tf.float16)
    assert {"Abs", "LessEqual", "SelectV2"} <= set(general)
    assert "FakeQuantWithMinMaxArgsGradient" not in masked + general


@pytest.mark.parametrize("clip", [1.0, 1.3, 1.31, 0.7, 1e-3])
def test_bfloat16_ste_gradient_has_the_float32_window(clip):
    """Every bfloat16 value near the edges: the gradient passes where |float32(x)| <= clip,
    also where bfloat16 rounds the clip value up (1.31 -> 1.3125)."""
    bf16 = tf.bfloat16.as_numpy_dtype
    edge = np.array(clip, np.float32)
    # The bfloat16 grid around the edge: float32 values with the low 16 bits cleared.
    steps = np.arange(-4, 5, dtype=np.int64) * 2**16
    grid = ((edge.view(np.uint32).astype(np.int64) & ~0xFFFF) + steps).astype(np.uint32)
    x = np.concatenate([grid.view(np.float32), -grid.view(np.float32)])
    with tf.GradientTape() as tape:
        t = tf.constant(x.astype(bf16))
        tape.watch(t)
        y = bq.ste_sign(t, clip_value=clip)
    g = tape.gradient(y, t, output_gradients=tf.constant(np.full(x.shape, 0.75).astype(bf16)))
    np.testing.assert_array_equal(np.asarray(tf.cast(g, tf.float32)),
                                  np.where(np.abs(x) <= np.float32(clip), 0.75, 0.0))


@pytest.mark.parametrize("clip", [1.0, 1.25, 1.3, 0.5, 2.0, 1e-3, 1e30])
def test_fused_window_is_the_clip_window_to_the_last_float(clip):
    """Both edges pass, their float32 neighbours outside do not, for every clip value the
    models use and far off them; a window the op cannot hold falls back to the formula."""
    assert bq._fused_window_is_exact(clip)
    edge = np.float32(clip)
    x = np.array([-np.nextafter(edge, np.float32(np.inf)), -edge, -np.nextafter(edge, 0),
                  np.nextafter(edge, 0), edge, np.nextafter(edge, np.float32(np.inf))], np.float32)
    _, g = _grad(lambda t: bq.ste_sign(t, clip_value=clip), x=x, dy=np.full(6, 0.75, np.float32))
    np.testing.assert_array_equal(g, [0, 0.75, 0.75, 0.75, 0.75, 0])
    for unusable in (0.0, -1.0, float("inf"), float("nan")):
        assert not bq._fused_window_is_exact(unusable)


def test_general_form_of_the_ste_gradient_equals_the_fused_one(monkeypatch):
    fused = _grad(bq.SteSign(clip_value=1.3))[1]
    monkeypatch.setattr(bq, "_fused_window_is_exact", lambda clip_value: False)
    assert "FakeQuantWithMinMaxArgsGradient" not in _gradient_op_types(
        lambda x: bq.ste_sign(x, clip_value=1.3), tf.float32)
    np.testing.assert_array_equal(_grad(bq.SteSign(clip_value=1.3))[1], fused)


def test_ste_sign_without_clip_passes_gradient_everywhere():
    _, g = _grad(bq.SteSign(clip_value=None))
    np.testing.assert_allclose(g, DY, rtol=0, atol=0)


def test_approx_sign_gradient():
    _, g = _grad(bq.ApproxSign())
    expected = DY * np.where(np.abs(GRID) <= 1, 2 - 2 * np.abs(GRID), 0.0)
    # float32 arithmetic on the same formula: only rounding differs.
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-7)
    assert g[GRID == 0.0][0] == pytest.approx(2 * DY[GRID == 0.0][0])


@pytest.mark.parametrize("beta", [5.0, 2.0, 10.0])
def test_sign_swish_gradient(beta):
    _, g = _grad(bq.SignSwish(beta=beta))
    # cosh/tanh in float32 vs float64: relative error ~1e-6.
    np.testing.assert_allclose(g, DY * _np_swish_dx(GRID.astype(np.float64), beta), rtol=1e-5, atol=1e-7)
    # At x = 0 the SignSwish derivative is beta * 2 / 2 = beta.
    assert g[GRID == 0.0][0] == pytest.approx(DY[GRID == 0.0][0] * beta, rel=1e-6)


def test_sign_swish_trainable_beta_gradients():
    beta0 = 3.0
    quantizer = bq.SignSwish(beta=beta0, trainable_beta=True)
    x = tf.constant(GRID)
    quantizer.build(x.shape)
    assert [w.name.split("/")[-1] for w in quantizer.trainable_weights] == ["beta:0"]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = tf.reduce_sum(quantizer(x) * DY)
    gx = tape.gradient(loss, x).numpy()
    gbeta = tape.gradient(loss, quantizer.beta_weight).numpy()
    x64 = GRID.astype(np.float64)
    np.testing.assert_allclose(gx, DY * _np_swish_dx(x64, beta0), rtol=1e-5, atol=1e-7)
    # d SS/d beta derived analytically; cross-checked against a central difference of the
    # smooth SignSwish function itself (an independent route to the same number).
    z = beta0 * x64
    analytic = np.sum(DY * x64 * (2 - z * np.tanh(z / 2)) / (1 + np.cosh(z)))
    h = 1e-6
    numeric = np.sum(DY * (_np_signswish(x64, beta0 + h) - _np_signswish(x64, beta0 - h)) / (2 * h))
    assert np.isfinite(gbeta)
    assert analytic == pytest.approx(numeric, rel=1e-6)
    assert gbeta == pytest.approx(analytic, rel=1e-5)
    # The value the gradient step changes is the weight, and the forward stays sign.
    quantizer.beta_weight.assign(7.0)
    _, g7 = _grad(quantizer)
    np.testing.assert_allclose(g7, DY * _np_swish_dx(x64, 7.0), rtol=1e-5, atol=1e-7)


def test_agrees_with_larq_where_they_overlap():
    y_ours, g_ours = _grad(bq.approx_sign)
    y_larq, g_larq = _grad(lq.quantizers.approx_sign)
    np.testing.assert_array_equal(y_ours, y_larq)
    np.testing.assert_allclose(g_ours, g_larq, rtol=1e-6, atol=1e-7)
    for beta in (5.0, 2.5):
        y_ours, g_ours = _grad(bq.SignSwish(beta))
        y_larq, g_larq = _grad(lq.quantizers.SwishSign(beta))
        np.testing.assert_array_equal(y_ours, y_larq)
        np.testing.assert_allclose(g_ours, g_larq, rtol=1e-5, atol=1e-7)
    y_ours, g_ours = _grad(bq.SteSign(1.3))
    y_larq, g_larq = _grad(lq.quantizers.SteSign(1.3))
    np.testing.assert_array_equal(y_ours, y_larq)
    np.testing.assert_array_equal(g_ours, g_larq)


@pytest.mark.parametrize(
    "fn",
    [bq.ste_sign, bq.approx_sign, bq.sign_swish, lambda x: bq.sign_swish(x, tf.Variable(5.0))],
    ids=["ste", "approx", "swish", "swish-tensor-beta"],
)
def test_bfloat16_inputs(fn):
    # Raw bfloat16 tensors, as a quantizer sees them inside a mixed_bfloat16 layer.
    x = tf.cast(tf.constant(GRID), tf.bfloat16)
    y, g = _grad(fn, x=x, dy=DY)
    assert y.dtype == tf.bfloat16.as_numpy_dtype and g.dtype == tf.bfloat16.as_numpy_dtype
    np.testing.assert_array_equal(y.astype(np.float32), _np_sign(GRID))
    g32 = _grad(fn)[1]
    # The pseudo-gradient is computed in float32 and rounded once to bfloat16 (8-bit mantissa);
    # x itself was rounded to bfloat16, which moves 0.999 and 1.0001 onto 1.0 (window edge).
    inside = ~np.isin(GRID, [-1.0001, -0.999, 0.999, 1.0001])
    np.testing.assert_allclose(g.astype(np.float32)[inside], g32[inside], rtol=2e-2, atol=1e-2)


def test_mixed_bfloat16_policy_in_a_larq_layer():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = lq.layers.QuantConv2D(
            4, 3, input_quantizer=bq.SignSwish(trainable_beta=True), kernel_quantizer=bq.ApproxSign(),
            use_bias=False,
        )
        x = tf.constant(np.random.default_rng(0).normal(size=(1, 5, 5, 3)), tf.float32)
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        grads = tape.gradient(loss, layer.trainable_weights)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert y.dtype == tf.bfloat16
    kernel = layer.kernel.latent_variable.numpy()
    expected = tf.nn.conv2d(_np_sign(x.numpy()).astype(np.float32), _np_sign(kernel).astype(np.float32), 1, "VALID")
    # +/-1 products summed over 27 terms are small integers, exact in bfloat16.
    np.testing.assert_array_equal(y.numpy().astype(np.float32), expected.numpy())
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_get_resolves_instances_classes_dicts_and_aliases():
    instance = bq.SignSwish(beta=2.0)
    assert bq.get(instance) is instance
    assert bq.get(None) is None
    assert isinstance(bq.get(bq.ApproxSign), bq.ApproxSign)
    assert type(bq.get("ste_sign")) is bq.SteSign
    assert type(bq.get("approx_sign")) is bq.ApproxSign
    assert type(bq.get("sign_swish")) is bq.SignSwish
    restored = bq.get(bq.serialize(bq.SteSign(clip_value=1.3)))
    assert type(restored) is bq.SteSign and restored.clip_value == 1.3
    hand_written = bq.get({"class_name": "SteSign", "config": {"clip_value": 1.25}})
    assert type(hand_written) is bq.SteSign and hand_written.clip_value == 1.25
    with pytest.raises(ValueError, match="approx_sign.*sign_swish.*ste_sign"):
        bq.get("stee_sign")


@pytest.mark.parametrize(
    "quantizer", [bq.SteSign(clip_value=1.3), bq.SteSign(clip_value=None), bq.ApproxSign(), bq.SignSwish(beta=3.0, trainable_beta=True)],
    ids=["ste", "ste-noclip", "approx", "swish"],
)
def test_config_round_trip(quantizer):
    config = quantizer.get_config()
    clone = type(quantizer).from_config(config)
    assert clone.get_config() == config
    via_keras = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(quantizer))
    assert type(via_keras) is type(quantizer) and via_keras.get_config() == config


def test_model_save_load_with_each_quantizer(tmp_path):
    x = tf.keras.Input((5, 5, 3))
    y = lq.layers.QuantConv2D(4, 3, input_quantizer=bq.SteSign(1.3), kernel_quantizer=bq.ApproxSign(), use_bias=False)(x)
    y = lq.layers.QuantConv2D(4, 1, input_quantizer=bq.SignSwish(4.0, trainable_beta=True), kernel_quantizer=bq.get("sign_swish"), use_bias=False)(y)
    model = tf.keras.Model(x, y)
    beta = model.layers[2].input_quantizer.beta_weight
    beta.assign(4.5)  # a non-default value must survive saving
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras")
    data = np.random.default_rng(1).normal(size=(2, 5, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(data).numpy(), model(data).numpy())
    assert type(loaded.layers[1].input_quantizer) is bq.SteSign
    assert loaded.layers[1].input_quantizer.clip_value == 1.3
    assert type(loaded.layers[1].kernel_quantizer) is bq.ApproxSign
    assert type(loaded.layers[2].kernel_quantizer) is bq.SignSwish
    assert loaded.layers[2].input_quantizer.beta_weight.numpy() == pytest.approx(4.5)


@pytest.mark.parametrize("name", ["ste_sign", "approx_sign", "sign_swish"])
def test_converts_to_lce_bconv2d(name):
    x = tf.keras.Input((4, 4, 32))
    quantizer = bq.SignSwish(trainable_beta=True) if name == "sign_swish" else bq.get(name)
    y = lq.layers.QuantConv2D(8, 3, input_quantizer=quantizer, kernel_quantizer=bq.get(name), use_bias=False)(x)
    ops = op_histogram(lce.convert_keras_model(tf.keras.Model(x, y), target="arm"))
    assert ops["LceBconv2d"] == 1
    assert ops["CONV_2D"] == 0


@pytest.mark.parametrize("quantizer", [bq.SteSign, bq.ApproxSign,
                                       bq.SignSwish, bq.LayerScaledSign])
def test_flip_ratio_is_logged_inside_larqs_metrics_scope(quantizer):
    """As larq's own quantizers: a kernel quantizer made inside
    `lq.context.metrics_scope(["flip_ratio"])` logs the ratio of its output signs that flipped;
    outside the scope, nothing is added."""
    def fitted(scope):
        with lq.context.metrics_scope(scope):
            inputs = tf.keras.Input((4,))
            dense = lq.layers.QuantDense(3, kernel_quantizer=quantizer(), input_quantizer=None,
                                         kernel_constraint="weight_clip")
            model = tf.keras.Model(inputs, dense(inputs))
        model.compile(tf.keras.optimizers.SGD(1.0), "mse")
        rng = np.random.default_rng(0)
        history = model.fit(rng.normal(size=(16, 4)), rng.normal(size=(16, 3)), epochs=2,
                            batch_size=4, verbose=0).history
        return history, dense

    history, dense = fitted(["flip_ratio"])
    key = f"flip_ratio/{dense.kernel_quantizer.name}"
    assert set(history) == {"loss", key}
    assert all(0.0 <= ratio <= 1.0 for ratio in history[key]) and max(history[key]) > 0
    assert dense.kernel_quantizer.non_trainable_weights == []  # the metric's state is not weights
    history, _ = fitted([])
    assert set(history) == {"loss"}
