"""Binary ResNets with one binary 3x3 convolution per shortcut: BinaryResNetE and Bi-Real Net.

Both families replace each two-conv ResNet block by two single-conv blocks, each binary conv ->
BN -> add, so every binary convolution has its own full-precision shortcut. Downsampling shortcuts
are full precision: AvgPool2 -> 1x1 conv -> BN. Parameter counts match larq-zoo's definitions.

References:
    - [Back to Simplicity: How to Train Accurate BNNs from Scratch?](https://arxiv.org/abs/1906.08637)
    - [Bi-Real Net: Enhancing the Performance of 1-bit CNNs With Improved Representational
      Capability and Advanced Training Algorithm](https://arxiv.org/abs/1808.00278)
"""

from typing import Any, Sequence

import larq as lq
import tensorflow as tf

from bnn_keras.errors import BnnError
from models.common import (
    NEVER,
    PAD_DIFFERENCE,
    SHORT_HEIGHT,
    ZOO_STEM_DIFFERENCE,
    VariantRules,
    ZooVariant,
    batch_norm,
    binary_conv3x3,
    classifier_head,
    family_builder,
    image_input,
)
from models.recipes import LARQ_ZOO, PaperRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# Back to Simplicity trains BinaryResNetE with a gradient-cancelling window of 1.25.
RESNET_E_CLIP_VALUE = 1.25

_STAGE_FILTERS = (64, 128, 256, 512)

# larq-zoo's definitions: both pad with 0; BinaryResNetE18 has a small-input stem too (for a
# height under 50 px), Bi-Real Net keeps its ImageNet stem at every size.
_ZOO_RESNET_E = ZooVariant(
    f"{LARQ_ZOO_VERSION} larq_zoo/literature/resnet_e.py BinaryResNetE18",
    "pad_values 1 (zoo: 0)", (PAD_DIFFERENCE,),
    VariantRules(pad_value=0.0, small_stem=SHORT_HEIGHT),
)
_ZOO_BIREALNET = ZooVariant(
    f"{LARQ_ZOO_VERSION} larq_zoo/literature/birealnet.py BiRealNet",
    "pad_values 1 (zoo: 0); small-input stem",
    (PAD_DIFFERENCE, ZOO_STEM_DIFFERENCE),
    VariantRules(pad_value=0.0, small_stem=NEVER),
)


@family_builder
def binary_resnet(
    *,
    stage_blocks: Sequence[int],
    stage_filters: Sequence[int] = _STAGE_FILTERS,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    input_quantizer: Any,
    kernel_quantizer: Any,
    kernel_constraint: Any,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    stem_initializer: str = "he_normal",
    stem_strides: int = 1,
    stem_relu: bool = True,
    stem_extra_bn: bool = True,
    head_relu: bool = True,
    variant: str = "bnn",
    zoo: ZooVariant = _ZOO_RESNET_E,
    name: str = "binary_resnet",
) -> tf.keras.Model:
    """Builds a binary ResNet with a shortcut around every binary convolution.

    Args:
        stage_blocks: ResNet blocks per stage, e.g. (2, 2, 2, 2) for 18 layers; each block
            becomes two single-conv binary blocks.
        stage_filters: Filters per stage.
        input_shape: Input (height, width, channels); sides under 50 px get a 3x3 stem.
        num_classes: Classifier size.
        include_top: Whether to add global pooling + dense + softmax.
        input_quantizer: Activation quantizer of the binary convolutions.
        kernel_quantizer: Weight quantizer of the binary convolutions.
        kernel_constraint: Latent weight constraint.
        bn_momentum: BatchNormalization momentum.
        bn_epsilon: BatchNormalization epsilon.
        stem_initializer: Initializer of the full-precision stem convolution.
        stem_strides: Strides of the small-input 3x3 stem. 2 halves every feature map, for
            ~4x fewer MACs (28x28 inputs: stages at 14, 7, 4, 2 instead of 28, 14, 7, 4) with
            the same parameters; the ImageNet stem always reduces by 4.
        stem_relu: Whether the ImageNet stem has a ReLU (ResNetE yes, Bi-Real Net no).
        stem_extra_bn: Whether a BN follows the stem's max-pool (ResNetE yes, Bi-Real Net no).
        head_relu: Whether a ReLU precedes the global pooling.
        variant: "bnn" pads the binary convolutions with +1 (LCE-friendly), "larq-zoo" with
            0 and uses the zoo's stem rule, as larq-zoo does (its weights give its outputs only
            then).
        zoo: larq-zoo's definition of this network (ResNetE's or Bi-Real Net's), whose rules
            `variant="larq-zoo"` builds with.
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """

    def bn(layer_name: str) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=bn_momentum, epsilon=bn_epsilon)

    if stem_strides not in (1, 2):
        raise BnnError(f"Expected stem_strides 1 or 2, got {stem_strides!r}.")
    rules = zoo.rules_for(variant)
    pad_values = rules.pad_value
    inputs = image_input(input_shape)
    if rules.uses_small_stem(input_shape):
        x = tf.keras.layers.Conv2D(
            stage_filters[0], 3, strides=stem_strides, padding="same",
            kernel_initializer=stem_initializer, use_bias=False, name="stem_conv",
        )(inputs)
    else:
        x = tf.keras.layers.Conv2D(
            stage_filters[0], 7, strides=2, padding="same", kernel_initializer=stem_initializer,
            use_bias=False, name="stem_conv",
        )(inputs)
        x = bn("stem_bn")(x)
        if stem_relu:
            x = tf.keras.layers.Activation("relu", name="stem_relu")(x)
        x = tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name="stem_pool")(x)
        if stem_extra_bn:
            x = bn("stem_pool_bn")(x)

    for s, (blocks, filters) in enumerate(zip(stage_blocks, stage_filters), start=1):
        for i in range(1, 2 * blocks + 1):
            prefix = f"block{s}_layer{i}"
            downsample = x.shape[-1] != filters
            shortcut = x
            if downsample:
                # "same" matches the strided conv's ceil(n/2) output on odd sides (7 -> 4).
                shortcut = tf.keras.layers.AvgPool2D(
                    2, strides=2, padding="same", name=f"{prefix}_shortcut_pool"
                )(x)
                shortcut = tf.keras.layers.Conv2D(
                    filters, 1, kernel_initializer="glorot_normal", use_bias=False,
                    name=f"{prefix}_shortcut_conv",
                )(shortcut)
                shortcut = bn(f"{prefix}_shortcut_bn")(shortcut)
            x = binary_conv3x3(
                filters,
                strides=2 if downsample else 1,
                input_quantizer=input_quantizer,
                kernel_quantizer=kernel_quantizer,
                kernel_constraint=kernel_constraint,
                pad_values=pad_values,
                name=f"{prefix}_conv",
            )(x)
            x = bn(f"{prefix}_bn")(x)
            x = tf.keras.layers.Add(name=f"{prefix}_add")([x, shortcut])

    if head_relu:
        x = tf.keras.layers.Activation("relu", name="head_relu")(x)
    if include_top:
        x = classifier_head(x, num_classes)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


def _resnet_e(stage_blocks: Sequence[int], name: str, **kwargs) -> tf.keras.Model:
    kwargs.setdefault("input_quantizer", lq.quantizers.SteSign(clip_value=RESNET_E_CLIP_VALUE))
    kwargs.setdefault("kernel_quantizer", lq.quantizers.SteSign(clip_value=RESNET_E_CLIP_VALUE))
    kwargs.setdefault(
        "kernel_constraint", lq.constraints.WeightClip(clip_value=RESNET_E_CLIP_VALUE)
    )
    return binary_resnet(stage_blocks=stage_blocks, name=name, **kwargs)


def _birealnet(stage_blocks: Sequence[int], name: str, **kwargs) -> tf.keras.Model:
    kwargs.setdefault("input_quantizer", lq.quantizers.ApproxSign())
    kwargs.setdefault("kernel_quantizer", lq.quantizers.MagnitudeAwareSign(clip_value=1.0))
    kwargs.setdefault("kernel_constraint", lq.constraints.WeightClip(clip_value=1.0))
    return binary_resnet(
        stage_blocks=stage_blocks,
        bn_momentum=0.8,
        bn_epsilon=1e-3,
        stem_initializer="glorot_normal",
        stem_relu=False,
        stem_extra_bn=False,
        head_relu=False,
        zoo=_ZOO_BIREALNET,
        name=name,
        **kwargs,
    )


@register_model(
    "binary-resnet-e18",
    # larq-zoo TrainBinaryResNetE18: Adam(4e-3, epsilon=1e-8), x0.3 at 70, 90, 110,
    # 120 epochs, batch 1024.
    recipe=PaperRecipe(
        source=f"Back to Simplicity (arXiv 1906.08637); {LARQ_ZOO} TrainBinaryResNetE18",
        values=dict(learning_rate=4e-3, schedule="step", step_boundaries=(70, 90, 110),
                    step_factor=0.3, adam_epsilon=1e-8, epochs=120, batch_size=1024),
    ),
    zoo=_ZOO_RESNET_E,
)
def binary_resnet_e18(**kwargs) -> tf.keras.Model:
    """BinaryResNetE18: 11,699,368 parameters at 224x224x3, 1000 classes."""
    return _resnet_e((2, 2, 2, 2), "binary_resnet_e18", **kwargs)


# No recipe: larq-zoo has no training config for BinaryResNetE34.
@register_model("binary-resnet-e34")
def binary_resnet_e34(**kwargs) -> tf.keras.Model:
    """BinaryResNetE34: ResNet-34 stage depths (3, 4, 6, 3), one binary conv per shortcut."""
    return _resnet_e((3, 4, 6, 3), "binary_resnet_e34", **kwargs)


@register_model(
    "birealnet18",
    # larq-zoo TrainBiRealNet: Adam(5e-3) with PolynomialDecay(power=1) to 0 over 750684 steps
    # = 300 epochs x 1281167/512 ImageNet steps, i.e. linear to 0 at the end; batch 512.
    recipe=PaperRecipe(
        source=f"Bi-Real Net (arXiv 1808.00278); {LARQ_ZOO} TrainBiRealNet",
        values=dict(learning_rate=5e-3, schedule="linear", epochs=300, batch_size=512),
    ),
    zoo=_ZOO_BIREALNET,
)
def birealnet18(**kwargs) -> tf.keras.Model:
    """Bi-Real Net 18: 11,699,112 parameters at 224x224x3, 1000 classes."""
    return _birealnet((2, 2, 2, 2), "birealnet18", **kwargs)


# No recipe: larq-zoo has no training config for Bi-Real Net 34.
@register_model("birealnet34")
def birealnet34(**kwargs) -> tf.keras.Model:
    """Bi-Real Net 34: ResNet-34 stage depths (3, 4, 6, 3)."""
    return _birealnet((3, 4, 6, 3), "birealnet34", **kwargs)
