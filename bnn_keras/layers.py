"""Binary layers and the BNN papers' training tricks, as Keras layers.

- `QuantConv2D`: larq's, trained without copying its input for its "same" padding of +1
  and with fused straight-through gradients.
- `ScaledQuantConv2D`: binary conv with a trainable BNN+ scale alpha and its regularizer.
- `MultiBaseQuantConv2D`: residual binarization of the input into K binary bases (ABC-Net).
- `LearnableScale`: a learnable scalar or per-unit scale (e.g. before the softmax).
- `activation("relu" | "prelu")`: lets a model family switch ReLU to PReLU.
- `RSign`: sign with a learnable per-channel threshold, as a conv's input quantizer (ReActNet).
- `RPReLU`: PReLU between two learnable per-channel shifts (ReActNet).

All layers stay convertible with Larq Compute Engine: a per-channel `+/-alpha` kernel is folded
into the `LceBconv2d` post-multiplier, and K binary bases become K `LceBconv2d` plus `ADD`s.
"""

import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import larq as lq
import numpy as np
import tensorflow as tf

from bnn_keras import quantizers as bnn_quantizers
from bnn_keras import regularizers as bnn_regularizers

__all__ = ["LearnableScale", "LearnedRescale", "MultiBaseQuantConv2D", "QuantConv2D", "RPReLU",
           "RSign", "ScaledQuantConv2D", "activation"]

_PACKAGE = "bnn_keras"
_SCALES = ("per_channel", "per_layer", None)


def _quantizer(identifier: Any) -> Any:
    """Our aliases resolve to our quantizers; anything else is left to larq (its aliases too)."""
    if isinstance(identifier, str) and identifier in bnn_quantizers._ALIASES:
        return bnn_quantizers.get(identifier)
    return identifier


def _latent(variable: tf.Variable) -> tf.Variable:
    """The full-precision variable behind a larq `QuantizedVariable` (or the variable itself)."""
    return getattr(variable, "latent_variable", variable)


def _is_plain_ste_sign(quantizer: Any, dtype: str = "float32") -> bool:
    """A `SteSign` (larq's or ours) without metrics whose sign and gradient on `dtype` inputs
    `bnn_keras.quantizers.ste_sign` computes alone.

    In bfloat16, larq compares `|x|` with `clip_value` rounded to bfloat16, ours with
    `clip_value` itself: the same window where the rounding does not go up (1.0, 1.25, 1.3)."""
    if (type(quantizer) not in (lq.quantizers.SteSign, bnn_quantizers.SteSign)
            or getattr(quantizer, "_custom_metrics", None) or hasattr(quantizer, "flip_ratio")):
        return False
    clip_value = quantizer.clip_value
    if dtype == "float32" or clip_value is None or type(quantizer) is bnn_quantizers.SteSign:
        return True
    return (dtype == "bfloat16" and 0.0 < clip_value < float("inf")
            and float(np.array(clip_value, tf.bfloat16.as_numpy_dtype))
            == bnn_quantizers._bfloat16_floor(clip_value))


@contextlib.contextmanager
def _swapped_untracked(layer: tf.keras.layers.Layer, name: str, value: Any) -> Iterator[None]:
    """Sets `layer.name` to `value` within the block, past Keras's attribute tracking
    (`object.__setattr__`): the layer's tracked sublayers, and so its weights and checkpoints,
    stay as they are."""
    previous = getattr(layer, name)
    object.__setattr__(layer, name, value)
    try:
        yield
    finally:
        object.__setattr__(layer, name, previous)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class QuantConv2D(lq.layers.QuantConv2D):
    """larq's `QuantConv2D`, whose float32 training step costs no padding copy and fewer passes
    over its tensors.

    In float32 training (`training=True`) this layer computes larq's outputs and gradients with
    less work:

    - **Padding by a sum.** LCE wants a binary conv's "same" padding to pad with +1
      (`pad_values=1.0`: zeros cannot be binarized, and padding with them blocks its fusions on
      ARM). larq pads the input with `tf.pad` and convolves "valid": a copy of the input
      forward, and backward a "valid" input-gradient conv over the padded size and a slice of
      it. Here the conv of the padded input is the zero-padded ("same") conv of the input plus
      the conv of the padding alone, i.e. of a one-image, one-channel map that is `pad_values`
      on the border and 0 inside, with the kernel summed over its input channels (the padding
      is the same in every channel). That map costs one image of one channel whatever the
      batch. The padding is a constant, so the input's gradient is the same, and the kernel
      gets the sum of both terms' gradients.
    - **Fused straight-through gradients.** A plain `SteSign` input or kernel quantizer
      (larq's or ours, without metrics) is computed by `bnn_keras.quantizers.ste_sign`: the
      same sign, and the same gradient in one fused op instead of four elementwise passes.
      The kernel is quantized once for both convs of the padding by a sum.

    Outside training (Keras' evaluation and prediction, and the graph LCE's converter traces)
    the layer is larq's, whose padding the converter fuses into `LceBconv2d`. Under
    `mixed_bfloat16` only the input quantizer's gradient changes (a mask product instead of a
    select, see `bnn_keras.quantizers`; for larq's `SteSign` where its bfloat16 window is the
    same): the broadcast add and the batch sum of the padding's gradient, bfloat16 elementwise
    work on a CPU, cost more than the copy they save (BinaryDenseNet28's step on the bf16
    machine: 0.94x larq's, against 1.09x in float32), and the fused op is float32 only.
    Grouped convs, channels-first data and inputs without a static height and width pad as
    larq's in training too.

    Args:
        *args, **kwargs: Everything `larq.layers.QuantConv2D` accepts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._padding_by_sum = False
        self._fused_kernel_sign = False

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        if training is not True or self.compute_dtype not in ("float32", "bfloat16"):
            return super().call(inputs)
        with contextlib.ExitStack() as stack:
            if _is_plain_ste_sign(self.input_quantizer, self.compute_dtype):
                clip_value = self.input_quantizer.clip_value
                stack.enter_context(_swapped_untracked(
                    self, "input_quantizer",
                    lambda x: bnn_quantizers.ste_sign(x, clip_value=clip_value)))
            if self.compute_dtype != "float32":
                return super().call(inputs)
            stack.enter_context(lq.utils.patch_object(self, "_fused_kernel_sign", True))
            if not (self._is_native_padding or self.groups != 1
                    or self.data_format != "channels_last"
                    or not inputs.shape[1:3].is_fully_defined()):
                # larq's call without its tf.pad: Conv2D's "same" zero padding, then the
                # padding's own conv added in `convolution_op`.
                stack.enter_context(lq.utils.patch_object(self, "_is_native_padding", True))
                stack.enter_context(lq.utils.patch_object(self, "_padding_by_sum", True))
            return super().call(inputs)

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        quantizer = getattr(kernel, "quantizer", None)  # of a larq QuantizedVariable
        if self._fused_kernel_sign and _is_plain_ste_sign(quantizer):
            kernel = bnn_quantizers.ste_sign(tf.convert_to_tensor(_latent(kernel)),
                                             clip_value=quantizer.clip_value)
        elif self._padding_by_sum:
            kernel = tf.convert_to_tensor(kernel)  # quantized once, for both convs
        outputs = super().convolution_op(inputs, kernel)
        if self._padding_by_sum:
            outputs = outputs + self._padding_outputs(inputs, kernel)
        return outputs

    def _padding_outputs(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """The conv of the padding alone, (1, out height, out width, filters) (float32: `call`
        pads by the sum in float32 only)."""
        border = tf.pad(tf.zeros((1, *inputs.shape[1:3], 1), tf.float32),
                        self._get_padding_same(inputs), constant_values=self.pad_values)
        return tf.nn.convolution(border, tf.reduce_sum(kernel, axis=2, keepdims=True),
                                 strides=list(self.strides), padding="VALID",
                                 dilations=list(self.dilation_rate))


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ScaledQuantConv2D(QuantConv2D):
    """Binary 2D convolution with a trainable BNN+ scale: kernel = `alpha * q(w)`.

    alpha is a trainable weight created in `build` right after the kernel and initialised from
    the kernel's actual initial values: `mean|w|` per output channel (`scale="per_channel"`)
    or over the whole kernel (`"per_layer"`). With `scale_regularizer` the BNN+ term
    `lambda * sum |alpha - |w||` (`"bnn+-l1"`) or `lambda * sum (alpha - |w|)^2` (`"bnn+-l2"`)
    is added to `layer.losses` (so to `model.losses`), recomputed from the current weights at
    every step.

    Args:
        filters: Number of output channels.
        kernel_size: Kernel height and width.
        scale: `"per_channel"`, `"per_layer"` or `None` (plain binary conv).
        scale_regularizer: `None`, `"bnn+-l1"`, `"bnn+-l2"` or a
            `bnn_keras.regularizers.BnnPlusRegularizer` (whose own factor then applies).
        regularization_factor: lambda for an alias `scale_regularizer`.
        kernel_quantizer: The weight binarizer (default `"ste_sign"`, ours).
        **kwargs: Everything `larq.layers.QuantConv2D` accepts (`input_quantizer`,
            `padding`, `pad_values`, `kernel_constraint`, ...).

    Raises:
        ValueError: an unknown `scale`, or a `scale_regularizer` without a scale.

    References:
        - BNN+: https://arxiv.org/abs/1812.11800
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Union[int, Sequence[int]],
        *,
        scale: Optional[str] = "per_channel",
        scale_regularizer: Any = None,
        regularization_factor: float = 1e-5,
        kernel_quantizer: Any = "ste_sign",
        **kwargs: Any,
    ) -> None:
        if scale not in _SCALES:
            raise ValueError(f"Expected scale in {_SCALES}, got {scale!r}.")
        regularizer = bnn_regularizers.get(scale_regularizer, factor=regularization_factor)
        if regularizer is not None and not isinstance(regularizer, bnn_regularizers.BnnPlusRegularizer):
            raise ValueError(
                "Expected scale_regularizer None, 'bnn+-l1', 'bnn+-l2' or a BnnPlusRegularizer, "
                f"got {scale_regularizer!r}."
            )
        if regularizer is not None and scale is None:
            raise ValueError("Expected a scale ('per_channel' or 'per_layer') with a "
                             f"scale_regularizer, got scale=None and {scale_regularizer!r}.")
        self.scale = scale
        self.scale_regularizer = regularizer
        self.regularization_factor = (
            regularizer.factor if regularizer is not None else float(regularization_factor)
        )
        self.scale_weight: Optional[tf.Variable] = None
        super().__init__(filters, kernel_size, kernel_quantizer=_quantizer(kernel_quantizer), **kwargs)

    def build(self, input_shape: tf.TensorShape) -> None:
        super().build(input_shape)
        if self.scale is None:
            return
        latent = _latent(self.kernel)
        axes = [0, 1, 2] if self.scale == "per_channel" else None

        def from_kernel(shape, dtype=None):
            # Evaluated when the variable is created, i.e. from the kernel's initial values.
            value = tf.reduce_mean(tf.math.abs(tf.convert_to_tensor(latent)), axis=axes)
            return tf.cast(tf.reshape(value, shape), dtype or tf.float32)

        self.scale_weight = self.add_weight(
            name="scale",
            shape=(self.filters,) if self.scale == "per_channel" else (),
            initializer=from_kernel,
            trainable=True,
        )
        if self.scale_regularizer is not None:
            self.add_loss(self._scale_loss)

    def _scale_loss(self) -> tf.Tensor:
        return self.scale_regularizer(
            tf.convert_to_tensor(self.scale_weight), tf.convert_to_tensor(_latent(self.kernel))
        )

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if self.scale_weight is not None:
            # Scaling the kernel (not the output) keeps the graph LCE expects: a constant
            # +/-alpha filter that it folds into the binary conv's post-multiplier.
            kernel = tf.convert_to_tensor(kernel)
            kernel = kernel * tf.cast(self.scale_weight, kernel.dtype)
        return super().convolution_op(inputs, kernel)

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "scale": self.scale,
            "scale_regularizer": (
                None
                if self.scale_regularizer is None
                else tf.keras.utils.serialize_keras_object(self.scale_regularizer)
            ),
            "regularization_factor": self.regularization_factor,
        }


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class MultiBaseQuantConv2D(tf.keras.layers.Layer):
    """Residual binarization of the input into K binary bases, one binary conv per base.

    `a_1 = q(x)`, `r_1 = x - beta_1 a_1`, `a_2 = q(r_1)`, `r_2 = r_1 - beta_2 a_2`, ...;
    output `= sum_k conv_k(a_k)`, each `conv_k` a `larq.layers.QuantConv2D` with its own binary
    kernel. Only the first base carries the bias. The K-1 shifts `beta_k` are trainable scalars
    initialised to `beta_initial * 2**-(k-1)` (1, 0.5, 0.25, ... by default: a greedy binary
    expansion of inputs in about [-2, 2], e.g. batch-normalised activations). `bases=1` is a
    plain binary convolution. LCE converts the layer to K `LceBconv2d` plus K-1 `ADD`.

    Args:
        filters: Number of output channels.
        kernel_size: Kernel height and width.
        bases: Number of binary bases K (>= 1).
        strides: Convolution strides.
        padding: `"valid"` or `"same"`.
        pad_values: Padding value for `"same"` (1.0 is what LCE runs fastest).
        dilation_rate: Convolution dilation.
        use_bias: Add a bias (once, on the first base's convolution).
        input_quantizer: The activation binarizer applied to each residual (default
            `"ste_sign"`, ours); required.
        kernel_quantizer: The weight binarizer of every base's kernel.
        kernel_initializer: Initializer of every base's kernel.
        kernel_regularizer: Regularizer of every base's kernel (e.g. `Bipolar`).
        kernel_constraint: Constraint of every base's kernel (e.g. `"weight_clip"`).
        beta_initial: Initial value of beta_1 (see above).
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Raises:
        ValueError: `bases < 1` or no `input_quantizer`.

    References:
        - ABC-Net: https://arxiv.org/abs/1711.11294
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Union[int, Sequence[int]],
        bases: int = 2,
        *,
        strides: Union[int, Sequence[int]] = 1,
        padding: str = "valid",
        pad_values: float = 0.0,
        dilation_rate: Union[int, Sequence[int]] = 1,
        use_bias: bool = True,
        input_quantizer: Any = "ste_sign",
        kernel_quantizer: Any = "ste_sign",
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        kernel_constraint: Any = None,
        beta_initial: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(bases) < 1:
            raise ValueError(f"Expected bases >= 1, got {bases!r}.")
        if input_quantizer is None:
            raise ValueError("Expected an input_quantizer (residual binarization needs one), got None.")
        self.filters = int(filters)
        self.kernel_size = kernel_size
        self.bases = int(bases)
        self.strides = strides
        self.padding = padding
        self.pad_values = float(pad_values)
        self.dilation_rate = dilation_rate
        self.use_bias = bool(use_bias)
        self.input_quantizer = lq.quantizers.get(_quantizer(input_quantizer))
        kernel_quantizer = lq.quantizers.get(_quantizer(kernel_quantizer))
        self._kernel_quantizer_config = lq.quantizers.serialize(kernel_quantizer)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = bnn_regularizers.get(kernel_regularizer)
        self.kernel_constraint = tf.keras.constraints.get(kernel_constraint)
        self.beta_initial = float(beta_initial)
        self.convs = [
            QuantConv2D(
                self.filters,
                kernel_size,
                strides=strides,
                padding=padding,
                pad_values=self.pad_values,
                dilation_rate=dilation_rate,
                use_bias=self.use_bias and k == 0,
                input_quantizer=None,
                # A fresh quantizer per base: a trainable quantizer must not share weights.
                kernel_quantizer=kernel_quantizer if k == 0 else lq.quantizers.get(
                    self._kernel_quantizer_config),
                kernel_initializer=self._base_initializer(k),
                kernel_regularizer=self.kernel_regularizer,
                kernel_constraint=self.kernel_constraint,
                dtype=self._dtype_policy,
                name=f"{self.name}_base{k}",
            )
            for k in range(self.bases)
        ]
        self.betas = []

    def _base_initializer(self, k: int) -> tf.keras.initializers.Initializer:
        # A fresh initializer per base: one unseeded instance called twice returns identical
        # values, and identical kernels would make the bases redundant. A user seed is offset
        # per base so the layer stays reproducible.
        config = tf.keras.initializers.serialize(self.kernel_initializer)
        inner = config.get("config", {}) if isinstance(config, dict) else {}
        if isinstance(inner, dict) and inner.get("seed") is not None:
            inner["seed"] = int(inner["seed"]) + k
        return tf.keras.initializers.get(config)

    @property
    def kernel_quantizer(self) -> Any:
        """The first base's kernel quantizer (every base uses one of the same config)."""
        return self.convs[0].kernel_quantizer

    def build(self, input_shape: tf.TensorShape) -> None:
        self.betas = [
            self.add_weight(
                name=f"beta{k + 1}",
                shape=(),
                initializer=tf.keras.initializers.Constant(self.beta_initial * 2.0 ** -k),
                trainable=True,
            )
            for k in range(self.bases - 1)
        ]
        for conv in self.convs:
            # The sub-layer's own name scope keeps variable names distinct (`..._base1/kernel`).
            with tf.name_scope(conv.name):
                conv.build(input_shape)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        residual = inputs
        outputs = None
        for k, conv in enumerate(self.convs):
            base = self.input_quantizer(residual)
            y = conv(base)
            outputs = y if outputs is None else outputs + y
            if k < self.bases - 1:
                residual = residual - tf.cast(self.betas[k], residual.dtype) * base
        return outputs

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return self.convs[0].compute_output_shape(input_shape)

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "bases": self.bases,
            "strides": self.strides,
            "padding": self.padding,
            "pad_values": self.pad_values,
            "dilation_rate": self.dilation_rate,
            "use_bias": self.use_bias,
            "input_quantizer": lq.quantizers.serialize(self.input_quantizer),
            "kernel_quantizer": self._kernel_quantizer_config,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": (
                None
                if self.kernel_regularizer is None
                else tf.keras.utils.serialize_keras_object(self.kernel_regularizer)
            ),
            "kernel_constraint": tf.keras.constraints.serialize(self.kernel_constraint),
            "beta_initial": self.beta_initial,
        }


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class LearnableScale(tf.keras.layers.Layer):
    """Multiplies its input by a learnable scalar or per-unit scale.

    A binarized last layer produces logits of magnitude ~sqrt(fan-in); a learnable scale in
    front of the softmax lets the network set the logits' temperature itself.

    Args:
        per_unit: One scale per unit of the last axis instead of one scalar.
        scale_initializer: Initializer of the scale (default ones: identity at start).
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    References:
        - BinaryNet: https://arxiv.org/abs/1602.02830
    """

    def __init__(self, per_unit: bool = False, scale_initializer: Any = "ones", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_unit = bool(per_unit)
        self.scale_initializer = tf.keras.initializers.get(scale_initializer)
        self.scale: Optional[tf.Variable] = None

    def build(self, input_shape: tf.TensorShape) -> None:
        shape = (int(tf.TensorShape(input_shape)[-1]),) if self.per_unit else ()
        self.scale = self.add_weight(name="scale", shape=shape, initializer=self.scale_initializer,
                                     trainable=True)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs * tf.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "per_unit": self.per_unit,
            "scale_initializer": tf.keras.initializers.serialize(self.scale_initializer),
        }


def activation(
    name: str, *, shared_axes: Optional[Sequence[int]] = (1, 2), layer_name: Optional[str] = None
) -> tf.keras.layers.Layer:
    """A ReLU or PReLU layer, so a model family can switch with one option.

    Args:
        name: `"relu"` or `"prelu"`.
        shared_axes: PReLU's shared axes; the default (1, 2) shares the slope over the
            spatial axes of NHWC conv features (one slope per channel). Use `None` for
            dense features.
        layer_name: The Keras name of the returned layer.

    Returns:
        A new `tf.keras.layers.ReLU` or `tf.keras.layers.PReLU`.

    Raises:
        ValueError: an unknown `name`.

    References:
        - Bi-Real Net: https://arxiv.org/abs/1808.00278
    """
    if name == "relu":
        return tf.keras.layers.ReLU(name=layer_name)
    if name == "prelu":
        return tf.keras.layers.PReLU(
            shared_axes=list(shared_axes) if shared_axes else None, name=layer_name
        )
    raise ValueError(f"Expected activation 'relu' or 'prelu', got {name!r}.")


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class FloatActivation(tf.keras.layers.Layer):
    """A Keras activation in a quantizer slot, for float baselines
    (`bnn_keras.training.baselines.float_equivalent`): part of the plugin, so that a float baseline's
    model file loads after `import bnn_keras` alone.

    Args:
        activation: A Keras activation name, e.g. "relu" or "hard_tanh" (hardtanh is
            what the straight-through estimator of sign differentiates).
    """

    precision = 32  # read by larq and model_stats: a float input, not a quantized one

    def __init__(self, activation: str = "relu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activation
        self._fn = tf.keras.activations.get(activation)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return self._fn(inputs)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "activation": self.activation}


# RSign's pseudo-gradients: the quantizer functions of `bnn_keras.quantizers` (sign forward).
_RSIGN_GRADIENTS = ("ste_sign", "approx_sign")


def _channels(input_shape: tf.TensorShape, layer: str) -> int:
    channels = tf.TensorShape(input_shape)[-1]
    if channels is None:
        raise ValueError(f"{layer} needs a known last (channel) dimension, got {input_shape}.")
    return int(channels)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class RSign(lq.quantizers.Quantizer):
    """ReActNet's RSign: `sign(x - alpha_c)`, a binarizer with a learnable per-channel threshold.

    A larq quantizer (a Keras layer), meant as a `QuantConv2D`'s `input_quantizer`: the conv is
    then a binary conv as any other (1-bit input and kernel). `alpha` (`threshold`, one value
    per channel of the last axis, initialised to `threshold_initializer`, zeros by default)
    is created on the first call. The forward pass is `sign(x - alpha)` with zero mapped to +1,
    i.e. a subtraction followed by the sign pattern LCE turns into `LceQuantize`; the
    subtraction is one float op in the converted graph unless TFLite merges it into the op
    that produced `x` (a BatchNorm, a bias, an earlier constant add such as RPReLU's `zeta`).
    The backward pass is the pseudo-gradient of the sign at `z = x - alpha`: `dq/dx = g(z)`
    and `dq/dalpha_c = -sum over the other axes of g(z)`, with `g` the straight-through
    estimator (`1` for `|z| <= clip_value`) or Bi-Real Net's ApproxSign (`2 - 2|z|` for
    `|z| <= 1`, what ReActNet's code trains with).

    Args:
        pseudo_gradient: `"ste_sign"` or `"approx_sign"`.
        clip_value: For `"ste_sign"`: the window of the straight-through estimator.
        threshold_initializer: Initializer of alpha.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Raises:
        ValueError: an unknown `pseudo_gradient`.

    References:
        - ReActNet: https://arxiv.org/abs/2003.03488 (RSign)
    """

    precision = 1

    def __init__(
        self,
        pseudo_gradient: str = "ste_sign",
        clip_value: Optional[float] = 1.0,
        threshold_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        if pseudo_gradient not in _RSIGN_GRADIENTS:
            raise ValueError(
                f"Expected pseudo_gradient in {_RSIGN_GRADIENTS}, got {pseudo_gradient!r}.")
        self.pseudo_gradient = pseudo_gradient
        self.clip_value = clip_value
        self.threshold_initializer = tf.keras.initializers.get(threshold_initializer)
        self.threshold: Optional[tf.Variable] = None
        super().__init__(**kwargs)

    def build(self, input_shape: tf.TensorShape) -> None:
        self.threshold = self.add_weight(
            name="threshold",
            shape=(_channels(input_shape, "RSign"),),
            initializer=self.threshold_initializer,
            trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        shifted = inputs - tf.cast(self.threshold, inputs.dtype)
        if self.pseudo_gradient == "approx_sign":
            return bnn_quantizers.approx_sign(shifted)
        return bnn_quantizers.ste_sign(shifted, clip_value=self.clip_value)

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "pseudo_gradient": self.pseudo_gradient,
            "clip_value": self.clip_value,
            "threshold_initializer": tf.keras.initializers.serialize(self.threshold_initializer),
        }


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class RPReLU(tf.keras.layers.Layer):
    """ReActNet's RPReLU: `f(x) = PReLU_beta(x - gamma) + zeta`, all three per channel.

    `PReLU_beta(y) = y` for `y > 0`, `beta * y` otherwise; `gamma` (input shift), `beta` (slope)
    and `zeta` (output shift) have one value per channel of the last axis. The PReLU part is
    written as Keras's `PReLU` computes it (`relu(y) - beta * relu(-y)`), the pattern TFLite
    converts to one `PRELU` op; the shifts are constant `ADD`s (or fold into neighbouring ones).

    Args:
        slope_initializer: Initializer of beta (0.25, PyTorch's `nn.PReLU` default that
            ReActNet's code keeps).
        shift_initializer: Initializer of gamma and zeta (zeros: a plain PReLU at start).
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    References:
        - ReActNet: https://arxiv.org/abs/2003.03488 (RPReLU)
    """

    def __init__(self, slope_initializer: Any = tf.keras.initializers.Constant(0.25),
                 shift_initializer: Any = "zeros", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slope_initializer = tf.keras.initializers.get(slope_initializer)
        self.shift_initializer = tf.keras.initializers.get(shift_initializer)
        self.gamma: Optional[tf.Variable] = None
        self.beta: Optional[tf.Variable] = None
        self.zeta: Optional[tf.Variable] = None

    def build(self, input_shape: tf.TensorShape) -> None:
        shape = (_channels(input_shape, "RPReLU"),)
        self.gamma = self.add_weight(name="gamma", shape=shape,
                                     initializer=self.shift_initializer, trainable=True)
        self.beta = self.add_weight(name="beta", shape=shape,
                                    initializer=self.slope_initializer, trainable=True)
        self.zeta = self.add_weight(name="zeta", shape=shape,
                                    initializer=self.shift_initializer, trainable=True)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        dtype = inputs.dtype
        shifted = inputs - tf.cast(self.gamma, dtype)
        # Keras's PReLU term for term, with the slope shaped as Keras's (1, ..., 1, C): TFLite
        # fuses exactly `relu(y) + -beta * relu(-y)` into one PRELU op (a (C,) slope stays
        # RELU, NEG, MUL and ADD ops, measured with LCE 0.16).
        slope = tf.reshape(tf.cast(self.beta, dtype), [1] * (inputs.shape.rank - 2) + [-1])
        prelu = tf.nn.relu(shifted) + -slope * tf.nn.relu(-shifted)
        return prelu + tf.cast(self.zeta, dtype)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "slope_initializer": tf.keras.initializers.serialize(self.slope_initializer),
            "shift_initializer": tf.keras.initializers.serialize(self.shift_initializer),
        }


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class LearnedRescale(tf.keras.layers.Layer):
    """Multiplies its input by learned scales `a_h * b_w * c_c`, one factor per row, column and
    channel (XNOR-Net++'s scaling, the Strong Baseline's, larq-zoo's `LearnedRescaleLayer`).

    The weights are `scale_h` (H, 1, 1), `scale_w` (1, W, 1) and `scale_c` (1, 1, C), initialised
    to 1, so the layer depends on the spatial size of its input.
    """

    def build(self, input_shape) -> None:
        height, width, channels = (int(d) for d in input_shape[1:])
        for name, shape in (("scale_h", (height, 1, 1)), ("scale_w", (1, width, 1)),
                            ("scale_c", (1, 1, channels))):
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer="ones",
                                                trainable=True))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        # One factor at a time, the first on the map seen as (N, H, W * C). LCE 0.16 fuses a
        # multiplication by a constant that directly follows an LceBconv2d into the op's
        # per-channel multiplier whatever the constant's shape, and its interpreter then rejects
        # the flatbuffer ("NumDimensions(post_activation_multiplier) != 1"); after a reshape the
        # multiplication stays an op of its own. Three factors rather than their product
        # (larq-zoo's, equal to float rounding), so that the converter does not fold them into
        # an H x W x C constant: the flatbuffer stores H + W + C scales, as the layer has.
        shape = tf.shape(inputs)
        height, width, channels = inputs.shape[1:]
        x = tf.reshape(inputs, (shape[0], height, width * channels)) * self.scale_h[..., 0]
        return tf.reshape(x, shape) * self.scale_w * self.scale_c

    def compute_output_shape(self, input_shape):
        return input_shape
