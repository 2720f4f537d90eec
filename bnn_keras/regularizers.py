"""Regularizers for latent binary weights: BNN+ (with a trainable scale) and bipolar.

L2 on latent binary weights pulls them towards 0, where every optimizer step can flip their
sign. Both regularizers here pull them towards +/-1 (bipolar) or towards the layer's scale
alpha (BNN+) instead.

References:
    - BNN+: https://arxiv.org/abs/1812.11800
    - Tang, Hua, Wang, "How to Train a Compact Binary Neural Network with High Accuracy?",
      AAAI 2017 (bipolar regularizer).
"""

from typing import Any, Dict, Optional, Union

import tensorflow as tf

__all__ = ["Bipolar", "BnnPlusRegularizer", "bnn_plus_penalty", "bipolar_penalty", "get"]

_PACKAGE = "bnn_keras"
_BNN_PLUS_KINDS = ("l1", "l2")


def bnn_plus_penalty(alpha: tf.Tensor, kernel: tf.Tensor, kind: str = "l1") -> tf.Tensor:
    """The BNN+ penalty `sum |alpha - |w||` (l1) or `sum (alpha - |w|)^2` (l2), unscaled.

    Args:
        alpha: The scale: a scalar (per layer) or a vector broadcastable against `kernel`'s
            last axis (per output channel).
        kernel: The latent (full-precision) kernel.
        kind: `"l1"` (Manhattan, R1) or `"l2"` (Euclidean, R2).

    Returns:
        A float32 scalar.

    Raises:
        ValueError: `kind` is not "l1" or "l2".

    References:
        - BNN+: https://arxiv.org/abs/1812.11800
    """
    if kind not in _BNN_PLUS_KINDS:
        raise ValueError(f"Expected kind in {_BNN_PLUS_KINDS}, got {kind!r}.")
    diff = tf.cast(alpha, tf.float32) - tf.math.abs(tf.cast(kernel, tf.float32))
    if kind == "l1":
        return tf.reduce_sum(tf.math.abs(diff))
    return tf.reduce_sum(tf.math.square(diff))


def bipolar_penalty(kernel: tf.Tensor, smooth: bool = False) -> tf.Tensor:
    """The bipolar penalty, unscaled: `sum(1 - clip(w)^2)` or, smooth, `sum((1 - w^2)^2)`.

    Args:
        kernel: The latent kernel.
        smooth: Use the smooth form, differentiable everywhere and also pulling |w| > 1 back.

    Returns:
        A float32 scalar.

    References:
        - Tang, Hua, Wang, "How to Train a Compact Binary Neural Network with High
          Accuracy?", AAAI 2017.
    """
    w = tf.cast(kernel, tf.float32)
    if smooth:
        return tf.reduce_sum(tf.math.square(1.0 - tf.math.square(w)))
    # Clipping is what keeps the paper's form bounded below: without it the penalty would
    # reward pushing weights to infinity.
    clipped = tf.clip_by_value(w, -1.0, 1.0)
    return tf.reduce_sum(1.0 - tf.math.square(clipped))


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class Bipolar(tf.keras.regularizers.Regularizer):
    """Bipolar kernel regularizer: pulls latent binary weights towards +/-1 rather than 0.

    Use as `kernel_regularizer=Bipolar(1e-5)` on binary layers instead of L2. The paper's
    form is `factor * sum(1 - clip(w, -1, 1)^2)` (gradient `-2 w` inside [-1, 1]); with
    `smooth=True` it is `factor * sum((1 - w^2)^2)`.

    Args:
        factor: The regularization strength lambda.
        smooth: Use the smooth form.

    References:
        - Tang, Hua, Wang, "How to Train a Compact Binary Neural Network with High
          Accuracy?", AAAI 2017.
    """

    def __init__(self, factor: float = 1e-5, smooth: bool = False) -> None:
        self.factor = float(factor)
        self.smooth = bool(smooth)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.factor * bipolar_penalty(x, smooth=self.smooth)

    def get_config(self) -> Dict[str, Any]:
        return {"factor": self.factor, "smooth": self.smooth}


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class BnnPlusRegularizer:
    """BNN+ scale regularizer `factor * sum |alpha - |w||` (l1) or `... (alpha - |w|)^2` (l2).

    Unlike a Keras `Regularizer` it takes two tensors, the scale and the latent kernel, so it
    is used through `bnn_keras.layers.ScaledQuantConv2D(scale_regularizer=...)`, which owns
    both.

    Args:
        factor: The regularization strength lambda.
        kind: `"l1"` (R1, Manhattan) or `"l2"` (R2, Euclidean).

    Raises:
        ValueError: `kind` is not "l1" or "l2".

    References:
        - BNN+: https://arxiv.org/abs/1812.11800
    """

    def __init__(self, factor: float = 1e-5, kind: str = "l1") -> None:
        if kind not in _BNN_PLUS_KINDS:
            raise ValueError(f"Expected kind in {_BNN_PLUS_KINDS}, got {kind!r}.")
        self.factor = float(factor)
        self.kind = kind

    def __call__(self, alpha: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return self.factor * bnn_plus_penalty(alpha, kernel, kind=self.kind)

    def get_config(self) -> Dict[str, Any]:
        return {"factor": self.factor, "kind": self.kind}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "BnnPlusRegularizer":
        return cls(**config)


_ALIASES = {
    "bipolar": lambda factor: Bipolar(factor, smooth=False),
    "bipolar-smooth": lambda factor: Bipolar(factor, smooth=True),
    "bnn+-l1": lambda factor: BnnPlusRegularizer(factor, kind="l1"),
    "bnn+-l2": lambda factor: BnnPlusRegularizer(factor, kind="l2"),
}


def get(
    identifier: Union[None, str, Dict[str, Any], Bipolar, BnnPlusRegularizer, Any],
    factor: Optional[float] = None,
) -> Any:
    """Resolves a regularizer from an instance, a config dict or an alias.

    Args:
        identifier: `None`; an instance (returned as is); a Keras serialization dict; one of
            the aliases `"bipolar"`, `"bipolar-smooth"`, `"bnn+-l1"`, `"bnn+-l2"`; any other
            string is passed on to `tf.keras.regularizers.get` (e.g. `"l2"`).
        factor: The strength for an alias (each class's default when `None`).

    Returns:
        The regularizer, or `None`.

    Raises:
        ValueError: an unknown string identifier.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _ALIASES:
            return _ALIASES[key](1e-5 if factor is None else factor)
        try:
            resolved = tf.keras.regularizers.get(identifier)
        except ValueError:
            resolved = None
        # Keras hands unknown names back unchanged instead of raising.
        if not callable(resolved) or isinstance(resolved, str):
            known = ", ".join(sorted(_ALIASES))
            raise ValueError(
                f"Expected a regularizer alias ({known}) or a Keras regularizer name; "
                f"got {identifier!r}."
            )
        return resolved
    if isinstance(identifier, dict):
        return tf.keras.utils.deserialize_keras_object(identifier)
    return identifier
