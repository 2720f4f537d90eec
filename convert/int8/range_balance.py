"""Equal value ranges on the inputs of each concatenation, so that int8 can share one scale.

TFLite's int8 CONCATENATION has one scale and zero point for all its operands and its result.
In a BinaryDenseNet every dense layer appends a binary convolution's output (integer
popcount-like values, range about +-kernel_size^2 * channels, e.g. +-500) to the block's
running feature map, whose first channels come from a float layer (the stem or a transition
convolution, range about +-5). One shared int8 range wide enough for the binary outputs leaves
the float channels with one or two levels, and the converted model predicts noise.

`balance_concat_ranges` rewrites such a model, function-preservingly, so that the ranges match:
it multiplies each binary convolution output that feeds only a concatenation by a positive
constant s (a `Rescaling` layer, which LCE folds into the `LceBconv2d` output multiplier), and
undoes the scaling where those channels are next normalized: a BatchNormalization computes
`gamma * (x - mean) / sqrt(var + eps) + beta`, so feeding it `s * x` with `gamma / s` and
`s * mean` gives the same output. Between the two, only layers that commute with a positive
per-channel scale are allowed (concatenation, pooling, ReLU, reshape, dropout, padding with
zeros); a model with anything else there is left unchanged.

This is the cross-layer equalization idea of Nagel et al. applied to concatenations:
- [Data-Free Quantization Through Weight Equalization and Bias Correction](
  https://arxiv.org/abs/1906.04721)
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from bnn_keras import graph

RESCALE_SUFFIX = "_range_scale"

# Layers through which a positive per-channel scale passes unchanged: f(s * x) = s * f(x).
_COMMUTING = (
    tf.keras.layers.Concatenate, tf.keras.layers.MaxPooling2D, tf.keras.layers.AveragePooling2D,
    tf.keras.layers.GlobalAveragePooling2D, tf.keras.layers.GlobalMaxPooling2D,
    tf.keras.layers.ReLU, tf.keras.layers.Dropout, tf.keras.layers.SpatialDropout2D,
    tf.keras.layers.ZeroPadding2D,
)


@dataclasses.dataclass
class RangeBalance:
    """What `balance_concat_ranges` did.

    Attributes:
        scales: Layer name -> the factor its output was multiplied by.
        absorbed_by: Names of the BatchNormalization layers that undo the factors.
        skipped: Why the model was left unchanged, or None.
    """

    scales: Dict[str, float]
    absorbed_by: List[str]
    skipped: Optional[str] = None


def _commutes(layer: tf.keras.layers.Layer) -> bool:
    if isinstance(layer, tf.keras.layers.Activation):
        return tf.keras.activations.serialize(layer.activation) in ("relu", "linear")
    if isinstance(layer, tf.keras.layers.Concatenate):
        return layer.axis in (-1, len(layer.output_shape) - 1)
    return isinstance(layer, _COMMUTING)


def _absorbs(layer: tf.keras.layers.Layer) -> bool:
    return isinstance(layer, tf.keras.layers.BatchNormalization) and layer.axis in (
        [-1], [len(layer.input_shape) - 1], -1)


def _candidates(model: tf.keras.Model) -> List[str]:
    """Convolutions whose only consumer is a channel concatenation."""
    by_name = {layer.name: layer for layer in model.layers}
    return [
        name for name, users in graph.consumers(model.get_config()).items()
        if isinstance(by_name[name], tf.keras.layers.Conv2D) and len(users) == 1
        and isinstance(by_name[users[0]], tf.keras.layers.Concatenate)
        and _commutes(by_name[users[0]])
    ]


def _max_abs(model: tf.keras.Model, names: Sequence[str], x: np.ndarray) -> np.ndarray:
    probe = tf.keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    result = np.zeros(len(names))
    for start in range(0, len(x), 64):
        outputs = probe(x[start:start + 64], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, value in enumerate(outputs):
            result[i] = max(result[i], float(tf.reduce_max(tf.abs(value))))
    return result


def _channel_scales(model: tf.keras.Model, scales: Dict[str, float]
                    ) -> Tuple[Optional[Dict[str, np.ndarray]], Optional[str]]:
    """Per-channel factor carried by every layer output downstream of the scaled layers.

    Returns ({BatchNormalization name: factors of its input channels}, None), or
    (None, reason) when a scaled channel reaches a layer that does not commute with the scale.
    """
    carried: Dict[str, np.ndarray] = {
        name: np.full(model.get_layer(name).output_shape[-1], factor)
        for name, factor in scales.items()
    }
    absorbing: Dict[str, np.ndarray] = {}
    for layer in model.layers:
        if layer.name in carried:
            continue
        inbound = [node_layer.name for node_layer in graph.inbound_layers(layer)]
        if not any(name in carried for name in inbound):
            continue
        if len(layer.inbound_nodes) > 1:
            return None, f"layer {layer.name} is shared"
        factors = [carried.get(name, np.ones(model.get_layer(name).output_shape[-1]))
                   for name in inbound]
        if _absorbs(layer):
            absorbing[layer.name] = factors[0]
        elif _commutes(layer):
            carried[layer.name] = np.concatenate(factors)
        else:
            return None, (f"scaled channels reach {layer.name} ({type(layer).__name__}), "
                          "which does not commute with a per-channel scale")
    return absorbing, None


def balance_concat_ranges(
    model: tf.keras.Model, representative_x: np.ndarray, *, min_ratio: float = 2.0
) -> Tuple[tf.keras.Model, RangeBalance]:
    """A copy of `model` whose concatenation inputs have comparable ranges (see module doc).

    Each convolution that feeds only a channel concatenation is scaled to the largest absolute
    value (on `representative_x`) of the other layers that enter the same chain of
    concatenations, when the two differ by more than `min_ratio`.

    Args:
        model: A float32 functional Keras model.
        representative_x: Preprocessed inputs that calibrate the ranges.
        min_ratio: Leave a layer alone when its range is within this factor of the reference.

    Returns:
        (model, RangeBalance): `model` itself when nothing needed scaling or the scaling could
        not be undone exactly; otherwise a new model with the weights copied, computing the
        same function up to float rounding.
    """
    candidates = _candidates(model)
    if not candidates:
        return model, RangeBalance({}, [], skipped="no convolution feeds only a concatenation")

    # Concatenations chained into one another share one int8 scale: group them.
    by_name = {layer.name: layer for layer in model.layers}
    group_of: Dict[str, str] = {}
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Concatenate):
            inbound = [node_layer.name for node_layer in graph.inbound_layers(layer)]
            chained = [group_of[name] for name in inbound if name in group_of]
            group_of[layer.name] = chained[0] if chained else layer.name
    members: Dict[str, List[str]] = {}
    for name, group in group_of.items():
        for inbound in graph.inbound_layers(by_name[name]):
            if inbound.name not in group_of:
                members.setdefault(group, []).append(inbound.name)

    names = sorted({name for group in members.values() for name in group})
    ranges = dict(zip(names, _max_abs(model, names, np.asarray(representative_x, np.float32))))
    scales: Dict[str, float] = {}
    for group in members.values():
        reference = [ranges[name] for name in group if name not in candidates]
        if not reference or max(reference) <= 0:
            continue
        target = max(reference)
        for name in group:
            if name in candidates and ranges[name] > 0:
                factor = target / ranges[name]
                if max(factor, 1 / factor) > min_ratio:
                    scales[name] = factor
    if not scales:
        return model, RangeBalance({}, [], skipped="the concatenation inputs already match")

    absorbing, reason = _channel_scales(model, scales)
    if absorbing is None:
        return model, RangeBalance({}, [], skipped=reason)

    config = model.get_config()
    for name, factor in scales.items():
        graph.insert_after(config, name, tf.keras.layers.Rescaling(
            float(factor), offset=0.0, name=name + RESCALE_SUFFIX, trainable=False,
            dtype="float32"))
    balanced = graph.rebuild(model, config, purpose="range balancing")
    for name, factors in absorbing.items():
        _absorb_into_batch_norm(balanced.get_layer(name), factors)
    return balanced, RangeBalance(scales, sorted(absorbing))


def _absorb_into_batch_norm(layer: tf.keras.layers.BatchNormalization,
                            factors: np.ndarray) -> None:
    """Makes BN(factors * x) equal the old BN(x): mean * s, and gamma / s (or variance * s^2)."""
    layer.moving_mean.assign(layer.moving_mean.numpy() * factors)
    if layer.scale:
        layer.gamma.assign(layer.gamma.numpy() / factors)
    else:
        variance = layer.moving_variance.numpy()
        layer.moving_variance.assign(factors ** 2 * (variance + layer.epsilon) - layer.epsilon)
