"""Loading Keras HDF5 weights files by layer order, with an error that names the first layer that
does not fit: bnn's own files and larq-zoo's (its release `.h5` files and its models'
`save_weights`), read without importing larq-zoo.

larq-zoo's layers carry Keras's automatic names (`quant_conv2d_3`, `batch_normalization_7`),
bnn's registry models name every layer, so names cannot match across the two: the weights go to
the layers in the order Keras saved them (`model.layers` order), as Keras's own HDF5 loading does.
A binary fully-connected layer is a 1x1 convolution here and a `QuantDense` in the zoo: a kernel
whose shape differs only by axes of size 1 ((C, N) and (1, 1, C, N)) is reshaped.

Other files (the `.weights.h5` of tf-keras's newer format, a `.keras` archive) are loaded by
Keras's `load_weights`, which reads their weights and never their model config, so a weights
file cannot run code. A file that is neither (random bytes, a truncated download) or does not
fit the model gets one line that names it, and the first layer that does not fit.
"""

import io
import re
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError, first_line

# (layer name, its weights in saving order).
FileLayer = Tuple[str, List[np.ndarray]]


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_h5_layers(path: str) -> Optional[List[FileLayer]]:
    """The weighted layers of a Keras HDF5 weights or model file, in saving order.

    Only weights are read: a model file's config (which may carry code) is never looked at.

    Args:
        path: A file path.

    Returns:
        [(layer name, weights)], or None when `path` is not a Keras HDF5 file of the
        `save_weights(".h5")` / `save(".h5")` layout (e.g. a `.weights.h5` of tf-keras's newer
        format, or a `.keras` file).

    Raises:
        BnnError: `path` is an HDF5 file that cannot be read (truncated, damaged).
    """
    if not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                return None
            layers = []
            for name in map(_text, group.attrs["layer_names"]):
                weight_names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
                if weight_names:
                    layers.append((name, [np.asarray(group[name][w]) for w in weight_names]))
            return layers
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise BnnError(_damaged(path, exc)) from None


def _damaged(path: str, exc: BaseException) -> str:
    # h5py: "Unable to synchronously open file (truncated file: eof = 7040, ...)": the cause is
    # the parenthesis.
    text = first_line(exc)
    match = re.search(r"\((.*)\)\s*$", text)
    return (f"Weights file {path} is damaged ({match.group(1) if match else text}); save or "
            f"download it again.")


def check_weights_file(path: str) -> None:
    """Refuses a file that Keras cannot read weights from: neither HDF5 nor a .keras archive
    (random bytes, an empty file), or a truncated zip archive.

    Raises:
        BnnError: one line naming the file and what it is.
    """
    if h5py.is_hdf5(path) or (path.endswith(".keras") and zipfile.is_zipfile(path)):
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        what = "is empty"
    elif head == b"PK\x03\x04":
        what = "is a damaged zip archive (truncated, or not completely downloaded)"
    else:
        what = "is not a Keras weights file: its bytes are neither HDF5 nor a .keras archive"
    raise BnnError(f"Weights file {path} {what}; give the .h5 file of a model's "
                   f"save_weights, a larq-zoo release .h5, or a .keras model of this model.")


def model_layers(model: tf.keras.Model) -> List[tf.keras.layers.Layer]:
    """The layers of `model` that have weights, in the order Keras saves them."""
    return [layer for layer in model.layers if layer.weights]


def is_foreign(file_layers: Sequence[FileLayer], model: tf.keras.Model) -> bool:
    """True when no weighted layer of the file has the name of a layer of `model`: a file of
    another code base (larq-zoo's automatic names), not one that `model`'s family saved."""
    ours = {layer.name for layer in model_layers(model)}
    return bool(file_layers) and not any(name in ours for name, _ in file_layers)


def _fits(saved: Sequence[int], ours: Sequence[int]) -> bool:
    if tuple(saved) == tuple(ours):
        return True
    # Dense (C, N) <-> 1x1 convolution (1, 1, C, N): the same values in the same order.
    squeeze = lambda shape: tuple(d for d in shape if d != 1)  # noqa: E731
    return int(np.prod(saved)) == int(np.prod(ours)) and squeeze(saved) == squeeze(ours)


def _shapes(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join(str(tuple(int(d) for d in s)) for s in shapes) or "no weights"


def load_by_layer_order(model: tf.keras.Model, path: str, label: str,
                        file_layers: Optional[Sequence[FileLayer]] = None) -> None:
    """Sets the weights of `model` from the Keras HDF5 file `path`, layer by layer in order.

    Every layer is checked before any weight is set, so a file that does not fit leaves the
    model as it was.

    Args:
        model: The model to load into.
        path: A Keras HDF5 weights (or model) file.
        label: How the message names the model (e.g. "binary-densenet28 (variant larq-zoo)").
        file_layers: `read_h5_layers(path)` when already read.

    Raises:
        BnnError: the file is not a Keras HDF5 weights file, or its weighted layers do not fit
            the model's (count or shapes); one line naming the first layer that differs, by its
            name in the file and in the model, with both shapes.
    """
    if file_layers is None:
        file_layers = read_h5_layers(path)
    if file_layers is None:
        raise BnnError(f"{path} is not a Keras HDF5 weights file (no `layer_names`); give the "
                       "file of a model's save_weights('....h5') or larq-zoo's release .h5.")
    misfit = first_misfit(model, path, label, file_layers)
    if misfit:
        raise BnnError(misfit)
    layers = model_layers(model)
    for layer, (_, saved) in zip(layers, file_layers):
        layer.set_weights([w.reshape(v.shape) for w, v in zip(saved, layer.weights)])


_FIX = ("build the model with the input_shape, num_classes, include_top and options the file "
        "was saved with, or give a weights file of this model.")


def first_misfit(model: tf.keras.Model, path: str, label: str,
                 file_layers: Sequence[FileLayer]) -> Optional[str]:
    """The one-line message naming the first weighted layer of `file_layers` that does not fit
    `model` by layer order (count or shapes), or None when every layer fits.

    Args:
        model: The model the weights would go to.
        path: The file, for the message.
        label: How the message names the model.
        file_layers: `read_h5_layers(path)`.
    """
    layers = model_layers(model)
    for index, (layer, (saved_name, saved)) in enumerate(zip(layers, file_layers), start=1):
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [w.shape for w in saved]
        if len(ours) != len(theirs) or not all(map(_fits, theirs, ours)):
            return (
                f"{path} does not fit {label}: weighted layer {index} is {saved_name!r} with "
                f"{_shapes(theirs)} in the file and {layer.name!r} with {_shapes(ours)} in the "
                f"model; {_FIX}"
            )
    if len(file_layers) != len(layers):
        index = min(len(file_layers), len(layers)) + 1
        if len(file_layers) > len(layers):
            saved_name, saved = file_layers[index - 1]
            where = (f"the file's layer {index} {saved_name!r} with "
                     f"{_shapes([w.shape for w in saved])} has no counterpart in the model")
        else:
            layer = layers[index - 1]
            where = (f"the model's layer {index} {layer.name!r} with "
                     f"{_shapes([w.shape for w in layer.weights])} has none in the file")
        return (
            f"{path} does not fit {label}: {len(file_layers)} weighted layers in the file, "
            f"{len(layers)} in the model; {where}; {_FIX}"
        )
    return None


def load_keras_weights(model: tf.keras.Model, path: str, label: str) -> None:
    """Loads a weights file that is not of the `read_h5_layers` layout (a `.weights.h5` of
    tf-keras's newer format, a `.keras` archive) with Keras's `load_weights`, which reads
    weights only, never a model config.

    Args:
        model: The model to load into.
        path: The file.
        label: How messages name the model.

    Raises:
        BnnError: the file is not a weights file Keras reads, or does not fit the model; one
            line naming the file and the first layer of the model that does not fit.
    """
    check_weights_file(path)
    try:
        model.load_weights(path)
    except Exception as exc:  # Keras's ValueError, h5py's OSError, zipfile's errors...
        misfit = _keras_format_misfit(model, path, label)
        raise BnnError(misfit or f"Could not load the weights of {path} into {label} "
                                 f"({first_line(exc)}); {_FIX}") from None


def _snake_case(name: str) -> str:
    try:
        from tf_keras.src.utils.generic_utils import to_snake_case
    except ImportError:  # another tf-keras layout: its rule, as of 2.16
        name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
        name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
        return name if name[0] != "_" else "private" + name
    return to_snake_case(name)


def _keras_format_keys(model: tf.keras.Model) -> List[Tuple[str, tf.keras.layers.Layer]]:
    """(path, layer) of each layer of `model` as tf-keras's newer weights format stores it:
    `layers/` + the snake-cased class name, numbered in model order per class
    (saving_lib._save_container_state)."""
    used: Dict[str, int] = {}
    keys = []
    for layer in model.layers:
        key = _snake_case(type(layer).__name__)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys.append((f"layers/{key}", layer))
    return keys


def _own_weights(layer: tf.keras.layers.Layer) -> list:
    # What Keras's `Layer.save_own_variables` stores under the layer's path: its own
    # variables, without those of its sublayers (stored under their own paths).
    own = getattr(layer, "_trainable_weights", None)
    if own is None:
        return list(layer.weights)
    return list(own) + list(getattr(layer, "_non_trainable_weights", []))


def _keras_format_shapes(path: str) -> Optional[Dict[str, List[Tuple[int, ...]]]]:
    """{layer path: its variables' shapes} of a file of tf-keras's newer weights format (a
    `.weights.h5`, or the weights inside a `.keras` archive), or None when it is not one."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = io.BytesIO(archive.read("model.weights.h5"))
            handle = h5py.File(data, "r")
        else:
            handle = h5py.File(path, "r")
        with handle as f:
            if "layers" not in f:
                return None
            shapes = {}
            for key, group in f["layers"].items():
                variables = group.get("vars") if isinstance(group, h5py.Group) else None
                shapes[f"layers/{key}"] = [tuple(variables[str(i)].shape)
                                           for i in range(len(variables or ()))]
            return shapes
    except (OSError, KeyError, RuntimeError, ValueError, zipfile.BadZipFile):
        return None


def _keras_format_misfit(model: tf.keras.Model, path: str, label: str) -> Optional[str]:
    """The one-line message naming the first layer of `model` whose weights the newer-format
    file `path` does not hold with the same shapes, or None when that is not the cause."""
    stored = _keras_format_shapes(path)
    if stored is None:
        return None
    for index, (key, layer) in enumerate(_keras_format_keys(model), start=1):
        ours = [tuple(int(d) for d in w.shape) for w in _own_weights(layer)]
        theirs = stored.get(key)
        if theirs is None and not ours:
            continue
        if theirs is None or theirs != ours:
            held = "nothing" if theirs is None else _shapes(theirs)
            return (f"{path} does not fit {label}: layer {index} {layer.name!r} "
                    f"({type(layer).__name__}, {key!r} in the file) has {_shapes(ours)} in the "
                    f"model and {held} in the file; {_FIX}")
    return None
