"""Train a few steps -> convert for arm64 -> the flatbuffer agrees with Keras on digits."""

import numpy as np

from convert.samples import run_test_split
from convert.verify import verify_flatbuffer
from tests.conftest import DIGITS_SHAPE


def test_flatbuffer_agrees_with_keras_on_the_whole_digits_test_split(digits_run, digits_flatbuffer):
    x, y = run_test_split(digits_run.config)
    assert x.shape == (360, *DIGITS_SHAPE)
    result = verify_flatbuffer(digits_run.model, digits_flatbuffer, x)
    # A pre-activation within float error of zero may binarize to the other sign in TFLite's
    # reordered sums, so a handful of disagreements are legitimate; 99% is the contract.
    assert result.top1_agreement >= 0.99
    keras_accuracy = np.mean(result.keras_outputs.argmax(-1) == y)
    tflite_accuracy = np.mean(result.tflite_outputs.argmax(-1) == y)
    assert abs(keras_accuracy - tflite_accuracy) <= 0.01
    # Probabilities: rows sum to one in both, and differences stay small where labels agree.
    np.testing.assert_allclose(result.tflite_outputs.sum(-1), 1.0, atol=1e-4)
