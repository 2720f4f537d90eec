"""Multi-bit quantized convolutions (DoReFa-Net's 2-bit activations) as int8 convolutions.

LCE binarizes a convolution only when its input and kernel are both 1-bit. A larq
`QuantConv2D` with a multi-bit input quantizer (DoReFa-Net: 2-bit activations in [0, 1], binary
weights scaled by mean|W|) converts to a float32 CONV_2D whose folded kernel, `q(W)`, is stored
as float32: 4 bytes per weight for what holds 1 bit of information. In the int8 path such a
layer becomes its input quantizer as a layer of its own, followed by a plain convolution whose
kernel is the quantized kernel `q(W)` (the same function). The int8 preparation then gives the
convolution int8 ranges like any float layer, and the converter stores its kernel in int8 with
one scale per output channel, in which `+-scale_c` is exact. The 2-bit levels 0, 1/3, 2/3, 1 are
exact in an int8 range [0, 1] too (0, 85, 170, 255 steps of 1/255), so the int8 model computes
what the Keras model does, up to the rounding of the other tensors.

References:
    - [DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth
      Gradients](https://arxiv.org/abs/1606.06160)
"""

import copy
from typing import Dict, List, Tuple

import larq as lq
import tensorflow as tf

from bnn_keras import graph
from bnn_keras.binary import quantizer_bits
from bnn_keras.layers import QuantConv2D
from convert.int8.fake_quant import _SAME_SCALE, FakeQuant


# Convs that compute `conv(q(x), q(W))` and nothing more: larq's, and ours (larq's, padded
# faster in training).
_PLAIN_CONVS = (lq.layers.QuantConv2D, QuantConv2D)


def _is_multibit_conv(layer: tf.keras.layers.Layer) -> bool:
    """A larq conv whose input quantizer has more than 1 bit (LCE runs it in float)."""
    if type(layer) not in _PLAIN_CONVS:
        return False  # other subclasses (BNN+ scales, ...) compute more than q(W)
    bits = quantizer_bits(getattr(layer, "input_quantizer", None))
    return bits is not None and bits > 1


def multibit_convs(model: tf.keras.Model) -> List[str]:
    """Names of the layers `unfold_multibit_convs` rewrites."""
    return [layer.name for layer in model.layers if _is_multibit_conv(layer)]


def unfold_multibit_convs(model: tf.keras.Model) -> Tuple[tf.keras.Model, List[str]]:
    """Each multi-bit `QuantConv2D` as its input quantizer layer and a conv with kernel `q(W)`.

    Args:
        model: A functional model (not modified).

    Returns:
        The rewritten model (or `model` itself when it has no such layer) and the names of the
        rewritten convolutions. Each input quantizer becomes a layer named `{conv}_input_quantizer`.
    """
    names = multibit_convs(model)
    if not names:
        return model, []
    config = copy.deepcopy(model.get_config())
    for name in names:
        layer = model.get_layer(name)
        quantizer = layer.input_quantizer.__class__.from_config(
            {**layer.input_quantizer.get_config(), "name": f"{name}_input_quantizer"})
        graph.insert_before(config, name, quantizer)
        plain = {**layer.get_config(), "input_quantizer": None, "kernel_quantizer": None,
                 "kernel_constraint": None}
        graph.replace_layer(config, lq.layers.QuantConv2D.from_config(plain))
    rewritten = graph.rebuild(model, config, purpose="int8 preparation of multi-bit convs")
    for name in names:
        original = model.get_layer(name)
        # The folded kernel the float conversion stores: q(W) with the trained W.
        kernel = tf.constant(original.kernel.numpy())  # a tensor: custom gradients refuse variables
        if original.kernel_quantizer is not None:
            kernel = original.kernel_quantizer(kernel)
        weights = [kernel.numpy()] + [
            w.numpy() for w in original.weights[1:]]
        rewritten.get_layer(name).set_weights(weights)
    return rewritten, names


def _feeds_only_clipping_quantizers(name: str, by_name: Dict[str, tf.keras.layers.Layer],
                                    consumers: Dict[str, List[str]]) -> bool:
    """Whether every path from layer `name` ends, through range-keeping layers (max pool,
    reshape, ...), in a DoReFa activation quantizer (which clips to [0, 1] first)."""
    followers = consumers.get(name, [])
    if not followers:
        return False
    for follower in followers:
        layer = by_name[follower]
        if isinstance(layer, lq.quantizers.DoReFaQuantizer) and layer.mode == "activations":
            continue
        if not (isinstance(layer, _SAME_SCALE)
                and _feeds_only_clipping_quantizers(follower, by_name, consumers)):
            return False
    return True


def clip_ranges_to_quantizers(prepared: tf.keras.Model) -> List[str]:
    """Narrows to [0, 1] the int8 range of each tensor that only a DoReFa quantizer reads.

    The quantizer clips to [0, 1] and rounds to levels whose boundaries (1/6, 1/2, 5/6 at 2
    bits) fall halfway between int8 steps of [0, 1]: the int8 input then takes the float
    level except within 1/510 of a boundary, where a wide calibrated range (a BatchNorm's
    output, e.g. [-5, 5]) would flip every value within 1/51 of one.

    Args:
        prepared: A model with calibrated `FakeQuant` layers (modified in place).

    Returns:
        The names of the `FakeQuant` layers narrowed.
    """
    by_name = {layer.name: layer for layer in prepared.layers}
    consumers = graph.consumers(prepared.get_config())
    narrowed = []
    for layer in prepared.layers:
        if isinstance(layer, FakeQuant) and _feeds_only_clipping_quantizers(
                layer.name, by_name, consumers):
            layer.set_range(0.0, min(float(layer.max_value), 1.0))
            narrowed.append(layer.name)
    return narrowed
