"""ReActNet-A (Liu et al., ECCV 2020): a MobileNetV1-shaped binary backbone with RSign and RPReLU.

MobileNetV1's depthwise 3x3 + pointwise 1x1 pairs become binary 3x3 and binary 1x1
convolutions (full, not depthwise), each in a residual unit with a parameter-free shortcut:

    out1 = RPReLU(x' + BN(conv3x3(RSign(x))))          x' = x, or AvgPool(2)(x) when strided
    out2 = RPReLU(out1 + BN(conv1x1(RSign(out1))))      same width
    out2 = RPReLU([out1, out1] + BN(conv1x1(RSign(out1))))   width doubled

where the official code doubles the width with two 1x1 convolutions of the block's width, each
with its own BN and `+ out1`, concatenated; here they are one 1x1 convolution with twice the
filters and one BN (the same function and parameters, and one `LceBconv2d`). Thirteen blocks,
widths 32 -> 64 -> 128 x2 -> 256 x2 -> 512 x6 -> 1024 x2, strided where the width changes
(except 32 -> 64), after a float 3x3/2 conv + BN stem; global average pooling and a float
classifier. 29,365,480 parameters at 224x224x3 with 1000 classes: the official code's
29,343,592 trainable parameters (`reactnet.py`, step 2) plus BatchNorm's 21,888 moving
statistics, which Keras counts and PyTorch keeps as buffers. The paper gives operation counts,
not a parameter count: 4.82e9 BOPs (here 4,816,896,000 binary MACs), 0.12e8 FLOPs (the float
stem and classifier) and 0.87e8 OPs, for 69.4% ImageNet top-1.

Differences from the official code: binary convolutions pad with +1 (pad_values=1, so that LCE
needs no padding correction; the official code pads the sign's output with 0), and inputs under
50 px get a 3x3 stride-1 stem as the other families here. Weights are `MagnitudeAwareSign`
(sign times the per-output-channel mean |W|, a constant of the backward pass, the
straight-through estimator clipped at 1: the official step-2 `HardBinaryConv`), their latent
values clipped to [-1, 1] (the official code leaves them unclipped); activations
are `RSign` with ApproxSign's pseudo-gradient (the official `BinaryActivation`).

Training: the paper trains in two steps, binary activations with float weights first, then
both binary starting from the first step's weights, with the distributional loss against a
float teacher (torchvision's ResNet-34 in the official step-1 `train.py`). `bnn train --recipe
paper` trains both steps as one run (`STAGED_RECIPE`; `bnn_keras.training.stages`):
`kernel_quantizer=None` builds the first step's model, and the second starts from its weights.
The distributional loss needs a float teacher, `bnn train --teacher`; without one both steps
learn from the labels.

References:
    - [ReActNet: Towards Precise Binary Neural Network with Generalized Activation
      Functions](https://arxiv.org/abs/2003.03488); code: https://github.com/liuzechun/ReActNet
      (mobilenet/2_step2/reactnet.py)
    - [MobileNets](https://arxiv.org/abs/1704.04861) (the backbone's shape)
"""

from typing import Any, Sequence

import larq as lq
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.layers import QuantConv2D, RPReLU, RSign
from models.common import batch_norm, classifier_head, family_builder, image_input, is_small_input
from models.recipes import USER_TEACHER, PaperRecipe, RecipeStage, StagedRecipe
from models.registry import register_model

# The official code's `stage_out_channel`: the stem's width, then each block's output width.
STAGE_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def _default_kernel_quantizer() -> Any:
    return lq.quantizers.MagnitudeAwareSign(clip_value=1.0)


@family_builder
def reactnet(
    *,
    widths: Sequence[int] = STAGE_WIDTHS,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    kernel_quantizer: Any = "default",
    name: str = "reactnet_a",
) -> tf.keras.Model:
    """Builds a ReActNet.

    Args:
        widths: The stem's width, then each block's output width: each the same as the
            previous one or twice it (twice means a stride-2 block, except from the stem's
            width to the next, as ReActNet-A's 32 -> 64).
        input_shape: Input (height, width, channels). Sides from 50 px get the 3x3/2 stem,
            smaller ones a 3x3 stride-1 stem.
        num_classes: Classifier size.
        include_top: Whether to add global pooling + dense + softmax.
        kernel_quantizer: Weight quantizer of every binary conv; `"default"` is
            `MagnitudeAwareSign(clip_value=1.0)` (a fresh one per layer), None keeps float
            weights (the paper's first training step).
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.

    Raises:
        BnnError: fewer than two widths, or a width that is neither the previous one nor
            twice it.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise BnnError(f"Expected `widths` as the stem's width and one per block, got {widths}.")
    for previous, width in zip(widths, widths[1:]):
        if width not in (previous, 2 * previous):
            raise BnnError(f"Expected each of `widths` to equal the previous one or twice it, "
                           f"got {previous} -> {width}.")

    def weights() -> Any:
        if kernel_quantizer == "default":
            return _default_kernel_quantizer()
        return lq.quantizers.get(kernel_quantizer) if isinstance(kernel_quantizer, str) else (
            kernel_quantizer)

    inputs = image_input(input_shape)
    small = is_small_input(input_shape)
    x = tf.keras.layers.Conv2D(
        widths[0], 3, strides=1 if small else 2, padding="same", use_bias=False,
        kernel_initializer="he_normal", name="stem_conv",
    )(inputs)
    x = batch_norm("stem_bn")(x)
    for i, (previous, width) in enumerate(zip(widths, widths[1:]), start=1):
        strides = 2 if width != previous and i > 1 else 1
        x = _block(x, width, strides=strides, weights=weights, prefix=f"block{i}")
    if include_top:
        x = classifier_head(x, num_classes)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


def _binary_conv(filters: int, kernel_size: int, *, strides: int, weights, name: str):
    """A binary conv whose input quantizer is an RSign (sign with a learnable threshold)."""
    quantizer = weights()
    return QuantConv2D(
        filters, kernel_size, strides=strides, padding="same", pad_values=1.0,
        input_quantizer=RSign(pseudo_gradient="approx_sign", name=f"{name}_rsign"),
        kernel_quantizer=quantizer,
        # Latent weights stay in the pseudo-gradient's window [-1, 1] (larq's usual clip).
        kernel_constraint=None if quantizer is None else lq.constraints.WeightClip(1.0),
        kernel_initializer="glorot_normal", use_bias=False, name=name,
    )


def _block(x: tf.Tensor, width: int, *, strides: int, weights, prefix: str) -> tf.Tensor:
    channels = int(x.shape[-1])
    y = _binary_conv(channels, 3, strides=strides, weights=weights, name=f"{prefix}_conv3x3")(x)
    y = batch_norm(f"{prefix}_bn1")(y)
    if strides == 2:
        # "same": the shortcut keeps the conv's ceil(side / 2) on odd sides (the official
        # AvgPool2d(2, 2) only meets even ones, at 224 px).
        x = tf.keras.layers.AveragePooling2D(2, 2, padding="same", name=f"{prefix}_pool")(x)
    x = tf.keras.layers.Add(name=f"{prefix}_add1")([x, y])
    x = RPReLU(name=f"{prefix}_rprelu1")(x)

    y = _binary_conv(width, 1, strides=1, weights=weights, name=f"{prefix}_conv1x1")(x)
    y = batch_norm(f"{prefix}_bn2")(y)
    if width != channels:  # both halves of the doubled width add the same shortcut
        x = tf.keras.layers.Concatenate(name=f"{prefix}_shortcut")([x, x])
    x = tf.keras.layers.Add(name=f"{prefix}_add2")([x, y])
    return RPReLU(name=f"{prefix}_rprelu2")(x)


# The official code's 256-epoch setting (mobilenet/1_step1/run.sh, train.py): Adam, learning
# rate 5e-4 decayed linearly to 0 (per epoch there, per step here), 256 epochs, batch 256,
# weight decay 1e-5 on the conv kernels in step 1 (`Recipe.weight_decay` decays only float
# kernels: in step 1 the binary convs' real-valued ones too, in step 2 the stem and the
# classifier). Its loss is the distributional loss alone (no labels), a distillation option of
# the stage rather than a recipe value.
_CODE = "github.com/liuzechun/ReActNet"
_STEP1 = PaperRecipe(
    source=f"ReActNet (arXiv 2003.03488); {_CODE} mobilenet/1_step1/run.sh (256-epoch "
    "setting) and train.py",
    values=dict(optimizer="adam", learning_rate=5e-4, schedule="linear", epochs=256,
                batch_size=256, weight_decay=1e-5),
)
# Step 2 (mobilenet/2_step2/run.sh, train.py): the same, from step 1's checkpoint, with binary
# weights and weight decay 0.
_STEP2 = _STEP1.replace(
    f"ReActNet (arXiv 2003.03488); {_CODE} mobilenet/2_step2/run.sh (256-epoch setting, "
    "weight decay 0) and train.py", weight_decay=0.0)
# Both steps learn from a float teacher's softmax alone (the official train.py's
# DistributionLoss against torchvision's ResNet-34); here the classifier given with --teacher.
_DISTRIBUTION = {"distill_loss": "distribution"}
STAGED_RECIPE = StagedRecipe(
    source=f"ReActNet (arXiv 2003.03488) Section 4.1 two-step training; {_CODE} mobilenet/",
    stages=(
        RecipeStage("step1", {"kernel_quantizer": None}, _STEP1, teacher=USER_TEACHER,
                    train_options=_DISTRIBUTION),
        RecipeStage("step2", {}, _STEP2, start_from="step1", teacher=USER_TEACHER,
                    train_options=_DISTRIBUTION),
    ),
)


@register_model("reactnet-a", staged=STAGED_RECIPE)
def reactnet_a(**kwargs) -> tf.keras.Model:
    """ReActNet-A: 29,365,480 parameters at 224x224x3, 1000 classes (paper: 69.4% top-1)."""
    return reactnet(**kwargs)
