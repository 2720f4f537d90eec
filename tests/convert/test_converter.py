"""LCE conversion: options, the float32 rebuild, op counts, metadata, loading errors."""

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import model_stats
from bnn_keras.errors import BnnError
from convert import converter, flatbuffer, loading, metadata
from tests.conftest import DIGITS_SHAPE


def test_converted_densenet_has_one_lce_bconv_per_binary_conv(digits_run, digits_flatbuffer):
    ops = flatbuffer.op_histogram(digits_flatbuffer)
    binary_convs = model_stats.count_binary_convs(digits_run.model)
    assert binary_convs == 23  # BinaryDenseNet28: 6 + 6 + 6 + 5 binary 3x3 convolutions
    assert ops["LceBconv2d"] == binary_convs
    assert ops["LceQuantize"] == binary_convs
    # The full-precision stem + 3 transitions stay float convolutions.
    assert ops["CONV_2D"] == 4


def test_float32_rebuild_equals_a_float32_build_with_the_same_weights(digits_run):
    import models

    model = digits_run.model
    assert converter.is_mixed_precision(model) == (
        digits_run.config["precision_resolved"] == "mixed_bfloat16")
    rebuilt = converter.as_float32(model)
    assert not converter.is_mixed_precision(rebuilt)
    reference = models.create_model("binary-densenet28", input_shape=DIGITS_SHAPE, num_classes=10)
    reference.set_weights(model.get_weights())
    x = np.random.default_rng(0).standard_normal((8, *DIGITS_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(
        rebuilt.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-6, atol=1e-7
    )


def test_metadata_round_trip_keeps_the_model_intact(digits_flatbuffer):
    meta = metadata.read_metadata(digits_flatbuffer)
    assert meta["dataset"] == "digits" and meta["input_shape"] == list(DIGITS_SHAPE)
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert set(meta["normalization"]) == {"mean", "std"}
    replaced = metadata.embed_metadata(digits_flatbuffer, {"dataset": "other"})
    assert metadata.read_metadata(replaced) == {"dataset": "other"}
    assert flatbuffer.op_histogram(replaced) == flatbuffer.op_histogram(digits_flatbuffer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "x86"}, "Expected target one of arm64, arm, xcore, got 'x86'"),
        ({"inference_input_type": "uint8"}, "Expected inference_input_type one of float32, int8"),
    ],
)
def test_bad_converter_options(kwargs, message):
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    with pytest.raises(BnnError, match=message):
        converter.convert_model(model, **kwargs)


def test_not_a_flatbuffer_and_truncated_flatbuffer_are_rejected(digits_flatbuffer):
    with pytest.raises(flatbuffer.InvalidFlatbufferError, match="not a TFLite flatbuffer"):
        flatbuffer.read_model(b"PK\x03\x04 this is a zip file", source="x.tflite")
    with pytest.raises(flatbuffer.InvalidFlatbufferError, match="damaged TFLite flatbuffer"):
        flatbuffer.read_model(digits_flatbuffer[: len(digits_flatbuffer) // 3], source="x.tflite")


def test_load_trained_model_from_run_folder_and_file(digits_run, tmp_path):
    from_dir = loading.load_trained_model(str(digits_run.run_dir))
    assert from_dir.run.model == digits_run.config["model"] == "binary-densenet28"
    assert from_dir.run.model_input.dataset == "digits"
    assert from_dir.run.model_input.input_shape == tuple(digits_run.config["input_shape"])
    # A run's model file is read with the run's config.json; a copy elsewhere is a bare file.
    in_run = loading.load_trained_model(str(digits_run.run_dir / "model.keras"))
    assert in_run.run == from_dir.run
    import shutil

    shutil.copyfile(digits_run.run_dir / "model.keras", tmp_path / "model.keras")
    from_file = loading.load_trained_model(str(tmp_path / "model.keras"))
    assert from_file.run is None
    assert from_file.model.count_params() == digits_run.model.count_params()


def test_load_trained_model_errors(tmp_path):
    with pytest.raises(BnnError, match="No such model file or run folder"):
        loading.load_trained_model(str(tmp_path / "missing.keras"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BnnError, match="is not a Keras model file"):
        loading.load_trained_model(str(tmp_path / "notes.txt"))
    (tmp_path / "bad.keras").write_text("not a zip")
    with pytest.raises(BnnError, match="Could not load .*bad.keras as a Keras model"):
        loading.load_trained_model(str(tmp_path / "bad.keras"))
    with pytest.raises(BnnError, match="neither a run folder"):
        loading.load_trained_model(str(tmp_path))


def test_binary_densenet28_at_imagenet_size_is_no_larger_than_the_reference():
    import models

    model = models.create_model("binary-densenet28")
    data = metadata.embed_metadata(
        converter.convert_model(model, target="arm64"), metadata.run_metadata(None)
    )
    # larq-zoo's BinaryDenseNet28 converted by LCE 0.16 (its published .tflite size).
    assert len(data) <= 4_211_448
    ops = flatbuffer.op_histogram(data)
    assert ops["LceBconv2d"] == model_stats.count_binary_convs(model) == 23
    assert ops["CONV_2D"] == 4 and ops["FULLY_CONNECTED"] == 1


def test_tensor_names_follow_keras_layers(digits_flatbuffer):
    model = flatbuffer.read_model(digits_flatbuffer)
    names = {t.name.decode() for t in model.subgraphs[0].tensors}
    assert "block1_layer1_conv/QuantConv2D" in names and "head_dense/MatMul" in names
    assert not any(n.startswith("binary_densenet28/") for n in names)


def _binary_conv(name):
    import larq as lq

    return lq.layers.QuantConv2D(
        4, 3, padding="same", pad_values=1.0, use_bias=False, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip", name=name,
    )


def test_missed_fusions_flag_an_unfusable_op_but_not_a_residual_add():
    import larq_compute_engine as lce

    inputs = tf.keras.Input((8, 8, 4))
    # tanh after a binary conv: LCE fuses ReLU-like clamps only, so TANH stays a float op.
    x = tf.keras.layers.Activation("tanh", name="tanh")(_binary_conv("bconv1")(inputs))
    shortcut = x
    x = tf.keras.layers.BatchNormalization(name="bn")(_binary_conv("bconv2")(x))
    x = tf.keras.layers.Add(name="residual")([x, shortcut])  # adds two activations
    x = _binary_conv("bconv3")(x)
    model = tf.keras.Model(inputs, tf.keras.layers.GlobalAveragePooling2D()(x))
    data = lce.convert_keras_model(model, target="arm")
    ops = flatbuffer.op_histogram(data)
    assert ops["LceBconv2d"] == 3 and ops["TANH"] == 1 and ops["ADD"] == 1
    missed = flatbuffer.missed_fusions(data)
    assert len(missed) == 1
    assert "TANH (LceBconv2d -> TANH -> LceQuantize)" in missed[0]


def _two_in_two_out_model() -> tf.keras.Model:
    """Two inputs (a binary conv on each) and two heads: every name of the serving signature."""
    import larq as lq

    inputs = [tf.keras.Input((8, 8, 2), name="left"), tf.keras.Input((8, 8, 2), name="right")]
    convs = [lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0, use_bias=False,
                                   input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                   name=f"bconv_{i}")(x) for i, x in enumerate(inputs)]
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(tf.keras.layers.Add(name="add")(convs))
    heads = [tf.keras.layers.Dense(3, activation="softmax", name="classes")(x),
             tf.keras.layers.Dense(1, name="score")(x)]
    return tf.keras.Model(inputs, heads, name="two_heads")


@pytest.mark.parametrize("build", ["tiny", "two_in_two_out"])
def test_the_lean_export_converts_to_the_bytes_of_lces_keras_path(build):
    """`_lce_convert` saves only the serving function instead of the whole Keras model: LCE
    must write the very same flatbuffer as from its own Keras SavedModel."""
    import larq_compute_engine as lce

    from tests.conftest import tiny_lce_model

    model = tiny_lce_model(channels=3) if build == "tiny" else _two_in_two_out_model()
    ours = converter._lce_convert(model, target="arm", inference_input_type=tf.float32,
                                  inference_output_type=tf.float32)
    assert ours == lce.convert_keras_model(model, target="arm")
    assert flatbuffer.op_histogram(ours)["LceBconv2d"] == (1 if build == "tiny" else 2)


def test_the_lean_export_leaves_out_the_quantizers_gradient_functions(tmp_path):
    """TensorFlow saves every `tf.custom_gradient`'s gradient function by default (larq's
    quantizers have one each): the converter never runs them, and tracing them took a third of
    the export's time."""
    from tensorflow.core.protobuf import saved_model_pb2

    from tests.conftest import tiny_lce_model

    converter._save_serving_function(tiny_lce_model(), str(tmp_path))
    saved = saved_model_pb2.SavedModel.FromString((tmp_path / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    names = [function.signature.name for function in library.function]
    assert any(name.startswith("__inference_serve_") for name in names)
    assert list(library.registered_gradients) == []
    assert [name for name in names if "grad_fn" in name] == []


def test_a_model_the_lean_export_cannot_save_goes_through_lces_keras_path(monkeypatch):
    from tests.conftest import tiny_lce_model

    model = tiny_lce_model()
    expected = converter.convert_model(model)

    def cannot_save(model, folder):
        raise ValueError("not this one")

    monkeypatch.setattr(converter, "_save_serving_function", cannot_save)
    assert converter.convert_model(model) == expected
