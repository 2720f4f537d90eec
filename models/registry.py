"""The model registry: names -> entry functions (timm's pattern).

An entry function is a thin, data-only call into a family builder, registered with
`@register_model("binary-densenet28")`. `create_model` forwards the Keras-applications keywords
(`input_shape`, `num_classes`, `include_top`, `weights`) and any family-specific overrides.
"""

import difflib
import fnmatch
from typing import Any, Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from bnn_keras import model_stats
from bnn_keras.errors import BnnError

_REGISTRY: Dict[str, Callable[..., tf.keras.Model]] = {}


class UnknownModelError(BnnError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would print the message with quotes.
        return str(self.args[0])


def register_model(name: str) -> Callable:
    """Decorator that registers a model entry function under `name`.

    Raises:
        ValueError: `name` is already registered.
    """

    def decorator(fn: Callable[..., tf.keras.Model]) -> Callable[..., tf.keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice.")
        _REGISTRY[name] = fn
        fn.model_name = name
        return fn

    return decorator


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted registered names, optionally filtered by a shell-style `pattern` (`"*densenet*"`)."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_model_fn(name: str) -> Callable[..., tf.keras.Model]:
    """The entry function registered as `name`.

    Raises:
        UnknownModelError: no such model; the message lists close matches.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "known models:"
        known = "" if close else " " + ", ".join(list_models())
        raise UnknownModelError(
            f"Unknown model {name!r}; {hint}{known} (`bnn models` lists them all)."
        ) from None


def create_model(
    name: str,
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    weights: Optional[str] = None,
    tricks: Optional[Dict[str, Any]] = None,
    **overrides,
) -> tf.keras.Model:
    """Builds the registered model `name` (uncompiled).

    Args:
        name: A registry key, see `list_models()`.
        input_shape: Input (height, width, channels).
        num_classes: Size of the classifier output.
        include_top: Whether to include the classifier head.
        weights: None (random initialization) or a path to a weights file to load by name.
        tricks: Training tricks applied to every binary layer after building, as keyword
            arguments of `bnn_keras.training.tricks.apply_tricks` (e.g. `{"bases": 2}`).
        **overrides: Family-specific options (e.g. `input_quantizer`).

    Returns:
        A `tf.keras.Model`.

    Raises:
        UnknownModelError: `name` is not registered.
        BnnError: an override the model does not take, or a trick that cannot apply to it.
    """
    fn = get_model_fn(name)
    try:
        model = fn(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            include_top=include_top,
            **overrides,
        )
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        unknown = str(exc).rsplit("argument", 1)[-1].strip()
        raise BnnError(
            f"{name} has no option {unknown}; its options are the keyword arguments of "
            f"{fn.__module__}.{fn.__name__} and the family builder it calls."
        ) from None
    if tricks:
        from bnn_keras.training.tricks import apply_tricks

        model = apply_tricks(model, **tricks)
    if weights is not None:
        model.load_weights(weights)
    return model


def describe(
    name: str,
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    include_top: bool = True,
    **overrides,
) -> "model_stats.ModelStats":
    """Builds the registered model `name` and returns its statistics (for `bnn models`).

    Args:
        name: A registry key, see `list_models()`.
        input_shape: Input (height, width, channels).
        num_classes: Size of the classifier output.
        include_top: Whether to include the classifier head.
        **overrides: Family-specific options, as for `create_model`.

    Returns:
        A `bnn_keras.model_stats.ModelStats` (parameters by precision, size, MACs, expected
        LceBconv2d count, per-layer table).

    Raises:
        UnknownModelError: `name` is not registered.
    """
    model = create_model(
        name, input_shape=input_shape, num_classes=num_classes, include_top=include_top,
        **overrides,
    )
    return model_stats.model_summary(model)
