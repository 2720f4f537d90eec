"""The model registry: names -> entries (timm's pattern).

An entry function is a thin, data-only call into a family builder, registered with
`@register_model("binary-densenet28", recipe=...)`; the entry carries the model's published
training recipe as plain values (`PaperRecipe`), as timm's entries carry their configs, and,
for models whose default differs from larq-zoo's definition, how it differs (`ZooVariant`:
`variant="larq-zoo"` builds the zoo's function, and a zoo weights file selects it).
`create_model` forwards the Keras-applications keywords (`input_shape`, `num_classes`,
`include_top`, `weights`) and any family-specific overrides. models/ imports only the Keras
plugin: the training application (`bnn_keras.training`) sits above it, reads the recipes from
here and applies training tricks to the built models.
"""

import dataclasses
import difflib
import fnmatch
import functools
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import tensorflow as tf

from bnn_keras import model_stats
from bnn_keras.errors import BnnError
from models import weights_file
from models.common import ZOO_VARIANT, ZooVariant
from models.recipes import PaperRecipe, StagedRecipe

# The larq-zoo release whose definitions the registry models were compared with.
LARQ_ZOO_VERSION = "larq-zoo 2.4.0"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: The registry key.
        fn: The entry function (keyword arguments -> uncompiled `tf.keras.Model`).
        recipe: The model paper's training recipe, None where none could be verified.
        bop_recipe: The Bop paper's recipe for this model (Helwegen et al.,
            https://arxiv.org/abs/1906.02107), None where it gives none.
        zoo: Set when the entry takes `variant="larq-zoo"`: how the default differs from
            larq-zoo. None for models without that option.
        staged: The paper's staged training, where it trains in stages; `recipe` is then
            its final stage's.
    """

    name: str
    fn: Callable[..., tf.keras.Model]
    recipe: Optional[PaperRecipe] = None
    bop_recipe: Optional[PaperRecipe] = None
    zoo: Optional[ZooVariant] = None
    staged: Optional[StagedRecipe] = None


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
    zoo: Optional[ZooVariant] = None,
    staged: Optional[StagedRecipe] = None,
) -> Callable:
    """Decorator that registers a model entry function under `name`.

    Args:
        name: The registry key.
        recipe: The model paper's training recipe, if one could be verified; with `staged`,
            None (it is the final stage's).
        bop_recipe: The Bop paper's recipe for this model, if it gives one.
        zoo: How the model differs from larq-zoo, when it takes `variant="larq-zoo"`.
        staged: The paper's training in stages, where it has them.

    Raises:
        ValueError: `name` is already registered, or both `recipe` and `staged` are given.
    """
    if staged is not None:
        if recipe is not None:
            raise ValueError(f"Model {name!r}: a staged recipe's `recipe` is its final stage's.")
        recipe = staged.final.recipe

    def decorator(fn: Callable[..., tf.keras.Model]) -> Callable[..., tf.keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice.")
        _REGISTRY[name] = ModelEntry(name, fn, recipe, bop_recipe, zoo, staged)
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
        weights: None (random initialization) or a path to a weights file. A Keras HDF5
            weights file whose weighted layers carry other names than this model's (a larq-zoo
            release file, or a zoo model's `save_weights`) is loaded by layer order, and for an
            entry with a larq-zoo variant selects `variant="larq-zoo"` unless `variant` is
            given; any other file (tf-keras's `.weights.h5`, a `.keras` model) is loaded by
            Keras's `load_weights`. Only weights are read, never a model file's config, so a
            weights file cannot run code.
        **overrides: Family-specific options (e.g. `input_quantizer`, `variant`).

    Returns:
        A `tf.keras.Model`.

    Raises:
        UnknownModelError: `name` is not registered.
        BnnError: an override the model does not take; a weights file that does not exist, is
            not a weights file (random bytes, truncated) or does not fit the model (the
            message names the file and the first layer that differs).
    """
    entry = get_entry(name)
    if weights is not None and not os.path.isfile(weights):
        raise BnnError(f"Weights file {weights} does not exist; give the path of a .h5 file.")
    build = functools.partial(_build, entry, tuple(input_shape), num_classes, include_top)
    model = build(overrides)
    if weights is None:
        return model
    file_layers = weights_file.read_h5_layers(weights)
    if file_layers is None:  # another format: Keras's own loading (weights only, never code)
        weights_file.load_keras_weights(model, weights, name)
        return model
    variant = weights_variant(entry, overrides, file_layers, model)
    if variant == ZOO_VARIANT and "variant" not in overrides:
        model = _zoo_model_for(build, overrides, model, weights, file_layers, name)
    label = f"{name} (variant {variant})" if entry.zoo is not None else name
    weights_file.load_by_layer_order(model, weights, label, file_layers)
    return model


def _zoo_model_for(build: Callable[[Mapping[str, Any]], tf.keras.Model],
                   overrides: Mapping[str, Any], default: tf.keras.Model, weights: str,
                   file_layers: Any, name: str) -> tf.keras.Model:
    """The larq-zoo variant that a foreign weights file selects; when it cannot be built at
    this input, the error names the first layer of the file that does not fit the default
    variant (a file of another model), or else says that the input is too small."""
    from models.input_size import is_input_too_small

    try:
        return build({**overrides, "variant": ZOO_VARIANT})
    except ValueError as exc:
        if not is_input_too_small(exc):
            raise
    shape = ",".join(str(d) for d in default.input_shape[1:])
    zoo = (f"a file without {name}'s layer names selects the larq-zoo variant, which "
           f"`input_shape` {shape} is too small for")
    misfit = weights_file.first_misfit(default, weights, name, file_layers)
    if misfit:
        raise BnnError(f"{misfit[:-1]} ({zoo}).")
    raise BnnError(f"Weights file {weights} has none of {name}'s layer names (a larq-zoo "
                   f"file?): {zoo}; give a larger `input_shape` (larq-zoo's models take "
                   f"224,224,3), or a weights file saved from {name} itself.")


def weights_variant(entry: ModelEntry, overrides: Mapping[str, Any],
                    file_layers: Optional[Any], model: tf.keras.Model) -> Optional[str]:
    """The variant `create_model` builds for a weights file: the one asked for in `overrides`,
    else larq-zoo's when none of the file's layers has one of `model`'s names (larq-zoo's file,
    whose weights give the zoo's outputs only with the zoo's padding and stems), else the
    default; None for an entry without variants.

    Args:
        entry: The registry entry.
        overrides: The options `create_model` was given.
        file_layers: `weights_file.read_h5_layers` of the file, or None (no file, or not HDF5).
        model: The model built with `overrides` (whose layer names are ours).
    """
    if "variant" in overrides:
        return overrides["variant"]
    if entry.zoo is None:
        return None
    if file_layers is not None and weights_file.is_foreign(file_layers, model):
        return ZOO_VARIANT
    return "bnn"


# Keywords every entry takes from `create_model` (Keras applications' own), and the builder's
# Keras model name, which the entry sets: not options.
_NOT_OPTIONS = ("input_shape", "num_classes", "include_top", "weights", "name")


class _Given:
    """A stand-in value: an option whose builder argument is this object was passed through."""


def _probe(entry: ModelEntry, overrides: Mapping[str, Any]):
    """The family builder call `entry.fn(**overrides)` makes (`models.common.BuilderCall`),
    without building; None when the entry refuses the values or calls no family builder."""
    from models.common import BuilderCall, probing_builders

    with probing_builders():
        try:
            entry.fn(**overrides)
        except BuilderCall as called:
            return called
        except (TypeError, ValueError, BnnError):
            return None  # the entry refuses the value (it sets that argument itself)
    return None


def model_options(name: str) -> Dict[str, Any]:
    """The options of the registry model `name` (what `create_model(name, **options)` and
    `bnn train --model-option KEY=VALUE` take) and their defaults, in the builder's order.

    Read from the family builder the entry calls and the values the entry gives it, without
    building anything (`models.common.probing_builders`): an entry that sets a builder argument
    itself (Bi-Real Net's BatchNorm momentum) does not offer it, and a default the entry
    chooses (BinaryResNetE's clip value) is shown as the entry's.

    Raises:
        UnknownModelError: `name` is not registered.
    """
    import inspect

    entry = get_entry(name)

    def call(overrides: Mapping[str, Any]):
        return _probe(entry, overrides)

    own = {p.name: p.default for p in inspect.signature(entry.fn).parameters.values()
           if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_OPTIONS}
    base = call({})
    if base is None:
        return own
    options = dict(own)
    for parameter in inspect.signature(base.builder).parameters.values():
        if parameter.name in _NOT_OPTIONS or parameter.name in own or parameter.kind in (
                inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if isinstance(parameter.default, ZooVariant):
            continue  # the family's larq-zoo definition (ResNetE's or Bi-Real Net's), not a choice
        given = _Given()
        probed = call({parameter.name: given})
        if probed is None or probed.kwargs.get(parameter.name) is not given:
            continue  # fixed by the entry: not the user's to set
        options[parameter.name] = base.kwargs.get(parameter.name, parameter.default)
    return options


def none_default_meanings(name: str) -> Dict[str, str]:
    """What a None default of the registry model `name`'s options stands for, as the builder
    that takes it documents it in its Args ("(default X)" or "None: X."):
    `{option: "`SteSign(clip_value=1.25)`"}` or `{option: "as few as LCE's converter folds,
    ..."}`; options whose default is not None,
    or whose builder does not say, are left out.

    Raises:
        UnknownModelError: `name` is not registered.
    """
    entry = get_entry(name)
    base = _probe(entry, {})
    documented = {**_documented_args(base.builder if base else None),
                  **_documented_args(entry.fn)}
    meanings = {}
    for option, default in model_options(name).items():
        text = documented.get(option, "")
        if default is not None or not text:
            continue
        # "(default X)", X with at most one level of parentheses inside.
        found = re.search(r"\(default:? ((?:[^()]|\([^()]*\))+)\)", text)
        if found:
            meanings[option] = found.group(1)
            continue
        # "None: X." up to the end of its sentence (a period before a capital or the end).
        found = re.search(r"\bNone(?::| keeps| means) (.+?)(?:\.(?=\s+[A-Z])|\.?$)", text)
        if found:
            meanings[option] = found.group(1)
    return meanings


def _documented_args(fn: Optional[Callable]) -> Dict[str, str]:
    """{argument: its text} from the Args section of `fn`'s Google-style docstring."""
    import inspect

    doc = inspect.getdoc(fn) if fn is not None else None
    if not doc or "Args:" not in doc:
        return {}
    args: Dict[str, str] = {}
    current = None
    for line in doc.split("Args:", 1)[1].splitlines()[1:]:
        if line and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        match = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
        if match:
            current = match.group(1)
            args[current] = match.group(2)
        elif current is not None and line.startswith("        "):
            args[current] += " " + line.strip()
    return args


def shown_default(value: Any) -> str:
    """An option's default as a person reads it: `SteSign(clip_value=1.25)`, `(64, 128)`,
    `"bnn"`, `None`."""
    if hasattr(value, "get_config") and not isinstance(value, type):
        config = {k: v for k, v in value.get_config().items()
                  if k not in ("name", "trainable", "dtype")}
        return f"{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def options_text(name: str) -> str:
    """`model_options(name)` in one line: `key=default, ...`."""
    return ", ".join(f"{key}={shown_default(value)}" for key, value in model_options(name).items())


def _build(entry: ModelEntry, input_shape, num_classes: int, include_top: bool,
           overrides: Mapping[str, Any]) -> tf.keras.Model:
    fn = entry.fn
    name = entry.name
    try:
        model = fn(
            input_shape=input_shape,
            num_classes=num_classes,
            include_top=include_top,
            **overrides,
        )
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        unknown = str(exc).rsplit("argument", 1)[-1].strip()
        raise BnnError(f"{name} has no option {unknown}; its options (with their defaults): "
                       f"{options_text(name)}.") from None
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
