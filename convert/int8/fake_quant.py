"""Fake-quantization nodes: the `FakeQuant` layer, where it goes, and which ranges must be equal.

TFLite takes the int8 scale and zero point of a tensor from the `FakeQuantWithMinMaxVars` node
that follows it (quantization-aware training). `fake_quant_points` picks the tensors that need
one, `with_fake_quant` inserts a `FakeQuant` layer after each of them in a functional model
config, and `shared_range_groups` finds the nodes whose ranges TFLite's int8 kernels require to
be equal.
"""

import copy
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from bnn_keras import graph
from bnn_keras.errors import BnnError

FAKE_QUANT_SUFFIX = "_fq"

# Layers TFLite folds into the convolution/dense/BN that feeds them: a fake-quant node between
# the two would keep them apart (an unfused MUL/ADD or activation pass).
_FOLDING_FOLLOWERS = (tf.keras.layers.BatchNormalization, tf.keras.layers.Activation,
                      tf.keras.layers.ReLU, tf.keras.layers.Rescaling)
_FOLDABLE_ACTIVATIONS = ("linear", "relu", "relu6")
# Layers whose int8 kernels use their input's scale and zero point for their output: the range
# propagates through them, so a fake-quant node after them would only add a requantization.
_SAME_SCALE = (
    tf.keras.layers.MaxPooling2D, tf.keras.layers.Reshape, tf.keras.layers.Flatten,
    tf.keras.layers.Dropout, tf.keras.layers.ZeroPadding2D, tf.keras.layers.SpatialDropout2D,
)


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class FakeQuant(tf.keras.layers.Layer):
    """8-bit fake quantization between calibrated bounds (`fake_quant_with_min_max_vars`).

    In the forward pass values are clipped to [min, max] (nudged so that 0 is exact) and rounded
    to one of 256 levels; gradients pass straight through inside the range. The bounds are
    non-trainable variables set by `prepare_int8`'s calibration, and they are what LCE's converter
    reads as the tensor's int8 scale and zero point.

    Args:
        **kwargs: Keras layer arguments (`name`, ...).
    """

    def build(self, input_shape: tf.TensorShape) -> None:
        self.min_value = self.add_weight(
            name="min", shape=(), initializer=tf.keras.initializers.Constant(-6.0), trainable=False
        )
        self.max_value = self.add_weight(
            name="max", shape=(), initializer=tf.keras.initializers.Constant(6.0), trainable=False
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, self.min_value, self.max_value, num_bits=8, narrow_range=False
        )

    @property
    def step(self) -> float:
        """The int8 scale: one of the 255 steps between the bounds (nudging keeps it)."""
        return (float(self.max_value) - float(self.min_value)) / 255.0

    def set_range(self, low: float, high: float) -> None:
        """Sets the bounds, widened to contain 0 (int8 needs an exact zero) and never empty."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        if high - low < 1e-6:
            high = low + 1e-6
        self.min_value.assign(low)
        self.max_value.assign(high)


def _fused_relu(layer: tf.keras.layers.ReLU) -> bool:
    """A Keras ReLU that TFLite fuses as RELU or RELU6 (`ReLU(max_value=1.0)`, DoReFa-Net's
    clip to [0, 1], converts to MINIMUM + RELU, ops of their own)."""
    max_value = None if layer.max_value is None else float(layer.max_value)
    return (max_value in (None, 6.0) and float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0)


def _folds(layer: tf.keras.layers.Layer, follower: tf.keras.layers.Layer) -> bool:
    """Whether TFLite/LCE fuses `follower` into `layer` (conv+BN, conv+ReLU, BN+ReLU)."""
    if not isinstance(follower, _FOLDING_FOLLOWERS):
        return False
    if isinstance(follower, tf.keras.layers.Activation):
        name = tf.keras.activations.serialize(follower.activation)
        if name not in _FOLDABLE_ACTIVATIONS:
            return False
    if isinstance(follower, tf.keras.layers.ReLU) and not _fused_relu(follower):
        return False
    if isinstance(follower, tf.keras.layers.Rescaling):
        # `balance_concat_ranges`' constant scale: a MUL that LCE folds into the convolution.
        return isinstance(layer, tf.keras.layers.Conv2D)
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        return not isinstance(follower, tf.keras.layers.BatchNormalization)
    return isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense,
                              tf.keras.layers.DepthwiseConv2D))


def fake_quant_points(model: tf.keras.Model) -> List[str]:
    """Names of the layers whose output gets a fake-quant node.

    Every model input, and every layer output except where TFLite fuses the next layer into
    this one (conv -> BN -> ReLU keep one range, after the chain), where the next op reuses its
    input's scale (max pool, reshape, dropout), or where the model ends in a softmax (TFLite
    fixes its int8 output range to [0, 1) itself).
    """
    by_name = {layer.name: layer for layer in model.layers}
    consumers = graph.consumers(model.get_config())
    points = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.InputLayer):
            points.append(layer.name)
            continue
        followers = [by_name[name] for name in consumers[layer.name]]
        if isinstance(layer, _SAME_SCALE):
            continue
        if isinstance(layer, tf.keras.layers.Activation) and (
            tf.keras.activations.serialize(layer.activation) == "softmax"
        ):
            continue
        if len(followers) == 1 and _folds(layer, followers[0]):
            continue
        points.append(layer.name)
    return points


def with_fake_quant(config: Dict[str, Any], points: Sequence[str]) -> Dict[str, Any]:
    """A functional model config with a FakeQuant layer on the output of each of `points`."""
    config = copy.deepcopy(config)
    names = {layer["name"] for layer in config["layers"]}
    renamed: Dict[str, str] = {}
    for point in points:
        fq_name = point + FAKE_QUANT_SUFFIX
        while fq_name in names:
            fq_name += "_"
        names.add(fq_name)
        renamed[point] = fq_name
    shared = [layer["name"] for layer in config["layers"]
              if layer["name"] in renamed and len(layer["inbound_nodes"]) > 1]
    if shared:
        raise BnnError(f"Expected each layer called once, but {', '.join(shared)} is shared; "
                       "int8 preparation handles plain functional models only.")
    for point, fq_name in renamed.items():
        graph.insert_after(config, point, FakeQuant(name=fq_name, dtype="float32"))
    return config


def _range_source(layer: tf.keras.layers.Layer) -> Optional["FakeQuant"]:
    """The FakeQuant whose range a tensor carries: itself, or the last one before same-scale ops."""
    while not isinstance(layer, FakeQuant):
        if not isinstance(layer, _SAME_SCALE):
            return None
        layer = graph.inbound_layers(layer)[0]
    return layer


def shared_range_groups(model: tf.keras.Model) -> List[List[str]]:
    """FakeQuant layers that must share one range: the inputs and output of each concatenation.

    TFLite's int8 CONCATENATION requires the same scale and zero point on all operands and the
    result (the converter fails otherwise), so in a DenseNet all concatenations of a dense block
    and the binary convolutions feeding them end up on one range.

    Returns:
        Groups of FakeQuant layer names, each with more than one member.
    """
    parent: Dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.Concatenate):
            continue
        members = [_range_source(inbound) for inbound in graph.inbound_layers(layer)]
        members += [consumer for consumer in (node.outbound_layer for node in layer.outbound_nodes)
                    if isinstance(consumer, FakeQuant)]
        names = [member.name for member in members if member is not None]
        for name in names[1:]:
            parent[find(name)] = find(names[0])
    groups: Dict[str, List[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return [sorted(group) for group in groups.values() if len(group) > 1]


