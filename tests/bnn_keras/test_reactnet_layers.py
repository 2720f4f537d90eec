"""ReActNet's RSign and RPReLU (bnn_keras.layers): their formulas, gradients, saving, LCE
conversion, and `bnn inspect`'s finding for an RSign threshold that LCE cannot fold."""

import bnn_keras  # noqa: F401  (must precede tensorflow)

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.layers import RPReLU, RSign
from convert.converter import convert_to_flatbuffer
from convert.lint import inspect_model
from convert.verify import verify_flatbuffer

C = 4


def _rng(seed=0):
    return np.random.default_rng(seed)


def _built(layer, shape=(2, 3, 3, C)):
    layer.build(tf.TensorShape(shape))
    return layer


def _set(variable, value):
    variable.assign(np.asarray(value, np.float32))


# -- RSign ---------------------------------------------------------------------------------------

def test_rsign_is_the_sign_of_x_minus_a_per_channel_threshold():
    rsign = _built(RSign())
    np.testing.assert_array_equal(rsign.threshold.numpy(), np.zeros(C))  # plain sign at start
    alpha = np.array([-0.5, 0.0, 0.25, 1.0], np.float32)
    _set(rsign.threshold, alpha)
    x = _rng().uniform(-2, 2, (2, 3, 3, C)).astype(np.float32)
    x[0, 0, 0] = alpha  # x == alpha: zero maps to +1, as LCE's quantize
    expected = np.where(x - alpha >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(rsign(x).numpy(), expected)
    assert rsign.precision == 1


@pytest.mark.parametrize("pseudo_gradient, clip_value", [("ste_sign", 1.0), ("ste_sign", 0.5),
                                                        ("approx_sign", None)])
def test_rsign_gradients_are_the_pseudo_gradient_at_x_minus_alpha(pseudo_gradient, clip_value):
    rsign = _built(RSign(pseudo_gradient=pseudo_gradient, clip_value=clip_value))
    alpha = np.array([-0.5, 0.0, 0.25, 1.0], np.float32)
    _set(rsign.threshold, alpha)
    x = tf.constant(_rng(1).uniform(-2, 2, (2, 3, 3, C)).astype(np.float32))
    dy = _rng(2).normal(size=(2, 3, 3, C)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = rsign(x)
    dx, dalpha = tape.gradient(y, [x, rsign.threshold], output_gradients=tf.constant(dy))
    z = x.numpy() - alpha
    if pseudo_gradient == "ste_sign":
        local = (np.abs(z) <= clip_value).astype(np.float32)
    else:
        local = np.where(np.abs(z) <= 1, 2 - 2 * np.abs(z), 0.0)
    np.testing.assert_allclose(dx.numpy(), dy * local, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dalpha.numpy(), -(dy * local).sum(axis=(0, 1, 2)), rtol=1e-5,
                               atol=1e-5)
    assert np.abs(dalpha.numpy()).min() > 0  # every channel's threshold learns


def test_rsign_rejects_an_unknown_pseudo_gradient():
    with pytest.raises(ValueError, match="Expected pseudo_gradient in"):
        RSign(pseudo_gradient="swish")


# -- RPReLU --------------------------------------------------------------------------------------

def _rprelu(seed=3):
    layer = _built(RPReLU())
    np.testing.assert_array_equal(layer.beta.numpy(), np.full(C, 0.25))  # PyTorch's PReLU init
    np.testing.assert_array_equal(layer.gamma.numpy(), np.zeros(C))
    rng = _rng(seed)
    gamma, beta, zeta = (rng.normal(0, 0.5, C).astype(np.float32) for _ in range(3))
    _set(layer.gamma, gamma)
    _set(layer.beta, beta)
    _set(layer.zeta, zeta)
    return layer, gamma, beta, zeta


def test_rprelu_is_a_prelu_between_two_shifts():
    layer, gamma, beta, zeta = _rprelu()
    x = _rng(4).normal(size=(2, 3, 3, C)).astype(np.float32)
    y = x - gamma
    np.testing.assert_allclose(layer(x).numpy(), np.where(y > 0, y, beta * y) + zeta, rtol=1e-6,
                               atol=1e-6)
    dense = _built(RPReLU(), shape=(5, C))  # any rank: one value per channel of the last axis
    assert dense(np.ones((5, C), np.float32)).shape == (5, C)


def test_rprelu_gradients_match_the_formula_and_finite_differences():
    layer, gamma, beta, zeta = _rprelu()
    x = tf.constant(_rng(5).normal(size=(2, 3, 3, C)).astype(np.float32))
    dy = _rng(6).normal(size=(2, 3, 3, C)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
    dx, dgamma, dbeta, dzeta = tape.gradient(
        out, [x, layer.gamma, layer.beta, layer.zeta], output_gradients=tf.constant(dy))
    y = x.numpy() - gamma
    slope = np.where(y > 0, 1.0, beta)
    np.testing.assert_allclose(dx.numpy(), dy * slope, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dgamma.numpy(), -(dy * slope).sum(axis=(0, 1, 2)), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(dbeta.numpy(), (dy * np.minimum(y, 0)).sum(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dzeta.numpy(), dy.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)

    # Central differences of sum(dy * f) in each parameter, in float64 (no kink is within h).
    def objective(g, b, z):
        y64 = x.numpy().astype(np.float64) - g
        return float((dy * (np.where(y64 > 0, y64, b * y64) + z)).sum())

    h = 1e-4
    params = [gamma.astype(np.float64), beta.astype(np.float64), zeta.astype(np.float64)]
    for index, tape_grad in enumerate([dgamma, dbeta, dzeta]):
        numeric = []
        for c in range(C):
            plus = [p.copy() for p in params]
            minus = [p.copy() for p in params]
            plus[index][c] += h
            minus[index][c] -= h
            numeric.append((objective(*plus) - objective(*minus)) / (2 * h))
        np.testing.assert_allclose(tape_grad.numpy(), numeric, rtol=1e-3, atol=1e-3)


# -- saving and LCE ------------------------------------------------------------------------------

def _block(input_shape=(8, 8, 32), *, before=None):
    """1x1 conv -> BN (or `before`) -> binary conv with an RSign input quantizer -> RPReLU."""
    inputs = tf.keras.Input(input_shape)
    if before is None:
        x = tf.keras.layers.Conv2D(32, 1, use_bias=False, name="conv")(inputs)
        x = tf.keras.layers.BatchNormalization(name="bn")(x)
    else:
        x = inputs if before == "input" else before(inputs)
    x = lq.layers.QuantConv2D(
        32, 3, padding="same", pad_values=1.0, use_bias=False, name="bconv",
        input_quantizer=RSign(name="rsign"), kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip")(x)
    x = RPReLU(name="rprelu")(x)
    model = tf.keras.Model(inputs, x)
    rng = _rng(7)
    for w in model.weights:  # non-trivial thresholds, shifts and statistics
        if "kernel" not in w.name and not w.name.startswith("conv/"):
            value = rng.normal(0, 0.3, w.shape)
            _set(w, np.abs(value) + 0.5 if "variance" in w.name else value)
    return model


def test_rsign_and_rprelu_round_trip_config_and_saved_file(tmp_path):
    rsign = RSign(pseudo_gradient="approx_sign", clip_value=None, name="r")
    again = RSign.from_config(rsign.get_config())
    assert (again.pseudo_gradient, again.clip_value, again.name) == ("approx_sign", None, "r")
    rprelu = RPReLU.from_config(RPReLU(name="p").get_config())
    assert rprelu.name == "p"
    assert float(rprelu.slope_initializer(()).numpy()) == 0.25

    model = _block()
    path = str(tmp_path / "block.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects: registered by bnn_keras
    assert isinstance(loaded.get_layer("bconv").input_quantizer, RSign)
    np.testing.assert_array_equal(loaded.get_layer("bconv").input_quantizer.threshold.numpy(),
                                  model.get_layer("bconv").input_quantizer.threshold.numpy())
    x = _rng(8).normal(size=(4, 8, 8, 32)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_threshold_after_conv_and_batchnorm_folds_and_rprelu_is_one_prelu_op():
    """Measured: the BN and the threshold fold into the float conv's bias, RPReLU's input shift
    into the LceBconv2d's output bias: RPReLU leaves PRELU and its output ADD; the flatbuffer
    agrees with Keras."""
    model = _block()
    flatbuffer = convert_to_flatbuffer(model)
    assert dict(flatbuffer.ops) == {"CONV_2D": 1, "LceQuantize": 1, "LceBconv2d": 1,
                                    "PRELU": 1, "ADD": 1}
    x = _rng(9).normal(size=(16, 8, 8, 32)).astype(np.float32)
    check = verify_flatbuffer(model, flatbuffer, x)
    assert check.max_abs_diff < 1e-4


def _codes(model):
    return {(f.layer, f.code, f.severity) for f in inspect_model(model)}


def test_inspect_reports_a_threshold_that_nothing_before_it_absorbs():
    # After conv -> BN: folded (above), nothing to report.
    assert _codes(_block()) == set()
    # After a max-pool: a float SUB stays in the flatbuffer, and inspect says why.
    pooled = _block((16, 16, 32), before=tf.keras.layers.MaxPool2D(2, name="pool"))
    assert convert_to_flatbuffer(pooled).ops["SUB"] == 1  # the threshold's
    assert _codes(pooled) == {("bconv", "rsign-unfolded", "warning")}
    (finding,) = inspect_model(pooled)
    assert (finding.layer, finding.code, finding.severity) == ("bconv", "rsign-unfolded",
                                                               "warning")
    assert "follows 'pool' (MaxPooling2D)" in finding.message
    assert "float SUB" in finding.message and "input_quantizer='ste_sign'" in finding.fix
    # A BatchNorm that follows no conv becomes MUL and ADD, and the SUB stays after them.
    normed = _block(before=tf.keras.layers.BatchNormalization(name="bn"))
    assert convert_to_flatbuffer(normed).ops["SUB"] == 1
    assert _codes(normed) == {("bconv", "rsign-unfolded", "warning")}
    # Straight on the model input.
    (finding,) = inspect_model(_block(before="input"))
    assert finding.code == "rsign-unfolded" and "follows the model input" in finding.message
    # A plain sign after the same pooling converts without the SUB: nothing to report.
    inputs = tf.keras.Input((16, 16, 32))
    plain = tf.keras.Model(inputs, lq.layers.QuantConv2D(
        32, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)(
            tf.keras.layers.MaxPool2D(2)(inputs)))
    assert inspect_model(plain) == []


def test_inspect_accepts_a_threshold_whose_input_also_feeds_a_shortcut():
    """ReActNet's case: the unshifted tensor is needed by the shortcut, so one SUB is needed
    whatever comes before it."""
    inputs = tf.keras.Input((8, 8, 32))
    x = tf.keras.layers.MaxPool2D(1, name="pool")(inputs)
    y = lq.layers.QuantConv2D(32, 1, input_quantizer=RSign(), kernel_quantizer="ste_sign",
                              kernel_constraint="weight_clip", use_bias=False, name="bconv")(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Add(name="add")([x, y]))
    assert inspect_model(model) == []
