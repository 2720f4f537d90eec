"""A trained binary network -> an int8 flatbuffer: range balance, fake-quant nodes, calibration,
optional fine-tuning, threshold centring, then LCE's converter (`convert.converter`)."""

from typing import Optional

import numpy as np
import tensorflow as tf

from bnn_keras import graph
from bnn_keras.errors import BnnError
from convert.converter import as_float32, check_options, convert_to_flatbuffer
from convert.int8.calibration import FineTune, calibrate_from, fine_tune_in_place
from convert.int8.fake_quant import FakeQuant, fake_quant_points, with_fake_quant
from convert.int8.multibit import clip_ranges_to_quantizers, unfold_multibit_convs
from convert.int8.range_balance import balance_concat_ranges
from convert.int8.thresholds import centre_binarization_thresholds


def prepare_int8(
    model: tf.keras.Model,
    representative_x: np.ndarray,
    *,
    fine_tune: Optional[FineTune] = None,
) -> tf.keras.Model:
    """A copy of a trained larq model with calibrated fake-quant nodes for int8 conversion.

    Binary convolutions are untouched (LCE turns them into `LceBconv2d`); the tensors around
    the float layers get `FakeQuant` nodes (see `fake_quant_points`), so LCE's converter emits
    int8 CONV_2D, FULLY_CONNECTED, MEAN, ... and int8 inputs/outputs for the binary ops. The
    original model is not modified.

    Args:
        model: A trained functional or Sequential Keras model (mixed precision is rebuilt in
            float32 first).
        representative_x: Preprocessed inputs (N, H, W, C) like the deployment data; a few
            hundred real images calibrate well, random noise does not.
        fine_tune: Quantization-aware fine-tuning after calibration (ranges fixed meanwhile);
            the ranges are calibrated again afterwards, since the weights (and so the
            activations) moved.

    Returns:
        The prepared, uncompiled (or fine-tune-compiled) Keras model, weights copied by layer name.

    Raises:
        BnnError: no representative data, a shape mismatch, or a model with shared layers.

    References:
        - [Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
          Inference](https://arxiv.org/abs/1712.05877)
    """
    representative_x = np.asarray(representative_x, np.float32)
    expected = tuple(model.input_shape[1:])
    if representative_x.ndim != len(expected) + 1 or representative_x.shape[1:] != expected:
        raise BnnError(f"Expected representative_x of shape (N, {', '.join(map(str, expected))}), "
                       f"got {representative_x.shape}.")
    if len(representative_x) == 0:
        raise BnnError("Expected at least one representative input.")
    functional = graph.functional(as_float32(model), purpose="int8 preparation")
    # Multi-bit convs (DoReFa's 2-bit activations) run in float in LCE: as a quantizer layer and
    # a plain conv with the quantized kernel they become int8 convs (exact per-channel weights).
    functional, _ = unfold_multibit_convs(functional)
    # Concatenations share one int8 scale across their inputs: bring binary-conv outputs to
    # the range of the float features they are concatenated with (exact in float).
    functional, _ = balance_concat_ranges(functional, representative_x)
    config = with_fake_quant(functional.get_config(), fake_quant_points(functional))
    prepared = graph.rebuild(functional, config)
    calibrate_from(functional, prepared, representative_x)
    clip_ranges_to_quantizers(prepared)
    if fine_tune is not None:
        fine_tune_in_place(prepared, fine_tune)
        # The float model with the fine-tuned weights: the ranges its tensors now span.
        twin = graph.rebuild(functional, copy_from=prepared)
        calibrate_from(twin, prepared, representative_x)
        clip_ranges_to_quantizers(prepared)
    centre_binarization_thresholds(prepared)
    return prepared


def convert_int8(
    model: tf.keras.Model,
    representative_x: Optional[np.ndarray] = None,
    *,
    target: str = "arm64",
    int8_io: bool = False,
    fine_tune: Optional[FineTune] = None,
) -> bytes:
    """Converts a model to a flatbuffer whose float layers run in int8.

    Args:
        model: A trained model; it is prepared with `prepare_int8` unless it already contains
            `FakeQuant` layers (then `representative_x` may be None).
        representative_x: Calibration inputs for `prepare_int8`.
        target: "arm64", "arm" or "xcore".
        int8_io: int8 model input and output (scale/zero point in the flatbuffer; see
            `Flatbuffer.quantize_inputs`) instead of float32 ones.
        fine_tune: Passed to `prepare_int8`.

    Returns:
        The flatbuffer bytes, internal tensors named after their Keras layers.

    Raises:
        BnnError: bad options or inputs, or an int8-I/O request that LCE did not honour.
        ConversionError: LCE failed to convert the model.
    """
    io_type = "int8" if int8_io else "float32"
    check_options(target, io_type, io_type)  # before the long preparation
    if any(isinstance(layer, FakeQuant) for layer in model.layers):
        if fine_tune is not None:
            raise BnnError("Expected fine_tune only for a model without FakeQuant layers; "
                           "pass it to prepare_int8 instead.")
    else:
        if representative_x is None:
            raise BnnError("Expected representative_x to calibrate the int8 ranges of a model "
                           "without FakeQuant layers.")
        model = prepare_int8(model, representative_x, fine_tune=fine_tune)
    return convert_to_flatbuffer(model, target=target, inference_input_type=io_type,
                                 inference_output_type=io_type).data
