"""Per-layer and whole-model statistics of a (binarized) Keras model, LCE-aware.

Counts parameters by precision, the model size with binary weights stored at 1 bit, MACs (and
how many of them are binary), and which layers Larq Compute Engine will turn into `LceBconv2d`,
with a note saying why a quantized layer will not be. The CLI (`bnn models`, `bnn summary`) and
the converter's checks read the same numbers, so this module imports no model definitions.

A MAC is one multiply-accumulate of a convolution or dense layer (larq's convention: kernel
size x output pixels). A *binary convolution* is a larq quantized convolution whose input
quantizer and kernel quantizer both have a precision of 1 bit.

LCE only binarizes a convolution whose quantized kernel the converter has folded into a
constant. Measured with larq-compute-engine 0.16 on single 1x1 layers and whole registry models
(`tests/convert/test_prediction.py` converts each case): a `MagnitudeAwareSign` kernel is folded
by a multiply with its per-channel scale, and folds while weights + filters <= 2**25 (32-bit
operands of 2**30 bits, TensorFlow's MLIR constant folder's `kOperandsSizeThreshold` in
tensorflow/compiler/mlir/tensorflow/transforms/constant_fold.cc); above that the layer runs as a
float CONV_2D and stores its kernel twice (W and |W|: sign and scale are computed at run time).
A BNN+ scale (`ScaledQuantConv2D`, alpha * sign(W)) folds the same way with its scale count
(filters per channel, 1 per layer): weights + scales <= 2**25, one float32 copy above.
A plain sign (`ste_sign`) kernel folded at every size converted, 8184x4096 to 16384x4096
(2**26 weights), except at exactly 2**25 weights (8192x4096), where it stays one float32 copy.
`lce_kernel_folds` is that rule; `ModelStats.lce_size_bytes` predicts the flatbuffer.

References:
    - larq's `larq.models.summary`: https://docs.larq.dev/larq/api/models/
    - LCE model optimization guide: https://docs.larq.dev/compute-engine/model_optimization_guide/
    - LCE's bconv pattern (needs a constant binary filter): larq/compute-engine,
      larq_compute_engine/mlir/transforms/prepare_patterns_common.td
"""

import dataclasses
import math
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

# bnn_keras/__init__.py has already set TF_USE_LEGACY_KERAS by the time this module runs.
import larq as lq
import tensorflow as tf

from bnn_keras.graph import inbound_layers
from bnn_keras.binary import BINARY_CONV_TYPES, is_binary_conv, quantizer_bits  # noqa: F401

_MAC_WEIGHT_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")

# TensorFlow's MLIR constant folder skips an op whose operands exceed this many bits.
FOLD_LIMIT_BITS = 2**30
# The one plain-sign kernel size LCE 0.16 was seen not to fold (module docstring).
_UNFOLDED_SIGN_WEIGHTS = FOLD_LIMIT_BITS // 32
# Flatbuffer bytes besides the weights (the file's fixed tables), measured on LCE conversions;
# the per-op tables are of the order of the per-channel constants counted with the weights.
_FLATBUFFER_BASE_BYTES = 1_500

Shape = Tuple[Optional[int], ...]


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Statistics of one layer.

    Attributes:
        name: Layer name.
        layer_type: Layer class name.
        output_shape: Output shape with the batch dimension as None; () when the layer has
            several outputs or was called several times.
        params: All weights, trainable or not (as `count_params`).
        binary_params: Weights stored at 1 bit (kernels with a 1-bit quantizer).
        macs: Multiply-accumulates per example (0 for layers without a kernel).
        binary_macs: MACs with both operands binary (1-bit input and 1-bit kernel).
        input_bits: Precision of the input quantizer; None for float input or no quantizer.
        kernel_bits: Precision of the kernel quantizer; None for float kernel or no quantizer.
        lce_bconvs: How many LceBconv2d ops LCE will emit for this layer.
        lce_note: Why a quantized layer will not become LceBconv2d, or what slows it down;
            "" when there is nothing to say.
        lce_bytes: Bytes of this layer's weights in the LCE flatbuffer (bitpacked kernels at
            1 bit per weight with input channels padded to 32, unfolded kernels at 32 bit, once
            or twice, BatchNorm as a scale and an offset).
        quantizers: The layer's input and kernel quantizers, "IN / KERNEL" (e.g.
            "SteSign(clip 1.3) / SteSign(clip 1.3)", "- / MagnitudeAwareSign(clip 1)"); "" for
            a layer without quantizers.
    """

    name: str
    layer_type: str
    output_shape: Shape
    params: int
    binary_params: int
    macs: int
    binary_macs: int
    input_bits: Optional[int]
    kernel_bits: Optional[int]
    lce_bconvs: int
    lce_note: str
    lce_bytes: int = 0
    quantizers: str = ""

    @property
    def float_params(self) -> int:
        """Weights stored at 32 bit."""
        return self.params - self.binary_params

    @property
    def binarized(self) -> bool:
        """Whether LCE will run this layer as binary convolution(s)."""
        return self.lce_bconvs > 0


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Whole-model statistics (sums over `layers`).

    Attributes:
        name: Model name.
        layers: Per-layer statistics, in model order (nested models flattened).
        total_params: All weights.
        binary_params: Weights stored at 1 bit.
        float_params: Weights stored at 32 bit.
        size_bytes: Weight storage with binary weights at 1 bit and all others at 32 bit.
        float32_size_bytes: Weight storage with every weight at 32 bit.
        total_macs: Multiply-accumulates per example.
        binary_macs: Binary multiply-accumulates per example.
        lce_bconvs: LceBconv2d ops expected after LCE conversion.
        lce_size_bytes: Predicted size of the LCE flatbuffer (weights as LCE stores them plus
            the file's own tables).
    """

    name: str
    layers: Tuple[LayerStats, ...]
    total_params: int
    binary_params: int
    float_params: int
    size_bytes: int
    float32_size_bytes: int
    total_macs: int
    binary_macs: int
    lce_bconvs: int
    lce_size_bytes: int = 0

    @property
    def binary_mac_fraction(self) -> float:
        """Share of the MACs that are binary (0.0 for a model without MACs)."""
        return self.binary_macs / self.total_macs if self.total_macs else 0.0

    @property
    def compression_ratio(self) -> float:
        """float32 size / size with binary weights at 1 bit."""
        return self.float32_size_bytes / self.size_bytes if self.size_bytes else 1.0


def iter_layers(model: tf.keras.Model) -> Iterator[tf.keras.layers.Layer]:
    """The model's layers in order, nested models replaced by their own layers."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from iter_layers(layer)
        else:
            yield layer


def _output_shape(layer: tf.keras.layers.Layer) -> Shape:
    try:
        shape = layer.output_shape
    except (AttributeError, RuntimeError):  # called several times, or never called
        return ()
    if isinstance(shape, list):  # InputLayer reports [shape]; several outputs give several
        return tuple(shape[0]) if len(shape) == 1 else ()
    return tuple(shape)


def _weight_count(weight: tf.Variable) -> int:
    return int(math.prod(weight.shape.as_list()))


def _weight_bits(weight: tf.Variable) -> Optional[int]:
    # larq wraps quantized kernels in a QuantizedVariable that knows its quantizer's precision.
    return getattr(weight, "precision", None)


def _short_name(weight: tf.Variable) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def _sublayer_bconvs(layer: tf.keras.layers.Layer) -> int:
    """Binary convs nested in a composite layer that binarizes its input itself.

    A multi-base layer (ABC-Net style) quantizes each residual and feeds it to its own nested
    QuantConv2D (which has no input quantizer of its own): LCE emits one LceBconv2d per base.
    """
    if quantizer_bits(getattr(layer, "input_quantizer", None)) != 1:
        return 0
    return sum(
        1
        for sub in layer._flatten_layers(include_self=False, recursive=True)
        if isinstance(sub, BINARY_CONV_TYPES)
        and quantizer_bits(getattr(sub, "kernel_quantizer", None)) == 1
        and quantizer_bits(getattr(sub, "input_quantizer", None)) in (None, 1)
    )


def is_scaled_sign(quantizer) -> bool:
    """Whether a kernel quantizer multiplies sign(W) by a per-channel scale (larq's
    `MagnitudeAwareSign`, or a string/config naming it)."""
    if isinstance(quantizer, lq.quantizers.MagnitudeAwareSign):
        return True
    return isinstance(quantizer, str) and quantizer.lower() in (
        "magnitude_aware_sign", "magnitudeawaresign")


def _kernel(layer: tf.keras.layers.Layer) -> Optional[tf.Variable]:
    return getattr(layer, "kernel", None) if hasattr(layer, "kernel_quantizer") else None


def _folds(weights: int, scales: int) -> bool:
    if scales:  # the scale is multiplied onto the sign before folding
        return 32 * (weights + scales) <= FOLD_LIMIT_BITS
    return weights != _UNFOLDED_SIGN_WEIGHTS


def kernel_scale_count(layer: tf.keras.layers.Layer) -> int:
    """How many scale values multiply a layer's binary kernel (part of what LCE must fold).

    Args:
        layer: A Keras layer.

    Returns:
        The filter count for a `MagnitudeAwareSign` kernel or a per-channel BNN+ scale
        (`bnn_keras.layers.ScaledQuantConv2D`), 1 for a per-layer BNN+ scale, 0 otherwise.
    """
    kernel = _kernel(layer)
    if kernel is None:
        return 0
    if is_scaled_sign(getattr(layer, "kernel_quantizer", None)):
        return int(kernel.shape[-1])
    scale = getattr(layer, "scale", None)  # ScaledQuantConv2D's option (a string)
    if scale == "per_channel":
        return int(kernel.shape[-1])
    return 1 if scale == "per_layer" else 0


def lce_kernel_folds(layer: tf.keras.layers.Layer) -> bool:
    """Whether LCE's converter can fold this layer's quantized kernel into a constant.

    A scaled kernel (`MagnitudeAwareSign`, a BNN+ scale) folds while weights + scales <= 2**25
    (`kernel_scale_count`); a plain sign kernel at every size but exactly 2**25 weights (see the
    module docstring). A layer without a quantized kernel folds trivially.

    Args:
        layer: A Keras layer.

    Returns:
        False when the kernel is too large: the layer then runs as a float op and keeps its
        latent float32 kernel (see the module docstring).
    """
    kernel = _kernel(layer)
    if kernel is None or quantizer_bits(getattr(layer, "kernel_quantizer", None)) is None:
        return True
    return _folds(_weight_count(kernel), kernel_scale_count(layer))


def unfolded_kernel_copies(weights: int, kernel_quantizer: Any) -> int:
    """How many float32 copies of a kernel LCE did not fold the flatbuffer stores: two (W and
    |W|) for a `MagnitudeAwareSign` kernel of 2**25 weights or more, else one."""
    return 2 if is_scaled_sign(kernel_quantizer) and 32 * weights >= FOLD_LIMIT_BITS else 1


def lce_fold_parts(kernel_shape: Sequence[int], kernel_quantizer: Any = None, *,
                   scale: Optional[str] = None) -> int:
    """Fewest equal parts, split along the output channels, in which such a kernel folds.

    A layer too large for LCE (see `lce_kernel_folds`) computes the same function as that many
    layers of `filters / parts` filters each, concatenated: each part then becomes an
    LceBconv2d. Per-channel scales (`MagnitudeAwareSign`, a per-channel BNN+ scale) are
    unchanged by the split; a per-layer one would become one scale per part.

    Args:
        kernel_shape: The whole kernel's shape, output channels last.
        kernel_quantizer: Its quantizer (only whether it is a `MagnitudeAwareSign` matters).
        scale: A BNN+ scale of the layer (`ScaledQuantConv2D`): "per_channel", "per_layer" or
            None.

    Returns:
        1 when the kernel folds whole, else the smallest divisor of the filter count that
        makes every part fold.
    """
    filters = int(kernel_shape[-1])
    per_filter = math.prod(int(d) for d in kernel_shape[:-1])
    per_channel = is_scaled_sign(kernel_quantizer) or scale == "per_channel"
    for parts in range(1, filters + 1):
        scales = filters // parts if per_channel else (1 if scale == "per_layer" else 0)
        if filters % parts == 0 and _folds(per_filter * (filters // parts), scales):
            return parts
    raise ValueError(f"A single filter of {per_filter:,} weights is too large for LCE to fold.")


def layer_fold_parts(layer: tf.keras.layers.Layer) -> int:
    """`lce_fold_parts` of a layer's kernel, with its quantizer and BNN+ scale."""
    scale = getattr(layer, "scale", None)
    return lce_fold_parts(layer.kernel.shape.as_list(), getattr(layer, "kernel_quantizer", None),
                          scale=scale if isinstance(scale, str) else None)


def _packed_bytes(shape: Sequence[int]) -> int:
    """LCE bitpacks a binary kernel along its input channels into 32-bit words."""
    *spatial, in_channels, out_channels = (int(d) for d in shape)
    return 4 * math.prod(spatial) * -(-in_channels // 32) * out_channels


def _lce_bytes(layer: tf.keras.layers.Layer, lce_bconvs: int, folds: bool) -> int:
    if not layer.weights:
        return 0
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        # Folded into the conv before it (whose bias or bconv multiplier is counted there), or
        # a MUL and an ADD by per-channel constants.
        parents = inbound_layers(layer)
        if len(parents) == 1 and isinstance(parents[0], tf.keras.layers.Conv2D):
            return 0
        return 2 * 4 * _weight_count(layer.moving_mean)
    total = 0
    for weight in layer.weights:
        count = _weight_count(weight)
        if lce_bconvs and _weight_bits(weight) == 1:
            # Bitpacked, plus the post-activation multiplier and bias of each output channel.
            total += _packed_bytes(weight.shape.as_list()) + 8 * int(weight.shape[-1])
        elif _short_name(weight) in _MAC_WEIGHT_NAMES and not folds:
            total += 4 * count * unfolded_kernel_copies(
                count, getattr(layer, "kernel_quantizer", None))
        else:
            total += 4 * count
    kernel = getattr(layer, "kernel", None)
    if not lce_bconvs and kernel is not None and getattr(layer, "bias", None) is None:
        total += 4 * int(kernel.shape[-1])  # TFLite's CONV_2D / FULLY_CONNECTED carry a bias
    return total


def _lce_note(
    layer: tf.keras.layers.Layer,
    input_bits: Optional[int],
    kernel_bits: Optional[int],
    binary: bool,
) -> str:
    if binary and not lce_kernel_folds(layer):
        copies = "W and |W| as two float32 copies" if unfolded_kernel_copies(
            _weight_count(layer.kernel), layer.kernel_quantizer) == 2 else "a float32 kernel"
        shape = layer.kernel.shape.as_list()
        parts = layer_fold_parts(layer)
        return (f"kernel of {_weight_count(layer.kernel):,} weights is too large for LCE to fold: "
                f"runs as a float conv with {copies}; split it into {parts} convs of "
                f"{shape[-1] // parts:,} filters")
    if binary:
        notes = []
        if getattr(layer, "padding", None) == "same" and getattr(layer, "pad_values", 0.0) == 0.0:
            kernel_size = layer.kernel_size
            if max(kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,)) > 1:
                notes.append("zero padding with 'same': use pad_values=1.0 for a fused op on ARM")
        try:
            channels = layer.input_shape[-1]
        except (AttributeError, RuntimeError):
            channels = None
        if channels and channels % 32:
            notes.append(f"{channels} input channels: multiples of 32 pack without waste")
        return "; ".join(notes)
    if input_bits is None and kernel_bits is None:
        return ""
    if isinstance(layer, lq.layers.QuantDense):
        return "binary Dense is not an LCE op: use reshape -> 1x1 binary QuantConv2D -> reshape"
    if isinstance(layer, (lq.layers.QuantDepthwiseConv2D, lq.layers.QuantSeparableConv2D)):
        return "LCE has no binary depthwise/separable op: runs in float"
    if input_bits is None:
        return "float input (no input quantizer): runs as a float conv"
    if input_bits != 1:
        return (
            f"{input_bits}-bit activation quantizer: multi-bit activations are not accelerated "
            "by LCE"
        )
    if kernel_bits != 1:
        return "kernel is not binary: runs as a float conv"
    return "not a convolution LCE binarizes"


def _layer_stats(layer: tf.keras.layers.Layer) -> LayerStats:
    output_shape = _output_shape(layer)
    pixels = int(math.prod(d for d in output_shape[1:-1] if d)) if len(output_shape) > 2 else 1
    params = binary_params = macs = binary_macs = 0
    input_bits = quantizer_bits(getattr(layer, "input_quantizer", None))
    kernel_bits = quantizer_bits(getattr(layer, "kernel_quantizer", None))
    for weight in layer.weights:
        count = _weight_count(weight)
        params += count
        bits = _weight_bits(weight)
        if bits == 1:
            binary_params += count
        if output_shape and _short_name(weight) in _MAC_WEIGHT_NAMES:
            macs += count * pixels
            if bits == 1 and input_bits == 1:
                binary_macs += count * pixels
    binary = is_binary_conv(layer)
    folds = lce_kernel_folds(layer)
    lce_bconvs = (1 if folds else 0) if binary else _sublayer_bconvs(layer)
    return LayerStats(
        name=layer.name,
        layer_type=type(layer).__name__,
        output_shape=output_shape,
        params=params,
        binary_params=binary_params,
        macs=macs,
        binary_macs=binary_macs,
        input_bits=input_bits,
        kernel_bits=kernel_bits,
        lce_bconvs=lce_bconvs,
        lce_note=_lce_note(layer, input_bits, kernel_bits, binary or lce_bconvs > 0),
        lce_bytes=_lce_bytes(layer, lce_bconvs, folds),
        quantizers=_quantizers_of(layer),
    )


# The argument that tells one instance of a quantizer from another, shown with its name.
_QUANTIZER_ARGUMENTS = (("clip_value", "clip"), ("beta", "beta"), ("k_bit", "bits"))


def quantizer_label(quantizer: Any) -> str:
    """A quantizer as `bnn summary` names it: "SteSign(clip 1.25)", "ApproxSign", "-"."""
    if quantizer is None:
        return "-"
    name = type(quantizer).__name__
    if not hasattr(quantizer, "get_config"):
        return getattr(quantizer, "__name__", name)  # a plain function
    config = quantizer.get_config()
    for key, shown in _QUANTIZER_ARGUMENTS:
        if config.get(key) is not None:
            return f"{name}({shown} {config[key]:g})"
    return name


def _quantizers_of(layer: tf.keras.layers.Layer) -> str:
    if not hasattr(layer, "kernel_quantizer") and not hasattr(layer, "input_quantizer"):
        return ""
    return (f"{quantizer_label(getattr(layer, 'input_quantizer', None))} / "
            f"{quantizer_label(getattr(layer, 'kernel_quantizer', None))}")


def layer_table(model: tf.keras.Model) -> List[LayerStats]:
    """Statistics of every layer of a built model, nested models flattened, in model order.

    Args:
        model: A built `tf.keras.Model`.

    Returns:
        One `LayerStats` per layer (InputLayer included, with zero parameters).

    Raises:
        ValueError: the model is not built.
    """
    if not model.built:
        raise ValueError(
            "Expected a built model, got an unbuilt one: call it on data or build it first."
        )
    return [_layer_stats(layer) for layer in iter_layers(model)]


def model_summary(model: tf.keras.Model) -> ModelStats:
    """Totals of `layer_table(model)`: parameters by precision, size, MACs, LceBconv2d count.

    Args:
        model: A built `tf.keras.Model`.

    Returns:
        A `ModelStats`.
    """
    layers = tuple(layer_table(model))
    total = sum(s.params for s in layers)
    binary = sum(s.binary_params for s in layers)
    return ModelStats(
        name=model.name,
        layers=layers,
        total_params=total,
        binary_params=binary,
        float_params=total - binary,
        size_bytes=math.ceil((binary + 32 * (total - binary)) / 8),
        float32_size_bytes=4 * total,
        total_macs=sum(s.macs for s in layers),
        binary_macs=sum(s.binary_macs for s in layers),
        lce_bconvs=sum(s.lce_bconvs for s in layers),
        lce_size_bytes=_FLATBUFFER_BASE_BYTES + sum(s.lce_bytes for s in layers),
    )


def count_binary_convs(model: tf.keras.Model) -> int:
    """LceBconv2d ops that LCE conversion of `model` is expected to produce."""
    return model_summary(model).lce_bconvs


def _fmt_shape(shape: Shape) -> str:
    if not shape:
        return "multiple"
    return "(" + ", ".join("-1" if d is None else str(d) for d in shape) + ")"


def _fmt_bits(bits: Optional[int]) -> str:
    return "-" if bits is None else str(bits)


def _fmt_bconvs(n: int) -> str:
    return "" if n == 0 else "bconv" if n == 1 else f"bconv x{n}"


def format_bytes(n: int) -> str:
    """`n` bytes in MiB (from 1 MiB) or KiB, two decimals."""
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.2f} KiB"


# The error bar of the predicted flatbuffer size (`predicted_size_range`), from registry builds
# converted with LCE (`bnn summary --convert`): the weights' buffers came out at 71-99% of what
# `lce_size_bytes` counts for them (LCE drops or shares some constants: 71% for ReActNet-A 8-16,
# 97% for BinaryDenseNet28 at 16 px, 99% for BinaryNet), and the graph (tensor and op tables,
# names, the format's own tables) added 183-300 bytes per Keras layer (183 QuickNet 16-128,
# 195 QuickNet 8-16, 238 ResNetE18 8-16, 245 ReActNet-A 8-16, 255 Bi-Real Net 16-128, 285
# BinaryDenseNet28, 300 BinaryNet). Every measured file lies in the range these give.
WEIGHTS_FACTOR_LOW = 0.9
GRAPH_BYTES_PER_LAYER = (180, 300)


def predicted_size_range(stats: "ModelStats") -> Tuple[int, int]:
    """The LCE flatbuffer's likely size range: at least `WEIGHTS_FACTOR_LOW` of the weights
    plus the low graph share per layer, at most all the weights plus the high one
    (`GRAPH_BYTES_PER_LAYER`); the weights dominate large models, the graph small ones."""
    weights = stats.lce_size_bytes - _FLATBUFFER_BASE_BYTES
    layers = len(stats.layers)
    return (round(WEIGHTS_FACTOR_LOW * weights) + GRAPH_BYTES_PER_LAYER[0] * layers,
            weights + GRAPH_BYTES_PER_LAYER[1] * layers)


def predicted_size_line(stats: "ModelStats") -> str:
    """The predicted flatbuffer size with its error bar, for people."""
    low, high = predicted_size_range(stats)
    weights = stats.lce_size_bytes - _FLATBUFFER_BASE_BYTES
    return (f"Predicted LCE flatbuffer: {format_bytes(low)} to {format_bytes(high)} (weights "
            f"{format_bytes(weights)} as LCE stores them, {WEIGHTS_FACTOR_LOW:.0%}-100% of "
            f"that measured, plus the graph's {GRAPH_BYTES_PER_LAYER[0]}-"
            f"{GRAPH_BYTES_PER_LAYER[1]} bytes per layer for {len(stats.layers)} layers; "
            "`bnn summary --convert` measures it)")


def format_table(stats: Union[ModelStats, Sequence[LayerStats]], *, notes: bool = True) -> str:
    """Renders statistics as a plain-text table (layers, a total row, then the model summary).

    Args:
        stats: A `ModelStats` (layers + summary) or a list of `LayerStats` (layers + total row).
        notes: Whether to add the `LCE note` column.

    Returns:
        The table as one string, no trailing newline.
    """
    layers = stats.layers if isinstance(stats, ModelStats) else tuple(stats)
    header = ["Layer", "Type", "In bits", "W bits", "Quantizers (in / W)", "Output shape",
              "Params", "1-bit params", "MACs", "Binary MACs", "LCE"]
    if notes:
        header.append("LCE note")
    rows = []
    for s in layers:
        row = [s.name, s.layer_type, _fmt_bits(s.input_bits), _fmt_bits(s.kernel_bits),
               s.quantizers, _fmt_shape(s.output_shape), f"{s.params:,}", f"{s.binary_params:,}",
               f"{s.macs:,}", f"{s.binary_macs:,}", _fmt_bconvs(s.lce_bconvs)]
        if notes:
            row.append(s.lce_note)
        rows.append(row)
    total = ["Total", "", "", "", "", "", f"{sum(s.params for s in layers):,}",
             f"{sum(s.binary_params for s in layers):,}", f"{sum(s.macs for s in layers):,}",
             f"{sum(s.binary_macs for s in layers):,}", str(sum(s.lce_bconvs for s in layers))]
    if notes:
        total.append("")
    widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned (as larq's summary).
    left = {0, 1, 4, 5, 10, 11}

    def line(row: Sequence[str]) -> str:
        cells = [
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    out = [line(header), rule, *(line(r) for r in rows), rule, line(total)]
    if isinstance(stats, ModelStats):
        out += [
            "",
            f"Model: {stats.name}",
            f"Total params: {stats.total_params:,} ({stats.binary_params:,} binary, "
            f"{stats.float_params:,} float)",
            f"Size: {format_bytes(stats.size_bytes)} "
            f"(float32: {format_bytes(stats.float32_size_bytes)}, "
            f"{stats.compression_ratio:.2f}x smaller)",
            f"MACs: {stats.total_macs:,} ({stats.binary_mac_fraction:.1%} binary)",
            f"Expected LceBconv2d ops: {stats.lce_bconvs}",
            predicted_size_line(stats),
        ]
    return "\n".join(out)
