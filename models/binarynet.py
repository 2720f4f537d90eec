"""BinaryNet (Courbariaux, Hubara et al., 2016): the binarized VGG-small for CIFAR-10.

128C3-128C3-MP-256C3-256C3-MP-512C3-512C3-MP-1024FC-1024FC-classes, all weights binary, all
inputs but the image binary, BN (without scale) after every layer including the last.

References:
    - [Binarized Neural Networks: Training Deep Neural Networks with Weights and Activations
      Constrained to +1 or -1](https://arxiv.org/abs/1602.02830)
"""

from typing import Any, Sequence

import tensorflow as tf

from bnn_keras.layers import QuantConv2D
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
from models.recipes import PaperRecipe
from models.registry import register_model

# (filters, max-pool after) of conv2..conv6; conv1 has 128 filters.
_CONVS = ((128, True), (256, False), (256, True), (512, False), (512, True))


@family_builder
def binarynet(
    *,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    include_top: bool = True,
    input_quantizer: Any = "ste_sign",
    kernel_quantizer: Any = "ste_sign",
    kernel_constraint: Any = "weight_clip",
    hidden_units: int = 1024,
    name: str = "binarynet",
) -> tf.keras.Model:
    """Builds BinaryNet's VGG-small.

    Args:
        input_shape: Input (height, width, channels). The network is designed for 32x32; for
            sides of 50 px and more conv1 becomes 7x7/2 followed by a 3x3/2 max-pool (as in
            the ImageNet ResNet stem), which keeps the first fully-connected layer at a
            7x7x512 input for 224 px.
        num_classes: Classifier size.
        include_top: Whether to add the binary fully-connected layers + softmax.
        input_quantizer: Activation quantizer (all layers but the first).
        kernel_quantizer: Weight quantizer (all layers).
        kernel_constraint: Latent weight constraint.
        hidden_units: Units of the two hidden fully-connected layers.
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """
    quant = dict(
        kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint, use_bias=False
    )

    def bn(layer_name: str) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=0.9, epsilon=1e-4, scale=False)

    def fc(units: int, kernel_size: int, layer_name: str) -> tf.keras.layers.Layer:
        return QuantConv2D(units, kernel_size, input_quantizer=input_quantizer,
                                     name=layer_name, **quant)

    inputs = image_input(input_shape)
    small = is_small_input(input_shape)
    # The first layer sees the (float) image: binary weights only, zero padding.
    x = QuantConv2D(
        128, 3 if small else 7, strides=1 if small else 2, padding="same", input_quantizer=None,
        name="conv1", **quant,
    )(inputs)
    if not small:
        x = tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name="conv1_pool")(x)
    x = bn("conv1_bn")(x)
    for i, (filters, pooled) in enumerate(_CONVS, start=2):
        x = QuantConv2D(
            filters, 3, padding="same", pad_values=1.0, input_quantizer=input_quantizer,
            name=f"conv{i}", **quant,
        )(x)
        if pooled:
            x = tf.keras.layers.MaxPool2D(2, strides=2, name=f"conv{i}_pool")(x)
        x = bn(f"conv{i}_bn")(x)

    if include_top:
        x = binary_dense_stack(
            flatten_to_pixel(x, "fc_reshape"), (hidden_units, hidden_units, num_classes),
            binary_conv=fc, bn=bn, first_index=7,
        )
        x = softmax(pixel_to_vector(x, "logits"))
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


@register_model(
    "binarynet",
    # BinaryNet's reference code (github.com/MatthieuCourbariaux/BinaryNet,
    # Train-time/cifar10.py): Adam, LR_start 1e-3 decayed every epoch by
    # (LR_fin / LR_start) ** (1 / num_epochs) with LR_fin 3e-7, 500 epochs, batch 50
    # (CIFAR-10). The paper trains with a squared hinge loss; ours is cross-entropy.
    recipe=PaperRecipe(
        source="BinaryNet (arXiv 1602.02830); MatthieuCourbariaux/BinaryNet "
        "Train-time/cifar10.py",
        values=dict(learning_rate=1e-3, schedule="step", step_epochs=1,
                    step_factor=(3e-7 / 1e-3) ** (1 / 500), epochs=500, batch_size=50),
    ),
    # Bop paper, section 5.2 (CIFAR-10 BinaryNet), hparams `bop_sec52` in
    # github.com/plumerai/rethinking-bnn-optimization bnn_optimization/models/binarynet.py:
    # threshold 1e-8, gamma 1e-4 decayed x0.1 every 100 epochs (50000 / 50 * 100 steps),
    # Adam(0.01) for the other weights, batch 50. The epoch count is not in that file: omitted.
    bop_recipe=PaperRecipe(
        source="Bop (arXiv 1906.02107) sec. 5.2; plumerai/rethinking-bnn-optimization "
        "bop_sec52",
        values=dict(optimizer="bop", learning_rate=1e-2, bop_threshold=1e-8, bop_gamma=1e-4,
                    bop_gamma_step_epochs=100, bop_gamma_step_factor=0.1, batch_size=50),
    ),
)
def binarynet_entry(**kwargs) -> tf.keras.Model:
    """BinaryNet VGG-small (CIFAR-10 layout)."""
    return binarynet(**kwargs)
