"""Real-to-Binary Net and its Strong Baseline (Martinez et al., ICLR 2020), with the models of
their staged training.

Both are ResNet-18-shaped: a 7x7/2 stem, then 8 blocks of two "half blocks"
`BN -> binary 3x3 conv -> scaling -> PReLU -> add`, each with its own shortcut (downsampling
ones: AvgPool2 -> 1x1 conv -> BN). They differ in how each binary convolution's output is
scaled. The Strong Baseline learns a static scale per height, width and channel
(`LearnedRescale`, after XNOR-Net++). Real-to-Binary Net computes a scale per channel from its
input, squeeze-and-excite style: global average pool of the convolution's (real-valued) input
-> dense C/8 + ReLU -> dense C_out + sigmoid -> multiply (Section 4.3). LCE runs the binary
convolution as an LceBconv2d with float output; the scaling branch stays a float computation.

Training is staged, each stage distilled from the one before (Section 4.4, larq-zoo `TrainR2B`;
larq-zoo initialises only the binary stage from the previous one's weights, the others
afresh); `bnn train --recipe paper` trains the stages in order as one run
(`R2B_STAGED_RECIPE`, `BASELINE_STAGED_RECIPE`). The registry entries' `stage` option builds
each stage's model: `real-to-binary-net` with stage "resnet18" (the real-valued teacher),
"float" (tanh activations, real weights), "ban" (binary activations, real weights) and "bnn"
(the default, binary activations and weights); `strong-baseline-net` with "ban", then "bnn".
Every stage of one family but the teacher has the same weighted layers under the same names,
so a stage's weights load into the next by name.

Layer names are larq-zoo's without its per-stage prefix (`block_2a_conv2d`, `block_2_out`,
where the zoo writes `r2b_bnn_block_2a_conv2d`); the block outputs are the zoo's attention
matching points. Parameter counts equal larq-zoo 2.4.0's definitions
(larq_zoo/literature/real_to_bin_nets.py); `variant="larq-zoo"` (chosen by a zoo weights file)
computes their function. The default differs in two ways: its binary convolutions pad with +1,
and under 50 px it uses a 3x3 stride-1 stem, as the other registry models do. The +1 padding
is not only faster: LCE 0.16 computes zero-padded "same" binary convolutions on maps of 2 px or
less wrongly (measured: a 3x3 conv on a 2x2 map is off by up to 180; 3x3 maps and larger are
exact), so the zoo variant converts correctly only where its last stage's maps are 3 px or more
(inputs of 65 px and over), while the default converts exactly at every size.

References:
    - [Training Binary Neural Networks with Real-to-Binary Convolutions](
      https://arxiv.org/abs/2003.11535)
    - [XNOR-Net++: Improved Binary Neural Networks](https://arxiv.org/abs/1909.13863)
      (the Strong Baseline's learned scaling)
"""

from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.layers import LearnedRescale, QuantConv2D
from models.common import (
    NEVER,
    PAD_DIFFERENCE,
    ZOO_STEM_DIFFERENCE,
    VariantRules,
    ZooVariant,
    family_builder,
    image_input,
    variant_rules,
)
from models.recipes import PaperRecipe, RecipeStage, StagedRecipe
from models.registry import LARQ_ZOO_VERSION, register_model

# larq-zoo's Real-to-Binary models: zero padding, the ImageNet stem at every size.
_ZOO_RULES = VariantRules(pad_value=0.0, small_stem=NEVER)

# Activations and weights of each training stage (larq-zoo's RealToBinNet{FP,BAN,BNN} and
# StrongBaselineNet{BAN,BNN}): "float" has tanh activations and real weights, "ban" binary
# activations and real weights, "bnn" binary activations and weights.
STAGES = ("float", "ban", "bnn")
SCALINGS = ("data", "learned")
# The `stage` option of the entries: Real-to-Binary Net's (larq-zoo TrainR2B) starts with
# "resnet18", the real-valued teacher of its "float" stage; the Strong Baseline's has two.
R2B_STAGES = ("resnet18",) + STAGES
BASELINE_STAGES = ("ban", "bnn")

# Section 4.3: the squeeze-and-excite reduction ratio of the data-driven scaling.
SCALING_REDUCTION = 8
# larq-zoo's BatchNormalization: momentum 0.99 and Keras's epsilon.
_BN = dict(momentum=0.99, epsilon=1e-3)


def _check_stage(stage: str, stages: Sequence[str]) -> None:
    if stage not in stages:
        raise BnnError(f"Unknown `stage` {stage!r}; expected one of: {', '.join(stages)}.")


def _quantization(stage: str) -> Dict[str, Any]:
    _check_stage(stage, STAGES)
    binary_weights = stage == "bnn"
    return dict(
        input_quantizer=None if stage == "float" else "ste_sign",
        kernel_quantizer="ste_sign" if binary_weights else None,
        kernel_constraint="weight_clip" if binary_weights else None,
    )


def _batch_norm(name: str) -> tf.keras.layers.Layer:
    return tf.keras.layers.BatchNormalization(name=name, **_BN)


def _stem(inputs: tf.Tensor, input_shape: Sequence[int], rules: VariantRules,
          prelu: bool) -> tf.Tensor:
    """larq-zoo's first block (7x7/2 conv -> BN -> PReLU or ReLU -> 3x3/2 max-pool), or a
    3x3/1 conv -> BN -> activation for inputs under 50 px (default variant only)."""
    small = rules.uses_small_stem(input_shape)
    x = tf.keras.layers.Conv2D(
        64, 3 if small else 7, strides=1 if small else 2, padding="same",
        kernel_initializer="glorot_normal", use_bias=False, name="block_1_conv2d",
    )(inputs)
    x = _batch_norm("block_1_batch_norm")(x)
    if prelu:
        x = tf.keras.layers.PReLU(shared_axes=[1, 2], name="block_1_prelu")(x)
    else:
        x = tf.keras.layers.ReLU(name="block_1_relu")(x)
    if small:
        return x
    return tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name="block_1_pool")(x)


def _shortcut(x: tf.Tensor, name: str, out_channels: int) -> tf.Tensor:
    if int(x.shape[-1]) == out_channels:
        return x
    # "same" matches the strided conv's ceil(n/2) output on odd sides.
    x = tf.keras.layers.AvgPool2D(2, strides=2, padding="same", name=f"{name}_shortcut_pool")(x)
    x = tf.keras.layers.Conv2D(
        out_channels, 1, kernel_initializer="glorot_normal", use_bias=False,
        name=f"{name}_shortcut_conv2d",
    )(x)
    return _batch_norm(f"{name}_shortcut_batch_norm")(x)


def _global_pool(x: tf.Tensor, name: str) -> tf.Tensor:
    """The mean over the feature map as larq-zoo computes it (`larq_zoo.core.utils.global_pool`:
    an average pool over the whole map, then flatten). `GlobalAveragePooling2D` is the same
    function but sums in another order, which moves the logits by a few 1e-6 of their size; this
    gives the zoo's outputs to the bit."""
    x = tf.keras.layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name=name)(x)
    return tf.keras.layers.Flatten(name=f"{name}_flatten")(x)


def _head(x: tf.Tensor, num_classes: int) -> tf.Tensor:
    """`models.common.classifier_head` (same names) with larq-zoo's global pooling."""
    x = _global_pool(x, "head_pool")
    x = tf.keras.layers.Dense(num_classes, kernel_initializer="he_normal", name="head_dense")(x)
    return tf.keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)


def _data_scaling(conv_input: tf.Tensor, conv_output: tf.Tensor, name: str) -> tf.Tensor:
    """Section 4.3: per-channel scales computed from the convolution's real-valued input."""
    out_filters = int(conv_output.shape[-1])
    z = _global_pool(conv_input, f"{name}_scaling_pool")
    z = tf.keras.layers.Dense(
        int(conv_input.shape[-1]) // SCALING_REDUCTION, activation="relu",
        kernel_initializer="he_normal", use_bias=False, name=f"{name}_scaling_dense_reduce",
    )(z)
    z = tf.keras.layers.Dense(
        out_filters, activation="sigmoid", kernel_initializer="he_normal", use_bias=False,
        name=f"{name}_scaling_dense_expand",
    )(z)
    scales = tf.keras.layers.Reshape((1, 1, out_filters), name=f"{name}_scaling_reshape")(z)
    return tf.keras.layers.Multiply(name=f"{name}_scaling_multiplication")([conv_output, scales])


def _half_block(x: tf.Tensor, *, downsample: bool, name: str, stage: str, scaling: str,
                pad_values: float) -> tf.Tensor:
    """Figure 1 (left): one binary convolution with its own shortcut."""
    out_channels = int(x.shape[-1]) * (2 if downsample else 1)
    shortcut = _shortcut(x, name, out_channels)
    conv_input = _batch_norm(f"{name}_batch_norm")(x)
    binary_input = conv_input
    if stage == "float":
        # larq-zoo's RealToBinNetFP passes `Activation("tanh")` as the input quantizer; as its
        # own layer it serializes without custom objects and computes the same.
        binary_input = tf.keras.layers.Activation("tanh", name=f"{name}_tanh")(conv_input)
    conv_output = QuantConv2D(
        out_channels, 3, strides=2 if downsample else 1, padding="same", pad_values=pad_values,
        kernel_initializer="glorot_normal", use_bias=False, name=f"{name}_conv2d",
        **_quantization(stage),
    )(binary_input)
    if scaling == "data":
        x = _data_scaling(conv_input, conv_output, name)
    else:
        x = LearnedRescale(name=f"{name}_rescale")(conv_output)
    x = tf.keras.layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x)
    return tf.keras.layers.Add(name=f"{name}_skip_add")([x, shortcut])


@family_builder
def real_to_binary_net(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    stage: str = "bnn",
    scaling: str = "data",
    variant: str = "bnn",
    name: Optional[str] = None,
) -> tf.keras.Model:
    """Builds a Real-to-Binary Net or a Strong Baseline network.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px get a 3x3/1 stem
            (default variant).
        num_classes: Classifier size.
        include_top: Whether to add global pooling + dense + softmax.
        stage: "bnn" (binary activations and weights), "ban" (binary activations, real
            weights) or "float" (tanh activations, real weights): see `STAGES`.
        scaling: "data" (Real-to-Binary Net's data-driven channel scaling) or "learned" (the
            Strong Baseline's static `LearnedRescale`).
        variant: "bnn" pads the binary convolutions with +1 (LCE-friendly) and gives inputs
            under 50 px a 3x3/1 stem; "larq-zoo" pads with 0 and keeps the ImageNet stem at
            every size, as larq-zoo does (its weights give its outputs only then).
        name: Keras model name (default from `scaling` and `stage`).

    Returns:
        An uncompiled `tf.keras.Model`.

    Raises:
        BnnError: an unknown stage, scaling or variant.
    """
    _quantization(stage)
    rules = variant_rules(variant, _ZOO_RULES)
    pad_values = rules.pad_value
    if scaling not in SCALINGS:
        raise BnnError(f"Unknown `scaling` {scaling!r}; expected one of: {', '.join(SCALINGS)}.")
    if name is None:
        family = "real_to_binary_net" if scaling == "data" else "strong_baseline_net"
        name = family if stage == "bnn" else f"{family}_{stage}"
    inputs = image_input(input_shape)
    # A PReLU in both stems: larq-zoo's comment says Real-to-Binary Net's has a ReLU, but its
    # `isinstance(self, StrongBaselineNetFactory)` holds for RealToBinNetFactory, a subclass.
    x = _stem(inputs, input_shape, rules, prelu=True)
    for block in range(2, 10):
        downsample = block % 2 == 0 and block > 3
        for half, down in (("a", downsample), ("b", False)):
            x = _half_block(x, downsample=down, name=f"block_{block}{half}", stage=stage,
                            scaling=scaling, pad_values=pad_values)
        # Named block outputs: the points of the paper's attention matching (Section 4.2).
        x = tf.keras.layers.Activation("linear", name=f"block_{block}_out")(x)
    if include_top:
        x = _head(x, num_classes)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


@family_builder
def real_to_binary_resnet18(
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    variant: str = "bnn",
    name: str = "real_to_binary_resnet18",
) -> tf.keras.Model:
    """Builds the real-valued ResNet-18 teacher of Real-to-Binary Net's first stage (larq-zoo
    `ResNet18Factory`: conv -> BN -> ReLU twice per block, then add and ReLU), with the same
    block output names (`block_{2..9}_out`) for attention matching.

    Args:
        input_shape: Input (height, width, channels); sides under 50 px get a 3x3/1 stem
            (default variant).
        num_classes: Classifier size.
        include_top: Whether to add global pooling + dense + softmax.
        variant: "bnn" or "larq-zoo" (the ImageNet stem at every input size, as larq-zoo).
        name: Keras model name.

    Returns:
        An uncompiled `tf.keras.Model`.

    Raises:
        BnnError: an unknown variant.
    """
    rules = variant_rules(variant, _ZOO_RULES)
    inputs = image_input(input_shape)
    x = _stem(inputs, input_shape, rules, prelu=False)
    for block in range(2, 10):
        downsample = block % 2 == 0 and block > 3
        name_ = f"block_{block}"
        out_channels = int(x.shape[-1]) * (2 if downsample else 1)
        shortcut = _shortcut(x, name_, out_channels)
        for conv in ("a", "b"):
            x = tf.keras.layers.Conv2D(
                out_channels, 3, strides=2 if downsample and conv == "a" else 1, padding="same",
                name=f"{name_}{conv}_conv2d",
            )(x)
            x = _batch_norm(f"{name_}{conv}_batch_norm")(x)
            x = tf.keras.layers.Activation("relu", name=f"{name_}{conv}_relu")(x)
        x = tf.keras.layers.Add(name=f"{name_}_skip_add")([x, shortcut])
        x = tf.keras.layers.ReLU(name=f"{name_}_out")(x)
    if include_top:
        x = _head(x, num_classes)
    return tf.keras.Model(inputs=inputs, outputs=x, name=name)


_ZOO_FILE = f"{LARQ_ZOO_VERSION} larq_zoo/literature/real_to_bin_nets.py"
_ZOO_DIFFERENCES = ("pad_values 1 (zoo: 0); small-input stem",
                    (PAD_DIFFERENCE, ZOO_STEM_DIFFERENCE), _ZOO_RULES)
_PAPER = "Real-to-Binary Convolutions (arXiv 2003.11535)"
_ZOO_TRAINING = "larq-zoo larq_zoo/training/multi_stage_experiments.py"



# larq-zoo TrainR2B (multi_stage_experiments.py), stage by stage. bnn writes a distilled
# loss as (1 - w) x cross-entropy + w x T**2 KL (`bnn_keras.distillation`, the zoo's output
# matching term at w) + the attention term; the zoo's is the sum with weights. The zoo's
# CE + 3 KD + 30 AT + l2(1e-5) is 4 x (0.25 CE + 0.75 KD + 7.5 AT + l2(2.5e-6)): the same
# Adam steps (Adam's update does not depend on the loss's scale, up to its epsilon), so
# w = 0.75, attention weight 7.5 and weight decay 2.5e-6 here; and CE + 0.8 KD is
# 1.8 x (CE / 1.8 + (0.8 / 1.8) KD).
_R2B_SOURCE = f"{_PAPER} Section 4.4; {_ZOO_TRAINING} TrainR2B"
# The zoo's matching volumes, as `TrainConfig.distill_attention_layers` spells them.
_BLOCK_OUTPUTS = ",".join(f"block_{b}_out" for b in range(2, 10))
_STEP_SCHEDULE = dict(schedule="step", warmup_epochs=5, step_boundaries=(40, 60, 70))
# TrainR2BBFP: Adam(1e-3) on R2BStepSchedule (5 warm-up epochs, x0.3 at epochs 40, 60, 70),
# 75 epochs, batch 256, l2(1e-5) on the real-valued kernels (RealToBinNetFPFactory).
_R2B_FLOAT = PaperRecipe(
    f"{_PAPER}; {_ZOO_TRAINING} TrainR2BBFP, {_ZOO_FILE} RealToBinNetFPFactory",
    dict(optimizer="adam", learning_rate=1e-3, step_factor=0.3, epochs=75, batch_size=256,
         weight_decay=1e-5 / 4, **_STEP_SCHEDULE))
_R2B_MATCHING = dict(distill_loss="kl", distill_weight=3.0 / 4, distill_temperature=1.0,
                     distill_attention_weight=30.0 / 4, distill_attention_layers=_BLOCK_OUTPUTS)
R2B_STAGED_RECIPE = StagedRecipe(
    source=_R2B_SOURCE,
    stages=(
        # TrainFPResnet18: SGD (momentum 0) at 0.1, cosine decay after 5 warm-up epochs, 100
        # epochs, batch 512, no regularizer.
        RecipeStage(
            "resnet18", {"stage": "resnet18"},
            PaperRecipe(f"{_PAPER}; {_ZOO_TRAINING} TrainFPResnet18",
                        dict(optimizer="adam", learning_rate=1e-3, schedule="cosine",
                             warmup_epochs=5, epochs=100, batch_size=512)),
            note="larq-zoo trains this teacher with SGD (momentum 0) at 0.1; bnn's recipes "
                 "have SGD only beside binary weights (adam-sgd), so it trains with Adam at "
                 "the 1e-3 of the zoo's other float stages."),
        # TrainR2BBFP: distils from the ResNet-18 (CE 1, output matching 3 at T 1, attention
        # matching 30 on block_2_out..block_9_out); freshly initialised (no
        # initialize_student_weights_from).
        RecipeStage("float", {"stage": "float"}, _R2B_FLOAT, teacher="resnet18",
                    train_options=_R2B_MATCHING),
        # TrainR2BBAN: the same at 1e-3 with the float stage as teacher; the zoo initialises
        # it afresh too (RealToBinNetBANFactory: l2(1e-5) on the real-valued kernels).
        RecipeStage("ban", {"stage": "ban"},
                    _R2B_FLOAT.replace(f"{_PAPER}; {_ZOO_TRAINING} TrainR2BBAN, {_ZOO_FILE} "
                                       "RealToBinNetBANFactory"),
                    teacher="float", train_options=_R2B_MATCHING),
        # TrainR2BBNNAlternative (from TrainR2BBNN): Adam(2e-4) with 10 epochs of linear
        # warm-up, then cosine decay to 0; 75 epochs, batch 256; no regularizer; starts from
        # the "ban" stage's weights and distils from it (CE 1, output matching 0.8 at T 1,
        # no attention matching).
        RecipeStage(
            "bnn", {"stage": "bnn"},
            PaperRecipe(f"{_PAPER}; {_ZOO_TRAINING} TrainR2BBNNAlternative",
                        dict(learning_rate=2e-4, schedule="cosine", warmup_epochs=10,
                             epochs=75, batch_size=256)),
            start_from="ban", teacher="ban",
            train_options=dict(distill_loss="kl", distill_weight=0.8 / 1.8,
                               distill_temperature=1.0)),
    ),
)

# larq-zoo TrainR2BStrongBaseline: two stages from the labels alone (no teacher).
_BASELINE_BAN = PaperRecipe(
    f"{_PAPER}; {_ZOO_TRAINING} TrainR2BStrongBaselineBAN, {_ZOO_FILE} "
    "StrongBaselineNetBANFactory",
    dict(optimizer="adam", learning_rate=1e-3, step_factor=0.1, epochs=75, batch_size=256,
         weight_decay=1e-5, **_STEP_SCHEDULE))
BASELINE_STAGED_RECIPE = StagedRecipe(
    source=f"{_PAPER} Section 4.1; {_ZOO_TRAINING} TrainR2BStrongBaseline",
    stages=(
        # TrainR2BStrongBaselineBAN: Adam(1e-3), 5 warm-up epochs, x0.1 at epochs 40, 60 and
        # 70, 75 epochs, l2(1e-5) on the kernels. The zoo's batch_size there is 8, a debugging
        # value; the paper's is 256.
        RecipeStage("ban", {"stage": "ban"}, _BASELINE_BAN),
        # TrainR2BStrongBaselineBNN: the same at 2e-4 without a regularizer, from the "ban"
        # stage's weights (initialize_student_weights_from "baseline_ban").
        RecipeStage("bnn", {"stage": "bnn"},
                    PaperRecipe(f"{_PAPER}; {_ZOO_TRAINING} TrainR2BStrongBaselineBNN",
                                dict(learning_rate=2e-4, step_factor=0.1, epochs=75,
                                     batch_size=256, **_STEP_SCHEDULE)),
                    start_from="ban"),
    ),
)


@register_model(
    "real-to-binary-net",
    # `recipe` is the last stage's (TrainR2BBNNAlternative); the earlier stages and their
    # distillation are the staged recipe's.
    staged=R2B_STAGED_RECIPE,
    zoo=ZooVariant(f"{_ZOO_FILE} RealToBinaryNet (RealToBinNetBNNFactory; stages "
                   "ResNet18FPFactory, RealToBinNetFPFactory, RealToBinNetBANFactory)",
                   *_ZOO_DIFFERENCES),
)
def real_to_binary_net_entry(*, stage: str = "bnn", **kwargs) -> tf.keras.Model:
    """Real-to-Binary Net: 11,995,624 parameters at 224x224x3, 1000 classes.

    `stage` picks the model of a stage of its training: "bnn" (the final binary network, the
    default), "ban" (binary activations, real weights), "float" (tanh activations, real
    weights; the same parameters in all three) or "resnet18" (the real-valued ResNet-18
    teacher of the "float" stage, 11,702,952 parameters).
    """
    _check_stage(stage, R2B_STAGES)
    if stage == "resnet18":
        return real_to_binary_resnet18(**kwargs)
    return real_to_binary_net(stage=stage, scaling="data", **kwargs)


@register_model(
    "strong-baseline-net",
    # `recipe` is the last stage's (TrainR2BStrongBaselineBNN).
    staged=BASELINE_STAGED_RECIPE,
    zoo=ZooVariant(f"{_ZOO_FILE} StrongBaselineNetBNNFactory (stage StrongBaselineNetBANFactory)",
                   *_ZOO_DIFFERENCES),
)
def strong_baseline_net(*, stage: str = "bnn", **kwargs) -> tf.keras.Model:
    """Real-to-Binary Net's Strong Baseline (Section 4.1): 11,705,904 parameters at 224x224x3,
    1000 classes (its learned scales depend on the input size).

    `stage` picks the model of a stage of its training: "bnn" (binary activations and
    weights, the default) or "ban" (binary activations, real weights; the same parameters).
    """
    _check_stage(stage, BASELINE_STAGES)
    return real_to_binary_net(stage=stage, scaling="learned", **kwargs)
