"""Full-precision baselines of binarized networks.

`float_equivalent` rebuilds a BNN with every quantizer and latent-weight constraint removed: the
same layers, shapes and parameter count, computing in floating point. Training it under the same
budget as the BNN answers "how much accuracy does binarization cost for this network?", which is
the comparison the BNN papers report.
"""

import copy
from typing import Any, Dict, Optional

import larq as lq
import tensorflow as tf

from bnn_keras import graph
from bnn_keras.layers import FloatActivation  # noqa: F401  (re-exported; used below)

# Config keys of larq (and bnn_keras) quantized layers that hold quantizers and constraints.
_QUANTIZER_KEYS = (
    "input_quantizer", "kernel_quantizer", "depthwise_quantizer", "pointwise_quantizer",
)
_CONSTRAINT_KEYS = ("kernel_constraint", "depthwise_constraint", "pointwise_constraint")
# Regularizers that only make sense for binary weights (Bipolar pulls towards +/-1, BNN+ ties
# the scale to mean |w|); a float network is trained without them.
_BINARY_REGULARIZER_MODULES = ("bnn_keras.regularizers",)
_REGULARIZER_KEYS = (
    "kernel_regularizer", "depthwise_regularizer", "pointwise_regularizer", "scale_regularizer",
)
# Layers that need a quantizer object; they get larq's pass-through one instead of None.
_NEEDS_INPUT_QUANTIZER = ("MultiBaseQuantConv2D",)


def _is_quantized(layer_config: Dict[str, Any]) -> bool:
    return any(key in layer_config["config"] for key in _QUANTIZER_KEYS)


def _float_layer_config(
    layer_config: Dict[str, Any], input_activation: Optional[str]
) -> Dict[str, Any]:
    layer_config = copy.deepcopy(layer_config)
    config = layer_config["config"]
    had_input_quantizer = config.get("input_quantizer") is not None
    for key in _QUANTIZER_KEYS:
        if key in config:
            config[key] = None
    if input_activation is not None and had_input_quantizer:
        activation = FloatActivation(input_activation, dtype=config.get("dtype"))
        config["input_quantizer"] = tf.keras.utils.serialize_keras_object(activation)
    elif layer_config["class_name"] in _NEEDS_INPUT_QUANTIZER:
        # Residual binarization cannot run without a quantizer; an identity one turns the
        # layer into K float convolutions of scaled copies of its input (same parameters).
        # It runs in the layer's own dtype policy, so a mixed_bfloat16 model stays bfloat16.
        identity = lq.quantizers.NoOp(precision=32, dtype=config.get("dtype"))
        config["input_quantizer"] = lq.quantizers.serialize(identity)
    for key in _CONSTRAINT_KEYS:
        if key in config:
            config[key] = None
    if config.get("pad_values"):
        # Padding with +1 only exists to keep a binary input binary; a float layer pads with 0.
        config["pad_values"] = 0.0
    for key in _REGULARIZER_KEYS:
        value = config.get(key)
        if isinstance(value, dict) and value.get("module") in _BINARY_REGULARIZER_MODULES:
            config[key] = None
    return layer_config


def float_equivalent(
    model: tf.keras.Model, *, copy_weights: bool = True, input_activation: Optional[str] = None
) -> tf.keras.Model:
    """The same network with every quantizer and kernel constraint removed.

    Each larq quantized layer (`QuantConv2D`, `QuantDense`, ..., and bnn_keras' own) is rebuilt
    from its config with `input_quantizer=None`, `kernel_quantizer=None` and no kernel
    constraint, so it computes a plain float convolution / matmul; "same" padding pads with 0
    instead of +1 (`pad_values`), and BNN-only regularizers (bipolar, BNN+) are dropped.
    Every other layer, the topology, the layer names and the dtype policy (e.g.
    `mixed_bfloat16`) are unchanged. Residual-binarization layers
    (`MultiBaseQuantConv2D`) keep their K convolutions with a pass-through quantizer.

    Args:
        model: A functional or sequential Keras model, typically a BNN from the registry.
        copy_weights: Copy the model's weights into the float copy where shapes match
            (the latent, unbinarized values for quantized kernels). False keeps the fresh
            initialization, which is what a "float baseline trained from scratch" wants.
        input_activation: None removes input quantizers outright. In many BNNs (ResNetE,
            BinaryDenseNet) the sign of the input quantizer is the only nonlinearity between
            BN, conv and add, so without it the float copy is close to a linear model; a
            Keras activation name (e.g. "relu", as the papers' full-precision counterparts
            use) puts that activation where each input quantizer was instead.

    Returns:
        An uncompiled `tf.keras.Model` with the same parameter count as `model` (minus any
        weights that quantizers themselves carried).

    Raises:
        graph.NotFunctionalError: `model` is a subclassed model (also a `ValueError`).
    """

    def edit(entry: Dict[str, Any]) -> Dict[str, Any]:
        return _float_layer_config(entry, input_activation) if _is_quantized(entry) else entry

    # A layer whose quantizer carried weights (SignSwish's beta) keeps the others.
    return graph.rebuild(model, edit=edit, weights=copy_weights, partial=True,
                         purpose="the full-precision baseline")
