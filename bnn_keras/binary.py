"""Which layers and weights of a model are binary: the one place that decides.

A *binary convolution* is what Larq Compute Engine lowers to one `LceBconv2d`: a larq
`QuantConv2D` (or a subclass, such as `ScaledQuantConv2D`) whose input and kernel quantizers
both output 1 bit. A *binary layer* is a binary convolution or a `MultiBaseQuantConv2D` with
1-bit quantizers (K binary convolutions summed). A *binary kernel* is the latent weight of a
kernel whose quantizer outputs 1 bit: Bop trains these, and weight decay leaves them alone.
"""

from typing import Iterator, List, Optional, Tuple

import larq as lq
import tensorflow as tf

from bnn_keras import layers as bnn_layers

# Layer classes LCE lowers to LceBconv2d when both quantizers are binary. QuantConv2D subclasses
# (e.g. scaled binary convolutions) qualify too; depthwise/separable/dense ones do not.
BINARY_CONV_TYPES = (lq.layers.QuantConv2D,)
# Weight attributes of Keras/larq layers that hold kernels, with the larq attribute naming the
# quantizer of each.
KERNEL_ATTRIBUTES = (
    ("kernel", "kernel_quantizer"),
    ("depthwise_kernel", "depthwise_quantizer"),
    ("pointwise_kernel", "pointwise_quantizer"),
)


def quantizer_bits(quantizer) -> Optional[int]:
    """A larq quantizer's output precision in bits; None for no quantizer or an unknown one."""
    if quantizer is None:
        return None
    return getattr(quantizer, "precision", None)


def _binary_quantizers(layer: tf.keras.layers.Layer) -> bool:
    return (quantizer_bits(getattr(layer, "input_quantizer", None)) == 1
            and quantizer_bits(getattr(layer, "kernel_quantizer", None)) == 1)


def is_binary_conv(layer: tf.keras.layers.Layer) -> bool:
    """True for a larq quantized conv whose input and kernel quantizers are both 1-bit."""
    return isinstance(layer, BINARY_CONV_TYPES) and _binary_quantizers(layer)


def is_binary_layer(layer: tf.keras.layers.Layer) -> bool:
    """A binary convolution, or a `MultiBaseQuantConv2D` of binary convolutions."""
    return is_binary_conv(layer) or (
        isinstance(layer, bnn_layers.MultiBaseQuantConv2D) and _binary_quantizers(layer))


def kernel_weights(model: tf.keras.Model) -> Iterator[Tuple[tf.Variable, bool]]:
    """(variable, is_binary) for every kernel of every (nested) layer, each once."""
    seen = set()
    for layer in model.submodules:
        if not isinstance(layer, tf.keras.layers.Layer):
            continue
        for attribute, quantizer_attribute in KERNEL_ATTRIBUTES:
            variable = getattr(layer, attribute, None)
            if not isinstance(variable, tf.Variable) or id(variable) in seen:
                continue
            seen.add(id(variable))
            quantizer = getattr(layer, quantizer_attribute, None)
            binary = (attribute == "kernel" and is_binary_conv(layer)) or (
                quantizer_bits(quantizer) == 1)
            yield variable, binary


def binary_kernels(model: tf.keras.Model) -> List[tf.Variable]:
    """Latent kernels of layers with a 1-bit kernel quantizer (binary convs, dense, ...)."""
    return [v for v, binary in kernel_weights(model) if binary]


def quantized_kernel_layers(model: tf.keras.Model) -> List[tf.keras.layers.Layer]:
    """Every layer (nested ones included) with a `kernel` and a non-`None` `kernel_quantizer`:
    the layers whose latent weights' signs are the network (their flips are tracked).

    Returns:
        The layers in tracking order, without duplicates.
    """
    found: List[tf.keras.layers.Layer] = []
    seen = set()
    for module in [model, *model.submodules]:
        if not isinstance(module, tf.keras.layers.Layer) or id(module) in seen:
            continue
        seen.add(id(module))
        if getattr(module, "kernel_quantizer", None) is None:
            continue
        if isinstance(getattr(module, "kernel", None), tf.Variable):
            found.append(module)
    return found
