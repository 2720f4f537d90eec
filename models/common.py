"""Pieces that several model families share: input, stem choice, classifier head."""

from typing import Sequence

import tensorflow as tf

from bnn_keras.errors import BnnError

# BNN_NOTES section 4: below this side length (CIFAR, MNIST-like inputs) a model uses a single
# 3x3 stride-1 stem instead of the ImageNet 7x7/2 conv + max-pool, as larq-zoo does.
SMALL_INPUT_SIDE = 50


def image_input(input_shape: Sequence[int]) -> tf.keras.layers.Layer:
    """A named Keras input for images of `input_shape` (height, width, channels).

    Raises:
        BnnError: the shape is not three positive integers.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise BnnError(
            f"Expected input_shape as (height, width, channels) of positive integers, got {shape}."
        )
    return tf.keras.Input(shape=shape, name="input")


def is_small_input(input_shape: Sequence[int]) -> bool:
    """True for inputs whose spatial side is under `SMALL_INPUT_SIDE` pixels."""
    return min(input_shape[0], input_shape[1]) < SMALL_INPUT_SIDE


def classifier_head(x: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Global average pool -> Dense -> softmax (kept in float32 under mixed precision)."""
    x = tf.keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = tf.keras.layers.Dense(num_classes, kernel_initializer="he_normal", name="head_dense")(x)
    return tf.keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)
