"""MeliusNet (Bethge et al., "MeliusNet: Can Binary Neural Networks Achieve MobileNet-level
Accuracy?", 2020).

Blocks of a DenseBlock (BN -> sign -> binary 3x3 conv of 64 filters, concatenated to its input:
more features) followed by an ImprovementBlock (BN -> sign -> binary 3x3 conv of 64 filters,
added to the 64 channels the DenseBlock just made: better features); full-precision transitions
BN -> MaxPool2 -> ReLU -> 1x1 conv between sections; a stem of a 3x3/2 conv and two grouped 3x3
convs (4 and 8 groups) before a 2x2 max-pool. Built as larq-zoo 2.4.0 builds MeliusNet22, its
weighted layers in its order; the default pads the binary convolutions with +1 and has a stem for
small inputs, `variant="larq-zoo"` (chosen by a zoo weights file) computes the zoo's function.

References:
    - [MeliusNet: Can Binary Neural Networks Achieve MobileNet-level Accuracy?](
      https://arxiv.org/abs/2001.05936)
"""

from typing import Any, Optional, Sequence

import larq as lq
import tensorflow as tf

from bnn_keras.errors import BnnError
from models.common import (
    PAD_DIFFERENCE,
    ZOO_STEM_DIFFERENCE,
    ZooVariant,
    batch_norm,
    binary_conv3x3,
    family_builder,
    image_input,
)
from models.registry import LARQ_ZOO_VERSION, register_model

# MeliusNet trains with a gradient-cancelling window of 1.3, as BinaryDenseNet does.
CLIP_VALUE = 1.3

# larq-zoo's MeliusNet22: zero padding, its grouped stem at every size.
_ZOO = ZooVariant(f"{LARQ_ZOO_VERSION} larq_zoo/literature/meliusnet.py MeliusNet22",
                  "pad_values 1 (zoo: 0); small-input stem",
                  (PAD_DIFFERENCE, ZOO_STEM_DIFFERENCE))
# Filters of every binary convolution (the paper's growth rate k).
GROWTH = 64
# larq-zoo initializes every kernel of MeliusNet with Glorot-normal.
INITIALIZER = "glorot_normal"

L = tf.keras.layers


@family_builder
def meliusnet(
    *,
    num_blocks: Sequence[int],
    transition_features: Sequence[Optional[int]],
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any = None,
    kernel_quantizer: Any = None,
    kernel_constraint: Any = None,
    variant: str = "bnn",
    name: str = "meliusnet",
) -> tf.keras.Model:
    """Builds a MeliusNet.

    Layer names differ from every name larq-zoo 2.4.0 gives its weighted layers, so that a zoo
    weights file is recognized as foreign (`models.weights_file.is_foreign`) and selects
    `variant="larq-zoo"`.

    Args:
        num_blocks: Dense + improvement block pairs per section, e.g. (4, 5, 4, 4).
        transition_features: Filters of the 1x1 conv of the transition after each section; None
            for no transition (the last section).
        input_shape: Input (height, width, channels); sides under 50 px get a 3x3 stride-1 stem
            (conv -> BN -> ReLU, 64 filters) in the default variant.
        num_classes: Classifier size.
        include_top: Whether to add global pooling + dense + softmax.
        input_quantizer: Activation quantizer (default `SteSign(clip_value=1.3)`).
        kernel_quantizer: Weight quantizer (default `SteSign(clip_value=1.3)`).
        kernel_constraint: Latent weight constraint (default `WeightClip(1.3)`).
        variant: "bnn" pads the binary convolutions with +1 (LCE-friendly) and gives inputs
            under 50 px the small stem; "larq-zoo" pads with 0 and keeps the grouped stem at
            every size, as larq-zoo does (its weights give its outputs only then).
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.

    Raises:
        BnnError: an unknown variant, or section lists of different lengths.
    """
    if len(num_blocks) != len(transition_features):
        raise BnnError(
            f"num_blocks {tuple(num_blocks)} and transition_features "
            f"{tuple(transition_features)} must have one entry per section."
        )
    rules = _ZOO.rules_for(variant)
    quantization = dict(
        input_quantizer=input_quantizer or lq.quantizers.SteSign(clip_value=CLIP_VALUE),
        kernel_quantizer=kernel_quantizer or lq.quantizers.SteSign(clip_value=CLIP_VALUE),
        kernel_constraint=kernel_constraint or lq.constraints.WeightClip(clip_value=CLIP_VALUE),
        pad_values=rules.pad_value,
    )

    inputs = image_input(input_shape)
    if rules.uses_small_stem(input_shape):
        x = L.Conv2D(GROWTH, 3, padding="same", use_bias=False, kernel_initializer=INITIALIZER,
                     name="stem_conv")(inputs)
        x = batch_norm("stem_bn")(x)
        x = L.Activation("relu", name="stem_relu")(x)
    else:
        x = _group_stem(inputs)

    for s, (blocks, features) in enumerate(zip(num_blocks, transition_features), start=1):
        for b in range(1, blocks + 1):
            x = _block(x, f"section{s}_block{b}", quantization)
        if features:
            prefix = f"transition{s}"
            x = batch_norm(f"{prefix}_bn")(x)
            x = L.MaxPool2D(2, strides=2, padding="same", name=f"{prefix}_pool")(x)
            x = L.Activation("relu", name=f"{prefix}_relu")(x)
            x = L.Conv2D(features, 1, use_bias=False, kernel_initializer=INITIALIZER,
                         name=f"{prefix}_conv")(x)

    x = batch_norm("final_bn")(x)
    x = L.Activation("relu", name="final_relu")(x)
    if include_top:
        x = L.GlobalAveragePooling2D(name="head_pool")(x)
        x = L.Dense(num_classes, kernel_initializer=INITIALIZER, name="head_classifier")(x)
        x = L.Activation("softmax", dtype="float32", name="predictions")(x)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


def _group_conv(x: tf.Tensor, filters: int, groups: int, prefix: str) -> tf.Tensor:
    """A 3x3 grouped convolution as larq-zoo computes it: one conv per channel group."""
    parts = tf.split(x, groups, axis=-1)
    outputs = [
        L.Conv2D(filters // groups, 3, padding="same", use_bias=False,
                 kernel_initializer=INITIALIZER, name=f"{prefix}_conv{i}")(part)
        for i, part in enumerate(parts, start=1)
    ]
    return L.Concatenate(name=f"{prefix}_concat")(outputs)


def _group_stem(x: tf.Tensor) -> tf.Tensor:
    """larq-zoo's MeliusNet stem: 3x3/2 conv, grouped 3x3 convs, 2x2 max-pool (4x smaller)."""
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False,
                 kernel_initializer=INITIALIZER, name="stem_conv")(x)
    x = batch_norm("stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    for i, (filters, groups) in enumerate(((32, 4), (64, 8)), start=1):
        x = _group_conv(x, filters, groups, f"stem_group{i}")
        x = batch_norm(f"stem_group{i}_bn")(x)
        x = L.Activation("relu", name=f"stem_group{i}_relu")(x)
    return L.MaxPool2D(2, strides=2, padding="same", name="stem_pool")(x)


def _block(x: tf.Tensor, prefix: str, quantization: dict) -> tf.Tensor:
    """A DenseBlock and the ImprovementBlock after it."""
    new = binary_conv3x3(GROWTH, name=f"{prefix}_dense_conv", **quantization)(
        batch_norm(f"{prefix}_dense_bn")(x))
    dense = L.Concatenate(name=f"{prefix}_dense_concat")([x, new])
    improvement = binary_conv3x3(GROWTH, name=f"{prefix}_improve_conv", **quantization)(
        batch_norm(f"{prefix}_improve_bn")(dense))
    # The improvement is added to the last 64 channels of `dense`, i.e. to `new`: larq-zoo pads
    # it with zeros to the full width and adds; adding it to `new` alone is the same sum.
    improved = L.Add(name=f"{prefix}_improve_add")([new, improvement])
    return L.Concatenate(name=f"{prefix}_improve_concat")([x, improved])


@register_model(
    "meliusnet22",
    zoo=_ZOO,
)
def meliusnet22(**kwargs) -> tf.keras.Model:
    """MeliusNet22: 6,944,584 parameters at 224x224x3, 1000 classes, as larq's model summary and
    larq-zoo's table count them (Keras's count_params adds BatchNorm's moving statistics:
    6,969,672); larq-zoo: 62.4% top-1."""
    return meliusnet(num_blocks=(4, 5, 4, 4), transition_features=(160, 224, 256, None),
                     name="meliusnet22", **kwargs)
