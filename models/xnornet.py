"""XNOR-Net (Rastegari et al., ECCV 2016): AlexNet with binary inputs and scaled binary weights.

The first and last layers stay full precision; binary weights carry a per-output-channel scale
`mean|W|` (larq's `MagnitudeAwareSign`, which LCE folds into the LceBconv2d post-multiplier).
At 224 px fc6's kernel (6x6x256x4096) is too large for LCE's converter to fold, so fc6 is
computed as two 2048-filter halves, concatenated: the same function and parameters, and
LceBconv2d ops instead of a float conv that stores the kernel twice.
Parameter count matches larq-zoo's definition. larq-zoo's `xnor_weight_scale` clips the kernel
to [-1, 1] before taking sign and per-channel mean|W|: the same values as `MagnitudeAwareSign`
for every kernel the `WeightClip(1)` constraint of both lets through, so the zoo variant keeps
`MagnitudeAwareSign` (its backward pass differs: larq-zoo also differentiates through the mean).

References:
    - [XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks](
      https://arxiv.org/abs/1603.05279)
"""

from typing import Any, Optional, Sequence

import larq as lq
import tensorflow as tf

from bnn_keras.layers import QuantConv2D
from models.common import (
    NEVER,
    PAD_DIFFERENCE,
    ZOO_STEM_DIFFERENCE,
    VariantRules,
    ZooVariant,
    batch_norm,
    family_builder,
    image_input,
    softmax,
    split_quant_conv,
)
from models.recipes import LARQ_ZOO, PaperRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# (filters, kernel size, max-pool after) of conv2..conv5.
_CONVS = ((256, 5, True), (384, 3, False), (384, 3, False), (256, 3, True))

# larq-zoo's XNORNet: zero padding, the 11x11/4 stem at every size, and one fc6 with a 6x6
# kernel (its `family` values: the builder's fc6 kernel and number of parts).
_ZOO = ZooVariant(
    f"{LARQ_ZOO_VERSION} larq_zoo/literature/xnornet.py XNORNet",
    "pad_values 1 (zoo: 0); small-input stem",
    (PAD_DIFFERENCE, ZOO_STEM_DIFFERENCE,
     "fc6's kernel covers the whole feature map at every input size; larq-zoo's is 6x6 (the "
     "whole map from 217 to 248 px)"),
    VariantRules(pad_value=0.0, small_stem=NEVER, family={"fc6_kernel": (6, 6), "fc6_parts": 1}),
)


@family_builder
def xnornet(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any = "ste_sign",
    kernel_quantizer: Any = None,
    kernel_constraint: Any = "weight_clip",
    weight_decay: float = 5e-7,
    hidden_units: int = 4096,
    fc6_parts: Optional[int] = None,
    variant: str = "bnn",
    name: str = "xnornet",
) -> tf.keras.Model:
    """Builds XNOR-Net.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px replace the 11x11/4 stem
            by a 3x3/1 one (not in variant "larq-zoo", which, as larq-zoo, needs 217 px or more).
        num_classes: Classifier size.
        include_top: Whether to add the binary fc7, the float classifier and softmax.
        input_quantizer: Activation quantizer of the binary layers.
        kernel_quantizer: Weight quantizer (default `MagnitudeAwareSign(clip_value=1.0)`).
        kernel_constraint: Latent weight constraint.
        weight_decay: L2 factor on every kernel.
        hidden_units: Units of fc6 and fc7 (AlexNet's 4096; larq-zoo's weights need 4096).
        fc6_parts: Compute fc6 as this many convs of `hidden_units / fc6_parts` filters,
            concatenated (same function and parameters: the scales are per output channel).
            None: as few as LCE binarizes, i.e. 2 at 224 px with 4096 units (a 6x6x256x4096
            kernel exceeds what LCE's converter folds, and would stay float32 twice), else 1;
            1 for variant "larq-zoo".
        variant: "bnn" pads conv2..conv5 with +1 (LCE-friendly), "larq-zoo" with 0 as larq-zoo
            does, keeps the 11x11/4 stem at every size and gives fc6 larq-zoo's 6x6 kernel.
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """
    kernel_quantizer = kernel_quantizer or lq.quantizers.MagnitudeAwareSign(clip_value=1.0)
    quant = dict(
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=kernel_constraint,
        kernel_regularizer=tf.keras.regularizers.l2(weight_decay),
        use_bias=False,
    )

    def bn(layer_name: str, epsilon: float = 1e-4) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=0.9, epsilon=epsilon, scale=False)

    def pool(layer_name: str) -> tf.keras.layers.Layer:
        return tf.keras.layers.MaxPool2D(3, strides=2, name=layer_name)

    inputs = image_input(input_shape)
    rules = _ZOO.rules_for(variant)
    small = rules.uses_small_stem(input_shape)
    x = tf.keras.layers.Conv2D(
        96, 3 if small else 11, strides=1 if small else 4, padding="same", use_bias=False,
        kernel_regularizer=tf.keras.regularizers.l2(weight_decay), name="conv1",
    )(inputs)
    x = bn("conv1_bn", epsilon=1e-5)(x)
    x = tf.keras.layers.Activation("relu", name="conv1_relu")(x)
    x = bn("conv1_pool_bn")(pool("conv1_pool")(x))
    for i, (filters, kernel_size, pooled) in enumerate(_CONVS, start=2):
        x = QuantConv2D(
            filters, kernel_size, padding="same", pad_values=rules.pad_value,
            name=f"conv{i}", **quant,
        )(x)
        if pooled:
            x = pool(f"conv{i}_pool")(x)
        x = bn(f"conv{i}_bn")(x)
    # fc6 is a "valid" conv whose kernel covers the whole feature map (6x6 at 224 px), so it is
    # a dense layer on the flattened map for any input size. larq-zoo's kernel is 6x6 at every
    # size (the whole map from 217 to 248 px; under 217 px the map is smaller than it).
    # Split only as LCE needs it; the zoo variant keeps the zoo's single fc6 (its weights load
    # layer by layer), which LCE then converts to a float conv.
    fc6_kernel = rules.family.get("fc6_kernel", tuple(x.shape[1:3]))
    if fc6_parts is None:
        fc6_parts = rules.family.get("fc6_parts")
    x = split_quant_conv(x, hidden_units, fc6_kernel, "fc6", fc6_parts, padding="valid",
                         **quant)
    x = bn("fc6_bn")(x)

    if include_top:
        x = QuantConv2D(hidden_units, 1, name="fc7", **quant)(x)
        x = bn("fc7_bn", epsilon=1e-3)(x)
        x = tf.keras.layers.Activation("relu", name="fc7_relu")(x)
        x = tf.keras.layers.Flatten(name="fc7_flatten")(x)
        x = tf.keras.layers.Dense(
            num_classes, use_bias=False,
            kernel_regularizer=tf.keras.regularizers.l2(weight_decay), name="fc8",
        )(x)
        x = softmax(x)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


@register_model(
    "xnornet",
    # larq-zoo TrainXNORNet: Adam(1e-3), 100 epochs, batch 1200, lr multiplied by
    # 1, .5, .1, .05, .01, .005, .001, .0001 from epochs 0, 19, 30, 44, 53, 66, 76, 86.
    recipe=PaperRecipe(
        source=f"XNOR-Net (arXiv 1603.05279); {LARQ_ZOO} TrainXNORNet",
        values=dict(learning_rate=1e-3, schedule="step",
                    step_boundaries=(19, 30, 44, 53, 66, 76, 86),
                    step_multipliers=(1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0001),
                    epochs=100, batch_size=1200),
    ),
    zoo=_ZOO,
)
def xnornet_entry(**kwargs) -> tf.keras.Model:
    """XNOR-Net: 62,396,768 parameters at 224x224x3, 1000 classes."""
    return xnornet(**kwargs)
