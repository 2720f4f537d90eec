"""convert.lint: each LCE efficiency problem is flagged on a purpose-built model."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from convert.lint import Finding, errors, format_findings, inspect_model

BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False)


def _model(*layers, input_shape=(16, 16, 32)) -> tf.keras.Model:
    inputs = tf.keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return tf.keras.Model(inputs, x)


def _codes(findings):
    return {(f.layer, f.code, f.severity) for f in findings}


def test_clean_binary_conv_has_no_findings():
    model = _model(lq.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0, name="b", **BINARY))
    assert inspect_model(model) == []
    assert format_findings([]).startswith("No problems found")


@pytest.mark.parametrize("side, kernel, wrong", [(2, 3, True), (3, 3, False), (4, 5, True),
                                                 (5, 5, False)])
def test_zero_padding_on_a_map_smaller_than_the_kernel_is_an_error(side, kernel, wrong):
    """LCE 0.16 computes these wrongly: the finding, and the conversion itself, agree."""
    import numpy as np

    from convert.converter import convert_model
    from convert.runtime import LceRuntime

    model = _model(lq.layers.QuantConv2D(64, kernel, padding="same", name="zp", **BINARY),
                   input_shape=(side, side, 64))
    codes = _codes(inspect_model(model))
    assert (("zp", "zero-padding-small-map", "error") in codes) is wrong
    assert ("zp", "zero-padding", "warning") in codes
    x = np.random.default_rng(0).normal(size=(2, side, side, 64)).astype("float32")
    got = LceRuntime(convert_model(model)).predict(x)
    assert bool(np.abs(got - model.predict(x, verbose=0)).max() > 1.0) is wrong
    # +1 padding is exact at every size.
    padded = _model(lq.layers.QuantConv2D(64, kernel, padding="same", pad_values=1.0, **BINARY),
                    input_shape=(side, side, 64))
    np.testing.assert_allclose(LceRuntime(convert_model(padded)).predict(x),
                               padded.predict(x, verbose=0), atol=1e-4)


def test_zero_padding_is_warning_on_arm_error_on_xcore():
    model = _model(lq.layers.QuantConv2D(32, 3, padding="same", name="zp", **BINARY))
    assert _codes(inspect_model(model)) == {("zp", "zero-padding", "warning")}
    assert _codes(inspect_model(model, target="xcore")) == {("zp", "zero-padding", "error")}
    # 1x1 "same" convs and "valid" convs do not pad at all.
    unpadded = _model(lq.layers.QuantConv2D(32, 1, padding="same", name="a", **BINARY),
                      lq.layers.QuantConv2D(32, 3, padding="valid", name="b", **BINARY))
    assert inspect_model(unpadded) == []


def test_channel_multiples():
    model = _model(lq.layers.QuantConv2D(12, 3, pad_values=1.0, name="odd_out", **BINARY),
                   lq.layers.QuantConv2D(32, 3, name="odd_in", **BINARY))
    findings = inspect_model(model)
    assert _codes(findings) == {("odd_out", "output-channels", "warning"),
                                ("odd_in", "input-channels", "warning")}
    odd_in = next(f for f in findings if f.code == "input-channels")
    assert "12 input channels" in odd_in.message and "32" in odd_in.message


def test_binary_dense_is_error_with_conv_fix():
    model = _model(tf.keras.layers.Flatten(name="flat"),
                   lq.layers.QuantDense(10, name="bdense", **BINARY),
                   tf.keras.layers.Dense(10, name="float_dense"))
    findings = inspect_model(model)
    assert _codes(findings) == {("bdense", "binary-dense", "error")}
    assert "1x1 binary QuantConv2D" in findings[0].fix


def test_reshape_between_quantizer_and_conv_is_error():
    model = _model(
        lq.quantizers.SteSign(name="sign"),
        tf.keras.layers.Permute((2, 1, 3), name="transpose"),
        lq.layers.QuantConv2D(32, 1, kernel_quantizer="ste_sign", use_bias=False, name="conv"),
    )
    findings = inspect_model(model)
    assert _codes(findings) == {("conv", "quantizer-separated", "error")}
    assert "'sign'" in findings[0].message and "'transpose'" in findings[0].message
    # The same quantizer directly before the conv is the pattern LCE matches: no error.
    direct = _model(
        lq.quantizers.SteSign(name="sign"),
        lq.layers.QuantConv2D(32, 1, kernel_quantizer="ste_sign", use_bias=False, name="conv"),
    )
    assert errors(inspect_model(direct)) == []


def test_multibit_activations_are_errors():
    model = _model(
        lq.layers.QuantConv2D(32, 3, input_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="activations"),
                              kernel_quantizer="ste_sign", name="dorefa_conv"),
        lq.quantizers.DoReFa(k_bit=4, mode="activations", name="dorefa4"),
        lq.layers.QuantConv2D(32, 1, input_quantizer="ste_sign", name="dorefa_weights",
                              kernel_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="weights")),
    )
    findings = inspect_model(model)
    assert _codes(findings) == {("dorefa_conv", "multibit-activation", "error"),
                                ("dorefa4", "multibit-activation", "error"),
                                ("dorefa_weights", "multibit-kernel", "error")}
    assert "2-bit" in findings[0].message


def test_float_input_is_info():
    model = _model(lq.layers.QuantConv2D(32, 3, kernel_quantizer="ste_sign", name="first"),
                   input_shape=(8, 8, 3))
    assert _codes(inspect_model(model)) == {("first", "float-input", "info")}


def test_mixed_precision_is_info():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _model(lq.layers.QuantConv2D(32, 3, pad_values=1.0, name="b", **BINARY))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    findings = inspect_model(model)
    assert [(f.code, f.severity) for f in findings] == [("mixed-precision", "info")]


def test_unknown_target():
    with pytest.raises(BnnError, match="Expected target one of"):
        inspect_model(_model(tf.keras.layers.Flatten()), target="gpu")


def test_format_findings_names_layer_and_fix():
    text = format_findings([
        Finding("b1", "binary-dense", "error", "msg one", "fix one"),
        Finding("c2", "input-channels", "warning", "msg two", "fix two"),
    ])
    assert "ERROR   b1: [binary-dense] msg one" in text
    assert "fix: fix two" in text
    assert text.splitlines()[-1] == "1 error, 1 warning, 0 infos"


def test_registry_densenet_is_clean():
    """"Clean" for registry models: no error findings; only channel-multiple warnings allowed."""
    import models

    model = models.create_model("binary-densenet28", input_shape=(32, 32, 3), num_classes=10)
    findings = inspect_model(model)
    assert errors(findings) == []
    warnings = {f.code for f in findings if f.severity == "warning"}
    assert warnings <= {"input-channels", "output-channels"}


def test_kernel_too_large_for_lce_to_fold_is_an_error_with_the_split_as_fix():
    # 8192 x 4096 = exactly 2**25 weights: the plain-sign size LCE 0.16 leaves unfolded.
    model = _model(lq.layers.QuantConv2D(4096, 1, name="fc", **BINARY), input_shape=(1, 1, 8192))
    (finding,) = inspect_model(model)
    assert (finding.layer, finding.code, finding.severity) == ("fc", "kernel-too-large", "error")
    assert "33,554,432 weights" in finding.message and "stored as float32" in finding.message
    assert finding.fix.startswith("split it along its output channels into 2 layers of 2048")
    # 32 input channels fewer or 1024 more fold, and are clean (BinaryAlexNet's fc6 at 224 px
    # is 9216 x 4096).
    for channels in (8160, 9216):
        other = _model(lq.layers.QuantConv2D(4096, 1, name="fc", **BINARY),
                       input_shape=(1, 1, channels))
        assert inspect_model(other) == []


def test_magnitude_aware_sign_on_a_float_layer_is_reported():
    scaled = dict(kernel_quantizer=lq.quantizers.MagnitudeAwareSign(), use_bias=False)
    model = _model(
        lq.layers.QuantConv2D(32, 1, name="binary", input_quantizer="ste_sign", **scaled),
        lq.layers.QuantConv2D(32, 1, name="dorefa",
                              input_quantizer=lq.quantizers.DoReFaQuantizer(k_bit=2), **scaled),
    )
    assert _codes(inspect_model(model)) == {
        ("dorefa", "multibit-activation", "error"),
        ("dorefa", "magnitude-aware-float", "info"),
    }


@pytest.mark.slow
def test_xnornet_fc6_is_split_at_224_and_flagged_when_whole():
    import models

    whole = models.create_model("xnornet", input_shape=(224, 224, 3), num_classes=1000,
                                fc6_parts=1)
    assert _codes(inspect_model(whole)) == {("fc6", "kernel-too-large", "error")}
    assert "two float32 copies" in inspect_model(whole)[0].message
    split = models.create_model("xnornet", input_shape=(224, 224, 3), num_classes=1000)
    assert inspect_model(split) == []
    assert split.count_params() == whole.count_params() == 62_396_768
