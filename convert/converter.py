"""Keras model -> TFLite flatbuffer with Larq Compute Engine's converter (the only calls to it)."""

import tempfile
import warnings
from typing import Dict

import larq_compute_engine as lce
import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
from bnn_keras.training.precision import as_float32, is_mixed_precision  # noqa: F401  (re-exported)
from convert.flatbuffer import Flatbuffer

# User-facing target names -> LCE's target strings. LCE has no "arm64": its "arm" target covers
# 32- and 64-bit ARM (Raspberry Pi 4/5 on a 64-bit OS, phones) alike.
TARGETS: Dict[str, str] = {"arm64": "arm", "arm": "arm", "xcore": "xcore"}
IO_TYPES: Dict[str, tf.DType] = {"float32": tf.float32, "int8": tf.int8}


class ConversionError(BnnError):
    """LCE could not convert the model."""


def check_options(target: str, inference_input_type: str, inference_output_type: str) -> None:
    """Raises `BnnError` for an unknown target or I/O type, naming the valid ones."""
    if target not in TARGETS:
        raise BnnError(f"Expected target one of {', '.join(TARGETS)}, got {target!r}.")
    for what, value in (("input", inference_input_type), ("output", inference_output_type)):
        if value not in IO_TYPES:
            raise BnnError(
                f"Expected inference_{what}_type one of {', '.join(IO_TYPES)}, got {value!r}."
            )


def convert_model(
    model: tf.keras.Model,
    *,
    target: str = "arm64",
    inference_input_type: str = "float32",
    inference_output_type: str = "float32",
) -> bytes:
    """Converts a Keras model to an LCE-optimised TFLite flatbuffer.

    Args:
        model: A Keras model built from larq layers (binary convolutions become LceBconv2d).
        target: "arm64" or "arm" (LCE's ARM kernels), or "xcore".
        inference_input_type: "float32" or "int8" model input.
        inference_output_type: "float32" or "int8" model output.

    Returns:
        The flatbuffer bytes, internal tensors named after their Keras layers
        (`convert_to_flatbuffer(...).data`).

    Raises:
        BnnError: an option is invalid, or int8 I/O that LCE did not honour.
        ConversionError: LCE failed to convert the model.

    References:
        - [Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art Binarized
          Neural Networks](https://arxiv.org/abs/2011.09398)
    """
    return convert_to_flatbuffer(model, target=target, inference_input_type=inference_input_type,
                                 inference_output_type=inference_output_type).data


def convert_to_flatbuffer(
    model: tf.keras.Model,
    *,
    target: str = "arm64",
    inference_input_type: str = "float32",
    inference_output_type: str = "float32",
) -> Flatbuffer:
    """`convert_model`, returning the parsed `Flatbuffer` to pass along instead of its bytes.

    A model trained in mixed precision is converted through a float32 copy with the same
    weights (with a warning). The I/O types LCE produced are checked: without quantization
    ranges LCE quietly keeps float32 I/O when int8 is asked for.
    """
    check_options(target, inference_input_type, inference_output_type)
    model = float32_for_conversion(model)
    try:
        data = _lce_convert(model, target=TARGETS[target],
                            inference_input_type=IO_TYPES[inference_input_type],
                            inference_output_type=IO_TYPES[inference_output_type])
    except Exception as exc:
        raise ConversionError(
            f"LCE could not convert the model: {first_line(exc, 200)}") from exc
    flatbuffer = Flatbuffer(data)
    flatbuffer.check_io_types(inference_input_type, inference_output_type)
    return flatbuffer.renamed(model.name)


def float32_for_conversion(model: tf.keras.Model) -> tf.keras.Model:
    """The model as it is converted and deployed: `model` itself, or, for a model trained in
    mixed precision, its float32 copy with the same weights (with a warning).

    Made once per conversion and handed to whatever runs the Keras side (verification, the
    bundle's self-check): the copy is a rebuild of the whole model.
    """
    if not is_mixed_precision(model):
        return model
    warnings.warn(
        "The model was trained in mixed precision; converting a float32 copy with the same "
        "weights (LCE does not accept bfloat16/float16 layers).",
        stacklevel=3,
    )
    return as_float32(model)


def _lce_convert(model: tf.keras.Model, **options) -> bytes:
    """LCE's conversion of `model`, from a SavedModel that holds its inference function alone.

    LCE's `convert_keras_model` first saves the whole Keras model as a SavedModel, which traces
    every layer's call and loss functions so that Keras could rebuild the model from it: 7.5 of
    the 8.7 s that converting BinaryResNetE18 at 32x32 took. The converter reads only the
    serving signature, so this exports just that, as Keras names it (inputs after the Input
    layers, outputs after the output layers, batch size free): the flatbuffer has the same
    bytes, in a third of the time. A model this export cannot handle is converted by
    `convert_keras_model` itself, as before (with its own fallback to a frozen graph).

    Args:
        model: A float32 Keras model.
        **options: `target`, `inference_input_type`, `inference_output_type` for LCE.

    Returns:
        The flatbuffer bytes LCE wrote.
    """
    try:
        with tempfile.TemporaryDirectory() as saved_model_dir:
            _save_serving_function(model, saved_model_dir)
            return lce.convert_saved_model(saved_model_dir, **options)
    except Exception:  # noqa: BLE001 - whatever failed, LCE's own path decides
        return lce.convert_keras_model(model, **options)


def _save_serving_function(model: tf.keras.Model, folder: str) -> None:
    """Writes a SavedModel whose only function is `model(inputs, training=False)`, under the
    "serving_default" signature that Keras's own SavedModel export would give it."""
    specs = [tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype, name=name)
             for tensor, name in zip(model.inputs, model.input_names)]

    @tf.function(input_signature=specs)
    def serve(*inputs):
        outputs = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        return dict(zip(model.output_names, tf.nest.flatten(outputs)))

    module = tf.Module()
    module.variables_of_the_model = list(model.variables)  # what the function reads
    # Without the gradient functions of the quantizers' `tf.custom_gradient`s, which TensorFlow
    # saves by default: the converter runs the forward function only, the bytes are the same,
    # and the export takes about a third less time (BinaryDenseNet28 at 32x32: 2.6 -> 1.5 s).
    tf.saved_model.save(module, folder,
                        signatures={"serving_default": serve.get_concrete_function()},
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
