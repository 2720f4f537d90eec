"""BinaryAlexNet: AlexNet binarized the BinaryNet way (Hubara et al., NeurIPS 2016).

Every layer has binary weights; every layer but the first also has binary inputs. Each conv
(with max-pool where AlexNet pools) is followed by BN without scale. The three fully-connected
layers, the last one included, are binary. Parameter count matches larq-zoo's definition.

References:
    - [Binarized Neural Networks](https://arxiv.org/abs/1602.02830)
    - [ImageNet Classification with Deep Convolutional Neural Networks](
      https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks)
"""

from typing import Any, Sequence

import tensorflow as tf

from bnn_keras.layers import QuantConv2D
from models.common import (
    PAD_DIFFERENCE,
    ZOO_STEM_DIFFERENCE,
    ZooVariant,
    batch_norm,
    binary_dense_stack,
    family_builder,
    flatten_to_pixel,
    image_input,
    pixel_to_vector,
    softmax,
)
from models.recipes import LARQ_ZOO, PaperRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# (filters, kernel size, max-pool after) of conv2..conv5: the AlexNet layout larq-zoo's
# BinaryAlexNet uses; BNN+ AlexNet and Compact BNN share it.
ALEXNET_CONVS = ((192, 5, True), (384, 3, False), (384, 3, False), (256, 3, True))

# larq-zoo's BinaryAlexNet: zero padding, the 11x11/4 stem at every size.
_ZOO = ZooVariant(
    f"{LARQ_ZOO_VERSION} larq_zoo/literature/binary_alex_net.py BinaryAlexNet",
    "pad_values 1 (zoo: 0); small-input stem", (PAD_DIFFERENCE, ZOO_STEM_DIFFERENCE),
)


@family_builder
def binary_alexnet(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any = "ste_sign",
    kernel_quantizer: Any = "ste_sign",
    kernel_constraint: Any = "weight_clip",
    hidden_units: int = 4096,
    variant: str = "bnn",
    name: str = "binary_alexnet",
) -> tf.keras.Model:
    """Builds BinaryAlexNet.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px replace the 11x11/4 stem
            by a 3x3/1 one.
        num_classes: Classifier size.
        include_top: Whether to add the three binary fully-connected layers + softmax.
        input_quantizer: Activation quantizer (all layers but the first).
        kernel_quantizer: Weight quantizer (all layers).
        kernel_constraint: Latent weight constraint.
        hidden_units: Units of fc6 and fc7 (AlexNet's 4096; larq-zoo's weights need 4096).
        variant: "bnn" pads conv2..conv5 with +1 (LCE-friendly), "larq-zoo" with 0 and keeps
            the 11x11/4 stem at every size, as larq-zoo does (its weights give its outputs only
            then; its fully-connected layers are `QuantDense`, here 1x1 convolutions with the
            same weights).
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """
    quant = dict(
        kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint, use_bias=False
    )

    def bn(layer_name: str) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=0.9, epsilon=1e-3, scale=False)

    def pool(layer_name: str) -> tf.keras.layers.Layer:
        return tf.keras.layers.MaxPool2D(3, strides=2, name=layer_name)

    def fc(units: int, kernel_size: int, layer_name: str) -> tf.keras.layers.Layer:
        return QuantConv2D(units, kernel_size, input_quantizer=input_quantizer,
                                     name=layer_name, **quant)

    inputs = image_input(input_shape)
    rules = _ZOO.rules_for(variant)
    small = rules.uses_small_stem(input_shape)
    pad_values = rules.pad_value
    # The first layer sees the (float) image: binary weights only, zero padding.
    x = QuantConv2D(
        64, 3 if small else 11, strides=1 if small else 4, padding="same", input_quantizer=None,
        name="conv1", **quant,
    )(inputs)
    x = bn("conv1_bn")(pool("conv1_pool")(x))
    for i, (filters, kernel_size, pooled) in enumerate(ALEXNET_CONVS, start=2):
        x = QuantConv2D(
            filters, kernel_size, padding="same", pad_values=pad_values,
            input_quantizer=input_quantizer, name=f"conv{i}", **quant,
        )(x)
        if pooled:
            x = pool(f"conv{i}_pool")(x)
        x = bn(f"conv{i}_bn")(x)

    if include_top:
        x = binary_dense_stack(
            flatten_to_pixel(x, "fc_reshape"), (hidden_units, hidden_units, num_classes),
            binary_conv=fc, bn=bn, first_index=6,
        )
        x = softmax(pixel_to_vector(x, "logits"))
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


@register_model(
    "binary-alexnet",
    # larq-zoo TrainBinaryAlexNet: Adam, lr 1e-2 * 0.5 ** (epoch // 10), 150 epochs, batch 512.
    recipe=PaperRecipe(
        source=f"BinaryNet AlexNet (arXiv 1602.02830); {LARQ_ZOO} TrainBinaryAlexNet",
        values=dict(learning_rate=1e-2, schedule="step", step_epochs=10, step_factor=0.5,
                    epochs=150, batch_size=512),
    ),
    zoo=_ZOO,
)
def binary_alexnet_entry(**kwargs) -> tf.keras.Model:
    """BinaryAlexNet: 61,859,192 parameters at 224x224x3, 1000 classes."""
    return binary_alexnet(**kwargs)
