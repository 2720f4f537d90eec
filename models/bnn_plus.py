"""AlexNet trained the BNN+ way (Darabi et al., 2018).

BNN+ keeps the AlexNet layout and the full-precision first and last layers, and changes how the
binary layers learn: SignSwish pseudo-gradients for activations and weights, and a trainable
per-channel scale alpha on every binary kernel (`w_b = alpha * sign(w)`) with the BNN+
regularizer `lambda * sum |alpha - |w||` (or its L2 form). LCE folds the per-channel alpha into
the LceBconv2d post-multiplier, so the binary layers still convert to pure binary convolutions.

References:
    - [BNN+: Improved Binary Network Training](https://arxiv.org/abs/1812.11800)
"""

from typing import Any, Optional, Sequence

import tensorflow as tf

from bnn_keras import layers as bnn_layers
from bnn_keras import quantizers as bnn_quantizers
from bnn_keras.model_stats import lce_fold_parts
from models.alexnet import ALEXNET_CONVS
from models.common import (
    batch_norm,
    binary_dense_stack,
    family_builder,
    flatten_to_pixel,
    image_input,
    is_small_input,
    pixel_to_vector,
    softmax,
    split_quant_conv,
)
from models.registry import register_model



@family_builder
def bnn_plus_alexnet(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any = None,
    kernel_quantizer: Any = None,
    kernel_constraint: Any = "weight_clip",
    beta: float = 5.0,
    trainable_beta: bool = False,
    scale: Optional[str] = "per_channel",
    scale_regularizer: Any = "bnn+-l1",
    regularization_factor: float = 1e-5,
    hidden_units: int = 4096,
    fc6_parts: Optional[int] = None,
    name: str = "bnn_plus_alexnet",
) -> tf.keras.Model:
    """Builds a BNN+ AlexNet.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px replace the 11x11/4 stem
            by a 3x3/1 one.
        num_classes: Classifier size.
        include_top: Whether to add fc6, fc7 (binary), the float classifier and softmax.
        input_quantizer: Activation quantizer (default a fresh `SignSwish(beta)` per layer, so a
            trainable beta is learned per layer).
        kernel_quantizer: Weight quantizer (default a fresh `SignSwish(beta)` per layer).
        kernel_constraint: Latent weight constraint.
        beta: SignSwish steepness.
        trainable_beta: Whether each SignSwish learns its beta.
        scale: `"per_channel"`, `"per_layer"` or None (no alpha).
        scale_regularizer: `"bnn+-l1"` (Manhattan), `"bnn+-l2"` (Euclidean) or None.
        regularization_factor: lambda of the BNN+ regularizer.
        hidden_units: Units of fc6 and fc7.
        fc6_parts: Compute fc6 as this many 1x1 convs over its output units, concatenated (the
            same function and parameters with a per-channel or no scale; each part has its own
            SignSwish, so a trainable beta is learned per part). None: as few as LCE's converter
            folds (fc6's 9216x4096 kernel at 224 px is too large whole: 2 parts), never a split
            with `scale="per_layer"`, whose parts would each learn their own alpha.
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """

    def quantizer(given: Any) -> Any:
        return given or bnn_quantizers.SignSwish(beta=beta, trainable_beta=trainable_beta)

    def binary_conv(
        filters: int, kernel_size: int, layer_name: str, **kwargs
    ) -> tf.keras.layers.Layer:
        return bnn_layers.ScaledQuantConv2D(
            filters,
            kernel_size,
            scale=scale,
            scale_regularizer=scale_regularizer if scale else None,
            regularization_factor=regularization_factor,
            input_quantizer=quantizer(input_quantizer),
            kernel_quantizer=quantizer(kernel_quantizer),
            kernel_constraint=kernel_constraint,
            use_bias=False,
            name=layer_name,
            **kwargs,
        )

    def bn(layer_name: str) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=0.9, epsilon=1e-3, scale=False)

    def pool(layer_name: str) -> tf.keras.layers.Layer:
        return tf.keras.layers.MaxPool2D(3, strides=2, name=layer_name)

    inputs = image_input(input_shape)
    small = is_small_input(input_shape)
    x = tf.keras.layers.Conv2D(
        64, 3 if small else 11, strides=1 if small else 4, padding="same", use_bias=False,
        name="conv1",
    )(inputs)
    x = bn("conv1_bn")(pool("conv1_pool")(x))
    for i, (filters, kernel_size, pooled) in enumerate(ALEXNET_CONVS, start=2):
        x = binary_conv(filters, kernel_size, f"conv{i}", padding="same", pad_values=1.0)(x)
        if pooled:
            x = pool(f"conv{i}_pool")(x)
        x = bn(f"conv{i}_bn")(x)

    if include_top:
        x = flatten_to_pixel(x, "fc_reshape")
        if fc6_parts is None:
            fc6_parts = 1 if scale == "per_layer" else lce_fold_parts(
                (1, 1, int(x.shape[-1]), hidden_units), scale=scale)
        x = bn("fc6_bn")(split_quant_conv(x, hidden_units, 1, "fc6", fc6_parts,
                                          make_layer=binary_conv))
        x = binary_dense_stack(x, (hidden_units,), binary_conv=binary_conv, bn=bn, first_index=7)
        x = tf.keras.layers.Activation("relu", name="fc7_relu")(x)
        x = pixel_to_vector(x, "fc7_flat")
        x = tf.keras.layers.Dense(num_classes, name="fc8")(x)
        x = softmax(x)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


# No recipe: the optimizer settings of BNN+ (arXiv 1812.11800) could not be verified.
@register_model("bnn-plus-alexnet")
def bnn_plus_alexnet_entry(**kwargs) -> tf.keras.Model:
    """AlexNet with SignSwish quantizers and BNN+ scales (L1 regularizer, per-channel alpha)."""
    return bnn_plus_alexnet(**kwargs)
