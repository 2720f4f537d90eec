"""Loading a trained Keras model from a run folder or a model file.

Model files are data: `bnn_keras.model_files` reads a file's stored config before Keras builds
anything from it, refuses a file that carries Python code (a Lambda layer) unless the user
trusts it (`trust_model_code`), and rebuilds model subclasses that cannot be imported here
(larq-zoo's `BinaryDenseNet`) as the functional models they are. This module adds run folders
and the custom objects the user names (`import_custom_objects`).
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import tensorflow as tf

from bnn_keras import model_files
from bnn_keras.errors import BnnError, first_line
from bnn_keras.model_files import (  # noqa: F401  (re-exported: callers import them from here)
    MODEL_SUFFIXES,
    RESAVE_HINT,
    load_error_cause,
)
from bnn_keras.training.run_files import CONFIG_FILE, MODEL_FILE, RUN_MODEL_FILES, RunSummary


@dataclasses.dataclass
class LoadedModel:
    """A Keras model and, when it came from a run folder, what deploying it reads of the run.

    Attributes:
        model: The model.
        path: The model file it was loaded from.
        run: The run folder's `RunSummary` (the model's registry name and its `ModelInput`),
            or None for a model file.
        rebuilt_classes: Model subclasses that could not be imported and were rebuilt as
            functional models from their saved config (e.g. `("BinaryDenseNet",)`).
    """

    model: tf.keras.Model
    path: Path
    run: Optional[RunSummary] = None
    rebuilt_classes: Tuple[str, ...] = ()


def load_trained_model(path: str, custom_objects: Optional[Mapping] = None, *,
                       trust_model_code: Optional[bool] = None) -> LoadedModel:
    """Loads `RUN_DIR/model.keras` (with its config.json) or a Keras model file.

    A run's other model file (`RUN_DIR/best.keras` or `last.keras`, the epoch model.keras
    does not hold) is read with the run's config.json too, as is `RUN_DIR/model.keras` given
    by its path.

    A model subclass that cannot be imported but saved a functional config (a subclass of
    `tf.keras.Model` built from inputs and outputs) is rebuilt as a functional model and its
    weights loaded into it; `LoadedModel.rebuilt_classes` names such classes.

    Args:
        path: A run folder, a SavedModel folder or a .keras/.h5 file.
        custom_objects: {name: class or function} for objects the file names that neither
            Keras nor larq knows (see `import_custom_objects`); objects in an enclosing
            `tf.keras.utils.custom_object_scope` are used too.
        trust_model_code: True loads a model file that carries Python code (a Lambda layer)
            and runs that code; None takes the enclosing
            `bnn_keras.model_files.trusting_model_code` scope's choice (default: refused).

    Raises:
        BnnError: the path does not exist, or is not a Keras model, or carries code and is
            not trusted (`model_files.ModelCodeError`), or names an object that is not
            available (the message names it and says what to do).
    """
    source = Path(path)
    if not source.exists():
        raise BnnError(f"No such model file or run folder: {source}.")
    run = None
    if source.is_dir():
        if (source / MODEL_FILE).is_file():
            if (source / CONFIG_FILE).is_file():
                run = RunSummary.read(source)
            source = source / MODEL_FILE
        elif not (source / "saved_model.pb").is_file():
            raise BnnError(
                f"{source} is neither a run folder (no {MODEL_FILE}) nor a SavedModel folder."
            )
    elif source.name in RUN_MODEL_FILES and (source.parent / CONFIG_FILE).is_file():
        run = RunSummary.read(source.parent)
    elif source.suffix not in MODEL_SUFFIXES:
        raise BnnError(
            f"{source} is not a Keras model file; expected a run folder or a "
            f"{'/'.join(MODEL_SUFFIXES)} file."
        )
    loaded = model_files.read_model_file(source, custom_objects=custom_objects,
                                         trust_model_code=trust_model_code)
    if not isinstance(loaded.model, tf.keras.Model):
        raise BnnError(f"{source} does not hold a Keras model.")
    return LoadedModel(model=loaded.model, path=source, run=run,
                       rebuilt_classes=loaded.rebuilt_classes)


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
    except SystemExit as exc:  # a script's sys.exit() would end bnn without a word
        raise BnnError(f"`custom_objects` module {name!r} called sys.exit({exc.code!r}) while "
                       f"being imported; give a module that only defines (or registers) the "
                       f"model's objects, with any script code under "
                       f"`if __name__ == \"__main__\":`.") from None
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
