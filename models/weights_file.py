"""Loading Keras HDF5 weights files by layer order, with an error that names the first layer that
does not fit: bnn's own files and larq-zoo's (its release `.h5` files and its models'
`save_weights`), read without importing larq-zoo.

larq-zoo's layers carry Keras's automatic names (`quant_conv2d_3`, `batch_normalization_7`),
bnn's registry models name every layer, so names cannot match across the two: the weights go to
the layers in the order Keras saved them (`model.layers` order), as Keras's own HDF5 loading does.
A binary fully-connected layer is a 1x1 convolution here and a `QuantDense` in the zoo: a kernel
whose shape differs only by axes of size 1 ((C, N) and (1, 1, C, N)) is reshaped.
"""

from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError

# (layer name, its weights in saving order).
FileLayer = Tuple[str, List[np.ndarray]]


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_h5_layers(path: str) -> Optional[List[FileLayer]]:
    """The weighted layers of a Keras HDF5 weights or model file, in saving order.

    Args:
        path: A file path.

    Returns:
        [(layer name, weights)], or None when `path` is not a Keras HDF5 file of the
        `save_weights(".h5")` / `save(".h5")` layout (e.g. a TF checkpoint or a `.keras` file).
    """
    if not h5py.is_hdf5(path):
        return None
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
    layers = model_layers(model)
    fix = ("build the model with the input_shape, num_classes, include_top and options the "
           "file was saved with, or give a weights file of this model.")
    for index, (layer, (saved_name, saved)) in enumerate(zip(layers, file_layers), start=1):
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [w.shape for w in saved]
        if len(ours) != len(theirs) or not all(map(_fits, theirs, ours)):
            raise BnnError(
                f"{path} does not fit {label}: weighted layer {index} is {saved_name!r} with "
                f"{_shapes(theirs)} in the file and {layer.name!r} with {_shapes(ours)} in the "
                f"model; {fix}"
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
        raise BnnError(
            f"{path} does not fit {label}: {len(file_layers)} weighted layers in the file, "
            f"{len(layers)} in the model; {where}; {fix}"
        )
    for layer, (_, saved) in zip(layers, file_layers):
        layer.set_weights([w.reshape(v.shape) for w, v in zip(saved, layer.weights)])
