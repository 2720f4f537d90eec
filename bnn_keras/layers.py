"""Binary layers and the BNN papers' training tricks, as Keras layers.

- `ScaledQuantConv2D`: binary conv with a trainable BNN+ scale alpha and its regularizer.
- `MultiBaseQuantConv2D`: residual binarization of the input into K binary bases (ABC-Net).
- `LearnableScale`: a learnable scalar or per-unit scale (e.g. before the softmax).
- `activation("relu" | "prelu")`: lets a model family switch ReLU to PReLU.

All layers stay convertible with Larq Compute Engine: a per-channel `+/-alpha` kernel is folded
into the `LceBconv2d` post-multiplier, and K binary bases become K `LceBconv2d` plus `ADD`s.
"""

from typing import Any, Dict, Optional, Sequence, Union

import larq as lq
import tensorflow as tf

from bnn_keras import quantizers as bnn_quantizers
from bnn_keras import regularizers as bnn_regularizers

__all__ = ["LearnableScale", "MultiBaseQuantConv2D", "ScaledQuantConv2D", "activation"]

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


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ScaledQuantConv2D(lq.layers.QuantConv2D):
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
            lq.layers.QuantConv2D(
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
