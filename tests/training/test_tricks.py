"""Training tricks as a model rewrite: targeted layers only, parameter counts, losses, training,
save/load, LCE conversion, registry models, and the refusals."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import larq_compute_engine as lce
import numpy as np
import pytest
import tensorflow as tf

import models
from bnn_keras import layers as bl
from bnn_keras import model_stats
from bnn_keras import quantizers as bq
from bnn_keras import regularizers as br
from bnn_keras.errors import BnnError
from bnn_keras.training.tricks import OUTPUT_SCALE_NAME, TRICKS, apply_tricks, binary_conv_names
from convert.flatbuffer import op_histogram

BINARY = ("b1", "b2")
CHANNELS = 32


def tiny(input_shape=(8, 8, 3), num_classes=3, softmax_in_dense=False) -> tf.keras.Model:
    """Float-input QuantConv2D stem, two binary convs, ReLUs of every kind, a softmax head."""
    x = inputs = tf.keras.Input(input_shape, name="input")
    # Binary kernel but float input: not a binary convolution, must stay untouched.
    x = lq.layers.QuantConv2D(CHANNELS, 3, padding="same", kernel_quantizer="ste_sign",
                              kernel_constraint="weight_clip", use_bias=False, name="stem")(x)
    x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
    x = tf.keras.layers.Activation("relu", name="stem_relu")(x)
    for i, name in enumerate(BINARY):
        x = lq.layers.QuantConv2D(
            CHANNELS, 3, strides=1 + i, padding="same", pad_values=1.0,
            input_quantizer="ste_sign", kernel_quantizer="ste_sign",
            kernel_constraint="weight_clip", use_bias=False, name=name,
        )(x)
        x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = tf.keras.layers.ReLU(name="block_relu")(x)
    x = tf.keras.layers.ReLU(max_value=6.0, name="relu6")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = tf.keras.layers.Dense(16, name="hidden")(x)
    x = tf.keras.layers.Activation("relu", name="hidden_relu")(x)
    if softmax_in_dense:
        x = tf.keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    else:
        x = tf.keras.layers.Dense(num_classes, name="head")(x)
        x = tf.keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return tf.keras.Model(inputs, x, name="tiny")


def _types(model):
    return {layer.name: type(layer).__name__ for layer in model.layers}


def _kernel_params(model, names=BINARY):
    return sum(int(np.prod(model.get_layer(n).kernel.shape)) for n in names)


def _latent(variable):
    return getattr(variable, "latent_variable", variable).numpy()


def _data(model, n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *model.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], size=n)
    return x, y


def test_trick_names_and_defaults_return_the_model_itself():
    assert TRICKS == ("input_quantizer", "kernel_quantizer", "regularizer",
                      "regularization_factor", "bases", "activation", "scale_output")
    model = tiny()
    assert apply_tricks(model) is model
    assert apply_tricks(model, activation="relu", regularization_factor=1e-3) is model
    assert binary_conv_names(model) == list(BINARY)


def test_quantizers_replaced_on_binary_convs_only_and_untouched_weights_kept():
    model = tiny()
    out = apply_tricks(model, input_quantizer="approx_sign", kernel_quantizer="sign_swish")
    assert [layer.name for layer in out.layers] == [layer.name for layer in model.layers]
    assert _types(out) == _types(model)
    for name in BINARY:
        layer = out.get_layer(name)
        assert type(layer.input_quantizer) is bq.ApproxSign
        assert type(layer.kernel_quantizer) is bq.SignSwish
    # Each layer owns its quantizer (a trainable beta must not be shared).
    assert out.get_layer("b1").kernel_quantizer is not out.get_layer("b2").kernel_quantizer
    stem = out.get_layer("stem")
    assert stem.input_quantizer is None
    assert type(stem.kernel_quantizer) is lq.quantizers.SteSign
    assert out.count_params() == model.count_params()
    np.testing.assert_array_equal(_latent(stem.kernel), _latent(model.get_layer("stem").kernel))
    assert model_stats.count_binary_convs(out) == 2


@pytest.mark.parametrize("alias,smooth", [("bipolar", False), ("bipolar-smooth", True)])
def test_bipolar_regularizer_on_every_binary_kernel(alias, smooth):
    model = tiny()
    assert len(model.losses) == 0
    out = apply_tricks(model, regularizer=alias, regularization_factor=1e-3)
    assert _types(out) == _types(model)
    for name in BINARY:
        reg = out.get_layer(name).kernel_regularizer
        assert isinstance(reg, br.Bipolar) and reg.factor == 1e-3 and reg.smooth is smooth
    assert out.get_layer("stem").kernel_regularizer is None
    losses = out.losses
    assert len(losses) == 2
    expected = sum(1e-3 * br.bipolar_penalty(_latent(out.get_layer(n).kernel), smooth=smooth)
                   for n in BINARY)
    np.testing.assert_allclose(float(tf.add_n(losses)), float(expected), rtol=1e-5)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_bnn_plus_turns_binary_convs_into_scaled_convs(kind):
    model = tiny()
    out = apply_tricks(model, regularizer=f"bnn+-{kind}", regularization_factor=1e-4)
    types = _types(out)
    assert {n: types[n] for n in BINARY} == {n: "ScaledQuantConv2D" for n in BINARY}
    assert {n: t for n, t in types.items() if n not in BINARY} == {
        n: t for n, t in _types(model).items() if n not in BINARY}
    # One alpha per output channel.
    assert out.count_params() == model.count_params() + 2 * CHANNELS
    b2 = out.get_layer("b2")
    assert b2.scale == "per_channel" and b2.scale_weight.shape == (CHANNELS,)
    assert b2.strides == (2, 2) and b2.pad_values == 1.0 and b2.padding == "same"
    assert isinstance(b2.kernel_constraint, lq.constraints.WeightClip)
    assert len(out.losses) == 2
    expected = sum(
        1e-4 * br.bnn_plus_penalty(out.get_layer(n).scale_weight.numpy(),
                                   _latent(out.get_layer(n).kernel), kind=kind)
        for n in BINARY)
    np.testing.assert_allclose(float(tf.add_n(out.losses)), float(expected), rtol=1e-5)
    assert model_stats.count_binary_convs(out) == 2


def test_bases_multiply_binary_kernels_and_carry_arguments_over():
    model = tiny()
    out = apply_tricks(model, bases=3)
    assert {n: type(out.get_layer(n)).__name__ for n in BINARY} == {
        n: "MultiBaseQuantConv2D" for n in BINARY}
    # K kernels per layer and K-1 trainable shifts beta_k; no bias either way.
    kernels = _kernel_params(model)
    assert out.count_params() == model.count_params() + 2 * kernels + 2 * 2
    b2 = out.get_layer("b2")
    assert b2.bases == 3 and b2.pad_values == 1.0 and b2.padding == "same"
    assert tuple(b2.strides) == (2, 2) and b2.use_bias is False
    assert isinstance(b2.kernel_constraint, lq.constraints.WeightClip)
    assert out.output_shape == model.output_shape
    assert model_stats.count_binary_convs(out) == 6
    # Quantizers and a regularizer go onto every base.
    both = apply_tricks(model, bases=2, input_quantizer="approx_sign", regularizer="bipolar")
    assert type(both.get_layer("b1").input_quantizer) is bq.ApproxSign
    assert len(both.losses) == 4


def test_prelu_replaces_plain_relus_only():
    model = tiny()
    out = apply_tricks(model, activation="prelu")
    types = _types(out)
    replaced = {n for n, t in types.items() if t != _types(model)[n]}
    assert replaced == {"stem_relu", "block_relu", "hidden_relu"}
    assert all(types[n] == "PReLU" for n in replaced)
    assert types["relu6"] == "ReLU" and types["predictions"] == "Activation"
    assert out.get_layer("stem_relu").shared_axes == [1, 2]
    assert out.get_layer("hidden_relu").shared_axes is None
    # One slope per channel (4-D) or per unit (2-D).
    assert out.count_params() == model.count_params() + 2 * CHANNELS + 16


def test_scale_output_before_activation_softmax():
    model = tiny()
    out = apply_tricks(model, scale_output=True)
    names = [layer.name for layer in out.layers]
    assert names[-2:] == [OUTPUT_SCALE_NAME, "predictions"]
    assert out.count_params() == model.count_params() + 1
    scale = out.get_layer(OUTPUT_SCALE_NAME)
    assert isinstance(scale, bl.LearnableScale)
    scale.scale.assign(3.0)
    x, _ = _data(out)
    logits = tf.keras.Model(out.input, out.get_layer("head").output)(x).numpy()
    np.testing.assert_allclose(out(x).numpy(), tf.nn.softmax(3.0 * logits).numpy(), rtol=1e-5)


def test_scale_output_splits_a_dense_softmax():
    model = tiny(softmax_in_dense=True)
    out = apply_tricks(model, scale_output=True)
    assert [layer.name for layer in out.layers][-3:] == ["head", OUTPUT_SCALE_NAME, "head_softmax"]
    assert out.get_layer("head").activation.__name__ == "linear"
    assert out.output_names == ["head_softmax"]
    x, _ = _data(out)
    # Scale 1 at start: the same function, with the head's weights carried over.
    np.testing.assert_allclose(out(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_all_tricks_train_save_reload_and_convert(tmp_path):
    model = tiny(input_shape=(8, 8, 32))
    out = apply_tricks(model, input_quantizer="approx_sign", kernel_quantizer="sign_swish",
                       regularizer="bipolar", bases=2, activation="prelu", scale_output=True)
    out.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                loss="sparse_categorical_crossentropy")
    x, y = _data(out)
    before = _latent(out.get_layer("b1").convs[1].kernel).copy()
    loss = out.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert not np.array_equal(before, _latent(out.get_layer("b1").convs[1].kernel))

    path = tmp_path / "tricks.keras"
    out.save(path)
    loaded = tf.keras.models.load_model(path)
    assert _types(loaded) == _types(out)
    assert type(loaded.get_layer("b2").kernel_quantizer) is bq.SignSwish
    np.testing.assert_allclose(loaded.predict(x, verbose=0), out.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)

    ops = op_histogram(lce.convert_keras_model(out, target="arm"))
    # K = 2 bases per binary conv: two LceBconv2d each.
    assert ops["LceBconv2d"] == 4 == model_stats.count_binary_convs(out)
    assert ops["PRELU"] >= 1


def test_bnn_plus_converts_to_one_bconv_per_binary_conv():
    out = apply_tricks(tiny(input_shape=(8, 8, 32)), regularizer="bnn+-l1",
                       kernel_quantizer="sign_swish")
    ops = op_histogram(lce.convert_keras_model(out, target="arm"))
    assert ops["LceBconv2d"] == 2


def test_mixed_precision_model_keeps_its_policy():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny()
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    out = apply_tricks(model, input_quantizer="sign_swish", bases=2, activation="prelu",
                       scale_output=True)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert out.get_layer("b1").compute_dtype == "bfloat16"
    assert out.get_layer("b1").input_quantizer.compute_dtype == "bfloat16"
    assert out.get_layer("stem_relu").compute_dtype == "bfloat16"
    assert out.get_layer(OUTPUT_SCALE_NAME).compute_dtype == "bfloat16"
    assert out.get_layer("predictions").compute_dtype == "float32"
    out.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = _data(out)
    assert np.isfinite(out.train_on_batch(x, y))


def test_sequential_model_is_rewritten():
    model = tf.keras.Sequential([
        tf.keras.Input((6, 6, 4)),
        lq.layers.QuantConv2D(8, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              use_bias=False, name="bconv"),
        tf.keras.layers.ReLU(name="relu"),
        tf.keras.layers.Flatten(name="flat"),
        tf.keras.layers.Dense(2, activation="softmax", name="head"),
    ], name="seq")
    out = apply_tricks(model, bases=2, activation="prelu", scale_output=True)
    assert _types(out)["bconv"] == "MultiBaseQuantConv2D" and _types(out)["relu"] == "PReLU"
    assert out.output_names == ["head_softmax"]


def test_registry_binary_densenet28():
    model = models.create_model("binary-densenet28", input_shape=(16, 16, 1), num_classes=10)
    binary = binary_conv_names(model)
    assert len(binary) == 23
    out = apply_tricks(model, input_quantizer="approx_sign", regularizer="bnn+-l1",
                       activation="prelu", scale_output=True)
    types = _types(out)
    assert all(types[n] == "ScaledQuantConv2D" for n in binary)
    assert all(type(out.get_layer(n).input_quantizer) is bq.ApproxSign for n in binary)
    # Transitions' and head's ReLUs (the small-input stem has none).
    relus = [n for n, t in _types(model).items() if t == "Activation" and n != "predictions"]
    assert sorted(n for n, t in types.items() if t == "PReLU") == sorted(relus) and relus
    prelu_params = sum(out.get_layer(n).count_params() for n in relus)
    assert prelu_params == sum(int(model.get_layer(n).output_shape[-1]) for n in relus)
    assert out.count_params() == model.count_params() + 23 * 64 + prelu_params + 1
    assert len(out.losses) == 23
    assert [layer.name for layer in out.layers][-2:] == [OUTPUT_SCALE_NAME, "predictions"]
    assert model_stats.count_binary_convs(apply_tricks(model, bases=2)) == 46


def test_registry_compact_bnn_refusals():
    model = models.create_model("compact-bnn", input_shape=(32, 32, 3), num_classes=10,
                                hidden_units=32)
    with pytest.raises(BnnError, match="already scales its logits.*logits_scale"):
        apply_tricks(model, scale_output=True)
    with pytest.raises(BnnError, match="no ReLU to replace.*already uses PReLU"):
        apply_tricks(model, activation="prelu")
    # Its Bipolar kernel regularizer is replaced, not stacked, by BNN+.
    out = apply_tricks(model, regularizer="bnn+-l2")
    assert len(out.losses) == len(model.losses) == len(binary_conv_names(model))
    assert all(out.get_layer(n).kernel_regularizer is None for n in binary_conv_names(model))


class _Subclassed(tf.keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.conv = lq.layers.QuantConv2D(4, 3, input_quantizer="ste_sign",
                                          kernel_quantizer="ste_sign")

    def call(self, x):
        return self.conv(x)


def _float_model():
    x = inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, name="conv")(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(2, name="logits")(x)
    return tf.keras.Model(inputs, x, name="float_net")


@pytest.mark.parametrize("make,kwargs,message", [
    (tiny, dict(bases=2, regularizer="bnn+-l1"),
     r"`bases` 2 cannot be combined with `regularizer` bnn\+-l1"),
    (_float_model, dict(bases=2),
     "`bases` 2: model float_net has no binary convolution"),
    (_float_model, dict(input_quantizer="approx_sign"),
     "`input_quantizer` approx_sign: model float_net has no binary convolution"),
    (_float_model, dict(activation="prelu"), "`activation` prelu: model float_net has no ReLU"),
    (_float_model, dict(scale_output=True), "`scale_output`: expected one softmax output"),
    (tiny, dict(input_quantizer="magic_sign"), "`input_quantizer` magic_sign: Expected one of"),
    (tiny, dict(kernel_quantizer=lq.quantizers.DoReFaQuantizer(k_bit=2)), "expected a 1-bit"),
    (tiny, dict(regularizer="bogus"), "`regularizer` bogus: Expected a regularizer alias"),
    (tiny, dict(bases=0), "`bases`: expected an integer >= 1"),
    (tiny, dict(regularizer="bipolar", regularization_factor="much"),
     "`regularization_factor`: expected a number >= 0"),
    (tiny, dict(activation="swish"), "`activation`: expected 'relu' or 'prelu'"),
])
def test_impossible_combinations_raise_one_clear_error(make, kwargs, message):
    with pytest.raises(BnnError, match=message):
        apply_tricks(make(), **kwargs)


def test_refusals_on_already_rewritten_and_subclassed_models():
    sub = _Subclassed()
    sub(tf.zeros((1, 8, 8, 3)))
    with pytest.raises(BnnError, match="'sub' is not a functional Keras model"):
        apply_tricks(sub, bases=2)
    scaled = apply_tricks(tiny(), scale_output=True)
    with pytest.raises(BnnError, match="already has a layer named 'output_scale'"):
        apply_tricks(scaled, scale_output=True)
    multi = apply_tricks(tiny(), bases=2)
    with pytest.raises(BnnError, match="'b1' of model tiny has 2 binary bases"):
        apply_tricks(multi, regularizer="bnn+-l1")
    # Re-applying bases sets K on the existing multi-base layers.
    assert apply_tricks(multi, bases=3).get_layer("b2").bases == 3
    bnn_plus = apply_tricks(tiny(), regularizer="bnn+-l1")
    with pytest.raises(BnnError, match="'b1' of model tiny is a BNN\\+ scaled"):
        apply_tricks(bnn_plus, bases=2)
