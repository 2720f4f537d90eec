"""Tests for bnn_keras/model_stats.py on small models whose numbers are computed by hand."""

import bnn_keras  # noqa: F401  (must come before tensorflow)

import larq as lq
import pytest
import tensorflow as tf

from bnn_keras import model_stats


def _mixed_model() -> tf.keras.Model:
    """8x8x3 input; one layer of each kind model_stats has to tell apart."""
    inputs = tf.keras.Input((8, 8, 3), name="input")
    # Float input, binary kernel: 3*3*3*4 = 108 binary weights, 108 * 64 pixels MACs.
    x = lq.layers.QuantConv2D(
        4, 3, padding="same", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
        use_bias=False, name="first",
    )(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)  # 4 * 4 = 16 float weights
    # Binary conv, zero padding, 4 input channels: 3*3*4*8 = 288 binary weights + 8 float biases.
    x = lq.layers.QuantConv2D(
        8, 3, padding="same", input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", name="bconv",
    )(x)
    # 2-bit input, binary kernel: 1*1*8*8 = 64 binary weights.
    x = lq.layers.QuantConv2D(
        8, 1, input_quantizer=lq.quantizers.DoReFaQuantizer(k_bit=2),
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False,
        name="dorefa",
    )(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # Binary Dense: 8*5 = 40 binary weights, 40 binary MACs, but no LCE op.
    x = lq.layers.QuantDense(
        5, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=False, name="bdense",
    )(x)
    outputs = tf.keras.layers.Dense(2, name="head")(x)  # 5*2 + 2 = 12 float weights
    return tf.keras.Model(inputs, outputs, name="mixed")


@pytest.fixture(scope="module")
def mixed() -> tf.keras.Model:
    return _mixed_model()


def test_layer_table_counts_each_layer(mixed):
    rows = {s.name: s for s in model_stats.layer_table(mixed)}
    assert list(rows) == ["input", "first", "bn", "bconv", "dorefa", "pool", "bdense", "head"]
    assert (rows["first"].params, rows["first"].binary_params, rows["first"].macs) == (108, 108, 6912)
    assert rows["first"].binary_macs == 0 and not rows["first"].binarized
    assert rows["bn"].params == 16 and rows["bn"].binary_params == 0 and rows["bn"].macs == 0
    bconv = rows["bconv"]
    assert (bconv.params, bconv.binary_params, bconv.float_params) == (296, 288, 8)
    assert (bconv.macs, bconv.binary_macs) == (288 * 64, 288 * 64)
    assert bconv.binarized and bconv.lce_bconvs == 1
    assert (bconv.input_bits, bconv.kernel_bits) == (1, 1)
    assert bconv.output_shape == (None, 8, 8, 8)
    assert rows["dorefa"].input_bits == 2 and rows["dorefa"].binary_macs == 0
    assert rows["bdense"].binary_macs == 40 and not rows["bdense"].binarized
    assert rows["head"].macs == 10 and rows["head"].params == 12
    assert rows["input"].output_shape == (None, 8, 8, 3)
    # Which quantizers each layer runs (input / kernel), as `bnn summary` shows them.
    assert rows["first"].quantizers == "- / SteSign(clip 1)"
    assert rows["bconv"].quantizers == "SteSign(clip 1) / SteSign(clip 1)"
    assert rows["dorefa"].quantizers == "DoReFa(bits 2) / SteSign(clip 1)"
    assert rows["bn"].quantizers == rows["head"].quantizers == ""


def test_lce_notes_say_why_a_quantized_layer_is_not_binarized(mixed):
    notes = {s.name: s.lce_note for s in model_stats.layer_table(mixed)}
    assert notes["first"].startswith("float input")
    assert notes["dorefa"].startswith("2-bit activation quantizer")
    assert "binary Dense is not an LCE op" in notes["bdense"]
    assert "pad_values=1.0" in notes["bconv"] and "4 input channels" in notes["bconv"]
    assert notes["bn"] == notes["head"] == notes["pool"] == ""


def test_model_summary_totals(mixed):
    stats = model_stats.model_summary(mixed)
    assert stats.total_params == mixed.count_params() == 536
    assert stats.binary_params == 108 + 288 + 64 + 40
    assert stats.float_params == 36
    # 500 bits + 36 * 32 bits = 1652 bits -> 206.5 bytes, rounded up.
    assert stats.size_bytes == 207
    assert stats.float32_size_bytes == 4 * 536
    assert stats.total_macs == 6912 + 18432 + 4096 + 40 + 10
    assert stats.binary_macs == 18432 + 40
    assert stats.binary_mac_fraction == pytest.approx(18472 / 29490)
    assert stats.lce_bconvs == model_stats.count_binary_convs(mixed) == 1


def test_lce_bytes_store_weights_as_lce_does(mixed):
    rows = {s.name: s.lce_bytes for s in model_stats.layer_table(mixed)}
    # Float conv with a folded binary kernel: 108 float32 + a 4-channel TFLite bias.
    assert rows["first"] == 4 * 108 + 4 * 4
    # BatchNorm right after a conv folds into it.
    assert rows["bn"] == 0
    # LceBconv2d: 3x3 x ceil(4/32) words x 8 filters, multiplier + bias, and the Keras bias.
    assert rows["bconv"] == 4 * 9 * 1 * 8 + 8 * 8 + 4 * 8
    assert rows["dorefa"] == 4 * 64 + 4 * 8
    assert rows["bdense"] == 4 * 40 + 4 * 5
    assert rows["head"] == 4 * 12
    assert rows["pool"] == rows["input"] == 0
    assert model_stats.model_summary(mixed).lce_size_bytes == 1500 + 448 + 384 + 288 + 180 + 48


def test_fold_parts_follow_the_constant_folding_limit():
    scaled = lq.quantizers.MagnitudeAwareSign()
    # XNOR-Net's fc6 at 224 px: 37.7 M weights, more than 2**25.
    assert model_stats.lce_fold_parts((6, 6, 256, 4096), scaled) == 2
    assert model_stats.lce_fold_parts((1, 1, 8192, 4096), "ste_sign") == 2  # exactly 2**25
    assert model_stats.lce_fold_parts((1, 1, 8191, 4096), "ste_sign") == 1
    # A plain sign kernel above 2**25 weights folds (BinaryAlexNet's 9216x4096 fc6 at 224 px).
    assert model_stats.lce_fold_parts((1, 1, 9216, 4096), "ste_sign") == 1
    # weights + filters = 2**25 still folds with a scale; one more input channel does not.
    assert model_stats.lce_fold_parts((1, 1, 8191, 4096), scaled) == 1
    assert model_stats.lce_fold_parts((1, 1, 8192, 4096), scaled) == 2
    assert model_stats.lce_fold_parts((3, 3, 64, 64), None) == 1


def test_kernel_too_large_to_fold_is_not_counted_as_bconv():
    inputs = tf.keras.Input((1, 1, 8192))
    outputs = lq.layers.QuantConv2D(
        4096, 1, input_quantizer="ste_sign", kernel_quantizer=lq.quantizers.MagnitudeAwareSign(),
        kernel_constraint="weight_clip", use_bias=False, name="fc",
    )(inputs)
    (fc,) = [s for s in model_stats.layer_table(tf.keras.Model(inputs, outputs)) if s.name == "fc"]
    assert fc.lce_bconvs == 0 and not fc.binarized
    assert "too large for LCE to fold" in fc.lce_note and "two float32 copies" in fc.lce_note
    assert "split it into 2 convs of 2,048 filters" in fc.lce_note  # 2048 * 8193 <= 2**25
    assert fc.lce_bytes == 2 * 4 * 2**25 + 4 * 4096


def test_one_padding_and_32_channels_leave_no_note_and_nested_models_are_flattened():
    inner_in = tf.keras.Input((6, 6, 32))
    inner_out = lq.layers.QuantConv2D(
        16, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False, name="b1",
    )(inner_in)
    inner = tf.keras.Model(inner_in, inner_out, name="inner")
    inputs = tf.keras.Input((6, 6, 32))
    model = tf.keras.Model(inputs, inner(inputs))
    rows = model_stats.layer_table(model)
    b1 = [s for s in rows if s.name == "b1"]
    assert len(b1) == 1 and b1[0].lce_note == "" and b1[0].binarized
    assert b1[0].macs == 3 * 3 * 32 * 16 * 36


def test_multi_base_layer_counts_one_bconv_per_base():
    from bnn_keras.layers import MultiBaseQuantConv2D

    inputs = tf.keras.Input((4, 4, 32))
    outputs = MultiBaseQuantConv2D(
        8, 3, bases=3, padding="same", pad_values=1.0, kernel_constraint="weight_clip",
        use_bias=False, name="mb",
    )(inputs)
    stats = model_stats.model_summary(tf.keras.Model(inputs, outputs))
    (mb,) = [s for s in stats.layers if s.name == "mb"]
    assert mb.lce_bconvs == 3
    # Three binary 3x3x32x8 kernels plus two float shifts beta.
    assert (mb.binary_params, mb.float_params) == (3 * 2304, 2)
    assert mb.binary_macs == mb.macs == 3 * 2304 * 16


def test_format_table_lists_layers_totals_and_summary(mixed):
    text = model_stats.format_table(model_stats.model_summary(mixed))
    lines = text.splitlines()
    # header, rule, 8 layers, rule, total, blank, then the 6 summary lines.
    assert len(lines) == 2 + 8 + 2 + 1 + 6
    assert lines[0].startswith("Layer") and "LCE note" in lines[0]
    assert lines[5].split()[:4] == ["bconv", "QuantConv2D", "1", "1"]
    assert "Quantizers (in / W)" in lines[0] and "SteSign(clip 1) / SteSign(clip 1)" in lines[5]
    assert lines[11].split()[:3] == ["Total", "536", "500"]
    assert "Total params: 536 (500 binary, 36 float)" in text
    assert "Expected LceBconv2d ops: 1" in text
    assert "MACs: 29,490 (62.6% binary)" in text  # 18472 / 29490 = 0.6264
    # 1348 bytes of weights (2848 with the format's base): 0.9 x 1348 + 8 x 180 = 2653 bytes
    # to 1348 + 8 x 300 = 3748 bytes.
    assert model_stats.predicted_size_range(model_stats.model_summary(mixed)) == (2653, 3748)
    assert lines[-1] == ("Predicted LCE flatbuffer: 2.59 KiB to 3.66 KiB (weights 1.32 KiB as "
                         "LCE stores them, 90%-100% of that measured, plus the graph's 180-300 "
                         "bytes per layer for 8 layers; `bnn summary --convert` measures it)")
    without_notes = model_stats.format_table(model_stats.layer_table(mixed), notes=False)
    assert "LCE note" not in without_notes and "Model:" not in without_notes


def test_unbuilt_model_is_rejected():
    model = tf.keras.Sequential([tf.keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Expected a built model"):
        model_stats.layer_table(model)
