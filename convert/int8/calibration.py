"""Calibrating fake-quant ranges on representative data, and quantization-aware fine-tuning.

Each `FakeQuant` range is the min/max of the float tensor it follows, measured on a few hundred
real inputs; ranges TFLite requires to be equal (`shared_range_groups`) become their union.

References:
    - [Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
      Inference](https://arxiv.org/abs/1712.05877)
"""

import dataclasses
from typing import Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.graph import inbound_layers
from convert.int8.fake_quant import FakeQuant, shared_range_groups


@dataclasses.dataclass
class FineTune:
    """Quantization-aware fine-tuning with the fake-quant nodes in place.

    Attributes:
        data: `(x, y)` arrays with integer or one-hot labels, or a `tf.data.Dataset` of batched
            `(x, y)` pairs.
        epochs: Passes over `data`.
        learning_rate: Adam's learning rate; small, since the weights are already trained.
        batch_size: Batch size for array data.
    """

    data: Union[Tuple[np.ndarray, np.ndarray], tf.data.Dataset]
    epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 32

    def validate(self) -> None:
        if self.epochs < 1:
            raise BnnError(f"Expected fine-tune epochs >= 1, got {self.epochs}.")
        if not self.learning_rate > 0:
            raise BnnError(f"Expected a fine-tune learning rate > 0, got {self.learning_rate}.")
        if self.batch_size < 1:
            raise BnnError(f"Expected a fine-tune batch size >= 1, got {self.batch_size}.")




def _batches(x: np.ndarray, batch_size: int = 64):
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]



def _min_max(model: tf.keras.Model, tensors: Sequence[tf.Tensor],
             representative_x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    probe = tf.keras.Model(model.inputs, list(tensors))
    lows = np.full(len(tensors), np.inf)
    highs = np.full(len(tensors), -np.inf)
    for batch in _batches(np.asarray(representative_x, np.float32)):
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, value in enumerate(outputs):
            lows[i] = min(lows[i], float(tf.reduce_min(value)))
            highs[i] = max(highs[i], float(tf.reduce_max(value)))
    return lows, highs


def _set_ranges(prepared: tf.keras.Model, lows: np.ndarray, highs: np.ndarray) -> None:
    fake_quants = [layer for layer in prepared.layers if isinstance(layer, FakeQuant)]
    index = {layer.name: i for i, layer in enumerate(fake_quants)}
    lows, highs = lows.copy(), highs.copy()
    for group in shared_range_groups(prepared):
        members = [index[name] for name in group]
        lows[members], highs[members] = lows[members].min(), highs[members].max()
    for layer, low, high in zip(fake_quants, lows, highs):
        layer.set_range(low, high)


def calibrate_from(original: tf.keras.Model, prepared: tf.keras.Model,
                    representative_x: np.ndarray) -> None:
    """Sets each FakeQuant range to the min/max of the float tensor it follows in `original`.

    The float twin is measured rather than the prepared model itself: there each tensor depends
    on the ranges of the fake-quant nodes upstream, which this very pass changes. Ranges that
    must be equal (`shared_range_groups`) become the union of their members' ranges.
    """
    fake_quants = [layer for layer in prepared.layers if isinstance(layer, FakeQuant)]
    tensors = [original.get_layer(inbound_layers(layer)[0].name).output for layer in fake_quants]
    _set_ranges(prepared, *_min_max(original, tensors, representative_x))


def fine_tune_in_place(model: tf.keras.Model, fine_tune: FineTune) -> None:
    """Compiles `model` (Adam, cross-entropy on its softmax output) and fits it on the data."""
    fine_tune.validate()
    data = fine_tune.data
    if isinstance(data, tf.data.Dataset):
        y_probe = next(iter(data))[1]
        dataset = data
    else:
        x, y = data
        y_probe = np.asarray(y)
        dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), y_probe)).shuffle(
            len(y_probe), seed=0).batch(fine_tune.batch_size)
    one_hot = len(np.shape(y_probe)) == 2 and np.shape(y_probe)[-1] > 1
    # Our models end in softmax; the loss takes probabilities.
    loss = (tf.keras.losses.CategoricalCrossentropy() if one_hot
            else tf.keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=tf.keras.optimizers.Adam(fine_tune.learning_rate), loss=loss,
                  metrics=["accuracy"])
    model.fit(dataset, epochs=fine_tune.epochs, verbose=0)
