"""Loading a trained Keras model from a run folder or a model file.

Model files come from anywhere larq runs, so loading also covers what other code left in them:
custom objects the user names (`import_custom_objects`), and models of a `tf.keras.Model`
subclass that cannot be imported here (larq-zoo's `BinaryDenseNet`, whose package cannot be
installed beside bnn): a subclass built from inputs and outputs saves a functional config, so it
is rebuilt as the plain functional model it is.
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
from bnn_keras.training.config import CONFIG_FILE, MODEL_FILE, RunRecord

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_H5_SUFFIXES = (".h5", ".hdf5")
# Model classes Keras itself deserializes; any other class name on a model config is a subclass.
_KERAS_MODEL_CLASSES = ("Functional", "Model", "Sequential")
RESAVE_HINT = ("re-save it as a functional model where its class imports: "
               "tf.keras.Model(m.inputs, m.outputs).save('model.keras')")


@dataclasses.dataclass
class LoadedModel:
    """A Keras model and, when it came from a run folder, that run's config.json.

    Attributes:
        model: The model.
        path: The model file it was loaded from.
        record: The run's validated config.json (`RunRecord`), or None for a model file.
        rebuilt_classes: Model subclasses that could not be imported and were rebuilt as
            functional models from their saved config (e.g. `("BinaryDenseNet",)`).
    """

    model: tf.keras.Model
    path: Path
    record: Optional[RunRecord] = None
    rebuilt_classes: Tuple[str, ...] = ()

    @property
    def run_config(self) -> Optional[Dict[str, Any]]:
        """The run's config.json content (`RunRecord.to_dict`), or None for a model file: the
        form the .tflite metadata and the bundle share with a model file's options."""
        return None if self.record is None else self.record.to_dict()


def load_trained_model(path: str,
                       custom_objects: Optional[Mapping] = None) -> LoadedModel:
    """Loads `RUN_DIR/model.keras` (with its config.json) or a Keras model file.

    A model subclass that cannot be imported but saved a functional config (a subclass of
    `tf.keras.Model` built from inputs and outputs) is rebuilt as a functional model and its
    weights loaded into it; `LoadedModel.rebuilt_classes` names such classes.

    Args:
        path: A run folder, a SavedModel folder or a .keras/.h5 file.
        custom_objects: {name: class or function} for objects the file names that neither
            Keras nor larq knows (see `import_custom_objects`); objects in an enclosing
            `tf.keras.utils.custom_object_scope` are used too.

    Raises:
        BnnError: the path does not exist, or is not a Keras model, or names an object that
            is not available (the message names it and says what to do).
    """
    source = Path(path)
    if not source.exists():
        raise BnnError(f"No such model file or run folder: {source}.")
    record = None
    if source.is_dir():
        if (source / MODEL_FILE).is_file():
            if (source / CONFIG_FILE).is_file():
                record = RunRecord.read(source)
            source = source / MODEL_FILE
        elif not (source / "saved_model.pb").is_file():
            raise BnnError(
                f"{source} is neither a run folder (no {MODEL_FILE}) nor a SavedModel folder."
            )
    elif source.suffix not in MODEL_SUFFIXES:
        raise BnnError(
            f"{source} is not a Keras model file; expected a run folder or a "
            f"{'/'.join(MODEL_SUFFIXES)} file."
        )
    model, rebuilt = _load_model_file(source, dict(custom_objects or {}))
    if not isinstance(model, tf.keras.Model):
        raise BnnError(f"{source} does not hold a Keras model.")
    return LoadedModel(model=model, path=source, record=record, rebuilt_classes=rebuilt)


def import_custom_objects(specs: Sequence[str]) -> Dict[str, Any]:
    """Imports the modules that define a model file's custom objects.

    Args:
        specs: Each `MODULE` (a module whose import registers its objects with Keras, e.g. with
            `larq.utils.register_keras_custom_object`), `MODULE:ATTR` (a dict of
            {name: object} in that module; ATTR may be dotted) or a path to a .py file (with
            `:ATTR` likewise). Modules are looked up in the current folder too, as
            `python -m` does.

    Returns:
        The union of the named dicts (empty when every spec is a plain module).

    Raises:
        BnnError: a module cannot be imported, or ATTR is missing or not a dict.
    """
    objects: Dict[str, Any] = {}
    for spec in specs:
        name, _, attr = spec.partition(":")
        module = _import_module(name.strip(), spec)
        if not attr:
            continue
        value: Any = module
        for part in attr.strip().split("."):
            if not hasattr(value, part):
                raise BnnError(f"`custom_objects` {spec!r}: module {name!r} has no {attr!r}; "
                               f"name a dict of custom objects in it, or the module alone.")
            value = getattr(value, part)
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise BnnError(f"`custom_objects` {spec!r} is a {type(value).__name__}, not a dict "
                           f"of {{name: class or function}}; name such a dict, or the module "
                           f"alone if importing it registers its objects.")
        objects.update(value)
    return objects


def _import_module(name: str, spec: str):
    """The module `name` (dotted, or a .py file path), imported with the current folder on
    the search path, or a BnnError that names it."""
    if not name:
        raise BnnError(f"`custom_objects` {spec!r} names no module; expected MODULE or "
                       f"MODULE:DICT.")
    try:
        if name.endswith(".py") or os.sep in name or "/" in name:
            file = Path(name)
            if not file.is_file():
                raise BnnError(f"`custom_objects` {spec!r}: no such Python file: {file}.")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[file.stem] = module  # classes defined in it resolve their module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(file.stem, None)
                raise
            return module
        with _current_folder_importable():
            return importlib.import_module(name)
    except BnnError:
        raise
    except Exception as exc:  # any failure while running the module's code is the user's
        raise BnnError(f"`custom_objects` module {name!r} could not be imported "
                       f"({type(exc).__name__}: {first_line(exc)}); give an importable module "
                       f"(the current folder is searched), MODULE:DICT or a .py file.") from None


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    # The `bnn` console script puts its own bin folder first on sys.path, not the current
    # folder, where a user's module with their layers most likely is.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _load_model_file(source: Path,
                     custom_objects: Dict[str, Any]) -> Tuple[Any, Tuple[str, ...]]:
    """The model in `source` and the subclasses rebuilt as functional models, or a BnnError
    with the failure's cause whole."""
    try:
        return tf.keras.models.load_model(source, compile=False,
                                          custom_objects=custom_objects or None), ()
    except Exception as exc:
        failure = exc
    config = _saved_model_config(source)
    if config is None:
        raise BnnError(_load_failure(source, failure, config)) from None
    stand_ins = {name: tf.keras.Model for name in _unimportable_functional_subclasses(
        config, custom_objects)}
    h5 = source.suffix in _H5_SUFFIXES
    # tf-keras writes a plain function (larq-zoo QuickNet's `blurpool_initializer`) to .h5 as
    # {"class_name": "function", "config": NAME}, which its own loader then cannot read.
    fixed = _named_functions(config) if h5 else config
    if not stand_ins and fixed == config:
        raise BnnError(_load_failure(source, failure, config)) from None
    objects = {**custom_objects, **stand_ins}
    try:
        if h5:
            objects[_FUNCTION_REF] = _function_by_name(custom_objects)
            model = tf.keras.models.model_from_config(fixed, custom_objects=objects)
            model.load_weights(source)
        else:
            model = tf.keras.models.load_model(source, compile=False, custom_objects=objects)
    except Exception as exc:
        message = _load_failure(source, exc, config)
        if stand_ins and not _unknown_object(exc):
            message = (f"{message[:-1]}; its class {', '.join(map(repr, sorted(stand_ins)))} "
                       f"cannot be imported and was read as a functional model; pass its "
                       f"module with `custom_objects`, or {RESAVE_HINT}.")
        raise BnnError(message) from None
    return model, tuple(sorted(stand_ins))


def _saved_model_config(source: Path) -> Optional[Dict[str, Any]]:
    """The model config a .h5 or .keras file stores ({"class_name", "config", ...}), or None
    when it has none that can be read (a SavedModel folder, a damaged file)."""
    try:
        if source.suffix in _H5_SUFFIXES:
            import h5py

            with h5py.File(source, "r") as file:
                text = file.attrs.get("model_config")
        elif source.suffix == ".keras" and zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                text = archive.read("config.json")
        else:
            return None
        if text is None:
            return None
        config = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except Exception:  # an unreadable config leaves Keras's own error to explain the file
        return None
    return config if isinstance(config, dict) else None


def _configs(node: Any) -> Iterator[Dict[str, Any]]:
    """Every serialized Keras object ({"class_name", "config"}) in a config tree."""
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and "config" in node:
            yield node
        for value in node.values():
            yield from _configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _configs(value)


def _is_functional_config(config: Any) -> bool:
    return isinstance(config, dict) and all(
        key in config for key in ("layers", "input_layers", "output_layers"))


def _unimportable_functional_subclasses(config: Dict[str, Any],
                                        custom_objects: Dict[str, Any]) -> set:
    """Names of model subclasses in `config` whose config is a functional graph and whose
    class is neither given nor registered (a subclass with its own `call` saves no graph and
    is not among them)."""
    names = set()
    for node in _configs(config):
        name = node["class_name"]
        if (name not in _KERAS_MODEL_CLASSES and _is_functional_config(node["config"])
                and name not in custom_objects
                and tf.keras.utils.get_registered_object(name) is None
                and not _class_importable(node.get("module"), name)):
            names.add(name)
    return names


def _class_importable(module: Any, name: str) -> bool:
    """Whether a .keras config's class can be imported from the module it names (as Keras
    itself does when loading)."""
    if not isinstance(module, str) or not module:
        return False
    try:
        return hasattr(importlib.import_module(module), name)
    except Exception:
        return False


_FUNCTION_REF = "bnn>FunctionByName"


def _named_functions(node: Any) -> Any:
    """`node` with each {"class_name": "function", "config": NAME} written as an object that
    `_function_by_name` resolves to the function NAME."""
    if isinstance(node, dict):
        if (node.get("class_name") == "function" and isinstance(node.get("config"), str)
                and node.get("module") in (None, "builtins")):
            return {"class_name": _FUNCTION_REF, "config": {"name": node["config"]}}
        return {key: _named_functions(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_named_functions(value) for value in node]
    return node


def _function_by_name(custom_objects: Dict[str, Any]) -> type:
    """A class whose `from_config({"name": NAME})` is the custom or registered object NAME.

    Keras's .h5 loader calls an initializer's class with its config; a plain function named
    by a string would be called with no arguments, so it is returned through `from_config`.
    """

    class FunctionByName:
        @classmethod
        def from_config(cls, config: Dict[str, Any]) -> Any:
            name = config["name"]
            found = custom_objects.get(name) or tf.keras.utils.get_registered_object(name)
            if found is None:
                raise ValueError(f"Unknown function: '{name}'")
            return found

    return FunctionByName


# "Unknown layer: 'X'", "Could not locate class 'X'", "Could not deserialize class 'X' because
# its parent module M cannot be imported": an object the loading process does not know.
_UNKNOWN_OBJECT = re.compile(
    r"Unknown \w+: '(?P<name>[^']+)'"
    r"|Could not locate (?:class|function) '(?P<name2>[^']+)'"
    r"|Could not deserialize class '(?P<name3>[^']+)' because its parent module")
# Keras's advice is for Python callers ("use a custom_object_scope"); ours replaces it.
_KERAS_ADVICE = re.compile(
    r"\s*(?:Please ensure (?:you are using a|this object is passed).*?for details\."
    r"|Make sure custom classes are decorated with `@keras\.saving\."
    r"register_keras_serializable\(\)`\.)", re.S)


def _unknown_object(exc: BaseException) -> Optional[str]:
    match = _UNKNOWN_OBJECT.search(load_error_cause(exc))
    return match and (match.group("name") or match.group("name2") or match.group("name3"))


def load_error_cause(exc: BaseException) -> str:
    """One line with the whole cause of a Keras loading failure.

    Keras wraps a layer's failure as "Error when deserializing class 'X' using config={...}.
    Exception encountered: CAUSE" and ends others with "Full object config: {...}": the
    config dumps go (they run to thousands of characters), the cause stays whole, however
    long; a message without such a wrapper keeps its whole first line.

    Args:
        exc: The exception `tf.keras.models.load_model` (or h5py, zipfile) raised.

    Returns:
        E.g. "Unknown initializer: 'blurpool_initializer' (in a DepthwiseConv2D)".
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    layer = re.match(r"Error when deserializing class '([^']+)'", text)
    if "Exception encountered:" in text:
        text = text.rsplit("Exception encountered:", 1)[1]
    else:
        text = text.splitlines()[0]
    text = re.split(r"\s*(?:Full object config:|using config=)", text, maxsplit=1)[0]
    text = " ".join(_KERAS_ADVICE.sub("", text).split()).rstrip(".") or type(exc).__name__
    if layer and layer.group(1) not in text:
        text += f" (in a {layer.group(1)})"
    return text


def _load_failure(source: Path, exc: BaseException, config: Optional[Dict[str, Any]]) -> str:
    """The one-line message for a model file Keras could not load, with what to do."""
    cause = load_error_cause(exc)
    unknown = _unknown_object(exc)
    if not unknown:
        return f"Could not load {source} as a Keras model ({cause})."
    top = config.get("class_name") if config else None
    if unknown == top and not _is_functional_config(config.get("config")):
        return (f"Could not load {source} as a Keras model ({cause}): it holds a subclassed "
                f"model whose class cannot be imported and whose config is not a layer graph; "
                f"pass the module that defines {unknown!r} with `custom_objects`, or "
                f"{RESAVE_HINT}.")
    return (f"Could not load {source} as a Keras model ({cause}); pass the module that "
            f"defines {unknown!r} with `custom_objects` (MODULE, MODULE:DICT or a .py file).")
