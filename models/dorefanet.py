"""DoReFa-Net (Zhou et al., 2016): AlexNet with binary weights and 2-bit activations.

The first and last layers stay full precision. LCE does not accelerate multi-bit activations,
so this model converts to float convolutions; it is here as an accuracy reference. Parameter
count matches larq-zoo's definition. The default scales the binary weights per output channel
(larq's `MagnitudeAwareSign`), so that fc6 can be computed in parts; `variant="larq-zoo"`
scales them by one mean|W| per layer, as DoReFa-Net and larq-zoo do.

References:
    - [DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth
      Gradients](https://arxiv.org/abs/1606.06160)
"""

from typing import Any, Optional, Sequence

import larq as lq
import tensorflow as tf

from bnn_keras.constraints import NoClip
from bnn_keras.layers import QuantConv2D
from bnn_keras.quantizers import LayerScaledSign
from models.common import (
    NEVER,
    ZOO_STEM_DIFFERENCE,
    VariantRules,
    ZooVariant,
    batch_norm,
    family_builder,
    flatten_to_pixel,
    image_input,
    pixel_to_vector,
    softmax,
    split_quant_conv,
)
from models.recipes import LARQ_ZOO, PaperRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# (filters, kernel size, max-pool padding or None) of conv2..conv5.
_CONVS = ((256, 5, "same"), (384, 3, "same"), (384, 3, None), (256, 3, "valid"))

# larq-zoo's DoReFaNet: one mean|W| per layer scales the binary weights (`family`
# "layer_scaled_weights"), so fc6 stays one layer; the 12x12/4 stem at every size. Both
# variants pad with 0 (see `dorefanet`).
_ZOO = ZooVariant(
    f"{LARQ_ZOO_VERSION} larq_zoo/literature/dorefanet.py DoReFaNet",
    "weight scale per channel (zoo: per layer); small-input stem",
    ("binary weights are scaled by mean|W| per output channel (MagnitudeAwareSign, so that "
     "fc6 can be split for LCE); larq-zoo scales them by one mean|W| per layer, and its "
     "BatchNorm statistics hold only for that scale", ZOO_STEM_DIFFERENCE),
    VariantRules(pad_value=0.0, small_stem=NEVER,
                 family={"layer_scaled_weights": True, "fc6_parts": 1}),
)


@family_builder
def dorefanet(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    activations_k_bit: int = 2,
    input_quantizer: Any = None,
    kernel_quantizer: Any = None,
    kernel_constraint: Any = "no_clip",
    hidden_units: int = 4096,
    fc6_parts: Optional[int] = None,
    variant: str = "bnn",
    name: str = "dorefanet",
) -> tf.keras.Model:
    """Builds DoReFa-Net.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px replace the 12x12/4 stem
            by a 3x3/1 one (not in variant "larq-zoo").
        num_classes: Classifier size.
        include_top: Whether to add the fc6/fc7 quantized layers, the float classifier and softmax.
        activations_k_bit: Bits of the activation quantizer.
        input_quantizer: Activation quantizer (default `DoReFaQuantizer(k_bit=activations_k_bit)`).
        kernel_quantizer: Weight quantizer (default `MagnitudeAwareSign(clip_value=None)`;
            `LayerScaledSign()` in variant "larq-zoo").
        kernel_constraint: Latent weight constraint (default `bnn_keras.constraints.NoClip`:
            none, on purpose: the weight gradient is the identity, so no weight starves).
        hidden_units: Units of fc6 and fc7 (AlexNet's 4096; larq-zoo's weights need 4096).
        fc6_parts: Compute fc6 as this many 1x1 convs over the output channels, concatenated
            (same function and parameters with per-channel scales). None: as few as LCE's
            converter folds, i.e. 2 at 224 px with 4096 units, else 1; 1 in variant "larq-zoo".
        variant: "bnn" (per-channel weight scales, fc6 in parts for LCE) or "larq-zoo"
            (larq-zoo's function: one scale per layer, one fc6, the 12x12/4 stem at every size).
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.
    """
    rules = _ZOO.rules_for(variant)
    input_quantizer = input_quantizer or lq.quantizers.DoReFaQuantizer(k_bit=activations_k_bit)
    # DoReFa scales sign(W) by one per-layer mean|W|. A per-channel scale trains as well, since
    # every quantized layer feeds a per-channel BN, and lets LCE's fc6 be split into parts; but
    # with the BN's fixed statistics at inference the two give other outputs, so the zoo's
    # weights need the zoo's per-layer scale. clip_value=None = identity gradient, as the zoo's.
    if kernel_quantizer is None:
        kernel_quantizer = (LayerScaledSign() if rules.family.get("layer_scaled_weights")
                            else lq.quantizers.MagnitudeAwareSign(clip_value=None))
    if kernel_constraint == "no_clip":
        kernel_constraint = NoClip()
    quant = dict(
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=kernel_constraint,
        use_bias=False,
    )

    def bn(layer_name: str) -> tf.keras.layers.Layer:
        return batch_norm(layer_name, momentum=0.9, epsilon=1e-4, scale=False)

    inputs = image_input(input_shape)
    if rules.uses_small_stem(input_shape):
        x = tf.keras.layers.Conv2D(96, 3, padding="same", name="conv1")(inputs)
    else:
        x = tf.keras.layers.Conv2D(96, 12, strides=4, padding="valid", name="conv1")(inputs)
    for i, (filters, kernel_size, pool_padding) in enumerate(_CONVS, start=2):
        # Zero padding on purpose: DoReFa activations lie in [0, 1], where 0 is a real level.
        x = QuantConv2D(filters, kernel_size, padding="same", name=f"conv{i}", **quant)(x)
        x = bn(f"conv{i}_bn")(x)
        if pool_padding:
            x = tf.keras.layers.MaxPool2D(
                3, strides=2, padding=pool_padding, name=f"conv{i}_pool"
            )(x)

    if include_top:
        x = flatten_to_pixel(x, "fc_reshape")
        # fc6's 9216x4096 kernel at 224 px is too large for LCE's converter to fold: whole,
        # it would stay float32 twice (W and |W|); in parts, once. The zoo variant keeps one
        # layer: its scale is the mean over the whole kernel, and its weights load by layer.
        if fc6_parts is None:
            fc6_parts = rules.family.get("fc6_parts")
        x = split_quant_conv(x, hidden_units, 1, "fc6", fc6_parts, **quant)
        x = bn("fc6_bn")(x)
        x = QuantConv2D(hidden_units, 1, name="fc7", **quant)(x)
        x = bn("fc7_bn")(x)
        # clip(x, 0, 1) as a serializable built-in layer.
        x = tf.keras.layers.ReLU(max_value=1.0, name="fc7_clip")(x)
        x = pixel_to_vector(x, "fc7_flat")
        x = tf.keras.layers.Dense(num_classes, name="fc8")(x)
        x = softmax(x)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


@register_model(
    "dorefanet",
    # larq-zoo TrainDoReFaNet: Adam(2e-4, epsilon=1e-5), 90 epochs, batch 256; lr x0.2 at 60,
    # x0.04 at 75, then from 82 x0.004 and a further x0.1 every 2 epochs.
    recipe=PaperRecipe(
        source=f"DoReFa-Net (arXiv 1606.06160); {LARQ_ZOO} TrainDoReFaNet",
        values=dict(learning_rate=2e-4, schedule="step",
                    step_boundaries=(60, 75, 82, 84, 86, 88),
                    step_multipliers=(1.0, 0.2, 0.04, 0.004, 4e-4, 4e-5, 4e-6),
                    adam_epsilon=1e-5, epochs=90, batch_size=256),
    ),
    zoo=_ZOO,
)
def dorefanet_entry(**kwargs) -> tf.keras.Model:
    """DoReFa-Net (2-bit activations): 62,403,912 parameters at 224x224x3, 1000 classes."""
    return dorefanet(**kwargs)
