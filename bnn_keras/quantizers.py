"""Binary quantizers: forward `sign` (zero -> +1), pseudo-gradients from the BNN literature.

Every quantizer here is a `larq.quantizers.Quantizer` (a Keras layer), so it can be passed as
`input_quantizer` / `kernel_quantizer` of any larq layer, and its forward pass is the sign
pattern Larq Compute Engine turns into `LceQuantize` / `LceBconv2d`. Only the backward pass
differs between quantizers:

| quantizer | dq/dx (zero outside the window) |
|---|---|
| `SteSign(clip_value)` | `1` for `|x| <= clip_value` |
| `ApproxSign()` | `2 - 2|x|` for `|x| <= 1` |
| `SignSwish(beta)` | `beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))` |

The aliases are resolved by `get` (and by `bnn_keras.layers`) to these classes; a plain string
given to a larq layer (`lq.layers.QuantConv2D(..., kernel_quantizer="ste_sign")`) is resolved
by larq to larq's own quantizer, so pass `get("sign_swish")` or an instance there:

| alias | `get`, `bnn_keras.layers` | a larq layer |
|---|---|---|
| `"ste_sign"` | `SteSign(clip_value=1.0)` (this module) | `larq.quantizers.SteSign(clip_value=1.0)` |
| `"approx_sign"` | `ApproxSign()` (this module) | `larq.quantizers.ApproxSign()` |
| `"sign_swish"` | `SignSwish(beta=5.0)` (this module; `trainable_beta` possible) | `larq.quantizers.SwishSign(beta=5.0)` |

Their forward passes are the same; the backward passes agree too, computed here in float32
under mixed precision. Registration is namespaced (`bnn_keras>SteSign`), never under the bare
class names larq already uses.

As larq's own quantizers, these log the ratio of output signs that flipped since the last step
as a `flip_ratio/NAME` metric when created as a kernel quantizer inside
`larq.context.metrics_scope(["flip_ratio"])` (or given `metrics=["flip_ratio"]`).

Pseudo-gradients are computed in float32 and cast back to the input's dtype, so the same
quantizers work under the `mixed_bfloat16` policy (bfloat16's 8-bit mantissa would round
`2 - 2|x|` and the SignSwish terms visibly). The straight-through estimator's backward pass
is one fused TensorFlow op in float32 (`FakeQuantWithMinMaxArgsGradient`, its window checked to
equal `|x| <= clip_value`) and a mask product in bfloat16 (compared against the largest
bfloat16 <= `clip_value`: the same window as in float32), instead of four elementwise passes.

References:
    - BinaryNet: https://arxiv.org/abs/1602.02830
    - Bi-Real Net: https://arxiv.org/abs/1808.00278
    - BNN+: https://arxiv.org/abs/1812.11800
"""

import functools
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import tensorflow as tf
from larq import math as lq_math
from larq.quantizers import Quantizer
# larq's base of its own quantizers: what makes `larq.context.metrics_scope(["flip_ratio"])`
# (and `metrics=[...]`) add a FlipRatio metric to a kernel quantizer.
from larq.quantizers import _BaseQuantizer

__all__ = [
    "ApproxSign",
    "LayerScaledSign",
    "SignSwish",
    "SteSign",
    "approx_sign",
    "deserialize",
    "get",
    "serialize",
    "sign",
    "sign_swish",
    "ste_sign",
]

_PACKAGE = "bnn_keras"


def sign(x: tf.Tensor) -> tf.Tensor:
    """Binary sign with zero mapped to +1, in the form LCE recognises as a binarizer.

    Args:
        x: Input tensor (any float dtype).

    Returns:
        A tensor of the same dtype with values in {-1, +1}.
    """
    # larq's `sign(sign(x) + 0.1)` is the exact op pattern LCE's converter matches to
    # `LceQuantize`; reusing it keeps every quantizer here convertible.
    return lq_math.sign(x)


def _as_float32(x: tf.Tensor) -> tf.Tensor:
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


@functools.lru_cache(maxsize=None)
def _fused_window_is_exact(clip_value: float) -> bool:
    """Whether TensorFlow's fused `FakeQuantWithMinMaxArgsGradient`, with the range
    `[-clip_value, clip_value]`, passes the gradient for exactly `|x| <= clip_value` in float32.

    That op nudges its range so that zero is a quantization level; with 8 bits and a narrow
    range (levels -127..127) a symmetric range stays as it is, up to float32 rounding of the
    scale. Checked, not assumed: if both ends pass and their float32 neighbours outside do not,
    the nudged ends are the ends themselves (no float32 value lies between).
    """
    if not (0.0 < clip_value < float("inf")):
        return False
    edge = np.float32(clip_value)
    outside = np.nextafter(edge, np.float32(np.inf))
    x = np.array([-outside, -edge, 0.0, edge, outside], np.float32)
    try:
        with tf.init_scope():  # eager, also while a graph is being traced
            passed = tf.raw_ops.FakeQuantWithMinMaxArgsGradient(
                gradients=tf.ones_like(x), inputs=x, min=-clip_value, max=clip_value,
                num_bits=8, narrow_range=True).numpy()
    except (tf.errors.OpError, AttributeError):  # no eager context: keep the general form
        return False
    return passed.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def _bfloat16_floor(value: float) -> float:
    """The largest bfloat16 value <= `float32(value)`, for a positive finite `value`.

    For a bfloat16 `x`, `|x| <= _bfloat16_floor(c)` holds exactly where `|float32(x)| <= c`
    does (bfloat16 is float32's upper 16 bits: truncating them rounds toward zero)."""
    bits = np.array(value, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return float(bits.view(np.float32))


def _clipped_straight_through(x: tf.Tensor, dy: tf.Tensor, clip_value: float) -> tf.Tensor:
    """The clipped straight-through estimator's backward pass: `dy` where `|x| <= clip_value`
    (compared in float32), else 0.

    In float32 it is one fused TensorFlow op, `FakeQuantWithMinMaxArgsGradient` (`dy * 1` or
    `dy * 0` in one pass), instead of four passes over the tensor (abs, compare, zeros,
    select): that op's window is the same one (`_fused_window_is_exact`). In bfloat16 it is
    `dy` times the mask, compared in bfloat16 against `_bfloat16_floor(clip_value)` (the same
    window), without the select, which is slow on bfloat16 (2.5x the mask's time on the bf16
    machine). Every finite `dy` gets the same gradient as from the select. (A non-finite `dy`
    outside the window gives NaN instead of 0, where training has diverged already.) Other
    dtypes, and a window the fused op cannot hold exactly, use the four ops.

    Args:
        x: The quantizer's input.
        dy: The gradient of its output, same shape and dtype.
        clip_value: The window's half-width.

    Returns:
        The gradient of `x`.
    """
    clip_value = float(clip_value)
    if x.dtype == dy.dtype == tf.float32 and _fused_window_is_exact(clip_value):
        return tf.raw_ops.FakeQuantWithMinMaxArgsGradient(
            gradients=dy, inputs=x, min=-clip_value, max=clip_value, num_bits=8,
            narrow_range=True)
    if x.dtype == dy.dtype == tf.bfloat16 and 0.0 < clip_value < float("inf"):
        bound = tf.constant(_bfloat16_floor(clip_value), tf.bfloat16)
        return dy * tf.cast(tf.math.less_equal(tf.math.abs(x), bound), tf.bfloat16)
    inside = tf.math.less_equal(tf.math.abs(_as_float32(x)), clip_value)
    return tf.where(inside, dy, tf.zeros_like(dy))


def ste_sign(x: tf.Tensor, clip_value: Optional[float] = 1.0) -> tf.Tensor:
    """Sign with the (clipped) straight-through estimator as gradient.

    Args:
        x: Input tensor.
        clip_value: Gradient is 1 for `|x| <= clip_value`, else 0. `None` disables clipping.

    Returns:
        `sign(x)` with zero mapped to +1.

    References:
        - BinaryNet: https://arxiv.org/abs/1602.02830
    """

    @tf.custom_gradient
    def _call(x):
        def grad(dy):
            if clip_value is None:
                return dy
            return _clipped_straight_through(x, dy, clip_value)

        return sign(x), grad

    return _call(x)


def approx_sign(x: tf.Tensor) -> tf.Tensor:
    """Sign with Bi-Real Net's ApproxSign gradient `2 - 2|x|` for `|x| <= 1`.

    Args:
        x: Input tensor.

    Returns:
        `sign(x)` with zero mapped to +1.

    References:
        - Bi-Real Net: https://arxiv.org/abs/1808.00278
    """

    @tf.custom_gradient
    def _call(x):
        def grad(dy):
            abs_x = tf.math.abs(_as_float32(x))
            local = tf.where(abs_x <= 1.0, 2.0 - 2.0 * abs_x, tf.zeros_like(abs_x))
            return dy * tf.cast(local, dy.dtype)

        return sign(x), grad

    return _call(x)


def _sign_swish_dz(z: tf.Tensor) -> tf.Tensor:
    """`(2 - z tanh(z/2)) / (1 + cosh z)`: d SS/dx = beta * this, d SS/dbeta = x * this."""
    return (2.0 - z * tf.math.tanh(0.5 * z)) / (1.0 + tf.math.cosh(z))


def sign_swish(x: tf.Tensor, beta: Union[float, tf.Tensor] = 5.0) -> tf.Tensor:
    """Sign with the BNN+ SignSwish derivative as gradient (also w.r.t. a tensor `beta`).

    The forward pass is `sign(x)`; the backward pass is the derivative of
    `SS_beta(x) = 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1`:
    `dSS/dx = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))` and, when `beta` is a
    tensor, `dSS/dbeta = x (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))` summed over x.

    Args:
        x: Input tensor.
        beta: Steepness; larger is closer to sign. A Python float, or a scalar tensor /
            variable that receives a gradient.

    Returns:
        `sign(x)` with zero mapped to +1.

    References:
        - BNN+: https://arxiv.org/abs/1812.11800
    """
    if not tf.is_tensor(beta) and not isinstance(beta, tf.Variable):
        beta_value = float(beta)

        @tf.custom_gradient
        def _call(x):
            def grad(dy):
                x32 = _as_float32(x)
                local = beta_value * _sign_swish_dz(beta_value * x32)
                return dy * tf.cast(local, dy.dtype)

            return sign(x), grad

        return _call(x)

    @tf.custom_gradient
    def _call_trainable(x, beta):
        def grad(dy):
            x32 = _as_float32(x)
            beta32 = _as_float32(tf.convert_to_tensor(beta))
            dz = _sign_swish_dz(beta32 * x32)
            dy32 = _as_float32(dy)
            dx = tf.cast(dy32 * beta32 * dz, dy.dtype)
            dbeta = tf.cast(tf.reduce_sum(dy32 * x32 * dz), beta.dtype)
            return dx, dbeta

        return sign(x), grad

    return _call_trainable(x, tf.convert_to_tensor(beta))


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class SteSign(_BaseQuantizer):
    """Binary quantizer with the straight-through estimator (BinaryNet).

    Args:
        clip_value: The gradient is 1 for `|x| <= clip_value` and 0 outside; `None` means no
            clipping. BinaryDenseNet uses 1.3, ResNetE 1.25.
        **kwargs: `metrics` (larq's: `["flip_ratio"]`) and Keras layer arguments (`name`,
            `dtype`, ...).

    References:
        - BinaryNet: https://arxiv.org/abs/1602.02830
    """

    precision = 1

    def __init__(self, clip_value: Optional[float] = 1.0, **kwargs: Any) -> None:
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(ste_sign(inputs, clip_value=self.clip_value))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "clip_value": self.clip_value}


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ApproxSign(_BaseQuantizer):
    """Binary quantizer with Bi-Real Net's ApproxSign gradient (`2 - 2|x|` on `|x| <= 1`).

    Args:
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    References:
        - Bi-Real Net: https://arxiv.org/abs/1808.00278
    """

    precision = 1

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(approx_sign(inputs))


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class SignSwish(_BaseQuantizer):
    """Binary quantizer with the BNN+ SignSwish gradient, optionally with a trainable beta.

    With `trainable_beta=True` the quantizer owns a scalar weight `beta` (created in `build`,
    initialised to `beta`) which receives `sum(dy * x * (2 - beta x tanh(beta x/2)) /
    (1 + cosh(beta x)))` as gradient, i.e. the derivative of SignSwish w.r.t. beta. When the
    quantizer is a layer's `kernel_quantizer` or `input_quantizer`, Keras tracks it as a
    sub-layer, so `beta` is part of the model's trainable weights and is saved with it.

    Args:
        beta: Steepness (initial value when trainable); larger is closer to sign.
        trainable_beta: Make beta a trainable scalar weight.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    References:
        - BNN+: https://arxiv.org/abs/1812.11800
    """

    precision = 1

    def __init__(self, beta: float = 5.0, trainable_beta: bool = False, **kwargs: Any) -> None:
        self.beta = float(beta)
        self.trainable_beta = bool(trainable_beta)
        self.beta_weight: Optional[tf.Variable] = None
        super().__init__(**kwargs)

    def build(self, input_shape: tf.TensorShape) -> None:
        if self.trainable_beta:
            # Keep beta in float32 even under mixed precision: it is one scalar and its updates
            # are small relative to its value.
            self.beta_weight = self.add_weight(
                name="beta",
                shape=(),
                dtype=tf.float32,
                initializer=tf.keras.initializers.Constant(self.beta),
                trainable=True,
                experimental_autocast=False,
            )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if self.beta_weight is not None:
            return super().call(sign_swish(inputs, beta=tf.convert_to_tensor(self.beta_weight)))
        return super().call(sign_swish(inputs, beta=self.beta))

    @property
    def non_trainable_weights(self):
        # larq's base hides a FlipRatio metric's state this way; beta stays trainable.
        return []

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "beta": self.beta,
            "trainable_beta": self.trainable_beta,
        }


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class LayerScaledSign(_BaseQuantizer):
    """Weight quantizer `sign(W) * mean(|W|)` with one mean over the whole kernel (DoReFa-Net).

    DoReFa-Net's 1-bit weights, `sign(r) * E(|r|)` (Zhou et al., 2016), as larq-zoo's DoReFaNet
    computes them (`magnitude_aware_sign_unclipped`): the scale is a constant of the backward
    pass and the pseudo-gradient is the identity. larq's `MagnitudeAwareSign` takes one mean per
    output channel instead, which gives other outputs wherever a BatchNorm with fixed
    statistics follows.

    Args:
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    References:
        - DoReFa-Net: https://arxiv.org/abs/1606.06160
    """

    precision = 1

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        scale = tf.stop_gradient(tf.reduce_mean(tf.abs(inputs)))

        @tf.custom_gradient
        def _scaled_sign(x):
            return sign(x) * scale, lambda dy: dy

        outputs = _scaled_sign(inputs)
        if hasattr(self, "flip_ratio"):  # of the signs: the scale changes at every step
            self.add_metric(self.flip_ratio(sign(inputs)))
        return outputs


_ALIASES: Dict[str, Callable[[], Quantizer]] = {
    "ste_sign": SteSign,
    "approx_sign": ApproxSign,
    "sign_swish": SignSwish,
}


def serialize(quantizer: Quantizer) -> Dict[str, Any]:
    """Returns the Keras serialization dict of a quantizer."""
    return tf.keras.utils.serialize_keras_object(quantizer)


def deserialize(config: Dict[str, Any]) -> Quantizer:
    """Rebuilds a quantizer from `serialize`'s output or a `{"class_name", "config"}` dict."""
    class_name = config.get("class_name")
    if class_name in ("SteSign", "ApproxSign", "SignSwish") and "registered_name" not in config:
        # A hand-written dict names our class without the package prefix; without this, Keras
        # would resolve larq's globally registered class of the same name.
        return _CLASSES[class_name].from_config(config.get("config", {}))
    return tf.keras.utils.deserialize_keras_object(config)


_CLASSES = {cls.__name__: cls for cls in (SteSign, ApproxSign, SignSwish)}


def get(identifier: Union[None, str, Dict[str, Any], type, Quantizer, Callable]) -> Optional[Quantizer]:
    """Resolves a quantizer from an instance, class, config dict or alias.

    Args:
        identifier: `None`; a quantizer instance or any callable (returned as is); a quantizer
            class (instantiated with defaults); a serialization dict; or one of the aliases
            `"ste_sign"`, `"approx_sign"`, `"sign_swish"`.

    Returns:
        The quantizer, or `None` for `None`.

    Raises:
        ValueError: an unknown alias or an identifier of an unsupported type.
    """
    if identifier is None:
        return None
    if isinstance(identifier, type) and issubclass(identifier, Quantizer):
        return identifier()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        if identifier in _ALIASES:
            return _ALIASES[identifier]()
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        known = ", ".join(sorted(_ALIASES))
        raise ValueError(f"Expected one of the quantizer aliases {known}; got {identifier!r}.")
    if callable(identifier):
        return identifier
    raise ValueError(
        "Expected a quantizer instance, class, config dict or alias; "
        f"got {type(identifier).__name__}: {identifier!r}."
    )
