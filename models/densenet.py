"""BinaryDenseNet (Bethge et al., "Back to Simplicity", 2019).

Dense blocks of BN -> sign -> 3x3 binary conv (growth filters) -> concatenate; full-precision
transitions BN -> MaxPool2 -> ReLU -> 1x1 conv. Parameter counts match larq-zoo's definitions.

References:
    - [Back to Simplicity: How to Train Accurate BNNs from Scratch?](https://arxiv.org/abs/1906.08637)
    - [BinaryDenseNet: Developing an Architecture for Binary Neural Networks](
      https://openaccess.thecvf.com/content_ICCVW_2019/papers/NeurArch/Bethge_BinaryDenseNet_Developing_an_Architecture_for_Binary_Neural_Networks_ICCVW_2019_paper.pdf)
"""

from typing import Any, Optional, Sequence

import larq as lq
import tensorflow as tf

from models.common import (
    PAD_DIFFERENCE,
    SHORT_HEIGHT,
    VariantRules,
    ZooVariant,
    binary_conv3x3,
    classifier_head,
    family_builder,
    image_input,
    variant_rules,
)
from models.recipes import LARQ_ZOO, PaperRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# larq-zoo's BinaryDenseNets pad with 0 and have a small-input stem too (for a height under 50
# px), so their stems differ from the default's only for wide, short inputs.
_ZOO_RULES = VariantRules(pad_value=0.0, small_stem=SHORT_HEIGHT)

# Back to Simplicity trains BinaryDenseNet with a gradient-cancelling window of 1.3.
CLIP_VALUE = 1.3


def _bn(name: str) -> tf.keras.layers.Layer:
    return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


@family_builder
def binary_densenet(
    *,
    blocks: Sequence[int],
    reduction: Sequence[float],
    dilation_rate: Optional[Sequence[int]] = None,
    initial_filters: int = 64,
    growth_rate: int = 64,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any = None,
    kernel_quantizer: Any = None,
    kernel_constraint: Any = None,
    variant: str = "bnn",
    name: str = "binary_densenet",
) -> tf.keras.Model:
    """Builds a BinaryDenseNet.

    Args:
        blocks: Binary layers per dense block, e.g. (6, 6, 6, 5) for BinaryDenseNet28.
        reduction: Channel reduction of each transition (one per block boundary).
        dilation_rate: Dilation per block; a block with dilation > 1 is not preceded by pooling.
            None: 1 in every block.
        initial_filters: Filters of the full-precision stem.
        growth_rate: Filters of each binary 3x3 convolution.
        input_shape: Input (height, width, channels); sides under 50 px get the 3x3 stem.
        num_classes: Classifier size.
        include_top: Whether to add global pooling + dense + softmax.
        input_quantizer: Activation quantizer (default `SteSign(clip_value=1.3)`).
        kernel_quantizer: Weight quantizer (default `SteSign(clip_value=1.3)`).
        kernel_constraint: Latent weight constraint (default `WeightClip(1.3)`).
        variant: "bnn" pads the binary convolutions with +1 (LCE-friendly), "larq-zoo" with
            0 as larq-zoo does (its weights give its outputs only then).
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """
    dilation_rate = tuple(dilation_rate or (1,) * len(blocks))
    input_quantizer = input_quantizer or lq.quantizers.SteSign(clip_value=CLIP_VALUE)
    kernel_quantizer = kernel_quantizer or lq.quantizers.SteSign(clip_value=CLIP_VALUE)
    kernel_constraint = kernel_constraint or lq.constraints.WeightClip(clip_value=CLIP_VALUE)
    rules = variant_rules(variant, _ZOO_RULES)
    pad_values = rules.pad_value

    inputs = image_input(input_shape)
    if rules.uses_small_stem(input_shape):
        x = tf.keras.layers.Conv2D(
            initial_filters, 3, padding="same", kernel_initializer="he_normal",
            use_bias=False, name="stem_conv",
        )(inputs)
    else:
        x = tf.keras.layers.Conv2D(
            initial_filters, 7, strides=2, padding="same", kernel_initializer="he_normal",
            use_bias=False, name="stem_conv",
        )(inputs)
        x = _bn("stem_bn")(x)
        x = tf.keras.layers.Activation("relu", name="stem_relu")(x)
        x = tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name="stem_pool")(x)

    for b, layers_in_block in enumerate(blocks, start=1):
        for i in range(1, layers_in_block + 1):
            prefix = f"block{b}_layer{i}"
            y = _bn(f"{prefix}_bn")(x)
            y = binary_conv3x3(
                growth_rate,
                dilation_rate=dilation_rate[b - 1],
                input_quantizer=input_quantizer,
                kernel_quantizer=kernel_quantizer,
                kernel_constraint=kernel_constraint,
                pad_values=pad_values,
                name=f"{prefix}_conv",
            )(y)
            x = tf.keras.layers.Concatenate(name=f"{prefix}_concat")([x, y])

        if b < len(blocks):
            prefix = f"transition{b}"
            x = _bn(f"{prefix}_bn")(x)
            if dilation_rate[b] == 1:
                x = tf.keras.layers.MaxPool2D(2, strides=2, name=f"{prefix}_pool")(x)
            x = tf.keras.layers.Activation("relu", name=f"{prefix}_relu")(x)
            # larq-zoo's rounding (floor-divide, then round to a multiple of 32) is kept
            # as-is: it decides the parameter counts of the reference models.
            filters = round(x.shape[-1] // reduction[b - 1] / 32) * 32
            x = tf.keras.layers.Conv2D(
                filters, 1, kernel_initializer="he_normal", use_bias=False, name=f"{prefix}_conv"
            )(x)

    x = _bn("head_bn")(x)
    x = tf.keras.layers.Activation("relu", name="head_relu")(x)
    if include_top:
        x = classifier_head(x, num_classes)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


def _zoo(function: str) -> ZooVariant:
    return ZooVariant(f"{LARQ_ZOO_VERSION} larq_zoo/literature/densenet.py {function}",
                      "pad_values 1 (zoo: 0)", (PAD_DIFFERENCE,), _ZOO_RULES)


# larq-zoo TrainBinaryDenseNet28: Adam(4e-3, epsilon=1e-8), x0.1 at epochs 100 and 110,
# 120 epochs, batch 256.
_DENSENET28_RECIPE = PaperRecipe(
    source=f"Back to Simplicity (arXiv 1906.08637); {LARQ_ZOO} TrainBinaryDenseNet28",
    values=dict(learning_rate=4e-3, schedule="step", step_boundaries=(100, 110),
                step_factor=0.1, adam_epsilon=1e-8, epochs=120, batch_size=256),
)


@register_model("binary-densenet28", recipe=_DENSENET28_RECIPE, zoo=_zoo("BinaryDenseNet28"))
def binary_densenet28(**kwargs) -> tf.keras.Model:
    """BinaryDenseNet28: 5,150,504 parameters at 224x224x3, 1000 classes."""
    return binary_densenet(
        blocks=(6, 6, 6, 5), reduction=(2.7, 2.7, 2.2), name="binary_densenet28", **kwargs
    )


@register_model(
    "binary-densenet37",
    # larq-zoo TrainBinaryDenseNet37: as 28 with batch 192.
    recipe=_DENSENET28_RECIPE.replace(
        f"Back to Simplicity (arXiv 1906.08637); {LARQ_ZOO} TrainBinaryDenseNet37",
        batch_size=192,
    ),
    zoo=_zoo("BinaryDenseNet37"),
)
def binary_densenet37(**kwargs) -> tf.keras.Model:
    """BinaryDenseNet37: 8,734,120 parameters at 224x224x3, 1000 classes."""
    return binary_densenet(
        blocks=(6, 8, 12, 6), reduction=(3.3, 3.3, 4), name="binary_densenet37", **kwargs
    )


@register_model(
    "binary-densenet37-dilated",
    # larq-zoo TrainBinaryDenseNet37Dilated: 80 epochs, batch 256, x0.1 at 60 and 70.
    recipe=_DENSENET28_RECIPE.replace(
        f"Back to Simplicity (arXiv 1906.08637); {LARQ_ZOO} TrainBinaryDenseNet37Dilated",
        epochs=80, batch_size=256, step_boundaries=(60, 70),
    ),
    zoo=_zoo("BinaryDenseNet37Dilated"),
)
def binary_densenet37_dilated(**kwargs) -> tf.keras.Model:
    """BinaryDenseNet37 with dilated last two blocks instead of pooling (for dense prediction)."""
    return binary_densenet(
        blocks=(6, 8, 12, 6),
        reduction=(3.3, 3.3, 4),
        dilation_rate=(1, 1, 2, 4),
        name="binary_densenet37_dilated",
        **kwargs,
    )


@register_model(
    "binary-densenet45",
    # larq-zoo TrainBinaryDenseNet45: lr 8e-3, 125 epochs, batch 384, x0.1 at 80 and 100.
    recipe=_DENSENET28_RECIPE.replace(
        f"Back to Simplicity (arXiv 1906.08637); {LARQ_ZOO} TrainBinaryDenseNet45",
        learning_rate=8e-3, epochs=125, batch_size=384, step_boundaries=(80, 100),
    ),
    zoo=_zoo("BinaryDenseNet45"),
)
def binary_densenet45(**kwargs) -> tf.keras.Model:
    """BinaryDenseNet45: 13,939,240 parameters at 224x224x3, 1000 classes."""
    return binary_densenet(
        blocks=(6, 12, 14, 8), reduction=(2.7, 3.3, 4), name="binary_densenet45", **kwargs
    )
