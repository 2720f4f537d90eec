"""convert.evaluate: flatbuffer accuracy and top-k predictions for image files."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.training.data import Normalization, preprocess
from bnn_keras.errors import BnnError
from convert.converter import convert_model
from convert.evaluate import evaluate_flatbuffer, image_options, load_images, predict_images
from tests.conftest import tiny_lce_model

CLASSES = ["zero", "one", "two", "three"]


@pytest.fixture(scope="module")
def rgb():
    model = tiny_lce_model(3)
    return model, convert_model(model)


def _png(path, array):
    path.write_bytes(tf.io.encode_png(np.asarray(array, np.uint8)).numpy())
    return path


def test_accuracy_is_agreement_with_labels(rgb):
    model, flatbuffer = rgb
    x = np.random.default_rng(0).standard_normal((12, 8, 8, 3)).astype(np.float32)
    predicted = model.predict(x, verbose=0).argmax(-1)
    labels = predicted.copy()
    labels[:3] = (labels[:3] + 1) % 4  # three deliberately wrong labels
    result = evaluate_flatbuffer(flatbuffer, x, labels)
    assert result == {"accuracy": pytest.approx(9 / 12), "n": 12}
    one_hot = np.eye(4)[labels]
    assert evaluate_flatbuffer(flatbuffer, x, one_hot)["accuracy"] == pytest.approx(9 / 12)


def test_accuracy_rejects_label_count_mismatch(rgb):
    with pytest.raises(BnnError, match="as many labels as inputs"):
        evaluate_flatbuffer(rgb[1], np.zeros((2, 8, 8, 3), np.float32), np.zeros(3))


def test_load_images_matches_training_preprocessing(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (12, 10, 3))
    path = _png(tmp_path / "a.png", image)
    norm = Normalization(mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0))
    x = load_images([path], normalization=norm, input_shape=(8, 8, 3))
    expected = preprocess(tf.constant(image[np.newaxis], tf.float32), (8, 8), norm).numpy()
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-5)


def test_load_images_converts_channels_and_pixel_scale(tmp_path):
    gray = _png(tmp_path / "gray.png", np.full((8, 8, 1), 255))
    colour = _png(tmp_path / "colour.png", np.full((8, 8, 3), 255))
    norm3 = Normalization(mean=(0.0,) * 3, std=(1.0,) * 3)
    assert load_images([gray], normalization=norm3, input_shape=(8, 8, 3)).shape == (1, 8, 8, 3)
    # digits-style model: 1 channel, raw scale 0..16, so white (255) becomes 16.
    norm1 = Normalization(mean=(0.0,), std=(1.0,))
    x = load_images([colour], normalization=norm1, input_shape=(8, 8, 1), pixel_max=16.0)
    assert x.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(x, 16.0, rtol=1e-3)


def test_predict_images_top_k(rgb, tmp_path):
    model, flatbuffer = rgb
    rng = np.random.default_rng(2)
    paths = [_png(tmp_path / f"{i}.png", rng.integers(0, 256, (8, 8, 3))) for i in range(3)]
    norm = {"mean": [127.0, 127.0, 127.0], "std": [64.0, 64.0, 64.0]}
    predictions = predict_images(flatbuffer, paths, normalization=norm, input_shape=(8, 8, 3),
                                 class_names=CLASSES, top_k=2)
    x = load_images(paths, normalization=Normalization.from_dict(norm), input_shape=(8, 8, 3))
    keras_top1 = model.predict(x, verbose=0).argmax(-1)
    assert [p.path for p in predictions] == [str(p) for p in paths]
    for prediction, top1 in zip(predictions, keras_top1):
        assert len(prediction.top) == 2
        assert prediction.top[0][0] == top1 and prediction.top[0][1] == CLASSES[top1]
        assert prediction.top[0][2] >= prediction.top[1][2]
    assert predictions[0].to_dict()["top"][0]["class"] == CLASSES[keras_top1[0]]


def test_predict_images_errors(rgb, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    kwargs = dict(normalization={"mean": [0.0] * 3, "std": [1.0] * 3}, input_shape=(8, 8, 3))
    with pytest.raises(BnnError, match="is not a PNG, JPEG, BMP or GIF"):
        predict_images(rgb[1], [bad], class_names=CLASSES, **kwargs)
    with pytest.raises(BnnError, match="No such image file"):
        predict_images(rgb[1], [tmp_path / "missing.png"], class_names=CLASSES, **kwargs)
    good = _png(tmp_path / "good.png", np.zeros((8, 8, 3)))
    with pytest.raises(BnnError, match="4 outputs but 2 class names"):
        predict_images(rgb[1], [good], class_names=["a", "b"], **kwargs)


def test_image_options_from_run_config():
    config = {"dataset": "digits", "input_shape": [16, 16, 1], "class_names": list("0123456789"),
              "normalization": {"mean": [4.9], "std": [6.0]}}
    options = image_options(config)
    assert options["pixel_max"] == 16.0 and options["input_shape"] == (16, 16, 1)
    assert options["normalization"] == Normalization(mean=(4.9,), std=(6.0,))
    with pytest.raises(BnnError, match="no class_names"):
        image_options({"normalization": {}, "input_shape": [8, 8, 3]})


@pytest.fixture(scope="module")
def digits_tflite_bytes():
    """An untrained 10-class tiny model for 8x8 digits with the run metadata `bnn convert`
    stores, so that `bnn evaluate` finds its data set and preprocessing."""
    from bnn_keras.training import data
    from convert.converter import convert_to_flatbuffer
    from convert.metadata import run_metadata

    import larq as lq

    splits = data.load_digits()
    inputs = tf.keras.Input((8, 8, 1))
    x = lq.layers.QuantConv2D(8, 3, kernel_quantizer="ste_sign", use_bias=False)(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="softmax")(x))
    config = {"dataset": "digits", "input_shape": [8, 8, 1], "num_classes": 10,
              "class_names": splits.class_names, "normalization": splits.normalization.to_dict(),
              "pixel_max": 16.0}
    return convert_to_flatbuffer(model).with_metadata(run_metadata(config)).data


def test_evaluating_an_unverified_flatbuffer_says_its_accuracy_may_not_be_the_models(
        digits_tflite_bytes, tmp_path):
    """The issue: `bnn evaluate` of the `.unverified` file that `bnn convert` keeps when the
    flatbuffer disagrees with Keras gave an accuracy without a caveat."""
    from tests.conftest import invoke

    verified = tmp_path / "m.tflite"
    unverified = tmp_path / "m.tflite.unverified"
    for path in (verified, unverified):
        path.write_bytes(digits_tflite_bytes)
    results = {path: invoke(["evaluate", path, "--limit", "40"]) for path in (verified, unverified)}
    for result in results.values():
        assert result.exit_code == 0, result.output
    warning = (f"Warning: {unverified} failed verification against its Keras model when `bnn "
               "convert` made it (it keeps such a flatbuffer as .unverified, for inspection): "
               "its outputs, and so its accuracy, may not be the model's.")
    assert results[unverified].stderr.strip().splitlines() == [warning]
    assert "Warning" not in results[verified].output
    # Still evaluated: the same accuracy as the same bytes under their verified name.
    accuracy = results[verified].stdout.strip().splitlines()[-1].split(": ", 1)[1]
    assert results[unverified].stdout.strip().splitlines()[-1] == (
        f"{unverified}: {accuracy} (unverified: see the warning above)")


def test_the_library_warns_about_an_unverified_file_too(digits_tflite_bytes, tmp_path):
    from convert.evaluate import is_unverified
    from convert.flatbuffer import Flatbuffer

    unverified = tmp_path / "m.tflite.unverified"
    unverified.write_bytes(digits_tflite_bytes)
    x, y = np.zeros((2, 8, 8, 1), np.float32), np.zeros(2)
    with pytest.warns(UserWarning, match=r"failed verification against its Keras model"):
        evaluate_flatbuffer(str(unverified), x, y)
    assert is_unverified(Flatbuffer.from_file(unverified))
    assert not is_unverified(Flatbuffer(digits_tflite_bytes))
    assert not is_unverified(Flatbuffer(digits_tflite_bytes, source="m.tflite"))
