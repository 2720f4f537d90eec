"""Fixtures shared by the conversion tests."""

import numpy as np
import pytest
import tensorflow as tf


def _arrays(split):
    x = np.stack([image.numpy() for image, _ in split])
    y = np.array([int(label.numpy()) for _, label in split])
    # 8x8 digits (0..16) -> 16x16 in [0, 1], as the training pipeline sizes them.
    return tf.image.resize(x, (16, 16)).numpy() / 16.0, y


@pytest.fixture(scope="module")
def digits():
    """The bundled digits at 16x16 in [0, 1]: (x_train, y_train, x_test, y_test)."""
    from bnn_keras.training import data

    splits = data.load_digits()
    return (*_arrays(splits.train), *_arrays(splits.test))
