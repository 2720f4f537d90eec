"""Finding what stops Larq Compute Engine from producing fast binary ops, before conversion.

`inspect_model` reads a Keras model's layers and graph (no conversion, no TensorFlow tracing) and
reports each pattern from LCE's model-optimization guide that it can detect, naming the layer and
the fix. Severities:

- "error": a layer meant to be binary will not run as an LCE binary op (binary Dense, multi-bit
  activations, a reshape/transpose between a standalone quantizer and its conv, a kernel too
  large for LCE's converter to fold), or will not convert for the chosen target (zero padding
  on xcore).
- "warning": the layer becomes an LCE binary op but slower than it could be (zero padding on
  ARM, input channels not a multiple of 32, output channels not a multiple of 8, an RSign
  threshold that no conv or BatchNorm before it absorbs, left as a float SUB).
- "info": worth knowing, nothing is lost (a float32 copy of a mixed-precision model is converted;
  a conv with binary weights but float input runs as a float conv).

A "clean" model has no error findings. Registry models are expected to be clean; channel-multiple
warnings are allowed because the first binary layers of small models often have fewer channels.

References:
    - [LCE model optimization guide](https://docs.larq.dev/compute-engine/model_optimization_guide/)
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import larq as lq
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.graph import inbound_layers
from bnn_keras.layers import RSign
from bnn_keras.model_stats import (
    FOLD_LIMIT_BITS,
    is_scaled_sign,
    iter_layers,
    kernel_scale_count,
    layer_fold_parts,
    lce_kernel_folds,
    unfolded_kernel_copies,
)
from convert.converter import TARGETS, is_mixed_precision

SEVERITIES: Tuple[str, ...] = ("error", "warning", "info")

_CONV_TYPES = (lq.layers.QuantConv2D,)
# Layers that only move values around: between a sign and a conv they hide the pattern LCE fuses.
_SHAPE_LAYERS = (
    tf.keras.layers.Reshape,
    tf.keras.layers.Permute,
    tf.keras.layers.Flatten,
    tf.keras.layers.ZeroPadding2D,
    tf.keras.layers.Cropping2D,
    tf.keras.layers.UpSampling2D,
)
# Layers that are the identity at inference time: seen through when walking the graph.
_IDENTITY_LAYERS = (
    tf.keras.layers.Dropout,
    tf.keras.layers.SpatialDropout2D,
    tf.keras.layers.GaussianNoise,
    tf.keras.layers.ActivityRegularization,
)
# How far back from a conv to look for a standalone quantizer (a few reshapes, not a whole net).
_MAX_WALK = 4


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found in a model.

    Attributes:
        layer: Name of the layer concerned (the model's name for model-wide findings).
        code: Stable problem code, e.g. "binary-dense", "zero-padding".
        severity: "error", "warning" or "info".
        message: What is wrong.
        fix: What to change.
    """

    layer: str
    code: str
    severity: str
    message: str
    fix: str


def _bits(quantizer) -> Optional[int]:
    """A larq quantizer's precision in bits (None for no quantizer or an unknown one)."""
    if quantizer is None:
        return None
    precision = getattr(quantizer, "precision", None)
    if precision is None:
        # DoReFa exposes k_bit; a plain callable like `tf.sign` carries no precision at all.
        precision = getattr(quantizer, "k_bit", None)
    if precision is None or int(precision) >= 16:
        # NoOpQuantizer(precision=32) and friends mean "float": not a quantizer for LCE.
        return None
    return int(precision)


def _layer_quantizer(layer: tf.keras.layers.Layer):
    """The quantizer a standalone layer applies, or None if the layer is not a quantizer."""
    if isinstance(layer, lq.quantizers.Quantizer):
        return layer
    if isinstance(layer, tf.keras.layers.Activation) and _bits(layer.activation) is not None:
        return layer.activation
    return None


def _kernel_size(layer) -> int:
    size = layer.kernel_size
    return max(size) if isinstance(size, (tuple, list)) else int(size)


def _separated_quantizer(layer) -> Optional[Tuple[str, List[str]]]:
    """(quantizer layer, layers in between) when a standalone sign reaches `layer` via reshapes."""
    between: List[str] = []
    current = layer
    for _ in range(_MAX_WALK):
        parents = inbound_layers(current, every_call=True)
        if len(parents) != 1:
            return None
        parent = parents[0]
        quantizer = _layer_quantizer(parent)
        if quantizer is not None:
            return (parent.name, between) if between and _bits(quantizer) == 1 else None
        if isinstance(parent, _SHAPE_LAYERS):
            between.insert(0, parent.name)
        elif not isinstance(parent, _IDENTITY_LAYERS):
            return None
        current = parent
    return None


def _check_conv(layer, target: str) -> List[Finding]:
    findings: List[Finding] = []
    input_bits = _bits(getattr(layer, "input_quantizer", None))
    kernel_bits = _bits(getattr(layer, "kernel_quantizer", None))
    name = layer.name
    if input_bits is not None and input_bits > 1:
        findings.append(Finding(
            name, "multibit-activation", "error",
            f"{input_bits}-bit input quantizer: LCE accelerates 1-bit activations only, so this "
            "conv runs in float.",
            "use a 1-bit input quantizer (e.g. 'ste_sign'), or convert with --int8, which runs "
            "it as an int8 conv with int8 weights",
        ))
    if kernel_bits is not None and kernel_bits > 1:
        findings.append(Finding(
            name, "multibit-kernel", "error",
            f"{kernel_bits}-bit kernel quantizer: LCE has no multi-bit weight kernels, so this conv "
            "runs in float.",
            "use a 1-bit kernel quantizer (e.g. 'ste_sign')",
        ))
    if kernel_bits == 1 and input_bits is None:
        separated = _separated_quantizer(layer)
        if separated is not None:
            quantizer_name, between = separated
            findings.append(Finding(
                name, "quantizer-separated", "error",
                f"the sign is computed in '{quantizer_name}' and passes through "
                f"{', '.join(repr(b) for b in between)} before this conv: LCE cannot match the "
                "sign -> conv pattern, so the conv runs in float.",
                "reshape/transpose before the quantizer, or give the conv "
                "input_quantizer='ste_sign' instead of a separate quantizer layer",
            ))
        elif not any(_layer_quantizer(p) is not None for p in inbound_layers(layer, every_call=True)):
            findings.append(Finding(
                name, "float-input", "info",
                "binary weights but a float input (no input quantizer): runs as a float conv. "
                "Expected for a first layer.",
                "add input_quantizer='ste_sign' if this layer is meant to be binary",
            ))
    if not (input_bits == 1 and kernel_bits == 1):
        return findings

    kernel_shape = layer.kernel.shape if getattr(layer, "kernel", None) is not None else None
    pad_values = float(getattr(layer, "pad_values", 0.0))
    if layer.padding == "same" and pad_values != 1.0 and _kernel_size(layer) > 1:
        xcore = TARGETS.get(target, target) == "xcore"
        findings.append(Finding(
            name, "zero-padding", "error" if xcore else "warning",
            f"'same' padding with pad_values={pad_values:g}: "
            + ("the xcore target has no zero-padded binary conv." if xcore else
               "LCE adds a zero-padding correction pass and cannot fuse the output binarization."),
            "set pad_values=1.0 on this layer (and retrain or fine-tune)",
        ))
        findings += _check_zero_padding_small_map(layer, pad_values)
    if kernel_shape is not None:
        in_channels, out_channels = int(kernel_shape[-2]), int(kernel_shape[-1])
        if in_channels % 32:
            findings.append(Finding(
                name, "input-channels", "warning",
                f"{in_channels} input channels: LCE packs channels in groups of 32, so this conv "
                f"costs as much as one with {32 * -(-in_channels // 32)}.",
                "use a multiple of 32 input channels",
            ))
        if out_channels % 8:
            findings.append(Finding(
                name, "output-channels", "warning",
                f"{out_channels} output channels: LCE computes 8 at a time, so "
                f"{8 - out_channels % 8} are computed and thrown away.",
                "use a multiple of 8 filters",
            ))
    return findings


def _check_zero_padding_small_map(layer, pad_values: float) -> List[Finding]:
    """A zero-padded binary conv whose input is smaller than its kernel.

    LCE 0.16 computes such a conv wrongly (measured with its interpreter on single 'same'
    layers: 3x3 kernels on 1x1 and 2x2 maps, 5x5 on up to 4x4, 7x7 on up to 6x6, off by 34-204
    where the outputs are sums of +-1; exact from the kernel's size up, and with
    pad_values=1.0 at every size). Typical of ImageNet models run at small inputs, whose last
    stage then sees a 1x1 or 2x2 map.
    """
    try:
        height, width = (layer.input_shape[1], layer.input_shape[2])
    except (AttributeError, RuntimeError, IndexError, TypeError):
        return []  # a layer called more than once, or no 4-D input
    kernel_h, kernel_w = layer.kernel_size
    if height is None or width is None or (height >= kernel_h and width >= kernel_w):
        return []
    return [Finding(
        layer.name, "zero-padding-small-map", "error",
        f"'same' padding with pad_values={pad_values:g} on a {height}x{width} input, smaller than "
        f"the {kernel_h}x{kernel_w} kernel: LCE 0.16 computes such a binary conv wrongly "
        "(the converted model's outputs differ from Keras').",
        "use a larger input (each side at least the kernel's at this layer), or "
        "pad_values=1.0 (and retrain or fine-tune)",
    )]


def _check_kernel_size(layer) -> List[Finding]:
    """A quantized kernel too large for LCE's converter to fold into a constant.

    LCE binarizes only a constant binary filter, and its converter leaves some kernels unfolded
    (`bnn_keras.model_stats.lce_kernel_folds` has the measured rule): such a kernel stays a
    float32 tensor (twice with MagnitudeAwareSign: the latent W and |W|) and the layer runs in
    float.
    """
    if _bits(getattr(layer, "kernel_quantizer", None)) != 1 or lce_kernel_folds(layer):
        return []
    shape = [int(d) for d in layer.kernel.shape]
    count = math.prod(shape)
    scales = kernel_scale_count(layer)
    scaled = is_scaled_sign(layer.kernel_quantizer)
    parts = layer_fold_parts(layer)
    stored = ("as two float32 copies (W and |W|)"
              if unfolded_kernel_copies(count, layer.kernel_quantizer) == 2 else "as float32")
    per_layer = getattr(layer, "scale", None) == "per_layer"
    return [Finding(
        layer.name, "kernel-too-large", "error",
        f"kernel of {count:,} weights{' with MagnitudeAwareSign' if scaled else ''} is too large "
        f"for LCE's converter to fold ("
        + (f"limit {FOLD_LIMIT_BITS // 32:,} weights + scales" if scales
           else "LCE 0.16 leaves a sign kernel of exactly 2**25 weights unfolded")
        + f"): it is stored {stored} and the layer runs in float.",
        f"split it along its output channels into {parts} layers of {shape[-1] // parts} filters "
        "and Concatenate them (same parameters; "
        + ("each part then has its own per-layer scale)" if per_layer
           else "same function: per-channel scales are unchanged)"),
    )]


def _check_magnitude_aware(layer) -> List[Finding]:
    """MagnitudeAwareSign on a layer that LCE will not binarize anyway: a float layer."""
    if not is_scaled_sign(getattr(layer, "kernel_quantizer", None)):
        return []
    input_bits = _bits(getattr(layer, "input_quantizer", None))
    if (isinstance(layer, _CONV_TYPES) and input_bits == 1) or not lce_kernel_folds(layer):
        return []  # binarized, or reported as kernel-too-large
    return [Finding(
        layer.name, "magnitude-aware-float", "info",
        "MagnitudeAwareSign kernel on a layer LCE runs in float: it is stored as float32 "
        "sign(W) * mean|W|, 32 bits per weight.",
        "give it a 1-bit input quantizer (and make it a QuantConv2D) to binarize it, or expect "
        "a float layer",
    )]


def _check_dense(layer) -> List[Finding]:
    input_bits = _bits(getattr(layer, "input_quantizer", None))
    kernel_bits = _bits(getattr(layer, "kernel_quantizer", None))
    if 1 not in (input_bits, kernel_bits):
        return []
    return [Finding(
        layer.name, "binary-dense", "error",
        "binary QuantDense: LCE has no binary fully-connected op, so it runs as a float "
        "FULLY_CONNECTED with float weights.",
        "replace it with Reshape((1, 1, n)) -> 1x1 binary QuantConv2D -> Reshape((units,))",
    )]


def _check_standalone_quantizer(layer) -> List[Finding]:
    bits = _bits(_layer_quantizer(layer))
    if bits is None or bits <= 1:
        return []
    return [Finding(
        layer.name, "multibit-activation", "error",
        f"{bits}-bit quantizer layer: multi-bit activations are not accelerated by LCE.",
        "use a 1-bit quantizer (e.g. 'ste_sign')",
    )]


# Layers whose output TFLite merges a following per-channel constant subtraction into (measured
# with LCE 0.16, with and without a bias: a float conv or depthwise conv, whose bias takes it,
# and a binary conv, whose output thresholds take it; QuantConv2D is a Conv2D). A BatchNorm
# takes it only when it folds into such a conv itself: a BatchNorm after anything else becomes
# MUL and ADD, and TFLite does not merge a constant SUB into that ADD (nor into RPReLU's).
_ABSORBING_TYPES = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)


def _absorbs_threshold(layer, consumer_counts: Dict[str, int]) -> bool:
    if isinstance(layer, _ABSORBING_TYPES):
        return True
    if not isinstance(layer, tf.keras.layers.BatchNormalization):
        return False
    parents = inbound_layers(layer, every_call=True)
    return (len(parents) == 1 and isinstance(parents[0], _ABSORBING_TYPES)
            and consumer_counts.get(parents[0].name, 0) == 1)


def _consumer_counts(model: tf.keras.Model) -> Dict[str, int]:
    """Layer name -> how many calls of the model's layers read its output."""
    counts: Dict[str, int] = {}
    for layer in model.layers:
        for parent in inbound_layers(layer, every_call=True):
            counts[parent.name] = counts.get(parent.name, 0) + 1
    return counts


def _check_rsign(layer, consumer_counts: Dict[str, int]) -> List[Finding]:
    """An RSign threshold that nothing before it can absorb: a float SUB stays in the graph.

    LCE's `LceQuantize` has no threshold, so `sign(x - alpha)` converts to `SUB` then
    `LceQuantize` unless TFLite merges the subtraction into the op producing x: a conv, or a
    BatchNorm right after a conv, whose output feeds only this conv. After anything else (the
    model input, a pooling, a PReLU or RPReLU, an Add, a Concatenate, a BatchNorm that does
    not follow a conv) the SUB stays (measured).
    When the unshifted x feeds other layers too (a shortcut, as in ReActNet), one SUB is needed
    whatever the producer, so nothing is reported.
    """
    if not isinstance(getattr(layer, "input_quantizer", None), RSign):
        return []
    parents = inbound_layers(layer, every_call=True)
    while len(parents) == 1 and isinstance(parents[0], _IDENTITY_LAYERS):
        parents = inbound_layers(parents[0], every_call=True)
    if len(parents) != 1:
        return []
    parent = parents[0]
    if consumer_counts.get(parent.name, 0) > 1:
        return []
    if _absorbs_threshold(parent, consumer_counts):
        return []
    source = ("the model input" if isinstance(parent, tf.keras.layers.InputLayer)
              else f"'{parent.name}' ({type(parent).__name__})")
    return [Finding(
        layer.name, "rsign-unfolded", "warning",
        f"the RSign threshold follows {source}, which cannot absorb it (only a conv, or a "
        "BatchNorm right after a conv, can): "
        "LCE's quantize has no threshold, so the converted graph keeps a float SUB over the "
        "whole input before the LceQuantize.",
        "compute this conv's input with a conv (and BatchNormalization) right before it, or "
        "use input_quantizer='ste_sign' here",
    )]


def inspect_model(model: tf.keras.Model, *, target: str = "arm64") -> List[Finding]:
    """Checks a Keras model for patterns that keep LCE from emitting fast binary ops.

    Args:
        model: A (functional or sequential) Keras model built from larq layers.
        target: Conversion target, as for `convert_model` ("arm64", "arm" or "xcore"); zero
            padding is an error on xcore and a warning on ARM.

    Returns:
        Findings in layer order, most severe first within a layer.

    Raises:
        BnnError: unknown target.
    """
    if target not in TARGETS:
        raise BnnError(f"Expected target one of {', '.join(TARGETS)}, got {target!r}.")
    findings: List[Finding] = []
    if is_mixed_precision(model):
        findings.append(Finding(
            model.name, "mixed-precision", "info",
            "some layers compute in bfloat16/float16: the converter converts a float32 copy with "
            "the same weights.",
            "nothing to do; outputs may differ slightly from the mixed-precision Keras model",
        ))
    consumer_counts = _consumer_counts(model)
    for layer in iter_layers(model):
        if isinstance(layer, lq.layers.QuantDense):
            layer_findings = _check_dense(layer)
        elif isinstance(layer, _CONV_TYPES):
            layer_findings = _check_conv(layer, target)
        else:
            layer_findings = _check_standalone_quantizer(layer)
        if isinstance(layer, (lq.layers.QuantDense, *_CONV_TYPES)):
            layer_findings += _check_kernel_size(layer) + _check_magnitude_aware(layer)
            layer_findings += _check_rsign(layer, consumer_counts)
        findings.extend(sorted(layer_findings, key=lambda f: SEVERITIES.index(f.severity)))
    return findings


def errors(findings: Sequence[Finding]) -> List[Finding]:
    """The findings with severity "error"."""
    return [finding for finding in findings if finding.severity == "error"]


def format_findings(findings: Sequence[Finding]) -> str:
    """A readable report, one finding per two lines, with a summary line at the end."""
    if not findings:
        return "No problems found: every binary layer can become a fast LCE op."
    lines = []
    for finding in findings:
        severity = finding.severity.upper()
        lines.append(f"{severity:7} {finding.layer}: [{finding.code}] {finding.message}")
        lines.append(f"        fix: {finding.fix}")
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    lines.append(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items()))
    return "\n".join(lines)
