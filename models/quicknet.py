"""QuickNet (Bannink et al., "Larq Compute Engine", 2021): a BNN designed for LCE on ARM.

Sections of residual blocks `sign -> binary 3x3 conv -> ReLU -> BN -> add`, where the binary
convolution never changes shape: the ReLU puts a nonlinearity on the binary path (ResNetE's
blocks are linear apart from the sign) and LCE fuses conv, ReLU and BN into one LceBconv2d.
Downsampling happens in full-precision transitions `ReLU -> MaxPool(2, stride 1) -> fixed 3x3
blur depthwise conv with stride 2 -> 1x1 conv -> BN`, which cost little next to the binary
convolutions. Parameter counts match larq-zoo's QuickNetSmall, QuickNet and QuickNetLarge as
larq's model summary counts them (BatchNorm statistics folded into its scale and offset). From
50 px up the default computes larq-zoo's function (its layers in its order, binary convolutions
padded with +1 as the zoo's); under 50 px it has a 3x3 stem where `variant="larq-zoo"` keeps
the zoo's stem.

References:
    - [Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art Binarized Neural
      Networks](https://arxiv.org/abs/2011.09398)
    - [Making Convolutional Networks Shift-Invariant Again](https://arxiv.org/abs/1904.11486)
      (the blur pooling of the transitions)
"""

from typing import Any, Sequence

import larq as lq
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.initializers import BlurKernel
from models.common import (
    NEVER,
    ZOO_STEM_DIFFERENCE,
    VariantRules,
    ZooVariant,
    batch_norm,
    binary_conv3x3,
    classifier_head,
    family_builder,
    image_input,
    variant_rules,
)
from models.recipes import PaperRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# larq-zoo's QuickNets pad with +1 as the default does; they keep their stem at every size.
_ZOO_RULES = VariantRules(pad_value=1.0, small_stem=NEVER)

# QuickNet trains with SteSign(clip_value=1.25) for inputs and weights, as ResNetE does.
CLIP_VALUE = 1.25


@family_builder
def quicknet(
    *,
    section_blocks: Sequence[int] = (4, 4, 4, 4),
    section_filters: Sequence[int] = (64, 128, 256, 512),
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any = None,
    kernel_quantizer: Any = None,
    kernel_constraint: Any = None,
    stem_strides: int = 1,
    stem_input_filters: int = 0,
    variant: str = "bnn",
    name: str = "quicknet",
) -> tf.keras.Model:
    """Builds a QuickNet.

    Args:
        section_blocks: Residual blocks per section (one binary conv each).
        section_filters: Channels of each section; a transition precedes every section whose
            width differs from the previous one.
        input_shape: Input (height, width, channels). ImageNet-sized inputs get QuickNet's stem
            (3x3/2 conv -> BN -> ReLU -> 3x3/2 depthwise -> BN -> 1x1 conv -> BN, 4x smaller);
            sides under 50 px get a 3x3 stride-1 conv -> BN, as the other families here.
        num_classes: Classifier size.
        include_top: Whether to add ReLU + global pooling + dense + softmax.
        input_quantizer: Activation quantizer (default `SteSign(clip_value=1.25)`).
        kernel_quantizer: Weight quantizer (default `SteSign(clip_value=1.25)`).
        kernel_constraint: Latent weight constraint (default `WeightClip(1.25)`).
        stem_strides: Strides of the small-input 3x3 stem, 1 or 2. 2 halves every feature map
            (28x28 inputs: sections at 14, 7, 3 instead of 28, 14, 7, 3), so a first section twice
            as wide costs what the default's costs; the ImageNet stem always reduces by 4.
        stem_input_filters: Width of a 3x3 float conv (-> BN -> ReLU) at the input's full
            resolution before the small-input stem's conv; 0 for none. With `stem_strides=2`
            it lets the first features see every pixel before the stride (at 28x28, 16
            filters add 5% to the MACs of QuickNet 32-128 with 4 blocks per section, all of
            it in float). The ImageNet stem ignores it.
        variant: "bnn" or "larq-zoo"; they differ only under 50 px, where "larq-zoo" keeps
            QuickNet's stem as larq-zoo does.
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.

    Raises:
        BnnError: section lists of different lengths, an ImageNet stem whose width is not
            divisible by 4, `stem_strides` other than 1 or 2, or a negative
            `stem_input_filters`.
    """
    quantization = dict(
        input_quantizer=input_quantizer or lq.quantizers.SteSign(clip_value=CLIP_VALUE),
        kernel_quantizer=kernel_quantizer or lq.quantizers.SteSign(clip_value=CLIP_VALUE),
        kernel_constraint=kernel_constraint or lq.constraints.WeightClip(clip_value=CLIP_VALUE),
    )
    if len(section_blocks) != len(section_filters):
        raise BnnError(
            f"section_blocks {tuple(section_blocks)} and section_filters "
            f"{tuple(section_filters)} must have one entry per section."
        )

    if stem_strides not in (1, 2):
        raise BnnError(f"Expected stem_strides 1 or 2, got {stem_strides!r}.")
    if not (isinstance(stem_input_filters, int) and stem_input_filters >= 0):
        raise BnnError(f"Expected stem_input_filters >= 0, got {stem_input_filters!r}.")
    # Both variants pad the binary convolutions with +1, as larq-zoo's QuickNets do.
    rules = variant_rules(variant, _ZOO_RULES)
    inputs = image_input(input_shape)
    x = _stem(inputs, section_filters[0], small=rules.uses_small_stem(input_shape),
              small_strides=stem_strides, input_filters=stem_input_filters)
    for s, (blocks, filters) in enumerate(zip(section_blocks, section_filters), start=1):
        if x.shape[-1] != filters:
            x = _transition(x, filters, prefix=f"section{s}_transition")
        for b in range(1, blocks + 1):
            prefix = f"section{s}_block{b}"
            shortcut = x
            x = binary_conv3x3(filters, name=f"{prefix}_conv", **quantization)(x)
            # ReLU before BN: LCE clamps the accumulator, then applies BN's multiplier and bias.
            x = tf.keras.layers.ReLU(name=f"{prefix}_relu")(x)
            x = batch_norm(f"{prefix}_bn")(x)
            x = tf.keras.layers.Add(name=f"{prefix}_add")([x, shortcut])

    if include_top:
        x = tf.keras.layers.ReLU(name="head_relu")(x)
        x = classifier_head(x, num_classes)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


def _stem(x: tf.Tensor, filters: int, *, small: bool, small_strides: int,
          input_filters: int) -> tf.Tensor:
    if small:
        if input_filters:
            x = tf.keras.layers.Conv2D(
                input_filters, 3, padding="same", kernel_initializer="he_normal",
                use_bias=False, name="stem_input_conv",
            )(x)
            x = batch_norm("stem_input_bn")(x)
            x = tf.keras.layers.ReLU(name="stem_input_relu")(x)
        x = tf.keras.layers.Conv2D(
            filters, 3, strides=small_strides, padding="same", kernel_initializer="he_normal",
            use_bias=False, name="stem_conv",
        )(x)
        return batch_norm("stem_bn")(x)
    if filters % 4:
        raise BnnError(f"QuickNet's stem needs section_filters[0] divisible by 4, got {filters}.")
    # larq-zoo's stem BNs keep Keras' defaults (momentum 0.99, epsilon 1e-3), unlike the
    # zoo's momentum 0.9 / epsilon 1e-5 of the blocks and transitions (`batch_norm`).
    x = tf.keras.layers.Conv2D(
        filters // 4, 3, strides=2, padding="same", kernel_initializer="he_normal",
        use_bias=False, name="stem_conv",
    )(x)
    x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
    x = tf.keras.layers.ReLU(name="stem_relu")(x)
    x = tf.keras.layers.DepthwiseConv2D(
        3, strides=2, padding="same", use_bias=False, name="stem_depthwise"
    )(x)
    x = tf.keras.layers.BatchNormalization(scale=False, center=False, name="stem_depthwise_bn")(x)
    x = tf.keras.layers.Conv2D(
        filters, 1, kernel_initializer="he_normal", use_bias=False, name="stem_pointwise"
    )(x)
    return tf.keras.layers.BatchNormalization(name="stem_pointwise_bn")(x)


def _transition(x: tf.Tensor, filters: int, *, prefix: str) -> tf.Tensor:
    """Halves the feature map and sets the width, in full precision (ReLU -> blur pool -> 1x1)."""
    x = tf.keras.layers.ReLU(name=f"{prefix}_relu")(x)
    # Max-pool densely, then blur and subsample: anti-aliased max pooling (Zhang, 2019).
    x = tf.keras.layers.MaxPool2D(pool_size=2, strides=1, name=f"{prefix}_pool")(x)
    x = tf.keras.layers.DepthwiseConv2D(
        3, strides=2, padding="same", depthwise_initializer=BlurKernel(),
        use_bias=False, trainable=False, name=f"{prefix}_blurpool",
    )(x)
    x = tf.keras.layers.Conv2D(
        filters, 1, kernel_initializer="glorot_normal", use_bias=False, name=f"{prefix}_conv"
    )(x)
    return batch_norm(f"{prefix}_bn")(x)


# larq-zoo TrainQuickNet (larq_zoo/training/sota_experiments.py): CaseOptimizer with Adam(1e-2)
# for binary variables and SGD(0.1, momentum 0.9) for the rest, both cosine with 5 warm-up
# epochs, 600 epochs, batch 2048. Its cosine runs 600 epochs *after* the warm-up (605 in all);
# ours ends at 0 at the last of the 600 epochs. TrainQuickNetSmall and TrainQuickNetLarge
# inherit its optimizer and budget.
_RECIPE = PaperRecipe(
    source="Larq Compute Engine (arXiv 2011.09398); larq-zoo "
    "larq_zoo/training/sota_experiments.py TrainQuickNet",
    values=dict(optimizer="adam-sgd", learning_rate=1e-2, float_learning_rate=0.1,
                sgd_momentum=0.9, schedule="cosine", warmup_epochs=5, epochs=600,
                batch_size=2048),
)


def _zoo(function: str) -> ZooVariant:
    return ZooVariant(f"{LARQ_ZOO_VERSION} larq_zoo/sota/quicknet.py {function}",
                      "small-input stem", (ZOO_STEM_DIFFERENCE,), _ZOO_RULES)


@register_model("quicknet-small", recipe=_RECIPE, zoo=_zoo("QuickNetSmall"))
def quicknet_small(**kwargs) -> tf.keras.Model:
    """QuickNetSmall at 224x224x3, 1000 classes: 12,664,344 parameters (Keras's count_params,
    as `bnn models` shows; larq's model summary and larq-zoo's table, which leave out
    BatchNorm's moving statistics: 12,655,688). larq-zoo: 59.4% top-1."""
    kwargs.setdefault("section_filters", (32, 64, 256, 512))
    return quicknet(name="quicknet_small", **kwargs)


@register_model("quicknet", recipe=_RECIPE, zoo=_zoo("QuickNet"))
def quicknet_medium(**kwargs) -> tf.keras.Model:
    """QuickNet at 224x224x3, 1000 classes: 13,243,720 parameters (Keras's count_params, as
    `bnn models` shows; larq's model summary and larq-zoo's table, which leave out BatchNorm's
    moving statistics: 13,234,088). larq-zoo: 63.3% top-1."""
    return quicknet(name="quicknet", **kwargs)


@register_model("quicknet-large", recipe=_RECIPE, zoo=_zoo("QuickNetLarge"))
def quicknet_large(**kwargs) -> tf.keras.Model:
    """QuickNetLarge at 224x224x3, 1000 classes: 23,359,304 parameters (Keras's count_params,
    as `bnn models` shows; larq's model summary and larq-zoo's table, which leave out
    BatchNorm's moving statistics: 23,342,248). larq-zoo: 66.9% top-1."""
    kwargs.setdefault("section_blocks", (6, 8, 12, 6))
    return quicknet(name="quicknet_large", **kwargs)
