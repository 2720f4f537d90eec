"""The model registry: names -> entries (timm's pattern).

An entry function is a thin, data-only call into a family builder, registered with
`@register_model("binary-densenet28", recipe=...)`; the entry carries the model's published
training recipe as plain values (`PaperRecipe`), as timm's entries carry their configs.
`create_model` forwards the Keras-applications keywords (`input_shape`, `num_classes`,
`include_top`, `weights`) and any family-specific overrides. models/ imports only the Keras
plugin: the training application (`bnn_keras.training`) sits above it, reads the recipes from
here and applies training tricks to the built models.
"""

import dataclasses
import difflib
import fnmatch
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import tensorflow as tf

from bnn_keras import model_stats
from bnn_keras.errors import BnnError

# The file of larq-zoo's training configurations, which most published recipes come from.
LARQ_ZOO = "larq-zoo larq_zoo/training/basic_experiments.py"


@dataclasses.dataclass(frozen=True)
class PaperRecipe:
    """How a model's paper, or the code that trained its published weights, trained it.

    Plain values only: `bnn_keras.training.recipes.paper_recipe` turns them into a `Recipe`
    (`bnn train MODEL --recipe paper`). `values` names `Recipe` fields (optimizer,
    learning_rate, float_learning_rate, schedule, warmup_epochs, step_boundaries, step_factor,
    step_multipliers, label_smoothing, weight_decay, adam_epsilon, bop_*, epochs, batch_size);
    a field it leaves out keeps `Recipe`'s default. Recipes are for ImageNet unless `source`
    says otherwise, and `batch_size` is global.

    Attributes:
        source: The paper and the code the values come from.
        values: `Recipe` field -> value.
    """

    source: str
    values: Mapping[str, Any]

    def __post_init__(self) -> None:
        # Read-only: an entry's recipe is a published fact, not a default to edit in place.
        object.__setattr__(self, "values", types.MappingProxyType(dict(self.values)))

    def replace(self, source: str, **changes: Any) -> "PaperRecipe":
        """The recipe of a sibling model: these values with `changes`, from `source`."""
        return PaperRecipe(source, {**self.values, **changes})


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: The registry key.
        fn: The entry function (keyword arguments -> uncompiled `tf.keras.Model`).
        recipe: The model paper's training recipe, None where none could be verified.
        bop_recipe: The Bop paper's recipe for this model (Helwegen et al.,
            https://arxiv.org/abs/1906.02107), None where it gives none.
    """

    name: str
    fn: Callable[..., tf.keras.Model]
    recipe: Optional[PaperRecipe] = None
    bop_recipe: Optional[PaperRecipe] = None


_REGISTRY: Dict[str, ModelEntry] = {}


class UnknownModelError(BnnError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would print the message with quotes.
        return str(self.args[0])


def register_model(
    name: str,
    *,
    recipe: Optional[PaperRecipe] = None,
    bop_recipe: Optional[PaperRecipe] = None,
) -> Callable:
    """Decorator that registers a model entry function under `name`.

    Args:
        name: The registry key.
        recipe: The model paper's training recipe, if one could be verified.
        bop_recipe: The Bop paper's recipe for this model, if it gives one.

    Raises:
        ValueError: `name` is already registered.
    """

    def decorator(fn: Callable[..., tf.keras.Model]) -> Callable[..., tf.keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice.")
        _REGISTRY[name] = ModelEntry(name, fn, recipe, bop_recipe)
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
    return get_entry(name).fn


def get_entry(name: str) -> ModelEntry:
    """The registry entry `name`: its entry function and published recipes.

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
    **overrides,
) -> tf.keras.Model:
    """Builds the registered model `name` (uncompiled), as its paper defines it.

    Training tricks are the training application's: apply them to the result with
    `bnn_keras.training.tricks.apply_tricks(model, ...)`.

    Args:
        name: A registry key, see `list_models()`.
        input_shape: Input (height, width, channels).
        num_classes: Size of the classifier output.
        include_top: Whether to include the classifier head.
        weights: None (random initialization) or a path to a weights file to load by name.
        **overrides: Family-specific options (e.g. `input_quantizer`).

    Returns:
        A `tf.keras.Model`.

    Raises:
        UnknownModelError: `name` is not registered.
        BnnError: an override the model does not take.
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
