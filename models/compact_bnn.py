"""Compact BNN (Tang, Hua, Wang, AAAI 2017): an AlexNet binarized including its last layer.

The paper's recipe, each part an option here: PReLU after every binary layer, the bipolar
regularizer on binary kernels instead of L2, a learnable scale in front of the softmax because
the last layer is binary too, and optionally K binary bases for the activations (residual
binarization, K LceBconv2d + ADD after conversion). Only the first layer stays full precision.

References:
    - [How to Train a Compact Binary Neural Network with High Accuracy?](
      https://ojs.aaai.org/index.php/AAAI/article/view/10862)
    - [Towards Accurate Binary Convolutional Neural Network (ABC-Net, multiple bases)](
      https://arxiv.org/abs/1711.11294)
"""

from typing import Any, Sequence

import tensorflow as tf

from bnn_keras import layers as bnn_layers
from bnn_keras import regularizers as bnn_regularizers
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
)
from models.registry import register_model



@family_builder
def compact_bnn(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    bases: int = 1,
    activation: str = "prelu",
    input_quantizer: Any = "ste_sign",
    kernel_quantizer: Any = "ste_sign",
    kernel_constraint: Any = "weight_clip",
    bipolar_factor: float = 1e-5,
    smooth_bipolar: bool = False,
    hidden_units: int = 4096,
    name: str = "compact_bnn",
) -> tf.keras.Model:
    """Builds the compact BNN.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px replace the 11x11/4 stem
            by a 3x3/1 one.
        num_classes: Classifier size.
        include_top: Whether to add the binary fc6-fc8, the scale layer and softmax.
        bases: Binary bases K of the activations of every binary layer (1 = plain binary).
        activation: `"prelu"` (the paper's choice) or `"relu"` after each binary layer's BN.
        input_quantizer: Activation quantizer.
        kernel_quantizer: Weight quantizer.
        kernel_constraint: Latent weight constraint.
        bipolar_factor: Strength of the bipolar regularizer (0 disables it).
        smooth_bipolar: Use the smooth bipolar form `(1 - w^2)^2`.
        hidden_units: Units of fc6 and fc7.
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """

    def binary_conv(
        filters: int, kernel_size: int, layer_name: str, **kwargs
    ) -> tf.keras.layers.Layer:
        common = dict(
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            kernel_constraint=kernel_constraint,
            kernel_regularizer=(
                bnn_regularizers.Bipolar(bipolar_factor, smooth=smooth_bipolar)
                if bipolar_factor else None
            ),
            use_bias=False,
            name=layer_name,
            **kwargs,
        )
        if bases > 1:
            return bnn_layers.MultiBaseQuantConv2D(filters, kernel_size, bases=bases, **common)
        return bnn_layers.QuantConv2D(filters, kernel_size, **common)

    def bn(layer_name: str) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=0.9, epsilon=1e-3)

    def act(layer_name: str) -> tf.keras.layers.Layer:
        return bnn_layers.activation(activation, layer_name=layer_name)

    def pool(layer_name: str) -> tf.keras.layers.Layer:
        return tf.keras.layers.MaxPool2D(3, strides=2, name=layer_name)

    inputs = image_input(input_shape)
    small = is_small_input(input_shape)
    x = tf.keras.layers.Conv2D(
        64, 3 if small else 11, strides=1 if small else 4, padding="same", use_bias=False,
        name="conv1",
    )(inputs)
    x = act("conv1_act")(bn("conv1_bn")(x))
    x = pool("conv1_pool")(x)
    for i, (filters, kernel_size, pooled) in enumerate(ALEXNET_CONVS, start=2):
        x = binary_conv(filters, kernel_size, f"conv{i}", padding="same", pad_values=1.0)(x)
        x = act(f"conv{i}_act")(bn(f"conv{i}_bn")(x))
        if pooled:
            x = pool(f"conv{i}_pool")(x)

    if include_top:
        x = binary_dense_stack(flatten_to_pixel(x, "fc_reshape"), (hidden_units, hidden_units),
                               binary_conv=binary_conv, bn=bn, first_index=6, activation=act)
        x = binary_conv(num_classes, 1, "fc8")(x)
        x = pixel_to_vector(x, "logits")
        # The binary fc8 yields logits of magnitude ~sqrt(fan-in): a learnable scale lets the
        # network set the softmax temperature itself.
        x = bnn_layers.LearnableScale(name="logits_scale")(x)
        x = softmax(x)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


# No recipe: Tang et al. advise "a low learning rate" but give no value we could verify.
@register_model("compact-bnn")
def compact_bnn_entry(**kwargs) -> tf.keras.Model:
    """Compact BNN: PReLU, bipolar regularizer, binary last layer + scale; `bases=K` optional."""
    return compact_bnn(**kwargs)
