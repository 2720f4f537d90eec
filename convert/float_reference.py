"""A plain float TFLite model of the same network, the baseline binary latency is judged by."""

from pathlib import Path

import tensorflow as tf

from bnn_keras.errors import BnnError
from convert.converter import as_float32
from convert.flatbuffer import Flatbuffer


def float_tflite(model: tf.keras.Model) -> bytes:
    """Converts the float equivalent of `model` (quantizers removed) with TensorFlow's converter.

    The binary model's latent weights are used as float weights: latency does not depend on
    their values, and the architecture (shapes, MACs) is exactly the same.
    """
    from bnn_keras.training.baselines import float_equivalent

    float_model = float_equivalent(as_float32(model))
    return tf.lite.TFLiteConverter.from_keras_model(float_model).convert()


def float_flatbuffer(source: str) -> Flatbuffer:
    """A float .tflite given as a file, or made from a run folder / Keras model file.

    Raises:
        BnnError: the source is missing, not a flatbuffer, or not a model.
    """
    path = Path(source)
    if path.suffix == ".tflite":
        if not path.is_file():
            raise BnnError(f"No such .tflite file: {path}.")
        return Flatbuffer(path.read_bytes(), source=str(path))
    from convert.loading import load_trained_model

    return Flatbuffer(float_tflite(load_trained_model(source).model))
