"""Initializers that model families need in a saved model (registered under "bnn_keras")."""

import numpy as np
import tensorflow as tf

__all__ = ["BlurKernel"]

_PACKAGE = "bnn_keras"

# Binomial taps of the blur filters of "Making Convolutional Networks Shift-Invariant Again".
_BLUR_TAPS = {2: [1, 1], 3: [1, 2, 1], 5: [1, 4, 6, 4, 1]}


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class BlurKernel(tf.keras.initializers.Initializer):
    """A normalised binomial (blur) kernel for a `DepthwiseConv2D` of shape (k, k, C, 1).

    QuickNet's transitions blur with a fixed (non-trainable) depthwise convolution initialised
    with it. A registered class rather than a function: tf-keras saves a function by its bare
    name, which `load_model` cannot find again.

    References:
        - [Making Convolutional Networks Shift-Invariant Again](https://arxiv.org/abs/1904.11486)
    """

    def __call__(self, shape, dtype=None, **kwargs) -> tf.Tensor:
        side, channels = shape[0], shape[2]
        if side not in _BLUR_TAPS or shape[1] != side or shape[3] != 1:
            raise ValueError(
                f"BlurKernel makes 2x2, 3x3 or 5x5 depthwise kernels with depth multiplier 1, "
                f"got shape {tuple(shape)}"
            )
        taps = np.array(_BLUR_TAPS[side], dtype="float64")
        kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
        kernel = np.repeat(kernel[:, :, None, None], channels, axis=2)
        return tf.constant(kernel, dtype=dtype or tf.float32)

    def get_config(self):
        return {}
