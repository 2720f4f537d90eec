"""Model files are data: loading a Keras model file without running code it carries.

A Keras model file stores its layers as a config, and a config can carry Python: a `Lambda`
layer stores its function as marshalled bytecode (a `lambda`) or as the name of a Python
function that loading looks up and calls with arguments the file gives. tf-keras 2.16 runs that
bytecode when it rebuilds the layer from a legacy .h5 file or a SavedModel folder whatever its
`safe_mode` says (only .keras archives honour it), and it loads any file that is not a .keras
zip as HDF5, so a renamed .h5 file is not safe either. People download model files from model
zoos and papers, so here every file's stored config is read first, by its content (h5py, the
zip's config.json, the SavedModel's protobuf decoded by hand; nothing of it is executed), and a
file that carries code is refused in one line naming the layer, unless the caller trusts the
file (`trust_model_code`, Keras's `safe_mode=False`). The load itself then runs in Keras's safe
mode too, so a lambda this scan did not see is refused by Keras as well. A `TFOpLambda` (how
Keras records `x * 2` on a KerasTensor) names a TensorFlow op, not code of the file: it loads.

Reading the config first also gives clear errors for files that are not model files (random
bytes, a truncated download, a weights-only file) and names a layer class that is not
registered. Model files come from anywhere larq runs, so loading covers what other code left in
them too: a `tf.keras.Model` subclass that cannot be imported here but saved a functional config
(larq-zoo's `BinaryDenseNet`) is rebuilt as the plain functional model it is, and a plain
function that tf-keras wrote to .h5 by name (QuickNet's `blurpool_initializer`) is found again.

The scan needs neither TensorFlow nor Keras: `find_code(stored_config(path))`.
"""

import contextlib
import contextvars
import dataclasses
import importlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import h5py

from bnn_keras.errors import BnnError

H5_SUFFIXES = (".h5", ".hdf5")
MODEL_SUFFIXES = (".keras",) + H5_SUFFIXES
# Model classes Keras itself deserializes; any other class name on a model config is a subclass.
_KERAS_MODEL_CLASSES = ("Functional", "Model", "Sequential")
RESAVE_HINT = ("re-save it as a functional model where its class imports: "
               "tf.keras.Model(m.inputs, m.outputs).save('model.keras')")
_ZIP_SIGNATURE = b"PK\x03\x04"
_SAVED_MODEL_FILE = "saved_model.pb"
_KERAS_METADATA_FILE = "keras_metadata.pb"

PathLike = Union[str, Path]


class ModelCodeError(BnnError):
    """A model file carries Python code that loading would run, and it is not trusted.

    Attributes:
        path: The model file or SavedModel folder.
        layer: The name of the layer that carries the code.
        class_name: That layer's class.
    """

    def __init__(self, message: str, path: Path, layer: str, class_name: str):
        super().__init__(message)
        self.path, self.layer, self.class_name = path, layer, class_name


@dataclasses.dataclass(frozen=True)
class CodeFinding:
    """Code in a stored config: the layer that carries it and what it is.

    Attributes:
        layer: The layer's name ("?" when the config gives none).
        class_name: The layer's class.
        code: What the code is, e.g. "Python bytecode (a `lambda`) as its `function`".
    """

    layer: str
    class_name: str
    code: str


@dataclasses.dataclass(frozen=True)
class StoredConfig:
    """The configs a model file stores, read without deserializing any of them.

    Attributes:
        kind: "keras" (a .keras zip), "h5" (legacy HDF5) or "saved_model" (a folder).
        model_config: The model's config ({"class_name", "config", ...}) for "keras" and "h5";
            None for a SavedModel, whose layers are stored one by one.
        trees: Every config that loading may deserialize: the model config, or a SavedModel's
            per-object metadata.
    """

    kind: str
    model_config: Optional[Dict[str, Any]]
    trees: Tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model loaded from a file.

    Attributes:
        model: The Keras model (or what Keras returned for a SavedModel without Keras metadata).
        path: The file or SavedModel folder it came from.
        rebuilt_classes: Model subclasses that could not be imported and were rebuilt as
            functional models from their saved config (e.g. `("BinaryDenseNet",)`).
    """

    model: Any
    path: Path
    rebuilt_classes: Tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------
# Trust
# ----------------------------------------------------------------------------------------------

_TRUSTED: contextvars.ContextVar = contextvars.ContextVar("bnn_trust_model_code", default=False)


@contextlib.contextmanager
def trusting_model_code(trust: bool = True) -> Iterator[None]:
    """Within this scope, `load_model_file` calls that do not say otherwise trust model files.

    For callers that reach `load_model_file` through code that does not pass
    `trust_model_code` on (as Keras's `custom_object_scope` does for custom objects): the CLI's
    --trust-model-code opens it for the whole command.

    Args:
        trust: Whether to trust the files (False restores the default inside a trusting scope).
    """
    token = _TRUSTED.set(bool(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def model_code_trusted() -> bool:
    """Whether an enclosing `trusting_model_code` scope trusts model files."""
    return _TRUSTED.get()


# ----------------------------------------------------------------------------------------------
# Reading the stored config
# ----------------------------------------------------------------------------------------------


def _label(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def stored_config(path: PathLike, what: str = "") -> StoredConfig:
    """The configs the model file `path` stores, read as data (no Keras object is built).

    The format is decided as Keras decides it: a folder is a SavedModel, a `.keras` file that
    is a zip archive is a .keras model, any other file is read as HDF5.

    Args:
        path: A .keras or .h5/.hdf5 file, or a SavedModel folder.
        what: How messages introduce the file (e.g. "`teacher`"); by its path alone if empty.

    Returns:
        The `StoredConfig`.

    Raises:
        BnnError: the path does not exist, is not a model file (random bytes, a truncated or
            damaged file, a weights-only file, a folder without saved_model.pb); one line
            naming it.
    """
    source = Path(path)
    label = _label(source, what)
    if source.is_dir():
        return _saved_model_config(source, label)
    if not source.is_file():
        raise BnnError(f"No such model file or SavedModel folder: {label}.")
    if zipfile.is_zipfile(source):
        if source.suffix == ".keras":
            return _keras_config(source, label)
        raise BnnError(f"Could not load {label} as a Keras model (a zip archive, which Keras "
                       f"reads as a model only under a .keras name); rename it to "
                       f"{source.stem}.keras.")
    if not h5py.is_hdf5(source):
        raise BnnError(_not_a_model_file(source, label))
    return _h5_config(source, label)


def _not_a_model_file(source: Path, label: str) -> str:
    with open(source, "rb") as file:
        head = file.read(len(_ZIP_SIGNATURE))
    if head == _ZIP_SIGNATURE:
        return (f"Could not load {label} as a Keras model (a damaged zip archive: its end is "
                f"missing, a truncated or incomplete download); save or download it again.")
    what = "the file is empty" if not head else "its bytes are neither a .keras zip nor HDF5"
    return (f"Could not load {label} as a Keras model ({what}); give a .keras or .h5 model "
            f"file or a SavedModel folder.")


def _decode_json(text: Any, label: str, where: str) -> Any:
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BnnError(f"Could not load {label} as a Keras model (its {where} is not JSON: "
                       f"{exc}); save or download it again.") from None


def _h5_config(source: Path, label: str) -> StoredConfig:
    try:
        with h5py.File(source, "r") as file:
            text = file.attrs.get("model_config")
            weights_only = text is None and ("layer_names" in file.attrs or "layers" in file)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise BnnError(f"Could not load {label} as a Keras model (a damaged HDF5 file: "
                       f"{_h5_reason(exc)}); save or download it again.") from None
    if text is None:
        held = ("weights but no model config: a save_weights file?" if weights_only
                else "no model config")
        raise BnnError(f"Could not load {label} as a Keras model (it holds {held}); give a "
                       f"model saved with model.save(), or build the model and load these "
                       f"weights into it.")
    config = _decode_json(text, label, "model_config")
    if not isinstance(config, dict):
        raise BnnError(f"Could not load {label} as a Keras model (its model_config is not a "
                       f"model config); save or download it again.")
    return StoredConfig("h5", config, (config,))


def _h5_reason(exc: BaseException) -> str:
    # "Unable to synchronously open file (truncated file: eof = 7040, ...)" -> the parenthesis.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"\((.*)\)\s*$", text)
    return match.group(1) if match else text


def _keras_config(source: Path, label: str) -> StoredConfig:
    try:
        with zipfile.ZipFile(source) as archive:
            text = archive.read("config.json")
    except KeyError:
        raise BnnError(f"Could not load {label} as a Keras model (a zip archive without "
                       f"config.json); give a file saved with model.save('....keras').") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise BnnError(f"Could not load {label} as a Keras model (a damaged .keras archive: "
                       f"{exc}); save or download it again.") from None
    config = _decode_json(text, label, "config.json")
    if not isinstance(config, dict):
        raise BnnError(f"Could not load {label} as a Keras model (its config.json is not a "
                       f"model config); save or download it again.")
    # load_model(compile=False) never reads the compile config: its loss is not loaded.
    model_config = {key: value for key, value in config.items() if key != "compile_config"}
    return StoredConfig("keras", config, (model_config,))


def _saved_model_config(source: Path, label: str) -> StoredConfig:
    if not (source / _SAVED_MODEL_FILE).is_file():
        raise BnnError(f"Could not load {label} as a Keras model (a folder without "
                       f"{_SAVED_MODEL_FILE}); give a .keras or .h5 model file or a SavedModel "
                       f"folder.")
    metadata = source / _KERAS_METADATA_FILE
    try:
        if metadata.is_file():
            texts = _keras_metadata(metadata.read_bytes())
        else:  # SavedModels of TF < 2.5 keep the metadata in saved_model.pb
            texts = _saved_model_pb_metadata((source / _SAVED_MODEL_FILE).read_bytes())
    except (ValueError, IndexError) as exc:
        raise BnnError(f"Could not load {label} as a Keras model (a damaged SavedModel: its "
                       f"Keras metadata cannot be decoded: {exc}); save it again.") from None
    except OSError as exc:
        raise BnnError(f"Could not load {label} as a Keras model (it cannot be read: "
                       f"{exc.strerror or exc}).") from None
    trees = tuple(_decode_json(text, label, "Keras metadata") for text in texts if text)
    return StoredConfig("saved_model", None, trees)


# Protobuf wire format, decoded by hand so that the scan needs no TensorFlow: the few fields
# read are tf_keras/protobuf/saved_metadata.proto's SavedMetadata.nodes (1) ->
# SavedObject.metadata (5), and tensorflow's SavedModel.meta_graphs (2) ->
# MetaGraphDef.object_graph_def (7) -> SavedObjectGraph.nodes (1) -> SavedObject.user_object
# (4) -> SavedUserObject.metadata (3).
_LENGTH_DELIMITED = 2


def _varint(data: memoryview, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _fields(data: memoryview) -> Iterator[Tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; a length-delimited value is a
    memoryview of its bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire} of field {number}")
        if pos > len(data):
            raise ValueError("a field runs past the end of the message")
        yield number, wire, value


def _messages(data: memoryview, number: int) -> Iterator[memoryview]:
    for field, wire, value in _fields(data):
        if field == number and wire == _LENGTH_DELIMITED:
            yield value


def _keras_metadata(data: bytes) -> List[bytes]:
    return [bytes(text) for node in _messages(memoryview(data), 1)
            for text in _messages(node, 5)]


def _saved_model_pb_metadata(data: bytes) -> List[bytes]:
    return [bytes(text)
            for graph in _messages(memoryview(data), 2)
            for objects in _messages(graph, 7)
            for node in _messages(objects, 1)
            for user_object in _messages(node, 4)
            for text in _messages(user_object, 3)]


# ----------------------------------------------------------------------------------------------
# Finding code in a config
# ----------------------------------------------------------------------------------------------


def find_code(stored: StoredConfig) -> Optional[CodeFinding]:
    """The first layer whose stored config carries Python code that loading would run.

    Code is: marshalled bytecode (a Lambda's `function`, `output_shape` or `mask` of type
    "lambda", or any other config field `X` with `X_type` "lambda"; a `__lambda__` object of
    the .keras format), and any `Lambda` layer, which calls a Python function the file names
    with arguments the file gives.

    Args:
        stored: `stored_config(path)`.

    Returns:
        The first finding, or None when the file carries no code.
    """
    for tree in stored.trees:
        found = next(_code_in(tree, ("?", "?")), None)
        if found is not None:
            return found
    return None


def _code_in(node: Any, owner: Tuple[str, str]) -> Iterator[CodeFinding]:
    """Code in a config tree; `owner` is (name, class) of the layer `node` belongs to."""
    if isinstance(node, list):
        for value in node:
            yield from _code_in(value, owner)
        return
    if not isinstance(node, dict):
        return
    class_name = node.get("class_name")
    config = node.get("config")
    if isinstance(class_name, str) and class_name == "__lambda__":
        yield CodeFinding(owner[0], owner[1], "Python bytecode (a `lambda`)")
        return
    if isinstance(class_name, str) and isinstance(config, dict):
        name = config.get("name", node.get("name"))
        if isinstance(name, str):
            owner = (name, class_name)
        code = _code_of_layer(class_name, config)
        if code:
            yield CodeFinding(owner[0], owner[1], code)
            return
    for value in node.values():
        yield from _code_in(value, owner)


def _code_of_layer(class_name: str, config: Dict[str, Any]) -> Optional[str]:
    for key, value in config.items():
        if (isinstance(key, str) and key.endswith("_type") and value == "lambda"
                and key[:-len("_type")] in config):
            return f"Python bytecode (a `lambda`) as its `{key[:-len('_type')]}`"
    if class_name.split(">")[-1] == "Lambda":
        function = config.get("function")
        if isinstance(function, dict):  # .keras: {"class_name": "function", "config": NAME}
            module, function = function.get("module"), function.get("config")
        else:
            module = config.get("module")
        where = f" of module {module!r}" if isinstance(module, str) and module else ""
        return f"a call of the Python function {function!r}{where} with the file's arguments"
    return None


def refuse_code(stored: StoredConfig, path: PathLike, what: str = "") -> None:
    """Raises `ModelCodeError` when the stored config carries code (`find_code`).

    Args:
        stored: `stored_config(path)`.
        path: The file, for the message.
        what: How the message introduces the file (e.g. "`teacher`").
    """
    found = find_code(stored)
    if found is None:
        return
    label = _label(Path(path), what)
    raise ModelCodeError(
        f"{label} carries code: layer {found.layer!r} ({found.class_name}) holds {found.code}, "
        f"which loading would run; bnn reads model files as data only. Pass "
        f"`trust_model_code` only if you trust where the file comes from (loading it then "
        f"runs that code), or re-save the model without it.",
        Path(path), found.layer, found.class_name)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_model_file(path: PathLike, *, custom_objects: Optional[Mapping[str, Any]] = None,
                    trust_model_code: Optional[bool] = None, what: str = ""):
    """Loads a Keras model file (uncompiled) as data: one that carries code is refused.

    Args:
        path: A .keras or .h5/.hdf5 file, or a SavedModel folder.
        custom_objects: {name: class or function} for objects the file names that neither
            Keras nor larq knows; objects in an enclosing `tf.keras.utils.custom_object_scope`
            are used too.
        trust_model_code: True loads a file that carries Python code (a Lambda layer) and runs
            that code, as Keras's `safe_mode=False`; None takes the enclosing
            `trusting_model_code` scope's choice (default: False).
        what: How messages introduce the file (e.g. "`teacher`"); by its path alone if empty.

    Returns:
        The `tf.keras.Model`.

    Raises:
        ModelCodeError: the file carries code and is not trusted (the message names the layer).
        BnnError: the file is not a readable model file, or names an object that is not
            available (the message names the file and the object, and says what to do).
    """
    return read_model_file(path, custom_objects=custom_objects,
                           trust_model_code=trust_model_code, what=what).model


def read_model_file(path: PathLike, *, custom_objects: Optional[Mapping[str, Any]] = None,
                    trust_model_code: Optional[bool] = None, what: str = "") -> ModelFile:
    """`load_model_file`, with the model subclasses that were rebuilt as functional models.

    Args:
        path: A .keras or .h5/.hdf5 file, or a SavedModel folder.
        custom_objects: As for `load_model_file`.
        trust_model_code: As for `load_model_file`.
        what: How messages introduce the file.

    Returns:
        A `ModelFile`.

    Raises:
        ModelCodeError, BnnError: as `load_model_file`.
    """
    source = Path(path)
    trusted = model_code_trusted() if trust_model_code is None else bool(trust_model_code)
    stored = stored_config(source, what)
    if not trusted:
        refuse_code(stored, source, what)
    model, rebuilt = _load(source, stored, dict(custom_objects or {}), trusted, what)
    return ModelFile(model=model, path=source, rebuilt_classes=rebuilt)


@contextlib.contextmanager
def _keras_safe_mode(safe: bool) -> Iterator[None]:
    """Keras's safe mode for the whole load: tf-keras checks it for a Lambda's bytecode and a
    `__lambda__` in every format, but sets it only for .keras files itself."""
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # another tf-keras layout: the scan above still stands
        yield
        return
    with SafeModeScope(safe):
        yield


def _keras_load(source: Path, custom_objects: Dict[str, Any], trusted: bool):
    import tensorflow as tf

    with _keras_safe_mode(not trusted):
        return tf.keras.models.load_model(source, compile=False, safe_mode=not trusted,
                                          custom_objects=custom_objects or None)


def _load(source: Path, stored: StoredConfig, custom_objects: Dict[str, Any], trusted: bool,
          what: str) -> Tuple[Any, Tuple[str, ...]]:
    """The model in `source` and the subclasses rebuilt as functional models, or a BnnError
    with the failure's cause whole."""
    import tensorflow as tf

    label = _label(source, what)
    try:
        return _keras_load(source, custom_objects, trusted), ()
    except Exception as exc:
        failure = exc
    config = stored.model_config
    if config is None:
        raise BnnError(_load_failure(label, failure, config, custom_objects)) from None
    stand_ins = {name: tf.keras.Model for name in _unimportable_functional_subclasses(
        config, custom_objects)}
    h5 = stored.kind == "h5"
    # tf-keras writes a plain function (larq-zoo QuickNet's `blurpool_initializer`) to .h5 as
    # {"class_name": "function", "config": NAME}, which its own loader then cannot read.
    fixed = _named_functions(config) if h5 else config
    if not stand_ins and fixed == config:
        raise BnnError(_load_failure(label, failure, config, custom_objects)) from None
    objects = {**custom_objects, **stand_ins}
    try:
        with _keras_safe_mode(not trusted):
            if h5:
                objects[_FUNCTION_REF] = _function_by_name(custom_objects)
                model = tf.keras.models.model_from_config(fixed, custom_objects=objects)
                model.load_weights(source)
            else:
                model = tf.keras.models.load_model(source, compile=False, custom_objects=objects,
                                                   safe_mode=not trusted)
    except Exception as exc:
        message = _load_failure(label, exc, config, objects)
        if stand_ins and not _unknown_object(exc) and not _unknown_layer(config, objects):
            message = (f"{message[:-1]}; its class {', '.join(map(repr, sorted(stand_ins)))} "
                       f"cannot be imported and was read as a functional model; pass its "
                       f"module with `custom_objects`, or {RESAVE_HINT}.")
        raise BnnError(message) from None
    return model, tuple(sorted(stand_ins))


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


def _layer_configs(node: Any) -> Iterator[Dict[str, Any]]:
    """Every layer of a model config (the items of its and its sub-models' `layers`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "layers" and isinstance(value, list):
                yield from (item for item in value
                            if isinstance(item, dict) and isinstance(item.get("class_name"), str))
            yield from _layer_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _layer_configs(value)


def _is_functional_config(config: Any) -> bool:
    return isinstance(config, dict) and all(
        key in config for key in ("layers", "input_layers", "output_layers"))


def _registered(name: Any, custom_objects: Mapping[str, Any]) -> bool:
    import tensorflow as tf

    return isinstance(name, str) and (
        name in custom_objects or tf.keras.utils.get_registered_object(name) is not None)


def _unimportable_functional_subclasses(config: Dict[str, Any],
                                        custom_objects: Dict[str, Any]) -> set:
    """Names of model subclasses in `config` whose config is a functional graph and whose
    class is neither given nor registered (a subclass with its own `call` saves no graph and
    is not among them)."""
    names = set()
    for node in _configs(config):
        name = node["class_name"]
        if (name not in _KERAS_MODEL_CLASSES and _is_functional_config(node["config"])
                and not _registered(name, custom_objects)
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


def _builtin_layer(name: str) -> bool:
    try:
        from tf_keras.src.layers.serialization import get_builtin_layer
    except ImportError:  # another tf-keras layout: its public layers
        import tensorflow as tf

        return hasattr(tf.keras.layers, name) or name in _KERAS_MODEL_CLASSES
    return get_builtin_layer(name) is not None


def _unknown_layer(config: Any, custom_objects: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """(class, layer name) of the first layer in `config` whose class neither Keras, nor a
    registration, nor `custom_objects` provides.

    The module a .keras config names does not count: tf-keras looks a layer up among its own
    and the registered ones only, and calls the class name itself when it is not there ("'str'
    object is not callable").
    """
    for node in _layer_configs(config):
        name = node["class_name"]
        known = (_builtin_layer(name) or _registered(name, custom_objects)
                 or _registered(node.get("registered_name"), custom_objects))
        if not known:
            inner = node.get("config")
            layer = inner.get("name") if isinstance(inner, dict) else None
            return name, str(layer or node.get("name") or "?")
    return None


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
    import tensorflow as tf

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
# Keras's own safe mode refused a lambda (one this module's scan did not recognise).
_KERAS_SAFE_MODE = "potential risk of arbitrary code execution"


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


def _load_failure(label: str, exc: BaseException, config: Optional[Dict[str, Any]],
                  custom_objects: Mapping[str, Any]) -> str:
    """The one-line message for a model file Keras could not load, with what to do."""
    cause = load_error_cause(exc)
    if _KERAS_SAFE_MODE in cause:
        return (f"{label} carries code (a Python `lambda`) that loading would run; bnn reads "
                f"model files as data only. Pass `trust_model_code` only if you trust where "
                f"the file comes from (loading it then runs that code).")
    unknown_layer = _unknown_layer(config, custom_objects) if config else None
    if unknown_layer:
        name, layer = unknown_layer
        return (f"Could not load {label}: unknown layer class {name!r} (layer {layer!r}); pass "
                f"the module that defines it with `custom_objects` (MODULE, MODULE:DICT or a "
                f".py file).")
    unknown = _unknown_object(exc)
    if not unknown:
        return f"Could not load {label} as a Keras model ({cause})."
    top = config.get("class_name") if config else None
    if unknown == top and not _is_functional_config(config.get("config")):
        return (f"Could not load {label} as a Keras model ({cause}): it holds a subclassed "
                f"model whose class cannot be imported and whose config is not a layer graph; "
                f"pass the module that defines {unknown!r} with `custom_objects`, or "
                f"{RESAVE_HINT}.")
    return (f"Could not load {label} as a Keras model ({cause}); pass the module that "
            f"defines {unknown!r} with `custom_objects` (MODULE, MODULE:DICT or a .py file).")
