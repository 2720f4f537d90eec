"""Pieces that several model families share: input, stem choice, the LCE-friendly binary 3x3
convolution, binary fully-connected layers and the classifier head."""

import contextlib
import contextvars
import dataclasses
import functools
import types
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.layers import QuantConv2D
from bnn_keras.model_stats import lce_fold_parts

# Below this side length (CIFAR, MNIST-like inputs) a model uses a single
# 3x3 stride-1 stem instead of the ImageNet 7x7/2 conv + max-pool, as larq-zoo does.
SMALL_INPUT_SIDE = 50

# "bnn" pads binary convolutions with +1 so that the padded input stays binary and LCE needs no
# padding correction (LCE model-optimization guide); "larq-zoo" computes larq-zoo 2.4.0's
# function (zero padding, its stems), the one its published weights were trained for.
VARIANTS = ("bnn", "larq-zoo")
ZOO_VARIANT = "larq-zoo"


# `ZooVariant.differences` sentences shared by several families.
PAD_DIFFERENCE = ("binary 3x3 convolutions pad with +1 (pad_values=1, so LCE needs no padding "
                  "correction); larq-zoo pads them with 0")
ZOO_STEM_DIFFERENCE = ("inputs under 50 px get a 3x3 stride-1 stem; larq-zoo keeps its ImageNet "
                       "stem at every size")


# -- what a registry entry's options are -------------------------------------------------------

# Set while `probing_builders` is active: a family builder then reports how it was called
# instead of building.
_PROBING: contextvars.ContextVar = contextvars.ContextVar("probing_builders", default=False)


class BuilderCall(Exception):
    """Raised by a family builder called under `probing_builders`: the builder and the keyword
    arguments the registry entry gave it (the user's options and the entry's own values)."""

    def __init__(self, builder: Callable, kwargs: Dict[str, Any]):
        super().__init__(builder.__name__)
        self.builder = builder
        self.kwargs = kwargs


def family_builder(fn: Callable) -> Callable:
    """Marks a family builder (the function that makes the layers, whose keyword arguments are
    an entry's options): under `probing_builders` it raises `BuilderCall` instead of building,
    which is how `models.registry.model_options` learns an entry's options and defaults
    without building anything."""

    @functools.wraps(fn)
    def builder(*args, **kwargs):
        if _PROBING.get():
            raise BuilderCall(fn, kwargs)
        return fn(*args, **kwargs)

    return builder


@contextlib.contextmanager
def probing_builders() -> Iterator[None]:
    """Family builders raise `BuilderCall` inside this block."""
    token = _PROBING.set(True)
    try:
        yield
    finally:
        _PROBING.reset(token)


# Which inputs get the 3x3 stride-1 stem instead of the ImageNet stem (`VariantRules.small_stem`).
SMALL_SIDE = "small-side"      # a side under SMALL_INPUT_SIDE px (bnn's rule for every model)
SHORT_HEIGHT = "short-height"  # a height under SMALL_INPUT_SIDE px (larq-zoo's DenseNets, ResNetE)
NEVER = "never"                # none: the ImageNet stem at every size (larq-zoo's other models)
_STEM_RULES = (SMALL_SIDE, SHORT_HEIGHT, NEVER)


@dataclasses.dataclass(frozen=True)
class VariantRules:
    """How one variant builds the parts where bnn's default and larq-zoo's definition differ.

    A family builder reads its variant's rules (`ZooVariant.rules_for`) instead of taking a
    flag per difference: a new difference is a value here, declared with the model's entry.

    Attributes:
        pad_value: The `pad_values` of binary "same" convolutions: +1 keeps the padded input
            binary, so LCE needs no padding correction (bnn); larq-zoo pads with 0.
        small_stem: Which inputs get the 3x3 stride-1 stem: `SMALL_SIDE`, `SHORT_HEIGHT` or
            `NEVER`.
        family: Values that one family's builder reads by name (e.g. XNOR-Net's `fc6_kernel`).
    """

    pad_value: float = 1.0
    small_stem: str = SMALL_SIDE
    family: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.small_stem not in _STEM_RULES:
            raise ValueError(f"small_stem must be one of {_STEM_RULES}, got {self.small_stem!r}")
        object.__setattr__(self, "family", types.MappingProxyType(dict(self.family)))

    def uses_small_stem(self, input_shape: Sequence[int]) -> bool:
        """Whether a model of `input_shape` (height, width, channels) gets the small stem."""
        if self.small_stem == SHORT_HEIGHT:
            return input_shape[0] < SMALL_INPUT_SIDE
        return self.small_stem == SMALL_SIDE and is_small_input(input_shape)


# The default variant's rules: +1 padding, the small stem for a side under 50 px.
BNN_RULES = VariantRules()


def variant_rules(variant: str, zoo: VariantRules) -> VariantRules:
    """The rules of `variant` (see `VARIANTS`) for a model whose larq-zoo function follows `zoo`.

    Raises:
        BnnError: an unknown variant.
    """
    if variant not in VARIANTS:
        raise BnnError(f"Unknown `variant` {variant!r}; expected one of: {', '.join(VARIANTS)}.")
    return zoo if variant == ZOO_VARIANT else BNN_RULES


@dataclasses.dataclass(frozen=True)
class ZooVariant:
    """How a model's default differs from larq-zoo's definition, and that `variant="larq-zoo"`
    builds the zoo's function (the one its published weights were trained for).

    Attributes:
        source: The larq-zoo definition compared with.
        summary: The differences in a few words (a `bnn models` column).
        differences: One sentence per difference of the default ("bnn") variant.
        rules: How the zoo's function is built (what the builder reads for "larq-zoo").
    """

    source: str
    summary: str
    differences: Tuple[str, ...]
    rules: VariantRules = dataclasses.field(
        default_factory=lambda: VariantRules(pad_value=0.0, small_stem=NEVER))

    def rules_for(self, variant: str) -> VariantRules:
        """The rules a builder follows for `variant` (`variant_rules`).

        Raises:
            BnnError: an unknown variant.
        """
        return variant_rules(variant, self.rules)


def image_input(input_shape: Sequence[int]) -> tf.keras.layers.Layer:
    """A named Keras input for images of `input_shape` (height, width, channels).

    Raises:
        BnnError: the shape is not three positive integers.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise BnnError(
            f"Expected input_shape as (height, width, channels) of positive integers, got {shape}."
        )
    return tf.keras.Input(shape=shape, name="input")


def is_small_input(input_shape: Sequence[int]) -> bool:
    """True for inputs whose spatial side is under `SMALL_INPUT_SIDE` pixels."""
    return min(input_shape[0], input_shape[1]) < SMALL_INPUT_SIDE


def classifier_head(x: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Global average pool -> Dense -> softmax (kept in float32 under mixed precision)."""
    x = tf.keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = tf.keras.layers.Dense(num_classes, kernel_initializer="he_normal", name="head_dense")(x)
    return tf.keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)


def batch_norm(
    name: str, *, momentum: float = 0.9, epsilon: float = 1e-5, scale: bool = True
) -> tf.keras.layers.Layer:
    """A named BatchNormalization with the zoo's defaults (momentum 0.9, epsilon 1e-5)."""
    return tf.keras.layers.BatchNormalization(
        momentum=momentum, epsilon=epsilon, scale=scale, name=name
    )


def flatten_to_pixel(x: tf.Tensor, name: str) -> tf.Tensor:
    """Reshapes (N, H, W, C) to (N, 1, 1, H*W*C), the input of a dense layer written as a 1x1 conv.

    LCE has no binary Dense op, so binary fully-connected layers are 1x1 binary convolutions on a
    1x1 feature map (same parameter count as Dense). The reshape comes before the conv layer so
    that the layer's own input quantizer directly feeds the convolution: a reshape between the
    quantizer and the conv would break LCE's quantize -> bconv pattern.
    """
    size = 1
    for d in x.shape[1:]:
        size *= int(d)
    return tf.keras.layers.Reshape((1, 1, size), name=name)(x)


def binary_conv3x3(
    filters: int,
    *,
    name: str,
    input_quantizer: Any,
    kernel_quantizer: Any,
    kernel_constraint: Any,
    strides: int = 1,
    dilation_rate: int = 1,
    pad_values: float = 1.0,
) -> tf.keras.layers.Layer:
    """A binary 3x3 "same" convolution in the form LCE runs as one fused LceBconv2d.

    Padding with +1 instead of 0 keeps the padded input binary (LCE model-optimization guide);
    `pad_values=0` is larq-zoo's (`VariantRules.pad_value`). No bias, since a BatchNormalization
    follows in every family that uses it.
    """
    return QuantConv2D(
        filters,
        3,
        strides=strides,
        dilation_rate=dilation_rate,
        padding="same",
        pad_values=pad_values,
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=kernel_constraint,
        kernel_initializer="glorot_normal",
        use_bias=False,
        name=name,
    )


LayerFactory = Callable[..., tf.keras.layers.Layer]


def binary_dense_stack(
    x: tf.Tensor,
    units: Sequence[int],
    *,
    binary_conv: LayerFactory,
    bn: LayerFactory,
    first_index: int,
    activation: Optional[LayerFactory] = None,
) -> tf.Tensor:
    """Binary fully-connected layers `fc{i}` -> `fc{i}_bn` (-> `fc{i}_act`), as 1x1 convolutions.

    Args:
        x: A (N, 1, 1, C) tensor (see `flatten_to_pixel`).
        units: Output units of each layer.
        binary_conv: `binary_conv(filters, kernel_size, layer_name)` giving the family's binary
            convolution.
        bn: `bn(layer_name)` giving the family's BatchNormalization.
        first_index: `i` of the first layer (AlexNet's fully-connected layers are fc6 to fc8).
        activation: `activation(layer_name)` after each BN, or None.
    """
    for i, n in enumerate(units, start=first_index):
        x = bn(f"fc{i}_bn")(binary_conv(n, 1, f"fc{i}")(x))
        if activation is not None:
            x = activation(f"fc{i}_act")(x)
    return x


def pixel_to_vector(x: tf.Tensor, name: str) -> tf.Tensor:
    """Reshapes (N, 1, 1, C) back to (N, C) after the last 1x1-conv dense layer."""
    return tf.keras.layers.Reshape((int(x.shape[-1]),), name=name)(x)


def softmax(x: tf.Tensor) -> tf.Tensor:
    """The output softmax, kept in float32 under mixed precision."""
    return tf.keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)


def split_quant_conv(
    x: tf.Tensor, filters: int, kernel_size: Any, name: str, parts: Optional[int], *,
    make_layer: Optional[LayerFactory] = None, **kwargs: Any
) -> tf.Tensor:
    """A `QuantConv2D` computed as `parts` convs over the output channels, concatenated.

    The same function as one layer for kernel quantizers that work per output channel (a sign,
    `MagnitudeAwareSign`, a per-channel BNN+ scale); a quantizer with one scale for the whole
    kernel would scale each part by its own.

    Args:
        x: Input tensor.
        filters: Output channels of the whole layer.
        kernel_size: As for `QuantConv2D`.
        name: Name of the whole layer; the parts are `{name}_1`, `{name}_2`, ... and their
            concatenation is `name`.
        parts: How many parts (must divide `filters`); None: `lce_fold_parts` of the kernel.
        make_layer: `make_layer(filters, kernel_size, layer_name, **kwargs)` giving each part
            (a family's binary conv, e.g. with fresh quantizers per layer); default
            `QuantConv2D`. With it, give `parts`: only the quantizer in `kwargs` is known here.
        **kwargs: Other `QuantConv2D` arguments (no `kernel_initializer`: the parts keep the
            whole layer's Glorot-uniform range).

    Returns:
        The layer's output.

    Raises:
        BnnError: `parts` does not divide `filters`.
    """
    kernel_size = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (
        kernel_size, kernel_size)
    kernel_shape = (*kernel_size, int(x.shape[-1]), filters)
    if make_layer is None:
        def make_layer(n, size, layer_name, **layer_kwargs):
            return QuantConv2D(n, size, name=layer_name, **layer_kwargs)
    if parts is None:
        parts = lce_fold_parts(kernel_shape, kwargs.get("kernel_quantizer"))
    if parts == 1:
        return make_layer(filters, kernel_size, name, **kwargs)(x)
    if parts < 1 or filters % parts:
        raise BnnError(f"Expected `{name}_parts` to divide {filters}, got {parts}.")
    receptive = kernel_size[0] * kernel_size[1]
    fan_in = receptive * int(x.shape[-1])
    # Glorot-uniform of the whole layer: scale the parts' fan_avg back to the whole one's.
    scale = (fan_in + receptive * filters // parts) / (fan_in + receptive * filters)
    outputs = [
        make_layer(
            filters // parts, kernel_size, f"{name}_{i}",
            # One instance per part: a reused unseeded initializer repeats its values.
            kernel_initializer=tf.keras.initializers.VarianceScaling(
                scale=scale, mode="fan_avg", distribution="uniform"),
            **kwargs,
        )(x)
        for i in range(1, parts + 1)
    ]
    return tf.keras.layers.Concatenate(name=name)(outputs)
