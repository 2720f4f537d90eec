"""Fixtures shared by the conversion tests."""

import numpy as np
import pytest


# The bundled digits' own shape, not resized: the int8 tests' small models train on them in a
# quarter of the time they took on the 16x16 that `bnn train` resizes them to by default. (The
# suite's digits run, `tests.conftest.DIGITS_SHAPE`, chooses its own size.)
NATIVE_DIGITS_SHAPE = (8, 8, 1)


def _arrays(split):
    x = np.stack([image.numpy() for image, _ in split])
    y = np.array([int(label.numpy()) for _, label in split])
    assert x.shape[1:] == NATIVE_DIGITS_SHAPE
    return x / 16.0, y  # 0..16 -> [0, 1]


@pytest.fixture(scope="module")
def digits():
    """The bundled digits, 8x8 in [0, 1]: (x_train, y_train, x_test, y_test)."""
    from bnn_keras.training import data

    splits = data.load_digits()
    return (*_arrays(splits.train), *_arrays(splits.test))
