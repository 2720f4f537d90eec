"""Checking that a flatbuffer computes what its Keras model computes."""

import dataclasses

import numpy as np
import tensorflow as tf

from convert.converter import as_float32
from convert.flatbuffer import Flatbuffer, FlatbufferLike
from convert.runtime import LceRuntime


@dataclasses.dataclass
class Verification:
    """Agreement between Keras and the flatbuffer on the same inputs.

    Attributes:
        samples: Number of inputs compared.
        max_abs_diff: Largest absolute difference between any two outputs.
        median_abs_diff: Median over inputs of each input's largest absolute difference: float
            rounding (~1e-7) when only the odd near-zero pre-activation flipped its sign, far
            more when the conversion is systematically off.
        top1_agreement: Fraction of inputs whose arg-max class is the same.
        keras_outputs: Keras model outputs.
        tflite_outputs: Flatbuffer outputs.
    """

    samples: int
    max_abs_diff: float
    median_abs_diff: float
    top1_agreement: float
    keras_outputs: np.ndarray
    tflite_outputs: np.ndarray


def verify_flatbuffer(
    model: tf.keras.Model, flatbuffer: FlatbufferLike, x: np.ndarray, *, verbose: int = 0
) -> Verification:
    """Runs `model` (Keras) and `flatbuffer` (LCE's interpreter) on `x` and compares them.

    Outputs are not expected to match bit-for-bit: TFLite reorders float sums and fuses
    BatchNorm into the binary convolution's multiplier/bias. But a pre-activation that lands
    within float error of zero can binarize to the other sign, so top-1 agreement, not
    max |difference|, is the reliable acceptance measure.

    A model trained in mixed precision is compared through its float32 copy (the one that was
    converted): its bfloat16 forward pass is a different computation from the deployed one.
    """
    x = np.asarray(x, np.float32)
    flatbuffer = Flatbuffer.wrap(flatbuffer)
    model = as_float32(model)
    keras_out = np.asarray(model.predict(x, verbose=0, batch_size=64), np.float32)
    # int8-I/O models take and give quantized values; float-I/O ones pass through unchanged.
    raw = LceRuntime(flatbuffer).predict(flatbuffer.quantize_inputs(x), verbose=verbose)
    tflite_out = np.asarray(flatbuffer.dequantize_outputs(raw), np.float32)
    keras_out = keras_out.reshape(len(x), -1)
    tflite_out = tflite_out.reshape(len(x), -1)
    agreement = float(np.mean(keras_out.argmax(-1) == tflite_out.argmax(-1)))
    per_input = np.max(np.abs(keras_out - tflite_out), axis=-1)
    return Verification(
        samples=len(x),
        max_abs_diff=float(np.max(per_input)),
        median_abs_diff=float(np.median(per_input)),
        top1_agreement=agreement,
        keras_outputs=keras_out,
        tflite_outputs=tflite_out,
    )
